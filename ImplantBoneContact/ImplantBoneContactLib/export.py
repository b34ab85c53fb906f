"""Writing results: tidy CSV, VTP surface, JSON; all or nothing.

A result folder is written whole into a hidden temporary folder beside the
target and renamed into place at the end, so a crash, Ctrl-C or a full disk
never leaves half a result. An existing result is replaced only when asked
(``overwrite=True``), and then the old one is removed only after the new one
is in place.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from .atomicio import _silent_unlink, atomic_file, publish_mode  # noqa: F401 - re-exported
from .errors import OutputError
from .mesh import write_polydata

CSV_FLOAT_FORMAT = "%.7g"
#: For a float column whose every value is a whole number (``frac_metal`` all 0, say): ``%.7g`` would write
#: ``0`` and a CSV reader would take the column for integers; this keeps a ``.0``.
CSV_WHOLE_FLOAT_FORMAT = "%.1f"


def _float_format(values: np.ndarray) -> str:
    """The format of a float column: ``CSV_FLOAT_FORMAT``, or ``CSV_WHOLE_FLOAT_FORMAT`` when every value
    is a whole number that ``CSV_FLOAT_FORMAT`` would write without a point or exponent (same digits)."""
    if values.size and np.all(np.isfinite(values)) and np.all(np.abs(values) < 1e6) and np.all(values == np.round(values)):
        return CSV_WHOLE_FLOAT_FORMAT
    return CSV_FLOAT_FORMAT


def check_output_folder(
    out_dir: str | os.PathLike,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
    create_parent: bool = False,
) -> Path:
    """Check, before any work, that results can be written to ``out_dir``; return the folder to write.

    A symbolic link is followed: the result replaces the content of the
    folder it points to, and the link stays. Nothing is created unless
    ``create_parent`` (the writer asks for it once the results exist), so a
    run that fails leaves no empty folders behind.

    Args:
        out_dir: the result folder.
        overwrite: an existing result may be replaced.
        inputs: files or folders the run reads (CT, model, transform, ...):
            an output folder that holds one of them is refused, since
            replacing the folder would delete them.
        create_parent: create the missing parent folders.

    Raises:
        OutputError: the folder holds files and ``overwrite`` is False; it
            holds an input; the path is a file; the parent cannot be written.
    """
    out = Path(out_dir)
    if out.is_symlink():
        out = Path(os.path.realpath(out))
    if out.exists() and not out.is_dir():
        raise OutputError(f"the output path {out} is a file, not a folder")
    resolved = Path(os.path.realpath(out))
    for item in inputs:
        if item is None:
            continue
        source = Path(os.path.realpath(item))
        if source == resolved or resolved in source.parents:
            raise OutputError(
                f"the output folder {out_dir} holds an input of this run ({item}): writing the results there would "
                "replace it; choose an output folder of its own"
            )
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(f"the output folder {out} already holds results: use --overwrite to replace them, or choose another folder")
    parent = resolved.parent
    if create_parent and not parent.exists():
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create the output folder {parent}: {exc.strerror}") from None
    existing = parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot create the output folder {out}: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write in {existing}: permission denied")
    return out


def _floats_as_text(df: pd.DataFrame) -> pd.DataFrame:
    """Float columns formatted with ``CSV_FLOAT_FORMAT`` (NaN as ``NaN``), the same text ``to_csv(float_format=...)`` writes.

    pandas formats each float through several Python calls (about 2 us a value,
    1.4 s for the vertex table at 100 000 points); one ``%`` per value makes the
    whole write 1.6x faster, byte for byte the same file.
    """
    out = df.copy(deep=False)
    for col in df.columns:
        if not pd.api.types.is_float_dtype(df[col].dtype):
            continue
        values = df[col].to_numpy(dtype=np.float64, na_value=np.nan)
        fmt = _float_format(values)
        text = np.array([fmt % v for v in values.tolist()], dtype=object)
        text[np.isnan(values)] = "NaN"
        out[col] = text
    return out


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a tidy CSV (UTF-8, no index, NaN as ``NaN``) atomically: temp file then rename."""
    with atomic_file(path, "w", encoding="utf-8", newline="") as fh:
        if not _write_plain_csv(df, fh):
            _floats_as_text(df).to_csv(fh, index=False, na_rep="NaN", lineterminator="\n")


# Text that the csv module writes as it is (QUOTE_MINIMAL quotes none of it).
_PLAIN_TEXT = re.compile(r"[A-Za-z0-9_.+\-()/]+")

#: Rows formatted per ``%`` call by :func:`_write_plain_csv`: bounds the text held in memory (about 1 MB).
_CSV_CHUNK_ROWS = 10_000


def _plain_column(values: np.ndarray) -> tuple[str, list] | None:
    """``(%-conversion, Python values)`` that give a column's CSV text as ``to_csv`` writes it, or ``None``.

    Floats as ``CSV_FLOAT_FORMAT`` (NaN as ``NaN``), integers in decimal,
    booleans as ``True``/``False``, and strings only when every one of them
    is plain text that needs no quoting.
    """
    kind = values.dtype.kind
    if kind == "f":
        as_float = values.astype(np.float64, copy=False)
        nan = np.isnan(as_float)
        if not nan.any():
            return _float_format(as_float), as_float.tolist()
        text = [CSV_FLOAT_FORMAT % v for v in as_float.tolist()]
        for i in np.flatnonzero(nan).tolist():
            text[i] = "NaN"
        return "%s", text
    if kind in "iu":
        return "%d", values.tolist()
    if kind == "b":
        return "%s", values.tolist()
    if kind in "OUT":
        items = values.tolist()
        if all(isinstance(v, str) and _PLAIN_TEXT.fullmatch(v) for v in set(items)):
            return "%s", items
    return None


def _write_plain_csv(df: pd.DataFrame, fh) -> bool:
    """Write ``df`` to ``fh`` byte for byte as ``_floats_as_text(df).to_csv(...)`` would; False if it cannot.

    pandas writes a row through its csv writer, value by value (0.4 s for the
    vertex table at 100 000 points, after 0.4 s formatting the floats); here
    each chunk of rows is one ``%`` call on a repeated row format, 3x faster.
    Only plain tables take this path: numpy columns of floats, integers,
    booleans, and strings that need no quoting, under plain column names.
    Anything else (categories, nullable or date columns, missing strings,
    text with commas or quotes) returns False before writing, for pandas to write.
    """
    names = list(df.columns)
    if not names or not all(isinstance(n, str) and _PLAIN_TEXT.fullmatch(n) for n in names):
        return False
    specs: list[str] = []
    columns: list[list] = []
    for name in names:
        column = df[name]
        if not isinstance(column, pd.Series):
            return False  # repeated column names
        if not isinstance(column.dtype, (np.dtype, pd.StringDtype)):
            return False  # categories, nullable numbers, dates with time zones...
        plain = _plain_column(column.to_numpy())
        if plain is None:
            return False
        specs.append(plain[0])
        columns.append(plain[1])
    n_cols, n_rows = len(names), len(df)
    row_format = ",".join(specs) + "\n"
    fh.write(",".join(names) + "\n")
    for start in range(0, n_rows, _CSV_CHUNK_ROWS):
        stop = min(start + _CSV_CHUNK_ROWS, n_rows)
        # Row-major values of the chunk: column j fills every n_cols-th slot from j.
        flat: list = [None] * ((stop - start) * n_cols)
        for j, values in enumerate(columns):
            flat[j::n_cols] = values[start:stop]
        fh.write((row_format * (stop - start)) % tuple(flat))
    return True


def write_json(data: dict, path: str | os.PathLike) -> None:
    """Write JSON (UTF-8, indented) atomically."""
    with atomic_file(path, "w", encoding="utf-8") as fh:
        json.dump(_jsonable(data), fh, indent=2, allow_nan=True)
        fh.write("\n")


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return _jsonable(x.item())  # a numpy NaN or infinity becomes a Python float: written as below
    if isinstance(x, float) and not np.isfinite(x):
        return None if np.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def write_result_folder(
    out_dir: str | os.PathLike,
    writer: Callable[[Path], None],
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Run ``writer(tmp_folder)`` and move the folder to ``out_dir`` whole.

    ``out_dir`` may be a symbolic link to a folder: that folder's content is
    replaced and the link is kept. ``inputs`` are the files the run read: an
    ``out_dir`` that holds one is refused.

    Raises:
        OutputError: the folder exists with results and ``overwrite`` is False,
            it holds an input, or writing failed (disk full, permission);
            nothing is left behind.
    """
    out = check_output_folder(out_dir, overwrite, inputs=inputs, create_parent=True)
    parent = out.parent
    tmp = None
    committed = False
    try:
        try:
            # A signal between creating the folder and knowing its name would leave it behind: hold it till then.
            with _signals_held():
                tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=parent))
            publish_mode(tmp, is_dir=True)
            writer(tmp)
            # Ctrl-C or SIGTERM between the two renames would leave the earlier
            # result hidden in the .old folder: hold them until the swap is done.
            with _signals_held():
                old = None
                if out.exists():
                    if any(out.iterdir()) and not overwrite:
                        raise OutputError(f"the output folder {out} was filled while this run was working: not replacing it")
                    old = parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
                    os.rename(out, old)
                try:
                    os.rename(tmp, out)
                except BaseException:
                    if old is not None:
                        os.rename(old, out)
                    raise
                committed = True
                if old is not None:
                    shutil.rmtree(old, ignore_errors=True)
        except OutputError:
            raise
        except OSError as exc:
            raise OutputError(f"cannot write the results to {out}: {exc.strerror or exc}") from None
    except BaseException as exc:
        if committed:
            exc.result_written = str(out)  # whole and in place: only the interruption is left to report
        elif tmp is not None:
            # A second Ctrl-C while the partial folder is removed would stop the removal half way: hold it.
            with _signals_held(deliver=not isinstance(exc, KeyboardInterrupt)):
                shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@contextmanager
def _signals_held(deliver: bool = True) -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on them; a no-op outside the main thread.

    ``deliver=False`` drops the held signals: for clean-up while an
    interruption is already on its way out.

    Python handlers are swapped rather than the thread's signal mask: a signal
    sent to the process may be delivered to any of the threads VTK or ITK
    started, and Python runs its handlers in the main thread regardless.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    held = (signal.SIGINT, signal.SIGTERM)
    previous = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in held}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught and deliver:
            handler = previous[caught[0]]
            if callable(handler):
                handler(caught[0], None)
            elif handler != signal.SIG_IGN:
                signal.raise_signal(caught[0])


def write_tables_and_surface(result, folder: Path, parameters: bool = True) -> list[str]:
    """Write ``vertices.csv``, ``zones.csv``, ``surface.vtp``, ``frame.json`` (and ``parameters.json``) into ``folder``."""
    folder = Path(folder)
    write_csv(result.vertices, folder / "vertices.csv")
    write_csv(result.zones, folder / "zones.csv")
    write_polydata(result.surface, folder / "surface.vtp", space="RAS")
    write_json(result.frame.to_dict(), folder / "frame.json")
    names = ["vertices.csv", "zones.csv", "surface.vtp", "frame.json"]
    if parameters:
        write_json(result.metadata(), folder / "parameters.json")
        names.append("parameters.json")
    registration = getattr(result, "registration", None)
    if registration is not None:
        names += registration.write_files(folder, pictures=False)
    return names


def _input_paths(result) -> list[str]:
    """Paths of the files an analysis read (``result.inputs[...]["path"]``)."""
    found = []
    for item in (getattr(result, "inputs", None) or {}).values():
        if isinstance(item, dict) and isinstance(item.get("path"), str):
            found.append(item["path"])
    return found


def save_result(result, out_dir: str | os.PathLike, overwrite: bool = False, pictures: bool = True) -> Path:
    """Write every output of an analysis into ``out_dir`` atomically.

    Args:
        result: an :class:`~ImplantBoneContactLib.analysis.AnalysisResult`.
        out_dir: the result folder (created).
        overwrite: replace an existing result.
        pictures: also write the pictures and ``report.html``.
    """

    def writer(folder: Path) -> None:
        t = time.perf_counter()
        write_tables_and_surface(result, folder, parameters=False)
        timings = getattr(result, "timings_s", None)
        if isinstance(timings, dict):
            timings["write_tables"] = time.perf_counter() - t
        if pictures:
            # The pictures are drawn from the result alone; importing them only here keeps
            # a tables-only run free of matplotlib (and the drawing modules never import this one).
            from .plots import write_pictures

            t = time.perf_counter()
            write_pictures(result, folder)
            registration = getattr(result, "registration", None)
            if registration is not None:
                registration.write_qc_picture(folder)  # the .tfm is written with the tables
            if isinstance(timings, dict):
                timings["pictures"] = time.perf_counter() - t
        # Last, so that its timings_s holds the writing and the pictures.
        write_json(result.metadata(), folder / "parameters.json")

    return write_result_folder(out_dir, writer, overwrite, inputs=_input_paths(result))
