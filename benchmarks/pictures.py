#!/usr/bin/env python
"""The pictures and the report of one analysis: wall and CPU seconds, per picture.

For each point count the script writes the femur phantom of
``implant-bone-contact demo`` (0.7 mm voxels, noise 10 HU, left side), and
then, ``--runs`` times, starts a fresh Python process that analyses it with
the default parameters and times, as a user of ``analyze`` meets them:

``imports``
    ``from ImplantBoneContactLib import plots`` (matplotlib, VTK rendering).
``first``
    ``plots.write_pictures(result, folder)``, the first call of the process
    (the offscreen render window and matplotlib's fonts are made here): what
    ``analyze`` waits for.
``again``
    the same call once more in that process (everything already made).

Printed: the medians over the processes of wall and CPU seconds (CPU: user +
system of the process, every thread, and of its children), and the median
of each step of the first call: the steps shared by several pictures (zone
borders, the 3D rendering, the unrolled map), each picture (its colours,
figure and PNG), and the report with the files. Where the pictures are
drawn in two processes (Linux, 2+ cores), CPU seconds include the second
process's (``RUSAGE_CHILDREN``), the steps are each process's own, and
``second process`` is the parent's wait for it (wall) and its whole CPU.

With ``--baseline FOLDER`` (a folder holding another version's
``ImplantBoneContactLib``, e.g. from ``git archive <commit> ImplantBoneContact``)
each run starts that version's process too, in turn (A B A B, so a drift of
a shared machine's load hits both alike), and both are printed.

Run ``python benchmarks/pictures.py`` (about 2 minutes on 2 cores);
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "ImplantBoneContact"

_ONE_PROCESS = r"""
import json, resource, sys, tempfile, time
def cpu():  # this process and its reaped children (the pictures' second process)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + c.ru_utime + c.ru_stime
from ImplantBoneContactLib.analysis import AnalysisParameters, analyze_files
ct, model, points = sys.argv[1], sys.argv[2], int(sys.argv[3])
result = analyze_files(ct, model, AnalysisParameters(points=points))
out = {"n_vertices": int(len(result.vertices))}
w0, c0 = time.perf_counter(), cpu()
from ImplantBoneContactLib import plots
out["imports"] = (time.perf_counter() - w0, cpu() - c0)
for key in ("first", "again"):
    steps = {}
    with tempfile.TemporaryDirectory() as folder:
        w0, c0 = time.perf_counter(), cpu()
        try:
            plots.write_pictures(result, folder, timings=steps)
        except TypeError:  # a version without the timings argument
            plots.write_pictures(result, folder)
        out[key] = (time.perf_counter() - w0, cpu() - c0)
    if key == "first":
        out["steps"] = steps
print(json.dumps(out))
"""


def _env(library: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(library) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def one_process(ct: Path, model: Path, points: int, env: dict) -> dict:
    res = subprocess.run([sys.executable, "-c", _ONE_PROCESS, str(ct), str(model), str(points)],
                         env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"the picture run failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _med(values) -> tuple[float, float]:
    values = list(values)
    return statistics.median(v[0] for v in values), statistics.median(v[1] for v in values)


def _print(version: str, n: int, runs: list) -> None:
    print(f"\n{version}: {n} points asked ({runs[0]['n_vertices']} vertices), {len(runs)} fresh process(es), "
          "median seconds (wall / CPU):")
    for key, label in (("imports", "import plots"), ("first", "write_pictures, first call"),
                       ("again", "write_pictures, again")):
        w, c = _med(r[key] for r in runs)
        print(f"  {label:34s} {w:6.2f} / {c:5.2f}")
    w, c = _med((r["imports"][0] + r["first"][0], r["imports"][1] + r["first"][1]) for r in runs)
    print(f"  {'imports + first call':34s} {w:6.2f} / {c:5.2f}")
    if runs[0].get("steps"):
        print("  steps of the first call:")
        for step in runs[0]["steps"]:
            w, c = _med(r["steps"][step] for r in runs if step in r["steps"])
            print(f"    {step:32s} {w:6.2f} / {c:5.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", default="30000,100000", help="points after remeshing (default 30000,100000)")
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per point count (default 3)")
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    ap.add_argument("--baseline", type=Path, help="folder with another version's ImplantBoneContactLib, run in turn")
    args = ap.parse_args(argv)
    versions = {"this version": _env(LIB)}
    if args.baseline is not None:
        versions = {"baseline": _env(args.baseline.resolve()), **versions}
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f} at start")
    sys.path.insert(0, str(LIB))
    from ImplantBoneContactLib.phantom import FemurPhantom, PhantomSpec

    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="ibc-pictures-") as tmp:
        paths = FemurPhantom(PhantomSpec(voxel_mm=0.7, noise_hu=10.0)).write(tmp)
        for n in (int(x) for x in args.points.split(",")):
            runs: dict = {k: [] for k in versions}
            for _ in range(args.runs):
                for k, env in versions.items():
                    runs[k].append(one_process(paths["ct"], paths["model"], n, env))
            for version, rs in runs.items():
                _print(version, n, rs)
            report[str(n)] = runs
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
