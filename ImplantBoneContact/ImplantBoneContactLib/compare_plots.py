"""Pictures of a follow-up comparison (see :mod:`.compare`).

``change_views.png``
    The stem from anterior, posterior, medial and lateral, coloured by the
    change per vertex (follow-up minus baseline) with a diverging colormap
    centred on 0 and a fixed range (:data:`CHANGE_RANGE_HU`, or
    :data:`CHANGE_RANGE_MG_CM3` when both analyses are density-calibrated),
    so pictures of two patients compare directly: loss is red, gain blue.
``unrolled_change.png``
    The same change unrolled around the stem axis with the Gruen zone grid,
    each zone labelled with its mean change and a star when it is significant.
``zone_change.png``
    Bars of the change of each zone's mean, zones 1-7 then 8-14, with
    error bars of ``Z_THRESHOLD`` standard errors; significant zones filled,
    the others hatched.

The 3D views and the unrolled grid come from the public functions of
:mod:`.plots` (:func:`~.plots.render_geometry`, :func:`~.plots.unrolled_map`),
drawn on the baseline result's surface and frame.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from .atomicio import atomic_file
from .display import ABOVE_CUT_COLOUR, NOT_SAMPLED_COLOUR
from .frame import ZONE_ORDER

if TYPE_CHECKING:  # only for the annotations: compare.py imports this module to draw its pictures
    from .compare import Comparison

#: Fixed colour range of HU change pictures: -range..+range (HU).
CHANGE_RANGE_HU = 300.0
#: Fixed colour range of density change pictures: -range..+range (mg/cm3).
CHANGE_RANGE_MG_CM3 = 250.0
#: Diverging colormap, red for loss, blue for gain, white for no change.
CHANGE_COLORMAP = "RdBu"
PICTURES = ("change_views.png", "unrolled_change.png", "zone_change.png")
_DPI = 100


def _quantity(comparison: Comparison) -> tuple[str, str, float, str]:
    """(vertex column, zone column, colour range, unit label) of the change drawn."""
    if comparison.has_density:
        return "delta_density_mg_cm3", "delta_density_mean_mg_cm3", CHANGE_RANGE_MG_CM3, "mg/cm\u00b3"
    return "delta_hu", "delta_hu_mean", CHANGE_RANGE_HU, "HU"


def change_to_rgb(change: np.ndarray, limit: float) -> np.ndarray:
    """Colours (RGB 0..1) of change values on the fixed diverging scale ``-limit..limit``; NaN grey."""
    change = np.asarray(change, dtype=float)
    out = np.empty(change.shape + (3,))
    ok = np.isfinite(change)
    out[ok] = colormaps[CHANGE_COLORMAP](Normalize(-limit, limit, clip=True)(change[ok]))[..., :3]
    out[~ok] = to_rgb(NOT_SAMPLED_COLOUR)
    return out


def _view_result(comparison: Comparison):
    """What the public drawing functions of :mod:`.plots` read, from the baseline result."""
    b = comparison.baseline
    params = SimpleNamespace(bands_axial=tuple(b.parameters.get("bands_axial", (1 / 3, 1 / 3, 1 / 3))))
    return SimpleNamespace(frame=b.frame, surface=b.surface, vertices=b.vertices, parameters=params, inputs={})


def _vertex_rgb(comparison: Comparison) -> np.ndarray:
    col, _, limit, _ = _quantity(comparison)
    rgb = change_to_rgb(comparison.vertices[col].to_numpy(dtype=float), limit)
    rgb[comparison.vertices["gruen_zone"].to_numpy() == 0] = to_rgb(ABOVE_CUT_COLOUR)
    return rgb


def _colourbar(fig: Figure, rect, comparison: Comparison) -> None:
    from matplotlib.cm import ScalarMappable

    _, _, limit, unit = _quantity(comparison)
    cax = fig.add_axes(rect)
    cb = fig.colorbar(ScalarMappable(norm=Normalize(-limit, limit), cmap=colormaps[CHANGE_COLORMAP]), cax=cax, extend="both")
    cb.set_label(f"follow-up minus baseline ({unit})", fontsize=10)
    cb.ax.tick_params(labelsize=9)


def _title(comparison: Comparison) -> str:
    b, f = comparison.baseline, comparison.followup
    nb = b.metadata.get("inputs", {}).get("ct", {}).get("name", b.path.name)
    nf = f.metadata.get("inputs", {}).get("ct", {}).get("name", f.path.name)
    return f"{nb} \u2192 {nf}"


def change_views_figure(comparison: Comparison) -> Figure:
    """The stem from four sides coloured by the change per vertex (fixed diverging range centred on 0)."""
    from .plots import render_geometry

    geometry = render_geometry(_view_result(comparison))
    rgb_v = _vertex_rgb(comparison)
    zone_v = comparison.vertices["gruen_zone"].to_numpy()
    images = []
    for g in geometry:
        ids = g.vertex_id
        fg = ids >= 0
        img = np.ones(ids.shape + (3,))
        img[fg] = rgb_v[ids[fg]] * (0.35 + 0.65 * g.shade[fg, None])
        zpx = np.where(fg, zone_v[np.clip(ids, 0, None)], -1)
        edge = np.zeros(ids.shape, dtype=bool)
        edge[:, 1:] |= (zpx[:, 1:] != zpx[:, :-1]) & fg[:, 1:] & fg[:, :-1]
        edge[1:, :] |= (zpx[1:, :] != zpx[:-1, :]) & fg[1:, :] & fg[:-1, :]
        img[edge] *= 0.25
        s = g.supersample
        h, w = ids.shape[0] // s, ids.shape[1] // s
        images.append(np.clip(img[: h * s, : w * s].reshape(h, s, w, s, 3).mean(axis=(1, 3)), 0, 1))
    h, w = images[0].shape[:2]
    left, gap, top, bottom, right = 16, 18, 92, 40, 190
    fig_w = left + len(images) * (w + gap) + right
    fig_h = top + h + bottom
    fig = Figure(figsize=(fig_w / _DPI, fig_h / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    for i, (g, img) in enumerate(zip(geometry, images)):
        ax = fig.add_axes(((left + i * (w + gap)) / fig_w, bottom / fig_h, w / fig_w, h / fig_h))
        ax.imshow(img, interpolation="none")
        ax.set_axis_off()
        ax.set_title(f"{g.name.capitalize()} view", fontsize=12)
    _, _, limit, unit = _quantity(comparison)
    fig.text(0.5, 1 - 16 / fig_h, "Change at the stem surface, follow-up minus baseline", ha="center", va="top",
             fontsize=15, weight="bold")
    fig.text(0.5, 1 - 42 / fig_h, f"{_title(comparison)}: fixed range \u00b1{limit:g} {unit} ({CHANGE_COLORMAP}: red loss, "
             "blue gain); dark lines: Gruen zones; grey: above the resection", ha="center", va="top", fontsize=10, color="#333333")
    x0 = (left + len(images) * (w + gap) + 60) / fig_w
    _colourbar(fig, (x0, (bottom + 0.2 * h) / fig_h, 22 / fig_w, 0.7 * h / fig_h), comparison)
    return fig


def unrolled_change_figure(comparison: Comparison) -> Figure:
    """The change unrolled around the stem axis, with the Gruen zone grid and each zone's mean change."""
    from .plots.unrolled import draw_zone_grid, unrolled_axes, unrolled_map, zone_cell_centres

    view = _view_result(comparison)
    umap = unrolled_map(view)
    col, zcol, limit, unit = _quantity(comparison)
    grid = umap.values(comparison.vertices[col].to_numpy(dtype=float))
    zone = umap.values(comparison.vertices["gruen_zone"].to_numpy(), fill=-1)
    rgb = change_to_rgb(grid, limit)
    rgb[zone == 0] = to_rgb(ABOVE_CUT_COLOUR)
    rgb[zone < 0] = 1.0
    hgt, wid = rgb.shape[:2]
    left, right, top, bottom = 90, 200, 86, 74
    fig, ax = unrolled_axes(rgb, umap, (left, right, top, bottom), minor_ticks=False)
    fig_w, fig_h = left + wid + right, top + hgt + bottom
    draw_zone_grid(ax, umap)
    zones = comparison.zones.set_index("zone")
    for number, azimuth, height in zone_cell_centres(umap):
        z = str(number)
        r = zones.loc[z]
        sig = bool(r["significant_density"] if comparison.has_density else r["significant"])
        text = f"{z}\n{float(r[zcol]):+.0f}{'*' if sig else ''}"
        ax.text(azimuth, height, text, ha="center", va="center", fontsize=9, weight="bold" if sig else "normal",
                bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="#333333", lw=0.6, alpha=0.85))
    fig.text(0.5, 1 - 16 / fig_h, "Unrolled change map, follow-up minus baseline", ha="center", va="top", fontsize=15,
             weight="bold")
    fig.text(0.5, 1 - 42 / fig_h, f"{_title(comparison)}: zone number, mean change ({unit}); * significant beyond noise",
             ha="center", va="top", fontsize=9.5, color="#333333")
    _colourbar(fig, ((left + wid + 60) / fig_w, (bottom + 0.15 * hgt) / fig_h, 22 / fig_w, 0.75 * hgt / fig_h), comparison)
    return fig


def zone_change_figure(comparison: Comparison) -> Figure:
    """Bars of each zone's mean change (zones 1-7, 8-14) with +-Z_THRESHOLD standard errors; significant bars filled."""
    _, zcol, limit, unit = _quantity(comparison)
    sig_col = "significant_density" if comparison.has_density else "significant"
    se_col = "se_density_mg_cm3" if comparison.has_density else "se_hu"
    zones = comparison.zones.set_index("zone")
    fig = Figure(figsize=(10.5, 4.6), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.08, 0.14, 0.9, 0.64))
    xs = np.array([z if z <= 7 else z + 1 for z in ZONE_ORDER], dtype=float)
    values = np.array([float(zones.loc[str(z), zcol]) for z in ZONE_ORDER])
    se = np.array([float(zones.loc[str(z), se_col]) for z in ZONE_ORDER])
    sig = np.array([bool(zones.loc[str(z), sig_col]) for z in ZONE_ORDER])
    colours = change_to_rgb(values, limit)
    for x, v, c, s in zip(xs, values, colours, sig):
        ax.bar(x, v, width=0.75, color=c if s else "white", edgecolor="#333333", hatch=None if s else "///", lw=0.8)
    z_threshold = float(comparison.summary["significance"]["z_threshold"])
    ax.errorbar(xs, values, yerr=z_threshold * np.nan_to_num(se), fmt="none", ecolor="black", capsize=3, lw=1)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(xs)
    ax.set_xticklabels([str(z) for z in ZONE_ORDER])
    ax.set_xlabel("Gruen zone (1-7 AP view, 8-14 lateral view)", fontsize=10)
    ax.set_ylabel(f"change of zone mean ({unit})", fontsize=10)
    lo, hi = np.nanmin(np.append(values - 3 * np.nan_to_num(se), 0)), np.nanmax(np.append(values + 3 * np.nan_to_num(se), 0))
    pad = 0.1 * max(hi - lo, 1.0)
    ax.set_ylim(lo - pad, hi + pad)
    ax.grid(axis="y", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    ax.legend(handles=[Patch(facecolor=to_rgb("#d6604d"), edgecolor="#333333", label="significant change"),
                       Patch(facecolor="white", edgecolor="#333333", hatch="///", label="within noise")],
              loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, fontsize=9, frameon=False)
    fig.text(0.5, 0.97, "Change of mean per Gruen zone, follow-up minus baseline", ha="center", va="top", fontsize=14,
             weight="bold")
    fig.text(0.5, 0.905, f"{_title(comparison)}; error bars \u00b1{z_threshold:g} standard errors (noise, spread, registration)",
             ha="center", va="top", fontsize=9.5, color="#333333")
    return fig


def write_change_pictures(comparison: Comparison, folder: str | os.PathLike) -> list[str]:
    """Write the comparison pictures into ``folder``; the 3D views are skipped (noted) when OpenGL fails."""
    from .plots import figure_png

    folder = Path(folder)
    figures = {}
    try:
        figures["change_views.png"] = change_views_figure(comparison)
    except Exception as exc:  # noqa: BLE001 - offscreen OpenGL can fail in many ways; the rest must still be written
        comparison.warnings.append(f"the 3D change views could not be rendered ({exc})")
    figures["unrolled_change.png"] = unrolled_change_figure(comparison)
    figures["zone_change.png"] = zone_change_figure(comparison)
    written = []
    for name, fig in figures.items():
        with atomic_file(folder / name, "wb") as fh:
            fh.write(figure_png(fig))
        written.append(name)
    return written
