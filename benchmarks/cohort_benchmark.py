#!/usr/bin/env python
"""Cohort throughput: cases per hour with 1 and 2 workers, with and without the design cache, local and on Dask.

A cohort of femur phantoms (one stem design for the left femurs, its mirror
image for the right ones, each CT with its own tilt, noise and side, half of
them post-operative) runs with ``run_cohort`` into a fresh folder for each
configuration:

- local process pool, 1 and 2 workers, with the shared design surface (the
  default) and with ``design_cache=False`` (every case remeshes its own model);
- a ``dask.distributed`` LocalCluster on localhost (2 worker processes, 1
  thread each) through ``Client.get_executor()``, with the design cache.

Cases per hour = cases / wall-clock seconds of the whole ``run_cohort`` call
(design surfaces, cases, tables, maps and report). The per-case overhead of
the Dask path is (Dask wall time - local wall time, both 2 workers) / cases,
and also the round trip of a task that does nothing (submit to result), Dask
against the process pool.

Peak memory of one case (``--memory``): each case runs alone in a fresh
process (``run_case``) and reports its resident-set high-water mark; CTs of
several sizes give the per-voxel cost used to choose the number of workers.

Run ``python benchmarks/cohort_benchmark.py`` (8 cases at 1 mm voxels, 3000
points, pictures on; about 10 minutes on 2 shared cores) or ``--quick``.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "ImplantBoneContact") not in sys.path:
    sys.path.insert(0, str(ROOT / "ImplantBoneContact"))

from ImplantBoneContactLib.cohort import run_cohort  # noqa: E402
from ImplantBoneContactLib.mesh import transform_polydata, write_polydata  # noqa: E402
from ImplantBoneContactLib.phantom import FemurPhantom, PhantomSpec  # noqa: E402
from ImplantBoneContactLib.volume import write_volume  # noqa: E402

MIRROR = np.diag([-1.0, 1.0, 1.0, 1.0])


def design_to_ras(ph: FemurPhantom) -> np.ndarray:
    return ph.local_to_ras if ph.spec.side == "left" else ph.local_to_ras @ MIRROR


def write_cohort(folder: Path, n_cases: int, voxel_mm: float) -> Path:
    """Phantom cases sharing two stem designs (left, right); every other pair post-operative."""
    folder.mkdir(parents=True, exist_ok=True)
    designs = {}
    for side in ("left", "right"):
        ph = FemurPhantom(PhantomSpec(voxel_mm=2.0, side=side))
        designs[side] = folder / f"stem_{side}.stl"
        write_polydata(transform_polydata(ph.make_stem_surface(), np.linalg.inv(design_to_ras(ph))), designs[side], space="RAS")
    rng = np.random.default_rng(1)
    rows = []
    for i in range(n_cases):
        side = "left" if i % 2 == 0 else "right"
        metal = (i // 2) % 2 == 1
        tilt = tuple(float(x) for x in rng.uniform(-6, 8, 2))
        ph = FemurPhantom(PhantomSpec(voxel_mm=voxel_mm, side=side, metal=metal, tilt_deg=tilt, noise_hu=10.0, seed=i))
        cid = f"case{i:02d}"
        write_volume(ph.make_ct(), folder / f"{cid}.nrrd")
        np.savetxt(folder / f"{cid}.txt", design_to_ras(ph))
        rows.append({"case_id": cid, "ct": f"{cid}.nrrd", "model": designs[side].name, "transform": f"{cid}.txt",
                     "profile": "0.5:3:0.5" if metal else "", "side": side})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def timed_run(manifest: Path, out: Path, defaults: dict, **kw) -> tuple[float, object]:
    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    result = run_cohort(manifest, out, defaults=defaults, **kw)
    return time.perf_counter() - t, result


def _noop(x):
    return x


def round_trip_ms(executor, n: int = 50) -> float:
    """Median milliseconds from submit to result of a task that does nothing."""
    executor.submit(_noop, 0).result()  # warm up
    times = []
    for i in range(n):
        t = time.perf_counter()
        executor.submit(_noop, i).result()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def case_peak_memory(folder: Path, voxels_mm: list[float], points: int) -> list[dict]:
    """Peak resident memory of one case, each alone in a fresh process, for CTs of several sizes."""
    rows = []
    for v in voxels_mm:
        sub = folder / f"mem_{v}"
        manifest = write_cohort(sub, 1, v)
        code = f"""
import json, sys
sys.path.insert(0, {str(ROOT / 'ImplantBoneContact')!r})
from ImplantBoneContactLib.cohort import read_manifest, run_case, _task
from pathlib import Path
c = read_manifest({str(manifest)!r}, {{"points": "{points}", "remesh": "fast"}})[0]
from ImplantBoneContactLib.cohort import _peak_rss_mb
before = _peak_rss_mb()
out = run_case(_task(c, Path({str(sub / 'out')!r}), "k", None))
print(json.dumps({{"status": out["status"], "peak_mb": out.get("worker_peak_rss_mb"), "import_mb": before}}))
"""
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        info = json.loads(res.stdout.strip().splitlines()[-1])
        import SimpleITK as sitk

        r = sitk.ImageFileReader()
        r.SetFileName(str(sub / "case00.nrrd"))
        r.ReadImageInformation()
        n_vox = int(np.prod(r.GetSize()))
        rows.append({"voxel_mm": v, "voxels": n_vox, **info})
        print(f"  CT {n_vox / 1e6:6.1f} M voxels ({v} mm): peak {info['peak_mb']:.0f} MB "
              f"(after imports {info['import_mb']:.0f} MB), {info['status']}", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--voxel", type=float, default=1.0, help="phantom voxel size (mm)")
    ap.add_argument("--points", type=int, default=3000)
    ap.add_argument("--remesh", default="acvd")
    ap.add_argument("--no-pictures", action="store_true")
    ap.add_argument("--quick", action="store_true", help="4 cases, 2 mm voxels, 1000 points, no pictures")
    ap.add_argument("--no-dask", action="store_true")
    ap.add_argument("--memory", default="2.0,1.0,0.7", help="voxel sizes for the peak-memory runs ('' for none)")
    ap.add_argument("--configs", default="local1,local2,local1-nocache,local2-nocache,dask2",
                    help="which runs, comma-separated (default: all five)")
    ap.add_argument("--dask-profile", choices=("on", "off"), default="on", help="Dask's statistical profiler in the workers")
    ap.add_argument("--json", help="write every number to this file")
    args = ap.parse_args()
    if args.quick:
        args.cases, args.voxel, args.points, args.no_pictures, args.memory = 4, 2.0, 1000, True, "2.0"
    defaults = {"points": str(args.points), "remesh": args.remesh, "no_pictures": str(args.no_pictures)}
    tmp = Path(tempfile.mkdtemp(prefix="cohort_bench_"))
    report: dict = {"machine": {"python": platform.python_version(), "cores": len(os.sched_getaffinity(0)),
                                "load_avg_start": os.getloadavg()}, "settings": vars(args).copy(), "runs": []}
    try:
        if args.configs:
            print(f"writing {args.cases} phantom cases ({args.voxel} mm voxels) ...", flush=True)
            manifest = write_cohort(tmp / "inputs", args.cases, args.voxel)
        known = {"local1": ("local", 1, True), "local2": ("local", 2, True), "local1-nocache": ("local", 1, False),
                 "local2-nocache": ("local", 2, False), "dask2": ("dask", 2, True), "dask1": ("dask", 1, True)}
        configs = [known[c] for c in args.configs.split(",") if c and not (args.no_dask and c.startswith("dask"))]
        print(f"{'path':6s} {'workers':>7s} {'design cache':>12s} {'wall s':>8s} {'cases/h':>8s} {'mean case s':>11s}")
        local2 = None
        for path, workers, cache in configs:
            out = tmp / f"out_{path}_{workers}_{cache}"
            if path == "local":
                wall, result = timed_run(manifest, out, defaults, workers=workers, design_cache=cache)
            else:
                import dask
                from distributed import Client, LocalCluster

                # --dask-profile off: no statistical profiler thread in the workers (it takes the GIL every 10 ms).
                with dask.config.set({"distributed.worker.profile.enabled": args.dask_profile == "on"}), LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster, Client(cluster) as client:
                    client.submit(_noop, 0).result()  # the cluster is up and its workers answer
                    wall, result = timed_run(manifest, out, defaults, executor=client.get_executor(), design_cache=cache)
                    with cf.ProcessPoolExecutor(workers) as pool:
                        report["noop_round_trip_ms"] = {"dask": round_trip_ms(client.get_executor()),
                                                        "process_pool": round_trip_ms(pool)}
            ok = int((result.cases["status"] == "ok").sum())
            row = {"path": path, "workers": workers, "design_cache": cache, "wall_s": wall,
                   "cases_per_hour": 3600 * args.cases / wall, "ok": ok,
                   "mean_case_s": float(result.cases["seconds"].mean())}
            report["runs"].append(row)
            if path == "local" and workers == 2 and cache:
                local2 = wall
            if path == "dask" and local2 is not None:
                report["dask_overhead_s_per_case"] = (wall - local2) / args.cases
            print(f"{path:6s} {workers:7d} {str(cache):>12s} {wall:8.1f} {row['cases_per_hour']:8.0f} {row['mean_case_s']:11.2f}"
                  f"{'' if ok == args.cases else f'  ({ok} ok)'}", flush=True)
        if "dask_overhead_s_per_case" in report:
            rt = report["noop_round_trip_ms"]
            print(f"Dask overhead per case (wall time vs local, 2 workers): {report['dask_overhead_s_per_case']:+.2f} s; "
                  f"no-op task round trip: Dask {rt['dask']:.1f} ms, process pool {rt['process_pool']:.2f} ms")
        if args.memory:
            print("peak memory of one case (fresh process, fast remesh):")
            report["memory"] = case_peak_memory(tmp, [float(v) for v in args.memory.split(",")], args.points)
            mem = report["memory"]
            if len(mem) >= 2:
                x = np.array([m["voxels"] for m in mem], dtype=float)
                y = np.array([m["peak_mb"] for m in mem], dtype=float)
                slope, intercept = np.polyfit(x, y, 1)
                report["memory_fit"] = {"base_mb": float(intercept), "bytes_per_voxel": float(slope * 2**20)}
                print(f"  fit: peak = {intercept:.0f} MB + {slope * 2**20:.1f} bytes per CT voxel")
        report["machine"]["load_avg_end"] = os.getloadavg()
        print(f"load average (1, 5, 15 min) at start {report['machine']['load_avg_start']}, end {report['machine']['load_avg_end']}")
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
