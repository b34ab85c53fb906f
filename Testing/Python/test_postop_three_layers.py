"""A thin cortex beyond the tissue on the metal: three tissues along the normal (``postop._three_layer_refit``).

Near the resection a stem often sits in cancellous bone 1 mm thick, then a cortex of 1-2 mm, then soft tissue.
Read past the metal's bloom, that profile is three layers; a fit of one tissue or of a layer on a second tissue
cannot explain it and either takes the cortex for the tissue on the metal (a silent cortical) or leaves it
unexplained ('unreliable'). The CTs here are built from the layers' sharp profile blurred analytically (a sum of
Gaussian edges), so the tissue on the metal is known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ibc_helpers import blurred_metal_plane_ct, plane_points
from ImplantBoneContactLib import postop as po
from ImplantBoneContactLib.volume import Volume

METAL = 3500.0
SOFT = 30.0
CORTEX = 1600.0


def layered_plane_ct(layers, sigma=0.6, voxel=0.25, noise=10.0, seed=0, n_i=60, n_jk=16, x0=-4.375):
    """Metal for x < 0, then ``layers`` ((HU, thickness mm), ...) and soft tissue, blurred by a Gaussian of ``sigma``
    mm and read at the voxel centres, with Gaussian noise of ``noise`` HU."""
    x = x0 + voxel * np.arange(n_i)
    edges, tissues = [0.0], [METAL]
    for hu, thick in layers:
        tissues.append(hu)
        edges.append(edges[-1] + thick)
    tissues.append(SOFT)
    before = lambda u: np.array([0.5 * math.erfc(v / (sigma * math.sqrt(2.0))) for v in u])  # noqa: E731
    profile = np.full(x.size, tissues[-1])
    for k, e in enumerate(edges):
        profile += (tissues[k] - tissues[k + 1]) * before(x - e)
    a = np.broadcast_to(profile, (n_jk, n_jk, n_i)).astype(np.float32).copy()
    a += np.random.default_rng(seed).normal(0.0, noise, a.shape).astype(np.float32)
    m = np.diag([voxel, voxel, voxel, 1.0])
    m[:3, 3] = [x0, -0.5 * voxel * (n_jk - 1), -0.5 * voxel * (n_jk - 1)]
    return Volume(array=a, ijk_to_ras=m)


def _edge(sigma=0.6, voxel=0.25):
    # The edge spread measured on this scanner's metal against soft tissue (as a post-operative run measures it on
    # the vertices whose tissue beyond the bloom is soft).
    return po.measure_edge(blurred_metal_plane_ct(tissue=SOFT, sigma=sigma, voxel=voxel, n_i=60), *plane_points())


@pytest.mark.parametrize("first_hu, first_mm, cortex_mm", [(300.0, 1.25, 2.0), (300.0, 1.5, 1.0), (100.0, 1.25, 1.5),
                                                       (500.0, 1.5, 1.5)])
def test_cancellous_under_a_thin_cortex_reads_cancellous(first_hu, first_mm, cortex_mm):
    # metal | cancellous bone (or marrow) 1.25-1.5 mm (two blurs and more) | cortex 1-2 mm | soft tissue, the edge
    # between two voxel centres: the tissue on the metal is read, not the cortex beyond it, and it is told from
    # the bloom. Fitting one tissue or two layers only, the same profiles read 200-1300 HU or are 'unreliable'.
    ct = layered_plane_ct([(first_hu, first_mm), (CORTEX, cortex_mm)])
    pts, nrm = plane_points(n=8, half=1.5)
    s = po.sample_metal_aware(ct, pts, nrm, _edge())
    assert s.reliable.all()
    off = np.abs(s.hu - first_hu)
    # the noise (10 HU) moves a few points' own edge by a step of the walk: their reading is further off
    assert np.median(off) < 30.0 and np.mean(off < 100.0) >= 0.9, s.hu


def test_one_thick_tissue_is_not_split_in_three():
    # metal | cancellous 4 mm (beyond the read): one tissue explains the profile within the noise; no three
    # layers are looked for, and the reading is the cancellous bone's.
    ct = layered_plane_ct([(300.0, 4.0)])
    pts, nrm = plane_points(n=8, half=1.5)
    s = po.sample_metal_aware(ct, pts, nrm, _edge())
    assert s.reliable.all()
    assert np.all(np.abs(s.hu - 300.0) < 60.0), s.hu


# ---------------------------------------------------------------------------------------------------------------
# The fit itself, against the straightforward reference of test_postop_layer_fit (lstsq per profile and design).


def _three_layer_profiles(edge, x, rng, n):
    """``n`` profiles of each kind of three tissues (a layer of 0.7-1.5 mm, a second of 0.7-1.5 mm, then a third):
    a bright middle (cancellous or marrow, cortex, soft tissue or cancellous) and a dark one (cortex, cancellous,
    cortex), with the bloom 0.8-1.2 times the measured one and Gaussian noise of 5-20 HU."""
    from test_postop_layer_fit import _gauss_tail

    w = np.interp(x, edge.x_mm, edge.metal_weight, right=0.0)
    g = lambda v: _gauss_tail(v / edge.tissue_blur_mm)  # noqa: E731
    rows, kinds = [], []
    for _ in range(n):
        for kind, (lo, hi) in (("bright", ((-100.0, 600.0), (1300.0, 1900.0))), ("dark", ((1300.0, 1900.0), (100.0, 500.0)))):
            b1 = rng.uniform(0.7, 1.5)
            b2 = b1 + rng.uniform(0.7, 1.5)
            t1, t2 = rng.uniform(*lo), rng.uniform(*hi)
            t3 = rng.uniform(-100.0, 400.0) if kind == "bright" else rng.uniform(1300.0, 1900.0)
            a = rng.uniform(0.8, 1.2)
            rows.append(a * edge.metal_hu * w + t1 * (g(x - b1) - g(x)) + t2 * (g(x - b2) - g(x - b1)) + t3 * (1.0 - g(x - b2))
                        + rng.normal(0.0, rng.uniform(5.0, 20.0), x.size))
            kinds.append((kind, t1))
    return np.array(rows), kinds


def test_three_layer_fit_equals_lstsq_and_keeps_only_a_bright_middle(monkeypatch):
    from test_postop_layer_fit import STEP, _assert_same_fit, _reference_fit
    from test_postop_layer_fit import _edge as model_edge

    edge = model_edge()
    x = STEP * np.arange(0, 21)
    raw, kinds = _three_layer_profiles(edge, x, np.random.default_rng(11), 20)
    fit = po._layer_fit(raw, x, edge)
    _assert_same_fit(fit, _reference_fit(raw, x, edge), raw)
    monkeypatch.setattr(po, "_three_layer_refit", lambda *args: None)
    two = po._layer_fit(raw, x, edge)
    bright = np.array([k == "bright" for k, _ in kinds])
    t1 = np.array([t for _, t in kinds])
    changed = ~np.isclose(fit.tissue_hu, two.tissue_hu, rtol=0.0, atol=1e-9)
    # a bright middle: three tissues are fitted, and the tissue on the metal is read within 100 HU where the
    # fit of at most two layers was 300 HU or more off in most profiles
    assert changed[bright].mean() > 0.7
    assert np.median(np.abs(fit.tissue_hu - t1)[bright]) < 100.0
    assert np.median(np.abs(two.tissue_hu - t1)[bright]) > 300.0
    # a dark middle: never three tissues
    assert not changed[~bright].any()


def _given_three_layer_fits(monkeypatch, chosen, least_at, least, y_coef):
    """`_three_layer_refit` on one profile per ``chosen`` (mean squared residual of the fit before, HU^2) with
    `_design_fits` giving residual ``least`` (HU^2) at design ``least_at`` and 1e9 elsewhere; the profiles are
    that design times ``y_coef`` (metal scale, T1, T2, T3), so their own three tissues are ``y_coef``. The
    coefficients given mark each design with its column (scale = column, tissue = 1000 + column). Returns the
    fit, the designs (as `_design_fits` saw them, or None if not called) and the rows it was given."""
    seen = {}

    def given(y, designs, undecided):
        seen["designs"], seen["rows"], seen["undecided"] = designs, y.shape[0], undecided
        cols = np.arange(len(designs), dtype=float)
        res = np.full((y.shape[0], len(designs)), 1e9)
        res[:, least_at] = least
        return np.tile(cols, (y.shape[0], 1)), np.tile(1000.0 + cols, (y.shape[0], 1)), res

    edge = _edge()
    xs = 0.125 * np.arange(0, 29)
    grid = np.arange(po.MIN_LAYER_MM, xs[-1] + 1e-9, 0.125)
    # the design `least_at`, as the stage builds it (recorded by a first pass with the real fits)
    monkeypatch.setattr(po, "_design_fits", given)
    probe = po._Fit(np.zeros(1), np.full(1, 100.0), np.full(1, np.inf), np.ones(1))
    po._three_layer_refit(probe, np.full(1, 1e4), np.zeros((1, xs.size)), xs, edge, grid)
    design = seen["designs"][least_at]
    seen.clear()
    chosen = np.asarray(chosen, dtype=float)
    y = np.tile(design @ np.asarray(y_coef, dtype=float), (chosen.size, 1))
    fit = po._Fit(np.full(chosen.size, 5.0), np.sqrt(chosen), np.full(chosen.size, np.inf), np.full(chosen.size, 7.0))
    po._three_layer_refit(fit, chosen, y, xs, edge, grid)
    return fit, design, seen, grid


def test_three_tissues_replace_a_fit_leaving_four_times_their_residual(monkeypatch):
    # chosen 4000 HU^2: three tissues at least 1000 (a quarter) are not taken; just under it they are, with the
    # design's coefficients, its residual and its first layer's thickness
    bright = (1.0, 300.0, 1600.0, 30.0)
    for least, taken in ((1000.0, False), (np.nextafter(1000.0, 0.0), True)):
        fit, design, seen, grid = _given_three_layer_fits(monkeypatch, [4000.0], 40, least, bright)
        assert seen["rows"] == 1
        if taken:
            # the designs run over b1 on the grid, and for each over b2 at least MIN_LAYER_MM beyond it
            pairs = [(b1, b2) for i, b1 in enumerate(grid) for b2 in grid[i + 1 :] if b2 - b1 >= po.MIN_LAYER_MM - 1e-9]
            b1 = pairs[40][0]
            assert fit.tissue_hu[0] == 1040.0 and fit.metal_scale[0] == 40.0
            assert fit.rms_hu[0] == np.sqrt(least) and fit.layer_mm[0] == b1
        else:
            assert fit.tissue_hu[0] == 5.0 and fit.metal_scale[0] == 7.0 and np.isinf(fit.layer_mm[0])
            assert fit.rms_hu[0] == np.sqrt(4000.0)


def test_three_tissues_are_tried_only_above_the_noise_floor_and_kept_only_with_a_bright_middle(monkeypatch):
    floor = po.NOISE_FLOOR_HU**2
    fit, _, seen, _ = _given_three_layer_fits(monkeypatch, [floor, np.nextafter(floor, np.inf), 4000.0], 3, 1.0,
                                              (1.0, 300.0, 1600.0, 30.0))
    assert seen["rows"] == 2  # the row at the floor is not tried
    assert fit.tissue_hu.tolist() == [5.0, 1003.0, 1003.0]
    # the middle as bright as the first or the last tissue, or darker: not kept
    for coef in ((1.0, 1600.0, 1600.0, 30.0), (1.0, 300.0, 1600.0, 1600.0), (1.0, 1600.0, 300.0, 1600.0)):
        fit, _, _, _ = _given_three_layer_fits(monkeypatch, [4000.0], 3, 1.0, coef)
        assert fit.tissue_hu[0] == 5.0, coef
    # nothing above the floor: the fits are not asked for at all
    _, _, seen, _ = _given_three_layer_fits(monkeypatch, [100.0, floor], 3, 1.0, (1.0, 300.0, 1600.0, 30.0))
    assert "rows" not in seen


def test_three_layer_choice_undecided(monkeypatch):
    # the rows fitted again: a tie among the three-tissue designs, or their least within the margin of a quarter
    # of the fit before (the rule) or of the largest residual (80 HU RMS)
    _, _, seen, _ = _given_three_layer_fits(monkeypatch, [4000.0], 3, 1.0, (1.0, 300.0, 1600.0, 30.0))
    und = seen["undecided"]
    m = np.full(1, 1e-3)
    assert not und(np.array([[5000.0, 7000.0, 20000.0]]), m)[0]
    assert und(np.array([[5000.0, 5000.0 + 1e-3, 20000.0]]), m)[0]
    assert not und(np.array([[5000.0, 5000.0 + 2e-3, 20000.0]]), m)[0]
    assert not und(np.array([[5000.0, np.inf, np.inf]]), m)[0]
    assert not und(np.array([[np.inf, np.inf, np.inf]]), m)[0]
    assert und(np.array([[1000.0005, 7000.0, 20000.0]]), m)[0]  # a quarter of 4000
    assert not und(np.array([[1000.002, 7000.0, 20000.0]]), m)[0]
    assert und(np.array([[6399.9995, 7000.0, 20000.0]]), m)[0]  # 80 HU RMS
    assert not und(np.array([[6399.998, 7000.0, 20000.0]]), m)[0]
    # exactly at the margin (2^-10, exact in binary) counts
    e = np.full(1, 2.0**-10)
    assert und(np.array([[1000.0 + 2.0**-10, 7000.0, 20000.0]]), e)[0]
    assert und(np.array([[6400.0 - 2.0**-10, 7000.0, 20000.0]]), e)[0]


def test_three_layer_choice_undecided_row_by_row(monkeypatch):
    # each row's least and ties are its own (the quarter limit is per row: 1000 for both rows here)
    _, _, seen, _ = _given_three_layer_fits(monkeypatch, [4000.0, 4000.0], 3, 1.0, (1.0, 300.0, 1600.0, 30.0))
    und = seen["undecided"]
    rows = np.array([[10.0, 3000.0, 3000.0], [2000.0, 2000.0 + 1e-3, 9000.0]])
    assert und(rows, np.full(2, 1e-3)).tolist() == [False, True]
    rows = np.array([[10.0, 3000.0, 20000.0], [1000.0 + 1e-4, 9000.0, 9000.0 + 5.0]])
    assert und(rows, np.full(2, 1e-3)).tolist() == [False, True]


def test_three_tissues_from_the_first_design(monkeypatch):
    # the least at the very first design (b1 = 0.5 mm, b2 = 1.0 mm) is taken with its own residual
    fit, _, _, grid = _given_three_layer_fits(monkeypatch, [4000.0], 0, 900.0, (1.0, 300.0, 1600.0, 30.0))
    assert fit.tissue_hu[0] == 1000.0 and fit.layer_mm[0] == grid[0] and fit.rms_hu[0] == 30.0

