"""Exceptions raised for bad input.

Every error a user can cause by what they feed the program is an
:class:`InputError`: its message says what is wrong and what to do. The
command line prints it as one line on stderr and exits with code 2.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input (file, parameter or geometry) that the user can correct."""


class OutputError(OSError):
    """The results could not be written where the user asked."""
