"""The MRML adapter on Slicer's own MRML classes (PyPI ``slicer-core``), not on stand-ins.

Every comparison is with an independent reading: files read by Slicer's storage
nodes (``vtkMRMLModelStorageNode``, ``vtkMRMLVolumeArchetypeStorageNode``,
``vtkMRMLTransformStorageNode``) against the library's readers, transforms
applied by MRML against matrices written here, and the phantom's tissue truth.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML classes) is not installed")
if not hasattr(slicer, "vtkMRMLScene"):
    pytest.skip("the installed 'slicer' package has no MRML classes (slicer-core)", allow_module_level=True)

import vtk  # noqa: E402
from ibc_helpers import probe_in_ijk  # noqa: E402
from ImplantBoneContactLib import (  # noqa: E402
    AnalysisParameters,
    FemurPhantom,
    InputError,
    PhantomSpec,
    analyze,
    mrml,
    read_model,
    read_transform,
    read_volume,
    sample,
    write_volume,
)
from ImplantBoneContactLib.classes import PRESETS  # noqa: E402
from ImplantBoneContactLib.mesh import points as mesh_points  # noqa: E402
from ImplantBoneContactLib.mesh import prepare_surface, transform_polydata, write_polydata  # noqa: E402
from ImplantBoneContactLib.phantom import CANCELLOUS, CORTICAL  # noqa: E402
from ImplantBoneContactLib.volume import Volume  # noqa: E402
from vtk.util import numpy_support as ns  # noqa: E402

pytestmark = pytest.mark.mrml


def _shared(name: str) -> Path:
    root = Path(os.environ.get("IBC_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"))
    p = root / name
    if not p.exists():
        pytest.skip(f"real test file {p} not found (set IBC_SHARED_DATA)")
    return p


def _rigid(rx: float, rz: float, t) -> np.ndarray:
    """4x4 rotation about x then z (degrees) and translation (mm)."""
    cx, sx = math.cos(math.radians(rx)), math.sin(math.radians(rx))
    cz, sz = math.cos(math.radians(rz)), math.sin(math.radians(rz))
    m = np.eye(4)
    m[:3, :3] = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    m[:3, 3] = t
    return m


@pytest.fixture(scope="module")
def femur(phantom, phantom_ct, phantom_stem):
    """Left femur phantom at 1 mm (truth, CT, stem surface)."""
    return phantom, phantom_ct, phantom_stem


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def _read_node(scene, path, node_class: str, storage_class: str):
    node = scene.AddNewNodeByClass(node_class)
    storage = scene.AddNewNodeByClass(storage_class)
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"{storage_class} could not read {path}"
    return node


def _read_model_node(scene, path):
    return _read_node(scene, path, "vtkMRMLModelNode", "vtkMRMLModelStorageNode")


def _read_volume_node(scene, path):
    return _read_node(scene, path, "vtkMRMLScalarVolumeNode", "vtkMRMLVolumeArchetypeStorageNode")


# ------------------------------------------------------------------------------------------------
# files read by Slicer's storage nodes vs the library's readers
# ------------------------------------------------------------------------------------------------
def test_real_stl_read_by_model_storage_node_matches_read_model(scene):
    """The scanned stem (no SPACE header): Slicer reads it as LPS, so does the library."""
    path = _shared("hip_implant_surface_scan.stl")
    node = _read_model_node(scene, path)
    ours, info = read_model(path)
    assert info.space_in_file is None and info.space_used == "LPS"
    slicer_pts = mesh_points(node.GetPolyData())
    world = mrml.polydata_from_model_node(node)
    assert world.GetNumberOfPoints() == ours.GetNumberOfPoints() == 1010
    # Same points in the same order: Slicer's LPS->RAS flip equals ours, up to float32 storage.
    np.testing.assert_allclose(mesh_points(world), mesh_points(ours), atol=1e-4)
    assert np.abs(slicer_pts).max() > 50  # a real, unscaled mesh
    # Slicer's own flip: RAS x and y are minus the file's values (the ASCII STL holds LPS).
    reader = vtk.vtkSTLReader()
    reader.SetFileName(str(path))
    reader.Update()
    raw = mesh_points(reader.GetOutput())
    np.testing.assert_allclose(slicer_pts[:, :2], -raw[:, :2], atol=1e-4)
    np.testing.assert_allclose(slicer_pts[:, 2], raw[:, 2], atol=1e-4)


@pytest.mark.parametrize("space", ["LPS", "RAS"])
def test_stl_with_space_header_read_by_model_storage_node(scene, femur, tmp_path, space):
    """A SPACE= header written by the library is honoured by Slicer's reader and by ours alike."""
    _, _, stem = femur
    path = tmp_path / f"stem_{space}.stl"
    write_polydata(stem, path, space=space)
    node = _read_model_node(scene, path)
    ours, info = read_model(path)
    assert info.space_in_file == space
    np.testing.assert_allclose(mesh_points(node.GetPolyData()), mesh_points(ours), atol=1e-4)
    # Both give back the surface we wrote (RAS), whatever space the file used.
    np.testing.assert_allclose(np.sort(mesh_points(ours), axis=0), np.sort(mesh_points(stem), axis=0), atol=1e-4)


def test_flipped_nifti_read_by_archetype_storage_node_matches_read_volume(scene):
    """The real pelvis CT (NIfTI with a flipped direction matrix): same voxels, same IJK-to-RAS."""
    path = _shared("pelvis_ct_with_femoral_implant.nii.gz")
    node = _read_volume_node(scene, path)
    from_node = mrml.volume_from_node(node)
    ours = read_volume(path)
    assert from_node.array.shape == ours.array.shape == (112, 101, 122)
    assert np.array_equal(from_node.array, ours.array)
    np.testing.assert_allclose(from_node.ijk_to_ras, ours.ijk_to_ras, atol=1e-4)
    assert int(from_node.array.max()) > 3000  # the metal implant is there
    # The view shares the node's memory: no copy of a large CT.
    assert np.shares_memory(from_node.array, ns.vtk_to_numpy(node.GetImageData().GetPointData().GetScalars()))


def test_oblique_nrrd_read_by_archetype_storage_node_matches_read_volume(scene, tmp_path):
    """An NRRD with rotated axes written by the library: Slicer reads the same geometry."""
    phantom = FemurPhantom(PhantomSpec(voxel_mm=2.0, oblique_ct=25.0, side="right"))
    ct = phantom.make_ct()
    path = tmp_path / "oblique.nrrd"
    write_volume(ct, path)
    node = _read_volume_node(scene, path)
    from_node = mrml.volume_from_node(node)
    assert np.array_equal(from_node.array, ct.array)
    np.testing.assert_allclose(from_node.ijk_to_ras, ct.ijk_to_ras, atol=1e-6)
    assert not np.allclose(ct.ijk_to_ras[:3, :3], np.diag(np.diag(ct.ijk_to_ras[:3, :3])))  # really oblique


def test_itk_transform_read_by_transform_storage_node_matches_read_transform(scene, tmp_path):
    """An ITK rigid transform with a centre: Slicer's reading (to parent, RAS) equals ours."""
    import SimpleITK as sitk

    tx = sitk.Euler3DTransform((10.0, -20.0, 5.0), 0.1, -0.2, 0.3, (3.0, 4.0, -5.0))
    affine = sitk.AffineTransform(3)
    affine.SetMatrix(tx.GetMatrix())
    affine.SetTranslation(tx.GetTranslation())
    affine.SetCenter(tx.GetCenter())
    for name, transform in (("rigid.tfm", tx), ("affine.h5", affine)):
        path = tmp_path / name
        sitk.WriteTransform(transform, str(path))
        node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
        storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
        storage.SetFileName(str(path))
        assert storage.ReadData(node), name
        m = vtk.vtkMatrix4x4()
        node.GetMatrixTransformToParent(m)
        np.testing.assert_allclose(mrml.array_from_vtk_matrix(m), read_transform(path), atol=1e-9, err_msg=name)


# ------------------------------------------------------------------------------------------------
# transforms: the model and the CT where the user sees them
# ------------------------------------------------------------------------------------------------
def test_model_under_nested_linear_transforms_is_in_world(scene, femur):
    _, _, stem = femur
    inner = _rigid(20.0, -35.0, (4.0, -9.0, 30.0))
    outer = _rigid(-10.0, 50.0, (-60.0, 12.0, 3.0))
    node = mrml.model_node_from_polydata(scene, stem, "stem")
    t_inner = mrml.linear_transform_node(scene, inner, "inner")
    t_outer = mrml.linear_transform_node(scene, outer, "outer")
    t_inner.SetAndObserveTransformNodeID(t_outer.GetID())
    node.SetAndObserveTransformNodeID(t_inner.GetID())
    world = mrml.polydata_from_model_node(node)
    expected = mesh_points(prepare_surface(transform_polydata(stem, outer @ inner)))
    np.testing.assert_allclose(mesh_points(world), expected, atol=1e-9)
    np.testing.assert_allclose(mrml.matrix_to_world(node), outer @ inner, atol=1e-12)
    # The user's node is not changed.
    np.testing.assert_array_equal(mesh_points(node.GetPolyData()), mesh_points(stem))


def test_model_under_nonlinear_transform_is_warped_like_slicer(scene, femur):
    """A thin-plate-spline warp: the copy is warped exactly as the transform maps single points."""
    _, _, stem = femur
    src, dst = vtk.vtkPoints(), vtk.vtkPoints()
    for p, q in (((-100, 0, -150), (-100, 0, -150)), ((-60, 40, -150), (-58, 41, -149)), ((-100, 40, 0), (-102, 43, 2)),
                 ((-60, 0, 0), (-59, -1, 1)), ((-80, 20, -60), (-77, 20, -60))):
        src.InsertNextPoint(*p)
        dst.InsertNextPoint(*q)
    tps = vtk.vtkThinPlateSplineTransform()
    tps.SetSourceLandmarks(src)
    tps.SetTargetLandmarks(dst)
    tps.SetBasisToR()
    warp = scene.AddNewNodeByClass("vtkMRMLTransformNode", "warp")
    warp.SetAndObserveTransformToParent(tps)
    stem = prepare_surface(stem)  # in the adapter's point order (cleaning renumbers points)
    node = mrml.model_node_from_polydata(scene, stem, "stem")
    node.SetAndObserveTransformNodeID(warp.GetID())
    assert mrml.matrix_to_world(node) is None
    world = mesh_points(mrml.polydata_from_model_node(node))
    local = mesh_points(stem)
    idx = np.linspace(0, local.shape[0] - 1, 50).astype(int)
    for i in idx:
        p = [0.0, 0.0, 0.0]
        node.TransformPointToWorld(local[i], p)
        np.testing.assert_allclose(world[i], p, atol=1e-6)
    assert np.abs(world - local).max() > 1.0  # it did move


def test_ct_under_linear_transform_samples_world_points(scene, femur):
    """A CT moved by a transform: HU at world points equal the unmoved CT's HU at the moved-back points."""
    _, ct, stem = femur
    moved = _rigid(15.0, -25.0, (30.0, -12.0, 8.0))
    node = mrml.volume_node_from_volume(scene, ct, "CT")
    node.SetAndObserveTransformNodeID(mrml.linear_transform_node(scene, moved).GetID())
    world_ct = mrml.volume_from_node(node)
    np.testing.assert_allclose(world_ct.ijk_to_ras, moved @ ct.ijk_to_ras, atol=1e-9)
    pts_local = mesh_points(stem)
    pts_world = pts_local @ moved[:3, :3].T + moved[:3, 3]
    hu_world, inside_world = sample(world_ct, pts_world)
    hu_local, inside_local = sample(ct, pts_local)
    assert inside_world.all() and inside_local.all()
    np.testing.assert_allclose(hu_world, hu_local, atol=1e-6)
    # ...and the probe helper moves world points back into the CT's own frame for the CLI.
    np.testing.assert_allclose(mrml.points_world_to_node(pts_world, node), pts_local, atol=1e-9)


def test_ct_under_nonlinear_transform_is_refused(scene, femur):
    _, ct, _ = femur
    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    node = mrml.volume_node_from_volume(scene, ct, "CT")
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(InputError, match="non-linear transform: harden it"):
        mrml.volume_from_node(node)


def test_vector_volume_is_refused(scene):
    node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "RGB")
    image = vtk.vtkImageData()
    image.SetDimensions(4, 4, 4)
    image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 3)
    node.SetAndObserveImageData(image)
    with pytest.raises(InputError, match="3 components per voxel"):
        mrml.volume_from_node(node)


# ------------------------------------------------------------------------------------------------
# markups and the panel's values
# ------------------------------------------------------------------------------------------------
def test_markups_under_transform_become_world_frame_inputs(scene):
    t = _rigid(0.0, 90.0, (10.0, 0.0, 0.0))  # x -> y, then +10 in x
    tnode = mrml.linear_transform_node(scene, t)
    line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "axis")
    line.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, 3.0))
    line.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, -97.0))
    line.SetAndObserveTransformNodeID(tnode.GetID())
    plane = scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "cut")
    plane.SetOriginWorld(5.0, 6.0, 7.0)
    plane.SetNormalWorld(0.0, 0.6, 0.8)
    point = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "medial")
    point.AddControlPoint(vtk.vtkVector3d(20.0, 0.0, -50.0))
    out = mrml.frame_inputs_from_markups(line, plane, point)
    np.testing.assert_allclose(out["axis"][0], (10.0 - 2.0, 1.0, 3.0), atol=1e-9)
    np.testing.assert_allclose(out["axis"][1], (10.0 - 2.0, 1.0, -97.0), atol=1e-9)
    np.testing.assert_allclose(out["resection_point"], (5.0, 6.0, 7.0), atol=1e-9)
    np.testing.assert_allclose(out["resection_normal"], (0.0, 0.6, 0.8), atol=1e-9)
    np.testing.assert_allclose(out["medial_point"], (20.0, 0.0, -50.0), atol=1e-9)
    params = mrml.parameters_from_panel({"axisLine": line, "resectionPlane": plane, "medialPoint": point, "side": "left"})
    assert params.axis == out["axis"] and params.medial_point == out["medial_point"] and params.side == "left"


def test_unplaced_markups_are_refused(scene):
    line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "axis")
    line.AddControlPoint(vtk.vtkVector3d(1.0, 2.0, 3.0))
    with pytest.raises(InputError, match="needs two placed points"):
        mrml.frame_inputs_from_markups(axis_line=line)
    plane = scene.AddNewNodeByClass("vtkMRMLMarkupsPlaneNode", "cut")
    with pytest.raises(InputError, match="not fully placed"):
        mrml.frame_inputs_from_markups(resection_plane=plane)
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "medial")
    with pytest.raises(InputError, match="no placed point"):
        mrml.frame_inputs_from_markups(medial_point=points)


def test_panel_defaults_are_the_command_line_defaults():
    """An untouched panel runs the same analysis as ``implant-bone-contact analyze`` without options, but for the remesh.

    The panel remeshes as Surface Toolbox does (``acvd``); the library and the command line default to ``fast``.
    """
    from ImplantBoneContactLib.cli import build_parser, parameters_from_args

    args = build_parser().parse_args(["analyze", "--ct", "ct.nrrd", "--model", "m.stl", "--out", "o"])
    panel = mrml.parameters_from_panel({})
    assert panel.remesh == "acvd" and parameters_from_args(args).remesh == "fast"
    panel.remesh = "fast"
    assert panel == parameters_from_args(args) == AnalysisParameters()
    assert mrml.to_analysis_parameters(None) == AnalysisParameters()


def test_panel_values_to_library_parameters():
    values = {
        "remesh": False, "remeshPoints": 5000, "remeshSubdivide": 2, "sampling": "nearest", "offsetMm": 1.25,
        "useProfile": True, "profileStartMm": 0.3, "profileStopMm": 2.1, "profileStepMm": 0.6,
        "profileAggregate": "median", "classesPreset": "custom", "customClasses": "soft:-inf:200,bone:200:inf",
        "metalClass": False, "metalHu": 3000.0, "zoneScheme": "projection", "tipLengthMm": 12.0, "side": "right",
    }
    p = mrml.parameters_from_panel(values)
    assert (p.remesh, p.points, p.subdivide, p.sampling, p.offset_mm) == ("none", 5000, 2, "nearest", 1.25)
    np.testing.assert_allclose(p.offsets(), [0.3, 0.9, 1.5, 2.1])
    assert (p.profile_aggregate, p.classes, p.metal_hu, p.zone_scheme, p.tip_length_mm, p.side) == (
        "median", "soft:-inf:200,bone:200:inf", None, "projection", 12.0, "right")
    # An object with attributes (the parameter node wrapper) works the same as a mapping.
    from types import SimpleNamespace

    assert mrml.parameters_from_panel(SimpleNamespace(**values)) == p
    assert mrml.to_analysis_parameters(values) == p
    assert mrml.to_analysis_parameters(p.to_dict()) == p
    assert mrml.parameters_from_panel({"classesPreset": "fixation", "customClasses": "x:0:1"}).classes == "fixation"


@pytest.mark.parametrize(
    "values, message",
    [
        ({"sampling": "cubic"}, "sampling must be one of"),
        ({"classesPreset": "custom", "customClasses": ""}, "class table is empty"),
        ({"classesPreset": "custom", "customClasses": "a:0:100,b:50:200"}, "overlap"),
        ({"useProfile": True, "profileStartMm": 3.0, "profileStopMm": 1.0}, "below START"),
        ({"remeshSubdivide": 9}, "subdivide must be between 0 and 6"),
        ({"tipLengthMm": -1.0}, "tip length"),
    ],
)
def test_bad_panel_values_are_refused(values, message):
    with pytest.raises(InputError, match=message):
        mrml.parameters_from_panel(values)


def test_mixed_parameter_dict_is_refused():
    with pytest.raises(InputError, match="not a mix"):
        mrml.to_analysis_parameters({"points": 100, "remeshPoints": 100})
    with pytest.raises(InputError, match=r"not a mix \(unknown: pointz\)"):
        mrml.to_analysis_parameters({"pointz": 100})


def test_keys_shared_by_panel_and_library_are_read_by_their_values():
    assert mrml.to_analysis_parameters({"remesh": False}).remesh == "none"
    assert mrml.to_analysis_parameters({"remesh": "none"}).remesh == "none"
    assert mrml.to_analysis_parameters({"side": "auto"}).side is None
    assert mrml.to_analysis_parameters({"side": "left", "sampling": "nearest"}) == AnalysisParameters(side="left", sampling="nearest")


@pytest.mark.parametrize("preset", list(PRESETS))
def test_class_table_rows_round_trip(preset):
    rows = mrml.class_rows(preset)
    assert [r[0] for r in rows] == [b.name for b in PRESETS[preset]]
    assert rows[0][1] == "-inf" and rows[-1][2] == "inf"
    spec = mrml.classes_from_rows(rows + [("", "", "")])  # a blank row is ignored
    from ImplantBoneContactLib.classes import parse_classes

    assert parse_classes(spec) == PRESETS[preset]


def test_class_table_with_a_missing_cell_is_refused():
    with pytest.raises(InputError, match="needs a name, a low and a high"):
        mrml.classes_from_rows([("bone", "100", "")])


# ------------------------------------------------------------------------------------------------
# the whole analysis on nodes, results written back
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def node_run(femur):
    """CT and model under two different transforms; their world geometry is the phantom's."""
    phantom, ct, stem = femur
    scene = slicer.vtkMRMLScene()
    t_ct = _rigid(0.0, 23.0, (12.0, -7.0, 30.0))
    t_model = _rigid(-30.0, 0.0, (-40.0, 5.0, 9.0))
    ct_node = mrml.volume_node_from_volume(scene, Volume(ct.array, np.linalg.inv(t_ct) @ ct.ijk_to_ras), "CT")
    ct_node.SetAndObserveTransformNodeID(mrml.linear_transform_node(scene, t_ct, "CT placement").GetID())
    model_local = transform_polydata(stem, np.linalg.inv(t_model))
    model = mrml.model_node_from_polydata(scene, model_local, "Stem")
    model.SetAndObserveTransformNodeID(mrml.linear_transform_node(scene, t_model, "Registration").GetID())
    out_model = scene.AddNewNodeByClass("vtkMRMLModelNode", "Stem contact")
    out_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "Stem zones")
    params = AnalysisParameters(remesh="none", **phantom.true_frame().parameter_fields())
    result = mrml.analyze_nodes(ct_node, model, params, out_model, out_table)
    model.model_local_points = mesh_points(model_local)
    return phantom, ct, stem, scene, model, out_model, out_table, params, result


def test_nodes_under_transforms_give_the_result_of_the_world_inputs(node_run):
    _, ct, stem, _, model, _, _, params, result = node_run
    direct = analyze(ct, prepare_surface(stem), params)
    v1, v0 = result.vertices, direct.vertices
    np.testing.assert_allclose(v1[["x_mm", "y_mm", "z_mm"]].to_numpy(), v0[["x_mm", "y_mm", "z_mm"]].to_numpy(), atol=1e-9)
    np.testing.assert_allclose(v1["hu"].to_numpy(), v0["hu"].to_numpy(), atol=1e-6)
    # Vertices of the marching-cubes phantom lie exactly on sector boundaries; 1e-14 mm
    # of transform round-off may tip a handful of them into the neighbouring zone.
    assert np.mean(v1["gruen_zone"].to_numpy() == v0["gruen_zone"].to_numpy()) > 0.995
    # Zone areas: the inputs agree to round-off, so a zone's area changes only by the surface samples that
    # tip across a border with their vertices (triangles lying in a border plane). Bound: the area of the
    # vertices that changed zone (measured: 4.0 mm2 of vertices, 0.20 mm2 moved between zones 4 and 11);
    # zones no tipped vertex enters or leaves, and the whole stem, agree to round-off.
    tipped = v1["gruen_zone"].to_numpy() != v0["gruen_zone"].to_numpy()
    moved = set(v0["gruen_zone"][tipped].astype(str)) | set(v1["gruen_zone"][tipped].astype(str))
    a1 = result.zones.set_index("zone")["area_mm2"]
    a0 = direct.zones.set_index("zone")["area_mm2"]
    assert (np.abs(a1 - a0) <= v0["area_mm2"][tipped].sum() + 1e-9 * a0).all()
    steady = [z for z in a0.index if z not in moved]
    np.testing.assert_allclose(a1[steady], a0[steady], rtol=1e-9)
    assert "all" in steady and len(steady) >= 9
    assert result.inputs["model"]["parent_transform"] == "Registration"
    # The user's model node still holds its own (untransformed) surface.
    np.testing.assert_array_equal(mesh_points(model.GetPolyData()), model.model_local_points)


def test_contact_classes_match_phantom_tissue(node_run):
    phantom, *_, result = node_run
    v = result.vertices
    pts = v[["x_mm", "y_mm", "z_mm"]].to_numpy()
    truth = phantom.tissue_at(pts)
    expected = np.where(truth == CORTICAL, "cortical", np.where(truth == CANCELLOUS, "cancellous", "no_bone"))
    # Beyond 2.5 blur sigmas plus half a voxel diagonal from a tissue boundary the CT holds the tissue's HU
    # within 15 HU (test_sampling), far from every class border: every vertex there has its true class.
    radius = 2.5 * phantom.spec.blur_sigma_mm + 0.5 * np.sqrt(3) * phantom.spec.voxel_mm
    sel = (v["gruen_zone"].to_numpy() > 0) & phantom.distance_to_tissue_boundary(pts, radius)
    assert sel.sum() > 3000
    assert set(expected[sel]) == {"cortical", "cancellous", "no_bone"}
    np.testing.assert_array_equal(v["contact_class"].to_numpy()[sel], expected[sel])


def test_output_model_holds_the_per_vertex_table(node_run):
    *_, out_model, _, _, result = node_run
    v = result.vertices
    poly = out_model.GetPolyData()
    assert out_model.GetParentTransformNode() is None
    np.testing.assert_allclose(mesh_points(poly), v[["x_mm", "y_mm", "z_mm"]].to_numpy(), atol=1e-9)
    for column in ("hu", "area_mm2", "height_mm", "azimuth_deg", "gruen_zone", "vertex_id"):
        arr = ns.vtk_to_numpy(poly.GetPointData().GetArray(column))
        np.testing.assert_array_equal(arr, v[column].to_numpy(), err_msg=column)
    inside = ns.vtk_to_numpy(poly.GetPointData().GetArray("inside_ct"))
    np.testing.assert_array_equal(inside.astype(bool), v["inside_ct"].to_numpy())
    ids = ns.vtk_to_numpy(poly.GetPointData().GetArray("contact_class_id"))
    names = mrml.class_names_of_surface(poly)
    assert names == result.class_names
    decoded = np.array([names[i] if i >= 0 else ("not_sampled" if i == -1 else "unclassified") for i in ids])
    # Above the cut the table says above_resection; the surface keeps the class of the HU there (shown grey anyway).
    analysed = v["gruen_zone"].to_numpy() > 0
    np.testing.assert_array_equal(decoded[analysed], v["contact_class"].to_numpy()[analysed])
    assert (v["contact_class"].to_numpy()[~analysed] == "above_resection").all()


def test_table_node_holds_the_zone_table(node_run):
    *_, out_table, _, result = node_run
    z = result.zones
    assert out_table.GetNumberOfRows() == len(z) == 15
    assert out_table.GetNumberOfColumns() == len(z.columns)
    back = slicer.util.dataframeFromTable(out_table)
    assert list(back.columns) == list(z.columns)
    assert list(back["zone"]) == list(z["zone"]) and list(back["region"]) == list(z["region"])
    for name in z.columns:
        if name in ("zone", "region"):
            assert out_table.GetColumnType(name) == vtk.VTK_STRING
            continue
        np.testing.assert_allclose(back[name].to_numpy(dtype=float), z[name].to_numpy(dtype=float), equal_nan=True, err_msg=name)
    assert out_table.GetColumnType("n_vertices") == vtk.VTK_LONG_LONG
    assert out_table.GetColumnType("hu_mean") == vtk.VTK_DOUBLE
    assert out_table.GetColumnUnitLabel("area_mm2") == "mm2"
    assert out_table.GetColumnUnitLabel("hu_p95") == "HU"
    assert out_table.GetColumnUnitLabel("frac_cortical") == "fraction"
    assert "95th percentile" in out_table.GetColumnDescription("hu_p95")
    assert out_table.GetLocked()


def test_colorings_map_every_id_to_its_own_table_entry(node_run):
    """Slicer's lookup of the display range picks the intended colour for every zone and class id."""
    *_, out_model, _, _, result = node_run
    display = out_model.GetDisplayNode()
    scene = out_model.GetScene()
    mrml.set_coloring(out_model, "hu")
    assert display.GetActiveScalarName() == "hu"
    assert tuple(display.GetScalarRange()) == mrml.HU_DISPLAY_RANGE
    assert display.GetScalarRangeFlag() == slicer.vtkMRMLDisplayNode.UseManualScalarRange
    for coloring, ids, offset in (("zone", range(0, 15), 0), ("class", range(-2, len(result.class_names)), 2)):
        mrml.set_coloring(out_model, coloring)
        color_node = display.GetColorNode()
        lut = vtk.vtkLookupTable()
        lut.DeepCopy(color_node.GetLookupTable())
        lut.SetRange(display.GetScalarRange())
        for i in ids:
            assert lut.GetIndex(float(i)) == i + offset, (coloring, i)
        if coloring == "class":
            assert [color_node.GetColorName(i + 2) for i in range(len(result.class_names))] == result.class_names
            assert color_node.GetColorName(1) == "not_sampled"
        legend = slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(out_model)
        assert legend is not None and legend.GetUseColorNamesForLabels()
        assert legend.GetMaxNumberOfColors() == color_node.GetNumberOfColors()
    mrml.set_coloring(out_model, "hu")
    assert slicer.vtkSlicerColorLogic.GetColorLegendDisplayNode(out_model).GetTitleText() == "HU"
    # One legend and one colour table per kind, however often the colouring is switched.
    assert scene.GetNumberOfNodesByClass("vtkMRMLColorLegendDisplayNode") == 1
    kinds = [scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode").GetAttribute("ImplantBoneContact.ColorTable")
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode"))]
    assert sorted(k for k in kinds if k) == ["class", "hu", "zone"]


def test_coloring_a_model_without_results_is_refused(scene, femur):
    node = mrml.model_node_from_polydata(scene, femur[2], "plain")
    with pytest.raises(InputError, match="run the analysis first"):
        mrml.set_coloring(node, "zone")


def test_probe_helpers_turn_invalid_points_into_nan(femur):
    """vtkProbeFilter writes 0 outside the image; the adapter reads its mask and gives NaN."""
    _, ct, stem = femur
    inside_pts = mesh_points(stem)[:200]
    outside_pts = inside_pts + np.array([0.0, 0.0, 1000.0])
    pts = np.vstack([inside_pts, outside_pts])
    raw, _, probed = probe_in_ijk(ct, pts, array_name=mrml.PROBE_ARRAY_NAME)
    assert np.all(raw[200:] == 0)  # what the CLI would report as 0 HU
    hu, inside = mrml.samples_from_probe_output(probed, len(pts))
    assert inside[:200].all() and not inside[200:].any()
    assert np.isnan(hu[200:]).all()
    ref, _ = sample(ct, inside_pts)
    assert np.abs(hu[:200] - ref).max() <= 0.5 + 1e-9
    with pytest.raises(RuntimeError, match="returned 400 points for 401"):
        mrml.samples_from_probe_output(probed, 401)
