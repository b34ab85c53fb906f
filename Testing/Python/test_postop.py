"""Post-operative CTs: detection of the implant's metal and the bone read past its bloom.

Truth comes from phantoms built here (the tissue of the analytic model 0.5 mm
outside the stem) and from the real post-operative pelvis CT, whose implant
surface is made from its own metal voxels.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from ibc_helpers import frame_parameters, metal_surface_of, nail_axis_ras, shared_file
from ImplantBoneContactLib import AnalysisParameters, InputError, Volume, analyze, parse_classes, read_volume
from ImplantBoneContactLib import postop as postop_lib
from ImplantBoneContactLib.cli import main
from ImplantBoneContactLib.mesh import surface_geometry, transform_polydata, write_polydata
from ImplantBoneContactLib.phantom import CORTICAL, ContactPhantom, FemurPhantom, PhantomSpec
from test_slicer_module import _nodes_under_transforms, slicer_module  # noqa: F401  (a fixture)

POINTS = 3000


def _analyze(phantom, ct, stem, **kw):
    params = AnalysisParameters(points=POINTS, remesh="fast", **frame_parameters(phantom.true_frame()), **kw)
    return analyze(ct, stem, params)


def cortical_errors(phantom, result) -> np.ndarray:
    """Per zone 1-14: zones.csv's cortical share of the measured area minus the truth 0.5 mm out (points)."""
    v = result.vertices
    pts = v[["x_mm", "y_mm", "z_mm"]].to_numpy()
    nrm = v[["nx", "ny", "nz"]].to_numpy()
    truth = phantom.tissue_at(pts + 0.5 * nrm) == CORTICAL
    zones = result.zones.set_index("zone")
    out = []
    for z in range(1, 15):
        sel = v["gruen_zone"].to_numpy() == z
        a = v["area_mm2"].to_numpy()[sel]
        u = float(zones.loc[str(z), "frac_unreliable"]) if "frac_unreliable" in zones.columns else 0.0
        est = float(zones.loc[str(z), "frac_cortical"]) / (1.0 - u)
        out.append(100 * (est - (a * truth[sel]).sum() / a.sum()))
    return np.array(out)


def _contact_case(**spec):
    """The contact phantom (1 mm voxels, 10 HU noise), its CT, its stem and their default analysis."""
    ph = ContactPhantom(PhantomSpec(voxel_mm=1.0, noise_hu=10.0, **spec))
    ct = ph.make_ct()
    stem = ph.make_stem_surface()
    return ph, ct, stem, _analyze(ph, ct, stem)


@pytest.fixture(scope="module")
def contact_postop():
    return _contact_case(metal=True, metal_hu=3500.0, bloom_hu=0.0)


@pytest.fixture(scope="module")
def contact_preop():
    return _contact_case(metal=False)


@pytest.fixture(scope="module")
def femur_postop():
    """The demo's phantom (metal 3500 HU with its extra bloom), 1 mm voxels."""
    ph = FemurPhantom(PhantomSpec(voxel_mm=1.0, metal=True, noise_hu=10.0))
    ct = ph.make_ct()
    stem = ph.make_stem_surface()
    return ph, ct, stem


# ----------------------------------------------------------------------------- detection


def test_detection_tells_post_from_pre_operative(contact_postop, contact_preop):
    _, _, _, post = contact_postop
    _, _, _, pre = contact_preop
    assert post.ct_kind == "post-operative"
    assert pre.ct_kind == "pre-operative"
    assert post.postop["evidence"]["fraction_area_with_metal_inside"] > 0.95
    assert pre.postop["evidence"]["fraction_area_with_metal_inside"] < 0.05
    # The metal's own reading is found (its plateau, 3500 HU, lowered a little by the blur where the stem is thin;
    # the median of noisy readings, 10 HU of noise, may pass it by a fraction of that).
    assert 3000 < post.postop["edge"]["metal_hu"] <= 3510
    meta = post.metadata()
    assert meta["ct_kind"] == "post-operative" and meta["postop"]["metal_aware_sampling"] is True
    assert pre.metadata()["ct_kind"] == "pre-operative"


def test_edge_blur_measured_on_the_ct_grows_with_the_scanner_blur():
    """The Gaussian-equivalent blur measured at the metal edge follows the phantom's blur (0.6 vs 1.0 mm)."""
    blurs = []
    for sigma in (0.6, 1.0):
        ph = ContactPhantom(PhantomSpec(voxel_mm=1.0, metal=True, blur_sigma_mm=sigma, bloom_hu=0.0))
        ct = ph.make_ct()
        g = surface_geometry(ph.make_stem_surface(target_triangles=6000))
        edge = postop_lib.measure_edge(ct, g.points, g.normals)
        assert edge.method == "measured"
        blurs.append(edge.blur_mm)
    # The blur seen is the scanner's and the trilinear interpolation of 1 mm voxels (about 0.4 mm) together.
    assert blurs[0] == pytest.approx(np.hypot(0.6, 0.4), abs=0.2)
    assert blurs[1] == pytest.approx(np.hypot(1.0, 0.4), abs=0.25)
    assert blurs[1] > blurs[0] + 0.2


# ----------------------------------------------------------------------------- accuracy against the truth


def test_postop_zone_cortical_fraction_within_5_points(contact_postop):
    ph, _, _, result = contact_postop
    err = cortical_errors(ph, result)
    assert np.abs(err).max() <= 5.0, np.round(err, 1)
    all_row = result.zones.set_index("zone").loc["all"]
    assert all_row["frac_unreliable"] < 0.05
    # The partition adds up: every measured sample is in exactly one class.
    fracs = [c for c in result.zones.columns if c.startswith("frac_")]
    np.testing.assert_allclose(result.zones[fracs].sum(axis=1), 1.0, atol=1e-9)
    assert "unreliable" in result.class_names


def test_postop_zone_cortical_fraction_within_5_points_at_1mm_blur():
    """1 mm voxels, a 1 mm blur and metal 3000 HU: the tip (zones 4 and 11) carries a cortex only 1-2 mm thick
    along the normal, with soft tissue beyond. Read with the metal's bloom as the tissue's blur, or from a metal
    edge that the thin cortex moved outward, it was called no bone (9 points off in zone 11)."""
    ph = ContactPhantom(PhantomSpec(voxel_mm=1.0, metal=True, blur_sigma_mm=1.0, metal_hu=3000.0, bloom_hu=0.0, noise_hu=10.0))
    result = _analyze(ph, ph.make_ct(), ph.make_stem_surface())
    err = cortical_errors(ph, result)
    assert np.abs(err).max() <= 5.0, np.round(err, 1)
    assert result.zones.set_index("zone").loc["all", "frac_unreliable"] < 0.05
    edge = result.postop["edge"]
    # The scanner's blur (1 mm with the trilinear interpolation of 1 mm voxels) is measured inside the metal edge.
    assert 0.6 < edge["tissue_blur_mm"] < 1.3
    # The phantom's stem sits where the surface is: the rigid fit of the metal edges finds no shift.
    assert abs(edge["edge_placement_offset_mm"]) < 0.3 and np.abs(edge["edge_placement_shift_mm"]).max() < 0.3


def test_preop_zone_cortical_fraction_within_5_points(contact_preop):
    """The plain path (unchanged): 5.1 points at most measured here (3000 points; 3.5 at 6000 in the benchmark).

    Its error is the blur of the cortex-cancellous borders between the sides: 700 HU lies below the middle
    of cortex (1500-1800 HU) and cancellous bone (200-400 HU), so the cortical side reads a little wider.
    """
    ph, _, _, result = contact_preop
    err = cortical_errors(ph, result)
    assert np.abs(err).max() <= 5.5, np.round(err, 1)
    assert "frac_unreliable" not in result.zones.columns


def test_vertices_and_zones_agree(contact_postop):
    """The integration points run the same walk as the vertices: class shares agree per zone."""
    _, _, _, result = contact_postop
    v = result.vertices
    zones = result.zones.set_index("zone")
    for z in range(1, 15):
        sel = v["gruen_zone"] == z
        a = v.loc[sel, "area_mm2"]
        for name in ("cortical", "unreliable"):
            vert = float((a * (v.loc[sel, "contact_class"] == name)).sum() / a.sum())
            assert vert == pytest.approx(float(zones.loc[str(z), f"frac_{name}"]), abs=0.06), (z, name)


def test_vertex_columns(contact_postop):
    _, _, _, result = contact_postop
    v = result.vertices
    assert v["bone_reading_reliable"].dtype == bool
    ok = v["bone_reading_reliable"]
    # The bone reading starts past the bloom (about one blur past the metal edge, which lies on the surface
    # here) and within the bounded depth.
    start = v.loc[ok, "bone_start_mm"]
    blur = result.postop["edge"]["edge_blur_mm"]
    assert np.median(start) == pytest.approx(result.postop["edge"]["read_start_past_edge_mm"], abs=0.3)
    assert 0.5 * blur < np.median(start) < 2 * blur
    assert (v.loc[ok, "bone_start_mm"] <= result.postop["max_bone_start_mm"]).all()
    # Above the resection plane no class is given (above_resection); below it an unreliable reading is said so.
    below = v["gruen_zone"] > 0
    assert (v.loc[~ok & v["hu"].notna() & below, "contact_class"] == "unreliable").all()
    assert (v.loc[~below, "contact_class"] == "above_resection").all()
    assert not (v.loc[ok, "contact_class"] == "unreliable").any()


def test_plain_sampling_of_the_same_ct_reads_the_bloom(contact_postop):
    """The old advice (--profile 0.5:3:0.5, max) calls the cancellous sides cortical: what the walk fixes."""
    ph, ct, stem, _ = contact_postop
    old = _analyze(ph, ct, stem, profile="0.5:3:0.5")
    assert old.postop["metal_aware_sampling"] is False
    assert np.abs(cortical_errors(ph, old)).max() > 30
    assert any("read the metal's bloom" in w for w in old.warnings)


def test_demo_phantom_calcar_is_cancellous_not_cortical(femur_postop):
    """The issue's first finding: zone 7 (calcar) read 100 % cortical with the recommended profile."""
    ph, ct, stem = femur_postop
    result = _analyze(ph, ct, stem)
    calcar = result.zones.set_index("zone").loc["7"]
    assert calcar["frac_cortical"] < 0.05
    assert calcar["frac_cancellous"] > 0.85


@pytest.mark.parametrize("voxel", [0.7, 1.0])
def test_demo_phantom_thin_cortex_zones_within_20_points(voxel):
    """The demo's phantom at its own voxel size and at 1 mm: in zone 1 (the lateral metaphysis) the stem sits in
    0.5-1.5 mm of cancellous bone under a thin cortex. Against the tissue 0.5 mm out the largest per-zone cortical
    error is 12-13 points (gaps under a millimetre, below the blur's width, still read as the cortex beyond them;
    README), where the fit of at most two layers (before the three-tissue stage) gave 26-27 points."""
    ph = FemurPhantom(PhantomSpec(voxel_mm=voxel, metal=True, noise_hu=10.0))
    err = cortical_errors(ph, _analyze(ph, ph.make_ct(), ph.make_stem_surface()))
    assert np.abs(err).max() < 20.0, np.round(err, 1)


# ----------------------------------------------------------------------------- pre-operative CTs unchanged


def test_preop_results_equal_the_plain_path(contact_preop):
    ph, ct, stem, auto = contact_preop
    plain = _analyze(ph, ct, stem, metal_aware="off")
    np.testing.assert_array_equal(auto.vertices["hu"].to_numpy(), plain.vertices["hu"].to_numpy())
    assert list(auto.vertices.columns) == list(plain.vertices.columns)
    assert "bone_start_mm" not in auto.vertices.columns
    cols = [c for c in plain.zones.columns if c != "region"]
    np.testing.assert_allclose(auto.zones[cols[2:]].to_numpy(float), plain.zones[cols[2:]].to_numpy(float), equal_nan=True)
    assert auto.warnings == plain.warnings


def test_metal_aware_on_in_a_preop_ct_warns_and_samples_as_given(contact_preop):
    ph, ct, stem, auto = contact_preop
    forced = _analyze(ph, ct, stem, metal_aware="on")
    assert forced.ct_kind == "pre-operative"
    assert any("metal is not in this CT" in w for w in forced.warnings)
    np.testing.assert_array_equal(forced.vertices["hu"].to_numpy(), auto.vertices["hu"].to_numpy())


# ----------------------------------------------------------------------------- bad input


def test_clipped_metal_is_said_and_still_read(contact_postop):
    ph, ct, stem, _ = contact_postop
    clipped = Volume(np.minimum(ct.array, 3071).astype(np.int16), ct.ijk_to_ras)
    result = _analyze(ph, clipped, stem)
    msg = [w for w in result.warnings if "clipped" in w]
    assert msg and "3071" in msg[0]
    assert result.postop["clipped_voxels_at_3071_hu"] > 1000
    assert np.abs(cortical_errors(ph, result)).max() <= 8.0


def test_model_partly_off_the_metal_is_said_with_numbers(contact_postop):
    """A registration 3 mm off: a warning giving the share of the surface and the offsets, never silence."""
    ph, ct, stem, _ = contact_postop
    shift = np.eye(4)
    shift[:3, 3] = 3.0 * ph.local_to_ras[:3, 0]  # 3 mm towards medial
    moved = transform_polydata(stem, shift)
    result = _analyze(ph, ct, moved)
    text = " ".join(result.warnings)
    assert "registration" in text
    assert "%" in text and "mm" in text
    assert result.postop["fraction_area_edge_off_surface"] > 0.1 or result.postop["evidence"]["fraction_area_with_metal_inside"] < 0.9


def test_unreliable_is_a_reserved_class_name():
    with pytest.raises(InputError, match="reserved"):
        parse_classes("none:-inf:150,unreliable:150:inf")


def test_metal_aware_mode_is_validated():
    with pytest.raises(InputError, match="metal-aware"):
        AnalysisParameters(metal_aware="maybe").validate()


def test_resolution_statement_at_coarse_voxels():
    fine = Volume(np.zeros((4, 4, 4), np.int16), np.diag([0.7, 0.7, 0.7, 1.0]))
    coarse = Volume(np.zeros((4, 4, 4), np.int16), np.diag([0.8, 0.8, 3.0, 1.0]))
    assert postop_lib.resolution_statement(fine) is None
    text = postop_lib.resolution_statement(coarse)
    assert "3 mm voxels" in text and "6 mm" in text and "not resolved" in text


# ----------------------------------------------------------------------------- real post-operative CT


@pytest.fixture(scope="module")
def pelvis():
    vol = read_volume(shared_file("pelvis_ct_with_femoral_implant.nii.gz"))
    return vol, metal_surface_of(vol)


def test_real_postop_ct_is_post_operative_and_the_nail_not_cortical(pelvis):
    vol, surface = pelvis
    axis = nail_axis_ras(vol)
    result = analyze(vol, surface, AnalysisParameters(remesh="none", side="left", axis=axis))
    assert result.ct_kind == "post-operative"
    assert result.postop["metal_aware_sampling"] is True
    all_row = result.zones.set_index("zone").loc["all"]
    # Plain sampling called 98-99.5 % of this surface cortical; an intramedullary nail sits mostly in marrow.
    assert all_row["frac_cortical"] < 0.5
    assert all_row["frac_metal"] < 0.05
    assert any("3 mm voxels" in w and "not resolved" in w for w in result.warnings)
    plain = analyze(vol, surface, AnalysisParameters(remesh="none", side="left", axis=axis, metal_aware="off"))
    assert plain.zones.set_index("zone").loc["all", "frac_cortical"] > 0.9  # what the issue measured


def test_cli_on_real_postop_ct(pelvis, tmp_path, capsys):
    vol, surface = pelvis
    model = tmp_path / "nail.stl"
    write_polydata(surface, model, space="RAS")
    out = tmp_path / "out"
    code = main(["analyze", "--ct", str(shared_file("pelvis_ct_with_femoral_implant.nii.gz")), "--model", str(model),
                 "--out", str(out), "--remesh", "none", "--side", "left", "--no-pictures",
                 "--axis=" + ":".join(",".join(f"{c:.2f}" for c in p) for p in nail_axis_ras(vol))])
    assert code == 0
    printed = capsys.readouterr().out
    assert "CT: post-operative" in printed
    meta = json.loads((out / "parameters.json").read_text(encoding="utf-8"))
    assert meta["ct_kind"] == "post-operative"
    assert meta["postop"]["metal_aware_sampling"] is True
    assert meta["parameters"]["metal_aware"] == "auto"
    import pandas as pd

    zones = pd.read_csv(out / "zones.csv")
    assert "frac_unreliable" in zones.columns
    vertices = pd.read_csv(out / "vertices.csv")
    assert {"bone_start_mm", "bone_reading_reliable"} <= set(vertices.columns)


def test_cli_metal_aware_off_is_recorded(tmp_path):
    ph = ContactPhantom(PhantomSpec(voxel_mm=2.0, metal=False))
    paths = ph.write(tmp_path / "ph")
    out = tmp_path / "out"
    code = main(["analyze", "--ct", str(paths["ct"]), "--model", str(paths["model"]), "--out", str(out), "--points", "800",
                 "--remesh", "fast", "--metal-aware", "off", "--no-pictures", "--quiet"])
    assert code == 0
    meta = json.loads((out / "parameters.json").read_text(encoding="utf-8"))
    assert meta["parameters"]["metal_aware"] == "off" and meta["ct_kind"] == "pre-operative"


# ----------------------------------------------------------------------------- slow sweeps (0.5 mm voxels)


@pytest.mark.slow
@pytest.mark.parametrize("metal_hu,blur,bloom", [(3500.0, 0.6, 0.0), (3000.0, 1.0, 0.0), (4000.0, 1.0, 1200.0)])
def test_postop_accuracy_at_half_mm_voxels(metal_hu, blur, bloom):
    """0.5 mm voxels, blur 0.6-1.0 mm, metal 3000-4000 HU, with and without extra bloom: within 5 points
    (4.0-4.4 measured at 6000 points, benchmarks/postop_accuracy.py). At 6000 points as the benchmark: with
    3000 the 4000 HU case with extra bloom read 6.6 points off in zone 2 (its few cortical points lie on the
    border between the cortical and cancellous sides, and a coarser mesh samples that border unevenly)."""
    ph = ContactPhantom(PhantomSpec(voxel_mm=0.5, metal=True, metal_hu=metal_hu, blur_sigma_mm=blur, bloom_hu=bloom, noise_hu=10.0))
    params = AnalysisParameters(points=6000, remesh="fast", **frame_parameters(ph.true_frame()))
    result = analyze(ph.make_ct(), ph.make_stem_surface(), params)
    err = cortical_errors(ph, result)
    assert np.abs(err).max() <= 5.0, np.round(err, 1)


# ----------------------------------------------------------------------------- the Slicer module's sampler


def test_slicer_logic_records_the_metal_aware_walk_not_probe_volume(slicer_module):  # noqa: F811 (the fixture)
    """In a post-operative CT the walk samples along the normals itself: Probe Volume With Model is not run, and
    the run's record says which sampler read the CT (not the previous run's, not the unused CLI's)."""
    ph = ContactPhantom(PhantomSpec(voxel_mm=2.0, metal=True, bloom_hu=0.0, noise_hu=10.0))
    ct, stem = ph.make_ct(), ph.make_stem_surface(target_triangles=3000)
    ct_node, model = _nodes_under_transforms(slicer_module.scene, ct, stem)
    logic = slicer_module.module.ImplantBoneContactLogic(interactive=False)
    logic.lastSampler = "Probe Volume With Model (a previous run)"
    logic.run(ct_node, model, AnalysisParameters(remesh="none", **frame_parameters(ph.true_frame())))
    assert logic.lastResult.ct_kind == "post-operative"
    assert slicer_module.cli.calls == 0
    assert logic.lastSampler == postop_lib.METAL_AWARE_SAMPLER
    assert logic.lastResult.inputs["slicer"]["sampling"] == postop_lib.METAL_AWARE_SAMPLER


def test_at_2mm_voxels_the_zones_far_off_are_named_unreliable():
    """2 mm voxels, a 0.6 mm blur: the 4 mm layers are two voxels thin and much of the stem cannot be told from
    the bloom. Every zone whose cortical fraction is more than 10 points off is named in the warning (its
    fractions describe only the rest of the zone), and the run says what 2 mm voxels cannot resolve."""
    ph = ContactPhantom(PhantomSpec(voxel_mm=2.0, metal=True, blur_sigma_mm=0.6, metal_hu=3500.0, bloom_hu=0.0, noise_hu=10.0))
    result = _analyze(ph, ph.make_ct(), ph.make_stem_surface())
    err = cortical_errors(ph, result)
    named = set(result.postop["zones_mostly_unreliable"])
    far = {str(z) for z, e in zip(range(1, 15), err) if abs(e) > 10.0}
    assert far, np.round(err, 1)  # this CT is beyond the method: something is far off
    assert far <= named, (np.round(err, 1), named)
    zones = result.zones.set_index("zone")
    assert all(zones.loc[z, "frac_unreliable"] >= postop_lib.ZONE_UNRELIABLE_SHARE for z in named)
    warning = [w for w in result.warnings if "'unreliable': their cortical" in w]
    assert len(warning) == 1 and all(f"{z} (" in warning[0] for z in named)
    assert any("2 mm voxels" in w and "cancellous gap" in w for w in result.warnings)


def test_edge_placement_recovers_a_rigid_misplacement_and_overrules_outliers():
    """Edges made from a known small shift and rotation of a rigid body (plus noise), a tenth of them moved 1 mm
    outward as a thin bright layer moves them: the fit finds the motion, keeps the good edges, replaces the moved."""
    rng = np.random.default_rng(3)
    n = 2000
    normals = rng.normal(size=(n, 3))
    normals /= np.linalg.norm(normals, axis=1)[:, None]
    points = np.array([-80.0, 20.0, -60.0]) + np.array([10.0, 12.0, 60.0]) * normals  # an ellipsoid-ish cloud
    shift, omega, offset = np.array([0.3, -0.2, 0.1]), np.radians([0.4, -0.3, 0.2]), 0.15
    centre = points.mean(axis=0)
    true_edge = offset + normals @ shift + np.cross(points - centre, normals) @ omega
    own = true_edge + rng.normal(0.0, 0.05, n)
    moved = rng.random(n) < 0.1
    own[moved] += 1.0
    fit = postop_lib.fit_edge_placement(points, normals, own, voxel_mm=1.0)
    np.testing.assert_allclose(fit.coef[1:4], shift, atol=0.02)
    np.testing.assert_allclose(fit.coef[4:7], omega, atol=np.radians(0.02))
    assert fit.coef[0] == pytest.approx(offset, abs=0.02)
    assert fit.residual_mm == pytest.approx(0.05, abs=0.02)
    placed = fit.place(points, normals, own)
    np.testing.assert_array_equal(placed[~moved], own[~moved])  # good edges kept as found
    assert np.abs(placed[moved] - true_edge[moved]).max() < 0.05  # moved edges take the fit
    assert fit.tolerance_mm == pytest.approx(postop_lib.EDGE_TOLERANCE_MIN_MM)
    own[:1951] = np.nan  # 49 left
    assert postop_lib.fit_edge_placement(points, normals, own, voxel_mm=1.0) is None  # too few edges found
