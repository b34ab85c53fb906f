"""Known answers for the all-or-nothing writers (``export`` and ``atomicio``), on tiny tables built here.

What a reader must see: the whole new file or folder, or the old one, never a
part; no hidden temporary file or folder left behind; permissions as a plain
``open`` or ``mkdir`` would give; an output folder that holds an input or old
results refused before any work. Every test writes a few bytes into
``tmp_path``, so these tests also serve the mutation runs of ``export`` and
``atomicio`` (``make mutation MODULES="export atomicio"``).
"""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import vtk
from ImplantBoneContactLib import atomicio, export
from ImplantBoneContactLib.atomicio import _silent_unlink, _umask, atomic_file, publish_mode, write_bytes_atomic
from ImplantBoneContactLib.errors import OutputError
from ImplantBoneContactLib.export import (
    _input_paths,
    _signals_held,
    check_output_folder,
    save_result,
    write_csv,
    write_json,
    write_result_folder,
    write_tables_and_surface,
)


@pytest.fixture
def umask_022():
    """Run the test under umask 022 (and put the old one back)."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def sigint_raises():
    """SIGINT raises KeyboardInterrupt during the test, whatever the test runner inherited (a background job
    starts with SIGINT ignored)."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _names(folder) -> list[str]:
    return sorted(p.name for p in Path(folder).iterdir())


# ---------------------------------------------------------------------------------------------------------
# atomicio


def test_umask_is_read_without_changing_it():
    old = os.umask(0o027)
    try:
        assert _umask() == 0o027
        assert _umask() == 0o027
        assert os.umask(0o027) == 0o027
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o007, 0o660, 0o770), (0o000, 0o666, 0o777)])
def test_publish_mode_follows_the_umask(tmp_path, mask, file_mode, dir_mode):
    f = tmp_path / "f"
    f.write_text("x")
    d = tmp_path / "d"
    d.mkdir()
    os.chmod(f, 0o600)
    os.chmod(d, 0o700)
    old = os.umask(mask)
    try:
        publish_mode(f)
        publish_mode(d, is_dir=True)
    finally:
        os.umask(old)
    assert _mode(f) == file_mode
    assert _mode(d) == dir_mode


def test_silent_unlink_removes_a_file_and_ignores_a_missing_one(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    _silent_unlink(f)
    assert not f.exists()
    _silent_unlink(f)  # no error
    _silent_unlink(str(tmp_path / "never"))


def test_atomic_file_writes_the_whole_file_with_plain_permissions(tmp_path, umask_022):
    target = tmp_path / "out.txt"
    with atomic_file(target, "w", encoding="utf-8", newline="") as fh:
        fh.write("Gruen zone 1\r\nµ\n")
        # nothing at the target while writing: the text goes to a hidden file beside it
        assert not target.exists()
        hidden = [n for n in _names(tmp_path) if n.startswith(".out.txt.") and n.endswith(".tmp")]
        assert len(hidden) == 1
    assert target.read_bytes() == "Gruen zone 1\r\nµ\n".encode()
    assert _names(tmp_path) == ["out.txt"]
    assert _mode(target) == 0o644


def test_atomic_file_default_mode_is_text(tmp_path):
    with atomic_file(tmp_path / "a.txt") as fh:
        fh.write("text")
    assert (tmp_path / "a.txt").read_text() == "text"


def test_atomic_file_replaces_an_existing_file_whole(tmp_path):
    target = tmp_path / "t.csv"
    target.write_text("old\n")
    with atomic_file(str(target), "w") as fh:
        fh.write("new\n")
        assert target.read_text() == "old\n"
    assert target.read_text() == "new\n"
    assert _names(tmp_path) == ["t.csv"]


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyboardInterrupt()])
def test_atomic_file_failure_leaves_the_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "t.csv"
    target.write_text("old\n")
    with pytest.raises(type(error)):
        with atomic_file(target, "w") as fh:
            fh.write("half of the new")
            raise error
    assert target.read_text() == "old\n"
    assert _names(tmp_path) == ["t.csv"]


def test_atomic_file_failure_leaves_no_file_where_there_was_none(tmp_path):
    with pytest.raises(RuntimeError, match="disk"):
        with atomic_file(tmp_path / "new.bin", "wb") as fh:
            fh.write(b"\x00" * 10)
            raise RuntimeError("disk full")
    assert _names(tmp_path) == []


def test_atomic_file_in_a_missing_folder_fails_and_creates_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        with atomic_file(tmp_path / "missing" / "f.txt") as fh:
            fh.write("x")
    assert _names(tmp_path) == []


def test_atomic_file_failing_rename_removes_the_temporary(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(atomicio.os, "replace", refuse)
    with pytest.raises(PermissionError):
        with atomic_file(tmp_path / "f.txt") as fh:
            fh.write("x")
    monkeypatch.undo()
    assert _names(tmp_path) == []


def test_atomic_file_syncs_before_renaming(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomicio.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomicio.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    with atomic_file(tmp_path / "f.txt") as fh:
        fh.write("x")
    monkeypatch.undo()
    assert events == ["fsync", "replace"]


def test_write_bytes_atomic(tmp_path, umask_022):
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\xffabc")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xffabc"
    assert _names(tmp_path) == ["b.bin"]
    assert _mode(tmp_path / "b.bin") == 0o644


# ---------------------------------------------------------------------------------------------------------
# CSV and JSON


def test_write_csv_known_text(tmp_path):
    df = pd.DataFrame({
        "vertex": np.array([0, 1, 2], dtype=np.int64),
        "hu": [1.5, np.nan, 1234567.0],
        "frac_metal": [0.0, 1.0, 0.0],
        "zone": ["1", "7", "14"],
        "inside": [True, False, True],
    })
    write_csv(df, tmp_path / "v.csv")
    assert (tmp_path / "v.csv").read_bytes() == (
        b"vertex,hu,frac_metal,zone,inside\n"
        b"0,1.5,0.0,1,True\n"
        b"1,NaN,1.0,7,False\n"
        b"2,1234567,0.0,14,True\n"
    )
    assert _names(tmp_path) == ["v.csv"]


def test_write_csv_with_text_that_needs_quotes(tmp_path):
    # a class name with a comma: written by pandas, quoted, UTF-8, "\n" line ends
    df = pd.DataFrame({"class": ["bone, cortical", "µ"], "area_mm2": [2.5, np.nan]})
    write_csv(df, tmp_path / "z.csv")
    assert (tmp_path / "z.csv").read_bytes() == 'class,area_mm2\n"bone, cortical",2.5\nµ,NaN\n'.encode()
    back = pd.read_csv(tmp_path / "z.csv")
    assert back["class"].tolist() == ["bone, cortical", "µ"]


def test_write_csv_failure_keeps_the_old_file(tmp_path, monkeypatch):
    (tmp_path / "v.csv").write_text("old\n")

    def broken(df, fh):
        fh.write("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write_plain_csv", broken)
    with pytest.raises(OSError):
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / "v.csv")
    assert (tmp_path / "v.csv").read_text() == "old\n"
    assert _names(tmp_path) == ["v.csv"]


def test_write_json_known_text(tmp_path):
    data = {"n": np.int64(3), "x": np.float32(0.5), "nan": float("nan"), "inf": float("inf"), "minf": -np.inf,
            "arr": np.array([1.0, 2.0]), "t": (1, "µ"), 4: None}
    write_json(data, tmp_path / "p.json")
    text = (tmp_path / "p.json").read_text(encoding="utf-8")
    assert text == (
        '{\n  "n": 3,\n  "x": 0.5,\n  "nan": null,\n  "inf": "inf",\n  "minf": "-inf",\n'
        '  "arr": [\n    1.0,\n    2.0\n  ],\n  "t": [\n    1,\n    "\\u00b5"\n  ],\n  "4": null\n}\n'
    )
    assert json.loads(text)["t"] == [1, "µ"]
    assert _names(tmp_path) == ["p.json"]


def test_write_json_failure_keeps_the_old_file(tmp_path):
    (tmp_path / "p.json").write_text("{}\n")
    with pytest.raises(TypeError):
        write_json({"a": object()}, tmp_path / "p.json")
    assert (tmp_path / "p.json").read_text() == "{}\n"
    assert _names(tmp_path) == ["p.json"]


# ---------------------------------------------------------------------------------------------------------
# check_output_folder


def test_check_output_folder_accepts_a_new_folder_and_creates_nothing(tmp_path):
    out = check_output_folder(tmp_path / "a" / "b" / "result")
    assert out == tmp_path / "a" / "b" / "result"
    assert _names(tmp_path) == []


def test_check_output_folder_creates_the_parents_when_asked(tmp_path):
    out = check_output_folder(str(tmp_path / "a" / "b" / "result"), create_parent=True)
    assert out == tmp_path / "a" / "b" / "result"
    assert (tmp_path / "a" / "b").is_dir()
    assert not out.exists()


def test_check_output_folder_accepts_an_empty_folder(tmp_path):
    (tmp_path / "r").mkdir()
    assert check_output_folder(tmp_path / "r") == tmp_path / "r"


def test_check_output_folder_refuses_old_results_unless_overwrite(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "zones.csv").write_text("x")
    with pytest.raises(OutputError, match=r"^the output folder .*r already holds results: use --overwrite to replace them, or choose another folder$"):
        check_output_folder(tmp_path / "r")
    assert check_output_folder(tmp_path / "r", overwrite=True) == tmp_path / "r"


def test_check_output_folder_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"^the output path .*f is a file, not a folder$"):
        check_output_folder(tmp_path / "f", overwrite=True)


@pytest.mark.parametrize("where", ["inside", "itself", "deeper"])
def test_check_output_folder_refuses_a_folder_that_holds_an_input(tmp_path, where):
    out = tmp_path / "r"
    (out / "sub").mkdir(parents=True)
    (out / "ct.nrrd").write_text("x")
    (out / "sub" / "stem.stl").write_text("x")
    item = {"inside": out / "ct.nrrd", "itself": out, "deeper": out / "sub" / "stem.stl"}[where]
    with pytest.raises(OutputError, match=r"holds an input of this run \(.*\): writing the results there would replace it; choose an output folder of its own$"):
        check_output_folder(out, overwrite=True, inputs=[None, tmp_path / "elsewhere.nrrd", str(item)])


def test_check_output_folder_accepts_inputs_elsewhere(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "ct.nrrd").write_text("x")
    (tmp_path / "r").mkdir()
    (tmp_path / "r2").mkdir()
    # an input beside the folder, in its parent, and in a folder whose name starts the same
    inputs = [None, tmp_path / "data" / "ct.nrrd", tmp_path, tmp_path / "r2"]
    assert check_output_folder(tmp_path / "r", inputs=inputs) == tmp_path / "r"


def test_check_output_folder_follows_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert check_output_folder(tmp_path / "link") == tmp_path / "real"
    (tmp_path / "real" / "ct.nrrd").write_text("x")
    with pytest.raises(OutputError, match="holds an input"):
        check_output_folder(tmp_path / "link", overwrite=True, inputs=[tmp_path / "real" / "ct.nrrd"])


def test_check_output_folder_refuses_a_parent_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match=r"^cannot create the output folder .*r: .*f is a file$"):
        check_output_folder(tmp_path / "f" / "a" / "r")
    with pytest.raises(OutputError, match=r"^cannot create the output folder .*f/a: "):
        check_output_folder(tmp_path / "f" / "a" / "r", create_parent=True)


def test_check_output_folder_refuses_a_parent_it_cannot_write(tmp_path, monkeypatch):
    asked = []

    def no_write(path, mode):
        asked.append((Path(path), mode))
        return False

    monkeypatch.setattr(export.os, "access", no_write)
    with pytest.raises(OutputError, match=r"^cannot write in .*: permission denied$"):
        check_output_folder(tmp_path / "new" / "r")
    monkeypatch.undo()
    assert asked == [(tmp_path, os.W_OK | os.X_OK)]


# ---------------------------------------------------------------------------------------------------------
# write_result_folder


def _writer(files: dict):
    def write(folder: Path) -> None:
        for name, text in files.items():
            (folder / name).write_text(text)
    return write


def test_write_result_folder_writes_into_place(tmp_path, umask_022):
    out = write_result_folder(tmp_path / "sub" / "r", _writer({"a.csv": "1", "b.json": "{}"}))
    assert out == tmp_path / "sub" / "r"
    assert _names(out) == ["a.csv", "b.json"]
    assert (out / "a.csv").read_text() == "1"
    assert _names(tmp_path / "sub") == ["r"]  # no partial or old folder beside it
    assert _mode(out) == 0o755


def test_write_result_folder_replaces_old_results_only_with_overwrite(tmp_path):
    out = tmp_path / "r"
    write_result_folder(out, _writer({"old.csv": "old"}))
    called = []
    with pytest.raises(OutputError, match="already holds results"):
        write_result_folder(out, lambda folder: called.append(folder))
    assert called == []  # refused before any work
    write_result_folder(out, _writer({"new.csv": "new"}), overwrite=True)
    assert _names(out) == ["new.csv"]
    assert _names(tmp_path) == ["r"]


def test_write_result_folder_into_an_empty_folder(tmp_path):
    (tmp_path / "r").mkdir()
    write_result_folder(tmp_path / "r", _writer({"a.csv": "1"}))
    assert _names(tmp_path / "r") == ["a.csv"]
    assert _names(tmp_path) == ["r"]


def test_write_result_folder_through_a_link_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "old.csv").write_text("old")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    write_result_folder(tmp_path / "link", _writer({"new.csv": "new"}), overwrite=True)
    assert (tmp_path / "link").is_symlink()
    assert _names(tmp_path / "real") == ["new.csv"]
    assert _names(tmp_path) == ["link", "real"]


def test_write_result_folder_refuses_a_folder_holding_an_input(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "ct.nrrd").write_text("x")
    with pytest.raises(OutputError, match="holds an input"):
        write_result_folder(tmp_path / "r", _writer({"a.csv": "1"}), overwrite=True, inputs=[tmp_path / "r" / "ct.nrrd"])
    assert _names(tmp_path / "r") == ["ct.nrrd"]


@pytest.mark.parametrize("error", [ValueError("bad"), KeyboardInterrupt(), SystemExit(3)])
def test_write_result_folder_failure_leaves_the_old_result(tmp_path, error):
    out = tmp_path / "r"
    write_result_folder(out, _writer({"old.csv": "old"}))

    def failing(folder: Path) -> None:
        (folder / "half.csv").write_text("half")
        raise error

    with pytest.raises(type(error)):
        write_result_folder(out, failing, overwrite=True)
    assert _names(out) == ["old.csv"]
    assert _names(tmp_path) == ["r"]


def test_write_result_folder_os_error_becomes_output_error(tmp_path):
    def full(folder: Path) -> None:
        (folder / "a.csv").write_text("x")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match=r"^cannot write the results to .*r: No space left on device$"):
        write_result_folder(tmp_path / "r", full)
    assert _names(tmp_path) == []
    with pytest.raises(OutputError, match=r"^cannot write the results to .*r: plain$"):
        write_result_folder(tmp_path / "r", lambda folder: (_ for _ in ()).throw(OSError("plain")))
    assert _names(tmp_path) == []


def test_write_result_folder_output_error_of_the_writer_passes_unchanged(tmp_path):
    def refuse(folder: Path) -> None:
        raise OutputError("the writer's own message")

    with pytest.raises(OutputError, match="^the writer's own message$"):
        write_result_folder(tmp_path / "r", refuse)
    assert _names(tmp_path) == []


def test_write_result_folder_refuses_a_folder_filled_meanwhile(tmp_path):
    out = tmp_path / "r"

    def racing(folder: Path) -> None:
        (folder / "a.csv").write_text("mine")
        out.mkdir()
        (out / "theirs.csv").write_text("theirs")

    with pytest.raises(OutputError, match=r"^the output folder .*r was filled while this run was working: not replacing it$"):
        write_result_folder(out, racing)
    assert _names(out) == ["theirs.csv"]
    assert _names(tmp_path) == ["r"]
    # with overwrite, results found at the end are replaced
    write_result_folder(out, _writer({"a.csv": "mine"}), overwrite=True)
    assert _names(out) == ["a.csv"]


def _fail_renaming_the_partial_folder(monkeypatch) -> None:
    """Make renaming the partial folder of a result folder ``r`` fail as across file systems (EXDEV)."""
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".r.partial-"):
            raise OSError(18, "Invalid cross-device link")
        return real_rename(src, dst)

    monkeypatch.setattr(export.os, "rename", rename)


def test_write_result_folder_puts_the_old_result_back_when_the_swap_fails(tmp_path, monkeypatch):
    out = tmp_path / "r"
    write_result_folder(out, _writer({"old.csv": "old"}))
    _fail_renaming_the_partial_folder(monkeypatch)
    with pytest.raises(OutputError, match="Invalid cross-device link"):
        write_result_folder(out, _writer({"new.csv": "new"}), overwrite=True)
    monkeypatch.undo()
    assert _names(out) == ["old.csv"]
    assert _names(tmp_path) == ["r"]


def test_write_result_folder_interrupted_after_the_swap_reports_the_result_written(tmp_path, monkeypatch, sigint_raises):
    # Ctrl-C arrives during the swap: it is held until the new result is in place, then raised, and the
    # exception says the result was written whole
    out = tmp_path / "r"
    write_result_folder(out, _writer({"old.csv": "old"}))
    real_rename = os.rename

    def rename(src, dst):
        real_rename(src, dst)
        if Path(src).name.startswith(".r.partial-"):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(export.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt) as info:
        write_result_folder(out, _writer({"new.csv": "new"}), overwrite=True)
    monkeypatch.undo()
    assert info.value.result_written == str(out)
    assert _names(out) == ["new.csv"]
    assert _names(tmp_path) == ["r"]


def test_write_result_folder_interrupted_while_writing_removes_the_partial_folder(tmp_path, sigint_raises):
    def interrupted(folder: Path) -> None:
        (folder / "a.csv").write_text("x")
        os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt) as info:
        write_result_folder(tmp_path / "r", interrupted)
    assert not hasattr(info.value, "result_written")
    assert _names(tmp_path) == []


def test_write_result_folder_removes_the_partial_folder_after_a_failure_in_a_thread(tmp_path):
    caught = []

    def run():
        try:
            write_result_folder(tmp_path / "r", lambda folder: (_ for _ in ()).throw(ValueError("x")))
        except ValueError as exc:
            caught.append(exc)
        write_result_folder(tmp_path / "r2", _writer({"a.csv": "1"}))

    th = threading.Thread(target=run)
    th.start()
    th.join()
    assert len(caught) == 1
    assert _names(tmp_path) == ["r2"]


# ---------------------------------------------------------------------------------------------------------
# _signals_held


def test_signals_held_delivers_sigint_at_the_end(sigint_raises):
    reached = []
    with pytest.raises(KeyboardInterrupt):
        with _signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            reached.append("after the signal")
    assert reached == ["after the signal"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signals_held_drops_the_signals_when_asked(sigint_raises):
    with _signals_held(deliver=False):
        os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_signals_held_hands_the_first_signal_to_the_previous_handler():
    got = []
    old_int = signal.signal(signal.SIGINT, lambda s, f: got.append(("int", s, f)))
    old_term = signal.signal(signal.SIGTERM, lambda s, f: got.append(("term", s, f)))
    try:
        with _signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            assert got == []
        assert got == [("term", signal.SIGTERM, None)]
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)


def test_signals_held_with_ignored_sigint_delivers_nothing():
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with _signals_held():
            os.kill(os.getpid(), signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_signals_held_with_default_sigterm_raises_it_again(tmp_path):
    # SIG_DFL for SIGTERM: the held signal is raised again and ends the process (here a child)
    pid = os.fork()
    if pid == 0:  # child
        code = 0
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            with _signals_held():
                os.kill(os.getpid(), signal.SIGTERM)
                (tmp_path / "held").write_text("x")
            code = 7  # not reached: SIGTERM ends the process
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    assert (tmp_path / "held").exists()


def test_signals_held_is_a_no_op_in_a_thread():
    errors = []

    def run():
        try:
            with _signals_held():
                pass
        except Exception as exc:  # signal.signal raises ValueError outside the main thread
            errors.append(exc)

    th = threading.Thread(target=run)
    th.start()
    th.join()
    assert errors == []


# ---------------------------------------------------------------------------------------------------------
# Tables and surface of a result (a stand-in with the attributes the writers read)


class _Frame:
    def to_dict(self):
        return {"axis": [0.0, 0.0, 1.0]}


def _triangle() -> vtk.vtkPolyData:
    from ImplantBoneContactLib.mesh import polydata_from_arrays

    return polydata_from_arrays(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=float), np.array([[0, 1, 2]]))


def _result(tmp_path, registration=None, timings=None):
    ct = tmp_path / "in" / "ct.nrrd"
    ct.parent.mkdir(exist_ok=True)
    ct.write_text("x")
    return SimpleNamespace(
        vertices=pd.DataFrame({"vertex": [0, 1, 2], "hu": [100.0, 200.0, np.nan]}),
        zones=pd.DataFrame({"zone": [1], "mean_hu": [150.0]}),
        surface=_triangle(),
        frame=_Frame(),
        metadata=lambda: {"version": "x", "timings_s": timings},
        registration=registration,
        inputs={"ct": {"path": str(ct)}, "model": {"path": None}, "note": "text", "frame": {"kind": "auto"}},
        timings_s=timings,
    )


class _Registration:
    def __init__(self):
        self.calls = []

    def write_files(self, folder, pictures=True):
        self.calls.append(("files", pictures))
        (Path(folder) / "registration.tfm").write_text("tfm")
        return ["registration.tfm"]

    def write_qc_picture(self, folder):
        self.calls.append(("qc",))
        (Path(folder) / "registration_qc.png").write_text("png")


def test_write_tables_and_surface_names_what_it_wrote(tmp_path):
    r = _result(tmp_path)
    (tmp_path / "o").mkdir()
    names = write_tables_and_surface(r, str(tmp_path / "o"))
    assert names == ["vertices.csv", "zones.csv", "surface.vtp", "frame.json", "parameters.json"]
    assert _names(tmp_path / "o") == sorted(names)
    # a float column with NaN is recognised as float by its NaN: whole numbers without ".0" (%.7g)
    assert (tmp_path / "o" / "vertices.csv").read_text() == "vertex,hu\n0,100\n1,200\n2,NaN\n"
    assert (tmp_path / "o" / "zones.csv").read_text() == "zone,mean_hu\n1,150.0\n"
    assert json.loads((tmp_path / "o" / "frame.json").read_text()) == {"axis": [0.0, 0.0, 1.0]}
    assert json.loads((tmp_path / "o" / "parameters.json").read_text()) == {"version": "x", "timings_s": None}
    reader = vtk.vtkXMLPolyDataReader()
    reader.SetFileName(str(tmp_path / "o" / "surface.vtp"))
    reader.Update()
    assert reader.GetOutput().GetNumberOfCells() == 1
    assert reader.GetOutput().GetFieldData().GetAbstractArray("SPACE").GetValue(0) == "RAS"


def test_write_tables_and_surface_without_parameters_and_with_a_registration(tmp_path):
    reg = _Registration()
    r = _result(tmp_path, registration=reg)
    (tmp_path / "o").mkdir()
    names = write_tables_and_surface(r, tmp_path / "o", parameters=False)
    assert names == ["vertices.csv", "zones.csv", "surface.vtp", "frame.json", "registration.tfm"]
    assert reg.calls == [("files", False)]
    assert _names(tmp_path / "o") == sorted(names)


def test_input_paths_are_the_path_strings_of_the_inputs(tmp_path):
    r = _result(tmp_path)
    assert _input_paths(r) == [str(tmp_path / "in" / "ct.nrrd")]
    assert _input_paths(SimpleNamespace()) == []
    assert _input_paths(SimpleNamespace(inputs=None)) == []
    assert _input_paths(SimpleNamespace(inputs={"a": {"path": "x"}, "b": {"path": "y"}})) == ["x", "y"]


def test_save_result_without_pictures(tmp_path):
    timings = {}
    r = _result(tmp_path, timings=timings)
    out = save_result(r, tmp_path / "res", pictures=False)
    assert out == tmp_path / "res"
    assert _names(out) == ["frame.json", "parameters.json", "surface.vtp", "vertices.csv", "zones.csv"]
    assert set(timings) == {"write_tables"}
    assert timings["write_tables"] >= 0.0
    # parameters.json is written last: it holds the writing time
    assert json.loads((out / "parameters.json").read_text())["timings_s"] == {"write_tables": timings["write_tables"]}
    assert _names(tmp_path) == ["in", "res"]
    with pytest.raises(OutputError, match="already holds results"):
        save_result(r, out, pictures=False)
    save_result(r, out, overwrite=True, pictures=False)


def test_save_result_with_pictures_and_registration(tmp_path, monkeypatch):
    from ImplantBoneContactLib import plots

    drawn = []

    def fake_pictures(result, folder):
        drawn.append(result)
        (Path(folder) / "contact_map.png").write_text("png")

    monkeypatch.setattr(plots, "write_pictures", fake_pictures)
    reg = _Registration()
    timings = {}
    r = _result(tmp_path, registration=reg, timings=timings)
    out = save_result(r, tmp_path / "res")
    assert drawn == [r]
    assert reg.calls == [("files", False), ("qc",)]
    assert _names(out) == ["contact_map.png", "frame.json", "parameters.json", "registration.tfm",
                           "registration_qc.png", "surface.vtp", "vertices.csv", "zones.csv"]
    assert set(timings) == {"write_tables", "pictures"}
    assert json.loads((out / "parameters.json").read_text())["timings_s"]["pictures"] == timings["pictures"]


def test_save_result_without_timings_dict(tmp_path):
    r = _result(tmp_path, timings=None)
    r.timings_s = "not a dict"
    out = save_result(r, tmp_path / "res", pictures=False)
    assert "parameters.json" in _names(out)


def test_save_result_refuses_a_folder_holding_an_input(tmp_path):
    r = _result(tmp_path)
    with pytest.raises(OutputError, match="holds an input"):
        save_result(r, tmp_path / "in", overwrite=True, pictures=False)
    assert _names(tmp_path / "in") == ["ct.nrrd"]


# ---------------------------------------------------------------------------------------------------------
# Cases found by mutation testing


def test_write_json_writes_numpy_nan_and_infinity_as_python_ones():
    # numpy scalars (statistics, metadata) as Python floats: null / "inf" / "-inf", never the invalid NaN token
    import math

    data = {"a": np.float64("nan"), "b": np.float32("inf"), "c": np.float64("-inf"), "d": np.array([np.nan])}
    text = json.dumps(export._jsonable(data))
    assert text == '{"a": null, "b": "inf", "c": "-inf", "d": [null]}'
    assert "NaN" not in text and math.isnan(data["a"])


def test_write_json_file_has_no_nan_token(tmp_path):
    write_json({"a": np.float64("nan"), "b": [np.float32("nan")]}, tmp_path / "p.json")
    text = (tmp_path / "p.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": [None]}


def test_write_csv_writes_missing_text_as_nan(tmp_path):
    # an object column with a missing value is written by pandas: the missing value as NaN
    write_csv(pd.DataFrame({"class": ["bone", None], "n": [1, 2]}), tmp_path / "c.csv")
    assert (tmp_path / "c.csv").read_bytes() == b"class,n\nbone,1\nNaN,2\n"


def test_write_result_folder_writes_in_a_hidden_folder_beside_the_target(tmp_path):
    seen = []

    def writer(folder: Path) -> None:
        seen.append(folder)
        (folder / "a.csv").write_text("1")

    out = write_result_folder(tmp_path / "r", writer)
    assert len(seen) == 1
    assert seen[0].parent == tmp_path  # same file system: the final rename is atomic
    assert seen[0].name.startswith(".r.partial-")
    assert _names(out) == ["a.csv"]


def test_write_result_folder_failed_swap_without_old_result_reports_the_cause(tmp_path, monkeypatch):
    _fail_renaming_the_partial_folder(monkeypatch)
    with pytest.raises(OutputError, match=r"^cannot write the results to .*r: Invalid cross-device link$"):
        write_result_folder(tmp_path / "r", _writer({"a.csv": "1"}))
    monkeypatch.undo()
    assert _names(tmp_path) == []


def _rmtree_that_cannot_remove(real_rmtree, marker: str):
    """shutil.rmtree on a folder holding a file that cannot be removed (``marker`` in its name): with
    ignore_errors the rest is removed and the error ignored, without it the error is raised."""

    def rmtree(path, ignore_errors=False, **kw):
        if marker in Path(path).name:
            if not ignore_errors:
                raise PermissionError(13, "Permission denied", str(path))
            return None
        return real_rmtree(path, ignore_errors=ignore_errors, **kw)

    return rmtree


def test_an_old_result_that_cannot_be_removed_does_not_fail_the_run(tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "r"
    write_result_folder(out, _writer({"old.csv": "old"}))
    monkeypatch.setattr(export.shutil, "rmtree", _rmtree_that_cannot_remove(shutil.rmtree, ".r.old-"))
    assert write_result_folder(out, _writer({"new.csv": "new"}), overwrite=True) == out
    monkeypatch.undo()
    assert _names(out) == ["new.csv"]


def test_a_partial_folder_that_cannot_be_removed_does_not_hide_the_error(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(export.shutil, "rmtree", _rmtree_that_cannot_remove(shutil.rmtree, ".r.partial-"))
    with pytest.raises(ValueError, match="^the real error$"):
        write_result_folder(tmp_path / "r", lambda folder: (_ for _ in ()).throw(ValueError("the real error")))


def test_ctrl_c_during_the_clean_up_after_an_error_is_not_lost(tmp_path, monkeypatch, sigint_raises):
    # the writer fails; while its partial folder is removed the user presses Ctrl-C: the removal finishes,
    # then the interruption is raised
    import shutil

    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kw):
        os.kill(os.getpid(), signal.SIGINT)
        return real_rmtree(path, *args, **kw)

    monkeypatch.setattr(export.shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        write_result_folder(tmp_path / "r", lambda folder: (_ for _ in ()).throw(ValueError("x")))
    monkeypatch.undo()
    assert _names(tmp_path) == []


def test_a_result_without_registration_or_timings(tmp_path, monkeypatch):
    from ImplantBoneContactLib import plots

    monkeypatch.setattr(plots, "write_pictures", lambda result, folder: (Path(folder) / "p.png").write_text("png"))
    r = _result(tmp_path)
    del r.registration, r.timings_s
    out = save_result(r, tmp_path / "res")
    assert _names(out) == ["frame.json", "p.png", "parameters.json", "surface.vtp", "vertices.csv", "zones.csv"]
    (tmp_path / "o").mkdir()
    assert write_tables_and_surface(r, tmp_path / "o")[-1] == "parameters.json"


def test_save_result_timings_are_durations_within_the_call(tmp_path, monkeypatch):
    import time

    from ImplantBoneContactLib import plots

    monkeypatch.setattr(plots, "write_pictures", lambda result, folder: None)
    timings = {}
    r = _result(tmp_path, timings=timings)
    t0 = time.perf_counter()
    save_result(r, tmp_path / "res")
    elapsed = time.perf_counter() - t0
    assert 0.0 <= timings["write_tables"] <= elapsed
    assert 0.0 <= timings["pictures"] <= elapsed


def test_csv_lines_end_in_newline_whatever_the_platform_separator(tmp_path, monkeypatch):
    # pandas takes os.linesep when no line terminator is given ("\r\n" on Windows, where Slicer runs too)
    monkeypatch.setattr(os, "linesep", "\r\n")
    write_csv(pd.DataFrame({"class": ["bone, cortical"], "n": [1]}), tmp_path / "c.csv")
    monkeypatch.undo()
    assert (tmp_path / "c.csv").read_bytes() == b'class,n\n"bone, cortical",1\n'
