"""Known answers for the post-operative edge code: the runs of equal falls the edge finder looks for, the
rigid placement of the metal edge (its design, fit, prediction and record), the edge model's weights, the
zones named as mostly unreliable, and the walk, edge and bone reading on small blurred metal planes.

Every expected value is worked out here by hand or from the phantom's construction (a metal plane blurred by
a known Gaussian, sampled at the voxel centres; see ``test_postop_known_answers.py`` for the same phantom).
Each test takes well under a second.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from ibc_helpers import blurred_metal_plane_ct, plane_points
from ImplantBoneContactLib import postop as po
from ImplantBoneContactLib.volume import Volume

# ---------------------------------------------------------------------------------------------------------------
# Runs of equal values (_plateaus)


def _runs(row, strongest):
    start, end = po._plateaus(np.array([row], float), np.array([strongest], float))
    return start[0].tolist(), end[0].tolist()


def test_plateaus_of_a_rising_run_and_a_fall():
    # Runs: [1], [2, 2, 2], [3], [1].
    assert _runs([1, 2, 2, 2, 3, 1], 3.0) == ([0, 1, 1, 1, 4, 5], [0, 3, 3, 3, 4, 5])
    # A run at the start and a run to the end.
    assert _runs([2, 2, 3], 3.0) == ([0, 0, 2], [1, 1, 2])
    assert _runs([1, 2, 2], 2.0) == ([0, 1, 1], [0, 2, 2])
    assert _runs([5, 5, 5, 5], 5.0) == ([0, 0, 0, 0], [3, 3, 3, 3])


def test_plateaus_are_found_per_row():
    # Two rows with different runs: accumulating the run ends along the wrong axis would mix them.
    start, end = po._plateaus(np.array([[1.0, 2.0, 2.0, 3.0], [4.0, 4.0, 1.0, 1.0]]), np.array([3.0, 4.0]))
    assert start.tolist() == [[0, 1, 1, 3], [0, 0, 2, 2]]
    assert end.tolist() == [[0, 2, 2, 3], [1, 1, 3, 3]]


def test_plateaus_tolerance_is_a_millionth_of_the_strongest():
    # Within 1e-6 of the strongest (here 1) is the same run, exactly at the limit too.
    assert _runs([0.0, 1e-6], 1.0) == ([0, 0], [1, 1])
    assert _runs([0.0, 3e-6], 1.0) == ([0, 1], [0, 1])
    # A strongest of 10: within 1e-5.
    assert _runs([0.0, 8e-6], 10.0) == ([0, 0], [1, 1])
    # A strongest of 0.5: within 5e-7.
    assert _runs([0.0, 8e-7], 0.5) == ([0, 1], [0, 1])
    # No positive finite strongest: within 1e-6 (as for a strongest of 1).
    for strongest in (0.0, -5.0, -np.inf, np.nan):
        assert _runs([0.0, 5e-7], strongest) == ([0, 0], [1, 1]), strongest
        assert _runs([0.0, 1.5e-6], strongest) == ([0, 1], [0, 1]), strongest


def test_plateaus_of_infinite_values():
    # Missing falls are -inf: equal infinities are one run, an infinity after a finite value starts a new one.
    assert _runs([-np.inf, -np.inf, 1.0], 1.0) == ([0, 0, 2], [1, 1, 2])
    assert _runs([1.0, -np.inf], 1.0) == ([0, 1], [0, 1])
    assert _runs([0.0, -np.inf, -np.inf], 1.0) == ([0, 1, 1], [0, 2, 2])
    assert _runs([-np.inf, 0.0, -np.inf, -np.inf], 1.0) == ([0, 1, 2, 2], [0, 1, 3, 3])


# ---------------------------------------------------------------------------------------------------------------
# The rigid placement of the metal edge


def test_rigid_design_rows():
    # Row: 1, the normal, and (p - centre) x n, so that the edge offset of a rigid motion is linear in (c, t, omega).
    rel = np.array([[0.0, 2.0, 3.0], [1.0, 0.0, 0.0]])
    nrm = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    d = po._rigid_design(rel, nrm)
    assert d.tolist() == [[1.0, 0.0, 0.0, 1.0, 2.0, 0.0, 0.0], [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]]


def test_edge_placement_predicts_the_offset_of_a_small_rigid_motion():
    # A point p with outward normal n, moved by a shift t and a small rotation omega about the centre c: it moves
    # by t + omega x (p - c), which along n is n . t + omega . ((p - c) x n). Worked out by hand for
    # p = (1, 2, 3), c = (1, 0, 0), n = (0, 0, 1): p - c = (0, 2, 3), (p - c) x n = (2, 0, 0).
    coef = np.array([0.5, 0.1, 0.2, 0.3, 0.01, 0.02, 0.03])
    pl = po.EdgePlacement(coef=coef, centre=np.array([1.0, 0.0, 0.0]), residual_mm=0.0, tolerance_mm=0.3, n_points=60)
    got = pl.predict(np.array([[1.0, 2.0, 3.0], [1.0, 0.0, 0.0]]), np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert got[0] == pytest.approx(0.5 + 0.3 + 2.0 * 0.01, abs=1e-12)
    assert got[1] == pytest.approx(0.5 + 0.1, abs=1e-12)  # at the centre the rotation moves nothing


def test_edge_placement_keeps_own_edges_within_the_tolerance():
    # The fitted edge is 0.25 mm everywhere; own edges within 0.5 mm of it (the limit included) are kept, the
    # others take the fitted edge, and a point without an edge has none.
    pl = po.EdgePlacement(coef=np.array([0.25, 0, 0, 0, 0, 0, 0], float), centre=np.zeros(3), residual_mm=0.1,
                          tolerance_mm=0.5, n_points=60)
    pts = np.zeros((5, 3))
    nrm = np.tile([1.0, 0.0, 0.0], (5, 1))
    got = pl.place(pts, nrm, np.array([0.75, -0.25, 1.0, -0.5, np.nan]))
    assert got[:4].tolist() == [0.75, -0.25, 0.25, 0.25] and math.isnan(got[4])


def test_edge_placement_record():
    pl = po.EdgePlacement(coef=np.array([0.12345, 1.23456, -0.5, 2.0, math.radians(10.0), 0.012, -math.radians(1.0)]),
                          centre=np.zeros(3), residual_mm=0.12345, tolerance_mm=0.34567, n_points=60)
    assert pl.to_dict() == {
        "edge_placement_offset_mm": 0.123,
        "edge_placement_shift_mm": [1.235, -0.5, 2.0],
        "edge_placement_rotation_deg": [10.0, 0.688, -1.0],  # 0.012 rad = 0.68755 degrees
        "edge_placement_residual_mm": 0.123,
        "edge_placement_tolerance_mm": 0.346,
    }
    # The edge model's record carries it.
    e = po.EdgeModel(metal_hu=3000.0, x_mm=np.array([0.0, 1.0]), metal_weight=np.array([0.5, 0.0]), blur_mm=0.5,
                     bloom_mm=1.0, read_start_mm=0.5, n_vertices=60, method="measured", placement=pl)
    assert {k: v for k, v in e.to_dict().items() if k.startswith("edge_placement")} == pl.to_dict()


def _sphere_points(n=64, radius=10.0, centre=(2.0, -1.0, 5.0)):
    """Points on a sphere (a Fibonacci lattice) with their outward normals: every direction, so the seven unknowns
    of the rigid placement are all determined."""
    k = np.arange(n) + 0.5
    z = 1.0 - 2.0 * k / n
    phi = math.pi * (3.0 - math.sqrt(5.0)) * k
    r = np.sqrt(1.0 - z**2)
    nrm = np.stack([r * np.cos(phi), r * np.sin(phi), z], axis=1)
    # A sphere's normals are radial, so a rotation about its centre moves nothing along them: stretch it into an
    # ellipsoid (normals of x^2/a^2 + ... : (x/a^2, y/b^2, z/c^2)).
    axes = np.array([1.0, 1.5, 2.5]) * radius
    pts = nrm * axes
    n_out = pts / axes**2
    n_out /= np.linalg.norm(n_out, axis=1, keepdims=True)
    return pts + np.asarray(centre), n_out


def test_fit_edge_placement_recovers_a_rigid_motion_and_drops_a_bright_layer():
    # Own edges from a known placement (offset 0.2 mm, shift (0.3, -0.1, 0.05) mm, rotation (0.01, -0.02, 0.005)
    # rad about the points' mean), each found twice, +-0.05 mm off (a spread whose robust value is 1.4826 * 0.05
    # and which the least squares average out exactly), and 8 points whose edge a bright layer moved 2 mm out.
    pts, nrm = _sphere_points()
    truth = np.array([0.2, 0.3, -0.1, 0.05, 0.01, -0.02, 0.005])
    pts2, nrm2 = np.vstack([pts, pts]), np.vstack([nrm, nrm])
    centre = pts2.mean(axis=0)
    exact = np.column_stack([np.ones(len(pts2)), nrm2, np.cross(pts2 - centre, nrm2)]) @ truth
    own = exact + np.r_[np.full(len(pts), 0.05), np.full(len(pts), -0.05)]
    layer = np.arange(0, 64, 8)
    own[layer] += 2.0
    own[layer + 64] += 2.0
    pl = po.fit_edge_placement(pts2, nrm2, own, voxel_mm=3.0)
    assert pl is not None
    assert np.allclose(pl.centre, centre, atol=1e-12)
    assert np.allclose(pl.coef, truth, atol=1e-9)
    assert pl.n_points == 128 - 16
    assert pl.residual_mm == pytest.approx(1.4826 * 0.05, rel=1e-6)
    # The tolerance: three robust spreads (0.222 mm) raised to 0.3 mm.
    assert pl.tolerance_mm == pytest.approx(0.3, abs=1e-12)
    fitted = pl.predict(pts2, nrm2)
    assert np.allclose(fitted, exact, atol=1e-9)
    placed = pl.place(pts2, nrm2, own)
    assert np.allclose(placed[layer], exact[layer], atol=1e-9)  # the layer's points take the fitted edge
    keep = np.setdiff1d(np.arange(128), np.r_[layer, layer + 64])
    assert np.array_equal(placed[keep], own[keep])


@pytest.mark.parametrize(("spread", "voxel", "tolerance"), [
    (0.1, 3.0, 3 * 1.4826 * 0.1),  # three robust spreads: 0.445 mm, within [0.3 mm, half a voxel]
    (0.1, 0.8, 0.4),  # at most half a voxel
    (0.1, 0.5, 0.3),  # half a voxel is below 0.3 mm: 0.3 mm
    (0.01, 3.0, 0.3),  # at least 0.3 mm
])
def test_fit_edge_placement_tolerance(spread, voxel, tolerance):
    pts, nrm = _sphere_points()
    pts2, nrm2 = np.vstack([pts, pts]), np.vstack([nrm, nrm])
    own = 0.1 + np.r_[np.full(len(pts), spread), np.full(len(pts), -spread)]
    pl = po.fit_edge_placement(pts2, nrm2, own, voxel_mm=voxel)
    assert pl.residual_mm == pytest.approx(1.4826 * spread, rel=1e-6)
    assert pl.tolerance_mm == pytest.approx(tolerance, rel=1e-6)
    assert pl.n_points == 128 and np.allclose(pl.coef, [0.1, 0, 0, 0, 0, 0, 0], atol=1e-9)


def test_fit_edge_placement_needs_50_edges():
    pts, nrm = _sphere_points(n=60)
    own = np.full(60, 0.4)
    own[50:] = np.nan  # points without an edge do not count and are not fitted
    pl = po.fit_edge_placement(pts, nrm, own, voxel_mm=1.0)
    assert pl is not None and pl.n_points == 50
    assert np.allclose(pl.centre, pts[:50].mean(axis=0), atol=1e-12)
    assert np.allclose(pl.coef, [0.4, 0, 0, 0, 0, 0, 0], atol=1e-9)
    own[49] = np.nan
    assert po.fit_edge_placement(pts, nrm, own, voxel_mm=1.0) is None


# ---------------------------------------------------------------------------------------------------------------
# The edge model's weights


def _edge_model(x, w, blur=0.5, tissue_blur=None):
    return po.EdgeModel(metal_hu=3000.0, x_mm=np.asarray(x, float), metal_weight=np.asarray(w, float), blur_mm=blur,
                        bloom_mm=1.0, read_start_mm=0.5, n_vertices=40, method="measured", tissue_blur_mm=tissue_blur)


def test_edge_weight_at_the_edge_and_beyond_the_measured_distances():
    e = _edge_model([0.0, 1.0, 2.0], [0.6, 0.3, 0.1])
    # At the edge itself: the measured share (not one minus it); beyond the last distance: no metal.
    assert e.weight([0.0]).tolist() == [0.6]
    assert np.allclose(e.weight([-1.0, 2.0, 2.5, 10.0]), [0.7, 0.1, 0.0, 0.0])


def test_tissue_weight_is_a_gaussian_edge_of_the_tissue_blur():
    # sigma 2 mm: the share at 2 mm is that one sigma past a Gaussian edge, 15.87 %; at -4 mm 97.72 %.
    e = _edge_model([0.0, 1.0], [0.5, 0.0], blur=0.5, tissue_blur=2.0)
    assert e.tissue_sigma_mm() == 2.0
    assert np.allclose(e.tissue_weight(np.array([0.0, 2.0, -4.0])), [0.5, 0.158655, 0.977250], atol=1e-6)
    # Not measured, zero, negative or NaN: the edge's own blur.
    for t in (None, 0.0, -1.0, float("nan")):
        assert _edge_model([0.0, 1.0], [0.5, 0.0], blur=0.5, tissue_blur=t).tissue_sigma_mm() == 0.5


# ---------------------------------------------------------------------------------------------------------------
# Zones named as mostly unreliable


def _assessment():
    return po.Assessment(po.POST_OPERATIVE, True, po.Detection(po.POST_OPERATIVE, np.ones(1, bool), np.ones(1)))


def test_zones_mostly_unreliable_are_named():
    a = _assessment()
    zones = pd.DataFrame({"zone": pd.Series([1, 2, 3, 4, 5, "all"], dtype=object),
                          "frac_unreliable": [0.5, 1.0 / 3.0, 0.3, np.nan, 1.0, 0.9]})
    w = po.unreliable_zone_warnings(a, zones)
    # 1/3 exactly is named; 0.3 and a zone without samples (NaN) are not; the row 'all' is not a zone.
    assert a.notes["zones_mostly_unreliable"] == ["1", "2", "5"]
    assert w == ["zones 1 (50%), 2 (33%), 5 (100%) are 33% or more 'unreliable': their cortical, cancellous and "
                 "no-bone fractions describe only the rest of the zone, where the bone was told from the bloom, and "
                 "cannot be taken as the zone's contact"]


def test_no_zone_mostly_unreliable():
    a = _assessment()
    zones = pd.DataFrame({"zone": ["1", "2", "all"], "frac_unreliable": [0.33, 0.0, 0.5]})
    assert po.unreliable_zone_warnings(a, zones) == []
    assert a.notes["zones_mostly_unreliable"] == []
    # A table without the column (a pre-operative run): nothing said, nothing recorded.
    b = _assessment()
    assert po.unreliable_zone_warnings(b, pd.DataFrame({"zone": ["1", "all"], "mean_hu": [1.0, 1.0]})) == []
    assert "zones_mostly_unreliable" not in b.notes


# ---------------------------------------------------------------------------------------------------------------
# Walk, edge and bone reading on blurred metal planes (0.5 mm voxels; metal for x < plane, tissue beyond)

VOXEL = 0.5
X0 = -4.5  # x of the first voxel column (mm)


def test_a_sharp_step_sampled_at_the_nearest_voxel():
    # Metal voxels up to x = -0.5, tissue from x = 0: the nearest voxel of a sample changes between x = -0.375
    # (metal) and -0.25 (tissue, the half-way point rounds up). The two samples' falls are the largest, equal, and
    # the edge is their middle, -0.3125 mm; read trilinearly the step is a ramp from -0.5 to 0, edge at -0.25.
    ct = blurred_metal_plane_ct(sigma=0.0)
    pts, nrm = plane_points()
    assert np.allclose(po._walk(ct, pts, nrm, "nearest", None).edge_mm, -0.3125, atol=1e-12)
    assert np.allclose(po._walk(ct, pts, nrm, "trilinear", None).edge_mm, -0.25, atol=1e-12)
    e = po.measure_edge(ct, pts, nrm, "nearest")
    assert e.metal_hu == 3500.0 and e.method == "measured"
    # Read outward from -0.3125: the metal voxel, then tissue: share 1 at the edge, 0 from the next sample, so the
    # 15.87 % crossing lies 0.8413 of a 0.125 mm step past the edge.
    assert e.metal_weight[0] == 1.0 and not e.metal_weight[1:].any()
    assert e.blur_mm == pytest.approx(0.125 * (1.0 - 0.1587), abs=1e-12)
    # Inside the edge the reading is all metal at once: no blur to measure.
    assert e.tissue_blur_mm is None
    # Trilinear, the share at the edge (the ramp's middle) is one half.
    assert po.measure_edge(ct, pts, nrm).metal_weight[0] == pytest.approx(0.5, abs=1e-6)


def test_assess_samples_with_the_method_asked_for():
    ct = blurred_metal_plane_ct(sigma=0.0)
    pts, nrm = plane_points()
    from ImplantBoneContactLib import AnalysisParameters

    a = po.assess(ct, pts, nrm, np.ones(len(pts)), AnalysisParameters(sampling="nearest"))
    assert a.edge.metal_weight[0] == 1.0 and not a.edge.metal_weight[1:].any()
    # One voxel layer of metal (x = -1 mm) in tissue: trilinear samples 0.125 mm apart from x = 0.06 never reach a
    # voxel centre (at most 2000 (1 - 0.06 / 0.5) = 1760 HU), the nearest voxel reads 2000 HU.
    layer = blurred_metal_plane_ct(metal=0.0, tissue=0.0, sigma=0.0)
    layer.array[:, :, 7] = 2000.0
    p, n = plane_points(x=0.06)
    assert po.detect(layer, p, n, np.ones(len(p))).ct_kind == po.PRE_OPERATIVE
    assert po.detect(layer, p, n, np.ones(len(p)), "nearest").ct_kind == po.POST_OPERATIVE
    a = po.assess(layer, p, n, np.ones(len(p)), AnalysisParameters(sampling="nearest"))
    assert a.ct_kind == po.POST_OPERATIVE and a.detection.in_metal.all()
    w = po._walk(layer, p, n, "nearest", None)
    assert w.in_metal.all() and np.all(w.inside_max == 2000.0)
    assert not po._walk(layer, p, n, "trilinear", None).in_metal.any()


def test_metal_read_at_the_surface_counts_and_outside_it_does_not():
    # Normals pointing into the metal: the highest reading within 1.5 mm inside (into the tissue) is the surface's
    # own, the voxel centre at x = 0 (3500 G(0) = 1750 HU); not the deeper tissue, nor the metal outside.
    ct = blurred_metal_plane_ct(sigma=0.6)
    pts, nrm = plane_points(n=3)
    assert np.all(po._walk(ct, pts, -nrm, "trilinear", None).inside_max == 1750.0)
    assert np.all(po.detect(ct, pts, -nrm, np.ones(9)).inside_max_hu == 1750.0)
    # Metal in one voxel layer at x = 0 only, read at the nearest voxel from x = 0.1 inward: the surface's own
    # samples (0.1 to -0.15 mm) are in it.
    layer = blurred_metal_plane_ct(metal=0.0, tissue=0.0, sigma=0.0)
    layer.array[:, :, 9] = 2500.0
    p, n = plane_points(n=3, x=0.1)
    assert np.all(po.detect(layer, p, n, np.ones(9), "nearest").inside_max_hu == 2500.0)


def test_detection_reads_the_inside_part_of_a_walk_leaving_the_ct():
    # Points 1 mm from the CT's first voxel centre (x = -4.5): the 1.5 mm inside them leave the CT; the samples
    # that are in it read the metal, and only those count.
    ct = blurred_metal_plane_ct(sigma=0.6)
    pts, nrm = plane_points(n=3, x=-3.5)
    det = po.detect(ct, pts, nrm, np.ones(9))
    assert np.allclose(det.inside_max_hu, 3500.0, rtol=1e-6) and det.in_metal.all()


def test_detection_share_with_small_areas():
    # A surface of 0.09 mm^2 in all, all of it on the metal.
    ct = blurred_metal_plane_ct()
    pts, nrm = plane_points(n=3)
    det = po.detect(ct, pts, nrm, np.full(9, 0.01))
    assert det.evidence["fraction_area_with_metal_inside"] == pytest.approx(1.0) and det.ct_kind == po.POST_OPERATIVE


def test_metal_at_exactly_the_detection_level_is_metal_for_the_walk():
    ct = blurred_metal_plane_ct(metal=2000.0, sigma=0.0)
    pts, nrm = plane_points(n=3)
    w = po._walk(ct, pts, nrm, "nearest", None)
    assert w.in_metal.all() and np.isfinite(w.edge_mm).all()


def test_edge_beyond_the_bounded_depth_is_not_found():
    # The metal ends 4 mm outside the surface, past the 3 mm bounded depth: its fall is not looked at.
    pts, nrm = plane_points(n=3)
    assert np.isnan(po._walk(blurred_metal_plane_ct(sigma=0.6, plane=4.0), pts, nrm, "trilinear", None).edge_mm).all()
    assert np.allclose(po._walk(blurred_metal_plane_ct(sigma=0.6, plane=2.5), pts, nrm, "trilinear", None).edge_mm, 2.5, atol=0.05)


def test_measured_edge_follows_the_metal_edge_off_the_surface():
    # The metal ends 0.5 mm (one voxel) outside the surface: the profiles are read from the edge found there, so
    # the share past it and the blur inside it are the Gaussian's, as with the metal on the surface.
    sigma = 0.8
    pts, nrm = plane_points()
    e = po.measure_edge(blurred_metal_plane_ct(sigma=sigma, plane=0.5), pts, nrm)
    assert e.method == "measured"
    assert np.max(np.abs(e.metal_weight - po._gaussian_tail(e.x_mm / sigma))) < 0.03
    assert e.tissue_blur_mm == pytest.approx(sigma, abs=0.1)
    # The rigid placement: the edge 0.5 mm out on every point.
    assert e.placement is not None and np.allclose(e.placement.predict(pts, nrm), 0.5, atol=0.01)


def test_measured_edge_against_soft_tissue_of_200_hu():
    # The share is (reading - tissue) / (metal - tissue): a Gaussian's again, the blur inside the edge sigma.
    sigma = 0.8
    e = po.measure_edge(blurred_metal_plane_ct(sigma=sigma, tissue=200.0), *plane_points())
    assert e.method == "measured" and e.n_vertices == 100
    assert np.max(np.abs(e.metal_weight - po._gaussian_tail(e.x_mm / sigma))) < 0.03
    assert e.tissue_blur_mm == pytest.approx(sigma, abs=0.1)
    # 300 HU is no longer soft tissue: a Gaussian edge from the slope.
    assert po.measure_edge(blurred_metal_plane_ct(sigma=sigma, tissue=300.0), *plane_points()).method == "gaussian"


def test_measured_edge_profile_distances():
    # x from 0 to the walk's 6.5 mm less 1 mm, every 0.125 mm: 45 distances, the last 5.5 mm.
    e = po.measure_edge(blurred_metal_plane_ct(), *plane_points())
    assert e.x_mm.size == 45 and e.x_mm[-1] == 5.5


def test_gaussian_edge_blur_from_the_slope_against_bone():
    # Bone (1000 HU) beyond a metal blurred by sigma 0.8 mm: the slope at the edge is (metal - bone) / (sigma
    # sqrt(2 pi)) and the contrast is the metal's reading (97 % of the way from bone to metal at 1.5 mm inside)
    # less the bone: sigma 0.78 mm, widened a little by the trilinear interpolation. No tissue blur measured.
    e = po.measure_edge(blurred_metal_plane_ct(sigma=0.8, tissue=1000.0), *plane_points())
    assert e.method == "gaussian"
    assert e.blur_mm == pytest.approx(0.8, abs=0.06)
    assert e.tissue_blur_mm is None


def test_tissue_blur_on_exactly_30_soft_tissue_vertices():
    p, n = plane_points(n=6)
    e = po.measure_edge(blurred_metal_plane_ct(sigma=0.8), p[:30], n[:30])
    assert e.method == "measured" and e.n_vertices == 30
    assert e.tissue_blur_mm == pytest.approx(0.8, abs=0.1)


def test_measure_edge_on_exactly_100_chosen_vertices():
    # 200 points on the metal's edge; the first 100 chosen: the spread is measured on those only.
    ct = blurred_metal_plane_ct()
    p1, n1 = plane_points()
    p2, _ = plane_points(y0=0.1)
    pts, nrm = np.vstack([p1, p2]), np.vstack([n1, n1])
    assert po.measure_edge(ct, pts, nrm).n_vertices == 200
    e = po.measure_edge(ct, pts, nrm, use=np.r_[np.ones(100, bool), np.zeros(100, bool)])
    assert e.n_vertices == 100
    assert po.measure_edge(ct, pts, nrm, use=np.r_[np.ones(99, bool), np.zeros(101, bool)]).n_vertices == 200


def test_soft_tissue_vertices_need_a_flat_tissue_of_their_own():
    # Rows of voxels along y: fat (-150 HU) for y < -1 mm, soft tissue (0 HU) from -1 to 1 mm, and beyond 1 mm soft
    # tissue with a cortex (1500 HU) from x = 3.5 to 4.5 mm. The fat and soft tissue points each see a flat tissue
    # (their own), the cortex points do not: 75 of 120 points (45 fat, 30 soft) measure the spread.
    y = -0.5 * VOXEL * 15 + VOXEL * np.arange(16)
    t = np.where(y < -1.0, -150.0, 0.0)
    ct = blurred_metal_plane_ct(sigma=0.8, tissue_by_j=t)
    cortex = (y > 1.0)[None, :, None] & ((X0 + VOXEL * np.arange(30) >= 3.5) & (X0 + VOXEL * np.arange(30) <= 4.5))[None, None, :]
    ct.array[np.broadcast_to(cortex, ct.array.shape)] = 1500.0
    pts = []
    for y0 in (-2.75, -2.25, -1.75, -0.25, 0.25, 1.75, 2.25, 2.75):  # voxel centres, away from the rows' borders
        p, _ = plane_points(n=15, half=3.0)
        p = p[:15].copy()
        p[:, 1] = y0
        pts.append(p)
    pts = np.vstack(pts)
    nrm = np.tile([1.0, 0.0, 0.0], (len(pts), 1))
    e = po.measure_edge(ct, pts, nrm)
    assert e.method == "measured" and e.n_vertices == 75


# ---------------------------------------------------------------------------------------------------------------
# The bone reading past the bloom (sample_metal_aware)


def _soft_edge(sigma=0.8):
    """The edge measured where soft tissue lies beyond the metal, without its rigid placement (each point's own edge)."""
    e = po.measure_edge(blurred_metal_plane_ct(sigma=sigma), *plane_points())
    e.placement = None
    return e


def test_bone_reading_starting_past_the_bounded_depth_keeps_the_plain_reading():
    # Points 2.5 mm inside the metal: the edge is 2.5 mm out and the reading would start at 2.5 mm plus the read
    # start (0.88 mm), past the 3 mm bounded depth. The profile itself is explained (bone past the bloom), yet the
    # point is unreliable and keeps the CT's reading 3 mm out, at x = 0.5 mm: 1000 + 2500 G(0.5 / 0.8).
    edge = _soft_edge()
    bone = blurred_metal_plane_ct(sigma=0.8, tissue=1000.0)
    pts, nrm = plane_points(n=3, x=-2.5)
    s = po.sample_metal_aware(bone, pts, nrm, edge)
    assert np.allclose(s.edge_mm, 2.5, atol=1e-9)
    assert np.allclose(s.bone_start_mm, 2.5 + edge.read_start_mm)
    assert not s.reliable.any() and s.inside_ct.all()
    assert np.allclose(s.hu, 1000.0 + 2500.0 * 0.5 * math.erfc(0.5 / (0.8 * math.sqrt(2.0))), atol=0.01)
    # 2 mm inside: the reading starts within the bounded depth and reads the bone.
    s = po.sample_metal_aware(bone, pts + [0.5, 0.0, 0.0], nrm, edge)
    assert s.reliable.all() and np.allclose(s.hu, 1000.0, atol=40.0)


def test_profile_the_blur_model_does_not_explain_is_unreliable():
    # Bone whose voxels alternate 1000 and 1400 HU from x = 1 mm on: no metal tail plus one or two tissues explains
    # it (residual over 80 HU), so the point is unreliable, although its edge is found on the surface. It keeps the
    # CT's reading 3 mm out (x = 3 mm, a 1400 HU voxel centre; the metal's tail adds 2500 G(3.75) = 0.2 HU).
    edge = _soft_edge()
    ct = blurred_metal_plane_ct(sigma=0.8, tissue=1000.0)
    ct.array[:, :, 11::2] += 400.0
    pts, nrm = plane_points(n=3)
    s = po.sample_metal_aware(ct, pts, nrm, edge)
    assert np.allclose(s.edge_mm, 0.0, atol=0.1) and s.inside_ct.all()
    assert not s.reliable.any()
    assert np.allclose(s.hu, 1400.0, atol=0.5)


def test_bone_reading_takes_the_placed_edge():
    # A placement 0.4 mm out everywhere, with a tolerance of 0.3 mm: the points' own edges (on the surface) are
    # replaced by it, and the reading starts 0.4 mm plus the read start out.
    edge = _soft_edge()
    edge.placement = po.EdgePlacement(coef=np.array([0.4, 0, 0, 0, 0, 0, 0], float), centre=np.zeros(3),
                                      residual_mm=0.0, tolerance_mm=0.3, n_points=60)
    pts, nrm = plane_points(n=3)
    s = po.sample_metal_aware(blurred_metal_plane_ct(sigma=0.8, tissue=1000.0), pts, nrm, edge)
    assert np.allclose(s.edge_mm, 0.4, atol=1e-12)
    assert np.allclose(s.bone_start_mm, 0.4 + edge.read_start_mm, atol=1e-12)


def test_each_walk_leaving_the_ct_is_marked_on_its_own():
    # Two points on the metal's surface, one walking out of the CT's end (normal -x from x = -2: the walk reaches
    # x = -8.5, the CT starts at -4.5), one in it.
    edge = _soft_edge()
    pts = np.array([[0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    nrm = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    nrm[1] = [-1.0, 0.0, 0.0]
    s = po.sample_metal_aware(blurred_metal_plane_ct(sigma=0.8, tissue=1000.0), pts, nrm, edge)
    assert s.inside_ct.tolist() == [True, False]
    assert s.reliable.tolist() == [True, False]
    assert math.isfinite(s.hu[0]) and math.isnan(s.hu[1])


def test_plain_reading_of_unreliable_points_uses_the_sampling_method():
    # Points 2 mm out in tissue whose HU rises by 100 per voxel row along y: no metal inside, unreliable, keep the
    # reading 3 mm further out. At y = 0.1 mm (0.35 mm past the row at y = -0.25, 0.15 mm before the row at 0.25)
    # the nearest row reads 800 HU; trilinear reads 700 + 100 * 0.7 = 770 HU.
    edge = _soft_edge()
    t = 100.0 * np.arange(16)
    ct = blurred_metal_plane_ct(sigma=0.8, tissue_by_j=t)
    pts = np.array([[2.0, 0.1, 0.0]])
    nrm = np.array([[1.0, 0.0, 0.0]])
    near = po.sample_metal_aware(ct, pts, nrm, edge, method="nearest")
    tri = po.sample_metal_aware(ct, pts, nrm, edge)
    assert not near.reliable.any() and not tri.reliable.any()
    assert np.isnan(near.edge_mm).all() and np.isnan(tri.edge_mm).all()
    assert near.hu[0] == pytest.approx(800.0, abs=0.01)
    assert tri.hu[0] == pytest.approx(770.0, abs=0.01)


# ---------------------------------------------------------------------------------------------------------------
# The assessment's warnings and notes


def _params(**kw):
    from ImplantBoneContactLib import AnalysisParameters

    return AnalysisParameters(**kw)


def _coarse_ct(sigma=2.0, plane=-1.5):
    """3 mm voxels, metal for x < ``plane`` blurred by ``sigma``: voxel centres at x = -9, -6, ..., 18 mm."""
    x = -9.0 + 3.0 * np.arange(10)
    share = np.array([0.5 * math.erfc((v - plane) / (sigma * math.sqrt(2.0))) for v in x])
    a = np.broadcast_to(3500.0 * share, (6, 6, 10)).astype(np.float32).copy()
    m = np.diag([3.0, 3.0, 3.0, 1.0])
    m[:3, 3] = [-9.0, -7.5, -7.5]
    return Volume(array=a, ijk_to_ras=m)


def test_edge_off_the_surface_is_judged_against_half_a_voxel_on_a_coarse_ct():
    # 3 mm voxels: the edge may lie 1.5 mm (half a voxel) from the surface before the model is said to be off it.
    # The plane lies midway between the voxel centres at x = -3 and 0: the trilinear profile falls fastest
    # between them, evenly, and the edge is the middle of that run, the plane.
    ct = _coarse_ct()
    p, n = plane_points(n=6, half=3.0, x=-1.5)
    a = po.assess(ct, p - [1.25, 0.0, 0.0], n, np.ones(len(p)), _params())
    assert a.notes["metal_edge_offset_median_mm"] == pytest.approx(1.25, abs=1e-9)
    assert a.notes["fraction_area_edge_off_surface"] == 0.0
    a = po.assess(ct, p - [2.0, 0.0, 0.0], n, np.ones(len(p)), _params())
    assert a.notes["fraction_area_edge_off_surface"] == 1.0
    assert any(w.startswith("the metal edge lies more than 1.5 mm from the model surface on 100% of it") for w in a.warnings)


def test_edge_offsets_spread_over_the_surface():
    # Ten groups of ten points, 0, 0.25, ..., 2.25 mm inside the metal: the edge offsets are those depths (the
    # profile is odd about the voxel centre at the plane). Median 1.125 mm; 90th percentile (linear) 2.0 + 0.1 *
    # 0.25 = 2.025 mm; off the surface (more than 1 mm): the five deepest groups, 50 %.
    ct = blurred_metal_plane_ct(sigma=0.6)
    depths = np.repeat(0.25 * np.arange(10), 10)
    p, n = plane_points()
    pts = p - depths[:, None] * [1.0, 0.0, 0.0]
    a = po.assess(ct, pts, n, np.ones(100), _params())
    assert a.notes["metal_edge_offset_median_mm"] == pytest.approx(1.125, abs=1e-9)
    assert a.notes["metal_edge_offset_p90_mm"] == pytest.approx(2.025, abs=1e-9)
    assert a.notes["fraction_area_edge_off_surface"] == pytest.approx(0.5)
    # (2.025 is not a binary fraction: printed with two decimals it may round either way.)
    assert len(a.warnings) == 1
    assert re.fullmatch(
        r"the metal edge lies more than 1 mm from the model surface on 50% of it \(median offset \+1\.12 mm, 90th "
        r"percentile 2\.0[23] mm along the outward normal\): the model is not where the implant is \(registration "
        r"off\?\); the bone is read past the metal's own edge", a.warnings[0])
    # Exactly 1 mm off is not more than 1 mm.
    a = po.assess(ct, p - [1.0, 0.0, 0.0], n, np.ones(100), _params())
    assert a.notes["metal_edge_offset_median_mm"] == pytest.approx(1.0, abs=1e-12)
    assert a.notes["fraction_area_edge_off_surface"] == 0.0


def test_bloom_warning_reaches_past_an_edge_outside_the_surface():
    # The metal's edge is 1 mm outside the surface (the points 1 mm inside the metal): an offset reads the bloom up
    # to the bloom distance plus that millimetre.
    ct = blurred_metal_plane_ct(sigma=0.8)
    p, n = plane_points()
    pts = p - [1.0, 0.0, 0.0]
    bloom = po.measure_edge(ct, pts, n).bloom_mm
    assert 1.0 < bloom < 2.4
    a = po.assess(ct, pts, n, np.ones(100), _params(offset_mm=2.4))
    assert not a.metal_aware and a.edge.bloom_mm == bloom
    assert len(a.warnings) == 1
    assert a.warnings[0] == (
        "the CT is post-operative and the offsets given (2.4 mm) read the metal's bloom: the metal adds more than 2% of "
        f"its {a.edge.metal_hu:.0f} HU up to {bloom + 1.0:.2g} mm outside the surface on this CT; the default "
        "(no --offset/--profile, --metal-aware auto) reads the bone past the bloom")
    # Six offsets are listed in full.
    a = po.assess(ct, pts, n, np.ones(100), _params(profile="0:2.5:0.5"))
    assert "offsets given (0, 0.5, 1, 1.5, 2, 2.5 mm)" in a.warnings[0]


def test_clipped_warning_from_20_voxels():
    ct = blurred_metal_plane_ct(metal=3000.0, sigma=0.8)
    ct.array[0, 0, :20] = 3071.0  # 20 voxels at the clip level, the CT's maximum
    p, n = plane_points()
    a = po.assess(ct, p, n, np.ones(100), _params())
    assert a.notes["clipped_voxels_at_3071_hu"] == 20
    assert sum(w.startswith("20 voxels read exactly 3071 HU, the CT's maximum") for w in a.warnings) == 1
    ct.array[0, 0, 19] = 3000.0
    a = po.assess(ct, p, n, np.ones(100), _params())
    assert a.notes["clipped_voxels_at_3071_hu"] == 19 and a.warnings == []


def test_pre_operative_assessment_record():
    ct = blurred_metal_plane_ct()
    p1, n1 = plane_points()
    p2, _ = plane_points(x=3.0)
    pts, nrm = np.vstack([p1, p2]), np.vstack([n1, n1])
    # 100 points on the metal of area 0.494 and 100 in the tissue of area 0.506: 49.4 % has metal inside.
    area = np.r_[np.full(100, 0.494), np.full(100, 0.506)]
    a = po.assess(ct, pts, nrm, area, _params(metal_aware="on"))
    assert a.ct_kind == po.PRE_OPERATIVE and a.metal_aware is False and a.edge is None
    assert a.detection.evidence["fraction_area_with_metal_inside"] == pytest.approx(0.494)
    assert a.warnings[0].startswith("only 49% of the model's surface has metal (>= 2000 HU) within 1.5 mm inside it")
    assert a.warnings[1] == ("metal-aware sampling was asked for, but the implant's metal is not in this CT (49% of "
                             "the surface has metal inside it): the CT is sampled as given")


def test_model_on_the_metal_for_exactly_90_percent_is_not_said_to_be_off():
    ct = blurred_metal_plane_ct()
    p1, n1 = plane_points()
    p2, _ = plane_points(x=3.0)
    pts, nrm = np.vstack([p1[:90], p2[:10]]), np.vstack([n1[:90], n1[:10]])
    a = po.assess(ct, pts, nrm, np.ones(100), _params())
    assert a.detection.evidence["fraction_area_with_metal_inside"] == 0.9
    assert a.ct_kind == po.POST_OPERATIVE and a.warnings == []


# ---------------------------------------------------------------------------------------------------------------
# Limits of the edge finder, the placement's spread, the profiles' blocks


def _ct_from_profile(values_by_x, dtype=np.float32):
    """A CT whose voxel columns along x (centres at X0 + 0.5 i) hold the given values, the same at every y and z."""
    a = np.broadcast_to(np.asarray(values_by_x, float), (16, 16, len(values_by_x))).astype(dtype).copy()
    m = np.diag([VOXEL, VOXEL, VOXEL, 1.0])
    m[:3, 3] = [X0, -3.75, -3.75]
    return Volume(array=a, ijk_to_ras=m)


def test_a_weak_fall_inside_the_metal_is_not_the_edge():
    # Metal of 3500 HU up to x = -1.5, 3300 HU at x = -1 and -0.5, tissue from x = 0. Read trilinearly the profile
    # falls 400 HU/mm between -1.5 and -1, then 6600 HU/mm between -0.5 and 0: the weak fall is a local maximum but
    # less than half the strongest, so the edge is the middle of the strong one, -0.25 mm.
    x = X0 + VOXEL * np.arange(30)
    ct = _ct_from_profile(np.where(x <= -1.5, 3500.0, np.where(x < 0.0, 3300.0, 0.0)))
    pts, nrm = plane_points(n=3)
    assert np.allclose(po._walk(ct, pts, nrm, "trilinear", None).edge_mm, -0.25, atol=1e-12)


def test_any_fall_in_the_metal_can_be_its_edge():
    # A step of half a HU (2000.5 to 2000 HU, blurred by 0.6 mm, stored in float64) is found like any other: the
    # edge finder uses only ratios of falls. The profile is odd about the voxel centre at x = 0: the edge is there.
    x = X0 + VOXEL * np.arange(30)
    ct = _ct_from_profile(2000.0 + 0.5 * po._gaussian_tail(x / 0.6), dtype=np.float64)
    pts, nrm = plane_points(n=3)
    assert np.allclose(po._walk(ct, pts, nrm, "trilinear", None).edge_mm, 0.0, atol=1e-9)


def test_each_point_finds_its_own_edge_or_none():
    # One point on the metal's surface, one 3.5 mm inside the metal (its walk looks 3 mm out, to x = -0.5: the fall
    # only steepens there, no maximum): the first has its edge, the second none, although both have metal inside.
    pts = np.array([[0.0, 0.0, 0.0], [-3.5, 0.0, 0.0]])
    nrm = np.tile([1.0, 0.0, 0.0], (2, 1))
    w = po._walk(blurred_metal_plane_ct(sigma=0.6), pts, nrm, "trilinear", None)
    assert w.in_metal.all()
    assert w.edge_mm[0] == pytest.approx(0.0, abs=1e-12) and math.isnan(w.edge_mm[1])


def test_bone_reading_starting_exactly_at_the_bounded_depth_is_reliable():
    # The edge on the surface (0, the profile odd about its voxel centre) and a read start of 3 mm: the reading
    # starts exactly at the 3 mm bounded depth, still within it.
    edge = _soft_edge()
    edge.read_start_mm = 3.0
    pts, nrm = plane_points(n=3)
    s = po.sample_metal_aware(blurred_metal_plane_ct(sigma=0.8, tissue=1000.0), pts, nrm, edge)
    assert np.all(s.edge_mm == 0.0) and np.all(s.bone_start_mm == 3.0)
    assert s.reliable.all()


def test_point_without_an_edge_keeps_the_plain_reading_near_the_ct_end():
    # A point 2 mm out in bone, in a CT ending at x = 9 mm: its walk (to 8.5 mm) is in the CT, so it keeps the
    # plain reading 3 mm out (bone, 1000 HU) and is unreliable.
    s = po.sample_metal_aware(blurred_metal_plane_ct(sigma=0.8, tissue=1000.0, n_i=28), np.array([[2.0, 0.0, 0.0]]),
                              np.array([[1.0, 0.0, 0.0]]), _soft_edge())
    assert s.inside_ct.tolist() == [True] and not s.reliable.any()
    assert s.hu[0] == pytest.approx(1000.0, abs=0.01)


def test_walk_leaving_the_ct_inside_the_metal_is_not_sampled():
    # The metal ends at x = -2.5; a point at -3.5 walks from -5 (outside the CT, which starts at -4.5) to 3 mm. Its
    # edge is found 1 mm out, and the bone profile from there lies in the CT, but the walk does not: not sampled.
    s = po.sample_metal_aware(blurred_metal_plane_ct(sigma=0.8, tissue=1000.0, plane=-2.5), np.array([[-3.5, 0.0, 0.0]]),
                              np.array([[1.0, 0.0, 0.0]]), _soft_edge())
    assert s.edge_mm[0] == pytest.approx(1.0, abs=1e-9)
    assert s.inside_ct.tolist() == [False] and not s.reliable.any() and math.isnan(s.hu[0])


def test_bloom_warning_without_any_edge_found():
    # The metal ends 4 mm out, past the bounded depth: no edge found, no edge offset recorded, and the bloom is that
    # of the Gaussian edge from the voxel size (sigma hypot(0.6, 0.25) = 0.65 mm: 2 % at 2.054 sigma, 1.3 mm).
    pts, nrm = plane_points()
    a = po.assess(blurred_metal_plane_ct(sigma=0.6, plane=4.0), pts, nrm, np.ones(100), _params(offset_mm=1.0))
    assert a.edge.method == "gaussian" and "metal_edge_offset_median_mm" not in a.notes
    assert a.edge.bloom_mm == pytest.approx(2.054 * math.hypot(0.6, 0.25), abs=0.01)
    assert len(a.warnings) == 1 and "up to 1.3 mm outside the surface" in a.warnings[0]


def test_fit_edge_placement_spread_about_the_median_residual():
    # Each point's edge found three times: 0.1 mm above the placement twice, 0.2 mm below once. The least squares
    # fit the placement exactly (the errors cancel at every point); the residuals' median is 0.1 mm and every
    # residual but one in three lies on it: robust spread 0, tolerance 0.3 mm.
    pts, nrm = _sphere_points()
    pts3, nrm3 = np.vstack([pts, pts, pts]), np.vstack([nrm, nrm, nrm])
    own = 0.2 + np.r_[np.full(64, 0.1), np.full(64, 0.1), np.full(64, -0.2)]
    pl = po.fit_edge_placement(pts3, nrm3, own, voxel_mm=3.0)
    assert np.allclose(pl.coef, [0.2, 0, 0, 0, 0, 0, 0], atol=1e-9)
    assert pl.residual_mm == pytest.approx(0.0, abs=1e-9) and pl.tolerance_mm == pytest.approx(0.3)
    assert pl.n_points == 192


def test_profiles_in_blocks_of_one_point():
    # 5 points and 4 offsets with a block of 4 samples: one point per block, every point sampled.
    ct = blurred_metal_plane_ct(sigma=0.0, tissue=100.0)
    pts = np.column_stack([np.full(5, 0.25), np.linspace(-1.0, 1.0, 5), np.zeros(5)])
    nrm = np.tile([1.0, 0.0, 0.0], (5, 1))
    hu, inside = po.profiles(ct, pts, nrm, np.array([-2.0, -1.0, 0.0, 2.0]), block=4)
    # x = -1.75, -0.75 (metal), 0.25, 2.25 (tissue).
    assert hu.tolist() == [[3500.0, 3500.0, 100.0, 100.0]] * 5 and inside.all()


def test_inner_depth_is_three_and_a_half_blurs_or_the_inside_depth_plus_a_voxel():
    """0.5 mm voxels: the inside depth is 1.5 mm (three voxels); the blur is read 3.5 edge blurs deep when that
    is more, plus one voxel; a blur that was not measured (NaN, infinite, zero or negative) leaves the inside
    depth."""
    ct = blurred_metal_plane_ct()
    assert po.inside_depth_mm(ct) == 1.5
    assert po.inner_depth_mm(ct, 1.0) == pytest.approx(3.5 + 0.5)
    assert po.inner_depth_mm(ct, 0.2) == pytest.approx(1.5 + 0.5)  # 0.7 mm is less than the inside depth
    for not_measured in (float("nan"), float("inf"), 0.0, -1.0):
        assert po.inner_depth_mm(ct, not_measured) == pytest.approx(1.5 + 0.5)


def _two_metals_ct(sigma=0.8):
    """Rows y < 0: metal 3000 HU over tissue 0 HU; rows y > 0: metal 4000 HU over tissue 500 HU; both blurred
    steps at x = 0 with the same Gaussian ``sigma`` (mm), 0.5 mm voxels; the row centres are at
    y = -3.75 + 0.5 j."""
    low = blurred_metal_plane_ct(metal=3000.0, tissue=0.0, sigma=sigma)
    high = blurred_metal_plane_ct(metal=4000.0, tissue=500.0, sigma=sigma)
    a = low.array.copy()
    a[:, 8:, :] = high.array[:, 8:, :]
    return Volume(array=a, ijk_to_ras=low.ijk_to_ras)


def _edge_points_on_rows(rows, n_z=4):
    """Points on the metal edge (x = 0) at the centres of the given voxel rows j (and of n_z rows along z),
    with the inward direction -x."""
    pts = np.array([[0.0, -3.75 + 0.5 * j, -3.75 + 0.5 * k] for j in rows for k in range(6, 6 + n_z)])
    return pts, np.tile([-1.0, 0.0, 0.0], (pts.shape[0], 1))


def test_tissue_blur_is_the_blur_of_each_profile_against_its_own_plateau_and_tissue():
    """Profiles of two metals over two tissues blurred alike: each rises from its own tissue to its own plateau
    as 1 - G(d / sigma), so the shares agree and the blur read is the sigma the CT was blurred with (to 0.2
    voxel: trilinear reading and the crossing between 0.125 mm samples); the plateau is the median of the
    profiles' plateaus: 12 at 3000 HU and 8 at 4000 HU give 3000 HU, less at most PLATEAU_FALL (2 %) of the
    rise, since a plateau is the median of the readings within that much of the highest."""
    ct = _two_metals_ct(sigma=0.8)
    pts, inward = _edge_points_on_rows([2, 3, 8], n_z=4)  # 8 points at 3000 HU, 4 at 4000 HU
    pts2, inward2 = _edge_points_on_rows([4], n_z=4)
    pts3, inward3 = _edge_points_on_rows([12], n_z=4)
    pts, inward = np.vstack([pts, pts2, pts3]), np.vstack([inward, inward2, inward3])
    tissue = np.where(pts[:, 1] < 0, 0.0, 500.0)
    assert np.count_nonzero(tissue == 0.0) == 12 and np.count_nonzero(tissue == 500.0) == 8
    sigma, plateau = po._tissue_blur(ct, pts, inward, tissue, metal_hu=3500.0, blur_mm=0.8)
    assert sigma == pytest.approx(0.8, abs=0.1)
    assert 3000.0 - po.PLATEAU_FALL * 3000.0 <= plateau <= 3000.0
    # The high rows alone: the plateau is their metal
    hi = tissue == 500.0
    pts_hi, inward_hi = _edge_points_on_rows([8, 10, 12], n_z=4)
    sigma_hi, plateau_hi = po._tissue_blur(ct, pts_hi, inward_hi, np.full(12, 500.0), metal_hu=3500.0, blur_mm=0.8)
    assert hi.sum() == 8 and sigma_hi == pytest.approx(0.8, abs=0.1)
    assert 4000.0 - po.PLATEAU_FALL * 3500.0 <= plateau_hi <= 4000.0
    # Their 3500 HU rise is more than half of a 7000 HU metal above their 500 HU tissue (3250 HU): they count
    sigma_hi, _ = po._tissue_blur(ct, pts_hi, inward_hi, np.full(12, 500.0), metal_hu=7000.0, blur_mm=0.8)
    assert sigma_hi == pytest.approx(0.8, abs=0.1)


def test_tissue_blur_needs_ten_profiles_that_rise_by_half_the_metal():
    """Ten profiles are enough, nine are not (blur None, plateau NaN); a profile whose rise above its tissue is
    half the metal's or less does not count."""
    ct = _two_metals_ct(sigma=0.8)
    pts, inward = _edge_points_on_rows([2, 3, 4], n_z=4)
    tissue = np.zeros(len(pts))
    sigma, plateau = po._tissue_blur(ct, pts[:10], inward[:10], tissue[:10], metal_hu=3000.0, blur_mm=0.8)
    assert sigma == pytest.approx(0.8, abs=0.1) and 3000.0 - po.PLATEAU_FALL * 3000.0 <= plateau <= 3000.0
    sigma, plateau = po._tissue_blur(ct, pts[:9], inward[:9], tissue[:9], metal_hu=3000.0, blur_mm=0.8)
    assert sigma is None and math.isnan(plateau)
    # A rise of 3000 HU is exactly half of a 6000 HU metal over 0 HU tissue: not more than half, so no profile counts
    sigma, plateau = po._tissue_blur(ct, pts, inward, tissue, metal_hu=6000.0, blur_mm=0.8)
    assert sigma is None and math.isnan(plateau)
