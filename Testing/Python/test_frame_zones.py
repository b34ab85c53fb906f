"""Stem frame and Gruen zones: phantom ground truth, the real scanned stem, mirroring, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ibc_helpers import (
    frame_parameters,
    scanned_stem_in_phantom,
    scanned_stem_placement,
    shared_file,
    vtk_contour_segments,
    vtk_sphere,
)
from ImplantBoneContactLib import (
    AnalysisParameters,
    FemurPhantom,
    FrameOptions,
    InputError,
    PhantomSpec,
    StemFrame,
    analyze,
    assign_zones,
    estimate_frame,
    read_model,
)
from ImplantBoneContactLib.frame import _plane_segments
from ImplantBoneContactLib.mesh import points, surface_geometry, transform_polydata
from ImplantBoneContactLib.phantom import _TIP_Z


def _expected_zones_local(local: np.ndarray, tip_length: float = 10.0) -> np.ndarray:
    """Gruen zones written out from the phantom's local frame (x medial, y anterior, z up, cut at z=0)."""
    x, y, z = local.T
    height = z - _TIP_Z
    depth = -z / -_TIP_Z
    band = np.where(depth < 1 / 3, 0, np.where(depth < 2 / 3, 1, 2))
    az = np.degrees(np.arctan2(y, x)) % 360
    zones = np.zeros(len(local), dtype=int)
    for i in range(len(local)):
        if z[i] > 0:
            continue
        if az[i] >= 315 or az[i] < 45:
            row = (7, 6, 5, 4)
        elif az[i] < 135:
            row = (8, 9, 10, 11)
        elif az[i] < 225:
            row = (1, 2, 3, 4)
        else:
            row = (14, 13, 12, 11)
        zones[i] = row[3] if height[i] <= tip_length else row[band[i]]
    return zones


def _local(phantom, pts):
    return pts @ phantom.ras_to_local[:3, :3].T + phantom.ras_to_local[:3, 3]


def _near_boundary(phantom, pts, tol=0.05):
    """Vertices within tol of a zone boundary (angles in degrees, heights in mm) in the local frame."""
    x, y, z = _local(phantom, pts).T
    az = np.degrees(np.arctan2(y, x)) % 360
    d_angle = np.min(np.abs(((az[:, None] - np.array([45, 135, 225, 315])) + 180) % 360 - 180), axis=1)
    heights = np.array([0.0, _TIP_Z / 3, 2 * _TIP_Z / 3, _TIP_Z + 10.0])
    d_height = np.min(np.abs(z[:, None] - heights), axis=1)
    return (d_angle < tol) | (d_height < tol)


@pytest.mark.parametrize("side", ["left", "right"])
def test_zones_with_true_frame_match_written_out_definition(side):
    ph = FemurPhantom(PhantomSpec(voxel_mm=1.0, side=side))
    pts = points(ph.make_stem_surface())
    zones = assign_zones(ph.true_frame(), pts)["gruen_zone"]
    expected = _expected_zones_local(_local(ph, pts))
    ok = ~_near_boundary(ph, pts)
    np.testing.assert_array_equal(zones[ok], expected[ok])
    assert set(np.unique(zones)) == set(range(15))


def test_automatic_frame_finds_phantom_truth(phantom, phantom_stem):
    """Tolerances: the phantom body leans 5.5 mm laterally over its proximal 60 mm, so the body axis
    differs from the canal axis by under 3 degrees; the neck leaves the body at the cut (z = 0)."""
    geom = surface_geometry(phantom_stem)
    frame, warnings = estimate_frame(geom.points, geom.faces, geom.areas)
    truth = phantom.true_frame()
    assert warnings == []
    assert np.degrees(np.arccos(frame.axis @ truth.axis)) < 3.0
    assert np.degrees(np.arccos(frame.medial @ truth.medial)) < 3.0
    assert np.degrees(np.arccos(frame.anterior @ truth.anterior)) < 3.0
    assert frame.side == "left"
    assert np.linalg.norm(frame.tip - truth.tip) < 2.0
    cut_auto = frame.cut_height(frame.tip[None])[0]
    cut_true = truth.cut_height(truth.tip[None])[0]
    assert abs(cut_auto - cut_true) < 3.0
    # Head and neck (the phantom's implicit parts above z = 0) are above the automatic cut.
    above = _local(phantom, geom.points)[:, 2] > 3.0
    assert np.all(assign_zones(frame, geom.points)["gruen_zone"][above] == 0)


def test_mirrored_femur_gives_mirrored_zones(phantom):
    """A left stem mirrored through the sagittal plane is a right stem with the same zones."""
    right = FemurPhantom(PhantomSpec(voxel_mm=1.0, side="right"))
    left_stem = phantom.make_stem_surface()
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    right_stem = transform_polydata(left_stem, mirror)
    gl = surface_geometry(left_stem)
    gr = surface_geometry(right_stem)
    fl, _ = estimate_frame(gl.points, gl.faces, gl.areas)
    fr, _ = estimate_frame(gr.points, gr.faces, gr.areas)
    assert (fl.side, fr.side) == ("left", "right")
    zl = assign_zones(fl, gl.points)
    zr = assign_zones(fr, gr.points)
    np.testing.assert_array_equal(zl["gruen_zone"], zr["gruen_zone"])
    np.testing.assert_allclose(zl["azimuth_deg"], zr["azimuth_deg"], atol=1e-6)
    # And the right phantom built as such has the same truth frame, mirrored.
    np.testing.assert_allclose(right.true_frame().medial, mirror[:3, :3] @ phantom.true_frame().medial)


def test_scanned_stem_with_head_frame():
    """The real CAD stem (with its head), placed as a left stem: axis along the body, head and neck above the cut."""
    surface, _ = read_model(shared_file("hip_implant_surface_scan.stl"))
    cad = points(surface)
    placed = transform_polydata(surface, scanned_stem_placement())
    geom = surface_geometry(placed)
    frame, warnings = estimate_frame(geom.points, geom.faces, geom.areas)
    assert warnings == []
    # The body runs along CAD +x (head to tip); x maps to RAS -S. Its centreline, from the
    # cross-section centres between 20 and 120 mm from the tip, is independent of the neck.
    body = (cad[:, 0] > -120) & (cad[:, 0] < -20)
    assert np.degrees(np.arccos(abs(frame.axis @ np.array([0, 0, -1.0])))) < 3.0
    assert frame.axis[2] < 0  # proximal to distal points down
    assert frame.side == "left"
    assert frame.medial[0] > 0.95
    zones = assign_zones(frame, geom.points)
    z = zones["gruen_zone"]
    head = cad[:, 0] < -160  # the head: CAD x below -160 mm
    neck = cad[:, 1] < -45  # beyond the body's medial edge (CAD -y is medial)
    assert head.sum() > 100 and neck.sum() > 100
    assert np.all(z[head] == 0)
    assert np.mean(z[neck] == 0) > 0.98
    # The body is below the cut and gets zones 1-14.
    assert np.all(z[body] > 0)
    # The tip zones sit at the distal end: within 10 mm of the most distal point.
    tip_zone = np.isin(z, [4, 11])
    assert tip_zone.sum() > 10
    assert zones["height_mm"][tip_zone].max() <= 10.0 + 1e-9
    assert np.all(cad[tip_zone, 0] > -15)


def test_given_parts_are_used_and_written(tmp_path, phantom, phantom_ct, phantom_stem):
    truth = phantom.true_frame()
    params = AnalysisParameters(points=3000, side="left", tip_length_mm=15.0, **frame_parameters(truth))
    result = analyze(phantom_ct, phantom_stem, params)
    f = result.frame
    np.testing.assert_allclose(f.axis, truth.axis, atol=1e-9)
    np.testing.assert_allclose(f.medial, truth.medial, atol=1e-9)
    assert f.tip_length_mm == 15.0
    assert f.provenance["axis"] == "given" and f.provenance["resection"] == "given"
    again = StemFrame.from_dict(json.loads(json.dumps(f.to_dict())))
    np.testing.assert_allclose(again.resection_normal, f.resection_normal)


def test_projection_scheme_gives_ap_and_lateral_zones(phantom, phantom_stem):
    pts = points(phantom_stem)
    z = assign_zones(phantom.true_frame(), pts)
    below = z["gruen_zone"] > 0
    assert set(np.unique(z["gruen_zone_ap"][below])) == set(range(1, 8))
    assert set(np.unique(z["gruen_zone_lateral"][below])) == set(range(8, 15))
    local = _local(phantom, pts)
    medial_half = below & (local[:, 0] > 0.5) & (local[:, 2] < -50) & (local[:, 2] > -80)
    assert np.all(z["gruen_zone_ap"][medial_half] == 6)
    anterior_half = below & (local[:, 1] > 0.5) & (local[:, 2] < -50) & (local[:, 2] > -80)
    assert np.all(z["gruen_zone_lateral"][anterior_half] == 9)


def test_custom_axial_bands(phantom, phantom_stem):
    pts = points(phantom_stem)
    local = _local(phantom, pts)
    z = assign_zones(phantom.true_frame(), pts, bands_axial=(0.2, 0.4, 0.4))["gruen_zone"]
    lateral = (local[:, 0] < -5) & (np.abs(local[:, 1]) < 3)
    depth = -local[:, 2] / 130.0
    assert np.all(z[lateral & (depth > 0.02) & (depth < 0.18)] == 1)
    assert np.all(z[lateral & (depth > 0.22) & (depth < 0.58)] == 2)
    with pytest.raises(InputError, match="sum to 1"):
        assign_zones(phantom.true_frame(), pts, bands_axial=(0.5, 0.4, 0.4))




@pytest.mark.parametrize("n_slices", [1, 80, 160])
def test_plane_segments_are_vtk_contour_filter_segments(phantom, phantom_stem, n_slices):
    """The numpy cut gives vtkContourFilter's segments, in its order, to the last bit.

    Some planes pass exactly through vertices: VTK drops the zero-length
    segments this gives, and so must the numpy cut.
    """
    geom = surface_geometry(phantom_stem)
    pts, faces = geom.points, geom.faces
    direction = np.array([0.1, -0.2, 1.0]) / np.linalg.norm([0.1, -0.2, 1.0])
    t_pts = (pts - pts.mean(axis=0)) @ direction
    values = np.linspace(t_pts.min() + 0.5, t_pts.max() - 0.5, n_slices)
    if n_slices > 1:
        values = np.unique(np.r_[values, t_pts[:: len(t_pts) // 7]])
    a, b = _plane_segments(pts, faces, t_pts, values)
    ref_a, ref_b = vtk_contour_segments(pts, faces, t_pts, values)
    assert a.shape == ref_a.shape and a.shape[0] > 0
    same = np.all(a == ref_a, axis=1) & np.all(b == ref_b, axis=1)
    swapped = np.all(a == ref_b, axis=1) & np.all(b == ref_a, axis=1)
    assert np.all(same | swapped)


def test_sphere_has_no_stem_axis():
    geom = surface_geometry(vtk_sphere())
    with pytest.raises(InputError, match="not elongated"):
        estimate_frame(geom.points, geom.faces, geom.areas)


def test_resection_plane_leaving_nothing_below(phantom, phantom_stem):
    geom = surface_geometry(phantom_stem)
    truth = phantom.true_frame()
    below_tip = truth.tip + 5.0 * truth.axis
    with pytest.raises(InputError, match="no part of the stem below|within the tip zone"):
        estimate_frame(geom.points, geom.faces, geom.areas, FrameOptions(resection_point=below_tip, resection_normal=-truth.axis))


def test_resection_plane_along_axis_is_refused(phantom, phantom_stem):
    geom = surface_geometry(phantom_stem)
    truth = phantom.true_frame()
    with pytest.raises(InputError, match="tilted"):
        estimate_frame(geom.points, geom.faces, geom.areas, FrameOptions(resection_point=truth.tip, resection_normal=truth.medial))


def test_scanned_stem_analysed_in_phantom_ct(phantom, phantom_ct):
    """The real CAD stem with its head, placed in the phantom's canal and analysed whole (no remesh,
    so vertex i is CAD point i): frame along the canal, head and neck above the cut, tip zone at the tip."""
    surface, _ = read_model(shared_file("hip_implant_surface_scan.stl"))
    cad = points(surface)
    placed = transform_polydata(surface, scanned_stem_in_phantom(phantom))
    result = analyze(phantom_ct, placed, AnalysisParameters(remesh="none"))
    v = result.vertices
    assert v["inside_ct"].all()
    truth = phantom.true_frame()
    assert np.degrees(np.arccos(result.frame.axis @ truth.axis)) < 3.0
    assert np.degrees(np.arccos(result.frame.medial @ truth.medial)) < 5.0
    assert result.frame.side == "left"
    z = v["gruen_zone"].to_numpy()
    assert np.all(z[cad[:, 0] < -160] == 0)  # head
    assert np.mean(z[cad[:, 1] < -45] == 0) > 0.98  # neck
    tip_zone = np.isin(z, [4, 11])
    assert tip_zone.any() and np.all(cad[tip_zone, 0] > -15)
    assert set(np.unique(z)) == set(range(15))
    # The distal body is thinner than the canal: it sits in marrow there (class no_bone), as the truth says.
    distal = (z == 3) | (z == 5)
    tissue = phantom.tissue_at(v[["x_mm", "y_mm", "z_mm"]].to_numpy())
    agree = (v["contact_class"].to_numpy() == "no_bone") == np.isin(tissue, [0, 1, 2])
    assert agree[distal].mean() > 0.9
