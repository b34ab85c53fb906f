"""The command line, end to end on files: outputs, options, reuse, errors."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import vtk
from ImplantBoneContactLib import write_volume
from ImplantBoneContactLib.cli import main
from ImplantBoneContactLib.export import _floats_as_text, _write_plain_csv, write_csv
from ImplantBoneContactLib.mesh import transform_polydata, write_polydata
from vtk.util import numpy_support as ns


@pytest.fixture(scope="module")
def case(tmp_path_factory, phantom_ct, phantom_stem):
    d = tmp_path_factory.mktemp("case")
    write_volume(phantom_ct, d / "ct.nrrd")
    write_polydata(phantom_stem, d / "stem.stl", space="LPS")
    return d


@pytest.fixture(scope="module")
def first_run(case, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "first"
    code = main(["analyze", "--ct", str(case / "ct.nrrd"), "--model", str(case / "stem.stl"), "--out", str(out),
                 "--points", "3000", "--no-pictures", "--quiet"])
    assert code == 0
    return out


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_outputs_and_columns(case, first_run):
    names = sorted(p.name for p in first_run.iterdir())
    assert names == ["frame.json", "parameters.json", "surface.vtp", "vertices.csv", "zones.csv"]
    v = pd.read_csv(first_run / "vertices.csv")
    assert list(v.columns) == ["vertex_id", "x_mm", "y_mm", "z_mm", "nx", "ny", "nz", "area_mm2", "hu", "inside_ct",
                               "height_mm", "azimuth_deg", "gruen_zone", "contact_class"]
    assert abs(len(v) - 3000) <= 90  # ACVD may leave a few clusters empty; the fast remesh (default) up to 3 %
    assert v["inside_ct"].dtype == bool and v["inside_ct"].all()
    assert np.allclose(np.linalg.norm(v[["nx", "ny", "nz"]].to_numpy(), axis=1), 1.0, atol=1e-5)
    assert set(v["contact_class"]) <= {"no_bone", "cancellous", "cortical", "metal", "above_resection"}
    z = pd.read_csv(first_run / "zones.csv", keep_default_na=False, na_values=["NaN"])
    assert list(z["zone"].astype(str)) == [str(i) for i in range(1, 15)] + ["all"]
    for col in ("region", "n_vertices", "area_mm2", "area_sampled_mm2", "hu_mean", "hu_std", "hu_min", "hu_p05", "hu_p25",
                "hu_median", "hu_p75", "hu_p95", "hu_max", "frac_no_bone", "frac_cancellous", "frac_cortical", "frac_metal"):
        assert col in z.columns
    fr = z[[c for c in z.columns if c.startswith("frac_")]].sum(axis=1)
    np.testing.assert_allclose(fr, 1.0, atol=1e-6)
    # The CSV holds the same numbers as the surface file.
    r = vtk.vtkXMLPolyDataReader()
    r.SetFileName(str(first_run / "surface.vtp"))
    r.Update()
    hu = ns.vtk_to_numpy(r.GetOutput().GetPointData().GetArray("hu"))
    np.testing.assert_allclose(hu, v["hu"], rtol=1e-6)
    assert r.GetOutput().GetFieldData().GetAbstractArray("SPACE").GetValue(0) == "RAS"
    meta = json.loads((first_run / "parameters.json").read_text())
    assert meta["inputs"]["ct"]["sha256"] == _sha(case / "ct.nrrd")
    assert meta["inputs"]["model"]["sha256"] == _sha(case / "stem.stl")
    assert meta["inputs"]["model"]["space_in_file"] == "LPS"
    assert meta["parameters"]["points"] == 3000
    for lib in ("numpy", "vtk", "SimpleITK", "pyacvd", "implant-bone-contact"):
        assert meta["versions"][lib]
    assert not any(p.name.startswith(".") for p in first_run.parent.iterdir())


def test_coordinates_with_minus_sign_in_both_forms(case, tmp_path, phantom):
    f = phantom.true_frame()
    axis = ",".join(f"{v:.4f}" for v in f.proximal_point) + ":" + ",".join(f"{v:.4f}" for v in f.tip)
    medial = ",".join(f"{v:.4f}" for v in f.tip + 10 * f.medial)
    plane = ",".join(f"{v:.4f}" for v in f.resection_point) + ":" + ",".join(f"{v:.6f}" for v in f.resection_normal)
    assert axis.startswith("-") or medial.startswith("-") or "-" in plane
    base = ["analyze", "--ct", str(case / "ct.nrrd"), "--model", str(case / "stem.stl"), "--points", "2000",
            "--no-pictures", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "a"), "--axis", axis, "--medial-point", medial, "--resection-plane", plane]) == 0
    assert main(base + ["--out", str(tmp_path / "b"), f"--axis={axis}", f"--medial-point={medial}", f"--resection-plane={plane}"]) == 0
    fa = json.loads((tmp_path / "a" / "frame.json").read_text())
    fb = json.loads((tmp_path / "b" / "frame.json").read_text())
    assert fa["provenance"]["axis"] == "given"
    np.testing.assert_allclose(fa["axis"], f.axis, atol=1e-4)
    np.testing.assert_allclose(fa["axis"], fb["axis"])


def test_frame_file_sets_the_zones(case, first_run, tmp_path):
    """--frame is used: the first run's frame.json with the cut moved 20 mm distally gives a zone 0
    that follows the moved cut, not the automatic one (a rerun of the same inputs without the file
    would find the first cut again). --tip-length and --zone-scheme projection reach the result too."""
    frame = json.loads((first_run / "frame.json").read_text())
    axis = np.array(frame["axis"])
    normal = np.array(frame["resection_normal"])
    moved = np.array(frame["resection_point"]) + 20.0 * axis
    frame["resection_point"] = moved.tolist()
    (tmp_path / "moved.json").write_text(json.dumps(frame))
    out = tmp_path / "again"
    assert main(["analyze", "--ct", str(case / "ct.nrrd"), "--model", str(case / "stem.stl"), "--out", str(out),
                 "--points", "3000", "--no-pictures", "--quiet", "--frame", str(tmp_path / "moved.json"),
                 "--tip-length", "25", "--zone-scheme", "projection"]) == 0
    used = json.loads((out / "frame.json").read_text())
    np.testing.assert_allclose(used["resection_point"], moved, atol=1e-9)
    np.testing.assert_allclose(used["axis"], axis, atol=1e-9)
    assert used["tip_length_mm"] == 25.0
    v = pd.read_csv(out / "vertices.csv")
    xyz = v[["x_mm", "y_mm", "z_mm"]].to_numpy()
    side = (xyz - moved) @ normal
    clear = np.abs(side) > 1e-3
    np.testing.assert_array_equal((v["gruen_zone"] == 0)[clear], (side > 0)[clear])
    first = pd.read_csv(first_run / "vertices.csv")
    assert (v["gruen_zone"] == 0).sum() > (first["gruen_zone"] == 0).sum() + 50
    # height above the tip along the file's axis; the tip cap is 25 mm high
    np.testing.assert_allclose(v["height_mm"], (np.array(used["tip"]) - xyz) @ axis, atol=1e-4)
    below = v["gruen_zone"] > 0
    in_cap = below & (v["height_mm"] <= 25.0)
    assert (in_cap & (v["height_mm"] > 10.0)).sum() > 20
    assert set(v.loc[in_cap, "gruen_zone"]) <= {4, 11} and set(v.loc[in_cap, "gruen_zone_ap"]) == {4}
    assert not set(v.loc[below & ~in_cap, "gruen_zone"]) & {4, 11}
    # zones.csv under the projection scheme counts each vertex in its AP zone (1-7) and its lateral-view zone (8-14)
    z = pd.read_csv(out / "zones.csv", keep_default_na=False, na_values=["NaN"]).set_index("zone")
    for zone in range(1, 15):
        column = "gruen_zone_ap" if zone <= 7 else "gruen_zone_lateral"
        assert z.loc[str(zone), "n_vertices"] == (v[column] == zone).sum(), zone
    assert z["n_vertices"].iloc[:14].sum() == 2 * below.sum()
    assert z.loc["all", "n_vertices"] == below.sum()


def test_existing_result_needs_overwrite(case, first_run, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(first_run, out)
    before = {p.name: _sha(p) for p in out.iterdir()}
    args = ["analyze", "--ct", str(case / "ct.nrrd"), "--model", str(case / "stem.stl"), "--out", str(out),
            "--points", "2000", "--no-pictures", "--quiet"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
    assert {p.name: _sha(p) for p in out.iterdir()} == before
    assert main(args + ["--overwrite"]) == 0
    assert abs(len(pd.read_csv(out / "vertices.csv")) - 2000) <= 60  # the fast remesh (default): within 3 %
    assert not any(p.name.startswith(".copy") for p in tmp_path.iterdir())


def test_model_in_metres_is_explained(case, tmp_path, phantom_stem, capsys):
    metres = transform_polydata(phantom_stem, np.diag([0.001, 0.001, 0.001, 1.0]))
    write_polydata(metres, tmp_path / "m.stl", space="RAS")
    code = main(["analyze", "--ct", str(case / "ct.nrrd"), "--model", str(tmp_path / "m.stl"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "metres" in err[0]
    assert not (tmp_path / "o").exists()


def test_model_in_ras_read_as_lps_is_explained(case, tmp_path, phantom_stem, capsys):
    write_polydata(phantom_stem, tmp_path / "ras.stl", space="RAS")
    # Strip the header so the file is taken as LPS, as Slicer would.
    data = bytearray((tmp_path / "ras.stl").read_bytes())
    data[:80] = b" " * 80
    (tmp_path / "ras.stl").write_bytes(bytes(data))
    code = main(["analyze", "--ct", str(case / "ct.nrrd"), "--model", str(tmp_path / "ras.stl"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "--model-space" in err
    assert main(["analyze", "--ct", str(case / "ct.nrrd"), "--model", str(tmp_path / "ras.stl"), "--out", str(tmp_path / "o"),
                 "--model-space", "RAS", "--points", "2000", "--no-pictures", "--quiet"]) == 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--classes", "a:0:200,b:100:300"], "overlap"),
        (["--profile", "3:1:0.5"], "STOP"),
        (["--bands-axial", "0.5,0.5,0.5"], "sum to 1"),
        (["--axis", "1,2:3,4,5"], "three"),
        (["--points", "2"], "at least 4"),
    ],
)
def test_bad_options_one_line_exit_2(case, tmp_path, capsys, extra, message):
    code = main(["analyze", "--ct", str(case / "ct.nrrd"), "--model", str(case / "stem.stl"), "--out", str(tmp_path / "o")] + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "o").exists()


def test_demo_and_console_script(tmp_path):
    exe = Path(sys.executable).parent / "implant-bone-contact"
    if not exe.exists():
        pytest.skip("console script not installed in this environment")
    proc = subprocess.run([str(exe), "demo", "--out", str(tmp_path / "demo"), "--voxel", "1.0", "--no-pictures"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "demo" / "phantom_ct.nrrd").exists() and (tmp_path / "demo" / "phantom_stem.stl").exists()
    z = pd.read_csv(tmp_path / "demo" / "results" / "zones.csv")
    assert len(z) == 15
    assert "calcar" in proc.stdout
    missing = subprocess.run([str(exe), "analyze", "--ct", str(tmp_path / "nope.nrrd"), "--model", "x.stl", "--out", str(tmp_path / "o")],
                             capture_output=True, text=True, timeout=120)
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "not found" in missing.stderr


def _pandas_csv(df: pd.DataFrame) -> bytes:
    return _floats_as_text(df).to_csv(index=False, na_rep="NaN", lineterminator="\n").encode("utf-8")


def test_csv_fast_path_writes_the_bytes_pandas_writes(tmp_path):
    """write_csv formats plain tables itself: the file is byte for byte what pandas writes."""
    rng = np.random.default_rng(7)
    n = 25_003  # more than two chunks of rows
    x = rng.standard_normal(n) * 10.0 ** rng.integers(-12, 20, n)
    x[::97], x[::101], x[::103], x[::107] = np.nan, -np.inf, np.inf, -0.0
    plain = pd.DataFrame(
        {
            "vertex_id": np.arange(n, dtype=np.int64),
            "x_mm": x,
            "f32": x.astype(np.float32),
            "i16": rng.integers(-300, 300, n).astype(np.int16),
            "u64": rng.integers(0, 2**62, n).astype(np.uint64) * 3,
            "inside_ct": rng.random(n) > 0.5,
            "contact_class": pd.array(rng.choice(["no_bone", "cortical", "cancellous"], n), dtype="str"),
            "obj": rng.choice(["a", "x.y-z_(1)/2+"], n).astype(object),
        }
    )
    for df in (plain, plain.iloc[:0], plain[["x_mm"]].fillna(0.0)):
        assert _write_plain_csv(df, io.StringIO())
        write_csv(df, tmp_path / "t.csv")
        assert (tmp_path / "t.csv").read_bytes() == _pandas_csv(df)
    # Tables pandas must write: quoting, missing strings, categories, nullable integers, odd names.
    odd = [
        pd.DataFrame({"s": ["a,b", 'q"x', "plain"], "v": [1.5, np.nan, 2.0]}),
        pd.DataFrame({"s": pd.array(["a", None, "b"], dtype="string"), "v": [1, 2, 3]}),
        # pandas 3's "str" keeps the missing string (pandas 2 turns None into the text "None").
        *([pd.DataFrame({"s": pd.array(["a", None, "b"], dtype="str"), "v": [1, 2, 3]})] if int(pd.__version__.split(".")[0]) >= 3 else []),
        pd.DataFrame({"c": pd.Categorical(["x", "y"]), "i": pd.array([1, None], dtype="Int64")}),
        pd.DataFrame({"a name": [1.0], "v": [2]}),
        pd.DataFrame({"only": ["", "x"]}),
    ]
    for df in odd:
        assert not _write_plain_csv(df, io.StringIO())
        write_csv(df, tmp_path / "t.csv")
        assert (tmp_path / "t.csv").read_bytes() == _pandas_csv(df)


def test_pictures_without_a_renderer_leave_out_the_3d_views_and_say_why(case, tmp_path, monkeypatch, capsys):
    """A VTK without EGL on a machine without a display would abort the process when it renders: the 3D views
    are left out, every other output is written, and a warning says why and what to do."""
    import types

    from ImplantBoneContactLib.plots import render

    if render._WINDOW:
        pytest.skip("this process already made its render window")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(render.sys, "platform", "linux")
    monkeypatch.setitem(sys.modules, "vtkmodules.vtkRenderingOpenGL2", types.ModuleType("vtkRenderingOpenGL2"))
    out = tmp_path / "res"
    code = main(["analyze", "--ct", str(case / "ct.nrrd"), "--model", str(case / "stem.stl"), "--out", str(out),
                 "--points", "1000", "--quiet"])
    assert code == 0
    assert not (out / "heatmap_hu.png").exists() and not (out / "zones.png").exists()
    assert (out / "unrolled_hu.png").is_file() and (out / "zones.csv").is_file() and (out / "report.html").is_file()
    err = capsys.readouterr().err
    assert "cannot draw the 3D pictures" in err and "--no-pictures" in err
    meta = json.loads((out / "parameters.json").read_text(encoding="utf-8"))
    assert any("cannot draw the 3D pictures" in w for w in meta["warnings"])
