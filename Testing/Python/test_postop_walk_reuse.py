"""The vertices' walk past the metal done once per analysis (``postop.WalkReuse``).

The detection, the edge measurement and the sampling of one analysis walk the same vertices; inside a
``WalkReuse`` block the first walk is kept and returned for the same CT, point and normal arrays and method.
Each test counts the walks actually done and compares what is returned with walks done afresh.
"""

from __future__ import annotations

import numpy as np
import pytest
from ibc_helpers import blurred_metal_plane_ct, plane_points
from ImplantBoneContactLib import AnalysisParameters
from ImplantBoneContactLib import postop as po


@pytest.fixture
def counted(monkeypatch):
    """The number of walks done (calls of ``postop._walk``)."""
    calls = []
    real = po._walk

    def walk(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(po, "_walk", walk)
    return calls


def _same_walk(a, b):
    for name in ("offsets", "hu", "inside", "inside_max", "floor", "edge_mm", "in_metal"):
        assert np.array_equal(getattr(a, name), getattr(b, name), equal_nan=True), name
    assert a.start == b.start


def test_the_walk_does_not_depend_on_its_metal_hu_and_read_start():
    # What lets the kept walk stand for a walk asked with another metal HU or read start.
    ct = blurred_metal_plane_ct(sigma=0.6, tissue=1000.0)
    pts, nrm = plane_points(n=4)
    _same_walk(po._walk(ct, pts, nrm, "trilinear", None), po._walk(ct, pts, nrm, "trilinear", 3500.0, 2.0))


def test_walks_are_kept_only_inside_a_block_for_the_same_objects(counted):
    ct = blurred_metal_plane_ct(sigma=0.6)
    pts, nrm = plane_points(n=3)
    # outside a block: every call walks
    po._walk_reused(ct, pts, nrm, "trilinear", None)
    po._walk_reused(ct, pts, nrm, "trilinear", None)
    assert len(counted) == 2
    reuse = po.WalkReuse()
    with reuse:
        first = po._walk_reused(ct, pts, nrm, "trilinear", None)
        assert po._walk_reused(ct, pts, nrm, "trilinear", 3000.0, 0.8) is first
        assert len(counted) == 3
        # another array with the same values, another method, another CT: walked again
        po._walk_reused(ct, pts.copy(), nrm, "trilinear", None)
        po._walk_reused(ct, pts, nrm.copy(), "trilinear", None)
        po._walk_reused(ct, pts, nrm, "nearest", None)
        po._walk_reused(blurred_metal_plane_ct(sigma=0.6), pts, nrm, "trilinear", None)
        assert len(counted) == 7
    assert po._active_walks() is None
    po._walk_reused(ct, pts, nrm, "trilinear", None)
    assert len(counted) == 8
    # a second block of the same object finds the walk; another object does not
    with reuse:
        assert po._walk_reused(ct, pts, nrm, "trilinear", None) is first
    with po.WalkReuse():
        assert po._walk_reused(ct, pts, nrm, "trilinear", None) is not first
        # nested: the inner block has its own walks, and leaving it gives back the outer one's
        with reuse:
            assert po._walk_reused(ct, pts, nrm, "trilinear", None) is first
        inner = po._active_walks()
        assert inner is not None and inner is not reuse._walks
    assert po._active_walks() is None
    assert len(counted) == 9
    _same_walk(first, po._walk(ct, pts, nrm, "trilinear", None))


def test_assessment_and_sampling_walk_the_vertices_once(counted):
    # assess walks the vertices three times (twice measuring the edge, once itself) and the sampling once more:
    # inside one WalkReuse one walk, with the same assessment and samples as four walks outside it.
    ct = blurred_metal_plane_ct(sigma=0.8, tissue=1000.0, n_jk=20)
    ct.array[:, :, 10:] += np.random.default_rng(5).normal(0.0, 40.0, ct.array[:, :, 10:].shape).astype(np.float32)
    pts, nrm = plane_points(n=11, half=3.5)
    areas = np.ones(len(pts))
    fresh = po.assess(ct, pts, nrm, areas, AnalysisParameters())
    fresh_s = po.sample_metal_aware(ct, pts, nrm, fresh.edge)
    assert len(counted) == 4
    reuse = po.WalkReuse()
    with reuse:
        kept = po.assess(ct, pts, nrm, areas, AnalysisParameters())
    with reuse:
        kept_s = po.sample_metal_aware(ct, pts, nrm, kept.edge)
    assert len(counted) == 5
    assert fresh.ct_kind == kept.ct_kind == po.POST_OPERATIVE and fresh.metal_aware and kept.metal_aware
    assert fresh.to_dict() == kept.to_dict() and fresh.warnings == kept.warnings
    for name in ("hu", "inside_ct", "bone_start_mm", "reliable", "edge_mm"):
        assert np.array_equal(getattr(fresh_s, name), getattr(kept_s, name), equal_nan=True), name
    assert kept_s.reliable.any()


def test_blocks_in_two_threads_neither_end_nor_keep_each_others(counted):
    """Analyses may run side by side in threads. Thread A enters its block, then thread B enters its own, A
    leaves first and B after: B still reuses its walk after A has left, and once both have left no walk is kept
    in either thread (a block entered last and left last must not hand back the other thread's walks, which would
    keep that thread's CT alive and every later walk with it)."""
    import threading

    ct = blurred_metal_plane_ct(sigma=0.6)
    pts, nrm = plane_points(n=3)
    entered_a, entered_b, left_a, left_b = (threading.Event() for _ in range(4))
    seen = {}

    def walks_for_two_calls() -> int:
        n = len(counted)
        po._walk_reused(ct, pts, nrm, "trilinear", None)
        po._walk_reused(ct, pts, nrm, "trilinear", None)
        return len(counted) - n

    def thread_a():
        with po.WalkReuse():
            entered_a.set()
            entered_b.wait(10)
        left_a.set()
        left_b.wait(10)
        seen["a_after"] = walks_for_two_calls()

    def thread_b():
        entered_a.wait(10)
        with po.WalkReuse():
            entered_b.set()
            left_a.wait(10)
            seen["b_inside"] = walks_for_two_calls()
        seen["b_after"] = po._active_walks()
        left_b.set()

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert seen == {"b_inside": 1, "b_after": None, "a_after": 2}
    assert po._active_walks() is None
