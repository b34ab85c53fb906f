"""Core behaviours checked against answers worked out by hand.

Each test names the planted bug it catches; they were written to kill mutants
that survived the rest of the suite (see TESTING.md).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from ImplantBoneContactLib import Volume, read_model, sample_surface
from ImplantBoneContactLib.frame import StemFrame, assign_zones
from ImplantBoneContactLib.mesh import points
from ImplantBoneContactLib.stats import zone_table

# ---------------------------------------------------------------- profile sampling


def _ramp_ct() -> Volume:
    """10 x 10 x 10 voxels of 1 mm, voxel centres at RAS = ijk (0..9 mm), HU = 10 * x."""
    i = np.arange(10, dtype=np.float32)
    arr = np.broadcast_to(10.0 * i[None, None, :], (10, 10, 10)).copy()
    return Volume(arr, np.eye(4))


@pytest.mark.parametrize("leaving_offset", [0, 1, 2])
def test_a_profile_sample_outside_the_ct_marks_the_vertex_outside(leaving_offset):
    """Catches: only the last (or first) offset of the profile deciding ``inside_ct``.

    The vertex is placed so that exactly the sample ``leaving_offset`` falls outside the
    box of voxel centres [0, 9] mm: the first (x = 0.5 - 1), the last (x = 8.5 + 1), or the
    middle one (the vertex itself at x = 9.5, with offsets -1, 0, -2 inside at 8.5 and 7.5).
    """
    ct = _ramp_ct()
    if leaving_offset == 0:
        x, offsets, normal = 0.5, [-1.0, 0.0, 1.0], [1.0, 0.0, 0.0]
    elif leaving_offset == 2:
        x, offsets, normal = 8.5, [-1.0, 0.0, 1.0], [1.0, 0.0, 0.0]
    else:
        x, offsets, normal = 9.5, [-1.0, 0.0, -2.0], [1.0, 0.0, 0.0]
    inside_vertex = [4.0, 4.0, 4.0]  # all three samples inside, at 10 HU per mm
    inside_hu = sorted(10.0 * (4.0 + np.array(offsets)))
    pts = np.array([[x, 4.0, 4.0], inside_vertex])
    nrm = np.array([normal, [1.0, 0.0, 0.0]])
    for aggregate in ("max", "mean", "median"):
        s = sample_surface(ct, pts, nrm, offsets_mm=np.array(offsets), aggregate=aggregate)
        assert s.inside_ct.tolist() == [False, True]
        assert math.isnan(s.hu[0])
        assert math.isnan(s.profile_hu[0, leaving_offset])
        # the other samples of the leaving vertex are still measured: 10 HU per mm
        others = [c for c in range(3) if c != leaving_offset]
        np.testing.assert_allclose(s.profile_hu[0, others], 10.0 * (x + np.array(offsets)[others] * normal[0]), atol=1e-4)
        expected = {"max": inside_hu[2], "mean": sum(inside_hu) / 3, "median": inside_hu[1]}[aggregate]
        assert s.hu[1] == pytest.approx(expected, abs=1e-4)


# ---------------------------------------------------------------- zones with a tilted cut


def _upright_frame(resection_point, resection_normal, tip_length_mm: float = 10.0) -> StemFrame:
    """Tip at the origin, axis pointing down (-z), medial +x, anterior +y: height above the tip = z."""
    n = np.asarray(resection_normal, dtype=float)
    return StemFrame(
        proximal_point=np.array([0.0, 0.0, 100.0]),
        axis=np.array([0.0, 0.0, -1.0]),
        medial=np.array([1.0, 0.0, 0.0]),
        anterior=np.array([0.0, 1.0, 0.0]),
        tip=np.zeros(3),
        resection_point=np.asarray(resection_point, dtype=float),
        resection_normal=n / np.linalg.norm(n),
        side="left",
        tip_length_mm=tip_length_mm,
    )


# A cut tilted 45 degrees about the anterior axis: the plane z = 100 + x, normal (-1, 0, 1)/sqrt(2)
# (pointing proximally). The cut meets the line parallel to the axis through (x, y) at height 100 + x.
# Depth below the cut as a fraction of the cut's height: (100 + x - z) / (100 + x); bands are thirds.
#   point          cut h   depth                         zone   (a cut perpendicular to the axis at 100 would give)
#   (-10, 0, 95)    90     above the cut                   0     depth 0.05 -> 1
#   ( 10, 0, 95)   110     15/110 = 0.136 -> proximal      7     7
#   (-10, 0, 62)    90     28/90  = 0.311 -> proximal      1     0.38 -> 2
#   ( 10, 0, 72)   110     38/110 = 0.345 -> middle        6     0.28 -> 7
#   (-10, 0, 25)    90     65/90  = 0.722 -> distal        3     3
#   ( 0, 10, 62)   100     38/100 = 0.38  -> middle        9     9   (anterior, on the tilt's hinge)
#   ( 0,-10, 20)   100     0.8            -> distal       12    12   (posterior)
#   ( 10, 0, 8)    110     tip (8 <= 10 mm)                4     4
#   ( 0, 10, 8)    100     tip                            11    11
_TILTED_POINTS = np.array(
    [[-10, 0, 95], [10, 0, 95], [-10, 0, 62], [10, 0, 72], [-10, 0, 25], [0, 10, 62], [0, -10, 20], [10, 0, 8], [0, 10, 8]],
    dtype=float,
)
_TILTED_ZONES = [0, 7, 1, 6, 3, 9, 12, 4, 11]


@pytest.mark.parametrize(
    "resection_point",
    [
        [0.0, 0.0, 100.0],  # on the axis
        [20.0, 5.0, 120.0],  # off the axis, in the same plane (z = 100 + x): the zones must not change
        [-30.0, -40.0, 70.0],
    ],
)
def test_tilted_resection_plane_gives_hand_computed_zones(resection_point):
    """Catches: cut height taken on the axis instead of through each point, a sign slip in the
    plane's intersection, the cut point projected onto the axis, swapped band borders."""
    frame = _upright_frame(resection_point, [-1.0, 0.0, 1.0])
    z = assign_zones(frame, _TILTED_POINTS)
    assert z["gruen_zone"].tolist() == _TILTED_ZONES
    np.testing.assert_allclose(z["height_mm"], _TILTED_POINTS[:, 2], atol=1e-12)
    np.testing.assert_allclose(frame.cut_height(_TILTED_POINTS), 100.0 + _TILTED_POINTS[:, 0], atol=1e-9)
    np.testing.assert_allclose(z["azimuth_deg"], [180, 0, 180, 0, 180, 90, 270, 0, 90], atol=1e-9)
    # The same plane with its normal turned round meets the same lines at the same heights.
    flipped = _upright_frame(resection_point, [1.0, 0.0, -1.0])
    np.testing.assert_allclose(flipped.cut_height(_TILTED_POINTS), 100.0 + _TILTED_POINTS[:, 0], atol=1e-9)


def test_projection_zones_of_the_tilted_cut():
    """AP view: medial half 7/6/5, lateral half 1/2/3; lateral view: anterior 8/9/10, posterior 14/13/12.
    Points on the medial-lateral line (y = 0) fall in the anterior half (r . anterior >= 0)."""
    z = assign_zones(_upright_frame([0, 0, 100], [-1, 0, 1]), _TILTED_POINTS)
    assert z["gruen_zone_ap"].tolist() == [0, 7, 1, 6, 3, 6, 5, 4, 4]
    assert z["gruen_zone_lateral"].tolist() == [0, 8, 8, 9, 10, 9, 12, 11, 11]


# Two points 8 mm above the tip, lateral and anterior. Without the cap both are distal (depth
# (100 - 8) / 100 = 0.92): lateral distal 3, anterior distal 10; inside the cap: tip 4 and 11.
@pytest.mark.parametrize("tip_length, zones", [(0.0, [3, 10]), (5.0, [3, 10]), (8.0, [4, 11]), (30.0, [4, 11])])
def test_tip_length_sets_the_tip_cap(tip_length, zones):
    """Catches: a tip cap of fixed height, < instead of <= at the cap's top (a point exactly at 8 mm)."""
    frame = _upright_frame([0, 0, 100], [0, 0, 1], tip_length_mm=tip_length)
    pts = np.array([[-10.0, 0.0, 8.0], [0.0, 10.0, 8.0]])
    assert assign_zones(frame, pts)["gruen_zone"].tolist() == zones


# ---------------------------------------------------------------- zones.csv, projection scheme


def test_projection_zone_table_by_hand():
    """Under the projection scheme each sample counts in its AP zone and in its lateral-view zone;
    the ``all`` row counts it once. Catches: only one of the two zone columns read, ``all`` doubled."""
    v = pd.DataFrame(
        {
            "area_mm2": [1.0, 2.0, 3.0, 4.0],
            "hu": [100.0, 700.0, 300.0, 900.0],
            "contact_class": ["no_bone", "cortical", "cancellous", "cortical"],
            "gruen_zone": [7, 8, 1, 0],  # the sector zone: only "all" uses it (0 = above the cut)
            "gruen_zone_ap": [7, 7, 1, 0],
            "gruen_zone_lateral": [8, 8, 14, 0],
        }
    )
    t = zone_table(v, ["no_bone", "cancellous", "cortical"], scheme="projection").set_index("zone")
    # zone 7 (AP view): samples 0 and 1, area 3, HU mean (100*1 + 700*2) / 3 = 500
    assert t.loc["7", "n_vertices"] == 2 and t.loc["7", "area_mm2"] == 3.0
    assert t.loc["7", "hu_mean"] == pytest.approx(500.0)
    assert t.loc["7", "frac_no_bone"] == pytest.approx(1 / 3) and t.loc["7", "frac_cortical"] == pytest.approx(2 / 3)
    # zone 8 (lateral view): the same two samples
    assert t.loc["8", "n_vertices"] == 2 and t.loc["8", "area_mm2"] == 3.0
    # zone 1 and 14: sample 2 alone, in both views
    for zone in ("1", "14"):
        assert t.loc[zone, "n_vertices"] == 1 and t.loc[zone, "hu_mean"] == 300.0 and t.loc[zone, "frac_cancellous"] == 1.0
        # the classes with no area there are 0, not missing (cortical is the last class)
        assert (t.loc[zone, "frac_no_bone"], t.loc[zone, "frac_cortical"]) == (0.0, 0.0)
    assert t.loc["all", "region"] == "whole stem below the resection plane"
    for zone in ("2", "3", "4", "5", "6", "9", "10", "11", "12", "13"):
        assert t.loc[zone, "n_vertices"] == 0 and t.loc[zone, "area_mm2"] == 0.0
    # all: samples 0-2 once (sample 3 is above the cut)
    assert t.loc["all", "n_vertices"] == 3 and t.loc["all", "area_mm2"] == 6.0
    assert t.loc["all", "hu_mean"] == pytest.approx((100 + 1400 + 900) / 6)
    # the sector scheme on the same table reads gruen_zone only
    s = zone_table(v, ["no_bone", "cancellous", "cortical"]).set_index("zone")
    assert s.loc["7", "n_vertices"] == 1 and s.loc["8", "n_vertices"] == 1 and s.loc["14", "n_vertices"] == 0


# ---------------------------------------------------------------- warnings


def test_no_metal_warning_on_a_preoperative_ct(phantom_result):
    """The phantom CT has bone and soft tissue only (max 1800 HU < 2500): catches a metal warning
    raised whatever the metal fraction (the post-operative case is in test_sampling)."""
    assert not any("metal" in w for w in phantom_result.warnings), phantom_result.warnings
    assert not (phantom_result.vertices["contact_class"] == "metal").any()


# ---------------------------------------------------------------- OBJ and PLY files

_TETRA = np.array([[10.0, 20.0, 30.0], [15.0, 20.0, 30.0], [10.0, 26.0, 30.0], [10.0, 20.0, 37.0]])
_TETRA_FACES = [(0, 2, 1), (0, 1, 3), (0, 3, 2), (1, 2, 3)]


def _write_obj(path, comment: str | None) -> None:
    lines = [f"# {comment}"] if comment else ["# exported mesh"]
    lines += [f"v {x:g} {y:g} {z:g}" for x, y, z in _TETRA]
    lines += [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in _TETRA_FACES]
    path.write_text("\n".join(lines) + "\n")


def _write_ply(path, comment: str | None) -> None:
    head = ["ply", "format ascii 1.0"]
    head += [f"comment {comment}"] if comment else ["comment exported mesh"]
    head += ["element vertex 4", "property float x", "property float y", "property float z",
             "element face 4", "property list uchar int vertex_indices", "end_header"]
    body = [f"{x:g} {y:g} {z:g}" for x, y, z in _TETRA] + [f"3 {a} {b} {c}" for a, b, c in _TETRA_FACES]
    path.write_text("\n".join(head + body) + "\n")


@pytest.mark.parametrize("writer, suffix", [(_write_obj, ".obj"), (_write_ply, ".ply")])
@pytest.mark.parametrize("comment, space", [("SPACE=RAS", "RAS"), ("SPACE=LPS", "LPS"), (None, None)])
def test_obj_and_ply_coordinates_follow_the_space_comment(tmp_path, writer, suffix, comment, space):
    """The coordinates read back are the file's, in RAS: x and y negated unless the file says RAS.
    Catches: the SPACE comment ignored, an LPS file not flipped, a flip of z."""
    path = tmp_path / f"tetra{suffix}"
    writer(path, comment)
    poly, info = read_model(path)
    assert info.space_in_file == space
    assert info.space_used == (space or "LPS")
    expected = _TETRA if space == "RAS" else _TETRA * np.array([-1.0, -1.0, 1.0])
    got = points(poly)
    assert got.shape == (4, 3)
    # the reader may reorder nothing here, but compare as sets of rows to stay independent of it
    np.testing.assert_allclose(np.array(sorted(map(tuple, got))), np.array(sorted(map(tuple, expected))), atol=1e-5)
    # an explicit space overrides the comment
    poly2, info2 = read_model(path, space="RAS")
    assert info2.space_used == "RAS"
    np.testing.assert_allclose(np.array(sorted(map(tuple, points(poly2)))), np.array(sorted(map(tuple, _TETRA))), atol=1e-5)


# ---------------------------------------------------------------- command-line option plumbing

_COMMON = ["analyze", "--ct", "ct.nrrd", "--model", "stem.stl", "--out", "out"]


def _params(options: list[str]):
    from ImplantBoneContactLib.cli import _join_coordinate_values, build_parser, parameters_from_args

    return parameters_from_args(build_parser().parse_args(_join_coordinate_values(_COMMON + options)))


def test_command_line_defaults_are_the_library_defaults():
    """Catches: a command-line default that differs from AnalysisParameters' (points, metal level, ...)."""
    from ImplantBoneContactLib import AnalysisParameters

    assert _params([]) == AnalysisParameters()


def test_every_analysis_option_reaches_the_parameters():
    """Each option given a value that is not its default, and the parameters written out by hand.
    Catches: an option dropped, read into the wrong field, or its coordinates parsed out of order."""
    from ImplantBoneContactLib import AnalysisParameters

    got = _params(["--remesh", "none", "--points", "3000", "--subdivide", "2", "--sampling", "nearest", "--offset", "-1.5",
                   "--profile", "0.5:3:0.5", "--profile-aggregate", "median", "--classes", "fixation", "--metal-hu", "3000",
                   "--axis", "-10,2,3:4,5,-60", "--medial-point", "-1,2.5,3", "--resection-plane=1,2,3:0,0.2,1",
                   "--side", "right", "--tip-length", "8", "--zone-scheme", "projection", "--zone-reference", "patient",
                   "--bands-axial", "0.4,0.3,0.3", "--model-space", "ras", "--series-uid", "1.2.3"])
    assert got == AnalysisParameters(
        remesh="none", points=3000, subdivide=2, sampling="nearest", offset_mm=-1.5, profile="0.5:3:0.5",
        profile_aggregate="median", classes="fixation", metal_hu=3000.0, zone_scheme="projection",
        bands_axial=(0.4, 0.3, 0.3), tip_length_mm=8.0, axis=((-10.0, 2.0, 3.0), (4.0, 5.0, -60.0)),
        medial_point=(-1.0, 2.5, 3.0), resection_point=(1.0, 2.0, 3.0), resection_normal=(0.0, 0.2, 1.0),
        side="right", zone_reference="patient", model_space="RAS", series_uid="1.2.3",
    )
    assert _params(["--no-metal-class"]).metal_hu is None


def test_frame_file_fills_the_frame_parameters_and_options_override_it(tmp_path):
    """--frame gives axis (proximal point to tip), a medial point 10 mm from the tip along medial,
    the resection plane and the side; --axis, --medial-point, --resection-plane, --side given as well win."""
    import json

    frame = _upright_frame([0.0, 0.0, 90.0], [0.0, 0.0, 1.0])
    (tmp_path / "frame.json").write_text(frame.to_json())
    p = _params(["--frame", str(tmp_path / "frame.json")])
    assert p.axis == ((0.0, 0.0, 100.0), (0.0, 0.0, 0.0))
    assert p.medial_point == (10.0, 0.0, 0.0)
    assert (p.resection_point, p.resection_normal) == ((0.0, 0.0, 90.0), (0.0, 0.0, 1.0))
    assert p.side == "left" and p.frame_file == str(tmp_path / "frame.json")
    q = _params(["--frame", str(tmp_path / "frame.json"), "--axis", "1,2,3:4,5,6", "--medial-point", "7,8,9",
                 "--resection-plane", "1,1,1:0,1,0", "--side", "right"])
    assert (q.axis, q.medial_point, q.side) == (((1.0, 2.0, 3.0), (4.0, 5.0, 6.0)), (7.0, 8.0, 9.0), "right")
    assert (q.resection_point, q.resection_normal) == ((1.0, 1.0, 1.0), (0.0, 1.0, 0.0))
    (tmp_path / "bad.json").write_text(json.dumps({"axis": [0, 0, 1]}))
    from ImplantBoneContactLib import InputError

    with pytest.raises(InputError, match="bad.json"):
        _params(["--frame", str(tmp_path / "bad.json")])
    with pytest.raises(InputError, match="nope.json"):
        _params(["--frame", str(tmp_path / "nope.json")])


# ---------------------------------------------------------------- contact classes


@pytest.mark.parametrize(
    "bands, message",
    [
        ([], "^at least one contact class is needed$"),
        ([("a", float("nan"), 100.0)], "class 'a' has a NaN limit"),
        ([("a", 0.0, float("nan"))], "class 'a' has a NaN limit"),
        ([("a", 100.0, 100.0)], "class 'a' is empty or reversed: low 100.0 HU is not below high 100.0 HU"),
        ([("b", 200.0, 300.0), ("a", 0.0, 200.0)], r"contact classes must be listed from low to high HU: b \[200.0, 300.0\), a \[0.0, 200.0\)"),
        # the overlap is between the second and the third band: every neighbouring pair is checked
        ([("a", 0.0, 100.0), ("b", 100.0, 200.0), ("c", 150.0, 300.0)], r"'b' \[100.0, 200.0\) and 'c' \[150.0, 300.0\) overlap"),
    ],
)
def test_bad_bands_are_refused_with_the_reason(bands, message):
    """Catches: a check dropped or loosened (``or`` to ``and``, ``<`` to ``<=``, only the first pair compared)."""
    from ImplantBoneContactLib import ContactBand, InputError
    from ImplantBoneContactLib.classes import validate_bands

    with pytest.raises(InputError, match=message):
        validate_bands([ContactBand(*b) for b in bands])


def test_touching_bands_are_accepted_and_sorted():
    from ImplantBoneContactLib import ContactBand
    from ImplantBoneContactLib.classes import validate_bands

    bands = [ContactBand("a", -math.inf, 0.0), ContactBand("b", 0.0, 1.0), ContactBand("c", 1.0, math.inf)]
    assert validate_bands(bands) == tuple(bands)


def test_bands_to_json_writes_infinities_as_text():
    from ImplantBoneContactLib import ContactBand
    from ImplantBoneContactLib.classes import bands_to_json

    bands = (ContactBand("none", -math.inf, 150.0), ContactBand("bone", 150.0, math.inf))
    assert bands_to_json(bands) == [
        {"name": "none", "low_hu": "-inf", "high_hu": 150.0},
        {"name": "bone", "low_hu": 150.0, "high_hu": "inf"},
    ]


def test_class_codes_and_labels_by_hand():
    """Codes index class_labels: bands in order, metal, unclassified, not_sampled.
    Band [low, high) includes low; metal from metal_hu up overrides a band; NaN and inf are not sampled."""
    from ImplantBoneContactLib import ContactBand
    from ImplantBoneContactLib.classes import class_labels, class_names, classify, classify_codes

    bands = (ContactBand("low", 0.0, 100.0), ContactBand("high", 200.0, 3000.0))
    hu = np.array([0.0, 99.9, 100.0, 150.0, 200.0, 2499.0, 2500.0, np.nan, np.inf, -1.0])
    assert class_labels(bands) == ["low", "high", "metal", "unclassified", "not_sampled"]
    assert class_labels(bands, include_metal=False) == ["low", "high", "unclassified", "not_sampled"]
    assert class_names(bands) == ["low", "high", "metal"] and class_names(bands, False) == ["low", "high"]
    assert classify_codes(hu, bands, 2500.0).tolist() == [0, 0, 3, 3, 1, 1, 2, 4, 4, 3]
    assert classify_codes(hu, bands, None).tolist() == [0, 0, 2, 2, 1, 1, 1, 3, 3, 2]
    assert classify(hu, bands, 2500.0).tolist() == ["low", "low", "unclassified", "unclassified", "high", "high",
                                                    "metal", "not_sampled", "not_sampled", "unclassified"]
    assert classify(hu, bands, None).tolist() == ["low", "low", "unclassified", "unclassified", "high", "high",
                                                  "high", "not_sampled", "not_sampled", "unclassified"]
    # documented types: one byte per code (millions of surface samples), Python strings for the labels
    assert classify_codes(hu, bands).dtype == np.int8 and classify(hu, bands).dtype == object


def test_class_specs_from_text_and_files(tmp_path):
    """Catches: spaces not stripped, the JSON file's bands not validated, a wrong message for a missing file."""
    import json

    from ImplantBoneContactLib import ContactBand, InputError, parse_classes

    assert parse_classes("  soft : -inf : 150 ,  bone:150:inf ") == (
        ContactBand("soft", -math.inf, 150.0), ContactBand("bone", 150.0, math.inf))
    with pytest.raises(InputError, match="class file not found"):
        parse_classes(str(tmp_path / "missing.json"))
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(InputError, match="cannot read classes from .*broken.json: expected a JSON list"):
        parse_classes(str(tmp_path / "broken.json"))
    (tmp_path / "nokey.json").write_text(json.dumps([{"name": "a", "low_hu": 0}]))
    with pytest.raises(InputError, match="cannot read classes from"):
        parse_classes(str(tmp_path / "nokey.json"))
    (tmp_path / "overlap.json").write_text(json.dumps([{"name": "a", "low_hu": 0, "high_hu": 200},
                                                       {"name": "b", "low_hu": 100, "high_hu": 300}]))
    with pytest.raises(InputError, match="overlap"):
        parse_classes(str(tmp_path / "overlap.json"))
    with pytest.raises(InputError, match=r"use name:low:high \(HU\), .* or a preset: default, pedicle-screw, fixation$"):
        parse_classes("a:0")
    (tmp_path / "bands.txt").write_text(json.dumps([{"name": "a", "low_hu": 0, "high_hu": 200}]))
    assert parse_classes(str(tmp_path / "bands.txt")) == (ContactBand("a", 0.0, 200.0),)  # any existing file is JSON


# ---------------------------------------------------------------- sampling


def _trilinear_function(i, j, k):
    """A function trilinear interpolation reproduces exactly (every term of degree <= 1 in each index)."""
    return 1.0 + 2.0 * i + 3.0 * j + 5.0 * k + 7.0 * i * j + 11.0 * j * k + 13.0 * i * k + 17.0 * i * j * k


def _oblique_ct(shape_kji=(6, 5, 4), dtype=np.float64) -> Volume:
    """Voxel (i, j, k) holds _trilinear_function(i, j, k); spacing 0.7/1.3/2.1 mm, rotated, shifted origin."""
    k, j, i = np.meshgrid(*[np.arange(n, dtype=float) for n in shape_kji], indexing="ij")
    c, s = math.cos(0.4), math.sin(0.4)
    m = np.eye(4)
    m[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ np.diag([0.7, 1.3, 2.1])
    m[:3, 3] = [-12.0, 30.5, 7.0]
    return Volume(_trilinear_function(i, j, k).astype(dtype), m)


def _ras(ct: Volume, ijk: np.ndarray) -> np.ndarray:
    return ijk @ ct.ijk_to_ras[:3, :3].T + ct.ijk_to_ras[:3, 3]


def test_trilinear_reproduces_a_trilinear_function_everywhere_inside():
    """Exact (to rounding) at random points, on the voxel centres and on the upper faces of the box.
    Catches: swapped weights (fi for 1 - fi), a wrong stride, the last cell's base not clamped."""
    from ImplantBoneContactLib import sample

    ct = _oblique_ct()
    upper = np.array([3.0, 4.0, 5.0])
    rng = np.random.default_rng(3)
    ijk = np.vstack([rng.random((200, 3)) * upper, [[0, 0, 0], upper, [3, 0, 5], [0, 4, 0], [1.5, 4.0, 2.25]]])
    hu, inside = sample(ct, _ras(ct, ijk), "trilinear")
    assert inside.all()
    np.testing.assert_allclose(hu, _trilinear_function(*ijk.T), rtol=1e-9, atol=1e-9)


def test_trilinear_edge_tolerance_and_outside():
    """Within 1e-3 voxel of the box of voxel centres: sampled, clamped to the face; 1e-2 outside: NaN."""
    from ImplantBoneContactLib import sample

    ct = _oblique_ct()
    ijk = np.array([[-1e-3, 2.0, 2.0], [3.001, 2.0, 2.0], [1.0, -1e-3, 5.001], [-0.01, 2, 2], [3.01, 2, 2], [1, 4.01, 2],
                    [1, 2, -0.01], [1, 2, 5.01], [np.nan, 1, 1]])
    hu, inside = sample(ct, _ras(ct, ijk), "trilinear")
    assert inside.tolist() == [True, True, True, False, False, False, False, False, False]
    np.testing.assert_allclose(hu[:3], [_trilinear_function(0, 2, 2), _trilinear_function(3, 2, 2), _trilinear_function(1, 0, 5)],
                               rtol=1e-12)
    assert np.isnan(hu[3:]).all()
    # the tolerance is 1e-3 of a voxel diagonal, 1.732e-3 voxel, as vtkProbeFilter's (accepts 1.72e-3, refuses 1.74e-3)
    edge = np.array([[-1.730e-3, 1, 1], [1, 1, 5 + 1.730e-3], [-1.735e-3, 1, 1], [1, 1, 5 + 1.735e-3]])
    assert sample(ct, _ras(ct, edge), "trilinear")[1].tolist() == [True, True, False, False]


def test_trilinear_on_a_ct_two_voxels_thick():
    """With two voxels along an axis there is one cell: the upper face uses it with weight 1."""
    from ImplantBoneContactLib import sample

    ct = _oblique_ct(shape_kji=(2, 2, 2))
    ijk = np.array([[1.0, 1.0, 1.0], [0.25, 0.5, 1.0], [1.0, 0.0, 0.75]])
    hu, inside = sample(ct, _ras(ct, ijk), "trilinear")
    assert inside.all()
    np.testing.assert_allclose(hu, _trilinear_function(*ijk.T), rtol=1e-12)


def test_nearest_takes_the_closest_voxel_halves_up():
    """Catches: rounding half to even or down, the box of voxel extents off by half a voxel."""
    from ImplantBoneContactLib import sample

    ct = _oblique_ct(dtype=np.int32)
    ijk = np.array([[0.49, 1.0, 1.0], [0.5, 1.0, 1.0], [2.5, 3.5, 4.5], [-0.5, -0.5, -0.5], [3.49, 4.49, 5.49],
                    [-0.51, 1, 1], [3.5, 1, 1], [1, 4.5, 1], [1, 1, 5.5], [1, 1, -0.51]])
    hu, inside = sample(ct, _ras(ct, ijk), "nearest")
    assert inside.tolist() == [True] * 5 + [False] * 5
    expected = [_trilinear_function(0, 1, 1), _trilinear_function(1, 1, 1), _trilinear_function(3, 4, 5),
                _trilinear_function(0, 0, 0), _trilinear_function(3, 4, 5)]
    np.testing.assert_allclose(hu[:5], expected, rtol=1e-12)
    assert np.isnan(hu[5:]).all()


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_infinite_voxels_give_no_value_and_bad_methods_are_refused():
    from ImplantBoneContactLib import InputError, sample

    arr = np.zeros((3, 3, 3))
    arr[0, 0, 0] = np.inf
    ct = Volume(arr, np.eye(4))
    # (1, 1, 1) is the corner of the cell [1, 2]^3, which holds no infinite voxel
    hu, inside = sample(ct, np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]), "trilinear")
    assert inside.all() and np.isnan(hu[:2]).all() and hu[2] == 0.0
    hu, _ = sample(ct, np.array([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), "nearest")
    assert np.isnan(hu[0]) and hu[1] == 0.0
    with pytest.raises(InputError, match="unknown sampling method 'cubic'"):
        sample(ct, np.zeros((1, 3)), "cubic")
    with pytest.raises(InputError, match="unknown profile aggregate 'min'"):
        sample_surface(ct, np.zeros((1, 3)), np.array([[1.0, 0, 0]]), offsets_mm=np.array([0.0, 0.5]), aggregate="min")


@pytest.mark.parametrize(
    "text, offsets",
    [("0:3:0.5", [0, 0.5, 1, 1.5, 2, 2.5, 3]), ("0:1:0.3", [0, 0.3, 0.6, 0.9]), ("-1:1:1", [-1, 0, 1]), ("2:2:1", [2]),
     ("0:0.3:0.1", [0, 0.1, 0.2, 0.3]), ("0:999:1", list(range(1000)))],
)
def test_profile_offsets(text, offsets):
    """STOP is included when reached (also when STEP does not divide it exactly in binary), never passed."""
    from ImplantBoneContactLib.sampling import parse_profile

    np.testing.assert_allclose(parse_profile(text), offsets, atol=1e-12)


@pytest.mark.parametrize(
    "text, message",
    [("0:3", "START:STOP:STEP in mm"), ("0:3:0.5:1", "START:STOP:STEP in mm"), ("a:1:1", "three numbers"),
     ("0:inf:1", "finite"), ("nan:1:1", "finite"), ("0:1:0", "STEP must be positive"), ("0:1:-1", "STEP must be positive"),
     ("2:1:1", r"STOP \(1.0\) is below START \(2.0\)"), ("0:1000:1", "1001 offsets: at most 1000")],
)
def test_bad_profiles_are_refused(text, message):
    from ImplantBoneContactLib import InputError
    from ImplantBoneContactLib.sampling import parse_profile

    with pytest.raises(InputError, match=message):
        parse_profile(text)


# ---------------------------------------------------------------- statistics


def test_zone_table_with_categorical_classes_and_a_separate_vertex_table():
    """As analysis builds it: classes as a pandas Categorical (with labels outside the reported
    classes and a missing entry), area integrated over the samples, counts from the vertices.
    Catches: category codes mapped to the wrong class, a missing entry counted as a class,
    the vertex counts taken from the samples."""
    names = ["no_bone", "cortical"]
    samples = pd.DataFrame(
        {
            "area_mm2": [1.0, 2.0, 4.0, 8.0, 16.0],
            "hu": [50.0, 900.0, 3000.0, 100.0, np.nan],
            # categories in another order than names, one (metal) not reported, one entry missing
            "contact_class": pd.Categorical(["no_bone", "cortical", "metal", None, "no_bone"],
                                            categories=["metal", "cortical", "no_bone"]),
            "gruen_zone": [1, 1, 1, 1, 1],
        }
    )
    # a sixth sample in zone 3 with an area below 1 mm2: its fractions are fractions all the same
    samples.loc[5] = [0.25, 200.0, "cortical", 3]
    vertices = pd.DataFrame({"hu": [10.0, np.nan, 20.0], "gruen_zone": [1, 1, 2]})
    t = zone_table(samples, names, vertices=vertices).set_index("zone")
    # sampled area 1 + 2 + 4 + 8 = 15: no_bone 1, cortical 2 (metal and the missing class are in no column)
    assert t.loc["1", "area_mm2"] == 31.0 and t.loc["1", "area_sampled_mm2"] == 15.0
    assert t.loc["1", "frac_no_bone"] == pytest.approx(1 / 15) and t.loc["1", "frac_cortical"] == pytest.approx(2 / 15)
    assert (t.loc["1", "n_vertices"], t.loc["1", "n_sampled"]) == (2, 1)
    assert (t.loc["2", "n_vertices"], t.loc["2", "n_sampled"], t.loc["2", "area_mm2"]) == (1, 1, 0.0)
    assert math.isnan(t.loc["2", "frac_no_bone"])
    assert (t.loc["all", "n_vertices"], t.loc["all", "n_sampled"]) == (3, 2)
    assert (t.loc["3", "frac_cortical"], t.loc["3", "frac_no_bone"], t.loc["3", "area_mm2"]) == (1.0, 0.0, 0.25)


def test_zone_table_reads_nullable_integer_columns():
    """HU and area as pandas nullable integers (pd.NA for a vertex outside the CT) are numbers, NA is not sampled."""
    v = pd.DataFrame(
        {
            "area_mm2": pd.array([1, 3, 2], dtype="Int64"),
            "hu": pd.array([100, 300, None], dtype="Int64"),
            "contact_class": ["no_bone", "cortical", "not_sampled"],
            "gruen_zone": [5, 5, 5],
        }
    )
    t = zone_table(v, ["no_bone", "cortical"]).set_index("zone")
    assert t.loc["5", "hu_mean"] == pytest.approx(250.0) and t.loc["5", "area_sampled_mm2"] == 4.0
    assert t.loc["5", "n_sampled"] == 2 and t.loc["5", "area_mm2"] == 6.0


def test_weighted_stats_by_hand():
    """Zero weights and NaN values leave a value out of every statistic, min and max included.
    Values 100, 200, 400 with weights 1, 2, 1: mean 225, variance (125^2 + 2*25^2 + 175^2) / 4,
    inverted-CDF quantiles: cumulative weight 1/4, 3/4, 1 -> p05, p25: 100; median, p75: 200; p95: 400."""
    from ImplantBoneContactLib.stats import weighted_stats

    s = weighted_stats(np.array([100.0, 200.0, 400.0, 1000.0, np.nan, -50.0]), np.array([1.0, 2.0, 1.0, 0.0, 3.0, -1.0]))
    assert s["hu_mean"] == pytest.approx(225.0)
    assert s["hu_std"] == pytest.approx(math.sqrt((125**2 + 2 * 25**2 + 175**2) / 4))
    assert (s["hu_min"], s["hu_max"]) == (100.0, 400.0)
    assert [s[k] for k in ("hu_p05", "hu_p25", "hu_median", "hu_p75", "hu_p95")] == [100.0, 100.0, 200.0, 200.0, 400.0]
    empty = weighted_stats(np.array([5.0]), np.array([0.0]))
    assert list(empty) == ["hu_mean", "hu_std", "hu_min", "hu_p05", "hu_p25", "hu_median", "hu_p75", "hu_p95", "hu_max"]
    assert all(math.isnan(x) for x in empty.values())


def test_triangle_samples_by_hand():
    """One right triangle (legs 3 and 4 mm, area 6) with HU linear in x: 2 x 2 sub-triangles, each
    sample at a sub-triangle's centroid worth 1.5 mm^2; with max_samples below 4 the centroid alone."""
    from ImplantBoneContactLib.stats import _centre_weights, triangle_samples

    np.testing.assert_allclose(
        _centre_weights(2), [[2 / 3, 1 / 6, 1 / 6], [1 / 3, 1 / 3, 1 / 3], [1 / 6, 1 / 6, 2 / 3], [1 / 6, 2 / 3, 1 / 6]], atol=1e-15
    )
    pts = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, 4.0, 0.0], [9.0, 9.0, 9.0]])
    faces = np.array([[0, 1, 2]])
    hu = np.array([0.0, 300.0, 0.0, np.nan])  # 100 HU per mm of x; the unused vertex is unsampled
    s = triangle_samples(pts, faces, hu)
    assert s.subdivisions == 2
    expected_points = np.array([[0.5, 2 / 3, 0], [1.0, 4 / 3, 0], [0.5, 8 / 3, 0], [2.0, 2 / 3, 0]])
    np.testing.assert_allclose(s.points, expected_points, atol=1e-12)
    np.testing.assert_allclose(s.hu, 100.0 * expected_points[:, 0], atol=1e-9)
    np.testing.assert_allclose(s.area_mm2, [1.5] * 4)
    one = triangle_samples(pts, faces, hu, max_samples=3)
    assert one.subdivisions == 1
    np.testing.assert_allclose(one.points, [[1.0, 4 / 3, 0.0]])
    np.testing.assert_allclose((one.hu, one.area_mm2), ([100.0], [6.0]))
    # a field is sampled at the sample points, with the vertex normals interpolated and made unit length
    seen = {}

    def field(p, n):
        seen["p"], seen["n"] = p, n
        return p[:, 1] * 10.0

    normals = np.array([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 3.0], [1.0, 0.0, 0.0]])
    f = triangle_samples(pts, faces, hu, field=field, normals=normals)
    np.testing.assert_allclose(f.hu, 10.0 * expected_points[:, 1], atol=1e-9)
    np.testing.assert_allclose(seen["n"], [[0, 0, 1]] * 4, atol=1e-12)
    # no normals: the field gets zero normals; normals that cancel at a sample give a zero normal there, not
    # NaN: corners 0, 1, 2 with normals 0, +x, -x cancel at the two samples weighting corners 1 and 2 alike
    triangle_samples(pts, faces, hu, field=field)
    assert seen["n"].shape == (4, 3) and seen["n"].dtype == np.float64
    np.testing.assert_array_equal(seen["n"], np.zeros((4, 3)))
    cancelling = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    triangle_samples(pts, faces, hu, field=field, normals=cancelling)
    np.testing.assert_array_equal(seen["n"], [[0, 0, 0], [0, 0, 0], [-1, 0, 0], [1, 0, 0]])
    # a triangle with an unsampled corner gives NaN samples, the field is not asked about it
    seen.clear()
    g = triangle_samples(pts, np.array([[0, 1, 3]]), hu, field=field, normals=normals)
    assert np.isnan(g.hu).all() and "p" not in seen


@pytest.mark.parametrize("block", [4, 8, 12, 1_000_000])
def test_field_sampled_block_by_block_gives_every_sample(monkeypatch, block):
    """The field is asked for blocks of triangles (to bound memory); with blocks of 1, 2 or 3 triangles
    of 4 samples each every sample still gets the field at its own position and normal."""
    from ImplantBoneContactLib import stats

    monkeypatch.setattr(stats, "_FIELD_BLOCK", block)
    rng = np.random.default_rng(11)
    pts = rng.random((9, 3)) * 20.0
    faces = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8], [8, 0, 3], [1, 5, 7], [0, 4, 8]])
    normals = rng.normal(size=(9, 3))

    def field(p, n):
        return 3.0 * p[:, 0] - 2.0 * p[:, 1] + p[:, 2] + 100.0 * n[:, 0]

    s = stats.triangle_samples(pts, faces, np.zeros(9), field=field, normals=normals)
    bary = stats._centre_weights(2)
    corners = pts[faces]  # (F, 3, 3)
    positions = np.einsum("sc,fcd->fsd", bary, corners).reshape(-1, 3)
    n = np.einsum("sc,fcd->fsd", bary, normals[faces]).reshape(-1, 3)
    n /= np.linalg.norm(n, axis=1, keepdims=True)
    np.testing.assert_allclose(s.points, positions, atol=1e-12)
    np.testing.assert_allclose(s.hu, field(positions, n), atol=1e-9)


def test_coordinate_values_are_joined_to_their_option():
    """Values starting with "-" after a coordinate option are glued to it; other options and a last
    option without value are left alone."""
    from ImplantBoneContactLib.cli import _join_coordinate_values

    argv = ["analyze", "--axis", "-1,2,3:4,5,6", "--points", "-5", "--medial-point", "-7,8,9", "--resection-plane",
            "-1,0,0:0,0,1", "--bands-axial", "0.5,0.25,0.25", "--side"]
    assert _join_coordinate_values(argv) == [
        "analyze", "--axis=-1,2,3:4,5,6", "--points", "-5", "--medial-point=-7,8,9", "--resection-plane=-1,0,0:0,0,1",
        "--bands-axial=0.5,0.25,0.25", "--side"]
    assert _join_coordinate_values(["--axis"]) == ["--axis"]
    assert _join_coordinate_values([]) == []


@pytest.mark.parametrize(
    "text, message",
    [("1,2", "--axis must be three finite numbers X,Y,Z in RAS mm, got '1,2'"),
     ("1,2,x", "--axis must be three numbers X,Y,Z in RAS mm, got '1,2,x'"),
     ("1,2,nan", "--axis must be three finite numbers"), ("1,inf,2", "--axis must be three finite numbers"),
     ("-inf,1,2", "--axis must be three finite numbers"), ("1,2,3,4", "--axis must be three finite numbers")],
)
def test_bad_points_are_refused(text, message):
    from ImplantBoneContactLib import InputError
    from ImplantBoneContactLib.cli import _point

    with pytest.raises(InputError, match=f"^{message.replace('(', '[(]')}"):
        _point(text, "--axis")


def test_points_and_pairs_by_hand():
    from ImplantBoneContactLib import InputError
    from ImplantBoneContactLib.cli import _pair, _point

    assert _point(" -1.5, 2e1 ,3", "x") == (-1.5, 20.0, 3.0)
    assert _pair("1,2,3:-4,-5,-6", "x") == ((1.0, 2.0, 3.0), (-4.0, -5.0, -6.0))
    for bad in ("1,2,3", "1,2,3:4,5,6:7,8,9"):
        with pytest.raises(InputError, match=f"^--resection-plane must be X,Y,Z:X,Y,Z, got '{bad}'$"):
            _pair(bad, "--resection-plane")


def test_parser_choices_and_defaults():
    """The demo subcommand's defaults and the analysis options' choices, as documented in the README."""
    from ImplantBoneContactLib.cli import build_parser

    p = build_parser()
    demo = p.parse_args(["demo", "--out", "d"])
    assert (demo.command, demo.voxel, demo.side, demo.metal, demo.overwrite, demo.no_pictures, demo.quiet, demo.progress) == (
        "demo", 0.7, "left", False, False, False, False, False)
    a = p.parse_args(["analyze", "--ct", "c", "--model", "m", "--out", "o", "--model-space", "lps"])
    assert (a.command, a.model_space, a.frame, a.overwrite, a.quiet, a.progress, a.no_pictures) == (
        "analyze", "LPS", None, False, False, False, False)
    for option, bad in (("--remesh", "quadric"), ("--sampling", "cubic"), ("--profile-aggregate", "min"),
                        ("--side", "up"), ("--zone-scheme", "radial"), ("--zone-reference", "world"), ("--model-space", "xyz")):
        with pytest.raises(SystemExit):
            p.parse_args(["analyze", "--ct", "c", "--model", "m", "--out", "o", option, bad])
    with pytest.raises(SystemExit):
        p.parse_args(["analyze", "--ct", "c", "--model", "m"])  # --out is required
    with pytest.raises(SystemExit):
        p.parse_args([])  # a subcommand is required


@pytest.mark.parametrize("max_samples, m", [(28, 2), (27, 1), (7, 1), (0, 1)])
def test_subdivisions_follow_the_sample_budget(max_samples, m):
    """7 triangles: 2 x 2 sub-triangles each while 4 * 7 = 28 samples fit the budget, else the centroid
    alone (also when even 7 samples do not fit: 1 is the last resort)."""
    from ImplantBoneContactLib.stats import triangle_samples

    rng = np.random.default_rng(2)
    pts = rng.random((9, 3)) * 10.0
    faces = np.array([[0, 1, 2], [2, 3, 4], [4, 5, 6], [6, 7, 8], [8, 0, 3], [1, 5, 7], [0, 4, 8]])
    s = triangle_samples(pts, faces, np.ones(9), max_samples=max_samples)
    assert s.subdivisions == m and len(s.hu) == 7 * m * m
    # faces given as floats (as from a text file) are indices all the same
    f = triangle_samples(pts, faces.astype(float), np.ones(9), max_samples=max_samples)
    np.testing.assert_array_equal(f.points, s.points)


def test_sampling_box_edges_are_inclusive_on_an_identity_grid():
    """With voxel index = RAS mm the box edges are hit exactly: trilinear accepts points exactly at the
    edge tolerance on both sides, nearest accepts -0.5 and refuses upper + 0.5 (half-open voxel extents);
    a non-finite point is outside without taking the others with it."""
    from ImplantBoneContactLib import sample
    from ImplantBoneContactLib.sampling import _EDGE_TOLERANCE

    ct = _ramp_ct()  # 10 voxels a side, HU = 10 x
    t = _EDGE_TOLERANCE
    pts = np.array([[-t, 4, 4], [4, -t, 4], [4, 4, -t], [9 + t, 4, 4], [4, 9 + t, 4], [4, 4, 9 + t]])
    hu, inside = sample(ct, pts, "trilinear")
    assert inside.all()
    np.testing.assert_allclose(hu, [0, 40, 40, 90, 40, 40], atol=1e-9)
    pts = np.array([[-0.5, 4, 4], [9.5, 4, 4], [4, 9.5, 4], [4, 4, 9.5], [np.nan, 4, 4], [2.2, 4, 4]])
    hu, inside = sample(ct, pts, "nearest")
    assert inside.tolist() == [True, False, False, False, False, True]
    assert hu[0] == 0.0 and hu[5] == 20.0 and np.isnan(hu[1:5]).all()


def test_fortran_ordered_ct_samples_as_c_ordered():
    from ImplantBoneContactLib import sample

    ct = _oblique_ct()
    fortran = Volume(np.asfortranarray(ct.array), ct.ijk_to_ras)
    pts = _ras(ct, np.random.default_rng(4).random((50, 3)) * np.array([3.0, 4.0, 5.0]))
    for method in ("trilinear", "nearest"):
        np.testing.assert_array_equal(sample(fortran, pts, method)[0], sample(ct, pts, method)[0])


def test_surface_sampling_options_by_hand():
    """On the ramp (HU = 10 x): the default offset is 0, the method is passed on, two offsets are a
    profile, each vertex is aggregated over its own profile only, and the offsets are reported."""
    from ImplantBoneContactLib import InputError, sample

    ct = _ramp_ct()
    pts = np.array([[2.3, 4.0, 4.0], [5.6, 4.0, 4.0]])
    nrm = np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    s = sample_surface(ct, pts, nrm)
    np.testing.assert_allclose(s.hu, [23.0, 56.0], atol=1e-9)
    assert s.hu.dtype == np.float64 and s.offsets_mm.tolist() == [0.0]
    np.testing.assert_allclose(sample_surface(ct, pts, nrm, method="nearest").hu, [20.0, 60.0])
    two = sample_surface(ct, pts, nrm, offsets_mm=np.array([0.0, 1.0]), aggregate="max")
    np.testing.assert_allclose(two.hu, [33.0, 66.0], atol=1e-9)
    assert two.offsets_mm.tolist() == [0.0, 1.0] and two.hu.dtype == np.float64
    np.testing.assert_allclose(two.profile_hu, [[23.0, 33.0], [56.0, 66.0]], atol=1e-9)
    mean = sample_surface(ct, pts, nrm, offsets_mm=[0.0, 1.0, 2.0], aggregate="mean")
    np.testing.assert_allclose(mean.hu, [33.0, 66.0], atol=1e-9)
    with pytest.raises(InputError, match="use one of trilinear, nearest$"):
        sample(ct, pts, "cubic")
    with pytest.raises(InputError, match="use one of max, mean, median$"):
        sample_surface(ct, pts, nrm, offsets_mm=[0.0, 1.0], aggregate="min")


def test_coordinate_messages_name_the_option():
    """A bad coordinate value is reported under the option that carried it, for either point of a pair."""
    from ImplantBoneContactLib import InputError
    from ImplantBoneContactLib.cli import _join_coordinate_values, _pair

    assert _join_coordinate_values(["--axis", "-1,2,3:4,5,6"]) == ["--axis=-1,2,3:4,5,6"]
    for text in ("1,2:3,4,5", "1,2,3:4,5"):
        with pytest.raises(InputError, match="^--resection-plane must be three finite numbers"):
            _pair(text, "--resection-plane")
    for option, value in (("--axis", "1,2:3,4,5"), ("--medial-point", "1,2"), ("--resection-plane", "1,2,3:4,x,6"),
                          ("--bands-axial", "0.5,0.5"), ("--bands-axial", "a,b,c")):
        with pytest.raises(InputError, match=f"^{option} must be"):
            _params([f"{option}={value}"])


def test_parser_names_itself_and_documents_every_option(capsys):
    """The program's name starts every error line (batch logs are grepped for it), --version prints it
    with the package version, and every option and subcommand has a help text."""
    import argparse

    from ImplantBoneContactLib import __version__
    from ImplantBoneContactLib.cli import build_parser

    p = build_parser()
    assert p.prog == "implant-bone-contact" and p.description
    with pytest.raises(SystemExit):
        p.parse_args(["--version"])
    assert capsys.readouterr().out.strip() == f"implant-bone-contact {__version__}"
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    assert set(sub.choices) == {"analyze", "compare", "cohort", "demo", "segment", "register"}
    assert all(c.help for c in sub._choices_actions)
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help and action.help.strip(), (name, action.option_strings)


def test_every_documented_choice_is_accepted_and_required_options_are_required():
    """Each choice the README documents parses to itself, numbers parse to numbers, and --ct, --model,
    --out (analyze) and --out (demo) cannot be left out."""
    from ImplantBoneContactLib.cli import build_parser

    p = build_parser()
    base = ["analyze", "--ct", "c", "--model", "m", "--out", "o"]
    choices = {"--remesh": ("acvd", "fast", "none"), "--sampling": ("trilinear", "nearest"),
               "--profile-aggregate": ("max", "mean", "median"), "--side": ("left", "right"),
               "--zone-scheme": ("sector", "projection"), "--zone-reference": ("implant", "patient"),
               "--model-space": ("RAS", "LPS")}
    for option, values in choices.items():
        for value in values:
            args = p.parse_args(base + [option, value])
            assert getattr(args, option[2:].replace("-", "_")) == value
    args = p.parse_args(base + ["--points", "123", "--subdivide", "2", "--offset", "1.5", "--metal-hu", "3000",
                                "--tip-length", "12.5"])
    assert (args.points, args.subdivide, args.offset, args.metal_hu, args.tip_length) == (123, 2, 1.5, 3000.0, 12.5)
    assert p.parse_args(["demo", "--out", "d", "--voxel", "1.5", "--side", "right", "--metal"]).voxel == 1.5
    assert p.parse_args(["demo", "--out", "d", "--side", "left"]).side == "left"
    assert p.parse_args(base + ["--transform", "t.tfm", "--series-uid", "1.2", "--frame", "f.json"]).transform == "t.tfm"
    with pytest.raises(SystemExit):
        p.parse_args(["demo", "--out", "d", "--side", "up"])
    for missing in ("--ct", "--model", "--out"):
        i = base.index(missing)
        with pytest.raises(SystemExit):
            p.parse_args(base[:i] + base[i + 2:])
    with pytest.raises(SystemExit):
        p.parse_args(["demo"])
