"""Pictures and the HTML page of a cohort (matplotlib only), and the per-design vertex maps.

``write_design_maps`` averages the cases of one stem design vertex by vertex
(their vertex ``i`` is the same point of the design surface) into
``designs/<design>/cohort_map.vtp`` and a heat-map picture;
``write_cohort_report`` draws the cortical fraction per Gruen zone across
cases and writes ``report.html`` with the failures.
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.collections import PolyCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from .export import atomic_file

#: The contact class whose share of cases per vertex the design maps show (the densest band if absent).
CONTACT_CLASS = "cortical"
HU_RANGE = (-200.0, 1800.0)
_VIEWS = ("anterior", "posterior", "medial", "lateral")


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, facecolor="white")
    return buf.getvalue()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=float)
    return v / np.linalg.norm(v)


def write_design_maps(out: Path, members: dict[str, list[str]]) -> list[dict]:
    """Per design: per-vertex mean HU, HU sd, cases sampled and share of cases in contact class ``cortical``.

    Args:
        out: the cohort folder.
        members: design key -> ok case ids analysed on that design's cached surface.

    Returns one description per design written (``key``, ``vtp``, ``png``, ``n_cases``).
    """
    from vtkmodules.util import numpy_support as ns

    from .mesh import points, read_model, triangles, write_polydata

    maps = []
    for key, case_ids in sorted(members.items()):
        case_ids = sorted(case_ids)
        first = json.loads((out / "cases" / case_ids[0] / "parameters.json").read_text(encoding="utf-8"))
        design = first["inputs"]["design_surface"]
        try:
            surface, _ = read_model(design["file"], space="RAS")
        except (OSError, ValueError):
            continue
        n = surface.GetNumberOfPoints()
        hu_sum, hu_sq, hu_n = np.zeros(n), np.zeros(n), np.zeros(n)
        contact_n, class_n = np.zeros(n), np.zeros(n)
        contact_class = CONTACT_CLASS
        used = []
        for cid in case_ids:
            try:
                v = pd.read_csv(out / "cases" / cid / "vertices.csv", usecols=["vertex_id", "hu", "contact_class"])
            except (OSError, ValueError):
                continue
            if len(v) != n or not np.array_equal(v["vertex_id"].to_numpy(), np.arange(n)):
                continue
            hu = v["hu"].to_numpy(dtype=float)
            ok = np.isfinite(hu)
            hu_sum[ok] += hu[ok]
            hu_sq[ok] += hu[ok] ** 2
            hu_n += ok
            classes = v["contact_class"].astype(str).to_numpy()
            if contact_class not in set(classes) and not used:
                names = json.loads((out / "cases" / cid / "parameters.json").read_text(encoding="utf-8"))["contact_classes"]
                dense = [c["name"] for c in names if c.get("name") != "metal"]
                contact_class = dense[-1] if dense else contact_class
            classified = ok & (classes != "not_sampled")
            contact_n += classified & (classes == contact_class)
            class_n += classified
            used.append(cid)
        if not used:
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            hu_mean = np.where(hu_n > 0, hu_sum / np.maximum(hu_n, 1), np.nan)
            hu_sd = np.where(hu_n > 1, np.sqrt(np.maximum(hu_sq - hu_n * hu_mean**2, 0) / np.maximum(hu_n - 1, 1)), np.nan)
            share = np.where(class_n > 0, contact_n / np.maximum(class_n, 1), np.nan)
        folder = out / "designs" / f"design-{key[:24]}"
        folder.mkdir(parents=True, exist_ok=True)
        arrays = {"hu_mean": hu_mean, "hu_sd": hu_sd, "n_cases_sampled": hu_n.astype(np.int32),
                  f"share_{contact_class}": share}
        pd_ = surface.GetPointData()
        for name, values in arrays.items():
            arr = ns.numpy_to_vtk(np.ascontiguousarray(values), deep=True)
            arr.SetName(name)
            pd_.AddArray(arr)
        pd_.SetActiveScalars(f"share_{contact_class}")
        vtp = folder / "cohort_map.vtp"
        tmp = folder / ".cohort_map.tmp.vtp"
        write_polydata(surface, tmp, space="RAS")
        tmp.replace(vtp)
        table = pd.DataFrame({"vertex_id": np.arange(n), **{k: v for k, v in arrays.items()}})
        from .export import write_csv

        write_csv(table, folder / "cohort_map.csv")
        # View directions in the design's coordinates, from the first case's stem frame moved back.
        frame = json.loads((out / "cases" / used[0] / "frame.json").read_text(encoding="utf-8"))
        m = np.asarray(first["inputs"]["design_surface"]["design_to_ras"], dtype=float)
        r_inv = np.linalg.inv(m[:3, :3])
        axis = _unit(r_inv @ np.asarray(frame["axis"]))
        medial = _unit(r_inv @ np.asarray(frame["medial"]))
        anterior = _unit(r_inv @ np.asarray(frame["anterior"]))
        first_vertices = pd.read_csv(out / "cases" / used[0] / "vertices.csv", usecols=["nx", "ny", "nz"]).to_numpy()
        normals = first_vertices @ r_inv.T
        fig = design_map_figure(points(surface), triangles(surface), normals, hu_mean, share, axis, medial, anterior,
                                contact_class, len(used))
        png = folder / "cohort_map.png"
        _write_bytes(png, _png(fig))
        info = {"key": key, "folder": str(folder), "vtp": str(vtp), "png": str(png), "n_cases": len(used),
                "cases": used, "contact_class": contact_class, "design_file": design["file"],
                "model": first["inputs"]["model"]["path"], "n_vertices": n}
        from .export import write_json

        write_json(info, folder / "design.json")
        maps.append(info)
    return maps


def design_map_figure(pts, faces, normals, hu_mean, share, axis, medial, anterior, contact_class: str, n_cases: int) -> Figure:
    """Two rows (mean HU, share of cases in ``contact_class``) by four views of the design surface."""
    up = -axis  # proximal up
    views = {
        "anterior": (anterior, medial), "posterior": (-anterior, -medial),
        "medial": (medial, -anterior), "lateral": (-medial, anterior),
    }
    face_normals = normals[faces].mean(axis=1)
    fig = Figure(figsize=(12, 8.4), dpi=100)
    rows = (("mean HU", hu_mean, colormaps["viridis"], Normalize(*HU_RANGE)),
            (f"share of cases with {contact_class} contact", share, colormaps["magma"], Normalize(0.0, 1.0)))
    for r, (title, values, cmap, norm) in enumerate(rows):
        corner = values[faces]
        n_finite = np.isfinite(corner).sum(axis=1)
        face_values = np.where(n_finite > 0, np.nansum(corner, axis=1) / np.maximum(n_finite, 1), np.nan)
        for c, name in enumerate(_VIEWS):
            toward, right = views[name]
            ax = fig.add_axes((0.01 + c * 0.215, 0.50 - r * 0.46, 0.20, 0.40))
            visible = face_normals @ toward > 0
            depth = (pts[faces].mean(axis=1) @ toward)[visible]
            order = np.argsort(depth)
            sel = np.flatnonzero(visible)[order]
            xy = np.stack([pts[faces[sel]] @ right, pts[faces[sel]] @ up], axis=-1)
            colours = cmap(norm(np.nan_to_num(face_values[sel], nan=norm.vmin)))
            colours[~np.isfinite(face_values[sel])] = (0.6, 0.6, 0.6, 1.0)
            ax.add_collection(PolyCollection(xy, facecolors=colours, edgecolors=colours, linewidths=0.3))
            all_xy = np.stack([pts @ right, pts @ up], axis=-1)
            ax.set_xlim(all_xy[:, 0].min() - 2, all_xy[:, 0].max() + 2)
            ax.set_ylim(all_xy[:, 1].min() - 2, all_xy[:, 1].max() + 2)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{name} view", fontsize=9)
        cax = fig.add_axes((0.88, 0.55 - r * 0.46, 0.015, 0.30))
        from matplotlib.cm import ScalarMappable

        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
        bar.set_label(title, fontsize=9)
    fig.suptitle(f"Cohort map of one stem design: {n_cases} case(s), vertex by vertex (grey: never sampled)", fontsize=11)
    return fig


def cortical_by_zone_figure(zones: pd.DataFrame, quantity: str = "frac_cortical") -> Figure:
    """Box plot plus the cases as points: ``quantity`` per Gruen zone across cases (AP zones 1-7, lateral 8-14)."""
    fig = Figure(figsize=(11, 4.2), dpi=100)
    label = quantity.replace("frac_", "").replace("_", " ")
    panels = (("AP view: zones 1 (lateral proximal) to 7 (calcar)", [str(z) for z in range(1, 8)]),
              ("lateral view: zones 8 (anterior proximal) to 14 (posterior proximal)", [str(z) for z in range(8, 15)] + ["all"]))
    rng = np.random.default_rng(0)
    for i, (title, order) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        data = []
        for z in order:
            v = zones.loc[zones["zone"].astype(str) == z, quantity].to_numpy(dtype=float) if quantity in zones else np.array([])
            data.append(v[np.isfinite(v)])
        positions = np.arange(1, len(order) + 1)
        nonempty = [k for k, d in enumerate(data) if d.size]
        if nonempty:
            ax.boxplot([data[k] for k in nonempty], positions=positions[nonempty], widths=0.6, showfliers=False)
        for k, d in enumerate(data):
            ax.scatter(positions[k] + rng.uniform(-0.15, 0.15, d.size), d, s=12, alpha=0.7, color="#1f77b4", zorder=3)
        ax.set_xticks(positions)
        ax.set_xticklabels(order)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("Gruen zone")
        ax.set_ylabel(f"{label} fraction of the zone's sampled area")
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{label.capitalize()} contact per zone across the cases", fontsize=11)
    fig.tight_layout()
    return fig


def _table_html(df: pd.DataFrame) -> str:
    return df.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.3g}", border=0, escape=True)


def write_cohort_report(out: Path, cases: pd.DataFrame, zones: pd.DataFrame, summary: pd.DataFrame, maps: list[dict]) -> None:
    """``cohort_cortical_by_zone.png`` and ``report.html`` (failures, summary, links to cases and design maps)."""
    quantity = "frac_cortical" if "frac_cortical" in zones else next((c for c in zones.columns if c.startswith("frac_")), None)
    pictures = []
    if quantity is not None and len(zones):
        name = f"cohort_{quantity.replace('frac_', '')}_by_zone.png"
        _write_bytes(out / name, _png(cortical_by_zone_figure(zones, quantity)))
        pictures.append(name)
    counts = cases["status"].value_counts().to_dict()
    e = html.escape
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Cohort report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse;font-size:12px}"
        " td,th{padding:2px 6px;border-bottom:1px solid #ddd;text-align:left} .failed{color:#b00}</style></head><body>",
        "<h1>Cohort report</h1>",
        f"<p>{counts.get('ok', 0)} case(s) ok, {counts.get('failed', 0)} failed, {counts.get('skipped', 0)} not analysed "
        f"(of {len(cases)} in the manifest). Tables: <a href='cohort_cases.csv'>cohort_cases.csv</a>, "
        "<a href='cohort_zones.csv'>cohort_zones.csv</a>, <a href='cohort_summary.csv'>cohort_summary.csv</a>.</p>",
    ]
    failed = cases[cases["status"] == "failed"]
    parts.append("<h2>Failures</h2>")
    if len(failed):
        parts.append("<ul>" + "".join(f"<li class='failed'><b>{e(str(r.case_id))}</b>: {e(str(r.error))}</li>"
                                      for r in failed.itertuples()) + "</ul>")
    else:
        parts.append("<p>None.</p>")
    for name in pictures:
        parts.append(f"<h2>Contact per zone across cases</h2><p><img src='{e(name)}' style='max-width:100%'></p>"
                     "<p>Each point is one case; boxes show the quartiles and median; zones in anatomical order.</p>")
    if maps:
        parts.append("<h2>Per-design cohort maps</h2><p>Cases that share a stem design share one remeshed surface, "
                     "so each vertex is the same point of the stem in every case.</p>")
        for m in maps:
            rel = Path(m["png"]).relative_to(out).as_posix()
            vtp = Path(m["vtp"]).relative_to(out).as_posix()
            parts.append(f"<h3>{e(Path(m['model']).name)} ({m['n_cases']} cases, {m['n_vertices']} vertices)</h3>"
                         f"<p><a href='{e(vtp)}'>{e(vtp)}</a></p><p><img src='{e(rel)}' style='max-width:100%'></p>")
    parts.append("<h2>Cases</h2>")
    shown = cases.copy()
    for col in ("error", "warnings", "status", "ct_kind"):
        if col in shown:
            shown[col] = [html.escape(str(v)) for v in shown[col]]
    shown["case_id"] = [f"<a href='cases/{html.escape(c)}/report.html'>{html.escape(c)}</a>"
                        if s == "ok" and (out / "cases" / c / "report.html").exists() else html.escape(c)
                        for c, s in zip(cases["case_id"], cases["status"])]
    parts.append(shown.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.3g}", border=0, escape=False))
    if len(summary):
        parts.append("<h2>Summary per zone</h2>")
        parts.append(_table_html(summary))
    parts.append("</body></html>")
    with atomic_file(out / "report.html", "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts))
