"""Inputs as real users give them: no silent wrong answer, advice that works.

Each test plants one mistake a real trial made (a scaled registration, a
model in centimetres, triangles facing both ways, an open surface in scanner
table coordinates, bands with a gap, an output folder that holds the inputs,
a tilted DICOM series, a NIfTI file with two geometries, ...) and checks
what the program now says or does. ROBUSTNESS.md lists the cases.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from ibc_helpers import frame_parameters, rotation, shared_data_dir
from ImplantBoneContactLib import (
    AnalysisParameters,
    FemurPhantom,
    InputError,
    OutputError,
    PhantomSpec,
    Volume,
    analyze,
    analyze_files,
    read_transform,
    read_volume,
    save_result,
    write_volume,
)
from ImplantBoneContactLib import export as export_module
from ImplantBoneContactLib.cli import main
from ImplantBoneContactLib.mesh import points, polydata_from_arrays, surface_geometry, triangles, write_polydata

HIDDEN = (".partial-", ".old-")


@pytest.fixture(scope="module")
def files(phantom_files) -> dict[str, Path]:
    """The phantom written as a user gets it: NRRD CT and an STL in LPS."""
    return phantom_files


@pytest.fixture(scope="module")
def small_result(phantom, phantom_ct, phantom_stem):
    return analyze(phantom_ct, phantom_stem, AnalysisParameters(remesh="none", **frame_parameters(phantom.true_frame())))


def hidden_leftovers(*folders: Path) -> list[str]:
    return sorted(p.name for f in folders for p in f.iterdir() if any(h in p.name for h in HIDDEN))


def true_outward_vertex_normals(pts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted vertex normals of a closed, outward mesh, by numpy alone (the reference)."""
    a = pts[faces[:, 0]]
    face_n = np.cross(pts[faces[:, 1]] - a, pts[faces[:, 2]] - a)
    vn = np.zeros_like(pts)
    for c in range(3):
        np.add.at(vn, faces[:, c], face_n)
    return vn / np.linalg.norm(vn, axis=1, keepdims=True)


# --------------------------------------------------------------------------- registration transforms


@pytest.mark.parametrize("scale", [1.05, 1.5, 1.9, 0.95])
def test_uniformly_scaled_transform_is_refused(tmp_path: Path, scale: float) -> None:
    m = np.eye(4)
    m[:3, :3] = scale * rotation("z", 20.0)
    m[:3, 3] = (5, -3, 2)
    np.savetxt(tmp_path / "t.txt", m)
    with pytest.raises(InputError, match=rf"not rigid \(it scales the model by {scale:.4g} in every direction\).*only rigid"):
        read_transform(tmp_path / "t.txt")


def test_sheared_transform_is_refused(tmp_path: Path) -> None:
    m = np.eye(4)
    m[0, 1] = 0.05
    np.savetxt(tmp_path / "t.txt", m)
    with pytest.raises(InputError, match="shears or scales unevenly"):
        read_transform(tmp_path / "t.txt")


def test_rigid_tolerance_is_a_tenth_of_a_percent(tmp_path: Path) -> None:
    """A rotation printed with 4 decimals passes; a 0.2 % scale does not; a 0.05 % scale does."""
    m = np.eye(4)
    m[:3, :3] = rotation("x", 17.0) @ rotation("z", -33.0)
    np.savetxt(tmp_path / "rounded.txt", np.round(m, 4))
    np.testing.assert_allclose(read_transform(tmp_path / "rounded.txt"), np.round(m, 4))
    for scale, ok in ((1.0005, True), (1.002, False)):
        np.savetxt(tmp_path / "s.txt", np.diag([scale, scale, scale, 1.0]))
        if ok:
            read_transform(tmp_path / "s.txt")
        else:
            with pytest.raises(InputError, match="scales the model by 1.002"):
                read_transform(tmp_path / "s.txt")


def test_scaled_transform_is_refused_on_the_command_line(files, tmp_path: Path, capsys) -> None:
    np.savetxt(tmp_path / "t.txt", np.diag([1.5, 1.5, 1.5, 1.0]))
    rc = main(["analyze", "--ct", str(files["ct"]), "--model", str(files["model"]), "--transform", str(tmp_path / "t.txt"),
               "--out", str(tmp_path / "r"), "--remesh", "none", "--quiet"])
    assert rc == 2
    assert "scales the model by 1.5" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_comma_separated_matrix_is_read(tmp_path: Path) -> None:
    m = np.eye(4)
    m[:3, :3] = rotation("y", 12.0)
    m[:3, 3] = (1.5, -2.25, 30.0)
    (tmp_path / "t.csv").write_text("\n".join(", ".join(repr(float(v)) for v in row) for row in m) + "\n")
    np.testing.assert_allclose(read_transform(tmp_path / "t.csv"), m, atol=1e-12)
    (tmp_path / "t3x4.txt").write_text("\n".join(",".join(str(v) for v in row) for row in m[:3]))
    np.testing.assert_allclose(read_transform(tmp_path / "t3x4.txt"), m, atol=1e-12)


@pytest.mark.parametrize("text", ["1 0 0\n0 1 0\n0 0 1\n", "one two three four\n", "1 0 0 0\n0 1 0 0\n0 0 1\n0 0 0 1\n"])
def test_unreadable_matrix_names_the_expected_format(tmp_path: Path, text: str) -> None:
    (tmp_path / "t.txt").write_text(text)
    with pytest.raises(InputError, match="expected a 4x4 matrix: 4 rows of 4 numbers.*spaces, tabs or commas"):
        read_transform(tmp_path / "t.txt")


def test_transform_given_a_folder(files, tmp_path: Path, capsys) -> None:
    (tmp_path / "reg").mkdir()
    with pytest.raises(InputError, match="transform path is a folder"):
        read_transform(tmp_path / "reg")
    rc = main(["analyze", "--ct", str(files["ct"]), "--model", str(files["model"]), "--transform", str(tmp_path / "reg"),
               "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err and "folder" in err
    assert len(err.strip().splitlines()) == 1


def test_model_in_the_wrong_space_before_the_transform_gets_the_model_space_hint(files, phantom, tmp_path: Path) -> None:
    """The model file is RAS without a header (read as LPS), and moved by its registration: the hint names --model-space.

    The registration moves it 200 mm, so negating x and y *after* the transform
    (the only check before) does not overlap the CT; negating them before does.
    """
    placed = points(phantom.make_stem_surface(target_triangles=4000))  # RAS, in the CT
    stem = phantom.make_stem_surface(target_triangles=4000)
    r = rotation("z", 25.0)
    t = np.array([200.0, 200.0, 0.0])
    m = np.eye(4)
    m[:3, :3], m[:3, 3] = r, t
    own = (placed - t) @ r  # the model in its own (CAD) RAS coordinates: m maps it onto `placed`
    write_polydata(polydata_from_arrays(own, triangles(stem)), tmp_path / "stem.vtk", space="RAS")
    # Drop the SPACE=RAS header: the file is then read as LPS, as Slicer would.
    text = (tmp_path / "stem.vtk").read_bytes().replace(b"SPACE=RAS", b"exported")
    (tmp_path / "stem.vtk").write_bytes(text)
    np.savetxt(tmp_path / "reg.txt", m)
    with pytest.raises(InputError, match="does not overlap the CT.*--model-space"):
        analyze_files(files["ct"], tmp_path / "stem.vtk", AnalysisParameters(remesh="none"), transform=tmp_path / "reg.txt")
    # The advice works.
    result = analyze_files(files["ct"], tmp_path / "stem.vtk", AnalysisParameters(remesh="none", model_space="RAS"),
                           transform=tmp_path / "reg.txt")
    assert result.vertices["inside_ct"].all()


# --------------------------------------------------------------------------- model units


def test_model_ten_times_too_small_says_units(phantom, phantom_ct, phantom_stem) -> None:
    pts = points(phantom_stem)
    centre = pts.mean(0)
    small = polydata_from_arrays(centre + 0.1 * (pts - centre), triangles(phantom_stem))
    result = analyze(phantom_ct, small, AnalysisParameters(remesh="none"))
    text = " ".join(result.warnings)
    assert "units?" in text and "scaling by 10" in text
    full = analyze(phantom_ct, phantom_stem, AnalysisParameters(remesh="none", **frame_parameters(phantom.true_frame())))
    assert not any("units?" in w for w in full.warnings)


# --------------------------------------------------------------------------- normals


def test_mixed_triangle_orientation_gives_outward_normals(phantom_stem) -> None:
    pts, faces = points(phantom_stem), triangles(phantom_stem)
    a = pts[faces[:, 0]]
    assert np.einsum("ij,ij->i", a, np.cross(pts[faces[:, 1]], pts[faces[:, 2]])).sum() > 0  # the phantom faces outward
    truth = true_outward_vertex_normals(pts, faces)
    rng = np.random.default_rng(3)
    for fraction in (0.02, 0.3, 0.7):
        flip = rng.random(len(faces)) < fraction
        mixed = faces.copy()
        mixed[flip] = mixed[flip][:, ::-1]
        geom = surface_geometry(polydata_from_arrays(pts, mixed))
        np.testing.assert_allclose(geom.normals, truth, atol=1e-9, err_msg=f"{fraction:.0%} flipped")


def _open_stem(phantom_stem, kind: str = "half") -> tuple[np.ndarray, np.ndarray]:
    """The phantom stem opened: ``"neck"`` without its top 5 % of triangles, ``"half"`` cut lengthwise in two
    (one half kept: a surface scan of one side)."""
    pts, faces = points(phantom_stem), triangles(phantom_stem)
    centres = pts[faces].mean(1)
    if kind == "neck":
        return pts, faces[centres[:, 2] < np.percentile(centres[:, 2], 95)]
    d = centres - centres.mean(0)
    second_axis = np.linalg.eigh(d.T @ d)[1][:, 1]
    return pts, faces[d @ second_axis > 0]


@pytest.mark.parametrize("kind", ["neck", "half"])
@pytest.mark.parametrize("shift_mm", [0.0, -1000.0, 1000.0])
@pytest.mark.parametrize("inward", [False, True])
def test_open_surface_far_from_the_origin_gets_outward_normals(phantom_stem, kind: str, shift_mm: float, inward: bool) -> None:
    pts, faces = _open_stem(phantom_stem, kind)
    truth = true_outward_vertex_normals(points(phantom_stem), triangles(phantom_stem))
    used = np.unique(faces)
    given = faces[:, ::-1] if inward else faces
    geom = surface_geometry(polydata_from_arrays(pts + shift_mm, given))
    assert geom.n_boundary_edges > 0
    # Near the hole a vertex lost some triangles: compare directions, not exact values.
    assert np.mean(np.einsum("ij,ij->i", geom.normals[used], truth[used]) > 0.9) > 0.99


def test_open_surface_in_scanner_coordinates_samples_as_at_the_origin(phantom, phantom_ct, phantom_stem) -> None:
    """CT and open stem both moved 1000 mm (scanner table coordinates): the same HU as unmoved, offset outside the metal."""
    pts, faces = _open_stem(phantom_stem)
    params = dict(remesh="none", offset_mm=1.0)
    frame = phantom.true_frame().parameter_fields()
    here = analyze(phantom_ct, polydata_from_arrays(pts, faces), AnalysisParameters(**params, **frame))
    shift = np.array([-1000.0, -1000.0, -1000.0])
    m = phantom_ct.ijk_to_ras.copy()
    m[:3, 3] += shift
    moved_frame = dict(frame)
    moved_frame["axis"] = tuple(tuple(np.add(p, shift)) for p in frame["axis"])
    moved_frame["medial_point"] = tuple(np.add(frame["medial_point"], shift))
    moved_frame["resection_point"] = tuple(np.add(frame["resection_point"], shift))
    there = analyze(Volume(phantom_ct.array, m), polydata_from_arrays(pts + shift, faces), AnalysisParameters(**params, **moved_frame))
    np.testing.assert_allclose(there.vertices["hu"], here.vertices["hu"], atol=1e-3)
    np.testing.assert_allclose(there.vertices[["nx", "ny", "nz"]], here.vertices[["nx", "ny", "nz"]], atol=1e-9)


def test_a_small_stray_piece_does_not_stop_the_analysis(phantom_stem) -> None:
    """A lone flat triangle beside the stem (what a remesh may leave) is oriented against the whole stem's axis."""
    pts, faces = points(phantom_stem), triangles(phantom_stem)
    truth = true_outward_vertex_normals(pts, faces)
    centre = pts.mean(0)
    far = pts[np.argmax(pts[:, 0])]  # the most lateral/medial point: a triangle just outside it, facing away
    radial = far - centre
    radial[2] = 0.0
    radial /= np.linalg.norm(radial)
    side = np.cross(radial, [0.0, 0.0, 1.0])
    tri = far + 2 * radial + np.array([[0, 0, 0], [0, 0, 1.0], side])
    for order in ([0, 1, 2], [0, 2, 1]):
        all_pts = np.vstack([pts, tri])
        all_faces = np.vstack([faces, np.array(order) + len(pts)])
        geom = surface_geometry(polydata_from_arrays(all_pts, all_faces))
        np.testing.assert_allclose(geom.normals[: len(pts)], truth, atol=1e-9)
        assert np.all(geom.normals[len(pts):] @ radial > 0.5)
    assert geom.n_components == 2


def test_flat_open_patch_orientation_cannot_be_decided() -> None:
    """A flat square: no side is outside. Refused rather than guessed."""
    g = np.linspace(0.0, 50.0, 11)
    xx, yy = np.meshgrid(g, g)
    pts = np.column_stack([xx.ravel(), yy.ravel(), np.zeros(xx.size)]) - 1000.0
    faces = []
    for i in range(10):
        for j in range(10):
            a, b, c, d = i * 11 + j, i * 11 + j + 1, (i + 1) * 11 + j, (i + 1) * 11 + j + 1
            faces += [(a, b, d), (a, d, c)]
    with pytest.raises(InputError, match="cannot tell the outside of the model from its inside"):
        surface_geometry(polydata_from_arrays(pts, np.array(faces)))


# --------------------------------------------------------------------------- classes and tables


def test_bands_with_a_gap_warn_and_report_unclassified(phantom, phantom_ct, phantom_stem) -> None:
    params = AnalysisParameters(remesh="none", classes="soft:-inf:150,bone:300:inf", **frame_parameters(phantom.true_frame()))
    result = analyze(phantom_ct, phantom_stem, params)
    assert any("[150, 300) HU uncovered" in w for w in result.warnings)
    z = result.zones
    fracs = z[["frac_soft", "frac_bone", "frac_metal", "frac_unclassified"]].to_numpy(dtype=float)
    sampled = z["area_sampled_mm2"].to_numpy() > 0
    np.testing.assert_allclose(fracs[sampled].sum(1), 1.0, atol=1e-9)
    assert z.loc[z["zone"] == "all", "frac_unclassified"].item() > 0.01  # the phantom has cancellous bone in 150..300 HU


def test_bands_without_gaps_have_no_unclassified_column(small_result) -> None:
    assert "frac_unclassified" not in small_result.zones
    assert not any("uncovered" in w for w in small_result.warnings)


def test_a_gap_below_the_metal_level_is_reported() -> None:
    from ImplantBoneContactLib.classes import band_gaps, parse_classes

    assert band_gaps(parse_classes("a:-200:100,b:100:2000"), 2500.0) == [(-np.inf, -200.0), (2000.0, 2500.0)]
    assert band_gaps(parse_classes("default"), 2500.0) == []
    assert band_gaps(parse_classes("a:-inf:100,b:100:2000"), None) == [(2000.0, np.inf)]


def test_whole_number_float_columns_stay_float_in_csv(small_result, tmp_path: Path) -> None:
    save_result(small_result, tmp_path / "r", pictures=False)
    zones = pd.read_csv(tmp_path / "r" / "zones.csv")
    assert (small_result.zones["frac_metal"] == 0).all()  # no metal in the pre-operative phantom
    for col in small_result.zones.columns:
        if pd.api.types.is_float_dtype(small_result.zones[col]):
            assert pd.api.types.is_float_dtype(zones[col]), col
    # The two CSV writers (fast and pandas) still write the same bytes.
    df = pd.DataFrame({"a": [0.0, 1.0, 2.0], "b": [0.5, 1.0, np.nan], "c": [1, 2, 3]})
    export_module.write_csv(df, tmp_path / "fast.csv")
    (tmp_path / "slow.csv").write_text(export_module._floats_as_text(df).to_csv(index=False, na_rep="NaN", lineterminator="\n"))
    assert (tmp_path / "fast.csv").read_bytes() == (tmp_path / "slow.csv").read_bytes()
    assert pd.read_csv(tmp_path / "fast.csv")["a"].dtype == float


def test_vertices_above_the_cut_have_no_contact_class(small_result) -> None:
    v = small_result.vertices
    above = v["gruen_zone"].to_numpy() == 0
    assert above.any()
    assert (v.loc[above, "contact_class"] == "above_resection").all()
    assert not (v.loc[~above, "contact_class"] == "above_resection").any()
    # A naive count of a class now counts the analysed surface only.
    counted = v["contact_class"].value_counts()
    assert counted.drop("above_resection").sum() == (~above).sum()


def test_vertex_areas_per_zone_approximate_the_integrated_zone_areas(small_result) -> None:
    """README: vertex sums per zone differ from zones.csv only by the triangles that straddle a border."""
    v = small_result.vertices
    z = small_result.zones.set_index("zone")
    total_vertices = v["area_mm2"].sum()
    assert abs(total_vertices - z.loc["all", "area_mm2"] - v.loc[v["gruen_zone"] == 0, "area_mm2"].sum()) < 0.01 * total_vertices
    # The difference comes only from triangles whose vertices lie in different zones.
    pts, faces = points(small_result.surface), triangles(small_result.surface)
    a = pts[faces[:, 0]]
    tri_area = 0.5 * np.linalg.norm(np.cross(pts[faces[:, 1]] - a, pts[faces[:, 2]] - a), axis=1)
    tri_zones = v["gruen_zone"].to_numpy()[faces]
    mixed = ~np.all(tri_zones == tri_zones[:, :1], axis=1)
    for zone in range(1, 15):
        vertex_sum = v.loc[v["gruen_zone"] == zone, "area_mm2"].sum()
        straddling = tri_area[mixed & np.any(tri_zones == zone, axis=1)].sum()
        assert abs(vertex_sum - z.loc[str(zone), "area_mm2"]) <= straddling + 1e-6, zone


# --------------------------------------------------------------------------- warnings and summary


def _cropped(ct: Volume, k_from: int, k_to: int) -> Volume:
    m = ct.ijk_to_ras.copy()
    m[:3, 3] = (ct.ijk_to_ras @ [0, 0, k_from, 1])[:3]
    return Volume(np.ascontiguousarray(ct.array[k_from:k_to]), m)


def _k_of(ct: Volume, pts: np.ndarray) -> np.ndarray:
    return (np.c_[pts, np.ones(len(pts))] @ ct.ras_to_ijk.T)[:, 2]


def test_outside_ct_warning_counts_the_analysed_part(phantom, phantom_ct, phantom_stem) -> None:
    pts = points(phantom_stem)
    k = _k_of(phantom_ct, pts)
    frame = frame_parameters(phantom.true_frame())
    # A CT that stops a third of the way down the stem: the analysed (below the cut) part is partly outside.
    lo_k, hi_k = np.percentile(k, [0, 100])
    k_tip_end = int(lo_k + 0.35 * (hi_k - lo_k))
    tip_up = k_tip_end if phantom_ct.ijk_to_ras[2, 2] > 0 else None
    ct = _cropped(phantom_ct, tip_up, phantom_ct.array.shape[0]) if tip_up else _cropped(phantom_ct, 0, k_tip_end)
    result = analyze(ct, phantom_stem, AnalysisParameters(remesh="none", **frame))
    v = result.vertices
    below = v["gruen_zone"] > 0
    expected = 100 * v.loc[below & ~v["inside_ct"], "area_mm2"].sum() / v.loc[below, "area_mm2"].sum()
    message = next(w for w in result.warnings if "outside the CT" in w)
    assert f"({expected:.1f}% of the analysed area)" in message
    assert f"{int((below & ~v['inside_ct']).sum())} of {int(below.sum())} vertices below the resection plane" in message


def test_a_ct_that_misses_only_the_part_above_the_cut_says_the_analysed_part_is_inside(phantom, phantom_ct, phantom_stem, small_result) -> None:
    v = small_result.vertices
    k = _k_of(phantom_ct, v[["x_mm", "y_mm", "z_mm"]].to_numpy())
    below = v["gruen_zone"].to_numpy() > 0
    up = phantom_ct.ijk_to_ras[2, 2] > 0
    if up:
        ct = _cropped(phantom_ct, 0, int(np.ceil(k[below].max())) + 3)
    else:
        ct = _cropped(phantom_ct, int(np.floor(k[below].min())) - 2, phantom_ct.array.shape[0])
    result = analyze(ct, phantom_stem, AnalysisParameters(remesh="none", **frame_parameters(phantom.true_frame())))
    v = result.vertices
    assert (~v.loc[v["gruen_zone"] == 0, "inside_ct"]).any()  # some of the neck is outside
    assert v.loc[v["gruen_zone"] > 0, "inside_ct"].all()
    outside = [w for w in result.warnings if "outside the CT" in w]
    assert len(outside) == 1 and "above the resection plane (not analysed)" in outside[0]
    assert "all of the analysed surface below it is inside" in outside[0]


def test_console_summary_is_plain_numbers_in_percent(small_result) -> None:
    from ImplantBoneContactLib.cli import summary_text

    text = summary_text(small_result.zones, small_result.class_names)
    header = text.splitlines()[0].split()
    assert "sampled_%" in header and "cortical_%" in header and "metal_%" in header
    assert "e+" not in text and "e-" not in text
    all_row = text.splitlines()[-1].split()
    z = small_result.zones.set_index("zone").loc["all"]
    values = dict(zip(header, all_row[-len(header):]))
    assert values["area_mm2"] == f"{z['area_mm2']:.0f}"
    assert float(values["cortical_%"]) == pytest.approx(100 * z["frac_cortical"], abs=0.051)
    assert float(values["sampled_%"]) == pytest.approx(100 * z["area_sampled_mm2"] / z["area_mm2"], abs=0.051)


# --------------------------------------------------------------------------- progress and timings


def test_progress_lines_in_order_and_timings_include_writing(files, tmp_path: Path, capsys, monkeypatch) -> None:
    import sys as _sys
    import time

    def write_pictures(result, folder):
        time.sleep(0.2)
        (Path(folder) / "heatmap_hu.png").write_bytes(b"png")

    fake = types.ModuleType("ImplantBoneContactLib.plots")
    fake.write_pictures = write_pictures
    monkeypatch.setitem(_sys.modules, "ImplantBoneContactLib.plots", fake)
    rc = main(["analyze", "--ct", str(files["ct"]), "--model", str(files["model"]), "--out", str(tmp_path / "r"),
               "--remesh", "fast", "--points", "500", "--progress"])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[")]
    text = "\n".join(lines)
    assert "fast ACVD" in text and "acvd ACVD" not in text and "fast ACVD, fast" not in text
    assert any("remeshed:" in ln for ln in lines)
    writing = next(i for i, ln in enumerate(lines) if "writing results" in ln)
    done = [i for i, ln in enumerate(lines) if ln.endswith("] done")]
    assert done == [len(lines) - 1] and done[0] > writing
    assert lines[-1].startswith("[100%")
    assert all("[100%" not in ln for ln in lines[:-1])
    timings = json.loads((tmp_path / "r" / "parameters.json").read_text())["timings_s"]
    assert timings["pictures"] >= 0.2
    assert timings["write_tables"] > 0


# --------------------------------------------------------------------------- output folders


def test_output_folder_holding_the_inputs_is_refused(tmp_path: Path, capsys) -> None:
    paths = FemurPhantom(PhantomSpec(voxel_mm=2.0)).write(tmp_path / "case")
    before = {p.name: p.read_bytes() for p in (tmp_path / "case").iterdir()}
    rc = main(["analyze", "--ct", str(paths["ct"]), "--model", str(paths["model"]), "--out", str(tmp_path / "case"),
               "--overwrite", "--remesh", "none", "--quiet", "--no-pictures"])
    err = capsys.readouterr().err
    assert rc == 2 and "holds an input of this run" in err
    assert {p.name: p.read_bytes() for p in (tmp_path / "case").iterdir()} == before
    # The library refuses too (a script that calls save_result itself).
    result = analyze_files(paths["ct"], paths["model"], AnalysisParameters(remesh="none"))
    with pytest.raises(OutputError, match="holds an input"):
        save_result(result, tmp_path / "case", overwrite=True, pictures=False)
    with pytest.raises(OutputError, match="holds an input"):
        save_result(result, tmp_path, overwrite=True, pictures=False)  # an ancestor of the inputs
    assert {p.name: p.read_bytes() for p in (tmp_path / "case").iterdir()} == before


def test_output_through_a_symbolic_link_replaces_the_target_content(small_result, tmp_path: Path) -> None:
    target = tmp_path / "store" / "res_real"
    target.mkdir(parents=True)
    (target / "old_file.txt").write_text("earlier result")
    link = tmp_path / "res"
    link.symlink_to(target, target_is_directory=True)
    save_result(small_result, link, overwrite=True, pictures=False)
    assert link.is_symlink() and Path(os.readlink(link)) == target
    assert sorted(p.name for p in target.iterdir()) == sorted(["vertices.csv", "zones.csv", "surface.vtp", "frame.json", "parameters.json"])
    assert hidden_leftovers(tmp_path, tmp_path / "store") == []
    assert pd.read_csv(link / "zones.csv").shape[0] == 15


def test_bad_input_creates_no_output_parents(files, tmp_path: Path, capsys) -> None:
    out = tmp_path / "new" / "a" / "b" / "res"
    rc = main(["analyze", "--ct", str(files["ct"]), "--model", str(tmp_path / "missing.stl"), "--out", str(out), "--quiet"])
    assert rc == 2 and "model not found" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_good_input_creates_the_output_parents(small_result, tmp_path: Path) -> None:
    out = tmp_path / "new" / "a" / "b" / "res"
    save_result(small_result, out, pictures=False)
    assert (out / "zones.csv").is_file()


def test_second_interrupt_during_cleanup_leaves_no_partial_folder(small_result, tmp_path: Path, monkeypatch) -> None:
    """Ctrl-C twice: the first stops the writing, the second arrives while the partial folder is removed."""
    real_rmtree = shutil.rmtree

    def writer(folder):
        (folder / "vertices.csv").write_text("half")
        raise KeyboardInterrupt("first Ctrl-C")

    def rmtree(path, *args, **kwargs):
        signal.raise_signal(signal.SIGINT)  # the second Ctrl-C, 20-40 ms after the first
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(export_module.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        export_module.write_result_folder(tmp_path / "res", writer)
    monkeypatch.undo()
    assert hidden_leftovers(tmp_path) == []
    assert not (tmp_path / "res").exists()


# --------------------------------------------------------------------------- CT geometry


def _dicom_dir() -> Path:
    d = shared_data_dir() / "abdomen_ct_dicom"
    if not d.is_dir():
        pytest.skip(f"real DICOM series not found at {d}")
    return d


def test_gantry_tilted_dicom_series_is_refused(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    src = _dicom_dir()
    out = tmp_path / "tilted"
    out.mkdir()
    tilt = np.tan(np.radians(20.0))
    for f in sorted(src.iterdir()):
        ds = pydicom.dcmread(f)
        o = np.array(ds.ImageOrientationPatient, dtype=float)
        normal = np.cross(o[:3], o[3:])
        pos = np.array(ds.ImagePositionPatient, dtype=float)
        # Each slice shifts along the column direction by tan(20 deg) per mm along the normal.
        shifted = pos + tilt * float(pos @ normal) * o[3:]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in shifted]
        ds.save_as(out / f.name)
    with pytest.raises(InputError, match=r"shift sideways .* gantry tilt of 20\.0 degrees"):
        read_volume(out)
    # The untouched copy reads.
    straight = tmp_path / "straight"
    shutil.copytree(src, straight)
    assert read_volume(straight).array.ndim == 3


def _nifti_with_forms(tmp_path: Path, sform_shift_mm: float) -> Path:
    import struct

    image = sitk.GetImageFromArray(np.full((6, 7, 8), -1000, np.int16))
    image.SetSpacing((1.0, 2.0, 3.0))
    image.SetOrigin((10.0, 20.0, 30.0))
    sitk.WriteImage(image, str(tmp_path / "ct.nii"))
    data = bytearray((tmp_path / "ct.nii").read_bytes())
    assert struct.unpack("<hh", data[252:256]) != (0, 0)
    srow = list(struct.unpack("<12f", data[280:328]))
    srow[3] += sform_shift_mm
    data[252:256] = struct.pack("<hh", 1, 1)
    data[280:328] = struct.pack("<12f", *srow)
    (tmp_path / "ct.nii").write_bytes(bytes(data))
    return tmp_path / "ct.nii"


def test_nifti_qform_and_sform_that_disagree_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="qform and its sform put a corner voxel 50.0 mm apart"):
        read_volume(_nifti_with_forms(tmp_path, 50.0))
    read_volume(_nifti_with_forms(tmp_path, 0.01))  # float rounding between the two is not a disagreement


def test_real_nifti_reads(shared_data) -> None:
    assert read_volume(shared_data / "pelvis_ct_with_femoral_implant.nii.gz").array.ndim == 3


def _mha(tmp_path: Path, name: str, transform: str, spacing: str) -> Path:
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\nCompressedData = False\n"
        f"TransformMatrix = {transform}\nOffset = 0 0 0\nElementSpacing = {spacing}\nDimSize = 6 5 4\n"
        "ElementType = MET_SHORT\nElementDataFile = LOCAL\n"
    )
    path = tmp_path / name
    path.write_bytes(header.encode() + np.full((4, 5, 6), -1000, np.int16).tobytes())
    return path


def test_direction_cosines_that_disagree_with_the_spacing_are_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"direction cosines have lengths \[2.0, 1.0, 1.0\]"):
        read_volume(_mha(tmp_path, "a.mha", "2 0 0 0 1 0 0 0 1", "1 1 1"))


def test_zero_spacing_is_named(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="voxel spacing of 0 mm"):
        read_volume(_mha(tmp_path, "a.mha", "1 0 0 0 1 0 0 0 1", "1 0 1"))


def test_sheared_grid_is_read_with_a_warning(tmp_path: Path) -> None:
    from ImplantBoneContactLib.volume import geometry_warnings

    v = read_volume(_mha(tmp_path, "a.mha", "1 0 0 0.5 0.8660254 0 0 0 1", "1 1 1"))
    assert any("sheared" in w and "60.0 degrees" in w for w in geometry_warnings(v))
    assert geometry_warnings(read_volume(_mha(tmp_path, "b.mha", "1 0 0 0 1 0 0 0 1", "1 1 1"))) == []


def test_voxels_too_coarse_for_contact_are_warned(tmp_path: Path) -> None:
    from ImplantBoneContactLib.volume import geometry_warnings

    assert any("larger than 3 mm" in w for w in geometry_warnings(Volume(np.zeros((4, 4, 4), np.int16), np.diag([1.0, 1.0, 5.0, 1.0]))))
    assert geometry_warnings(Volume(np.zeros((4, 4, 4), np.int16), np.diag([3.0, 3.0, 3.0, 1.0]))) == []


def test_negative_spacing_is_read_as_the_mirror_it_states(tmp_path: Path) -> None:
    """ElementSpacing 1 -1 1: ITK reads it as a flipped axis; the voxel positions are the ones the header states."""
    v = read_volume(_mha(tmp_path, "a.mha", "1 0 0 0 1 0 0 0 1", "1 -1 1"))
    lps_j1 = (v.ijk_to_ras @ [0, 1, 0, 1])[:3] * [-1, -1, 1]
    np.testing.assert_allclose(lps_j1, [0.0, -1.0, 0.0])
    write_volume(v, tmp_path / "b.nrrd")


def test_acvd_remesh_reports_each_step(phantom_stem) -> None:
    """A long remesh says what it is doing: subdividing, clustering, then building the mesh (the slow part)."""
    from ImplantBoneContactLib.remesh import remesh

    messages: list[str] = []
    out = remesh(phantom_stem, "acvd", 300, 0, progress=messages.append)
    assert [m.split(" ")[1] for m in messages] == ["subdividing", "clustering", "building"]
    assert abs(out.GetNumberOfPoints() - 300) <= 10
