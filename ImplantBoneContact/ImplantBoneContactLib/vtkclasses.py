"""The VTK classes the engine uses, each loaded from its own ``vtkmodules`` module on first use.

``import vtk`` loads every VTK module there is (rendering, parallel I/O,
chemistry, ...): about 0.6 s of a run's start-up, most of it for modules
the engine never touches. The engine modules instead do::

    from . import vtkclasses as vtk

and keep writing ``vtk.vtkPolyData()``; the first use of a name imports
only the ``vtkmodules`` module that defines it (``vtkCommonDataModel``, a
few tens of milliseconds). The classes are VTK's own, so objects pass to
and from code that uses ``import vtk`` (3D Slicer, where ``vtk`` is loaded
already and these imports cost nothing).

A name missing from :data:`CLASS_MODULES` still works: it is looked up in
the whole ``vtk`` package (slow start-up again, so add it to the table).
"""

from __future__ import annotations

import importlib

#: VTK class (or constant) -> the ``vtkmodules`` module that defines it.
CLASS_MODULES = {
    "vtkAbstractArray": "vtkCommonCore",
    "vtkIdTypeArray": "vtkCommonCore",
    "vtkPoints": "vtkCommonCore",
    "vtkStringArray": "vtkCommonCore",
    "vtkVersion": "vtkCommonCore",
    "vtkCellArray": "vtkCommonDataModel",
    "vtkFieldData": "vtkCommonDataModel",
    "vtkImageData": "vtkCommonDataModel",
    "vtkPlane": "vtkCommonDataModel",
    "vtkPolyData": "vtkCommonDataModel",
    "vtkStaticPointLocator": "vtkCommonDataModel",
    "vtkMatrix4x4": "vtkCommonMath",
    "vtkGeneralTransform": "vtkCommonTransforms",
    "vtkTransform": "vtkCommonTransforms",
    "vtkAssignAttribute": "vtkFiltersCore",
    "vtkCleanPolyData": "vtkFiltersCore",
    "vtkCutter": "vtkFiltersCore",
    "vtkFlyingEdges3D": "vtkFiltersCore",
    "vtkPolyDataNormals": "vtkFiltersCore",
    "vtkQuadricDecimation": "vtkFiltersCore",
    "vtkTriangleFilter": "vtkFiltersCore",
    "vtkWindowedSincPolyDataFilter": "vtkFiltersCore",
    "vtkTransformPolyDataFilter": "vtkFiltersGeneral",
    "vtkImageStencilToImage": "vtkImagingStencil",
    "vtkPolyDataToImageStencil": "vtkImagingStencil",
    "vtkOBJReader": "vtkIOGeometry",
    "vtkSTLReader": "vtkIOGeometry",
    "vtkSTLWriter": "vtkIOGeometry",
    "vtkPolyDataReader": "vtkIOLegacy",
    "vtkPolyDataWriter": "vtkIOLegacy",
    "vtkPLYReader": "vtkIOPLY",
    "vtkXMLPolyDataReader": "vtkIOXML",
    "vtkXMLPolyDataWriter": "vtkIOXML",
    "vtkActor": "vtkRenderingCore",
    "vtkLight": "vtkRenderingCore",
    "vtkPolyDataMapper": "vtkRenderingCore",
    "vtkRenderWindow": "vtkRenderingCore",
    "vtkRenderer": "vtkRenderingCore",
    "vtkWindowToImageFilter": "vtkRenderingCore",
}

#: Modules loaded with a module of the table: the OpenGL implementations of the rendering classes
#: register themselves as factory overrides when their module is imported (without it
#: ``vtkRenderWindow()`` is abstract and gives ``None``). About 0.3 CPU s for rendering this way,
#: against 0.7 s for ``import vtk``.
COMPANION_MODULES = {"vtkRenderingCore": ("vtkRenderingOpenGL2",)}


def __getattr__(name: str):
    module = CLASS_MODULES.get(name)
    value = None
    if module is not None:
        try:
            value = getattr(importlib.import_module(f"vtkmodules.{module}"), name, None)
            for companion in COMPANION_MODULES.get(module, ()):
                importlib.import_module(f"vtkmodules.{companion}")
        except ImportError:
            value = None
    if value is None:
        if not (name.startswith("vtk") or name.startswith("VTK_")):
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        # Not in the table, or another VTK version defines it elsewhere: the whole package has it.
        value = getattr(importlib.import_module("vtk"), name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(CLASS_MODULES))
