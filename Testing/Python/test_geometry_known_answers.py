"""Known answers for the computational helpers of registration, segmentation and cohorts: rotations, the
moments of a box, principal axes, surface sampling, block means, signed distances, connected components,
cavities, row matching, shards and the cohort's zone summary. Small inputs built here; milliseconds each."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from ImplantBoneContactLib import InputError
from ImplantBoneContactLib import cohort as co
from ImplantBoneContactLib import register as rg
from ImplantBoneContactLib import segment as sg


def _box(lo, hi, inward=False):
    """A closed triangulated box (8 corners, 12 outward triangles) from corner ``lo`` to ``hi``."""
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    c = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    # corner index = 4 * ix + 2 * iy + iz
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    faces = []
    for a, b, cc, d in quads:
        faces += [(a, b, cc), (a, cc, d)]
    faces = np.array(faces)
    return c, (faces[:, ::-1] if inward else faces)


# ----------------------------------------------------------------------------- register


def test_rodrigues_turns_about_the_axis_by_the_angle():
    r = rg._rodrigues(np.array([0.0, 0.0, math.pi / 2]))
    assert np.allclose(r, [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    w = np.array([1.0, 2.0, 2.0]) / 3.0 * 0.7  # 0.7 rad about (1, 2, 2) / 3
    r = rg._rodrigues(w)
    k = w / 0.7
    assert np.allclose(r @ k, k) and np.allclose(r @ r.T, np.eye(3)) and np.linalg.det(r) == pytest.approx(1.0)
    v = np.array([2.0, -1.0, 0.0]) / math.sqrt(5.0)  # perpendicular to k
    assert float(v @ r @ v) == pytest.approx(math.cos(0.7))
    assert np.allclose(np.cross(v, r @ v), math.sin(0.7) * k)
    assert np.array_equal(rg._rodrigues(np.zeros(3)), np.eye(3))
    assert np.array_equal(rg._rodrigues(np.array([1e-13, 0.0, 0.0])), np.eye(3))
    assert np.allclose(rg._rodrigues(np.array([1e-9, 0.0, 0.0])), np.eye(3), atol=1e-8)


def test_rot_x_and_apply():
    assert np.allclose(rg._rot_x(90.0), [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)
    assert np.allclose(rg._rot_x(30.0)[1:, 1:], [[math.cos(math.radians(30)), -0.5], [0.5, math.cos(math.radians(30))]])
    m = np.eye(4)
    m[:3, :3] = rg._rot_x(90.0)
    m[:3, 3] = [1.0, 2.0, 3.0]
    assert np.allclose(rg._apply(m, np.array([[0.0, 1.0, 0.0], [5.0, 0.0, 1.0]])), [[1.0, 2.0, 4.0], [6.0, 1.0, 3.0]])


@pytest.mark.parametrize("inward", [False, True])
def test_solid_moments_of_a_box(inward):
    pts, faces = _box([10.0, -4.0, 100.0], [14.0, 2.0, 120.0], inward)  # 4 x 6 x 20 mm
    vol, centroid, central = rg.solid_moments(pts, faces)
    assert vol == pytest.approx(480.0, rel=1e-12)
    assert np.allclose(centroid, [12.0, -1.0, 110.0], atol=1e-9)
    # Central second moment per unit volume of a box: edge^2 / 12 on the diagonal, 0 off it.
    assert np.allclose(central, np.diag([16.0, 36.0, 400.0]) / 12.0, atol=1e-9)


def test_solid_moments_of_an_off_centre_box_pair():
    # Two boxes 1 x 1 x 1 at x = 0..1 and x = 4..5 (one mesh): volume 2, centroid x = 2.5, variance along x
    # = 1/12 + 2^2 = 4.0833.
    p1, f1 = _box([0, 0, 0], [1, 1, 1])
    p2, f2 = _box([4, 0, 0], [5, 1, 1])
    vol, centroid, central = rg.solid_moments(np.vstack([p1, p2]), np.vstack([f1, f2 + 8]))
    assert vol == pytest.approx(2.0)
    assert np.allclose(centroid, [2.5, 0.5, 0.5])
    assert central[0, 0] == pytest.approx(1.0 / 12.0 + 4.0) and central[1, 1] == pytest.approx(1.0 / 12.0)
    assert abs(central[0, 1]) < 1e-12


def test_principal_axes_largest_first_and_right_handed():
    v = rg._principal_axes(np.diag([1.0, 3.0, 2.0]))
    assert np.allclose(np.abs(v), [[0, 0, 1], [1, 0, 0], [0, 1, 0]])
    assert np.linalg.det(v) == pytest.approx(1.0)
    r = rg._rodrigues(np.array([0.3, -0.2, 0.5]))
    cov = r @ np.diag([9.0, 4.0, 1.0]) @ r.T
    v = rg._principal_axes(cov)
    for col in range(3):
        assert abs(float(v[:, col] @ r[:, col])) == pytest.approx(1.0)
    assert np.linalg.det(v) == pytest.approx(1.0)
    # A left-handed eigenvector set is turned right-handed by flipping the third axis only.
    for _ in range(3):
        cov = np.diag([5.0, 3.0, 1.0])
        v = rg._principal_axes(cov)
        assert np.linalg.det(v) == pytest.approx(1.0)
        assert np.allclose(np.abs(v), np.eye(3))


def test_surface_samples_lie_on_the_box_by_area_with_outward_normals():
    pts, faces = _box([0.0, 0.0, 0.0], [1.0, 1.0, 10.0])
    for inward in (False, True):
        f = faces[:, ::-1] if inward else faces
        p, n = rg.surface_samples(pts, f, 4000, seed=3)
        assert p.shape == (4000, 3) and n.shape == (4000, 3)
        assert np.allclose(np.linalg.norm(n, axis=1), 1.0)
        # On the surface: one coordinate at a face.
        on = np.isclose(p[:, 0], 0) | np.isclose(p[:, 0], 1) | np.isclose(p[:, 1], 0) | np.isclose(p[:, 1], 1) \
            | np.isclose(p[:, 2], 0) | np.isclose(p[:, 2], 10)
        assert on.all()
        assert ((p >= -1e-9) & (p <= [1 + 1e-9, 1 + 1e-9, 10 + 1e-9])).all()
        # Outward: the normal points away from the box's axis/centre.
        centre = np.array([0.5, 0.5, 5.0])
        assert (np.einsum("ij,ij->i", p - centre, n) > 0).all()
        # By area: the two end caps are 2 of 42 mm2.
        caps = np.isclose(p[:, 2], 0) | np.isclose(p[:, 2], 10)
        assert caps.mean() == pytest.approx(2.0 / 42.0, abs=0.012)
        # Spread over each triangle, not only at its corners or edges: the x = 0 face's points fill it.
        side = np.isclose(p[:, 0], 0.0)
        assert 0.4 < p[side, 1].mean() < 0.6 and 4.0 < p[side, 2].mean() < 6.0
        assert np.std(p[side, 1]) == pytest.approx(1.0 / math.sqrt(12.0), rel=0.1)
    p1, _ = rg.surface_samples(pts, faces, 50, seed=1)
    p2, _ = rg.surface_samples(pts, faces, 50, seed=1)
    p3, _ = rg.surface_samples(pts, faces, 50, seed=2)
    assert np.array_equal(p1, p2) and not np.array_equal(p1, p3)
    p0, _ = rg.surface_samples(pts, faces, 50)
    assert np.array_equal(p0, rg.surface_samples(pts, faces, 50, seed=0)[0])


def test_block_mean():
    a = np.arange(4 * 4 * 6, dtype=np.int16).reshape(4, 4, 6)
    m = rg._block_mean(a, (2, 2, 3))
    assert m.shape == (2, 2, 2) and m.dtype == np.float32
    assert m[0, 0, 0] == pytest.approx(a[:2, :2, :3].mean())
    assert m[1, 0, 1] == pytest.approx(a[2:, :2, 3:].mean())
    # Ragged edges are dropped.
    m = rg._block_mean(np.ones((5, 3, 7)), (2, 2, 3))
    assert m.shape == (2, 1, 2) and np.allclose(m, 1.0)


def test_signed_distance_is_zero_half_way_between_voxels():
    mask = np.zeros((3, 3, 12), bool)
    mask[:, :, :6] = True  # a slab: inside at i <= 5
    d = rg._signed_distance(mask, (1.0, 1.0, 2.0))
    assert d.dtype == np.float32
    row = d[1, 1]
    # Along i the voxels are 2 mm; the edge lies between voxel 5 and 6. Mean spacing 4/3 mm shifts by 2/3 mm.
    shift = 0.5 * (4.0 / 3.0)
    assert row[6] == pytest.approx(2.0 - shift)  # first outside voxel: 2 mm from the object's last voxel centre
    assert row[5] == pytest.approx(-shift)
    assert row[2] == pytest.approx(-6.0 - shift)
    assert row[9] == pytest.approx(8.0 - shift)


# ----------------------------------------------------------------------------- segment


def test_bounding_box():
    m = np.zeros((6, 7, 8), bool)
    m[2, 3, 4] = m[4, 1, 6] = True
    assert sg.bounding_box(m) == (slice(2, 5), slice(1, 4), slice(4, 7))
    m = np.zeros((6, 7, 8), bool)
    m[0, 0, 0] = m[5, 6, 7] = True
    assert sg.bounding_box(m) == (slice(0, 6), slice(0, 7), slice(0, 8))


def test_label_components_largest_first():
    m = np.zeros((10, 10, 10), bool)
    m[1:3, 1:3, 1:3] = True  # 8 voxels
    m[5:8, 5:8, 5:8] = True  # 27 voxels
    m[1, 8, 8] = True  # 1 voxel
    m[3, 3, 3] = True  # touches the first only at a corner: a component of its own (face connectivity)
    labels, sizes, box = sg.label_components(m)
    assert box == (slice(1, 8), slice(1, 9), slice(1, 9))
    assert labels.shape == (7, 8, 8) and labels.dtype == np.int32
    assert sizes.tolist() == [27, 8, 1, 1]
    assert (labels[4:7, 4:7, 4:7] == 1).all() and (labels[0:2, 0:2, 0:2] == 2).all()
    assert labels[2, 2, 2] in (3, 4) and labels[0, 7, 7] in (3, 4) and labels[2, 2, 2] != labels[0, 7, 7]
    assert (labels > 0).sum() == m.sum()


def test_cavities_are_enclosed_voids_only():
    kept = np.zeros((7, 7, 7), bool)
    kept[1:6, 1:6, 1:6] = True
    kept[2:5, 2:5, 2:5] = False  # a 27-voxel void inside
    cav = sg._cavities(kept)
    assert cav.sum() == 27 and cav[2:5, 2:5, 2:5].all()
    open_ = kept.copy()
    open_[3, 3, 1] = False  # a tunnel from the void to the border: no cavity
    assert sg._cavities(open_).sum() == 0
    corner = kept.copy()
    corner[2:5, 2:5, 2:5] = True
    corner[3, 3, 3] = False
    assert sg._cavities(corner).sum() == 1


# ----------------------------------------------------------------------------- cohort


def test_match_rows():
    a = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    b = a[[2, 0, 1]]
    idx = co._match_rows(a, b)
    assert idx.tolist() == [1, 2, 0] and np.array_equal(b[idx], a)
    assert co._match_rows(a, a).tolist() == [0, 1, 2]
    assert co._match_rows(a, b[:2]) is None  # another shape
    c = b.copy()
    c[0, 0] += 1e-9
    assert co._match_rows(a, c) is None  # exact coordinates only
    d = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0], [6.0, 7.0, 8.0]])
    assert co._match_rows(d, a) is None  # not a permutation
    assert co._match_rows(a.astype(np.float32), b).tolist() == [1, 2, 0]
    assert co._match_rows(np.asfortranarray(a), b).tolist() == [1, 2, 0]


@pytest.mark.parametrize("value, expect", [(None, None), ("1/1", (1, 1)), ("2/3", (2, 3)), ((3, 3), (3, 3)),
                                           ([1, 4], (1, 4)), (" 2 / 5 ", (2, 5))])
def test_parse_shard(value, expect):
    assert co.parse_shard(value) == expect


@pytest.mark.parametrize("value", ["0/3", "4/3", "1/0", "a/3", "1", "1/2/3", (1,), 5, "-1/2"])
def test_parse_shard_refuses(value):
    with pytest.raises(InputError, match=r"--shard must be I/N with 1 <= I <= N"):
        co.parse_shard(value)


def test_digest_is_order_free_and_content_bound():
    assert co._digest({"a": 1, "b": [1, 2]}) == co._digest({"b": [1, 2], "a": 1})
    assert co._digest({"a": 1}) != co._digest({"a": 2})
    assert len(co._digest({"p": co.Path("/x")})) == 64
    import hashlib

    assert co._digest({"b": 1, "a": None}) == hashlib.sha256(b'{"a": null, "b": 1}').hexdigest()


def test_resolve_path_value(tmp_path):
    (tmp_path / "ct.nrrd").write_text("x")
    assert co._resolve_path_value("ct.nrrd", tmp_path) == str((tmp_path / "ct.nrrd").resolve())
    assert co._resolve_path_value("missing.nrrd", tmp_path) == "missing.nrrd"
    assert co._resolve_path_value("", tmp_path) == ""
    assert co._resolve_path_value("/abs/x.nrrd", tmp_path) == "/abs/x.nrrd"


def test_summarize_zones_by_hand():
    zones = pd.DataFrame({
        "case": ["a", "b", "c", "d", "a", "b", "c", "d"],
        "zone": ["1", "1", "1", "1", "all", "all", "all", "all"],
        "region": ["lateral", "lateral", "lateral", "lateral", "stem", "stem", "stem", "stem"],
        "frac_cortical": [0.1, 0.2, 0.3, np.nan, 0.5, 0.5, 0.5, 0.5],
        "hu_mean": [100.0, 200.0, 400.0, 700.0, np.nan, np.nan, np.nan, 10.0],
        "hu_std": [1.0] * 8,
    })
    s = co.summarize_zones(zones)
    assert list(s.columns) == ["zone", "region", "quantity", "n", "mean", "sd", "median", "q25", "q75", "min", "max"]
    assert s[["zone", "quantity"]].values.tolist() == [["1", "frac_cortical"], ["1", "hu_mean"],
                                                       ["all", "frac_cortical"], ["all", "hu_mean"]]
    r = s.iloc[0]
    assert r["region"] == "lateral" and r["n"] == 3
    assert r["mean"] == pytest.approx(0.2) and r["sd"] == pytest.approx(0.1) and r["median"] == pytest.approx(0.2)
    assert r["q25"] == pytest.approx(0.15) and r["q75"] == pytest.approx(0.25)
    assert r["min"] == pytest.approx(0.1) and r["max"] == pytest.approx(0.3)
    r = s.iloc[1]  # 100, 200, 400, 700
    assert r["n"] == 4 and r["mean"] == 350.0 and r["median"] == 300.0 and r["q25"] == 175.0 and r["q75"] == 475.0
    assert r["sd"] == pytest.approx(np.std([100, 200, 400, 700], ddof=1))
    r = s.iloc[3]  # one case
    assert r["n"] == 1 and r["mean"] == 10.0 and math.isnan(r["sd"]) and r["min"] == r["max"] == r["median"] == 10.0
    assert s.iloc[2]["region"] == "stem" and s.iloc[2]["sd"] == 0.0


def test_summarize_zones_unsampled_and_empty():
    zones = pd.DataFrame({"zone": ["3", "3"], "region": ["r", "r"], "hu_mean": [np.nan, np.nan]})
    s = co.summarize_zones(zones)
    r = s.iloc[0]
    assert r["quantity"] == "hu_mean" and r["n"] == 0
    for k in ("mean", "sd", "median", "q25", "q75", "min", "max"):
        assert math.isnan(r[k]), k
    e = co.summarize_zones(pd.DataFrame(columns=["zone", "region", "hu_mean"]))
    assert e.empty and list(e.columns)[:4] == ["zone", "region", "quantity", "n"]


def test_cavities_join_the_border_only_through_faces():
    # The shell's corner voxel removed: the void touches that voxel only at a corner, so no face-connected path
    # joins it to the border; it stays a cavity (and the open corner voxel is not one).
    kept = np.zeros((7, 7, 7), bool)
    kept[1:6, 1:6, 1:6] = True
    kept[2:5, 2:5, 2:5] = False
    kept[1, 1, 1] = False
    cav = sg._cavities(kept)
    assert cav.sum() == 27 and not cav[1, 1, 1]


def test_match_rows_converts_both_sides_and_refuses_a_missing_row():
    a = np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [2.0, 2.0, 2.0]])
    assert co._match_rows(a, a[[1, 2, 0]].astype(np.float32)).tolist() == [2, 0, 1]
    assert co._match_rows(a, np.array([[0.0, 0.0, 0.0], [9.0, 9.0, 9.0], [2.0, 2.0, 2.0]])) is None


def test_summarize_zones_of_one_and_two_cases():
    zones = pd.DataFrame({"zone": ["1", "2", "2"], "region": ["lateral", "middle", "middle"],
                          "hu_mean": [300.0, 100.0, 200.0]})
    s = co.summarize_zones(zones).set_index("zone")
    assert s.loc["1", "region"] == "lateral" and s.loc["1", "n"] == 1 and math.isnan(s.loc["1", "sd"])
    assert s.loc["2", "n"] == 2 and s.loc["2", "sd"] == pytest.approx(math.sqrt(5000.0))
    assert s.loc["2", "q25"] == 125.0 and s.loc["2", "q75"] == 175.0


def test_solid_moments_far_from_the_origin_keep_their_precision():
    # A turned 1 x 2 x 3 mm box at y = 100 m, z = 200 m: about its own centre the sums keep about 1e-11 of
    # precision; about the origin, or a point far from the box, the second moments lose it all (an error of
    # tens to thousands of mm^2; 0.01 mm^2 even about a point 50 m away along one axis only).
    r = rg._rodrigues(np.array([0.3, -0.5, 0.7]))
    pts, faces = _box([0.0, 0.0, 0.0], [1.0, 2.0, 3.0])
    centre = np.array([0.1, 1e5 + 0.3, 2e5 + 0.7])
    pts = pts @ r.T + centre
    vol, centroid, central = rg.solid_moments(pts, faces)
    assert vol == pytest.approx(6.0, rel=1e-9)
    assert np.allclose(centroid, centre + r @ [0.5, 1.0, 1.5], rtol=0, atol=1e-6)
    assert np.allclose(central, r @ np.diag([1.0, 4.0, 9.0]) @ r.T / 12.0, rtol=0, atol=1e-8)


def test_principal_axes_are_right_handed_for_any_rotation():
    rng = np.random.default_rng(5)
    for _ in range(40):
        r = rg._rodrigues(rng.normal(size=3))
        v = rg._principal_axes(r @ np.diag([9.0, 4.0, 1.0]) @ r.T)
        assert np.linalg.det(v) > 0.0


def test_block_mean_with_a_different_factor_per_axis():
    a = np.arange(6 * 4 * 2, dtype=float).reshape(6, 4, 2)
    m = rg._block_mean(a, (3, 2, 1))
    assert m.shape == (2, 2, 2)
    assert m[1, 0, 1] == pytest.approx(a[3:6, 0:2, 1].mean())
    assert m[0, 1, 0] == pytest.approx(a[0:3, 2:4, 0].mean())


def test_solid_moments_of_two_unequal_boxes():
    # Boxes [0, 1] and [2, 4] along x (volumes 1 and 2), 1 x 1 across: the centroid is not the bounding box's
    # centre. x: (0.5 * 1 + 3 * 2) / 3; variance along x: each box's own (edge^2 / 12) plus its offset squared,
    # weighted by volume.
    p1, f1 = _box([0, 0, 0], [1, 1, 1])
    p2, f2 = _box([2, 0, 0], [4, 1, 1])
    vol, centroid, central = rg.solid_moments(np.vstack([p1, p2]), np.vstack([f1, f2 + 8]))
    cx = 6.5 / 3.0
    assert vol == pytest.approx(3.0)
    assert np.allclose(centroid, [cx, 0.5, 0.5], atol=1e-12)
    var_x = (1.0 * (1.0 / 12.0 + (0.5 - cx) ** 2) + 2.0 * (4.0 / 12.0 + (3.0 - cx) ** 2)) / 3.0
    assert np.allclose(central, np.diag([var_x, 1.0 / 12.0, 1.0 / 12.0]), atol=1e-12)


def test_surface_samples_of_a_small_box_have_unit_outward_normals():
    # A 0.5 mm box: triangle cross products of 0.25 mm2 and a volume of 0.125 mm3 (below 1).
    pts, faces = _box([0.0, 0.0, 0.0], [0.5, 0.5, 0.5])
    p, n = rg.surface_samples(pts, faces, 200, seed=4)
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0, atol=1e-12)
    assert (np.einsum("ij,ij->i", p - 0.25, n) > 0).all()
