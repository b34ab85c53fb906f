"""The stem frame and the Gruen zones on small synthetic stems with known answers.

Each stem is built here from two tubes: a body of radius 8 mm from the tip at
z = 0 up to z = 120 (the stem axis runs along -z, proximal to distal), and a
neck of radius 6 mm leaving the axis at z = 95 toward the medial side, 40
degrees above the horizontal (a 130-degree neck-shaft angle), 45 mm long.
Everything the frame must find follows from that construction:

* axis (0, 0, -1), tip at the origin, medial along the neck's direction
  perpendicular to the axis, anterior perpendicular to both toward +A;
* a left femur's neck points to the patient's right (+x), a right femur's to -x;
* the version is the angle the neck is turned toward +A;
* the neck's lowest generator line is (t cos 40 + 6 sin 40, 95 + t sin 40 - 6 cos 40)
  in (medial, height): it leaves the body (medial extent 8) at height
  95 - 6 cos 40 + (8 - 6 sin 40) tan 40 = 93.94 mm and then rises 1 / tan 40 = 1.19 mm
  per mm, so the automatic cut (the first height where the medial edge rises
  more than 1 mm per mm over 4 mm) lies 4 mm below that at most.

The tests are fast (a few thousand triangles) so that mutation testing can run
them for every mutant of ``frame.py``.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from ibc_helpers import vtk_contour_segments
from ImplantBoneContactLib.errors import InputError
from ImplantBoneContactLib.frame import (
    ZONE_ORDER,
    ZONE_REGIONS,
    FrameOptions,
    StemFrame,
    _plane_segments,
    assign_zones,
    estimate_frame,
    mirror_frame_matrix,
)
from ImplantBoneContactLib.mesh import vertex_areas

NECK_ANGLE = math.radians(40.0)  # above the horizontal
NECK_BASE = 95.0
NECK_RADIUS = 6.0
BODY_RADIUS = 8.0
BODY_TOP = 120.0
# where the neck's lowest generator leaves the body (see the module docstring)
NECK_LEAVES = NECK_BASE - NECK_RADIUS * math.cos(NECK_ANGLE) + (BODY_RADIUS - NECK_RADIUS * math.sin(NECK_ANGLE)) * math.tan(NECK_ANGLE)


def _tube(p0, p1, radius, n_around=24, n_along=12, cap_start=False, cap_end=True, ref=(0.0, 0.0, 1.0)):
    """Triangulated tube from ``p0`` to ``p1`` (mm), ring points symmetric about the plane of the axis and ``ref``."""
    p0, p1 = np.asarray(p0, dtype=float), np.asarray(p1, dtype=float)
    d = (p1 - p0) / np.linalg.norm(p1 - p0)
    ref = np.asarray(ref, dtype=float)
    if abs(ref @ d) > 0.9:
        ref = np.array([1.0, 0.0, 0.0])
    e1 = ref - (ref @ d) * d
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(d, e1)
    phi = 2 * np.pi * (np.arange(n_around) + 0.5) / n_around
    ring = radius * (np.cos(phi)[:, None] * e1 + np.sin(phi)[:, None] * e2)
    t = np.linspace(0.0, np.linalg.norm(p1 - p0), n_along + 1)
    pts = list((p0 + t[:, None, None] * d + ring[None]).reshape(-1, 3))
    faces = []
    for i in range(n_along):
        for j in range(n_around):
            a, b = i * n_around + j, i * n_around + (j + 1) % n_around
            faces += [[a, b, a + n_around], [b, b + n_around, a + n_around]]
    for cap, centre, row in ((cap_start, p0, 0), (cap_end, p1, n_along)):
        if cap:
            c = len(pts)
            pts.append(centre)
            faces += [[c, row * n_around + (j + 1) % n_around, row * n_around + j] for j in range(n_around)]
    return np.array(pts), np.array(faces)


def _medial(side: str, version_deg: float = 0.0) -> np.ndarray:
    """The neck's direction across the axis: +x for a left femur, -x for a right one, turned toward +A."""
    v = math.radians(version_deg)
    return np.array([(1.0 if side == "left" else -1.0) * math.cos(v), math.sin(v), 0.0])


def _stem(side="left", version_deg=0.0, neck=True, neck_length=45.0, neck_radius=NECK_RADIUS, neck_base=NECK_BASE):
    """Points and triangles of the upright stem (tip at the origin, axis -z)."""
    m = _medial(side, version_deg)
    pts, faces = _tube([0, 0, 0], [0, 0, BODY_TOP], BODY_RADIUS, cap_start=True, ref=m)
    if neck:
        d = math.cos(NECK_ANGLE) * m + math.sin(NECK_ANGLE) * np.array([0.0, 0.0, 1.0])
        base = np.array([0.0, 0.0, neck_base])
        npts, nfaces = _tube(base, base + neck_length * d, neck_radius)
        pts, faces = np.vstack([pts, npts]), np.vstack([faces, nfaces + len(pts)])
    return pts, faces


def _moved(pts, rotation, shift):
    return pts @ np.asarray(rotation).T + np.asarray(shift)


def _rot_x(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(deg):
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _frame(pts, faces, **options):
    return estimate_frame(pts, faces, vertex_areas(pts, faces), FrameOptions(**options))


def _close(a, b, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), atol=atol)


# ---------------------------------------------------------------- the automatic frame


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("version", [0.0, 15.0, -20.0])
def test_automatic_frame_of_the_synthetic_stem(side, version):
    """Catches: a wrong axis end chosen as proximal, medial not following the neck, the side rule
    inverted, anterior toward -A, the version's sign or reference, the resection level rule."""
    pts, faces = _stem(side, version)
    frame, warnings = _frame(pts, faces)
    assert warnings == []
    _close(frame.axis, [0, 0, -1])
    _close(frame.tip, [0, 0, 0], atol=1e-9)
    _close(frame.proximal_point, [0, 0, pts[:, 2].max()], atol=1e-9)
    _close(frame.medial, _medial(side, version))
    _close(frame.anterior, np.cross(frame.axis, frame.medial) * (1 if side == "right" else -1))
    assert frame.anterior[1] > 0.9
    assert frame.side == side
    assert frame.version_deg == pytest.approx(version, abs=1e-6)
    assert frame.zone_reference == "implant"
    _close(frame.resection_normal, [0, 0, 1])
    assert frame.resection_point[:2] == pytest.approx([0, 0], abs=1e-9)
    assert NECK_LEAVES - 4.0 < frame.resection_point[2] < NECK_LEAVES
    assert frame.tip_length_mm == 10.0
    assert frame.provenance == {
        "axis": "automatic",
        "medial": "automatic: the neck direction (the plane of the stem axis and the neck)",
        "anterior": "perpendicular to the axis and the neck plane, toward patient anterior",
        "side": "from the medial direction (toward patient right means left femur)",
        "resection": "automatic (where the neck flares out of the body)",
    }


@pytest.mark.parametrize("side", ["left", "right"])
def test_automatic_frame_of_a_tilted_stem_in_a_patient_ct(side):
    """A stem tilted 20 degrees (about the AP axis) and moved: the frame moves with it; in a CT
    that holds both hips, a stem lying on its own side gives no warning."""
    rot, shift = _rot_y(20.0 if side == "left" else -20.0), np.array([(-90.0 if side == "left" else 90.0), 30.0, -50.0])
    pts, faces = _stem(side, 10.0)
    moved = _moved(pts, rot, shift)
    bounds = np.array([[-200.0, -100.0, -300.0], [200.0, 150.0, 100.0]])
    frame, warnings = _frame(moved, faces, ct_bounds_ras=bounds)
    assert warnings == []
    _close(frame.axis, rot @ [0, 0, -1])
    _close(frame.tip, shift, atol=1e-6)
    _close(frame.medial, rot @ _medial(side, 10.0))
    assert frame.side == side


def test_patient_zone_reference_keeps_the_patients_axes_and_reports_the_version():
    """zone_reference="patient": medial is the patient's medial-lateral direction on the neck's
    side, anterior the patient's +A, the version still measured. Catches: the branches swapped."""
    pts, faces = _stem("left", 15.0)
    frame, warnings = _frame(pts, faces, zone_reference="patient")
    assert warnings == []
    _close(frame.medial, [1, 0, 0])
    _close(frame.anterior, [0, 1, 0])
    assert frame.zone_reference == "patient"
    assert frame.version_deg == pytest.approx(15.0, abs=1e-6)
    assert frame.provenance["medial"] == "automatic: the patient's medial-lateral direction, on the side the neck points to"
    assert frame.provenance["anterior"] == "patient anterior (+A) perpendicular to the axis"
    right, _ = _frame(*_stem("right", -10.0), zone_reference="patient")
    _close(right.medial, [-1, 0, 0])
    _close(right.anterior, [0, 1, 0])
    assert right.side == "right" and right.version_deg == pytest.approx(-10.0, abs=1e-6)


def test_a_neck_turned_far_toward_anterior_is_reported():
    """Version 70 degrees: the neck points mostly anteriorly; the frame follows it and says so."""
    frame, warnings = _frame(*_stem("left", 70.0))
    assert frame.version_deg == pytest.approx(70.0, abs=1e-6)
    assert warnings == [
        "the neck points mostly anteriorly or posteriorly (70 degrees from the medial-lateral plane): "
        "check the registration or give --medial-point"
    ]
    # 59 degrees: cos 59 = 0.515 >= 0.5, no warning
    assert _frame(*_stem("left", 59.0))[1] == []


def test_side_disagreeing_with_a_clear_neck_follows_the_neck():
    frame, warnings = _frame(*_stem("left"), side="right")
    assert frame.side == "left"
    _close(frame.medial, [1, 0, 0])
    assert warnings == [
        "--side right disagrees with the model: its neck points to the patient's right, medial of a left femur; "
        "the frame follows the neck (side left, as frame.json records); to set medial yourself give --medial-point"
    ]
    assert frame.provenance["side"] == "from the medial direction (toward patient right means left femur)"
    same, no_warnings = _frame(*_stem("left"), side="left")
    assert no_warnings == [] and same.provenance["side"] == "given"
    right, w = _frame(*_stem("right"), side="left", sources={"side": "the frame file f.json (--frame)"})
    assert right.side == "right"
    assert w == [
        "the frame file f.json (--frame) left disagrees with the model: its neck points to the patient's left, "
        "medial of a right femur; the frame follows the neck (side right, as frame.json records); "
        "to set medial yourself give --medial-point"
    ]


def _faint_stem(side="left", version_deg=0.0):
    """A short thin neck (20 mm, radius 4, from z = 105): its mean offset is 0.23 of the proximal
    surface's distance from the axis, between the 0.15 that finds a neck and the 0.3 of a clear one."""
    return _stem(side, version_deg, neck_length=20.0, neck_radius=4.0, neck_base=105.0)


def test_a_faint_neck_lets_the_given_side_decide():
    frame, warnings = _frame(*_faint_stem("left"), side="right", axis_points=((0, 0, 120), (0, 0, 0)),
                             resection_point=(0, 0, 100), resection_normal=(0, 0, 1))
    assert frame.side == "right"
    _close(frame.medial, [-1, 0, 0])
    _close(frame.anterior, [0, 1, 0])
    assert frame.zone_reference == "patient"
    assert frame.provenance == {
        "axis": "given",
        "medial": "from --side right (the neck is faint)",
        "anterior": "patient anterior (+A) perpendicular to the axis",
        "side": "given",
        "resection": "given",
    }
    assert warnings == [
        "the neck points laterally for a right femur (--side right), but sticks out only a little: "
        "the frame follows --side; check the registration (is the model mirrored?)"
    ]


def test_a_faint_neck_still_orients_the_zones_with_a_warning():
    frame, warnings = _frame(*_faint_stem("left", 10.0), axis_points=((0, 0, 120), (0, 0, 0)),
                             resection_point=(0, 0, 100), resection_normal=(0, 0, 1))
    assert frame.side == "left" and frame.zone_reference == "implant"
    _close(frame.medial, _medial("left", 10.0))
    assert len(warnings) == 1
    assert warnings[0].startswith("the neck sticks out only a little (its mean offset is 23% of the proximal surface's "
                                  "distance from the axis), yet its direction orients the zones (version 10 degrees): ")
    assert warnings[0].endswith("check it in the zone picture, or use --zone-reference patient or --medial-point")
    # the patient reference does not use the neck's direction: no warning
    assert _frame(*_faint_stem("left"), axis_points=((0, 0, 120), (0, 0, 0)), zone_reference="patient",
                  resection_point=(0, 0, 100), resection_normal=(0, 0, 1))[1] == []


# ---------------------------------------------------------------- no neck


def test_a_stem_without_a_neck_needs_a_side():
    pts, faces = _stem(neck=False)
    axis = ((0, 0, 120), (0, 0, 0))
    with pytest.raises(InputError) as e:
        _frame(pts, faces, axis_points=axis)
    assert str(e.value) == (
        "cannot tell which side is medial: the model has no neck sticking out of its body; give --medial-point or --side"
    )
    for side, medial in (("left", [1, 0, 0]), ("right", [-1, 0, 0])):
        frame, warnings = _frame(pts, faces, axis_points=axis, side=side, zone_reference="patient")
        _close(frame.medial, medial)
        _close(frame.anterior, [0, 1, 0])
        assert frame.side == side and frame.zone_reference == "patient" and frame.version_deg is None
        assert frame.provenance["medial"] == f"from --side {side} (no neck found)"
        assert frame.provenance["anterior"] == "patient anterior (+A) perpendicular to the axis"
        assert frame.provenance["side"] == "given"
        # no neck: the cut goes to the top of the body, with a warning
        assert warnings == [
            "no neck found above the stem body: the resection plane is put at the proximal end of the model; "
            "give --resection-plane to set it"
        ]
        # 160 planes between the ends, half a spacing in from each: the last at 120 - 120 / 320
        assert frame.resection_point[2] == pytest.approx(BODY_TOP - BODY_TOP / 320.0, abs=1e-9)
    _, warnings = _frame(pts, faces, axis_points=axis, side="left", resection_point=(0, 0, 100), resection_normal=(0, 0, 1))
    assert warnings == [
        "no neck sticks out of the stem body, so the implant's own neck plane is unknown: the zones follow "
        "the patient's anterior direction and --side left; give --medial-point to orient them"
    ]


def test_a_stem_along_the_patients_ap_axis_cannot_be_oriented_without_a_medial_point():
    """Axis along -A: the patient's anterior cannot orient the zones (with or without a neck)."""
    rot = _rot_x(90.0)  # +z (proximal) to -y: the axis runs along +A
    for neck in (True, False):
        pts, faces = _stem("left", neck=neck)
        with pytest.raises(InputError) as e:
            _frame(_moved(pts, rot, [0, 0, 0]), faces, axis_points=((0, -120, 0), (0, 0, 0)), side="left")
        assert str(e.value) == (
            "the stem axis runs almost along the patient's anterior-posterior direction (0 degrees from it), so the "
            "patient's anterior cannot orient the zones: check the registration, or give --medial-point (a point on "
            "the medial side of the stem) and --side"
        )


# ---------------------------------------------------------------- given parts


def test_a_given_axis_reversed_is_turned_round():
    pts, faces = _stem("left")
    frame, warnings = _frame(pts, faces, axis_points=((0, 0, 0), (0, 0, 120)))
    _close(frame.axis, [0, 0, -1])
    _close(frame.tip, [0, 0, 0], atol=1e-9)
    _close(frame.proximal_point, [0, 0, 120])
    assert frame.provenance["axis"] == "given, turned round (the given distal end is the neck end)"
    assert len(warnings) == 1
    assert warnings[0].startswith("the axis (--axis) runs from the tip to the neck: the surface reaches ")
    assert warnings[0].endswith(
        " mm at the proximal end (the neck and head stick out at the proximal end); the axis was turned round "
        "(frame.json records the axis used): give the proximal point first"
    )
    upright, none = _frame(pts, faces, axis_points=((0, 0, 120), (0, 0, 0)))
    assert none == [] and upright.provenance["axis"] == "given"
    _close(upright.axis, [0, 0, -1])


def test_a_given_axis_must_run_through_the_model():
    pts, faces = _stem("left")
    with pytest.raises(InputError) as e:
        _frame(pts, faces, axis_points=((60, 0, 120), (60, 0, 0)))
    msg = str(e.value)
    assert msg.startswith("the stem axis from --axis does not run through this model: half of its surface lies more than ")
    assert "mm from the axis (a stem's surface lies within about 30 mm of its axis; the model's centre is at RAS (" in msg
    assert msg.endswith("mm): is it from another stem, another side or another registration? give the axis of this "
                        "stem, or leave it out")
    # 25 mm off: most of the body lies 17-33 mm away, median below 30: accepted
    _frame(pts, faces, axis_points=((25, 0, 120), (25, 0, 0)), side="left")


def test_a_given_axis_pointing_up_in_a_patient_ct_is_reported():
    """Without a neck the reach test cannot turn the axis round; in a patient CT an axis whose
    distal end points superior is reported."""
    pts, faces = _stem(neck=False)
    bounds = np.array([[-100.0, -100.0, -100.0], [100.0, 100.0, 200.0]])
    _, warnings = _frame(pts, faces, axis_points=((0, 0, 0), (0, 0, 120)), side="left", ct_bounds_ras=bounds,
                         zone_reference="patient", resection_point=(0, 0, 20), resection_normal=(0, 0, 1))
    assert warnings == [
        "the axis (--axis) points its distal end superior (180 degrees from the patient's inferior direction): "
        "in a patient CT a femoral stem's tip points down; check that the proximal point comes first"
    ]
    # the same axis outside a patient CT: no warning
    assert _frame(pts, faces, axis_points=((0, 0, 0), (0, 0, 120)), side="left", zone_reference="patient",
                  resection_point=(0, 0, 20), resection_normal=(0, 0, 1))[1] == []


def test_automatic_axis_in_a_patient_ct_checks_which_way_the_tip_points():
    pts, faces = _stem("left")
    bounds = np.array([[-300.0, -300.0, -300.0], [300.0, 300.0, 300.0]])
    with pytest.raises(InputError) as e:
        _frame(_moved(pts, _rot_y(180.0), [10, 20, 30]), faces, ct_bounds_ras=bounds)
    assert str(e.value) == (
        "the automatic stem axis puts the tip superior to the neck (180 degrees from the patient's inferior "
        "direction; tip at RAS (10, 20, 30) mm): in a patient CT a femoral stem's tip points down, so this model "
        "does not look like a femoral stem with a neck (a nail with a neck screw? several implants?); give --axis "
        "PROXIMAL:DISTAL along the stem body, proximal point first (and --medial-point or --side)"
    )
    _, warnings = _frame(_moved(pts, _rot_x(60.0), [0, 0, 0]), faces, ct_bounds_ras=bounds)
    assert warnings[0] == (
        "the automatic stem axis is 60 degrees from the patient's inferior direction (a femoral stem in a patient "
        "CT is within about 30 degrees of it): check the registration, or give --axis"
    )
    # 40 degrees: no warning; outside a patient CT an upside-down stem is accepted
    assert _frame(_moved(pts, _rot_x(40.0), [0, 0, 0]), faces, ct_bounds_ras=bounds)[1] == []
    assert _frame(_moved(pts, _rot_y(180.0), [0, 0, 0]), faces)[0].side == "right"


@pytest.mark.parametrize("x, warned", [(-100.0, False), (100.0, True), (30.0, False)])
def test_side_checked_against_where_the_implant_lies_in_the_ct(x, warned):
    """A left stem (medial +x) lies left of the CT's centre (x < 0). At +100 mm it lies where a
    right femur is: warned. Within 40 mm of the centre the position says nothing."""
    pts, faces = _stem("left")
    bounds = np.array([[-200.0, -100.0, -100.0], [200.0, 100.0, 200.0]])
    moved = _moved(pts, np.eye(3), [x, 0, 0])
    centre_x = float((moved[:, 0] * vertex_areas(moved, faces)).sum() / vertex_areas(moved, faces).sum())
    frame, warnings = _frame(moved, faces, ct_bounds_ras=bounds)
    assert frame.side == "left"
    if warned:
        assert warnings == [
            f"the implant lies {abs(centre_x):.0f} mm to the patient's right of the CT's centre, where a right femur "
            "is, but the frame makes it a left femur (medial toward the patient's right): is the model mirrored or "
            "read in the wrong space (--model-space)? check the registration, or give --medial-point"
        ]
    else:
        assert warnings == []
    # a CT narrower than 300 mm (one hip) says nothing about the side
    assert _frame(moved, faces, ct_bounds_ras=np.array([[-150.0, -100.0, -100.0], [149.0, 100.0, 200.0]]))[1] == []


def test_a_right_stem_on_the_left_of_the_ct_is_reported():
    pts, faces = _stem("right")
    bounds = np.array([[-200.0, -100.0, -100.0], [200.0, 100.0, 200.0]])
    frame, warnings = _frame(_moved(pts, np.eye(3), [-100.0, 0, 0]), faces, ct_bounds_ras=bounds)
    assert frame.side == "right"
    assert len(warnings) == 1
    assert "mm to the patient's left of the CT's centre, where a left femur is, but the frame makes it a right femur " \
           "(medial toward the patient's left)" in warnings[0]


def test_a_given_medial_point_sets_medial_and_side():
    pts, faces = _stem("left")
    cut = {"resection_point": (0, 0, 90), "resection_normal": (0, 0, 1)}
    frame, warnings = _frame(pts, faces, medial_point=(20.0, 20.0, 50.0), **cut)
    assert warnings == []
    _close(frame.medial, np.array([1.0, 1.0, 0.0]) / math.sqrt(2))
    _close(frame.anterior, np.array([-1.0, 1.0, 0.0]) / math.sqrt(2))
    assert frame.side == "left" and frame.zone_reference == "medial point"
    assert frame.provenance["medial"] == "given (--medial-point)"
    assert frame.provenance["anterior"] == "perpendicular to axis and medial, toward patient anterior"
    right, _ = _frame(*_stem("right"), medial_point=(-20.0, -5.0, 50.0), **cut)
    assert right.side == "right"
    _close(right.anterior, np.array([-5.0, 20.0, 0.0]) / math.hypot(20, 5))


def test_a_medial_point_on_the_axis_is_refused():
    with pytest.raises(InputError) as e:
        _frame(*_stem("left"), medial_point=(0.0, 0.0, 50.0))
    assert str(e.value) == "the medial point's offset from the axis (--medial-point: the point lies on the axis) has zero length"


def test_a_medial_point_away_from_the_neck_is_reported():
    frame, warnings = _frame(*_stem("left"), medial_point=(-20.0, 0.0, 50.0), resection_point=(0, 0, 90),
                             resection_normal=(0, 0, 1))
    assert frame.side == "right"
    assert warnings == [
        "the medial point (--medial-point) lies on the side away from the neck (180 degrees from the direction the "
        "neck points): the zones put the calcar (zone 7) on the lateral side; check --medial-point (a frame of "
        "another stem, or of the other side?)"
    ]


def test_side_disagreeing_with_the_medial_point():
    """A medial point that clearly points to the patient's right makes a left femur, whatever
    --side says (warning); one pointing mostly anteriorly leaves the side to --side."""
    pts, faces = _stem(neck=False)
    axis = ((0, 0, 120), (0, 0, 0))
    cut = {"resection_point": (0, 0, 90), "resection_normal": (0, 0, 1)}
    frame, warnings = _frame(pts, faces, axis_points=axis, medial_point=(20, 0, 50), side="right", **cut)
    assert frame.side == "left"
    assert warnings == [
        "--side right disagrees with the medial point (--medial-point), which makes this a left femur: the frame "
        "follows the medial point (side left, as frame.json records)"
    ]
    for side in ("left", "right"):
        frame, warnings = _frame(pts, faces, axis_points=axis, medial_point=(2, 20, 50), side=side, **cut)
        assert frame.side == side and warnings == []
        assert frame.provenance["side"] == "given"


def test_a_model_in_a_cad_frame_is_oriented_by_the_handedness_of_its_side():
    """The axis along the patient's AP direction and medial along S (a CAD frame): a left femur's
    (medial, anterior, proximal) is right-handed, a right femur's left-handed."""
    pts, faces = _stem(neck=False)
    rot = _rot_x(-90.0)  # +z (proximal) to +y
    moved = _moved(pts, rot, [0, 0, 0])
    axis = ((0, 120, 0), (0, 0, 0))
    with pytest.raises(InputError) as e:
        _frame(moved, faces, axis_points=axis, medial_point=(0, 50, 20))
    assert str(e.value) == (
        "the stem does not lie in a patient's orientation (its axis runs along the patient's anterior-posterior "
        "direction and its medial direction does not point to the patient's right or left), so neither anterior "
        "nor the side can be read from the patient's axes: give --side"
    )
    for side in ("left", "right"):
        frame, _ = _frame(moved, faces, axis_points=axis, medial_point=(0, 50, 20), side=side,
                          resection_point=(0, 100, 0), resection_normal=(0, 1, 0))
        _close(frame.medial, [0, 0, 1])
        proximal = -frame.axis
        handed = np.cross(frame.medial, frame.anterior) @ proximal
        assert handed == pytest.approx(1.0 if side == "left" else -1.0)
        assert frame.side == side
        assert frame.provenance["anterior"] == f"perpendicular to axis and medial, by the handedness of a {side} femur"


def test_a_given_resection_plane_tilted_and_off_the_axis():
    """The normal is turned to point proximally whichever way it was given; the plane is used as given."""
    pts, faces = _stem("left")
    for normal in ((-1.0, 0.0, 1.0), (1.0, 0.0, -1.0)):
        frame, warnings = _frame(pts, faces, resection_point=(20.0, 5.0, 110.0), resection_normal=normal)
        assert warnings == []
        _close(frame.resection_point, [20, 5, 110])
        _close(frame.resection_normal, np.array([-1.0, 0.0, 1.0]) / math.sqrt(2))
        assert frame.provenance["resection"] == "given"
        # on the axis the cut is at 110 - 20 = 90 mm
        assert frame.cut_height(np.zeros((1, 3)))[0] == pytest.approx(90.0)


def test_bad_resection_planes_are_refused():
    pts, faces = _stem("left")
    with pytest.raises(InputError) as e:
        _frame(pts, faces, resection_point=(0, 0, 100))
    assert str(e.value) == "a resection plane needs a point and a normal: --resection-plane X,Y,Z:NX,NY,NZ"
    with pytest.raises(InputError) as e:
        _frame(pts, faces, resection_point=(0, 0, 100), resection_normal=(1.0, 0.0, 0.5))
    assert str(e.value) == (
        "the resection plane (--resection-plane) is tilted more than 60 degrees from perpendicular to the stem axis: "
        "check its normal"
    )
    # 59 degrees from perpendicular is accepted
    _frame(pts, faces, resection_point=(0, 0, 60), resection_normal=(math.sin(math.radians(59)), 0, math.cos(math.radians(59))))
    with pytest.raises(InputError) as e:
        _frame(pts, faces, resection_point=(0, 0, -1), resection_normal=(0, 0, -1))
    assert str(e.value) == "the resection plane leaves no part of the stem below it: check --resection-plane"
    with pytest.raises(InputError) as e:
        _frame(pts, faces, resection_point=(0, 0, 8), resection_normal=(0, 0, 1))
    assert str(e.value) == (
        "the resection plane is only 8.0 mm above the tip, within the tip zone (10.0 mm): check --resection-plane or "
        "--tip-length"
    )
    # exactly at the tip length is refused, just above accepted; a shorter tip zone accepts 8 mm
    with pytest.raises(InputError, match="only 10.0 mm above the tip"):
        _frame(pts, faces, resection_point=(0, 0, 10), resection_normal=(0, 0, 1))
    _frame(pts, faces, resection_point=(0, 0, 10.5), resection_normal=(0, 0, 1))
    assert _frame(pts, faces, resection_point=(0, 0, 8), resection_normal=(0, 0, 1), tip_length_mm=5.0)[0].tip_length_mm == 5.0
    with pytest.raises(InputError) as e:
        _frame(pts, faces, resection_point=(0, 0, 8), resection_normal=(0, 0, 1), sources={"resection": "f.json"})
    assert str(e.value).endswith("check f.json or --tip-length")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"tip_length_mm": -1.0}, "--tip-length must be a non-negative number of mm, got -1.0"),
        ({"tip_length_mm": float("nan")}, "--tip-length must be a non-negative number of mm, got nan"),
        ({"tip_length_mm": None}, "--tip-length must be a non-negative number of mm, got None"),
        ({"zone_reference": "world"}, "zone reference must be one of implant, patient, got 'world'"),
        ({"side": "up"}, "--side must be left or right, got 'up'"),
        ({"axis_points": ((0, 0, 1),)}, "--axis needs two points, proximal then distal: X,Y,Z:X,Y,Z"),
        ({"axis_points": ((0, 0, 1), (0, 0, 1))},
         "the axis (--axis: proximal point to distal point) has zero length"),
        ({"axis_points": ((0, 0), (0, 0, 1))},
         "the proximal axis point (--axis) must be three finite numbers X,Y,Z (RAS), got [0.0, 0.0]"),
        ({"axis_points": ((0, 0, 1), ("a", 0, 1))},
         "the distal axis point (--axis) must be three numbers X,Y,Z (RAS), got ('a', 0, 1)"),
        ({"medial_point": (0, float("inf"), 0)},
         "the medial point (--medial-point) must be three finite numbers X,Y,Z (RAS), got [0.0, inf, 0.0]"),
        ({"resection_point": (0, 0, 90), "resection_normal": (0, 0, 0)},
         "the resection plane normal (--resection-plane) has zero length"),
        ({"resection_point": (0, 0), "resection_normal": (0, 0, 1)},
         "the resection point (--resection-plane) must be three finite numbers X,Y,Z (RAS), got [0.0, 0.0]"),
        ({"resection_point": (0, 0, 90), "resection_normal": (0, 0, 1, 2)},
         "the resection normal (--resection-plane) must be three finite numbers X,Y,Z (RAS), got [0.0, 0.0, 1.0, 2.0]"),
    ],
)
def test_bad_options_are_refused_with_their_message(options, message):
    with pytest.raises(InputError) as e:
        _frame(*_stem("left"), **options)
    assert str(e.value) == message


def test_messages_name_the_frame_file_the_parts_came_from():
    src = {"axis": "the frame file a.json (--frame)", "medial_point": "the frame file a.json (--frame)"}
    with pytest.raises(InputError) as e:
        _frame(*_stem("left"), axis_points=((0, 0, 1),), sources=src)
    assert str(e.value) == "the frame file a.json (--frame) needs two points, proximal then distal: X,Y,Z:X,Y,Z"
    frame, _ = _frame(*_stem("left"), medial_point=(20, 0, 50), sources=src)
    assert frame.provenance["medial"] == "given (the frame file a.json (--frame))"


def test_a_short_fat_model_has_no_axis():
    pts, faces = _tube([0, 0, 0], [0, 0, 20], 10.0, cap_start=True)
    with pytest.raises(InputError) as e:
        _frame(pts, faces)
    assert str(e.value) == (
        "cannot find the stem axis: the model is not elongated (its length is less than 1.5 times its width), so it "
        "does not look like a femoral stem; give --axis"
    )


# ---------------------------------------------------------------- zones on the synthetic stem


def _zones_by_hand(frame: StemFrame, pts: np.ndarray, tip_length: float) -> np.ndarray:
    """The sector zone of each point, from the definition (upright frame, perpendicular cut at h_cut)."""
    h = (frame.tip - pts) @ frame.axis
    r = pts - frame.tip
    az = np.degrees(np.arctan2(r @ frame.anterior, r @ frame.medial)) % 360
    h_cut = frame.cut_height(frame.tip[None, :])[0]
    out = []
    for hi, ai, above in zip(h, az, frame.above_cut(pts)):
        if above:
            out.append(0)
            continue
        sector = "medial" if (ai >= 315 or ai < 45) else "anterior" if ai < 135 else "lateral" if ai < 225 else "posterior"
        names = {"medial": (7, 6, 5, 4), "anterior": (8, 9, 10, 11), "lateral": (1, 2, 3, 4), "posterior": (14, 13, 12, 11)}
        depth = (h_cut - hi) / h_cut
        band = 3 if hi <= tip_length else (0 if depth < 1 / 3 else 1 if depth < 2 / 3 else 2)
        out.append(names[sector][band])
    return np.array(out)


@pytest.mark.parametrize("side", ["left", "right"])
def test_zones_of_the_automatic_frame_follow_the_definition(side):
    pts, faces = _stem(side, 10.0)
    frame, _ = _frame(pts, faces, tip_length_mm=12.0)
    z = assign_zones(frame, pts)
    assert z["gruen_zone"].tolist() == _zones_by_hand(frame, pts, 12.0).tolist()
    # every zone is present on the tube; the neck (above the cut) is zone 0
    assert set(z["gruen_zone"].tolist()) == set(range(15))
    assert z["gruen_zone"].dtype == np.int16


def test_frame_json_round_trip_and_reuse_on_a_moved_ct():
    """A frame written as frame.json, read back, and given as the frame of the same stem moved
    by a rigid motion (a follow-up CT) together with the same motion gives the same zones."""
    pts, faces = _stem("right", 12.0)
    frame, _ = _frame(pts, faces, tip_length_mm=15.0)
    d = json.loads(frame.to_json())
    assert d["units"] == "RAS millimetres; axis points proximal to distal; resection_normal points proximally"
    assert d["distal_point"] == d["tip"]
    assert d["version_convention"].startswith("version_deg: angle about the stem axis")
    back = StemFrame.from_dict(d)
    for name in ("proximal_point", "axis", "medial", "anterior", "tip", "resection_point", "resection_normal"):
        _close(getattr(back, name), getattr(frame, name), atol=1e-12)
    assert (back.side, back.tip_length_mm, back.zone_reference, back.provenance) == (
        "right", 15.0, "implant", frame.provenance)
    assert back.version_deg == pytest.approx(12.0)
    zones = assign_zones(frame, pts)["gruen_zone"]
    assert assign_zones(back, pts)["gruen_zone"].tolist() == zones.tolist()

    fields = back.parameter_fields()
    _close(fields["medial_point"], frame.tip + 10.0 * frame.medial)
    assert fields["axis"] == (tuple(frame.proximal_point), tuple(frame.tip))
    rot, shift = _rot_x(25.0) @ _rot_y(-15.0), np.array([40.0, -30.0, 210.0])

    def move(p):
        return tuple(np.asarray(p) @ rot.T + shift)

    moved = _moved(pts, rot, shift)
    reused, warnings = _frame(
        moved, faces, axis_points=(move(fields["axis"][0]), move(fields["axis"][1])),
        medial_point=move(fields["medial_point"]), resection_point=move(fields["resection_point"]),
        resection_normal=tuple(rot @ np.asarray(fields["resection_normal"])), tip_length_mm=15.0,
    )
    assert warnings == []
    # points on the axis (the caps' centres) have no azimuth: compare the others
    off_axis = np.hypot(pts[:, 0], pts[:, 1]) > 1.0
    assert off_axis.sum() > 500
    assert assign_zones(reused, moved)["gruen_zone"][off_axis].tolist() == zones[off_axis].tolist()


def test_from_dict_defaults_and_refusals():
    frame, _ = _frame(*_stem("left"))
    d = frame.to_dict()
    for key in ("tip_length_mm", "version_deg", "provenance", "zone_reference"):
        d.pop(key)
    back = StemFrame.from_dict(d)
    assert (back.tip_length_mm, back.version_deg, back.provenance, back.zone_reference) == (10.0, None, {}, "patient")
    d["axis"] = [0.0, 0.0, -3.0]
    _close(StemFrame.from_dict(d).axis, [0, 0, -1])
    with pytest.raises(InputError) as e:
        StemFrame.from_dict([1, 2])
    assert str(e.value) == "the frame description must be a JSON object (as frame.json), got list"
    with pytest.raises(InputError) as e:
        StemFrame.from_dict({k: v for k, v in d.items() if k not in ("tip", "side")})
    assert str(e.value) == "the frame description has no 'tip', 'side'"
    with pytest.raises(InputError) as e:
        StemFrame.from_dict({**d, "side": "up"})
    assert str(e.value) == "the frame's 'side' must be left or right, got 'up'"
    with pytest.raises(InputError) as e:
        StemFrame.from_dict({**d, "medial": [0, 0, 0]})
    assert str(e.value) == "the frame's 'medial' has zero length"
    with pytest.raises(InputError) as e:
        StemFrame.from_dict({**d, "tip": [0, 0]})
    assert str(e.value) == "the frame's 'tip' must be three finite numbers X,Y,Z (RAS), got [0.0, 0.0]"
    for bad in ({"tip_length_mm": "long"}, {"version_deg": [1, 2]}, {"provenance": 3}):
        with pytest.raises(InputError, match="^the frame description is malformed: "):
            StemFrame.from_dict({**d, **bad})
    assert StemFrame.from_dict({**d, "version_deg": "7.5", "tip_length_mm": "4"}).version_deg == 7.5


# ---------------------------------------------------------------- StemFrame geometry and zone table by hand


def _upright(tip_length=10.0, cut=(0.0, 0.0, 90.0), normal=(0.0, 0.0, 1.0)):
    n = np.asarray(normal, dtype=float)
    return StemFrame(
        proximal_point=np.array([0.0, 0.0, 120.0]), axis=np.array([0.0, 0.0, -1.0]),
        medial=np.array([1.0, 0.0, 0.0]), anterior=np.array([0.0, 1.0, 0.0]), tip=np.zeros(3),
        resection_point=np.asarray(cut, dtype=float), resection_normal=n / np.linalg.norm(n), side="left",
        tip_length_mm=tip_length,
    )


def test_height_azimuth_and_cut_of_a_frame():
    f = _upright()
    p = np.array([[5.0, 0.0, 30.0], [0.0, 5.0, 40.0], [-5.0, 0.0, 90.0], [0.0, -5.0, 90.5], [3.0, 3.0, -2.0]])
    _close(f.height(p), [30, 40, 90, 90.5, -2])
    _close(f.azimuth(p), [0, 90, 180, 270, 45])
    # on the plane is not above it
    assert f.above_cut(p).tolist() == [False, False, False, True, False]
    _close(f.cut_height(p), [90] * 5)
    # a frame away from the origin: the tip is the reference of height and azimuth
    g = _upright()
    g.tip = np.array([10.0, 20.0, 30.0])
    _close(g.height([[10.0, 20.0, 50.0]]), [20])
    _close(g.azimuth([[10.0, 25.0, 50.0]]), [90])


_BORDERS = {0.0: (5.0, 0.0), 45.0: (5.0, 5.0), 90.0: (0.0, 5.0), 135.0: (-5.0, 5.0), 180.0: (-5.0, 0.0),
            225.0: (-5.0, -5.0), 270.0: (0.0, -5.0), 315.0: (5.0, -5.0)}


def test_zone_table_around_and_along_the_axis():
    """Points 5 mm from the axis at each 45-degree sector border and between them, at heights in
    each band (cut at 90: bands 60-90, 30-60, 10-30, the tip cap 0-10).
    Catches: sector borders shifted or not half-open, the zone table's rows or columns swapped,
    the band fractions, the tip cap border, zone 0 above the cut, the AP/lateral split."""
    az = np.array([0, 44.9, 45, 90, 134.9, 135, 180, 224.9, 225, 270, 314.9, 315])
    sector_of = ["m", "m", "a", "a", "a", "l", "l", "l", "p", "p", "p", "m"]
    heights = {75.0: 0, 45.0: 1, 20.0: 2, 10.0: 3, 10.5: 2, 89.9: 0, 60.0: 1, 30.0: 2}
    table = {"m": (7, 6, 5, 4), "a": (8, 9, 10, 11), "l": (1, 2, 3, 4), "p": (14, 13, 12, 11)}
    rows, expected, ap, lat = [], [], [], []
    for h, band in heights.items():
        for a, s in zip(az, sector_of):
            t = math.radians(a)
            # the borders at exact coordinates (5, 5), (-5, 5), ...: atan2 gives exactly 45, 135, 225, 315
            xy = _BORDERS.get(float(a), (5 * math.cos(t), 5 * math.sin(t)))
            rows.append([xy[0], xy[1], h])
            expected.append(table[s][band])
            ap.append(table["m" if math.cos(t) >= -1e-12 else "l"][band])
            lat.append(table["a" if math.sin(t) >= -1e-12 else "p"][band])
    rows.append([1.0, 1.0, 95.0])
    expected.append(0)
    ap.append(0)
    lat.append(0)
    z = assign_zones(_upright(), np.array(rows))
    assert z["gruen_zone"].tolist() == expected
    assert z["gruen_zone_ap"].tolist() == ap
    assert z["gruen_zone_lateral"].tolist() == lat
    _close(z["height_mm"], np.array(rows)[:, 2])
    assert z["azimuth_deg"][:12] == pytest.approx(az, abs=1e-9)
    for k in ("gruen_zone", "gruen_zone_ap", "gruen_zone_lateral"):
        assert z[k].dtype == np.int16


def test_custom_bands_and_their_validation():
    """Bands 0.5, 0.3, 0.2 of a 90 mm cut-to-tip height: 45-90 proximal, 18-45 middle, below distal."""
    f = _upright()
    pts = np.array([[5.0, 0.0, h] for h in (80.0, 46.0, 44.0, 19.0, 17.0, 12.0)])
    assert assign_zones(f, pts, (0.5, 0.3, 0.2))["gruen_zone"].tolist() == [7, 7, 6, 6, 5, 5]
    assert assign_zones(f, pts)["gruen_zone"].tolist() == [7, 6, 6, 5, 5, 5]
    for bad in ((0.5, 0.5), (0.5, 0.5, 0.0), (0.6, 0.3, 0.2), (float("nan"), 0.5, 0.5), (-0.2, 0.6, 0.6)):
        with pytest.raises(InputError) as e:
            assign_zones(f, pts, bad)
        assert str(e.value) == f"--bands-axial needs three positive fractions that sum to 1, got {list(bad)}"
    # within 1e-6 of 1 is accepted
    assign_zones(f, pts, (0.5, 0.3, 0.2 + 5e-7))


def test_a_tilted_cut_on_the_synthetic_stem_splits_the_bands_along_each_line():
    """Cut z = 90 + x/2: the line through (x, y) meets it at 90 + x/2; each point's band is its
    depth below that height over that height."""
    f = _upright(cut=(0.0, 0.0, 90.0), normal=(-0.5, 0.0, 1.0))
    pts = np.array([[8.0, 0.0, 93.0], [8.0, 0.0, 92.0], [-8.0, 0.0, 87.0], [-8.0, 0.0, 85.0],
                    [8.0, 0.0, 62.0], [-8.0, 0.0, 58.0], [-8.0, 0.0, 56.0]])
    # medial: cut 94, thirds at 62.67 and 31.33; lateral: cut 86, thirds at 57.33 and 28.67
    assert assign_zones(f, pts)["gruen_zone"].tolist() == [7, 7, 0, 1, 6, 1, 2]


def test_mirror_frame_matrix():
    m = mirror_frame_matrix()
    _close(m @ [10.0, 20.0, 30.0, 1.0], [-10.0, 20.0, 30.0, 1.0])
    assert m.shape == (4, 4)


def test_zone_names_cover_the_fourteen_zones():
    assert ZONE_ORDER == list(range(1, 15)) and sorted(ZONE_REGIONS) == ZONE_ORDER


# ---------------------------------------------------------------- the plane cut against VTK


@pytest.mark.parametrize("direction", [(0.1, -0.2, 1.0), (1.0, 0.3, 0.2)])
def test_plane_segments_are_those_of_vtk_contour_filter(direction):
    """The numpy plane cut of the synthetic stem gives vtkContourFilter's segments, in its order,
    including planes through vertices (VTK drops the zero-length segments those give)."""
    pts, faces = _stem("left", 10.0)
    d = np.asarray(direction) / np.linalg.norm(direction)
    t_pts = (pts - pts.mean(axis=0)) @ d
    values = np.unique(np.r_[np.linspace(t_pts.min() + 0.5, t_pts.max() - 0.5, 37), t_pts[::53]])
    a, b = _plane_segments(pts, faces, t_pts, values)
    ref_a, ref_b = vtk_contour_segments(pts, faces, t_pts, values)
    assert a.shape == ref_a.shape and a.shape[0] > 100
    same = np.all(a == ref_a, axis=1) & np.all(b == ref_b, axis=1)
    swapped = np.all(a == ref_b, axis=1) & np.all(b == ref_a, axis=1)
    assert np.all(same | swapped)
    # every end point lies on its plane
    for p in (a, b):
        t = (p - pts.mean(axis=0)) @ d
        assert np.min(np.abs(t[:, None] - values[None, :]), axis=1).max() < 1e-9


# ---------------------------------------------------------------- details that only a known answer pins down


def test_frame_json_is_indented_by_two_spaces():
    """frame.json is read and compared by people (and diffed between runs): one key per line."""
    text = _upright().to_json()
    lines = text.splitlines()
    assert lines[0] == "{" and lines[1].startswith('  "proximal_point": [') and lines[2] == "    0.0,"


def test_unit_vectors_down_to_a_nanometre():
    from ImplantBoneContactLib.frame import _unit

    _close(_unit([1e-9, 0.0, 0.0]), [1, 0, 0])
    with pytest.raises(InputError, match="^the vector has zero length$"):
        _unit([1e-10, 0.0, 0.0])


def test_a_bad_point_is_shown_rounded_to_a_thousandth():
    with pytest.raises(InputError) as e:
        _frame(*_stem("left"), medial_point=(1.23456, float("nan"), 2.0))
    assert str(e.value) == "the medial point (--medial-point) must be three finite numbers X,Y,Z (RAS), got [1.235, nan, 2.0]"


def test_a_line_through_two_centroids_is_a_line():
    from ImplantBoneContactLib.frame import _fit_line

    c, d = _fit_line(np.array([[0.0, 0.0, 0.0], [np.nan, np.nan, np.nan], [0.0, 0.0, 2.0]]))
    _close(c, [0, 0, 1])
    _close(abs(d @ [0, 0, 1]), 1.0)
    with pytest.raises(InputError, match="no continuous body along its length"):
        _fit_line(np.array([[0.0, 0.0, 0.0], [np.nan, np.nan, np.nan]]))


def test_two_separate_parts_have_no_body_to_fit_an_axis_to():
    """Two short tubes 200 mm apart: elongated overall, but no cross-section in the middle."""
    a, fa = _tube([0, 0, 0], [0, 0, 10], 5.0, cap_start=True)
    b, fb = _tube([0, 0, 200], [0, 0, 210], 5.0, cap_start=True)
    with pytest.raises(InputError) as e:
        _frame(np.vstack([a, b]), np.vstack([fa, fb + len(a)]))
    assert str(e.value) == (
        "cannot find the stem axis: the model has no continuous body along its length (several separate parts or "
        "too few triangles); give --axis"
    )


def test_a_flat_model_across_the_given_axis_has_no_length():
    """A disc at z = 50 with the axis along z: no plane cuts it, and it has no extent along the axis."""
    pts, faces = _tube([0, 0, 50], [0, 0, 50.0001], 20.0, n_along=1, cap_start=True)
    pts[:, 2] = 50.0
    with pytest.raises(InputError) as e:
        _frame(pts, faces, axis_points=((0, 0, 60), (0, 0, 40)), side="left")
    assert str(e.value) == "the model has no extent along the stem axis"


def _weighted_median(values, weights):
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return values[order][np.nonzero(cum >= 0.5 * cum[-1])[0][0]]


def test_an_axis_beside_the_model_is_refused_with_the_median_distance_and_the_centre():
    """A plain tube moved to (10, 20, 30): its area-weighted centre is (10, 20, 90); an axis 45 mm
    beside it leaves half of the surface farther than the weighted median distance, about 45 mm."""
    pts, faces = _stem(neck=False)
    moved = _moved(pts, np.eye(3), [10.0, 20.0, 30.0])
    w = vertex_areas(moved, faces)
    dist = np.hypot(moved[:, 0] - 55.0, moved[:, 1] - 20.0)
    median = _weighted_median(dist, w)
    assert 44.0 < median < 46.0
    with pytest.raises(InputError) as e:
        _frame(moved, faces, axis_points=((55, 20, 150), (55, 20, 30)), side="left")
    assert str(e.value).startswith(
        f"the stem axis from --axis does not run through this model: half of its surface lies more than {median:.0f} mm "
        "from the axis (a stem's surface lies within about 30 mm of its axis; the model's centre is at RAS (10, 20, 90) mm)"
    )


def test_side_from_position_in_an_off_centre_ct():
    """The CT's centre is the middle of its right-left extent, not the origin: a CT from x = 0 to 400
    (centre 200) with a left stem at x = 260 (60 mm right of the centre) is warned, at x = 140 not;
    the CT's AP extent plays no part; 300 mm wide is wide enough."""
    pts, faces = _stem("left")
    for x, width, warned in ((260.0, 400.0, True), (140.0, 400.0, False), (245.0, 300.0, True)):
        lo, hi = 200.0 - width / 2, 200.0 + width / 2
        bounds = np.array([[lo, -1000.0, -100.0], [hi, 10.0, 200.0]])
        _, warnings = _frame(_moved(pts, np.eye(3), [x, 0, 0]), faces, ct_bounds_ras=bounds)
        assert bool(warnings) == warned, (x, width, warnings)
        if warned:
            assert "to the patient's right of the CT's centre, where a right femur is" in warnings[0]


def test_zones_do_not_depend_on_where_the_frame_is():
    """The same stem and frame moved by (30, -40, 500): every zone column is unchanged (the AP and
    lateral halves are measured from the tip, wherever it is)."""
    f = _upright(cut=(0.0, 0.0, 90.0), normal=(-0.5, 0.0, 1.0))
    g = _upright(cut=(30.0, -40.0, 590.0), normal=(-0.5, 0.0, 1.0))
    g.tip = np.array([30.0, -40.0, 500.0])
    rng = np.random.default_rng(5)
    pts = np.c_[rng.uniform(-9, 9, (300, 2)), rng.uniform(-5, 110, 300)]
    a, b = assign_zones(f, pts), assign_zones(g, pts + [30.0, -40.0, 500.0])
    for k in ("gruen_zone", "gruen_zone_ap", "gruen_zone_lateral"):
        assert a[k].tolist() == b[k].tolist()
        assert len(set(a[k].tolist())) >= 8


def test_no_numpy_warnings_where_the_cut_meets_the_tip():
    """A cut through the tip itself (z = 0, exactly): every depth is 0/0 or h/0; assign_zones must stay
    quiet (no RuntimeWarning in a user's console): points on the cut or below the tip are in the tip zone,
    points above it in zone 0."""
    import warnings

    f = _upright(cut=(0.0, 0.0, 0.0), normal=(0.0, 0.0, 1.0))
    pts = np.array([[5.0, 0.0, 0.0], [5.0, 0.0, -2.0], [-5.0, 0.0, -1.0], [5.0, 0.0, 3.0]])
    assert f.cut_height(pts).tolist() == [0.0, 0.0, 0.0, 0.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = assign_zones(f, pts)
    assert z["gruen_zone"].tolist() == [4, 4, 4, 0]


@pytest.mark.parametrize(
    "length, squash, elongated",
    [
        (25.0, 1.0, True),  # capped tube R 8: largest / middle variance 2.64 >= 1.5 ** 2
        (20.0, 1.0, False),  # 1.82 < 2.25
        (40.0, 0.05, False),  # flat (20 x 1 mm ellipse): largest / middle 1.07, largest / smallest 224
    ],
)
def test_elongation_is_the_largest_over_the_middle_principal_variance(length, squash, elongated):
    """Away from the origin (a centroid error would show). Catches: another power of 1.5, the smallest
    variance compared instead of the middle one, the centroid added instead of subtracted."""
    pts, faces = _tube([0, 0, 0], [0, 0, length], 8.0 if squash == 1.0 else 20.0, cap_start=True)
    pts[:, 1] *= squash
    pts = pts + [100.0, 50.0, 300.0]
    if elongated:
        frame, _ = _frame(pts, faces, side="left")
        _close(abs(frame.axis[2]), 1.0)
    else:
        with pytest.raises(InputError, match="^cannot find the stem axis: the model is not elongated"):
            _frame(pts, faces, side="left")


def test_end_reach_of_a_cone():
    """A cone of radius 5 + 0.1 z (z from 0 to 120), moved to (40, -70, 15): 40 planes 3 mm apart from
    z = 1.5; the first 8 average z = 12 (radius 6.2), the last 8 z = 108 (radius 15.8). Contour points
    lie on the 24-gon between r cos(7.5 deg) and r."""
    from ImplantBoneContactLib.frame import _end_reach

    pts, faces = _tube([0, 0, 0], [0, 0, 120], 1.0, n_along=40, cap_end=False)
    pts[:, :2] *= (5.0 + 0.1 * pts[:, 2])[:, None]
    shift = np.array([40.0, -70.0, 15.0])
    prox, dist = _end_reach(pts + shift, faces, shift, np.array([0.0, 0.0, 1.0]))
    # a proximal point given 300 mm beyond the model's end: the planes still span the model only
    assert _end_reach(pts + shift, faces, shift - [0.0, 0.0, 300.0], np.array([0.0, 0.0, 1.0])) == (prox, dist)
    assert 6.2 * math.cos(math.radians(7.5)) <= prox <= 6.2
    assert 15.8 * math.cos(math.radians(7.5)) <= dist <= 15.8


def test_a_reversed_axis_is_turned_round_wherever_the_stem_is():
    pts, faces = _stem("right", 5.0)
    shift = np.array([-120.0, 60.0, 40.0])
    frame, warnings = _frame(pts + shift, faces, axis_points=(tuple(shift), tuple(shift + [0, 0, 120])))
    _close(frame.axis, [0, 0, -1])
    _close(frame.tip, shift, atol=1e-9)
    assert frame.side == "right" and len(warnings) == 1
    # the body's end reaches 8 mm from the axis (7.93 to 8 on the 24-gon)
    assert " mm from it at the given distal end and 8 mm at the proximal end " in warnings[0]


def test_the_necks_strength_does_not_depend_on_the_models_size():
    """The neck's mean offset over the proximal surface's mean distance from the axis is a ratio: the
    stem at 1/20 of its size (under 1 mm across) has the same neck direction and strength."""
    from ImplantBoneContactLib.frame import _neck_direction

    pts, faces = _stem("left", 20.0)
    axis = np.array([0.0, 0.0, -1.0])
    full = _neck_direction(pts, vertex_areas(pts, faces), np.zeros(3), axis, float(pts[:, 2].max()))
    small = 0.05 * pts
    tiny = _neck_direction(small, vertex_areas(small, faces), np.zeros(3), axis, float(small[:, 2].max()))
    assert full[1] > 0.6
    assert tiny[1] == pytest.approx(full[1], rel=1e-9)
    _close(tiny[0], full[0], atol=1e-9)
    _close(full[0], _medial("left", 20.0))


def test_a_proximal_point_given_beyond_the_model_gives_the_same_frame():
    """The stem's length is its extent along the axis, not the distance from the given proximal point:
    a point 180 mm above the model (on the head, say) finds the same neck, side and cut."""
    pts, faces = _stem("left", 10.0)
    auto, _ = _frame(pts, faces)
    given, warnings = _frame(pts, faces, axis_points=((0, 0, 300), (0, 0, 0)))
    assert warnings == []
    _close(given.medial, auto.medial)
    assert given.side == "left" and given.resection_point[2] == pytest.approx(auto.resection_point[2])


@pytest.mark.parametrize("tip_length", [0.0, 0.5])
def test_a_tip_zone_of_zero_or_half_a_millimetre_is_allowed(tip_length):
    frame, _ = _frame(*_stem("left"), tip_length_mm=tip_length)
    assert frame.tip_length_mm == tip_length


def _cone(r_tip: float, r_top: float):
    """A tube tapering linearly from radius ``r_tip`` at z = 0 to ``r_top`` at z = 120 (no neck)."""
    pts, faces = _tube([0, 0, 0], [0, 0, 120], 1.0, n_along=40, cap_start=True)
    pts[:, :2] *= (r_tip + (r_top - r_tip) * pts[:, 2] / 120.0)[:, None]
    return pts, faces


@pytest.mark.parametrize(
    "r_tip, r_top, turned",
    [
        # the reach is the mean over the end 20 % of the planes: radius at z = 12 and z = 108
        (20.0, 13.0, False),  # 19.3 vs 13.7: 5.6 mm farther but only 1.41 times: kept
        (20.0, 8.0, True),  # 18.8 vs 9.2: 2.04 times and 9.6 mm: turned round
        (8.0, 3.0, False),  # 7.5 vs 3.5: 2.1 times but only 4 mm: kept
        (13.0, 6.5, True),  # 12.35 vs 7.15: 1.73 times and 5.2 mm: turned round
    ],
)
def test_a_given_axis_is_turned_round_only_when_the_distal_end_reaches_clearly_farther(r_tip, r_top, turned):
    """Given proximal at the top (z = 120), distal at the tip: the given distal end is the wide end
    here; it is taken for the neck end only when it reaches both 1.5 times and 5 mm farther."""
    pts, faces = _cone(r_tip, r_top)
    frame, warnings = _frame(pts, faces, axis_points=((0, 0, 120), (0, 0, 0)), side="left", zone_reference="patient",
                             resection_point=(0, 0, 60), resection_normal=(0, 0, 1))
    assert (frame.axis[2] > 0) == turned
    assert any("runs from the tip to the neck" in w for w in warnings) == turned


@pytest.mark.parametrize("tilt, outcome", [(44.5, "quiet"), (45.5, "warned"), (89.5, "warned"), (90.5, "refused")])
def test_tilt_limits_of_the_automatic_axis_in_a_patient_ct(tilt, outcome):
    """Tilted about the AP axis: more than 45 degrees from inferior is warned, more than 90 refused."""
    pts, faces = _stem("left")
    bounds = np.array([[-300.0, -300.0, -300.0], [300.0, 300.0, 300.0]])
    moved = _moved(pts, _rot_y(-tilt), [0, 0, 0])
    if outcome == "refused":
        with pytest.raises(InputError, match="^the automatic stem axis puts the tip superior to the neck"):
            _frame(moved, faces, ct_bounds_ras=bounds)
        return
    _, warnings = _frame(moved, faces, ct_bounds_ras=bounds)
    assert any("degrees from the patient's inferior direction (a femoral stem" in w for w in warnings) == (outcome == "warned")


@pytest.mark.parametrize("reference", ["patient", "implant"])
def test_a_stem_tilted_toward_anterior_keeps_unit_perpendicular_directions(reference):
    """Tilted 30 degrees about the right-left axis (its tip toward posterior): the patient's anterior made
    perpendicular to the axis is (0, cos 30, sin 30) turned with the stem; medial stays +R."""
    rot = _rot_x(30.0)
    pts, faces = _stem("left")
    frame, warnings = _frame(_moved(pts, rot, [0, 0, 0]), faces, zone_reference=reference)
    assert warnings == []
    _close(frame.axis, rot @ [0, 0, -1])
    _close(frame.medial, [1, 0, 0])
    _close(frame.anterior, rot @ [0, 1, 0])
    assert frame.version_deg == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- limits met exactly, and the automatic cut's advice


def test_resection_plane_exactly_60_degrees_from_perpendicular_is_accepted():
    """The limit is "more than 60 degrees": a normal (3, 0, sqrt 3) / sqrt 12 makes exactly cos 60 = 0.5 with
    the axis (0, 0, -1) given by two points on z (both computed exactly in floating point), so it is accepted.
    Catches the limit taken with ``<=``."""
    pts, faces = _stem("left")
    frame, _ = _frame(pts, faces, axis_points=((0, 0, BODY_TOP), (0, 0, 0)), resection_point=(0, 0, 60),
                      resection_normal=(3.0, 0.0, math.sqrt(3.0)))
    assert abs(frame.resection_normal @ frame.axis) == 0.5
    assert frame.provenance["resection"] == "given"


def test_automatic_cut_within_the_tip_zone_names_the_resection_option():
    """The automatic cut lies at most 4 mm below NECK_LEAVES (93.9 mm above the tip): a 100 mm tip zone
    contains it. With no plane given the advice is to give one (--resection-plane), whatever the frame file
    said about other parts of the frame. Catches the message's option name changed or taken from the frame
    file's name of a given plane."""
    pts, faces = _stem("left")
    for sources in (None, {"resection": "the frame file f.json (--frame)"}):
        with pytest.raises(InputError) as e:
            _frame(pts, faces, tip_length_mm=100.0, sources=sources)
        msg = str(e.value)
        assert msg.startswith("the resection plane is only ")
        height = float(msg.split("only ")[1].split(" mm")[0])
        assert NECK_LEAVES - 4.0 - 0.1 <= height <= NECK_LEAVES + 0.1
        assert msg.endswith("within the tip zone (100.0 mm): check --resection-plane or --tip-length")


def _points_at(distances):
    """Points at the given distances (mm) from the z axis, on the +x side at heights 0, 10, 20, ... mm."""
    d = np.asarray(distances, dtype=float)
    return np.c_[d, np.zeros_like(d), 10.0 * np.arange(d.size)]


@pytest.mark.parametrize(
    "distances, weights, refused",
    [
        # half the area exactly 30 mm from the axis: "more than 30 mm" is not met
        ([30.0, 30.0], [1.0, 1.0], False),
        ([30.5, 30.5], [1.0, 1.0], True),
        # area-weighted median: the heavy vertex at 50 mm holds more than half the area
        ([10.0, 20.0, 25.0, 50.0], [1.0, 1.0, 1.0, 100.0], True),
        # equal weights: the median is the second of four (cumulative weight reaches half there)
        ([10.0, 20.0, 40.0, 50.0], [1.0, 1.0, 1.0, 1.0], False),
        ([10.0, 40.0, 50.0, 60.0], [1.0, 1.0, 1.0, 1.0], True),
    ],
)
def test_given_axis_is_checked_against_the_area_weighted_median_distance(distances, weights, refused):
    """Known medians of hand-made point sets around the axis z. Catches the limit moved (>= 30, > 31), the
    median taken one vertex off or from a partial sum of the weights, the last vertex never chosen."""
    from ImplantBoneContactLib.frame import _check_axis_meets_model

    pts = _points_at(distances)
    w = np.asarray(weights)
    args = (pts, w, np.array([0.0, 0.0, 100.0]), np.array([0.0, 0.0, -1.0]), "--axis")
    if refused:
        with pytest.raises(InputError, match="does not run through this model"):
            _check_axis_meets_model(*args)
    else:
        _check_axis_meets_model(*args)


@pytest.mark.parametrize("distal, warned", [((3.0, 0.0, math.sqrt(3.0)), False), ((3.0, 0.0, 1.8), True)])
def test_a_given_axis_exactly_60_degrees_from_superior_is_not_reported(distal, warned):
    """The report is for a distal end pointing more than 60 degrees toward superior (axis . S > 0.5). The
    neckless stem turned so that the given axis, (3, 0, sqrt 3) / sqrt 12, makes exactly cos 60 = 0.5 with S
    (exact in floating point) is not reported; (3, 0, 1.8), 59 degrees from superior, is. Catches the limit
    taken with ``>=``."""
    pts, faces = _stem(neck=False)
    pts = _moved(pts, _rot_y(-120.0), [0.0, 0.0, 0.0])  # the body runs from the origin along -(3, 0, sqrt 3)
    bounds = np.array([[-200.0, -100.0, -150.0], [100.0, 100.0, 100.0]])
    u = np.array(distal) / np.linalg.norm(distal)
    _, warnings = _frame(pts, faces, axis_points=((0.0, 0.0, 0.0), distal), side="left", ct_bounds_ras=bounds,
                         zone_reference="patient", resection_point=tuple(-60.0 * u), resection_normal=tuple(u))
    assert any("points its distal end superior" in w for w in warnings) == warned, warnings
