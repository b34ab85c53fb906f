"""Follow-up comparison of two small result tables built here, with answers worked out by hand.

The stem surface is a cylinder of 24 x 29 vertices (1 mm2 each) around the z axis, built so that every
5 mm patch of the spread estimate holds exactly two vertices; each Gruen zone is two height rows. The two
"result folders" are held in memory (``load_result`` is replaced), so a test runs in milliseconds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from ImplantBoneContactLib import InputError
from ImplantBoneContactLib import compare as cmp
from ImplantBoneContactLib.frame import ZONE_REGIONS, StemFrame
from ImplantBoneContactLib.mesh import points as mesh_points
from ImplantBoneContactLib.mesh import polydata_from_arrays, transform_polydata

N_AZ, N_H = 24, 29
# Patches: arc = radians(azimuth) * radius; with azimuth 7.5 + 15 k degrees and this radius, arc = 2.5 k + 1.25 mm,
# so a 5 mm patch holds azimuth steps 2m and 2m + 1; heights 2.5 + 5 h: one patch row per height row.
RADIUS = 2.5 / math.radians(15.0)
ZONES = [str(z) for z in range(1, 15)] + ["all"]


def _grid():
    k, h = np.meshgrid(np.arange(N_AZ), np.arange(N_H), indexing="xy")  # (N_H, N_AZ)
    az = np.radians(7.5 + 15.0 * k.ravel())
    z = 2.5 + 5.0 * h.ravel()
    pts = np.stack([RADIUS * np.cos(az), RADIUS * np.sin(az), z], axis=1)
    tris = []
    for hi in range(N_H - 1):
        for ki in range(N_AZ):
            a, b = hi * N_AZ + ki, hi * N_AZ + (ki + 1) % N_AZ
            c, d = a + N_AZ, b + N_AZ
            tris += [(a, b, d), (a, d, c)]
    zone = 1 + (h.ravel() // 2) % 14
    return pts, np.array(tris), h.ravel(), k.ravel(), zone


PTS, TRIS, ROW, COL, ZONE = _grid()
FRAME = StemFrame(proximal_point=np.array([0.0, 0.0, 200.0]), axis=np.array([0.0, 0.0, -1.0]),
                  medial=np.array([1.0, 0.0, 0.0]), anterior=np.array([0.0, 1.0, 0.0]), tip=np.zeros(3),
                  resection_point=np.array([0.0, 0.0, 150.0]), resection_normal=np.array([0.0, 0.0, 1.0]), side="left")


def _result(path, hu, cls=None, zone_hu=None, noise=10.0, spacing=(1.0, 1.0, 1.0), density=None, zone_density=None,
            calibration=None, sensitivity=None, sha="a" * 64, surface=None, params=None, zone=None, frac=None):
    n = len(PTS)
    zone = ZONE if zone is None else zone
    cls = np.array(["cancellous"] * n, dtype=object) if cls is None else cls
    v = pd.DataFrame({
        "vertex_id": np.arange(n), "x_mm": PTS[:, 0], "y_mm": PTS[:, 1], "z_mm": PTS[:, 2],
        "height_mm": PTS[:, 2], "azimuth_deg": (7.5 + 15.0 * COL) % 360.0, "gruen_zone": zone,
        "area_mm2": np.ones(n), "hu": hu, "contact_class": cls,
    })
    if density is not None:
        v["density_mg_cm3"] = density
    zone_hu = zone_hu or {}
    frac = frac or {}
    rows = []
    for z in ZONES:
        sel = np.ones(n, bool) if z == "all" else zone == int(z)
        r = {"zone": z, "area_mm2": float(sel.sum()), "area_sampled_mm2": float(sel.sum()),
             "hu_mean": zone_hu[z] if z in zone_hu else float(np.nanmean(hu[sel])), "frac_cancellous": frac.get(z, 1.0),
             "frac_cortical": 1.0 - frac.get(z, 1.0)}
        if zone_density is not None:
            r["density_mean_mg_cm3"] = zone_density[z] if z in zone_density else float(np.nanmean(density[sel]))
        rows.append(r)
    inputs = {"ct": {"spacing_mm": list(spacing), "sha256": sha}}
    if noise is not None:
        inputs["ct"]["noise"] = {"noise_sd_hu": noise}
    if calibration is not None:
        inputs["calibration"] = calibration
    if sensitivity is not None:
        inputs["baseline"] = {"registration_sensitivity": sensitivity}
    meta = {"parameters": {"sampling": "trilinear", "offset_mm": 0.5, "zone_scheme": "sector", **(params or {})},
            "inputs": inputs}
    surface = polydata_from_arrays(PTS, TRIS) if surface is None else surface
    return cmp.StoredResult(path, v, pd.DataFrame(rows), meta, FRAME, surface)


@pytest.fixture
def results(monkeypatch, tmp_path):
    """``results(baseline, followup)`` -> the comparison of two in-memory results."""

    def run(b, f, **kw):
        store = {"B": b, "F": f}
        monkeypatch.setattr(cmp, "load_result", lambda p: store[str(p)])
        return cmp.compare("B", "F", **kw)

    return run


def _zone7_change(base=500.0):
    """Baseline HU ``base`` everywhere; follow-up +90 HU on zone 7's first row, +110 on its second."""
    hu_b = np.full(len(PTS), base)
    hu_f = hu_b.copy()
    hu_f[ROW == 12] += 90.0
    hu_f[ROW == 13] += 110.0
    return hu_b, hu_f


def test_zone_change_standard_error_and_significance(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    b = _result(tmp_path / "b", hu_b, zone_hu={"7": 500.0})
    f = _result(tmp_path / "f", hu_f, zone_hu={"7": 600.0, "8": 515.0})
    c = results(b, f, registration_sd_mm=0.0)
    z = c.zones.set_index("zone")
    assert list(c.zones["zone"]) == ZONES
    assert z.loc["7", "region"] == ZONE_REGIONS[7] and z.loc["all", "region"] == "whole stem below the resection plane"
    # Zone 7: 24 patches of two vertices with means 90 or 110: sd = 10 * sqrt(24 / 23), n_eff = 24.
    assert z.loc["7", "n_patches"] == 24
    assert z.loc["7", "se_spread_hu"] == pytest.approx(math.sqrt(100.0 / 23.0), rel=1e-9)
    # Noise floor: hypot(10, 10) * 1 mm / sqrt(48 mm2).
    floor = math.hypot(10.0, 10.0) / math.sqrt(48.0)
    assert z.loc["7", "se_noise_hu"] == pytest.approx(floor, rel=1e-9)
    assert z.loc["7", "se_hu"] == pytest.approx(math.sqrt(100.0 / 23.0), rel=1e-9)
    assert z.loc["7", "delta_hu_mean"] == pytest.approx(100.0)
    assert z.loc["7", "delta_hu_mean_pct"] == pytest.approx(20.0)
    assert z.loc["7", "hu_mean_baseline"] == 500.0 and z.loc["7", "hu_mean_followup"] == 600.0
    assert z.loc["7", "z_hu"] == pytest.approx(100.0 / math.sqrt(100.0 / 23.0), rel=1e-9)
    assert bool(z.loc["7", "significant"])
    # Zone 8: 15 HU with no spread: z = 15 / floor > 3 but below the 20 HU floor of a real change.
    assert z.loc["8", "se_spread_hu"] == 0.0 and z.loc["8", "se_hu"] == pytest.approx(floor, rel=1e-9)
    assert z.loc["8", "z_hu"] == pytest.approx(15.0 / floor, rel=1e-9)
    assert not bool(z.loc["8", "significant"])
    for label in ZONES:
        if label not in ("7", "all"):
            assert not bool(z.loc[label, "significant"]), label
    assert np.isnan(z.loc["7", "se_registration_hu"])  # no sensitivity recorded
    assert z.loc["7", "area_mm2"] == 48.0 and z.loc["7", "area_sampled_mm2"] == 48.0
    # Vertex table: the change point to point and over the combined noise.
    v = c.vertices
    assert np.array_equal(v["vertex_id"], np.arange(len(PTS)))
    assert np.array_equal(v["gruen_zone"], ZONE)
    assert np.allclose(v["delta_hu"], hu_f - hu_b)
    assert np.allclose(v["hu_baseline"], hu_b) and np.allclose(v["hu_followup"], hu_f)
    assert np.allclose(v["delta_hu_z"], (hu_f - hu_b) / math.hypot(10.0, 10.0))
    assert list(v.columns) == ["vertex_id", "gruen_zone", "area_mm2", "hu_baseline", "hu_followup", "delta_hu", "delta_hu_z",
                               "class_baseline", "class_followup", "changed_class", "class_transition"]
    s = c.summary
    assert s["noise_sd_hu"] == {"baseline": 10.0, "followup": 10.0, "combined": pytest.approx(math.hypot(10.0, 10.0))}
    assert s["significance"]["patch_mm"] == 5.0 and s["significance"]["z_threshold"] == 3.0
    assert s["significance"]["min_change_hu"] == 20.0
    assert s["registration_sd_mm"] == 0.0
    assert s["voxel_mm"] == {"baseline": 1.0, "followup": 1.0}
    assert s["checks"]["n_vertices"] == len(PTS) and s["checks"]["vertices_in_other_zone"] == 0
    assert s["baseline"] == str((tmp_path / "b").resolve())
    assert s["class_names"] == ["cancellous", "cortical"] and c.class_names == ["cancellous", "cortical"]
    assert not c.has_density
    assert c.warnings == ["the baseline and follow-up CT are the same file"]


def test_min_change_can_be_lowered(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    b = _result(tmp_path / "b", hu_b)
    f = _result(tmp_path / "f", hu_f, zone_hu={"8": float(hu_b[0]) + 15.0}, sha="b" * 64)
    z = results(b, f, min_change_hu=15.0, registration_sd_mm=0.0).zones.set_index("zone")
    assert bool(z.loc["8", "significant"])  # |15| >= 15
    z = results(b, f, min_change_hu=15.01, registration_sd_mm=0.0).zones.set_index("zone")
    assert not bool(z.loc["8", "significant"])


def test_significance_needs_more_than_three_standard_errors(results, tmp_path):
    # Zone 9: no spread; the zone mean changes by exactly 3 standard errors (the noise floor): not significant.
    hu_b = np.full(len(PTS), 500.0)
    floor = math.hypot(10.0, 10.0) / math.sqrt(48.0)
    b = _result(tmp_path / "b", hu_b)
    b = _result(tmp_path / "b", hu_b, zone_hu={"9": 0.0})
    f = _result(tmp_path / "f", hu_b.copy(), zone_hu={"9": 3.0 * floor, "10": 500.0 + 3.0001 * floor}, sha="c" * 64)
    z = results(b, f, min_change_hu=0.0, registration_sd_mm=0.0).zones.set_index("zone")
    assert not bool(z.loc["9", "significant"])
    assert bool(z.loc["10", "significant"])
    assert not bool(z.loc["1", "significant"])  # no change at all: z = 0


def test_registration_term_adds_in_quadrature(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    b = _result(tmp_path / "b", hu_b, zone_hu={"7": 500.0})
    sens = {"hu_per_mm": {"7": 40.0, "8": -8.0}, "default_registration_sd_mm": 0.25}
    f = _result(tmp_path / "f", hu_f, zone_hu={"7": 600.0}, sensitivity=sens, sha="d" * 64)
    c = results(b, f)  # the follow-up's default: 0.25 mm
    z = c.zones.set_index("zone")
    assert z.loc["7", "se_registration_hu"] == pytest.approx(10.0)
    assert z.loc["7", "se_hu"] == pytest.approx(math.hypot(math.sqrt(100.0 / 23.0), 10.0), rel=1e-9)
    assert z.loc["8", "se_registration_hu"] == pytest.approx(-2.0)
    assert z.loc["8", "se_hu"] == pytest.approx(math.hypot(math.hypot(10.0, 10.0) / math.sqrt(48.0), 2.0), rel=1e-9)
    assert np.isnan(z.loc["9", "se_registration_hu"])
    assert c.summary["registration_sd_mm"] == 0.25
    assert c.summary["registration_sensitivity"] == sens
    z = results(b, f, registration_sd_mm=1.0).zones.set_index("zone")
    assert z.loc["7", "se_registration_hu"] == pytest.approx(40.0)
    assert c.warnings == []


def test_missing_sensitivity_is_said_when_misregistration_is_allowed_for(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    b = _result(tmp_path / "b", hu_b)
    f = _result(tmp_path / "f", hu_f, sha="e" * 64)
    assert results(b, f).warnings == []  # no sensitivity and no default: no registration term, nothing to say
    w = results(b, f, registration_sd_mm=0.5).warnings
    assert w == ["the follow-up result does not record its registration sensitivity (not analysed with --baseline): "
                 "misregistration is not allowed for in the significance"]
    f2 = _result(tmp_path / "f", hu_f, sha="e" * 64, sensitivity={"hu_per_mm": {"7": 1.0}})
    assert results(b, f2).summary["registration_sd_mm"] == 0.0  # no default recorded: 0
    f3 = _result(tmp_path / "f", hu_f, sha="e" * 64, sensitivity="not a dict")
    c = results(b, f3)
    assert c.summary["registration_sd_mm"] == 0.0 and c.warnings == []


def test_without_noise_the_spread_alone_decides_and_it_is_said(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    b = _result(tmp_path / "b", hu_b, zone_hu={"7": 500.0})
    f = _result(tmp_path / "f", hu_f, zone_hu={"7": 600.0}, noise=None, sha="f" * 64)
    c = results(b, f, registration_sd_mm=0.0)
    assert c.warnings == ["the noise of one scan is not recorded (result of an older version, or no soft tissue away "
                          "from the implant): significance rests on the spread of the change alone"]
    assert c.vertices["delta_hu_z"].isna().all()
    z = c.zones.set_index("zone")
    assert np.isnan(z.loc["7", "se_noise_hu"])
    assert z.loc["7", "se_hu"] == pytest.approx(math.sqrt(100.0 / 23.0), rel=1e-9)
    assert bool(z.loc["7", "significant"])
    # No spread and no noise: no standard error, nothing significant.
    assert z.loc["8", "se_hu"] == 0.0 and np.isnan(z.loc["8", "z_hu"])
    assert not bool(z.loc["8", "significant"])
    assert math.isnan(c.summary["noise_sd_hu"]["followup"]) and math.isnan(c.summary["noise_sd_hu"]["combined"])


def test_zero_noise_gives_no_z_per_vertex(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    c = results(_result(tmp_path / "b", hu_b, noise=0), _result(tmp_path / "f", hu_f, noise=0.0, sha="0" * 64))
    assert c.vertices["delta_hu_z"].isna().all()
    assert c.summary["noise_sd_hu"]["combined"] == 0.0


def test_coarse_voxels_widen_the_patches_and_are_warned_about(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    b = _result(tmp_path / "b", hu_b, spacing=(1.0, 1.0, 1.0))
    f = _result(tmp_path / "f", hu_f, spacing=(2.0, 2.0, 2.0), sha="1" * 64)
    c = results(b, f, registration_sd_mm=0.0)
    assert c.summary["significance"]["patch_mm"] == 6.0  # 3 voxels of the coarser CT
    assert c.warnings == [
        "CT voxels of 2.0 mm: where the surface meets a steep edge (metal bloom, cortex) the HU depends on where the "
        "voxel grid falls, and that shifts whole zones alike between two scans, which the standard error does not see; "
        "read zone changes of less than about 100 HU as unconfirmed (see --min-change)"]
    z = c.zones.set_index("zone")
    assert z.loc["8", "se_noise_hu"] == pytest.approx(math.hypot(10.0, 10.0) * 2.0 / math.sqrt(48.0), rel=1e-9)
    # 1.5 mm exactly is not coarse; voxels recorded in one result only are used.
    f = _result(tmp_path / "f", hu_f, spacing=(1.5, 1.5, 1.5), sha="1" * 64)
    c = results(b, f, registration_sd_mm=0.0)
    assert c.warnings == [] and c.summary["significance"]["patch_mm"] == 5.0
    f = _result(tmp_path / "f", hu_f, spacing=(), sha="1" * 64)
    c = results(b, f, registration_sd_mm=0.0, patch_mm=2.0)
    assert c.summary["significance"]["patch_mm"] == 3.0 and math.isnan(c.summary["voxel_mm"]["followup"])
    b = _result(tmp_path / "b", hu_b, spacing=())
    c = results(b, f, registration_sd_mm=0.0, patch_mm=2.0)
    assert c.summary["significance"]["patch_mm"] == 2.0
    assert np.isnan(c.zones.set_index("zone").loc["8", "se_noise_hu"])


def test_class_transitions_and_changed_area(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    hu_f[(ZONE == 7) & (COL == 0)] = np.nan  # two unsampled vertices in zone 7 (one per row)
    cls_f = np.array(["cancellous"] * len(PTS), dtype=object)
    cls_f[ROW == 13] = "cortical"
    b = _result(tmp_path / "b", hu_b)
    f = _result(tmp_path / "f", hu_f, cls=cls_f, sha="2" * 64, frac={"7": 0.5})
    c = results(b, f, registration_sd_mm=0.0)
    v = c.vertices
    assert v["changed_class"].sum() == N_AZ
    assert set(v.loc[ROW == 13, "class_transition"]) == {"cancellous_to_cortical"}
    assert set(v.loc[ROW != 13, "class_transition"]) == {"unchanged"}
    assert set(v.loc[ROW == 13, "class_followup"]) == {"cortical"} and set(v["class_baseline"]) == {"cancellous"}
    z = c.zones.set_index("zone")
    # Zone 7: 46 sampled vertices, 23 of them changed class (the unsampled one of row 13 does not count).
    assert z.loc["7", "area_changed_class_mm2"] == 23.0
    assert z.loc["7", "frac_changed_class"] == pytest.approx(23.0 / 46.0)
    assert z.loc["all", "area_changed_class_mm2"] == 23.0
    assert z.loc["all", "frac_changed_class"] == pytest.approx(23.0 / (len(PTS) - 2))
    assert z.loc["8", "frac_changed_class"] == 0.0
    assert z.loc["7", "delta_frac_cancellous"] == pytest.approx(-0.5)
    assert z.loc["7", "delta_frac_cortical"] == pytest.approx(0.5)
    assert z.loc["8", "delta_frac_cortical"] == 0.0
    # Spread with the two unsampled vertices left out: patches of one vertex count half.
    assert z.loc["7", "n_patches"] == 24


def test_unsampled_zone_has_no_changed_fraction(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    hu_b[ZONE == 9] = np.nan
    b = _result(tmp_path / "b", hu_b, zone_hu={"9": float("nan")})
    f = _result(tmp_path / "f", hu_f, sha="3" * 64)
    z = results(b, f, registration_sd_mm=0.0).zones.set_index("zone")
    assert np.isnan(z.loc["9", "frac_changed_class"]) and z.loc["9", "area_changed_class_mm2"] == 0.0
    assert np.isnan(z.loc["9", "se_spread_hu"]) and z.loc["9", "n_patches"] == 0
    assert np.isnan(z.loc["9", "delta_hu_mean_pct"])


def test_percentage_change_needs_a_baseline_of_at_least_one_hu(results, tmp_path):
    hu_b, hu_f = _zone7_change(base=0.0)
    b = _result(tmp_path / "b", hu_b, zone_hu={"7": -1.0, "8": 0.5, "9": -0.999})
    f = _result(tmp_path / "f", hu_f, zone_hu={"7": 99.0, "8": 10.0, "9": 1.0}, sha="4" * 64)
    z = results(b, f, registration_sd_mm=0.0).zones.set_index("zone")
    assert z.loc["7", "delta_hu_mean_pct"] == pytest.approx(10000.0)  # 100 / |-1|
    assert np.isnan(z.loc["8", "delta_hu_mean_pct"]) and np.isnan(z.loc["9", "delta_hu_mean_pct"])


def _cal(slope, material="K2HPO4"):
    return {"material": material, "slope_hu_per_mg_cm3": slope, "intercept_hu": 0.0}


def test_density_change_with_two_calibrations(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    dens_b = np.full(len(PTS), 100.0)
    dens_f = dens_b.copy()
    dens_f[ROW == 12] += 45.0
    dens_f[ROW == 13] += 55.0
    sens = {"hu_per_mm": {"7": 40.0}, "default_registration_sd_mm": 0.25}
    b = _result(tmp_path / "b", hu_b, density=dens_b, zone_density={"7": 100.0}, calibration=_cal(1.0))
    f = _result(tmp_path / "f", hu_f, density=dens_f, zone_density={"7": 150.0, "8": 109.0}, calibration=_cal(2.0),
                sensitivity=sens, sha="5" * 64)
    c = results(b, f)
    assert c.has_density
    v = c.vertices
    assert list(v.columns)[7:10] == ["density_baseline_mg_cm3", "density_followup_mg_cm3", "delta_density_mg_cm3"]
    assert np.allclose(v["delta_density_mg_cm3"], dens_f - dens_b)
    z = c.zones.set_index("zone")
    assert z.loc["7", "density_mean_baseline_mg_cm3"] == 100.0 and z.loc["7", "density_mean_followup_mg_cm3"] == 150.0
    assert z.loc["7", "delta_density_mean_mg_cm3"] == 50.0
    assert z.loc["7", "delta_density_mean_pct"] == pytest.approx(50.0)
    # Spread sqrt(25 / 23) mg/cm3 < floor hypot(10 / 1, 10 / 2) / sqrt(48); registration 10 HU / slope 2 = 5 mg/cm3.
    floor_d = math.hypot(10.0, 5.0) / math.sqrt(48.0)
    assert z.loc["7", "se_density_mg_cm3"] == pytest.approx(math.hypot(floor_d, 5.0), rel=1e-9)
    assert bool(z.loc["7", "significant_density"])
    # Zone 8: 9 mg/cm3 with no spread: z = 9 / floor_d is large but 9 < 20 HU / max slope 2 = 10 mg/cm3.
    assert z.loc["8", "se_density_mg_cm3"] == pytest.approx(floor_d, rel=1e-9)
    assert not bool(z.loc["8", "significant_density"])
    assert c.summary["calibration"] == {"baseline": _cal(1.0), "followup": _cal(2.0)}
    z = results(b, f, min_change_hu=18.0).zones.set_index("zone")
    assert bool(z.loc["8", "significant_density"])  # 9 >= 18 / 2
    z = results(b, f, min_change_hu=18.1).zones.set_index("zone")
    assert not bool(z.loc["8", "significant_density"])


def test_density_needs_a_baseline_of_one_and_three_standard_errors(results, tmp_path):
    hu = np.full(len(PTS), 500.0)
    dens = np.full(len(PTS), 0.5)
    floor_d = math.hypot(10.0, 10.0) / math.sqrt(48.0)
    b = _result(tmp_path / "b", hu, density=dens, zone_density={"7": 0.0, "8": 1.0}, calibration=_cal(1.0))
    f = _result(tmp_path / "f", hu.copy(), density=dens.copy(),
                zone_density={"7": 3.0 * floor_d, "8": 1.0 + 3.001 * floor_d}, calibration=_cal(1.0), sha="6" * 64)
    z = results(b, f, min_change_hu=0.0, registration_sd_mm=0.0).zones.set_index("zone")
    assert np.isnan(z.loc["7", "delta_density_mean_pct"])
    assert z.loc["8", "delta_density_mean_pct"] == pytest.approx(300.1 * floor_d)
    assert not bool(z.loc["7", "significant_density"]) and bool(z.loc["8", "significant_density"])
    assert not bool(z.loc["9", "significant_density"])  # no change, no spread: z = 0
    # Without noise there is no floor; no spread either: no standard error, nothing significant.
    f = _result(tmp_path / "f", hu.copy(), density=dens.copy(), zone_density={"8": 5.0}, calibration=_cal(1.0),
                noise=None, sha="6" * 64)
    z = results(b, f, min_change_hu=0.0, registration_sd_mm=0.0).zones.set_index("zone")
    assert z.loc["8", "se_density_mg_cm3"] == 0.0 and not bool(z.loc["8", "significant_density"])
    dens_f = dens.copy()
    dens_f[ROW == 12] += 1.0
    f = _result(tmp_path / "f", hu.copy(), density=dens_f, zone_density={"7": 50.0}, calibration=_cal(1.0),
                noise=None, sha="6" * 64)
    z = results(b, f, min_change_hu=0.0, registration_sd_mm=0.0).zones.set_index("zone")
    assert z.loc["7", "se_density_mg_cm3"] == pytest.approx(math.sqrt(0.25 * 24.0 / 23.0 / 24.0), rel=1e-9)
    assert z.loc["7", "delta_density_mean_mg_cm3"] == 50.0
    assert bool(z.loc["7", "significant_density"])


def test_density_of_different_materials_is_refused_and_one_sided_density_is_said(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    d = np.full(len(PTS), 100.0)
    b = _result(tmp_path / "b", hu_b, density=d, zone_density={}, calibration=_cal(1.0))
    f = _result(tmp_path / "f", hu_f, density=d, zone_density={}, calibration=_cal(1.0, "hydroxyapatite"), sha="7" * 64)
    with pytest.raises(InputError, match=r"different materials \(K2HPO4 and hydroxyapatite\)"):
        results(b, f)
    f = _result(tmp_path / "f", hu_f, sha="7" * 64)
    c = results(b, f, registration_sd_mm=0.0)
    assert not c.has_density and "delta_density_mg_cm3" not in c.vertices.columns
    assert "significant_density" not in c.zones.columns
    assert c.warnings == ["only one of the two results has a density calibration: density change not reported "
                          "(give --calibration to both analyses)"]
    c = results(f, b, registration_sd_mm=0.0)
    assert len(c.warnings) == 1 and c.warnings[0].startswith("only one of the two results")


def test_same_ct_file_is_said_only_with_a_checksum(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    assert results(_result(tmp_path / "b", hu_b, sha=""), _result(tmp_path / "f", hu_f, sha=""),
                   registration_sd_mm=0.0).warnings == []
    assert results(_result(tmp_path / "b", hu_b, sha="x"), _result(tmp_path / "f", hu_f, sha="x"),
                   registration_sd_mm=0.0).warnings == ["the baseline and follow-up CT are the same file"]


def test_projection_scheme_counts_both_views(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    b = _result(tmp_path / "b", hu_b, params={"zone_scheme": "projection"})
    f = _result(tmp_path / "f", hu_f, params={"zone_scheme": "projection"}, sha="8" * 64)
    for r in (b, f):
        r.vertices["gruen_zone_ap"] = ZONE
        r.vertices["gruen_zone_lateral"] = np.where(ZONE == 7, 8, ZONE)  # zone 7's vertices are zone 8 seen laterally
    z = results(b, f, registration_sd_mm=0.0).zones.set_index("zone")
    # Zone 8 now holds its own 48 vertices (no change) and zone 7's 48 (change 90/110): 48 patches.
    assert z.loc["8", "n_patches"] == 48
    assert z.loc["7", "n_patches"] == 24
    # Without the view columns the scheme falls back to gruen_zone.
    b = _result(tmp_path / "b", hu_b, params={"zone_scheme": "projection"})
    f = _result(tmp_path / "f", hu_f, params={"zone_scheme": "projection"}, sha="8" * 64)
    assert results(b, f, registration_sd_mm=0.0).zones.set_index("zone").loc["8", "n_patches"] == 24


def test_change_surface_carries_the_numeric_columns(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    c = results(_result(tmp_path / "b", hu_b), _result(tmp_path / "f", hu_f, sha="9" * 64), registration_sd_mm=0.0)
    pd_ = c.surface.GetPointData()
    names = [pd_.GetArrayName(i) for i in range(pd_.GetNumberOfArrays())]
    assert names == ["vertex_id", "gruen_zone", "area_mm2", "hu_baseline", "hu_followup", "delta_hu", "delta_hu_z",
                     "changed_class"]
    assert pd_.GetScalars().GetName() == "delta_hu"
    from vtk.util import numpy_support as ns

    assert np.allclose(ns.vtk_to_numpy(pd_.GetArray("delta_hu")), hu_f - hu_b)
    assert ns.vtk_to_numpy(pd_.GetArray("changed_class")).dtype == np.uint8
    assert np.allclose(mesh_points(c.surface), PTS)
    assert c.surface is not c.baseline.surface and c.baseline.surface.GetPointData().GetNumberOfArrays() == 0


@pytest.mark.parametrize("kw, words", [
    ({"min_change_hu": -1.0}, "minimum change must be a non-negative number of HU, got -1.0"),
    ({"min_change_hu": float("nan")}, "minimum change"),
    ({"min_change_hu": float("inf")}, "minimum change"),
    ({"registration_sd_mm": -0.1}, "registration uncertainty must be a non-negative number of mm, got -0.1"),
    ({"registration_sd_mm": float("inf")}, "registration uncertainty"),
    ({"patch_mm": 0.0}, "patch size must be a positive number of mm, got 0.0"),
    ({"patch_mm": float("nan")}, "patch size"),
])
def test_bad_settings_are_refused(results, tmp_path, kw, words):
    hu_b, hu_f = _zone7_change()
    with pytest.raises(InputError) as e:
        results(_result(tmp_path / "b", hu_b), _result(tmp_path / "f", hu_f), **kw)
    assert words in str(e.value)


def test_zero_settings_are_accepted(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    c = results(_result(tmp_path / "b", hu_b), _result(tmp_path / "f", hu_f, sha="z"), min_change_hu=0.0, registration_sd_mm=0.0)
    assert c.summary["significance"]["min_change_hu"] == 0.0


# ----------------------------------------------------------------------------- same stem


def _rotation(deg_z, deg_x):
    a, b = np.radians(deg_z), np.radians(deg_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    m = np.eye(4)
    m[:3, :3] = rz @ rx
    m[:3, 3] = [5.0, -3.0, 12.0]
    return m


def test_same_stem_moved_rigidly_passes(tmp_path):
    hu = np.full(len(PTS), 1.0)
    b = _result(tmp_path / "b", hu)
    f = _result(tmp_path / "f", hu, surface=transform_polydata(polydata_from_arrays(PTS, TRIS), _rotation(30, 20)))
    checks = cmp.check_same_stem(b, f)
    assert checks["n_vertices"] == len(PTS) and checks["vertices_in_other_zone"] == 0
    assert checks["shape_rms_mm"] < 1e-9
    # The cylinder's area: 24 x 28 quads of two triangles, each quad a flat rectangle 5 mm high.
    chord = 2.0 * RADIUS * math.sin(math.radians(7.5))
    assert checks["area_mm2"] == pytest.approx(N_AZ * (N_H - 1) * 5.0 * chord, rel=1e-9)


def test_different_stems_are_refused(tmp_path):
    hu = np.full(len(PTS), 1.0)
    b = _result(tmp_path / "b", hu)
    hint = "analyse the follow-up with --baseline BASELINE_RESULT so both use the same surface"
    # Other triangles (same count).
    tris = TRIS.copy()
    tris[0] = tris[0][[1, 2, 0]]
    with pytest.raises(InputError, match="the triangles of the two results differ") as e:
        cmp.check_same_stem(b, _result(tmp_path / "f", hu, surface=polydata_from_arrays(PTS, tris)))
    assert str(e.value).endswith(hint)
    with pytest.raises(InputError, match="triangles"):
        cmp.check_same_stem(b, _result(tmp_path / "f", hu, surface=polydata_from_arrays(PTS, TRIS[:-1])))
    # Stretched by 0.11 % along the axis: the area grows by more than the 0.1 % allowed.
    s = np.diag([1.0, 1.0, 1.0011, 1.0])
    with pytest.raises(InputError, match="different stems: surface areas"):
        cmp.check_same_stem(b, _result(tmp_path / "f", hu, surface=transform_polydata(polydata_from_arrays(PTS, TRIS), s)))
    # Same area, other shape: the cylinder squeezed into an ellipse keeps nearly its area but not its shape.
    e_pts = PTS * np.array([1.02, 1 / 1.02, 1.0])
    with pytest.raises(InputError, match=r"different shapes: the two surfaces differ by 0\.\d+ mm RMS"):
        cmp.check_same_stem(b, _result(tmp_path / "f", hu, surface=polydata_from_arrays(e_pts, TRIS)))
    e_pts = PTS * np.array([1.0001, 1 / 1.0001, 1.0])  # 0.001 mm: within 0.01 mm RMS
    cmp.check_same_stem(b, _result(tmp_path / "f", hu, surface=polydata_from_arrays(e_pts, TRIS)))


def test_vertex_count_zones_and_settings_must_agree(tmp_path):
    hu = np.full(len(PTS), 1.0)
    b = _result(tmp_path / "b", hu)
    f = _result(tmp_path / "f", hu)
    f.vertices = f.vertices.iloc[:-1]
    with pytest.raises(InputError, match=f"the baseline has {len(PTS)} vertices and the follow-up {len(PTS) - 1}"):
        cmp.check_same_stem(b, f)
    # One vertex of 696 in another zone (0.14 %) is refused; none passes.
    zone = ZONE.copy()
    zone[0] = 2
    with pytest.raises(InputError, match=r"0\.1% of the vertices are in another Gruen zone"):
        cmp.check_same_stem(b, _result(tmp_path / "f", hu, zone=zone))
    with pytest.raises(InputError, match=r"sampled differently \(offset_mm: 0.5 vs 1.0, profile: 'max' vs None\)"):
        cmp.check_same_stem(_result(tmp_path / "b", hu, params={"profile": "max"}),
                            _result(tmp_path / "f", hu, params={"offset_mm": 1.0, "profile": None}))
    # Settings recorded in one result only are not compared; floats equal to 9 decimals are equal.
    cmp.check_same_stem(_result(tmp_path / "b", hu, params={"metal_hu": 2500.0}), _result(tmp_path / "f", hu))
    cmp.check_same_stem(_result(tmp_path / "b", hu, params={"offset_mm": 0.5 + 1e-12, "bands_axial": [0.1, 1 / 3]}),
                        _result(tmp_path / "f", hu, params={"bands_axial": [0.1, 0.333333333333]}))


def test_stored_result_properties(tmp_path):
    r = _result(tmp_path / "b", np.zeros(len(PTS)), spacing=(1.0, 2.0, 3.0), noise=12)
    assert r.noise_sd_hu == 12.0 and r.voxel_mm == 2.0 and r.calibration is None
    assert r.parameters == r.metadata["parameters"] and r.parameters is not r.metadata["parameters"]
    r.metadata["inputs"]["ct"]["noise"] = {"noise_sd_hu": None}
    assert math.isnan(r.noise_sd_hu)
    r.metadata["inputs"]["ct"]["noise"] = 5.0
    assert math.isnan(r.noise_sd_hu)
    r.metadata["inputs"]["calibration"] = "x"
    assert r.calibration is None
    r.metadata["inputs"]["calibration"] = {"material": "HA"}
    assert r.calibration == {"material": "HA"}
    r.metadata = {}
    assert math.isnan(r.voxel_mm) and math.isnan(r.noise_sd_hu) and r.parameters == {}


# ----------------------------------------------------------------------------- helpers


def test_rigid_fit_recovers_a_known_motion():
    rng = np.random.default_rng(0)
    a = rng.normal(0.0, 20.0, (50, 3))
    m = _rotation(40, -25)
    b = a @ m[:3, :3].T + m[:3, 3]
    fit, rms = cmp.rigid_fit(a, b)
    assert np.allclose(fit, m, atol=1e-9) and rms < 1e-9
    # A mirror image cannot be reached by a rotation: a proper rotation is returned, with the residual.
    mirrored = a * np.array([-1.0, 1.0, 1.0])
    fit, rms = cmp.rigid_fit(a, mirrored)
    assert np.linalg.det(fit[:3, :3]) == pytest.approx(1.0)
    assert rms > 5.0
    moved = a @ fit[:3, :3].T + fit[:3, 3]
    assert rms == pytest.approx(np.sqrt(np.mean(np.sum((moved - mirrored) ** 2, axis=1))), rel=1e-12)
    # A pure translation of a noisy copy: RMS is the noise left after removing the mean shift.
    noise = rng.normal(0.0, 0.1, a.shape)
    fit, rms = cmp.rigid_fit(a, a + [1.0, 2.0, 3.0] + noise)
    assert np.allclose(fit[:3, 3], [1.0, 2.0, 3.0], atol=0.05)
    assert rms == pytest.approx(np.sqrt(3) * 0.1, rel=0.15)


def test_transform_frame_moves_points_and_turns_directions():
    m = _rotation(90, 0)  # +90 degrees about z, then +(5, -3, 12)
    fr = StemFrame(proximal_point=np.array([1.0, 0.0, 100.0]), axis=np.array([0.0, 0.0, -1.0]),
                   medial=np.array([1.0, 0.0, 0.0]), anterior=np.array([0.0, 1.0, 0.0]), tip=np.array([1.0, 0.0, 0.0]),
                   resection_point=np.array([0.0, 2.0, 90.0]), resection_normal=np.array([1.0, 0.0, 0.0]), side="right",
                   tip_length_mm=12.0, provenance={"axis": "given"})
    out = cmp.transform_frame(fr, m)
    assert np.allclose(out.proximal_point, [5.0, -2.0, 112.0])
    assert np.allclose(out.tip, [5.0, -2.0, 12.0])
    assert np.allclose(out.resection_point, [3.0, -3.0, 102.0])
    assert np.allclose(out.axis, [0.0, 0.0, -1.0])
    assert np.allclose(out.medial, [0.0, 1.0, 0.0])
    assert np.allclose(out.anterior, [-1.0, 0.0, 0.0])
    assert np.allclose(out.resection_normal, [0.0, 1.0, 0.0])
    assert out.side == "right" and out.tip_length_mm == 12.0
    assert out.provenance == {"axis": "given", "followup": "baseline frame moved rigidly into the follow-up CT"}
    assert fr.provenance == {"axis": "given"}


def test_norm_rounds_floats_and_names_nan():
    assert cmp._norm(float("nan")) == "nan"
    assert cmp._norm(0.1 + 0.2) == 0.3
    assert cmp._norm(1.0000000004) == 1.0 and cmp._norm(1.000000001) != 1.0
    assert cmp._norm([1, 0.1 + 0.2, "a", None]) == [1.0, 0.3, "a", None]
    assert cmp._norm((0.30000000001,)) == [0.3]
    assert cmp._norm("trilinear") == "trilinear" and cmp._norm(None) is None and cmp._norm(3) == 3


def test_spread_se_of_four_patches_by_hand():
    # Four patches of area 2 with means 1, 2, 3, 4: weighted variance 1.25 * 4/3, n_eff = 4.
    delta = np.array([1, 1, 2, 2, 3, 3, 4, 4], dtype=float)
    area = np.full(8, 0.5)
    patch = np.array([7, 7, 3, 3, 9, 9, 1, 1])
    se, n = cmp._spread_se(delta, area, patch)
    assert n == 4 and se == pytest.approx(math.sqrt(1.25 * 4.0 / 3.0 / 4.0), rel=1e-12)
    # Unequal areas: patch means weighted by area, n_eff by Kish: areas 3, 1, 1, 1 -> n_eff = 36 / 12 = 3.
    area = np.array([1.5, 1.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5])
    mean = (3 * 1 + 2 + 3 + 4) / 6.0
    var = (3 * (1 - mean) ** 2 + (2 - mean) ** 2 + (3 - mean) ** 2 + (4 - mean) ** 2) / 6.0 * 4.0 / 3.0
    se, n = cmp._spread_se(delta, area, patch)
    assert se == pytest.approx(math.sqrt(var / 3.0), rel=1e-12)
    # Within-patch scatter does not enter: only the patch means do.
    se2, _ = cmp._spread_se(delta + np.array([1, -1, 1, -1, 1, -1, 1, -1]) * 0.3, np.full(8, 0.5), patch)
    assert se2 == pytest.approx(math.sqrt(1.25 * 4.0 / 3.0 / 4.0), rel=1e-12)


def test_spread_se_with_too_few_patches_is_the_vertex_spread():
    # Two patches: the zone is one sample; SE = area-weighted sd of the change over its vertices.
    delta = np.array([0.0, 2.0, 4.0, 6.0])
    area = np.array([1.0, 1.0, 1.0, 1.0])
    se, n = cmp._spread_se(delta, area, np.array([0, 0, 1, 1]))
    assert n == 2 and se == pytest.approx(math.sqrt(5.0), rel=1e-12)
    # Weighted: areas 3, 1 at values 0, 4: mean 1, variance (3 * 1 + 9) / 4 = 3.
    se, n = cmp._spread_se(np.array([0.0, 4.0]), np.array([3.0, 1.0]), np.array([0, 1]))
    assert se == pytest.approx(math.sqrt(3.0), rel=1e-12) and n == 2
    # Three patches but one holds nearly all the area: n_eff < 2, counted as one sample.
    se, n = cmp._spread_se(np.array([0.0, 4.0, 8.0]), np.array([100.0, 1.0, 1.0]), np.array([0, 1, 2]))
    mean = 12.0 / 102.0
    var = (100 * mean**2 + (4 - mean) ** 2 + (8 - mean) ** 2) / 102.0
    assert n == 3 and se == pytest.approx(math.sqrt(var), rel=1e-12)
    # Three equal patches are enough: mean 3, variance (9 + 0 + 9) / 3 * 3 / 2 = 9, n_eff = 3.
    se, n = cmp._spread_se(np.array([0.0, 3.0, 6.0]), np.ones(3), np.array([0, 1, 2]))
    assert n == 3 and se == pytest.approx(math.sqrt(3.0), rel=1e-12)


def test_spread_se_leaves_out_unsampled_and_arealess_vertices():
    delta = np.array([1.0, np.nan, 2.0, 3.0, 100.0, 4.0])
    area = np.array([1.0, 1.0, 1.0, 1.0, 0.0, 1.0])
    patch = np.array([0, 0, 1, 2, 2, 3])
    se, n = cmp._spread_se(delta, area, patch)
    assert n == 4 and se == pytest.approx(math.sqrt(1.25 * 4.0 / 3.0 / 4.0), rel=1e-12)
    assert cmp._spread_se(np.array([1.0, np.nan]), np.ones(2), np.array([0, 1]))[1] == 0
    assert math.isnan(cmp._spread_se(np.array([1.0]), np.ones(1), np.array([0]))[0])
    se, n = cmp._spread_se(np.array([1.0, 3.0]), np.ones(2), np.array([0, 0]))
    assert n == 1 and se == pytest.approx(1.0)


def test_patch_labels_follow_height_and_arc():
    hu = np.zeros(len(PTS))
    v = _result("b", hu).vertices
    labels = cmp._patch_labels(v, FRAME, 5.0)
    assert np.array_equal(labels, ROW * 100_000 + COL // 2)
    # 10 mm patches: two height rows and four azimuth steps each.
    labels = cmp._patch_labels(v, FRAME, 10.0)
    assert np.array_equal(labels, (ROW // 2) * 100_000 + COL // 4)
    # The arc length is taken at the median radius around the axis through the tip.
    shifted = StemFrame(**{**FRAME.__dict__, "tip": np.array([0.0, 0.0, -50.0])})
    assert np.array_equal(cmp._patch_labels(v, shifted, 5.0), ROW * 100_000 + COL // 2)
    wide = v.copy()
    wide[["x_mm", "y_mm"]] *= 2.0
    assert np.array_equal(cmp._patch_labels(wide, FRAME, 5.0), ROW * 100_000 + COL)
    assert cmp._patch_labels(v.iloc[:0], FRAME, 5.0).size == 0
    neg = v.copy()
    neg["height_mm"] = -neg["height_mm"]
    assert np.array_equal(cmp._patch_labels(neg, FRAME, 5.0), -(ROW + 1) * 100_000 + COL // 2)


def test_patch_labels_measure_radius_from_the_tip():
    # The same cylinder and frame moved by (5, 3, 0): the same patches.
    hu = np.zeros(len(PTS))
    v = _result("b", hu).vertices
    moved = v.copy()
    moved["x_mm"] += 5.0
    moved["y_mm"] += 3.0
    frame = StemFrame(**{**FRAME.__dict__, "tip": np.array([5.0, 3.0, 0.0])})
    assert np.array_equal(cmp._patch_labels(moved, frame, 5.0), ROW * 100_000 + COL // 2)


def test_spread_se_with_exactly_two_effective_patches():
    # Patch areas 4, 1, 1: n_eff = 36 / 18 = 2, enough for the patch estimate. Means 0, 3, 6: weighted mean 1.5,
    # variance (4 * 2.25 + 2.25 + 20.25) / 6 * 3 / 2 = 7.875, SE = sqrt(7.875 / 2) (the vertex spread would be
    # sqrt(5.25)).
    se, n = cmp._spread_se(np.array([0.0, 3.0, 6.0]), np.array([4.0, 1.0, 1.0]), np.array([0, 1, 2]))
    assert n == 3 and se == pytest.approx(math.sqrt(7.875 / 2.0), rel=1e-12)


def test_spread_se_leaves_out_a_patch_of_zero_area():
    se, n = cmp._spread_se(np.array([1.0, 2.0, 3.0, 4.0, 50.0]), np.array([1.0, 1.0, 1.0, 1.0, 0.0]),
                           np.array([0, 1, 2, 3, 4]))
    assert n == 4 and se == pytest.approx(math.sqrt(1.25 * 4.0 / 3.0 / 4.0), rel=1e-12)


def test_small_patch_and_small_noise(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    b = _result(tmp_path / "b", hu_b, spacing=(), noise=0.3)
    f = _result(tmp_path / "f", hu_f, spacing=(), noise=0.4, sha="s")
    c = results(b, f, patch_mm=0.5, registration_sd_mm=0.0)
    assert c.summary["significance"]["patch_mm"] == 0.5
    # Combined noise 0.5 HU: the change over it per vertex.
    assert c.vertices["delta_hu_z"].dtype == np.float64
    assert np.allclose(c.vertices["delta_hu_z"], (hu_f - hu_b) / 0.5)


def test_no_noise_gives_a_float_column_the_surface_carries(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    c = results(_result(tmp_path / "b", hu_b, noise=None), _result(tmp_path / "f", hu_f, sha="n"), registration_sd_mm=0.0)
    assert c.vertices["delta_hu_z"].dtype == np.float64
    pd_ = c.surface.GetPointData()
    assert pd_.GetArray("delta_hu_z") is not None


def test_different_materials_message_says_what_to_do(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    d = np.full(len(PTS), 100.0)
    b = _result(tmp_path / "b", hu_b, density=d, zone_density={}, calibration=_cal(1.0))
    f = _result(tmp_path / "f", hu_f, density=d, zone_density={}, calibration=_cal(1.0, "hydroxyapatite"), sha="m")
    with pytest.raises(InputError) as e:
        results(b, f)
    assert str(e.value).endswith("densities of different reference materials do not compare; calibrate both with the "
                                 "same phantom material")


def test_all_row_leaves_out_vertices_above_the_cut(results, tmp_path):
    # The top row in zone 0 (above the resection plane), changed by 1000 HU: the "all" row does not see it.
    zone = ZONE.copy()
    zone[ROW == 28] = 0
    hu_b = np.full(len(PTS), 500.0)
    hu_f = hu_b.copy()
    hu_f[ROW == 28] += 1000.0
    c = results(_result(tmp_path / "b", hu_b, zone=zone), _result(tmp_path / "f", hu_f, zone=zone, sha="t"),
                registration_sd_mm=0.0)
    z = c.zones.set_index("zone")
    assert z.loc["all", "se_spread_hu"] == 0.0 and z.loc["all", "n_patches"] == 28 * 12


def test_results_without_recorded_inputs(results, tmp_path):
    hu_b, hu_f = _zone7_change()
    b = _result(tmp_path / "b", hu_b)
    f = _result(tmp_path / "f", hu_f)
    del f.metadata["inputs"]
    c = results(b, f, registration_sd_mm=0.0)
    assert c.summary["registration_sensitivity"] == {} and math.isnan(c.summary["noise_sd_hu"]["followup"])
    assert c.warnings[0].startswith("the noise of one scan is not recorded")


def test_zones_with_no_or_little_sampled_area(results, tmp_path):
    """Zone 7 not sampled in the follow-up (its HU and density NaN, 0 mm2 sampled): no standard error, no
    significance, no changed-class fraction, and no error. Zone 8 sampled over 0.48 mm2 (48 vertices of
    0.01 mm2): the noise floor hypot(10, 10) * 1 mm / sqrt(0.48 mm2) in HU and hypot(10 / 1, 10 / 1) / sqrt(0.48)
    in mg/cm3; half its area changed class. Catches the zero-area guards dropped or loosened (a division by
    zero), an unsampled zone's standard error made a non-number, a sampled area below 1 mm2 treated as none."""
    hu_b = np.full(len(PTS), 500.0)
    hu_f = hu_b.copy()
    hu_f[ZONE == 7] = np.nan
    dens_b = np.full(len(PTS), 100.0)
    dens_f = dens_b.copy()
    dens_f[ZONE == 7] = np.nan
    cls_f = np.array(["cancellous"] * len(PTS), dtype=object)
    z8 = np.flatnonzero(ZONE == 8)
    cls_f[z8[::2]] = "cortical"
    b = _result(tmp_path / "b", hu_b, density=dens_b, zone_density={}, calibration=_cal(1.0))
    f = _result(tmp_path / "f", hu_f, cls=cls_f, density=dens_f, zone_density={"7": float("nan")}, calibration=_cal(1.0),
                sha="7" * 64, zone_hu={"7": float("nan")})
    for r in (b, f):
        r.vertices.loc[ZONE == 8, "area_mm2"] = 0.01
        r.zones.loc[r.zones["zone"] == "8", ["area_mm2", "area_sampled_mm2"]] = 0.01 * z8.size
    f.zones.loc[f.zones["zone"] == "7", "area_sampled_mm2"] = 0.0
    z = results(b, f, registration_sd_mm=0.0).zones.set_index("zone")
    assert z.loc["7", "area_sampled_mm2"] == 0.0
    for col in ("se_spread_hu", "se_noise_hu", "se_hu", "z_hu", "se_density_mg_cm3", "frac_changed_class"):
        assert math.isnan(z.loc["7", col]), col
    assert not bool(z.loc["7", "significant"]) and not bool(z.loc["7", "significant_density"])
    assert z.loc["8", "area_sampled_mm2"] == pytest.approx(0.48)
    floor = math.hypot(10.0, 10.0) / math.sqrt(0.48)
    assert z.loc["8", "se_noise_hu"] == pytest.approx(floor, rel=1e-9)
    assert z.loc["8", "se_hu"] == pytest.approx(floor, rel=1e-9)  # no change, no spread
    assert z.loc["8", "se_density_mg_cm3"] == pytest.approx(floor, rel=1e-9)  # slope 1 HU per mg/cm3
    assert z.loc["8", "frac_changed_class"] == pytest.approx(0.5)


def test_density_noise_floor_scales_with_voxel_and_both_slopes(results, tmp_path):
    """2 mm voxels, slopes 2 and 4 HU per mg/cm3, noise 10 HU in both: the density floor of zone 7 (48 mm2) is
    hypot(10 / 2, 10 / 4) * 2 mm / sqrt(48) = 1.61 mg/cm3, and a uniform change has no spread, so that is its
    standard error. A change of 4 mg/cm3 from 500 is within 3 standard errors (4.84): not significant, even with
    no minimum change. Catches the floor divided by the voxel size, a slope multiplied instead of divided, the
    significance judged on the sum of the two densities."""
    hu = np.full(len(PTS), 500.0)
    dens_b = np.full(len(PTS), 500.0)
    dens_f = dens_b.copy()
    dens_f[ZONE == 7] += 4.0
    b = _result(tmp_path / "b", hu, density=dens_b, zone_density={}, calibration=_cal(2.0), spacing=(2.0, 2.0, 2.0))
    f = _result(tmp_path / "f", hu, density=dens_f, zone_density={}, calibration=_cal(4.0), spacing=(2.0, 2.0, 2.0),
                sha="6" * 64)
    z = results(b, f, registration_sd_mm=0.0, min_change_hu=0.0).zones.set_index("zone")
    floor_d = math.hypot(10.0 / 2.0, 10.0 / 4.0) * 2.0 / math.sqrt(48.0)
    assert z.loc["7", "delta_density_mean_mg_cm3"] == pytest.approx(4.0)
    assert z.loc["7", "se_density_mg_cm3"] == pytest.approx(floor_d, rel=1e-9)
    assert 4.0 < 3.0 * floor_d
    assert not bool(z.loc["7", "significant_density"])


def test_a_class_missing_from_the_followup_gives_no_fraction_change(results, tmp_path):
    """The baseline's zones.csv has frac_cortical, the follow-up's does not (another class file): the change of
    that fraction is unknown (NaN), not an error. Catches the missing column read as None."""
    hu = np.full(len(PTS), 500.0)
    b = _result(tmp_path / "b", hu)
    f = _result(tmp_path / "f", hu, sha="4" * 64)
    del f.zones["frac_cortical"]
    z = results(b, f, registration_sd_mm=0.0).zones.set_index("zone")
    assert z["delta_frac_cortical"].isna().all()
    assert (z["delta_frac_cancellous"] == 0.0).all()


def test_standard_error_below_one_hu_still_gives_z(results, tmp_path):
    """Noise 1 HU in both scans, a uniform change of 5 HU on zone 7 (48 mm2, 1 mm voxels): no spread, so the
    standard error is the floor hypot(1, 1) / sqrt(48) = 0.20 HU and z = 5 / 0.20 = 24.5. Catches z computed
    only for a standard error above 1 HU."""
    hu_b = np.full(len(PTS), 500.0)
    hu_f = hu_b.copy()
    hu_f[ZONE == 7] += 5.0
    b = _result(tmp_path / "b", hu_b, noise=1.0)
    f = _result(tmp_path / "f", hu_f, noise=1.0, sha="3" * 64)
    z = results(b, f, registration_sd_mm=0.0, min_change_hu=0.0).zones.set_index("zone")
    se = math.hypot(1.0, 1.0) / math.sqrt(48.0)
    assert z.loc["7", "se_hu"] == pytest.approx(se, rel=1e-9)
    assert z.loc["7", "z_hu"] == pytest.approx(5.0 / se, rel=1e-9)
    assert bool(z.loc["7", "significant"])


def test_summary_names_both_folders_the_method_and_the_warnings(results, tmp_path):
    """The summary (written to comparison.json) under its documented keys. Catches a key renamed, the follow-up's
    folder not written, the method text changed, the follow-up result dropped from the comparison."""
    hu_b, hu_f = _zone7_change()
    b, f = _result(tmp_path / "b", hu_b), _result(tmp_path / "f", hu_f, sha="2" * 64)
    c = results(b, f, registration_sd_mm=0.3)
    assert c.summary["baseline"] == str((tmp_path / "b").resolve())
    assert c.summary["followup"] == str((tmp_path / "f").resolve())
    assert c.followup is f and c.baseline is b
    assert c.summary["significance"]["method"] == (
        "se_hu = hypot(max(sd of area-weighted patch means of the per-vertex change / sqrt(effective patch count), "
        "sqrt(noise_baseline^2 + noise_followup^2) * voxel / sqrt(zone area)), registration sensitivity of the zone); "
        "significant when |delta_hu_mean| > z_threshold * se_hu and |delta_hu_mean| >= min_change_hu")
    assert c.summary["warnings"] == c.warnings and any("registration sensitivity" in w for w in c.warnings)


def test_sampling_settings_equal_to_nine_decimals_are_the_same(results, tmp_path):
    """An offset of 0.5 mm read back as 0.5000000003 (a float written by another program) is the same setting, as
    is a list of band borders read back that way; 0.500001 is not. Catches the rounding before the comparison
    made finer."""
    hu = np.full(len(PTS), 500.0)
    b = _result(tmp_path / "b", hu, params={"bands_axial": [0.5, 0.75]})
    results(b, _result(tmp_path / "f", hu, sha="1" * 64, params={"offset_mm": 0.5000000003, "bands_axial": [0.5, 0.75]}),
            registration_sd_mm=0.0)
    results(b, _result(tmp_path / "f", hu, sha="1" * 64, params={"bands_axial": [0.5000000003, 0.75]}), registration_sd_mm=0.0)
    with pytest.raises(InputError, match="sampled differently"):
        results(b, _result(tmp_path / "f", hu, sha="1" * 64, params={"offset_mm": 0.500001}), registration_sd_mm=0.0)


def test_share_of_vertices_in_another_zone_is_reported_to_a_tenth_of_a_percent(results, tmp_path):
    """Zone 7's 48 vertices labelled 8 in the follow-up: 48 / 696 = 6.9 % of the vertices. Catches the
    percentage computed with another factor."""
    hu = np.full(len(PTS), 500.0)
    zone_f = ZONE.copy()
    zone_f[ZONE == 7] = 8
    b, f = _result(tmp_path / "b", hu), _result(tmp_path / "f", hu, sha="1" * 64, zone=zone_f)
    with pytest.raises(InputError, match=r"^6\.9% of the vertices are in another Gruen zone in the follow-up"):
        results(b, f, registration_sd_mm=0.0)


def test_a_baseline_without_recorded_inputs_is_compared(results, tmp_path):
    """A baseline whose parameters.json has no ``inputs`` (or no ``ct`` in them): no CT checksum to compare, no
    error. Catches the missing section read as None."""
    hu_b, hu_f = _zone7_change()
    for meta in ({"parameters": {"sampling": "trilinear", "offset_mm": 0.5, "zone_scheme": "sector"}},
                 {"parameters": {"sampling": "trilinear", "offset_mm": 0.5, "zone_scheme": "sector"}, "inputs": {}}):
        b = _result(tmp_path / "b", hu_b)
        b.metadata.clear()
        b.metadata.update(meta)
        c = results(b, _result(tmp_path / "f", hu_f, sha="1" * 64), registration_sd_mm=0.0)
        assert c.zones.set_index("zone").loc["7", "delta_hu_mean"] == pytest.approx(100.0)
