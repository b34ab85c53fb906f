"""A module imported on its first use, for modules that need a heavy library only in some of their functions.

``pandas = LazyModule("pandas")`` at the top of a module, then ``pandas.DataFrame``
in a function: the first attribute look-up imports pandas (about 0.3 s), so that
building the command-line parser or ``--help`` does not pay for it.
"""

from __future__ import annotations

import importlib


class LazyModule:
    """Stands for the module ``name`` and imports it on the first attribute look-up."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._module = None

    def __getattr__(self, attr: str):
        if attr.startswith("__") and attr.endswith("__"):  # copy/pickle probing the proxy itself
            raise AttributeError(attr)
        module = self._module
        if module is None:
            module = self._module = importlib.import_module(self._name)
        return getattr(module, attr)

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}{'' if self._module is None else ' (imported)'}>"
