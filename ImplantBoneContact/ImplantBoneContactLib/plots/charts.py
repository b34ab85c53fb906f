"""``zone_fractions.png``: stacked bars of the contact-class area fractions per Gruen zone."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..display import NOT_SAMPLED_COLOUR, UNCLASSIFIED_COLOUR
from ..frame import ZONE_ORDER
from .style import DPI, SHORT_REGION, class_colours, class_label, rgb, run_description


def zone_fractions_figure(result) -> Figure:
    """Stacked bars: area fraction of each contact class per Gruen zone, zones 1-7 then 8-14.

    Fractions are of the sampled area of each zone (``frac_<class>`` of the
    zone table); a zone partly outside the CT is marked with its sampled share.
    """
    zones = result.zones.set_index(result.zones["zone"].astype(str))
    colours = class_colours(result)
    fig = Figure(figsize=(11.5, 5.6), dpi=DPI, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.07, 0.2, 0.68, 0.58))
    xs = [z - 1 if z <= 7 else z for z in ZONE_ORDER]
    bottoms = np.zeros(len(ZONE_ORDER))
    rows = [zones.loc[str(z)] if str(z) in zones.index else None for z in ZONE_ORDER]
    for name in result.class_names:
        col = f"frac_{name}"
        vals = np.array([float(r[col]) if r is not None and col in r and np.isfinite(r[col]) else 0.0 for r in rows])
        ax.bar(xs, 100 * vals, bottom=100 * bottoms, color=colours[name], edgecolor="white", lw=0.6,
               label=class_label(result, name), width=0.78)
        # Print the share inside segments tall enough to hold it, dark on light colours, light on dark.
        fill = rgb(colours[name])
        ink = "black" if 0.2126 * fill[0] + 0.7152 * fill[1] + 0.0722 * fill[2] > 0.45 else "white"
        for x, b, val in zip(xs, bottoms, vals):
            if val >= 0.07:
                ax.text(x, 100 * (b + val / 2), f"{100 * val:.0f}", ha="center", va="center", fontsize=8, color=ink)
        bottoms += vals
    rest = np.clip(1.0 - bottoms, 0.0, 1.0)
    has_data = np.array([r is not None and float(r["area_sampled_mm2"]) > 0 for r in rows])
    unclassified = np.where(has_data & (rest > 1e-6), rest, 0.0)
    if unclassified.any():
        ax.bar(xs, 100 * unclassified, bottom=100 * bottoms, color=UNCLASSIFIED_COLOUR, edgecolor="white", lw=0.6,
               label="unclassified", width=0.78)
    if (~has_data).any():
        ax.bar(np.array(xs)[~has_data], 100.0, color="white", edgecolor=NOT_SAMPLED_COLOUR, hatch="///", width=0.78,
               label="no sampled area")
    for x, r in zip(xs, rows):
        if r is None:
            continue
        area, sampled = float(r["area_mm2"]), float(r["area_sampled_mm2"])
        if area > 0 and sampled < 0.995 * area:
            ax.text(x, 101.5, f"{100 * sampled / area:.0f}%\nsampled", ha="center", va="bottom", fontsize=7.5, color="#444444")
    ax.set_xticks(xs)
    ax.set_xticklabels([f"{z}\n" + SHORT_REGION[z].replace(" ", "\n") for z in ZONE_ORDER], fontsize=8.5)
    ax.set_xlim(-0.7, 14.7)
    ax.set_ylim(0, 100)
    ax.set_ylabel("share of the zone's sampled area (%)", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    ax.axvline(7.0, color="#999999", lw=0.8, ls=":")
    ax.text(3.0, -0.19, "AP view (zones 1-7)", transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=10)
    ax.text(11.0, -0.19, "lateral view (zones 8-14)", transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=9, frameon=False, title="Contact class", title_fontsize=10,
              alignment="left")
    fig.text(0.5, 0.975, "Contact classes per Gruen zone", ha="center", va="top", fontsize=15, weight="bold")
    fig.text(0.5, 0.93, run_description(result), ha="center", va="top", fontsize=10, color="#222222")
    fig.text(0.5, 0.895, "area-weighted, surface below the resection plane, zones in anatomical order",
             ha="center", va="top", fontsize=9, color="#444444")
    ax.set_label("zone_fractions")
    return fig
