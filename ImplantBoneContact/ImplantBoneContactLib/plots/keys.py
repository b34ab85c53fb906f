"""Colour bars and legends shared by the pictures."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..classes import UNCLASSIFIED, parse_classes
from ..display import ABOVE_CUT_COLOUR, HU_COLORMAP, HU_DISPLAY_RANGE, NOT_SAMPLED_COLOUR, UNCLASSIFIED_COLOUR, ZONE_COLOURS
from ..frame import ZONE_ORDER
from .style import (
    SHORT_REGION,
    UNRELIABLE_HU_COLOUR,
    UNRELIABLE_HU_LABEL,
    class_colours,
    class_label,
    hu_norm,
    unreliable_vertices,
)

#: Legend text of the unrolled maps' white cells: no surface at that azimuth and height (a stem that is
#: not a tube around its axis: a nail's screw hole, a segmented implant's notches).
NO_SURFACE_LABEL = "no stem surface there\n(at that azimuth and height)"


def legend_handles(result, colouring: str, no_surface: bool = False) -> list[Patch]:
    """Legend entries of a colouring (``"hu"``, ``"zone"`` or ``"class"``); ``no_surface``: also white, :data:`NO_SURFACE_LABEL`.

    The HU key names :data:`~.style.UNRELIABLE_HU_COLOUR` when any vertex is class ``unreliable``.
    """
    handles = []
    if colouring == "zone":
        for z in ZONE_ORDER:
            handles.append(Patch(facecolor=ZONE_COLOURS[z], edgecolor="#555555", label=f"{z} {SHORT_REGION[z]}"))
    elif colouring == "class":
        colours = class_colours(result)
        for name in result.class_names:
            handles.append(Patch(facecolor=colours[name], edgecolor="#555555", label=class_label(result, name)))
        cls = result.vertices["contact_class"].to_numpy()
        if (cls == UNCLASSIFIED).any():
            handles.append(Patch(facecolor=UNCLASSIFIED_COLOUR, edgecolor="#555555", label="unclassified"))
    if colouring == "hu" and unreliable_vertices(result.vertices).any():
        handles.append(Patch(facecolor=UNRELIABLE_HU_COLOUR, edgecolor="#555555", label=UNRELIABLE_HU_LABEL))
    if colouring != "zone":
        handles.append(Patch(facecolor=NOT_SAMPLED_COLOUR, edgecolor="#555555", label="outside the CT (no HU)"))
    handles.append(Patch(facecolor=ABOVE_CUT_COLOUR, edgecolor="#555555", label="above the resection\n(not analysed)"))
    if no_surface:
        handles.append(Patch(facecolor="white", edgecolor="#555555", label=NO_SURFACE_LABEL))
    return handles


def hu_colourbar(fig: Figure, cax, result) -> None:
    """HU colour bar with the contact-class limits marked and the class names beside it."""
    from matplotlib.cm import ScalarMappable

    lo_r, hi_r = HU_DISPLAY_RANGE
    sm = ScalarMappable(norm=hu_norm(), cmap=colormaps[HU_COLORMAP])
    cb = fig.colorbar(sm, cax=cax, extend="both")
    cb.set_label("HU", fontsize=10)
    cb.ax.tick_params(labelsize=9)
    # Class limits on the bar so the colours read as classes too.
    for b in parse_classes(result.parameters.classes):
        lo, hi = max(b.low_hu, lo_r), min(b.high_hu, hi_r)
        if lo_r < b.low_hu < hi_r:
            cb.ax.axhline(b.low_hu, color="white", lw=2.4)
            cb.ax.axhline(b.low_hu, color="black", lw=1.0)
        if lo < hi:
            cb.ax.text(-0.35, 0.5 * (lo + hi), b.name.replace("_", " "), transform=cb.ax.get_yaxis_transform(),
                       ha="right", va="center", fontsize=8.5, color="#333333")


def hu_bar(fig: Figure, column: float, row: float, width: int, height: int, result) -> None:
    """The HU colour bar drawn in figure pixels (top left at ``(column, row)``), no axes.

    The colours of :data:`HU_DISPLAY_RANGE` (:data:`HU_COLORMAP`) from the
    bottom to the top, triangles for the values beyond, a tick every 250 HU,
    and the contact-class limits marked with the class names beside the bar.
    """
    from matplotlib.patches import Polygon
    from matplotlib.transforms import IdentityTransform

    from . import pixels
    from .style import hu_to_rgb

    lo_r, hi_r = HU_DISPLAY_RANGE
    width, height = int(width), int(height)
    hu_rows = hi_r - (np.arange(height) + 0.5) * (hi_r - lo_r) / height
    colours = np.repeat(hu_to_rgb(hu_rows)[:, None, :], width, axis=1)
    pixels.image(fig, (255 * colours + 0.5).astype(np.uint8), column, row)
    fig_h = fig.get_figheight() * fig.dpi
    tri = 0.9 * width
    x0, x1, xm = column, column + width, column + 0.5 * width
    y_top, y_bottom = fig_h - row, fig_h - row - height
    ends = (([x0, y_top], [x1, y_top], [xm, y_top + tri]), ([x0, y_bottom], [x1, y_bottom], [xm, y_bottom - tri]))
    for pts, hu in zip(ends, (hi_r + 1.0, lo_r - 1.0)):
        fig.add_artist(Polygon(pts, closed=True, facecolor=hu_to_rgb(np.array([hu]))[0], edgecolor="black", lw=0.8,
                               transform=IdentityTransform(), figure=fig))
    pixels.polyline(fig, [x0, x1, x1, x0, x0], [row, row, row + height, row + height, row], color="black", lw=0.8)

    def row_of(hu: float) -> float:
        return row + (hi_r - hu) / (hi_r - lo_r) * height

    for hu in np.arange(np.ceil(lo_r / 250.0) * 250.0, hi_r + 1.0, 250.0):
        r = row_of(hu)
        pixels.polyline(fig, [x1, x1 + 4], [r, r], color="black", lw=0.8)
        pixels.text(fig, x1 + 6, r, f"{hu + 0.0:g}", ha="left", va="center", fontsize=9)
    pixels.text(fig, x1 + 52, row + 0.5 * height, "HU", ha="center", va="center", rotation=90, fontsize=10)
    # Class limits on the bar so the colours read as classes too.
    for b in parse_classes(result.parameters.classes):
        lo, hi = max(b.low_hu, lo_r), min(b.high_hu, hi_r)
        if lo_r < b.low_hu < hi_r:
            r = row_of(b.low_hu)
            pixels.polyline(fig, [x0, x1], [r, r], color="white", lw=2.4, solid_capstyle="butt")
            pixels.polyline(fig, [x0, x1], [r, r], color="black", lw=1.0, solid_capstyle="butt")
        if lo < hi:
            pixels.text(fig, x0 - 8, row_of(0.5 * (lo + hi)), b.name.replace("_", " "), ha="right", va="center",
                        fontsize=8.5, color="#333333")


def draw_key(fig: Figure, result, colouring: str, rect, bar_fraction: float = 0.62, no_surface: bool = False) -> None:
    """Colour bar (HU) or legend (zones, classes) in ``rect`` (figure fractions x, y, w, h).

    ``no_surface``: the picture has white cells where there is no surface; the key says so.
    """
    x, y, w, h = rect
    if colouring == "hu":
        fig_w, fig_h = fig.get_figwidth() * fig.dpi, fig.get_figheight() * fig.dpi
        bar_h = bar_fraction * h * fig_h
        hu_bar(fig, (x + 85 / fig_w) * fig_w, fig_h * (1 - (y + 0.30 * h)) - bar_h, 22, int(round(bar_h)), result)
        fig.legend(handles=legend_handles(result, "hu", no_surface), loc="upper left", bbox_to_anchor=(x, y + 0.22 * h),
                   fontsize=9, frameon=False, borderaxespad=0)
    else:
        title = "Gruen zone" if colouring == "zone" else "Contact class"
        fig.legend(handles=legend_handles(result, colouring, no_surface), loc="upper left", bbox_to_anchor=(x, y + h),
                   fontsize=9, frameon=False, title=title, title_fontsize=10, alignment="left", borderaxespad=0)
