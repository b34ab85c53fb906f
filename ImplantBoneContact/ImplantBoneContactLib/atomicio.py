"""Writing one file atomically: a hidden temporary file beside the target, synced, then renamed."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_mode(path: str | os.PathLike, is_dir: bool = False) -> None:
    """Give a temporary file or folder the permissions a plain ``open``/``mkdir`` would have.

    ``tempfile`` creates private files (0600) and folders (0700); results are
    meant to be shared like any other file, so the user's umask decides.
    """
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def _silent_unlink(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator:
    """Open a hidden temporary file beside ``path``; on success it is synced and renamed to ``path``.

    On any exception (or interruption) the temporary file is removed and
    ``path`` is left as it was: a reader never sees half a file.
    """
    p = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        publish_mode(tmp)
        os.replace(tmp, p)
    except BaseException:
        _silent_unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path, "wb") as fh:
        fh.write(data)
