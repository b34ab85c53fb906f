"""Limits of the stem frame met exactly, on point sets built here whose answer follows from the construction.

The automatic frame reads the side from where the implant lies in a wide CT (300 mm or more from right to
left, implant 40 mm or more from its centre), and the neck from the proximal 30 % of the length (a neck whose
strength, the mean offset from the axis over the mean distance, is below 0.15 counts as none). Each test puts
the input exactly on such a limit, where the limit is inclusive or exclusive as documented, and just beside it.
"""

from __future__ import annotations

import numpy as np
import pytest
from ImplantBoneContactLib.errors import InputError
from ImplantBoneContactLib.frame import _neck_direction, _side_from_position

AXIS = np.array([0.0, 0.0, -1.0])  # proximal to distal: the height above the tip is z
TIP = np.zeros(3)


def test_side_is_read_from_40_mm_off_centre_in_a_ct_300_mm_wide():
    bounds = np.array([[-150.0, -20.0, 0.0], [150.0, 20.0, 100.0]])  # 300 mm wide, centre x = 0
    w = np.ones(2)
    at = np.array([[40.0, 0.0, 0.0], [40.0, 5.0, 50.0]])  # centroid exactly 40 mm right of the centre
    assert _side_from_position(at, w, bounds) == ("right", 40.0)
    assert _side_from_position(at * [-1.0, 1.0, 1.0], w, bounds) == ("left", -40.0)
    below = at.copy()
    below[:, 0] = np.nextafter(40.0, 0.0)
    side, offset = _side_from_position(below, w, bounds)
    assert side is None and offset == np.nextafter(40.0, 0.0)
    assert _side_from_position(at + [0.5, 0.0, 0.0], w, bounds) == ("right", 40.5)
    # the centre is the middle of the right-left extent, whatever the other extents
    shifted = np.array([[-50.0, -900.0, -400.0], [250.0, 10.0, 0.0]])  # centre x = 100
    assert _side_from_position(at + [100.0, 0.0, 0.0], w, shifted) == ("right", 40.0)
    assert _side_from_position(at + [19.0, 0.0, 0.0], w, shifted) == ("left", -41.0)  # x = 59: 41 mm left of 100


def test_side_needs_a_ct_300_mm_from_right_to_left():
    w = np.ones(1)
    pts = np.array([[100.0, 0.0, 0.0]])  # 100 mm right of the centre x = 0
    wide = np.array([[-150.0, -20.0, 0.0], [150.0, 20.0, 100.0]])
    assert _side_from_position(pts, w, wide) == ("right", 100.0)
    narrow = np.array([[-149.9, -20.0, 0.0], [150.0, 20.0, 100.0]])
    assert _side_from_position(pts, w, narrow)[0] is None
    # a CT 200 mm wide but 1000 mm deep (AP) or tall says nothing about the side
    deep = np.array([[-100.0, -990.0, -900.0], [100.0, 10.0, 100.0]])
    side, offset = _side_from_position(pts, w, deep)
    assert side is None and offset == 100.0
    deep_left = np.array([[-100.0, -400.0, -400.0], [100.0, 400.0, 400.0]])
    assert _side_from_position(-pts, w, deep_left) == (None, -100.0)


def _ring(height, weights, offsets):
    """Points at ``height`` above the tip, ``offsets`` mm along +x from the axis, with ``weights``."""
    pts = np.array([[x, 0.0, height] for x in offsets])
    return pts, np.asarray(weights, dtype=float)


def test_neck_band_starts_above_seven_tenths_of_the_length():
    # Length 10: the band is h > 7. Points at exactly h = 7 are outside it, so the neck is read from the
    # points at h = 9 alone: one at +x with weight 3 and one at -x with weight 1: mean offset (3 - 1) / 4 =
    # 0.5 mm along +x, mean distance 1: strength 0.5, direction +x. The points at h = 7 lie at -x with
    # weight 100: counted, they would turn the neck to -x.
    p9, w9 = _ring(9.0, [3.0, 1.0], [1.0, -1.0])
    p7, w7 = _ring(7.0, [100.0], [-1.0])
    base, wb = _ring(0.0, [1.0], [0.0])
    pts = np.concatenate([base, p7, p9])
    w = np.concatenate([wb, w7, w9])
    assert 0.7 * 10.0 == 7.0  # the limit is exactly the height of those points
    direction, strength = _neck_direction(pts, w, TIP, AXIS, 10.0)
    np.testing.assert_array_equal(direction, [1.0, 0.0, 0.0])
    assert strength == 0.5
    # nothing above h = 7: no neck, strength 0
    assert _neck_direction(np.concatenate([base, p7]), np.concatenate([wb, w7]), TIP, AXIS, 10.0) == (None, 0.0)


def test_neck_of_strength_exactly_0_15_counts():
    # 23 units of area 1 mm on +x and 17 on -x: mean offset 6 / 40 = 0.15 mm, mean distance 1 mm:
    # strength 0.15 exactly, which is a neck (below 0.15 is none).
    pts, w = _ring(9.0, [23.0, 17.0], [1.0, -1.0])
    direction, strength = _neck_direction(pts, w, TIP, AXIS, 10.0)
    assert strength == 0.15
    np.testing.assert_array_equal(direction, [1.0, 0.0, 0.0])
    # 22.9 and 17.1: strength 0.145, none
    pts, w = _ring(9.0, [22.9, 17.1], [1.0, -1.0])
    direction, strength = _neck_direction(pts, w, TIP, AXIS, 10.0)
    assert direction is None and abs(strength - 0.145) < 1e-12


# The automatic cut on a box-shaped stem whose medial face is a broken line, so the medial edge of every
# plane of the 160 is known exactly: the stem runs from the tip at z = 0 to z = 160 (axis -z), the lateral
# face is x = -8, the anterior and posterior faces y = +-8, the medial face x = m(z), straight between
# these heights (z, m):
MEDIAL_EDGE = [
    (0.0, 8.0),
    (32.0, 8.0), (36.0, 16.0),  # slope 2 below mid-length: not the neck, the search starts at 80
    (80.0, 16.0), (88.0, 20.0),  # slope 0.5: the calcar curve, too gentle
    (96.0, 28.0),  # slope exactly 1 over 8 mm: "more than 1 mm per mm" is not met
    (100.0, 28.0), (103.0, 32.5),  # slope 1.5 over 3 mm: 4.5 mm of rise, more than the 4 mm window
    (124.0, 32.5), (144.0, 72.5),  # slope 2: the neck proper
    (160.0, 72.5),
]


def _medial_edge_stem():
    levels = []
    for z, m in MEDIAL_EDGE:
        levels += [(-8.0, -8.0, z), (m, -8.0, z), (m, 8.0, z), (-8.0, 8.0, z)]
    pts = np.array(levels)
    faces = []
    for k in range(len(MEDIAL_EDGE) - 1):
        for s in range(4):
            a, b = 4 * k + s, 4 * k + (s + 1) % 4
            faces += [(a, b, b + 4), (a, b + 4, a + 4)]
    top = 4 * (len(MEDIAL_EDGE) - 1)
    faces += [(0, 2, 1), (0, 3, 2), (top, top + 1, top + 2), (top, top + 2, top + 3)]
    return pts, np.array(faces)


def test_automatic_cut_is_the_first_window_of_4_mm_rising_more_than_1_mm_per_mm_above_mid_length():
    # The planes of the 160 lie at z = 0.5, 1.5, ..., 159.5 (half a spacing in from each end), and the medial
    # edge of a plane is exactly m(z). From z = 80.5 up, the 4 mm window [z, z + 4] rises
    # 0.5 mm per mm at most until 88; exactly 1 mm per mm within 88..96 (not more); over the 3 mm step from
    # 100 to 103 it rises 1.5 x (overlap with [100, 103]), more than 4 mm when the overlap passes 8/3 mm:
    # windows starting after 98.67 mm. The first plane there is z = 99.5: the cut.
    from ImplantBoneContactLib.frame import _automatic_resection

    pts, faces = _medial_edge_stem()
    warnings: list[str] = []
    point, normal = _automatic_resection(pts, faces, np.zeros(3), AXIS, np.array([1.0, 0.0, 0.0]), 160.0, warnings)
    np.testing.assert_array_equal(point, [0.0, 0.0, 99.5])
    np.testing.assert_array_equal(normal, [0.0, 0.0, 1.0])
    assert warnings == []


def test_automatic_cut_without_a_neck_is_at_the_top_with_a_warning():
    # The same box with a straight medial face (x = 8): no window rises; the cut goes to the top plane, 159.5.
    from ImplantBoneContactLib.frame import _automatic_resection

    pts, faces = _medial_edge_stem()
    pts[pts[:, 0] > 0, 0] = 8.0
    warnings: list[str] = []
    point, _ = _automatic_resection(pts, faces, np.zeros(3), AXIS, np.array([1.0, 0.0, 0.0]), 160.0, warnings)
    np.testing.assert_array_equal(point, [0.0, 0.0, 159.5])
    assert warnings == [
        "no neck found above the stem body: the resection plane is put at the proximal end of the model; "
        "give --resection-plane to set it"
    ]


# Point models: a given axis from (0, 0, 100) to the tip at the origin, a given cut at z = 80 and no triangles
# (nothing is sliced: the given axis is not turned round, the cut is not searched). The neck is read from the
# points above 0.7 of the length, here all at z = 100 and 1 mm from the axis, so its strength is
# |sum w x| / sum w: weights a on +x and b on -x give (a - b) / (a + b), exactly, for the weights chosen.
NO_FACES = np.zeros((0, 3), dtype=np.int64)


def _point_model(band, weights, tip_weight=1.0):
    pts = np.array([[0.0, 0.0, 0.0], *[[x, y, 100.0] for x, y in band]])
    return pts, np.array([tip_weight, *weights], dtype=float)


def _given(**kw):
    from ImplantBoneContactLib.frame import FrameOptions

    base = {"axis_points": ((0.0, 0.0, 100.0), (0.0, 0.0, 0.0)), "resection_point": (0.0, 0.0, 80.0),
            "resection_normal": (0.0, 0.0, 1.0)}
    return FrameOptions(**{**base, **kw})


FAINT = "the neck sticks out only a little"


def test_a_neck_of_strength_exactly_0_3_is_not_faint():
    from ImplantBoneContactLib.frame import estimate_frame

    # 13 on +x, 7 on -x: strength 6 / 20 = 0.3, neck toward +x (the patient's right): a left femur
    pts, w = _point_model([(1.0, 0.0), (-1.0, 0.0)], [13.0, 7.0])
    frame, warnings = estimate_frame(pts, NO_FACES, w, _given())
    assert frame.side == "left" and not any(FAINT in m for m in warnings), warnings
    np.testing.assert_array_equal(frame.medial, [1.0, 0.0, 0.0])
    # given --side right against it: at 0.3 the neck still decides (below 0.3 the side would)
    frame, warnings = estimate_frame(pts, NO_FACES, w, _given(side="right"))
    assert frame.side == "left" and frame.zone_reference == "implant"
    assert any(m.startswith("--side right disagrees with the model") for m in warnings), warnings
    # 12.9 and 7.1: strength 0.29, faint: warned, and a given side decides
    pts, w = _point_model([(1.0, 0.0), (-1.0, 0.0)], [12.9, 7.1])
    _, warnings = estimate_frame(pts, NO_FACES, w, _given())
    assert any(FAINT in m for m in warnings)
    frame, _ = estimate_frame(pts, NO_FACES, w, _given(side="right"))
    assert frame.side == "right" and frame.zone_reference == "patient"


def test_faint_neck_warning_gives_the_strength_in_percent():
    from ImplantBoneContactLib.frame import estimate_frame

    # 1204.5 on +x, 795.5 on -x: strength 409 / 2000 = 0.2045, 20.45 %: printed as 20 %
    pts, w = _point_model([(1.0, 0.0), (-1.0, 0.0)], [1204.5, 795.5])
    _, warnings = estimate_frame(pts, NO_FACES, w, _given())
    faint = [m for m in warnings if FAINT in m]
    assert len(faint) == 1 and "(its mean offset is 20% of the proximal surface's distance from the axis)" in faint[0]
    assert "(version 0 degrees)" in faint[0]


def test_a_neck_exactly_60_degrees_from_the_medial_lateral_plane_is_not_warned_about():
    from ImplantBoneContactLib.frame import estimate_frame

    # One neck point at (1, y) with y = 1.7320508075688774 (the double next to sqrt 3): its unit offset has an x
    # of exactly 0.5, 60 degrees from the patient's right; warned only beyond (x below 0.5).
    y = 1.7320508075688774
    r = np.array([1.0, y, 0.0])
    assert (r / np.linalg.norm(r))[0] == 0.5
    pts, w = _point_model([(1.0, y)], [1.0])
    frame, warnings = estimate_frame(pts, NO_FACES, w, _given())
    assert not any("mostly anteriorly or posteriorly" in m for m in warnings), warnings
    assert frame.version_deg == np.degrees(np.arctan2(y, 1.0)) and round(frame.version_deg) == 60
    pts, w = _point_model([(1.0, 1.8)], [1.0])  # 61 degrees
    _, warnings = estimate_frame(pts, NO_FACES, w, _given())
    assert any("the neck points mostly anteriorly or posteriorly (61 degrees from the medial-lateral plane)" in m
               for m in warnings)


def test_medial_point_exactly_0_3_toward_the_patients_right_sets_the_side_and_anterior():
    from ImplantBoneContactLib.frame import estimate_frame

    # The medial point (3, sqrt 91, 50): its unit offset from the axis is (0.3, 0.954, 0) exactly 0.3 toward
    # the patient's right (73 degrees from it), which still tells the side (left femur) against --side right,
    # and the anterior direction is perpendicular to the axis and medial, toward the patient's anterior.
    my = float(np.sqrt(91.0))
    r = np.array([3.0, my, 0.0])
    assert (r / np.linalg.norm(r))[0] == 0.3
    pts, w = _point_model([(1.0, 0.0), (-1.0, 0.0)], [3.0, 1.0])
    frame, warnings = estimate_frame(pts, NO_FACES, w, _given(medial_point=(3.0, my, 50.0), side="right"))
    assert frame.side == "left"
    assert any(m.startswith("--side right disagrees with the medial point (--medial-point), which makes this a left")
               for m in warnings), warnings
    assert frame.provenance["anterior"] == "perpendicular to axis and medial, toward patient anterior"
    np.testing.assert_allclose(frame.anterior, [-my / 10.0, 0.3, 0.0], atol=1e-15)
    # nearer the anterior direction (x 0.2): the side given decides, and anterior follows the handedness
    frame, warnings = estimate_frame(pts, NO_FACES, w, _given(medial_point=(2.0, float(np.sqrt(96.0)), 50.0), side="right"))
    assert frame.side == "right" and not any("disagrees with the medial point" in m for m in warnings)
    assert frame.provenance["anterior"] == "perpendicular to axis and medial, by the handedness of a right femur"


def test_axis_exactly_0_3_from_the_anterior_posterior_direction_still_orients_the_zones():
    from ImplantBoneContactLib.frame import estimate_frame

    # Axis along (0, sqrt 91, -3): the patient's anterior made perpendicular to it has length exactly 0.3
    # (the axis 17.5 degrees from AP, whose sine is 0.3), the least that can orient the zones.
    d = np.array([0.0, float(np.sqrt(91.0)), -3.0])
    axis = d / np.linalg.norm(d)
    a = np.array([0.0, 1.0, 0.0])
    assert float(np.linalg.norm(a - (a @ axis) * axis)) == 0.3
    prox = axis * -100.0
    pts = np.array([np.zeros(3), prox + [1.0, 0.0, 0.0], prox + [-1.0, 0.0, 0.0]])
    w = np.array([1.0, 3.0, 1.0])
    opt = _given(axis_points=(tuple(prox), (0.0, 0.0, 0.0)), resection_point=tuple(prox * 0.8),
                 resection_normal=tuple(-axis))
    frame, _ = estimate_frame(pts, NO_FACES, w, opt)
    assert frame.side == "left" and frame.zone_reference == "implant"
    # a little nearer AP: refused, the patient's anterior cannot orient the zones
    d2 = np.array([0.0, 9.6, -3.0])
    prox2 = d2 / np.linalg.norm(d2) * -100.0
    pts2 = np.array([np.zeros(3), prox2 + [1.0, 0.0, 0.0], prox2 + [-1.0, 0.0, 0.0]])
    opt2 = _given(axis_points=(tuple(prox2), (0.0, 0.0, 0.0)), resection_point=tuple(prox2 * 0.8),
                  resection_normal=tuple(d2))
    with pytest.raises(InputError, match="the stem axis runs almost along the patient's anterior-posterior direction"):
        estimate_frame(pts2, NO_FACES, w, opt2)


def test_a_model_half_a_millimetre_long_has_a_frame():
    from ImplantBoneContactLib.frame import estimate_frame

    # Only a length of 0 is refused: a 0.5 mm model with a given axis and cut has a frame.
    pts = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.5], [-1.0, 0.0, 0.5]])
    w = np.array([1.0, 3.0, 1.0])
    opt = _given(axis_points=((0.0, 0.0, 0.5), (0.0, 0.0, 0.0)), resection_point=(0.0, 0.0, 0.25), tip_length_mm=0.1)
    frame, _ = estimate_frame(pts, NO_FACES, w, opt)
    assert frame.side == "left" and frame.cut_height(np.zeros((1, 3)))[0] == 0.25
    flat = pts.copy()
    flat[:, 2] = 0.0
    with pytest.raises(InputError, match="the model has no extent along the stem axis"):
        estimate_frame(flat, NO_FACES, w, opt)


# Fins: vertical triangles (R, -1, z0), (R, 1, z0), (R, 0, z1) in the plane x = R. A plane z = v between z0 and
# z1 cuts a fin in a segment whose midpoint is (R, 0, v): exactly R mm from the z axis. A model of fins has
# a known reach at every plane: the largest R of the fins that the plane crosses.
def _fins(fins):
    pts, faces = [], []
    for radius, z0, z1 in fins:
        k = len(pts)
        pts += [(radius, -1.0, z0), (radius, 1.0, z0), (radius, 0.0, z1)]
        faces.append((k, k + 1, k + 2))
    return np.array(pts), np.array(faces)


def _reach_model(reach_top, reach_bottom):
    # A core fin at x = 1 from z = 0 to 160 and a fin of each reach over the top 32 and the bottom 32 mm (the
    # bottom fins point down, so the model's lowest point is the tip at z = 0). Given axis from z = 160 down:
    # the 40 planes lie at z = 158, 154, ..., 2 (half a spacing in), the first 8 (z 130-158) reach
    # ``reach_top`` and the last 8 (z 2-30) ``reach_bottom``.
    return _fins([(1.0, 0.0, 160.0), (reach_top, 160.0, 128.0), (reach_bottom, 0.0, 32.0)])


TURNED = "runs from the tip to the neck"


@pytest.mark.parametrize(
    ("top", "bottom", "turned"),
    [
        (12.0, 18.0, False),  # the distal end reaches exactly 1.5 times as far: not enough to turn the axis
        (12.0, 18.5, True),
        (2.0, 7.0, False),  # 3.5 times as far but exactly 5 mm farther: not enough
        (2.0, 7.5, True),
    ],
)
def test_given_axis_is_turned_round_when_its_distal_end_reaches_1_5_times_and_5_mm_farther(top, bottom, turned):
    from ImplantBoneContactLib.frame import FrameOptions, estimate_frame
    from ImplantBoneContactLib.mesh import vertex_areas

    pts, faces = _reach_model(top, bottom)
    opt = FrameOptions(axis_points=((0.0, 0.0, 160.0), (0.0, 0.0, 0.0)), resection_point=(0.0, 0.0, 100.0),
                       resection_normal=(0.0, 0.0, 1.0), side="left", medial_point=(10.0, 0.0, 100.0))
    frame, warnings = estimate_frame(pts, faces, vertex_areas(pts, faces), opt)
    message = [m for m in warnings if TURNED in m]
    if turned:
        assert len(message) == 1 and f"reaches {bottom:.0f} mm from it at the given distal end and {top:.0f} mm" in message[0]
        np.testing.assert_array_equal(frame.axis, [0.0, 0.0, 1.0])
    else:
        assert message == [], warnings
        np.testing.assert_array_equal(frame.axis, [0.0, 0.0, -1.0])
