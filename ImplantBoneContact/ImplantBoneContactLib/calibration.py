"""HU to bone mineral density (mg/cm3) with a phantom calibration.

A CT measures attenuation in Hounsfield units, which depend on the scanner,
its tube voltage and its reconstruction. Bone mineral density (BMD) studies
put a calibration phantom under the patient: rods of known equivalent density
of a reference material (dipotassium phosphate ``K2HPO4`` solutions, or
``hydroxyapatite`` in a resin) scanned with the patient. HU of the rods is
linear in their density, so

    HU = intercept_hu + slope_hu_per_mg_cm3 * density_mg_cm3
    density_mg_cm3 = (HU - intercept_hu) / slope_hu_per_mg_cm3

A calibration file is JSON, one of:

* a linear relation (already fitted, for example by the phantom vendor's software)::

    {"material": "K2HPO4", "slope_hu_per_mg_cm3": 1.2, "intercept_hu": -5.0}

* the rods (mean HU measured in each rod, known density), fitted here by least squares::

    {"material": "hydroxyapatite",
     "rods": [{"density_mg_cm3": 0, "hu": 12.0}, {"density_mg_cm3": 100, "hu": 140.0}, ...]}

Density is reported in mg/cm3 of the calibration material: K2HPO4-equivalent
and hydroxyapatite-equivalent densities of the same bone differ, so the
material is always kept with the numbers. An optional ``"unit": "mg/cm3"``
(also ``mg/cc``, ``mg/ml``, or ``g/cm3``, converted) may say in which unit
the rod densities and the slope are given.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError

#: Reference materials of calibration phantoms (canonical spelling by lower-case alias).
MATERIALS = {
    "k2hpo4": "K2HPO4",
    "dipotassium phosphate": "K2HPO4",
    "dipotassium_phosphate": "K2HPO4",
    "hydroxyapatite": "hydroxyapatite",
    "ha": "hydroxyapatite",
    "cha": "hydroxyapatite",
}
#: Density units accepted in a calibration file, and their factor to mg/cm3.
UNITS = {"mg/cm3": 1.0, "mg/cm^3": 1.0, "mg/cc": 1.0, "mg/ml": 1.0, "g/cm3": 1000.0, "g/cm^3": 1000.0, "g/cc": 1000.0}

#: Lowest and highest slope (HU per mg/cm3) of a plausible calibration. Clinical phantoms
#: give about 0.7-1.7 HU per mg/cm3 (K2HPO4 about 1.2-1.5, hydroxyapatite about 0.8-1.1 at 120 kV);
#: a slope off by 1000 means densities in g/cm3 read as mg/cm3 (or the reverse).
SLOPE_RANGE = (0.05, 20.0)


@dataclass
class Calibration:
    """A linear HU-to-density relation of one reference material.

    Attributes:
        material: ``"K2HPO4"`` or ``"hydroxyapatite"``.
        slope_hu_per_mg_cm3: HU per mg/cm3 (positive).
        intercept_hu: HU at density 0.
        source: ``"linear"`` (given) or ``"rods"`` (fitted here).
        fit: for a rod fit: the rods, residuals (HU), R^2, RMS residual.
        path: the file it was read from, if any.
    """

    material: str
    slope_hu_per_mg_cm3: float
    intercept_hu: float
    source: str = "linear"
    fit: dict = field(default_factory=dict)
    path: str | None = None

    def density(self, hu: np.ndarray) -> np.ndarray:
        """Density (mg/cm3 of :attr:`material`) of HU values; NaN stays NaN."""
        return (np.asarray(hu, dtype=float) - self.intercept_hu) / self.slope_hu_per_mg_cm3

    def hu(self, density_mg_cm3: np.ndarray) -> np.ndarray:
        """HU of densities (mg/cm3): the inverse of :meth:`density`."""
        return self.intercept_hu + self.slope_hu_per_mg_cm3 * np.asarray(density_mg_cm3, dtype=float)

    def to_dict(self) -> dict:
        """JSON-ready description (what ``parameters.json`` records)."""
        d = {
            "material": self.material,
            "slope_hu_per_mg_cm3": float(self.slope_hu_per_mg_cm3),
            "intercept_hu": float(self.intercept_hu),
            "source": self.source,
            "density_unit": f"mg/cm3 {self.material}-equivalent",
            "relation": "density_mg_cm3 = (hu - intercept_hu) / slope_hu_per_mg_cm3",
        }
        if self.fit:
            d["fit"] = self.fit
        if self.path is not None:
            d["path"] = self.path
        return d


def _material(value, where: str) -> str:
    if not isinstance(value, str) or value.strip().lower() not in MATERIALS:
        raise InputError(
            f"{where}: unknown calibration material {value!r}: give \"material\": \"K2HPO4\" or \"hydroxyapatite\" "
            "(the reference material of the phantom's rods)"
        )
    return MATERIALS[value.strip().lower()]


def _unit_factor(d: dict, where: str) -> float:
    unit = d.get("unit", "mg/cm3")
    if not isinstance(unit, str) or unit.strip().lower().replace(" ", "") not in UNITS:
        raise InputError(
            f"{where}: unknown density unit {unit!r}: use \"mg/cm3\" (or mg/cc, mg/ml, g/cm3) for the rod densities"
        )
    return UNITS[unit.strip().lower().replace(" ", "")]


def _number(value, name: str, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise InputError(f"{where}: {name} must be a finite number, got {value!r}")
    return x


def _check_slope(slope: float, where: str) -> None:
    if slope <= 0:
        raise InputError(
            f"{where}: the slope is {slope:.4g} HU per mg/cm3: HU must rise with density; "
            "check that the rod densities and HU are paired correctly (or that slope and intercept are not swapped)"
        )
    lo, hi = SLOPE_RANGE
    if not lo <= slope <= hi:
        raise InputError(
            f"{where}: the slope is {slope:.4g} HU per mg/cm3, outside the plausible {lo:g}-{hi:g}: "
            "are the densities in g/cm3 given as mg/cm3 (or the reverse)? set \"unit\""
        )


def fit_rods(densities_mg_cm3, hu, material: str = "K2HPO4", where: str = "calibration rods") -> Calibration:
    """Least-squares line through phantom rods: HU = intercept + slope * density.

    Args:
        densities_mg_cm3: known density of each rod (mg/cm3 of ``material``).
        hu: mean HU measured in each rod.
        material: the rods' reference material.
        where: what the rods come from, the start of every error message (a calibration file names itself).

    Returns:
        the calibration, with ``fit`` holding each rod's residual (measured minus
        fitted HU), the RMS residual (HU) and R^2.

    Raises:
        InputError: fewer than two rods, rods all of one density, a slope that
            is not positive or not plausible.
    """
    x = np.asarray(densities_mg_cm3, dtype=float).reshape(-1)
    y = np.asarray(hu, dtype=float).reshape(-1)
    if x.size != y.size:
        raise InputError(f"{where}: {x.size} densities for {y.size} HU values")
    if x.size < 2:
        raise InputError(
            f"{where}: {x.size} rod given: a line needs at least two rods of different density (three or more to see the fit's error)"
        )
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError(f"{where}: every rod needs a finite density and HU")
    if np.ptp(x) <= 0:
        raise InputError(f"{where}: every rod has the same density ({x[0]:g} mg/cm3): at least two different densities are needed")
    xm, ym = x.mean(), y.mean()
    slope = float(((x - xm) * (y - ym)).sum() / ((x - xm) ** 2).sum())
    intercept = float(ym - slope * xm)
    _check_slope(slope, where)
    residual = y - (intercept + slope * x)
    ss_tot = float(((y - ym) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / ss_tot if ss_tot > 0 else float("nan")
    fit = {
        "method": "ordinary least squares, HU on density",
        "n_rods": int(x.size),
        "rods": [
            {"density_mg_cm3": float(a), "hu": float(b), "fitted_hu": float(b - r), "residual_hu": float(r)}
            for a, b, r in zip(x, y, residual)
        ],
        "rms_residual_hu": float(np.sqrt(np.mean(residual**2))),
        "max_abs_residual_hu": float(np.abs(residual).max()),
        "r2": r2,
    }
    return Calibration(_material(material, where), slope, intercept, source="rods", fit=fit)


def calibration_from_dict(d: dict, where: str = "calibration") -> Calibration:
    """Build a :class:`Calibration` from the JSON structure described in the module docstring.

    Raises:
        InputError: saying what is missing or wrong and what to write instead.
    """
    if not isinstance(d, dict):
        raise InputError(f"{where}: expected a JSON object with material and either slope_hu_per_mg_cm3/intercept_hu or rods")
    if "material" not in d:
        raise InputError(f"{where}: no \"material\": say which reference material the densities are of (K2HPO4 or hydroxyapatite)")
    material = _material(d["material"], where)
    factor = _unit_factor(d, where)
    known = {"material", "unit", "rods", "slope_hu_per_mg_cm3", "intercept_hu", "comment", "description", "phantom"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise InputError(
            f"{where}: unknown key(s) {', '.join(unknown)}: a calibration has material, unit, and either "
            "slope_hu_per_mg_cm3 + intercept_hu, or rods"
        )
    has_line = "slope_hu_per_mg_cm3" in d or "intercept_hu" in d
    if "rods" in d and has_line:
        raise InputError(f"{where}: give either rods or slope_hu_per_mg_cm3 + intercept_hu, not both")
    if "rods" in d:
        rods = d["rods"]
        if not isinstance(rods, list):
            raise InputError(f"{where}: \"rods\" must be a list of {{\"density_mg_cm3\": ..., \"hu\": ...}}")
        dens, hus = [], []
        for i, r in enumerate(rods):
            if not isinstance(r, dict) or "hu" not in r or not ({"density_mg_cm3", "density"} & set(r)):
                raise InputError(f"{where}: rod {i + 1} must be {{\"density_mg_cm3\": ..., \"hu\": ...}}, got {r!r}")
            dens.append(_number(r.get("density_mg_cm3", r.get("density")), f"rod {i + 1} density", where) * factor)
            hus.append(_number(r["hu"], f"rod {i + 1} HU", where))
        return fit_rods(dens, hus, material, where)
    if not ("slope_hu_per_mg_cm3" in d and "intercept_hu" in d):
        raise InputError(
            f"{where}: give both slope_hu_per_mg_cm3 and intercept_hu (density = (HU - intercept) / slope), or a list of rods"
        )
    slope = _number(d["slope_hu_per_mg_cm3"], "slope_hu_per_mg_cm3", where) / factor
    intercept = _number(d["intercept_hu"], "intercept_hu", where)
    _check_slope(slope, where)
    return Calibration(material, slope, intercept, source="linear")


def read_calibration(path: str | os.PathLike) -> Calibration:
    """Read a calibration JSON file (linear relation or phantom rods).

    Raises:
        InputError: missing or unreadable file, or a bad calibration (see :func:`calibration_from_dict`).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"calibration file not found: {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the calibration file {p} as JSON: {exc}") from None
    cal = calibration_from_dict(data, where=f"calibration file {p.name}")
    cal.path = str(p.resolve())
    return cal


#: Zone-table HU columns and the density column each becomes (a linear map with a positive slope keeps
#: means and quantiles; a spread is divided by the slope).
_ZONE_DENSITY_COLUMNS = {
    "hu_mean": "density_mean_mg_cm3",
    "hu_std": "density_std_mg_cm3",
    "hu_min": "density_min_mg_cm3",
    "hu_p05": "density_p05_mg_cm3",
    "hu_p25": "density_p25_mg_cm3",
    "hu_median": "density_median_mg_cm3",
    "hu_p75": "density_p75_mg_cm3",
    "hu_p95": "density_p95_mg_cm3",
    "hu_max": "density_max_mg_cm3",
}


def add_density(vertices, zones, calibration: Calibration) -> None:
    """Add ``density_mg_cm3`` to the vertex table and density statistics to the zone table, in place.

    The zone statistics are the HU statistics of the surface integration
    mapped by the calibration: density is linear in HU with a positive slope,
    so the area-weighted mean, quantiles, minimum and maximum of density are
    those of HU mapped, and the standard deviation is divided by the slope.
    The new vertex column goes right after ``hu``; the zone columns after the HU ones.
    """
    density = calibration.density(vertices["hu"].to_numpy(dtype=float))
    vertices.insert(int(vertices.columns.get_loc("hu")) + 1, "density_mg_cm3", density)
    s = calibration.slope_hu_per_mg_cm3
    position = max(int(zones.columns.get_loc(c)) for c in _ZONE_DENSITY_COLUMNS if c in zones.columns) + 1
    for hu_col, d_col in _ZONE_DENSITY_COLUMNS.items():
        if hu_col not in zones.columns:
            continue
        hu = zones[hu_col].to_numpy(dtype=float)
        value = hu / s if hu_col == "hu_std" else calibration.density(hu)
        zones.insert(position, d_col, value)
        position += 1
