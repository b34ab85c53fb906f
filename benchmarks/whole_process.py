#!/usr/bin/env python
"""Whole ``implant-bone-contact analyze`` processes, as a user waits for them, side by side in one run.

Three commands on the same inputs, run in turn (A B C A B C ...) so that a
drift of the shared machine's speed hits all alike:

``default``
    ``implant-bone-contact analyze`` with its defaults (fast remesh, pictures
    and report).
``tables-only``
    the same with ``--no-pictures``: what a batch that wants only the tables
    waits for.
``surface-toolbox``
    ``--remesh acvd --subdivide 3``: the remesh Slicer's Surface Toolbox does
    (pyacvd 0.3.1 end to end), also with pictures. Where 3 subdivisions of the
    scan (1010 points) give fewer points than asked for (100 000), the
    smallest number that gives enough (4).

Inputs: the femur phantom CT (0.7 mm voxels, as ``implant-bone-contact demo``
writes it) and the scanned stem (``hip_implant_surface_scan.stl`` from the
shared data folder) laid along the phantom's stem (centres and principal axes matched) by a 4x4 matrix file
(``--transform``). For each point count the script prints the wall and CPU
seconds (user + system, from the kernel's accounting of the finished child,
``os.wait4``, which includes the second process that draws part of the
pictures) of every run, the medians and the ratios to the Surface Toolbox
path, then one more default run's stage table (wall and CPU seconds: the
start-up imports split into numpy, pandas, SimpleITK and the library with its
VTK modules, the analysis stages from ``parameters.json``, the writing; CPU
seconds include the pictures' second process), with
the slowest stage named, and the floor: what every run pays before it
computes anything (the interpreter's start, those imports, reading the CT).

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


def principal_axes(xyz):
    """Columns: the point cloud's principal axes (longest first), each pointing to its longer tail.

    The scanned stem and the phantom stem are both long, with the neck off to one
    side and the thick end proximal, so matching these axes lays the scan along the
    phantom's canal, neck to neck (a placement for timing, not a registration).
    """
    import numpy as np

    centred = xyz - xyz.mean(axis=0)
    _, vectors = np.linalg.eigh(np.cov(centred.T))
    axes = vectors[:, ::-1].copy()
    for k in range(2):
        if np.mean((centred @ axes[:, k]) ** 3) < 0:
            axes[:, k] *= -1.0
    axes[:, 2] = np.cross(axes[:, 0], axes[:, 1])
    return axes


def prepare(folder: Path) -> tuple[Path, Path, Path, int]:
    """Write the phantom CT and a matrix laying the scanned stem along the phantom stem (centre and principal axes)."""
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
    m[:3, :3] = principal_axes(points(phantom_stem)) @ principal_axes(points(scan)).T
    m[:3, 3] = points(phantom_stem).mean(axis=0) - m[:3, :3] @ points(scan).mean(axis=0)
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
import json, resource, sys, time
def cpu():  # this process and its reaped children (the pictures' second process)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime
clock = {"wall": time.perf_counter, "cpu": cpu}
t0 = {k: f() for k, f in clock.items()}
stages = {"wall": {}, "cpu": {}}
def timed(name, run):
    start = {k: f() for k, f in clock.items()}
    out = run()
    for k, f in clock.items():
        stages[k][name] = f() - start[k]
    return out
timed("import_numpy", lambda: __import__("numpy"))
timed("import_pandas", lambda: __import__("pandas"))
timed("import_SimpleITK", lambda: __import__("SimpleITK"))
def _lib():
    from ImplantBoneContactLib.analysis import AnalysisParameters, analyze_files
    from ImplantBoneContactLib.export import write_tables_and_surface
    return AnalysisParameters, analyze_files, write_tables_and_surface
AnalysisParameters, analyze_files, write_tables_and_surface = timed("import_library_and_vtk", _lib)
ct, model, matrix, out, points = sys.argv[1:6]
res = timed("analysis", lambda: analyze_files(ct, model, AnalysisParameters(points=int(points)), transform=matrix))
stages["wall"].update(res.timings_s)  # the analysis's own stages (wall)
import pathlib
folder = pathlib.Path(out); folder.mkdir(parents=True, exist_ok=True)
timed("tables_and_surface", lambda: write_tables_and_surface(res, folder))
plots = timed("picture_imports", lambda: __import__("ImplantBoneContactLib.plots", fromlist=["write_pictures"]))
timed("pictures_and_report", lambda: plots.write_pictures(res, folder))
for k, f in clock.items():
    stages[k]["total"] = f() - t0[k]
# For the floor, apart from the table: reading the CT and the model alone, with CPU seconds.
from ImplantBoneContactLib.mesh import read_model
from ImplantBoneContactLib.volume import read_volume
timed("floor_read_ct_and_model", lambda: (read_volume(ct), read_model(model)))
print(json.dumps(stages))
"""

#: Stages of the table, in order: the start-up imports, the analysis's own stages, the writing.
_TABLE = ("import_numpy", "import_pandas", "import_SimpleITK", "import_library_and_vtk", "read_inputs", "remesh",
          "normals_areas", "postop_detection", "sampling", "zones", "statistics", "tables_and_surface",
          "picture_imports", "pictures_and_report", "total")


def stage_table(ct: Path, model: Path, matrix: Path, out: Path, points: int, env: dict) -> dict:
    res = subprocess.run([sys.executable, "-c", _STAGES, str(ct), str(model), str(matrix), str(out), str(points)],
                         env=env, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def print_stages(stages: dict) -> str:
    """Print the stage table (wall and, where measured apart, CPU seconds); return the slowest stage."""
    wall, cpu = stages["wall"], stages["cpu"]
    names = [k for k in _TABLE if k in wall] + [k for k in wall if k not in _TABLE and k not in ("analysis", "floor_read_ct_and_model")]
    print("  stages of one more default run, s (wall / cpu; the analysis's own stages wall only, "
          f"the analysis {wall['analysis']:.2f} / {cpu['analysis']:.2f} in all):")
    print("    " + ", ".join(f"{k} {wall[k]:.2f}" + (f" / {cpu[k]:.2f}" if k in cpu else "") for k in names))
    slowest = max((k for k in names if k != "total"), key=wall.get)
    print(f"  slowest stage: {slowest} ({wall[slowest]:.2f} s of {wall['total']:.2f} s)")
    return slowest


_FLOOR_IMPORTS = ("import_numpy", "import_pandas", "import_SimpleITK", "import_library_and_vtk")


def floor(stages: dict, start: dict) -> dict:
    """What every run pays before it computes anything: interpreter start, the imports, reading the CT (s)."""
    out = {}
    for clock, started in (("wall", start["wall_s"]), ("cpu", start["cpu_s"])):
        parts = {"python_start": started, **{k: stages[clock][k] for k in _FLOOR_IMPORTS},
                 "read_ct_and_model": stages[clock]["floor_read_ct_and_model"]}
        parts["total"] = sum(parts.values())
        out[clock] = parts
    return out


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
        start = min((run_once([sys.executable, "-c", "pass"], env) for _ in range(3)), key=lambda r: r["wall_s"])
        for n in (int(x) for x in args.points.split(",")):
            k = 3
            while n_scan * 4**k < n:
                k += 1
            cmds = {
                "default": command(ct, model, matrix, tmp / "out_default", n, []),
                "tables-only": command(ct, model, matrix, tmp / "out_tables", n, ["--no-pictures"]),
                "surface-toolbox": command(ct, model, matrix, tmp / "out_acvd", n, ["--remesh", "acvd", "--subdivide", str(k)]),
            }
            runs: dict = {k: [] for k in cmds}
            for _ in range(args.runs):
                for name, cmd in cmds.items():
                    runs[name].append(run_once(cmd, env))
            record: dict = {}
            if args.runs > 0:
                med = {k: {f: statistics.median(r[f] for r in v) for f in ("wall_s", "cpu_s", "peak_mb")} for k, v in runs.items()}
                ref = med["surface-toolbox"]
                print(f"\n{n} points, {args.runs} run(s) each, in turn:")
                print(f"  {'command':16s} {'wall s (runs)':>22s} {'cpu s (runs)':>22s} {'median wall':>12s} "
                      f"{'median cpu':>11s} {'peak MB':>8s} {'toolbox/this (wall, cpu)':>25s}")
                for k, v in runs.items():
                    walls = ", ".join(f"{r['wall_s']:.1f}" for r in v)
                    cpus = ", ".join(f"{r['cpu_s']:.1f}" for r in v)
                    ratio = f"{ref['wall_s'] / med[k]['wall_s']:.1f}x, {ref['cpu_s'] / med[k]['cpu_s']:.1f}x"
                    print(f"  {k:16s} {walls:>22s} {cpus:>22s} {med[k]['wall_s']:12.1f} {med[k]['cpu_s']:11.1f} "
                          f"{med[k]['peak_mb']:8.0f} {ratio:>25s}")
                record = {"runs": runs, "median": med, "ratio_wall": ref["wall_s"] / med["default"]["wall_s"],
                          "ratio_cpu": ref["cpu_s"] / med["default"]["cpu_s"]}
                print(f"  surface-toolbox / default: {record['ratio_wall']:.1f}x wall, {record['ratio_cpu']:.1f}x CPU; "
                      f"10x would need the default in {ref['wall_s'] / 10:.1f} s wall")
            else:
                print(f"\n{n} points:")
            stages = stage_table(ct, model, matrix, tmp / "out_stages", n, env)
            slowest = print_stages(stages)
            fl = floor(stages, start)
            for clock in ("wall", "cpu"):
                f = fl[clock]
                print(f"  floor ({clock} s): python start {f['python_start']:.2f} + imports "
                      + " + ".join(f"{k[len('import_'):]} {f[k]:.2f}" for k in _FLOOR_IMPORTS)
                      + f" + reading the CT and model {f['read_ct_and_model']:.2f} = {f['total']:.2f}")
            report[str(n)] = {**record, "stages_s": stages, "slowest": slowest, "floor_s": fl}
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
