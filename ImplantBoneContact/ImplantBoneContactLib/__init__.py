"""ImplantBoneContact: CT Hounsfield units on a registered implant surface, by Gruen zone.

The pure engine (numpy, VTK, pandas, SimpleITK): no Slicer import anywhere
in this package except :mod:`ImplantBoneContactLib.mrml`, the MRML adapter.

Typical use::

    from ImplantBoneContactLib import AnalysisParameters, analyze_files, save_result
    result = analyze_files("ct.nrrd", "stem.stl", AnalysisParameters(points=10000))
    result.zones            # pandas DataFrame, one row per Gruen zone
    save_result(result, "results/")
"""

__version__ = "0.1.0"

from .analysis import AnalysisParameters, AnalysisResult, analyze, analyze_files, load_inputs  # noqa: E402
from .classes import PRESETS, ContactBand, classify, parse_classes  # noqa: E402
from .errors import InputError, OutputError  # noqa: E402
from .export import save_result, write_csv  # noqa: E402
from .frame import FrameOptions, StemFrame, assign_zones, estimate_frame  # noqa: E402
from .mesh import read_model, read_transform, surface_geometry, transform_polydata  # noqa: E402
from .phantom import FemurPhantom, PhantomSpec  # noqa: E402
from .sampling import sample, sample_surface  # noqa: E402
from .volume import Volume, read_volume, write_volume  # noqa: E402

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
