"""register: the CAD stem onto the metal of post-operative CT phantoms built here at known poses.

The phantoms voxelise the real scanned stem (and the demo stem) at a random
rigid pose, put bone around it, let the metal bloom, blur and add noise
(:mod:`ImplantBoneContactLib.stemct`); the registration must find the pose
back within 0.5 mm vertex RMS and 1 degree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ibc_helpers import scanned_stem_placement, shared_file
from ImplantBoneContactLib import FemurPhantom, PhantomSpec
from ImplantBoneContactLib.cli import main
from ImplantBoneContactLib.errors import InputError
from ImplantBoneContactLib.mesh import points, read_model, read_transform, transform_polydata, triangles
from ImplantBoneContactLib.register import _principal_axes, register_stem, solid_moments, write_qc_picture, write_transform
from ImplantBoneContactLib.stemct import StemCTSpec, random_rigid, stem_ct
from ImplantBoneContactLib.volume import LPS_TO_RAS, Volume, write_volume

REPO = Path(__file__).resolve().parents[2]


def pose_errors(model_pts: np.ndarray, found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Vertex RMS error (mm) and rotation error (degrees) of a found pose against the truth."""
    a = model_pts @ found[:3, :3].T + found[:3, 3]
    b = model_pts @ truth[:3, :3].T + truth[:3, 3]
    rms = float(np.sqrt(np.mean(np.sum((a - b) ** 2, axis=1))))
    rel = found[:3, :3] @ truth[:3, :3].T
    angle = float(np.degrees(np.arccos(np.clip((np.trace(rel) - 1.0) / 2.0, -1.0, 1.0))))
    return rms, angle


@pytest.fixture(scope="module")
def scan_stem():
    surface, _ = read_model(shared_file("hip_implant_surface_scan.stl"))
    return surface


@pytest.fixture(scope="module")
def demo_stem():
    """The demo phantom's stem, moved back to a frame of its own (centred at the origin)."""
    surface = FemurPhantom(PhantomSpec()).make_stem_surface(spacing_mm=0.7, target_triangles=20000)
    m = np.eye(4)
    m[:3, 3] = -points(surface).mean(0)
    return transform_polydata(surface, m)


def random_pose(rng, surface, placement):
    pts, faces = points(surface), triangles(surface)
    _, centre, cov = solid_moments(pts, faces)
    long_axis = placement[:3, :3] @ _principal_axes(cov)[:, 0]
    centre_ras = placement[:3, :3] @ centre + placement[:3, 3]
    return random_rigid(rng, centre_ras, long_axis) @ placement


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_scanned_stem_found_after_random_moves(scan_stem, seed):
    rng = np.random.default_rng(seed)
    truth = random_pose(rng, scan_stem, scanned_stem_placement())
    voxel = float(rng.uniform(0.6, 1.0))
    ct = stem_ct(scan_stem, truth, StemCTSpec(voxel_mm=voxel, seed=seed))
    result = register_stem(ct, scan_stem)
    rms, angle = pose_errors(points(scan_stem), result.matrix_ras, truth)
    assert result.ok, result.verdict
    assert rms <= 0.5 and angle <= 1.0, (rms, angle, voxel)
    # The reported fit is a distance to the metal edge: small, and the stem inside the metal.
    assert result.rms_mm < 0.6 and result.inside_fraction > 0.97
    # The edge level lies half-way between metal plateau and tissue, above the 2000 HU threshold's neighbourhood bias.
    assert result.background_hu < result.level_hu < result.plateau_hu


@pytest.mark.parametrize("seed", [21, 22])
def test_demo_stem_found_after_random_moves(demo_stem, seed):
    rng = np.random.default_rng(seed)
    truth = random_pose(rng, demo_stem, np.eye(4))
    ct = stem_ct(demo_stem, truth, StemCTSpec(voxel_mm=0.8, seed=seed))
    result = register_stem(ct, demo_stem)
    rms, angle = pose_errors(points(demo_stem), result.matrix_ras, truth)
    assert rms <= 0.5 and angle <= 1.0, (rms, angle)


def _head_ball(scan_stem, truth):
    """A separate 32 mm metal ball overlapping the head end of the stem (CAD x smallest), off its centre."""
    pts = points(scan_stem)
    head_end = pts[np.argmin(pts[:, 0])]
    centre_cad = head_end + np.array([8.0, -10.0, 0.0])
    return truth[:3, :3] @ centre_cad + truth[:3, 3], 16.0


def test_modular_head_fused_to_the_stem_does_not_derail_it(scan_stem):
    rng = np.random.default_rng(5)
    truth = random_pose(rng, scan_stem, scanned_stem_placement())
    # The ball joins the stem's metal in the CT but is not in the model.
    ct = stem_ct(scan_stem, truth, StemCTSpec(voxel_mm=1.0), extra_metal=[_head_ball(scan_stem, truth)])
    result = register_stem(ct, scan_stem)
    rms, angle = pose_errors(points(scan_stem), result.matrix_ras, truth)
    assert rms <= 0.5 and angle <= 1.0, (rms, angle)
    # The metal object is stem + ball: larger than the stem, and still chosen.
    assert result.metal_volume_mm3 > 1.1 * result.model_volume_mm3


def test_cement_mantle_is_found_or_refused_never_silently_wrong(scan_stem):
    """A 2 mm mantle of 1800 HU cement on the stem: a fit that misses must be refused (it is, today: see README)."""
    rng = np.random.default_rng(5)
    truth = random_pose(rng, scan_stem, scanned_stem_placement())
    ct = stem_ct(scan_stem, truth, StemCTSpec(voxel_mm=1.0, cement_mm=2.0))
    result = register_stem(ct, scan_stem, raise_on_failure=False)
    rms, angle = pose_errors(points(scan_stem), result.matrix_ras, truth)
    if not (rms <= 0.5 and angle <= 1.0):
        assert not result.ok, (rms, angle, result.verdict)


def test_separate_head_elsewhere_is_not_taken_for_the_stem(scan_stem):
    truth = scanned_stem_placement()
    pts_ras = points(transform_polydata(scan_stem, truth))
    far = pts_ras.mean(0) + np.array([60.0, 0.0, 0.0])  # a 28 mm ball 60 mm away, a different object
    ct = stem_ct(scan_stem, truth, StemCTSpec(voxel_mm=1.0), extra_metal=[(far, 14.0)])
    result = register_stem(ct, scan_stem)
    rms, angle = pose_errors(points(scan_stem), result.matrix_ras, truth)
    assert rms <= 0.5 and angle <= 1.0


def test_ct_without_metal_is_an_error():
    ct = Volume(np.full((40, 40, 40), 300, dtype=np.int16), np.diag([1.0, 1.0, 1.0, 1.0]))
    ball = read_model(shared_file("hip_implant_surface_scan.stl"))[0]
    with pytest.raises(InputError, match="the CT has no metal"):
        register_stem(ct, ball)


def test_metal_of_another_size_is_an_error(scan_stem):
    real = shared_file("pelvis_ct_with_femoral_implant.nii.gz")
    from ImplantBoneContactLib.volume import read_volume

    with pytest.raises(InputError, match="no metal object in the CT has the stem's size"):
        register_stem(read_volume(real), scan_stem)


def test_poor_fit_is_an_error_not_a_transform(scan_stem):
    truth = scanned_stem_placement()
    ct = stem_ct(scan_stem, truth, StemCTSpec(voxel_mm=1.0))
    # A model 15 % too large (another size of the same design): the metal is there but does not fit.
    bigger = np.diag([1.15, 1.15, 1.15, 1.0])
    model = transform_polydata(scan_stem, bigger)
    with pytest.raises(InputError, match="poor fit"):
        register_stem(ct, model)
    failed = register_stem(ct, model, raise_on_failure=False)
    assert not failed.ok and failed.rms_mm > failed.max_rms_mm


def test_init_starts_from_a_given_pose(scan_stem):
    truth = scanned_stem_placement()
    ct = stem_ct(scan_stem, truth, StemCTSpec(voxel_mm=1.0))
    off = np.eye(4)
    off[:3, 3] = [3.0, -2.0, 4.0]
    result = register_stem(ct, scan_stem, init=off @ truth)
    assert result.initialisation == "given starting transform"
    rms, angle = pose_errors(points(scan_stem), result.matrix_ras, truth)
    assert rms <= 0.5 and angle <= 1.0


def test_tfm_round_trip_and_itk_convention(tmp_path):
    rng = np.random.default_rng(3)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    m = np.eye(4)
    m[:3, :3] = q
    m[:3, 3] = rng.uniform(-100, 100, 3)
    path = write_transform(m, tmp_path / "stem_to_ct.tfm")
    np.testing.assert_allclose(read_transform(path), m, atol=1e-9)
    # ITK's convention, checked with SimpleITK itself: the file maps a CT point (LPS) to the model point (LPS).
    tx = sitk.ReadTransform(str(path))
    x_model = np.array([10.0, -20.0, 30.0])
    y_ct = m[:3, :3] @ x_model + m[:3, 3]
    y_lps = LPS_TO_RAS[:3, :3] @ y_ct
    np.testing.assert_allclose(LPS_TO_RAS[:3, :3] @ np.array(tx.TransformPoint(tuple(y_lps))), x_model, atol=1e-9)


def test_cli_register_then_analyze_with_transform_and_with_register(scan_stem, tmp_path, capsys):
    truth = scanned_stem_placement()
    ct = stem_ct(scan_stem, truth, StemCTSpec(voxel_mm=1.0))
    ct_path = tmp_path / "postop.nrrd"
    write_volume(ct, ct_path)
    model = str(shared_file("hip_implant_surface_scan.stl"))
    tfm = tmp_path / "stem_to_ct.tfm"
    assert main(["register", "--ct", str(ct_path), "--model", model, "--out", str(tfm),
                 "--registered-model", str(tmp_path / "registered.stl")]) == 0
    printed = capsys.readouterr().out
    assert "verdict: good fit" in printed and "RMS" in printed
    assert (tmp_path / "stem_to_ct_qc.png").stat().st_size > 10_000
    rms, angle = pose_errors(points(scan_stem), read_transform(tfm), truth)
    assert rms <= 0.5 and angle <= 1.0
    registered, info = read_model(tmp_path / "registered.stl")
    assert info.space_in_file == "RAS"
    opts = ["--remesh", "none", "--profile", "0.5:3:0.5", "--quiet"]
    assert main(["analyze", "--ct", str(ct_path), "--model", model, "--transform", str(tfm), "--out", str(tmp_path / "a"), "--no-pictures", *opts]) == 0
    assert main(["analyze", "--ct", str(ct_path), "--model", model, "--register", "--out", str(tmp_path / "b"), *opts]) == 0
    b = tmp_path / "b"
    assert (b / "stem_to_ct.tfm").exists() and (b / "registration_qc.png").exists()
    meta = json.loads((b / "parameters.json").read_text())
    assert meta["registration"]["ok"] is True and meta["parameters"]["register"] is True
    np.testing.assert_allclose(read_transform(b / "stem_to_ct.tfm"), np.array(meta["registration"]["matrix_ras"]), atol=1e-9)
    # The analysed surface is the registered stem: the same vertices as with the transform file.
    import pandas as pd

    va = pd.read_csv(tmp_path / "a" / "vertices.csv")
    vb = pd.read_csv(b / "vertices.csv")
    np.testing.assert_allclose(va[["x_mm", "y_mm", "z_mm"]].to_numpy(), vb[["x_mm", "y_mm", "z_mm"]].to_numpy(), atol=1e-3)
    # Both at once is an error, and nothing is written.
    capsys.readouterr()
    assert main(["analyze", "--ct", str(ct_path), "--model", model, "--register", "--transform", str(tfm), "--out", str(tmp_path / "c")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "c").exists()


def test_cli_failed_registration_writes_nothing(tmp_path, capsys):
    ct = Volume(np.full((30, 30, 30), 40, dtype=np.int16), np.eye(4))
    write_volume(ct, tmp_path / "ct.nrrd")
    out = tmp_path / "t.tfm"
    assert main(["register", "--ct", str(tmp_path / "ct.nrrd"), "--model", str(shared_file("hip_implant_surface_scan.stl")), "--out", str(out)]) == 2
    assert "no metal" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "t_qc.png").exists()


def test_qc_picture_draws_outlines(scan_stem, tmp_path):
    ct = stem_ct(scan_stem, scanned_stem_placement(), StemCTSpec(voxel_mm=1.0))
    result = register_stem(ct, scan_stem)
    assert len(result.qc.slices) == 3
    for _title, image, _extent, segs in result.qc.slices:
        assert image.ndim == 2 and len(segs) > 20  # the stem is cut by each of the three planes
    p = write_qc_picture(result, tmp_path / "registration_qc.png")
    assert p.stat().st_size > 10_000


@pytest.mark.slow
def test_fifty_random_moves_sweep():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import registration_accuracy

    records = registration_accuracy.sweep(n=50, seed=2026, stems=("scan", "demo"))
    good = [r for r in records if r["ok"] and r["rms_error_mm"] <= 0.5 and r["angle_error_deg"] <= 1.0]
    assert len(good) >= 0.98 * len(records)
    # Every miss is reported as a failed fit, never returned as a transform.
    silent = [r for r in records if r["ok"] and not (r["rms_error_mm"] <= 0.5 and r["angle_error_deg"] <= 1.0)]
    assert not silent
