"""MRML adapter: Slicer nodes in, library inputs out, and results back into nodes.

This is the only file of the library that imports ``slicer``, and it uses only
what Slicer's core libraries provide (MRML nodes, the MRML scene, transforms,
color and table nodes): the classes in the PyPI wheel ``slicer-core`` are the
same compiled classes as in the Slicer application, so this file is tested on a
real ``vtkMRMLScene`` without the application. Nothing here needs ``slicer.app``,
Qt or a CLI module; that part lives in ``ImplantBoneContact.py``.

Coordinates: everything handed to the library is in world RAS millimetres with
every parent transform applied ("hardened" on a copy; the user's nodes are
never modified). A CT under a non-linear transform is refused: its voxels
would have to be resampled, which changes the HU being measured.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support as ns

from .classes import METAL, NOT_SAMPLED, PRESETS, UNCLASSIFIED, UNRELIABLE, parse_classes
from .display import HU_DISPLAY_RANGE
from .errors import InputError
from .mesh import prepare_surface
from .volume import Volume

if TYPE_CHECKING:  # the analysis needs pandas: imported where it runs, so the panel works before pandas is installed
    from .analysis import AnalysisParameters, AnalysisResult, ProgressCallback, Remesher, Sampler


def _analysis():
    from . import analysis

    return analysis

#: Name of the point array holding the probed value in Probe Volume With Model's output.
PROBE_ARRAY_NAME = "hu"
#: Array vtkProbeFilter adds: 1 where the point could be sampled, 0 outside the image.
VALID_POINT_MASK_NAME = "vtkValidPointMask"

# HU_DISPLAY_RANGE (from .display): the heat map's fixed HU range, the same as the pictures'.

#: The three colourings of the output model: point array and colour table kind.
COLORINGS = {"hu": "hu", "zone": "gruen_zone", "class": "contact_class_id"}

_ATTRIBUTE = "ImplantBoneContact.ColorTable"

# Viridis (perceptually uniform, colour-blind safe), 9 anchors, interpolated linearly.
_VIRIDIS = (
    (0.2670, 0.0049, 0.3294),
    (0.2788, 0.1755, 0.4834),
    (0.2297, 0.3224, 0.5457),
    (0.1727, 0.4488, 0.5579),
    (0.1276, 0.5669, 0.5506),
    (0.1579, 0.6838, 0.5017),
    (0.3692, 0.7889, 0.3829),
    (0.6785, 0.8637, 0.1895),
    (0.9932, 0.9062, 0.1439),
)

# Zone and class colours are the pictures' (display.py), so a colour means the same in Slicer and in the PNGs.


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    """``"#rrggbb"`` as three floats 0..1."""
    h = hex_colour.lstrip("#")
    return tuple(int(h[i : i + 2], 16) / 255.0 for i in (0, 2, 4))


# ----------------------------------------------------------------------------------------------
# matrices and transforms
# ----------------------------------------------------------------------------------------------
def array_from_vtk_matrix(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a 4x4 float64 array."""
    return np.array([[matrix.GetElement(i, j) for j in range(4)] for i in range(4)], dtype=float)


def vtk_matrix_from_array(array: np.ndarray) -> vtk.vtkMatrix4x4:
    """A 4x4 array as a new ``vtkMatrix4x4``."""
    a = np.asarray(array, dtype=float)
    m = vtk.vtkMatrix4x4()
    for i in range(4):
        for j in range(4):
            m.SetElement(i, j, float(a[i, j]))
    return m


def matrix_to_world(node) -> np.ndarray | None:
    """4x4 matrix from a transformable node's own coordinates to world RAS (mm).

    Identity without a parent transform; ``None`` when a transform above the
    node is not linear (a warp cannot be written as a matrix).
    """
    parent = node.GetParentTransformNode()
    if parent is None:
        return np.eye(4)
    if not parent.IsTransformToWorldLinear():
        return None
    m = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(m)
    return array_from_vtk_matrix(m)


def _general_transform(source_transform_node, target_transform_node) -> vtk.vtkGeneralTransform:
    t = vtk.vtkGeneralTransform()
    slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(source_transform_node, target_transform_node, t)
    return t


def _transform_points(points: np.ndarray, transform: vtk.vtkAbstractTransform) -> np.ndarray:
    src = vtk.vtkPoints()
    src.SetData(ns.numpy_to_vtk(np.ascontiguousarray(points, dtype=float), deep=True))
    dst = vtk.vtkPoints()
    dst.SetDataTypeToDouble()
    transform.TransformPoints(src, dst)
    return ns.vtk_to_numpy(dst.GetData()).astype(float).reshape(-1, 3)


def points_world_to_node(points_world: np.ndarray, node) -> np.ndarray:
    """Move world RAS points (mm) into a transformable node's own coordinates (any transform)."""
    parent = node.GetParentTransformNode()
    pts = np.asarray(points_world, dtype=float).reshape(-1, 3)
    if parent is None:
        return pts.copy()
    return _transform_points(pts, _general_transform(None, parent))


def points_node_to_world(points_local: np.ndarray, node) -> np.ndarray:
    """Move points (mm) from a transformable node's own coordinates to world RAS (any transform)."""
    parent = node.GetParentTransformNode()
    pts = np.asarray(points_local, dtype=float).reshape(-1, 3)
    if parent is None:
        return pts.copy()
    return _transform_points(pts, _general_transform(parent, None))


# ----------------------------------------------------------------------------------------------
# nodes in
# ----------------------------------------------------------------------------------------------
def volume_from_node(volume_node) -> Volume:
    """The CT of a scalar volume node as a library :class:`~ImplantBoneContactLib.volume.Volume`.

    The voxel array is a view of the node's image data in ``[k, j, i]`` order (no
    copy); the IJK-to-RAS matrix is the node's, with its parent transform applied
    when that is linear, so the geometry is the world geometry the user sees.

    Raises:
        InputError: no image data, a vector/colour volume, or a non-linear transform.
    """
    if volume_node is None:
        raise InputError("no CT volume selected")
    name = volume_node.GetName()
    image = volume_node.GetImageData()
    if image is None or image.GetPointData() is None or image.GetPointData().GetScalars() is None:
        raise InputError(f"the volume {name!r} has no voxels (empty image data)")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(
            f"the volume {name!r} has {image.GetNumberOfScalarComponents()} components per voxel "
            "(a colour or vector volume): a CT holds one HU value per voxel"
        )
    dims = image.GetDimensions()
    array = ns.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    ijk_to_ras = array_from_vtk_matrix(m)
    extent = image.GetExtent()
    if extent[0] or extent[2] or extent[4]:
        # Array index 0 is voxel (extent[0], extent[2], extent[4]) of the node's IJK grid.
        shift = np.eye(4)
        shift[:3, 3] = [extent[0], extent[2], extent[4]]
        ijk_to_ras = ijk_to_ras @ shift
    to_world = matrix_to_world(volume_node)
    if to_world is None:
        raise InputError(
            f"the CT {name!r} is under a non-linear transform: harden it first "
            "(Data module, right-click the transform, Harden transform), which resamples the voxels"
        )
    metadata = {"node_name": name, "node_id": volume_node.GetID()}
    if not np.allclose(to_world, np.eye(4)):
        metadata["parent_transform_to_world"] = to_world.tolist()
    return Volume(array=array, ijk_to_ras=to_world @ ijk_to_ras, source=f"volume node {name}", metadata=metadata)


def polydata_from_model_node(model_node) -> vtk.vtkPolyData:
    """A copy of a model node's surface in world RAS (mm), every parent transform applied.

    Linear and non-linear transforms are both applied (to the points, as
    Slicer's "Harden transform" does). The copy is triangulated and cleaned.

    Raises:
        InputError: no model, a volumetric (unstructured grid) mesh, no triangles.
    """
    if model_node is None:
        raise InputError("no implant model selected")
    poly = model_node.GetPolyData()
    name = model_node.GetName()
    if poly is None:
        raise InputError(f"the model {name!r} holds no surface (empty, or a volumetric mesh)")
    if poly.GetNumberOfPoints() == 0:
        raise InputError(f"the model {name!r} has no points")
    copy = vtk.vtkPolyData()
    copy.DeepCopy(poly)
    parent = model_node.GetParentTransformNode()
    if parent is not None:
        f = vtk.vtkTransformPolyDataFilter()
        f.SetTransform(_general_transform(parent, None))
        f.SetInputData(copy)
        f.Update()
        copy = f.GetOutput()
    return prepare_surface(copy, f"model {name}")


def frame_inputs_from_markups(axis_line=None, resection_plane=None, medial_point=None) -> dict:
    """AnalysisParameters fields from markups, in world RAS (mm).

    Args:
        axis_line: a line markup, first point proximal (shoulder), second distal (tip).
        resection_plane: a plane markup on the neck cut (its normal may point either way).
        medial_point: a point list whose first point lies on the medial side of the stem.

    Returns:
        a dict with any of ``axis``, ``resection_point``, ``resection_normal``, ``medial_point``.

    Raises:
        InputError: a markup that is not fully placed.
    """
    out: dict = {}
    if axis_line is not None:
        if axis_line.GetNumberOfDefinedControlPoints() < 2:
            raise InputError(f"the stem axis line {axis_line.GetName()!r} needs two placed points (proximal, then distal)")
        p0 = np.array(axis_line.GetNthControlPointPositionWorld(0), dtype=float)
        p1 = np.array(axis_line.GetNthControlPointPositionWorld(1), dtype=float)
        if np.linalg.norm(p1 - p0) < 1e-6:
            raise InputError(f"the two points of the stem axis line {axis_line.GetName()!r} coincide")
        out["axis"] = (tuple(float(v) for v in p0), tuple(float(v) for v in p1))
    if resection_plane is not None:
        if not resection_plane.GetIsPlaneValid():
            raise InputError(f"the resection plane {resection_plane.GetName()!r} is not fully placed")
        origin = [0.0, 0.0, 0.0]
        normal = [0.0, 0.0, 0.0]
        resection_plane.GetOriginWorld(origin)
        resection_plane.GetNormalWorld(normal)
        out["resection_point"] = tuple(float(v) for v in origin)
        out["resection_normal"] = tuple(float(v) for v in normal)
    if medial_point is not None:
        index = medial_point.GetNthControlPointIndexByPositionStatus(0, slicer.vtkMRMLMarkupsNode.PositionDefined)
        if index < 0:
            raise InputError(f"the medial point list {medial_point.GetName()!r} has no placed point")
        out["medial_point"] = tuple(float(v) for v in medial_point.GetNthControlPointPositionWorld(index))
    return out


# ----------------------------------------------------------------------------------------------
# the panel's values
# ----------------------------------------------------------------------------------------------
#: Panel values (parameter node fields) and their defaults; node fields default to None.
PANEL_DEFAULTS: dict[str, Any] = {
    "remesh": True,
    "remeshMethod": "Surface Toolbox",
    "remeshPoints": 10000,
    "remeshSubdivide": -1,  # -1: automatic
    "sampling": "trilinear",
    "offsetMm": 0.0,
    "useProfile": False,
    "profileStartMm": 0.5,
    "profileStopMm": 3.0,
    "profileStepMm": 0.5,
    "profileAggregate": "max",
    "classesPreset": "default",
    "customClasses": "",
    "metalClass": True,
    "metalHu": 2500.0,
    "zoneScheme": "sector",
    "tipLengthMm": 10.0,
    "side": "auto",
    "axisLine": None,
    "resectionPlane": None,
    "medialPoint": None,
}

#: Choices of the panel's combo boxes.
PANEL_CHOICES: dict[str, tuple[str, ...]] = {
    "remeshMethod": ("Surface Toolbox", "Fast (library)"),
    "sampling": ("trilinear", "nearest"),
    "profileAggregate": ("max", "mean", "median"),
    "classesPreset": (*PRESETS, "custom"),
    "zoneScheme": ("sector", "projection"),
    "side": ("auto", "left", "right"),
}


#: The panel's remesh choices and the library's ``remesh`` values: Surface Toolbox's ACVD
#: remesh (pyacvd; the library's identical call where Surface Toolbox is missing) or the
#: library's fast remesh (numpy and VTK only).
PANEL_REMESH_METHODS: dict[str, str] = {"Surface Toolbox": "acvd", "Fast (library)": "fast"}


def remesh_method_from_panel(remesh: bool, method: str) -> str:
    """The library's ``remesh`` value for the panel's check box and remesh choice."""
    if not remesh:
        return "none"
    if method not in PANEL_REMESH_METHODS:
        raise InputError(f"remeshMethod must be one of {', '.join(PANEL_REMESH_METHODS)}, got {method!r}")
    return PANEL_REMESH_METHODS[method]


def _panel_value(values, name: str):
    if isinstance(values, Mapping):
        return values.get(name, PANEL_DEFAULTS[name])
    return getattr(values, name, PANEL_DEFAULTS[name])


def parameters_from_panel(values) -> AnalysisParameters:
    """Library parameters from the module panel's values.

    Args:
        values: a mapping or an object with the attributes of :data:`PANEL_DEFAULTS`
            (for example the module's parameter node wrapper); missing ones take the defaults.

    Raises:
        InputError: a value the library refuses (with the reason), or an incomplete markup.
    """
    v = {name: _panel_value(values, name) for name in PANEL_DEFAULTS}
    for name, choices in PANEL_CHOICES.items():
        if v[name] not in choices:
            raise InputError(f"{name} must be one of {', '.join(choices)}, got {v[name]!r}")
    subdivide = int(v["remeshSubdivide"])
    profile = None
    if v["useProfile"]:
        profile = f"{float(v['profileStartMm'])!r}:{float(v['profileStopMm'])!r}:{float(v['profileStepMm'])!r}"
    if v["classesPreset"] == "custom":
        classes = str(v["customClasses"]).strip()
        if not classes:
            raise InputError("custom contact classes are selected but the class table is empty")
    else:
        classes = v["classesPreset"]
    params = _analysis().AnalysisParameters(
        remesh=remesh_method_from_panel(v["remesh"], v["remeshMethod"]),
        points=int(v["remeshPoints"]),
        subdivide=None if subdivide < 0 else subdivide,
        sampling=v["sampling"],
        offset_mm=float(v["offsetMm"]),
        profile=profile,
        profile_aggregate=v["profileAggregate"],
        classes=classes,
        metal_hu=float(v["metalHu"]) if v["metalClass"] else None,
        zone_scheme=v["zoneScheme"],
        tip_length_mm=float(v["tipLengthMm"]),
        side=None if v["side"] == "auto" else v["side"],
    )
    for key, value in frame_inputs_from_markups(v["axisLine"], v["resectionPlane"], v["medialPoint"]).items():
        setattr(params, key, value)
    params.validate()
    return params


def to_analysis_parameters(parameters=None) -> AnalysisParameters:
    """Library parameters from whatever a caller of the module logic passes.

    Accepts ``None`` (library defaults), an :class:`AnalysisParameters` (copied),
    a dict of :class:`AnalysisParameters` fields (``AnalysisParameters.to_dict()``
    form), a dict of panel values (:data:`PANEL_DEFAULTS` keys) or the module's
    parameter node wrapper.

    Raises:
        InputError: unknown keys, or values the library refuses.
    """
    AnalysisParameters = _analysis().AnalysisParameters
    if parameters is None:
        params = AnalysisParameters()
    elif isinstance(parameters, AnalysisParameters):
        params = AnalysisParameters.from_dict(parameters.to_dict())
    elif isinstance(parameters, Mapping):
        library_keys = set(AnalysisParameters().to_dict())
        keys = set(parameters)
        panel_only, library_only = keys - library_keys, keys - set(PANEL_DEFAULTS)
        if panel_only and library_only:
            unknown = sorted(panel_only & library_only)
            raise InputError(
                "parameters must be AnalysisParameters fields or panel values, not a mix"
                + (f" (unknown: {', '.join(unknown)})" if unknown else "")
            )
        # "remesh", "sampling" and "side" are in both; remesh=True/False and side="auto" are the panel's.
        if panel_only or isinstance(parameters.get("remesh"), bool) or parameters.get("side") == "auto":
            params = parameters_from_panel(parameters)
        else:
            params = AnalysisParameters.from_dict(dict(parameters))
    else:
        params = parameters_from_panel(parameters)
    params.validate()
    return params


def _format_hu(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:.10g}"


def class_rows(spec: str) -> list[tuple[str, str, str]]:
    """Rows ``(name, low HU, high HU)`` (text, ``-inf``/``inf`` for open ends) for the panel's class table."""
    return [(b.name, _format_hu(b.low_hu), _format_hu(b.high_hu)) for b in parse_classes(spec)]


def classes_from_rows(rows) -> str:
    """The ``name:low:high,...`` text of the rows of the panel's class table (blank rows skipped).

    Raises:
        InputError: a row with a missing name or limit, or bands the library refuses.
    """
    items = []
    for row in rows:
        cells = [str(c).strip() if c is not None else "" for c in row]
        if not any(cells):
            continue
        if len(cells) != 3 or not all(cells):
            raise InputError(f"each contact class needs a name, a low and a high HU, got {cells}")
        items.append(":".join(cells))
    spec = ",".join(items)
    parse_classes(spec)
    return spec


# ----------------------------------------------------------------------------------------------
# nodes out
# ----------------------------------------------------------------------------------------------
def _set_table_colors(node, colors: list[tuple[str, tuple[float, float, float]]]) -> None:
    node.SetTypeToUser()
    node.SetNumberOfColors(len(colors))
    node.GetLookupTable().SetTableRange(0, len(colors) - 1)
    for i, (name, rgb) in enumerate(colors):
        node.SetColor(i, name, float(rgb[0]), float(rgb[1]), float(rgb[2]), 1.0)


def _viridis(n: int) -> list[tuple[float, float, float]]:
    anchors = np.asarray(_VIRIDIS)
    x = np.linspace(0.0, 1.0, len(anchors))
    t = np.linspace(0.0, 1.0, n)
    return [tuple(float(np.interp(ti, x, anchors[:, c])) for c in range(3)) for ti in t]


def class_color_entries(names: list[str]) -> list[tuple[str, tuple[float, float, float]]]:
    """Colour table entries for ``contact_class_id`` values ``-2 .. len(names) - 1``.

    Entry 0 is ``unclassified`` (id -2), entry 1 ``not_sampled`` (id -1), then the classes, in
    the colours of the pictures (:func:`~ImplantBoneContactLib.display.class_colour_table`).
    """
    from .display import class_colour_table

    bands = [n for n in names if n not in (METAL, UNRELIABLE)]
    table = class_colour_table(bands, extra=list(names))
    entries = [(UNCLASSIFIED, _rgb(table[UNCLASSIFIED])), (NOT_SAMPLED, _rgb(table[NOT_SAMPLED]))]
    for name in names:
        entries.append((name, _rgb(table[name])))
    return entries


def color_table_node(scene, kind: str, class_names: list[str] | None = None):
    """The module's colour table for ``"hu"``, ``"zone"`` or ``"class"``, created once per scene.

    HU: 256 viridis colours (sequential). Zones: 15 categorical colours, index =
    Gruen zone (0 = above the cut). Classes: categorical, index = ``contact_class_id + 2``;
    the class table is rebuilt for the given names.
    """
    if kind not in COLORINGS:
        raise ValueError(f"unknown colouring {kind!r}: use one of {', '.join(COLORINGS)}")
    node = None
    for i in range(scene.GetNumberOfNodesByClass("vtkMRMLColorTableNode")):
        candidate = scene.GetNthNodeByClass(i, "vtkMRMLColorTableNode")
        if candidate.GetAttribute(_ATTRIBUTE) == kind:
            node = candidate
            break
    names = {"hu": "ImplantBoneContact HU", "zone": "ImplantBoneContact Gruen zones", "class": "ImplantBoneContact contact classes"}
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", names[kind])
        node.SetAttribute(_ATTRIBUTE, kind)
        node.SetHideFromEditors(False)
    elif kind != "class":
        return node
    if kind == "hu":
        _set_table_colors(node, [("", c) for c in _viridis(256)])
        node.GetLookupTable().SetTableRange(*HU_DISPLAY_RANGE)
    elif kind == "zone":
        from .display import ABOVE_CUT_COLOUR, ZONE_COLOURS

        zone_colours = {0: ABOVE_CUT_COLOUR, **ZONE_COLOURS}
        _set_table_colors(node, [("above cut" if z == 0 else f"zone {z}", _rgb(zone_colours[z])) for z in range(0, 15)])
    else:
        _set_table_colors(node, class_color_entries(list(class_names or [])))
    return node


def class_names_of_surface(poly: vtk.vtkPolyData) -> list[str]:
    """Contact class names stored in the result surface's field data (``contact_class_names``)."""
    arr = poly.GetFieldData().GetAbstractArray("contact_class_names") if poly is not None else None
    if arr is None:
        return []
    return [arr.GetValue(i) for i in range(arr.GetNumberOfValues())]


def color_legend_node(display_node):
    """The colour legend of a display node, created if needed; ``None`` where legends are unavailable.

    Uses ``vtkSlicerColorLogic.AddDefaultColorLegendDisplayNode``; a bare scene
    (no Colors module loaded) gets the legend node class registered first.
    """
    logic = getattr(slicer, "vtkSlicerColorLogic", None)
    legend_class = getattr(slicer, "vtkMRMLColorLegendDisplayNode", None)
    if logic is None or legend_class is None or display_node is None or display_node.GetScene() is None:
        return None
    scene = display_node.GetScene()
    if not scene.IsNodeClassRegistered("vtkMRMLColorLegendDisplayNode"):
        scene.RegisterNodeClass(legend_class())
    return logic.AddDefaultColorLegendDisplayNode(display_node)


def set_coloring(model_node, coloring: str = "hu", show_legend: bool = True) -> None:
    """Colour a result model by HU (fixed range), Gruen zone or contact class, with a legend.

    Args:
        model_node: a model holding a result surface (point arrays ``hu``,
            ``gruen_zone``, ``contact_class_id``).
        coloring: ``"hu"``, ``"zone"`` or ``"class"``.
        show_legend: show the colour legend in the views.
    """
    if coloring not in COLORINGS:
        raise ValueError(f"unknown colouring {coloring!r}: use one of {', '.join(COLORINGS)}")
    scene = model_node.GetScene()
    poly = model_node.GetPolyData()
    array_name = COLORINGS[coloring]
    if poly is None or poly.GetPointData().GetArray(array_name) is None:
        raise InputError(f"the model {model_node.GetName()!r} has no {array_name!r} point array: run the analysis first")
    names = class_names_of_surface(poly)
    color_node = color_table_node(scene, coloring, names)
    if model_node.GetDisplayNode() is None:
        model_node.CreateDefaultDisplayNodes()
    display = model_node.GetDisplayNode()
    if coloring == "hu":
        value_range = HU_DISPLAY_RANGE
    elif coloring == "zone":
        value_range = (0.0, 14.0)
    else:
        # Integer id v maps to table entry v + 2 when the range spans exactly the table.
        value_range = (-2.0, float(len(names) - 1))
    display.SetActiveScalar(array_name, vtk.vtkAssignAttribute.POINT_DATA)
    display.SetAndObserveColorNodeID(color_node.GetID())
    display.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange)
    display.SetScalarRange(*value_range)
    display.SetScalarVisibility(True)
    legend = color_legend_node(display)
    if legend is None:
        return
    titles = {"hu": "HU", "zone": "Gruen zone", "class": "Contact class"}
    legend.SetTitleText(titles[coloring])
    if coloring == "hu":
        legend.SetUseColorNamesForLabels(False)
        legend.SetMaxNumberOfColors(256)
        legend.SetNumberOfLabels(5)
        legend.SetLabelFormat(legend.GetDefaultNumericLabelFormat())
    else:
        legend.SetUseColorNamesForLabels(True)
        legend.SetMaxNumberOfColors(color_node.GetNumberOfColors())
        legend.SetLabelFormat(legend.GetDefaultTextLabelFormat())
    legend.SetVisibility(bool(show_legend))


def write_result_to_model(result: AnalysisResult, model_node, coloring: str = "hu") -> None:
    """Put the analysed surface (world RAS, every per-vertex column as a point array) into a model node.

    The node's parent transform is removed: the surface is already in world coordinates.
    """
    poly = vtk.vtkPolyData()
    poly.DeepCopy(result.surface)
    model_node.SetAndObserveTransformNodeID(None)
    model_node.SetAndObservePolyData(poly)
    if model_node.GetScene() is not None:
        set_coloring(model_node, coloring)


def column_unit(name: str) -> str:
    """Unit of a result table column, from its name (``area_mm2`` -> ``mm2``, ``hu_mean`` -> ``HU``)."""
    if name.startswith("hu") or name == "hu":
        return "HU"
    for suffix, unit in (("_mm2", "mm2"), ("_mm", "mm"), ("_deg", "deg")):
        if name.endswith(suffix):
            return unit
    if name.startswith("frac_"):
        return "fraction"
    return ""


_COLUMN_DESCRIPTIONS = {
    "zone": "Gruen zone (1-14) or 'all' for the whole stem below the resection plane",
    "region": "anatomical name of the zone",
    "n_vertices": "number of surface vertices in the zone",
    "n_sampled": "vertices whose HU could be sampled (inside the CT)",
    "area_mm2": "surface area of the zone",
    "area_sampled_mm2": "sampled surface area of the zone",
    "hu_mean": "area-weighted mean HU",
    "hu_std": "area-weighted standard deviation of HU",
    "hu_min": "lowest HU",
    "hu_max": "highest HU",
    "hu_median": "area-weighted median HU",
}


def _vtk_column(name: str, values: np.ndarray) -> vtk.vtkAbstractArray:
    if values.dtype == object or values.dtype.kind in "US":
        arr = vtk.vtkStringArray()
        arr.SetNumberOfValues(len(values))
        for i, v in enumerate(values):
            arr.SetValue(i, "" if v is None else str(v))
    elif values.dtype == bool:
        arr = ns.numpy_to_vtk(values.astype(np.uint8), deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
    elif values.dtype.kind in "iu":
        arr = ns.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.int64), deep=True, array_type=vtk.VTK_LONG_LONG)
    else:
        arr = ns.numpy_to_vtk(np.ascontiguousarray(values, dtype=np.float64), deep=True, array_type=vtk.VTK_DOUBLE)
    arr.SetName(name)
    return arr


def table_node_from_dataframe(df, table_node) -> None:
    """Fill a table node with a DataFrame: one typed column per column, units and descriptions set.

    Text columns become string columns, integers 64-bit integer columns, booleans
    0/1, numbers double columns (NaN kept). The table is locked: it is a result.
    """
    with _modify(table_node):
        table_node.RemoveAllColumns()
        for name in df.columns:
            table_node.AddColumn(_vtk_column(str(name), df[name].to_numpy()))
            unit = column_unit(str(name))
            if unit:
                table_node.SetColumnUnitLabel(str(name), unit)
            description = _COLUMN_DESCRIPTIONS.get(str(name))
            if description is None and str(name).startswith("frac_"):
                description = f"fraction of the sampled area in class {str(name)[5:]}"
            if description is None and str(name).startswith("hu_p"):
                description = f"area-weighted {str(name)[4:]}th percentile of HU"
            if description:
                table_node.SetColumnDescription(str(name), description)
        table_node.SetUseColumnTitleAsColumnHeader(False)
        table_node.SetLocked(True)
    table_node.GetTable().Modified()


class _modify:
    """``StartModify``/``EndModify`` around a block (one Modified event)."""

    def __init__(self, node) -> None:
        self.node = node
        self.state = 0

    def __enter__(self):
        self.state = self.node.StartModify()
        return self.node

    def __exit__(self, *exc) -> None:
        self.node.EndModify(self.state)


def write_result_nodes(result: AnalysisResult, output_model=None, output_table=None, coloring: str = "hu") -> None:
    """Write a result into an output model (surface with point arrays, coloured) and a table (zones)."""
    if output_model is not None:
        write_result_to_model(result, output_model, coloring)
        output_model.SetAttribute("ImplantBoneContact.Warnings", "\n".join(result.warnings))
    if output_table is not None:
        table_node_from_dataframe(result.zones, output_table)


# ----------------------------------------------------------------------------------------------
# library objects into nodes (batch, self-test, tests)
# ----------------------------------------------------------------------------------------------
def volume_node_from_volume(scene, volume: Volume, name: str = "CT"):
    """A new scalar volume node holding a copy of a library volume (voxels and geometry)."""
    arr = np.ascontiguousarray(volume.array)
    nk, nj, ni = arr.shape
    image = vtk.vtkImageData()
    image.SetDimensions(ni, nj, nk)
    scalars = ns.numpy_to_vtk(arr.ravel(), deep=True)
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    node.SetIJKToRASMatrix(vtk_matrix_from_array(volume.ijk_to_ras))
    node.SetAndObserveImageData(image)
    return node


def model_node_from_polydata(scene, poly: vtk.vtkPolyData, name: str = "Model"):
    """A new model node holding a copy of a surface."""
    copy = vtk.vtkPolyData()
    copy.DeepCopy(poly)
    node = scene.AddNewNodeByClass("vtkMRMLModelNode", name)
    node.SetAndObservePolyData(copy)
    return node


def linear_transform_node(scene, matrix_to_parent: np.ndarray, name: str = "Registration"):
    """A new linear transform node whose matrix (to parent, RAS) is ``matrix_to_parent``."""
    node = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(vtk_matrix_from_array(matrix_to_parent))
    return node


# ----------------------------------------------------------------------------------------------
# probing helpers (the module runs the Probe Volume With Model CLI between these two)
# ----------------------------------------------------------------------------------------------
def probe_input_polydata(points: np.ndarray) -> vtk.vtkPolyData:
    """Points (mm) as a polydata with one vertex cell per point, the input model of a probe."""
    pts = np.ascontiguousarray(points, dtype=float).reshape(-1, 3)
    poly = vtk.vtkPolyData()
    vpts = vtk.vtkPoints()
    vpts.SetData(ns.numpy_to_vtk(pts, deep=True))
    poly.SetPoints(vpts)
    n = pts.shape[0]
    cells = vtk.vtkCellArray()
    cells.SetData(
        ns.numpy_to_vtkIdTypeArray(np.arange(n + 1, dtype=np.int64), deep=True),
        ns.numpy_to_vtkIdTypeArray(np.arange(n, dtype=np.int64), deep=True),
    )
    poly.SetVerts(cells)
    return poly


def samples_from_probe_output(poly: vtk.vtkPolyData, n_points: int, array_name: str = PROBE_ARRAY_NAME) -> tuple[np.ndarray, np.ndarray]:
    """HU (float64, NaN outside the CT) and inside flags from a probed polydata.

    ``vtkValidPointMask`` is 0 where vtkProbeFilter could not sample (outside
    the image); those points get NaN instead of the 0 the filter writes.

    Raises:
        RuntimeError: the output has another number of points or lacks the arrays.
    """
    if poly is None or poly.GetNumberOfPoints() != n_points:
        got = None if poly is None else poly.GetNumberOfPoints()
        raise RuntimeError(f"the probe returned {got} points for {n_points} sent")
    values = poly.GetPointData().GetArray(array_name)
    mask = poly.GetPointData().GetArray(VALID_POINT_MASK_NAME)
    if values is None or mask is None:
        raise RuntimeError(f"the probe output lacks the {array_name!r} or {VALID_POINT_MASK_NAME!r} point array")
    hu = ns.vtk_to_numpy(values).astype(np.float64).reshape(n_points, -1)[:, 0].copy()
    inside = ns.vtk_to_numpy(mask).reshape(-1) != 0
    hu[~inside] = np.nan
    return hu, inside


# ----------------------------------------------------------------------------------------------
# checks before a run, and what the panel shows after it
# ----------------------------------------------------------------------------------------------
def same_node(a, b) -> bool:
    """Whether two node references are one MRML node (the same object, or one ID in one scene)."""
    if a is None or b is None:
        return False
    if a is b:
        return True
    return a.GetScene() is not None and a.GetScene() is b.GetScene() and bool(a.GetID()) and a.GetID() == b.GetID()


def check_output_nodes(model_node, output_model=None) -> None:
    """Refuse an output model that is the implant model itself.

    The run replaces the output model's surface with the analysed copy (in world
    coordinates) and removes its parent transform: on the implant model this would
    destroy the implant's surface and its registration.

    Raises:
        InputError: ``output_model`` is ``model_node``.
    """
    if same_node(model_node, output_model):
        raise InputError(
            f"the output model is the implant model {model_node.GetName()!r}: the run would replace the implant's "
            "surface and remove its registration transform. Choose another output model, or 'Create new Model'"
        )


def csv_folder_from_panel(save_csv: bool, folder) -> str | None:
    """The folder that receives the CSV files, or ``None`` when they are not saved.

    Args:
        save_csv: the panel's "Save CSV" box.
        folder: the folder field's text (``None``, ``""`` and ``"."``, what an empty path
            field may hold, mean "not chosen").

    Raises:
        InputError: saving is asked for but no folder is chosen, or it is relative or missing.
    """
    if not save_csv:
        return None
    text = "" if folder is None else str(folder).strip()
    if text in ("", "."):
        raise InputError("choose a folder for the CSV files (or untick 'Save CSV')")
    if not os.path.isabs(text):
        raise InputError(f"the CSV folder {text!r} is not a full path: choose the folder with the folder button")
    if not os.path.isdir(text):
        raise InputError(f"the CSV folder {text!r} does not exist: choose an existing folder")
    return text


def show_outline_in_slice_views(model_node, visible: bool = True) -> None:
    """Show (or hide) a model's outline where it cuts the slice views (its 2D visibility).

    The outline takes the model's colouring (the HU heat map of a result), so the
    registration of the stem can be checked on the CT slices.
    """
    if model_node.GetDisplayNode() is None:
        model_node.CreateDefaultDisplayNodes()
    display = model_node.GetDisplayNode()
    display.SetVisibility2D(bool(visible))
    if visible:
        display.SetVisibility(True)


def apply_registration(scene, model_node, matrix_ras: np.ndarray, name: str = "Stem registration", show_handles: bool = True):
    """Put a model under a new linear transform that moves it by ``matrix_ras`` in world RAS.

    ``matrix_ras`` (4x4) moves the model *as it is shown now* (its current parent
    transforms applied), as a registration of the shown surface to the CT returns it.
    The new transform node holds ``matrix_ras @ (current model-to-world)``, so the
    model lands where the registration put it; the old transform node is kept,
    unchanged, for other nodes under it. The new node shows its interaction
    handles (``show_handles``) so the user can adjust it.

    Raises:
        InputError: the matrix is not a finite 4x4 rigid/affine matrix, or the model sits under
            a non-linear transform.
    """
    m = np.asarray(matrix_ras, dtype=float)
    if m.shape != (4, 4) or not np.all(np.isfinite(m)) or not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0]):
        raise InputError(f"a registration must be a finite 4x4 matrix with last row 0 0 0 1, got shape {m.shape}")
    if abs(np.linalg.det(m[:3, :3])) < 1e-9:
        raise InputError("the registration matrix is singular (it flattens the stem)")
    to_world = matrix_to_world(model_node)
    if to_world is None:
        raise InputError(f"the model {model_node.GetName()!r} is under a non-linear transform: harden it first")
    node = linear_transform_node(scene, m @ to_world, scene.GenerateUniqueName(name))
    if show_handles:
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetEditorVisibility(True)
    model_node.SetAndObserveTransformNodeID(node.GetID())
    return node


# ----------------------------------------------------------------------------------------------
# the whole analysis on nodes
# ----------------------------------------------------------------------------------------------
def describe_nodes(volume_node, model_node) -> dict:
    """Descriptions of the input nodes for ``parameters.json`` (names, IDs, transforms to world)."""
    info: dict = {"ct": {"node_name": volume_node.GetName(), "node_id": volume_node.GetID()}}
    vol_t = matrix_to_world(volume_node)
    if vol_t is not None and not np.allclose(vol_t, np.eye(4)):
        info["ct"]["transform_to_world"] = vol_t.tolist()
    info["model"] = {"node_name": model_node.GetName(), "node_id": model_node.GetID()}
    parent = model_node.GetParentTransformNode()
    if parent is not None:
        info["model"]["parent_transform"] = parent.GetName()
        mod_t = matrix_to_world(model_node)
        info["model"]["transform_to_world"] = mod_t.tolist() if mod_t is not None else "non-linear"
    return info


def analyze_nodes(
    volume_node,
    model_node,
    parameters: AnalysisParameters | None = None,
    output_model=None,
    output_table=None,
    progress: ProgressCallback | None = None,
    remesher: Remesher | None = None,
    sampler: Sampler | None = None,
    inputs: dict | None = None,
    coloring: str = "hu",
) -> AnalysisResult:
    """Analyse a CT volume node and an implant model node; fill the output nodes.

    The model is copied with every parent transform applied and the CT's world
    geometry is used, so a model registered with a transform (the usual way in
    Slicer) is analysed where the user sees it. The input nodes are not changed.

    Args:
        volume_node: scalar volume node (HU).
        model_node: the implant model node (may sit under transforms).
        parameters: library parameters (defaults if ``None``).
        output_model, output_table: nodes to fill (``None``: not filled).
        progress: ``progress(fraction, message)``.
        remesher, sampler: replace the library's remesh / sampling (see :func:`~ImplantBoneContactLib.analysis.analyze`).
        inputs: extra input descriptions for the result's metadata.
        coloring: initial colouring of the output model.
    """
    check_output_nodes(model_node, output_model)
    volume = volume_from_node(volume_node)
    surface = polydata_from_model_node(model_node)
    info = describe_nodes(volume_node, model_node)
    for key, value in (inputs or {}).items():
        if isinstance(value, dict) and isinstance(info.get(key), dict):
            info[key].update(value)
        else:
            info[key] = value
    result = _analysis().analyze(volume, surface, parameters, progress, info, remesher=remesher, sampler=sampler)
    write_result_nodes(result, output_model, output_table, coloring)
    return result


__all__ = [
    "COLORINGS",
    "HU_DISPLAY_RANGE",
    "PANEL_CHOICES",
    "PANEL_DEFAULTS",
    "PANEL_REMESH_METHODS",
    "analyze_nodes",
    "apply_registration",
    "check_output_nodes",
    "csv_folder_from_panel",
    "array_from_vtk_matrix",
    "class_rows",
    "classes_from_rows",
    "color_table_node",
    "frame_inputs_from_markups",
    "linear_transform_node",
    "model_node_from_polydata",
    "parameters_from_panel",
    "polydata_from_model_node",
    "probe_input_polydata",
    "samples_from_probe_output",
    "remesh_method_from_panel",
    "same_node",
    "set_coloring",
    "show_outline_in_slice_views",
    "table_node_from_dataframe",
    "to_analysis_parameters",
    "volume_from_node",
    "volume_node_from_volume",
    "vtk_matrix_from_array",
    "write_result_nodes",
]
