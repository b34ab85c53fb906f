#!/usr/bin/env python
"""Whole ``implant-bone-contact analyze`` processes, as a user waits for them, side by side in one run.

Two commands on the same inputs, run in turn (A B A B ...) so that a drift
of the shared machine's speed hits both alike:

``default``
    ``implant-bone-contact analyze`` with its defaults (fast remesh, pictures
    and report).
``surface-toolbox``
    the same with ``--remesh acvd --subdivide 3``: the remesh Slicer's Surface
    Toolbox does (pyacvd 0.3.1 end to end), also with pictures. Where 3
    subdivisions of the scan (1010 points) give fewer points than asked for
    (100 000), the smallest number that gives enough (4).

Inputs: the femur phantom CT (0.7 mm voxels, as ``implant-bone-contact demo``
writes it) and the scanned stem (``hip_implant_surface_scan.stl`` from the
shared data folder) moved onto the phantom's stem by a 4x4 matrix file
(``--transform``). For each point count the script prints the wall and CPU
seconds (user + system, from the kernel's accounting of the finished child,
``os.wait4``) of every run, the medians and the ratio, and then one more
default run's stage table: the analysis stages from ``parameters.json`` and
the writing, timed in a process of its own, with the slowest stage named.

Run ``python benchmarks/whole_process.py`` (about 10 minutes on 2 cores);
``--points 30000 --runs 1`` for a shorter run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "ImplantBoneContact"


def shared_data_dir() -> Path:
    env = os.environ.get("IBC_SHARED_DATA")
    if env:
        return Path(env)
    for p in (ROOT.parent / "shared" / "data", ROOT / ".." / "shared" / "data"):
        if p.is_dir():
            return p.resolve()
    return ROOT.parent / "shared" / "data"


def prepare(folder: Path) -> tuple[Path, Path, Path, int]:
    """Write the phantom CT and a matrix moving the scanned stem's centre onto the phantom stem's centre."""
    sys.path.insert(0, str(LIB))
    import numpy as np
    from ImplantBoneContactLib.mesh import points, read_model
    from ImplantBoneContactLib.phantom import FemurPhantom, PhantomSpec

    phantom = FemurPhantom(PhantomSpec(voxel_mm=0.7, noise_hu=10.0))
    paths = phantom.write(folder)
    stem_file = shared_data_dir() / "hip_implant_surface_scan.stl"
    if not stem_file.is_file():
        raise SystemExit(f"the scanned stem is missing: {stem_file} (set IBC_SHARED_DATA)")
    scan, _ = read_model(stem_file)
    phantom_stem, _ = read_model(paths["model"])
    m = np.eye(4)
    m[:3, 3] = points(phantom_stem).mean(axis=0) - points(scan).mean(axis=0)
    matrix = folder / "scan_to_ct.txt"
    np.savetxt(matrix, m)
    return Path(paths["ct"]), stem_file, matrix, int(points(scan).shape[0])


def command(ct: Path, model: Path, matrix: Path, out: Path, points: int, extra: list[str]) -> list[str]:
    return [sys.executable, "-m", "ImplantBoneContactLib.cli", "analyze", "--ct", str(ct), "--model", str(model),
            "--transform", str(matrix), "--points", str(points), "--out", str(out), "--overwrite", "--quiet", *extra]


def run_once(cmd: list[str], env: dict) -> dict:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err}")
    return {"wall_s": wall, "cpu_s": usage.ru_utime + usage.ru_stime, "peak_mb": usage.ru_maxrss / 1024.0}


_STAGES = r"""
import json, sys, time
t0 = time.perf_counter()
from ImplantBoneContactLib.analysis import AnalysisParameters, analyze_files
t_import = time.perf_counter() - t0
ct, model, matrix, out, points = sys.argv[1:6]
res = analyze_files(ct, model, AnalysisParameters(points=int(points)), transform=matrix)
stages = {"imports": t_import, **res.timings_s}
from ImplantBoneContactLib.export import write_tables_and_surface
import pathlib
folder = pathlib.Path(out); folder.mkdir(parents=True, exist_ok=True)
t = time.perf_counter(); write_tables_and_surface(res, folder); stages["tables_and_surface"] = time.perf_counter() - t
t = time.perf_counter(); from ImplantBoneContactLib import plots; stages["picture_imports"] = time.perf_counter() - t
t = time.perf_counter(); plots.write_pictures(res, folder); stages["pictures_and_report"] = time.perf_counter() - t
stages["total"] = time.perf_counter() - t0
print(json.dumps(stages))
"""


def stage_table(ct: Path, model: Path, matrix: Path, out: Path, points: int, env: dict) -> dict:
    res = subprocess.run([sys.executable, "-c", _STAGES, str(ct), str(model), str(matrix), str(out), str(points)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default="30000,100000", help="points after remeshing (default 30000,100000)")
    ap.add_argument("--runs", type=int, default=2, help="runs of each command per point count (default 2; 0: only the stage table)")
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    env = dict(os.environ)
    env["PYTHONPATH"] = str(LIB) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="ibc-whole-") as tmp:
        tmp = Path(tmp)
        ct, model, matrix, n_scan = prepare(tmp / "inputs")
        for n in (int(x) for x in args.points.split(",")):
            k = 3
            while n_scan * 4**k < n:
                k += 1
            cmds = {
                "default": command(ct, model, matrix, tmp / "out_default", n, []),
                "surface-toolbox": command(ct, model, matrix, tmp / "out_acvd", n, ["--remesh", "acvd", "--subdivide", str(k)]),
            }
            runs: dict = {k: [] for k in cmds}
            for _ in range(args.runs):
                for name, cmd in cmds.items():
                    runs[name].append(run_once(cmd, env))
            if args.runs == 0:
                stages = stage_table(ct, model, matrix, tmp / "out_stages", n, env)
                slowest = max((k for k in stages if k != "total"), key=stages.get)
                print(f"\n{n} points, stages of one default run (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
                print(f"  slowest stage: {slowest} ({stages[slowest]:.2f} s of {stages['total']:.2f} s)")
                report[str(n)] = {"stages_s": stages, "slowest": slowest}
                continue
            med = {k: {f: statistics.median(r[f] for r in v) for f in ("wall_s", "cpu_s", "peak_mb")} for k, v in runs.items()}
            ratio = med["surface-toolbox"]["wall_s"] / med["default"]["wall_s"]
            print(f"\n{n} points, {args.runs} run(s) each, A B A B:")
            print(f"  {'command':16s} {'wall s (runs)':>28s} {'median wall':>12s} {'median cpu':>11s} {'peak MB':>8s}")
            for k, v in runs.items():
                walls = ", ".join(f"{r['wall_s']:.1f}" for r in v)
                print(f"  {k:16s} {walls:>28s} {med[k]['wall_s']:12.1f} {med[k]['cpu_s']:11.1f} {med[k]['peak_mb']:8.0f}")
            print(f"  surface-toolbox / default (median wall): {ratio:.1f}x")
            stages = stage_table(ct, model, matrix, tmp / "out_stages", n, env)
            slowest = max((k for k in stages if k != "total"), key=stages.get)
            print("  stages of one more default run (s): " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()))
            print(f"  slowest stage: {slowest} ({stages[slowest]:.2f} s of {stages['total']:.2f} s)")
            report[str(n)] = {"runs": runs, "median": med, "ratio_wall": ratio, "stages_s": stages, "slowest": slowest}
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
