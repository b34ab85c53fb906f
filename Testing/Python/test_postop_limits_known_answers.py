"""Known answers at the limits of the post-operative walk: the metal's share of the reading is at most 1, the fit
window of the bone reading, its lowest tissue, the bloom's reach for a given offset and the trimming of the rigid
edge placement.

The CTs are columns of 0.5 mm voxels along x (centres at -4.5 + 0.5 i, so voxel boundaries at 0.25 + 0.5 k), the
same at every y and z, read at the nearest voxel: the surface points lie at x = 1/32 mm on voxel centres in y and z,
so the walk's samples (every 1/8 mm from there) and the profiles re-read from its edges never fall on a voxel
boundary, and every reading is a voxel's own value. Each test takes well under a second.
"""

from __future__ import annotations

import numpy as np
import pytest
from ibc_helpers import edges_repeated_on_an_ellipsoid
from ImplantBoneContactLib import postop as po
from ImplantBoneContactLib.volume import Volume

VOXEL = 0.5
X0 = -4.5
N_I = 26  # centres up to 8.0 mm: the walk reaches 6.53 mm, the re-read profiles 7.3 mm
X = X0 + VOXEL * np.arange(N_I)
H = 0.125  # the walk's step (a quarter voxel)
SURFACE_X = 1.0 / 32.0


def _column_ct(value_at_centre, n_jk=12):
    """A CT whose voxel at centre x reads ``value_at_centre(x)``, the same in every row (y, z centres 0.5 j, 0.5 k)."""
    col = np.array([value_at_centre(float(x)) for x in X], dtype=np.float32)
    arr = np.broadcast_to(col[None, None, :], (n_jk, n_jk, N_I)).copy()
    m = np.diag([VOXEL, VOXEL, VOXEL, 1.0])
    m[:3, 3] = [X0, 0.0, 0.0]
    return Volume(array=arr, ijk_to_ras=m)


def _surface_points(n=10):
    """``n`` x ``n`` points at x = 1/32 mm on the voxel centres y, z = 0.5 .. 0.5 n, normals +x."""
    pts = np.array([[SURFACE_X, VOXEL * j, VOXEL * k] for j in range(1, n + 1) for k in range(1, n + 1)])
    return pts, np.tile([1.0, 0.0, 0.0], (len(pts), 1))


# ---------------------------------------------------------------------------------------------------------------
# measure_edge: the metal's share of the reading is clipped to 1, also where the reading at the edge is above the
# metal's level.


def test_the_metal_share_at_the_edge_is_at_most_one_past_a_brighter_layer():
    """Metal of 2500 HU inside the surface (centres up to x = 0), a layer outside it of 3960 HU (centres 0.5 and
    1.0) and 4000 HU (centre 1.5), soft tissue (0 HU) from x = 1.75 on. The walk reads 2500 HU up to x = 0.16,
    3960 HU, then 4000 HU from 1.28 to 1.66 and 0 from 1.78: the only fall (4000 / 2H HU/mm at the samples 1.66 and
    1.78 mm, a run of two) puts the edge at their middle, 1.6875 mm past the surface (x = 1.71875, in the 4000 HU
    voxel). The metal is first the highest reading inside the surface, 2500 HU; walked inward from the edge the
    reading is 4000 HU four times, 3960 HU eight times, then falls to 2500 HU (more than 2 % of the rise): the
    plateau is the median of those twelve within 2 % of 4000 HU, 3960 HU, above 2500, so it is the metal's level.
    The reading at the edge (4000 HU) is then above the metal: its share, 4000 / 3960, is clipped to 1; past the
    edge the share is 0. The spread falls from 1 to 0 within the first step: the blur (15.9 %) is at 0.8413 H."""
    ct = _column_ct(lambda x: 2500.0 if x <= 0.0 else 3960.0 if x <= 1.0 else 4000.0 if x <= 1.5 else 0.0)
    pts, nrm = _surface_points()
    e = po.measure_edge(ct, pts, nrm, method="nearest")
    assert e.method == "measured" and e.n_vertices == 100
    assert e.placement is not None and np.allclose(e.placement.predict(pts, nrm), 1.6875, atol=1e-9)
    assert e.metal_hu == pytest.approx(3960.0, abs=1e-9)
    assert e.metal_weight[0] == 1.0 and not e.metal_weight[1:].any()
    assert e.blur_mm == pytest.approx((1.0 - 0.1587) * H, abs=1e-12)
    assert e.read_start_mm == pytest.approx((1.0 - po.READ_METAL_WEIGHT) * H, abs=1e-12)
    # the weight inside the edge mirrors it: 1 - w(0) = 0 at the edge, 1 a step inside
    assert e.weight(np.array([-H, 0.0, H])).tolist() == [1.0, 1.0, 0.0]


# ---------------------------------------------------------------------------------------------------------------
# sample_metal_aware: the window of the bone reading. With a sharp edge model (half the metal at the edge, none
# from 0.05 mm past it, tissues' edges of 0.01 mm) the metal's term reaches only the window's first sample at every
# stretch of the one-tissue fit, so the fit takes that sample with the metal's scale and the tissue is the mean of
# all the other readings in the window (0 to 3.5 mm past the edge: the bounded depth 3 mm plus the 0.5 mm read
# depth, 29 samples).


def _sharp_edge(metal_hu=3000.0):
    return po.EdgeModel(metal_hu=metal_hu, x_mm=np.array([0.0, 0.05]), metal_weight=np.array([0.5, 0.0]), blur_mm=0.05,
                        bloom_mm=0.05, read_start_mm=0.5, n_vertices=100, method="measured", placement=None,
                        tissue_blur_mm=0.01)


def _metal_then(tissue, deeper=None, deeper_from=2.75):
    """Metal (3000 HU) at the centres up to x = -0.5 (x < -0.25), then ``tissue``, then ``deeper`` at the centres
    from ``deeper_from`` + 0.25 on."""
    return _column_ct(lambda x: 3000.0 if x <= -0.5 else tissue if deeper is None or x < deeper_from else deeper)


def test_the_bone_is_read_over_the_window_to_the_bounded_depth_plus_the_read_depth():
    """Metal to x = -0.25, bone of 1000 HU, and 1060 HU from x = 2.75 on. The walk's only fall is across x = -0.25,
    between its samples at -0.34 and -0.22 mm: the edge is their middle, x = -0.28125 (offset -0.3125 mm, in the
    metal). Read from there every 1/8 mm, the window's 29 samples are 3000 HU, 24 x 1000 HU (to x = 2.72) and
    4 x 1060 HU (to 3.22): the bone is their mean, 1000 + 4 x 60 / 28 = 1008.57 HU (a window two samples shorter:
    1004.6; a sample longer, which reads 1060 at 3.34: 1010.3; to 2.5 mm only: 1000; read trilinearly, the samples
    near the edge would be 2125, 1625 and 1125 HU). The fit leaves 425.6 HU^2 (one tissue, below the 30 HU noise
    floor's 900), the metal's scale is (3000 - 1008.57 / 2) / 1500 = 1.66: reliable."""
    ct = _metal_then(1000.0, deeper=1060.0)
    pts, nrm = _surface_points(3)
    s = po.sample_metal_aware(ct, pts, nrm, _sharp_edge(), method="nearest")
    assert np.allclose(s.edge_mm, -0.3125, atol=1e-12)
    assert np.allclose(s.bone_start_mm, -0.3125 + 0.5, atol=1e-12)
    assert s.reliable.all() and s.inside_ct.all()
    assert np.allclose(s.hu, 1000.0 + 4 * 60.0 / 28, atol=1e-4)


@pytest.mark.parametrize("tissue, reliable", [(-1100.5, False), (-1099.5, True)])
def test_a_tissue_below_minus_1100_hu_is_not_bone(tissue, reliable):
    """One tissue past the edge, read exactly by the fit (3000 HU at the edge, then 28 readings of the tissue; the
    metal's scale (3000 - tissue / 2) / 2500 = 1.42 against a 5000 HU model metal): a tissue half a HU below
    -1100 HU is not bone (unreliable, the plain reading at the bounded depth kept: the same tissue); half a HU
    above it is."""
    ct = _metal_then(tissue)
    pts, nrm = _surface_points(3)
    s = po.sample_metal_aware(ct, pts, nrm, _sharp_edge(metal_hu=5000.0), method="nearest")
    assert s.inside_ct.all() and np.allclose(s.edge_mm, -0.3125, atol=1e-12)
    assert (s.reliable == reliable).all()
    assert np.allclose(s.hu, tissue, atol=1e-4)


# ---------------------------------------------------------------------------------------------------------------
# assess: an offset reads the bloom when it lies short of the bloom's reach (the 2 % distance past the edge plus
# the edge's median offset outside the surface); an offset exactly at the reach does not.


@pytest.mark.parametrize("offset_mm, warned", [(0.3125, False), (0.3, True)])
def test_an_offset_exactly_at_the_blooms_reach_does_not_read_the_bloom(offset_mm, warned):
    """Metal of 5000 HU (centres up to x = 0), one voxel of 100 HU (centre 0.5: 2 % of the metal), 0 HU from
    x = 0.75. The walk's steepest fall is across x = 0.25, between its samples at 0.16 and 0.28 mm: the edge is
    0.1875 mm outside the surface (x = 0.21875, in the metal). Re-read from there the metal's share is 1, then
    100 / 5000 = 0.02 exactly for four samples (to x = 0.72), then 0: the bloom (share 2 %) is reached at the first
    step, 0.125 mm past the edge, and the reach is 0.125 + 0.1875 = 0.3125 mm. An offset of 0.3125 mm lies at the
    reach, not short of it: no warning; 0.3 mm is short of it."""
    from ImplantBoneContactLib import AnalysisParameters

    ct = _column_ct(lambda x: 5000.0 if x <= 0.0 else 100.0 if x <= 0.5 else 0.0)
    pts, nrm = _surface_points()
    a = po.assess(ct, pts, nrm, np.ones(len(pts)), AnalysisParameters(sampling="nearest", offset_mm=offset_mm))
    assert a.ct_kind == po.POST_OPERATIVE and not a.metal_aware
    assert a.edge.method == "measured" and a.edge.metal_hu == 5000.0
    assert a.edge.metal_weight[1] == 0.02 and a.edge.bloom_mm == 0.125
    assert a.notes["metal_edge_offset_median_mm"] == 0.1875
    bloom_warnings = [w for w in a.warnings if "read the metal's bloom" in w]
    assert len(bloom_warnings) == int(warned)
    if warned:
        assert "up to 0.31 mm outside the surface" in bloom_warnings[0]


# ---------------------------------------------------------------------------------------------------------------
# fit_edge_placement: the trimming keeps a point whose residual is exactly the tolerance. Every point of a set of 20
# on an ellipsoid carries the same own edge, and the sets are repeated with other edges: the least-squares placement
# is then the constant offset equal to the points' mean edge (the same at every point) with no shift and no
# rotation; a fit to edges that are all 0 is exactly 0 (no rounding), so the residuals are the edges themselves.


def test_the_trimming_keeps_an_edge_exactly_at_the_tolerance():
    """Own edges 0 mm (10 times), 0.3 mm (once) and -2 mm (once) at each of 20 points. The first fit is their mean,
    -1.7 / 12 = -0.142 mm; the residuals are 0.142 (200 points), 0.442 (20) and -1.858 mm (20); over half lie on
    the median, so the robust spread is 0 and the tolerance the 0.3 mm floor: the 200 edges of 0 mm are kept. Fitted
    to them alone the placement is exactly 0, and the 0.3 mm edges lie exactly at the 0.3 mm tolerance: kept, so
    the third fit is on 220 points, 20 x 0.3 / 220 = 0.0273 mm, and keeps them (the last fit, 220 points)."""
    pts, nrm, own = edges_repeated_on_an_ellipsoid([0.0] * 10 + [0.3, -2.0])
    pl = po.fit_edge_placement(pts, nrm, own, voxel_mm=1.0)
    assert pl.n_points == 220
    assert np.allclose(pl.coef, [0.3 / 11, 0, 0, 0, 0, 0, 0], atol=1e-12)
    assert pl.residual_mm == pytest.approx(0.0, abs=1e-12) and pl.tolerance_mm == pytest.approx(0.3)


def test_a_trimming_that_does_not_settle_ends_with_the_fifth_rounds_fit():
    """Own edges 0 mm (4 times), 1.1 mm (once), -0.5 mm (twice) and -1.1 mm (3 times) at each of 20 points: the
    trimming alternates between two sets and never settles.
    All 200 edges: mean -64 / 200 = -0.32 mm, residuals 0.32 (80), 1.42 (20), -0.18 (40), -0.78 mm (60), median
    (-0.18 + 0.32) / 2 = 0.07, absolute deviations 0.25 (120), 0.85 (60), 1.35 (20): MAD 0.25, spread
    1.4826 x 0.25 = 0.371 mm, tolerance 1.112 mm: the 1.1 mm edges (residual 1.42) go.
    The other 180: mean -86 / 180 = -0.478 mm, residuals 0.478, -0.022, -0.622 (and 1.578 for the 1.1 mm edges),
    median -0.022, deviations 0 (40), 0.5 (80), 0.6 (60): MAD 0.5, spread 0.741, tolerance 2.224 mm: all 200 come
    back. Rounds 1, 3 and 5 fit all 200 edges, rounds 2 and 4 the 180: the placement is the fifth round's, -0.32 mm
    with its spread 0.371 mm, and the points kept after it are the 180 (a sixth round would fit those)."""
    pts, nrm, own = edges_repeated_on_an_ellipsoid([0.0] * 4 + [1.1] + [-0.5] * 2 + [-1.1] * 3)
    pl = po.fit_edge_placement(pts, nrm, own, voxel_mm=1.0)
    assert pl.n_points == 180
    assert np.allclose(pl.coef, [-0.32, 0, 0, 0, 0, 0, 0], atol=1e-12)
    assert pl.residual_mm == pytest.approx(1.4826 * 0.25, abs=1e-12)
    # tolerance: three spreads (1.112 mm), at most half the 1 mm voxel
    assert pl.tolerance_mm == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------------
# sample_metal_aware: the limits of the profile fit's verdict. A fitted tissue, scale or residual comes out of a
# pseudo-inverse and meets a limit only up to the last bits of rounding, so the verdict is tested on fits given by
# hand: `_layer_fit` is replaced by one that returns the given figures for every profile, on the CT of metal then
# 1000 HU above (every walk inside the CT, an edge found 0.1875 mm short of the bounded depth). A told point keeps
# the fit's tissue; a point not told keeps the plain reading at the bounded depth (3 mm out: 1000 HU).

_TISSUE_SIGMA = _sharp_edge().tissue_sigma_mm()  # 0.01 mm
_AT_THE_LIMITS = [
    # (tissue HU, residual HU RMS, first layer mm, metal scale), told
    ((1500.0, 0.0, np.inf, 1.0), True),
    ((1500.0, 0.0, _TISSUE_SIGMA, 1.0), True),  # a layer exactly as thick as the tissues' blur is resolved
    ((1500.0, 0.0, np.nextafter(_TISSUE_SIGMA, 0.0), 1.0), False),
    ((1500.0, po.MAX_FIT_RMS_HU, np.inf, 1.0), True),  # a residual of exactly 80 HU RMS is a fit
    ((1500.0, np.nextafter(po.MAX_FIT_RMS_HU, np.inf), np.inf, 1.0), False),
    ((1500.0, 0.0, np.inf, po.METAL_SCALE_RANGE[0]), True),  # the metal's scale 0.6 and 1.8 are within the range
    ((1500.0, 0.0, np.inf, np.nextafter(po.METAL_SCALE_RANGE[0], 0.0)), False),
    ((1500.0, 0.0, np.inf, po.METAL_SCALE_RANGE[1]), True),
    ((1500.0, 0.0, np.inf, np.nextafter(po.METAL_SCALE_RANGE[1], np.inf)), False),
    ((-1100.0, 0.0, np.inf, 1.0), True),  # -1100 HU is the lowest tissue (air at its noisiest)
    ((np.nextafter(-1100.0, -np.inf), 0.0, np.inf, 1.0), False),
    ((po.MAX_BONE_HU, 0.0, np.inf, 1.0), False),  # 2500 HU is the metal, not bone
    ((np.nextafter(po.MAX_BONE_HU, 0.0), 0.0, np.inf, 1.0), True),
]


@pytest.mark.parametrize("fit, told", _AT_THE_LIMITS)
def test_the_fits_verdict_at_its_limits(monkeypatch, fit, told):
    tissue, rms, layer, scale = fit
    seen = []

    def given_fit(raw, x, edge):
        seen.append(raw.shape[0])
        n = raw.shape[0]
        return po._Fit(tissue_hu=np.full(n, tissue), rms_hu=np.full(n, rms), layer_mm=np.full(n, layer),
                       metal_scale=np.full(n, scale))

    monkeypatch.setattr(po, "_layer_fit", given_fit)
    ct = _metal_then(1000.0)
    pts, nrm = _surface_points(3)
    s = po.sample_metal_aware(ct, pts, nrm, _sharp_edge(), method="nearest")
    assert seen == [9]  # every profile went to the fit
    assert s.inside_ct.all() and np.allclose(s.bone_start_mm, -0.3125 + 0.5, atol=1e-12)
    assert (s.reliable == told).all()
    assert np.allclose(s.hu, tissue if told else 1000.0, atol=1e-9)
