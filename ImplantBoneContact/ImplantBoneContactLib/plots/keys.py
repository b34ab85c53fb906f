"""Colour bars and legends shared by the pictures."""

from __future__ import annotations

from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..classes import UNCLASSIFIED, parse_classes
from ..display import ABOVE_CUT_COLOUR, HU_COLORMAP, HU_DISPLAY_RANGE, NOT_SAMPLED_COLOUR, UNCLASSIFIED_COLOUR, ZONE_COLOURS
from ..frame import ZONE_ORDER
from .style import DPI, SHORT_REGION, class_colours, class_label, hu_norm


def legend_handles(result, colouring: str) -> list[Patch]:
    """Legend entries of a colouring (``"hu"``, ``"zone"`` or ``"class"``)."""
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
    if colouring != "zone":
        handles.append(Patch(facecolor=NOT_SAMPLED_COLOUR, edgecolor="#555555", label="outside the CT (no HU)"))
    handles.append(Patch(facecolor=ABOVE_CUT_COLOUR, edgecolor="#555555", label="above the resection\n(not analysed)"))
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


def draw_key(fig: Figure, result, colouring: str, rect, bar_fraction: float = 0.62) -> None:
    """Colour bar (HU) or legend (zones, classes) in ``rect`` (figure fractions x, y, w, h)."""
    x, y, w, h = rect
    if colouring == "hu":
        fig_w = fig.get_figwidth() * DPI
        cax = fig.add_axes((x + 85 / fig_w, y + 0.30 * h, 22 / fig_w, bar_fraction * h))
        hu_colourbar(fig, cax, result)
        fig.legend(handles=legend_handles(result, "hu"), loc="upper left", bbox_to_anchor=(x, y + 0.22 * h),
                   fontsize=9, frameon=False, borderaxespad=0)
    else:
        title = "Gruen zone" if colouring == "zone" else "Contact class"
        fig.legend(handles=legend_handles(result, colouring), loc="upper left", bbox_to_anchor=(x, y + h),
                   fontsize=9, frameon=False, title=title, title_fontsize=10, alignment="left", borderaxespad=0)
