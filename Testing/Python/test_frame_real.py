"""The stem frame on real implants and as real users give it.

A nail with a neck screw from the real post-operative CT, stems anteverted
and rotated about their axis, an axis given distal point first, a side that
contradicts the neck, a CAD stem lying along the patient's AP direction, and
frame files from another stem or with malformed vectors.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from ibc_helpers import scanned_stem_placement, shared_file
from ImplantBoneContactLib import (
    AnalysisParameters,
    FemurPhantom,
    FrameOptions,
    InputError,
    PhantomSpec,
    StemFrame,
    Volume,
    analyze,
    assign_zones,
    estimate_frame,
    read_model,
    read_volume,
    surface_geometry,
    transform_polydata,
    write_volume,
)
from ImplantBoneContactLib.cli import build_parser, main, parameters_from_args
from ImplantBoneContactLib.mesh import prepare_surface, write_polydata
from vtk.util import numpy_support as ns


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _rotated_about_canal(phantom: FemurPhantom, degrees: float) -> np.ndarray:
    """4x4 RAS matrix turning the phantom's stem by ``degrees`` about its canal axis, neck toward anterior.

    In the local frame (x medial, y anterior, z up) a positive turn about z takes
    medial toward anterior: anteversion, for a left and a (mirrored) right femur.
    """
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    turn = np.eye(4)
    turn[:2, :2] = [[c, -s], [s, c]]
    return phantom.local_to_ras @ turn @ phantom.ras_to_local


def _box_ct(lo, hi, hu: float = 40.0, voxel: float = 2.0) -> Volume:
    """A uniform CT covering the RAS box ``lo``..``hi`` (mm), 10 mm margin."""
    lo = np.asarray(lo, dtype=float) - 10.0
    hi = np.asarray(hi, dtype=float) + 10.0
    shape = np.ceil((hi - lo) / voxel).astype(int) + 1
    m = np.diag([voxel, voxel, voxel, 1.0])
    m[:3, 3] = lo
    return Volume(np.full(shape[::-1], hu, dtype=np.int16), m)


# ------------------------------------------------------------------------------------------------
# 1. a nail with a neck screw, from the real post-operative CT
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def nail(shared_data):
    """The CT and its implant's surface: voxels >= 2000 HU, largest connected part, iso-surface in RAS."""
    ct = read_volume(shared_data / "pelvis_ct_with_femoral_implant.nii.gz")
    metal = sitk.GetImageFromArray((ct.array >= 2000).astype(np.uint8))
    labels = sitk.GetArrayFromImage(sitk.RelabelComponent(sitk.ConnectedComponent(metal)))
    largest = np.pad((labels == 1).astype(np.float32), 1)  # closed where the nail leaves the scan
    image = vtk.vtkImageData()
    nk, nj, ni = largest.shape
    image.SetDimensions(ni, nj, nk)
    image.GetPointData().SetScalars(ns.numpy_to_vtk(largest.ravel(), deep=True))
    iso = vtk.vtkFlyingEdges3D()
    iso.SetInputData(image)
    iso.SetValue(0, 0.5)
    iso.Update()
    unpad = np.eye(4)
    unpad[:3, 3] = -1.0
    surface = transform_polydata(iso.GetOutput(), ct.ijk_to_ras @ unpad)
    k, j, i = np.nonzero(labels == 1)
    voxels = np.c_[i, j, k, np.ones_like(i)] @ ct.ijk_to_ras.T
    return ct, surface, voxels[:, :3]


def test_nail_with_neck_screw_is_refused_with_what_to_give(nail):
    """The automatic axis follows the screw (the longest part) and puts the tip in the femoral head: refused."""
    ct, surface, _ = nail
    with pytest.raises(InputError) as err:
        analyze(ct, surface, AnalysisParameters(remesh="none"))
    message = str(err.value)
    assert "tip superior" in message and "--axis" in message and "proximal point first" in message


def test_nail_with_given_axis_is_a_left_femur_tip_down(nail):
    """Given an axis down the nail (proximal first, or reversed), the tip is the nail's inferior end and the
    side is left: the implant lies on the patient's left (RAS x below the CT's centre) and the screw, the
    only thing sticking out, points medially, to the patient's right."""
    ct, surface, voxels = nail
    lowest = voxels[:, 2] < voxels[:, 2].min() + 7.0  # the three lowest slices: the nail alone
    x, y = voxels[lowest, 0].mean(), voxels[lowest, 1].mean()
    top, bottom = voxels[:, 2].max() - 15.0, voxels[:, 2].min()
    assert x < ct.bounds_ras()[:, 0].mean() - 40  # left of the CT's centre
    down = ((x, y, top), (x, y, bottom))
    for axis, reversed_ in ((down, False), (down[::-1], True)):
        result = analyze(ct, surface, AnalysisParameters(remesh="none", axis=axis))
        frame = result.frame
        assert frame.side == "left"
        assert frame.axis[2] < -0.99
        assert abs(frame.tip[2] - (voxels[:, 2].min() - 1.5)) < 2.0  # half a voxel below the lowest centre
        assert any("turned round" in w for w in result.warnings) == reversed_
        assert not any("CT's centre" in w for w in result.warnings)
        zones = result.vertices["gruen_zone"].to_numpy()
        assert np.isin(zones, [4, 11]).any()


def test_stem_upside_down_in_a_patient_ct_is_refused(phantom, phantom_stem):
    """A stem turned upside down in patient space: the tip points superior. Refused in a CT, accepted as CAD."""
    flip = np.diag([1.0, -1.0, -1.0, 1.0])  # 180 degrees about R
    geom = surface_geometry(transform_polydata(phantom_stem, flip))
    frame, _ = estimate_frame(geom.points, geom.faces, geom.areas)  # no CT: any orientation is fine
    assert frame.axis[2] > 0.9
    ct_box = np.array([geom.points.min(0) - 20, geom.points.max(0) + 20])
    with pytest.raises(InputError, match="tip superior"):
        estimate_frame(geom.points, geom.faces, geom.areas, FrameOptions(ct_bounds_ras=ct_box))


def test_side_against_position_in_the_ct_is_warned(phantom, phantom_stem):
    """A right-shaped stem (mirrored in place) lying at the left femur of a 400 mm wide CT: the side
    from the neck (right) contradicts the position (80 mm left of the centre): warned with numbers."""
    geom = surface_geometry(phantom_stem)
    cx = (geom.points[:, 0] * geom.areas).sum() / geom.areas.sum()
    mirror_in_place = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirror_in_place[0, 3] = 2 * cx
    mirrored = surface_geometry(transform_polydata(phantom_stem, mirror_in_place))
    wide = np.array([[cx + 80 - 200, -300, -300], [cx + 80 + 200, 300, 300]])  # centre 80 mm right of the stem
    frame, warnings = estimate_frame(mirrored.points, mirrored.faces, mirrored.areas, FrameOptions(ct_bounds_ras=wide))
    assert frame.side == "right"
    assert any("80 mm to the patient's left of the CT's centre" in w and "right femur" in w for w in warnings)
    frame, warnings = estimate_frame(geom.points, geom.faces, geom.areas, FrameOptions(ct_bounds_ras=wide))
    assert frame.side == "left" and warnings == []
    narrow = np.array([[cx + 80 - 100, -300, -300], [cx + 80 + 100, 300, 300]])  # one hip: position says nothing
    _, warnings = estimate_frame(mirrored.points, mirrored.faces, mirrored.areas, FrameOptions(ct_bounds_ras=narrow))
    assert warnings == []


# ------------------------------------------------------------------------------------------------
# 2. zones follow the implant's own neck plane; version written to frame.json
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("side", "version"), [("left", 29.0), ("right", -10.0)])
def test_zone_borders_follow_an_anteverted_or_rotated_stem(side, version):
    """The phantom stem turned about its canal by ``version`` degrees (neck toward anterior when positive).

    Default (implant) reference: medial follows the turned neck, and every vertex keeps the zone it has on
    the unturned stem (the zones are the implant's, however it is turned). Patient reference: medial stays
    in the patient's medial-lateral plane, and the turn moves vertices across the sector borders.
    """
    phantom = FemurPhantom(PhantomSpec(voxel_mm=1.0, side=side))
    truth = phantom.true_frame()  # no version: its neck lies in the patient's medial-lateral plane
    stem = phantom.make_stem_surface()
    turn = _rotated_about_canal(phantom, version)
    g0 = surface_geometry(stem)
    geom = surface_geometry(transform_polydata(stem, turn))

    frame, warnings = estimate_frame(geom.points, geom.faces, geom.areas)
    assert warnings == []
    assert frame.side == side and frame.zone_reference == "implant"
    # The phantom's canal is tilted 4-6 degrees from the patient's axes: the version is read within 2.
    assert abs(frame.version_deg - version) < 2.0
    assert np.degrees(np.arccos(frame.medial @ (turn[:3, :3] @ truth.medial))) < 3.0
    unturned, _ = estimate_frame(g0.points, g0.faces, g0.areas)
    assert abs(unturned.version_deg) < 2.0
    zones = assign_zones(frame, geom.points)["gruen_zone"]
    zones0 = assign_zones(unturned, g0.points)["gruen_zone"]
    assert np.mean(zones == zones0) > 0.998
    # A medial strip of the calcar region, 25 degrees either side of the neck plane about the body's centre
    # line (3 mm lateral of the canal axis there): zone 7 however the stem is turned.
    local = g0.points @ phantom.ras_to_local[:3, :3].T + phantom.ras_to_local[:3, 3]
    az = np.degrees(np.arctan2(local[:, 1], local[:, 0] + 3.0))
    calcar = (np.abs(az) < 25) & (local[:, 2] < -5) & (local[:, 2] > -35)
    assert calcar.sum() > 30 and np.all(zones[calcar] == 7)

    patient, _ = estimate_frame(geom.points, geom.faces, geom.areas, FrameOptions(zone_reference="patient"))
    assert patient.zone_reference == "patient" and abs(patient.version_deg - version) < 2.0
    assert np.degrees(np.arccos(patient.medial @ truth.medial)) < 3.0
    zones_p = assign_zones(patient, geom.points)["gruen_zone"]
    assert np.mean(zones_p != zones0) > 0.05  # the turn carries vertices across the fixed borders
    # The calcar strip turned by 29 degrees toward anterior crosses the 45-degree border into zone 8.
    if version > 25:
        assert np.mean(zones_p[calcar & (az > 20)] == 8) > 0.9

    d = json.loads(json.dumps(frame.to_dict()))
    assert d["zone_reference"] == "implant" and abs(d["version_deg"] - version) < 2.0
    assert "anteversion" in d["version_convention"]


def test_zone_reference_option_reaches_the_parameters():
    args = build_parser().parse_args(["analyze", "--ct", "c.nrrd", "--model", "m.stl", "--out", "o",
                                      "--zone-reference", "patient"])
    assert parameters_from_args(args).zone_reference == "patient"
    args = build_parser().parse_args(["analyze", "--ct", "c.nrrd", "--model", "m.stl", "--out", "o"])
    assert parameters_from_args(args).zone_reference == "implant"
    with pytest.raises(InputError, match="zone reference"):
        AnalysisParameters(zone_reference="femur").validate()


# ------------------------------------------------------------------------------------------------
# 6. an axis given distal point first
# ------------------------------------------------------------------------------------------------
def test_reversed_axis_is_turned_round_with_a_warning(phantom, phantom_stem):
    truth = phantom.true_frame()
    geom = surface_geometry(phantom_stem)
    right_way = (tuple(truth.proximal_point), tuple(truth.tip))
    good, good_warnings = estimate_frame(geom.points, geom.faces, geom.areas, FrameOptions(axis_points=right_way))
    frame, warnings = estimate_frame(geom.points, geom.faces, geom.areas, FrameOptions(axis_points=right_way[::-1]))
    assert good_warnings == []
    assert any("runs from the tip to the neck" in w and "turned round" in w for w in warnings)
    np.testing.assert_allclose(frame.axis, truth.axis, atol=1e-9)
    np.testing.assert_allclose(frame.tip, good.tip, atol=1e-9)
    zones = assign_zones(frame, geom.points)["gruen_zone"]
    np.testing.assert_array_equal(zones, assign_zones(good, geom.points)["gruen_zone"])
    assert np.isin(zones, [4]).any() and np.isin(zones, [11]).any()


# ------------------------------------------------------------------------------------------------
# 8. --side that contradicts the neck
# ------------------------------------------------------------------------------------------------
def test_side_against_the_neck_records_what_was_used(phantom, phantom_stem):
    """The neck of a left stem points to the patient's right: ``--side right`` is overruled and said so,
    and the frame (what frame.json holds) is the left one the zones were computed with."""
    geom = surface_geometry(phantom_stem)
    frame, warnings = estimate_frame(geom.points, geom.faces, geom.areas, FrameOptions(side="right"))
    assert frame.side == "left" and frame.medial[0] > 0.99
    assert frame.to_dict()["side"] == "left"
    assert any("--side right disagrees" in w and "side left, as frame.json records" in w for w in warnings)
    # The calcar (zone 7) is under the neck: medial, just below the cut.
    local = geom.points @ phantom.ras_to_local[:3, :3].T + phantom.ras_to_local[:3, 3]
    az = np.degrees(np.arctan2(local[:, 1], local[:, 0] + 3.0))
    calcar = (np.abs(az) < 25) & (local[:, 2] < -5) & (local[:, 2] > -35)
    assert calcar.sum() > 30
    assert np.all(assign_zones(frame, geom.points)["gruen_zone"][calcar] == 7)

    truth = phantom.true_frame()
    opts = FrameOptions(side="right", **{"medial_point": tuple(truth.tip + 10 * truth.medial)})
    frame, warnings = estimate_frame(geom.points, geom.faces, geom.areas, opts)
    assert frame.side == "left"
    assert any("follows the medial point (side left, as frame.json records)" in w for w in warnings)


# ------------------------------------------------------------------------------------------------
# 10. a CAD stem lying along the patient's AP direction, every part given
# ------------------------------------------------------------------------------------------------
def _cad_stem_along_y():
    """The scanned stem placed as a left stem (tip inferior), and the same turned by 90 degrees about R
    so that it lies along +A (tip anterior), as a CAD file lying along Y is read."""
    surface, _ = read_model(shared_file("hip_implant_surface_scan.stl"))
    upright = transform_polydata(surface, scanned_stem_placement())
    turn = np.eye(4)
    turn[1:3, 1:3] = [[0.0, -1.0], [1.0, 0.0]]  # S -> -A... y' = -z, z' = y: inferior becomes anterior
    return upright, turn


def test_cad_stem_along_ap_with_medial_point_is_analysed(tmp_path):
    """The advice of the AP error works: with --axis, --medial-point and --resection-plane the stem lying
    along Y gets the zones of the same stem standing upright, vertex for vertex."""
    upright, turn = _cad_stem_along_y()
    lying = transform_polydata(upright, turn)
    g_up, g_lying = surface_geometry(upright), surface_geometry(lying)
    reference, _ = estimate_frame(g_up.points, g_up.faces, g_up.areas)
    fields = reference.parameter_fields()
    r, t = turn[:3, :3], turn[:3, 3]
    moved = {
        "axis": tuple(tuple(r @ np.asarray(p) + t) for p in fields["axis"]),
        "medial_point": tuple(r @ np.asarray(fields["medial_point"]) + t),
        "resection_point": tuple(r @ np.asarray(fields["resection_point"]) + t),
        "resection_normal": tuple(r @ np.asarray(fields["resection_normal"])),
    }
    assert abs(np.subtract(*moved["axis"]) @ [0, 1, 0]) > 0.99 * np.linalg.norm(np.subtract(*moved["axis"]))
    upright_frame, _ = estimate_frame(g_up.points, g_up.faces, g_up.areas, FrameOptions(
        axis_points=fields["axis"], medial_point=fields["medial_point"],
        resection_point=fields["resection_point"], resection_normal=fields["resection_normal"]))
    with pytest.raises(InputError, match="anterior-posterior direction.*--medial-point"):
        estimate_frame(g_lying.points, g_lying.faces, g_lying.areas)
    frame, warnings = estimate_frame(g_lying.points, g_lying.faces, g_lying.areas, FrameOptions(
        axis_points=moved["axis"], medial_point=moved["medial_point"],
        resection_point=moved["resection_point"], resection_normal=moved["resection_normal"]))
    assert warnings == [] and frame.side == "left"
    np.testing.assert_allclose(frame.anterior, r @ upright_frame.anterior, atol=1e-9)
    np.testing.assert_array_equal(assign_zones(frame, g_lying.points)["gruen_zone"],
                                  assign_zones(upright_frame, g_up.points)["gruen_zone"])

    # The same through the command line, with a CT around the lying stem.
    write_volume(_box_ct(g_lying.points.min(0), g_lying.points.max(0)), tmp_path / "ct.nrrd")
    write_polydata(lying, tmp_path / "stem.vtp", space="RAS")

    def text(p):
        return ",".join(f"{v:.6f}" for v in p)

    base = ["analyze", "--ct", str(tmp_path / "ct.nrrd"), "--model", str(tmp_path / "stem.vtp"),
            "--remesh", "none", "--no-pictures", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "auto")]) == 2
    assert main(base + ["--out", str(tmp_path / "given"),
                        f"--axis={text(moved['axis'][0])}:{text(moved['axis'][1])}",
                        f"--medial-point={text(moved['medial_point'])}",
                        f"--resection-plane={text(moved['resection_point'])}:{text(moved['resection_normal'])}"]) == 0
    written = json.loads((tmp_path / "given" / "frame.json").read_text())
    assert written["side"] == "left"
    np.testing.assert_allclose(written["anterior"], r @ upright_frame.anterior, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# 12, 19. frame files from another stem, or malformed
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def left_case(tmp_path_factory):
    """A left phantom written as CT + STL (2 mm voxels), and a right phantom's frame as an earlier run writes it."""
    d = tmp_path_factory.mktemp("left_case")
    paths = FemurPhantom(PhantomSpec(voxel_mm=2.0)).write(d)
    right = FemurPhantom(PhantomSpec(voxel_mm=2.0, side="right")).true_frame()
    (d / "right_frame.json").write_text(json.dumps(right.to_dict()))
    return paths, d / "right_frame.json"


def test_frame_of_a_right_stem_on_a_phantom_stem_names_the_frame_file(left_case, tmp_path, capsys):
    """Before: every vertex in zones 4-7 (the axis 160 mm away, all on its medial side) or 'check
    --resection-plane', an option not given. Now: the frame file is named, with the distance."""
    paths, right_frame = left_case
    code = main(["analyze", "--ct", str(paths["ct"]), "--model", str(paths["model"]), "--out", str(tmp_path / "r"),
                 "--remesh", "none", "--no-pictures", "--quiet", "--frame", str(right_frame)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "the frame file right_frame.json (--frame)" in err[0] and "--resection-plane" not in err[0]
    distance = float(err[0].split("more than ")[1].split(" mm")[0])
    assert 130 < distance < 190  # the two femurs' canals are 160 mm apart
    assert not (tmp_path / "r").exists()


def test_right_medial_point_on_a_left_stem_is_warned(phantom, phantom_stem):
    """A medial direction taken from the other side's frame, about the right axis: warned with the angle."""
    truth = phantom.true_frame()
    geom = surface_geometry(phantom_stem)
    opts = FrameOptions(axis_points=(tuple(truth.proximal_point), tuple(truth.tip)),
                        medial_point=tuple(truth.tip - 10 * truth.medial))
    frame, warnings = estimate_frame(geom.points, geom.faces, geom.areas, opts)
    assert any("away from the neck" in w and "calcar" in w for w in warnings)
    angle = float(next(w for w in warnings if "away from the neck" in w).split("(")[2].split(" degrees")[0])
    assert angle > 170


@pytest.mark.parametrize("key", ["axis", "medial", "resection_point"])
def test_frame_file_with_two_element_vectors_is_an_input_error(left_case, tmp_path, capsys, key):
    paths, right_frame = left_case
    d = json.loads(right_frame.read_text())
    d[key] = d[key][:2]
    bad = tmp_path / "frame.json"
    bad.write_text(json.dumps(d))
    with pytest.raises(InputError, match=f"'{key}' must be three"):
        StemFrame.from_dict(d)
    code = main(["analyze", "--ct", str(paths["ct"]), "--model", str(paths["model"]), "--out", str(tmp_path / "r"),
                 "--no-pictures", "--quiet", "--frame", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "frame.json" in err[0] and f"'{key}' must be three" in err[0]


def test_given_axis_with_two_numbers_is_an_input_error(phantom_stem):
    geom = surface_geometry(phantom_stem)
    with pytest.raises(InputError, match="three"):
        estimate_frame(geom.points, geom.faces, geom.areas, FrameOptions(axis_points=((0, 0), (0, 0, -100))))


def _rod_with_small_bump(bump_radius_mm: float = 8.0):
    """A rod (radius 10 mm, 150 mm long, along -S) with a ball of ``bump_radius_mm`` stuck on its
    upper end toward +R: a 'neck' that sticks out only a little."""
    rod = vtk.vtkCylinderSource()
    rod.SetRadius(10.0)
    rod.SetHeight(150.0)
    rod.SetResolution(60)
    turn = vtk.vtkTransform()
    turn.Translate(0, 0, -75)
    turn.RotateX(90)
    placed = vtk.vtkTransformPolyDataFilter()
    placed.SetTransform(turn)
    placed.SetInputConnection(rod.GetOutputPort())
    ball = vtk.vtkSphereSource()
    ball.SetRadius(bump_radius_mm)
    ball.SetCenter(10.0, 0.0, -10.0)
    ball.SetThetaResolution(30)
    ball.SetPhiResolution(30)
    both = vtk.vtkAppendPolyData()
    both.AddInputConnection(placed.GetOutputPort())
    both.AddInputConnection(ball.GetOutputPort())
    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputConnection(both.GetOutputPort())
    finer = vtk.vtkLinearSubdivisionFilter()
    finer.SetInputConnection(triangles.GetOutputPort())
    finer.SetNumberOfSubdivisions(2)
    finer.Update()
    # Cleaned as every input is (the cylinder's caps have their own copies of the rim points).
    return prepare_surface(finer.GetOutput())


def test_faint_neck_orients_the_zones_only_with_a_warning():
    """A bump 8 mm across on a 10 mm rod: its direction (+R) is used, and said to be uncertain; against
    --side the faint bump does not win: the side given is used, and that is said too."""
    geom = surface_geometry(_rod_with_small_bump())
    frame, warnings = estimate_frame(geom.points, geom.faces, geom.areas)
    assert frame.medial[0] > 0.99 and frame.side == "left"
    assert any("sticks out only a little" in w and "--zone-reference patient" in w for w in warnings)
    frame, warnings = estimate_frame(geom.points, geom.faces, geom.areas, FrameOptions(side="right"))
    assert frame.side == "right" and frame.medial[0] < -0.99 and frame.zone_reference == "patient"
    assert any("sticks out only a little" in w and "follows --side" in w for w in warnings)
