"""Fast uniform remeshing: ACVD clustering with vectorised refinement and mesh construction.

Slicer's Surface Toolbox remesh (``remesh.remesh_acvd``, pyacvd 0.3.1) spends
most of its time outside the clustering: ``create_mesh`` asks a KD-tree for
the 1000 faces nearest to every cluster centroid and ray-traces the centroid
against all of them to put it back on the surface (on the scanned stem, 11 s
of 11.5 s at 10 000 points, 28 s of 30 s at 30 000, minutes at 100 000). And
``k`` uniform 1-to-4 subdivisions multiply every triangle by 4**k, so a
decimated CAD mesh whose few large flat triangles need k = 3 is clustered on
millions of points.

This module keeps what defines the result, ACVD clustering (pyacvd's compiled
``Clustering.cluster``, the same energy and iterations as Surface Toolbox),
and replaces the rest by array operations whose cost is linear in the size
of the refined mesh:

1. Refinement (:func:`refine_to_area`): triangles larger than a third of
   a cluster's area are split 1-to-4, and edges longer than 8 cluster
   spacings in two, their neighbours closed conformingly, until none is;
   only the coarse parts of the surface get new points.
2. Output vertices (:func:`mesh_from_clusters`): the area-weighted centroid
   of each cluster, moved along the cluster's mean normal to the nearest
   point where that line crosses one of the cluster's own triangles
   (Moller-Trumbore on the (cluster, triangle) pairs). A patch folded over a
   sharp edge that the line misses gets its vertex nearest to the centroid.
   Either way every output vertex lies on the input surface.
3. Output triangles: the dual of the cluster adjacency, one triangle per
   input triangle whose three vertices lie in three clusters, duplicates
   removed, wound like the input triangle; then (:func:`close_dual_mesh`)
   the few holes and non-manifold edges that this dual leaves where four
   clusters meet are repaired (ear clipping, wound like the neighbours), so
   a closed input gives a closed, consistently wound output, which pyacvd's
   is not (it turns triangles one by one to face outward).
4. Folds (:func:`unfold_triangles`, :func:`remove_folded_valence3`): dual
   triangles that face against the surface, lying over their neighbours,
   are laid flat by edge flips, or by removing the valence-3 vertex that
   causes them, so the surface is covered once and its area is the input's.
5. Evenness (:func:`delaunay_flips`): two rounds of flips of the edges of
   nearly flat triangle pairs that are not Delaunay, so the mesh is more
   even than pyacvd's (edge-length CV 0.24-0.25 against 0.26-0.28 on the
   scanned stem).
"""

from __future__ import annotations

import warnings

import numpy as np
from vtkmodules.util import numpy_support as ns

from . import vtkclasses as vtk
from .errors import InputError
from .mesh import _edge_counts, polydata_from_arrays
from .mesh import points as mesh_points
from .mesh import triangles as mesh_triangles

#: (cluster, triangle) pairs per block in the ray-triangle step: bounds the temporary memory
#: (about 0.5 kB a pair: 130 MB a block; 4x larger blocks doubled the remesh peak at 100 000 points, no faster).
_PAIR_BLOCK = 1 << 18


#: No refined triangle is larger than 1/TRIANGLES_PER_CLUSTER of a cluster's area. Refinement
#: leaves triangles 1-4 times smaller than that bound, so a cluster gets about 4-5 triangles, i.e.
#: 3-4 vertices, on average (pyacvd's rule of thumb is at least 3). Measured at 100 000 points: 3
#: clusters 30 % fewer refined points than 4 (remesh 4.9-5.5 -> 4.4-4.8 s on the scanned stem, 5.7-6.2
#: -> 3.9-4.8 s on the phantom stem); its less even clusters (scanned stem edge-length CV 0.31 ->
#: 0.34, pyacvd's 0.26) are evened out by the Delaunay flips (0.25). 2-2.5 gave CV 0.94-0.95 on
#: the phantom stem; 6 was 2x slower than 4 for the same zone statistics.
TRIANGLES_PER_CLUSTER = 3

#: No refined edge is longer than MAX_EDGE_SPACINGS cluster spacings (the spacing is
#: sqrt(surface area / points), mm). Measured on the phantom stem, whose decimated mesh has slivers
#: up to 50 mm long, at 30 000 points, with the folds flipped afterwards: without the bound the
#: slivers' strung-out clusters left 50 mm2 of folded triangles (zone 12 of the benchmark 2 points
#: from pyacvd); 8 spacings split the few longest ones (150 more refined points of 147 000) and leave
#: 16 mm2; 4 spacings leave 14 mm2 for 12 % more points; 2 spacings cost 80 % more points, 3x the
#: clustering time.
MAX_EDGE_SPACINGS = 8.0


def _unique_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique undirected edges ``(E, 2)`` and, per face, the ids of its edges v0v1, v1v2, v2v0 ``(F, 3)``."""
    a = faces
    b = np.roll(faces, -1, axis=1)
    lo = np.minimum(a, b)
    hi = np.maximum(a, b)
    n = np.int64(faces.max()) + 1
    uniq, inv = np.unique((lo * n + hi).ravel(), return_inverse=True)
    return np.stack([uniq // n, uniq % n], axis=1), inv.reshape(-1, 3)


_ROTATIONS = np.array([[0, 1, 2], [1, 2, 0], [2, 0, 1]])


def split_edges(pts: np.ndarray, faces: np.ndarray, edges: np.ndarray, face_edges: np.ndarray,
                split: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Split the chosen edges at their midpoints and re-triangulate every touched triangle.

    A triangle with three split edges becomes four (1-to-4, as a subdivision
    step), one with one or two split edges two or three, so the mesh stays
    conforming (no hanging vertex) and keeps its winding.

    Args:
        pts: ``(N, 3)`` vertices (mm).
        faces: ``(F, 3)`` triangles.
        edges, face_edges: from :func:`_unique_edges`.
        split: ``(E,)`` boolean, the edges to split.
    """
    nv = pts.shape[0]
    mid = np.full(edges.shape[0], -1, dtype=np.int64)
    mid[split] = nv + np.arange(int(split.sum()))
    new_pts = np.concatenate([pts, 0.5 * (pts[edges[split, 0]] + pts[edges[split, 1]])])
    fm = mid[face_edges]  # midpoint of edge v0v1, v1v2, v2v0, or -1
    cut = fm >= 0
    count = cut.sum(axis=1)
    out = [faces[count == 0]]
    sel = np.flatnonzero(count == 1)
    if sel.size:  # rotate so that the split edge is v0v1
        r = _ROTATIONS[np.argmax(cut[sel], axis=1)]
        v = np.take_along_axis(faces[sel], r, 1)
        m = np.take_along_axis(fm[sel], r, 1)[:, 0]
        out += [np.stack([v[:, 0], m, v[:, 2]], 1), np.stack([m, v[:, 1], v[:, 2]], 1)]
    sel = np.flatnonzero(count == 2)
    if sel.size:  # rotate so that the edge left whole is v2v0
        r = _ROTATIONS[(np.argmin(cut[sel], axis=1) + 1) % 3]
        v = np.take_along_axis(faces[sel], r, 1)
        m = np.take_along_axis(fm[sel], r, 1)
        out += [np.stack([m[:, 0], v[:, 1], m[:, 1]], 1), np.stack([v[:, 0], m[:, 0], m[:, 1]], 1),
                np.stack([v[:, 0], m[:, 1], v[:, 2]], 1)]
    sel = np.flatnonzero(count == 3)
    if sel.size:
        v, m = faces[sel], fm[sel]
        out += [np.stack([v[:, 0], m[:, 0], m[:, 2]], 1), np.stack([m[:, 0], v[:, 1], m[:, 1]], 1),
                np.stack([m[:, 2], m[:, 1], v[:, 2]], 1), m]
    return new_pts, np.concatenate(out)


def _triangle_areas(pts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a = pts[faces[:, 0]]
    u = pts[faces[:, 1]] - a
    v = pts[faces[:, 2]] - a
    cx = u[:, 1] * v[:, 2] - u[:, 2] * v[:, 1]
    cy = u[:, 2] * v[:, 0] - u[:, 0] * v[:, 2]
    cz = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    return 0.5 * np.sqrt(cx * cx + cy * cy + cz * cz)


def refine_to_area(
    pts: np.ndarray, faces: np.ndarray, max_area_mm2: float, max_edge_mm: float = np.inf, max_passes: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    """Split triangles until none is larger than ``max_area_mm2`` and no edge longer than ``max_edge_mm``.

    Triangles too large are split 1-to-4, edges too long at their midpoint,
    and the neighbours closed conformingly (:func:`split_edges`). Unlike ``k``
    uniform subdivisions, which multiply every triangle by 4**k to shrink the
    largest one, this refines only where triangles are large or long: a
    decimated CAD mesh with a few huge flat triangles and many small curved
    ones gets a few hundred thousand points instead of millions, and every
    ACVD cluster still gets several of them. The edge bound matters for
    slivers (a 50 mm long, 0.5 mm wide triangle is small by area): left long,
    they give clusters strung out along them, whose dual triangles fold over
    each other. Each pass at least halves every triangle or edge it touches,
    so it ends. A pass works only on the triangles that share a vertex with
    one to split (no other triangle can hold a split edge), so the last
    passes, which split a few triangles, are cheap.

    Args:
        pts: ``(N, 3)`` vertices (mm).
        faces: ``(F, 3)`` triangles.
        max_area_mm2: largest triangle area left (mm^2).
        max_edge_mm: longest edge left (mm); no bound by default.
        max_passes: bound on the number of passes.
    """
    pts = np.asarray(pts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    area = _triangle_areas(pts, faces)
    longest = _longest_edges(pts, faces)
    for _ in range(max_passes):
        big = area > max_area_mm2
        too_long = longest > max_edge_mm
        if not (big.any() or too_long.any()):
            break
        touched = np.zeros(pts.shape[0], dtype=bool)
        touched[faces[big | too_long].ravel()] = True
        active = touched[faces].any(axis=1)
        sub = faces[active]
        edges, face_edges = _unique_edges(sub)
        split = np.zeros(edges.shape[0], dtype=bool)
        split[face_edges[big[active]].ravel()] = True
        if too_long.any():
            d = pts[edges[:, 0]] - pts[edges[:, 1]]
            split |= np.einsum("ij,ij->i", d, d) > max_edge_mm * max_edge_mm
        pts, new_faces = split_edges(pts, sub, edges, face_edges, split)
        faces = np.concatenate([faces[~active], new_faces])
        area = np.concatenate([area[~active], _triangle_areas(pts, new_faces)])
        longest = np.concatenate([longest[~active], _longest_edges(pts, new_faces)])
    return pts, faces


def _longest_edges(pts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Length of the longest edge of each triangle (mm)."""
    sq = [np.sum((pts[faces[:, (i + 1) % 3]] - pts[faces[:, i]]) ** 2, axis=1) for i in range(3)]
    return np.sqrt(np.maximum(np.maximum(sq[0], sq[1]), sq[2]))


def _triangulated(poly: vtk.vtkPolyData) -> tuple[np.ndarray, np.ndarray]:
    """Points (mm, float64) and triangles of a surface, polygons and strips split into triangles."""
    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(poly)
    tri.PassVertsOff()
    tri.PassLinesOff()
    tri.Update()
    return mesh_points(tri.GetOutput()).astype(np.float64), mesh_triangles(tri.GetOutput())


def cluster_surface(pts: np.ndarray, faces: np.ndarray, points: int, subdivide: int = 0):
    """ACVD clusters of an adaptively refined copy of the surface.

    The surface is refined (:func:`refine_to_area`) until no triangle is
    larger than 1/``TRIANGLES_PER_CLUSTER`` of a cluster's area, nor larger
    than the largest input triangle / 4**``subdivide`` (what ``subdivide``
    uniform subdivisions would give), and no edge is longer than
    ``MAX_EDGE_SPACINGS`` cluster spacings, then clustered by pyacvd's compiled
    ACVD (``Clustering.cluster``, the same energy and iterations as Surface
    Toolbox).

    Args:
        pts: ``(N, 3)`` vertices (RAS mm).
        faces: ``(F, 3)`` triangles.
        points: number of clusters.
        subdivide: as for ``acvd``: a bound on the size of the refined triangles.

    Returns:
        ``(pts, faces, clusters, weights)``: the refined mesh (mm), the
        cluster of each of its vertices (-1: none) and each vertex's area
        weight (mm^2).
    """
    area = _triangle_areas(pts, faces)
    limit = min(area.sum() / (TRIANGLES_PER_CLUSTER * points), area.max() / 4 ** int(subdivide))
    pts, faces = refine_to_area(pts, faces, limit, MAX_EDGE_SPACINGS * np.sqrt(area.sum() / points))
    if points > pts.shape[0]:
        raise InputError(f"cannot remesh to {points} points: the refined surface has only {pts.shape[0]} points")
    clusters, weights = acvd_clusters(pts, faces, points)
    return pts, faces, clusters, weights


def acvd_clusters(pts: np.ndarray, faces: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """ACVD clustering of a triangle mesh by pyacvd's compiled core: what ``pyacvd.Clustering(mesh).cluster(points)`` gives.

    The calls and arguments are those of ``pyacvd.Clustering`` 0.3.1 (area
    weights and weighted centroids on 2 threads, vertex neighbours, unique
    edges, then ``cluster`` with 100 iterations and 10 tries to remove
    isolated clusters), made on the arrays directly: importing ``pyacvd``
    imports pyvista (about 0.3 s of start-up) only to wrap the mesh. Where
    the compiled core cannot be loaded this way (another pyacvd version),
    ``pyacvd.Clustering`` itself is used.

    Args:
        pts: ``(N, 3)`` vertices (mm).
        faces: ``(F, 3)`` triangles.
        points: number of clusters.

    Returns:
        ``(clusters, weights)``: the cluster of each vertex and each vertex's
        area weight (mm^2: the summed area of its triangles, 1e-10 where 0).
    """
    pts = np.ascontiguousarray(pts, dtype=np.float64)
    faces = np.ascontiguousarray(faces, dtype=np.int64)
    core = _pyacvd_core()
    if core is None:
        return _pyacvd_clustering(pts, faces, points)
    area, weighted_centroids = core.weighted_points(pts, faces, np.empty(0, dtype=np.float64), 2)
    area[area == 0] = 1e-10
    neigh, neigh_off = core.neighbors_from_trimesh(pts.shape[0], faces)
    edges = core.unique_edges(neigh, neigh_off)
    if points > area.size:
        clusters = np.arange(area.size)
    else:
        clusters, _, _ = core.cluster(neigh, neigh_off, points, area, weighted_centroids, edges, 100, 10, False)
    return np.asarray(clusters, dtype=np.int64), np.asarray(area, dtype=np.float64)


def _pyacvd_clustering(pts: np.ndarray, faces: np.ndarray, points: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`acvd_clusters` through ``pyacvd.Clustering`` (imports pyvista)."""
    import pyacvd
    import pyvista as pv

    with warnings.catch_warnings():
        # pyacvd 0.3.1 uses a pyvista attribute that newer pyvista deprecates; harmless here.
        warnings.filterwarnings("ignore", category=Warning, module="pyacvd")
        clus = pyacvd.Clustering(pv.wrap(polydata_from_arrays(pts, faces)))
        clusters = np.asarray(clus.cluster(points), dtype=np.int64)
        weights = np.asarray(clus.area, dtype=np.float64)
    return clusters, weights


#: The pyacvd version whose compiled core :func:`acvd_clusters` calls directly.
PYACVD_CORE_VERSION = "0.3.1"


def _pyacvd_core():
    """pyacvd's compiled ``_clustering`` module, loaded without running ``pyacvd/__init__`` (which imports pyvista).

    ``None`` when pyacvd is not the version whose calls :func:`acvd_clusters`
    repeats, or its core cannot be found: the caller then uses pyacvd itself.
    """
    import sys

    name = "pyacvd._clustering"
    if name in sys.modules:
        return sys.modules[name]
    import importlib.machinery
    import importlib.metadata
    import importlib.util
    from pathlib import Path

    try:
        if importlib.metadata.version("pyacvd") != PYACVD_CORE_VERSION:
            return None
        package = importlib.util.find_spec("pyacvd")
    except (importlib.metadata.PackageNotFoundError, ImportError, ValueError):
        return None
    if package is None or not package.submodule_search_locations:
        return None
    for folder in package.submodule_search_locations:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(folder) / f"_clustering{suffix}"
            if path.is_file():
                spec = importlib.util.spec_from_file_location(name, path)
                if spec is None or spec.loader is None:
                    return None
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules[name] = module  # ``import pyacvd`` later finds and reuses it
                return module
    return None


def mesh_from_clusters(
    pts: np.ndarray, faces: np.ndarray, clusters: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Build the remeshed surface from a clustering of a fine mesh.

    Args:
        pts: ``(N, 3)`` vertices of the fine mesh (mm).
        faces: ``(F, 3)`` its triangles, consistently wound.
        clusters: ``(N,)`` cluster id of each vertex, ``0..C-1`` (-1: none).
        weights: ``(N,)`` area weight of each vertex (mm^2).

    Returns:
        ``(vertices, triangles, normals)`` of the output mesh: one vertex per
        non-empty cluster (on the fine surface, mm), the dual triangles, and
        each vertex's cluster normal (unit, area-weighted mean of the
        cluster's triangle normals; zero for a cluster without triangles).
    """
    pts = np.asarray(pts, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    clusters = np.asarray(clusters, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64).copy()
    w[w <= 0] = 1e-10
    # Renumber so that empty or missing clusters do not leave unused output vertices.
    valid = clusters >= 0
    used, cl = np.unique(clusters[valid], return_inverse=True)
    n_clus = used.size
    lab = np.full(pts.shape[0], -1, dtype=np.int64)
    lab[valid] = cl

    # Columns (one contiguous array per coordinate): 1-D gathers and products are
    # several times faster than the same work on (n, 3) arrays with np.cross.
    xyz = [np.ascontiguousarray(pts[:, d]) for d in range(3)]
    corner = [np.ascontiguousarray(faces[:, c]) for c in range(3)]
    wv = w[valid]
    wsum = np.bincount(cl, weights=wv, minlength=n_clus)
    cent = [np.bincount(cl, weights=wv * xyz[d][valid], minlength=n_clus) / wsum for d in range(3)]

    e1 = [xyz[d][corner[1]] - xyz[d][corner[0]] for d in range(3)]
    e2 = [xyz[d][corner[2]] - xyz[d][corner[0]] for d in range(3)]
    fn = _cross(e1, e2)  # length = twice the area: area-weighted accumulation
    del e1, e2
    cnorm = [np.zeros(n_clus) for _ in range(3)]
    for c in range(3):
        lc = lab[corner[c]]
        ok = lc >= 0
        for d in range(3):
            cnorm[d] += np.bincount(lc[ok], weights=fn[d][ok], minlength=n_clus)
    del fn
    length = np.sqrt(cnorm[0] ** 2 + cnorm[1] ** 2 + cnorm[2] ** 2)
    has_normal = length > 0
    for d in range(3):
        cnorm[d][has_normal] /= length[has_normal]

    out_pts = _project_centroids(xyz, corner, lab, cent, cnorm, has_normal)
    out_faces = _dual_triangles(faces, lab, n_clus)
    return out_pts, out_faces, np.stack(cnorm, axis=1)


def _cross(a: list[np.ndarray], b: list[np.ndarray]) -> list[np.ndarray]:
    return [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]]


def _dot(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _project_centroids(xyz, corner, lab, cent, cnorm, has_normal) -> np.ndarray:
    """Move each centroid along its cluster normal onto the nearest crossing with the cluster's own triangles."""
    n_clus = cent[0].shape[0]
    # (face, cluster) pairs: every cluster that owns at least one vertex of the face.
    l0, l1, l2 = lab[corner[0]], lab[corner[1]], lab[corner[2]]
    pair_face = np.concatenate([np.flatnonzero(l0 >= 0), np.flatnonzero((l1 >= 0) & (l1 != l0)),
                                np.flatnonzero((l2 >= 0) & (l2 != l0) & (l2 != l1))])
    pair_clus = np.concatenate([l0[l0 >= 0], l1[(l1 >= 0) & (l1 != l0)], l2[(l2 >= 0) & (l2 != l0) & (l2 != l1)]])
    del l0, l1, l2
    keep = has_normal[pair_clus]
    pair_face, pair_clus = pair_face[keep], pair_clus[keep]

    best_t = np.full(n_clus, np.inf)
    best_abs = np.full(n_clus, np.inf)
    eps = 1e-9
    for start in range(0, pair_face.size, _PAIR_BLOCK):
        f = pair_face[start : start + _PAIR_BLOCK]
        c = pair_clus[start : start + _PAIR_BLOCK]
        i0, i1, i2 = corner[0][f], corner[1][f], corner[2][f]
        a = [xyz[d][i0] for d in range(3)]
        e1 = [xyz[d][i1] - a[d] for d in range(3)]
        e2 = [xyz[d][i2] - a[d] for d in range(3)]
        direction = [cnorm[d][c] for d in range(3)]
        pvec = _cross(direction, e2)
        det = _dot(e1, pvec)
        ok = np.abs(det) > 1e-15
        inv = np.zeros_like(det)
        inv[ok] = 1.0 / det[ok]
        tvec = [cent[d][c] - a[d] for d in range(3)]
        u = _dot(tvec, pvec) * inv
        qvec = _cross(tvec, e1)
        v = _dot(direction, qvec) * inv
        t = _dot(e2, qvec) * inv
        hit = ok & (u >= -eps) & (v >= -eps) & (u + v <= 1 + eps)
        if not hit.any():
            continue
        c, t = c[hit], t[hit]
        at = np.abs(t)
        # The nearest crossing per cluster: first of each cluster's run after sorting by (cluster, |t|).
        order = np.lexsort((at, c))
        cs = c[order]
        first = order[np.r_[True, cs[1:] != cs[:-1]]]
        cf = c[first]
        better = at[first] < best_abs[cf]
        best_abs[cf[better]] = at[first][better]
        best_t[cf[better]] = t[first][better]
    found = np.isfinite(best_t)
    out = np.stack(cent, axis=1)
    out[found] += np.stack(cnorm, axis=1)[found] * best_t[found, None]
    missing = np.flatnonzero(~found)
    if missing.size:
        out[missing] = _nearest_member(np.stack(xyz, axis=1), lab, out, missing)
    return out


def _nearest_member(pts: np.ndarray, lab: np.ndarray, cent: np.ndarray, which: np.ndarray) -> np.ndarray:
    """For the clusters in ``which``: the cluster's own vertex nearest to its centroid (a point on the surface)."""
    sel = np.flatnonzero(np.isin(lab, which))
    lc = lab[sel]
    d2 = np.einsum("ij,ij->i", pts[sel] - cent[lc], pts[sel] - cent[lc])
    order = np.lexsort((d2, lc))
    first = np.r_[True, lc[order][1:] != lc[order][:-1]]
    best = sel[order[first]]
    out = np.empty((which.size, 3))
    pos = np.searchsorted(which, lab[best])
    out[pos] = pts[best]
    return out


def _dual_triangles(faces: np.ndarray, lab: np.ndarray, n_clus: int) -> np.ndarray:
    fl = lab[faces]
    distinct = (fl[:, 0] != fl[:, 1]) & (fl[:, 1] != fl[:, 2]) & (fl[:, 0] != fl[:, 2]) & np.all(fl >= 0, axis=1)
    tri = fl[distinct]
    if tri.shape[0] == 0:
        return np.zeros((0, 3), dtype=np.int64)
    s = np.sort(tri, axis=1)
    n = np.int64(n_clus)
    key = (s[:, 0] * n + s[:, 1]) * n + s[:, 2]
    _, first = np.unique(key, return_index=True)
    # Keep the winding of the input triangle (not the sorted order): it carries the orientation.
    return tri[np.sort(first)]


def close_dual_mesh(pts: np.ndarray, faces: np.ndarray, max_rounds: int = 6) -> np.ndarray:
    """Make the dual mesh a closed, consistently wound manifold where the clusters tile a closed surface.

    Where four or more clusters meet, or three meet at a vertex of the fine
    mesh rather than inside a triangle, the dual of the cluster adjacency
    gets a small hole or an edge shared by three triangles, one of them
    folded over its neighbours (pyacvd's ``create_mesh`` leaves the same,
    about one edge in 200). Repair: drop the triangles on edges shared by
    more than two; then fill every hole (:func:`_fill_loop`), wound like the
    triangles around it. Where holes meet at a vertex (its border runs
    through it twice), each is filled on its own (:func:`_border_loops`).
    Dropping that vertex's triangles instead grew
    the holes round after round: on the phantom stem at 7278 and 7823
    points a hole of 190-230 border edges was still open after six rounds,
    2 % of the area missing. Returns the new triangles; a vertex left in no
    triangle is removed later by the usual clean-up.
    """
    faces = np.asarray(faces, dtype=np.int64)
    if faces.shape[0] == 0:
        return faces
    n = np.int64(pts.shape[0])
    use, keys = _edge_use(faces, n)
    for _ in range(max_rounds):
        if np.all(use == 2):
            break
        open_edge = use == 1
        # Border half-edges turned round: the triangle filling the hole runs along each one this way.
        start = faces[:, [1, 2, 0]][open_edge]
        end = faces[open_edge]
        bad = (use > 2).any(axis=1)
        if not bad.any():
            # Where triangles around a vertex are wound against each other, more border edges arrive than
            # leave (or the other way round) and no loop can be walked through it: its triangles go too.
            unbalanced = np.bincount(start, minlength=pts.shape[0]) != np.bincount(end, minlength=pts.shape[0])
            bad = unbalanced[faces].any(axis=1) | _islands(faces, use == 1)
        if bad.any():
            faces = faces[~bad]
        elif start.size:
            new = []
            for loop in _border_loops(start, end):
                new += _fill_loop(pts, loop, keys, n)
            faces = np.concatenate([faces, np.asarray(new, dtype=np.int64).reshape(-1, 3)])
        use, keys = _edge_use(faces, n)
    return faces


#: A patch of at most this many triangles that a hole surrounds on every side is dropped, not kept: filled
#: round its own border it would become a closed pillow lying on the surface, its area counted twice (on the
#: scanned stem at 100 000 points, the triangles on edges shared by three left one triangle alone in a hole).
ISLAND_TRIANGLES = 20


def _islands(faces: np.ndarray, open_edge: np.ndarray) -> np.ndarray:
    """Triangles in patches of at most :data:`ISLAND_TRIANGLES` that touch no other triangle: ``(F,)`` bool.

    Searched from each triangle with an open edge (``open_edge``: ``(F, 3)``,
    the edges v0v1, v1v2, v2v0 used by that triangle alone), across the
    edges that two triangles share.
    """
    island = np.zeros(faces.shape[0], dtype=bool)
    border = np.flatnonzero(open_edge.any(axis=1))
    if border.size == 0:
        return island
    _, face_edges = _unique_edges(faces)
    flat = face_edges.ravel()
    order = np.argsort(flat, kind="stable")
    first = np.searchsorted(flat[order], np.arange(flat.max() + 2))
    seen = np.zeros(faces.shape[0], dtype=bool)
    for f in border.tolist():
        if seen[f]:
            continue
        patch, queue = {f}, [f]
        while queue and len(patch) <= ISLAND_TRIANGLES:
            g = queue.pop()
            for e in face_edges[g].tolist():
                for h in (order[first[e] : first[e + 1]] // 3).tolist():
                    if h not in patch:
                        patch.add(h)
                        queue.append(h)
        ids = np.fromiter(patch, dtype=np.int64)
        seen[ids] = True
        if len(patch) <= ISLAND_TRIANGLES:
            island[ids] = True
    return island


def _border_loops(start: np.ndarray, end: np.ndarray) -> list[list[int]]:
    """The holes' borders as simple loops of vertex ids, given the border half-edges ``start -> end`` turned round.

    Where two holes meet at a vertex, two border edges arrive there and two
    leave, and a walk along the border may go on into the other hole. It
    comes back to the vertex when it has gone round that hole: the part
    walked since the vertex is that hole's loop, cut off, and the walk goes
    on with the vertex's other leaving edge.
    """
    leaving: dict[int, list[int]] = {}
    for a, b in zip(start.tolist(), end.tolist()):
        leaving.setdefault(a, []).append(b)
    loops = []
    while leaving:
        loop = [next(iter(leaving))]
        position = {loop[0]: 0}
        while True:
            v = loop[-1]
            w = leaving[v].pop()
            if not leaving[v]:
                del leaving[v]
            if w == loop[0]:
                break
            if w in position:  # round another hole and back: that hole is a loop of its own
                i = position[w]
                loops.append(loop[i:])
                for u in loop[i + 1 :]:
                    del position[u]
                del loop[i + 1 :]
                continue
            position[w] = len(loop)
            loop.append(w)
        loops.append(loop)
    return loops


def _edge_use(faces: np.ndarray, n: np.int64) -> tuple[np.ndarray, np.ndarray]:
    """Triangles using each edge of each triangle ``(F, 3)`` (edges v0v1, v1v2, v2v0), and the sorted keys ``lo * n + hi`` of all edges."""
    edges, face_edges = _unique_edges(faces)
    # _unique_edges orders edges by (lo, hi), so the keys are sorted for any n above every vertex id.
    return np.bincount(face_edges.ravel(), minlength=edges.shape[0])[face_edges], edges[:, 0] * n + edges[:, 1]


def _fill_loop(pts: np.ndarray, loop: list[int], keys: np.ndarray, n: np.int64) -> list[tuple[int, int, int]]:
    """Triangles closing one hole, given as its border loop turned round (so each triangle is wound like its neighbours).

    Ear clipping: the ear cut off each time is the one with the shortest new
    edge that is not an edge of the mesh already (a repeated edge would be
    shared by three triangles); a 4-sided hole gets its shorter diagonal.
    """
    loop = list(loop)
    out = []

    def existing(u: int, v: int) -> bool:
        k = min(u, v) * n + max(u, v)
        i = np.searchsorted(keys, k)
        return bool(i < keys.size and keys[i] == k)

    while len(loop) > 3:
        m = len(loop)
        lengths = [float(np.sum((pts[loop[i - 1]] - pts[loop[(i + 1) % m]]) ** 2)) for i in range(m)]
        order = sorted(range(m), key=lengths.__getitem__)
        best = next((i for i in order if not existing(loop[i - 1], loop[(i + 1) % m])), order[0])
        out.append((loop[best - 1], loop[best], loop[(best + 1) % m]))
        del loop[best]
    if len(loop) == 3:
        out.append((loop[0], loop[1], loop[2]))
    return out


def _facing(pts: np.ndarray, tris: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Twice each triangle's area times the cosine to the sum of its vertices' surface normals: negative when it faces inward."""
    a = pts[tris[:, 0]]
    n = np.cross(pts[tris[:, 1]] - a, pts[tris[:, 2]] - a)
    return np.einsum("ij,ij->i", n, normals[tris[:, 0]] + normals[tris[:, 1]] + normals[tris[:, 2]])


def _edge_pairs(faces: np.ndarray, n: np.int64):
    """The edges used by exactly two triangles, as ``(keys, f1, j1, f2, j2)``.

    ``keys`` are the sorted keys ``lo * n + hi`` of all edges; edge ``j1`` of
    triangle ``f1`` (from corner ``j1`` to ``j1 + 1``) is edge ``j2`` of ``f2``.
    """
    edges, face_edges = _unique_edges(faces)
    use = face_edges.ravel()
    order = np.argsort(use, kind="stable")
    first = np.flatnonzero(np.r_[True, use[order][1:] != use[order][:-1]])
    twice = np.bincount(use, minlength=edges.shape[0])[use[order][first]] == 2
    f1, j1 = np.divmod(order[first[twice]], 3)
    f2, j2 = np.divmod(order[first[twice] + 1], 3)
    # _unique_edges orders edges by (lo, hi), so the keys are sorted for any n above every vertex id.
    return edges[:, 0] * n + edges[:, 1], f1, j1, f2, j2


def _is_edge(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Whether each edge key is among ``sorted_keys``."""
    at = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[at] == keys


def _one_per_triangle(n_faces: int, f1: np.ndarray, f2: np.ndarray, new_key: np.ndarray) -> np.ndarray:
    """Which of the candidate flips (in order of preference) to take: one per triangle, one per new edge."""
    pos = np.arange(f1.size)
    owner = np.full(n_faces, f1.size, dtype=np.int64)
    np.minimum.at(owner, f1, pos)
    np.minimum.at(owner, f2, pos)
    win = np.flatnonzero((owner[f1] == pos) & (owner[f2] == pos))
    return win[np.sort(np.unique(new_key[win], return_index=True)[1])]


def _quads(faces: np.ndarray, f1: np.ndarray, j1: np.ndarray, f2: np.ndarray, j2: np.ndarray):
    """``(a, b, c, d, wound)`` of each edge pair: ``(a, b, c)`` is ``f1`` from its edge ``j1``, ``d`` the corner of ``f2``
    opposite the edge, ``wound`` whether ``f2`` runs along the edge the other way (``b`` to ``a``), as in a consistent mesh."""
    b = faces[f1, (j1 + 1) % 3]
    return faces[f1, j1], b, faces[f1, (j1 + 2) % 3], faces[f2, (j2 + 2) % 3], faces[f2, j2] == b


def _valid_flips(pts, normals, keys, n, a, b, c, d, cand):
    """Of the candidate pairs ``cand``, those whose flip to ``(a, d, c)``, ``(d, b, c)`` is valid.

    Valid: ``c != d``, the new edge ``c-d`` not in the mesh (``keys``, sorted edge keys ``lo * n + hi``),
    so a manifold stays manifold, and both new triangles facing the surface (``normals``).
    Returns ``(cand, t1, t2, new_key)`` for the valid ones.
    """
    cand = cand[c[cand] != d[cand]]
    new_key = np.minimum(c[cand], d[cand]) * n + np.maximum(c[cand], d[cand])
    fresh = ~_is_edge(new_key, keys)
    cand, new_key = cand[fresh], new_key[fresh]
    t1 = np.stack([a[cand], d[cand], c[cand]], axis=1)
    t2 = np.stack([d[cand], b[cand], c[cand]], axis=1)
    facing = (_facing(pts, t1, normals) > 0) & (_facing(pts, t2, normals) > 0)
    return cand[facing], t1[facing], t2[facing], new_key[facing]


def unfold_triangles(pts: np.ndarray, faces: np.ndarray, normals: np.ndarray, max_rounds: int = 8) -> np.ndarray:
    """Flip edges so that triangles folded over their neighbours lie flat again.

    Where three clusters meet awkwardly, the dual triangle of a consistently
    wound mesh can face against the surface: it lies over its neighbours, and
    the surface there counts three times in every area (the phantom stem at
    30 000 points: 630 such triangles, 105 mm2). Both remeshers have them
    (pyacvd turns each triangle to face outward, which hides the fold but
    keeps the extra area). A folded triangle ``(a, b, c)`` and its neighbour
    ``(b, a, d)`` form a quadrilateral whose other diagonal gives ``(a, d, c)``
    and ``(d, b, c)``, which cover it once. Each round takes every such flip
    whose two new triangles face the surface and whose new edge is not in the
    mesh already (so a manifold stays manifold), one flip per triangle; the
    next round looks only around the triangles it changed. Vertices do not
    move. A fold no single flip undoes (about a quarter of them, mostly
    where a cluster is strung out along a sliver of the input) is left.

    Args:
        pts: ``(N, 3)`` vertices (mm).
        faces: ``(F, 3)`` consistently wound triangles.
        normals: ``(N, 3)`` the surface normal at each vertex (here the
            cluster normals), giving the side a triangle should face.
        max_rounds: bound on the rounds of flips.

    Returns:
        The triangles: as many as before, on the same vertices.
    """
    faces = np.array(faces, dtype=np.int64, copy=True)
    if faces.shape[0] == 0:
        return faces
    n = np.int64(pts.shape[0])
    look = _facing(pts, faces, normals) <= 0
    if not look.any():
        return faces
    for _ in range(max_rounds):
        # The triangles around the ones to look at (s1), and every triangle touching a vertex of those
        # (region). An edge c-d that a flip could make has c or d in a triangle of s1, so if it is in the
        # mesh it is in the region.
        near = np.zeros(pts.shape[0], dtype=bool)
        near[faces[look].ravel()] = True
        s1 = near[faces].any(axis=1)
        near[faces[s1].ravel()] = True
        region = np.flatnonzero(near[faces].any(axis=1))
        sub = faces[region]
        folded = _facing(pts, sub, normals) <= 0
        if not folded.any():
            break
        keys, f1, j1, f2, j2 = _edge_pairs(sub, n)
        pick = (folded[f1] | folded[f2]) & (s1[region][f1] | s1[region][f2])
        f1, j1, f2, j2 = f1[pick], j1[pick], f2[pick], j2[pick]
        a, b, c, d, wound = _quads(sub, f1, j1, f2, j2)
        cand, t1, t2, new_key = _valid_flips(pts, normals, keys, n, a, b, c, d, np.flatnonzero(wound))
        if cand.size == 0:
            break
        win = _one_per_triangle(sub.shape[0], f1[cand], f2[cand], new_key)
        changed = np.concatenate([region[f1[cand[win]]], region[f2[cand[win]]]])
        faces[region[f1[cand[win]]]] = t1[win]
        faces[region[f2[cand[win]]]] = t2[win]
        look = np.zeros(faces.shape[0], dtype=bool)
        look[changed] = True
    return faces


#: Largest angle (degrees) between two neighbouring triangles whose shared edge may be flipped to
#: make the pair Delaunay: flipping across a sharper crease would cut the corner of the surface.
MAX_FLIP_DIHEDRAL_DEG = 18.0

#: Rounds of Delaunay flips after the fold repair (:func:`delaunay_flips`).
DELAUNAY_ROUNDS = 2


def delaunay_flips(
    pts: np.ndarray, faces: np.ndarray, normals: np.ndarray, rounds: int = DELAUNAY_ROUNDS,
    max_dihedral_deg: float = MAX_FLIP_DIHEDRAL_DEG,
) -> np.ndarray:
    """Flip the edges of nearly flat triangle pairs that are not Delaunay, for a more even mesh.

    The dual of ACVD clusters joins every three clusters that meet, so where
    clusters are not round it has long thin triangles whose other diagonal
    would be shorter. An edge shared by ``(a, b, c)`` and ``(b, a, d)`` is
    flipped to ``c-d`` when the angles at ``c`` and ``d`` add up to more than
    180 degrees (the Delaunay condition: the flip makes the smallest angle
    larger), the two triangles meet at no more than ``max_dihedral_deg``, both
    new triangles face the surface and ``c-d`` is not an edge already. Each
    round takes the non-conflicting flips, the worst pairs first. Measured on
    the scanned stem at 30 000 points: edge-length CV 0.33 -> 0.26 after one
    round, 0.24 after two (pyacvd's mesh: 0.28); 0.1-0.3 s a round at 100 000
    points. Vertices do not move.

    Args:
        pts: ``(N, 3)`` vertices (mm).
        faces: ``(F, 3)`` consistently wound triangles.
        normals: ``(N, 3)`` the surface normal at each vertex.
        rounds: rounds of flips.
        max_dihedral_deg: largest angle between the two triangles (degrees).

    Returns:
        The triangles: as many as before, on the same vertices.
    """
    faces = np.array(faces, dtype=np.int64, copy=True)
    if faces.shape[0] == 0:
        return faces
    n = np.int64(pts.shape[0])
    min_cos = np.cos(np.radians(max_dihedral_deg))
    for _ in range(rounds):
        keys, f1, j1, f2, j2 = _edge_pairs(faces, n)
        a, b, c, d, wound = _quads(faces, f1, j1, f2, j2)
        # cot(angle at c) + cot(angle at d) < 0  <=>  the two angles add up to more than 180 degrees.
        ca, cb, da, db = pts[a] - pts[c], pts[b] - pts[c], pts[a] - pts[d], pts[b] - pts[d]
        nc, nd = np.cross(ca, cb), np.cross(db, da)
        lc, ld = np.linalg.norm(nc, axis=1), np.linalg.norm(nd, axis=1)
        cot_sum = np.einsum("ij,ij->i", ca, cb) / np.maximum(lc, 1e-300) + np.einsum("ij,ij->i", da, db) / np.maximum(ld, 1e-300)
        flat = np.einsum("ij,ij->i", nc, nd) >= min_cos * lc * ld
        cand, t1, t2, new_key = _valid_flips(pts, normals, keys, n, a, b, c, d,
                                             np.flatnonzero((cot_sum < -1e-9) & wound & flat))
        if cand.size == 0:
            break
        worst = np.argsort(cot_sum[cand], kind="stable")
        cand, t1, t2, new_key = cand[worst], t1[worst], t2[worst], new_key[worst]
        win = _one_per_triangle(faces.shape[0], f1[cand], f2[cand], new_key)
        faces[f1[cand[win]]] = t1[win]
        faces[f2[cand[win]]] = t2[win]
    return faces


def remove_folded_valence3(pts: np.ndarray, faces: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Replace each vertex of valence 3 that sits in a folded triangle, and its 3 triangles, by one triangle.

    A vertex in only three triangles that has been placed outside the
    triangle of its three neighbours folds one of its triangles over the
    others; where it lies beyond the neighbouring triangle as well, no edge
    flip undoes that (:func:`unfold_triangles` leaves it). Without the
    vertex, its neighbours' triangle covers the same patch once. Done only where that triangle faces the surface and is
    not in the mesh already, and for vertices that share no triangle. The
    vertex is left in no triangle (removed by the usual clean-up).

    Args:
        pts: ``(N, 3)`` vertices (mm).
        faces: ``(F, 3)`` consistently wound triangles.
        normals: ``(N, 3)`` the surface normal at each vertex.
    """
    faces = np.asarray(faces, dtype=np.int64)
    folded = _facing(pts, faces, normals) <= 0
    valence = np.bincount(faces.ravel(), minlength=pts.shape[0])
    is_cand = np.zeros(pts.shape[0], dtype=bool)
    is_cand[faces[folded].ravel()] = True
    is_cand &= valence == 3
    f, j = np.nonzero(is_cand[faces])
    if f.size == 0:
        return faces
    v = faces[f, j]
    order = np.argsort(v, kind="stable")
    f, j, v = f[order].reshape(-1, 3), j[order].reshape(-1, 3), v[order].reshape(-1, 3)[:, 0]
    # The ring of each vertex, as the edges x -> y of its three triangles (x, y following it in each).
    x = faces[f, (j + 1) % 3]
    y = faces[f, (j + 2) % 3]
    rows = np.arange(v.size)
    k = np.argmax(x == y[:, [0]], axis=1)  # the edge that starts where the first one ends
    third = 3 - k
    ok = (k > 0) & (x[rows, k] == y[:, 0]) & (x[rows, third] == y[rows, k]) & (y[rows, third] == x[:, 0])
    tri = np.stack([x[:, 0], y[:, 0], y[rows, k]], axis=1)
    # A triangle of two candidates would be replaced twice: only candidates that share none.
    ok &= (np.bincount(f.ravel(), minlength=faces.shape[0])[f] == 1).all(axis=1)
    n = np.int64(pts.shape[0])
    ring = np.zeros(pts.shape[0], dtype=bool)
    ring[tri[:, 0]] = True
    s = np.sort(faces[ring[faces].any(axis=1)], axis=1)  # every triangle that could equal a new one
    existing = (s[:, 0] * n + s[:, 1]) * n + s[:, 2]
    st = np.sort(tri, axis=1)
    ok &= ~np.isin((st[:, 0] * n + st[:, 1]) * n + st[:, 2], existing)
    ok &= _facing(pts, tri, normals) > 0
    if not ok.any():
        return faces
    drop = np.zeros(faces.shape[0], dtype=bool)
    drop[f[ok].ravel()] = True
    return np.concatenate([faces[~drop], tri[ok]])


def remesh_fast(poly: vtk.vtkPolyData, points: int = 10000, subdivide: int = 0) -> vtk.vtkPolyData:
    """Uniformly remesh a surface: ACVD clusters as Surface Toolbox, vectorised mesh construction.

    Args:
        poly: triangle mesh (RAS mm).
        points: number of clusters, i.e. points of the output mesh.
        subdivide: number of 1-to-4 subdivisions before clustering (as for ``acvd``).

    Returns:
        The remeshed surface (RAS mm); every vertex lies on the input surface.

    Raises:
        InputError: fewer than 4 requested points, a subdivision outside
            0..6, or more clusters than the subdivided input has points.
    """
    if points < 4:
        raise InputError(f"--points must be at least 4, got {points}")
    if subdivide < 0 or subdivide > 6:
        raise InputError(f"--subdivide must be between 0 and 6, got {subdivide}")
    pts, faces = _triangulated(poly)
    # Refinement is conforming, so the refined mesh is closed exactly when the input is: test the
    # small input (0.4 s saved on the 450 000-point refined mesh at 100 000 clusters).
    closed = _edge_counts(faces) == (0, 0)
    pts, faces, clusters, weights = cluster_surface(pts, faces, points, subdivide)
    out_pts, out_faces, out_normals = mesh_from_clusters(pts, faces, clusters, weights)
    if closed:
        out_faces = close_dual_mesh(out_pts, out_faces)
    out_faces = unfold_triangles(out_pts, out_faces, out_normals)
    out_faces = unfold_triangles(out_pts, remove_folded_valence3(out_pts, out_faces, out_normals), out_normals)
    out_faces = delaunay_flips(out_pts, out_faces, out_normals)
    return polydata_from_arrays(out_pts, out_faces)


def edge_length_cv(poly_or_pts, faces: np.ndarray | None = None) -> float:
    """Coefficient of variation (std / mean) of the edge lengths of a triangle mesh: 0 for a perfectly even mesh."""
    if faces is None:
        pts = ns.vtk_to_numpy(poly_or_pts.GetPoints().GetData()).astype(float)
        faces = mesh_triangles(poly_or_pts)
    else:
        pts = np.asarray(poly_or_pts, dtype=float)
    e, _ = _unique_edges(np.asarray(faces))
    lengths = np.linalg.norm(pts[e[:, 0]] - pts[e[:, 1]], axis=1)
    return float(lengths.std() / lengths.mean())
