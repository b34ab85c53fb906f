"""Model reading (LPS/RAS as Slicer), formats, outward normals, vertex areas, registration transforms."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from ibc_helpers import frame_parameters, rotation, shared_file
from ImplantBoneContactLib import AnalysisParameters, analyze, analyze_files, read_model, read_transform, write_volume
from ImplantBoneContactLib.mesh import (
    _edge_counts,
    _repeated_rows,
    points,
    polydata_from_arrays,
    prepare_surface,
    surface_geometry,
    transform_polydata,
    triangles,
    vertex_areas,
    write_polydata,
)
from vtk.util import numpy_support as ns


def _raw_stl_points(path) -> np.ndarray:
    r = vtk.vtkSTLReader()
    r.SetFileName(str(path))
    r.Update()
    return ns.vtk_to_numpy(r.GetOutput().GetPoints().GetData()).astype(float)


def test_stl_without_header_is_lps():
    path = shared_file("hip_implant_surface_scan.stl")
    poly, info = read_model(path)
    assert info.space_in_file is None and info.space_used == "LPS"
    raw = _raw_stl_points(path)
    got = points(poly)
    # Same point set with x and y negated (order may change after cleaning).
    np.testing.assert_allclose(np.sort(got[:, 0]), np.sort(-raw[:, 0]), atol=1e-4)
    np.testing.assert_allclose(np.sort(got[:, 1]), np.sort(-raw[:, 1]), atol=1e-4)
    np.testing.assert_allclose(np.sort(got[:, 2]), np.sort(raw[:, 2]), atol=1e-4)


@pytest.mark.parametrize("suffix", [".stl", ".vtk", ".vtp"])
@pytest.mark.parametrize("space", ["RAS", "LPS"])
def test_space_header_round_trip(tmp_path, phantom_stem, suffix, space):
    path = tmp_path / f"stem{suffix}"
    write_polydata(phantom_stem, path, space=space)
    poly, info = read_model(path)
    assert info.space_in_file == space
    a = points(phantom_stem)
    b = points(poly)
    assert len(a) == len(b)
    np.testing.assert_allclose(np.sort(b, axis=0), np.sort(a, axis=0), atol=1e-3)


def test_model_space_override(tmp_path, phantom_stem):
    path = tmp_path / "stem.stl"
    write_polydata(phantom_stem, path, space="RAS")
    poly, info = read_model(path, space="LPS")
    assert info.space_used == "LPS"
    np.testing.assert_allclose(np.sort(points(poly)[:, 0]), np.sort(-points(phantom_stem)[:, 0]), atol=1e-3)


@pytest.mark.parametrize("writer_cls, suffix", [(vtk.vtkOBJWriter, ".obj"), (vtk.vtkPLYWriter, ".ply")])
def test_obj_and_ply(tmp_path, phantom_stem, writer_cls, suffix):
    path = tmp_path / f"stem{suffix}"
    w = writer_cls()
    w.SetInputData(phantom_stem)
    w.SetFileName(str(path))
    w.Write()
    poly, info = read_model(path)
    assert info.space_used == "LPS"
    assert poly.GetNumberOfPolys() == phantom_stem.GetNumberOfPolys()


def test_normals_point_outward_on_raw_cad_mesh():
    """On the scanned CAD mesh (long thin triangles), points 0.3 mm along the normal are outside,
    checked with VTK's own inside test."""
    poly, _ = read_model(shared_file("hip_implant_surface_scan.stl"))
    geom = surface_geometry(poly)
    np.testing.assert_allclose(np.linalg.norm(geom.normals, axis=1), 1.0, atol=1e-9)
    probe = vtk.vtkPolyData()
    pts = vtk.vtkPoints()
    pts.SetData(ns.numpy_to_vtk(np.ascontiguousarray(np.r_[geom.points + 0.3 * geom.normals, geom.points - 0.3 * geom.normals]), deep=True))
    probe.SetPoints(pts)
    sel = vtk.vtkSelectEnclosedPoints()
    sel.SetInputData(probe)
    sel.SetSurfaceData(poly)
    sel.SetTolerance(1e-6)
    sel.Update()
    inside = ns.vtk_to_numpy(sel.GetOutput().GetPointData().GetArray("SelectedPoints")).astype(bool)
    n = len(geom.points)
    assert np.mean(~inside[:n]) > 0.97  # outward offsets are outside
    assert np.mean(inside[n:]) > 0.97  # inward offsets are inside


def test_inverted_triangles_give_the_same_outward_normals(phantom_stem):
    geom = surface_geometry(phantom_stem)
    assert not geom.orientation_flipped
    flipped = vtk.vtkReverseSense()
    flipped.SetInputData(phantom_stem)
    flipped.Update()
    geom2 = surface_geometry(flipped.GetOutput())
    assert geom2.orientation_flipped
    np.testing.assert_allclose(geom2.normals, geom.normals, atol=1e-9)


def test_vertex_areas_sum_to_vtk_surface_area(phantom_stem):
    geom = surface_geometry(phantom_stem)
    mp = vtk.vtkMassProperties()
    mp.SetInputData(phantom_stem)
    mp.Update()
    assert geom.areas.sum() == pytest.approx(mp.GetSurfaceArea(), rel=1e-9)
    assert np.all(geom.areas > 0)
    assert geom.n_boundary_edges == 0 and geom.n_components == 1


def test_surface_geometry_areas_are_vertex_areas_bit_for_bit(phantom_stem):
    """surface_geometry reuses its cross products for the areas: the same numbers as vertex_areas."""
    geom = surface_geometry(phantom_stem)
    assert np.array_equal(geom.areas, vertex_areas(geom.points, geom.faces))


def _edge_counts_by_rows(faces: np.ndarray) -> tuple[int, int]:
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    return int(np.count_nonzero(counts == 1)), int(np.count_nonzero(counts > 2))


def test_edge_counts_and_repeated_rows_agree_with_unique_rows(phantom_stem):
    """The packed-key edge count and the lexsort duplicate test give np.unique(axis=0)'s answers."""
    faces = triangles(phantom_stem)
    rng = np.random.default_rng(3)
    # A hole (boundary edges), repeated triangles in both orientations (non-manifold edges).
    holed = np.delete(faces, rng.choice(len(faces), 25, replace=False), axis=0)
    extra = holed[rng.choice(len(holed), 40)]
    messy = np.concatenate([holed, extra[:20], extra[20:, ::-1]])
    rng.shuffle(messy)
    for f in (faces, holed, messy, faces[:1], faces[:0]):
        assert _edge_counts(f) == (_edge_counts_by_rows(f) if len(f) else (0, 0))
    assert _edge_counts(faces) == (0, 0)
    b, nm = _edge_counts(messy)
    assert b > 0 and nm > 0
    rows = np.sort(messy, axis=1)
    _, first = np.unique(rows, axis=0, return_index=True)
    expected = np.ones(len(rows), dtype=bool)
    expected[first] = False
    assert np.array_equal(_repeated_rows(rows), expected)
    assert _repeated_rows(rows).sum() == 40
    assert not _repeated_rows(rows[:1]).any() and _repeated_rows(rows[:0]).shape == (0,)
    # prepare_surface keeps the first copy of each repeated triangle only.
    cleaned = prepare_surface(polydata_from_arrays(points(phantom_stem), messy))
    assert cleaned.GetNumberOfPolys() == len(messy) - 40


def test_matrix_transform_file(tmp_path, phantom_stem):
    m = np.eye(4)
    m[:3, :3] = rotation("z", 10)
    m[:3, 3] = [1, 2, 3]
    np.savetxt(tmp_path / "reg.txt", m)
    got = read_transform(tmp_path / "reg.txt")
    np.testing.assert_allclose(got, m)
    moved = transform_polydata(phantom_stem, got)
    np.testing.assert_allclose(points(moved), points(phantom_stem) @ m[:3, :3].T + m[:3, 3])
    assert np.array_equal(triangles(moved), triangles(phantom_stem))


def test_itk_transform_from_registration_puts_the_model_back(tmp_path, phantom, phantom_ct, phantom_stem):
    """A model displaced by a rigid motion D, with the ITK transform a registration would write
    (fixed = CT, moving = displaced model; ITK maps fixed LPS points to moving LPS points, i.e. D in LPS),
    gives the same HU as the model in place."""
    d = np.eye(4)
    d[:3, :3] = rotation("x", 8) @ rotation("z", -15)
    d[:3, 3] = [12.0, -7.0, 20.0]
    displaced = transform_polydata(phantom_stem, d)
    model_path = tmp_path / "displaced.stl"
    write_polydata(displaced, model_path, space="LPS")
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    d_lps = flip @ d @ flip
    tx = sitk.Euler3DTransform()
    tx.SetMatrix(d_lps[:3, :3].ravel().tolist())
    tx.SetTranslation(d_lps[:3, 3].tolist())
    sitk.WriteTransform(tx, str(tmp_path / "reg.tfm"))
    np.testing.assert_allclose(read_transform(tmp_path / "reg.tfm"), np.linalg.inv(d), atol=1e-9)
    ct_path = tmp_path / "ct.nrrd"
    write_volume(phantom_ct, ct_path)
    params = AnalysisParameters(remesh="none", **frame_parameters(phantom.true_frame()))
    registered = analyze_files(ct_path, model_path, params, transform=tmp_path / "reg.tfm")
    direct = analyze(phantom_ct, phantom_stem, params)
    # The STL round trip reorders points: match each vertex to the nearest one of the direct run.
    xyz_a = registered.vertices[["x_mm", "y_mm", "z_mm"]].to_numpy()
    xyz_b = direct.vertices[["x_mm", "y_mm", "z_mm"]].to_numpy()
    locator = vtk.vtkStaticPointLocator()
    locator.SetDataSet(direct.surface)
    locator.BuildLocator()
    match = np.array([locator.FindClosestPoint(p) for p in xyz_a])
    np.testing.assert_allclose(xyz_a, xyz_b[match], atol=2e-3)  # float32 STL coordinates
    np.testing.assert_allclose(registered.vertices["hu"], direct.vertices["hu"].to_numpy()[match], atol=0.5)
    assert registered.inputs["transform"]["sha256"]
