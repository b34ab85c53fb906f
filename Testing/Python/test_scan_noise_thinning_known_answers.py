"""Which implant points the noise measurement keeps away from: at most 600, evenly spread over their order.

More than 600 implant points are thinned before the distances are computed (a stem's surface has tens of
thousands of vertices 1-2 mm apart, far closer than the 20 mm margin): the points at indices
``floor(k (N - 1) / 599)``, k = 0..599, the first and the last included. Of 1200 points that is every
second one (0, 2, ..., 1196) and the last (1199); of 601 points every one but index 599.

Each test puts one implant point in the middle of a soft-tissue CT (so the cubes within 20 mm of it are
left out) and the others far away, and checks whether the cubes near that point were left out.
"""

from __future__ import annotations

import numpy as np
import pytest
from ImplantBoneContactLib.scan_noise import MAX_BLOCKS, scan_noise
from ImplantBoneContactLib.volume import Volume

NEAR = np.array([10.0, 10.0, 10.0])  # the middle of the 20 mm CT: every cube centre is within 14 mm of it


def _ct():
    rng = np.random.default_rng(21)
    return Volume(array=40.0 + 10.0 * rng.standard_normal((20, 20, 20)), ijk_to_ras=np.eye(4))


def _points(n, near_index):
    """``n`` points 1 km away (1 mm apart), except the one at ``near_index``, in the CT's middle."""
    pts = np.column_stack([1000.0 + np.arange(n), np.full(n, 1000.0), np.full(n, 1000.0)])
    pts[near_index] = NEAR
    return pts


def test_the_near_point_alone_leaves_out_every_cube_and_far_points_none():
    ct = _ct()
    assert scan_noise(ct, NEAR[None, :])["n_blocks"] == 0
    assert scan_noise(ct, _points(1200, 0)[1:])["n_blocks"] == MAX_BLOCKS


@pytest.mark.parametrize(
    ("n", "near_index", "kept"),
    [
        (1200, 0, True),  # the first point is always kept
        (1200, 1, False),  # every second point of 1200: odd indices are not kept
        (1200, 2, True),
        (1200, 600, True),
        (1200, 601, False),
        (1200, 1198, False),
        (1200, 1199, True),  # the last point is always kept
        (601, 598, True),  # 601 points: one is dropped, index 599 (599 * 600 / 599 = 600)
        (601, 599, False),
        (601, 600, True),
        (600, 599, True),  # 600 points or fewer: all kept
        (600, 301, True),
        (7, 3, True),
    ],
)
def test_implant_points_are_thinned_to_600_evenly_spread_over_their_order(n, near_index, kept):
    out = scan_noise(_ct(), _points(n, near_index))
    assert out["n_blocks"] == (0 if kept else MAX_BLOCKS)
