"""Cohorts: a manifest of cases in, one table out, on one machine or a Dask cluster.

``run_cohort(manifest, out)`` analyses every case of a manifest (CSV, one row
per case: ``case_id``, ``ct``, ``model``, optional ``transform`` and any
``analyze`` option as a column named after its long option with ``_`` for
``-``) and writes::

    OUT/cases/<case_id>/        a normal analyze result, written whole or not at all
    OUT/failed/<case_id>.json   the error of a case that failed (removed when it succeeds)
    OUT/cache/                  remeshed design surfaces (by content hash) and file hashes
    OUT/designs/<design>/       per-vertex cohort maps of one stem design (VTP + picture)
    OUT/cohort_cases.csv        one row per case: status, error, warnings, seconds, ...
    OUT/cohort_zones.csv        every case's zones.csv rows, with a case_id column
    OUT/cohort_summary.csv      per zone and quantity across the ok cases: n, mean, sd, quartiles
    OUT/report.html             the cortical fraction per zone across cases, the failures

Cases run in worker processes (a local process pool, or any
``concurrent.futures.Executor``: a Dask client's ``get_executor()`` runs them on
a cluster). A case whose result already exists with the same input hashes and
parameters is skipped, so a run can be interrupted and resumed; the tables
are rebuilt from the case folders at the end of every run.

Cases with the same model file (content) and remesh settings share one
remeshed surface: the model is remeshed once in its own coordinates, cached
by content hash, and moved into each case's CT by the case's transform. So
vertex ``i`` is the same point of the stem in every case, and the cohort maps
per design (mean HU, share of cases with cortical contact, per vertex) follow.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import InputError, OutputError
from .lazymodule import LazyModule

pd = LazyModule("pandas")  # imported on first use: the command-line parser does not need it

CASES_DIR = "cases"
FAILED_DIR = "failed"
CACHE_DIR = "cache"
DESIGNS_DIR = "designs"
REQUIRED_COLUMNS = ("case_id", "ct", "model")
#: analyze options that describe the run, not a case: never a manifest column.
RUN_ONLY_OPTIONS = ("out", "overwrite", "quiet", "progress")
#: A case id becomes a folder name: letters, digits, ``.``, ``_``, ``-``; not starting with ``.``.
CASE_ID_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
#: Version of the design-surface recipe; part of the cache key.
DESIGN_RECIPE = 1
# Peak memory of one case, measured (benchmarks/cohort_benchmark.py and BENCHMARKS.md): 637 MB for a
# 512x512x400 int16 CT and 937 MB for 512x512x1000 at 10 000 points (2.0 bytes per voxel: the CT is read
# once and never copied), about 650-670 MB whenever the pictures are drawn, whatever the CT.
#: Memory a worker needs besides the CT (MB): interpreter and libraries (256 MB), remesh, tables.
WORKER_BASE_MB = 450.0
#: Peak bytes per CT voxel during one case (int16 voxels as read; sampling gathers, it does not copy).
BYTES_PER_VOXEL = 2.0
#: A case never needs less than this (MB): drawing the pictures.
MIN_CASE_MB = 700.0

CohortProgress = Callable[[dict], None]


class _RaisingParser(argparse.ArgumentParser):
    """An argument parser whose errors raise :class:`InputError` instead of exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise InputError(message)


def analysis_option_parser() -> argparse.ArgumentParser:
    """The analyze options (every one ``implant-bone-contact analyze`` has besides ``--ct/--model/--out``).

    Built by the command line's own option builder, so an option added there
    is a manifest column and a cohort default without any change here.
    """
    from .cli import _add_analysis_options

    parser = _RaisingParser(prog="manifest", add_help=False)
    _add_analysis_options(parser)
    return parser


def manifest_columns(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.Action]:
    """Manifest column name -> the analyze option it sets (long option name with ``_`` for ``-``)."""
    parser = parser or analysis_option_parser()
    out = {}
    for action in parser._actions:
        longs = [s for s in action.option_strings if s.startswith("--")]
        if not longs or action.dest in RUN_ONLY_OPTIONS:
            continue
        out[longs[0][2:].replace("-", "_")] = action
    return out


_TRUE = {"1", "true", "yes", "y", "on"}
_FALSE = {"0", "false", "no", "n", "off", ""}


def _set_option(ns: argparse.Namespace, parser: argparse.ArgumentParser, action: argparse.Action, value) -> None:
    """Set one option on ``ns`` from a manifest cell or a defaults entry, through the option's own parsing."""
    option = [s for s in action.option_strings if s.startswith("--")][0]
    if action.nargs == 0:  # a flag: store_true, store_false, store_const
        text = str(value).strip().lower() if not isinstance(value, bool) else ("true" if value else "false")
        if text in _TRUE:
            setattr(ns, action.dest, action.const)
        elif text in _FALSE:
            setattr(ns, action.dest, action.default)
        else:
            raise InputError(f"{option} is a flag: write true or false, got {value!r}")
        return
    parsed = parser.parse_args([f"{option}={value}"])
    setattr(ns, action.dest, getattr(parsed, action.dest))


def _resolve_path_value(value: str, base: Path) -> str:
    """A relative path that exists relative to ``base`` becomes absolute; any other text is kept."""
    if not value or os.path.isabs(value):
        return value
    candidate = base / value
    return str(candidate.resolve()) if candidate.exists() else value


@dataclass
class CohortCase:
    """One manifest row, checked: its inputs (absolute paths) and its analysis settings."""

    case_id: str
    ct: str
    model: str
    transform: str | None
    options: dict
    parameters: object  # AnalysisParameters
    pictures: bool = True
    row: int = 0


@dataclass
class CohortResult:
    """What :func:`run_cohort` returns.

    Attributes:
        cases: ``cohort_cases.csv``: one row per manifest case.
        zones: ``cohort_zones.csv``: every ok case's zone rows with ``case_id``.
        summary: ``cohort_summary.csv``: per zone and quantity across the ok cases.
        out: the cohort folder.
        ran: cases analysed by this run (ok or failed).
        reused: cases skipped because their result (or failure) was already there.
        workers: worker processes of the local pool (``None`` with a given executor).
        workers_reason: how the number of workers was chosen.
    """

    cases: pd.DataFrame
    zones: pd.DataFrame
    summary: pd.DataFrame
    out: Path
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    workers: int | None = None
    workers_reason: str = ""


# ----------------------------------------------------------------------------------------------
# Manifest


def _defaults_namespace(parser: argparse.ArgumentParser, columns: dict, defaults) -> argparse.Namespace:
    ns = parser.parse_args([])
    if defaults is None:
        return ns
    if isinstance(defaults, argparse.Namespace):
        for action in columns.values():
            if hasattr(defaults, action.dest):
                value = getattr(defaults, action.dest)
                # A file named relative to the working folder (--frame, --classes FILE.json, ...) works from any worker.
                setattr(ns, action.dest, _resolve_path_value(value, Path.cwd()) if isinstance(value, str) else value)
        return ns
    problems = []
    for key, value in dict(defaults).items():
        if key not in columns:
            problems.append(f"unknown default {key!r}")
            continue
        try:
            _set_option(ns, parser, columns[key], _resolve_path_value(str(value), Path.cwd()))
        except InputError as exc:
            problems.append(f"default {key}: {exc}")
    if problems:
        raise InputError("bad cohort defaults: " + "; ".join(problems))
    return ns


def read_manifest(manifest: str | os.PathLike, defaults=None) -> list[CohortCase]:
    """Read and check a manifest; every problem is collected before anything runs.

    Args:
        manifest: CSV file, one row per case (see the module docstring).
        defaults: analyze options for every case: an ``argparse.Namespace`` from the
            command line, or a dict of manifest column names to values.

    Raises:
        InputError: one message listing every problem (missing files, duplicate or
            unsafe ids, unknown columns, bad values), each with its row.
    """
    import copy

    from .cli import parameters_from_args

    path = Path(manifest)
    if not path.is_file():
        raise InputError(f"manifest not found: {path}")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, comment=None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read the manifest {path} as CSV: {str(exc).splitlines()[0]}") from None
    table.columns = [str(c).strip() for c in table.columns]
    base = path.resolve().parent
    parser = analysis_option_parser()
    columns = manifest_columns(parser)
    default_ns = _defaults_namespace(parser, columns, defaults)
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}")
    unknown = [c for c in table.columns if c not in REQUIRED_COLUMNS and c not in columns]
    if unknown:
        problems.append(f"unknown column(s) {', '.join(unknown)} (columns are case_id, ct, model and analyze's long options with _ for -)")
    if len(table) == 0:
        problems.append("no cases (the manifest has a header only)")
    if missing or unknown or len(table) == 0:
        raise InputError(f"the manifest {path} has {len(problems)} problem(s): " + "; ".join(problems))

    cases: list[CohortCase] = []
    seen: dict[str, int] = {}
    for i, rec in enumerate(table.to_dict("records")):
        row = i + 2  # line in the file, the header being line 1
        cid = rec["case_id"].strip()
        where = f"row {row} ({cid or 'no case_id'})"
        if not CASE_ID_PATTERN.fullmatch(cid):
            problems.append(f"{where}: case_id must be letters, digits, '.', '_' or '-' (a folder name), got {cid!r}")
        elif cid in seen:
            problems.append(f"{where}: case_id {cid!r} repeats row {seen[cid]}")
        else:
            seen[cid] = row
        ns = copy.copy(default_ns)
        files = {}
        for col in ("ct", "model"):
            value = rec[col].strip()
            if not value:
                problems.append(f"{where}: no {col}")
                continue
            p = Path(value) if os.path.isabs(value) else base / value
            if not p.exists():
                problems.append(f"{where}: {col} not found: {p}")
            files[col] = str(p.resolve())
        for col, value in rec.items():
            if col in REQUIRED_COLUMNS:
                continue
            value = value.strip()
            if value == "":
                continue
            try:
                _set_option(ns, parser, columns[col], _resolve_path_value(value, base))
            except InputError as exc:
                problems.append(f"{where}: {col}: {exc}")
        transform = getattr(ns, "transform", None)
        if transform:
            tp = Path(transform) if os.path.isabs(transform) else base / transform
            if not tp.is_file():
                problems.append(f"{where}: transform not found: {tp}")
            transform = str(tp.resolve())
        try:
            params = parameters_from_args(ns)
        except InputError as exc:
            problems.append(f"{where}: {exc}")
            params = None
        options = {a.dest: getattr(ns, a.dest) for a in columns.values()}
        cases.append(CohortCase(cid, files.get("ct", ""), files.get("model", ""), transform, options, params,
                                pictures=not getattr(ns, "no_pictures", False), row=row))
    if problems:
        raise InputError(f"the manifest {path} has {len(problems)} problem(s): " + "; ".join(problems))
    return cases


# ----------------------------------------------------------------------------------------------
# Hashes and keys


class _HashMemo:
    """SHA-256 of input files, remembered in ``cache/file_hashes.json`` by path, size and modification time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            self.data = {}
        self.changed = False

    @staticmethod
    def _signature(p: Path) -> list:
        if p.is_dir():
            stats = [q.stat() for q in sorted(p.rglob("*")) if q.is_file()]
            return [len(stats), sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)]
        s = p.stat()
        return [1, s.st_size, s.st_mtime_ns]

    def sha256(self, path: str) -> str:
        from .analysis import sha256_of

        p = Path(path)
        sig = self._signature(p)
        known = self.data.get(str(p))
        if known and known[0] == sig:
            return known[1]
        digest = sha256_of(p)
        self.data[str(p)] = [sig, digest]
        self.changed = True
        return digest

    def save(self) -> None:
        if self.changed:
            from .export import write_json

            write_json(self.data, self.path)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _file_valued(params: dict, memo: _HashMemo) -> dict:
    """Hashes of parameter values that name files (a classes JSON file, ...): their content is an input too."""
    out = {}
    for k, v in params.items():
        if isinstance(v, str) and os.path.isabs(v) and os.path.isfile(v):
            out[k] = memo.sha256(v)
    return out


def design_settings(case: CohortCase) -> dict:
    """What makes two cases share one design surface: the model content and the remesh settings."""
    p = case.parameters
    return {
        "recipe": DESIGN_RECIPE,
        "model_space": p.model_space,
        "remesh": p.remesh,
        "points": p.points if p.remesh != "none" else None,
        "subdivide": p.subdivide if p.remesh != "none" else None,
    }


# ----------------------------------------------------------------------------------------------
# Work done in the worker processes


def build_design_surface(model: str, settings: dict, cache_file: str) -> dict:
    """Read a model in its own coordinates, remesh it, and store it in the design cache (atomically).

    When two runs build the same design at once, the first file in place wins
    and both use it: every case of a design reads the same surface.
    """
    from .analysis import auto_subdivide
    from .mesh import read_model, write_polydata
    from .remesh import remesh

    target = Path(cache_file)
    info_file = target.with_suffix(".json")
    if target.exists() and info_file.exists():
        return json.loads(info_file.read_text(encoding="utf-8"))
    t = time.perf_counter()
    surface, model_info = read_model(model, space=settings["model_space"])
    k = None
    if settings["remesh"] != "none":
        k = settings["subdivide"] if settings["subdivide"] is not None else auto_subdivide(surface, settings["points"])
        surface = remesh(surface, settings["remesh"], settings["points"], k)
    tmp = target.parent / f".{target.stem}.{os.getpid()}.{time.time_ns()}.vtp"
    try:
        write_polydata(surface, tmp, space="RAS")
        try:
            os.link(tmp, target)  # fails if another run put its surface there first
        except FileExistsError:
            pass
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    info = {
        "model": model,
        "model_space_used": model_info.space_used,
        "settings": settings,
        "subdivide_used": k,
        "n_points": int(surface.GetNumberOfPoints()),
        "seconds": time.perf_counter() - t,
    }
    if not info_file.exists():
        from .export import write_json

        write_json(info, info_file)
    return json.loads(info_file.read_text(encoding="utf-8"))


def _match_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """``idx`` with ``a[j] == b[idx[j]]`` (exact coordinates), or ``None`` if the rows are not a permutation."""
    if a.shape != b.shape:
        return None
    lookup = {row.tobytes(): i for i, row in enumerate(np.ascontiguousarray(b, dtype=np.float64))}
    idx = np.array([lookup.get(row.tobytes(), -1) for row in np.ascontiguousarray(a, dtype=np.float64)], dtype=np.int64)
    if np.any(idx < 0) or np.unique(idx).size != idx.size:
        return None
    return idx


def _analyze_with_design(task: dict):
    """Analyse a case on its design's cached surface moved into the CT, vertices in design order."""
    from dataclasses import replace

    from .analysis import AnalysisParameters, analyze, build_output_surface, describe_file, sha256_of, topology_warnings
    from .mesh import points, prepare_surface, read_model, read_transform, transform_polydata, triangles
    from .volume import read_volume

    params = AnalysisParameters.from_dict(task["parameters"])
    design = task["design"]
    t = time.perf_counter()
    volume = read_volume(task["ct"], series_uid=params.series_uid)
    model_surface, model_info = read_model(task["model"], space=params.model_space)
    inputs = {
        "ct": {**describe_file(task["ct"]), **dict(volume.metadata.items())},
        "model": {**describe_file(task["model"]), "space_in_file": model_info.space_in_file, "space_used": model_info.space_used},
    }
    matrix = np.eye(4)
    registration = None
    if params.register and task["transform"]:
        raise InputError("give either a registration transform or register, not both")
    if task["transform"]:
        matrix = read_transform(task["transform"])
        inputs["transform"] = {**describe_file(task["transform"]), "matrix_ras": matrix.tolist()}
    elif params.register:
        from .register import register_stem

        registration = register_stem(volume, model_surface)
        matrix = registration.matrix_ras
        inputs["transform"] = {"registered": True, "matrix_ras": matrix.tolist(), "file": "stem_to_ct.tfm"}
    design_surface, _ = read_model(design["file"], space="RAS")
    moved = transform_polydata(design_surface, matrix)
    design_points = points(moved)
    prepared = prepare_surface(moved, "design surface")
    t_read = time.perf_counter() - t
    result = analyze(volume, prepared, replace(params, remesh="none"), None, inputs)
    result.registration = registration
    # Topology warnings are about the model as given (as analyze_files reports them), not its remeshed copy.
    of_copy = set(topology_warnings(prepared))
    kept = [w for w in result.warnings if w not in of_copy]
    at = next((i for i, w in enumerate(result.warnings) if w in of_copy), len(kept))
    result.warnings = kept[:at] + topology_warnings(model_surface) + kept[at:]
    result.timings_s = {"read_inputs": t_read, **result.timings_s}
    # Put the vertices in the design's order (a mirroring transform reverses triangles, and
    # cleaning the mesh then numbers the points in another order): vertex_id = design vertex.
    idx = _match_rows(result.vertices[["x_mm", "y_mm", "z_mm"]].to_numpy(), design_points)
    in_design_order = idx is not None
    if in_design_order and not np.array_equal(idx, np.arange(idx.size)):
        order = np.argsort(idx)
        faces = idx[triangles(result.surface)]
        vertices = result.vertices.iloc[order].reset_index(drop=True)
        vertices["vertex_id"] = np.arange(len(vertices), dtype=np.int64)
        result.vertices = vertices
        result.surface = build_output_surface(vertices[["x_mm", "y_mm", "z_mm"]].to_numpy(), faces, vertices, result.class_names)
    result.parameters = params
    result.inputs["surface"]["subdivide_used"] = design.get("subdivide_used")
    result.inputs["design_surface"] = {
        "from_cache": True,
        "file": design["file"],
        "sha256": sha256_of(design["file"]),
        "design_key": design["key"],
        "remeshed_in": "the model file's own coordinates (RAS), then moved by the transform",
        "remesh": design["settings"]["remesh"],
        "points": design["settings"]["points"],
        "subdivide": design["settings"]["subdivide"],
        "subdivide_used": design.get("subdivide_used"),
        "vertex_ids_are_design_vertices": in_design_order,
        "design_to_ras": matrix.tolist(),
    }
    if not in_design_order:
        result.warnings.append("the design surface lost points when moved into this CT: per-vertex cohort maps leave this case out")
    return result, volume


def _ct_kind(result) -> str:
    """The analysis's own verdict (``AnalysisResult.ct_kind``: ``"pre-operative"`` or ``"post-operative"``)."""
    return str(getattr(result, "ct_kind", ""))


def _peak_rss_mb() -> float:
    """This process's resident-set high-water mark (MB): VmHWM on Linux (not inherited across exec), else ru_maxrss."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20
    except (ImportError, OSError):
        return float("nan")


def run_case(task: dict) -> dict:
    """Analyse one case and write its folder whole; never raises for a bad case (returns the error).

    Runs in a worker process: everything it needs is in ``task`` (plain data).
    """
    t0 = time.perf_counter()
    case_dir = Path(task["case_dir"])
    try:
        from .analysis import AnalysisParameters, analyze_files
        from .export import write_result_folder, write_tables_and_surface

        for stale in case_dir.parent.glob(f".{case_dir.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)  # left by a worker killed while writing
        if task.get("design"):
            result, volume = _analyze_with_design(task)
        else:
            params = AnalysisParameters.from_dict(task["parameters"])
            result = analyze_files(task["ct"], task["model"], params, transform=task["transform"])
            volume = None
        kind = _ct_kind(result)
        del volume
        result.inputs["cohort"] = {
            "case_id": task["case_id"],
            "case_key": task["key"],
            "design_key": (task.get("design") or {}).get("key"),
            "ct_kind": kind,
        }

        def writer(folder: Path) -> None:
            # What save_result writes; the pictures first, so that the seconds in parameters.json count them.
            if task["pictures"]:
                from .plots import write_pictures

                write_pictures(result, folder)
                if getattr(result, "registration", None) is not None:
                    result.registration.write_qc_picture(folder)  # the .tfm is written with the tables
            result.inputs["cohort"]["seconds"] = time.perf_counter() - t0
            result.inputs["cohort"]["worker_peak_rss_mb"] = _peak_rss_mb()
            write_tables_and_surface(result, folder)

        write_result_folder(case_dir, writer, overwrite=True)
        return {"case_id": task["case_id"], "status": "ok", "seconds": time.perf_counter() - t0,
                "worker_peak_rss_mb": _peak_rss_mb()}
    except (InputError, OutputError) as exc:
        error = str(exc)
    except MemoryError:
        error = "out of memory: run fewer workers, or fewer --points"
    except Exception as exc:  # noqa: BLE001 - a failing case must never stop the others
        last = traceback.extract_tb(exc.__traceback__)[-1]
        error = f"{type(exc).__name__}: {exc} ({Path(last.filename).name}:{last.lineno})"
    return {"case_id": task["case_id"], "status": "failed", "error": " ".join(error.split()),
            "seconds": time.perf_counter() - t0}


# ----------------------------------------------------------------------------------------------
# Workers


def _available_memory_mb() -> float | None:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (ValueError, OSError, AttributeError):
        return None


def _ct_voxels(path: str) -> int | None:
    import SimpleITK as sitk

    try:
        p = Path(path)
        if p.is_dir():
            files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p))
            if not files:
                return None
            reader = sitk.ImageFileReader()
            reader.SetFileName(files[0])
            reader.ReadImageInformation()
            size = reader.GetSize()
            return int(size[0] * size[1] * len(files))
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(p))
        reader.ReadImageInformation()
        return int(np.prod(reader.GetSize()))
    except RuntimeError:
        return None


def choose_workers(cases: list[CohortCase]) -> tuple[int, str]:
    """Worker processes for a local run: one per core, fewer if free memory cannot hold them.

    A case's peak memory is estimated from the largest CT (of the first 50 cases):
    ``WORKER_BASE_MB`` plus ``BYTES_PER_VOXEL`` per voxel, at least ``MIN_CASE_MB``
    (measured, see BENCHMARKS.md); 80 % of the available memory is shared out.
    """
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    voxels = [v for v in (_ct_voxels(c.ct) for c in cases[:50]) if v]
    per_case = max(MIN_CASE_MB, WORKER_BASE_MB + BYTES_PER_VOXEL * (max(voxels) if voxels else 512 * 512 * 1000) / 2**20)
    free = _available_memory_mb()
    by_memory = max(1, int(0.8 * free // per_case)) if free else cores
    n = max(1, min(cores, by_memory, len(cases)))
    reason = (f"{n} worker(s): {cores} core(s); a case needs about {per_case:.0f} MB "
              f"(largest CT {max(voxels) if voxels else 'unknown'} voxels), {free:.0f} MB available" if free else
              f"{n} worker(s): {cores} core(s), free memory unknown")
    return n, reason


def _process_pool(workers: int) -> cf.ProcessPoolExecutor:
    import multiprocessing as mp

    method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context(method))


# ----------------------------------------------------------------------------------------------
# The run


def parse_shard(shard) -> tuple[int, int] | None:
    """``"I/N"`` (1 <= I <= N) or ``(I, N)`` -> ``(I, N)``; ``None`` stays ``None``."""
    if shard is None:
        return None
    try:
        i, n = (int(x) for x in (shard.split("/") if isinstance(shard, str) else shard))
    except (ValueError, TypeError):
        raise InputError(f"--shard must be I/N with 1 <= I <= N (this run's part of N), got {shard!r}") from None
    if not (n >= 1 and 1 <= i <= n):
        raise InputError(f"--shard must be I/N with 1 <= I <= N, got {shard!r}")
    return i, n


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _case_key(case: CohortCase, memo: _HashMemo, design_cache: bool) -> str:
    params = case.parameters.to_dict()
    return _digest({
        "ct": memo.sha256(case.ct),
        "model": memo.sha256(case.model),
        "transform": memo.sha256(case.transform) if case.transform else None,
        "parameters": params,
        "parameter_files": _file_valued(params, memo),
        "pictures": case.pictures,
        "surface": f"design cache {DESIGN_RECIPE}" if design_cache else "remeshed per case",
    })


def _case_state(out: Path, case_id: str, key: str) -> tuple[str, dict | None]:
    """``("ok", metadata)``, ``("failed", record)``, ``("stale", None)`` or ``("missing", None)``."""
    meta = _read_json(out / CASES_DIR / case_id / "parameters.json")
    if meta is not None and (meta.get("inputs", {}).get("cohort") or {}).get("case_key") == key:
        return "ok", meta
    failed = _read_json(out / FAILED_DIR / f"{case_id}.json")
    if failed is not None and failed.get("case_key") == key:
        return "failed", failed
    return ("stale", None) if meta is not None else ("missing", None)


class _Progress:
    """Counts for the progress callback: done, failed, ETA from the mean time per finished case."""

    def __init__(self, total: int, callback: CohortProgress | None) -> None:
        self.total, self.callback = total, callback
        self.done = self.failed = 0
        self.t0 = self.t_last = time.perf_counter()

    def emit(self, kind: str, **extra) -> None:
        if self.callback is None:
            return
        finished = self.done + self.failed
        now = time.perf_counter()
        if kind == "case":
            self.t_last = now
        elapsed = now - self.t0
        # Mean time per finished case times the cases left, less the time the running ones have had since.
        eta = max(0.0, elapsed / finished * (self.total - finished) - (now - self.t_last)) if finished else float("nan")
        self.callback({"kind": kind, "total": self.total, "done": self.done, "failed": self.failed,
                       "elapsed_s": elapsed, "eta_s": eta, **extra})


def run_cohort(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    defaults=None,
    executor: cf.Executor | None = None,
    workers: int | None = None,
    shard=None,
    retry_failed: bool = False,
    progress: CohortProgress | None = None,
    design_cache: bool = True,
    rerun: bool = False,
) -> CohortResult:
    """Analyse every case of a manifest and write the cohort tables, maps and report.

    Args:
        manifest: CSV, one row per case (``case_id``, ``ct``, ``model``, optional ``transform``
            and analyze options as columns); relative paths are relative to its folder.
        out: the cohort folder (created; existing results in it are reused).
        defaults: analyze options for every case (``argparse.Namespace`` or dict of column -> value).
        executor: runs the cases (any ``concurrent.futures.Executor``, e.g. ``Client.get_executor()``
            of ``dask.distributed``); ``None``: a local process pool of ``workers`` processes.
        workers: processes of the local pool; ``None`` chooses from cores and free memory.
        shard: ``"I/N"``: run only cases I, I+N, I+2N, ... (1-based) of the manifest.
        retry_failed: rerun cases that failed before (with the same inputs and parameters).
        progress: called with a dict (``kind``, ``done``, ``failed``, ``total``, ``eta_s``, ``case_id``, ``error``).
        design_cache: share one remeshed surface per stem design (and write the per-vertex maps).
        rerun: analyse every case again even when its result is there.

    Raises:
        InputError: a bad manifest (every problem in one message) or bad arguments; nothing is run.
        OutputError: the cohort folder cannot be written.
    """
    cases = read_manifest(manifest, defaults)
    shard_in = parse_shard(shard)
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise InputError(f"--workers must be a positive integer, got {workers!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"the cohort output path {out} is a file, not a folder")
    try:
        for sub in (CASES_DIR, FAILED_DIR, CACHE_DIR):
            (out / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the cohort folder {out}: {exc.strerror or exc}") from None
    memo = _HashMemo(out / CACHE_DIR / "file_hashes.json")
    keys = {c.case_id: _case_key(c, memo, design_cache) for c in cases}
    memo.save()
    selected = cases if shard_in is None else cases[shard_in[0] - 1 :: shard_in[1]]
    to_run, reused = [], []
    for c in selected:
        state, _ = _case_state(out, c.case_id, keys[c.case_id])
        if not rerun and (state == "ok" or (state == "failed" and not retry_failed)):
            reused.append(c.case_id)
        else:
            to_run.append(c)

    pool = None
    n_workers, reason = None, "given executor"
    if to_run and executor is None:
        if workers is None:
            n_workers, reason = choose_workers(to_run)
        else:
            n_workers, reason = min(workers, len(to_run)), f"{workers} worker(s) as asked"
        pool = _LocalPool(n_workers)
    bar = _Progress(len(to_run), progress)
    ran: list[str] = []
    completed = False
    try:
        if to_run:
            bar.emit("start", workers=n_workers, workers_reason=reason, reused=len(reused))
            designs = _prepare_designs(to_run, out, memo, executor or pool, bar) if design_cache else {}
            tasks = [_task(c, out, keys[c.case_id], designs.get(c.case_id)) for c in to_run]
            _run_tasks(tasks, executor, pool, out, bar, ran)
        completed = True
    finally:
        if pool is not None:
            pool.close(kill=not completed)
        _remove_partial_folders(out, selected)
        result = rebuild_tables(out, cases, keys)
    result.ran, result.reused, result.workers, result.workers_reason = ran, reused, n_workers, reason
    bar.emit("end")
    return result


def _task(case: CohortCase, out: Path, key: str, design: dict | None) -> dict:
    return {
        "case_id": case.case_id,
        "ct": case.ct,
        "model": case.model,
        "transform": case.transform,
        "parameters": case.parameters.to_dict(),
        "pictures": case.pictures,
        "case_dir": str((out / CASES_DIR / case.case_id).resolve()),
        "key": key,
        "design": design,
    }


def _prepare_designs(cases: list[CohortCase], out: Path, memo: _HashMemo, executor, bar: _Progress) -> dict:
    """Build the missing design surfaces (one task per design); case_id -> design description."""
    by_key: dict[str, dict] = {}
    of_case: dict[str, str] = {}
    for c in cases:
        settings = design_settings(c)
        key = _digest({"model": memo.sha256(c.model), **settings})
        of_case[c.case_id] = key
        by_key.setdefault(key, {"key": key, "settings": settings, "model": c.model,
                                "file": str((out / CACHE_DIR / f"design-{key[:24]}.vtp").resolve())})
    from concurrent.futures.process import BrokenProcessPool

    failed_designs: dict[str, str] = {}
    todo = list(by_key)
    for _ in range(MAX_TRIES):
        futures = {executor.submit(build_design_surface, by_key[k]["model"], by_key[k]["settings"], by_key[k]["file"]): k for k in todo}
        todo = []
        for fut in cf.as_completed(futures):
            key = futures[fut]
            try:
                info = fut.result()
                by_key[key]["subdivide_used"] = info.get("subdivide_used")
            except BrokenProcessPool:
                todo.append(key)  # a worker died: build it again in a new pool
                continue
            except (InputError, OutputError) as exc:
                failed_designs[key] = str(exc)
            except Exception as exc:  # noqa: BLE001 - the cases of that design then fail on their own
                failed_designs[key] = f"{type(exc).__name__}: {exc}"
            bar.emit("design", design_key=key, error=failed_designs.get(key))
        if not todo:
            break
    for key in todo:
        failed_designs[key] = "the worker process died building this design surface"
    result = {}
    for cid, key in of_case.items():
        if key in failed_designs:
            # The cases then run without the cache and meet the same error as a case failure.
            continue
        result[cid] = by_key[key]
    return result


def _record_failure(out: Path, task: dict, outcome: dict) -> None:
    from .export import write_json

    write_json({"case_id": task["case_id"], "case_key": task["key"], "error": outcome["error"],
                "seconds": outcome.get("seconds"), "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
               out / FAILED_DIR / f"{task['case_id']}.json")


class _LocalPool:
    """The local process pool, replaced by a new one when a killed worker breaks it."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.executor = _process_pool(workers)

    def submit(self, fn, *args) -> cf.Future:
        """Submit to the pool, first replacing it if a dead worker broke it."""
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self.executor.submit(fn, *args)
        except BrokenProcessPool:
            return self.replace().submit(fn, *args)

    def replace(self) -> cf.ProcessPoolExecutor:
        self.close(kill=True)
        self.executor = _process_pool(self.workers)
        return self.executor

    def close(self, kill: bool = False) -> None:
        """Shut down; with ``kill`` (an interruption, a broken pool) the running workers are ended too."""
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        self.executor.shutdown(wait=not kill, cancel_futures=True)
        if kill:
            for p in processes:
                try:
                    p.terminate()
                except (OSError, AttributeError, ValueError):
                    pass


#: Tries of a case whose worker process died under it, before it is marked failed.
MAX_TRIES = 3


def _run_tasks(tasks: list[dict], executor, pool: _LocalPool | None, out: Path, bar: _Progress, ran: list[str]) -> None:
    """Submit every task and collect the outcomes as they come.

    With the local pool, a worker process that dies (killed, out of memory)
    breaks the pool: a new pool is made and the unfinished cases resubmitted;
    a case seen running when a pool broke is charged a try, and fails after
    ``MAX_TRIES``. With a given executor (Dask), the executor's own rules
    retry a case whose worker was lost; if it gives up, the case fails.
    """
    from concurrent.futures.process import BrokenProcessPool

    tries = {t["case_id"]: 0 for t in tasks}
    submit = (executor or pool).submit
    pending = {submit(run_case, t): t for t in tasks}
    seen_running: set[str] = set()
    while pending:
        finished, _ = cf.wait(list(pending), timeout=0.5, return_when=cf.FIRST_COMPLETED)
        for fut, task in pending.items():
            if fut not in finished and fut.running():
                seen_running.add(task["case_id"])
        if not finished:
            bar.emit("tick")
            continue
        broken = []
        for fut in finished:
            task = pending.pop(fut)
            try:
                outcome = fut.result()
            except BrokenProcessPool:
                broken.append(task)
                continue
            except cf.CancelledError:
                outcome = {"case_id": task["case_id"], "status": "failed", "error": "cancelled"}
            except Exception as exc:  # noqa: BLE001 - e.g. dask's KilledWorker: its worker died on every try
                outcome = {"case_id": task["case_id"], "status": "failed",
                           "error": " ".join(f"the worker running this case died ({type(exc).__name__}: {exc})".split())}
            _finish(out, task, outcome, bar, ran)
        if not broken:
            continue
        if pool is None or executor is not None:
            for task in broken:
                _finish(out, task, {"case_id": task["case_id"], "status": "failed", "error": "the worker process died"}, bar, ran)
            continue
        # A broken pool fails every future it holds: collect them all, then start a new pool.
        for fut, task in list(pending.items()):
            try:
                outcome = fut.result(timeout=60)
            except BrokenProcessPool:
                broken.append(task)
                continue
            except Exception as exc:  # noqa: BLE001
                outcome = {"case_id": task["case_id"], "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            finally:
                pending.pop(fut)
            _finish(out, task, outcome, bar, ran)
        pool.replace()
        for task in broken:
            cid = task["case_id"]
            if cid in seen_running:
                tries[cid] += 1
            if tries[cid] >= MAX_TRIES:
                _finish(out, task, {"case_id": cid, "status": "failed",
                                    "error": f"the worker process died {MAX_TRIES} times running this case (killed, or out of memory?)"},
                        bar, ran)
            else:
                pending[pool.submit(run_case, task)] = task
        seen_running.clear()
        bar.emit("restart", resubmitted=len(pending))


def _finish(out: Path, task: dict, outcome: dict, bar: _Progress, ran: list[str]) -> None:
    ran.append(task["case_id"])
    if outcome["status"] == "ok":
        try:
            os.unlink(out / FAILED_DIR / f"{task['case_id']}.json")
        except OSError:
            pass
        bar.done += 1
    else:
        _record_failure(out, task, outcome)
        bar.failed += 1
    bar.emit("case", case_id=task["case_id"], status=outcome["status"], error=outcome.get("error"),
             seconds=outcome.get("seconds"))


def _remove_partial_folders(out: Path, cases: list[CohortCase]) -> None:
    """Remove the hidden folders a worker killed while writing left behind (only this run's cases)."""
    root = out / CASES_DIR
    for c in cases:
        for stale in list(root.glob(f".{c.case_id}.partial-*")) + list(root.glob(f".{c.case_id}.old-*")):
            shutil.rmtree(stale, ignore_errors=True)


# ----------------------------------------------------------------------------------------------
# Tables


SUMMARY_QUANTITIES_EXTRA = ("hu_mean",)


def rebuild_tables(out: Path, cases: list[CohortCase], keys: dict[str, str]) -> CohortResult:
    """Build the cohort tables from the case folders and failure records; write them, the maps and the report."""
    from .export import write_csv

    rows, zone_frames = [], []
    design_members: dict[str, list[str]] = {}
    for c in cases:
        state, info = _case_state(out, c.case_id, keys[c.case_id])
        row = {"case_id": c.case_id, "status": "ok" if state == "ok" else "failed" if state == "failed" else "skipped",
               "error": "", "warnings": "", "seconds": float("nan"), "ct_kind": "", "sampled_share": float("nan")}
        if state == "ok":
            cohort = info["inputs"]["cohort"]
            row["warnings"] = " | ".join(info.get("warnings", []))
            row["seconds"] = float(cohort.get("seconds", float("nan")))
            row["ct_kind"] = cohort.get("ct_kind", "")
            try:
                z = pd.read_csv(out / CASES_DIR / c.case_id / "zones.csv", dtype={"zone": str})
            except (OSError, pd.errors.ParserError) as exc:
                row.update(status="failed", error=f"cannot read its zones.csv: {exc}")
                rows.append(row)
                continue
            whole = z[z["zone"] == "all"].iloc[0]
            row["sampled_share"] = float(whole["area_sampled_mm2"] / whole["area_mm2"]) if whole["area_mm2"] > 0 else float("nan")
            for col in z.columns:
                if col.startswith("frac_"):
                    row[col] = float(whole[col])
            row["hu_mean"] = float(whole["hu_mean"])
            zone_frames.append(pd.concat([pd.DataFrame({"case_id": [c.case_id] * len(z)}), z], axis=1))
            design = (info.get("inputs", {}).get("design_surface") or {})
            if cohort.get("design_key") and design.get("vertex_ids_are_design_vertices"):
                design_members.setdefault(cohort["design_key"], []).append(c.case_id)
        elif state == "failed":
            row["error"] = info.get("error", "")
            row["seconds"] = float(info.get("seconds") or float("nan"))
        else:
            row["error"] = ("its result is from other inputs or parameters: not yet rerun" if state == "stale"
                            else "not analysed yet (another shard, or an interrupted run)")
        rows.append(row)
    cases_df = pd.DataFrame(rows)
    zones_df = pd.concat(zone_frames, ignore_index=True) if zone_frames else pd.DataFrame(columns=["case_id", "zone"])
    summary_df = summarize_zones(zones_df)
    write_csv(cases_df, out / "cohort_cases.csv")
    write_csv(zones_df, out / "cohort_zones.csv")
    write_csv(summary_df, out / "cohort_summary.csv")
    from .cohort_report import write_cohort_report, write_design_maps

    maps = write_design_maps(out, design_members)
    write_cohort_report(out, cases_df, zones_df, summary_df, maps)
    return CohortResult(cases=cases_df, zones=zones_df, summary=summary_df, out=out)


def summarize_zones(zones: pd.DataFrame) -> pd.DataFrame:
    """Per zone and quantity (each ``frac_<class>`` and ``hu_mean``) across cases: n, mean, sd, median, quartiles.

    One row per zone and quantity (tidy); cases where the quantity is NaN (the
    zone was not sampled) are left out of that row's ``n``.
    """
    columns = ["zone", "region", "quantity", "n", "mean", "sd", "median", "q25", "q75", "min", "max"]
    if zones.empty:
        return pd.DataFrame(columns=columns)
    quantities = [c for c in zones.columns if c.startswith("frac_")] + ["hu_mean"]
    rows = []
    for zone in pd.unique(zones["zone"]):
        z = zones[zones["zone"] == zone]
        for q in quantities:
            v = z[q].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            n = int(v.size)
            rows.append({
                "zone": zone, "region": z["region"].iloc[0], "quantity": q, "n": n,
                "mean": float(v.mean()) if n else math.nan,
                "sd": float(v.std(ddof=1)) if n > 1 else math.nan,
                "median": float(np.median(v)) if n else math.nan,
                "q25": float(np.percentile(v, 25)) if n else math.nan,
                "q75": float(np.percentile(v, 75)) if n else math.nan,
                "min": float(v.min()) if n else math.nan,
                "max": float(v.max()) if n else math.nan,
            })
    return pd.DataFrame(rows, columns=columns)


# ----------------------------------------------------------------------------------------------
# Command line


def add_cohort_parser(sub) -> argparse.ArgumentParser:
    """Register ``implant-bone-contact cohort`` on the command line's subparsers."""
    from .cli import _add_analysis_options

    c = sub.add_parser(
        "cohort",
        help="analyse every case of a manifest (locally or on a Dask cluster) into one table",
        description="Analyse every case of a manifest CSV (case_id, ct, model, optional transform and any analyze "
        "option as a column, e.g. side, profile, medial_point). Every analyze option given here is the default for "
        "every case.",
    )
    c.add_argument("manifest", help="manifest CSV; relative paths in it are relative to its folder")
    c.add_argument("--out", required=True, help="cohort folder (created; results already in it are reused)")
    c.add_argument("--workers", type=int, help="local worker processes (default: from cores and free memory)")
    c.add_argument("--scheduler", metavar="tcp://HOST:PORT", help="run the cases on this Dask distributed scheduler")
    c.add_argument("--shard", metavar="I/N", help="run only cases I, I+N, I+2N, ... (1 <= I <= N), for array jobs")
    c.add_argument("--retry-failed", action="store_true", help="rerun the cases that failed before")
    c.add_argument("--no-design-cache", action="store_true",
                   help="remesh every case on its own (no shared design surface, no per-vertex cohort maps)")
    _add_analysis_options(c)
    return c


class ProgressBar:
    """One progress line on stderr (done / failed / ETA); failures print their own line."""

    def __init__(self, show_bar: bool, quiet: bool = False) -> None:
        self.show_bar, self.quiet = show_bar, quiet

    def __call__(self, event: dict) -> None:
        kind = event["kind"]
        if self.quiet:
            return
        if kind == "start":
            print(f"cohort: {event['total']} case(s) to run, {event['reused']} already done; {event['workers_reason']}",
                  file=sys.stderr, flush=True)
        if kind == "case" and event["status"] == "failed":
            print(f"{chr(13) if self.show_bar else ''}case {event['case_id']} failed: {event['error']}\033[K"
                  if self.show_bar else f"case {event['case_id']} failed: {event['error']}", file=sys.stderr, flush=True)
        if kind == "design" and event.get("error"):
            print(f"design surface failed: {event['error']}", file=sys.stderr, flush=True)
        if not self.show_bar:
            return
        total = max(event["total"], 1)
        finished = event["done"] + event["failed"]
        width = 30
        filled = int(width * finished / total)
        eta = event["eta_s"]
        eta_text = "--:--" if not math.isfinite(eta) else f"{int(eta // 60):d}:{int(eta % 60):02d}"
        line = (f"\r[{'#' * filled}{'.' * (width - filled)}] {finished}/{event['total']} "
                f"done {event['done']}, failed {event['failed']}, ETA {eta_text}\033[K")
        print(line, end="\n" if kind == "end" else "", file=sys.stderr, flush=True)


def run_cohort_cli(args: argparse.Namespace) -> int:
    """``implant-bone-contact cohort``: a thin layer over :func:`run_cohort`."""
    executor, client = None, None
    # The manifest and shard are checked before a cluster is contacted.
    read_manifest(args.manifest, args)
    parse_shard(args.shard)
    if args.scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise InputError("--scheduler needs dask.distributed: pip install 'implant-bone-contact[cluster]'") from None
        try:
            client = Client(args.scheduler, timeout="20s")
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot reach the Dask scheduler {args.scheduler}: {exc}") from None
        executor = client.get_executor()
    bar = ProgressBar(show_bar=args.progress or sys.stderr.isatty(), quiet=args.quiet)
    try:
        result = run_cohort(args.manifest, args.out, defaults=args, executor=executor, workers=args.workers,
                            shard=args.shard, retry_failed=args.retry_failed, progress=bar,
                            design_cache=not args.no_design_cache, rerun=args.overwrite)
    except KeyboardInterrupt:
        print(f"\nimplant-bone-contact: interrupted; the finished cases are kept in {args.out} and the tables rebuilt: "
              "run the same command again to go on", file=sys.stderr)
        return 130
    finally:
        if client is not None:
            client.close()
    counts = result.cases["status"].value_counts().to_dict()
    if not args.quiet:
        print(f"cohort: {counts.get('ok', 0)} ok, {counts.get('failed', 0)} failed, {counts.get('skipped', 0)} not run; "
              f"this run analysed {len(result.ran)}, reused {len(result.reused)}; tables in {result.out}", file=sys.stderr)
    return 0 if counts.get("failed", 0) == 0 else 1
