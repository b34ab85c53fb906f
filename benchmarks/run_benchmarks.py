#!/usr/bin/env python
"""Benchmark of the whole analysis, beside the Slicer-equivalent path, in one process.

For each workload (a generated int16 CT x a stem x a number of points) the
same analysis runs twice and every stage is timed:

``fast``
    this library as a cohort script uses it: ``read_volume``, ``read_model``,
    ``analyze(..., remesh="fast")`` (ACVD clusters, vectorised mesh
    construction), trilinear sampling in memory, ``save_result``.
``slicer``
    what the Slicer workflow does for the same result: the remesh of Surface
    Toolbox (pyacvd 0.3.1 called exactly as ``SurfaceToolboxLogic.remesh``
    calls it) and Probe Volume With Model's algorithm with its temporary-file
    round trip (the volume written as NRRD and the model as VTK, read back with
    Slicer's own ``vtkTeemNRRDReader`` and ``vtkMRMLModelStorageNode`` from
    slicer-core, the model moved to IJK, ``vtkProbeFilter`` on the image with
    spacing 1 and origin 0, moved back, written and read again); every other
    stage is the same code as ``fast``.

The CT is written to a temporary uncompressed NRRD first (as Slicer's
temporary files are), so "read CT" is a real read (from the page cache).
The stem is translated to the CT centre. The pyacvd remesh does not depend
on the CT, so for the second CT size it is not run again: its time from the
first CT size is reused (marked ``*``).

Peak memory is the resident set size (VmHWM of /proc/self/status, reset
through /proc/self/clear_refs before each workload), minus the resident size
when the workload starts: it counts every allocation (numpy, VTK, ITK,
pyacvd), not only numpy's.

Run ``python benchmarks/run_benchmarks.py`` (full, 10-15 minutes on 2
cores) or ``--quick`` (a small CT and mesh, under a minute, for CI).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support as ns

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT / "ImplantBoneContact", ROOT / "Testing" / "Python"):  # the library; the tests' reference helpers
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from ibc_helpers import shared_data_dir, surface_toolbox_remesh  # noqa: E402
from ImplantBoneContactLib.analysis import AnalysisParameters, analyze, auto_subdivide  # noqa: E402
from ImplantBoneContactLib.export import save_result  # noqa: E402
from ImplantBoneContactLib.mesh import (  # noqa: E402
    points as mesh_points,
)
from ImplantBoneContactLib.mesh import (  # noqa: E402
    prepare_surface,
    read_model,
    surface_geometry,
    transform_polydata,
    write_polydata,
)
from ImplantBoneContactLib.mesh import (  # noqa: E402
    triangles as mesh_triangles,
)
from ImplantBoneContactLib.phantom import FemurPhantom  # noqa: E402
from ImplantBoneContactLib.sampling import SurfaceSamples, sample  # noqa: E402
from ImplantBoneContactLib.volume import Volume, read_volume, write_volume  # noqa: E402

STAGES = ("read_ct", "read_model", "remesh", "normals_areas", "sampling", "zones", "statistics", "writing", "other")
STAGE_TITLES = ("read CT", "read model", "remesh", "normals+areas", "sampling", "zones", "statistics", "writing", "other")


# ----------------------------------------------------------------------------- memory


class PeakRSS:
    """Peak resident memory of this process since the last reset (Linux VmHWM)."""

    def __init__(self) -> None:
        self.resettable = self._reset()

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    @staticmethod
    def _reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def start(self) -> None:
        gc.collect()
        self._reset()
        self.base = self._status("VmRSS")

    def peak_above_start(self) -> int:
        return max(self._status("VmHWM") - self.base, 0)


# ----------------------------------------------------------------------------- inputs


def make_ct(n_slices: int, size: int = 512, spacing=(0.8, 0.8, 1.0)) -> Volume:
    """A deterministic int16 CT, centred on RAS (0, 0, 0), with tissue shells around the S axis.

    Marrow (30 HU) inside 10 mm, cancellous bone (150-350 HU, varying with
    height) to 25 mm, cortical bone (1500 HU) to 32 mm, soft tissue (40 HU) to
    180 mm, air outside; plus uniform noise of +-20 HU. A stem at the centre
    crosses every class.
    """
    sp = np.asarray(spacing, dtype=float)
    m = np.diag([*sp, 1.0])
    m[:3, 3] = -sp * (np.array([size, size, n_slices]) - 1) / 2.0
    x = m[0, 3] + sp[0] * np.arange(size)
    y = m[1, 3] + sp[1] * np.arange(size)
    r = np.hypot(x[None, :], y[:, None])
    base = np.full(r.shape, -1000, dtype=np.int16)
    base[r < 180] = 40
    base[r < 32] = 1500
    base[r < 10] = 30
    cancellous = (r >= 10) & (r < 25)
    rng = np.random.default_rng(20240501)
    arr = np.empty((n_slices, size, size), dtype=np.int16)
    for k in range(n_slices):
        z = m[2, 3] + sp[2] * k
        sl = base.copy()
        sl[cancellous] = np.int16(250 + 100 * np.sin(z / 15.0))
        sl += rng.integers(-20, 21, size=sl.shape, dtype=np.int16)
        arr[k] = sl
    return Volume(array=arr, ijk_to_ras=m, source=f"generated {size}x{size}x{n_slices}")


def centred(poly: vtk.vtkPolyData) -> vtk.vtkPolyData:
    """The surface translated so that its bounding-box centre is at RAS (0, 0, 0), the CT centre."""
    pts = mesh_points(poly)
    centre = (pts.min(axis=0) + pts.max(axis=0)) / 2.0
    t = np.eye(4)
    t[:3, 3] = -centre
    return transform_polydata(poly, t)


def load_stems(names: list[str]) -> dict[str, vtk.vtkPolyData]:
    stems = {}
    for name in names:
        if name == "scan":
            path = shared_data_dir() / "hip_implant_surface_scan.stl"
            if not path.exists():
                print(f"# skipping the scanned stem: {path} not found")
                continue
            poly, _ = read_model(path)
        elif name == "phantom":
            poly = FemurPhantom().make_stem_surface()
        else:
            raise SystemExit(f"unknown stem {name!r}: use scan and/or phantom")
        stems[name] = centred(poly)
    return stems


# ----------------------------------------------------------------------------- the Slicer-equivalent path


def _slicer_io():
    """Slicer's own reader and model storage (slicer-core), or plain VTK equivalents."""
    try:
        from slicer import vtkMRMLModelNode, vtkMRMLModelStorageNode, vtkTeemNRRDReader

        return "slicer-core vtkTeemNRRDReader + vtkMRMLModelStorageNode", (vtkTeemNRRDReader, vtkMRMLModelNode, vtkMRMLModelStorageNode)
    except ImportError:
        return "VTK vtkNRRDReader + vtkPolyDataReader/Writer (slicer-core not installed)", None


class ProbeVolumeWithModel:
    """A ``sampler`` for ``analyze`` that does what Slicer does to run Probe Volume With Model.

    The model it writes is the surface the remesher just produced (points and
    triangles), as Slicer writes the model node.
    """

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.io_name, self.io = _slicer_io()
        self.surface: vtk.vtkPolyData | None = None
        self.last: dict = {}

    def remesher(self, poly: vtk.vtkPolyData, points: int, subdivide: int, cached: vtk.vtkPolyData | None = None):
        out = cached if cached is not None else surface_toolbox_remesh(poly, subdivide=subdivide, clusters=points)
        self.surface = prepare_surface(out, "remeshed surface")  # what analyze() will use
        return out

    def _model_for(self, pts: np.ndarray) -> vtk.vtkPolyData:
        s = self.surface
        if s is not None and s.GetNumberOfPoints() == pts.shape[0] and np.array_equal(mesh_points(s), pts):
            return s
        poly = vtk.vtkPolyData()
        p = vtk.vtkPoints()
        p.SetData(ns.numpy_to_vtk(np.ascontiguousarray(pts), deep=True))
        poly.SetPoints(p)
        return poly

    def __call__(self, volume: Volume, pts: np.ndarray, normals, method, offsets, aggregate) -> SurfaceSamples:
        offsets = np.atleast_1d(np.asarray(offsets, dtype=float))
        if method != "trilinear" or offsets.size != 1 or offsets[0] != 0:
            raise ValueError("Probe Volume With Model samples trilinearly on the surface only")
        vol_path = self.tmp / "InputVolume.nrrd"
        in_path = self.tmp / "InputModel.vtk"
        out_path = self.tmp / "OutputModel.vtk"
        # Slicer writes the CLI's input nodes to temporary files, uncompressed.
        write_volume(volume, vol_path, compress=False)
        model = self._model_for(pts)
        if self.io is not None:
            reader_cls, node_cls, storage_cls = self.io
            node = node_cls()
            node.SetAndObservePolyData(model)
            storage = storage_cls()
            storage.SetFileName(str(in_path))
            if not storage.WriteData(node):
                raise RuntimeError("writing the model failed")
            # --- the CLI process: ProbeVolumeWithModel.cxx ---
            reader = reader_cls()
            reader.SetFileName(str(vol_path))
            reader.SetDataArrayName("NRRDImage")
            reader.Update()
            ras_to_ijk = reader.GetRasToIjkMatrix()
            image_port = reader.GetOutputPort()
            cli_node = node_cls()
            cli_storage = storage_cls()
            cli_storage.SetFileName(str(in_path))
            if not cli_storage.ReadData(cli_node):
                raise RuntimeError("reading the model failed")
            mesh_port = cli_node.GetMeshConnection()
        else:
            writer = vtk.vtkPolyDataWriter()
            lps = transform_polydata(model, np.diag([-1.0, -1.0, 1.0, 1.0]))
            writer.SetInputData(lps)
            writer.SetFileName(str(in_path))
            writer.SetHeader("3D Slicer output. SPACE=LPS")
            writer.Write()
            nrrd = vtk.vtkNRRDReader()
            nrrd.SetFileName(str(vol_path))
            nrrd.Update()
            ras_to_ijk = vtk.vtkMatrix4x4()
            ras_to_ijk.DeepCopy(volume.ras_to_ijk.ravel())
            image_port = nrrd.GetOutputPort()
            mreader = vtk.vtkPolyDataReader()
            mreader.SetFileName(str(in_path))
            to_ras = vtk.vtkTransform()
            to_ras.Scale(-1, -1, 1)
            mesh_filter = vtk.vtkTransformFilter()
            mesh_filter.SetTransform(to_ras)
            mesh_filter.SetInputConnection(mreader.GetOutputPort())
            mesh_port = mesh_filter.GetOutputPort()
        ici = vtk.vtkImageChangeInformation()
        ici.SetInputConnection(image_port)
        ici.SetOutputSpacing(1, 1, 1)
        ici.SetOutputOrigin(0, 0, 0)
        ici.Update()
        transform = vtk.vtkTransform()
        transform.SetMatrix(ras_to_ijk)
        to_ijk = vtk.vtkTransformFilter()
        to_ijk.SetTransform(transform)
        to_ijk.SetInputConnection(mesh_port)
        probe = vtk.vtkProbeFilter()
        probe.SetSourceData(ici.GetOutput())
        probe.SetInputConnection(to_ijk.GetOutputPort())
        back = vtk.vtkTransformFilter()
        back.SetTransform(transform.GetInverse())
        back.SetInputConnection(probe.GetOutputPort())
        back.Update()
        if self.io is not None:
            reader_cls, node_cls, storage_cls = self.io
            out_node = node_cls()
            out_node.SetAndObserveMesh(back.GetOutput())
            out_storage = storage_cls()
            out_storage.SetFileName(str(out_path))
            if not out_storage.WriteData(out_node):
                raise RuntimeError("writing the output model failed")
            # --- back in Slicer: the output node is read from the CLI's output file ---
            result_node = node_cls()
            result_storage = storage_cls()
            result_storage.SetFileName(str(out_path))
            if not result_storage.ReadData(result_node):
                raise RuntimeError("reading the output model failed")
            probed = result_node.GetPolyData()
            array_name = "NRRDImage"
        else:
            writer = vtk.vtkPolyDataWriter()
            writer.SetInputData(back.GetOutput())
            writer.SetFileName(str(out_path))
            writer.Write()
            rd = vtk.vtkPolyDataReader()
            rd.SetFileName(str(out_path))
            rd.Update()
            probed = rd.GetOutput()
            array_name = probed.GetPointData().GetArrayName(0)
        values = ns.vtk_to_numpy(probed.GetPointData().GetArray(array_name))
        valid = ns.vtk_to_numpy(probed.GetPointData().GetArray("vtkValidPointMask")).astype(bool)
        hu = values.astype(np.float64)
        hu[~valid] = np.nan
        self.last = {"pts": pts, "probe_hu": values, "valid": valid}
        return SurfaceSamples(hu=hu, inside_ct=valid, offsets_mm=offsets, profile_hu=hu[:, None].copy())


# ----------------------------------------------------------------------------- one workload


def run_path(path: str, ct_file: Path, model_file: Path, points: int, out_dir: Path, tmp: Path,
             peak: PeakRSS, acvd_cache: dict, cache_key) -> dict:
    """Run one analysis end to end and return its stage times (s), peak memory and result."""
    pvwm = ProbeVolumeWithModel(tmp) if path == "slicer" else None  # imports slicer-core: not part of the workload
    gc.collect()
    peak.start()
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    t = time.perf_counter()
    volume = read_volume(ct_file)
    times["read_ct"] = time.perf_counter() - t
    t = time.perf_counter()
    surface, _ = read_model(model_file)
    times["read_model"] = time.perf_counter() - t
    params = AnalysisParameters(remesh="fast" if path == "fast" else "acvd", points=points)
    remesher = sampler = None
    reused = False
    if pvwm is not None:
        cached = acvd_cache.get(cache_key)
        reused = cached is not None

        def remesher(poly, n, k):  # noqa: F811 - the Slicer remesh, or its cached output
            return pvwm.remesher(poly, n, k, cached=cached[0] if cached else None)

        sampler = pvwm
    t = time.perf_counter()
    result = analyze(volume, surface, params, remesher=remesher, sampler=sampler)
    t_analyze = time.perf_counter() - t
    for k in ("remesh", "normals_areas", "sampling", "zones", "statistics"):
        times[k] = float(result.timings_s.get(k, 0.0))
    if path == "slicer":
        if reused:
            times["remesh"] = acvd_cache[cache_key][1]
        else:
            out = vtk.vtkPolyData()
            out.DeepCopy(pvwm.surface)
            acvd_cache[cache_key] = (out, times["remesh"])
    times["other"] = t_analyze - sum(result.timings_s.get(k, 0.0) for k in ("remesh", "normals_areas", "sampling", "zones", "statistics"))
    t = time.perf_counter()
    save_result(result, out_dir, overwrite=True, pictures=False)
    times["writing"] = time.perf_counter() - t
    wall = time.perf_counter() - t0
    if reused:
        wall += times["remesh"] - float(result.timings_s.get("remesh", 0.0))
    times["total"] = wall
    info = {
        "times": times,
        "peak_bytes": peak.peak_above_start(),
        "ct_bytes": int(volume.array.nbytes),
        "n_points": int(result.surface.GetNumberOfPoints()),
        "n_triangles": int(result.surface.GetNumberOfPolys()),
        "remesh_reused": reused,
        "result": result,
    }
    if path == "slicer":
        info["probe"] = pvwm.last
        info["io"] = pvwm.io_name
        pts = pvwm.last["pts"]
        lib_hu, lib_inside = sample(volume, pts)
        valid = pvwm.last["valid"] & lib_inside
        diff = lib_hu[valid] - pvwm.last["probe_hu"][valid]
        info["hu_parity"] = {
            "n": int(valid.sum()),
            "max_abs_diff_hu": float(np.max(np.abs(diff))) if diff.size else float("nan"),
            "equal_after_rounding": float(np.mean(np.floor(lib_hu[valid] + 0.5) == pvwm.last["probe_hu"][valid])) if diff.size else float("nan"),
            "inside_agree": float(np.mean(pvwm.last["valid"] == lib_inside)),
        }
    del volume
    return info


def zone_difference(fast: dict, slicer: dict) -> dict:
    """Largest per-zone differences of the fast result from the Slicer one, with the Slicer frame used for both.

    Both surfaces are re-analysed (outside the timing) without remeshing and
    with the frame of the Slicer-path result, so the comparison shows the
    remeshing and sampling, not the noise of two frame estimates.
    """
    ref = slicer["result"]
    fr = ref.frame
    medial_point = tuple(fr.tip - 20.0 * fr.axis + 20.0 * fr.medial)
    common = {
        "remesh": "none",
        "axis": (tuple(fr.proximal_point), tuple(fr.tip)),
        "medial_point": medial_point,
        "resection_point": tuple(fr.resection_point),
        "resection_normal": tuple(fr.resection_normal),
        "side": fr.side,
    }
    tables = []
    for info in (fast, slicer):
        res = info["result"]
        volume = info["volume"]
        tables.append(analyze(volume, _plain_surface(res.surface), AnalysisParameters(**common)).zones)
    a, b = tables
    frac_cols = [c for c in a.columns if c.startswith("frac_")]
    rows = a["area_sampled_mm2"].to_numpy() > 0.01 * a["area_sampled_mm2"].to_numpy()[-1]
    dfrac = np.nanmax(np.abs(a.loc[rows, frac_cols].to_numpy() - b.loc[rows, frac_cols].to_numpy())) * 100
    ma, mb = a.loc[rows, "hu_mean"].to_numpy(), b.loc[rows, "hu_mean"].to_numpy()
    drel = np.nanmax(np.abs(ma - mb) / np.maximum(np.abs(mb), 1.0)) * 100
    return {"max_frac_diff_pp": float(dfrac), "max_mean_hu_diff_pct": float(drel)}


def _plain_surface(poly: vtk.vtkPolyData) -> vtk.vtkPolyData:
    from ImplantBoneContactLib.mesh import polydata_from_arrays

    return polydata_from_arrays(mesh_points(poly), mesh_triangles(poly))


# ----------------------------------------------------------------------------- sampling throughput


def sampling_throughput(volume: Volume, surface: vtk.vtkPolyData, offsets: np.ndarray, repeats: int = 3) -> dict:
    """Samples per second of :func:`sample` (one core, trilinear) and of vtkProbeFilter in memory."""
    geom = surface_geometry(surface)
    q = np.concatenate([geom.points + d * geom.normals for d in offsets])
    sample(volume, q[:1000])
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        sample(volume, q)
        best = min(best, time.perf_counter() - t)
    lib = q.shape[0] / best
    # vtkProbeFilter in IJK space on the same points (no files): the CLI's core.
    image = vtk.vtkImageData()
    nk, nj, ni = volume.array.shape
    image.SetDimensions(ni, nj, nk)
    arr = ns.numpy_to_vtk(volume.array.reshape(-1), deep=False, array_type=ns.get_vtk_array_type(volume.array.dtype))
    image.GetPointData().SetScalars(arr)
    ijk = np.c_[q, np.ones(q.shape[0])] @ volume.ras_to_ijk.T
    poly = vtk.vtkPolyData()
    pts = vtk.vtkPoints()
    pts.SetData(ns.numpy_to_vtk(np.ascontiguousarray(ijk[:, :3]), deep=True))
    poly.SetPoints(pts)
    best_vtk = np.inf
    for _ in range(repeats):
        probe = vtk.vtkProbeFilter()
        probe.SetSourceData(image)
        probe.SetInputData(poly)
        t = time.perf_counter()
        probe.Update()
        best_vtk = min(best_vtk, time.perf_counter() - t)
    return {"n_samples": int(q.shape[0]), "n_offsets": int(len(offsets)), "library_per_s": lib, "vtk_probe_per_s": q.shape[0] / best_vtk}


# ----------------------------------------------------------------------------- report


def machine() -> str:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "unknown"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    except OSError:
        pass
    import pyacvd
    import SimpleITK

    return (f"{os.cpu_count()} cores ({cpu}), {mem} memory, Python {platform.python_version()}, numpy {np.__version__}, "
            f"VTK {vtk.vtkVersion.GetVTKVersion()}, SimpleITK {SimpleITK.Version.VersionString()}, pyacvd {pyacvd.__version__}")


def fmt_row(label: str, path: str, info: dict, ratio: str = "") -> str:
    t = info["times"]
    cells = []
    for k in STAGES:
        v = t.get(k, 0.0)
        s = f"{v:.2f}"
        if k == "remesh" and info.get("remesh_reused"):
            s += "*"
        cells.append(s)
    return (f"| {label} | {path} | " + " | ".join(cells) + f" | **{t['total']:.2f}** | {info['peak_bytes'] / 2**20:.0f} | "
            f"{info['peak_bytes'] / info['ct_bytes']:.2f} | {ratio} |")


def header() -> str:
    cols = ["workload", "path", *[f"{s} (s)" for s in STAGE_TITLES], "total (s)", "peak RSS (MiB)", "peak / CT", "slicer / fast"]
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small CT (128x128x100) and 2000 points: a smoke run in seconds")
    ap.add_argument("--slices", default="400,1200", help="CT sizes: slices of 512x512 (default 400,1200)")
    ap.add_argument("--points", default="10000,30000,100000", help="points after remeshing (default 10000,30000,100000)")
    ap.add_argument("--stems", default="scan,phantom", help="scan (the scanned stem in shared/data) and/or phantom")
    ap.add_argument("--no-slicer", action="store_true", help="only the fast path")
    ap.add_argument("--slicer-max-points", type=int, default=100000,
                    help="run the Slicer path only up to this many points (pyacvd grows faster than linearly)")
    ap.add_argument("--json", type=Path, help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", module="pyacvd")
    warnings.filterwarnings("ignore", category=DeprecationWarning)

    if args.quick:
        size, slices, point_counts, stem_names = 128, [100], [2000], ["phantom"]
        spacing = (2.0, 2.0, 2.5)
    else:
        size, spacing = 512, (0.8, 0.8, 1.0)
        slices = [int(s) for s in args.slices.split(",") if s]
        point_counts = [int(s) for s in args.points.split(",") if s]
        stem_names = [s for s in args.stems.split(",") if s]
    peak = PeakRSS()
    print(f"# ImplantBoneContact benchmark{' (quick)' if args.quick else ''}")
    print(f"machine: {machine()}")
    print(f"peak memory: process RSS high-water mark above the RSS at the start of the workload "
          f"({'reset per workload through /proc/self/clear_refs' if peak.resettable else 'NOT resettable here: cumulative'})")
    stems = load_stems(stem_names)
    if not stems:
        print("no stem to benchmark")
        return 1
    records = []
    acvd_cache: dict = {}
    throughput = None
    tmp_root = Path(tempfile.mkdtemp(prefix="ibc-bench-"))
    try:
        for n_slices in slices:
            t = time.perf_counter()
            volume = make_ct(n_slices, size=size, spacing=spacing)
            ct_file = tmp_root / f"ct_{n_slices}.nrrd"
            write_volume(volume, ct_file, compress=False)
            print(f"\nCT {size}x{size}x{n_slices} int16 ({volume.array.nbytes / 2**20:.0f} MiB), generated and written in "
                  f"{time.perf_counter() - t:.1f} s to an uncompressed NRRD")
            if throughput is None:
                name = "phantom" if "phantom" in stems else next(iter(stems))
                from ImplantBoneContactLib.fastremesh import remesh_fast

                s = stems[name]
                k = auto_subdivide(s, max(point_counts))
                surf = prepare_surface(remesh_fast(s, max(point_counts), k))
                throughput = sampling_throughput(volume, surf, np.linspace(-1.0, 2.0, 7))
                throughput["ct"] = f"{size}x{size}x{n_slices}"
            del volume
            gc.collect()
            print(header())
            answers: list[str] = []
            for stem_name, stem in stems.items():
                model_file = tmp_root / f"stem_{stem_name}.stl"
                write_polydata(stem, model_file, space="LPS")
                for n in point_counts:
                    label = f"{size}x{size}x{n_slices} / {stem_name} / {n}"
                    fast = run_path("fast", ct_file, model_file, n, tmp_root / "out_fast", tmp_root, peak, acvd_cache, None)
                    fast["volume"] = read_volume(ct_file)
                    print(fmt_row(label, "fast", fast), flush=True)
                    rec = {"ct_slices": n_slices, "ct_size": size, "stem": stem_name, "points": n,
                           "fast": {k: v for k, v in fast.items() if k not in ("result", "volume")}}
                    if not args.no_slicer and n <= args.slicer_max_points:
                        slicer = run_path("slicer", ct_file, model_file, n, tmp_root / "out_slicer", tmp_root, peak,
                                          acvd_cache, (stem_name, n))
                        slicer["volume"] = fast["volume"]
                        ratio = slicer["times"]["total"] / fast["times"]["total"]
                        print(fmt_row(label, "slicer", slicer, f"**{ratio:.1f}x**"), flush=True)
                        same = zone_difference(fast, slicer)
                        rec["slicer"] = {k: v for k, v in slicer.items() if k not in ("result", "volume", "probe")}
                        rec["ratio"] = ratio
                        rec["same_answer"] = same
                        answers.append(
                            f"- {label}: zones max |d area fraction| {same['max_frac_diff_pp']:.2f} pp, max |d mean HU| "
                            f"{same['max_mean_hu_diff_pct']:.2f} %; same points, library vs probe: max |dHU| "
                            f"{slicer['hu_parity']['max_abs_diff_hu']:.3f}, equal after rounding "
                            f"{100 * slicer['hu_parity']['equal_after_rounding']:.2f} %, inside/outside agree "
                            f"{100 * slicer['hu_parity']['inside_agree']:.2f} %")
                        slicer.pop("volume", None)
                    fast.pop("volume", None)
                    records.append(rec)
                    gc.collect()
            if answers:
                print("\nsame answer (fast vs slicer, zones with the Slicer frame for both):")
                print("\n".join(answers))
            ct_file.unlink()
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    if any(r.get("slicer", {}).get("remesh_reused") for r in records):
        print("\n* pyacvd remesh not run again for this CT size: the time measured on the first CT size is counted (it does not depend on the CT)")
    if throughput:
        print(f"\nsampling throughput (trilinear, one core, {throughput['n_samples']} samples = "
              f"{throughput['n_offsets']} offsets x points, CT {throughput['ct']}): library "
              f"{throughput['library_per_s'] / 1e6:.1f} M samples/s, vtkProbeFilter in memory {throughput['vtk_probe_per_s'] / 1e6:.1f} M samples/s")
    io = next((r["slicer"]["io"] for r in records if "slicer" in r), None)
    if io:
        print(f"Slicer path I/O: {io}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "records": records, "sampling": throughput}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
