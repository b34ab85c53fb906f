"""Properties that must hold for any input, checked with hypothesis on the femur phantom.

Which motions must leave a result unchanged, by design:

* A translation of the CT and the model together: always (nothing in the
  program depends on where the origin is).
* A rotation of both about the patient's A (anterior) axis, with the frame
  found automatically: the automatic frame is built from the surface alone
  (medial is the direction of the stem's neck), except the sign of
  "anterior", which is taken toward the patient's +A. A rotation that keeps
  +A fixed carries that construction along; any other rotation tilts the
  stem against +A and may change which side is called anterior. In a
  patient CT the stem's tip points down: a rotation that turns it superior
  is refused (a nail's neck screw taken for the stem would be), so the
  property holds up to 80 degrees and the refusal is checked beyond 100.
* A rotation about the stem's own axis (anteversion, retroversion), with
  the frame found automatically: the zones follow the implant's neck plane.
* Any rotation up to 60 degrees about any axis, when the frame is given
  explicitly (axis points, medial point and resection plane moved by the
  same motion). Only the sign of "anterior" still refers to the patient
  (+A side), so rotations that would turn the stem's front past 90 degrees
  from +A are outside the property; the phantom's front is 7 degrees from
  +A, so 60 degrees keeps a margin.
* Mirroring left/right (x -> -x on the CT geometry and the model, triangle
  order reversed): the same zones, HU and statistics, and the side flips.
  Azimuth is measured from medial toward anterior on both sides, so it does
  not change either.

Remeshing at another density changes where the surface is sampled, so the
per-zone statistics agree only within a tolerance set by the mesh spacing.
Random meshes, volumes and parameters never crash: the result is either an
:class:`InputError` or a complete result.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import vtk
from hypothesis import HealthCheck, assume, event, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from ibc_helpers import frame_parameters, rotation, sphere_arrays
from ImplantBoneContactLib import (
    AnalysisParameters,
    AnalysisResult,
    InputError,
    Volume,
    analyze,
    transform_polydata,
)
from ImplantBoneContactLib.frame import ZONE_ORDER
from ImplantBoneContactLib.mesh import points as mesh_points
from ImplantBoneContactLib.mesh import polydata_from_arrays

PROPERTY_SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
NUMERIC_ZONE_COLUMNS = ["n_vertices", "n_sampled", "area_mm2", "area_sampled_mm2", "hu_mean", "hu_std", "hu_min", "hu_median", "hu_max"]


@pytest.fixture(scope="module")
def ct(phantom_ct) -> Volume:
    return phantom_ct


@pytest.fixture(scope="module")
def stem(phantom_stem) -> vtk.vtkPolyData:
    return phantom_stem


@pytest.fixture(scope="module")
def automatic(ct, stem) -> AnalysisResult:
    return analyze(ct, stem, AnalysisParameters(remesh="none"))


@pytest.fixture(scope="module")
def explicit_frame(phantom) -> dict:
    """The phantom's true frame, nudged off the marching-cubes grid of the stem surface.

    Vertices of the phantom stem lie exactly on the true frame's 45-degree planes, and its
    apex exactly on the true axis (azimuth undefined), so a motion's rounding error
    (1e-14 degrees) would move them across a sector boundary.
    """
    f = phantom.true_frame()
    d = frame_parameters(f)
    d["axis"] = (tuple(np.asarray(d["axis"][0]) + 0.0191 * f.medial), tuple(np.asarray(d["axis"][1]) + 0.0271 * f.anterior))
    d["medial_point"] = tuple(np.asarray(d["medial_point"]) + 0.137 * f.anterior)
    d["resection_point"] = tuple(np.asarray(d["resection_point"]) + 0.0113 * f.axis)
    return d


@pytest.fixture(scope="module")
def explicit(ct, stem, explicit_frame) -> AnalysisResult:
    return analyze(ct, stem, AnalysisParameters(remesh="none", **explicit_frame))


def moved(ct: Volume, stem: vtk.vtkPolyData, m: np.ndarray) -> tuple[Volume, vtk.vtkPolyData]:
    """CT and model with the 4x4 motion ``m`` (RAS mm) applied to both; the voxels are the same."""
    return Volume(ct.array, m @ ct.ijk_to_ras), transform_polydata(stem, m)


def moved_frame(frame: dict, m: np.ndarray) -> dict:
    def point(p):
        return tuple(np.asarray(p) @ m[:3, :3].T + m[:3, 3])

    return {
        "axis": (point(frame["axis"][0]), point(frame["axis"][1])),
        "medial_point": point(frame["medial_point"]),
        "resection_point": point(frame["resection_point"]),
        "resection_normal": tuple(m[:3, :3] @ np.asarray(frame["resection_normal"])),
    }


def same_vertices(result: AnalysisResult, reference: AnalysisResult, m: np.ndarray) -> pd.DataFrame:
    """The result's vertices in the reference's order, matched by position after the motion ``m``.

    A mirror reverses the triangles, and cleaning the surface then numbers the points in another order.
    """
    ref_xyz = reference.vertices[["x_mm", "y_mm", "z_mm"]].to_numpy() @ m[:3, :3].T + m[:3, 3]
    got_xyz = result.vertices[["x_mm", "y_mm", "z_mm"]].to_numpy()
    assert len(got_xyz) == len(ref_xyz)
    locator = vtk.vtkStaticPointLocator()
    locator.SetDataSet(polydata_from_arrays(got_xyz, np.zeros((0, 3), dtype=np.int64)))
    locator.BuildLocator()
    order = np.array([locator.FindClosestPoint(p) for p in ref_xyz])
    assert len(np.unique(order)) == len(order)
    np.testing.assert_allclose(got_xyz[order], ref_xyz, atol=1e-6)
    return result.vertices.iloc[order].reset_index(drop=True)


def assert_same_analysis(result: AnalysisResult, reference: AnalysisResult, m: np.ndarray) -> None:
    """Vertex for vertex (matched by position) and zone for zone."""
    v, r = same_vertices(result, reference, m), reference.vertices
    np.testing.assert_allclose(v[["nx", "ny", "nz"]].to_numpy(), r[["nx", "ny", "nz"]].to_numpy() @ m[:3, :3].T, atol=1e-6)
    np.testing.assert_allclose(v["area_mm2"], r["area_mm2"], rtol=1e-9)
    np.testing.assert_array_equal(v["inside_ct"], r["inside_ct"])
    np.testing.assert_allclose(v["hu"], r["hu"], rtol=1e-7, atol=1e-6)
    np.testing.assert_allclose(v["height_mm"], r["height_mm"], atol=1e-6)
    d_az = (v["azimuth_deg"].to_numpy() - r["azimuth_deg"].to_numpy() + 180.0) % 360.0 - 180.0
    assert np.abs(d_az).max() < 1e-6
    np.testing.assert_array_equal(v["gruen_zone"], r["gruen_zone"])
    np.testing.assert_array_equal(v["contact_class"], r["contact_class"])
    pd.testing.assert_frame_equal(result.zones, reference.zones, rtol=1e-7, atol=1e-6)


def rigid(rot: np.ndarray, shift) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = shift
    return m


def axis_angle(axis, degrees: float) -> np.ndarray:
    k = np.asarray(axis, dtype=float)
    k /= np.linalg.norm(k)
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    a = np.radians(degrees)
    return np.eye(3) + np.sin(a) * kx + (1 - np.cos(a)) * kx @ kx


shifts = st.tuples(*[st.floats(-300, 300, allow_nan=False)] * 3)
unit_vectors = st.tuples(*[st.floats(-1, 1, allow_nan=False)] * 3).filter(lambda v: np.linalg.norm(v) > 0.2)


# --------------------------------------------------------------------------- rigid motions


@PROPERTY_SETTINGS
@given(angle=st.floats(-180, 180, allow_nan=False), shift=shifts)
def test_translation_and_rotation_about_anterior_change_nothing(ct, stem, automatic, angle, shift) -> None:
    m = rigid(rotation("y", angle), shift)  # RAS y is the patient's A axis
    # The phantom's stem is 7 degrees from the patient's inferior direction: turned by more than 100
    # degrees its tip points superior, which no femoral stem in a patient CT does (a nail's neck
    # screw found as the axis does): refused. 80-100 degrees is the border, left out.
    if abs(angle) > 100:
        with pytest.raises(InputError, match="tip superior"):
            analyze(*moved(ct, stem, m), AnalysisParameters(remesh="none"))
        return
    assume(abs(angle) < 80)
    result = analyze(*moved(ct, stem, m), AnalysisParameters(remesh="none"))
    assert_same_analysis(result, automatic, m)
    assert result.frame.side == automatic.frame.side


@PROPERTY_SETTINGS
@given(angle=st.floats(-40, 40, allow_nan=False))
def test_turning_the_stem_about_its_own_axis_changes_nothing(ct, stem, automatic, angle) -> None:
    """Anteverting or retroverting the stem (and its CT) about its own axis: the zones follow the
    implant's neck plane, so nothing changes but the version angle, which grows by the turn."""
    f = automatic.frame
    rot = axis_angle(-f.axis, angle)  # about the proximal direction: positive turns medial toward anterior
    m = rigid(rot, f.tip - rot @ f.tip)
    result = analyze(*moved(ct, stem, m), AnalysisParameters(remesh="none"))
    assert_same_analysis(result, automatic, m)
    turn = angle if f.side == "left" else -angle
    assert abs(result.frame.version_deg - (f.version_deg + turn)) < 1.0


@PROPERTY_SETTINGS
@given(axis=unit_vectors, angle=st.floats(-60, 60, allow_nan=False), shift=shifts)
def test_any_rigid_motion_with_the_frame_given_changes_nothing(ct, stem, explicit, explicit_frame, axis, angle, shift) -> None:
    m = rigid(axis_angle(axis, angle), shift)
    result = analyze(*moved(ct, stem, m), AnalysisParameters(remesh="none", **moved_frame(explicit_frame, m)))
    assert_same_analysis(result, explicit, m)


def test_a_rotation_that_turns_the_front_away_swaps_anterior_and_posterior(ct, stem, explicit, explicit_frame) -> None:
    """Outside the property, by design: 180 degrees about the stem axis turns the stem's front to -A,
    and "anterior" follows the patient's +A, so zones 8-10 and 12-14 trade places."""
    f = explicit_frame
    axis = np.subtract(f["axis"][1], f["axis"][0])
    rot = axis_angle(axis, 180.0)
    m = rigid(rot, np.asarray(f["axis"][0]) - rot @ np.asarray(f["axis"][0]))
    result = analyze(*moved(ct, stem, m), AnalysisParameters(remesh="none", **moved_frame(f, m)))
    swap = {8: 14, 9: 13, 10: 12, 14: 8, 13: 9, 12: 10}
    expected = np.array([swap.get(int(z), int(z)) for z in explicit.vertices["gruen_zone"]])
    # The tip zone and the medial/lateral zones keep their numbers; the bands and the cut are the same.
    agree = np.mean(result.vertices["gruen_zone"].to_numpy() == expected)
    assert agree > 0.99


@PROPERTY_SETTINGS
@given(shift=shifts)
def test_left_right_mirror_mirrors_the_zones(ct, stem, automatic, shift) -> None:
    m = rigid(np.diag([-1.0, 1.0, 1.0]), shift)
    result = analyze(*moved(ct, stem, m), AnalysisParameters(remesh="none"))
    assert {result.frame.side, automatic.frame.side} == {"left", "right"}
    np.testing.assert_allclose(result.frame.medial, m[:3, :3] @ automatic.frame.medial, atol=1e-9)
    np.testing.assert_allclose(result.frame.anterior, m[:3, :3] @ automatic.frame.anterior, atol=1e-9)
    assert_same_analysis(result, automatic, m)


# --------------------------------------------------------------------------- remeshing


def assert_zone_statistics_close(result: AnalysisResult, reference: AnalysisResult, whole: tuple, zone: tuple) -> None:
    """Area and mean HU (relative) and class fractions (absolute) within ``whole = (area, hu, frac)`` for the
    row ``all`` and within ``zone = (area, hu, frac)`` for zones 1-14."""
    z, ref = result.zones.set_index("zone"), reference.zones.set_index("zone")
    fracs = [c for c in ref.columns if c.startswith("frac_")]
    zones = [str(k) for k in ZONE_ORDER]
    for rows, (area, hu, frac) in ((["all"], whole), (zones, zone)):
        np.testing.assert_allclose(z.loc[rows, "area_mm2"], ref.loc[rows, "area_mm2"], rtol=area)
        np.testing.assert_allclose(z.loc[rows, "hu_mean"], ref.loc[rows, "hu_mean"], rtol=hu)
        assert np.abs(z.loc[rows, fracs].to_numpy() - ref.loc[rows, fracs].to_numpy()).max() < frac


# Remeshing to N points must give N points, less the few the remesh drops: ACVD leaves a cluster that ends
# up empty without a vertex, and closing the fast remesh's dual drops the vertices inside the patches it
# fills again. Measured on the phantom stem at 3000, 3700, 5000, 6500 and 8000 points: acvd 0-1.3 % fewer
# (3000, 3652, 4978, 6481, 7991); fast at 123 point counts from 3000 to 7961: 0.4-1.0 % fewer. At least
# 98 % of N (1.5 times the largest shortfall) catches a target count off by more than 2 %; at most N catches the input returned unchanged (the phantom stem
# has 20 002 vertices), which the zone bounds below cannot: the input mesh is itself within 1.3 % (area),
# 1.5 % (mean HU) and 0.02 (fractions) of the fine reference in every zone.
REMESH_KEEPS_AT_LEAST = 0.98

# The bounds below are the largest errors measured against the finely resolved surface, times 1.25 and
# rounded up (the test draws other point counts from the same 3000-8000 range). They are not derived from
# the geometry: that bounds a zone's area error only by the half-row of vertex cells along its borders
# (border length x half the point spacing, 2 mm apart at 3000 points), several times what is measured.


def subdivided(stem: vtk.vtkPolyData, times: int) -> vtk.vtkPolyData:
    """Split every triangle 1-to-4 at its edge midpoints, ``times`` times: the same surface, finer."""
    from ImplantBoneContactLib.mesh import triangles

    pts, faces = mesh_points(stem), triangles(stem)
    for _ in range(times):
        edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
        unique, inverse = np.unique(edges, axis=0, return_inverse=True)
        mid = len(pts) + inverse.reshape(3, -1).T
        a, b, c = faces.T
        ab, bc, ca = mid.T
        pts = np.vstack([pts, pts[unique].mean(axis=1)])
        faces = np.vstack([np.c_[a, ab, ca], np.c_[ab, b, bc], np.c_[ca, bc, c], np.c_[ab, bc, ca]])
    return polydata_from_arrays(pts, faces)


@pytest.fixture(scope="module")
def fine(ct, stem, explicit_frame) -> AnalysisResult:
    """The stem surface resolved finely (16 x the triangles, 320 000 vertices): the reference
    that zone statistics of any reasonable mesh of this surface approach."""
    return analyze(ct, subdivided(stem, 2), AnalysisParameters(remesh="none", **explicit_frame))


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(points=st.integers(3000, 8000))
def test_acvd_remesh_keeps_zone_statistics(ct, stem, fine, explicit_frame, points) -> None:
    """A uniform remesh samples other places of the same surface. Measured against the finely
    resolved surface at 3000-8000 points: a zone within 6.6 % (area), 3.9 % (mean HU), 0.031
    (class fractions). A zone boundary cuts through triangles, so a zone gains or loses part of a
    row of vertices, and the HU beside the stem changes steeply at the cortex. The whole stem's
    area is 0.2-1.6 % too large (15 point counts from 3000 to 8000; 1.62 % at 3700): pyacvd turns
    the triangles its mesh folds over their neighbours to face outward, so they count twice.
    (The decimated input mesh itself, not remeshed, is off by up to 15 % in a zone's area: its
    large triangles at the cut give their area to the vertices above it.)"""
    result = analyze(ct, stem, AnalysisParameters(remesh="acvd", points=points, **explicit_frame))
    assert REMESH_KEEPS_AT_LEAST * points <= len(result.vertices) <= points
    # measured, whole stem: area 1.62 %, mean HU 0.68 %, fractions 0.0048; a zone: 6.6 %, 3.9 %, 0.031
    assert_zone_statistics_close(result, fine, whole=(0.021, 0.01, 0.007), zone=(0.085, 0.05, 0.04))


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(points=st.integers(3000, 8000))
@example(points=7823)  # a hole of 1.7 % of the area was left open here (fixed)
def test_fast_remesh_keeps_zone_statistics(ct, stem, fine, explicit_frame, points) -> None:
    """The fast remesh, whose folds are laid flat, covers the surface once. Measured against the
    finely resolved surface at 123 point counts (3000 to 7961, 41 apart): whole-stem area within
    0.25 %, mean HU within 0.90 %; a zone within 3.5 % (area), 3.6 % (mean HU), 0.032 (class
    fractions), the largest at 3000-4900 points, where a zone has 100-300 vertices. (Nine point
    counts had shown 2.7 % for the mean HU: bounds from them failed at 3205, 3533, 3697 and 3902.)"""
    result = analyze(ct, stem, AnalysisParameters(remesh="fast", points=points, **explicit_frame))
    assert REMESH_KEEPS_AT_LEAST * points <= len(result.vertices) <= points
    # measured, whole stem: area 0.25 %, mean HU 0.90 %, fractions 0.0078; a zone: 3.51 %, 3.56 %, 0.032
    assert_zone_statistics_close(result, fine, whole=(0.004, 0.012, 0.01), zone=(0.044, 0.045, 0.04))


def centroid_split(stem: vtk.vtkPolyData, selected: np.ndarray) -> vtk.vtkPolyData:
    """Split the selected triangles 1-to-3 at their centroid: the same surface, locally denser, no T-junctions."""
    from ImplantBoneContactLib.mesh import triangles

    pts, faces = mesh_points(stem), triangles(stem)
    sel = faces[selected]
    ids = len(pts) + np.arange(len(sel))
    a, b, c = sel.T
    new_faces = np.vstack([faces[~selected], np.c_[a, b, ids], np.c_[b, c, ids], np.c_[c, a, ids]])
    return polydata_from_arrays(np.vstack([pts, pts[sel].mean(axis=1)]), new_faces)


def zone_errors(result: AnalysisResult, reference: AnalysisResult) -> pd.DataFrame:
    """Per zone: relative error of area and mean HU, largest absolute error of a class fraction."""
    z, ref = result.zones.set_index("zone"), reference.zones.set_index("zone")
    fracs = [c for c in ref.columns if c.startswith("frac_")]
    return pd.DataFrame(
        {
            "area": (z["area_mm2"] / ref["area_mm2"] - 1).abs(),
            "hu_mean": (z["hu_mean"] / ref["hu_mean"] - 1).abs(),
            "fracs": (z[fracs] - ref[fracs]).abs().max(axis=1),
        }
    )


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(threshold_hu=st.floats(200, 1500), rounds=st.integers(1, 2))
def test_denser_mesh_where_bone_is_dense_does_not_pull_the_statistics(ct, stem, explicit, fine, explicit_frame, threshold_hu, rounds) -> None:
    """Triangles whose centre lies in bone denser than ``threshold_hu`` are split 1-to-3 (once or
    twice): the same surface with 3 or 9 times more vertices where the HU is high, as a CAD mesh
    is dense at the curved edges that touch the cortex. Area weighting keeps each zone as close
    to the finely resolved surface as the input mesh was (HU and fractions within 0.03, area 0.05;
    whole stem 0.015). An
    unweighted mean moves 38-69 % toward the dense bone in some zone on the phantom."""
    from ImplantBoneContactLib.mesh import triangles
    from ImplantBoneContactLib.sampling import sample

    surface = stem
    for _ in range(rounds):
        hu, _ = sample(ct, mesh_points(surface)[triangles(surface)].mean(axis=1))
        surface = centroid_split(surface, hu > threshold_hu)
    result = analyze(ct, surface, AnalysisParameters(remesh="none", **explicit_frame))
    assert len(result.vertices) > len(explicit.vertices)
    split_error, input_error = zone_errors(result, fine), zone_errors(explicit, fine)
    # A zone's area moves with the vertices at its boundary (a third of each triangle goes to each
    # corner), so it gets more room than the HU and the class fractions.
    slack = pd.DataFrame({"area": 0.05, "hu_mean": 0.03, "fracs": 0.03}, index=split_error.index)
    slack.loc["all"] = 0.015
    excess = split_error - input_error - slack
    assert (excess <= 0).all().all(), excess[(excess > 0).any(axis=1)]


# --------------------------------------------------------------------------- random inputs never crash


def rotations():
    return st.tuples(st.floats(-180, 180), st.floats(-180, 180), st.floats(-180, 180)).map(
        lambda a: rotation("z", a[0]) @ rotation("y", a[1]) @ rotation("x", a[2])
    )


@st.composite
def random_volumes(draw):
    """Mostly usable CTs around the origin (so that meshes meet them), sometimes broken ones."""
    shape = list(draw(st.tuples(*[st.integers(2, 12)] * 3)))
    if draw(st.integers(0, 19)) == 0:
        shape[draw(st.integers(0, 2))] = 1  # a single slice
    shape = tuple(shape)
    dtype = draw(st.sampled_from([np.int16, np.uint8, np.float32, np.float64]))
    if draw(st.integers(0, 19)) == 0:
        dtype = np.bool_  # not a number type
    if dtype in (np.float32, np.float64):
        elements = st.floats(-3000, 3000, width=32)
        if draw(st.booleans()):
            elements = elements | st.sampled_from([np.nan, np.inf, -np.inf])
    elif dtype is np.bool_:
        elements = st.booleans()
    else:
        info = np.iinfo(dtype)
        elements = st.integers(max(info.min, -3000), min(info.max, 3000))
    array = draw(hnp.arrays(dtype, shape, elements=elements))
    spacing = np.array(draw(st.tuples(*[st.sampled_from([0.5, 1.0, 3.0, 6.0, 6.0])] * 3)))
    if draw(st.integers(0, 19)) == 0:
        spacing[draw(st.integers(0, 2))] = 0.0  # a singular geometry
    m = np.eye(4)
    m[:3, :3] = draw(rotations()) * spacing[None, :]
    centre = (np.asarray(shape[::-1], dtype=float) - 1) / 2.0
    m[:3, 3] = -m[:3, :3] @ centre + np.asarray(draw(st.tuples(*[st.floats(-10, 10)] * 3)))
    return array, m


@st.composite
def random_meshes(draw):
    """Triangle soups, ellipsoids and stem-like shapes (a long body with a neck ball), of any size and pose."""
    kind = draw(st.sampled_from(["soup", "ellipsoid", "stem", "stem"]))
    if kind == "soup":
        n = draw(st.integers(0, 40))
        pts = draw(hnp.arrays(np.float64, (n, 3), elements=st.floats(-1, 1))) * draw(st.sampled_from([1.0, 20.0]))
        faces = draw(hnp.arrays(np.int64, (draw(st.integers(0, 60)) if n else 0, 3), elements=st.integers(0, max(n - 1, 0))))
    else:
        pts, faces = sphere_arrays(0.5, resolution=draw(st.integers(3, 16)), phi_resolution=draw(st.integers(3, 16)))
        pts = pts * np.array([draw(st.floats(0.5, 15)), draw(st.floats(0.5, 15)), draw(st.floats(0.5, 60))])
        if kind == "stem":
            bpts, bfaces = sphere_arrays(draw(st.floats(1, 10)), (draw(st.floats(3, 20)), 0.0, draw(st.floats(10, 40))), resolution=8)
            pts, faces = np.vstack([pts, bpts]), np.vstack([faces, bfaces + len(pts)])
        pts = pts @ draw(rotations()).T
        pts += draw(hnp.arrays(np.float64, pts.shape, elements=st.floats(-0.3, 0.3)))
    if draw(st.integers(0, 19)) == 0:
        pts = pts * 0.001  # metres
    pts = pts + np.asarray(draw(st.tuples(*[st.floats(-15, 15)] * 3)))
    if len(pts) and draw(st.integers(0, 19)) == 0:
        pts[draw(st.integers(0, len(pts) - 1))] = draw(st.sampled_from([np.nan, np.inf]))
    return pts, faces


def random_parameters():
    return st.builds(
        AnalysisParameters,
        remesh=st.sampled_from(["none", "acvd"]),
        points=st.integers(4, 30),
        sampling=st.sampled_from(["trilinear", "nearest"]),
        offset_mm=st.floats(-3, 3),
        classes=st.sampled_from(["default", "fixation", "pedicle-screw"]),
        metal_hu=st.sampled_from([None, 2500.0, 0.0]),
        profile=st.sampled_from([None, "0:2:0.5", "-1:1:1"]),
        zone_scheme=st.sampled_from(["sector", "projection"]),
        side=st.sampled_from([None, "left", "right"]),
        tip_length_mm=st.sampled_from([0.0, 10.0]),
    )


def assert_valid_result(result: AnalysisResult) -> None:
    assert isinstance(result, AnalysisResult)
    v = result.vertices
    assert len(v) > 0 and len(result.zones) == 15
    hu = v["hu"].to_numpy()
    assert not np.isinf(hu).any()
    analysed = v["gruen_zone"].to_numpy() > 0
    assert (v["contact_class"][~np.isfinite(hu) & analysed] == "not_sampled").all()
    assert (v["contact_class"][~analysed] == "above_resection").all()
    assert np.isnan(hu[~v["inside_ct"].to_numpy()]).all()
    assert np.all(np.isfinite(v["area_mm2"])) and np.all(v["area_mm2"] >= 0)
    assert set(np.unique(v["gruen_zone"])) <= set(range(15))


@settings(max_examples=150, deadline=None)
@given(volume=random_volumes(), mesh=random_meshes(), params=random_parameters())
def test_random_small_inputs_never_crash(volume, mesh, params) -> None:
    array, ijk_to_ras = volume
    pts, faces = mesh
    try:
        result = analyze(Volume(array, ijk_to_ras), polydata_from_arrays(pts, faces), params)
    except InputError as exc:
        assert str(exc) and "\n" not in str(exc)
        event(f"InputError: {str(exc)[:40]}")
        return
    event("result")
    assert_valid_result(result)


@st.composite
def valid_inputs(draw):
    """A CT of random HU around a stem-like mesh (a long ellipsoid with a neck ball, 20-40 mm on
    each side inside the CT), the frame given, random parameters with the mesh kept: every one is a
    valid analysis, so an InputError here is a regression (the fuzz test above would pass it)."""
    pts, faces = sphere_arrays(0.5, resolution=draw(st.integers(8, 16)), phi_resolution=draw(st.integers(8, 16)))
    pts = pts * np.array([draw(st.floats(8, 14)), draw(st.floats(8, 14)), draw(st.floats(60, 100))])
    spacing = draw(st.sampled_from([0.8, 1.0, 1.5]))
    n = int(np.ceil(80 / spacing))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    array = rng.normal(draw(st.floats(-200, 1500)), draw(st.floats(0, 400)), (n, n, n)).astype(np.float32)
    m = np.diag([spacing, spacing, spacing, 1.0])
    m[:3, 3] = -spacing * (n - 1) / 2.0
    params = draw(random_parameters())
    params.remesh = "none"
    params.axis = ((0.0, 0.0, 25.0), (0.0, 0.0, -35.0))
    params.medial_point = (10.0, 0.0, 0.0)
    params.resection_point, params.resection_normal = (0.0, 0.0, 20.0), (0.0, 0.0, 1.0)
    return Volume(array, m), polydata_from_arrays(pts, faces), params


@settings(max_examples=10, deadline=None)
@given(inputs=valid_inputs())
def test_random_valid_inputs_give_a_result(inputs) -> None:
    volume, mesh, params = inputs
    assert_valid_result(analyze(volume, mesh, params))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    intact=st.booleans(),
    noise=st.floats(0.0, 3.0),
    drop=st.floats(0.0, 0.3),
    seed=st.integers(0, 2**31 - 1),
    params=random_parameters(),
)
def test_damaged_phantom_stem_never_crashes(ct, stem, intact, noise, drop, seed, params) -> None:
    """The real stem with jittered points and missing triangles: a result or an InputError;
    the stem left intact always gives a result."""
    if intact:
        noise, drop = 0.0, 0.0
    rng = np.random.default_rng(seed)
    pts = mesh_points(stem) + rng.normal(0.0, noise, (stem.GetNumberOfPoints(), 3))
    from ImplantBoneContactLib.mesh import triangles

    faces = triangles(stem)
    faces = faces[rng.random(len(faces)) >= drop]
    assume(len(faces) > 0)
    params.remesh = "none"
    try:
        result = analyze(ct, polydata_from_arrays(pts, faces), params)
    except InputError as exc:
        assert not intact, f"the intact phantom stem was refused: {exc}"
        assert str(exc) and "\n" not in str(exc)
        return
    assert_valid_result(result)
