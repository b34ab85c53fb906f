"""Drawing part of the pictures in a second process, on a second core, where that is safe.

The 3D views need the process's offscreen OpenGL window; the unrolled maps,
the chart and the CT slices need only numpy, matplotlib and VTK's
non-rendering filters. On Linux with two or more cores the latter are drawn
in a child made by ``fork`` (it shares the analysis result without copying
or pickling it) while the parent renders the 3D views; the child sends the
PNG bytes back through a pipe and exits without running any clean-up of the
parent's. Everywhere else (macOS and Windows, where ``fork`` is unsafe or
missing; inside 3D Slicer; a process running other threads, e.g. a cohort's
workers; one core) everything is drawn in the process itself. Nor when every
core is busy (the load average), where a second process only adds work.
The pictures are the same either way: the child runs the very code the
parent would.

If the child fails for any reason, the parent draws those pictures itself.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
import traceback
from typing import Callable

#: Environment variable that turns the second process off (``0``) or on (``1``) regardless of the automatic choice.
ENV_SWITCH = "IBC_PICTURE_PROCESSES"


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _load_average() -> float:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def fork_is_safe() -> bool:
    """True where a forked child can draw pictures and gain time: Linux, not in Slicer, no other Python threads, a free core.

    A free core: 2+ usable cores and a load average (last minute, this
    process included) below their number less one half: one process running
    alone on two cores reads about 1.0-1.3 (measured, runs one after the
    other), and drawing in two processes then took the pictures from 2.70 to
    1.37 s wall at 30 000 points. On a machine
    whose cores are all busy the two processes only share them with
    everybody else, and the child's copied memory pages cost about a
    quarter more CPU than drawing in one process (measured at load 6-7 on
    2 cores: 2.57 against 2.04 CPU s at 30 000 points), so one process draws.
    ``IBC_PICTURE_PROCESSES=0`` turns it off, ``=1`` on whatever the load (still only where ``fork`` exists).
    """
    if not hasattr(os, "fork"):
        return False
    switch = os.environ.get(ENV_SWITCH, "").strip()
    if switch == "0":
        return False
    if switch == "1":
        return True
    cores = _usable_cores()
    return (sys.platform.startswith("linux") and cores >= 2 and "slicer" not in sys.modules
            and threading.active_count() == 1 and _load_average() < cores - 0.5)


class SecondProcess:
    """A forked child running ``work()``; :meth:`result` waits for it and returns what it returned.

    ``cpu_s`` (user + system seconds of the child, from the kernel) and
    ``error`` (the child's traceback when it failed) are set by :meth:`result`.
    """

    def __init__(self, work: Callable[[], object]):
        self.cpu_s = 0.0
        self.error: str | None = None
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            _child(work, read_end, write_end)
        os.close(write_end)
        self._pid = pid
        self._read_end = read_end

    def result(self):
        """What ``work()`` returned in the child, or ``None`` when it failed (see :attr:`error`)."""
        if self._pid is None:
            return None
        chunks = []
        try:
            while True:
                chunk = os.read(self._read_end, 1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
        except BaseException:  # interrupted while waiting: end the child at once rather than wait for it
            self.stop()
            raise
        os.close(self._read_end)
        self._reap()
        try:
            status, value = pickle.loads(b"".join(chunks))
        except Exception as exc:  # noqa: BLE001 - a child that died before sending anything
            self.error = f"the second process sent nothing usable ({exc})"
            return None
        if status != "ok":
            self.error = str(value)
            return None
        return value

    def _reap(self) -> None:
        _, _, usage = os.wait4(self._pid, 0)
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self._pid = None

    def stop(self) -> None:
        """End the child now (when the parent gives up, e.g. on an interrupt) and reap it."""
        if self._pid is None:
            return
        try:
            os.kill(self._pid, signal.SIGKILL)
        except OSError:
            pass
        try:
            os.close(self._read_end)
        except OSError:
            pass
        self._reap()


def _child(work: Callable[[], object], read_end: int, write_end: int) -> None:
    """Run ``work`` in the forked child, send ``("ok", value)`` or ``("error", traceback)``, and exit at once."""
    code = 0
    try:
        os.close(read_end)
        # Interrupts are the parent's to handle: it ends the child when it stops.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _no_vtk_threads()
        payload = pickle.dumps(("ok", work()), protocol=pickle.HIGHEST_PROTOCOL)
    except BaseException:  # noqa: BLE001 - everything goes back to the parent, which draws instead
        code = 1
        payload = pickle.dumps(("error", traceback.format_exc()), protocol=pickle.HIGHEST_PROTOCOL)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(write_end, view):]
    except BaseException:  # noqa: BLE001 - the parent is gone; nothing to tell
        code = 1
    finally:
        os._exit(code)  # no atexit handlers, no flushing of the parent's buffers, no temporary-folder clean-up


def _no_vtk_threads() -> None:
    """VTK's filters in the child run on its one thread: a thread pool of the parent does not exist after fork."""
    try:
        from vtkmodules.vtkCommonCore import vtkSMPTools

        if vtkSMPTools.GetBackend() != "Sequential":
            vtkSMPTools.SetBackend("Sequential")
    except Exception:  # noqa: BLE001 - an old VTK without run-time backends is built sequential or with OpenMP
        pass
