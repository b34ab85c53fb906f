"""Known answers for the post-operative edge model's tissue blur and metal plateau (``_tissue_blur``) and for the
soft-tissue test of ``measure_edge`` (which vertices see a soft, flat tissue beyond the metal), on CTs built voxel
by voxel here.

The CTs are columns of voxels along x (0.5 mm voxels, centres at -4.5 + 0.5 i, the column at x = 0 is i = 9) whose
values are chosen so that every reading is known by hand: the profiles run along voxel axes through voxel centres,
so a trilinear reading between two centres is the straight line between their values, and at the 0.125 mm steps of
the walk the interpolation weights are 0, 1/4, 1/2 and 3/4 (no rounding). Each test takes well under a second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from ibc_helpers import blurred_metal_plane_ct, edges_repeated_on_an_ellipsoid, plane_points
from ImplantBoneContactLib import postop as po
from ImplantBoneContactLib.volume import Volume

VOXEL = 0.5
X0 = -4.5  # x of the first voxel column (mm)
N_I = 30
X = X0 + VOXEL * np.arange(N_I)


def _row(by_depth, tissue):
    """Voxel values along x: ``tissue`` at x > 0, ``by_depth[k]`` at the centre k voxels inside (x = -0.5 k), the
    last value repeated deeper."""
    k = np.rint(-X / VOXEL).astype(int)
    deep = np.asarray(by_depth, float)[np.clip(k, 0, len(by_depth) - 1)]
    return np.where(X > 0, float(tissue), deep)


def _ct_rows(rows, n_k=4):
    """A CT whose row j along y (centre y = 0.5 j) holds ``rows[j]`` along x, the same at every z (centres 0.5 k)."""
    a = np.asarray(rows, float)
    arr = np.broadcast_to(a[None], (n_k,) + a.shape).astype(np.float32).copy()
    m = np.diag([VOXEL, VOXEL, VOXEL, 1.0])
    m[:3, 3] = [X0, 0.0, 0.0]
    return Volume(array=arr, ijk_to_ras=m)


def _edge_points(rows, n_k=4):
    """Points at x = 0 on the centres of the given rows j (z on the inner rows k = 1 .. n_k - 2), inward -x."""
    pts = np.array([[0.0, VOXEL * j, VOXEL * k] for j in rows for k in range(1, n_k - 1)])
    return pts, np.tile([-1.0, 0.0, 0.0], (len(pts), 1))


def _profiles_ct(by_depth, tissue, n_rows=6):
    """``n_rows`` rows of the same profile between two padding rows; returns the CT and 2 (n_rows) edge points."""
    row = _row(by_depth, tissue)
    ct = _ct_rows([row] * (n_rows + 2))
    pts, inward = _edge_points(range(1, n_rows + 1))
    return ct, pts, inward, np.full(len(pts), float(tissue))


def _crossing(d0, share0, share1, step=0.125, level=0.8413):
    """Where the share crosses ``level`` between two samples ``step`` apart, by linear interpolation."""
    return d0 + step * (level - share0) / (share1 - share0)


# Reading at depths 0, 0.125, ... of a profile [1500, 3000, ...] over 0 HU: 1500, 1875, 2250, 2625, then 3000: its
# share of a 3000 HU plateau crosses 84.13 % between 0.25 mm (0.75) and 0.375 mm (0.875).
SIGMA_1500_3000 = _crossing(0.25, 0.75, 0.875)

# The window read inward: blur_mm 0.4 gives max(1.5 mm inside depth, 3.5 x 0.4) + a 0.5 mm voxel = 2.0 mm.
BLUR = 0.4


@pytest.mark.parametrize("tissue, plateau", [(0.0, 2940.0), (500.0, 2977.5)])
def test_plateau_is_the_median_of_the_readings_within_two_percent_of_the_rise(tissue, plateau):
    """A rise to 2940 HU held from 0.5 to 1.5 mm inside, then to 3000 HU at 2.0 mm (the window's end): readings
    2940 x 9, 2955, 2970, 2985, 3000. Over 0 HU the readings within 2 % of the 3000 HU rise (down to 2940 HU) are
    all 13, median 2940; over 500 HU 2 % of 2500 HU reaches down to 2950 HU only: 2955, 2970, 2985, 3000, median
    2977.5. Not the highest reading (3000 HU)."""
    ct, pts, inward, t = _profiles_ct([0.5 * (tissue + 3000.0), 2940.0, 2940.0, 2940.0, 3000.0], tissue)
    sigma, top = po._tissue_blur(ct, pts, inward, t, metal_hu=3000.0, blur_mm=BLUR)
    assert top == pytest.approx(plateau, abs=1e-6)
    assert po.inner_depth_mm(ct, BLUR) == 2.0
    # The share (reading - tissue) / (plateau - tissue) crosses 84.13 % between 0.25 and 0.375 mm.
    s = [(r - tissue) / (plateau - tissue) for r in (0.5 * (tissue + 3000.0) + 0.5 * (2940.0 - 0.5 * (tissue + 3000.0)),
                                                   0.5 * (tissue + 3000.0) + 0.75 * (2940.0 - 0.5 * (tissue + 3000.0)))]
    assert sigma == pytest.approx(_crossing(0.25, s[0], s[1]), abs=1e-9)


@pytest.mark.parametrize("tissue", [0.0, -500.0])
def test_a_fall_of_exactly_two_percent_of_the_rise_does_not_stop_the_walk(tissue):
    """A rise to 3000 HU at 0.5 mm, then 2940 HU from 1.0 mm on. Over 0 HU 2940 is exactly 2 % of the rise below the
    peak, over -500 HU less than 2 % (70 HU): neither is a fall of more than 2 %, the walk goes on to 2.0 mm and the
    plateau is the median of 3000, 2985, 2970, 2955 and nine readings of 2940 HU: 2940 HU. Stopping at the first
    2940 would leave 2977.5 HU (the median of the four), stopping at any fall 3000 HU."""
    ct, pts, inward, t = _profiles_ct([1500.0, 3000.0, 2940.0], tissue)
    _, top = po._tissue_blur(ct, pts, inward, t, metal_hu=3000.0, blur_mm=BLUR)
    assert top == pytest.approx(2940.0, abs=1e-6)


def test_the_far_side_of_a_thin_part_stops_each_profile_on_its_own():
    """Six profiles into thick metal (3000 HU from 0.5 mm on) and six into a thin part: 3000 HU at 0.5 and 1.0 mm,
    0 HU at 1.5 mm, then other metal of 4000 HU from 2.0 mm. The thin profiles fall by more than 2 % after 1.0 mm and
    stop there: every plateau is 3000 HU (not the 4000 HU beyond the gap), and all twelve profiles count (the thick
    ones, which never fall, are not stopped)."""
    thick = _row([1500.0, 3000.0], 0.0)
    thin = _row([1500.0, 3000.0, 3000.0, 0.0, 4000.0], 0.0)
    # rows 1-3 thick, 4-6 thin (a thick profile first), padding rows 0 and 7
    ct = _ct_rows([thick, thick, thick, thick, thin, thin, thin, thin])
    pts, inward = _edge_points(range(1, 7))
    sigma, top = po._tissue_blur(ct, pts, inward, np.zeros(12), metal_hu=3000.0, blur_mm=BLUR)
    assert top == pytest.approx(3000.0, abs=1e-6)
    assert sigma == pytest.approx(SIGMA_1500_3000, abs=1e-9)


def test_each_profile_has_its_own_plateau_when_the_profiles_are_counted():
    """Nine profiles rise from 0 to 3000 HU, eight from 500 to 4000 HU (both halfway at the edge); metal 5600 HU.
    Each rises by more than half the metal above its own tissue (3000 > 2800, 3500 > 2550 HU): all 17 count, the
    plateau is the median of their plateaus (3000 HU) and the shares of both rise alike."""
    low = _row([1500.0, 3000.0], 0.0)
    high = _row([2250.0, 4000.0], 500.0)
    ct = _ct_rows([low] * 10 + [high] * 9)
    pts_low, inward_low = _edge_points(range(1, 10), n_k=3)  # 9 profiles (one z row)
    pts_high, inward_high = _edge_points(range(10, 18), n_k=3)  # 8
    pts, inward = np.vstack([pts_low, pts_high]), np.vstack([inward_low, inward_high])
    tissue = np.r_[np.zeros(9), np.full(8, 500.0)]
    sigma, top = po._tissue_blur(ct, pts, inward, tissue, metal_hu=5600.0, blur_mm=BLUR)
    assert top == pytest.approx(3000.0, abs=1e-6)
    assert sigma == pytest.approx(SIGMA_1500_3000, abs=1e-9)


def test_a_rise_of_exactly_half_the_metal_does_not_count():
    """Profiles rising from 0 to exactly 3000 HU against a 6000 HU metal: not more than half of it, so none counts
    (blur None, plateau NaN); against 5998 HU they all do."""
    ct, pts, inward, t = _profiles_ct([1500.0, 3000.0], 0.0, n_rows=6)
    sigma, top = po._tissue_blur(ct, pts, inward, t, metal_hu=6000.0, blur_mm=BLUR)
    assert sigma is None and math.isnan(top)
    sigma, top = po._tissue_blur(ct, pts, inward, t, metal_hu=5998.0, blur_mm=BLUR)
    assert top == pytest.approx(3000.0, abs=1e-6) and sigma == pytest.approx(SIGMA_1500_3000, abs=1e-9)


def test_plateau_and_blur_read_to_exactly_the_window_end():
    """1000 HU down to 1.5 mm inside, 3000 HU at 2.0 mm (the window's end), 3400 HU deeper: the readings at 1.75,
    1.875 and 2.0 mm are 2000, 2500 and 3000 HU. The plateau is the last reading, 3000 HU (not 2000 as a window
    ending two samples short would read, nor 3100 as one a sample longer); the share 2500 / 3000 = 0.833 at 1.875 mm
    is below 84.13 %, so the blur is the crossing in the window's last step, 1.875 + 0.125 (0.8413 - 0.8333) /
    (1 - 0.8333) mm, and it is inside the window."""
    ct, pts, inward, t = _profiles_ct([1000.0, 1000.0, 1000.0, 1000.0, 3000.0, 3400.0], 0.0)
    sigma, top = po._tissue_blur(ct, pts, inward, t, metal_hu=3000.0, blur_mm=BLUR)
    assert top == pytest.approx(3000.0, abs=1e-6)
    assert sigma == pytest.approx(_crossing(1.875, 2500.0 / 3000.0, 1.0), abs=1e-9)
    assert 1.875 < sigma < 2.0


# ---------------------------------------------------------------------------------------------------------------
# measure_edge: which vertices see soft tissue. A vertex counts when the tissue beyond the metal (the median of the
# readings over the last 1 mm, or half a voxel if that is more, of the profile read outward from its edge) is below
# 300 HU, the readings over the profile's outer half span less than 100 HU, and the metal is more than 1000 HU above
# the tissue; with 30 such vertices the spread is "measured", else a Gaussian from the slope. Points: 100 on the
# metal plane x = 0, normals +x; the edge is found at x = 0 (the blurred step is odd about the voxel centre there).


def _plane_with_tissue_columns(values_from, voxel=0.5, x0=-4.5, n_i=30, near=0.0, sigma=0.5):
    """The metal plane (3500 HU, blurred by ``sigma``) over ``near`` HU, with the voxel columns at x >= the first
    key of ``values_from`` (a dict x -> HU, the columns from each x to the next) set to exact values."""
    ct = blurred_metal_plane_ct(metal=3500.0, tissue=near, sigma=sigma, voxel=voxel, x0=x0, n_i=n_i)
    x = x0 + voxel * np.arange(n_i)
    for start, value in sorted(values_from.items()):
        cols = x >= start - 1e-9  # the centres x0 + voxel i carry rounding
        ct.array[..., cols] = np.broadcast_to(value(x[cols]) if callable(value) else value, ct.array[..., cols].shape)
    return ct


def test_metal_at_the_detection_level_in_air_is_measured():
    """Metal reading 2000 HU (the detection level) beyond which is air (-1000 HU): the air is soft tissue (below
    300 HU, flat) and the metal is 3000 HU above it, so all 100 vertices measure the spread."""
    e = po.measure_edge(blurred_metal_plane_ct(metal=2000.0, tissue=-1000.0, sigma=0.0), *plane_points())
    assert e.method == "measured" and e.n_vertices == 100


def test_a_tissue_spanning_exactly_100_hu_over_the_outer_half_is_not_flat():
    """The profile runs to 5.5 mm past the edge; its outer half starts at 2.75 mm. A 200 HU voxel at 2.5 mm, 0 HU
    from 3.0 mm: the reading at 2.75 mm is 100 HU, the others from there 50 HU or 0: a span of exactly 100 HU, not
    less, so no vertex is soft (a Gaussian edge). With 198 HU at 2.5 mm (99 HU at 2.75) the tissue is flat."""
    pts, nrm = plane_points()
    e = po.measure_edge(_plane_with_tissue_columns({2.5: 200.0, 3.0: 0.0}), pts, nrm)
    assert e.method == "gaussian"
    e = po.measure_edge(_plane_with_tissue_columns({2.5: 198.0, 3.0: 0.0}), pts, nrm)
    assert e.method == "measured" and e.n_vertices == 100


@pytest.mark.parametrize("slope", [32.0, -32.0])
def test_the_tissue_is_the_median_over_the_last_millimetre(slope):
    """Tissue rising (or falling) by 32 HU/mm from 2.5 mm past the edge, 299 HU at 5.0 mm: the last millimetre of
    the profile (4.5 to 5.5 mm, 9 readings on a straight line) has its median at 5.0 mm, 299 HU, soft tissue; a
    window one reading shorter or longer, or reaching further in, would read 297-315 HU on one of the two slopes.
    The outer half spans 88 HU: flat."""
    ramp = {2.5: lambda x: 299.0 + slope * (x - 5.0)}
    e = po.measure_edge(_plane_with_tissue_columns(ramp, near=299.0 + slope * (2.5 - 5.0)), *plane_points())
    assert e.method == "measured" and e.n_vertices == 100
    # The same tissue 1 HU higher is not soft.
    ramp = {2.5: lambda x: 300.0 + slope * (x - 5.0)}
    assert po.measure_edge(_plane_with_tissue_columns(ramp, near=300.0 + slope * (2.5 - 5.0)),
                           *plane_points()).method == "gaussian"


@pytest.mark.parametrize("voxel, x0, n_i, slope, middle", [
    # 1 mm voxels: profile to 5.5 mm every 0.25 mm, the last 1 mm (more than half a voxel) 4.5-5.5, middle 5.0
    (1.0, -4.5, 14, -32.0, 5.0),
    # 3 mm voxels: profile to 7.5 mm, the last half voxel (1.5 mm, more than 1 mm) 6.0-7.5, middle 6.75
    (3.0, -7.5, 8, 16.0, 6.75),
])
def test_the_tissue_window_is_half_a_voxel_on_coarse_cts(voxel, x0, n_i, slope, middle):
    """The tissue window is the last 1 mm or half a voxel, whichever is more: on a tissue sloping linearly from the
    first voxel centre past the edge its median is the reading at the window's middle, set to 299 HU (soft)."""
    first = x0 + voxel * (math.floor(-x0 / voxel) + 1)  # the first voxel centre past the edge at 0
    ramp = {first: lambda x: 299.0 + slope * (x - middle)}
    ct = _plane_with_tissue_columns(ramp, voxel=voxel, x0=x0, n_i=n_i, near=299.0 + slope * (first - middle))
    e = po.measure_edge(ct, *plane_points())
    assert e.x_mm[-1] == pytest.approx(middle + 0.5 * max(1.0, 0.5 * voxel))
    assert e.method == "measured" and e.n_vertices == 100


def test_the_outer_half_starts_at_half_the_profile():
    """0.6 mm voxels: the walk steps 0.15 mm and the profile runs 37 steps to 5.55 mm, so its outer half starts at
    2.775 mm: the first reading in it is at 2.85 mm. A 300 HU voxel at 2.4 mm before 0 HU from 3.0 mm: 150 HU at
    2.7 mm (outside the half), 75 HU at 2.85 mm: the half spans 75 HU, flat."""
    ct = _plane_with_tissue_columns({2.4: 300.0, 3.0: 0.0}, voxel=0.6, x0=-4.8, n_i=22)
    pts, nrm = plane_points()
    e = po.measure_edge(ct, pts, nrm)
    assert e.x_mm.size == 38 and e.x_mm[-1] == pytest.approx(5.55)
    assert e.method == "measured" and e.n_vertices == 100
    # 450 HU at 2.4 mm: 112.5 HU at 2.85 mm, not flat
    assert po.measure_edge(_plane_with_tissue_columns({2.4: 450.0, 3.0: 0.0}, voxel=0.6, x0=-4.8, n_i=22),
                           pts, nrm).method == "gaussian"


# ---------------------------------------------------------------------------------------------------------------
# _walk: the edge at a single-sample maximum of the fall (a parabola through it and its two neighbours) and the
# peak test against the samples next to a run. Sampled at the nearest voxel along the diagonal (1, 1, 0) / sqrt 2,
# a CT with one step across x = 0 and one across y = 0 reads a, then b, then c, with the two steps at walk offsets
# t_x and t_y chosen between samples: every reading, and so every fall (-np.gradient, mm), is known by hand.

H = 0.125  # the walk's step on 0.5 mm voxels (a quarter voxel)
N_IN = 12  # samples inside: 1.5 mm / H; column 0 is offset -1.5 mm


def _two_steps_ct(t_x, t_y, a, b, c):
    """CT of 0.5 mm voxels (centres at +-0.25, +-0.75, ... in x and y) reading a for x < 0, b for x > 0 and y < 0,
    c for x > 0 and y > 0; with three points (z = 0.25, 0.75, 1.25) whose diagonal walk crosses x = 0 at offset
    ``t_x`` and y = 0 at ``t_y`` (mm)."""
    n = 22
    centres = -5.25 + VOXEL * np.arange(n)
    f = np.where(centres < 0, a, b)  # along x
    g = np.where(centres < 0, 0.0, c - b)  # along y
    arr = np.broadcast_to(f[None, None, :] + g[None, :, None], (4, n, n)).astype(np.float32).copy()
    m = np.diag([VOXEL, VOXEL, VOXEL, 1.0])
    m[:3, 3] = [-5.25, -5.25, -0.25]
    ct = Volume(array=arr, ijk_to_ras=m)
    r = math.sqrt(0.5)
    pts = np.array([[-t_x * r, -t_y * r, z] for z in (0.25, 0.75, 1.25)])
    return ct, pts, np.tile([r, r, 0.0], (3, 1))


def _walk_edges(t_x, t_y, a, b, c):
    ct, pts, nrm = _two_steps_ct(t_x, t_y, a, b, c)
    assert po._grid_step(ct) == H
    return po._walk(ct, pts, nrm, "nearest", None).edge_mm


def _vertex(f0, f1, f2):
    """Offset (in steps) of the vertex of the parabola through (-1, f0), (0, f1), (1, f2)."""
    return 0.5 * (f0 - f2) / (f0 - 2.0 * f1 + f2)


def test_a_single_sample_maximum_of_the_fall_is_refined_by_a_parabola():
    """Readings 3000 HU before -H/2, 0 HU up to H/2, -500 HU beyond: the falls (HU/mm) at -H, 0, H are
    3000 / 2H, 3500 / 2H and 500 / 2H, a single-sample maximum at 0 flanked by lower ones; the edge is the
    parabola's vertex, (0.5 (3000 - 500) / (3000 - 7000 + 500)) H = -0.357 H."""
    edges = _walk_edges(-0.5 * H, 0.5 * H, 3000.0, 0.0, -500.0)
    f = np.array([3000.0, 3500.0, 500.0]) / (2 * H)
    assert np.allclose(edges, _vertex(*f) * H, atol=1e-12)
    assert _vertex(*f) == pytest.approx(-2500.0 / 7000.0)


def test_a_single_sample_maximum_in_the_walks_second_column():
    """Readings 3000 HU at the walk's first sample (-1.5 mm), 2900 HU at the second, 0 beyond: the one-sided fall at
    column 0 is 100 / H, the fall at column 1 is 3000 / 2H (the maximum), at column 2 2900 / 2H. Column 1 can be
    the edge (it has a sample before it), refined by the parabola through columns 0, 1 and 2."""
    edges = _walk_edges(-(N_IN - 0.5) * H, -(N_IN - 1.5) * H, 3000.0, 2900.0, 0.0)
    f = np.array([100.0 / H, 3000.0 / (2 * H), 2900.0 / (2 * H)])
    assert np.allclose(edges, -(N_IN - 1) * H + _vertex(*f) * H, atol=1e-12)


def test_a_run_counts_against_the_sample_just_before_it():
    """Readings 3000 HU at -1.5 mm, 2000 HU for the next three samples, 1000 HU beyond: falls 1000 / H (column 0,
    one-sided), 1000 / 2H (column 1), 0, then 1000 / 2H at columns 3 and 4 (a run). The run is higher than the
    sample before it (0) and after it (0), and exactly half the strongest fall (column 0, which has no sample
    before it and cannot be the edge): it is the edge, at its middle, -1.5 + 3.5 H mm."""
    edges = _walk_edges(-(N_IN - 0.5) * H, -(N_IN - 3.5) * H, 3000.0, 2000.0, 1000.0)
    assert np.allclose(edges, -1.5 + 3.5 * H, atol=1e-12)


def test_a_run_with_a_stronger_fall_two_samples_before_it_is_still_a_maximum():
    """Readings 3000 HU at -1.5 mm, 2000 HU for two samples, 500 HU beyond: falls 1000 / H (column 0), 1000 / 2H,
    then 1500 / 2H at columns 2 and 3 (a run), 0 after. The run is higher than column 1 just before it: the edge,
    at -1.5 + 2.5 H mm; column 0's stronger fall two samples back does not count against it."""
    edges = _walk_edges(-(N_IN - 0.5) * H, -(N_IN - 2.5) * H, 3000.0, 2000.0, 500.0)
    assert np.allclose(edges, -1.5 + 2.5 * H, atol=1e-12)


def test_the_first_of_two_maxima_is_the_edge():
    """Readings 3000 HU up to -H, 2000 HU from 0 to 2H, 200 HU beyond: a run of falls 1000 / 2H at -H and 0, a 0
    at H, then a stronger run 1800 / 2H at 2H and 3H. The first run is a maximum (higher than the samples next
    to it) and more than half the strongest: the edge is its middle, -H / 2, not the later, stronger one."""
    edges = _walk_edges(-0.5 * H, 2.5 * H, 3000.0, 2000.0, 200.0)
    assert np.allclose(edges, -0.5 * H, atol=1e-12)


def test_a_maximum_right_after_the_walk_enters_the_ct_is_not_refined():
    """The CT starts at y = 0: the diagonal walk enters it between offsets -1.125 and -1.0 mm (column 4) and crosses
    x = 0 (3000 HU before, 0 HU after) half a step later. The fall at column 4 is unknown (the reading before it is
    outside the CT), at column 5 it is 3000 / 2H, at column 6 0: a maximum at column 5, whose parabola has no first
    point, so the edge is the sample itself, -1.5 + 5 H mm."""
    n = 22
    xs = -5.25 + VOXEL * np.arange(n)
    arr = np.broadcast_to(np.where(xs < 0, 3000.0, 0.0)[None, None, :], (4, 16, n)).astype(np.float32).copy()
    m = np.diag([VOXEL, VOXEL, VOXEL, 1.0])
    m[:3, 3] = [-5.25, 0.25, -0.25]  # y centres 0.25, 0.75, ...: the CT's extent starts at y = 0
    ct = Volume(array=arr, ijk_to_ras=m)
    r = math.sqrt(0.5)
    t_enter, t_x = -1.5 + 3.5 * H, -1.5 + 4.5 * H
    pts = np.array([[-t_x * r, -t_enter * r, z] for z in (0.25, 0.75, 1.25)])
    w = po._walk(ct, pts, np.tile([r, r, 0.0], (3, 1)), "nearest", None)
    assert np.isnan(w.hu[:, :4]).all() and np.isfinite(w.hu[:, 4:]).all()
    assert np.allclose(w.edge_mm, -1.5 + 5 * H, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# fit_edge_placement: the trimming stops when fewer than 20 points would be left. Every point of a set carries the
# same own edges (the set repeated), so the least-squares placement is the constant offset equal to their mean
# (the per-point means are all equal and the design has a constant column) with no shift and no rotation.


def test_fit_edge_placement_trims_down_to_exactly_20_points():
    """Own edges 0 mm (5 times), 2 mm (once) and 7 mm (twice) at each of 20 points: the first fit is 2 mm
    everywhere, the residuals -2 (100 points), 0 (20) and 5 (40) mm; their median is -2 mm and over half lie on
    it, so the robust spread is 0 and the 0.3 mm floor keeps the 20 edges of 2 mm: 20 is not fewer than 20, so
    the next round fits those 20 alone (2 mm, spread 0) and stops there."""
    pts, nrm, own = edges_repeated_on_an_ellipsoid([0.0] * 5 + [2.0] + [7.0] * 2)
    pl = po.fit_edge_placement(pts, nrm, own, voxel_mm=1.0)
    assert pl.n_points == 20
    assert np.allclose(pl.coef, [2.0, 0, 0, 0, 0, 0, 0], atol=1e-9)
    assert pl.residual_mm == pytest.approx(0.0, abs=1e-9) and pl.tolerance_mm == pytest.approx(0.3)


def test_fit_edge_placement_keeps_all_points_when_none_would_be_left():
    """Own edges 0 mm (3 times) and 8 mm (once) at each of 20 points: the fit is 2 mm, every residual (-2 or 6
    mm) is beyond the 0.3 mm floor (spread 0: 60 of 80 residuals are -2): no point would be left, so the trimming
    stops with the first fit on all 80 points."""
    pts, nrm, own = edges_repeated_on_an_ellipsoid([0.0, 0.0, 0.0, 8.0])
    pl = po.fit_edge_placement(pts, nrm, own, voxel_mm=1.0)
    assert pl.n_points == 80
    assert np.allclose(pl.coef, [2.0, 0, 0, 0, 0, 0, 0], atol=1e-9)
    assert pl.residual_mm == pytest.approx(0.0, abs=1e-9)


def test_profiles_in_blocks_of_one_point_after_another_call():
    """Two calls with one point per block on CTs of different tissues (100 and 317 HU): each fills every row with
    its own readings (rows left unfilled would hold whatever the memory held, such as the other call's)."""
    pts = np.column_stack([np.full(5, 0.25), np.linspace(-1.0, 1.0, 5), np.zeros(5)])
    nrm = np.tile([1.0, 0.0, 0.0], (5, 1))
    for tissue in (100.0, 317.0, 100.0):
        ct = blurred_metal_plane_ct(sigma=0.0, tissue=tissue)
        hu, inside = po.profiles(ct, pts, nrm, np.array([-2.0, -1.0, 0.0, 2.0]), block=4)
        assert hu.tolist() == [[3500.0, 3500.0, tissue, tissue]] * 5 and inside.all()


def test_profiles_fill_every_row_of_a_large_call():
    """1.1 million points, 4096 per block: the readings (35 MB of float64) are larger than glibc's largest
    threshold for taking memory from the heap (32 MiB), so they come from fresh, zero-filled pages. Every row must
    hold its own readings (metal 3500 HU at -2 and -1 mm, tissue 100 HU at 0 and 2 mm); a row the blocks never
    reach would read 0 HU whatever ran before (the small call above catches it only when the memory it reuses
    held other readings)."""
    n = 1_100_000
    y = np.linspace(-3.0, 3.0, n)
    pts = np.column_stack([np.full(n, 0.25), y, y[::-1]])
    nrm = np.tile([1.0, 0.0, 0.0], (n, 1))
    ct = blurred_metal_plane_ct(sigma=0.0, tissue=100.0)
    hu, inside = po.profiles(ct, pts, nrm, np.array([-2.0, -1.0, 0.0, 2.0]), block=4 * 4096)
    assert hu.shape == (n, 4) and inside.all()
    assert (hu == np.array([3500.0, 3500.0, 100.0, 100.0])).all()


def test_the_spread_is_read_from_the_placed_edge():
    """Metal (3500 HU) ends at x = 0 on every row but the middle quarter (rows 6-9 of 16), where it reaches on to
    x = 1 mm (a layer as bright as the metal, say bone pressed onto it); beyond lies bone (1000 HU) on the outer
    rows and soft tissue (0 HU) on the middle ones; every row blurred along x by a Gaussian of 0.8 mm. The rigid
    placement follows the 96 outer points (edge 0); the 32 middle points' own edges (1 mm) are 1 mm off it, beyond
    the 0.3 mm tolerance, so they take the placed edge. Only they see soft tissue: the spread is measured on them,
    read from the placed edge: the metal's share there is a Gaussian edge 1 mm further out, which falls to
    15.9 % at 1 + 0.8 mm (0.8 mm if each point's own edge were used)."""
    sigma = 0.8
    n = 16
    rows = []
    for j in range(n):
        middle = 6 <= j <= 9
        edge, tissue = (1.0, 0.0) if middle else (0.0, 1000.0)
        rows.append(tissue + (3500.0 - tissue) * np.array([0.5 * math.erfc((x - edge) / (sigma * math.sqrt(2)))
                                                            for x in X]))
    a = np.broadcast_to(np.asarray(rows)[None], (n, n, N_I)).astype(np.float32).copy()
    m = np.diag([VOXEL, VOXEL, VOXEL, 1.0])
    m[:3, 3] = [X0, -3.75, -3.75]
    ct = Volume(array=a, ijk_to_ras=m)
    pts = np.array([[0.0, -3.75 + VOXEL * j, -3.75 + VOXEL * k] for j in range(n) for k in range(4, 12)])
    nrm = np.tile([1.0, 0.0, 0.0], (len(pts), 1))
    e = po.measure_edge(ct, pts, nrm)
    assert e.placement is not None and np.allclose(e.placement.predict(pts, nrm), 0.0, atol=0.01)
    assert e.method == "measured" and e.n_vertices == 32
    assert e.blur_mm == pytest.approx(1.0 + sigma, abs=0.1)


# _tissue_blur: what a profile contributes past where it stops (its plateau's end, or the CT's end). Read at the
# nearest voxel from 0.0625 mm inside a voxel centre, a profile holds each voxel's value for four samples: samples
# 0-1 the voxel at the edge, 2-5 the next one inward, 6-9, 10-13, ... (blur_mm 0.8: the window is 3.3 mm deep,
# samples 0-27). Over 0 HU tissue, eleven profiles:
#   3 x (300, 1000, 2000, 2700, 3000 ...): plateau 3000, shares 0.1, 1/3, 2/3, 0.9, then 1
#   3 x (300, 1000, 2400, 3050, 3000 ...): plateau 3000 (median of 4 x 3050 and 14 x 3000), shares ... 0.8, 1.0167
#   5 x (300, 3000, 3050, then a fall or the CT's end): plateau 3025 (median of 4 x 3000 and 4 x 3050)
# At sample 9 the median share (the 6th of 11) is 0.8; at sample 10 it is the third group's value, which sits
# between 0.9 and 1.0167: the blur is the 84.13 % crossing between samples 9 and 10.

def _stop_ct(third_group_leaves_the_ct):
    a = _row([300.0, 1000.0, 2000.0, 2700.0, 3000.0], 0.0)
    b = _row([300.0, 1000.0, 2400.0, 3050.0, 3000.0], 0.0)
    if third_group_leaves_the_ct:
        # edge at x = -3.5625: 300 HU at -3.5, 3000 at -4.0, 3050 at -4.5, the CT's first voxel (it ends at -4.75)
        c = np.where(X > -3.75, 300.0, np.where(X > -4.25, 3000.0, 3050.0))
        x_c = -3.5625
    else:
        c = _row([300.0, 3000.0, 3050.0, 0.0], 0.0)
        x_c = -0.0625
    ct = _ct_rows([a] + [a] * 3 + [b] * 3 + [c] * 5 + [c], n_k=3)
    pts = np.array([[-0.0625 if j <= 6 else x_c, VOXEL * j, VOXEL] for j in range(1, 12)])
    return ct, pts, np.tile([-1.0, 0.0, 0.0], (11, 1))


@pytest.mark.parametrize("leaves, share_at_10", [
    # stopped by the fall after 3050 HU: share 1 from its stop on, the median at sample 10 is 1
    (False, 1.0),
    # leaving the CT: the profile keeps its highest reading, 3050 / 3025, which is the median at sample 10
    (True, 3050.0 / 3025.0),
])
def test_a_profile_past_its_stop_holds_its_plateau(leaves, share_at_10):
    ct, pts, inward = _stop_ct(leaves)
    sigma, top = po._tissue_blur(ct, pts, inward, np.zeros(11), metal_hu=3000.0, blur_mm=0.8, method="nearest")
    assert top == pytest.approx(3000.0, abs=1e-6)
    v0, v1 = 1.0 - 0.8, 1.0 - share_at_10
    assert sigma == pytest.approx(9 * 0.125 + 0.125 * (v0 - (1.0 - 0.8413)) / (v0 - v1), abs=1e-9)


def test_a_dip_of_more_than_two_percent_of_a_small_rise_stops_the_profile():
    """Nearest readings 0.5 HU above a 0 HU tissue (samples 0-1), then 0.485 HU (2-5), then 3000 HU: the dip of
    0.015 HU is more than 2 % of the 0.5 HU risen so far, so each profile stops at sample 2 with a plateau of
    0.5 HU, not half the 3000 HU metal: none counts (blur None, plateau NaN). With 0.495 HU (a 1 % dip) they go on
    to 3000 HU and count."""
    for dip, counts in ((0.485, False), (0.495, True)):
        ct, pts, inward, t = _profiles_ct([0.5, dip, 3000.0], 0.0, n_rows=6)
        sigma, top = po._tissue_blur(ct, pts - [0.0625, 0.0, 0.0], inward, t, metal_hu=3000.0, blur_mm=0.8,
                                     method="nearest")
        if counts:
            # shares 0.495 / 3000 up to sample 5, then 1: the crossing between samples 5 and 6
            v0 = 1.0 - dip / 3000.0
            assert top == pytest.approx(3000.0, abs=1e-6)
            assert sigma == pytest.approx(5 * 0.125 + 0.125 * (v0 - (1.0 - 0.8413)) / v0, abs=1e-6)
        else:
            assert sigma is None and math.isnan(top)
