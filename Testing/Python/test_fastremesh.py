"""The fast remesh: same answer as Surface Toolbox's pyacvd remesh, an even mesh on the input surface.

The reference is the ``acvd`` path (pyacvd 0.3.1 as Surface Toolbox calls
it) at 30 000 points. Both remeshed surfaces are analysed with one frame (the
one estimated on the pyacvd surface, passed to both as parameters), so the
comparison shows the remeshing, not the noise of two frame estimates.
"""

from __future__ import annotations

import numpy as np
import pytest
import vtk
from ibc_helpers import (
    frame_parameters,
    probe_in_ijk,
    scanned_stem_in_phantom,
    shared_file,
    sphere_arrays,
    surface_toolbox_remesh,
)
from ImplantBoneContactLib import AnalysisParameters, analyze
from ImplantBoneContactLib.fastremesh import (
    close_dual_mesh,
    delaunay_flips,
    edge_length_cv,
    mesh_from_clusters,
    refine_to_area,
    remesh_fast,
    remove_folded_valence3,
    unfold_triangles,
)
from ImplantBoneContactLib.mesh import (
    _edge_counts,
    points,
    polydata_from_arrays,
    read_model,
    signed_volume,
    transform_polydata,
    triangle_areas,
    triangles,
)
from ImplantBoneContactLib.remesh import remesh, remesh_acvd
from ImplantBoneContactLib.sampling import sample

POINTS = 30000
SUBDIVIDE = {"phantom": 3, "scan": 4}  # the same for both methods: what auto_subdivide picks at 30 000 points


def _zone_tables(volume, surfaces: dict, frame_from):
    """Zone tables of several surfaces, all with the frame estimated on ``surfaces[frame_from]``."""
    ref = analyze(volume, surfaces[frame_from], AnalysisParameters(remesh="none"))
    pinned = AnalysisParameters(remesh="none", side=ref.frame.side, **frame_parameters(ref.frame))
    return {name: analyze(volume, s, pinned).zones for name, s in surfaces.items()}


def _differences(a, b, rows) -> tuple[float, float]:
    """Largest class-fraction difference (percentage points) and relative mean-HU difference (%) over ``rows``."""
    frac = [c for c in a.columns if c.startswith("frac_")]
    dfrac = np.abs(a.loc[rows, frac].to_numpy() - b.loc[rows, frac].to_numpy()) * 100
    ma, mb = a.loc[rows, "hu_mean"].to_numpy(), b.loc[rows, "hu_mean"].to_numpy()
    return float(np.nanmax(dfrac)), float(np.nanmax(np.abs(ma - mb) / np.abs(mb)) * 100)


def _compared_zones(table):
    """Zones holding at least 1% of the sampled area (smaller ones are a handful of vertices)."""
    total = table["area_sampled_mm2"].iloc[-1]
    rows = (table["area_sampled_mm2"] >= 0.01 * total).to_numpy()
    assert rows.sum() >= 10, "too few zones to compare: the frame or the placement is off"
    return rows


def _converged(stem) -> vtk.vtkPolyData:
    """The stem itself, refined to 0.01 mm^2 triangles (about 1.5 million points): the answer a fine enough mesh converges to."""
    p, f = refine_to_area(points(stem).astype(float), triangles(stem), 0.01)
    return polydata_from_arrays(p, f)


def _same_way_half_edges(faces: np.ndarray) -> int:
    """Directed edges used by more than one triangle: 0 when neighbours are wound consistently."""
    half = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]).astype(np.int64)
    _, count = np.unique(half[:, 0] * (faces.max() + 1) + half[:, 1], return_counts=True)
    return int((count > 1).sum())


def _max_distance_to(surface: vtk.vtkPolyData, pts: np.ndarray) -> float:
    """Largest distance (mm) from the points to the surface (VTK's implicit distance)."""
    dist = vtk.vtkImplicitPolyDataDistance()
    dist.SetInput(surface)
    return float(max(abs(dist.EvaluateFunction(p)) for p in pts))


@pytest.fixture(scope="module")
def phantom_pair(phantom_stem):
    k = SUBDIVIDE["phantom"]
    return remesh(phantom_stem, "acvd", POINTS, k), remesh(phantom_stem, "fast", POINTS, k)


@pytest.fixture(scope="module")
def scanned_stem(phantom):
    poly, _ = read_model(shared_file("hip_implant_surface_scan.stl"))
    return transform_polydata(poly, scanned_stem_in_phantom(phantom))


@pytest.fixture(scope="module")
def scan_pair(scanned_stem):
    k = SUBDIVIDE["scan"]
    return remesh(scanned_stem, "acvd", POINTS, k), remesh(scanned_stem, "fast", POINTS, k)


@pytest.mark.parametrize("which", ["scan", "phantom"])
def test_zone_statistics_match_pyacvd(which, phantom_ct, request):
    """Per zone, class fractions within 1 point and mean HU within 1% of pyacvd's: the real CAD stem in the
    phantom's canal, and the decimated phantom stem with its long sliver triangles. On the phantom stem summing
    vertex areas instead of integrating over the triangles misses this (1.3 points): the criterion needs
    statistics of the surface, not of the vertices."""
    acvd, fast = request.getfixturevalue(f"{which}_pair")
    t = _zone_tables(phantom_ct, {"acvd": acvd, "fast": fast}, "acvd")
    rows = _compared_zones(t["acvd"])
    dfrac, dmean = _differences(t["fast"], t["acvd"], rows)
    assert dfrac <= 1.0, f"class fractions differ by up to {dfrac:.2f} percentage points"
    assert dmean <= 1.0, f"mean HU differs by up to {dmean:.2f}%"


def test_phantom_zone_statistics_as_close_to_the_converged_answer_as_pyacvd(phantom_ct, phantom_stem, phantom_pair):
    """pyacvd's own mesh of the phantom stem is uneven (edge-length CV about 1), so both are also compared with the
    answer on the stem refined to 0.01 mm^2 (1.5 million points): at 30 000 points (0.8 mm apart) on a 1 mm CT
    both are within 2 points / 2% of it (measured: pyacvd 0.33 points / 0.81%, fast 0.54 points / 1.30%), the fast
    mesh within half a point / half a percent of pyacvd's distance."""
    acvd, fast = phantom_pair
    t = _zone_tables(phantom_ct, {"acvd": acvd, "fast": fast, "converged": _converged(phantom_stem)}, "acvd")
    rows = _compared_zones(t["converged"])
    fast_frac, fast_mean = _differences(t["fast"], t["converged"], rows)
    acvd_frac, acvd_mean = _differences(t["acvd"], t["converged"], rows)
    assert fast_frac <= acvd_frac + 0.5, (fast_frac, acvd_frac)
    assert fast_mean <= acvd_mean + 0.5, (fast_mean, acvd_mean)
    assert max(fast_frac, acvd_frac) <= 2.0 and max(fast_mean, acvd_mean) <= 2.0, (fast_frac, acvd_frac, fast_mean, acvd_mean)


@pytest.mark.parametrize("which", ["phantom", "scan"])
def test_fast_mesh_is_even_closed_and_on_the_surface(which, request):
    source = request.getfixturevalue("phantom_stem" if which == "phantom" else "scanned_stem")
    acvd, fast = request.getfixturevalue(f"{which}_pair")
    # Closing the dual drops a few vertices that end up in no triangle (pinched spots), never more than 2%.
    assert 0.98 * POINTS <= fast.GetNumberOfPoints() <= POINTS
    fpts, ffaces = points(fast), triangles(fast)
    apts, afaces = points(acvd), triangles(acvd)
    # Even: edge-length spread smaller than pyacvd's on the same surface (measured at 30 000 points in the
    # benchmark's placement: scanned stem 0.24 against 0.28, phantom stem 0.66 against 1.05).
    cv_fast, cv_acvd = edge_length_cv(fpts, ffaces), edge_length_cv(apts, afaces)
    assert cv_fast < cv_acvd, (cv_fast, cv_acvd)
    # Closed input: no non-manifold edge, and at most a fifth of the open edges that pyacvd's mesh has.
    assert _edge_counts(triangles(source)) == (0, 0)
    b_fast, nm_fast = _edge_counts(ffaces)
    b_acvd, nm_acvd = _edge_counts(afaces)
    assert nm_fast == 0
    assert b_fast <= 0.2 * (b_acvd + nm_acvd), ((b_fast, nm_fast), (b_acvd, nm_acvd))
    # Wound consistently, outward like the input (pyacvd's mesh is not: it flips triangles one by one).
    assert _same_way_half_edges(ffaces) == 0
    assert signed_volume(fpts, ffaces) > 0
    # Same area: the surface is covered once, neither shrunk nor folded over itself. pyacvd's folds, turned to
    # face outward, add area (+0.65% on the phantom stem); the fast mesh's are flipped flat.
    area_src = triangle_areas(points(source), triangles(source)).sum()
    area_fast = triangle_areas(fpts, ffaces).sum()
    assert abs(area_fast - area_src) <= 0.004 * area_src, (area_fast, area_src)
    # On the input surface: every sampled vertex, not just on average.
    rng = np.random.default_rng(0)
    subset = fpts[rng.choice(fpts.shape[0], 3000, replace=False)]
    assert _max_distance_to(source, subset) < 1e-6


def test_refinement_is_conforming_and_keeps_the_surface():
    """Adaptive refinement: no triangle over the limit, no hanging vertex (closed stays closed), same area and winding."""
    pts, faces = sphere_arrays(10.0, resolution=12, phi_resolution=6)
    # One very large triangle region: stretch one pole so that sizes differ a lot.
    pts[pts[:, 2] > 9, 2] *= 4
    limit = 0.5
    p2, f2 = refine_to_area(pts, faces, limit)
    assert triangle_areas(p2, f2).max() <= limit
    # With an edge bound as well, the long thin triangles near the stretched pole are cut short too.
    p3, f3 = refine_to_area(pts, faces, limit, max_edge_mm=1.5)
    assert triangle_areas(p3, f3).max() <= limit and np.linalg.norm(p3[f3] - p3[np.roll(f3, 1, axis=1)], axis=2).max() <= 1.5
    assert np.linalg.norm(p2[f2] - p2[np.roll(f2, 1, axis=1)], axis=2).max() > 1.5
    assert triangle_areas(p3, f3).sum() == pytest.approx(triangle_areas(pts, faces).sum(), rel=1e-12)
    assert _edge_counts(f3) == (0, 0) and signed_volume(p3, f3) == pytest.approx(signed_volume(pts, faces), rel=1e-12)
    assert triangle_areas(p2, f2).sum() == pytest.approx(triangle_areas(pts, faces).sum(), rel=1e-12)
    assert _edge_counts(f2) == (0, 0)
    # Winding kept: the signed volume is unchanged.
    assert signed_volume(p2, f2) == pytest.approx(signed_volume(pts, faces), rel=1e-12)
    # Fewer points than uniform subdivision would need for the same largest triangle.
    k = int(np.ceil(np.log(triangle_areas(pts, faces).max() / limit) / np.log(4)))
    assert p2.shape[0] < 0.5 * (faces.shape[0] * 4**k) / 2


def test_mesh_from_clusters_on_a_known_partition():
    """Four clusters around the corners of a refined regular tetrahedron give back a tetrahedron, outward, on the surface."""
    tet = 5.0 * np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=float)
    faces = np.array([[0, 1, 2], [0, 3, 1], [0, 2, 3], [1, 3, 2]])  # outward
    pts, f = refine_to_area(tet, faces, 0.05)
    # A vertex belongs to the cluster of the nearest seed; seeds near the corners, in general position.
    seeds = tet + np.array([[0.31, 0.17, 0.23], [-0.41, 0.29, 0.11], [0.13, -0.37, 0.19], [0.07, 0.21, -0.33]])
    clusters = np.argmin(np.linalg.norm(pts[:, None, :] - seeds[None, :, :], axis=2), axis=1)
    vp, vf, _ = mesh_from_clusters(pts, f, clusters, np.ones(pts.shape[0]))
    assert vp.shape == (4, 3)
    assert vf.shape[0] == 4 and _edge_counts(vf) == (0, 0)
    assert signed_volume(vp, vf) > 0, "the output triangles must keep the input's outward winding"
    # Each output vertex is near its corner (the cluster's centroid projected onto the surface) and on the surface.
    assert np.all(np.linalg.norm(vp - tet, axis=1) < 0.5 * np.linalg.norm(tet[0] - tet[1]))
    dist = vtk.vtkImplicitPolyDataDistance()
    dist.SetInput(polydata_from_arrays(tet, faces))
    assert max(abs(dist.EvaluateFunction(p)) for p in vp) < 1e-9


def test_close_dual_mesh_fills_holes_and_folds_wound_like_their_neighbours():
    """Holes of 3, 4 and 7 sides and a triangle folded onto an edge (shared by three) are closed, wound outward."""
    pts, faces = sphere_arrays(10.0, resolution=24, phi_resolution=12)
    assert _edge_counts(faces) == (0, 0) and signed_volume(pts, faces) > 0
    # Holes: one triangle, two neighbours (a quad), and a vertex's whole fan (its ring of 6 + itself dropped).
    centre_vertex = 100
    fan = np.flatnonzero((faces == centre_vertex).any(axis=1))
    drop = np.zeros(faces.shape[0], dtype=bool)
    drop[[10, 40, 41]] = True
    drop[fan] = True
    holed = faces[~drop]
    assert _edge_counts(holed)[0] > 0
    # A fold: a third triangle on an existing edge, pointing the wrong way.
    a, b = holed[200, 0], holed[200, 1]
    other = holed[300, 2]
    broken = np.concatenate([holed, [[a, b, other]]])
    assert _edge_counts(broken)[1] > 0
    closed = close_dual_mesh(pts, broken)
    assert _edge_counts(closed) == (0, 0)
    assert _same_way_half_edges(closed) == 0
    # Outward and nearly the sphere's volume: the repair neither turned a patch inside out nor left a flap.
    assert signed_volume(pts, closed) == pytest.approx(signed_volume(pts, faces), rel=0.02)


def _fan_in_turn(faces: np.ndarray, v: int) -> list[int]:
    """The triangles around vertex ``v`` of a closed mesh, in the order of the winding."""
    fan = np.flatnonzero((faces == v).any(axis=1))
    rotated = {int(f): np.roll(faces[f], -int(np.flatnonzero(faces[f] == v)[0])) for f in fan}
    order = [int(fan[0])]
    while len(order) < len(fan):
        after = rotated[order[-1]][2]  # (v, a, b): the next triangle is (v, b, c)
        order.append(next(f for f, t in rotated.items() if t[1] == after))
    return order


def _oriented(faces: np.ndarray) -> set:
    """Triangles as a set of vertex triples, each rotated to start at its smallest id (the winding is kept)."""
    return {tuple(np.roll(t, -int(np.argmin(t)))) for t in faces.tolist()}


def test_close_dual_mesh_fills_two_holes_that_meet_at_a_vertex_and_keeps_the_vertex():
    """Two triangles of one vertex's fan, not neighbours, removed: two holes meet at the vertex. Each is a
    triangle's hole, so the repair must put exactly the two triangles back, wound as before. (Dropping the
    vertex's whole fan instead, as once done, made the hole grow round after round on the phantom stem.)"""
    pts, faces = sphere_arrays(10.0, resolution=24, phi_resolution=12)
    v = 100
    fan = _fan_in_turn(faces, v)
    assert len(fan) == 6
    holed = np.delete(faces, [fan[0], fan[3]], axis=0)
    closed = close_dual_mesh(pts, holed)
    assert _oriented(closed) == _oriented(faces)


def test_close_dual_mesh_fills_each_of_two_four_sided_holes_on_its_own_side_of_the_vertex():
    """Two pairs of neighbouring triangles of one fan removed: two four-sided holes meet at the vertex. Each
    is closed inside itself by its shorter diagonal, here the removed pair's shared edge: the repair must put
    the four triangles back as they were. A border traced across the vertex into the other hole would join
    the two holes into one and fill it with triangles that do not lie in either."""
    pts, faces = sphere_arrays(10.0, resolution=24, phi_resolution=12)
    v = 100
    fan = _fan_in_turn(faces, v)
    for first, second in ((fan[0], fan[1]), (fan[3], fan[4])):
        (_, a, b), (_, b2, c) = (np.roll(faces[f], -int(np.flatnonzero(faces[f] == v)[0])) for f in (first, second))
        assert b == b2 and np.linalg.norm(pts[v] - pts[b]) < np.linalg.norm(pts[a] - pts[c])
    holed = np.delete(faces, [fan[0], fan[1], fan[3], fan[4]], axis=0)
    closed = close_dual_mesh(pts, holed)
    assert _oriented(closed) == _oriented(faces)


def test_close_dual_mesh_drops_a_patch_that_a_hole_surrounds_instead_of_closing_it_on_itself():
    """A vertex's fan of six triangles left alone inside a hole (every other triangle touching its ring
    removed): filled round its own border it would be a closed pillow lying on the surface. The repair must
    give one closed surface whose area is the sphere's, without the fan's centre vertex."""
    pts, faces = sphere_arrays(10.0, resolution=24, phi_resolution=12)
    v = 100
    fan = _fan_in_turn(faces, v)
    ring = np.setdiff1d(np.unique(faces[fan]), [v])
    around = np.flatnonzero(np.isin(faces, ring).any(axis=1))
    holed = np.delete(faces, np.setdiff1d(around, fan), axis=0)
    closed = close_dual_mesh(pts, holed)
    assert _edge_counts(closed) == (0, 0) and _same_way_half_edges(closed) == 0
    assert not np.isin(v, closed)
    connectivity = vtk.vtkPolyDataConnectivityFilter()
    connectivity.SetInputData(polydata_from_arrays(pts, closed))
    connectivity.SetExtractionModeToAllRegions()
    connectivity.Update()
    assert connectivity.GetNumberOfExtractedRegions() == 1
    # The hole, two rings of triangles round v, is filled by a patch cutting across the sphere's curvature.
    sphere_area = triangle_areas(pts, faces).sum()
    assert triangle_areas(pts, closed).sum() == pytest.approx(sphere_area, rel=0.01)


def test_fast_remesh_of_the_phantom_stem_is_closed_where_holes_once_grew(phantom_stem):
    """At 7278 and 7823 points (subdivide 2, the surface as ``analyze`` prepares it) the repair of the
    dual mesh once left a hole of about 200 border edges and 2 % of the area. The phantom stem is closed,
    so the remesh must be closed, and its area within 0.4 % of the input's (at 9 other point counts of
    3000-8000: -0.32 to -0.06 %; the remesh cuts corners across the stem's curved surface)."""
    from ImplantBoneContactLib.mesh import prepare_surface

    stem = prepare_surface(phantom_stem, "phantom stem")
    area = triangle_areas(points(stem), triangles(stem)).sum()
    for n in (7278, 7823):
        out = remesh_fast(stem, n, subdivide=2)
        assert _edge_counts(triangles(out)) == (0, 0)
        assert triangle_areas(points(out), triangles(out)).sum() == pytest.approx(area, rel=0.004)


def _grid(n: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A flat n x n lattice (1 mm apart, z = 0) cut into triangles facing +z."""
    ij = np.stack(np.meshgrid(np.arange(n), np.arange(n), indexing="ij"), axis=-1).reshape(-1, 2)
    pts = np.column_stack([ij.astype(float), np.zeros(len(ij))])
    v = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]).ravel()
    faces = np.concatenate([np.stack([v, v + n, v + n + 1], 1), np.stack([v, v + n + 1, v + 1], 1)])
    return pts, faces


def _folded(pts, faces) -> np.ndarray:
    """Triangles of a flat mesh that face -z."""
    n = np.cross(pts[faces[:, 1]] - pts[faces[:, 0]], pts[faces[:, 2]] - pts[faces[:, 0]])
    return n[:, 2] <= 0


def test_unfold_triangles_lays_a_folded_triangle_flat():
    """A vertex moved across its ring into the next triangle folds a triangle over it; one flip covers the square once."""
    pts, faces = _grid()
    up = np.tile([0.0, 0.0, 1.0], (pts.shape[0], 1))
    assert triangle_areas(pts, faces).sum() == pytest.approx(36.0) and not _folded(pts, faces).any()
    v = 3 * 7 + 3  # an inner vertex
    f = np.flatnonzero((faces == v).any(axis=1))[0]
    i = int(np.flatnonzero(faces[f] == v)[0])
    p, q = faces[f, (i + 1) % 3], faces[f, (i + 2) % 3]  # the edge opposite v, wound p -> q in this triangle
    across = np.flatnonzero((faces == p).any(axis=1) & (faces == q).any(axis=1) & ~(faces == v).any(axis=1))[0]
    r = int(np.setdiff1d(faces[across], [p, q])[0])
    pts[v] = (pts[p] + pts[q] + pts[r]) / 3  # into the neighbouring triangle, beyond the edge p-q
    assert _folded(pts, faces).sum() == 1 and triangle_areas(pts, faces).sum() > 36.1
    out = unfold_triangles(pts, faces, up)
    assert not _folded(pts, out).any()
    assert triangle_areas(pts, out).sum() == pytest.approx(36.0, rel=1e-12)  # the square, covered once
    assert out.shape == faces.shape and _same_way_half_edges(out) == 0


def test_a_folded_valence_3_vertex_no_flip_can_undo_is_removed():
    """A vertex inside a triangle (3 triangles round it) moved out past the neighbour beyond: its neighbours' triangle replaces it."""
    pts, faces = _grid()
    up = np.tile([0.0, 0.0, 1.0], (pts.shape[0] + 1, 1))
    a, b, c = faces[30]
    w = pts.shape[0]
    split = np.array([[a, b, w], [b, c, w], [c, a, w]])
    faces = np.concatenate([np.delete(faces, 30, axis=0), split])
    # Beyond edge a-b and beyond the triangle on its other side, so that flipping a-b does not help.
    centre = (pts[a] + pts[b]) / 2
    outward = centre - pts[c]
    pts = np.vstack([pts, centre + 1.6 * outward])
    assert _folded(pts, faces).sum() >= 1
    still = unfold_triangles(pts, faces, up)
    assert _folded(pts, still).any(), "this fold is meant to be one that edge flips cannot undo"
    out = unfold_triangles(pts, remove_folded_valence3(pts, still, up), up)
    assert not _folded(pts, out).any()
    assert not (out == w).any(), "the folded vertex is left in no triangle"
    assert triangle_areas(pts, out).sum() == pytest.approx(36.0, rel=1e-12)
    assert _same_way_half_edges(out) == 0 and _edge_counts(out)[1] == 0


def test_delaunay_flips_make_a_sheared_lattice_delaunay_and_keep_its_area():
    """A sheared lattice cut along its long diagonals: flips give the Delaunay triangulation (every pair's
    opposite angles add up to at most 180 degrees), the same flat area, and shorter edges."""
    n = 8
    j, i = np.divmod(np.arange(n * n), n)
    pts = np.column_stack([i + 0.7 * j, 0.6 * j, np.zeros(n * n)])
    v = (np.arange(n - 1)[:, None] * n + np.arange(n - 1)[None, :]).ravel()
    long_cut = np.concatenate([np.stack([v, v + 1, v + n + 1], 1), np.stack([v, v + n + 1, v + n], 1)])
    up = np.tile([0.0, 0.0, 1.0], (n * n, 1))
    assert not _folded(pts, long_cut).any()

    def worst_pair(faces):
        """Largest sum of the two angles opposite an interior edge (degrees)."""
        e = {}
        for f in faces:
            for k in range(3):
                e.setdefault(tuple(sorted((f[k], f[(k + 1) % 3]))), []).append(f[(k + 2) % 3])
        worst = 0.0
        for (a, b), opp in e.items():
            if len(opp) == 2:
                ang = [np.degrees(np.arccos(np.dot(pts[a] - pts[o], pts[b] - pts[o])
                                            / np.linalg.norm(pts[a] - pts[o]) / np.linalg.norm(pts[b] - pts[o]))) for o in opp]
                worst = max(worst, sum(ang))
        return worst

    assert worst_pair(long_cut) > 190
    out = delaunay_flips(pts, long_cut, up, rounds=20)
    assert worst_pair(out) <= 180 + 1e-6
    assert triangle_areas(pts, out).sum() == pytest.approx(triangle_areas(pts, long_cut).sum(), rel=1e-12)
    assert not _folded(pts, out).any() and _same_way_half_edges(out) == 0 and out.shape == long_cut.shape
    assert edge_length_cv(pts, out) < edge_length_cv(pts, long_cut)


def test_delaunay_flips_do_not_cut_across_a_crease():
    """The same thin pair is flipped when flat, kept when bent 90 degrees along the edge (the flip would cut the corner)."""
    a, b, c = [0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 0.3, 0.0]
    faces = np.array([[0, 1, 2], [1, 0, 3]])
    flat = np.array([a, b, c, [1.0, -0.3, 0.0]])
    bent = np.array([a, b, c, [1.0, 0.0, -0.3]])
    flipped = delaunay_flips(flat, faces, np.tile([0.0, 0.0, 1.0], (4, 1)))
    assert {frozenset(f) for f in flipped.tolist()} == {frozenset((0, 3, 2)), frozenset((3, 1, 2))}
    normals = np.tile([0.0, -np.sqrt(0.5), np.sqrt(0.5)], (4, 1))
    assert np.array_equal(delaunay_flips(bent, faces, normals), faces)


def test_fast_remesh_refuses_bad_requests(phantom_stem):
    from ImplantBoneContactLib.errors import InputError

    with pytest.raises(InputError, match="at least 4"):
        remesh_fast(phantom_stem, points=3)
    with pytest.raises(InputError, match="subdivide"):
        remesh_fast(phantom_stem, points=100, subdivide=7)


def test_library_hu_equals_probe_volume_with_model_at_the_same_points(phantom_ct, phantom_pair):
    """HU at the same points: the library's trilinear value vs vtkProbeFilter run as Probe Volume With Model runs it.

    On a float copy of the CT the two agree to 1e-9 HU; on the int16 CT the
    CLI's output is typed int16, so it is the library's float value rounded
    (|difference| <= 0.5 HU); the library keeps the float.
    """
    _, fast = phantom_pair
    pts = points(fast).astype(float)
    lib, inside = sample(phantom_ct, pts)
    for dtype in (np.float64, phantom_ct.array.dtype):
        values, valid, _ = probe_in_ijk(phantom_ct, pts, dtype=dtype)
        np.testing.assert_array_equal(valid, inside)
        diff = lib[inside] - values[inside]
        if dtype == np.float64:
            assert np.max(np.abs(diff)) < 1e-9
        else:
            assert values.dtype == np.int16
            assert np.max(np.abs(diff)) <= 0.5 + 1e-9
            # Rounded, not truncated: most values differ from the float, and the mean offset is about 0.
            assert np.mean(np.abs(diff) > 1e-6) > 0.5
            assert abs(np.mean(diff)) < 0.05


def test_fast_is_an_analysis_option(phantom_ct, phantom_stem):
    res = analyze(phantom_ct, phantom_stem, AnalysisParameters(remesh="fast", points=3000))
    # Closing the dual drops the vertices of a few pinched spots (2% here, on the sliver-rich phantom).
    assert 0.97 * 3000 <= res.vertices.shape[0] <= 3000
    assert res.vertices["inside_ct"].all()
    assert res.parameters.remesh == "fast"


def test_acvd_is_still_surface_toolbox(phantom_stem):
    """The parity path is untouched: remesh_acvd gives pyacvd's own mesh, point for point."""
    ref = surface_toolbox_remesh(phantom_stem, subdivide=0, clusters=2000)
    ours = remesh_acvd(phantom_stem, 2000, 0)
    np.testing.assert_array_equal(points(ours), points(ref))
