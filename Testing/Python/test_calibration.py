"""Density calibration: linear relation, phantom rod fit, bad files, and density in an analysis."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ibc_helpers import frame_parameters
from ImplantBoneContactLib import AnalysisParameters, InputError, analyze
from ImplantBoneContactLib.calibration import calibration_from_dict, fit_rods, read_calibration
from ImplantBoneContactLib.cli import main
from ImplantBoneContactLib.volume import Volume


def _write(tmp_path, data, name="cal.json"):
    p = tmp_path / name
    p.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return p


def test_rod_fit_recovers_slope_and_intercept():
    rng = np.random.default_rng(0)
    dens = np.array([0.0, 50.0, 100.0, 200.0, 400.0])
    slope, intercept = 1.31, -7.5
    noise = rng.normal(0.0, 1.5, dens.size)
    cal = fit_rods(dens, intercept + slope * dens + noise, "K2HPO4")
    # Independent least squares: numpy's polyfit on the same rods.
    ref_slope, ref_intercept = np.polyfit(dens, intercept + slope * dens + noise, 1)
    assert cal.slope_hu_per_mg_cm3 == pytest.approx(ref_slope, rel=1e-9)
    assert cal.intercept_hu == pytest.approx(ref_intercept, abs=1e-9)
    assert cal.slope_hu_per_mg_cm3 == pytest.approx(slope, abs=0.02)
    assert cal.intercept_hu == pytest.approx(intercept, abs=3.0)
    fit = cal.fit
    residuals = np.array([r["residual_hu"] for r in fit["rods"]])
    assert np.allclose(residuals, (intercept + slope * dens + noise) - (ref_intercept + ref_slope * dens))
    assert fit["r2"] > 0.999
    assert fit["rms_residual_hu"] == pytest.approx(np.sqrt(np.mean(residuals**2)))


def test_exact_rods_give_exact_line_and_r2_one(tmp_path):
    p = _write(tmp_path, {"material": "hydroxyapatite", "rods": [{"density_mg_cm3": d, "hu": 10.0 + 0.9 * d} for d in (0, 100, 200)]})
    cal = read_calibration(p)
    assert cal.material == "hydroxyapatite"
    assert cal.slope_hu_per_mg_cm3 == pytest.approx(0.9)
    assert cal.intercept_hu == pytest.approx(10.0)
    assert cal.fit["r2"] == pytest.approx(1.0)
    assert np.allclose(cal.density([10.0, 100.0, np.nan]), [0.0, 100.0, np.nan], equal_nan=True)


def test_grams_per_cm3_unit_is_converted():
    cal = calibration_from_dict({"material": "K2HPO4", "unit": "g/cm3",
                                 "rods": [{"density_mg_cm3": 0.0, "hu": 0.0}, {"density_mg_cm3": 0.2, "hu": 240.0}]})
    assert cal.slope_hu_per_mg_cm3 == pytest.approx(1.2)


@pytest.mark.parametrize(
    "data, words",
    [
        ({"material": "K2HPO4", "rods": [{"density_mg_cm3": 100, "hu": 120}]}, ["1 rod", "at least two"]),
        ({"material": "K2HPO4", "rods": [{"density_mg_cm3": 0, "hu": 200}, {"density_mg_cm3": 200, "hu": 10}]}, ["slope", "rise"]),
        ({"material": "K2HPO4", "slope_hu_per_mg_cm3": -1.2, "intercept_hu": 0}, ["slope", "rise"]),
        ({"material": "K2HPO4", "unit": "lb/in3", "slope_hu_per_mg_cm3": 1.2, "intercept_hu": 0}, ["unknown density unit", "mg/cm3"]),
        ({"material": "calcium", "slope_hu_per_mg_cm3": 1.2, "intercept_hu": 0}, ["unknown calibration material", "K2HPO4"]),
        ({"slope_hu_per_mg_cm3": 1.2, "intercept_hu": 0}, ["material"]),
        ({"material": "K2HPO4", "slope_hu_per_mg_cm3": 1.2}, ["intercept_hu"]),
        ({"material": "K2HPO4", "slope_hu_per_mg_cm3": 1200, "intercept_hu": 0}, ["g/cm3"]),
        ({"material": "K2HPO4", "rods": [{"density_mg_cm3": 100, "hu": 1}, {"density_mg_cm3": 100, "hu": 2}]}, ["same density"]),
        ({"material": "K2HPO4", "slope": 1.2, "intercept_hu": 0}, ["unknown key"]),
        ("{not json", ["JSON"]),
    ],
)
def test_bad_calibration_files_are_clear_errors(tmp_path, data, words):
    p = _write(tmp_path, data)
    with pytest.raises(InputError) as e:
        read_calibration(p)
    for w in words:
        assert w in str(e.value)


def test_cli_bad_calibration_is_one_line_and_exit_2(tmp_path, capsys):
    cal = _write(tmp_path, {"material": "K2HPO4", "rods": [{"density_mg_cm3": 100, "hu": 120}]})
    out = tmp_path / "out"
    code = main(["analyze", "--ct", str(tmp_path / "ct.nrrd"), "--model", str(tmp_path / "m.stl"), "--calibration", str(cal),
                 "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "rod" in err[0]
    assert not out.exists()


def test_density_is_the_linear_map_of_hu_on_a_calibrated_ct(tmp_path, phantom):
    """A CT made from densities with a known calibration: the analysis gives those densities back."""
    slope, intercept = 1.25, -12.0
    # The CT of a density field: density rises linearly along R and S (mg/cm3), HU = intercept + slope * density.
    n = 60
    m = np.eye(4)
    m[:3, :3] *= 1.0
    lo = np.array([-40.0, -40.0, -60.0])
    m[:3, 3] = lo
    k, j, i = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    ras = np.stack([i, j, k], -1) + lo
    density = 300.0 + 2.0 * ras[..., 0] + 1.5 * ras[..., 2]
    ct = Volume(array=(intercept + slope * density).astype(np.float32), ijk_to_ras=m)
    stem = phantom.make_stem_surface()
    from ImplantBoneContactLib.mesh import points as mesh_points
    from ImplantBoneContactLib.mesh import polydata_from_arrays, triangles

    # Shrink the phantom stem into the CT (about 0.3 of its size) so it lies wholly inside.
    pts = mesh_points(stem)
    centre = pts.mean(0)
    small = polydata_from_arrays((pts - centre) * 0.3, triangles(stem))
    cal = _write(tmp_path, {"material": "K2HPO4", "slope_hu_per_mg_cm3": slope, "intercept_hu": intercept})
    result = analyze(ct, small, AnalysisParameters(remesh="none", calibration=str(cal), side="left"))
    v = result.vertices
    p = v[["x_mm", "y_mm", "z_mm"]].to_numpy()
    truth = 300.0 + 2.0 * p[:, 0] + 1.5 * p[:, 2]
    assert np.nanmax(np.abs(v["density_mg_cm3"].to_numpy() - truth)) < 1e-3
    z = result.zones
    assert np.allclose(z["density_mean_mg_cm3"], (z["hu_mean"] - intercept) / slope)
    assert np.allclose(z["density_std_mg_cm3"], z["hu_std"] / slope)
    assert np.allclose(z["density_p95_mg_cm3"], (z["hu_p95"] - intercept) / slope)
    assert result.inputs["calibration"]["slope_hu_per_mg_cm3"] == slope
    assert "density_mg_cm3" in [result.surface.GetPointData().GetArrayName(a) for a in range(result.surface.GetPointData().GetNumberOfArrays())]


def test_calibration_recorded_in_parameters_json(tmp_path, phantom, phantom_ct, phantom_stem):
    from ImplantBoneContactLib import save_result

    cal = _write(tmp_path, {"material": "hydroxyapatite", "rods": [{"density_mg_cm3": d, "hu": 5.0 + d} for d in (0, 100, 200)]})
    params = AnalysisParameters(points=800, remesh="fast", calibration=str(cal), **frame_parameters(phantom.true_frame()))
    result = analyze(phantom_ct, phantom_stem, params)
    out = save_result(result, tmp_path / "res", pictures=False)
    meta = json.loads((out / "parameters.json").read_text())
    assert meta["parameters"]["calibration"] == str(cal)
    assert meta["inputs"]["calibration"]["fit"]["n_rods"] == 3
    assert meta["inputs"]["calibration"]["material"] == "hydroxyapatite"
    import pandas as pd

    v = pd.read_csv(out / "vertices.csv")
    ok = np.isfinite(v["hu"])
    assert np.allclose(v.loc[ok, "density_mg_cm3"], v.loc[ok, "hu"] - 5.0, atol=1e-3)
