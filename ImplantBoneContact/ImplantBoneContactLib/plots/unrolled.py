"""``unrolled_hu.png``, ``unrolled_classes.png``: the surface unrolled around the stem axis.

Azimuth (0 medial, 90 anterior, 180 lateral, 270 posterior, 360 medial)
against height above the tip, with the Gruen zone grid. The grid lines are
the zone borders cut from the geometry (:mod:`.borders`), unrolled; the grey
strip above the resection is everything above the unrolled resection line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from ..display import ABOVE_CUT_COLOUR
from . import pixels
from .borders import Border, zone_borders
from .keys import draw_key
from .style import DPI, UNRELIABLE_HU_COLOUR, hu_to_rgb, rgb, run_description, unreliable_vertices, vertex_colours

_WHITE = np.ones(3)


@dataclass
class UnrolledMap:
    """The stem surface unrolled around its axis, on a regular grid.

    Columns run in azimuth from 0 (medial) through 90 (anterior), 180
    (lateral), 270 (posterior) back to 360 (medial); rows run from just above
    the highest point of the resection line (row 0, top) down to the tip.

    Attributes:
        azimuth_deg: ``(W,)`` azimuth of each column centre (degrees).
        height_mm: ``(H,)`` height above the tip of each row centre (mm), decreasing.
        vertex_id: ``(H, W)`` nearest vertex (in the unrolled plane) to each cell; -1 where none.
        hu: ``(H, W)`` HU interpolated linearly between the vertices with a reading to show; NaN in the cells
            of a vertex outside the CT or whose reading is unreliable (post-operative: bone not told from the
            metal's bloom).
        cut_height_mm: ``(W,)`` height of the resection line at each column (mm), from the cut geometry.
        band_heights_mm: ``(2, W)`` heights of the proximal/middle and middle/distal band borders (mm).
        tip_length_mm: height of the tip-zone border (mm).
        mm_per_degree: arc length per degree used to measure distances in the unrolled plane (mm).
        lines: unrolled zone borders: kind and ``(M, 2, 2)`` segments of (azimuth degrees, height mm).
    """

    azimuth_deg: np.ndarray
    height_mm: np.ndarray
    vertex_id: np.ndarray
    hu: np.ndarray
    cut_height_mm: np.ndarray
    band_heights_mm: np.ndarray
    tip_length_mm: float
    mm_per_degree: float
    lines: list = field(default_factory=list)

    def values(self, per_vertex: np.ndarray, fill=np.nan) -> np.ndarray:
        """Any per-vertex array looked up on the grid (nearest vertex); ``fill`` where no vertex."""
        per_vertex = np.asarray(per_vertex)
        out = np.full(self.vertex_id.shape, fill, dtype=np.result_type(per_vertex.dtype, np.asarray(fill).dtype))
        ok = self.vertex_id >= 0
        out[ok] = per_vertex[self.vertex_id[ok]]
        return out

    def above_cut(self) -> np.ndarray:
        """``(H, W)`` True for cells above the resection line."""
        return self.height_mm[:, None] > self.cut_height_mm[None, :]


def _radial(result) -> np.ndarray:
    v = result.vertices
    p = v[["x_mm", "y_mm", "z_mm"]].to_numpy(dtype=float) - result.frame.tip
    axis = np.asarray(result.frame.axis, dtype=float)
    r = p - np.outer(p @ axis, axis)
    return np.linalg.norm(r, axis=1)


def _has_hu_reading(vertices, hu: np.ndarray) -> np.ndarray:
    """True per vertex where its HU is a reading to show: finite, and not class ``unreliable``.

    On a post-operative CT a vertex whose bone could not be told from the metal's bloom keeps the plain
    reading at the bounded depth (finite, so it is counted as 'unreliable'); that value is not the bone at
    the surface and is not drawn as HU.
    """
    return np.isfinite(hu) & ~unreliable_vertices(vertices)


def unroll_segments(frame, segments: np.ndarray) -> np.ndarray:
    """Segments ``(M, 2, 3)`` RAS mm to ``(M', 2, 2)`` (azimuth degrees, height mm).

    A segment crossing 0/360 degrees is given twice, shifted by 360 degrees,
    so each copy ends outside the 0-360 window on one side.
    """
    if segments.shape[0] == 0:
        return np.zeros((0, 2, 2))
    p = segments.reshape(-1, 3)
    uv = np.stack([frame.azimuth(p), frame.height(p)], axis=-1).reshape(-1, 2, 2)
    d = uv[:, 1, 0] - uv[:, 0, 0]
    wrap = np.abs(d) > 180.0
    fixed = uv[wrap].copy()
    fixed[:, 1, 0] -= 360.0 * np.sign(d[wrap])
    other = fixed.copy()
    other[:, :, 0] += 360.0 * np.sign(d[wrap])[:, None]
    return np.concatenate([uv[~wrap], fixed, other])


def _column_heights(uv: np.ndarray, az: np.ndarray, default: float) -> np.ndarray:
    """Height of an unrolled line at each azimuth: the highest segment spanning it; gaps interpolated."""
    out = np.full(az.shape, np.nan)
    if uv.shape[0]:
        a0, a1 = uv[:, 0, 0], uv[:, 1, 0]
        h0, h1 = uv[:, 0, 1], uv[:, 1, 1]
        lo, hi = np.minimum(a0, a1), np.maximum(a0, a1)
        for start in range(0, az.size, 256):
            a = az[start: start + 256][:, None]
            span = (a >= lo[None, :]) & (a <= hi[None, :])
            t = np.where(hi > lo, (a - a0[None, :]) / np.where(a1 != a0, a1 - a0, 1.0)[None, :], 0.5)
            h = np.where(span, h0[None, :] + t * (h1 - h0)[None, :], -np.inf)
            best = h.max(axis=1)
            out[start: start + 256] = np.where(np.isfinite(best), best, np.nan)
    ok = np.isfinite(out)
    if not ok.any():
        return np.full(az.shape, default)
    if not ok.all():
        out[~ok] = np.interp(az[~ok], az[ok], out[ok], period=360.0)
    return out


def _unwrapped_triangles(az: np.ndarray, faces: np.ndarray, max_span_deg: float):
    """Triangles in unrolled azimuth: ``(corners (T, 3), azimuth (T, 3))``, each copy within reach of 0-360.

    A triangle across 0/360 degrees is unwrapped (its corners below 180 + 360)
    and given twice, once shifted by -360. A triangle spanning more than
    ``max_span_deg`` after unwrapping goes round the axis (the tip's pole)
    and is left out.
    """
    a = az[faces]
    span = a.max(axis=1) - a.min(axis=1)
    seam = span > 180.0
    wrapped = np.where(a < 180.0, a + 360.0, a)
    a = np.where(seam[:, None], wrapped, a)
    span = a.max(axis=1) - a.min(axis=1)
    ok = span <= max_span_deg
    plain = ok & ~seam
    both = ok & seam
    corners = np.concatenate([faces[plain], faces[both], faces[both]])
    azimuths = np.concatenate([a[plain], a[both], a[both] - 360.0])
    return corners, azimuths


def _rasterise(x: np.ndarray, y: np.ndarray, depth: np.ndarray, width: int, height: int):
    """Rasterise triangles onto a grid of unit cells whose centres are at integer + 0.5.

    Args:
        x, y: ``(T, 3)`` corner coordinates in cell units (column, row).
        depth: ``(T,)`` priority of each triangle where several cover a cell (the largest wins).
        width, height: grid size (cells).

    Returns:
        ``(rows, cols, triangle, weights)``: each covered cell once, the triangle covering it and
        the barycentric weights ``(N, 3)`` of the cell centre in it.
    """
    c0 = np.clip(np.ceil(x.min(axis=1) - 0.5), 0, width).astype(np.int64)
    c1 = np.clip(np.floor(x.max(axis=1) - 0.5), -1, width - 1).astype(np.int64)
    r0 = np.clip(np.ceil(y.min(axis=1) - 0.5), 0, height).astype(np.int64)
    r1 = np.clip(np.floor(y.max(axis=1) - 0.5), -1, height - 1).astype(np.int64)
    nc = np.maximum(c1 - c0 + 1, 0)
    nr = np.maximum(r1 - r0 + 1, 0)
    count = nc * nr
    tri = np.repeat(np.arange(x.shape[0]), count)
    local = np.arange(tri.size) - np.repeat(np.cumsum(count) - count, count)
    cols = c0[tri] + local % nc[tri]
    rows = r0[tri] + local // nc[tri]
    # Per triangle: the corner A and the inverse of the 2x2 matrix of its edges AB, AC.
    v0x, v0y = x[:, 1] - x[:, 0], y[:, 1] - y[:, 0]
    v1x, v1y = x[:, 2] - x[:, 0], y[:, 2] - y[:, 0]
    den = v0x * v1y - v1x * v0y
    flat = den == 0.0
    inv = 1.0 / np.where(flat, 1.0, den)
    wx = cols + (0.5 - x[tri, 0])
    wy = rows + (0.5 - y[tri, 0])
    b = (wx * v1y[tri] - wy * v1x[tri]) * inv[tri]
    c = (wy * v0x[tri] - wx * v0y[tri]) * inv[tri]
    a = 1.0 - b - c
    eps = -1e-9
    inside = (a >= eps) & (b >= eps) & (c >= eps) & ~flat[tri]
    rows, cols, tri = rows[inside], cols[inside], tri[inside]
    weights = np.stack([a[inside], b[inside], c[inside]], axis=1)
    # One triangle per cell: the one with the largest depth (ties: the later triangle).
    cell = rows * width + cols
    rank = np.empty(depth.size, dtype=np.int64)
    rank[np.argsort(depth, kind="stable")] = np.arange(depth.size)
    best = np.full(width * height, -1, dtype=np.int64)
    np.maximum.at(best, cell, rank[tri])
    keep = rank[tri] == best[cell]
    return rows[keep], cols[keep], tri[keep], weights[keep]


def unrolled_map(result, width_px: int = 720, height_px: int = 520, pad_deg: float = 30.0,
                 borders: list[Border] | None = None) -> UnrolledMap:
    """Unroll the surface around the stem axis onto a regular (azimuth, height) grid.

    The mesh's own triangles are drawn in the unrolled plane (azimuth as arc
    length at the stem's median radius, ``mm_per_degree``, against height):
    each grid cell shows the vertex with the largest barycentric weight at
    its centre (the vertex whose third of the triangle it falls in: the area
    the vertex carries in the statistics, as in the 3D views) and the HU
    interpolated linearly between the triangle's corners that have a reading
    to show (not outside the CT, not class ``unreliable``; the others' weights
    scaled to sum 1); the cells of a vertex without one are NaN. Where the surface
    folds over itself in the unrolled plane, the part farthest from the axis
    is shown. Triangles around the axis at the tip (more than 90 degrees wide
    unrolled) are left out, and the cells below the lowest drawn cell of each
    column within 5 mm of the tip repeat that cell (the pole of the map).

    Args:
        result: the analysis result.
        width_px, height_px: grid size (cells).
        pad_deg: kept for compatibility; the map is continuous across 0/360 degrees without padding.
        borders: from :func:`~.borders.zone_borders` (cut if ``None``).
    """
    from ..mesh import triangles as mesh_triangles

    if borders is None:
        borders = zone_borders(result.surface, result.frame, result.parameters.bands_axial)
    frame = result.frame
    v = result.vertices
    az = v["azimuth_deg"].to_numpy(dtype=float)
    h = v["height_mm"].to_numpy(dtype=float)
    hu = v["hu"].to_numpy(dtype=float)
    zone = v["gruen_zone"].to_numpy()
    r = _radial(result)
    below = zone > 0
    r_med = float(np.median(r[below] if below.any() else r))
    mm_per_deg = max(2.0 * math.pi * r_med / 360.0, 1e-3)

    az_cols = (np.arange(width_px) + 0.5) * 360.0 / width_px
    lines = [(b.kind, unroll_segments(frame, b.segments)) for b in borders]
    top_default = float(h[below].max()) if below.any() else float(h.max())
    cut = _column_heights(next(uv for k, uv in lines if k == "resection"), az_cols, top_default)
    band_uv = [uv for k, uv in lines if k == "band"]
    fractions = np.cumsum(np.asarray(result.parameters.bands_axial, dtype=float))[:2]
    band_lines = np.stack([_column_heights(uv, az_cols, float(np.median(cut)) * (1 - f))
                           for uv, f in zip(band_uv, fractions)]) if band_uv else np.zeros((2, width_px))
    if frame.tip_length_mm > 0:
        # A band border inside the tip zone (a stem shorter than three tip lengths) is no border: the tip zone
        # holds that part of the band, as it does in the zone assignment.
        band_lines[band_lines <= frame.tip_length_mm] = np.nan
    top = min(float(np.nanmax(cut)) + 3.0, float(h.max()))
    heights = top - (np.arange(height_px) + 0.5) * top / height_px

    faces = mesh_triangles(result.surface)
    faces = faces[(h[faces] <= top + 15.0).any(axis=1)]
    corners, tri_az = _unwrapped_triangles(az, faces, max_span_deg=90.0)
    # Cell units: column centres at (j + 0.5) * 360 / W degrees, row centres at top - (i + 0.5) * top / H mm.
    cx = tri_az * (width_px / 360.0)
    cy = (top - h[corners]) * (height_px / top)
    rows, cols, tri, weights = _rasterise(cx, cy, r[corners].mean(axis=1), width_px, height_px)
    vid = np.full((height_px, width_px), -1, dtype=np.int64)
    hu_grid = np.full((height_px, width_px), np.nan)
    tri_corners = corners[tri]
    owner = tri_corners[np.arange(tri.size), np.argmax(weights, axis=1)]
    vid[rows, cols] = owner
    # Linear between the corners that have a reading to show; a corner outside the CT (NaN) or whose reading
    # is unreliable (a post-operative CT's fallback value, not bone) is left out and the other corners' weights
    # scaled to sum 1, so its value never spreads into its neighbours' cells. Cells of such a vertex stay NaN.
    usable = _has_hu_reading(v, hu)
    corner_ok = usable[tri_corners]
    w_ok = np.where(corner_ok, weights, 0.0)
    w_sum = w_ok.sum(axis=1)
    hu_cells = np.einsum("ij,ij->i", np.where(corner_ok, hu[tri_corners], 0.0), w_ok) / np.where(w_sum > 0, w_sum, 1.0)
    hu_grid[rows, cols] = np.where(usable[owner] & (w_sum > 0), hu_cells, np.nan)
    # The pole: below the lowest drawn cell of a column, near the tip, repeat that cell.
    drawn = vid >= 0
    row_idx = np.where(drawn, np.arange(height_px)[:, None], -1)
    last = np.maximum.accumulate(row_idx, axis=0)
    fill = ~drawn & (last >= 0) & (heights[:, None] < 5.0)
    if fill.any():
        fr, fc = np.nonzero(fill)
        vid[fr, fc] = vid[last[fr, fc], fc]
        hu_grid[fr, fc] = hu_grid[last[fr, fc], fc]
    return UnrolledMap(
        azimuth_deg=az_cols,
        height_mm=heights,
        vertex_id=vid,
        hu=hu_grid,
        cut_height_mm=cut,
        band_heights_mm=band_lines,
        tip_length_mm=float(frame.tip_length_mm),
        mm_per_degree=mm_per_deg,
        lines=lines,
    )


def unrolled_rgb(result, umap: UnrolledMap, kind: str) -> np.ndarray:
    """RGB (0..1) of the map cells: HU or class colours, grey above the resection line, white where no surface.

    In HU, the cells of class ``unreliable`` vertices are :data:`~.style.UNRELIABLE_HU_COLOUR` (their value is
    not a bone reading), those of vertices outside the CT :data:`~ImplantBoneContactLib.display.NOT_SAMPLED_COLOUR`.
    """
    if kind == "hu":
        out = hu_to_rgb(umap.hu)
        unreliable = unreliable_vertices(result.vertices)
        if unreliable.any():
            out[umap.values(unreliable, fill=False)] = rgb(UNRELIABLE_HU_COLOUR)
    elif kind == "class":
        per_vertex = vertex_colours(result, "class", grey_above_cut=False)
        out = np.stack([umap.values(per_vertex[:, c], fill=1.0) for c in range(3)], axis=-1)
    else:
        raise ValueError(f"kind must be 'hu' or 'class', got {kind!r}")
    out[umap.above_cut()] = rgb(ABOVE_CUT_COLOUR)
    out[umap.vertex_id < 0] = _WHITE
    return out


#: Share of the map's cells between the resection line and the tip that must lack a surface before the
#: key names white: a few cells at a rounded tip's edge or along a seam are not worth a legend entry.
NO_SURFACE_MIN_SHARE = 0.005


def has_no_surface_cells(umap: UnrolledMap) -> bool:
    """True when more than :data:`NO_SURFACE_MIN_SHARE` of the cells below the resection line lack a surface (white)."""
    below = ~umap.above_cut() & (umap.height_mm[:, None] > 0.0)
    if not below.any():
        return False
    return float((umap.vertex_id[below] < 0).mean()) > NO_SURFACE_MIN_SHARE


def unrolled_figure(result, kind: str = "hu", umap: UnrolledMap | None = None) -> Figure:
    """The unrolled map (``kind`` ``"hu"`` or ``"class"``) with the Gruen zone grid and numbers.

    Args:
        result: the analysis result.
        kind: colour by HU (fixed range) or by contact class.
        umap: from :func:`unrolled_map` (computed if ``None``).
    """
    if umap is None:
        umap = unrolled_map(result)
    image = unrolled_rgb(result, umap, kind)
    hgt, wid = image.shape[:2]
    left, right, top, bottom = 90, 290, 96, 74
    fig, ax = unrolled_axes(image, umap, (left, right, top, bottom), minor_ticks=True)
    fig_w, fig_h = left + wid + right, top + hgt + bottom
    draw_zone_grid(ax, umap)
    # Zone numbers at the middle of each cell of the grid.
    for zone, azimuth, height in zone_cell_centres(umap):
        ax.text(azimuth, height, str(zone), ha="center", va="center", fontsize=11, weight="bold",
                bbox=dict(boxstyle="round,pad=0.22", fc="white", ec="#333333", lw=0.6, alpha=0.85))
    title = "Unrolled contact map: " + ("HU at the stem surface" if kind == "hu" else "contact class at the stem surface")
    fig.text(0.5, 1 - 14 / fig_h, title, ha="center", va="top", fontsize=15, weight="bold")
    fig.text(0.5, 1 - 40 / fig_h, run_description(result), ha="center", va="top", fontsize=10, color="#222222")
    fig.text(0.5, 1 - 58 / fig_h, "azimuth around the stem axis against height, from the resection line (top) to the tip; "
             "lines: Gruen zone borders (dashed: sector borders)", ha="center", va="top", fontsize=9, color="#444444")
    key = (1 - (right - 20) / fig_w, bottom / fig_h, (right - 40) / fig_w, hgt / fig_h)
    draw_key(fig, result, kind, key, bar_fraction=0.68, no_surface=has_no_surface_cells(umap))
    ax.set_label("unrolled")
    return fig


def unrolled_axes(image: np.ndarray, umap: UnrolledMap, margins_px: tuple, minor_ticks: bool = True):
    """A figure with the unrolled ``image`` (rows from the resection line down to the tip) on azimuth/height axes.

    Args:
        image: RGB rows x columns, as :func:`unrolled_rgb` makes it.
        umap: the map the image was made from (heights of its rows).
        margins_px: left, right, top, bottom margins of the figure in pixels.
        minor_ticks: also label 45, 135, 225 and 315 degrees.

    Returns:
        ``(figure, axes)``; the axes are labelled ``"unrolled"``.
    """
    left, right, top, bottom = margins_px
    hgt, wid = image.shape[:2]
    fig_w, fig_h = left + wid + right, top + hgt + bottom
    fig = Figure(figsize=(fig_w / DPI, fig_h / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((left / fig_w, bottom / fig_h, wid / fig_w, hgt / fig_h))
    top_mm = float(umap.height_mm[0] + 0.5 * (umap.height_mm[0] - umap.height_mm[1]))
    # The map one cell per pixel, under the axes (whose background is left out): no resampling.
    rgb8 = image if image.dtype == np.uint8 else (255.0 * np.clip(image, 0.0, 1.0) + 0.5).astype(np.uint8)
    pixels.add_image(fig, rgb8, left, bottom, zorder=-1)
    ax.patch.set_visible(False)
    ax.set_xlim(0, 360)
    ax.set_ylim(0, top_mm)
    named = {0: "0\u00b0\nmedial", 90: "90\u00b0\nanterior", 180: "180\u00b0\nlateral", 270: "270\u00b0\nposterior",
             360: "360\u00b0\nmedial"}
    ticks = list(range(0, 361, 45 if minor_ticks else 90))
    ax.set_xticks(ticks)
    ax.set_xticklabels([named.get(t, f"{t}\u00b0") for t in ticks], fontsize=9)
    ax.set_ylabel("height above the tip (mm)", fontsize=10)
    ax.tick_params(labelsize=9)
    return fig, ax


def draw_zone_grid(ax, umap: UnrolledMap) -> None:
    """The Gruen zone borders on unrolled axes, white under black so they read on dark and light colours alike.

    The resection, band and tip borders as one line each (their unrolled heights per column); the sector
    borders, cut from the geometry, straight and dashed.
    """
    az = umap.azimuth_deg
    solid = [np.stack([az, umap.cut_height_mm], axis=1)] + [np.stack([az, b], axis=1) for b in umap.band_heights_mm]
    if umap.tip_length_mm > 0:
        solid.append(np.array([[0.0, umap.tip_length_mm], [360.0, umap.tip_length_mm]]))
    dashed = []
    for line_kind, uv in umap.lines:
        if line_kind != "sector" or uv.shape[0] == 0:
            continue
        a = float(np.median(uv[:, :, 0]))
        dashed.append(np.array([[a, uv[:, :, 1].min()], [a, uv[:, :, 1].max()]]))
    for segs, style in ((solid, "solid"), (dashed, (0, (5, 3)))):
        ax.add_collection(LineCollection(segs, colors="white", linewidths=2.4, capstyle="butt"))
        ax.add_collection(LineCollection(segs, colors="black", linewidths=1.3, linestyles=style, capstyle="butt"))


def zone_cell_centres(umap: UnrolledMap) -> list[tuple[int, float, float]]:
    """``(zone, azimuth_deg, height_mm)`` at the middle of each Gruen zone's cell of the unrolled grid.

    The medial sector straddles 0/360 degrees, so its zones appear twice; without a tip zone (tip length 0)
    the tip zones are left out, and so are the zones of a band that lies wholly in the tip zone (a band border
    at or below the tip zone's is NaN in ``band_heights_mm``: the band ends at the tip zone).
    """
    az = umap.azimuth_deg
    tip = umap.tip_length_mm
    sectors = {"medial": (7, 6, 5, 4), "anterior": (8, 9, 10, 11), "lateral": (1, 2, 3, 4), "posterior": (14, 13, 12, 11)}
    centres = {"medial": (22.5, 337.5), "anterior": (90.0,), "lateral": (180.0,), "posterior": (270.0,)}
    out = []
    for sector, zones in sectors.items():
        for a in centres[sector]:
            k = min(int(a / 360.0 * len(az)), len(az) - 1)
            borders = [umap.band_heights_mm[0][k], umap.band_heights_mm[1][k]]
            floor = max(tip, 0.0)
            levels = [umap.cut_height_mm[k]] + [b if np.isfinite(b) else floor for b in borders] + [floor]
            for band in range(3):
                if levels[band] > levels[band + 1]:
                    out.append((zones[band], a, 0.5 * (levels[band] + levels[band + 1])))
            if tip > 0:
                out.append((zones[3], a, 0.5 * tip))
    return out
