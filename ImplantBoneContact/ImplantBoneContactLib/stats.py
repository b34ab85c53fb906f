"""Area-weighted statistics per Gruen zone.

Every vertex carries its share of the surface area (``area_mm2``), so the
numbers describe the surface, not the triangulation: a region meshed twice as
finely does not count twice as much.

* ``hu_mean`` is the area-weighted mean; ``hu_std`` the area-weighted
  population standard deviation ``sqrt(sum w (x - mean)^2 / sum w)``.
* Quantiles are area-weighted with numpy's ``inverted_cdf`` method
  (``numpy.quantile(..., weights=...)``): the smallest HU such that at least
  the fraction q of the sampled area has that HU or less. With equal areas it
  equals the ordinary inverted-CDF quantile; with integer areas it equals
  the quantile of the values repeated that many times.
* ``frac_<class>`` is the fraction of the *sampled* area of the zone in that
  class; vertices outside the CT are left out (``area_sampled_mm2``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .frame import ZONE_ORDER, ZONE_REGIONS

QUANTILES = {"hu_p05": 0.05, "hu_p25": 0.25, "hu_median": 0.5, "hu_p75": 0.75, "hu_p95": 0.95}


def weighted_stats(values: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    """Area-weighted HU summary of finite values; NaN entries when nothing is left."""
    v = np.asarray(values, dtype=float)
    w = np.asarray(weights, dtype=float)
    ok = np.isfinite(v) & (w > 0)
    v, w = v[ok], w[ok]
    out: dict[str, float] = {}
    if v.size == 0:
        for k in ("hu_mean", "hu_std", "hu_min", *QUANTILES, "hu_max"):
            out[k] = float("nan")
        return out
    mean = float(np.average(v, weights=w))
    out["hu_mean"] = mean
    out["hu_std"] = float(np.sqrt(np.average((v - mean) ** 2, weights=w)))
    out["hu_min"] = float(v.min())
    qs = np.quantile(v, list(QUANTILES.values()), weights=w, method="inverted_cdf")
    for key, q in zip(QUANTILES, qs):
        out[key] = float(q)
    out["hu_max"] = float(v.max())
    return out


def zone_table(
    vertices: pd.DataFrame,
    class_names: list[str],
    scheme: str = "sector",
) -> pd.DataFrame:
    """One row per Gruen zone (1-14) plus a row ``all``.

    Args:
        vertices: per-vertex table with ``area_mm2``, ``hu``, ``contact_class``,
            ``gruen_zone`` (and ``gruen_zone_ap``/``gruen_zone_lateral`` for
            the projection scheme).
        class_names: the classes to report as ``frac_<name>`` columns.
        scheme: ``"sector"`` (each vertex in one zone) or ``"projection"``
            (each vertex in its AP-view zone and in its lateral-view zone).

    Vertices in zone 0 (above the cut) are left out, also from ``all``.
    """
    if scheme == "projection":
        membership = [("gruen_zone_ap", vertices["gruen_zone_ap"]), ("gruen_zone_lateral", vertices["gruen_zone_lateral"])]
    else:
        membership = [("gruen_zone", vertices["gruen_zone"])]
    area = vertices["area_mm2"].to_numpy(dtype=float)
    hu = vertices["hu"].to_numpy(dtype=float)
    cls = vertices["contact_class"].to_numpy()
    sampled = np.isfinite(hu)
    rows = []

    def row(label, region, sel):
        a_all = area[sel]
        s = sel & sampled
        a_s = area[s]
        r = {
            "zone": label,
            "region": region,
            "n_vertices": int(sel.sum()),
            "n_sampled": int(s.sum()),
            "area_mm2": float(a_all.sum()),
            "area_sampled_mm2": float(a_s.sum()),
        }
        r.update(weighted_stats(hu[s], a_s))
        total = a_s.sum()
        for name in class_names:
            r[f"frac_{name}"] = float(area[s & (cls == name)].sum() / total) if total > 0 else float("nan")
        rows.append(r)

    for z in ZONE_ORDER:
        sel = np.zeros(len(vertices), dtype=bool)
        for _, col in membership:
            sel |= col.to_numpy() == z
        row(str(z), ZONE_REGIONS[z], sel)
    below = vertices["gruen_zone"].to_numpy() > 0
    row("all", "whole stem below the resection plane", below)
    return pd.DataFrame(rows)
