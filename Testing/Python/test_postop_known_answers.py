"""Post-operative CTs on a blurred plane of metal built here: detection, the measured edge spread, where the
bone reading starts, and which points are marked unreliable. The CT is 30 x 16 x 16 voxels; a test takes well
under a second.

The metal fills x < 0 and the tissue x > 0; the CT's value at x is ``tissue + (metal - tissue) * G(x)``
with ``G`` the share of a Gaussian-blurred step (``0.5 erfc(x / (sigma sqrt 2))``), sampled at the voxel
centres. The surface points lie on the plane x = 0 with outward normal +x.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from ibc_helpers import blurred_metal_plane_ct, plane_points
from ImplantBoneContactLib import AnalysisParameters
from ImplantBoneContactLib import postop as po
from ImplantBoneContactLib.volume import Volume

VOXEL = 0.5
X0 = -4.5  # x of the first column (mm)


def test_depths_follow_the_voxel_size():
    fine, coarse = blurred_metal_plane_ct(voxel=0.5), blurred_metal_plane_ct(voxel=3.0, n_i=8, n_jk=4)
    assert po._grid_step(fine) == 0.125 and po._grid_step(coarse) == 0.25
    assert po._voxel(coarse) == 3.0
    assert po.inside_depth_mm(fine) == 1.5 and po.inside_depth_mm(coarse) == 3.0
    assert po.max_bone_start_mm(fine) == 3.0 and po.max_bone_start_mm(coarse) == 4.5
    assert po.read_depth_mm(fine) == 0.5 and po.read_depth_mm(coarse) == 1.5
    assert po.walk_depth_mm(fine) == 3.0 + 0.5 + 3.0
    assert po.walk_depth_mm(coarse) == 4.5 + 1.5 + 4.5
    # Anisotropic voxels: the walk step follows the finest spacing, the depths the coarsest.
    v = Volume(array=np.zeros((4, 4, 4), np.float32), ijk_to_ras=np.diag([0.4, 0.8, 2.4, 1.0]))
    assert po._grid_step(v) == pytest.approx(0.1) and po._voxel(v) == pytest.approx(2.4)
    assert po.inside_depth_mm(v) == pytest.approx(2.4) and po.max_bone_start_mm(v) == pytest.approx(3.6)


def test_profiles_sample_along_each_normal():
    ct = blurred_metal_plane_ct(sigma=0.0, tissue=100.0)
    pts = np.array([[0.25, 0.0, 0.0], [0.25, 1.0, 0.0], [0.0, 0.0, 0.0]])
    nrm = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    hu, inside = po.profiles(ct, pts, nrm, np.array([-2.0, 0.0, 2.0, 40.0]), block=4)
    assert hu.shape == (3, 4) and inside.shape == (3, 4)
    # Voxel centres at x = -4.5 + 0.5 i: the step lies between x = -0.5 (metal) and 0 (tissue).
    assert hu[0, :3].tolist() == [3500.0, 100.0, 100.0]
    assert hu[1, :3].tolist() == [100.0, 100.0, 3500.0]
    assert inside[:, :3].all() and not inside[0, 3]
    assert hu[2, 0] == hu[2, 1] == 100.0  # along y the CT does not change
    assert not inside[2, 3]


def test_detection_of_a_post_operative_ct():
    ct = blurred_metal_plane_ct()
    pts, nrm = plane_points()
    det = po.detect(ct, pts, nrm, np.ones(len(pts)))
    assert det.ct_kind == po.POST_OPERATIVE
    assert det.in_metal.all()
    # The highest reading within 1.5 mm inside: the CT at x = -1.5 (the sampled walk goes that deep).
    expect = 3500.0 * 0.5 * math.erfc(-1.5 / (0.8 * math.sqrt(2.0)))
    assert np.allclose(det.inside_max_hu, expect, rtol=1e-3)
    ev = det.evidence
    assert ev["inside_depth_mm"] == 1.5 and ev["metal_detect_hu"] == 2000.0
    assert ev["fraction_area_with_metal_inside"] == 1.0
    assert ev["median_inside_max_hu"] == pytest.approx(expect, rel=1e-3)
    assert ev["ct_max_hu"] == pytest.approx(float(ct.array.max()))


def test_detection_of_a_pre_operative_ct():
    ct = blurred_metal_plane_ct(metal=900.0, tissue=0.0)  # a virtual stem placed in bone: nothing reaches 2000 HU inside it
    pts, nrm = plane_points()
    det = po.detect(ct, pts, nrm, np.ones(len(pts)))
    assert det.ct_kind == po.PRE_OPERATIVE and not det.in_metal.any()
    assert det.evidence["fraction_area_with_metal_inside"] == 0.0


def test_detection_shares_are_of_the_sampled_area():
    # 100 points on the metal, 100 points 3 mm out in the tissue (no metal within 1.5 mm inside them).
    ct = blurred_metal_plane_ct()
    p1, n1 = plane_points()
    p2, n2 = plane_points(x=3.0)
    pts, nrm = np.vstack([p1, p2]), np.vstack([n1, n2])
    # Equal areas: half the surface has metal inside, exactly the post-operative limit.
    det = po.detect(ct, pts, nrm, np.ones(200))
    assert det.evidence["fraction_area_with_metal_inside"] == 0.5 and det.ct_kind == po.POST_OPERATIVE
    assert det.in_metal[:100].all() and not det.in_metal[100:].any()
    # The metal points weigh less: below half, pre-operative.
    area = np.r_[np.full(100, 0.99), np.ones(100)]
    det = po.detect(ct, pts, nrm, area)
    assert det.evidence["fraction_area_with_metal_inside"] == pytest.approx(99.0 / 199.0)
    assert det.ct_kind == po.PRE_OPERATIVE
    # Points outside the CT do not count in the share and have no reading.
    p3 = p1 + [0.0, 50.0, 0.0]
    det = po.detect(ct, np.vstack([p1, p3]), np.vstack([n1, n1]), np.ones(200))
    assert det.evidence["fraction_area_with_metal_inside"] == 1.0
    assert np.isnan(det.inside_max_hu[100:]).all() and not det.in_metal[100:].any()
    det = po.detect(ct, p3, n1, np.ones(100))
    assert det.evidence["fraction_area_with_metal_inside"] == 0.0 and math.isnan(det.evidence["median_inside_max_hu"])
    assert det.ct_kind == po.PRE_OPERATIVE


def test_metal_at_exactly_the_detection_level_counts():
    ct = blurred_metal_plane_ct(metal=2000.0, sigma=0.0)
    pts, nrm = plane_points(n=3)
    det = po.detect(ct, pts, nrm, np.ones(9), method="nearest")
    assert det.in_metal.all() and det.inside_max_hu.max() == 2000.0
    ct = blurred_metal_plane_ct(metal=1999.0, sigma=0.0)
    assert not po.detect(ct, pts, nrm, np.ones(9), method="nearest").in_metal.any()


def test_gaussian_tail_and_first_crossing():
    z = np.array([[0.0, 1.0], [-1.0, 3.0]])
    g = po._gaussian_tail(z)
    assert g.shape == (2, 2)
    assert np.allclose(g, [[0.5, 0.158655], [0.841345, 0.0013499]], atol=1e-6)
    x = np.array([0.0, 1.0, 2.0, 3.0])
    assert po._first_crossing(x, np.array([1.0, 0.8, 0.4, 0.0]), 0.6) == pytest.approx(1.5)
    assert po._first_crossing(x, np.array([1.0, 0.8, 0.4, 0.0]), 0.4) == pytest.approx(2.0)  # reached exactly
    assert po._first_crossing(x, np.array([1.0, 0.8, 0.4, 0.3]), 0.1) == 3.0  # never reached: the end
    assert po._first_crossing(x, np.array([0.05, 0.0, 0.0, 0.0]), 0.1) == 0.0  # below at once
    assert po._first_crossing(x, np.array([1.0, 0.5, 0.5, 0.0]), 0.5) == pytest.approx(1.0)
    assert po._first_crossing(x + 10.0, np.array([1.0, 0.9, 0.1, 0.0]), 0.5) == pytest.approx(11.5)


def _edge(x, w, metal=3500.0):
    return po.EdgeModel(metal_hu=metal, x_mm=np.asarray(x, float), metal_weight=np.asarray(w, float), blur_mm=0.5,
                        bloom_mm=1.0, read_start_mm=0.7, n_vertices=40, method="measured")


def test_edge_weight_is_the_metal_share_on_both_sides():
    e = _edge([0.0, 1.0, 2.0], [0.5, 0.2, 0.0])
    assert np.allclose(e.weight([0.0, 0.5, 1.0, 3.0]), [0.5, 0.35, 0.2, 0.0])
    assert np.allclose(e.weight([-0.5, -1.0, -5.0]), [0.65, 0.8, 1.0])
    d = e.to_dict()
    assert d == {"metal_hu": 3500.0, "edge_blur_mm": 0.5, "bloom_mm": 1.0, "read_start_past_edge_mm": 0.7,
                 "edge_spread_measured_on_vertices": 40, "edge_spread_method": "measured",
                 "edge_spread_x_mm": [0.0, 2.0], "edge_spread_metal_weight": [0.5, 0.0],
                 "tissue_blur_mm": None}
    e = _edge([0.12345, 1.0, 2.0], [0.123456, 0.2, 0.0])
    assert e.to_dict()["edge_spread_x_mm"] == [0.123, 2.0] and e.to_dict()["edge_spread_metal_weight"] == [0.1235, 0.0]


@pytest.mark.parametrize("sigma", [0.6, 1.0])
def test_measured_edge_spread_of_a_blurred_step(sigma):
    ct = blurred_metal_plane_ct(sigma=sigma)
    pts, nrm = plane_points()
    e = po.measure_edge(ct, pts, nrm)
    assert e.method == "measured" and e.n_vertices == 100
    # The metal's reading: its plateau, reached by the walk inward (the highest reading within 1.5 mm inside the
    # surface is 3266 HU for sigma 1.0).
    assert e.metal_hu == pytest.approx(3500.0, rel=0.005)
    assert e.x_mm[0] == 0.0 and np.allclose(np.diff(e.x_mm), 0.125)
    assert e.x_mm[-1] == pytest.approx(6.5 - 1.0, abs=0.125)  # the walk less max(1 mm, a voxel)
    assert np.all(np.diff(e.metal_weight) <= 0.0) and np.all((e.metal_weight >= 0.0) & (e.metal_weight <= 1.0))
    assert e.metal_weight[-1] < 0.01
    # The three distances are where the measured share crosses 15.87 %, 15 % and 2 %, in that order.
    for level, value in ((0.1587, e.blur_mm), (0.15, e.read_start_mm), (0.02, e.bloom_mm)):
        assert np.interp(value, e.x_mm, e.metal_weight) == pytest.approx(level, abs=1e-6)
    assert e.blur_mm < e.read_start_mm < e.bloom_mm


@pytest.mark.parametrize("sigma", [0.6, 0.8, 1.0])
def test_measured_share_and_tissue_blur_of_a_blurred_step_follow_the_gaussian(sigma):
    # A Gaussian-blurred metal plane against soft tissue (0.5 mm voxels, sampled trilinearly): the metal's share
    # past the edge is 0.5 erfc(x / (sigma sqrt 2)), within 0.03 (the interpolation widens it a little), and the
    # scanner's own blur measured inside the edge is sigma, within 0.1 mm.
    e = po.measure_edge(blurred_metal_plane_ct(sigma=sigma), *plane_points())
    gauss = np.array([0.5 * math.erfc(x / (sigma * math.sqrt(2.0))) for x in e.x_mm])
    assert np.max(np.abs(e.metal_weight - gauss)) < 0.03
    assert e.bloom_mm == pytest.approx(2.054 * sigma, rel=0.1)  # the share falls to 2 % at 2.054 sigma
    assert e.tissue_blur_mm == pytest.approx(sigma, abs=0.1)
    assert e.tissue_sigma_mm() == e.tissue_blur_mm
    assert e.to_dict()["tissue_blur_mm"] == e.tissue_blur_mm


@pytest.mark.parametrize("voxel", [0.5, 1.0])
@pytest.mark.parametrize("sigma", [0.6, 0.8, 1.0, 1.2])
def test_tissue_blur_is_the_sigma_of_the_blurred_step(voxel, sigma):
    # The scanner's own blur, measured inside the metal edge of a Gaussian-blurred plane, is the sigma it was
    # blurred with. The walk inward reaches the metal's plateau whatever the blur (a fixed 1.5 mm window
    # read 0.81 mm for sigma 1.0 at 0.5 mm voxels: it ended at 93 % of the plateau). Tolerance 0.2 voxel: the
    # trilinear interpolation between voxel centres widens the edge (about v^2 / (12 sigma) on average over
    # the edge's position in the voxel: 0.14 mm for sigma 0.6 at 1 mm voxels), and the edge is located to a
    # fraction of a voxel. The CT reaches 10 mm into the metal.
    n_i = int(round(22.0 / voxel))
    ct = blurred_metal_plane_ct(sigma=sigma, voxel=voxel, n_i=n_i, n_jk=int(round(8.0 / voxel)), x0=-10.0)
    e = po.measure_edge(ct, *plane_points())
    assert e.method == "measured"
    assert e.tissue_blur_mm == pytest.approx(sigma, abs=0.2 * voxel)
    # The walk inward is 3.5 edge blurs deep (at least 1.5 mm), plus a voxel.
    assert po.inner_depth_mm(ct, e.blur_mm) == pytest.approx(max(1.5, 3.5 * e.blur_mm) + voxel)


def test_tissue_blur_stops_at_the_plateau_of_a_thin_metal_part():
    # A metal slab 1.5 mm thick (x from -1.5 to 0, 3500 HU), 0.75 mm of soft tissue under it, then brighter metal
    # (6000 HU) from x = -2.25: blurred with sigma 0.6 mm at 0.5 mm voxels. Walking inward from the slab's edge
    # the reading peaks inside the slab, dips in the gap, then climbs towards the brighter metal within the
    # 3.5 blurs walked. The rise is measured to the slab's own peak: the share of that peak reached at d mm is
    # computed here from the slab's blurred profile, and its 84.13 % point is the known answer (the slab, not
    # much thicker than the blur, moves it below sigma). Normalised by the
    # reading at the end of the walk instead (on the way to the brighter metal), the share would reach 84.13 %
    # further in. The rise is measured from the metal edge found (the steepest fall: a quarter voxel outside the
    # slab, where the trilinear reading of so thin a slab falls fastest), so the known answer is shifted by it,
    # within 0.05 mm (the interpolated samples). The slab's peak is the metal's level.
    sigma, voxel, x0 = 0.6, 0.5, -10.0
    x = x0 + voxel * np.arange(44)

    def g(v):  # share of a blurred step lying at v < 0
        return 0.5 * math.erfc(v / (sigma * math.sqrt(2.0)))

    prof = np.array([3500.0 * (g(v) - g(v + 1.5)) + 6000.0 * g(v + 2.25) for v in x])
    a = np.broadcast_to(prof, (16, 16, x.size)).astype(np.float32).copy()
    m = np.diag([voxel, voxel, voxel, 1.0])
    m[:3, 3] = [x0, -3.75, -3.75]
    ct = Volume(array=a, ijk_to_ras=m)
    e = po.measure_edge(ct, *plane_points())
    edge = float(np.median(po._walk(ct, *plane_points(), "trilinear", None).edge_mm))
    assert abs(edge) <= 0.5 * voxel
    d = np.arange(0.0, 2.5, 0.001)
    slab = np.array([3500.0 * (g(-v) - g(1.5 - v)) + 6000.0 * g(2.25 - v) for v in d])
    falls = np.diff(slab) < 0
    assert falls.any()
    peak = slab[: int(np.argmax(falls)) + 1].max()
    expect = d[np.argmax(slab / peak >= 0.8413)]
    assert 0.2 < expect < sigma
    assert e.tissue_blur_mm == pytest.approx(edge + expect, abs=0.05)
    # the highest voxel centre in the slab (a trilinear reading peaks at a sample)
    assert e.metal_hu == pytest.approx(prof[(x > -1.5) & (x < 0.0)].max(), rel=1e-4)


def test_measured_blur_of_a_blurred_step_is_its_sigma():
    # 0.5 mm voxels sampled trilinearly add little to a Gaussian blur of 0.8 mm: the edge is at the plane, the
    # share there one half, and the Gaussian-equivalent blur 0.8 mm.
    ct = blurred_metal_plane_ct(sigma=0.8)
    pts, nrm = plane_points()
    w = po._walk(ct, pts, nrm, "trilinear", None)
    e = po.measure_edge(ct, pts, nrm)
    assert np.allclose(w.edge_mm, 0.0, atol=0.1)
    assert e.blur_mm == pytest.approx(0.8, abs=0.1)


@pytest.mark.parametrize("tilt_deg", [0.0, 30.0, 45.0])
def test_edge_found_at_the_metal_surface_along_tilted_normals(tilt_deg):
    # Points on the metal plane x = 0 walked along normals tilted in the x-y plane: the edge is where the normal
    # crosses the plane (offset 0), whatever the tilt; the fall along the normal is the blur stretched by
    # 1 / cos(tilt), so the Gaussian-equivalent blur reads sigma / cos(tilt) (0.8 mm for an untilted normal).
    t = math.radians(tilt_deg)
    pts, _ = plane_points(n=4)
    nrm = np.tile([math.cos(t), math.sin(t), 0.0], (pts.shape[0], 1))
    ct = blurred_metal_plane_ct(sigma=0.8)
    w = po._walk(ct, pts, nrm, "trilinear", None)
    assert np.allclose(w.edge_mm, 0.0, atol=0.1)
    assert po.measure_edge(ct, pts, nrm).blur_mm == pytest.approx(0.8 / math.cos(t), rel=0.15)


def test_edge_moves_with_the_metal():
    # The metal ends one voxel (0.5 mm) further out: the same sampled profile shifted by four walk steps.
    pts, nrm = plane_points()
    w0 = po._walk(blurred_metal_plane_ct(sigma=0.6), pts, nrm, "trilinear", None)
    w1 = po._walk(blurred_metal_plane_ct(sigma=0.6, plane=0.5), pts, nrm, "trilinear", None)
    assert np.isfinite(w0.edge_mm).all()
    assert np.allclose(w1.edge_mm - w0.edge_mm, 0.5, atol=1e-9)
    assert np.ptp(w0.edge_mm) < 1e-9  # a plane: the same edge everywhere
    assert -1.5 < w0.edge_mm[0] <= 0.1  # at or inside the metal's surface
    assert w0.start == 12 and w0.offsets[w0.start] == 0.0 and w0.offsets[0] == -1.5
    assert w0.offsets[-1] == pytest.approx(6.5) and np.allclose(np.diff(w0.offsets), 0.125)
    assert w0.in_metal.all() and np.allclose(w0.floor, 0.0, atol=1.0)
    assert w0.hu.shape == (100, w0.offsets.size) and w0.inside.all()


def test_no_edge_without_metal_inside():
    pts, nrm = plane_points(n=3, x=3.0)
    w = po._walk(blurred_metal_plane_ct(sigma=0.6), pts, nrm, "trilinear", None)
    assert np.isnan(w.edge_mm).all() and not w.in_metal.any()


def test_measured_edge_on_too_little_soft_tissue_is_gaussian():
    # Bone (1000 HU) beyond the metal everywhere: no vertex measures the spread; the edge is a Gaussian tail,
    # so its distances are those of a Gaussian: 15.87 % at one sigma, 15 % at 1.0364 sigma, 2 % at 2.054 sigma.
    ct = blurred_metal_plane_ct(sigma=0.8, tissue=1000.0)
    pts, nrm = plane_points()
    e = po.measure_edge(ct, pts, nrm)
    assert e.method == "gaussian" and e.n_vertices == 100
    assert e.read_start_mm == pytest.approx(1.0364 * e.blur_mm, rel=0.01)
    assert e.bloom_mm == pytest.approx(2.0537 * e.blur_mm, rel=0.01)
    assert np.allclose(e.metal_weight, [0.5 * math.erfc(v / (e.blur_mm * math.sqrt(2.0))) for v in e.x_mm], atol=2e-3)
    assert 0.7 < e.blur_mm < 2.0
    # 29 vertices in soft tissue are too few to measure the spread: a Gaussian again.
    soft = blurred_metal_plane_ct(sigma=0.8)
    p, n = plane_points(n=6)
    assert po.measure_edge(soft, p[:29], n[:29]).method == "gaussian"
    assert po.measure_edge(soft, p[:30], n[:30]).method == "measured"


def test_gaussian_edge_without_any_edge_uses_the_voxel():
    # No edge found anywhere (the points 3 mm out in the tissue): the Gaussian's sigma is hypot(0.6, voxel / 2).
    pts, nrm = plane_points(n=3, x=3.0)
    e = po.measure_edge(blurred_metal_plane_ct(sigma=0.8), pts, nrm)
    assert e.method == "gaussian" and e.n_vertices == 0
    assert e.blur_mm == pytest.approx(math.hypot(0.6, 0.25), abs=0.01)
    assert e.metal_hu == pytest.approx(float(blurred_metal_plane_ct(sigma=0.8).array.max()))


def test_measure_edge_uses_the_chosen_vertices():
    # 100 points on the metal's edge and 100 in the tissue 3 mm out (no metal inside, no edge): the edge is
    # measured on the first 100 when they are chosen.
    ct = blurred_metal_plane_ct(sigma=0.8)
    p1, n1 = plane_points()
    p2, _ = plane_points(x=3.0)
    use = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    e = po.measure_edge(ct, np.vstack([p1, p2]), np.vstack([n1, n1]), use=use)
    assert e.n_vertices == 100 and e.method == "measured"
    # Fewer than 100 chosen: all are used (the tissue points find no edge, so the count stays 100).
    e = po.measure_edge(ct, np.vstack([p1, p2]), np.vstack([n1, n1]), use=np.r_[np.ones(99, bool), np.zeros(101, bool)])
    assert e.n_vertices == 100


def test_bone_reading_starts_past_the_bloom_and_reads_the_bone():
    sigma = 0.8
    edge = po.measure_edge(blurred_metal_plane_ct(sigma=sigma), *plane_points())  # spread measured where soft tissue is beyond
    bone = blurred_metal_plane_ct(sigma=sigma, tissue=1000.0)  # the same scanner, bone against the metal
    pts, nrm = plane_points(n=4)
    s = po.sample_metal_aware(bone, pts, nrm, edge)
    assert s.reliable.all() and s.inside_ct.all()
    walk = po._walk(bone, pts, nrm, "trilinear", edge.metal_hu)
    assert np.allclose(s.edge_mm, walk.edge_mm)
    assert np.allclose(s.bone_start_mm, s.edge_mm + edge.read_start_mm)
    # Where the metal's share has fallen to 15 %: 1.036 sigma past the plane.
    assert np.allclose(s.bone_start_mm, 1.036 * sigma, atol=0.15)
    assert np.allclose(s.hu, 1000.0, atol=40.0)


def test_points_without_metal_are_unreliable_and_keep_the_plain_reading():
    edge = po.measure_edge(blurred_metal_plane_ct(sigma=0.8), *plane_points())
    bone = blurred_metal_plane_ct(sigma=0.8, tissue=1000.0)
    pts, nrm = plane_points(n=3, x=2.0)  # 2 mm into the bone: nothing inside reaches the metal level
    s = po.sample_metal_aware(bone, pts, nrm, edge)
    assert not s.reliable.any() and s.inside_ct.all()
    assert np.isnan(s.edge_mm).all() and np.isnan(s.bone_start_mm).all()
    # The value kept: the CT at the bounded depth (3 mm) outside the surface, flat bone there.
    assert np.allclose(s.hu, 1000.0, atol=1.0)


def test_walk_leaving_the_ct_is_not_sampled():
    edge = po.measure_edge(blurred_metal_plane_ct(sigma=0.8), *plane_points())
    small = blurred_metal_plane_ct(sigma=0.8, tissue=1000.0, n_i=16)  # ends at x = 3 mm: the 6.5 mm walk leaves it
    pts, nrm = plane_points(n=3)
    s = po.sample_metal_aware(small, pts, nrm, edge)
    assert not s.inside_ct.any() and not s.reliable.any() and np.isnan(s.hu).all()
    full = po.sample_metal_aware(blurred_metal_plane_ct(sigma=0.8, tissue=1000.0), pts, nrm, edge)
    assert np.allclose(s.edge_mm, full.edge_mm) and np.isfinite(s.edge_mm).all()  # the edge itself is inside the CT
    assert np.allclose(s.bone_start_mm, full.bone_start_mm)


def test_bone_start_deeper_than_the_bounded_depth_is_unreliable():
    # An edge model whose bone reading starts 0.2 mm beyond the 3 mm bounded depth.
    bone = blurred_metal_plane_ct(sigma=0.8, tissue=1000.0)
    pts, nrm = plane_points(n=3)
    edge = po._walk(bone, pts, nrm, "trilinear", 3500.0).edge_mm[0]
    x = np.arange(0.0, 5.01, 0.125)
    w = np.clip(0.5 - x / 7.0, 0.0, 1.0)
    e = po.EdgeModel(metal_hu=3500.0, x_mm=x, metal_weight=w, blur_mm=2.4, bloom_mm=3.4, read_start_mm=3.2 - edge,
                     n_vertices=50, method="measured")
    s = po.sample_metal_aware(bone, pts, nrm, e)
    assert not s.reliable.any() and s.inside_ct.all()
    assert np.allclose(s.bone_start_mm, 3.2)
    assert np.allclose(s.hu, 1000.0, atol=1.0)  # the plain reading at 3 mm


def test_clipped_metal_voxels():
    ct = blurred_metal_plane_ct(metal=3071.0, sigma=0.0)
    assert po.clipped_metal_voxels(ct) == int((ct.array == 3071.0).sum()) == 16 * 16 * 9
    ct.array[0, 0, 0] = 3072.0
    assert po.clipped_metal_voxels(ct) == 0  # the CT's maximum is not the clip level
    assert po.clipped_metal_voxels(blurred_metal_plane_ct(metal=3500.0, sigma=0.0)) == 0


def test_resolution_statement():
    assert po.resolution_statement(blurred_metal_plane_ct(voxel=1.0, n_i=8, n_jk=4)) is None
    s = po.resolution_statement(blurred_metal_plane_ct(voxel=1.5, n_i=8, n_jk=4))
    assert s == ("at 1.5 mm voxels a cortex thinner than about 3 mm (2 voxels) is not resolved: thin (metaphyseal) "
                 "cortical contact cannot be measured and reads as cancellous or no bone, and a cancellous gap "
                 "thinner than that between the metal and a cortex reads as the cortex beyond it; zones where the "
                 "bone cannot be told from the metal's bloom are named in a warning")


def _vertices(zone, hu, reliable):
    return pd.DataFrame({"gruen_zone": zone, "hu": hu, "bone_reading_reliable": reliable})


def test_unreliable_share_below_the_cut():
    a = po.Assessment(po.POST_OPERATIVE, True, po.Detection(po.POST_OPERATIVE, np.ones(1, bool), np.ones(1)))
    a.notes["max_bone_start_mm"] = 3.0
    v = _vertices([1, 1, 1, 1, 0, 2], [1.0, 1.0, np.nan, 1.0, 1.0, 1.0], [True, False, False, True, False, False])
    area = np.array([1.0, 2.0, 5.0, 3.0, 7.0, 2.0])
    w = a.unreliable_warnings(v, area)
    # Below the cut and sampled: areas 1, 2, 3, 2; unreliable 2 + 2 = 4 of 8.
    assert a.notes["fraction_unreliable_below_cut"] == pytest.approx(0.5)
    assert w == ["50.0% of the stem surface below the cut is class 'unreliable': there the bone cannot be told from "
                 "the metal's bloom within 3 mm of the surface (no metal inside, no edge found, or a profile the blur "
                 "model does not explain); they are counted in frac_unreliable, never as bone"]
    # Under 1 %: recorded, not warned.
    v = _vertices([1] * 101, np.ones(101), [False] + [True] * 100)
    assert a.unreliable_warnings(v, np.ones(101)) == []
    assert a.notes["fraction_unreliable_below_cut"] == pytest.approx(1 / 101)
    v = _vertices([1] * 100, np.ones(100), [False] + [True] * 99)
    assert len(a.unreliable_warnings(v, np.ones(100))) == 1  # exactly 1 %
    assert a.unreliable_warnings(_vertices([0, 0], [1.0, 1.0], [False, False]), np.ones(2)) == []
    assert a.unreliable_warnings(_vertices([1, 1], [np.nan, np.nan], [False, False]), np.ones(2)) == []


def test_assessment_to_dict():
    det = po.Detection(po.PRE_OPERATIVE, np.zeros(1, bool), np.zeros(1), {"x": 1})
    a = po.Assessment(po.PRE_OPERATIVE, False, det, notes={"max_bone_start_mm": 3.0, "walk_depth_mm": 6.5})
    assert a.to_dict() == {"ct_kind": po.PRE_OPERATIVE, "metal_aware_sampling": False, "evidence": {"x": 1},
                           "resolution": None, "max_bone_start_mm": 3.0, "walk_depth_mm": 6.5}
    a.edge = _edge([0.0, 1.0], [0.5, 0.0])
    a.resolution = "r"
    d = a.to_dict()
    assert d["edge"] == a.edge.to_dict() and d["resolution"] == "r"
    assert d["method"] == {"read_metal_weight": 0.15, "max_bone_start_mm": 3.0, "walk_depth_mm": 6.5, "min_layer_mm": 0.5,
                           "max_fit_rms_hu": 80.0, "metal_scale_range": [0.6, 1.8]}


def test_assess_post_operative_ct_chooses_metal_aware_sampling():
    ct = blurred_metal_plane_ct(sigma=0.8)
    pts, nrm = plane_points()
    a = po.assess(ct, pts, nrm, np.ones(len(pts)), AnalysisParameters())
    assert a.ct_kind == po.POST_OPERATIVE and a.metal_aware and a.edge is not None and a.edge.method == "measured"
    assert a.resolution is None and a.warnings == []
    assert a.notes["max_bone_start_mm"] == 3.0 and a.notes["walk_depth_mm"] == 6.5
    walk = po._walk(ct, pts, nrm, "trilinear", a.edge.metal_hu, a.edge.read_start_mm)
    assert a.notes["metal_edge_offset_median_mm"] == pytest.approx(float(np.median(walk.edge_mm)))
    assert a.notes["metal_edge_offset_p90_mm"] == pytest.approx(float(np.percentile(np.abs(walk.edge_mm), 90)))
    assert abs(a.notes["metal_edge_offset_median_mm"]) < 1.0 and a.notes["fraction_area_edge_off_surface"] == 0.0
    assert a.notes["clipped_voxels_at_3071_hu"] == 0
    # An offset given: the plain sampling the user asked for, with a warning that it reads the bloom.
    a = po.assess(ct, pts, nrm, np.ones(len(pts)), AnalysisParameters(offset_mm=1.0))
    assert not a.metal_aware
    assert len(a.warnings) == 1
    assert a.warnings[0] == (
        "the CT is post-operative and the offsets given (1 mm) read the metal's bloom: the metal adds more than 2% of "
        f"its {a.edge.metal_hu:.0f} HU up to {a.edge.bloom_mm:.2g} mm outside the surface on this CT; the default "
        "(no --offset/--profile, --metal-aware auto) reads the bone past the bloom")
    assert 1.0 < a.edge.bloom_mm < 3.0
    # Offsets beyond the bloom: no warning.
    assert po.assess(ct, pts, nrm, np.ones(len(pts)), AnalysisParameters(offset_mm=3.0)).warnings == []
    # --metal-aware on wins over an offset; off keeps the plain sampling without a bloom warning? (it warns: offsets)
    assert po.assess(ct, pts, nrm, np.ones(len(pts)), AnalysisParameters(offset_mm=1.0, metal_aware="on")).metal_aware
    a = po.assess(ct, pts, nrm, np.ones(len(pts)), AnalysisParameters(metal_aware="off"))
    assert not a.metal_aware and a.warnings == []
    a = po.assess(ct, pts, nrm, np.ones(len(pts)), AnalysisParameters(profile="0:3:0.5"))
    assert not a.metal_aware and "offsets given (0, 0.5, 1, 1.5, 2, 2.5, ... mm)" in a.warnings[0]


def test_assess_says_when_the_model_is_partly_off_the_metal():
    ct = blurred_metal_plane_ct(sigma=0.8)
    p1, n1 = plane_points()
    p2, _ = plane_points(x=3.0)
    pts, nrm = np.vstack([p1, p2[:60]]), np.vstack([n1, n1[:60]])  # 100 of 160 on the metal
    a = po.assess(ct, pts, nrm, np.ones(160), AnalysisParameters())
    assert a.ct_kind == po.POST_OPERATIVE
    assert a.warnings == [
        "the CT is post-operative but only 62% of the model's surface has the implant's metal (>= 2000 HU) within "
        "1.5 mm inside it: the model is partly off the implant (registration off by a few mm?); the rest is class "
        "'unreliable'"]


def test_assess_says_when_the_model_is_off_the_metal_edge():
    # The metal ends 2.5 mm outside the surface on every point: its edge is found more than 1 mm out.
    pts, nrm = plane_points()
    near = po._walk(blurred_metal_plane_ct(sigma=0.6), pts, nrm, "trilinear", None).edge_mm[0]
    ct = blurred_metal_plane_ct(sigma=0.6, plane=2.5)
    a = po.assess(ct, pts, nrm, np.ones(len(pts)), AnalysisParameters())
    assert a.notes["fraction_area_edge_off_surface"] == 1.0
    assert a.notes["metal_edge_offset_median_mm"] == pytest.approx(near + 2.5, abs=1e-6)  # the edge moves with the metal
    assert len(a.warnings) == 1
    assert a.warnings[0].startswith(f"the metal edge lies more than 1 mm from the model surface on 100% of it (median "
                                    f"offset {near + 2.5:+.2f} mm, 90th percentile {near + 2.5:.2f} mm along the outward normal)")
    # Half of the points on the metal's surface, half 2.5 mm inside it: 50 % off, said; 10 % off is not said.
    p2 = pts + [2.5, 0.0, 0.0]
    a = po.assess(ct, np.vstack([pts, p2]), np.vstack([nrm, nrm]), np.ones(200), AnalysisParameters())
    assert a.notes["fraction_area_edge_off_surface"] == pytest.approx(0.5)
    area = np.r_[np.full(100, 1.0), np.full(100, 1.0 / 9.0)]
    a = po.assess(ct, np.vstack([p2, pts]), np.vstack([nrm, nrm]), area, AnalysisParameters())
    assert a.notes["fraction_area_edge_off_surface"] == pytest.approx(0.1)
    assert not any(w.startswith("the metal edge lies") for w in a.warnings)


def test_assess_pre_operative_ct():
    ct = blurred_metal_plane_ct(metal=900.0)
    pts, nrm = plane_points()
    a = po.assess(ct, pts, nrm, np.ones(len(pts)), AnalysisParameters())
    assert a.ct_kind == po.PRE_OPERATIVE and not a.metal_aware and a.edge is None and a.warnings == []
    a = po.assess(ct, pts, nrm, np.ones(len(pts)), AnalysisParameters(metal_aware="on"))
    assert a.warnings == ["metal-aware sampling was asked for, but the implant's metal is not in this CT (0% of the "
                          "surface has metal inside it): the CT is sampled as given"]
    # 10 % of the surface in metal: a model partly in the metal, said.
    metal = blurred_metal_plane_ct()
    p1, n1 = plane_points()
    p2, _ = plane_points(x=3.0)
    pts, nrm = np.vstack([p1[:10], p2[:90]]), np.vstack([n1[:10], n1[:90]])
    a = po.assess(metal, pts, nrm, np.ones(100), AnalysisParameters())
    assert a.ct_kind == po.PRE_OPERATIVE
    assert a.warnings == ["only 10% of the model's surface has metal (>= 2000 HU) within 1.5 mm inside it: if the "
                          "implant is in this CT the model is only partly in its metal (check the registration); "
                          "analysed as a pre-operative CT"]
    pts, nrm = np.vstack([p1[:9], p2[:91]]), np.vstack([n1[:9], n1[:91]])
    assert po.assess(metal, pts, nrm, np.ones(100), AnalysisParameters()).warnings == []


def test_assess_coarse_and_clipped_ct():
    ct = blurred_metal_plane_ct(metal=3071.0, sigma=0.0, voxel=1.5, n_i=12, n_jk=8)  # metal at x <= -1.5, tissue from x = 0
    pts, nrm = plane_points(n=6, half=2.0)
    a = po.assess(ct, pts, nrm, np.ones(len(pts)), AnalysisParameters())
    assert a.ct_kind == po.POST_OPERATIVE
    assert a.resolution is not None and a.resolution in a.warnings
    clipped = int((ct.array == 3071.0).sum())
    assert a.notes["clipped_voxels_at_3071_hu"] == clipped >= 20
    assert any(w.startswith(f"{clipped} voxels read exactly 3071 HU, the CT's maximum: the scanner clipped the metal")
               for w in a.warnings)


def test_metal_advice():
    post = po.Assessment(po.POST_OPERATIVE, False, po.Detection(po.POST_OPERATIVE, np.ones(1, bool), np.ones(1)))
    pre = po.Assessment(po.PRE_OPERATIVE, False, po.Detection(po.PRE_OPERATIVE, np.ones(1, bool), np.ones(1)))
    assert po.metal_advice(post).startswith("the CT is post-operative and was sampled without the metal-aware walk")
    assert po.metal_advice(post).endswith("(no --offset/--profile, --metal-aware auto) to read the bone past the bloom")
    assert po.metal_advice(pre) == ("the model seems to touch metal in the CT; if the implant is in this CT, check the "
                                    "registration, then run with --metal-aware on")


def test_unreliable_warning_without_a_recorded_depth_says_nan():
    a = po.Assessment(po.POST_OPERATIVE, True, po.Detection(po.POST_OPERATIVE, np.ones(1, bool), np.ones(1)))
    w = a.unreliable_warnings(_vertices([1, 1], [1.0, 1.0], [False, True]), np.ones(2))
    assert len(w) == 1 and w[0].startswith("50.0% of the stem surface") and "within nan mm of the surface" in w[0]
