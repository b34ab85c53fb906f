"""ImplantBoneContact: CT Hounsfield units on a registered implant surface, by Gruen zone.

The pure engine (numpy, VTK, pandas, SimpleITK): no Slicer import anywhere
in this package except :mod:`ImplantBoneContactLib.mrml`, the MRML adapter.

Typical use::

    from ImplantBoneContactLib import AnalysisParameters, analyze_files, save_result
    result = analyze_files("ct.nrrd", "stem.stl", AnalysisParameters(points=10000))
    result.zones            # pandas DataFrame, one row per Gruen zone
    save_result(result, "results/")
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# The public names and the module that defines each. They are imported on first use
# (PEP 562 module __getattr__), so that ``import ImplantBoneContactLib`` and its light
# modules (errors, classes, dependencies, display, ...) work before pandas, matplotlib or
# pyacvd are installed: Slicer's panel imports parts of the package before its first run.
_EXPORTS = {
    "AnalysisParameters": "analysis",
    "AnalysisResult": "analysis",
    "analyze": "analysis",
    "analyze_files": "analysis",
    "load_inputs": "analysis",
    "PRESETS": "classes",
    "ContactBand": "classes",
    "classify": "classes",
    "parse_classes": "classes",
    "InputError": "errors",
    "OutputError": "errors",
    "save_result": "export",
    "write_csv": "export",
    "FrameOptions": "frame",
    "StemFrame": "frame",
    "assign_zones": "frame",
    "estimate_frame": "frame",
    "read_model": "mesh",
    "read_transform": "mesh",
    "surface_geometry": "mesh",
    "transform_polydata": "mesh",
    "FemurPhantom": "phantom",
    "PhantomSpec": "phantom",
    "sample": "sampling",
    "sample_surface": "sampling",
    "Volume": "volume",
    "read_volume": "volume",
    "write_volume": "volume",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "AnalysisParameters",
    "AnalysisResult",
    "ContactBand",
    "FemurPhantom",
    "FrameOptions",
    "InputError",
    "OutputError",
    "PRESETS",
    "PhantomSpec",
    "StemFrame",
    "Volume",
    "analyze",
    "analyze_files",
    "assign_zones",
    "classify",
    "estimate_frame",
    "load_inputs",
    "parse_classes",
    "read_model",
    "read_transform",
    "read_volume",
    "sample",
    "sample_surface",
    "save_result",
    "surface_geometry",
    "transform_polydata",
    "write_csv",
    "write_volume",
]
