"""Calibration against answers worked out by hand: two-point lines, unit factors, slope limits, the
zone-table mapping and what a calibration records. Small inputs built here; each test runs in milliseconds."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from ImplantBoneContactLib import InputError
from ImplantBoneContactLib.calibration import (
    SLOPE_RANGE,
    Calibration,
    add_density,
    calibration_from_dict,
    fit_rods,
    read_calibration,
)


def test_two_rods_give_the_line_through_them():
    # (0, 20) and (200, 260): slope 240 / 200 = 1.2 HU per mg/cm3, intercept 20 HU.
    cal = fit_rods([0.0, 200.0], [20.0, 260.0], "K2HPO4")
    assert cal.slope_hu_per_mg_cm3 == pytest.approx(1.2, rel=1e-12)
    assert cal.intercept_hu == pytest.approx(20.0, abs=1e-12)
    assert cal.source == "rods" and cal.material == "K2HPO4"
    assert cal.fit["n_rods"] == 2
    assert cal.fit["r2"] == pytest.approx(1.0, abs=1e-12)
    assert cal.fit["rms_residual_hu"] == pytest.approx(0.0, abs=1e-12)
    assert cal.fit["max_abs_residual_hu"] == pytest.approx(0.0, abs=1e-12)
    assert cal.fit["method"] == "ordinary least squares, HU on density"


def test_three_rods_residuals_and_r2_by_hand():
    # Rods (0, 0), (100, 110), (200, 200): the least-squares line is HU = 5 + 1.0 * density
    # (x mean 100, y mean 103.333; Sxy = 20000, Sxx = 20000); fitted 5, 105, 205; residuals -5, +5, -5.
    cal = fit_rods(np.array([[0.0], [100.0], [200.0]]), [0.0, 110.0, 200.0], "hydroxyapatite")
    assert cal.slope_hu_per_mg_cm3 == pytest.approx(1.0, rel=1e-12)
    assert cal.intercept_hu == pytest.approx(10.0 / 3.0, rel=1e-12)
    rods = cal.fit["rods"]
    assert [r["density_mg_cm3"] for r in rods] == [0.0, 100.0, 200.0]
    assert [r["hu"] for r in rods] == [0.0, 110.0, 200.0]
    res = np.array([r["residual_hu"] for r in rods])
    fitted = np.array([r["fitted_hu"] for r in rods])
    expect_fitted = 10.0 / 3.0 + np.array([0.0, 100.0, 200.0])
    assert np.allclose(fitted, expect_fitted, atol=1e-9)
    assert np.allclose(res, np.array([0.0, 110.0, 200.0]) - expect_fitted, atol=1e-9)
    # SS_res = (10/3)^2 + (20/3)^2 + (10/3)^2 = 600/9; SS_tot = 20066.67
    ss_res = 600.0 / 9.0
    ss_tot = (0 - 310 / 3) ** 2 + (110 - 310 / 3) ** 2 + (200 - 310 / 3) ** 2
    assert cal.fit["r2"] == pytest.approx(1.0 - ss_res / ss_tot, rel=1e-12)
    assert cal.fit["rms_residual_hu"] == pytest.approx(np.sqrt(ss_res / 3.0), rel=1e-12)
    assert cal.fit["max_abs_residual_hu"] == pytest.approx(20.0 / 3.0, rel=1e-12)
    assert cal.fit["n_rods"] == 3


def test_density_and_hu_are_inverse_linear_maps():
    cal = Calibration("K2HPO4", 1.25, -10.0)
    assert np.allclose(cal.density([-10.0, 115.0, 240.0]), [0.0, 100.0, 200.0])
    assert np.allclose(cal.hu([0.0, 100.0, 200.0]), [-10.0, 115.0, 240.0])
    assert cal.density(np.array([1, 2], dtype=np.int16)).dtype == np.float64
    assert np.isnan(cal.density([np.nan])[0])


@pytest.mark.parametrize("unit, factor", [("mg/cm3", 1.0), ("mg/cc", 1.0), ("mg/ml", 1.0), ("mg/cm^3", 1.0),
                                          ("g/cm3", 1000.0), ("G/CM3", 1000.0), (" g / cc ", 1000.0), ("g/cm^3", 1000.0)])
def test_units_scale_rod_densities_and_the_given_slope(unit, factor):
    rods = calibration_from_dict({"material": "K2HPO4", "unit": unit,
                                  "rods": [{"density_mg_cm3": 0.0, "hu": 0.0}, {"density": 300.0 / factor, "hu": 360.0}]})
    assert rods.slope_hu_per_mg_cm3 == pytest.approx(1.2, rel=1e-12)
    line = calibration_from_dict({"material": "K2HPO4", "unit": unit, "slope_hu_per_mg_cm3": 1.2 * factor, "intercept_hu": 7})
    assert line.slope_hu_per_mg_cm3 == pytest.approx(1.2, rel=1e-12)
    assert line.intercept_hu == 7.0
    assert line.source == "linear"


def test_without_unit_densities_are_mg_per_cm3():
    cal = calibration_from_dict({"material": "K2HPO4", "slope_hu_per_mg_cm3": 1.5, "intercept_hu": "-3"})
    assert cal.slope_hu_per_mg_cm3 == 1.5 and cal.intercept_hu == -3.0


@pytest.mark.parametrize("alias, canonical", [("K2HPO4", "K2HPO4"), (" k2hpo4 ", "K2HPO4"), ("Dipotassium Phosphate", "K2HPO4"),
                                              ("dipotassium_phosphate", "K2HPO4"), ("HA", "hydroxyapatite"),
                                              ("cha", "hydroxyapatite"), ("Hydroxyapatite", "hydroxyapatite")])
def test_material_aliases(alias, canonical):
    cal = calibration_from_dict({"material": alias, "slope_hu_per_mg_cm3": 1.0, "intercept_hu": 0.0})
    assert cal.material == canonical
    assert fit_rods([0, 100], [0, 100], alias).material == canonical


def test_slope_limits_are_inclusive():
    lo, hi = SLOPE_RANGE
    assert (lo, hi) == (0.05, 20.0)
    for s in (lo, hi):
        assert calibration_from_dict({"material": "HA", "slope_hu_per_mg_cm3": s, "intercept_hu": 0}).slope_hu_per_mg_cm3 == s
    for s in (lo * 0.999, hi * 1.001):
        with pytest.raises(InputError, match="outside the plausible 0.05-20"):
            calibration_from_dict({"material": "HA", "slope_hu_per_mg_cm3": s, "intercept_hu": 0})
    with pytest.raises(InputError, match="HU must rise with density"):
        calibration_from_dict({"material": "HA", "slope_hu_per_mg_cm3": 0.0, "intercept_hu": 0})
    with pytest.raises(InputError, match="slope is 0.02 HU"):
        fit_rods([0, 100], [0, 2])  # 0.02 HU per mg/cm3: positive but implausible
    with pytest.raises(InputError, match="slope is -1 HU"):
        fit_rods([0, 100], [100, 0])


@pytest.mark.parametrize(
    "data, words",
    [
        ([1, 2], ["calibration: expected a JSON object"]),
        ({"material": "K2HPO4", "rods": {"density_mg_cm3": 1, "hu": 2}}, ["\"rods\" must be a list"]),
        ({"material": "K2HPO4", "rods": [[0, 0], [1, 1]]}, ["rod 1 must be"]),
        ({"material": "K2HPO4", "rods": [{"density_mg_cm3": 0, "hu": 0}, {"density_mg_cm3": 1}]}, ["rod 2 must be"]),
        ({"material": "K2HPO4", "rods": [{"density_mg_cm3": 0, "hu": 0}, {"hu": 1}]}, ["rod 2 must be"]),
        ({"material": "K2HPO4", "rods": [{"density_mg_cm3": 0, "hu": 0}, {"density_mg_cm3": "a", "hu": 1}]},
         ["rod 2 density must be a number, got 'a'"]),
        ({"material": "K2HPO4", "rods": [{"density_mg_cm3": 0, "hu": None}, {"density_mg_cm3": 1, "hu": 1}]},
         ["rod 1 HU must be a number"]),
        ({"material": "K2HPO4", "rods": [{"density_mg_cm3": 0, "hu": 0}, {"density_mg_cm3": "inf", "hu": 1}]},
         ["rod 2 density must be a finite number"]),
        ({"material": "K2HPO4", "rods": [], "slope_hu_per_mg_cm3": 1.0}, ["either rods or", "not both"]),
        ({"material": "K2HPO4", "rods": [], "intercept_hu": 1.0}, ["not both"]),
        ({"material": "K2HPO4", "intercept_hu": 1.0}, ["give both slope_hu_per_mg_cm3 and intercept_hu"]),
        ({"material": "K2HPO4"}, ["give both"]),
        ({"material": 5, "slope_hu_per_mg_cm3": 1.0, "intercept_hu": 0}, ["unknown calibration material 5"]),
        ({"material": "K2HPO4", "unit": 1000, "slope_hu_per_mg_cm3": 1.0, "intercept_hu": 0}, ["unknown density unit 1000"]),
        ({"material": "K2HPO4", "slope_hu_per_mg_cm3": 1.0, "intercept_hu": 0, "zz": 1, "aa": 2}, ["unknown key(s) aa, zz:"]),
        ({"material": "K2HPO4", "slope_hu_per_mg_cm3": "nan", "intercept_hu": 0}, ["slope_hu_per_mg_cm3 must be a finite"]),
        ({"material": "K2HPO4", "slope_hu_per_mg_cm3": 1.0, "intercept_hu": [0]}, ["intercept_hu must be a number"]),
    ],
)
def test_bad_calibrations_say_what_is_wrong(data, words):
    with pytest.raises(InputError) as e:
        calibration_from_dict(data)
    for w in words:
        assert w in str(e.value)


def test_allowed_descriptive_keys():
    cal = calibration_from_dict({"material": "HA", "slope_hu_per_mg_cm3": 1.0, "intercept_hu": 0.0,
                                 "comment": "c", "description": "d", "phantom": "p", "unit": "mg/cm3"})
    assert cal.material == "hydroxyapatite"


@pytest.mark.parametrize("bad", [[0, 1, 2], [0, np.nan], [0, np.inf]])
def test_fit_rods_refuses_bad_arrays(bad):
    with pytest.raises(InputError, match="calibration rods: "):
        fit_rods(bad, [0.0, 100.0])


def test_fit_rods_error_words():
    with pytest.raises(InputError, match="3 densities for 2 HU values"):
        fit_rods([0, 1, 2], [0, 1])
    with pytest.raises(InputError, match="every rod needs a finite density and HU"):
        fit_rods([0, 100], [0, np.nan])
    with pytest.raises(InputError, match=r"1 rod given: a line needs at least two"):
        fit_rods([1.0], [1.0])
    with pytest.raises(InputError, match=r"same density \(50 mg/cm3\)"):
        fit_rods([50.0, 50.0], [1.0, 2.0])
    with pytest.raises(InputError, match="unknown calibration material 'bone'"):
        fit_rods([0, 100], [0, 100], "bone")


def test_to_dict_records_the_relation():
    cal = Calibration("K2HPO4", np.float32(1.5), np.float64(-4.0))
    d = cal.to_dict()
    assert d == {
        "material": "K2HPO4", "slope_hu_per_mg_cm3": 1.5, "intercept_hu": -4.0, "source": "linear",
        "density_unit": "mg/cm3 K2HPO4-equivalent",
        "relation": "density_mg_cm3 = (hu - intercept_hu) / slope_hu_per_mg_cm3",
    }
    assert type(d["slope_hu_per_mg_cm3"]) is float and type(d["intercept_hu"]) is float
    json.dumps(d)
    rods = fit_rods([0, 100], [0, 100], "HA")
    rods.path = "/x/cal.json"
    d = rods.to_dict()
    assert d["fit"]["n_rods"] == 2 and d["path"] == "/x/cal.json" and d["source"] == "rods"
    assert d["density_unit"] == "mg/cm3 hydroxyapatite-equivalent"


def test_read_calibration_records_the_resolved_path(tmp_path, monkeypatch):
    p = tmp_path / "cal é.json"
    p.write_text(json.dumps({"material": "K2HPO4", "comment": "café", "slope_hu_per_mg_cm3": 1.2, "intercept_hu": 3}),
                 encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cal = read_calibration("cal é.json")
    assert cal.path == str(p.resolve())
    assert cal.slope_hu_per_mg_cm3 == 1.2 and cal.intercept_hu == 3.0
    with pytest.raises(InputError, match="calibration file not found"):
        read_calibration(tmp_path / "none.json")
    with pytest.raises(InputError, match="calibration file not found"):
        read_calibration(tmp_path)  # a folder is not a file
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"material": "K2HPO4"}), encoding="utf-8")
    with pytest.raises(InputError, match="calibration file bad.json: give both"):
        read_calibration(bad)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"material": "K2HPO4", "comment": "caf\xe9"}')
    with pytest.raises(InputError, match="cannot read the calibration file"):
        read_calibration(latin)


def test_add_density_maps_vertex_and_zone_columns_in_place():
    cal = Calibration("K2HPO4", 2.0, 10.0)
    vertices = pd.DataFrame({"id": [0, 1, 2], "hu": [10.0, 210.0, np.nan], "cls": ["a", "b", "c"]})
    zones = pd.DataFrame({
        "zone": [1, 2], "hu_mean": [110.0, 30.0], "hu_std": [8.0, 4.0], "hu_min": [10.0, 20.0],
        "hu_p05": [12.0, 21.0], "hu_p25": [50.0, 25.0], "hu_median": [100.0, 30.0], "hu_p75": [150.0, 35.0],
        "hu_p95": [200.0, 39.0], "hu_max": [210.0, 40.0], "fraction": [0.5, 0.5],
    })
    add_density(vertices, zones, cal)
    assert list(vertices.columns) == ["id", "hu", "density_mg_cm3", "cls"]
    assert np.allclose(vertices["density_mg_cm3"], [0.0, 100.0, np.nan], equal_nan=True)
    hu_cols = ["hu_mean", "hu_std", "hu_min", "hu_p05", "hu_p25", "hu_median", "hu_p75", "hu_p95", "hu_max"]
    d_cols = [c.replace("hu_", "density_") + "_mg_cm3" for c in hu_cols]
    assert list(zones.columns) == ["zone", *hu_cols, *d_cols, "fraction"]
    for h, d in zip(hu_cols, d_cols):
        expect = zones[h] / 2.0 if h == "hu_std" else (zones[h] - 10.0) / 2.0
        assert np.allclose(zones[d], expect), d


def test_add_density_keeps_only_the_zone_columns_present():
    cal = Calibration("K2HPO4", 0.5, 0.0)
    vertices = pd.DataFrame({"hu": [1.0]})
    zones = pd.DataFrame({"hu_std": [2.0], "hu_mean": [3.0], "n": [7]})
    add_density(vertices, zones, cal)
    assert list(zones.columns) == ["hu_std", "hu_mean", "density_mean_mg_cm3", "density_std_mg_cm3", "n"]
    assert zones["density_mean_mg_cm3"].iloc[0] == 6.0 and zones["density_std_mg_cm3"].iloc[0] == 4.0
    assert vertices["density_mg_cm3"].iloc[0] == 2.0


def test_add_density_goes_past_a_missing_zone_column():
    cal = Calibration("K2HPO4", 1.0, 0.0)
    vertices = pd.DataFrame({"hu": [1.0]})
    zones = pd.DataFrame({"hu_mean": [3.0], "hu_max": [9.0]})  # no hu_std..hu_p95 in between
    add_density(vertices, zones, cal)
    assert list(zones.columns) == ["hu_mean", "hu_max", "density_mean_mg_cm3", "density_max_mg_cm3"]
    assert zones["density_max_mg_cm3"].iloc[0] == 9.0


def test_error_hints_say_what_to_do():
    with pytest.raises(InputError, match=r"check that the rod densities and HU are paired correctly \(or that slope and "
                                         r"intercept are not swapped\)$"):
        fit_rods([0, 100], [100, 0])
    with pytest.raises(InputError, match=r"are the densities in g/cm3 given as mg/cm3 \(or the reverse\)\? set \"unit\"$"):
        fit_rods([0, 1], [0, 100])
    with pytest.raises(InputError, match=r"\(the reference material of the phantom's rods\)$"):
        fit_rods([0, 100], [0, 100], "bone")
    with pytest.raises(InputError, match=r"either slope_hu_per_mg_cm3 \+ intercept_hu, or rods$"):
        calibration_from_dict({"material": "HA", "x": 1})


@pytest.mark.parametrize(
    "data",
    [
        {"material": "bone", "slope_hu_per_mg_cm3": 1.0, "intercept_hu": 0},
        {"material": "HA", "unit": "kg", "slope_hu_per_mg_cm3": 1.0, "intercept_hu": 0},
        {"material": "HA", "rods": [{"density_mg_cm3": "x", "hu": 0}, {"density_mg_cm3": 1, "hu": 1}]},
        {"material": "HA", "rods": [{"density_mg_cm3": 0, "hu": "x"}, {"density_mg_cm3": 1, "hu": 1}]},
        {"material": "HA", "rods": [{"density_mg_cm3": 0, "hu": 10}, {"density_mg_cm3": 100, "hu": 0}]},
        {"material": "HA", "slope_hu_per_mg_cm3": "x", "intercept_hu": 0},
        {"material": "HA", "slope_hu_per_mg_cm3": 1.0, "intercept_hu": "x"},
        {"material": "HA", "slope_hu_per_mg_cm3": 100.0, "intercept_hu": 0},
    ],
)
def test_errors_name_the_calibration_they_come_from(data):
    with pytest.raises(InputError) as e:
        calibration_from_dict(data, where="calibration file cal.json")
    assert str(e.value).startswith("calibration file cal.json: ")


def test_fit_rods_errors_name_the_rods():
    with pytest.raises(InputError, match="^calibration rods: unknown calibration material"):
        fit_rods([0, 100], [0, 100], "bone")
    with pytest.raises(InputError, match="^calibration rods: the slope is"):
        fit_rods([0, 100], [0, 1])


def test_rods_closer_than_one_unit_and_within_one_hu():
    # Densities 0 and 0.8 mg/cm3, HU 0 and 0.4: slope 0.5, a valid (if unusual) calibration;
    # the HU spread is below 1 HU^2 in sum of squares, and the fit is still exact (R^2 = 1).
    cal = fit_rods([0.0, 0.8], [0.0, 0.4])
    assert cal.slope_hu_per_mg_cm3 == pytest.approx(0.5, rel=1e-12)
    assert cal.fit["r2"] == pytest.approx(1.0, abs=1e-12)


def test_column_shaped_hu_is_flattened():
    cal = fit_rods([0.0, 100.0, 200.0], [[0.0], [110.0], [200.0]])
    assert cal.slope_hu_per_mg_cm3 == pytest.approx(1.0, rel=1e-12)
    assert cal.intercept_hu == pytest.approx(10.0 / 3.0, rel=1e-12)
