"""``heatmap_hu.png``, ``zones.png``, ``contact_classes.png``: the stem seen from four sides.

Parallel projection, proximal up, the same scale in every view. Each vertex
owns the part of the surface closest to it (its third of every adjacent
triangle), which is exactly the area it carries in the statistics, so the HU
and class colours show what the numbers count. Zones and the resection are
taken per pixel from the pixel's RAS position, and the zone borders are
drawn from the zone planes cut against the surface (:mod:`.borders`), so
both are exact rather than as coarse as the mesh.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from matplotlib.figure import Figure

from ..display import ABOVE_CUT_COLOUR, HU_COLORMAP, HU_DISPLAY_RANGE
from ..frame import ZONE_ORDER
from . import pixels
from .borders import Border, zone_borders
from .keys import draw_key
from .render import VIEWS, ViewGeometry, render_geometry
from .style import DPI, rgb, run_description, vertex_colours, zone_rgb


@dataclass
class SurfaceView:
    """One offscreen rendering of the stem, coloured.

    Attributes:
        name: ``"anterior"``, ``"posterior"``, ``"medial"`` or ``"lateral"``: the side the camera looks at.
        image: ``(H, W, 3)`` uint8 RGB, white background, shaded.
        vertex_id: ``(H, W)`` index (row of ``result.vertices``) of the vertex whose
            area patch is seen at each pixel; -1 on the background.
        right: RAS unit vector pointing to the right of the picture.
        up: RAS unit vector pointing up in the picture (proximal: minus the stem axis).
        toward_viewer: RAS unit vector from the stem toward the camera.
        mm_per_pixel: picture scale (mm per pixel, the same in every view).
        centre: RAS point (mm) at the centre of the picture.
        geometry: the supersampled rendering it was coloured from (positions, depth for visibility).
    """

    name: str
    image: np.ndarray
    vertex_id: np.ndarray
    right: np.ndarray
    up: np.ndarray
    toward_viewer: np.ndarray
    mm_per_pixel: float
    centre: np.ndarray
    geometry: ViewGeometry | None = None

    def project(self, pts: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``(column, row)`` (row 0 at the top) of RAS points (mm)."""
        d = np.asarray(pts, dtype=float) - self.centre
        h, w = self.vertex_id.shape
        col = (w / 2.0) + (d @ self.right) / self.mm_per_pixel - 0.5
        row = (h / 2.0) - (d @ self.up) / self.mm_per_pixel - 0.5
        return np.stack([col, row], axis=-1)

    def pixel_zones(self, result) -> np.ndarray:
        """Gruen zone (sector scheme) at each output pixel from its RAS position; -1 on the background."""
        return self.geometry.output_pixels(result)["zone"]


def colour_views(result, geometry: list[ViewGeometry], colouring: str) -> list[SurfaceView]:
    """Colour rendered views: each pixel gets its colour times the lighting.

    HU and class: the colour of the vertex whose patch the pixel shows.
    Zones: the zone of the pixel's own RAS position. In every colouring a
    pixel above the resection plane is :data:`ABOVE_CUT_COLOUR`. The
    silhouette is anti-aliased by the share of the pixel's sub-pixels on the
    stem, and the light is their mean; the colour is that of one sub-pixel.

    Args:
        result: the analysis result the geometry was rendered from.
        geometry: from :func:`~.render.render_geometry`.
        colouring: ``"hu"``, ``"zone"`` or ``"class"`` (see :func:`~.style.vertex_colours`).
    """
    rgb_v = vertex_colours(result, colouring, grey_above_cut=False) if colouring != "zone" else None
    if colouring not in ("hu", "zone", "class"):
        raise ValueError(f"colouring must be 'hu', 'zone' or 'class', got {colouring!r}")
    grey = rgb(ABOVE_CUT_COLOUR).astype(np.float32)
    out = []
    for g in geometry:
        px = g.output_pixels(result)
        ids, zones = px["vertex_id"], px["zone"]
        on = ids >= 0
        if colouring == "zone":
            colour = zone_rgb(zones[on]).astype(np.float32)
        else:
            colour = rgb_v[ids[on]].astype(np.float32)
            colour[zones[on] == 0] = grey
        # Lit colour on the stem, blended with the white background by the pixel's coverage (anti-aliasing).
        cover = px["coverage"][on].astype(np.float32)[:, None]
        img = np.full(ids.shape + (3,), 255, dtype=np.uint8)
        lit = colour * px["shade"][on].astype(np.float32)[:, None]
        img[on] = np.clip(np.rint(255.0 * (cover * lit + (1.0 - cover))), 0, 255).astype(np.uint8)
        out.append(SurfaceView(
            name=g.name, image=img, vertex_id=ids, right=g.right, up=g.up,
            toward_viewer=g.toward_viewer, mm_per_pixel=g.mm_per_pixel, centre=g.centre, geometry=g,
        ))
    return out


def render_surface_views(
    result,
    colouring: str = "hu",
    views: tuple[str, ...] = VIEWS,
    panel_px: tuple[int, int] = (290, 620),
) -> list[SurfaceView]:
    """The stem rendered offscreen from each view and coloured (``"hu"``, ``"zone"`` or ``"class"``).

    Returns one :class:`SurfaceView` per view: the picture and, per pixel,
    the vertex it shows, so callers can look up any per-vertex value.
    """
    return colour_views(result, render_geometry(result, views, panel_px), colouring)


def visible_border_lines(view: SurfaceView, border: Border) -> np.ndarray:
    """Pixel segments ``(M, 2, 2)`` (column, row) of the parts of a border the view shows."""
    segs = border.segments
    if segs.shape[0] == 0 or view.geometry is None:
        return np.zeros((0, 2, 2))
    g = view.geometry
    # The same for every colouring of one rendering: kept on the rendering, by border.
    cache = g.__dict__.setdefault("_visible_lines", {})
    hit = cache.get(id(border))
    if hit is not None and hit[0] is border:
        return hit[1]
    mid = segs.mean(axis=1)
    ok = g.visible(segs[:, 0]) & g.visible(segs[:, 1]) & g.visible(mid)
    lines = view.project(segs[ok].reshape(-1, 3)).reshape(-1, 2, 2)
    cache[id(border)] = (border, lines)
    return lines


def side_word(vec: np.ndarray, frame) -> str:
    """Anatomical name of the direction closest to ``vec`` (within the cross-section plane)."""
    names = {"medial": frame.medial, "lateral": -frame.medial, "anterior": frame.anterior, "posterior": -frame.anterior}
    return max(names, key=lambda k: float(np.dot(vec, names[k])))


def _box_count(mask: np.ndarray, half: int) -> np.ndarray:
    """Number of True pixels in the (2 half + 1)^2 window around each pixel (integral image)."""
    m = np.pad(mask.astype(np.int32), half + 1)
    ii = m.cumsum(0).cumsum(1)
    k = 2 * half + 1
    h, w = mask.shape
    return ii[k: k + h, k: k + w] - ii[:h, k: k + w] - ii[k: k + h, :w] + ii[:h, :w]


def zone_label_positions(zpx: np.ndarray, min_fraction: float = 0.02) -> dict[int, tuple[float, float]]:
    """Pixel (column, row) well inside each zone's visible part, for zones covering enough of the view."""
    fg = zpx >= 0
    total = fg.sum()
    out = {}
    if not total:
        return out
    for z in ZONE_ORDER:
        mask = zpx == z
        if mask.sum() < min_fraction * total:
            continue
        # Among the pixels whose surroundings (a label-sized window) are most filled by the zone,
        # the one nearest the zone's median: the label sits on the zone, not across its edge.
        rows, cols = np.nonzero(mask)
        r0, c0 = rows.min(), cols.min()
        sub = mask[r0: rows.max() + 1, c0: cols.max() + 1]  # the zone's bounding box holds every candidate
        count = np.where(sub, _box_count(sub, 6), -1)
        r, c = np.nonzero(count >= 0.9 * count.max())
        rm, cm = np.median(rows) - r0, np.median(cols) - c0
        k = np.argmin((r - rm) ** 2 + (c - cm) ** 2)
        out[z] = (float(c[k] + c0), float(r[k] + r0))
    return out


def _panel_layout(n_panels: int, panel_px: tuple[int, int], right_px: int):
    """Figure size and the panels' top left corners in figure pixels (origin at the top left)."""
    w, h = panel_px
    left, gap, top, bottom = 16, 18, 100, 58
    fig_w = left + n_panels * w + (n_panels - 1) * gap + right_px
    fig_h = top + h + bottom
    corners = [(left + i * (w + gap), top) for i in range(n_panels)]
    side = ((left + n_panels * (w + gap)) / fig_w, bottom / fig_h, (right_px - gap - 10) / fig_w, h / fig_h)
    return fig_w, fig_h, corners, side


TITLES = {
    "hu": "Hounsfield units at the stem surface",
    "zone": "Gruen zones on the stem surface",
    "class": "Contact classes at the stem surface",
}


def surface_views_figure(result, colouring: str, views: list[SurfaceView] | None = None,
                         borders: list[Border] | None = None) -> Figure:
    """The four views side by side with titles, orientation words, zone borders, scale bar and colour bar or legend.

    Each panel shows its :class:`SurfaceView` image pixel for pixel (no
    resampling, no axes); ``figure.panels`` holds a :class:`~.pixels.Panel`
    per view (where its image is in the PNG, its title, the zone numbers
    written on it).

    Args:
        result: the analysis result.
        colouring: ``"hu"``, ``"zone"`` or ``"class"``.
        views: from :func:`render_surface_views` with the same colouring (rendered if ``None``).
        borders: from :func:`~.borders.zone_borders` (cut if ``None``).
    """
    from matplotlib.patheffects import withStroke

    if views is None:
        views = render_surface_views(result, colouring)
    if borders is None:
        borders = zone_borders(result.surface, result.frame, result.parameters.bands_axial)
    frame = result.frame
    params = result.parameters
    h, w = views[0].image.shape[:2]
    right_px = {"hu": 250, "zone": 200, "class": 240}[colouring]
    fig_w, fig_h, corners, side = _panel_layout(len(views), (w, h), right_px)
    fig = pixels.figure_px(fig_w, fig_h, DPI)
    detail = {
        "hu": f"colour range fixed at {HU_DISPLAY_RANGE[0]:g} to {HU_DISPLAY_RANGE[1]:g} HU ({HU_COLORMAP}) for every case",
        "zone": "zones 1-7 (AP view) and 8-14 (lateral view)"
        + ("; sector zones shown, the zone table uses the projection scheme" if params.zone_scheme == "projection" else ""),
        "class": f"classes '{params.classes}'",
    }[colouring]
    fig.text(0.5, 1 - 14 / fig_h, TITLES[colouring], ha="center", va="top", fontsize=15, weight="bold")
    fig.text(0.5, 1 - 40 / fig_h, run_description(result), ha="center", va="top", fontsize=10, color="#222222")
    fig.text(0.5, 1 - 58 / fig_h, f"{detail}; lines: Gruen zone borders and the resection line",
             ha="center", va="top", fontsize=9, color="#444444")
    heavy, thin = [], []
    for i, (view, (x0, y0)) in enumerate(zip(views, corners)):
        pixels.image(fig, view.image, x0, y0)
        title = f"{view.name.capitalize()} view"
        panel = pixels.Panel(view.name, (x0, y0, w, h), title)
        fig.panels[view.name] = panel
        pixels.text(fig, x0 + 0.5 * w, y0 - 6, title, ha="center", va="baseline", fontsize=12)
        for b in borders:
            segs = visible_border_lines(view, b)
            (heavy if b.kind == "resection" else thin).append(segs + np.array([x0, y0]))
        left_word = side_word(-view.right, frame)
        right_word = side_word(view.right, frame)
        pixels.text(fig, x0 + 0.5 * w, y0 + h + 8, f"\u2190 {left_word}    {right_word} \u2192", ha="center", va="top",
                    fontsize=9.5, color="#333333")
        if i == 0:
            pixels.text(fig, x0, y0, "proximal \u2191", ha="left", va="top", fontsize=9, color="#444444")
        if colouring == "zone":
            for z, (cx, cy) in zone_label_positions(view.pixel_zones(result)).items():
                panel.labels.append((str(z), cx, cy))
                pixels.text(fig, x0 + cx + 0.5, y0 + cy + 0.5, str(z), ha="center", va="center", fontsize=10,
                            weight="bold", color="black", path_effects=[withStroke(linewidth=3, foreground="white")])
    pixels.segments(fig, np.concatenate(thin + [np.zeros((0, 2, 2))]), 0, 0, color="#1a1a1a", lw=1.0, alpha=0.85,
                    solid_capstyle="round")
    pixels.segments(fig, np.concatenate(heavy + [np.zeros((0, 2, 2))]), 0, 0, color="black", lw=1.6,
                    solid_capstyle="round")
    draw_key(fig, result, colouring, side)
    # Scale bar under the key: the panels show the renderings one to one.
    bar_px = 50.0 / views[0].mm_per_pixel
    x0, y0 = side[0] * fig_w, fig_h - (side[1] * fig_h + 8)
    pixels.polyline(fig, [x0, x0 + bar_px], [y0, y0], color="black", lw=3, solid_capstyle="butt")
    pixels.text(fig, x0 + 0.5 * bar_px, y0 - 5, "50 mm (all views)", ha="center", va="bottom", fontsize=9)
    return fig
