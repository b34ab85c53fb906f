"""The profile fit of the metal-aware walk (``postop._layer_fit``) against a straightforward one written here.

The library fits every profile against every design at once (each design factored once, the residual as a
difference of squares, the rows a rounding could decide fitted again from the residual itself). The reference
below fits each profile against each design on its own with ``np.linalg.lstsq`` and keeps the least residual,
as the model text of ``_layer_fit`` says: the first one-tissue fit of least mean squared residual, the first
two-layer fit of least residual, and two layers where they leave less than a quarter of the one-tissue residual
and that residual is above the noise floor (30 HU RMS); where the fit chosen so leaves more than the noise floor,
the first three-tissue fit of least residual where it leaves less than a quarter of that and its middle tissue is
the brightest. Profiles are drawn from the model itself (one tissue with
an oblique edge, a layer on a second tissue), with noise, and read from a CT of a blurred metal plane.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ibc_helpers import blurred_metal_plane_ct, plane_points
from ImplantBoneContactLib import postop as po

STEP = 0.175


def _gauss_tail(z):
    return np.array([0.5 * math.erfc(v / math.sqrt(2.0)) for v in np.ravel(z)]).reshape(np.shape(z))


def _edge(metal=3000.0, blur=0.6, tissue_blur=0.45):
    """A hand-made edge model: the metal's share a Gaussian edge of ``blur`` mm, the tissues' of ``tissue_blur``."""
    x = 0.05 * np.arange(0, 121)
    return po.EdgeModel(metal, x, _gauss_tail(x / blur), blur, 2.05 * blur, 1.04 * blur, 100, "measured", None,
                        tissue_blur)


def _reference_fit(raw, x, edge):
    """Each profile against each design with lstsq: (tissue HU, RMS HU, layer mm, metal scale) per profile."""
    w = lambda v: np.interp(np.abs(v), edge.x_mm, edge.metal_weight, right=0.0)  # noqa: E731  (x >= 0 here)
    g = lambda v: _gauss_tail(v / edge.tissue_blur_mm)  # noqa: E731
    use = w(x) <= 0.85
    xs = x[use]
    one_designs = [np.column_stack([edge.metal_hu * w(xs / s), 1.0 - g(xs / s)]) for s in po.EDGE_STRETCH]
    step = x[1] - x[0]  # the walk's step
    grid = [po.MIN_LAYER_MM + step * k for k in range(400) if po.MIN_LAYER_MM + step * k <= x[-1] + 1e-9]
    two_designs = [np.column_stack([edge.metal_hu * w(xs), g(xs - b) - g(xs), 1.0 - g(xs - b)]) for b in grid]
    three_designs, three_b1 = [], []
    for i, b1 in enumerate(grid):
        for b2 in grid[i + 1 :]:
            if b2 - b1 >= po.MIN_LAYER_MM - 1e-9:
                three_designs.append(np.column_stack([edge.metal_hu * w(xs), g(xs - b1) - g(xs), g(xs - b2) - g(xs - b1),
                                                      1.0 - g(xs - b2)]))
                three_b1.append(b1)

    def least(designs, y):
        best = (math.inf, math.nan, math.nan, -1, None)
        for k, a in enumerate(designs):
            if np.linalg.matrix_rank(a, tol=1e-6 * np.abs(a).max()) < a.shape[1]:
                continue
            coef = np.linalg.lstsq(a, y, rcond=None)[0]
            res = float(np.mean((y - a @ coef) ** 2))
            if res < best[0]:
                best = (res, coef[1], coef[0], k, coef)
        return best

    out = []
    for y in raw[:, use]:
        one = least(one_designs, y)
        two = least(two_designs, y)
        if two[0] < po.LAYER_RESIDUAL_RATIO * one[0] and one[0] > po.NOISE_FLOOR_HU**2:
            chosen = (two[1], two[0], grid[two[3]], two[2])
        else:
            chosen = (one[1], one[0], math.inf, one[2])
        if chosen[1] > po.NOISE_FLOOR_HU**2:
            # three tissues, kept where they leave less than a quarter and the middle one is the brightest
            three = least(three_designs, y)
            if three[0] < po.LAYER_RESIDUAL_RATIO * chosen[1] and three[4][2] > max(three[4][1], three[4][3]):
                chosen = (three[1], three[0], three_b1[three[3]], three[2])
        out.append((chosen[0], math.sqrt(chosen[1]), chosen[2], chosen[3]))
    return np.array(out)


def _model_profiles(edge, x, rng, n):
    """``n`` profiles of each kind: one tissue (oblique edges, bloom 0.7-1.5 times the measured one) and a layer
    of 0.5-3 mm on a second tissue, with Gaussian noise of 5-60 HU."""
    w = lambda v: np.interp(np.abs(v), edge.x_mm, edge.metal_weight, right=0.0)  # noqa: E731
    g = lambda v: _gauss_tail(v / edge.tissue_blur_mm)  # noqa: E731
    rows = []
    for _ in range(n):
        s, a, t = rng.uniform(1.0, 2.0), rng.uniform(0.7, 1.5), rng.uniform(-200.0, 1800.0)
        rows.append(a * edge.metal_hu * w(x / s) + t * (1.0 - g(x / s)) + rng.normal(0.0, rng.uniform(5.0, 60.0), x.size))
        b, t1, t2 = rng.uniform(0.5, 3.0), rng.uniform(-100.0, 1900.0), rng.uniform(-100.0, 1900.0)
        rows.append(a * edge.metal_hu * w(x) + t1 * (g(x - b) - g(x)) + t2 * (1.0 - g(x - b))
                    + rng.normal(0.0, rng.uniform(5.0, 60.0), x.size))
    return np.array(rows)


def _assert_same_fit(fit, ref, raw):
    assert np.allclose(fit.tissue_hu, ref[:, 0], rtol=1e-6, atol=1e-6)
    # the mean squared residual, a difference of squares in the library: within 1e-9 of the profile's mean square
    # (the margin of _design_fits; the rounding itself is about 1e-15 of it)
    assert np.all(np.abs(fit.rms_hu**2 - ref[:, 1] ** 2) <= 1e-9 * np.mean(raw**2, axis=1))
    # the layer: the same grid value (0.5 mm plus whole steps; the library steps by arange, here by products)
    assert np.array_equal(np.isinf(fit.layer_mm), np.isinf(ref[:, 2]))
    assert np.allclose(fit.layer_mm, ref[:, 2], rtol=0.0, atol=1e-9)
    assert np.allclose(fit.metal_scale, ref[:, 3], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("seed", [1, 2])
def test_layer_fit_equals_lstsq_per_profile(seed):
    # 3.5 mm read in steps of 0.175 mm (the walk at 0.7 mm voxels): 4 one-tissue designs, 18 layer thicknesses.
    edge = _edge()
    x = STEP * np.arange(0, 21)
    raw = _model_profiles(edge, x, np.random.default_rng(seed), 40)
    ref = _reference_fit(raw, x, edge)
    assert np.isfinite(ref[:, 2]).sum() >= 10 and np.isinf(ref[:, 2]).sum() >= 10  # both kinds are chosen
    _assert_same_fit(po._layer_fit(raw, x, edge), ref, raw)


def test_layer_fit_equals_lstsq_in_blocks_and_without_noise():
    # More profiles than one block of the library's product (the block made small), and noise-free profiles: the
    # one-tissue ones fit exactly (residual 0 up to rounding, several designs within a rounding of each other
    # where the oblique edge is 1.0, so the first wins).
    edge = _edge(metal=3500.0, blur=0.8, tissue_blur=0.6)
    x = STEP * np.arange(0, 21)
    rng = np.random.default_rng(7)
    noisy = _model_profiles(edge, x, rng, 30)
    w = np.interp(x, edge.x_mm, edge.metal_weight, right=0.0)
    g = _gauss_tail(x / edge.tissue_blur_mm)
    exact = np.array([edge.metal_hu * w + t * (1.0 - g) for t in (0.0, 400.0, 1200.0)])
    raw = np.vstack([noisy, exact])
    ref = _reference_fit(raw, x, edge)
    old_block = po._FIT_BLOCK
    po._FIT_BLOCK = 7
    try:
        fit = po._layer_fit(raw, x, edge)
    finally:
        po._FIT_BLOCK = old_block
    _assert_same_fit(fit, ref, raw)
    assert np.allclose(fit.tissue_hu[-3:], [0.0, 400.0, 1200.0], atol=1e-6)
    assert np.allclose(fit.metal_scale[-3:], 1.0, atol=1e-9)


def test_layer_fit_of_a_profile_with_nan_and_of_a_short_read():
    # A profile with a NaN fits nothing (NaN tissue and scale, infinite residual, no layer); a read shorter than
    # the thinnest layer (0.5 mm) has no two-layer designs.
    edge = _edge()
    x = STEP * np.arange(0, 21)
    raw = _model_profiles(edge, x, np.random.default_rng(4), 3)
    raw[1, 5] = np.nan
    fit = po._layer_fit(raw, x, edge)
    assert np.isnan(fit.tissue_hu[1]) and np.isnan(fit.metal_scale[1]) and np.isinf(fit.rms_hu[1])
    assert np.isinf(fit.layer_mm[1])
    keep = np.arange(6) != 1
    ref = _reference_fit(raw[keep], x, edge)
    _assert_same_fit(po._Fit(fit.tissue_hu[keep], fit.rms_hu[keep], fit.layer_mm[keep], fit.metal_scale[keep]), ref,
                     raw[keep])
    short = STEP * np.arange(0, 3)
    raw = _model_profiles(edge, short, np.random.default_rng(5), 3)
    fit = po._layer_fit(raw, short, edge)
    assert np.isinf(fit.layer_mm).all()
    _assert_same_fit(fit, _reference_fit(raw, short, edge), raw)


def test_layer_fit_leaves_out_samples_where_the_metal_reads_more_than_85_percent():
    # A measured spread whose share is 0.95 at the edge and exactly 0.85 one step past it: the sample at the edge
    # is left out, the one at 0.85 kept (the reference keeps w <= 0.85 too).
    x = STEP * np.arange(0, 21)
    share = np.concatenate([[0.95, 0.85], 0.85 * _gauss_tail(x[2:] / 0.6) / _gauss_tail(x[2] / 0.6)])
    edge = po.EdgeModel(3000.0, x, share, 0.6, 1.2, 0.6, 100, "measured", None, 0.45)
    raw = _model_profiles(edge, x, np.random.default_rng(9), 20)
    _assert_same_fit(po._layer_fit(raw, x, edge), _reference_fit(raw, x, edge), raw)


def test_layer_fit_tries_layers_up_to_the_end_of_the_read():
    # Steps of 0.125 mm over 3.5 mm: the layers tried run from 0.5 to exactly 3.5 mm. A noise-free layer of 3.5 mm
    # is found at 3.5 mm; one of 4.0 mm (beyond the read) is not found beyond it.
    edge = _edge()
    x = 0.125 * np.arange(0, 29)
    w = np.interp(x, edge.x_mm, edge.metal_weight, right=0.0)
    g = lambda v: _gauss_tail(v / edge.tissue_blur_mm)  # noqa: E731
    raw = np.array([edge.metal_hu * w + 1500.0 * (g(x - b) - g(x)) - 1000.0 * (1.0 - g(x - b)) for b in (3.5, 4.0)])
    fit = po._layer_fit(raw, x, edge)
    ref = _reference_fit(raw, x, edge)
    _assert_same_fit(fit, ref, raw)
    assert fit.layer_mm[0] == 3.5 and abs(fit.tissue_hu[0] - 1500.0) < 1e-6
    assert fit.layer_mm[1] <= 3.5


def test_sample_metal_aware_with_the_reference_fit():
    # The whole walk on a CT of a blurred metal plane against bone of 1000 HU with noise, once with the library's
    # fit and once with the reference: the same HU (1e-6 relative) and the same reliable points.
    from ImplantBoneContactLib.postop import _Fit

    ct = blurred_metal_plane_ct(sigma=0.8, tissue=1000.0, n_jk=20)
    rng = np.random.default_rng(3)
    ct.array[:, :, 10:] += rng.normal(0.0, 60.0, ct.array[:, :, 10:].shape).astype(np.float32)
    edge = po.measure_edge(blurred_metal_plane_ct(sigma=0.8), *plane_points())
    pts, nrm = plane_points(n=12, half=3.5)
    pts = pts + np.column_stack([rng.uniform(-0.3, 0.3, pts.shape[0]), np.zeros((pts.shape[0], 2))])
    lib = po.sample_metal_aware(ct, pts, nrm, edge)

    def reference(raw, x, e):
        r = _reference_fit(raw, x, e)
        return _Fit(r[:, 0], r[:, 1], r[:, 2], r[:, 3])

    original = po._layer_fit
    po._layer_fit = reference
    try:
        ref = po.sample_metal_aware(ct, pts, nrm, edge)
    finally:
        po._layer_fit = original
    assert lib.reliable.any() and np.array_equal(lib.reliable, ref.reliable)
    assert np.allclose(lib.hu, ref.hu, rtol=1e-6, atol=0.0, equal_nan=True)


# _design_fits and the choice's helpers, with answers worked out by hand


def test_design_fits_known_answers():
    # a = (1, 0, 0, 1) and b = (0, 1, 1, 0) are orthogonal; y = 2 a + 3 b and -a + 0.5 b lie in their span.
    # The third design repeats a column: rank 1 < 2, NaN coefficients and an infinite residual.
    a = np.array([1.0, 0.0, 0.0, 1.0])
    b = np.array([0.0, 1.0, 1.0, 0.0])
    y = np.array([2 * a + 3 * b, -a + 0.5 * b])
    d = 1e-3 * np.array([1.0, -1.0, 1.0, -1.0])
    designs = [np.column_stack([a, b]), np.column_stack([2 * a, b]), np.column_stack([a, 2 * a]), np.column_stack([a, d])]
    for refit in (lambda res, margin: np.zeros(res.shape[0], dtype=bool), lambda res, margin: np.ones(res.shape[0], dtype=bool)):
        c0, c1, res = po._design_fits(y, designs, refit)
        assert np.allclose(c0[:, 0], [2.0, -1.0]) and np.allclose(c1[:, 0], [3.0, 0.5])
        # (2 a, b): the same space, half the coefficient of a
        assert np.allclose(c0[:, 1], [1.0, -0.5]) and np.allclose(c1[:, 1], [3.0, 0.5])
        assert np.allclose(res[:, 0], 0.0, atol=1e-12) and np.allclose(res[:, 1], 0.0, atol=1e-12)
        assert np.isnan(c0[:, 2]).all() and np.isnan(c1[:, 2]).all() and np.isinf(res[:, 2]).all()
        # (a, d) with d = 1e-3 (1, -1, 1, -1) orthogonal to a and b: coefficient of a 2 and -1, of d 0; residual
        # the whole of 3 b (9 * 2 / 4) and 0.5 b (0.25 * 2 / 4)
        assert np.allclose(c0[:, 3], [2.0, -1.0]) and np.allclose(c1[:, 3], 0.0, atol=1e-9)
        assert np.allclose(res[:, 3], [4.5, 0.125])


def test_design_fits_refits_only_the_rows_named():
    # The rows named are fitted again from the residual itself (y - coef A^T): their residual is that mean exactly.
    # Profiles of 3000 HU along the design with 0.01 HU off it: the difference of squares keeps only the first
    # digits of that residual, the refit all of them.
    rng = np.random.default_rng(11)
    a = rng.normal(size=(9, 2))
    y = rng.normal(size=(5, 2)) * 3000.0 @ a.T + rng.normal(size=(5, 9)) * 0.01
    # A design of rank 1 first: it is passed over, the one after it still fitted again.
    named = np.array([False, True, False, False, True])
    dead = np.column_stack([a[:, 0], 2.0 * a[:, 0]])
    _, _, res = po._design_fits(y, [dead, a], lambda r, m: named)
    coef = y @ np.linalg.pinv(a).T
    exact = ((y - coef @ a.T) ** 2).mean(axis=1)
    assert np.array_equal(res[named, 1], exact[named])
    assert not np.array_equal(res[~named, 1], exact[~named])
    assert np.all(np.abs(res[:, 1] - exact) <= 1e-9 * np.mean(y**2, axis=1))
    assert np.isinf(res[:, 0]).all()


def test_design_fits_rank_tolerance_is_a_millionth_of_the_largest_entry():
    # a = 2 (1, 0, 0, 1) (largest entry 2: tolerance 2e-6 on the singular values) and d (1, -1, 1, -1) orthogonal
    # to it, singular value 2 |d|: at d = 0.5e-6 (singular value 1e-6) the design counts as rank 1, at d = 2e-6
    # (4e-6) as rank 2 and fits y = a + 3e5 d exactly.
    a = 2.0 * np.array([1.0, 0.0, 0.0, 1.0])
    d = np.array([1.0, -1.0, 1.0, -1.0])
    y = np.array([a + 0.15 * d])
    c0, c1, res = po._design_fits(y, [np.column_stack([a, 0.5e-6 * d]), np.column_stack([a, 2e-6 * d])],
                                  lambda r, m: np.zeros(r.shape[0], dtype=bool))
    assert np.isnan(c0[0, 0]) and np.isnan(c1[0, 0]) and np.isinf(res[0, 0])
    assert np.isclose(c0[0, 1], 1.0) and np.isclose(c1[0, 1], 0.15 / 2e-6) and abs(res[0, 1]) < 1e-9


def test_design_fits_margin_is_relative_to_the_mean_square():
    # The margin handed to the choice is _FIT_MARGIN times each row's mean square: 1e-9 * (3^2 + 4^2) / 2.
    seen = {}

    def undecided(res, margin):
        seen["margin"] = margin
        return np.zeros(res.shape[0], dtype=bool)

    po._design_fits(np.array([[3.0, 4.0], [0.0, 0.0]]), [np.array([[1.0, 0.0], [1.0, 1.0]])], undecided)
    assert np.allclose(seen["margin"], [po._FIT_MARGIN * 12.5, 0.0], rtol=1e-12, atol=0.0)
    assert po._FIT_MARGIN == 1e-9


def test_first_least():
    res = np.array([[3.0, 1.0, 1.0], [np.nan, np.inf, np.inf], [np.nan, 2.0, 5.0], [4.0, 4.0, 9.0]])
    assert po._first_least(res).tolist() == [1, -1, 1, 0]
    assert po._first_least(np.zeros((2, 0))).tolist() == [-1, -1]


def test_layer_choice_undecided():
    und = po._layer_choice_undecided(2)
    m = np.full(1, 1e-3)
    far = [5000.0, 7000.0, 20000.0, 30000.0]  # one-tissue least 5000, two-layer least 20000: no limit near
    assert not und(np.array([far]), m)[0]
    # a tie within the margin in either group, or exactly at it
    assert und(np.array([[5000.0, 5000.0 + 1e-3, 20000.0, 30000.0]]), m)[0]
    assert not und(np.array([[5000.0, 5000.0 + 2e-3, 20000.0, 30000.0]]), m)[0]
    assert und(np.array([[5000.0, 7000.0, 20000.0, 20000.0005]]), m)[0]
    # infinite residuals tie with nothing
    assert not und(np.array([[5000.0, np.inf, np.inf, np.inf]]), m)[0]
    assert not und(np.array([[np.nan, 5000.0, 20000.0, np.nan]]), m)[0]
    # the limits: the noise floor (900), the largest residual (6400) for either group, the ratio (a quarter)
    for one, two in ((900.0005, 20000.0), (6400.0, 20000.0), (5000.0, 6399.9995), (8000.0, 2000.0 + 2e-4)):
        assert und(np.array([[one, 1e6, two, 1e6]]), m)[0], (one, two)
    for one, two in ((900.002, 20000.0), (6400.002, 20000.0), (5000.0, 6399.998), (8000.0, 2000.002)):
        assert not und(np.array([[one, 1e6, two, 1e6]]), m)[0], (one, two)
    # the two-layer least at the noise floor: whether three tissues are tried after it
    assert und(np.array([[20000.0, 1e6, 900.0005, 1e6]]), m)[0]
    assert not und(np.array([[20000.0, 1e6, 900.002, 1e6]]), m)[0]
    # exactly at the margin (2^-10, exact in binary) counts, as a tie does
    e = 2.0**-10
    m2 = np.full(1, e)
    for one, two in ((900.0 + e, 20000.0), (6400.0 + e, 20000.0), (5000.0, 6400.0 - e), (8000.0, 2000.0 + e),
                     (20000.0, 900.0 + e)):
        assert und(np.array([[one, 1e6, two, 1e6]]), m2)[0], (one, two)
    # row by row: each row's least and ties are its own
    rows = np.array([[1.0, 3.0, 2e4, 3e4], [5000.0, 5000.0 + 1e-3, 2e4, 3e4], [5000.0, 7000.0, 2e4, 3e4]])
    assert und(rows, np.full(3, 1e-3)).tolist() == [False, True, False]
    # no two-layer designs: only the one-tissue group decides
    und1 = po._layer_choice_undecided(3)
    assert und1(np.array([[1.0, 1.0, 3.0]]), m)[0] and not und1(np.array([[1.0, 2.0, 3.0]]), m)[0]


# ---------------------------------------------------------------------------------------------------------------
# The choice made from given residuals. A residual comes out of a least-squares fit and meets a limit only up to
# rounding, so `_design_fits` is replaced by one that returns the given mean squared residuals (HU^2) and marks
# each design's coefficients with its column (metal scale = column, tissue = 1000 + column): the choice, the
# layer's thickness and the coefficients kept then follow by hand.


def _fit_from_given_residuals(monkeypatch, residual_of):
    """`_layer_fit` on 2 profiles of a 3.5 mm read (step 0.175 mm) with `_design_fits` giving `residual_of(n_one,
    n_designs)` ((2, C) HU^2); returns the fit, the number of one-tissue designs and the layer grid (mm)."""
    seen = {}

    def given(y, designs, undecided):
        if designs[0].shape[1] == 4:  # the three-tissue stage (rows left above the noise floor): no better fit
            none = np.full((y.shape[0], len(designs)), np.inf)
            return none, none, none
        n_one = len(po.EDGE_STRETCH)
        res = np.asarray(residual_of(n_one, len(designs)), dtype=float)
        cols = np.arange(len(designs), dtype=float)
        seen["undecided"] = undecided
        return np.tile(cols, (y.shape[0], 1)), np.tile(1000.0 + cols, (y.shape[0], 1)), res

    monkeypatch.setattr(po, "_design_fits", given)
    x = STEP * np.arange(0, 21)
    fit = po._layer_fit(np.zeros((2, x.size)), x, _edge())
    grid = np.arange(po.MIN_LAYER_MM, x[-1] + 1e-9, STEP)
    return fit, len(po.EDGE_STRETCH), grid, seen


def test_two_layers_need_a_one_tissue_residual_above_the_noise_floor(monkeypatch):
    """One-tissue residuals 900 HU^2 exactly (30 HU RMS, the noise floor: a fit as good as the noise) in the
    first profile and the next double above 900 in the second, least at the second stretch; two-layer residuals
    100 HU^2 (well under a quarter) least at the third layer. At the floor one tissue is kept (stretch 2: tissue
    1001 HU, scale 1, no layer, 30 HU RMS); just above it the two layers are (tissue 1000 + n_one + 2, layer
    MIN_LAYER_MM + 2 steps, 10 HU RMS)."""
    floor = po.NOISE_FLOOR_HU**2

    def residuals(n_one, c):
        res = np.full((2, c), 1e7)
        res[0, 1], res[1, 1] = floor, np.nextafter(floor, np.inf)
        res[:, n_one + 2] = 100.0
        return res

    fit, n_one, grid, _ = _fit_from_given_residuals(monkeypatch, residuals)
    assert fit.tissue_hu.tolist() == [1001.0, 1000.0 + n_one + 2]
    assert fit.metal_scale.tolist() == [1.0, n_one + 2.0]
    assert fit.layer_mm[0] == np.inf and fit.layer_mm[1] == pytest.approx(grid[2], abs=1e-12)
    assert fit.rms_hu[0] == pytest.approx(30.0, abs=1e-12) and fit.rms_hu[1] == pytest.approx(10.0, abs=1e-12)


def test_the_refit_groups_the_one_tissue_designs_apart_from_the_layers(monkeypatch):
    """The rows fitted again are those whose choice a rounding could change: a tie within the one-tissue designs
    or within the two-layer ones. A one-tissue least equal to a two-layer least is no tie (two layers must leave a
    quarter of it to be chosen): the `undecided` that `_layer_fit` gives `_design_fits` keeps the groups apart."""
    fit, n_one, grid, seen = _fit_from_given_residuals(monkeypatch, lambda n_one, c: np.full((2, c), 1e7))
    und = seen["undecided"]
    margin = np.full(1, 1e-3)
    c = n_one + grid.size
    across = np.full((1, c), 1e7)
    across[0, 0] = across[0, n_one] = 5000.0  # the same least in both groups: no tie
    assert not und(across, margin)[0]
    within = np.full((1, c), 1e7)
    within[0, 0] = within[0, 1] = 5000.0  # a tie between two stretches
    within[0, n_one] = 4e6
    assert und(within, margin)[0]
    layers = np.full((1, c), 1e7)
    layers[0, 0] = 5000.0
    layers[0, n_one] = layers[0, n_one + 1] = 4e6  # a tie between two layers
    assert und(layers, margin)[0]
