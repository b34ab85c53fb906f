"""``report.html``: one self-contained page from a result and its pictures.

It reads the result object (tables, frame, parameters, inputs, warnings) and
the PNG bytes of the pictures; it draws nothing itself. The page fits a
1280 px wide window: the zone table has short headers (the CSV column names
are in each header's tooltip) and pictures scale to the page width.
"""

from __future__ import annotations

import base64
import html
import math
import time

import numpy as np

from ..classes import parse_classes
from ..display import HU_COLORMAP, HU_DISPLAY_RANGE
from .style import class_label, ct_name, model_name, sampling_words

#: Pictures in the order of the report.
PICTURE_FILES = (
    "heatmap_hu.png",
    "zones.png",
    "contact_classes.png",
    "unrolled_hu.png",
    "unrolled_classes.png",
    "zone_fractions.png",
    "slices.png",
)
REPORT_FILE = "report.html"

CAPTIONS = {
    "heatmap_hu.png": "HU at the stem surface from four sides (parallel projection, proximal up, same scale). "
    "Colour range fixed at {lo:g} to {hi:g} HU ({cmap}) for every case; the marks on the colour bar are the contact-class limits. "
    "Dark lines are the Gruen zone borders and the resection line, cut from the zone planes.",
    "zones.png": "Gruen zones on the stem surface: check by eye that the frame (axis, medial side, resection) is right.",
    "contact_classes.png": "Contact class of each vertex's area patch.",
    "unrolled_hu.png": "Unrolled map of HU: azimuth around the stem axis against height above the tip, "
    "with the Gruen zone borders (sector borders at 45, 135, 225 and 315 degrees; bands at fractions of the cut height; tip zone).",
    "unrolled_classes.png": "Unrolled map of the contact classes, with the Gruen zone borders.",
    "zone_fractions.png": "Area fraction of each contact class per zone (of the zone's sampled area).",
    "slices.png": "Registration check: CT slices through the stem (grey scale {lo:g} to {hi:g} HU) with the stem's "
    "outline coloured by the contact class along it. The outline should sit in the canal, on the implant's own "
    "bright (metal) outline in a post-operative CT.",
}

# Zone table: CSV column -> short header (the full name is the header's tooltip).
_HEADERS = {
    "zone": "zone", "region": "region", "n_vertices": "vertices", "area_mm2": "area mm\u00b2",
    "area_sampled_mm2": "sampled mm\u00b2", "hu_mean": "HU mean", "hu_std": "HU SD", "hu_p05": "HU p5",
    "hu_median": "HU median", "hu_p95": "HU p95",
}

_STYLE = (
    "*{box-sizing:border-box}"
    "body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:16px auto;max-width:1240px;"
    "color:#222;padding:0 12px;line-height:1.4}"
    "h1{font-size:1.5em;margin-bottom:0.2em}h2{margin-top:1.4em;border-bottom:1px solid #ccc;padding-bottom:3px}"
    "table{border-collapse:collapse;font-size:0.86em;margin:8px 0;max-width:100%}"
    "th,td{border:1px solid #d0d0d0;padding:2px 6px;text-align:left;vertical-align:top}"
    "table.zones td{text-align:right;white-space:nowrap}table.zones td.t{text-align:left}"
    "table.zones th{vertical-align:bottom}"
    "thead th{background:#f0f0f0}table.kv th{background:#f7f7f7;font-weight:600;white-space:nowrap}"
    "table.kv td{overflow-wrap:anywhere}"
    "code{font-size:0.9em;overflow-wrap:anywhere}"
    "figure{margin:16px 0}figure img{max-width:100%;height:auto;border:1px solid #e4e4e4}"
    "figcaption{font-size:0.9em;color:#444}"
    ".warn{background:#fff4e5;border-left:4px solid #f0a020;padding:6px 12px}"
    ".muted{color:#666;font-size:0.9em}"
)


def fmt(x) -> str:
    """Numbers as a person reads them: 4 significant digits, NaN and infinities by name."""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(x):
            return "NaN" if math.isnan(x) else ("inf" if x > 0 else "-inf")
        if abs(x) < 1e-9:
            return "0"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.4g}"
        return f"{x:.4g}" if abs(x) < 10 else f"{x:.1f}"
    if isinstance(x, (list, tuple, np.ndarray)):
        return "(" + ", ".join(fmt(v) for v in x) + ")"
    if x is None:
        return "\u2014"
    return str(x)


def _e(x) -> str:
    return html.escape(fmt(x) if not isinstance(x, str) else x, quote=True)


def _kv_table(items) -> str:
    rows = "".join(f"<tr><th>{_e(str(k))}</th><td>{_e(v)}</td></tr>" for k, v in items)
    return f'<table class="kv"><tbody>{rows}</tbody></table>'


def _zone_table(result) -> str:
    zones = result.zones
    cols = [c for c in _HEADERS if c in zones.columns]
    cols += [f"frac_{n}" for n in result.class_names if f"frac_{n}" in zones.columns]
    head = "".join(
        f'<th title="{_e(c)}">{_e(_HEADERS.get(c, c[5:].replace("_", " ") + " %"))}</th>' for c in cols
    )
    body = []
    for _, r in zones.iterrows():
        cells = []
        for c in cols:
            val = r[c]
            cls = ' class="t"' if c in ("zone", "region") else ""
            if c.startswith("frac_"):
                text = f"{100 * float(val):.1f}" if np.isfinite(float(val)) else "NaN"
            elif c in ("zone", "region"):
                text = str(val)
            elif c.startswith("n_"):
                text = str(int(val))
            else:
                text = fmt(float(val))
            cells.append(f"<td{cls}>{_e(text)}</td>")
        body.append(f'<tr data-zone="{_e(str(r["zone"]))}">' + "".join(cells) + "</tr>")
    return f'<table class="zones"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def report_html(result, pictures: dict[str, bytes], notes: list[str] | None = None) -> str:
    """One self-contained HTML page: inputs, frame, parameters, warnings, zone table, pictures.

    Args:
        result: the analysis result.
        pictures: PNG bytes by file name (embedded as base64 ``data:`` URLs).
        notes: extra lines for the warnings section (for example a picture that could not be made).

    The page is also well-formed XML (every element closed, text escaped), so
    any HTML or XML parser reads it.
    """
    from .. import __version__
    from ..analysis import library_versions
    from ..classes import bands_to_json

    zones = result.zones
    params = result.parameters.to_dict()
    frame = result.frame.to_dict()
    warnings = list(result.warnings) + list(notes or [])
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"/>',
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>',
        f"<title>{_e('Implant-bone contact: ' + model_name(result))}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Implant-bone contact</h1>",
        f'<p class="muted">{_e(model_name(result))} in {_e(ct_name(result))}; {_e(result.frame.side)} femur; '
        f"sampling {_e(sampling_words(result.parameters, getattr(result, 'postop', None)))}; implant-bone-contact {_e(__version__)}; "
        f"report written {_e(time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()))}</p>",
    ]
    all_row = zones[zones["zone"].astype(str) == "all"]
    if len(all_row):
        r = all_row.iloc[0]
        summary = ", ".join(f"{class_label(result, n)}: {100 * float(r[f'frac_{n}']):.1f}%" for n in result.class_names
                            if f"frac_{n}" in r and np.isfinite(float(r[f"frac_{n}"])))
        parts.append(f"<p><b>Whole stem below the resection:</b> {_e(summary)}; mean {_e(float(r['hu_mean']))} HU over "
                     f"{_e(float(r['area_sampled_mm2']))} mm\u00b2 sampled of {_e(float(r['area_mm2']))} mm\u00b2.</p>")
    parts.append("<h2>Warnings</h2>")
    if warnings:
        parts.append('<div class="warn"><ul>' + "".join(f"<li>{_e(w)}</li>" for w in warnings) + "</ul></div>")
    else:
        parts.append("<p>None.</p>")

    parts.append("<h2>Zones</h2>")
    parts.append(_zone_table(result))
    parts.append(f'<p class="muted">Zone scheme: {_e(result.parameters.zone_scheme)}. Class columns are % of the '
                 "zone's sampled area; HU statistics are area-weighted. Hover a header for its CSV column.</p>")

    parts.append("<h2>Pictures</h2>")
    for name in PICTURE_FILES:
        if name not in pictures:
            continue
        data = base64.b64encode(pictures[name]).decode("ascii")
        caption = CAPTIONS.get(name, "").format(lo=HU_DISPLAY_RANGE[0], hi=HU_DISPLAY_RANGE[1], cmap=HU_COLORMAP)
        parts.append(
            f'<figure id="{_e(name)}"><img src="data:image/png;base64,{data}" alt="{_e(name)}"/>'
            f"<figcaption><code>{_e(name)}</code>: {_e(caption)}</figcaption></figure>"
        )

    parts.append("<h2>Inputs</h2>")
    input_rows = []
    for key, info in (result.inputs or {}).items():
        if not isinstance(info, dict):
            input_rows.append((key, info))
            continue
        for k in ("name", "path", "sha256"):
            if k in info:
                input_rows.append((f"{key} {k}", info[k]))
        for k, val in info.items():
            if k in ("name", "path", "sha256") or isinstance(val, dict):
                continue
            if k in ("ijk_to_ras", "matrix_ras"):
                val = "; ".join(fmt(row) for row in val)
            input_rows.append((f"{key} {k}", val))
    parts.append(_kv_table(input_rows) if input_rows else "<p>Not recorded (analysis of objects in memory).</p>")

    parts.append("<h2>Stem frame</h2>")
    frame_rows = [(k, val) for k, val in frame.items() if k != "provenance"]
    frame_rows += [(f"provenance: {k}", val) for k, val in frame.get("provenance", {}).items()]
    parts.append(_kv_table(frame_rows))

    parts.append("<h2>Parameters</h2>")
    parts.append(_kv_table(sorted(params.items())))
    bands = bands_to_json(parse_classes(result.parameters.classes))
    parts.append(_kv_table([(b["name"], f"[{b['low_hu']}, {b['high_hu']}) HU") for b in bands]))

    parts.append("<h2>Software</h2>")
    parts.append(_kv_table(sorted(library_versions().items())))
    if result.timings_s:
        parts.append(_kv_table([(k, f"{float(s):.2f} s") for k, s in result.timings_s.items()]))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
