"""Post-operative CTs: is the implant in the CT, and the bone read past the metal's bloom.

A CT taken after surgery holds the implant itself: metal reads 3000 HU and
more (or the scanner's ceiling, often 3071 HU) and the scanner's blur spreads
it over the first millimetres of the bone around it. Read on the implant
surface, or a fixed distance outside it, that bloom looks like cortical bone.

:func:`detect` samples just inside the implant surface: in a post-operative
CT most of the surface has metal within ``inside_depth`` mm inside it; in a
pre-operative CT (a virtual stem placed in the bone) almost none has.

:func:`measure_edge` measures, on this CT, how the reading falls from metal
to tissue (the edge spread): along each vertex normal it finds the metal
edge (the first steepest fall of the reading), then, over the vertices whose tissue beyond the bloom is
soft (below :data:`LOW_TISSUE_HU`), the median share of metal in the
reading at each distance past the edge, ``w(x) = (reading - tissue) /
(metal - tissue)``. ``w`` holds the scanner's blur, the voxel size and any
extra bloom of the metal: nothing about the scanner is assumed. Inside the
edge the reading rises with the scanner's blur alone (the bloom lies
outside the metal): read inward to the metal's plateau, that gives the metal's level and the blur of an
edge between two tissues
(``tissue_blur_mm``). The points' own edges are fitted with the implant's
rigid placement (:class:`EdgePlacement`), and a point whose own edge a thin
bright layer moved off that placement takes the fitted edge.

:func:`sample_metal_aware` then walks each point's normal: it finds the
point's own metal edge (the first steepest fall of the reading; the fitted
one where the two disagree, :meth:`EdgePlacement.place`), reads the
profile outward from it up to the bounded depth (:func:`max_bone_start_mm`
plus :func:`read_depth_mm`) and fits the linear blur model ``a metal w(x) +
T1 (G(x - b) - G(x)) + T2 (1 - G(x - b))``, ``G`` the tissues' Gaussian edge
(see :func:`_layer_fit`), with a third tissue where two leave the profile
unexplained (:func:`_three_layer_refit`): ``T1``,
the tissue touching the metal, is the bone reading. ``bone_start_mm`` is
where the metal's share of the reading has fallen to
:data:`READ_METAL_WEIGHT`. A point whose surface has no metal inside, whose
edge is not found, whose bone reading would start deeper than the bounded
depth, or whose profile the model does not explain (see the limits below)
is not reliable (``bone_reading_reliable`` False, contact class
``unreliable``).
"""

from __future__ import annotations

import math
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np

from .sampling import sample
from .volume import Volume

#: A point has metal inside it when the reading within ``inside_depth`` mm inside the surface reaches this (HU).
#: Cortical bone reads up to about 1900 HU; partial volume at 3 mm voxels keeps a thin implant's own
#: reading near 2000-2500 HU (the real pelvis CT's nail: 1952 HU median on its surface, 3382 HU at most).
METAL_DETECT_HU = 2000.0
#: The CT is post-operative when at least this share of the surface area has metal just inside it.
POSTOP_MIN_FRACTION = 0.5
#: Below this share but above :data:`PARTIAL_MIN_FRACTION` the model is only partly in metal: a warning.
PARTIAL_MIN_FRACTION = 0.1
#: Tissue beyond the bloom below this (HU) lets a vertex measure the edge spread (marrow, fat, soft tissue,
#: sparse cancellous bone).
LOW_TISSUE_HU = 300.0
#: The bone reading starts where the metal's share of the reading has fallen to this.
READ_METAL_WEIGHT = 0.15
#: The bone is read over this many voxels (at least :data:`READ_DEPTH_MIN_MM`) from where it starts.
READ_DEPTH_VOXELS = 0.5
READ_DEPTH_MIN_MM = 0.5
#: The bone reading must start within this many voxels (at least :data:`MAX_BONE_START_MIN_MM`) of the surface.
MAX_BONE_START_VOXELS = 1.5
MAX_BONE_START_MIN_MM = 3.0
#: Voxels at exactly this HU in the metal are taken as clipped by the scanner when there are many of them.
CLIP_HU = 3071.0
#: A cortex thinner than this many voxels is not resolved.
RESOLVED_CORTEX_VOXELS = 2.0
#: Voxels larger than this (mm) cannot resolve the thin proximal cortex (1-2 mm): the run says so.
COARSE_VOXEL_MM = 1.0

#: A zone with at least this share of its sampled area 'unreliable' is named in a warning: its class fractions
#: describe only the rest, which need not be like the whole zone.
ZONE_UNRELIABLE_SHARE = 1.0 / 3.0

#: Thinnest tissue layer on the metal the profile fit looks for (mm).
MIN_LAYER_MM = 0.5
#: A two-layer fit replaces the one-tissue fit only where it leaves less than this share of its squared residual.
LAYER_RESIDUAL_RATIO = 0.25
#: Widths of the metal edge, relative to the measured one, the one-tissue fit tries.
EDGE_STRETCH = (1.0, 1.25, 1.5, 2.0)
#: A fit that leaves more than this (HU RMS) does not explain the profile: the bone is not told from the bloom.
MAX_FIT_RMS_HU = 80.0
#: The metal's bloom at a point may be this much weaker or stronger than the one measured over the surface.
METAL_SCALE_RANGE = (0.6, 1.8)
#: A tissue read above this (HU) is the metal itself, not bone (adult cortex reads up to about 2000 HU).
MAX_BONE_HU = 2500.0
#: A point's own metal edge is kept within this distance (mm) of the rigid fit at least, and at most
#: :data:`EDGE_TOLERANCE_VOXELS` voxels (see :class:`EdgePlacement`).
EDGE_TOLERANCE_MIN_MM = 0.3
#: The most a point's own metal edge may depart from the rigid fit and be kept (voxels).
EDGE_TOLERANCE_VOXELS = 0.5
#: The scanner's blur is measured inside the metal edge over this many times the edge's blur (at 3.5 sigma a
#: Gaussian edge has risen to 99.98 % of the metal's plateau), plus a voxel.
INNER_DEPTH_BLURS = 3.5
#: A profile read inward has reached the metal's plateau where the reading falls back by this share of its rise.
PLATEAU_FALL = 0.02
#: Residuals below this (HU RMS) are noise: one tissue explains the profile.
NOISE_FLOOR_HU = 30.0

#: How a post-operative CT was sampled, for the record of a run whose caller offered its own sampler (the Slicer
#: module's Probe Volume With Model): the walk samples along each normal itself and never calls it.
METAL_AWARE_SAMPLER = "ImplantBoneContactLib metal-aware walk (trilinear along each normal, the bone read past the metal's bloom)"

PRE_OPERATIVE = "pre-operative"
POST_OPERATIVE = "post-operative"
METAL_AWARE_MODES = ("auto", "on", "off")


def _grid_step(volume: Volume) -> float:
    """Step (mm) of the walk along the normal: a quarter of the smallest voxel, at most 0.25 mm."""
    return float(min(0.25, 0.25 * float(volume.spacing_mm.min())))


def _voxel(volume: Volume) -> float:
    return float(volume.spacing_mm.max())


def inside_depth_mm(volume: Volume) -> float:
    """How deep inside the surface the metal is looked for (mm): 1.5 mm or one voxel, whichever is more."""
    return max(1.5, _voxel(volume))


def walk_depth_mm(volume: Volume) -> float:
    """How far outside the surface the walk reads (mm): the bounded bone depth plus the reading and a margin."""
    return max_bone_start_mm(volume) + read_depth_mm(volume) + max(3.0, 1.5 * _voxel(volume))


def max_bone_start_mm(volume: Volume) -> float:
    """The bounded depth (mm): a bone reading that would start deeper than this is not reliable."""
    return max(MAX_BONE_START_MIN_MM, MAX_BONE_START_VOXELS * _voxel(volume))


def read_depth_mm(volume: Volume) -> float:
    """How deep the bone is read past where the reading starts (mm)."""
    return max(READ_DEPTH_MIN_MM, READ_DEPTH_VOXELS * _voxel(volume))


def profiles(volume: Volume, points: np.ndarray, normals: np.ndarray, offsets: np.ndarray, method: str = "trilinear",
             block: int = 65536) -> tuple[np.ndarray, np.ndarray]:
    """HU at every point moved by every offset (mm) along its normal: ``(N, K)`` HU and ``(N, K)`` inside-CT flags."""
    pts = np.asarray(points, dtype=float)
    nrm = np.asarray(normals, dtype=float)
    offsets = np.asarray(offsets, dtype=float)
    hu = np.empty((pts.shape[0], offsets.size))
    inside = np.empty((pts.shape[0], offsets.size), dtype=bool)
    per = max(1, block // max(offsets.size, 1))
    for s in range(0, pts.shape[0], per):
        p, n = pts[s : s + per], nrm[s : s + per]
        q = p[:, None, :] + offsets[None, :, None] * n[:, None, :]
        h, i = sample(volume, q.reshape(-1, 3), method)
        hu[s : s + per] = h.reshape(p.shape[0], offsets.size)
        inside[s : s + per] = i.reshape(p.shape[0], offsets.size)
    return hu, inside


@dataclass
class Detection:
    """Whether the implant itself is in the CT, with the evidence.

    Attributes:
        ct_kind: ``"post-operative"`` or ``"pre-operative"``.
        in_metal: per vertex, True where the reading within ``inside_depth_mm`` inside the surface reaches
            :data:`METAL_DETECT_HU`.
        inside_max_hu: per vertex, the highest reading within that depth inside (HU; NaN outside the CT).
        evidence: figures for ``parameters.json``.
    """

    ct_kind: str
    in_metal: np.ndarray
    inside_max_hu: np.ndarray
    evidence: dict = field(default_factory=dict)


def detect(volume: Volume, points: np.ndarray, normals: np.ndarray, areas: np.ndarray, method: str = "trilinear") -> Detection:
    """Decide whether the implant is in the CT by sampling just inside its surface.

    Args:
        volume: the CT (HU).
        points: ``(N, 3)`` surface vertices (RAS mm).
        normals: ``(N, 3)`` outward unit normals.
        areas: ``(N,)`` vertex areas (mm^2): the shares are of the surface area.
        method: sampling method.
    """
    depth = inside_depth_mm(volume)
    step = _grid_step(volume)
    offsets = -np.arange(0.0, depth + 1e-9, step)
    hu, inside = profiles(volume, points, normals, offsets, method)
    hu = np.where(inside, hu, np.nan)
    with np.errstate(invalid="ignore"):
        inside_max = np.nanmax(np.where(np.isfinite(hu), hu, -np.inf), axis=1)
    inside_max[~np.isfinite(inside_max)] = np.nan
    sampled = np.isfinite(inside_max)
    in_metal = sampled & (inside_max >= METAL_DETECT_HU)
    a = np.asarray(areas, dtype=float)
    total = float(a[sampled].sum())
    frac = float(a[in_metal].sum() / total) if total > 0 else 0.0
    kind = POST_OPERATIVE if frac >= POSTOP_MIN_FRACTION else PRE_OPERATIVE
    evidence = {
        "inside_depth_mm": depth,
        "metal_detect_hu": METAL_DETECT_HU,
        "fraction_area_with_metal_inside": frac,
        "median_inside_max_hu": float(np.nanmedian(inside_max)) if sampled.any() else float("nan"),
        "ct_max_hu": float(np.nanmax(volume.array)) if volume.array.size else float("nan"),
    }
    return Detection(kind, in_metal, inside_max, evidence)


@dataclass
class EdgePlacement:
    """Where the metal edge lies along each normal, from the surface's own edges and the implant being rigid.

    A point's own edge (the first steepest fall of its reading) moves outward where bone brighter than
    the metal's bloom tail touches the metal in a layer thinner than the blur (a thin cortex on the
    rounded tip): metal and layer then blur into one bright object whose steepest fall lies at the
    layer's far side, and the bone would be read past the cortex it should read. The implant is rigid,
    so the offset of its metal edge along the normal ``n`` at a surface point ``p`` is, for a small
    misplacement (shift ``t``, rotation ``omega``) and a constant offset ``c`` of the edge definition,
    ``c + n . t + (p x n) . omega``: linear in seven unknowns, fitted robustly (trimmed least squares) to
    the points' own edges. A point whose own edge departs from that by more than ``tolerance_mm`` takes
    the fitted edge.

    Attributes:
        coef: the seven fitted values (``c`` mm, ``t`` mm, ``omega`` radians).
        centre: the point the rotation is about (RAS mm).
        residual_mm: robust spread (1.4826 MAD) of the points' own edges about the fit (mm).
        tolerance_mm: a point's own edge is kept within this distance of the fit (mm).
        n_points: points the fit used (inliers).
    """

    coef: np.ndarray
    centre: np.ndarray
    residual_mm: float
    tolerance_mm: float
    n_points: int

    def predict(self, points: np.ndarray, normals: np.ndarray) -> np.ndarray:
        """The fitted metal edge offset (mm along the outward normal) at each point."""
        return _rigid_design(np.asarray(points, float) - self.centre, np.asarray(normals, float)) @ self.coef

    def place(self, points: np.ndarray, normals: np.ndarray, own_edge_mm: np.ndarray) -> np.ndarray:
        """Each point's own edge where it agrees with the fit within the tolerance, the fitted edge elsewhere."""
        fitted = self.predict(points, normals)
        own = np.asarray(own_edge_mm, float)
        keep = np.abs(own - fitted) <= self.tolerance_mm
        return np.where(np.isfinite(own), np.where(keep, own, fitted), np.nan)

    def to_dict(self) -> dict:
        return {
            "edge_placement_offset_mm": round(float(self.coef[0]), 3),
            "edge_placement_shift_mm": [round(float(v), 3) for v in self.coef[1:4]],
            "edge_placement_rotation_deg": [round(float(np.degrees(v)), 3) for v in self.coef[4:7]],
            "edge_placement_residual_mm": round(self.residual_mm, 3),
            "edge_placement_tolerance_mm": round(self.tolerance_mm, 3),
        }


def _rigid_design(rel: np.ndarray, normals: np.ndarray) -> np.ndarray:
    return np.column_stack([np.ones(rel.shape[0]), normals, np.cross(rel, normals)])


def fit_edge_placement(points: np.ndarray, normals: np.ndarray, own_edge_mm: np.ndarray,
                       voxel_mm: float) -> EdgePlacement | None:
    """Fit the rigid placement of the metal edge (see :class:`EdgePlacement`) to the points' own edges (mm).

    Trimmed least squares: five rounds, each dropping the points further than three robust spreads (at
    least :data:`EDGE_TOLERANCE_MIN_MM`) from the fit. The tolerance is three robust spreads, at least
    :data:`EDGE_TOLERANCE_MIN_MM` and at most :data:`EDGE_TOLERANCE_VOXELS` voxels. ``None`` with fewer
    than 50 edges found.
    """
    own = np.asarray(own_edge_mm, float)
    ok = np.isfinite(own)
    if np.count_nonzero(ok) < 50:
        return None
    pts = np.asarray(points, float)[ok]
    nrm = np.asarray(normals, float)[ok]
    centre = pts.mean(axis=0)
    design = _rigid_design(pts - centre, nrm)
    y = own[ok]
    use = np.ones(y.size, dtype=bool)
    coef = np.zeros(7)
    spread = float("nan")
    for _ in range(5):
        coef = np.linalg.lstsq(design[use], y[use], rcond=None)[0]
        res = y - design @ coef
        spread = float(1.4826 * np.median(np.abs(res[use] - np.median(res[use]))))
        new = np.abs(res) <= max(3.0 * spread, EDGE_TOLERANCE_MIN_MM)
        if np.count_nonzero(new) < 20 or np.array_equal(new, use):
            break
        use = new
    tol = float(min(max(3.0 * spread, EDGE_TOLERANCE_MIN_MM), max(EDGE_TOLERANCE_MIN_MM, EDGE_TOLERANCE_VOXELS * voxel_mm)))
    return EdgePlacement(coef, centre, spread, tol, int(np.count_nonzero(use)))


@dataclass
class EdgeModel:
    """How the reading falls from the metal to the tissue on this CT, measured at the implant's own edge.

    Attributes:
        metal_hu: the metal's reading, HU: with the spread measured, the median plateau of the readings walked
            inward from the edge (see :func:`_tissue_blur`); otherwise the median over the surface of the highest
            reading within :func:`inside_depth_mm` inside.
        x_mm: distances past the metal edge (mm) at which ``metal_weight`` is given.
        metal_weight: the metal's share of the reading at each distance (1 in the metal, 0.5 at the edge,
            falling to 0); non-increasing.
        blur_mm: Gaussian-equivalent blur of the edge: the distance past the edge where the metal's share
            falls to 15.9 % (one sigma of a Gaussian edge), mm.
        bloom_mm: distance past the edge where the metal's share falls to 2 % (about 60 HU of 3000), mm.
        read_start_mm: distance past the edge where the bone reading starts (share :data:`READ_METAL_WEIGHT`), mm.
        n_vertices: vertices the edge spread was measured on.
        method: ``"measured"`` or, with too few vertices in soft tissue, ``"gaussian"`` (a Gaussian edge
            whose sigma comes from the edge slope).
        placement: where the metal edge lies along each normal as the model surface moved rigidly (see
            :class:`EdgePlacement`), or ``None`` (each point's own edge is used as found).
        tissue_blur_mm: the scanner's own blur (Gaussian sigma, mm, with the voxel interpolation), measured
            on the inside of the metal edge: the distance inside the edge where the reading has risen to
            84.1 % of the way from the tissue to the metal's plateau (the walk inward reaches it: 3.5 edge
            blurs, see :func:`inner_depth_mm`). The metal's extra bloom lies outside it, so this is the blur
            of an edge between two tissues; ``None``: not measured, ``blur_mm`` is used.
    """

    metal_hu: float
    x_mm: np.ndarray
    metal_weight: np.ndarray
    blur_mm: float
    bloom_mm: float
    read_start_mm: float
    n_vertices: int
    method: str
    placement: EdgePlacement | None = None
    tissue_blur_mm: float | None = None

    def tissue_sigma_mm(self) -> float:
        """Gaussian sigma (mm) of an edge between two tissues on this CT (:attr:`tissue_blur_mm`, else :attr:`blur_mm`)."""
        t = self.tissue_blur_mm
        return float(t) if t is not None and math.isfinite(t) and t > 0 else float(self.blur_mm)

    def tissue_weight(self, x: np.ndarray) -> np.ndarray:
        """The share of a tissue lying before an edge (at 0) in the reading at ``x`` mm past it: a Gaussian edge."""
        return _gaussian_tail(np.asarray(x, dtype=float) / self.tissue_sigma_mm())

    def weight(self, x: np.ndarray) -> np.ndarray:
        """The metal's share of the reading at distances ``x`` (mm) past the edge; ``1 - w(-x)`` inside it."""
        x = np.asarray(x, dtype=float)
        w = np.interp(np.abs(x), self.x_mm, self.metal_weight, right=0.0)
        return np.where(x >= 0, w, 1.0 - w)

    def to_dict(self) -> dict:
        return {
            "metal_hu": self.metal_hu,
            "edge_blur_mm": self.blur_mm,
            "tissue_blur_mm": self.tissue_blur_mm,
            "bloom_mm": self.bloom_mm,
            "read_start_past_edge_mm": self.read_start_mm,
            "edge_spread_measured_on_vertices": self.n_vertices,
            "edge_spread_method": self.method,
            "edge_spread_x_mm": [round(float(v), 3) for v in self.x_mm[::2]],
            "edge_spread_metal_weight": [round(float(v), 4) for v in self.metal_weight[::2]],
            **(self.placement.to_dict() if self.placement is not None else {}),
        }


def _first_crossing(x: np.ndarray, values: np.ndarray, level: float) -> float:
    below = np.flatnonzero(values <= level)
    if below.size == 0:
        return float(x[-1])
    k = int(below[0])
    if k == 0:
        return float(x[0])
    v0, v1 = values[k - 1], values[k]
    t = (v0 - level) / (v0 - v1) if v0 != v1 else 0.0
    return float(x[k - 1] + t * (x[k] - x[k - 1]))


@dataclass
class _Walk:
    offsets: np.ndarray
    hu: np.ndarray
    inside: np.ndarray
    start: int  # column of offset 0
    inside_max: np.ndarray
    floor: np.ndarray
    edge_mm: np.ndarray  # per point, offset of the metal edge along the normal (NaN if not found)
    in_metal: np.ndarray


def _walk(volume: Volume, points: np.ndarray, normals: np.ndarray, method: str, metal_hu: float | None,
          read_start_mm: float = 1.0) -> _Walk:
    """Sample each normal from ``inside_depth`` inside to ``walk_depth`` outside and find the metal edge on it.

    The edge is where the reading falls halfway from the metal to the tissue beyond the bloom. The tissue is
    read ``read_start_mm`` plus the read depth past the edge, so the edge is found in two rounds: first
    from the lowest reading outside, then from the tissue past the first edge (a cortex pressed against the
    metal would otherwise move the halfway level down to the cortex's own reading).
    """
    step = _grid_step(volume)
    depth_in = inside_depth_mm(volume)
    n_in = int(round(depth_in / step))
    n_out = int(math.ceil(walk_depth_mm(volume) / step))
    offsets = step * np.arange(-n_in, n_out + 1)
    hu, inside = profiles(volume, points, normals, offsets, method)
    hu = np.where(inside, hu, np.nan)
    inner = hu[:, : n_in + 1]
    outer = hu[:, n_in:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        inside_max = np.nanmax(inner, axis=1)
        floor = np.nanmin(outer, axis=1)
    in_metal = np.isfinite(inside_max) & (inside_max >= METAL_DETECT_HU)
    # The edge: the first steepest fall of the reading (a local maximum of the fall per mm that reaches half
    # the largest fall within the bounded depth). A step blurred by any symmetric spread falls fastest at
    # the step; a tissue layer on the metal does not move that point, unlike a halfway level would.
    fall = -np.gradient(hu, step, axis=1)
    limit = n_in + int(round(max_bone_start_mm(volume) / step))
    window = np.where(np.isfinite(fall[:, : limit + 1]), fall[:, : limit + 1], -np.inf)
    strongest = window.max(axis=1)
    start, end = _plateaus(window, strongest)
    rows = np.arange(hu.shape[0])
    last = window.shape[1] - 1
    with np.errstate(invalid="ignore"):
        # A maximum is a run of equal falls (the sampling steps are finer than the voxels, and a trilinear
        # profile falls evenly within a voxel) higher than the runs on either side: taking the first sample
        # of a rising run instead would put the edge about a sigma inside the metal.
        before = np.where(start > 0, window[rows[:, None], np.maximum(start - 1, 0)], np.inf)
        after = np.where(end < last, window[rows[:, None], np.minimum(end + 1, last)], np.inf)
        peak = (window > before) & (window > after) & (start > 0) & (end < last)
    peak &= window >= 0.5 * strongest[:, None]
    has = peak.any(axis=1) & in_metal & (strongest > 0)
    k = np.argmax(peak, axis=1)
    k0, k1 = start[rows, k], end[rows, k]
    km1 = np.clip(k0 - 1, 0, last)
    kp1 = np.clip(k1 + 1, 0, last)
    f0, f1, f2 = window[rows, km1], window[rows, k], window[rows, kp1]
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = f0 - 2 * f1 + f2
        shift = np.where(np.isfinite(denom) & (denom < 0), 0.5 * (f0 - f2) / denom, 0.0)
    # A single-sample maximum is refined by a parabola; a run's maximum is its middle.
    edge = np.where(k0 == k1, offsets[k] + np.clip(shift, -0.5, 0.5) * step, 0.5 * (offsets[k0] + offsets[k1]))
    edge = np.where(has, edge, np.nan)
    return _Walk(offsets, hu, inside, n_in, inside_max, floor, edge, in_metal)


#: Per thread, ``walks``: the walks kept by that thread's innermost active :class:`WalkReuse` (absent or ``None``:
#: none active, every walk is done). Per thread because analyses may run side by side in threads (a Dask worker
#: runs several cases at once): one thread's block must neither end nor keep alive another's.
_ACTIVE = threading.local()


def _active_walks() -> dict | None:
    """The walks kept by this thread's innermost active :class:`WalkReuse`, or ``None``."""
    return getattr(_ACTIVE, "walks", None)


class WalkReuse:
    """Within its ``with`` blocks, the walk along the same normals of the same CT is done once.

    The detection, the edge measurement and the sampling of one analysis each walk the same vertices
    (:func:`assess` twice in :func:`measure_edge` and once itself, then :func:`sample_metal_aware`): inside a
    ``with`` block of one ``WalkReuse`` object the first walk is kept and returned again to a walk of the same
    CT (the same :class:`Volume` object), the same point and normal arrays (the same objects, not modified in
    between) and the same sampling method. The walk does not depend on its metal HU and read start, so those
    are not compared. Outside any block, or once the object is dropped, nothing is kept. A block holds for the
    thread that entered it only (an object is entered by one thread at a time).
    """

    def __init__(self) -> None:
        self._walks: dict = {}
        self._outer: list = []

    def __enter__(self) -> WalkReuse:
        self._outer.append(_active_walks())
        _ACTIVE.walks = self._walks
        return self

    def __exit__(self, *exc) -> None:
        _ACTIVE.walks = self._outer.pop()


def _walk_reused(volume: Volume, points: np.ndarray, normals: np.ndarray, method: str, metal_hu: float | None,
                 read_start_mm: float = 1.0) -> _Walk:
    """:func:`_walk`, or the walk kept by the active :class:`WalkReuse` for the same CT, arrays and method."""
    kept = _active_walks()
    if kept is None:
        return _walk(volume, points, normals, method, metal_hu, read_start_mm)
    key = (id(volume), id(points), id(normals), method)
    hit = kept.get(key)
    # the objects themselves are kept with the walk: their ids cannot be taken by new objects meanwhile
    if hit is not None and hit[0] is volume and hit[1] is points and hit[2] is normals:
        return hit[3]
    w = _walk(volume, points, normals, method, metal_hu, read_start_mm)
    kept[key] = (volume, points, normals, w)
    return w


def _plateaus(values: np.ndarray, strongest: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of the run of (nearly) equal values each sample belongs to, along axis 1.

    Values within a millionth of the row's ``strongest`` are one run (trilinear readings of a flat stretch
    differ by rounding only).
    """
    n, m = values.shape
    tol = 1e-6 * np.where(np.isfinite(strongest) & (strongest > 0), strongest, 1.0)[:, None]
    with np.errstate(invalid="ignore"):
        diff = np.abs(np.diff(values, axis=1))
        same = (diff <= tol) | (np.isinf(values[:, 1:]) & (values[:, 1:] == values[:, :-1]))
    change = ~same
    cols = np.arange(m - 1)
    # a change between j and j + 1 ends a run at j and starts one at j + 1
    end = np.where(change, cols, m - 1)
    end = np.minimum.accumulate(end[:, ::-1], axis=1)[:, ::-1]
    end = np.concatenate([end, np.full((n, 1), m - 1)], axis=1)
    start = np.where(change, cols + 1, 0)
    start = np.maximum.accumulate(start, axis=1)
    start = np.concatenate([np.zeros((n, 1), dtype=start.dtype), start], axis=1)
    return start, end


def measure_edge(volume: Volume, points: np.ndarray, normals: np.ndarray, method: str = "trilinear",
                 use: np.ndarray | None = None) -> EdgeModel:
    """Measure the metal edge spread on this CT from the implant surface's own normals (see module text).

    Args:
        volume: a post-operative CT (HU).
        points: ``(N, 3)`` implant surface vertices (RAS mm).
        normals: ``(N, 3)`` outward unit normals.
        method: sampling method.
        use: ``(N,)`` booleans, the vertices to measure on (for example those below the neck cut, in the
            bone); ``None``: all.
    """
    if use is not None and np.count_nonzero(use) >= 100:
        points = np.asarray(points, float)[use]
        normals = np.asarray(normals, float)[use]
    w0 = _walk_reused(volume, points, normals, method, None)
    ok = np.isfinite(w0.edge_mm)
    metal = float(np.median(w0.inside_max[ok])) if ok.any() else float(np.nanmax(volume.array))
    w = _walk_reused(volume, points, normals, method, metal)
    placement = fit_edge_placement(points, normals, w.edge_mm, _voxel(volume))
    edges = placement.place(points, normals, w.edge_mm) if placement is not None else w.edge_mm
    step = _grid_step(volume)
    x_far = walk_depth_mm(volume) - max(1.0, _voxel(volume))
    x = step * np.arange(0, int(math.ceil(x_far / step)) + 1)
    good = np.isfinite(edges)
    idx = np.flatnonzero(good)
    # Profiles re-read from each point's edge outward.
    if idx.size:
        nrm = np.asarray(normals, float)[idx]
        pts = np.asarray(points, float)[idx] + edges[idx, None] * nrm
        aligned, inside = profiles(volume, pts, nrm, x, method)
        aligned = np.where(inside.all(axis=1)[:, None], aligned, np.nan)
        tail = x >= x[-1] - max(1.0, 0.5 * _voxel(volume))
        tissue = np.median(aligned[:, tail], axis=1)
        # One tissue from half the walk outward: no layer that would pass for the metal's tail.
        outer_half = x >= 0.5 * x[-1]
        flat = (aligned[:, outer_half].max(axis=1) - aligned[:, outer_half].min(axis=1)) < 100.0
        low = np.isfinite(tissue) & (tissue < LOW_TISSUE_HU) & flat & (metal - tissue > 1000.0)
    else:
        low = np.zeros(0, dtype=bool)
    # Gaussian-equivalent blur from the slope at the edge: slope = (metal - floor) / (sigma sqrt(2 pi)).
    blur_from_slope = _blur_from_slope(w, good, metal, step)
    tissue_blur = None
    if low.sum() >= 30:
        def metal_share(level: float) -> np.ndarray:
            """The median share of the metal at ``level`` HU in the readings over the tissue, per distance."""
            share = (aligned[low] - tissue[low, None]) / (level - tissue[low, None])
            return np.clip(np.median(share, axis=0), 0.0, 1.0)

        weight = metal_share(metal)
        # The metal's level just inside the surface is below its plateau where the blur is wide: the walk
        # inward reaches the plateau (its depth from this first spread), then the share is taken of it.
        tissue_blur, plateau = _tissue_blur(volume, pts[low], -nrm[low], tissue[low], metal,
                                            _first_crossing(x, np.minimum.accumulate(weight), 0.1587), method)
        if math.isfinite(plateau) and plateau > metal:
            metal = plateau
            weight = metal_share(metal)
        weight = np.minimum.accumulate(weight)
        method_used = "measured"
        n_used = int(low.sum())
    else:
        sigma = blur_from_slope if math.isfinite(blur_from_slope) else math.hypot(0.6, 0.5 * _voxel(volume))
        weight = _gaussian_tail(x / sigma)
        method_used = "gaussian"
        n_used = int(good.sum())
    blur = _first_crossing(x, weight, 0.1587)
    bloom = _first_crossing(x, weight, 0.02)
    read = _first_crossing(x, weight, READ_METAL_WEIGHT)
    return EdgeModel(metal, x, weight, blur, bloom, read, n_used, method_used, placement, tissue_blur)


def inner_depth_mm(volume: Volume, blur_mm: float) -> float:
    """How deep inside the metal edge the scanner's blur is measured (mm): far enough for the reading to reach
    the metal's plateau, :data:`INNER_DEPTH_BLURS` times the edge's Gaussian-equivalent blur ``blur_mm`` (or
    :func:`inside_depth_mm`, whichever is more), plus a voxel.
    """
    b = float(blur_mm) if math.isfinite(blur_mm) and blur_mm > 0 else 0.0
    return max(inside_depth_mm(volume), INNER_DEPTH_BLURS * b) + _voxel(volume)


def _tissue_blur(volume: Volume, edge_points: np.ndarray, inward: np.ndarray, tissue_hu: np.ndarray, metal_hu: float,
                 blur_mm: float, method: str = "trilinear") -> tuple[float | None, float]:
    """The scanner's own blur (Gaussian sigma, mm) measured inside the metal edge, and the metal's plateau (HU).

    Each profile is read inward from its metal edge (``edge_points``, along ``inward``) to
    :func:`inner_depth_mm`, and stops at its plateau: the first place where the reading falls back by more
    than :data:`PLATEAU_FALL` of its rise so far (the metal's far side, in a part of the implant thinner
    than the walk; the model's own depth bounds the walk). The rise from the tissue beyond the bloom
    (``tissue_hu``) to that plateau (the median of its readings within :data:`PLATEAU_FALL` of the highest),
    as a share, is ``1 - G(d / sigma)`` at ``d`` mm inside a Gaussian edge:
    the median share over the profiles reaches 84.13 % at ``d = sigma``. The blur is ``None`` when the
    median share never reaches it (the metal is thinner than the blur) or the profiles leave the CT; the
    plateau, the median over the profiles of their highest reading before it, is NaN when fewer than 10
    profiles rise by more than half of ``metal_hu`` above their tissue.
    """
    step = _grid_step(volume)
    x_in = step * np.arange(0, int(math.ceil(inner_depth_mm(volume, blur_mm) / step)) + 1)
    inner, inner_ok = profiles(volume, edge_points, inward, x_in, method)
    inner = np.where(inner_ok, inner, np.nan)
    t = np.asarray(tissue_hu, float)[:, None]
    with np.errstate(invalid="ignore"):
        rise = np.fmax.accumulate(np.where(np.isfinite(inner), inner, -np.inf), axis=1)
        # The plateau: stop where the reading falls back by more than PLATEAU_FALL of its rise so far.
        fell = inner < rise - PLATEAU_FALL * np.maximum(rise - t, 0.0)
    stop = np.where(fell.any(axis=1), np.argmax(fell, axis=1), x_in.size)
    cols = np.arange(x_in.size)[None, :]
    kept = (cols < stop[:, None]) & np.isfinite(rise)
    top = np.max(np.where(kept, rise, -np.inf), axis=1)
    # The plateau: the median of the readings within PLATEAU_FALL of the highest (the highest alone is
    # raised by the noise).
    near = kept & np.isfinite(inner) & (inner >= (top - PLATEAU_FALL * np.maximum(top - t[:, 0], 0.0))[:, None])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        top = np.where(near.any(axis=1), np.nanmedian(np.where(near, inner, np.nan), axis=1), top)
    contrast = top - t[:, 0]
    usable = np.isfinite(top) & (contrast > 0.5 * (metal_hu - t[:, 0]))
    if np.count_nonzero(usable) < 10:
        return None, float("nan")
    plateau = float(np.median(top[usable]))
    share = (rise[usable] - t[usable]) / contrast[usable, None]
    # Past its plateau a profile stays at its plateau (share 1): the far side of a thin part does not pull it down.
    share = np.where(kept[usable], share, 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(share, axis=0)
    if not np.isfinite(med).all():
        return None, plateau
    med = np.maximum.accumulate(med)
    if med[-1] < 0.8413:
        return None, plateau
    sigma = _first_crossing(x_in, 1.0 - med, 1.0 - 0.8413)
    return (float(sigma) if 0.0 < sigma < x_in[-1] else None), plateau


def _gaussian_tail(z: np.ndarray) -> np.ndarray:
    """``0.5 * erfc(z / sqrt(2))``: the share of a Gaussian-blurred step beyond ``z`` sigmas."""
    return np.array([0.5 * math.erfc(float(v) / math.sqrt(2.0)) for v in np.ravel(z)]).reshape(np.shape(z))


def _blur_from_slope(w: _Walk, good: np.ndarray, metal: float, step: float) -> float:
    if not good.any():
        return float("nan")
    d = np.abs(np.gradient(w.hu[good], step, axis=1))
    cols = np.clip(np.searchsorted(w.offsets, w.edge_mm[good]), 0, w.hu.shape[1] - 1)
    slope = d[np.arange(cols.size), cols]
    contrast = metal - w.floor[good]
    with np.errstate(invalid="ignore", divide="ignore"):
        sigma = contrast / (math.sqrt(2 * math.pi) * slope)
    sigma = sigma[np.isfinite(sigma) & (sigma > 0)]
    return float(np.median(sigma)) if sigma.size else float("nan")


@dataclass
class MetalAwareSamples:
    """The bone read past the metal's bloom, per point.

    Attributes:
        hu: the bone reading (HU) with the metal's share taken out; where not reliable, the plain reading at
            the bounded depth (:func:`max_bone_start_mm` outside the surface); NaN where not sampled.
        inside_ct: True where the whole walk lay inside the CT.
        bone_start_mm: offset along the normal (mm) where the bone reading starts; NaN if none.
        reliable: True where the bone could be told from the bloom within the bounded depth.
        edge_mm: offset along the normal of the metal edge (mm); NaN where not found.
    """

    hu: np.ndarray
    inside_ct: np.ndarray
    bone_start_mm: np.ndarray
    reliable: np.ndarray
    edge_mm: np.ndarray


def sample_metal_aware(volume: Volume, points: np.ndarray, normals: np.ndarray, edge: EdgeModel,
                       method: str = "trilinear") -> MetalAwareSamples:
    """Walk each normal out of the metal's bloom and read the bone beyond it (see module text).

    Args:
        volume: the post-operative CT (HU).
        points: ``(N, 3)`` surface points (RAS mm).
        normals: ``(N, 3)`` outward unit normals.
        edge: the edge spread measured on this CT (:func:`measure_edge`).
        method: sampling method.
    """
    pts = np.asarray(points, dtype=float)
    nrm = np.asarray(normals, dtype=float)
    n = pts.shape[0]
    w = _walk_reused(volume, pts, nrm, method, edge.metal_hu, edge.read_start_mm)
    edge_mm = edge.placement.place(pts, nrm, w.edge_mm) if edge.placement is not None else w.edge_mm
    step = _grid_step(volume)
    depth = max_bone_start_mm(volume) + read_depth_mm(volume)
    x = step * np.arange(0, int(math.ceil(depth / step)) + 1)
    start = edge_mm + edge.read_start_mm
    found = np.isfinite(start)
    inside_ct = w.inside.all(axis=1)
    reliable = found & (start <= max_bone_start_mm(volume)) & inside_ct
    # Where no edge is found, read from the bounded depth (the value is kept, the class is unreliable).
    origin = np.where(found, edge_mm, max_bone_start_mm(volume) - edge.read_start_mm)
    raw, inside = profiles(volume, pts + origin[:, None] * nrm, nrm, x, method)
    ok = inside.all(axis=1) & inside_ct
    hu = np.full(n, np.nan)
    if ok.any():
        fit = _layer_fit(raw[ok], x, edge)
        hu[ok] = fit.tissue_hu
        told = (
            (fit.layer_mm >= edge.tissue_sigma_mm())
            & (fit.rms_hu <= MAX_FIT_RMS_HU)
            & (fit.metal_scale >= METAL_SCALE_RANGE[0])
            & (fit.metal_scale <= METAL_SCALE_RANGE[1])
            & (fit.tissue_hu >= -1100.0)
            & (fit.tissue_hu < MAX_BONE_HU)
        )
        reliable[ok] &= told
    reliable &= ok
    # Where the bone is not told from the bloom, the fit's value means nothing: keep what the CT reads at
    # the bounded depth instead (finite, so the point counts in the zone's partition as 'unreliable').
    plain, plain_inside = sample(volume, pts + max_bone_start_mm(volume) * nrm, method)
    fallback_sel = ok & ~reliable
    hu[fallback_sel] = np.where(plain_inside[fallback_sel], plain[fallback_sel], np.nan)
    return MetalAwareSamples(hu=hu, inside_ct=ok, bone_start_mm=np.where(found, start, np.nan), reliable=reliable,
                             edge_mm=edge_mm)


@dataclass
class _Fit:
    tissue_hu: np.ndarray  # the tissue touching the metal (HU)
    rms_hu: np.ndarray  # residual of the fit (HU RMS)
    layer_mm: np.ndarray  # thickness of that tissue (mm); inf where one tissue explains the profile
    metal_scale: np.ndarray  # the metal's bloom relative to the measured one


def _layer_fit(raw: np.ndarray, x: np.ndarray, edge: EdgeModel) -> _Fit:
    """The tissue touching the metal, from profiles read outward from the metal edge.

    Model (linear blur): ``reading(x) = a metal w(x / s) + T1 (G(x - b) - G(x)) + T2 (1 - G(x - b))``: a
    first layer of HU ``T1`` and thickness ``b`` on the metal, then ``T2``. The metal blooms with its measured
    spread ``w``; the tissues' edges blur with the scanner alone, ``G`` a Gaussian edge of
    :meth:`EdgeModel.tissue_sigma_mm` (with ``w`` there, a thin bright layer would be smeared like the
    metal's bloom and read as a stronger bloom over a darker tissue). ``a`` (about 1) lets the metal's
    bloom be locally stronger or weaker than measured, and ``s`` (one tissue only, 1 to 2) wider, where the
    normal crosses the edge obliquely. For each ``b`` (and ``s``) on a grid the other unknowns are a linear
    least-squares fit (:func:`_design_fits`: every profile against every design at once). Of the one-tissue
    fits the one with the least squared residual is kept (the first on a tie), likewise of the two-layer
    fits. Two layers replace one tissue only where they leave less than :data:`LAYER_RESIDUAL_RATIO` of its
    squared residual (a thin layer's HU is otherwise free to take any value that shapes the metal's tail).
    Three tissues may then replace the choice (:func:`_three_layer_refit`).
    """
    use = edge.weight(x) <= 0.85
    xs = x[use]
    y = raw[:, use]
    w_x = edge.weight(xs)
    g_x = edge.tissue_weight(xs)
    step = float(x[1] - x[0])  # x: from 0 in the walk's steps, over the bone read (at least 3.5 mm)
    designs = []
    for stretch in EDGE_STRETCH:
        designs.append(np.column_stack([edge.metal_hu * edge.weight(xs / stretch), 1.0 - edge.tissue_weight(xs / stretch)]))
    n_one = len(designs)
    grid = np.arange(MIN_LAYER_MM, x[-1] + 1e-9, step)
    for b in grid:
        g_b = edge.tissue_weight(xs - b)
        designs.append(np.column_stack([edge.metal_hu * w_x, g_b - g_x, 1.0 - g_b]))
    # ``scale`` and ``t1`` are the first two coefficients of every design; res the mean squared residual.
    scale, t1, res = _design_fits(y, designs, _layer_choice_undecided(n_one))
    one = _first_least(res[:, :n_one])
    rows = np.arange(y.shape[0])
    one_res = np.where(one >= 0, res[rows, one], np.inf)
    two_k = _first_least(res[:, n_one:])
    l_best = np.where(two_k >= 0, res[rows, n_one + two_k], np.inf)
    two = (l_best < LAYER_RESIDUAL_RATIO * one_res) & (one_res > NOISE_FLOOR_HU**2)
    pick = np.where(two, n_one + two_k, one)
    chosen = pick >= 0
    col = np.maximum(pick, 0)
    t1_out = np.where(chosen, t1[rows, col], np.nan)
    scale_out = np.where(chosen, scale[rows, col], np.nan)
    best = np.where(two, l_best, one_res)
    layer = np.where(two, grid[np.maximum(two_k, 0)] if grid.size else np.inf, np.inf)
    fit = _Fit(t1_out, np.sqrt(best), layer, scale_out)
    _three_layer_refit(fit, best, y, xs, edge, grid)
    return fit


def _three_layer_refit(fit: _Fit, chosen: np.ndarray, y: np.ndarray, xs: np.ndarray, edge: EdgeModel,
                       grid: np.ndarray) -> None:
    """Three tissues where one or two leave the profile unexplained, in place in ``fit``.

    A thin cortex between the tissue on the metal and a darker one beyond it (cancellous bone on the stem, a
    cortex of 1-2 mm, then soft tissue) is three layers: ``a metal w(x) + T1 (G(x - b1) - G(x)) + T2 (G(x - b2)
    - G(x - b1)) + T3 (1 - G(x - b2))``. Two layers cannot explain it: they take the cortex for the tissue on
    the metal (a silent cortical) or leave more than :data:`MAX_FIT_RMS_HU` (an 'unreliable' point). It is
    fitted where the chosen fit leaves more than the noise floor (:data:`NOISE_FLOOR_HU`), over every ``b1`` of
    the layer grid and ``b2`` at least :data:`MIN_LAYER_MM` beyond it, and replaces that fit where it leaves
    less than :data:`LAYER_RESIDUAL_RATIO` of its squared residual (the rule two layers meet against one) and
    its middle tissue is brighter than the other two: a dark middle between brighter tissues is, on the
    phantoms, the first layer bending the fit to the metal's tail, not bone (on a 4 mm cancellous layer it read
    cortical). ``T1`` is then the tissue on the metal and ``b1`` its thickness.

    Args:
        fit: the fit of one tissue or two layers, changed in place where three tissues replace it.
        chosen: that fit's mean squared residual per profile (HU^2).
        y: the profiles as fitted (HU, the samples where the metal's share is at most 0.85).
        xs: their distances past the metal edge (mm).
        edge: the edge spread measured on this CT.
        grid: the layer thicknesses tried (mm).
    """
    rows = np.flatnonzero(chosen > NOISE_FLOOR_HU**2)
    if not rows.size:
        return
    w_x = edge.metal_hu * edge.weight(xs)
    g_x = edge.tissue_weight(xs)
    designs, inner = [], []
    for i, b1 in enumerate(grid):
        g_1 = edge.tissue_weight(xs - b1)
        for b2 in grid[i + 1 :]:
            if b2 - b1 < MIN_LAYER_MM - 1e-9:
                continue
            g_2 = edge.tissue_weight(xs - b2)
            designs.append(np.column_stack([w_x, g_1 - g_x, g_2 - g_1, 1.0 - g_2]))
            inner.append(b1)
    if not designs:
        return
    limit = LAYER_RESIDUAL_RATIO * chosen[rows]

    def undecided(res: np.ndarray, margin: np.ndarray) -> np.ndarray:
        least, tie = _near_tie(res, margin)
        with np.errstate(invalid="ignore"):
            near = (np.abs(least - limit) <= margin) | (np.abs(least - MAX_FIT_RMS_HU**2) <= margin)
        return tie | near

    scale, t1, res = _design_fits(y[rows], designs, undecided)
    k = _first_least(res)
    sub = np.arange(rows.size)
    least = np.where(k >= 0, res[sub, np.maximum(k, 0)], np.inf)
    take = least < limit
    # The three tissues of each row's best design: kept only as a bright layer between darker ones.
    bright_middle = np.zeros(rows.size, dtype=bool)
    for j in np.unique(k[take]):
        sel = np.flatnonzero(take & (k == j))
        coef = y[rows[sel]] @ np.linalg.pinv(designs[j]).T
        bright_middle[sel] = (coef[:, 2] > coef[:, 1]) & (coef[:, 2] > coef[:, 3])
    take &= bright_middle
    at, col = rows[take], k[take]
    fit.tissue_hu[at] = t1[sub[take], col]
    fit.metal_scale[at] = scale[sub[take], col]
    fit.rms_hu[at] = np.sqrt(least[take])
    fit.layer_mm[at] = np.asarray(inner)[col]


def _first_least(res: np.ndarray) -> np.ndarray:
    """Per row, the column of the least finite value (the first of equal ones), -1 where none is finite."""
    if res.shape[1] == 0:
        return np.full(res.shape[0], -1)
    finite = np.where(res < np.inf, res, np.inf)  # NaN -> inf: never chosen
    k = np.argmin(finite, axis=1)
    return np.where(finite[np.arange(res.shape[0]), k] < np.inf, k, -1)


def _near_tie(group: np.ndarray, margin: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of the ``(N, C)`` residuals ``group`` (HU^2): the least finite one (inf where none, NaN counted as
    inf) and whether another lies within the row's ``margin`` (HU^2) of it (a tie a rounding could decide)."""
    finite = np.where(group < np.inf, group, np.inf)
    if finite.shape[1] == 0:
        return np.full(finite.shape[0], np.inf), np.zeros(finite.shape[0], dtype=bool)
    least = finite.min(axis=1)
    close = (finite <= (least + margin)[:, None]).sum(axis=1) > 1
    return least, close & np.isfinite(least)


def _layer_choice_undecided(n_one: int):
    """The rows whose choice in :func:`_layer_fit` a rounding of the residuals could change.

    Returned is ``undecided(res, margin) -> (N,) bool`` for the ``(N, C)`` mean squared residuals (the
    first ``n_one`` columns the one-tissue fits, the rest the two-layer ones) and a per-row ``margin``
    (HU^2) on their error: True where two candidates of a group lie within the margin of each other's
    least, or where the least of a group, their ratio or the chosen residual lies within it of a limit
    (:data:`NOISE_FLOOR_HU`, :data:`LAYER_RESIDUAL_RATIO`, :data:`MAX_FIT_RMS_HU`).
    """

    def undecided(res: np.ndarray, margin: np.ndarray) -> np.ndarray:
        one, tie_one = _near_tie(res[:, :n_one], margin)
        two, tie_two = _near_tie(res[:, n_one:], margin)
        with np.errstate(invalid="ignore"):
            limits = (
                (np.abs(two - LAYER_RESIDUAL_RATIO * one) <= margin)
                | (np.abs(one - NOISE_FLOOR_HU**2) <= margin)
                | (np.abs(one - MAX_FIT_RMS_HU**2) <= margin)
                | (np.abs(two - MAX_FIT_RMS_HU**2) <= margin)
                | (np.abs(two - NOISE_FLOOR_HU**2) <= margin)
            )
        return tie_one | tie_two | limits

    return undecided


#: Rows of profiles fitted at once by :func:`_design_fits` (bounds its memory: rows x designs x 5 floats). A block's
#: squared projections (rows x 924 floats for the three-tissue stage's 231 designs, 30 MB) then stay in the
#: processor's cache between the product, the square and the sum: 4096 rows took half the time of 16384.
_FIT_BLOCK = 4096
#: Relative margin (of a profile's mean square) within which :func:`_design_fits` takes a residual computed
#: as a difference of squares as undecided and computes it again from the residual itself.
_FIT_MARGIN = 1e-9


def _design_fits(y: np.ndarray, designs: list, undecided) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares fits of every profile (row of ``y``, ``(N, M)`` HU) against every design (``(M, k)``, k >= 2).

    Each design is factored once: its pseudo-inverse gives the coefficients ``y @ pinv(A).T``, and its
    orthonormal basis ``Q`` (QR) the mean squared residual ``(|y|^2 - |Q^T y|^2) / M``, for all designs
    in one matrix product per block of rows. A design of lower rank than its columns (relative tolerance
    1e-6) fits nothing: NaN coefficients, infinite residual. The difference of squares loses the last
    digits of ``|y|^2``: the rows ``undecided(res, margin)`` names (a choice the lost digits could change)
    are fitted again with the residual computed from ``y - coef @ A.T`` itself.

    Returns:
        ``(N, C)`` first coefficients, ``(N, C)`` second coefficients, ``(N, C)`` mean squared residuals
        (HU^2), one column per design.
    """
    n, m = y.shape
    c = len(designs)
    pinvs, bases, full = [], [], []
    for a_mat in designs:
        ok = np.linalg.matrix_rank(a_mat, tol=1e-6 * np.abs(a_mat).max()) >= a_mat.shape[1]
        full.append(bool(ok))
        if ok:
            pinvs.append(np.linalg.pinv(a_mat))
            bases.append(np.linalg.qr(a_mat)[0])
        else:
            pinvs.append(np.full((a_mat.shape[1], m), np.nan))
            bases.append(np.zeros((m, 0)))
    first = np.column_stack([p[0] for p in pinvs])
    second = np.column_stack([p[1] for p in pinvs])
    # The designs grouped by their number of basis columns, each group's bases side by side, so that a design's
    # squared projections are summed by a reshape: a one-hot (sum k, C) product did the same sums in
    # O(sum k x C) per row (the three-tissue stage, 231 designs of 4 columns: 1.9 s on a real 3 mm CT).
    widths = np.array([b.shape[1] for b in bases])
    groups = [(np.flatnonzero(widths == k), int(k)) for k in np.unique(widths[widths > 0])]
    group_bases = [np.column_stack([bases[j] for j in cols]) for cols, _ in groups]
    coef0 = np.empty((n, c))
    coef1 = np.empty((n, c))
    res = np.empty((n, c))
    dead = ~np.asarray(full, dtype=bool)
    for s in range(0, n, _FIT_BLOCK):
        yb = y[s : s + _FIT_BLOCK]
        coef0[s : s + _FIT_BLOCK] = yb @ first
        coef1[s : s + _FIT_BLOCK] = yb @ second
        explained = np.zeros((yb.shape[0], c))
        for (cols, k), basis in zip(groups, group_bases):
            proj = ((yb @ basis) ** 2).reshape(yb.shape[0], cols.size, k)
            summed = proj[:, :, 0].copy()
            for i in range(1, k):  # column by column: numpy's sum over an axis of 2-4 is 3x slower
                summed += proj[:, :, i]
            explained[:, cols] = summed
        square = np.einsum("ij,ij->i", yb, yb)
        r = np.maximum(square[:, None] - explained, 0.0) / m
        r[:, dead] = np.inf
        res[s : s + _FIT_BLOCK] = r
    margin = _FIT_MARGIN * np.einsum("ij,ij->i", y, y) / m
    again = np.flatnonzero(undecided(res, margin))
    if again.size:
        ya = y[again]
        for j, a_mat in enumerate(designs):
            if not full[j]:
                continue
            coef = ya @ pinvs[j].T
            coef0[again, j], coef1[again, j] = coef[:, 0], coef[:, 1]
            res[again, j] = ((ya - coef @ a_mat.T) ** 2).mean(axis=1)
    return coef0, coef1, res


def clipped_metal_voxels(volume: Volume) -> int:
    """Voxels at exactly :data:`CLIP_HU` (3071 HU), the ceiling where many scanners clip the metal."""
    arr = volume.array
    return int(np.count_nonzero(arr == CLIP_HU)) if float(np.nanmax(arr)) == CLIP_HU else 0


def resolution_statement(volume: Volume) -> str | None:
    """One plain sentence on what a coarse CT cannot resolve, or ``None`` when the voxels are fine enough."""
    v = _voxel(volume)
    if v <= COARSE_VOXEL_MM:
        return None
    thin = RESOLVED_CORTEX_VOXELS * v
    return (
        f"at {v:.3g} mm voxels a cortex thinner than about {thin:.2g} mm ({RESOLVED_CORTEX_VOXELS:g} voxels) is not "
        "resolved: thin (metaphyseal) cortical contact cannot be measured and reads as cancellous or no bone, and "
        "a cancellous gap thinner than that between the metal and a cortex reads as the cortex beyond it; zones "
        "where the bone cannot be told from the metal's bloom are named in a warning"
    )


@dataclass
class Assessment:
    """What a run decided about the CT and how it samples it.

    Attributes:
        ct_kind: ``"pre-operative"`` or ``"post-operative"``.
        metal_aware: True when the bone is read past the metal's bloom (:func:`sample_metal_aware`).
        detection: the evidence (:func:`detect`).
        edge: the metal edge measured on this CT (post-operative CTs), else ``None``.
        warnings: what the user must know (clipped metal, a model partly out of the metal, offsets that read
            the bloom, what the voxel size cannot resolve).
        resolution: the plain statement of what the voxel size cannot resolve, or ``None``.
    """

    ct_kind: str
    metal_aware: bool
    detection: Detection
    edge: EdgeModel | None = None
    warnings: list = field(default_factory=list)
    resolution: str | None = None
    notes: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The ``postop`` entry of ``parameters.json``."""
        d = {
            "ct_kind": self.ct_kind,
            "metal_aware_sampling": self.metal_aware,
            "evidence": self.detection.evidence,
            "resolution": self.resolution,
            **self.notes,
        }
        if self.edge is not None:
            d["edge"] = self.edge.to_dict()
            d["method"] = {
                "read_metal_weight": READ_METAL_WEIGHT,
                "max_bone_start_mm": self.notes.get("max_bone_start_mm"),
                "walk_depth_mm": self.notes.get("walk_depth_mm"),
                "min_layer_mm": MIN_LAYER_MM,
                "max_fit_rms_hu": MAX_FIT_RMS_HU,
                "metal_scale_range": list(METAL_SCALE_RANGE),
            }
        return d

    def unreliable_warnings(self, vertices, areas: np.ndarray) -> list[str]:
        """A warning with the share of the stem (below the cut) whose bone cannot be told from the bloom."""
        below = vertices["gruen_zone"].to_numpy() > 0
        sampled = below & np.isfinite(vertices["hu"].to_numpy(dtype=float))
        if not sampled.any():
            return []
        bad = sampled & ~vertices["bone_reading_reliable"].to_numpy(dtype=bool)
        share = float(np.asarray(areas)[bad].sum() / np.asarray(areas)[sampled].sum())
        self.notes["fraction_unreliable_below_cut"] = share
        if share < 0.01:
            return []
        return [
            f"{100 * share:.1f}% of the stem surface below the cut is class 'unreliable': there the bone cannot be "
            f"told from the metal's bloom within {self.notes.get('max_bone_start_mm', float('nan')):.3g} mm of the "
            "surface (no metal inside, no edge found, or a profile the blur model does not explain); "
            "they are counted in frac_unreliable, never as bone"
        ]


def unreliable_zone_warnings(post: Assessment, zones) -> list[str]:
    """A warning naming the zones whose sampled area is :data:`ZONE_UNRELIABLE_SHARE` or more 'unreliable'.

    Args:
        post: the run's assessment (the zones named are recorded in its notes, ``zones_mostly_unreliable``).
        zones: the zones table (``zone``, ``frac_unreliable``).
    """
    if "frac_unreliable" not in zones.columns:
        return []
    rows = zones[zones["zone"].astype(str) != "all"]
    share = rows["frac_unreliable"].to_numpy(dtype=float)
    named = [(str(z), float(u)) for z, u in zip(rows["zone"], share) if np.isfinite(u) and u >= ZONE_UNRELIABLE_SHARE]
    post.notes["zones_mostly_unreliable"] = [z for z, _ in named]
    if not named:
        return []
    listed = ", ".join(f"{z} ({100 * u:.0f}%)" for z, u in named)
    return [
        f"zones {listed} are {100 * ZONE_UNRELIABLE_SHARE:.0f}% or more 'unreliable': their cortical, cancellous and "
        "no-bone fractions describe only the rest of the zone, where the bone was told from the bloom, and cannot be "
        "taken as the zone's contact"
    ]


def assess(volume: Volume, points: np.ndarray, normals: np.ndarray, areas: np.ndarray, params) -> Assessment:
    """Detect a post-operative CT, measure its metal edge and decide the sampling (see module text).

    Args:
        volume: the CT (HU).
        points, normals, areas: the analysed surface's vertices (RAS mm), outward unit normals, areas (mm^2).
        params: the :class:`~ImplantBoneContactLib.analysis.AnalysisParameters` (``metal_aware``,
            ``offset_mm``, ``profile``, ``sampling``).
    """
    det = detect(volume, points, normals, areas, params.sampling)
    frac = det.evidence["fraction_area_with_metal_inside"]
    explicit = params.profile is not None or float(params.offset_mm) != 0.0
    out = Assessment(det.ct_kind, False, det)
    out.notes["max_bone_start_mm"] = max_bone_start_mm(volume)
    out.notes["walk_depth_mm"] = walk_depth_mm(volume)
    if det.ct_kind == PRE_OPERATIVE:
        if PARTIAL_MIN_FRACTION <= frac:
            out.warnings.append(
                f"only {100 * frac:.0f}% of the model's surface has metal (>= {METAL_DETECT_HU:g} HU) within "
                f"{det.evidence['inside_depth_mm']:.3g} mm inside it: if the implant is in this CT the model is "
                "only partly in its metal (check the registration); analysed as a pre-operative CT"
            )
        if params.metal_aware == "on":
            out.warnings.append(
                "metal-aware sampling was asked for, but the implant's metal is not in this CT "
                f"({100 * frac:.0f}% of the surface has metal inside it): the CT is sampled as given"
            )
        return out
    out.edge = measure_edge(volume, points, normals, params.sampling)
    out.metal_aware = params.metal_aware == "on" or (params.metal_aware == "auto" and not explicit)
    out.resolution = resolution_statement(volume)
    if out.resolution:
        out.warnings.append(out.resolution)
    if frac < 0.9:
        out.warnings.append(
            f"the CT is post-operative but only {100 * frac:.0f}% of the model's surface has the implant's metal "
            f"(>= {METAL_DETECT_HU:g} HU) within {det.evidence['inside_depth_mm']:.3g} mm inside it: the model is "
            "partly off the implant (registration off by a few mm?); the rest is class 'unreliable'"
        )
    walk = _walk_reused(volume, points, normals, params.sampling, out.edge.metal_hu, out.edge.read_start_mm)
    found = np.isfinite(walk.edge_mm)
    if found.any():
        a = np.asarray(areas, dtype=float)
        off = np.abs(walk.edge_mm[found])
        tol = max(1.0, 0.5 * _voxel(volume))
        far = float(a[found][off > tol].sum() / a[found].sum())
        out.notes["metal_edge_offset_median_mm"] = float(np.median(walk.edge_mm[found]))
        out.notes["metal_edge_offset_p90_mm"] = float(np.percentile(off, 90))
        out.notes["fraction_area_edge_off_surface"] = far
        if far > 0.1:
            out.warnings.append(
                f"the metal edge lies more than {tol:.2g} mm from the model surface on {100 * far:.0f}% of it "
                f"(median offset {np.median(walk.edge_mm[found]):+.2f} mm, 90th percentile {np.percentile(off, 90):.2f} mm "
                "along the outward normal): the model is not where the implant is (registration off?); the bone is "
                "read past the metal's own edge"
            )
    clipped = clipped_metal_voxels(volume)
    out.notes["clipped_voxels_at_3071_hu"] = clipped
    if clipped >= 20:
        out.warnings.append(
            f"{clipped} voxels read exactly {CLIP_HU:g} HU, the CT's maximum: the scanner clipped the metal, "
            f"so its own HU is unknown (read as {out.edge.metal_hu:.0f} HU); the metal edge's spread is measured on "
            f"the clipped edge ({out.edge.blur_mm:.2f} mm)"
        )
    if explicit and not out.metal_aware:
        offsets = params.offsets()
        reach = out.edge.bloom_mm + max(0.0, out.notes.get("metal_edge_offset_median_mm", 0.0))
        low = offsets[offsets < reach]
        if low.size:
            out.warnings.append(
                f"the CT is post-operative and the offsets given ({', '.join(f'{v:g}' for v in offsets[:6])}"
                f"{', ...' if offsets.size > 6 else ''} mm) read the metal's bloom: the metal adds more than 2% of "
                f"its {out.edge.metal_hu:.0f} HU up to {reach:.2g} mm outside the surface on this CT; the default "
                "(no --offset/--profile, --metal-aware auto) reads the bone past the bloom"
            )
    return out


def metal_advice(post: Assessment) -> str:
    """The advice added to the 'surface samples metal' warning of a run that sampled without the metal-aware walk."""
    if post.ct_kind == POST_OPERATIVE:
        return (
            "the CT is post-operative and was sampled without the metal-aware walk: the metal and its bloom read as "
            "bone; run with the defaults (no --offset/--profile, --metal-aware auto) to read the bone past the bloom"
        )
    return (
        "the model seems to touch metal in the CT; if the implant is in this CT, check the registration, then run "
        "with --metal-aware on"
    )
