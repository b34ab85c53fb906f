"""Known answers for the mesh geometry and orientation code, on meshes built here by hand.

Every expected value is analytic: a unit cube has area 6 and volume 1, an
octahedron with vertices at distance 1 has area 4*sqrt(3) and volume 4/3, an
open box has 4 boundary edges, a mirrored mesh keeps its outward side. The
meshes have a few dozen triangles, so these tests also serve the mutation runs
of ``mesh`` (``make mutation MODULES=mesh``), which run them once per mutant.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import vtk
from ImplantBoneContactLib import mesh
from ImplantBoneContactLib.errors import InputError
from ImplantBoneContactLib.mesh import (
    _area_centre_and_axis,
    _component_labels,
    _corner_sums,
    _edge_counts,
    _repeated_rows,
    _space_from_text,
    check_registration_matrix,
    outward_sign,
    points,
    polydata_from_arrays,
    prepare_surface,
    signed_volume,
    surface_geometry,
    transform_polydata,
    triangle_areas,
    triangles,
    vertex_areas,
)
from vtk.util import numpy_support as ns

# ---------------------------------------------------------------------------------------------------------
# Meshes with known geometry


def box(size=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Closed box, 8 corners (index x + 2y + 4z), 12 triangles facing outward (checked by hand per side)."""
    corners = np.array([[x, y, z] for z in (0, 1) for y in (0, 1) for x in (0, 1)], dtype=float)
    pts = corners * np.asarray(size, dtype=float) + np.asarray(origin, dtype=float)
    faces = np.array([
        [0, 2, 3], [0, 3, 1],  # z = 0, normal -z
        [4, 5, 7], [4, 7, 6],  # z = 1, normal +z
        [0, 1, 5], [0, 5, 4],  # y = 0, normal -y
        [2, 6, 7], [2, 7, 3],  # y = 1, normal +y
        [0, 4, 6], [0, 6, 2],  # x = 0, normal -x
        [1, 3, 7], [1, 7, 5],  # x = 1, normal +x
    ], dtype=np.int64)
    return pts, faces


def octahedron(radius=1.0, centre=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Regular octahedron, vertices +x -x +y -y +z -z at ``radius``; 8 outward triangles (one per octant)."""
    pts = np.array([[1, 0, 0], [-1, 0, 0], [0, 1, 0], [0, -1, 0], [0, 0, 1], [0, 0, -1]], dtype=float)
    pts = pts * radius + np.asarray(centre, dtype=float)
    faces = []
    for sx, ix in ((1, 0), (-1, 1)):
        for sy, iy in ((1, 2), (-1, 3)):
            for sz, iz in ((1, 4), (-1, 5)):
                # (x, y, z) is counter-clockwise seen from outside in the octant (+,+,+); each minus sign mirrors it.
                faces.append([ix, iy, iz] if sx * sy * sz > 0 else [ix, iz, iy])
    return pts, np.array(faces, dtype=np.int64)


def tube(radius=1.0, length=10.0, n_around=16, n_rings=5, centre=(0.0, 0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Open cylinder along z (no caps), triangles facing away from the axis; 2 * n_around boundary edges."""
    theta = 2.0 * np.pi * np.arange(n_around) / n_around
    z = np.linspace(-length / 2.0, length / 2.0, n_rings)
    pts = np.array([[radius * np.cos(t), radius * np.sin(t), zk] for zk in z for t in theta]) + np.asarray(centre, dtype=float)
    faces = []
    for k in range(n_rings - 1):
        for i in range(n_around):
            j = (i + 1) % n_around
            a, b, c, d = k * n_around + i, k * n_around + j, (k + 1) * n_around + j, (k + 1) * n_around + i
            faces += [[a, b, c], [a, c, d]]  # tangent x axial = radial: outward
    return pts, np.array(faces, dtype=np.int64)


def square_patch(n=4, size=1.0, z=0.0) -> tuple[np.ndarray, np.ndarray]:
    """Flat ``size`` x ``size`` square in the plane ``z``, ``n`` x ``n`` cells, 2 triangles each, normal +z."""
    s = np.linspace(0.0, size, n + 1)
    pts = np.array([[x, y, z] for y in s for x in s])
    faces = []
    for r in range(n):
        for c in range(n):
            a, b, d, e = r * (n + 1) + c, r * (n + 1) + c + 1, (r + 1) * (n + 1) + c, (r + 1) * (n + 1) + c + 1
            faces += [[a, b, e], [a, e, d]]
    return pts, np.array(faces, dtype=np.int64)


def poly_of(pts, faces) -> vtk.vtkPolyData:
    """vtkPolyData built with VTK's own calls (independent of ``polydata_from_arrays``)."""
    vp = vtk.vtkPoints()
    for p in np.asarray(pts, dtype=float):
        vp.InsertNextPoint(*p)
    cells = vtk.vtkCellArray()
    for f in faces:
        cells.InsertNextCell(len(f))
        for v in f:
            cells.InsertCellPoint(int(v))
    poly = vtk.vtkPolyData()
    poly.SetPoints(vp)
    poly.SetPolys(cells)
    return poly


def merged(*parts) -> tuple[np.ndarray, np.ndarray]:
    """Several (pts, faces) meshes as one, indices shifted."""
    pts, faces, offset = [], [], 0
    for p, f in parts:
        pts.append(p)
        faces.append(np.asarray(f) + offset)
        offset += len(p)
    return np.vstack(pts), np.vstack(faces).astype(np.int64)


OCTA_AREA = 4.0 * math.sqrt(3.0)  # 8 equilateral triangles of side sqrt(2)
OCTA_VOLUME = 4.0 / 3.0  # two square pyramids of base 2, height 1


# ---------------------------------------------------------------------------------------------------------
# Areas, volumes, corner sums


def test_triangle_areas_of_right_and_345_triangles():
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [3, 0, 0], [0, 4, 0], [0, 0, 2]], dtype=float)
    faces = np.array([[0, 1, 2], [0, 3, 4], [0, 1, 5], [5, 3, 4]])
    # 3-4-5 right triangle: 6; the last: sides 5, sqrt(13), sqrt(20) -> |(3,0,-2) x (0,4,-2)| / 2 = |(8,6,12)| / 2
    expected = [0.5, 6.0, 1.0, 0.5 * math.sqrt(64 + 36 + 144)]
    np.testing.assert_allclose(triangle_areas(pts, faces), expected, rtol=1e-14)


def test_cube_area_volume_and_vertex_areas():
    pts, faces = box()
    assert triangle_areas(pts, faces).sum() == pytest.approx(6.0, rel=1e-14)
    assert signed_volume(pts, faces) == pytest.approx(1.0, rel=1e-14)
    va = vertex_areas(pts, faces)
    assert va.shape == (8,)
    assert va.sum() == pytest.approx(6.0, rel=1e-14)
    # corner 0 is in 6 triangles of area 1/2 (two on each of its three sides): 6 * (1/2) / 3 = 1
    assert va[0] == pytest.approx(1.0, rel=1e-14)
    # corner 1 (x=1, y=0, z=0): 1 triangle on z=0, 1 on y=0, 2 on x=1 -> 4 triangles -> 2/3
    assert va[1] == pytest.approx(2.0 / 3.0, rel=1e-14)


def test_box_area_and_volume_scale_with_its_sides_and_not_its_place():
    pts, faces = box((2.0, 3.0, 4.0), origin=(100.0, -250.0, 1000.0))
    assert triangle_areas(pts, faces).sum() == pytest.approx(2 * (6 + 8 + 12), rel=1e-12)
    assert signed_volume(pts, faces) == pytest.approx(24.0, rel=1e-9)


def test_signed_volume_of_tetrahedron_and_of_flipped_meshes():
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], dtype=float)
    faces = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])  # outward
    assert signed_volume(pts, faces) == pytest.approx(1.0 / 6.0, rel=1e-14)
    assert signed_volume(pts, faces[:, ::-1]) == pytest.approx(-1.0 / 6.0, rel=1e-14)
    bp, bf = box()
    assert signed_volume(bp, bf[:, ::-1]) == pytest.approx(-1.0, rel=1e-14)
    assert isinstance(signed_volume(bp, bf), float)
    op, of = octahedron(2.0)
    assert signed_volume(op, of) == pytest.approx(OCTA_VOLUME * 8.0, rel=1e-14)


def test_vertex_areas_of_octahedron_are_equal_thirds():
    pts, faces = octahedron()
    va = vertex_areas(pts, faces)
    # each vertex is in 4 of the 8 triangles of area sqrt(3)/2
    np.testing.assert_allclose(va, 4 * (math.sqrt(3.0) / 2.0) / 3.0, rtol=1e-14)


def test_vertex_areas_count_unused_points_as_zero():
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]], dtype=float)
    va = vertex_areas(pts, np.array([[0, 1, 2]]))
    np.testing.assert_allclose(va, [1 / 6, 1 / 6, 1 / 6, 0.0], rtol=1e-14)


def test_corner_sums_add_each_face_value_to_its_three_corners():
    faces = np.array([[0, 1, 2], [2, 3, 0], [4, 4, 1]])
    got = _corner_sums(faces, np.array([1.0, 10.0, 100.0]), 6)
    # vertex 0: faces 0, 1; 1: 0, 2; 2: 0, 1; 3: 1; 4: twice face 2; 5: none
    np.testing.assert_array_equal(got, [11.0, 101.0, 11.0, 10.0, 200.0, 0.0])


# ---------------------------------------------------------------------------------------------------------
# Building and reading vtkPolyData


def test_points_and_triangles_read_back_what_vtk_holds():
    pts, faces = box((1.0, 2.0, 3.0))
    poly = poly_of(pts.astype(np.float32), faces)
    got = points(poly)
    assert got.dtype == np.float64 and got.shape == (8, 3)
    np.testing.assert_array_equal(got, pts)
    tri = triangles(poly)
    assert tri.dtype == np.int64 and tri.shape == (12, 3)
    np.testing.assert_array_equal(tri, faces)


def test_triangles_of_a_mesh_without_polygons_is_empty_and_quads_are_refused():
    empty = vtk.vtkPolyData()
    empty.SetPoints(vtk.vtkPoints())
    empty.SetPolys(vtk.vtkCellArray())
    tri = triangles(empty)
    assert tri.shape == (0, 3) and tri.dtype == np.int64
    quad = poly_of([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2, 3]])
    with pytest.raises(InputError, match="not triangles"):
        triangles(quad)
    mixed = poly_of([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2], [0, 1, 2, 3]])
    with pytest.raises(InputError, match="triangulate"):
        triangles(mixed)


def test_polydata_from_arrays_holds_the_given_points_and_triangles():
    pts, faces = octahedron(3.0, centre=(1, 2, 3))
    poly = polydata_from_arrays(pts.tolist(), faces.astype(np.int32))
    assert poly.GetNumberOfPoints() == 6 and poly.GetNumberOfCells() == 8
    np.testing.assert_array_equal(ns.vtk_to_numpy(poly.GetPoints().GetData()), pts)
    ids = vtk.vtkIdList()
    for k, f in enumerate(faces):
        poly.GetCellPoints(k, ids)
        assert [ids.GetId(i) for i in range(ids.GetNumberOfIds())] == f.tolist()
    # deep copies: changing the input afterwards changes nothing
    p2 = pts.copy()
    poly2 = polydata_from_arrays(p2, faces)
    p2[:] = 0.0
    np.testing.assert_array_equal(points(poly2), pts)
    empty = polydata_from_arrays(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    assert empty.GetNumberOfCells() == 0


# ---------------------------------------------------------------------------------------------------------
# Transforms


def _rotation_z(deg: float) -> np.ndarray:
    t = math.radians(deg)
    return np.array([[math.cos(t), -math.sin(t), 0], [math.sin(t), math.cos(t), 0], [0, 0, 1]])


def test_transform_polydata_rotates_and_translates_points():
    pts, faces = box()
    m = np.eye(4)
    m[:3, :3] = _rotation_z(90.0)
    m[:3, 3] = [10.0, 20.0, 30.0]
    out = transform_polydata(polydata_from_arrays(pts, faces), m)
    # (x, y, z) -> (-y + 10, x + 20, z + 30)
    expected = np.column_stack([-pts[:, 1] + 10, pts[:, 0] + 20, pts[:, 2] + 30])
    np.testing.assert_allclose(points(out), expected, atol=1e-12)
    np.testing.assert_array_equal(triangles(out), faces)  # a rotation keeps the triangle order
    assert signed_volume(points(out), triangles(out)) == pytest.approx(1.0, rel=1e-12)


def test_lps_to_ras_flips_x_and_y_and_keeps_triangles_outward():
    from ImplantBoneContactLib.volume import LPS_TO_RAS

    pts, faces = box((1.0, 2.0, 3.0), origin=(5.0, 6.0, 7.0))
    out = transform_polydata(polydata_from_arrays(pts, faces), LPS_TO_RAS)
    np.testing.assert_array_equal(points(out), pts * [-1, -1, 1])
    # det(diag(-1, -1, 1)) = +1: not a mirror, triangle order kept, still outward
    np.testing.assert_array_equal(triangles(out), faces)
    assert signed_volume(points(out), triangles(out)) == pytest.approx(6.0, rel=1e-12)


def test_mirror_reverses_triangles_so_the_outside_stays_outside():
    pts, faces = box((1.0, 2.0, 3.0))
    mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
    out = transform_polydata(polydata_from_arrays(pts, faces), mirror)
    np.testing.assert_array_equal(points(out), pts * [-1, 1, 1])
    np.testing.assert_array_equal(triangles(out), faces[:, ::-1])
    assert signed_volume(points(out), triangles(out)) == pytest.approx(6.0, rel=1e-12)


def test_transform_accepts_a_nested_list_matrix():
    pts, faces = box()
    out = transform_polydata(polydata_from_arrays(pts, faces), [[1, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    np.testing.assert_array_equal(points(out), pts + [1, 0, 0])


def _rigid(deg=30.0, t=(1.0, -2.0, 3.0)) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = _rotation_z(deg)
    m[:3, 3] = t
    return m


def test_rigid_registration_matrices_are_accepted():
    check_registration_matrix(np.eye(4))
    check_registration_matrix(_rigid())
    check_registration_matrix(_rigid(-135.0, (500.0, 0.0, -900.0)).tolist())
    almost = _rigid()
    almost[:3, :3] *= 1.0 + 0.5e-3  # within RIGID_TOLERANCE (rounded matrices)
    check_registration_matrix(almost)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m[:3], "not a finite 4x4 matrix"),
        (lambda m: np.where(np.eye(4) == 1, np.nan, m), "not a finite 4x4 matrix"),
        (lambda m: np.where(np.eye(4) == 1, np.inf, m), "not a finite 4x4 matrix"),
        (lambda m: np.vstack([m[:3], [0, 0, 0.5, 1]]), r"not affine \(last row must be 0 0 0 1\)"),
        (lambda m: np.vstack([m[:3], [0, 0, 0, 2]]), "not affine"),
        (lambda m: np.diag([1.0, 1.0, 0.0, 1.0]), r"singular \(determinant 0\): it would flatten"),
        (lambda m: np.diag([1e-4, 1e-4, 1e-4, 1.0]), "singular"),
        (lambda m: np.diag([-1.0, 1.0, 1.0, 1.0]), "mirrors the model"),
        (lambda m: np.diag([1.01, 1.01, 1.01, 1.0]), r"not rigid \(it scales the model by 1.01 in every direction\)"),
        (lambda m: np.diag([1.002, 1.002, 1.002, 1.0]), "scales the model by 1.002 in every direction"),
        (lambda m: np.diag([0.998, 0.998, 0.998, 1.0]), "scales the model by 0.998 in every direction"),
        (lambda m: np.diag([10.0, 10.0, 10.0, 1.0]), "scales the model by 10 in every"),
        (lambda m: np.diag([1.0, 1.0, 1.1, 1.0]), r"shears or scales unevenly: singular values \[1.1, 1.0, 1.0\]"),
        (lambda m: np.array([[1, 0.2, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]), "shears or scales unevenly"),
    ],
)
def test_non_rigid_registration_matrices_are_refused(change, message):
    with pytest.raises(InputError, match=message) as info:
        check_registration_matrix(change(_rigid()), "registration X")
    assert "the registration X " in str(info.value)


def test_refusal_of_a_scaled_matrix_says_what_to_do():
    with pytest.raises(InputError) as info:
        check_registration_matrix(np.diag([25.4, 25.4, 25.4, 1.0]))
    text = str(info.value)
    assert text.startswith("the transform is not rigid")
    assert "only rigid transforms (rotation and translation) are accepted; if the model's units are wrong, re-export it in mm" in text
    with pytest.raises(InputError, match="^the transform is singular"):
        check_registration_matrix(np.zeros((4, 4)) + np.diag([0, 0, 0, 1.0]))
    with pytest.raises(InputError, match="^the transform mirrors the model .negative determinant.: a registration must be a rotation and translation$"):
        check_registration_matrix(np.diag([1.0, -1.0, 1.0, 1.0]))


def test_space_from_text_reads_the_slicer_space_tag():
    assert _space_from_text(None) is None
    assert _space_from_text("") is None
    assert _space_from_text(b"") is None
    assert _space_from_text("exported by X SPACE=RAS") == "RAS"
    assert _space_from_text("SPACE=LPS") == "LPS"
    assert _space_from_text(b"solid SPACE=RAS \xff\xfe") == "RAS"  # not UTF-8: read as latin-1
    assert _space_from_text(b"SPACE=LPS") == "LPS"
    assert _space_from_text("space=ras") is None
    assert _space_from_text("no tag here") is None


# ---------------------------------------------------------------------------------------------------------
# Topology: repeated rows, edges, components


def test_repeated_rows_marks_later_copies_only():
    rows = np.array([[1, 2, 3], [4, 5, 6], [1, 2, 3], [0, 0, 1], [4, 5, 6], [1, 2, 3], [3, 2, 1]])
    np.testing.assert_array_equal(_repeated_rows(rows), [False, False, True, False, True, True, False])
    # copies first in the input but last in sorted order
    rows = np.array([[9, 9, 9], [9, 9, 9], [0, 1, 2], [9, 9, 8]])
    np.testing.assert_array_equal(_repeated_rows(rows), [False, True, False, False])
    # rows that differ in the first column only
    np.testing.assert_array_equal(_repeated_rows(np.array([[2, 1, 1], [1, 1, 1], [2, 1, 1]])), [False, False, True])
    # rows that differ in the last column only
    np.testing.assert_array_equal(_repeated_rows(np.array([[1, 1, 2], [1, 1, 1], [1, 1, 2]])), [False, False, True])
    assert _repeated_rows(np.array([[1, 2, 3]])).tolist() == [False]
    assert _repeated_rows(np.zeros((0, 3), dtype=int)).shape == (0,)
    assert _repeated_rows(np.array([[5, 5], [5, 5]])).tolist() == [False, True]


def test_edge_counts_of_closed_open_and_non_manifold_meshes():
    assert _edge_counts(np.zeros((0, 3), dtype=np.int64)) == (0, 0)
    assert _edge_counts(np.array([[0, 1, 2]])) == (3, 0)
    assert _edge_counts(np.array([[0, 1, 2], [2, 1, 3]])) == (4, 0)  # two triangles sharing one edge
    _, faces = box()
    assert _edge_counts(faces) == (0, 0)  # 18 edges, each in two triangles
    assert _edge_counts(faces[2:]) == (4, 0)  # bottom removed: the open box's rim
    _, faces = octahedron()
    assert _edge_counts(faces) == (0, 0)
    _, faces = tube(n_around=12, n_rings=4)
    assert _edge_counts(faces) == (24, 0)  # two rims of 12 edges
    # three triangles on the edge 0-1: one non-manifold edge, 6 boundary edges
    assert _edge_counts(np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4]])) == (6, 1)
    # four on one edge, and the highest vertex id only in the last column
    assert _edge_counts(np.array([[0, 1, 2], [1, 0, 3], [0, 1, 4], [1, 0, 5], [2, 3, 6]])) == (11, 1)


def test_edge_counts_do_not_confuse_edges_whose_packed_keys_could_collide():
    # with n = max id + 1 = 4, an edge (a, b) packs to 4a + b: (0, 3) and (1, -1) cannot exist, but a
    # key with n one too small (3) would make (0, 3) equal to (1, 0)
    faces = np.array([[0, 1, 3], [1, 2, 3]])
    # edges 0-1, 1-3 (twice), 3-0, 1-2, 2-3: 4 boundary edges, none shared by three
    assert _edge_counts(faces) == (4, 0)


def test_component_labels_of_separate_and_chained_parts():
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    labels, n = _component_labels(7, faces)  # vertex 6 in no triangle: a part of its own
    assert n == 3
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1, 2])
    # a strip whose ids decrease along it: union-find needs several rounds of pointer jumping
    faces = np.array([[9, 8, 7], [7, 6, 5], [5, 4, 3], [3, 2, 1], [1, 0, 9]])
    labels, n = _component_labels(10, faces)
    assert n == 1 and np.all(labels == 0)
    faces = np.array([[8, 9, 7], [6, 7, 5], [4, 5, 3], [2, 3, 1], [0, 1, 10]])
    labels, n = _component_labels(12, faces)
    assert n == 2
    np.testing.assert_array_equal(labels, [0] * 11 + [1])
    # only the third corner links two triangles: edges (0,1) and (1,2) of each triangle must both count
    labels, n = _component_labels(5, np.array([[0, 1, 2], [3, 4, 2]]))
    assert n == 1
    labels, n = _component_labels(5, np.array([[0, 1, 2], [3, 2, 4]]))
    assert n == 1
    labels, n = _component_labels(0, np.zeros((0, 3), dtype=np.int64))
    assert n == 0 and labels.size == 0


def test_component_labels_number_parts_by_their_lowest_vertex():
    faces = np.array([[5, 6, 7], [0, 1, 2], [3, 4, 8]])
    labels, n = _component_labels(9, faces)
    assert n == 3
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 2, 2, 2, 1])


# ---------------------------------------------------------------------------------------------------------
# Orientation


def test_area_centre_and_long_axis_of_an_elongated_box_and_tube():
    pts, faces = box((2.0, 2.0, 20.0), origin=(10.0, -5.0, 100.0))
    centre, axis = _area_centre_and_axis(pts, faces)
    np.testing.assert_allclose(centre, [11.0, -4.0, 110.0], atol=1e-9)  # each side's two triangles balance
    assert abs(axis[2]) > 0.998 and np.linalg.norm(axis) == pytest.approx(1.0, rel=1e-12)
    pts, faces = box((30.0, 2.0, 3.0))
    centre, axis = _area_centre_and_axis(pts, faces)
    np.testing.assert_allclose(centre, [15.0, 1.0, 1.5], atol=1e-9)
    assert abs(axis[0]) > 0.998
    # a tube is symmetric under rotation about its axis: the axis is exact
    pts, faces = tube(radius=1.0, length=10.0, centre=(5.0, 6.0, 7.0))
    centre, axis = _area_centre_and_axis(pts, faces)
    np.testing.assert_allclose(centre, [5.0, 6.0, 7.0], atol=1e-9)
    np.testing.assert_allclose(np.abs(axis), [0.0, 0.0, 1.0], atol=1e-12)
    pts, faces = tube(radius=1.0, length=10.0)
    _, axis = _area_centre_and_axis(pts[:, [2, 0, 1]], faces)
    np.testing.assert_allclose(np.abs(axis), [1.0, 0.0, 0.0], atol=1e-12)


def test_area_centre_weights_triangles_by_area():
    # a big triangle (area 50) and a small one (area 0.5) far away: the centre is near the big one
    pts = np.array([[0, 0, 0], [10, 0, 0], [0, 10, 0], [100, 0, 0], [101, 0, 0], [100, 1, 0]], dtype=float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    centre, _ = _area_centre_and_axis(pts, faces)
    expected = (50.0 * np.array([10 / 3, 10 / 3, 0]) + 0.5 * np.array([301 / 3, 1 / 3, 0])) / 50.5
    np.testing.assert_allclose(centre, expected, rtol=1e-12)


def test_outward_sign_of_closed_parts_is_the_sign_of_their_volume():
    pts, faces = box(origin=(1000.0, 1000.0, 1000.0))
    assert outward_sign(pts, faces) == (1, "")
    assert outward_sign(pts, faces[:, ::-1]) == (-1, "")
    pts, faces = octahedron(5.0, centre=(-300.0, 20.0, 0.0))
    assert outward_sign(pts, faces) == (1, "")
    assert outward_sign(pts, faces[:, ::-1]) == (-1, "")


def test_outward_sign_of_a_degenerate_part_is_plus_one():
    pts = np.array([[0, 0, 0], [1, 0, 0], [2, 0, 0]], dtype=float)
    assert outward_sign(pts, np.array([[0, 1, 2]])) == (1, "")


@pytest.mark.parametrize("centre", [(0.0, 0.0, 0.0), (800.0, -600.0, 1200.0)])
def test_outward_sign_of_an_open_tube_far_from_the_origin(centre):
    pts, faces = tube(centre=centre)
    assert outward_sign(pts, faces) == (1, "")
    assert outward_sign(pts, faces[:, ::-1]) == (-1, "")


def test_outward_sign_of_a_flat_patch_is_undecided_and_says_why():
    pts, faces = square_patch()
    sign, why = outward_sign(pts, faces)
    assert sign == 0
    assert why.startswith("16 boundary edges; its triangles face its axis and away from it about equally (score +0.00")
    assert "signed volume about its centre 0 mm3)" in why


def test_outward_sign_of_a_shallow_dish_is_undecided():
    # a nearly flat open part (a shallow spherical cap): the normals point away from its long axis
    # far less than MIN_OPEN_ORIENTATION_SCORE (the mean of n . r is about the cap's slope, < 0.1)
    pts, faces = square_patch(n=6, size=2.0)
    pts = pts - [1.0, 1.0, 0.0]
    pts[:, 2] = 0.05 * (pts[:, 0] ** 2 + pts[:, 1] ** 2)
    assert outward_sign(pts, faces)[0] == 0


def test_outward_sign_uses_the_given_centre_and_axis():
    # a flat patch is undecided alone; judged about a centre 10 mm below it and an axis along x (in the patch's
    # plane), its +z normals point away from that axis: outward
    pts, faces = square_patch()
    assert outward_sign(pts, faces)[0] == 0
    centre, axis = np.array([0.5, 0.5, -10.0]), np.array([1.0, 0.0, 0.0])
    assert outward_sign(pts, faces, centre, axis) == (1, "")
    assert outward_sign(pts, faces[:, ::-1], centre.tolist(), axis.tolist()) == (-1, "")
    # the same centre above the patch: inward
    assert outward_sign(pts, faces, [0.5, 0.5, 10.0], axis) == (-1, "")


def test_outward_sign_undecided_when_volume_and_axis_test_disagree():
    # Two coaxial tubes about z: a long thin one (r 1, length 20, area 40 pi) facing its axis and a short wide one
    # (r 10, length 1, area 20 pi) facing away. Axis test: area-weighted n . r = (-40 pi + 20 pi) / 60 pi = -1/3.
    # Signed volume about the centre, sum of area * (n . d) / 3: (-40 pi * 1 + 20 pi * 10) / 3 > 0. They disagree.
    thin = tube(radius=1.0, length=20.0, n_around=32, n_rings=3)
    wide = tube(radius=10.0, length=1.0, n_around=32, n_rings=2)
    pts, faces = merged((thin[0], thin[1][:, ::-1]), wide)
    sign, why = outward_sign(pts, faces, np.zeros(3), np.array([0.0, 0.0, 1.0]))
    assert sign == 0
    assert "(score -0.3" in why
    assert why.startswith("128 boundary edges")
    # each tube alone is decided
    assert outward_sign(*thin, np.zeros(3), np.array([0.0, 0.0, 1.0])) == (1, "")
    assert outward_sign(*wide, np.zeros(3), np.array([0.0, 0.0, 1.0])) == (1, "")


def test_outward_sign_ignores_triangles_on_the_axis():
    # a tube plus a small triangle whose centroid lies on the axis: its radial direction is undefined and it
    # must not make the score NaN
    pts, faces = tube(radius=1.0, length=10.0, n_around=16, n_rings=5)
    extra = np.array([[-0.01, -0.01, 0.0], [0.02, -0.01, 0.0], [-0.01, 0.02, 0.0]])
    p = np.vstack([pts, extra])
    f = np.vstack([faces, [[len(pts), len(pts) + 1, len(pts) + 2]]])
    assert outward_sign(p, f, centre=np.zeros(3), axis=np.array([0.0, 0.0, 1.0])) == (1, "")


# ---------------------------------------------------------------------------------------------------------
# surface_geometry


def test_octahedron_normals_are_the_vertex_directions():
    pts, faces = octahedron(2.0, centre=(50.0, -20.0, 300.0))
    g = surface_geometry(polydata_from_arrays(pts, faces))
    np.testing.assert_allclose(g.normals, (pts - [50.0, -20.0, 300.0]) / 2.0, atol=1e-12)
    np.testing.assert_allclose(g.areas, 4 * (math.sqrt(3.0) / 2.0 * 4.0) / 3.0, rtol=1e-12)  # side 2*sqrt(2)
    assert g.areas.sum() == pytest.approx(OCTA_AREA * 4.0, rel=1e-12)
    assert (g.n_boundary_edges, g.n_nonmanifold_edges, g.n_components) == (0, 0, 1)
    assert g.orientation_flipped is False
    np.testing.assert_array_equal(g.points, pts)
    assert signed_volume(g.points, g.faces) == pytest.approx(OCTA_VOLUME * 8.0, rel=1e-12)


def test_inward_octahedron_is_turned_outward():
    pts, faces = octahedron()
    g = surface_geometry(polydata_from_arrays(pts, faces[:, ::-1]))
    assert g.orientation_flipped is True
    np.testing.assert_allclose(g.normals, pts, atol=1e-12)
    assert signed_volume(g.points, g.faces) == pytest.approx(OCTA_VOLUME, rel=1e-12)


def test_one_reversed_triangle_is_made_consistent():
    pts, faces = octahedron()
    faces = faces.copy()
    faces[3] = faces[3][::-1]
    g = surface_geometry(polydata_from_arrays(pts, faces))
    np.testing.assert_allclose(g.normals, pts, atol=1e-12)
    assert signed_volume(g.points, g.faces) == pytest.approx(OCTA_VOLUME, rel=1e-12)


def test_cube_vertex_normals_are_area_weighted_face_normals():
    pts, faces = box()
    g = surface_geometry(polydata_from_arrays(pts, faces))
    # corner 0 is in two triangles of each side: weights 1, 1, 1 -> -(1, 1, 1)/sqrt(3)
    np.testing.assert_allclose(g.normals[0], -np.ones(3) / math.sqrt(3.0), atol=1e-12)
    # corner 1: one triangle of z=0 (area 1/2), one of y=0 (1/2), two of x=1 (1): (1, -0.5, -0.5) / sqrt(1.5)
    np.testing.assert_allclose(g.normals[1], np.array([1.0, -0.5, -0.5]) / math.sqrt(1.5), atol=1e-12)
    np.testing.assert_allclose(g.areas, vertex_areas(pts, faces), rtol=1e-15)
    np.testing.assert_allclose(np.linalg.norm(g.normals, axis=1), 1.0, rtol=1e-14)


def test_two_parts_one_inward_are_each_turned_outward():
    a = octahedron(1.0)
    b = box((2.0, 2.0, 2.0), origin=(10.0, 0.0, 0.0))
    pts, faces = merged(a, (b[0], b[1][:, ::-1]))
    g = surface_geometry(polydata_from_arrays(pts, faces))
    assert g.n_components == 2
    assert g.orientation_flipped is True
    assert signed_volume(g.points, g.faces[:8]) == pytest.approx(OCTA_VOLUME, rel=1e-12)
    assert signed_volume(g.points, g.faces[8:]) == pytest.approx(8.0, rel=1e-12)
    np.testing.assert_allclose(g.normals[:6], a[0], atol=1e-12)
    np.testing.assert_allclose(g.normals[6], -np.ones(3) / math.sqrt(3.0), atol=1e-12)
    assert g.areas.sum() == pytest.approx(OCTA_AREA + 24.0, rel=1e-12)


def test_open_box_counts_its_rim_and_faces_outward():
    pts, faces = box((2.0, 2.0, 10.0))
    g = surface_geometry(polydata_from_arrays(pts, faces[2:]))  # no bottom
    assert (g.n_boundary_edges, g.n_nonmanifold_edges, g.n_components) == (4, 0, 1)
    assert g.orientation_flipped is False
    g = surface_geometry(polydata_from_arrays(pts, faces[2:, ::-1]))
    assert g.orientation_flipped is True
    # the top corner 7 (2, 2, 10) sees +x, +y, +z
    assert np.all(g.normals[7] > 0)
    assert g.areas.sum() == pytest.approx(2 * 2 + 4 * 20, rel=1e-12)


def test_open_tube_far_away_is_turned_outward():
    pts, faces = tube(centre=(300.0, 400.0, -1000.0))
    g = surface_geometry(polydata_from_arrays(pts, faces[:, ::-1]))
    assert g.orientation_flipped is True
    radial = pts - [300.0, 400.0, 0.0]
    radial[:, 2] = 0.0
    # every vertex normal points away from the axis
    assert np.all(np.einsum("ij,ij->i", g.normals, radial) > 0.9)
    assert g.n_boundary_edges == 32


def test_non_manifold_edge_is_counted():
    pts, faces = box()
    fin = np.array([[0.5, 0.5, 5.0]])
    # a triangle on the cube's edge 4-5 (top front), standing up: that edge is in three triangles
    p = np.vstack([pts, fin])
    f = np.vstack([faces, [[4, 5, 8]]])
    g = surface_geometry(polydata_from_arrays(p, f))
    assert g.n_nonmanifold_edges == 1
    assert g.n_boundary_edges == 2
    assert g.n_components == 1


def test_a_flat_open_surface_is_refused():
    pts, faces = square_patch()
    with pytest.raises(InputError, match=r"^cannot tell the outside of the model from its inside: the surface is open \(16 boundary edges; "):
        surface_geometry(polydata_from_arrays(pts, faces))


def test_a_small_stray_flat_piece_is_oriented_by_the_whole_surface():
    # an elongated closed box (area 2 * (1 + 10 + 10) = 42) and a tiny triangle beside it at x = 5, in the plane
    # x = 5 and facing -x (toward the box's axis): flat, undecided alone, turned to face +x
    bp, bf = box((1.0, 1.0, 10.0), origin=(-0.5, -0.5, -5.0))
    tri = np.array([[5.0, 0.0, 0.0], [5.0, 0.0, 0.2], [5.0, 0.2, 0.0]])  # (0,0,.2)x(0,.2,0) = -x
    pts, faces = merged((bp, bf), (tri, np.array([[0, 1, 2]])))
    g = surface_geometry(polydata_from_arrays(pts, faces))
    assert g.orientation_flipped is True
    assert g.n_components == 2
    np.testing.assert_allclose(g.normals[8:], [[1.0, 0.0, 0.0]] * 3, atol=1e-12)
    assert signed_volume(g.points, g.faces[:12]) == pytest.approx(10.0, rel=1e-12)
    # already facing away from the axis: left as it is
    pts, faces = merged((bp, bf), (tri, np.array([[0, 2, 1]])))
    g = surface_geometry(polydata_from_arrays(pts, faces))
    assert g.orientation_flipped is False
    np.testing.assert_allclose(g.normals[8:], [[1.0, 0.0, 0.0]] * 3, atol=1e-12)


def test_undecided_area_limit_is_five_percent():
    # a unit cube (area 6) and a flat square patch apart: patch 0.25 (4.0 %) passes, 0.36 (5.7 %) is refused
    bp, bf = box()
    for side, refused in ((0.5, False), (0.6, True)):
        pp, pf = square_patch(n=1, size=side, z=0.0)
        pts, faces = merged((bp, bf), (pp + [5.0, 5.0, 0.0], pf))
        poly = polydata_from_arrays(pts, faces)
        if refused:
            with pytest.raises(InputError, match="cannot tell the outside"):
                surface_geometry(poly)
        else:
            assert surface_geometry(poly).n_components == 2


def test_surface_geometry_keeps_the_input_triangle_count_and_points():
    pts, faces = tube(n_around=8, n_rings=3)
    g = surface_geometry(polydata_from_arrays(pts, faces))
    assert g.faces.shape == faces.shape
    assert g.faces.dtype.kind == "i"
    np.testing.assert_array_equal(np.sort(g.faces, axis=1), np.sort(faces, axis=1))


def test_surface_geometry_from_a_thread():
    pts, faces = octahedron()
    out = {}
    th = threading.Thread(target=lambda: out.update(g=surface_geometry(polydata_from_arrays(pts, faces))))
    th.start()
    th.join()
    np.testing.assert_allclose(out["g"].normals, pts, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# prepare_surface


def test_prepare_surface_triangulates_quads_and_strips():
    pts, _ = box()
    quads = [[0, 2, 3, 1], [4, 5, 7, 6], [0, 1, 5, 4], [2, 6, 7, 3], [0, 4, 6, 2], [1, 3, 7, 5]]
    out = prepare_surface(poly_of(pts, quads))
    f = triangles(out)
    assert f.shape == (12, 3)
    assert triangle_areas(points(out), f).sum() == pytest.approx(6.0, rel=1e-14)
    assert signed_volume(points(out), f) == pytest.approx(1.0, rel=1e-14)
    # a triangle strip of 4 points = 2 triangles
    strip_poly = vtk.vtkPolyData()
    vp = vtk.vtkPoints()
    for p in ([0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]):
        vp.InsertNextPoint(*p)
    strips = vtk.vtkCellArray()
    strips.InsertNextCell(4)
    for i in range(4):
        strips.InsertCellPoint(i)
    strip_poly.SetPoints(vp)
    strip_poly.SetStrips(strips)
    out = prepare_surface(strip_poly)
    assert out.GetNumberOfPolys() == 2
    assert triangle_areas(points(out), triangles(out)).sum() == pytest.approx(1.0, rel=1e-14)


def test_prepare_surface_merges_duplicate_points_of_a_triangle_soup():
    pts, faces = box()
    soup = pts[faces.ravel()]  # 36 points, each triangle its own three
    out = prepare_surface(poly_of(soup, np.arange(36).reshape(12, 3)))
    assert out.GetNumberOfPoints() == 8
    f = triangles(out)
    assert f.shape == (12, 3)
    assert _edge_counts(f) == (0, 0)
    assert signed_volume(points(out), f) == pytest.approx(1.0, rel=1e-14)


def test_prepare_surface_drops_degenerate_and_repeated_triangles_and_unused_points():
    pts, faces = box()
    extra_pts = np.vstack([pts, [[7.0, 7.0, 7.0], [8.0, 8.0, 8.0], [9.0, 9.0, 9.0]]])  # 8, 9, 10: collinear
    extra = np.vstack([
        faces,
        [[8, 9, 10]],  # zero area
        faces[3][::-1][None],  # a repeat in the other orientation
        faces[5][None],  # a repeat
        [[1, 2, 1]],  # two corners the same
    ])
    out = prepare_surface(poly_of(extra_pts, extra), "cube.stl")
    f = triangles(out)
    assert f.shape == (12, 3)
    assert out.GetNumberOfPoints() == 8  # the collinear points are gone with their triangle
    assert triangle_areas(points(out), f).sum() == pytest.approx(6.0, rel=1e-14)
    assert signed_volume(points(out), f) == pytest.approx(1.0, rel=1e-14)  # first copies kept, outward
    assert _edge_counts(f) == (0, 0)


@pytest.mark.parametrize("bad", [[0, 0, 1], [0, 1, 0], [1, 0, 0]])
def test_prepare_surface_drops_a_triangle_with_two_equal_corners(bad):
    pts, faces = box()
    # vtkCleanPolyData already drops such cells; the check is kept for meshes it passes through
    f = triangles(prepare_surface(poly_of(pts, np.vstack([faces, [[v + 2 for v in bad]]]))))
    assert f.shape == (12, 3)


def test_prepare_surface_keeps_a_clean_mesh_as_it_is():
    pts, faces = octahedron(3.0, centre=(1.0, 2.0, 3.0))
    out = prepare_surface(polydata_from_arrays(pts, faces))
    # vtkCleanPolyData may number the points anew; the triangles, corner by corner, are the same
    np.testing.assert_array_equal(points(out)[triangles(out)], pts[faces])
    assert out.GetNumberOfPoints() == 6
    assert out.GetNumberOfVerts() == 0 and out.GetNumberOfLines() == 0


def test_prepare_surface_drops_vertices_and_lines_beside_triangles():
    pts, faces = octahedron()
    poly = poly_of(pts, faces)
    lines = vtk.vtkCellArray()
    lines.InsertNextCell(2)
    lines.InsertCellPoint(0)
    lines.InsertCellPoint(1)
    verts = vtk.vtkCellArray()
    verts.InsertNextCell(1)
    verts.InsertCellPoint(2)
    poly.SetLines(lines)
    poly.SetVerts(verts)
    out = prepare_surface(poly)
    assert out.GetNumberOfCells() == 8 == out.GetNumberOfPolys()


def test_prepare_surface_refuses_non_finite_points_with_their_count():
    pts, faces = box()
    pts = pts.copy()
    pts[2] = [np.nan, 0.0, 0.0]
    pts[5] = [0.0, np.inf, 0.0]
    with pytest.raises(InputError, match=r"^the model cube.stl has 2 point\(s\) with NaN or infinite coordinates: repair or re-export the mesh$"):
        prepare_surface(poly_of(pts, faces), "cube.stl")
    pts[5] = [0.0, 1.0, 0.0]
    with pytest.raises(InputError, match=r"has 1 point\(s\)"):
        prepare_surface(poly_of(pts, faces))


def test_prepare_surface_refuses_lines_only_and_only_degenerate_triangles():
    poly = vtk.vtkPolyData()
    vp = vtk.vtkPoints()
    for p in ([0, 0, 0], [1, 0, 0], [2, 0, 0]):
        vp.InsertNextPoint(*p)
    poly.SetPoints(vp)
    lines = vtk.vtkCellArray()
    for a, b in ((0, 1), (1, 2)):
        lines.InsertNextCell(2)
        lines.InsertCellPoint(a)
        lines.InsertCellPoint(b)
    verts = vtk.vtkCellArray()
    verts.InsertNextCell(1)
    verts.InsertCellPoint(0)
    poly.SetLines(lines)
    poly.SetVerts(verts)
    with pytest.raises(InputError, match=r"^the model wire.vtk has no surface cells \(2 lines, 1 vertices\): a closed triangle surface is needed$"):
        prepare_surface(poly, "wire.vtk")
    flat = poly_of([[0, 0, 0], [1, 0, 0], [2, 0, 0], [3, 0, 0]], [[0, 1, 2], [1, 2, 3]])
    with pytest.raises(InputError, match=r"^the model rod.stl has (only degenerate \(zero-area\) triangles|no non-degenerate triangle)$"):
        prepare_surface(flat, "rod.stl")
    empty = vtk.vtkPolyData()
    with pytest.raises(InputError, match="has no surface cells .0 lines, 0 vertices."):
        prepare_surface(empty)


def test_prepare_surface_refuses_a_mesh_whose_triangles_all_collapse():
    # three distinct corners at the same place: merged by vtkCleanPolyData, nothing is left
    poly = poly_of([[1, 1, 1], [1, 1, 1], [1, 1, 1]], [[0, 1, 2]])
    with pytest.raises(InputError, match="^the model tip has no non-degenerate triangle$"):
        prepare_surface(poly, "tip")



# ---------------------------------------------------------------------------------------------------------
# Cases found by mutation testing (each one kills a planted bug that the tests above let through)


def test_area_centre_of_a_part_smaller_than_a_square_millimetre():
    # total area 6 * 0.1**2 = 0.06 mm2: the centre must not depend on a floor of the area sum
    pts, faces = box((0.1, 0.1, 0.1), origin=(2.0, 3.0, 4.0))
    centre, _ = _area_centre_and_axis(pts, faces)
    np.testing.assert_allclose(centre, [2.05, 3.05, 4.05], atol=1e-12)


def test_repeated_rows_compare_every_column_and_accept_one_column():
    # rows that differ in the middle column only, interleaved
    rows = np.array([[1, 1, 1], [1, 2, 1], [1, 1, 1], [1, 2, 1]])
    np.testing.assert_array_equal(_repeated_rows(rows), [False, False, True, True])
    np.testing.assert_array_equal(_repeated_rows(np.array([[3], [3], [1]])), [False, True, False])


def test_a_uniform_scale_at_the_tolerance_ratio_is_named_a_scale():
    # singular values in the ratio 1 + RIGID_TOLERANCE exactly (as floats): still "scales in every direction"
    a = 1.25  # a power-of-two fraction: (a * r) / a == r in floating point
    r = 1.0 + mesh.RIGID_TOLERANCE
    assert (a * r) / a == r
    with pytest.raises(InputError, match="scales the model by"):
        check_registration_matrix(np.diag([a * r, a, a, 1.0]))


def test_shear_message_rounds_singular_values_to_four_decimals():
    with pytest.raises(InputError, match=r"singular values \[1\.1235, 1\.0, 1\.0\]"):
        check_registration_matrix(np.diag([1.123456, 1.0, 1.0, 1.0]))


def test_outward_sign_of_a_piece_in_a_plane_through_the_centre_follows_the_axis_test():
    # A flat piece in z = 0 beside the centre (the origin): its signed volume about the centre is exactly 0,
    # so only the axis test decides. Axis (0, 1, 1)/sqrt(2): the direction from the axis to the piece (y in
    # [1, 2]) points down (-z component), the piece's normal +z: it faces the axis -> -1.
    pts, faces = square_patch(n=2, size=1.0)
    pts = pts + [-0.5, 1.0, 0.0]
    axis = np.array([0.0, 1.0, 1.0]) / math.sqrt(2.0)
    assert outward_sign(pts, faces, np.zeros(3), axis) == (-1, "")
    assert outward_sign(pts, faces[:, ::-1], np.zeros(3), axis) == (1, "")


def test_outward_sign_uses_the_given_axis_not_its_own():
    # the flat patch with a centre below it: about an axis along x (in its plane) it is decided (see above);
    # about the axis z, perpendicular to it, its normals are parallel to the axis: undecided
    pts, faces = square_patch()
    assert outward_sign(pts, faces, np.array([0.5, 0.5, -10.0]), np.array([0.0, 0.0, 1.0]))[0] == 0


def test_undecided_message_gives_the_signed_volume_about_the_centre():
    # the two coaxial tubes of the test above; each triangle's cone to the centre has height = the
    # apothem r cos(pi / n) of its tube, so the volume is sum(area * height) / 3
    n = 32
    thin = tube(radius=1.0, length=20.0, n_around=n, n_rings=3)
    wide = tube(radius=10.0, length=1.0, n_around=n, n_rings=2)
    pts, faces = merged((thin[0], thin[1][:, ::-1]), wide)
    side = 2.0 * math.sin(math.pi / n)
    area_thin, area_wide = n * side * 1.0 * 20.0, n * side * 10.0 * 1.0
    volume = (-area_thin * math.cos(math.pi / n) + area_wide * 10.0 * math.cos(math.pi / n)) / 3.0
    sign, why = outward_sign(pts, faces, np.zeros(3), np.array([0.0, 0.0, 1.0]))
    assert sign == 0
    assert why.endswith(f"signed volume about its centre {volume:.3g} mm3)")


def test_outward_sign_of_closed_thin_and_small_parts_is_their_volume_sign():
    # a closed plate 10 x 10 x 0.1 mm: its normals mostly parallel to any long axis, but closed, so the volume
    # decides (an open-part test would call it undecided)
    pts, faces = box((10.0, 10.0, 0.1))
    assert outward_sign(pts, faces) == (1, "")
    assert outward_sign(pts, faces[:, ::-1]) == (-1, "")
    g = surface_geometry(polydata_from_arrays(pts, faces[:, ::-1]))
    assert g.orientation_flipped is True
    # a closed part of volume 0.125 mm3 (< 1)
    pts, faces = box((0.5, 0.5, 0.5), origin=(20.0, 0.0, 0.0))
    assert outward_sign(pts, faces) == (1, "")
    # a closed part of volume exactly 0 (a triangle and its reverse): left as it is (+1, no flip)
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=float)
    assert outward_sign(pts, np.array([[0, 1, 2], [0, 2, 1]])) == (1, "")


def test_polydata_from_arrays_copies_the_triangles_and_stores_double_points():
    pts, faces = octahedron()
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    poly = polydata_from_arrays(pts, faces)
    faces[:] = 0  # the caller reuses its array
    np.testing.assert_array_equal(triangles(poly), octahedron()[1])
    poly = polydata_from_arrays(np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0]]), np.array([[0, 1, 2]]))
    assert poly.GetPoints().GetDataType() == vtk.VTK_DOUBLE
    np.testing.assert_array_equal(points(poly), [[0, 0, 0], [2, 0, 0], [0, 2, 0]])


def test_prepare_surface_names_the_model_by_default():
    with pytest.raises(InputError, match="^the model model has no surface cells"):
        prepare_surface(vtk.vtkPolyData())


def test_prepare_surface_counts_strips_with_polygons():
    # one triangle and one strip (2 triangles): 3 triangles, area 0.5 + 1
    poly = vtk.vtkPolyData()
    vp = vtk.vtkPoints()
    for p in ([0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0], [5, 0, 0], [6, 0, 0], [5, 1, 0]):
        vp.InsertNextPoint(*p)
    strips = vtk.vtkCellArray()
    strips.InsertNextCell(4)
    for i in range(4):
        strips.InsertCellPoint(i)
    polys = vtk.vtkCellArray()
    polys.InsertNextCell(3)
    for i in (4, 5, 6):
        polys.InsertCellPoint(i)
    poly.SetPoints(vp)
    poly.SetStrips(strips)
    poly.SetPolys(polys)
    out = prepare_surface(poly)
    assert triangles(out).shape == (3, 3)
    assert triangle_areas(points(out), triangles(out)).sum() == pytest.approx(1.5, rel=1e-14)


def test_unused_points_get_a_zero_normal_and_zero_area():
    pts, faces = octahedron()
    pts = np.vstack([pts, [[9.0, 9.0, 9.0]]])
    g = surface_geometry(polydata_from_arrays(pts, faces))
    np.testing.assert_array_equal(g.normals[6], [0.0, 0.0, 0.0])
    assert g.areas[6] == 0.0
    np.testing.assert_allclose(g.normals[:6], pts[:6], atol=1e-12)


def test_a_stray_piece_the_whole_axis_cannot_judge_is_left_as_it_is():
    # the elongated box (axis z) and a small horizontal strip beside it at z = 3 (0.4 x 0.1 mm, two triangles),
    # facing down (-z): about the box's axis its normal is parallel to the axis, undecided: no flip. (About
    # its own long axis, x, and the box's centre it would look inward and be flipped.)
    bp, bf = box((1.0, 1.0, 10.0), origin=(-0.5, -0.5, -5.0))
    strip = np.array([[5.0, 0.0, 3.0], [5.4, 0.0, 3.0], [5.4, 0.1, 3.0], [5.0, 0.1, 3.0]])
    down = np.array([[0, 2, 1], [0, 3, 2]])  # (0.4,0.1,0) x (0.4,0,0) = -z
    pts, faces = merged((bp, bf), (strip, down))
    g = surface_geometry(polydata_from_arrays(pts, faces))
    assert g.orientation_flipped is False
    np.testing.assert_allclose(g.normals[8:], [[0.0, 0.0, -1.0]] * 4, atol=1e-12)


def test_transform_keeps_triangle_order_for_a_positive_scale():
    pts, faces = box()
    out = transform_polydata(polydata_from_arrays(pts, faces), np.diag([0.5, 0.5, 0.5, 1.0]))
    np.testing.assert_array_equal(triangles(out), faces)
    assert signed_volume(points(out), triangles(out)) == pytest.approx(0.125, rel=1e-14)


def test_non_triangle_message_is_exact():
    quad = poly_of([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], [[0, 1, 2, 3]])
    with pytest.raises(InputError, match="^the mesh holds polygons that are not triangles: triangulate it first$"):
        triangles(quad)
