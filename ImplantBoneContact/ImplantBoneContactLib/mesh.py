"""Implant surface models: reading, registration transforms, normals, areas.

All meshes inside the program are ``vtkPolyData`` triangle meshes in RAS
millimetres. Files follow Slicer's rule (``vtkMRMLModelStorageNode``): the
coordinates are LPS unless the file says ``SPACE=RAS`` (STL/VTK/OBJ header,
PLY comment, VTP field data ``SPACE``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from vtkmodules.util import numpy_support as ns

from . import vtkclasses as vtk
from .errors import InputError, native_stderr_silenced
from .volume import LPS_TO_RAS

MODEL_FILE_SUFFIXES = (".stl", ".obj", ".ply", ".vtk", ".vtp")


@dataclass
class ModelFileInfo:
    """What was learnt while reading a model file."""

    path: str
    space_in_file: str | None  # "RAS", "LPS" or None when the file does not say
    space_used: str


def _space_from_text(text: str | bytes | None) -> str | None:
    if not text:
        return None
    if isinstance(text, bytes):  # VTK hands back bytes when a binary STL header is not UTF-8
        text = text.decode("latin-1")
    if "SPACE=RAS" in text:
        return "RAS"
    if "SPACE=LPS" in text:
        return "LPS"
    return None


def read_model(path: str | os.PathLike, space: str | None = None) -> tuple[vtk.vtkPolyData, ModelFileInfo]:
    """Read an implant surface and return it as a triangle mesh in RAS mm.

    Args:
        path: STL, OBJ, PLY, VTK (legacy polydata) or VTP file.
        space: ``"RAS"`` or ``"LPS"`` to override the file's coordinate
            system; ``None`` follows the file header and defaults to LPS, as
            Slicer does since 4.11.

    Raises:
        InputError: missing, empty, unreadable file; no triangles; non-finite
            coordinates.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"model not found: {p}")
    if p.is_dir():
        raise InputError(f"the model path is a folder, not a mesh file: {p}")
    if p.stat().st_size == 0:
        raise InputError(f"the model file is empty (0 bytes): {p}")
    suffix = p.suffix.lower()
    if suffix not in MODEL_FILE_SUFFIXES:
        raise InputError(f"unsupported model file type '{suffix}' ({p}): use one of {', '.join(MODEL_FILE_SUFFIXES)}")
    if space is not None:
        space = space.upper()
        if space not in ("RAS", "LPS"):
            raise InputError(f"model space must be RAS or LPS, got {space!r}")

    if suffix == ".stl":
        _check_stl_size(p)
    with native_stderr_silenced():
        poly, space_in_file, errors = _read_poly(p, suffix)
    if errors.messages and (poly is None or poly.GetNumberOfPoints() == 0):
        raise InputError(f"cannot read the model {p}: {errors.messages[0][:200]}; the file is damaged or not a {suffix[1:].upper()} mesh")
    if poly is None or poly.GetNumberOfPoints() == 0 or poly.GetNumberOfCells() == 0:
        raise InputError(f"the model {p} has no surface (0 points or 0 cells): the file is empty, truncated or not a mesh")

    used = space or space_in_file or "LPS"
    out = vtk.vtkPolyData()
    out.DeepCopy(poly)
    # Triangulate first: transform_polydata keeps triangles only, so strips and quads would be lost.
    out = prepare_surface(out, str(p))
    if used == "LPS":
        out = transform_polydata(out, LPS_TO_RAS)
    return out, ModelFileInfo(str(p), space_in_file, used)


def _check_stl_size(p: Path) -> None:
    """Refuse a binary STL whose size does not match the triangle count in its header.

    A cut binary STL is otherwise read up to the cut without complaint, or
    reported only as a generic reader error.
    """
    size = p.stat().st_size
    with open(p, "rb") as fh:
        head = fh.read(512)
        fh.seek(max(size - 512, 0))
        tail = fh.read()
    n = int(np.frombuffer(head[80:84], dtype="<u4")[0]) if len(head) >= 84 else -1
    if n >= 0 and size == 84 + 50 * n:
        # vtkSTLReader fails on NaN corners with a generic error: name the problem.
        corners = np.fromfile(p, dtype=np.dtype([("f", "<f4", (12,)), ("a", "<u2")]), count=n, offset=84)["f"][:, 3:]
        n_bad = int(np.count_nonzero(~np.all(np.isfinite(corners), axis=1)))
        if n_bad:
            raise InputError(f"the model {p} has {n_bad} triangle(s) with NaN or infinite coordinates: repair or re-export the mesh")
        return
    if head.lstrip()[:5].lower() == b"solid" and all(32 <= c < 127 or c in (9, 10, 13) for c in head):
        if b"endsolid" not in tail.lower():
            raise InputError(f"the ASCII STL {p} is truncated: it does not end with 'endsolid'; export the model again")
        return
    if n > 0 and size > 84 + 50 * n:
        return  # some exporters pad after the triangles; the triangles themselves are complete
    raise InputError(
        f"the model {p} is not a valid STL file or is truncated: a binary STL of {max(n, 0)} triangles "
        f"(as its header says) has {84 + 50 * max(n, 0)} bytes, this file has {size}"
    )


def _read_poly(p: Path, suffix: str):
    """Run the VTK reader for ``suffix``; return (polydata, SPACE found in the file, error collector)."""
    errors = _VtkErrorCollector()
    space_in_file: str | None = None
    if suffix == ".stl":
        reader = vtk.vtkSTLReader()
        reader.SetFileName(str(p))
        errors.watch(reader)
        reader.Update()
        space_in_file = _space_from_text(reader.GetHeader())
        poly = reader.GetOutput()
    elif suffix == ".obj":
        reader = vtk.vtkOBJReader()
        reader.SetFileName(str(p))
        errors.watch(reader)
        reader.Update()
        space_in_file = _space_from_text(reader.GetComment())
        poly = reader.GetOutput()
    elif suffix == ".ply":
        reader = vtk.vtkPLYReader()
        reader.SetFileName(str(p))
        errors.watch(reader)
        reader.Update()
        comments = reader.GetComments()
        for i in range(comments.GetNumberOfValues()):
            space_in_file = _space_from_text(comments.GetValue(i))
            if space_in_file:
                break
        poly = reader.GetOutput()
    elif suffix == ".vtk":
        reader = vtk.vtkPolyDataReader()
        reader.SetFileName(str(p))
        errors.watch(reader)
        if not reader.IsFilePolyData():
            raise InputError(f"the VTK file {p} does not hold polygonal data (a surface mesh)")
        reader.Update()
        space_in_file = _space_from_text(reader.GetHeader())
        poly = reader.GetOutput()
    else:
        reader = vtk.vtkXMLPolyDataReader()
        reader.SetFileName(str(p))
        errors.watch(reader)
        reader.Update()
        poly = reader.GetOutput()
        fd = poly.GetFieldData()
        arr = fd.GetAbstractArray("SPACE") if fd is not None else None
        if arr is not None and arr.GetNumberOfValues() > 0:
            space_in_file = _space_from_text("SPACE=" + str(arr.GetValue(0)))
    return poly, space_in_file, errors


class _VtkErrorCollector:
    """Collect VTK error events of a reader instead of letting them print."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def watch(self, obj) -> None:
        obj.AddObserver("ErrorEvent", self._on_error)
        obj.GetExecutive().AddObserver("ErrorEvent", self._on_error)

    def _on_error(self, caller, event, calldata=None) -> None:
        self.messages.append(f"{caller.GetClassName()} reported an error")


def prepare_surface(poly: vtk.vtkPolyData, source: str = "model") -> vtk.vtkPolyData:
    """Triangulate, drop degenerate and repeated triangles, merge duplicate points; check coordinates.

    A triangle listed twice (either orientation) would count its area twice
    and make its edges look non-manifold; only its first copy is kept.

    Raises:
        InputError: non-finite coordinates, or no triangle left.
    """
    points = ns.vtk_to_numpy(poly.GetPoints().GetData()) if poly.GetPoints() else np.zeros((0, 3))
    if points.size and not np.all(np.isfinite(points)):
        n = int(np.count_nonzero(~np.all(np.isfinite(points), axis=1)))
        raise InputError(f"the model {source} has {n} point(s) with NaN or infinite coordinates: repair or re-export the mesh")
    n_polys = poly.GetNumberOfPolys() + poly.GetNumberOfStrips()
    if n_polys == 0:
        raise InputError(
            f"the model {source} has no surface cells ({poly.GetNumberOfLines()} lines, "
            f"{poly.GetNumberOfVerts()} vertices): a closed triangle surface is needed"
        )
    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(poly)
    tri.PassVertsOff()
    tri.PassLinesOff()
    clean = vtk.vtkCleanPolyData()
    clean.SetInputConnection(tri.GetOutputPort())
    clean.PointMergingOn()
    clean.SetTolerance(0.0)
    clean.ConvertLinesToPointsOff()
    clean.ConvertPolysToLinesOff()
    clean.ConvertStripsToPolysOff()
    clean.Update()
    out = vtk.vtkPolyData()
    out.SetPoints(clean.GetOutput().GetPoints())
    out.SetPolys(clean.GetOutput().GetPolys())
    faces = triangles(out)
    if faces.shape[0] == 0:
        raise InputError(f"the model {source} has no non-degenerate triangle")
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    pts = ns.vtk_to_numpy(out.GetPoints().GetData())
    area = triangle_areas(pts, faces)
    keep &= area > 0
    keep &= ~_repeated_rows(np.sort(faces, axis=1))
    if not np.all(keep):
        faces = faces[keep]
        if faces.shape[0] == 0:
            raise InputError(f"the model {source} has only degenerate (zero-area) triangles")
        out = polydata_from_arrays(pts, faces)
        out = _drop_unused_points(out)
    return out


def _drop_unused_points(poly: vtk.vtkPolyData) -> vtk.vtkPolyData:
    clean = vtk.vtkCleanPolyData()
    clean.SetInputData(poly)
    clean.PointMergingOff()
    clean.Update()
    out = vtk.vtkPolyData()
    out.SetPoints(clean.GetOutput().GetPoints())
    out.SetPolys(clean.GetOutput().GetPolys())
    return out


def points(poly: vtk.vtkPolyData) -> np.ndarray:
    """Point coordinates as an ``(N, 3)`` float64 array (mm)."""
    return ns.vtk_to_numpy(poly.GetPoints().GetData()).astype(float, copy=False)


def triangles(poly: vtk.vtkPolyData) -> np.ndarray:
    """Triangle vertex indices as an ``(M, 3)`` int64 array (the mesh must hold only triangles)."""
    polys = poly.GetPolys()
    if polys.GetNumberOfCells() == 0:
        return np.zeros((0, 3), dtype=np.int64)
    offsets = ns.vtk_to_numpy(polys.GetOffsetsArray())
    conn = ns.vtk_to_numpy(polys.GetConnectivityArray()).astype(np.int64)
    sizes = np.diff(offsets)
    if not np.all(sizes == 3):
        raise InputError("the mesh holds polygons that are not triangles: triangulate it first")
    return conn.reshape(-1, 3)


def polydata_from_arrays(pts: np.ndarray, faces: np.ndarray) -> vtk.vtkPolyData:
    """Build a triangle ``vtkPolyData`` from ``(N, 3)`` points (mm) and ``(M, 3)`` indices."""
    poly = vtk.vtkPolyData()
    vpts = vtk.vtkPoints()
    vpts.SetData(ns.numpy_to_vtk(np.ascontiguousarray(pts, dtype=float), deep=True))
    poly.SetPoints(vpts)
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    cells = vtk.vtkCellArray()
    offsets = np.arange(0, 3 * faces.shape[0] + 1, 3, dtype=np.int64)
    cells.SetData(ns.numpy_to_vtkIdTypeArray(offsets, deep=True), ns.numpy_to_vtkIdTypeArray(faces.ravel(), deep=True))
    poly.SetPolys(cells)
    return poly


def transform_polydata(poly: vtk.vtkPolyData, matrix: np.ndarray) -> vtk.vtkPolyData:
    """Apply a 4x4 affine matrix (RAS mm -> RAS mm) to the points of a mesh.

    A matrix with negative determinant (a mirror) reverses triangle order so
    that the outward side stays outward.
    """
    m = np.asarray(matrix, dtype=float)
    pts = points(poly)
    new_pts = pts @ m[:3, :3].T + m[:3, 3]
    faces = triangles(poly)
    if np.linalg.det(m[:3, :3]) < 0:
        faces = faces[:, ::-1]
    return polydata_from_arrays(new_pts, faces)


def triangle_areas(pts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area of each triangle in mm^2."""
    a = pts[faces[:, 0]]
    return 0.5 * np.linalg.norm(np.cross(pts[faces[:, 1]] - a, pts[faces[:, 2]] - a), axis=1)


def vertex_areas(pts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Per-vertex area (mm^2): a third of the area of every adjacent triangle.

    The sum over vertices equals the surface area, so area-weighted statistics
    do not depend on how the surface was triangulated.
    """
    return _corner_sums(faces, triangle_areas(pts, faces) / 3.0, pts.shape[0])


def _corner_sums(faces: np.ndarray, per_face: np.ndarray, n_points: int) -> np.ndarray:
    """Add ``per_face`` (one value per triangle, any unit) to each of the triangle's three vertices.

    Corner by corner, first corners first: one ``np.bincount`` over all corners
    would add the same numbers in another order and change the last bits.
    """
    out = np.zeros(n_points)
    for c in range(3):
        out += np.bincount(faces[:, c], weights=per_face, minlength=n_points)
    return out


def signed_volume(pts: np.ndarray, faces: np.ndarray) -> float:
    """Signed enclosed volume (mm^3) by the divergence theorem; positive when triangles face outward."""
    a, b, c = pts[faces[:, 0]], pts[faces[:, 1]], pts[faces[:, 2]]
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


#: An open part is oriented only when its area-weighted normals point clearly away from (or toward) its
#: axis: the mean of ``n . r`` (``r`` the unit direction from the part's long axis) beyond this.
MIN_OPEN_ORIENTATION_SCORE = 0.2


def _area_centre_and_axis(pts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Area centroid (mm) and long (principal) axis (unit) of a triangle set."""
    a, b, c = pts[faces[:, 0]], pts[faces[:, 1]], pts[faces[:, 2]]
    area2 = np.linalg.norm(np.cross(b - a, c - a), axis=1)
    total = max(float(area2.sum()), 1e-300)
    centres = (a + b + c) / 3.0
    centre = (centres * area2[:, None]).sum(0) / total
    d = centres - centre
    moments = (d * area2[:, None]).T @ d / total
    return centre, np.linalg.eigh(moments)[1][:, -1]


def outward_sign(
    pts: np.ndarray, faces: np.ndarray, centre: np.ndarray | None = None, axis: np.ndarray | None = None
) -> tuple[int, str]:
    """+1 if the consistently oriented triangles of one connected part face outward, -1 if inward, 0 if undecided.

    Closed part: the sign of its signed volume (the same about any origin).
    Open part (holes, a cut-off neck, a scan patch): the signed volume is
    taken about the part's own area centroid (or ``centre``), so a surface
    far from the world origin is judged as near it, and it must agree with
    the area-weighted mean of ``n . r``, where ``r`` is the unit direction
    from the part's long (principal) axis (or ``axis`` through ``centre``) to
    each triangle: outward normals of an elongated implant point away from
    its axis. Undecided (0) when the two disagree or the axis test is weak
    (mean below :data:`MIN_OPEN_ORIENTATION_SCORE`: a flat or saddle patch).

    Returns:
        ``(sign, why)``: ``why`` describes an undecided part for a message.
    """
    a, b, c = pts[faces[:, 0]], pts[faces[:, 1]], pts[faces[:, 2]]
    cross = np.cross(b - a, c - a)
    area2 = np.linalg.norm(cross, axis=1)
    total = area2.sum()
    if total <= 0:
        return 1, ""
    own_centre, own_axis = _area_centre_and_axis(pts, faces)
    centre = own_centre if centre is None else np.asarray(centre, dtype=float)
    axis = own_axis if axis is None else np.asarray(axis, dtype=float)
    n_boundary, _ = _edge_counts(faces)
    volume = float(np.einsum("ij,ij->i", a - centre, np.cross(b - centre, c - centre)).sum() / 6.0)
    if n_boundary == 0:
        return (1 if volume >= 0 else -1), ""
    d = (a + b + c) / 3.0 - centre
    radial = d - np.outer(d @ axis, axis)
    length = np.linalg.norm(radial, axis=1)
    ok = length > 1e-9 * max(float(np.abs(d).max()), 1e-12)
    unit_n = cross[ok] / np.maximum(area2[ok], 1e-300)[:, None]
    score = float((np.einsum("ij,ij->i", unit_n, radial[ok] / length[ok, None]) * area2[ok]).sum() / total)
    if abs(score) < MIN_OPEN_ORIENTATION_SCORE or (volume != 0 and np.sign(volume) != np.sign(score)):
        return 0, (
            f"{n_boundary} boundary edges; its triangles face its axis and away from it about equally "
            f"(score {score:+.2f}; signed volume about its centre {volume:.3g} mm3)"
        )
    return (1 if score > 0 else -1), ""


#: Undecided parts (see :func:`outward_sign`) may hold at most this fraction of the area: small stray
#: pieces (a lone triangle a remesh left behind) are oriented against the whole surface's axis instead.
MAX_UNDECIDED_AREA_FRACTION = 0.05


@dataclass
class SurfaceGeometry:
    """Outward normals and areas of a triangle mesh."""

    points: np.ndarray  # (N, 3) mm, RAS
    faces: np.ndarray  # (M, 3)
    normals: np.ndarray  # (N, 3) unit, outward
    areas: np.ndarray  # (N,) mm^2
    n_boundary_edges: int
    n_nonmanifold_edges: int
    n_components: int
    orientation_flipped: bool


def surface_geometry(poly: vtk.vtkPolyData) -> SurfaceGeometry:
    """Consistent outward unit normals per vertex, per-vertex areas, and topology facts.

    Triangle orientation is made consistent over edge-adjacent triangles by
    ``vtkPolyDataNormals`` (with cell normals on: with point and cell normals
    both off, VTK 9.6 returns the mesh unchanged and its consistency step
    does not run). Then each connected part is turned outward by
    :func:`outward_sign`, which does not depend on where the part lies (a
    surface in scanner table coordinates, 1000 mm from the origin, is judged
    as at the origin). Vertex normals are the area-weighted mean of the
    adjacent triangle normals.

    Raises:
        InputError: an open part whose outside cannot be told from its inside.
    """
    normals_filter = vtk.vtkPolyDataNormals()
    normals_filter.SetInputData(poly)
    normals_filter.ComputePointNormalsOff()
    normals_filter.ComputeCellNormalsOn()
    normals_filter.SplittingOff()
    normals_filter.ConsistencyOn()
    normals_filter.AutoOrientNormalsOff()
    normals_filter.NonManifoldTraversalOn()
    normals_filter.Update()
    oriented = normals_filter.GetOutput()
    pts = points(poly)
    faces = triangles(poly)
    if oriented.GetNumberOfPolys():
        faces_oriented = triangles(oriented)
        if faces_oriented.shape[0] == faces.shape[0]:
            faces = faces_oriented
    flipped = False
    # Consistency is per connected component: orient each one on its own.
    labels, n_components = _component_labels(pts.shape[0], faces)
    face_label = labels[faces[:, 0]]
    tri_area = triangle_areas(pts, faces)
    undecided: list[tuple[np.ndarray, str]] = []
    for comp in range(n_components):
        sel = face_label == comp
        sign, why = outward_sign(pts, faces[sel])
        if sign == 0:
            undecided.append((sel, why))
        elif sign < 0:
            faces[sel] = faces[sel][:, ::-1]
            flipped = True
    if undecided:
        undecided_area = sum(float(tri_area[sel].sum()) for sel, _ in undecided)
        if undecided_area > MAX_UNDECIDED_AREA_FRACTION * float(tri_area.sum()):
            raise InputError(
                "cannot tell the outside of the model from its inside: the surface is open "
                f"({undecided[0][1]}): close the surface (fill its holes) or export the whole implant"
            )
        # Small stray pieces: judged against the whole surface's centre and axis.
        centre, axis = _area_centre_and_axis(pts, faces)
        for sel, _ in undecided:
            if outward_sign(pts, faces[sel], centre, axis)[0] < 0:
                faces[sel] = faces[sel][:, ::-1]
                flipped = True
    a = pts[faces[:, 0]]
    face_n = np.cross(pts[faces[:, 1]] - a, pts[faces[:, 2]] - a)  # length = 2 * area: area weighting
    vn = np.column_stack([_corner_sums(faces, face_n[:, d], pts.shape[0]) for d in range(3)])
    length = np.linalg.norm(vn, axis=1)
    ok = length > 0
    vn[ok] /= length[ok, None]
    # The same numbers vertex_areas(pts, faces) computes, from the cross products already at hand.
    areas = _corner_sums(faces, 0.5 * np.linalg.norm(face_n, axis=1) / 3.0, pts.shape[0])
    n_boundary, n_nonmanifold = _edge_counts(faces)
    return SurfaceGeometry(
        points=pts,
        faces=faces,
        normals=vn,
        areas=areas,
        n_boundary_edges=n_boundary,
        n_nonmanifold_edges=n_nonmanifold,
        n_components=n_components,
        orientation_flipped=flipped,
    )


def _repeated_rows(rows: np.ndarray) -> np.ndarray:
    """True for each row of an ``(M, K)`` integer array that equals an earlier row.

    The same answer as ``np.unique(rows, axis=0, return_index=True)``, which
    sorts the rows as opaque byte strings (0.2 s for 200 000 triangles); a
    stable ``np.lexsort`` over the columns keeps the first copy of each row
    first in its run, 5-10x faster.
    """
    repeated = np.zeros(rows.shape[0], dtype=bool)
    if rows.shape[0] < 2:
        return repeated
    order = np.lexsort(rows.T[::-1])
    ranked = rows[order]
    repeated[order[1:]] = np.all(ranked[1:] == ranked[:-1], axis=1)
    return repeated


def _edge_counts(faces: np.ndarray) -> tuple[int, int]:
    """Numbers of boundary edges (in one triangle) and non-manifold edges (in more than two).

    Each undirected edge is packed into one int64, ``low * n + high`` with ``n``
    the number of vertex ids, so a 1-D ``np.unique`` counts them: about 20x
    faster than ``np.unique(axis=0)`` on the pairs (0.6 s at 100 000 points).
    """
    if faces.shape[0] == 0:
        return 0, 0
    first = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]]).astype(np.int64)
    second = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]]).astype(np.int64)
    n = int(first.max()) + 1  # every vertex id is in `first`; n**2 < 2**63 for any mesh that fits in memory
    keys = np.minimum(first, second) * n + np.maximum(first, second)
    _, counts = np.unique(keys, return_counts=True)
    return int(np.count_nonzero(counts == 1)), int(np.count_nonzero(counts > 2))


def _component_labels(n_points: int, faces: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components of the vertex graph (union-find, vectorised by pointer jumping)."""
    parent = np.arange(n_points)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    while True:
        a = parent[edges[:, 0]]
        b = parent[edges[:, 1]]
        lo = np.minimum(a, b)
        changed = False
        if np.any(a != b):
            np.minimum.at(parent, a, lo)
            np.minimum.at(parent, b, lo)
            changed = True
        while True:
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
        if not changed:
            break
    _, labels = np.unique(parent, return_inverse=True)
    return labels, int(labels.max() + 1) if labels.size else 0


def read_transform(path: str | os.PathLike) -> np.ndarray:
    """Read a registration transform as a 4x4 RAS-to-RAS matrix applied to the model.

    Two kinds of file:
      * a text file with a 4x4 (or 3x4) matrix of numbers in RAS, the matrix
        that moves the model into the CT (as Slicer shows it in Transforms);
      * an ITK transform file (``.tfm``, ``.txt`` with ``#Insight Transform
        File``, ``.h5``/``.hdf5``/``.mat``), read with SimpleITK. ITK stores the
        transform from the fixed image to the moving one in LPS
        ("resampling" direction), which is the inverse, in LPS, of the
        transform that moves the model; this is converted as Slicer does
        when it loads such a file.

    Raises:
        InputError: unreadable file, non-linear or non-invertible transform,
            or a transform that is not rigid/affine-with-positive-scale.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"transform file not found: {p}")
    if p.is_dir():
        raise InputError(
            f"the transform path is a folder, not a file: {p}; give a 4x4 matrix text file or an ITK transform (.tfm/.txt/.h5)"
        )
    if p.stat().st_size == 0:
        raise InputError(f"the transform file is empty: {p}")
    suffix = "".join(p.suffixes[-1:]).lower()
    head = b""
    with open(p, "rb") as fh:
        head = fh.read(64)
    is_itk = suffix in (".tfm", ".h5", ".hdf5", ".mat") or head.startswith(b"#Insight Transform File")
    if is_itk:
        matrix = _read_itk_transform(p)
    else:
        matrix = _read_matrix_text(p)
    check_registration_matrix(matrix, f"transform {p}")
    return matrix


_MATRIX_FORMAT = (
    "expected a 4x4 matrix: 4 rows of 4 numbers (RAS, the matrix that moves the model into the CT), separated by spaces, "
    "tabs or commas, e.g. '1 0 0 10' on each line (a 3x4 matrix gets the row 0 0 0 1), or an ITK transform file (.tfm/.txt/.h5)"
)


def _read_matrix_text(p: Path) -> np.ndarray:
    """A 4x4 (or 3x4) matrix from a text file; numbers separated by spaces, tabs, commas or semicolons."""
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (UnicodeDecodeError, OSError):
        raise InputError(f"cannot read {p} as a 4x4 matrix of numbers: {_MATRIX_FORMAT}") from None
    rows = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        items = [v for v in line.replace(",", " ").replace(";", " ").replace("[", " ").replace("]", " ").split()]
        try:
            rows.append([float(v) for v in items])
        except ValueError:
            raise InputError(f"cannot read {p} as a 4x4 matrix of numbers ({line[:60]!r} is not numbers): {_MATRIX_FORMAT}") from None
    if len({len(r) for r in rows}) != 1:
        raise InputError(f"the matrix in {p} has rows of {sorted({len(r) for r in rows})} numbers: {_MATRIX_FORMAT}")
    values = np.array(rows, dtype=float)
    if values.shape == (1, 16):
        values = values.reshape(4, 4)
    if values.shape == (3, 4):
        values = np.vstack([values, [0, 0, 0, 1]])
    if values.shape != (4, 4):
        raise InputError(f"the matrix in {p} has shape {values.shape}: {_MATRIX_FORMAT}")
    return values


def _read_itk_transform(p: Path) -> np.ndarray:
    import SimpleITK as sitk

    try:
        tx = sitk.ReadTransform(str(p))
    except RuntimeError as exc:
        raise InputError(f"cannot read the ITK transform {p}: {str(exc).strip().splitlines()[-1][:200]}") from None
    tx = _flatten_itk(tx, p)
    dim = tx.GetDimension()
    if dim != 3:
        raise InputError(f"the transform in {p} is {dim}D: a 3D transform is needed")
    if not tx.IsLinear():
        raise InputError(
            f"the transform in {p} is a {tx.GetName()}, not a linear transform: "
            "only rigid or affine registrations can be applied to the model here"
        )
    # sitk.AffineTransform(tx) refuses Euler3D, Versor and Similarity transforms (rigid
    # registrations); every linear transform is x -> A x + b, so probe it instead.
    b = np.array(tx.TransformPoint((0.0, 0.0, 0.0)))
    a = np.column_stack([np.array(tx.TransformPoint(tuple(float(v) for v in e))) - b for e in np.eye(3)])
    resampling_lps = np.eye(4)
    resampling_lps[:3, :3] = a
    resampling_lps[:3, 3] = b
    if abs(np.linalg.det(a)) < 1e-12:
        raise InputError(f"the transform in {p} is singular (determinant 0): it cannot be inverted")
    moving_lps = np.linalg.inv(resampling_lps)
    return LPS_TO_RAS @ moving_lps @ LPS_TO_RAS


def _flatten_itk(tx, p: Path):
    import SimpleITK as sitk

    if tx.GetName() == "CompositeTransform":
        comp = sitk.CompositeTransform(tx)
        if comp.GetNumberOfTransforms() != 1:
            raise InputError(f"the transform file {p} holds a composite of {comp.GetNumberOfTransforms()} transforms: save a single linear transform")
        return comp.GetNthTransform(0)
    return tx


#: Largest departure of a rigid matrix's singular values from 1 (0.1 %: a 4-decimal matrix rounds well inside it).
RIGID_TOLERANCE = 1e-3


def check_registration_matrix(matrix: np.ndarray, source: str = "transform") -> None:
    """Refuse a registration matrix that is singular, non-finite, non-affine or that mirrors, scales or shears.

    A femoral-stem registration is rigid: the 3x3 part must be a rotation,
    orthonormal within :data:`RIGID_TOLERANCE` (every singular value within
    0.1 % of 1). A scaled CAD model (units) is a separate mistake, named by
    the model-size checks; a registration must not hide it.
    """
    m = np.asarray(matrix, dtype=float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise InputError(f"the {source} is not a finite 4x4 matrix")
    if not np.allclose(m[3], [0, 0, 0, 1]):
        raise InputError(f"the {source} is not affine (last row must be 0 0 0 1)")
    r = m[:3, :3]
    det = np.linalg.det(r)
    if abs(det) < 1e-9:
        raise InputError(f"the {source} is singular (determinant {det:.3g}): it would flatten the model")
    if det < 0:
        raise InputError(f"the {source} mirrors the model (negative determinant): a registration must be a rotation and translation")
    sv = np.linalg.svd(r, compute_uv=False)
    if np.max(np.abs(sv - 1.0)) > RIGID_TOLERANCE:
        if sv.max() / sv.min() <= 1.0 + RIGID_TOLERANCE:
            what = f"it scales the model by {float(np.mean(sv)):.4g} in every direction"
        else:
            what = f"it shears or scales unevenly: singular values {np.round(sv, 4).tolist()}"
        raise InputError(
            f"the {source} is not rigid ({what}): only rigid transforms (rotation and translation) are accepted; "
            "if the model's units are wrong, re-export it in mm"
        )


def write_polydata(poly: vtk.vtkPolyData, path: str | os.PathLike, space: str = "RAS") -> None:
    """Write a mesh in RAS to VTP (with field data ``SPACE``), STL or VTK with a ``SPACE=`` header.

    ``space="LPS"`` flips x and y first, as Slicer does when it saves in LPS.
    """
    p = Path(path)
    poly_out = poly
    if space == "LPS":
        poly_out = vtk.vtkPolyData()
        poly_out.DeepCopy(poly)
        flip = transform_polydata(poly, LPS_TO_RAS)
        poly_out.SetPoints(flip.GetPoints())
    suffix = p.suffix.lower()
    if suffix == ".vtp":
        copy = vtk.vtkPolyData()
        copy.ShallowCopy(poly_out)
        fd = vtk.vtkFieldData()
        fd.ShallowCopy(poly_out.GetFieldData())
        tag = vtk.vtkStringArray()
        tag.SetName("SPACE")
        tag.InsertNextValue(space)
        fd.RemoveArray("SPACE")
        fd.AddArray(tag)
        copy.SetFieldData(fd)
        w = vtk.vtkXMLPolyDataWriter()
        w.SetDataModeToBinary()
        # zlib as before (every VTK and Slicer reads it), at its fastest level: the
        # default level took 0.8 s for a 100 000-point result, level 1 0.3 s, for a
        # file under 1 % larger.
        w.SetCompressorTypeToZLib()
        w.GetCompressor().SetCompressionLevel(1)
        w.SetInputData(copy)
    elif suffix == ".stl":
        w = vtk.vtkSTLWriter()
        w.SetFileTypeToBinary()
        w.SetHeader(f"SPACE={space}")
        w.SetInputData(poly_out)
    elif suffix == ".vtk":
        w = vtk.vtkPolyDataWriter()
        w.SetHeader(f"SPACE={space}")
        w.SetInputData(poly_out)
    else:
        raise ValueError(f"cannot write mesh format {suffix}")
    w.SetFileName(str(p))
    if not w.Write():
        raise OSError(f"VTK could not write {p}")
