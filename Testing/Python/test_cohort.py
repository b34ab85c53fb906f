"""Cohort runs: a manifest of phantom cases, locally and on a Dask cluster, resumed, sharded, interrupted.

The cohort: eight small femur phantoms (2 mm voxels) with two stem designs
(a left and a right stem, each written once in its own coordinates and moved
into every CT by the case's transform), pre- and post-operative (metal stem
voxels), and one case whose transform puts the stem 2 m away from its CT, so
that it fails at run time. The ground truth: which CTs hold metal, where the
stem sits, which case must fail.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from ImplantBoneContactLib import FemurPhantom, InputError, PhantomSpec
from ImplantBoneContactLib.cli import main
from ImplantBoneContactLib.cohort import read_manifest, run_cohort
from ImplantBoneContactLib.mesh import points, read_model, transform_polydata, write_polydata

MIRROR = np.diag([-1.0, 1.0, 1.0, 1.0])
DEFAULTS = {"points": "600", "remesh": "fast", "no_pictures": "true"}
# case_id, side, metal, tilt (degrees), fails
CASES = [
    ("L01", "left", False, (6.0, 4.0), False),
    ("L02", "left", False, (2.0, -3.0), False),
    ("L03", "left", True, (5.0, 1.0), False),
    ("L04", "left", False, (4.0, 4.0), True),
    ("R01", "right", False, (6.0, 4.0), False),
    ("R02", "right", False, (-3.0, 2.0), False),
    ("R03", "right", True, (4.0, -2.0), False),
    ("R04", "right", True, (7.0, 3.0), False),
]
TIMING_COLUMNS = ("seconds",)


def _design_to_ras(phantom: FemurPhantom) -> np.ndarray:
    """The rigid matrix moving the side's design file into this phantom's CT (design = local, mirrored for right)."""
    m = phantom.local_to_ras
    return m if phantom.spec.side == "left" else m @ MIRROR


def _write_cohort(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    designs = {}
    for side in ("left", "right"):
        ph = FemurPhantom(PhantomSpec(voxel_mm=2.0, side=side))
        stem = ph.make_stem_surface(spacing_mm=1.0, target_triangles=4000)
        # The design file: the stem in its own coordinates (the right one is the mirror image of the left).
        design = transform_polydata(stem, np.linalg.inv(_design_to_ras(ph)))
        designs[side] = folder / f"stem_{side}.stl"
        write_polydata(design, designs[side], space="RAS")
    rows = []
    for cid, side, metal, tilt, fails in CASES:
        ph = FemurPhantom(PhantomSpec(voxel_mm=2.0, side=side, metal=metal, tilt_deg=tilt, noise_hu=5.0, seed=len(rows)))
        from ImplantBoneContactLib.volume import write_volume

        write_volume(ph.make_ct(), folder / f"{cid}.nrrd")
        m = _design_to_ras(ph)
        if fails:
            m = m.copy()
            m[:3, 3] += 2000.0
        np.savetxt(folder / f"{cid}.txt", m)
        rows.append({"case_id": cid, "ct": f"{cid}.nrrd", "model": designs[side].name, "transform": f"{cid}.txt",
                     "profile": "0.5:3:0.5" if metal else "", "side": side})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


@pytest.fixture(scope="module")
def cohort_manifest(tmp_path_factory) -> Path:
    return _write_cohort(tmp_path_factory.mktemp("cohort_inputs"))


@pytest.fixture(scope="module")
def reference(cohort_manifest, tmp_path_factory):
    """The whole cohort run locally with two worker processes."""
    out = tmp_path_factory.mktemp("cohort_local") / "out"
    return run_cohort(cohort_manifest, out, defaults=DEFAULTS, workers=2)


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=[c for c in TIMING_COLUMNS if c in df.columns]).reset_index(drop=True)


def _assert_same_tables(out_a: Path, out_b: Path) -> None:
    for name in ("cohort_cases.csv", "cohort_zones.csv", "cohort_summary.csv"):
        a = _comparable(pd.read_csv(out_a / name, keep_default_na=False))
        b = _comparable(pd.read_csv(out_b / name, keep_default_na=False))
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, obj=name)


def _assert_whole_case_folders(out: Path) -> None:
    cases_dir = out / "cases"
    hidden = [p.name for p in cases_dir.iterdir() if p.name.startswith(".")]
    assert hidden == [], f"partial folders left behind: {hidden}"
    for case in cases_dir.iterdir():
        files = {p.name for p in case.iterdir()}
        assert {"vertices.csv", "zones.csv", "surface.vtp", "frame.json", "parameters.json"} <= files, case.name
        json.loads((case / "parameters.json").read_text())
        assert len(pd.read_csv(case / "zones.csv")) == 15


def test_cohort_tables_match_the_phantoms(reference, cohort_manifest):
    cases = reference.cases.set_index("case_id")
    truth = {cid: (metal, fails) for cid, _, metal, _, fails in CASES}
    assert sorted(cases.index) == sorted(truth)
    for cid, (metal, fails) in truth.items():
        if fails:
            assert cases.loc[cid, "status"] == "failed"
            assert "does not overlap the CT" in cases.loc[cid, "error"]
        else:
            assert cases.loc[cid, "status"] == "ok", cases.loc[cid, "error"]
            assert cases.loc[cid, "ct_kind"] == ("post-operative" if metal else "pre-operative")
            assert cases.loc[cid, "sampled_share"] > 0.99
            # The distal stem fills the diaphysis: the whole stem touches cortical bone on a good share.
            assert 0.1 < cases.loc[cid, "frac_cortical"] < 0.9
    zones = reference.zones
    assert set(zones["case_id"]) == {cid for cid, *_, fails in CASES if not fails}
    assert (zones.groupby("case_id").size() == 15).all()
    # Every zone row is the case's own zones.csv.
    own = pd.read_csv(reference.out / "cases" / "R02" / "zones.csv", dtype={"zone": str})
    mine = zones[zones["case_id"] == "R02"].drop(columns="case_id").reset_index(drop=True)
    pd.testing.assert_frame_equal(own, mine.astype(own.dtypes.to_dict()), check_exact=False, rtol=1e-6)
    # Summary: recomputed here from the zone rows with pandas.
    s = reference.summary.set_index(["zone", "quantity"])
    tip = zones[zones["zone"].astype(str) == "4"]["frac_cortical"]
    assert s.loc[("4", "frac_cortical"), "n"] == 7
    assert s.loc[("4", "frac_cortical"), "mean"] == pytest.approx(tip.mean())
    assert s.loc[("4", "frac_cortical"), "sd"] == pytest.approx(tip.std())
    assert s.loc[("4", "frac_cortical"), "q75"] == pytest.approx(tip.quantile(0.75))
    # The tables on disk are the returned ones.
    on_disk = pd.read_csv(reference.out / "cohort_cases.csv", keep_default_na=False)
    assert list(on_disk["case_id"]) == list(reference.cases["case_id"])
    assert (reference.out / "report.html").read_text().count("does not overlap") >= 1
    assert (reference.out / "cohort_cortical_by_zone.png").stat().st_size > 10_000
    _assert_whole_case_folders(reference.out)


def test_design_cache_gives_one_surface_per_design_and_vertex_maps(reference):
    out = reference.out
    designs = sorted((out / "designs").iterdir())
    assert len(designs) == 2
    for folder in designs:
        info = json.loads((folder / "design.json").read_text())
        design, _ = read_model(info["design_file"], space="RAS")
        dpts = points(design)
        hu, cortical = [], []
        for cid in info["cases"]:
            meta = json.loads((out / "cases" / cid / "parameters.json").read_text())
            assert meta["inputs"]["design_surface"]["from_cache"] is True
            assert meta["parameters"]["remesh"] == "fast" and meta["parameters"]["points"] == 600
            v = pd.read_csv(out / "cases" / cid / "vertices.csv")
            # Vertex i of the case is the design's vertex i moved by the case's transform (read here from its file).
            m = np.loadtxt(meta["inputs"]["transform"]["path"])
            expected = dpts @ m[:3, :3].T + m[:3, 3]
            np.testing.assert_allclose(v[["x_mm", "y_mm", "z_mm"]].to_numpy(), expected, atol=1e-3)
            hu.append(v["hu"].to_numpy())
            cortical.append((v["contact_class"] == "cortical").to_numpy())
        assert len(info["cases"]) == (3 if "left" in info["model"] else 4)
        cmap = pd.read_csv(folder / "cohort_map.csv")
        np.testing.assert_allclose(cmap["hu_mean"], np.nanmean(np.array(hu), axis=0), rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(cmap["share_cortical"], np.mean(np.array(cortical), axis=0), atol=1e-6)
        # The stem tip fills the diaphysis in every phantom: the most distal vertices touch cortical bone in most cases.
        axis_ras = np.asarray(json.loads((out / "cases" / info["cases"][0] / "frame.json").read_text())["axis"])
        m0 = np.asarray(json.loads((out / "cases" / info["cases"][0] / "parameters.json").read_text())["inputs"]["transform"]["matrix_ras"])
        depth = dpts @ (np.linalg.inv(m0[:3, :3]) @ axis_ras)
        distal = depth > np.quantile(depth, 0.85)
        assert cmap["share_cortical"][distal].mean() > 0.5
        assert (folder / "cohort_map.png").stat().st_size > 10_000


def test_rerun_skips_what_is_done_and_retries_failures(reference, cohort_manifest, tmp_path):
    before = {name: (reference.out / name).read_bytes() for name in ("cohort_cases.csv", "cohort_zones.csv", "cohort_summary.csv")}
    again = run_cohort(cohort_manifest, reference.out, defaults=DEFAULTS, workers=1)
    assert again.ran == []
    assert sorted(again.reused) == sorted(c[0] for c in CASES)
    # Rebuilt from the case folders, byte for byte the same.
    assert before == {name: (reference.out / name).read_bytes() for name in before}
    retried = run_cohort(cohort_manifest, reference.out, defaults=DEFAULTS, workers=1, retry_failed=True)
    assert retried.ran == ["L04"]
    # A changed parameter for one case reruns that case only.
    table = pd.read_csv(cohort_manifest, keep_default_na=False)
    table.loc[table["case_id"] == "L02", "tip_length"] = "12"
    changed = tmp_path / "manifest.csv"
    table.to_csv(changed, index=False)
    for col in ("ct", "model", "transform"):
        table[col] = [str(cohort_manifest.parent / v) for v in table[col]]
    table.to_csv(changed, index=False)
    rerun = run_cohort(changed, reference.out, defaults=DEFAULTS, workers=1)
    assert rerun.ran == ["L02"]
    meta = json.loads((reference.out / "cases" / "L02" / "parameters.json").read_text())
    assert meta["parameters"]["tip_length_mm"] == 12.0
    # Back to the original manifest: L02 is analysed again, the rest reused; tables as at first.
    back = run_cohort(cohort_manifest, reference.out, defaults=DEFAULTS, workers=1)
    assert back.ran == ["L02"]


def test_two_shards_make_the_whole(reference, cohort_manifest, tmp_path):
    out = tmp_path / "sharded"
    first = run_cohort(cohort_manifest, out, defaults=DEFAULTS, workers=1, shard="1/2")
    assert sorted(first.ran) == sorted(c[0] for c in CASES[0::2])
    assert set(first.cases.loc[first.cases["status"] == "skipped", "case_id"]) == {c[0] for c in CASES[1::2]}
    second = run_cohort(cohort_manifest, out, defaults=DEFAULTS, workers=1, shard="2/2")
    assert sorted(second.ran) == sorted(c[0] for c in CASES[1::2])
    _assert_same_tables(reference.out, out)


def _kill_one_worker_when_busy(start: threading.Event, stop: threading.Event) -> None:
    """Kill (SIGKILL) one worker process of the pool once cases run and one is busy."""
    import psutil

    me = psutil.Process()
    start.wait(60)
    while not stop.is_set():
        workers = [g for c in me.children() for g in c.children() if "resource_tracker" not in " ".join(g.cmdline())]
        busy = [w for w in workers if w.cpu_percent(interval=0.05) > 20]
        if busy:
            os.kill(busy[0].pid, signal.SIGKILL)
            return
        time.sleep(0.05)


def test_a_killed_worker_loses_and_corrupts_nothing(reference, cohort_manifest, tmp_path):
    pytest.importorskip("psutil")
    out = tmp_path / "killed"
    start, stop = threading.Event(), threading.Event()
    events = []

    def on_event(event):
        events.append(event)
        if sum(e["kind"] == "design" for e in events) == 2:
            start.set()  # both design surfaces are built: the cases run now

    killer = threading.Thread(target=_kill_one_worker_when_busy, args=(start, stop), daemon=True)
    killer.start()
    try:
        result = run_cohort(cohort_manifest, out, defaults=DEFAULTS, workers=2, progress=on_event)
    finally:
        stop.set()
        killer.join(5)
    assert any(e["kind"] == "restart" for e in events), "no worker was killed during the run"
    assert sorted(result.ran) == sorted(c[0] for c in CASES)
    _assert_whole_case_folders(out)
    _assert_same_tables(reference.out, out)


def test_dask_cluster_gives_the_same_tables(reference, cohort_manifest, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster, distributed.Client(cluster) as client:
        result = run_cohort(cohort_manifest, tmp_path / "dask", defaults=DEFAULTS, executor=client.get_executor())
    assert sorted(result.ran) == sorted(c[0] for c in CASES)
    _assert_same_tables(reference.out, tmp_path / "dask")
    _assert_whole_case_folders(tmp_path / "dask")


@pytest.mark.slow
def test_dask_worker_killed_mid_case_is_retried(reference, cohort_manifest, tmp_path):
    distributed = pytest.importorskip("distributed")
    psutil = pytest.importorskip("psutil")
    out = tmp_path / "dask_killed"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster, distributed.Client(cluster) as client:
        killed = []

        def on_event(event):
            if event["kind"] == "case" and not killed:
                pids = [w.pid for w in psutil.Process().children(recursive=True) if w.cpu_percent(interval=0.1) > 20]
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])

        result = run_cohort(cohort_manifest, out, defaults=DEFAULTS, executor=client.get_executor(), progress=on_event)
    assert killed
    assert sorted(result.ran) == sorted(c[0] for c in CASES)
    _assert_whole_case_folders(out)
    _assert_same_tables(reference.out, out)


def test_manifest_problems_are_listed_together(cohort_manifest, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "case_id,ct,model,side,points,colour\n"
        f"a,{cohort_manifest.parent / 'L01.nrrd'},{cohort_manifest.parent / 'stem_left.stl'},up,600,red\n"
        f"a,missing.nrrd,{cohort_manifest.parent / 'stem_left.stl'},left,many,red\n"
        f"../b,{cohort_manifest.parent / 'L02.nrrd'},{cohort_manifest.parent / 'stem_left.stl'},left,600,red\n"
    )
    with pytest.raises(InputError) as info:
        read_manifest(bad)
    # Unknown columns are found before the rows are read.
    assert "unknown column(s) colour" in str(info.value)
    bad.write_text(bad.read_text().replace(",colour", "").replace(",red", ""))
    with pytest.raises(InputError) as info:
        read_manifest(bad)
    msg = str(info.value)
    for expected in ("side: argument --side: invalid choice: 'up'", "repeats row 2", "ct not found", "missing.nrrd",
                     "points: argument --points: invalid int value: 'many'", "case_id must be"):
        assert expected in msg, msg
    assert "4 problem(s)" in msg or "5 problem(s)" in msg
    out = tmp_path / "never"
    code = main(["cohort", str(bad), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "repeats row 2" in err
    assert not out.exists()


def test_cli_cohort_runs_with_defaults_from_options(cohort_manifest, tmp_path, capsys):
    table = pd.read_csv(cohort_manifest, keep_default_na=False).iloc[[0, 3]]
    for col in ("ct", "model", "transform"):
        table[col] = [str(cohort_manifest.parent / v) for v in table[col]]
    manifest = tmp_path / "two.csv"
    table.to_csv(manifest, index=False)
    code = main(["cohort", str(manifest), "--out", str(tmp_path / "cli"), "--workers", "1", "--points", "300",
                 "--remesh", "fast", "--no-pictures", "--tip-length", "8"])
    err = capsys.readouterr().err
    assert code == 1  # one case failed
    assert "case L04 failed: the model does not overlap the CT" in err
    cases = pd.read_csv(tmp_path / "cli" / "cohort_cases.csv", keep_default_na=False)
    assert list(cases["status"]) == ["ok", "failed"]
    meta = json.loads((tmp_path / "cli" / "cases" / "L01" / "parameters.json").read_text())
    assert meta["parameters"]["points"] == 300 and meta["parameters"]["tip_length_mm"] == 8.0
    assert abs(len(pd.read_csv(tmp_path / "cli" / "cases" / "L01" / "vertices.csv")) - 300) <= 10
