"""segment: the surface of what a threshold selects, on the real post-operative CT and on analytic phantoms."""

from __future__ import annotations

import numpy as np
import pytest
from ibc_helpers import rotation, shared_file
from ImplantBoneContactLib.cli import main
from ImplantBoneContactLib.errors import InputError
from ImplantBoneContactLib.mesh import _edge_counts, points, read_model, triangles
from ImplantBoneContactLib.segment import segment_surface, write_surface
from ImplantBoneContactLib.volume import Volume, read_volume, write_volume


def _ball_ct(radius_mm=10.0, voxel=0.5, centre=(12.0, -30.0, 40.0), oblique_deg=20.0, hu=3000.0, blur_mm=0.7):
    """A blurred metal ball on an oblique grid: its true surface is known exactly."""
    import SimpleITK as sitk

    n = int(np.ceil(2 * (radius_mm + 6) / voxel))
    direction = rotation("z", oblique_deg) @ rotation("x", 10.0)
    m = np.eye(4)
    m[:3, :3] = direction * voxel
    m[:3, 3] = np.asarray(centre) - direction @ np.full(3, (n - 1) * voxel / 2)
    # Supersampled voxelisation (3^3 per voxel): partial volume, so the half-way iso-surface is the true sphere.
    sub = (np.arange(3) + 0.5) / 3 - 0.5
    k, j, i = np.meshgrid(np.arange(n), np.arange(n), np.arange(n), indexing="ij")
    frac = np.zeros((n, n, n), dtype=np.float32)
    for a in sub:
        for b in sub:
            for c in sub:
                ijk = np.stack([i + a, j + b, k + c], axis=-1).astype(float)
                ras = ijk @ m[:3, :3].T + m[:3, 3]
                frac += (np.linalg.norm(ras - centre, axis=-1) <= radius_mm) / 27.0
    hu_arr = 40.0 + (hu - 40.0) * frac
    hu_arr = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(hu_arr), sigma=[blur_mm / voxel] * 3))
    return Volume(np.rint(hu_arr).astype(np.int16), m, source="ball")


@pytest.fixture(scope="module")
def ball():
    return _ball_ct()


def test_real_ct_gives_the_nail_and_screw_as_one_closed_surface(tmp_path):
    ct_path = shared_file("pelvis_ct_with_femoral_implant.nii.gz")
    ct = read_volume(ct_path)
    result = segment_surface(ct)  # preset metal, 2000 HU
    assert result.n_components == 1
    assert result.closed
    faces = triangles(result.surface)
    assert _edge_counts(faces) == (0, 0)
    # Independent count of the thresholded voxels and their volume.
    voxel_mm3 = float(np.prod(np.linalg.norm(ct.ijk_to_ras[:3, :3], axis=0)))
    n_voxels = int(np.count_nonzero(ct.array >= 2000))
    assert result.n_voxels == n_voxels
    assert abs(result.volume_mm3 - n_voxels * voxel_mm3) <= 0.15 * n_voxels * voxel_mm3
    # The surface is where the metal voxels are: in the patient's left (RAS x < 0), inside their RAS box.
    kk, jj, ii = np.nonzero(ct.array >= 2000)
    ras = np.column_stack([ii, jj, kk, np.ones_like(ii)]) @ ct.ijk_to_ras.T
    p = points(result.surface)
    assert np.all(p.min(0) >= ras[:, :3].min(0) - 3.0 - 1e-6)
    assert np.all(p.max(0) <= ras[:, :3].max(0) + 3.0 + 1e-6)
    assert p[:, 0].max() < 0
    # The CLI writes it with its coordinate system; read back without options it lands on the same place.
    out = tmp_path / "nail.stl"
    assert main(["segment", "--ct", str(ct_path), "--out", str(out), "--quiet"]) == 0
    back, info = read_model(out)
    assert info.space_in_file == "RAS"
    np.testing.assert_allclose(points(back).mean(0), p.mean(0), atol=1e-3)


def test_mask_restricts_the_surface_to_the_label():
    ct = read_volume(shared_file("pelvis_ct_with_femoral_implant.nii.gz"))
    mask = read_volume(shared_file("pelvis_ct_femur_left_mask.nii.gz"))
    inside = segment_surface(ct, preset="bone", mask=mask, label=1, largest=True)
    assert inside.closed
    # Every kept voxel is in the femur label; the surface stays within one voxel of the label's box.
    kk, jj, ii = np.nonzero(mask.array == 1)
    ras = np.column_stack([ii, jj, kk, np.ones_like(ii)]) @ mask.ijk_to_ras.T
    p = points(inside.surface)
    assert np.all(p.min(0) >= ras[:, :3].min(0) - 3.0 - 1e-6)
    assert np.all(p.max(0) <= ras[:, :3].max(0) + 3.0 + 1e-6)
    assert inside.n_voxels <= int(np.count_nonzero((mask.array == 1) & (ct.array >= 250)))
    with pytest.raises(InputError, match="label 7"):
        segment_surface(ct, mask=mask, label=7)


def test_ball_volume_position_and_no_shrinking(ball):
    # The half-way iso-surface of a Gaussian-blurred ball lies inside the ball by about sigma^2 / R (curvature):
    # 0.7^2 / 10 = 0.049 mm of radius, 3 * 0.049 / 10 = 1.5 % of volume.
    sigma, radius = 0.7, 10.0
    true_volume = 4.0 / 3.0 * np.pi * radius**3 * (1.0 - 3.0 * sigma**2 / radius**2)
    level = 0.5 * (3000 + 40)
    smooth = segment_surface(ball, threshold_hu=level)
    raw = segment_surface(ball, threshold_hu=level, smoothing=False)
    for r in (smooth, raw):
        assert r.closed and r.n_components == 1
        assert abs(r.volume_mm3 - true_volume) < 0.01 * true_volume  # measured: 0.2 % (VTK 9.6), 0.6 % (9.3, smoothed)
        radii = np.linalg.norm(points(r.surface) - np.array([12.0, -30.0, 40.0]), axis=1)
        assert abs(np.median(radii) - 10.0) < 0.1  # RAS place right on an oblique grid, no voxel-block offset
    # Windowed-sinc smoothing does not shrink (Laplacian smoothing would lose several percent).
    assert abs(smooth.volume_mm3 - raw.volume_mm3) < 0.01 * raw.volume_mm3
    assert smooth.area_mm2 < raw.area_mm2  # it does smooth the marching-cubes facets
    dec = segment_surface(ball, threshold_hu=level, decimate=0.8)
    assert dec.surface.GetNumberOfPolys() < 0.3 * smooth.surface.GetNumberOfPolys()
    assert abs(dec.volume_mm3 - true_volume) < 0.03 * true_volume


def test_object_leaving_the_scan_is_closed_and_small_objects_dropped():
    arr = np.full((30, 30, 30), 40, dtype=np.int16)
    arr[0:12, 10:20, 10:20] = 3000  # a bar that leaves the scan at k = 0
    arr[25:27, 2:4, 2:4] = 3000  # a speck of 8 voxels
    ct = Volume(arr, np.diag([1.0, 1.0, 1.0, 1.0]))
    r = segment_surface(ct, min_volume_mm3=20)
    assert r.closed and r.n_components == 1 and r.dropped_components == 1
    assert abs(r.volume_mm3 - 12 * 100) < 0.1 * 1200
    assert segment_surface(ct, min_volume_mm3=1).n_components == 2
    assert segment_surface(ct, min_volume_mm3=1, largest=True).n_components == 1


def test_no_metal_is_an_error_and_the_cli_writes_nothing(tmp_path, capsys):
    ct = Volume(np.full((10, 10, 10), 40, dtype=np.int16), np.eye(4))
    with pytest.raises(InputError, match="no voxel of the CT reaches 2000 HU"):
        segment_surface(ct)
    write_volume(ct, tmp_path / "ct.nrrd")
    out = tmp_path / "s.stl"
    assert main(["segment", "--ct", str(tmp_path / "ct.nrrd"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no voxel" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".stl", ".vtp"])
def test_write_surface_carries_ras(ball, tmp_path, suffix):
    r = segment_surface(ball, threshold_hu=1500)
    path = write_surface(r, tmp_path / f"ball{suffix}")
    back, info = read_model(path)
    assert info.space_used == "RAS"
    np.testing.assert_allclose(points(back).mean(0), points(r.surface).mean(0), atol=1e-3)
