"""Exceptions raised for bad input.

Every error a user can cause by what they feed the program is an
:class:`InputError`: its message says what is wrong and what to do. The
command line prints it as one line on stderr and exits with code 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager


class InputError(ValueError):
    """Bad input (file, parameter or geometry) that the user can correct."""


class OutputError(OSError):
    """The results could not be written where the user asked."""


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Hide what C++ libraries (VTK, ITK, GDCM, MetaIO) print on stderr meanwhile.

    Readers report a bad file both by a return value, which becomes an
    :class:`InputError`, and by text printed straight to file descriptor 2,
    which Python cannot catch; the command line promises one line on stderr.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
