"""CT noise measured on small noise volumes of known standard deviation and known neighbour correlation."""

from __future__ import annotations

import numpy as np
import pytest
from ImplantBoneContactLib.scan_noise import (
    BLOCK_VOXELS,
    IMPLANT_MARGIN_MM,
    MIN_BLOCKS,
    N_CANDIDATES,
    SOFT_TISSUE_HU,
    scan_noise,
)
from ImplantBoneContactLib.volume import Volume


def _volume(array, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    m = np.diag([*spacing, 1.0])
    m[:3, 3] = origin
    return Volume(array=array, ijk_to_ras=m)


def test_constants():
    assert (BLOCK_VOXELS, SOFT_TISSUE_HU, IMPLANT_MARGIN_MM, N_CANDIDATES, MIN_BLOCKS) == (5, (-250.0, 200.0), 20.0, 8000, 20)


def test_white_noise_sd_mean_and_no_correlation():
    # Independent Gaussian noise, sd 20 HU around 40 HU (muscle). A 125-voxel sample sd has median about
    # sigma * (1 - 1/(6*124)), 0.1 % low; the median over 3000 cubes is within about 1 %.
    rng = np.random.default_rng(1)
    a = (40.0 + 20.0 * rng.standard_normal((30, 30, 30))).astype(np.float32)
    out = scan_noise(_volume(a, spacing=(0.5, 1.0, 2.0)))
    assert out["noise_sd_hu"] == pytest.approx(20.0, rel=0.02)
    assert out["tissue_mean_hu"] == pytest.approx(40.0, abs=1.0)
    assert abs(out["neighbour_correlation"]) < 0.03
    assert out["n_blocks"] == 3000  # every cube is soft tissue: MAX_BLOCKS of them are used
    assert out["block_mm"] == [2.5, 5.0, 10.0]
    assert out["method"] == ("median standard deviation of 5x5x5-voxel cubes in soft tissue (-250..200 HU) "
                             "at least 20 mm from the implant")
    assert isinstance(out["noise_sd_hu"], float) and isinstance(out["n_blocks"], int)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_neighbour_correlation_of_noise_averaged_along_one_axis(axis):
    # (e[n] + e[n+1]) / sqrt(2): correlation 1/2 between neighbours along that axis, 0 along the two others;
    # the recorded value is the mean over the three axes, 1/6. Removing each cube's mean lowers it by
    # about 1/5 of the cube's (1 - rho) share along the averaged axis: allow 0.03.
    rng = np.random.default_rng(2)
    e = rng.standard_normal((31, 31, 31))
    s = [slice(0, 30)] * 3
    t = [slice(0, 30)] * 3
    t[axis] = slice(1, 31)
    a = 10.0 * (e[tuple(s)] + e[tuple(t)]) / np.sqrt(2.0)
    out = scan_noise(_volume(a))
    assert out["neighbour_correlation"] == pytest.approx(1.0 / 6.0, abs=0.03)
    assert out["noise_sd_hu"] == pytest.approx(10.0, rel=0.05)


def test_integer_ct_gives_the_same_noise_as_its_float_copy():
    rng = np.random.default_rng(3)
    a = np.round(40.0 + 20.0 * rng.standard_normal((20, 20, 20))).astype(np.int16)
    i, f = scan_noise(_volume(a)), scan_noise(_volume(a.astype(np.float64)))
    assert i["noise_sd_hu"] == f["noise_sd_hu"] and i["neighbour_correlation"] == f["neighbour_correlation"]
    assert i["noise_sd_hu"] == pytest.approx(20.0, rel=0.03)


def test_volume_thinner_than_a_cube_reports_nan():
    a = np.zeros((4, 30, 30), dtype=np.float32)
    out = scan_noise(_volume(a))
    assert np.isnan(out["noise_sd_hu"]) and np.isnan(out["neighbour_correlation"]) and np.isnan(out["tissue_mean_hu"])
    assert out["n_blocks"] == 0 and out["block_mm"] == [5.0, 5.0, 5.0]


def test_exactly_one_cube_wide_volume_is_measured():
    rng = np.random.default_rng(4)
    a = 20.0 * rng.standard_normal((5, 5, 5))
    out = scan_noise(_volume(a))
    assert out["n_blocks"] == 3000  # the single position, drawn again and again
    assert out["noise_sd_hu"] == pytest.approx(a.std(ddof=1), rel=1e-12)
    assert out["tissue_mean_hu"] == pytest.approx(a.mean(), abs=1e-9)


def test_cubes_outside_soft_tissue_are_left_out():
    # Bone (400 HU) at low i, noise of sd 10 at 0 HU beyond: only cubes wholly in soft tissue
    # count, so the noise is that of the soft-tissue half and the bone edge never enters.
    rng = np.random.default_rng(5)
    a = 10.0 * rng.standard_normal((20, 20, 80))
    a[:, :, :60] = 400.0
    out = scan_noise(_volume(a))
    assert out["noise_sd_hu"] == pytest.approx(10.0, rel=0.03)
    assert out["tissue_mean_hu"] == pytest.approx(0.0, abs=1.0)
    # A cube corner at i = 0..75 has all five voxels at i >= 60 for corners 60..75: 16 of 76 positions.
    assert out["n_blocks"] == pytest.approx(N_CANDIDATES * 16 / 76, rel=0.06)


@pytest.mark.parametrize("edge", ["low", "high"])
def test_soft_tissue_limits_are_inclusive(edge):
    # Cubes of constant noise plus one value at exactly the range limit: they count (limits inclusive).
    lo, hi = SOFT_TISSUE_HU
    rng = np.random.default_rng(6)
    a = 10.0 * rng.standard_normal((10, 10, 10))
    a[::2, ::2, ::2] = lo if edge == "low" else hi
    assert scan_noise(_volume(a))["n_blocks"] == 3000
    a[::2, ::2, ::2] = lo - 0.5 if edge == "low" else hi + 0.5
    assert scan_noise(_volume(a))["n_blocks"] == 0


def test_too_few_cubes_report_nan_but_their_count():
    # Air everywhere except a 5 x 5 x 6 soft-tissue box: 2 cube positions of 26 ** 3, about 0.9 cubes
    # of 8000 candidates; fewer than MIN_BLOCKS, no noise reported.
    a = np.full((30, 30, 30), -1000.0)
    rng = np.random.default_rng(7)
    a[10:15, 10:15, 10:16] = 10.0 * rng.standard_normal((5, 5, 6))
    out = scan_noise(_volume(a))
    assert out["n_blocks"] < MIN_BLOCKS
    assert np.isnan(out["noise_sd_hu"]) and np.isnan(out["tissue_mean_hu"])


def test_one_soft_tissue_cube_position():
    # A 5 x 5 x 5 soft-tissue box in a 5 x 5 x 9 CT is one of 5 cube positions: about 1600 of the 8000
    # candidates, all of them the same cube.
    a = np.full((5, 5, 9), -1000.0)
    rng = np.random.default_rng(8)
    a[:, :, :5] = 10.0 * rng.standard_normal((5, 5, 5))
    out = scan_noise(_volume(a))
    assert out["n_blocks"] == pytest.approx(N_CANDIDATES / 5, rel=0.06)
    assert out["noise_sd_hu"] == pytest.approx(a[:, :, :5].std(ddof=1), rel=1e-12)


def test_uniform_tissue_has_zero_noise_and_no_correlation():
    out = scan_noise(_volume(np.full((12, 12, 12), 30.0)))
    assert out["noise_sd_hu"] == 0.0 and out["tissue_mean_hu"] == 30.0
    assert np.isnan(out["neighbour_correlation"])


def _noisy_near_plane(n_i=36):
    """Noise sd 60 HU for x < 18 mm, sd 10 HU beyond; 1 mm voxels, origin at x = 0 (columns along x)."""
    rng = np.random.default_rng(9)
    a = rng.standard_normal((40, 40, n_i))
    a[:, :, :18] *= 60.0
    a[:, :, 18:] *= 10.0
    return a


def test_cubes_near_the_implant_are_left_out():
    # Implant points on the plane x = 0 (a 40 x 40 grid, 1600 points, more than the 600 used): a cube counts
    # when its centre is 20 mm or more away, x >= 20, so all its voxels have x >= 18, the quiet part.
    a = _noisy_near_plane()
    y, z = np.meshgrid(np.arange(40.0), np.arange(40.0), indexing="ij")
    plane = np.stack([np.zeros(y.size), y.ravel(), z.ravel()], axis=1)
    out = scan_noise(_volume(a), plane)
    assert out["noise_sd_hu"] == pytest.approx(10.0, rel=0.03)
    # Centres x = corner + 2 >= 20: corners 18..31 of 32 positions.
    assert out["n_blocks"] == pytest.approx(3000 * 14 / 32, rel=0.08)
    # Without the implant, more than half of the cubes are in the noisy part.
    free = scan_noise(_volume(a))
    assert free["noise_sd_hu"] > 25.0
    # An empty point list is no implant.
    assert scan_noise(_volume(a), np.zeros((0, 3)))["noise_sd_hu"] == free["noise_sd_hu"]


def test_implant_distance_uses_the_volume_geometry():
    # The same CT with 2 mm columns and the origin at x = -40 mm: the plane x = 0 is at column 20, and
    # cubes whose centre is 20 mm or more from it lie 10 columns or more away on either side.
    rng = np.random.default_rng(10)
    a = 10.0 * rng.standard_normal((30, 30, 40))
    # Column c is at x = 2 c - 40 mm; a cube at corner c0 has its centre 20 mm or more from x = 0 when
    # c0 <= 8 (columns up to 12) or c0 >= 28: noisy columns 13..27 lie only in cubes nearer than that.
    a[:, :, 13:28] *= 6.0
    y, z = np.meshgrid(np.arange(0.0, 30.0, 1.5), np.arange(0.0, 30.0, 1.5), indexing="ij")
    plane = np.stack([np.zeros(y.size), y.ravel(), z.ravel()], axis=1)
    out = scan_noise(_volume(a, spacing=(2.0, 1.0, 1.0), origin=(-40.0, 0.0, 0.0)), plane)
    assert out["noise_sd_hu"] == pytest.approx(10.0, rel=0.03)
    assert out["n_blocks"] > MIN_BLOCKS


def test_same_seed_same_number_other_seed_close():
    rng = np.random.default_rng(11)
    a = 40.0 + 20.0 * rng.standard_normal((15, 15, 15))
    v = _volume(a)
    assert scan_noise(v, seed=3) == scan_noise(v, seed=3)
    assert scan_noise(v)["noise_sd_hu"] == scan_noise(v, seed=0)["noise_sd_hu"]
    assert scan_noise(v, seed=1)["noise_sd_hu"] != scan_noise(v, seed=0)["noise_sd_hu"]
    assert scan_noise(v, seed=1)["noise_sd_hu"] == pytest.approx(scan_noise(v, seed=0)["noise_sd_hu"], rel=0.03)


@pytest.mark.parametrize("shape", [(4, 30, 30), (30, 4, 30), (30, 30, 4)])
def test_thinner_than_a_cube_along_any_axis(shape):
    out = scan_noise(_volume(np.zeros(shape)))
    assert out["n_blocks"] == 0 and np.isnan(out["noise_sd_hu"])


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_cubes_extend_forward_from_their_corner(axis):
    # Soft tissue only in the last 10 slices along one axis of 40 (bone before): 6 of the 36 corner positions
    # give a cube wholly in soft tissue (corners 30..35), about 8000 * 6 / 36 of the candidates.
    rng = np.random.default_rng(12)
    shape = [12, 12, 12]
    shape[axis] = 40
    a = 10.0 * rng.standard_normal(shape)
    index = [slice(None)] * 3
    index[axis] = slice(0, 30)
    a[tuple(index)] = 400.0
    out = scan_noise(_volume(a))
    assert out["n_blocks"] == pytest.approx(N_CANDIDATES * 6 / 36, rel=0.08)
    # Only 1440 soft-tissue voxels, shared by overlapping cubes: the median sd is within about 10 %.
    assert out["noise_sd_hu"] == pytest.approx(10.0, rel=0.1)


def test_implant_margin_keeps_exactly_the_cubes_whose_centre_is_20_mm_away():
    # Soft tissue in columns 0..39 of 120 (bone beyond): corners 0..35. With the implant on the plane x = 0
    # (points at every integer y, z the cube centres take: none left out by thinning), a cube counts when its
    # centre x = corner + 2 is >= 20 mm, corners 18..35. The same CT with bone also in columns 0..17 and no
    # implant keeps the same candidate positions (same seed), so the counts and the noise must be equal.
    rng = np.random.default_rng(13)
    a = 10.0 * rng.standard_normal((24, 24, 120))
    a[:, :, 40:] = 400.0
    y, z = np.meshgrid(np.arange(24.0), np.arange(24.0), indexing="ij")
    plane = np.stack([np.zeros(y.size), y.ravel(), z.ravel()], axis=1)
    with_implant = scan_noise(_volume(a), plane)
    b = a.copy()
    b[:, :, :18] = 400.0
    by_tissue = scan_noise(_volume(b))
    assert with_implant["n_blocks"] == by_tissue["n_blocks"] > 1000
    assert with_implant["noise_sd_hu"] == by_tissue["noise_sd_hu"]


def test_twenty_cubes_are_enough(monkeypatch):
    import ImplantBoneContactLib.scan_noise as sn

    rng = np.random.default_rng(14)
    a = 20.0 * rng.standard_normal((5, 5, 5))
    monkeypatch.setattr(sn, "N_CANDIDATES", MIN_BLOCKS)
    out = scan_noise(_volume(a))
    assert out["n_blocks"] == MIN_BLOCKS and out["noise_sd_hu"] == pytest.approx(a.std(ddof=1), rel=1e-12)
    monkeypatch.setattr(sn, "N_CANDIDATES", MIN_BLOCKS - 1)
    out = scan_noise(_volume(a))
    assert out["n_blocks"] == MIN_BLOCKS - 1 and np.isnan(out["noise_sd_hu"])


def test_one_cube_correlation_is_that_of_the_cube():
    rng = np.random.default_rng(15)
    a = rng.standard_normal((5, 5, 5))
    a[:, :, 1:] += a[:, :, :-1]
    out = scan_noise(_volume(a))
    r = a - a.mean()
    var = (r**2).mean()
    cov = np.mean([(r[1:] * r[:-1]).mean(), (r[:, 1:] * r[:, :-1]).mean(), (r[:, :, 1:] * r[:, :, :-1]).mean()])
    assert out["neighbour_correlation"] == pytest.approx(cov / var, rel=1e-9)


def test_fat_and_muscle_cubes_median_mean_and_per_cube_correlation():
    # 70 % of the columns fat (-100 HU), 30 % muscle (+40 HU), white noise of sd 10: the median cube mean is
    # fat's, not the overall mean (-58 HU); each cube's own mean is removed, so the correlation stays about 0.
    rng = np.random.default_rng(16)
    a = 10.0 * rng.standard_normal((20, 20, 100))
    a[:, :, :70] += -100.0
    a[:, :, 70:] += 40.0
    out = scan_noise(_volume(a))
    assert out["tissue_mean_hu"] == pytest.approx(-100.0, abs=2.0)
    assert abs(out["neighbour_correlation"]) < 0.03
    assert out["noise_sd_hu"] == pytest.approx(10.0, rel=0.03)


def test_noise_below_one_hu_is_measured():
    rng = np.random.default_rng(17)
    a = 30.0 + 0.5 * rng.standard_normal((15, 15, 15))
    out = scan_noise(_volume(a))
    assert out["noise_sd_hu"] == pytest.approx(0.5, rel=0.03)
    assert abs(out["neighbour_correlation"]) < 0.03
