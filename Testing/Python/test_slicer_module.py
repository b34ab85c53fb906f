"""The Slicer module's files, checked without the Slicer application, and Probe Volume With Model parity.

* The module file and the batch script byte-compile; the panel (.ui) is valid
  Qt Designer XML and holds every widget the module uses; the parameter node's
  fields, defaults and choices are the panel values the library converts.
* CMakeLists list every library file and every resource.
* Parity: Probe Volume With Model's algorithm, run here with Slicer's compiled
  classes (``vtkTeemNRRDReader`` and its RAS-to-IJK matrix, then VTK's
  ``vtkImageChangeInformation``, ``vtkTransformFilter``, ``vtkProbeFilter``),
  against the library's trilinear sampler.
* The batch script takes the command line's options.
"""

from __future__ import annotations

import ast
import importlib.util
import py_compile
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "ImplantBoneContact"
MODULE_FILE = MODULE_DIR / "ImplantBoneContact.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "ImplantBoneContact.ui"
BATCH_FILE = MODULE_DIR / "Resources" / "Scripts" / "batch_slicer.py"
LIB_DIR = MODULE_DIR / "ImplantBoneContactLib"


def _module_ast() -> ast.Module:
    return ast.parse(MODULE_FILE.read_text(encoding="utf-8"))


def _parameter_node_class() -> ast.ClassDef:
    for node in _module_ast().body:
        if isinstance(node, ast.ClassDef) and any(
            isinstance(d, ast.Name) and d.id == "parameterNodeWrapper" for d in node.decorator_list
        ):
            return node
    raise AssertionError("no @parameterNodeWrapper class in the module file")


def _parameter_fields() -> dict[str, tuple[str, object]]:
    """Field name -> (annotation source, default value or None)."""
    fields = {}
    for stmt in _parameter_node_class().body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            default = ast.literal_eval(stmt.value) if stmt.value is not None else None
            fields[stmt.target.id] = (ast.unparse(stmt.annotation), default)
    return fields


def _ui_widgets() -> dict[str, ET.Element]:
    root = ET.parse(UI_FILE).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def _parameter_name(widget: ET.Element) -> str | None:
    for prop in widget.findall("property"):
        if prop.get("name") == "SlicerParameterName":
            return prop.findtext("string")
    return None


# ------------------------------------------------------------------------------------------------
# static checks
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [MODULE_FILE, BATCH_FILE], ids=lambda p: p.name)
def test_module_files_byte_compile(path, tmp_path):
    py_compile.compile(str(path), cfile=str(tmp_path / "out.pyc"), doraise=True)


def test_module_file_follows_the_scripted_template():
    names = {n.name for n in _module_ast().body if isinstance(n, ast.ClassDef)}
    assert {"ImplantBoneContact", "ImplantBoneContactWidget", "ImplantBoneContactLogic", "ImplantBoneContactTest",
            "ImplantBoneContactParameterNode"} <= names


def test_module_never_imports_the_library_at_import_time():
    """pandas may be missing when Slicer loads the module: the library is imported inside functions only."""
    for node in _module_ast().body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
            assert not (module or "").startswith("ImplantBoneContactLib"), ast.unparse(node)
            assert (module or "") not in ("pandas", "pyacvd", "pyvista", "matplotlib")


def test_library_never_imports_slicer_except_the_adapter():
    for path in sorted(LIB_DIR.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
        forbidden = imported & {"slicer", "qt", "ctk", "SurfaceToolbox"}
        if path.name == "mrml.py":
            assert forbidden <= {"slicer"}, forbidden
        else:
            assert not forbidden, (path.name, forbidden)
    init = (LIB_DIR / "__init__.py").read_text(encoding="utf-8")
    assert "mrml" not in re.sub(r'""".*?"""', "", init, flags=re.S)


def test_ui_is_valid_qt_designer_xml():
    root = ET.parse(UI_FILE).getroot()
    assert root.tag == "ui" and root.findtext("class") == "ImplantBoneContact"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == "ImplantBoneContact"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "widget names must be unique"
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    used = {w.get("class") for w in root.iter("widget")}
    assert {c for c in used if c.startswith(("qMRML", "ctk"))} <= custom
    # Every MRML widget gets the scene.
    receivers = {c.findtext("receiver") for c in root.iter("connection") if c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    mrml_widgets = {w.get("name") for w in root.iter("widget") if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}
    assert mrml_widgets == receivers
    for section in ("inputsCollapsibleButton", "remeshCollapsibleButton", "samplingCollapsibleButton",
                    "classesCollapsibleButton", "outputsCollapsibleButton", "resultsCollapsibleButton"):
        assert section in names


def test_every_widget_the_module_uses_is_in_the_ui():
    used = set(re.findall(r"self\.ui\.([A-Za-z_][A-Za-z0-9_]*)", MODULE_FILE.read_text(encoding="utf-8")))
    assert used >= {"applyButton", "classTableWidget", "colorByHuButton", "colorByZoneButton", "colorByClassButton",
                    "resultsTableView"}
    missing = used - set(_ui_widgets())
    assert not missing, f"used in ImplantBoneContact.py but not in the .ui: {sorted(missing)}"


def test_ui_parameters_are_parameter_node_fields_with_fitting_widgets():
    fields = _parameter_fields()
    connected = {_parameter_name(w): w for w in _ui_widgets().values() if _parameter_name(w)}
    assert set(connected) <= set(fields), set(connected) - set(fields)
    # Only the text of custom classes (from the class table) and the CSV folder (a text kept in step
    # with its path field by the widget, so that an empty folder is not shown as ".") are set by code.
    assert set(fields) - set(connected) == {"customClasses", "csvFolder"}
    # The widget type must be one parameterNodeWrapper's GUI connectors accept for the field's type.
    accepted = {
        "bool": {"QCheckBox"},
        "int": {"QSpinBox"},
        "float": {"QDoubleSpinBox", "ctkSliderWidget"},
        "str": {"QComboBox", "QLineEdit"},
        "Path": {"ctkPathLineEdit", "ctkDirectoryButton"},
        "node": {"qMRMLNodeComboBox"},
    }
    for name, widget in connected.items():
        annotation = fields[name][0]
        kind = "node" if "vtkMRML" in annotation else next(
            k for k in ("bool", "int", "float", "str", "Path") if re.search(rf"\b{k}\b", annotation))
        assert widget.get("class") in accepted[kind], (name, annotation, widget.get("class"))
        if widget.get("class") == "QComboBox":
            assert "Choice(" in annotation, f"{name}: a combo box needs a Choice annotation"
        if "vtkMRML" in annotation:
            types = [s.text for s in widget.iter("string") if s.text and s.text.startswith("vtkMRML")]
            assert types == [annotation], (name, types)


def test_parameter_node_defaults_and_choices_are_the_adapters_panel_values():
    """The parameter node and ``mrml.PANEL_DEFAULTS`` agree, so an untouched panel runs the CLI defaults."""
    pytest.importorskip("slicer", reason="slicer-core is needed to import the MRML adapter")
    from ImplantBoneContactLib import mrml

    fields = _parameter_fields()
    node_fields = {n for n, (a, _) in fields.items() if "vtkMRML" in a and n not in mrml.PANEL_DEFAULTS}
    assert node_fields == {"ctVolume", "implantModel", "outputModel", "outputTable"}
    for name, default in mrml.PANEL_DEFAULTS.items():
        assert name in fields, name
        assert fields[name][1] == default, (name, fields[name][1], default)
    for name, choices in mrml.PANEL_CHOICES.items():
        m = re.search(r"Choice\((\[.*?\])\)", fields[name][0])
        assert m, name
        assert tuple(ast.literal_eval(m.group(1))) == choices, name


def _cmake_list(text: str, variable: str) -> list[str]:
    m = re.search(rf"set\({variable}\s+(.*?)\)", text, flags=re.S)
    assert m, variable
    items = []
    for line in m.group(1).splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            items.append(line.replace("${MODULE_NAME}", "ImplantBoneContact"))
    return items


def test_module_cmakelists_lists_every_library_file_and_resource():
    text = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    # The library and its sub-packages (plots/).
    on_disk = {"ImplantBoneContact.py"} | {f"ImplantBoneContactLib/{p.relative_to(LIB_DIR).as_posix()}"
                                           for p in LIB_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    assert set(scripts) == on_disk, f"missing: {sorted(on_disk - set(scripts))}, stale: {sorted(set(scripts) - on_disk)}"
    resources = _cmake_list(text, "MODULE_PYTHON_RESOURCES")
    assert {"Resources/Icons/ImplantBoneContact.png", "Resources/UI/ImplantBoneContact.ui",
            "Resources/Scripts/batch_slicer.py"} <= set(resources)
    for r in resources:
        assert (MODULE_DIR / r).is_file(), r
    assert "slicerMacroBuildScriptedModule(" in text
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py", text)


def test_extension_cmakelists_follows_the_template():
    text = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert re.search(r"^project\(ImplantBoneContact\)", text, flags=re.M)
    for var in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS", "EXTENSION_DEPENDS"):
        assert re.search(rf"set\({var}\s", text), var
    order = [text.index(s) for s in ("find_package(Slicer REQUIRED)", "include(${Slicer_USE_FILE})",
                                     "add_subdirectory(ImplantBoneContact)", "include(${Slicer_EXTENSION_GENERATE_CONFIG})",
                                     "include(${Slicer_EXTENSION_CPACK})")]
    assert order == sorted(order)


@pytest.mark.parametrize("path", [MODULE_DIR / "Resources" / "Icons" / "ImplantBoneContact.png", REPO / "ImplantBoneContact.png"],
                         ids=["module", "extension"])
def test_icons_are_128_pixel_pngs(path):
    import vtk

    reader = vtk.vtkPNGReader()
    assert reader.CanReadFile(str(path))
    reader.SetFileName(str(path))
    reader.Update()
    assert reader.GetOutput().GetDimensions()[:2] == (128, 128)


# ------------------------------------------------------------------------------------------------
# the batch script takes the command line's options
# ------------------------------------------------------------------------------------------------
def _batch_module():
    spec = importlib.util.spec_from_file_location("ibc_batch_slicer", BATCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "options, expected",
    [
        ([], {}),
        (["--remesh", "none", "--sampling", "nearest", "--offset", "1.5", "--classes", "fixation", "--no-metal-class"],
         {"remesh": "none", "sampling": "nearest", "offset_mm": 1.5, "classes": "fixation", "metal_hu": None}),
        (["--profile", "0.5:3:0.5", "--profile-aggregate", "median", "--points", "3000", "--subdivide", "2",
          "--axis", "-10,2,3:4,5,-60", "--medial-point", "-1,2,3", "--resection-plane=1,2,3:0,0.2,1",
          "--side", "right", "--zone-scheme", "projection", "--bands-axial", "0.4,0.3,0.3", "--tip-length", "8",
          "--model-space", "ras", "--transform", "t.tfm", "--series-uid", "1.2.3"],
         {"profile": "0.5:3:0.5", "profile_aggregate": "median", "points": 3000, "subdivide": 2,
          "axis": ((-10.0, 2.0, 3.0), (4.0, 5.0, -60.0)), "medial_point": (-1.0, 2.0, 3.0), "resection_point": (1.0, 2.0, 3.0),
          "resection_normal": (0.0, 0.2, 1.0), "side": "right", "zone_scheme": "projection", "bands_axial": (0.4, 0.3, 0.3),
          "tip_length_mm": 8.0, "model_space": "RAS", "series_uid": "1.2.3"}),
    ],
    ids=["defaults", "sampling", "frame"],
)
def test_batch_script_options_give_the_written_out_parameters(options, expected):
    """The batch script's options become the parameters written out here (the library defaults for
    the rest); its parser is built from the command line's options, so comparing the two would prove nothing."""
    from ImplantBoneContactLib import AnalysisParameters
    from ImplantBoneContactLib.cli import parameters_from_args

    batch = _batch_module()
    batch_args = batch.parse_arguments(["--ct", "ct.nrrd", "--model", "stem.stl", "--out", "out"] + options)
    assert parameters_from_args(batch_args) == AnalysisParameters(**expected)
    assert (batch_args.ct, batch_args.model, batch_args.out) == ("ct.nrrd", "stem.stl", "out")
    assert batch_args.transform == ("t.tfm" if "--transform" in options else None)


def test_batch_script_finds_the_module_folder():
    assert Path(_batch_module().module_folder()) == MODULE_DIR


# ------------------------------------------------------------------------------------------------
# Probe Volume With Model parity, with Slicer's compiled classes
# ------------------------------------------------------------------------------------------------
slicer_available = importlib.util.find_spec("slicer") is not None


def ns_points(poly) -> np.ndarray:
    from ImplantBoneContactLib.mesh import points

    return points(poly)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


#: The parameters of Slicer's Probe Volume With Model CLI as its ``ProbeVolumeWithModel.xml`` declares them
#: (Slicer v5.8.1, unchanged in 5.10): name -> (parameter type, channel, default). ``slicer.cli`` sets
#: parameters by these names and ignores a name the module does not declare, so a misspelt name would
#: silently leave the CLI's default: the stand-in below refuses any other name.
PROBE_VOLUME_WITH_MODEL_PARAMETERS = {
    "InputVolume": ("image", "input", None),
    "InputModel": ("geometry", "input", None),
    "OutputModel": ("geometry", "output", None),
    "OutputArrayName": ("string", None, "NRRDImage"),
}


def probe_volume_with_model(input_volume: Path, input_model: Path, output_model: Path, output_array_name: str) -> None:
    """``main()`` of Slicer's ``Modules/CLI/ProbeVolumeWithModel/ProbeVolumeWithModel.cxx`` (v5.8.1), step
    for step, with the same classes (written here in Python; no code copied)."""
    import slicer
    import vtk

    reader = slicer.vtkTeemNRRDReader()  # the CLI's reader: scalar and vector volumes
    reader.SetFileName(str(input_volume))
    reader.SetDataArrayName(output_array_name)
    reader.Update()
    extent = reader.GetOutput().GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        raise RuntimeError(f"Input image file is empty: {input_volume}")
    ijk_image = vtk.vtkImageChangeInformation()
    ijk_image.SetInputConnection(reader.GetOutputPort())
    ijk_image.SetOutputSpacing(1, 1, 1)
    ijk_image.SetOutputOrigin(0, 0, 0)
    ijk_image.Update()
    model_storage = slicer.vtkMRMLModelStorageNode()
    model = slicer.vtkMRMLModelNode()
    model_storage.SetFileName(str(input_model))
    if not model_storage.ReadData(model):
        raise RuntimeError(f"Failed to read input model file {input_model}")
    ras_to_ijk = vtk.vtkTransform()
    ras_to_ijk.SetMatrix(reader.GetRasToIjkMatrix())
    to_ijk = vtk.vtkTransformFilter()
    to_ijk.SetTransform(ras_to_ijk)
    to_ijk.SetInputConnection(model.GetMeshConnection())
    probe = vtk.vtkProbeFilter()
    probe.SetSourceData(ijk_image.GetOutput())
    probe.SetInputConnection(to_ijk.GetOutputPort())
    back = vtk.vtkTransformFilter()
    back.SetTransform(ras_to_ijk.GetInverse())
    back.SetInputConnection(probe.GetOutputPort())
    back.Update()
    model.SetAndObserveMesh(back.GetOutput())
    model_storage.SetFileName(str(output_model))
    if not model_storage.WriteData(model):
        raise RuntimeError(f"Failed to write output model file {output_model}")


def _write_model(poly, path: Path) -> None:
    """Write a surface as Slicer's CLI logic writes a geometry parameter (model storage node, default LPS)."""
    import slicer

    node = slicer.vtkMRMLModelNode()
    node.SetAndObservePolyData(poly)
    storage = slicer.vtkMRMLModelStorageNode()
    storage.SetFileName(str(path))
    assert storage.WriteData(node), path


def _read_model(path: Path):
    import slicer

    node = slicer.vtkMRMLModelNode()
    storage = slicer.vtkMRMLModelStorageNode()
    storage.SetFileName(str(path))
    assert storage.ReadData(node), path
    return node.GetPolyData()


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    """Probe Volume With Model on an oblique int16 phantom NRRD and points on and off the stem, through files."""
    slicer = pytest.importorskip("slicer", reason="slicer-core (vtkTeemNRRDReader) is not installed")
    import vtk
    from ImplantBoneContactLib import FemurPhantom, PhantomSpec, mrml, write_volume
    from ImplantBoneContactLib.mesh import points as mesh_points
    from vtk.util import numpy_support as ns

    phantom = FemurPhantom(PhantomSpec(voxel_mm=1.2, oblique_ct=20.0, noise_hu=25.0, seed=3))
    ct = phantom.make_ct()
    stem = phantom.make_stem_surface()
    pts = mesh_points(stem)
    # Also points outside the CT (shifted 400 mm up), where the CLI writes 0 with mask 0.
    outside = pts[::50] + np.array([0.0, 0.0, 400.0])
    all_pts = np.vstack([pts, outside])
    folder = tmp_path_factory.mktemp("probe")
    write_volume(ct, folder / "ct.nrrd", compress=False)
    _write_model(mrml.probe_input_polydata(all_pts), folder / "in.vtk")
    probe_volume_with_model(folder / "ct.nrrd", folder / "in.vtk", folder / "out.vtk", mrml.PROBE_ARRAY_NAME)
    out = _read_model(folder / "out.vtk")
    reader = slicer.vtkTeemNRRDReader()
    reader.SetFileName(str(folder / "ct.nrrd"))
    reader.Update()
    return {
        "ct": ct, "pts": all_pts, "n_surface": pts.shape[0], "out": out,
        "reader_ras_to_ijk": mrml.array_from_vtk_matrix(reader.GetRasToIjkMatrix()),
        "cli_values": ns.vtk_to_numpy(out.GetPointData().GetArray(mrml.PROBE_ARRAY_NAME)).copy(),
        "cli_type": out.GetPointData().GetArray(mrml.PROBE_ARRAY_NAME).GetDataType(),
        "vtk_short": vtk.VTK_SHORT,
    }


def test_nrrd_reader_geometry_is_the_library_geometry(probe_run):
    np.testing.assert_allclose(probe_run["reader_ras_to_ijk"], probe_run["ct"].ras_to_ijk, atol=1e-9)


def test_probe_volume_with_model_parity(probe_run):
    """The CLI's HU equal the library's trilinear HU rounded (half away from zero) to int16.

    Measured: max |CLI - library| is below 0.5 HU (printed with -s); the CLI keeps the
    volume's voxel type, so an int16 CT gives integers; the library keeps the float value.
    """
    from ImplantBoneContactLib import mrml, sample

    r = probe_run
    n = r["n_surface"]
    assert r["cli_type"] == r["vtk_short"]
    # The points come back where they were sent (through LPS files and IJK space).
    np.testing.assert_allclose(ns_points(r["out"]), r["pts"], atol=1e-4)
    lib, lib_inside = sample(r["ct"], r["pts"], "trilinear")
    cli, cli_inside = mrml.samples_from_probe_output(r["out"], len(r["pts"]))
    np.testing.assert_array_equal(cli_inside, lib_inside)
    assert cli_inside[:n].all() and not cli_inside[n:].any()
    assert np.all(r["cli_values"][n:] == 0)  # the CLI's "0 HU" outside, which the adapter turns into NaN
    d = cli[:n] - lib[:n]
    print(f"\nProbe Volume With Model parity on {n} points: max |CLI - library| = {np.abs(d).max():.4f} HU, "
          f"mean {d.mean():+.5f} HU, CLI == round-half-away(library) on {np.mean(cli[:n] == _round_half_away(lib[:n])):.5f}, "
          f"== trunc(library) on {np.mean(cli[:n] == np.trunc(lib[:n])):.3f}")
    assert np.abs(d).max() <= 0.5 + 1e-9
    # Exactly VTK's rounding, except where float round-off decides a tie.
    tie = np.abs(np.abs(lib[:n] - np.trunc(lib[:n])) - 0.5) < 1e-6
    np.testing.assert_array_equal(cli[:n][~tie], _round_half_away(lib[:n][~tie]))
    # Truncation would differ on about half the points: the CLI rounds, it does not truncate.
    assert np.mean(cli[:n] != np.trunc(lib[:n])) > 0.3


@pytest.mark.skipif(not slicer_available, reason="slicer-core is not installed")
def test_vtk_probe_rounds_half_away_from_zero():
    """Where the interpolated value is an exact tie, VTK's cast to short rounds half away from zero."""
    import vtk
    from vtk.util import numpy_support as ns

    cases = []
    for a, b in ((0, 1), (2, 3), (-2, -3), (-1, 0), (100, 101)):
        image = vtk.vtkImageData()
        image.SetDimensions(2, 1, 1)
        image.GetPointData().SetScalars(ns.numpy_to_vtk(np.array([a, b], dtype=np.int16), deep=True, array_type=vtk.VTK_SHORT))
        pts = vtk.vtkPoints()
        for f in (0.25, 0.5, 0.75):
            pts.InsertNextPoint(f, 0.0, 0.0)
        poly = vtk.vtkPolyData()
        poly.SetPoints(pts)
        probe = vtk.vtkProbeFilter()
        probe.SetSourceData(image)
        probe.SetInputData(poly)
        probe.Update()
        got = ns.vtk_to_numpy(probe.GetOutput().GetPointData().GetScalars())
        exact = np.array([a + (b - a) * f for f in (0.25, 0.5, 0.75)])
        cases.append((exact, got))
    for exact, got in cases:
        np.testing.assert_array_equal(got, _round_half_away(exact))
    assert any(np.any(got != np.rint(exact)) for exact, got in cases)  # not numpy's round-half-even


# ------------------------------------------------------------------------------------------------
# The module's Logic and self-test, run on a real MRML scene (slicer-core). Only what slicer-core
# lacks is replaced: ``slicer.app`` (a version string), Qt and the scripted-module base classes
# (empty), ``slicer.cli.runSync`` (runs ProbeVolumeWithModel.cxx's steps above through files, as the
# CLI logic does: the volume written by its storage node with its own geometry, the model by its
# model storage node, with the CLI's own parameter names), and Surface Toolbox's remesh (its pyacvd calls).
# ------------------------------------------------------------------------------------------------
class _FakeCli:
    """``slicer.cli.runSync`` for Probe Volume With Model, exchanging files like vtkSlicerCLIModuleLogic."""

    def __init__(self, scene, folder: Path) -> None:
        self.scene = scene
        self.folder = folder
        self.calls = 0
        self.fail_with = None
        self.parameters = []  # what each call was given

    def runSync(self, module, node=None, parameters=None, delete_temporary_files=True, update_display=True, hide_window=True):
        import slicer

        assert module is slicer.modules.probevolumewithmodel, module
        parameters = dict(parameters or {})
        self.parameters.append(parameters)
        unknown = set(parameters) - set(PROBE_VOLUME_WITH_MODEL_PARAMETERS)
        assert not unknown, f"Probe Volume With Model has no parameter {sorted(unknown)}"
        required = {n for n, (_, channel, _) in PROBE_VOLUME_WITH_MODEL_PARAMETERS.items() if channel}
        assert required <= set(parameters), f"missing {sorted(required - set(parameters))}"
        self.calls += 1
        cli_node = self.scene.AddNewNodeByClass("vtkMRMLCommandLineModuleNode")
        if self.fail_with:
            cli_node.SetStatus(cli_node.CompletedWithErrors)
            cli_node.SetErrorText(self.fail_with)
            return cli_node
        volume = self.scene.GetNodeByID(parameters["InputVolume"])
        model_in = self.scene.GetNodeByID(parameters["InputModel"])
        model_out = self.scene.GetNodeByID(parameters["OutputModel"])
        tag = f"call{self.calls}"
        volume_file, in_file, out_file = (self.folder / f"{tag}{ext}" for ext in (".nrrd", "_in.vtk", "_out.vtk"))
        storage = volume.CreateDefaultStorageNode()
        storage.SetScene(self.scene)
        storage.ConfigureForDataExchange()
        storage.SetFileName(str(volume_file))
        assert storage.WriteData(volume)
        storage = model_in.CreateDefaultStorageNode()
        storage.SetFileName(str(in_file))
        assert storage.WriteData(model_in)
        probe_volume_with_model(volume_file, in_file, out_file,
                                parameters.get("OutputArrayName", PROBE_VOLUME_WITH_MODEL_PARAMETERS["OutputArrayName"][2]))
        storage = slicer.vtkMRMLModelStorageNode()
        storage.SetFileName(str(out_file))
        assert storage.ReadData(model_out)
        cli_node.SetStatus(cli_node.Completed)
        return cli_node


def _fake_module(name: str, **attributes):
    import types

    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    return module


def _fake_parameter_node_wrapper(cls):
    """Stand-in for @parameterNodeWrapper: an object with the declared defaults (None for nodes)."""
    import typing

    hints = typing.get_type_hints(cls, include_extras=True)

    def __init__(self, node=None):
        for field in hints:
            setattr(self, field, getattr(cls, field, None))

    return type(cls.__name__, (), {"__init__": __init__, "__doc__": cls.__doc__})


@pytest.fixture()
def slicer_module(monkeypatch, tmp_path):
    """The module file imported on slicer-core, with the stand-ins listed above."""
    slicer = pytest.importorskip("slicer", reason="slicer-core is not installed")
    import types
    import unittest

    from ibc_helpers import surface_toolbox_remesh

    scene = slicer.vtkMRMLScene()
    scene.RegisterNodeClass(slicer.vtkMRMLCommandLineModuleNode())
    cli = _FakeCli(scene, tmp_path)
    remesh_calls = []

    class SurfaceToolboxLogic:
        @staticmethod
        def remesh(inputModel, outputModel, subdivide=0, clusters=10000):
            remesh_calls.append((clusters, subdivide))
            # Surface Toolbox's own pyacvd calls, not the library's remesh_acvd (which they are compared with).
            outputModel.SetAndObservePolyData(surface_toolbox_remesh(inputModel.GetPolyData(), subdivide, clusters))

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

        def getParameterNode(self):
            node = scene.GetSingletonNode("ImplantBoneContact", "vtkMRMLScriptedModuleNode")
            if node is None:
                node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
                node.SetSingletonTag("ImplantBoneContact")
            return node

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, requestedDelay=None, msec=None):
            pass

    class Empty:
        def __init__(self, *args, **kwargs):
            pass

    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(applicationVersion="slicer-core test", testingEnabled=lambda: True), raising=False)
    monkeypatch.setattr(slicer, "cli", types.SimpleNamespace(runSync=cli.runSync), raising=False)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(probevolumewithmodel=types.SimpleNamespace(name="ProbeVolumeWithModel")), raising=False)
    fakes = {
        "qt": _fake_module("qt"),
        "slicer.i18n": _fake_module("slicer.i18n", tr=lambda text: text, translate=lambda context, text: text),
        "slicer.parameterNodeWrapper": _fake_module(
            "slicer.parameterNodeWrapper", parameterNodeWrapper=_fake_parameter_node_wrapper,
            Choice=lambda choices: ("Choice", tuple(choices)), WithinRange=lambda lo, hi: ("WithinRange", lo, hi)),
        "slicer.ScriptedLoadableModule": _fake_module(
            "slicer.ScriptedLoadableModule", ScriptedLoadableModule=Empty, ScriptedLoadableModuleWidget=Empty,
            ScriptedLoadableModuleLogic=ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest=ScriptedLoadableModuleTest),
        "SurfaceToolbox": _fake_module("SurfaceToolbox", SurfaceToolboxLogic=SurfaceToolboxLogic),
    }
    for name, module in fakes.items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("ImplantBoneContact", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ImplantBoneContact", module)
    spec.loader.exec_module(module)
    return types.SimpleNamespace(module=module, scene=scene, cli=cli, remesh_calls=remesh_calls, slicer=slicer)


@pytest.fixture(scope="module")
def small_femur():
    from ImplantBoneContactLib import FemurPhantom, PhantomSpec

    phantom = FemurPhantom(PhantomSpec(voxel_mm=1.5, noise_hu=15.0))
    return phantom, phantom.make_ct(), phantom.make_stem_surface()


def _nodes_under_transforms(scene, ct, stem):
    from ImplantBoneContactLib import mrml
    from ImplantBoneContactLib.mesh import transform_polydata
    from ImplantBoneContactLib.volume import Volume

    t_ct = np.array([[0.0, -1.0, 0.0, 20.0], [1.0, 0.0, 0.0, -5.0], [0.0, 0.0, 1.0, 12.0], [0.0, 0.0, 0.0, 1.0]])
    t_model = np.array([[1.0, 0.0, 0.0, -30.0], [0.0, 0.0, -1.0, 4.0], [0.0, 1.0, 0.0, 8.0], [0.0, 0.0, 0.0, 1.0]])
    ct_node = mrml.volume_node_from_volume(scene, Volume(ct.array, np.linalg.inv(t_ct) @ ct.ijk_to_ras), "CT")
    ct_node.SetAndObserveTransformNodeID(mrml.linear_transform_node(scene, t_ct, "CT placement").GetID())
    model = mrml.model_node_from_polydata(scene, transform_polydata(stem, np.linalg.inv(t_model)), "Stem")
    model.SetAndObserveTransformNodeID(mrml.linear_transform_node(scene, t_model, "Registration").GetID())
    return ct_node, model


def test_logic_probes_with_the_cli_in_the_volumes_frame(slicer_module, small_femur):
    """CT and model under different transforms: the CLI (which ignores transforms) gets points in the CT's frame."""
    from ImplantBoneContactLib import AnalysisParameters, sample

    phantom, ct, stem = small_femur
    scene = slicer_module.scene
    ct_node, model = _nodes_under_transforms(scene, ct, stem)
    out_model = scene.AddNewNodeByClass("vtkMRMLModelNode", "out")
    out_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "zones")
    logic = slicer_module.module.ImplantBoneContactLogic(interactive=False)
    vertices, zones = logic.run(ct_node, model, AnalysisParameters(remesh="none"), outputModelNode=out_model, outputTableNode=out_table)
    assert slicer_module.cli.calls == 1
    assert "Probe Volume With Model" in logic.lastSampler
    pts = vertices[["x_mm", "y_mm", "z_mm"]].to_numpy()
    lib, inside = sample(ct, pts)  # the world CT, sampled at the world vertices
    hu = vertices["hu"].to_numpy()
    np.testing.assert_array_equal(np.isfinite(hu), inside)
    assert inside.all()
    assert np.abs(hu - lib).max() <= 0.5 + 1e-6
    np.testing.assert_array_equal(hu, _round_half_away(lib))  # int16 CT: the CLI's rounding
    assert out_table.GetNumberOfRows() == len(zones) == 15
    assert out_model.GetPolyData().GetNumberOfPoints() == len(vertices)
    # The temporary probe models and the CLI node are removed again.
    names = [scene.GetNthNode(i).GetName() for i in range(scene.GetNumberOfNodes())]
    assert not [n for n in names if "probe" in n.lower()], names
    assert scene.GetNumberOfNodesByClass("vtkMRMLCommandLineModuleNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 2  # the input and the output, nothing left over
    assert logic.lastResult.inputs["slicer"]["sampling"] == logic.lastSampler


def test_logic_passes_probe_volume_with_model_exactly_its_parameters(slicer_module, small_femur):
    """Every parameter the CLI declares, by its declared name, with the CT node, a model of the points and an
    output model; the array name is the adapter's (the CLI's default "NRRDImage" would not be found)."""
    from ImplantBoneContactLib import AnalysisParameters, mrml

    phantom, ct, stem = small_femur
    scene = slicer_module.scene
    ct_node, model = _nodes_under_transforms(scene, ct, stem)
    logic = slicer_module.module.ImplantBoneContactLogic(interactive=False)
    logic.run(ct_node, model, AnalysisParameters(remesh="none"))
    (given,) = slicer_module.cli.parameters
    assert set(given) == set(PROBE_VOLUME_WITH_MODEL_PARAMETERS)
    assert given["InputVolume"] == ct_node.GetID()
    assert given["OutputArrayName"] == mrml.PROBE_ARRAY_NAME != PROBE_VOLUME_WITH_MODEL_PARAMETERS["OutputArrayName"][2]
    assert given["InputModel"] != given["OutputModel"]
    assert model.GetID() not in (given["InputModel"], given["OutputModel"])  # the user's model is never the CLI's


def test_logic_uses_the_library_sampler_for_offsets_and_nearest(slicer_module, small_femur):
    from ImplantBoneContactLib import AnalysisParameters, sample_surface
    from ImplantBoneContactLib.mesh import surface_geometry

    phantom, ct, stem = small_femur
    ct_node, model = _nodes_under_transforms(slicer_module.scene, ct, stem)
    logic = slicer_module.module.ImplantBoneContactLogic(interactive=False)
    for params in (AnalysisParameters(remesh="none", offset_mm=1.0), AnalysisParameters(remesh="none", sampling="nearest"),
                   AnalysisParameters(remesh="none", profile="0:2:0.5")):
        vertices, _ = logic.run(ct_node, model, params)
        assert "ImplantBoneContactLib" in logic.lastSampler
        geom = surface_geometry(logic.lastResult.surface)
        expected = sample_surface(ct, geom.points, geom.normals, params.sampling, params.offsets(), params.profile_aggregate)
        np.testing.assert_allclose(vertices["hu"].to_numpy(), expected.hu, atol=1e-6)
    assert slicer_module.cli.calls == 0


def test_logic_remeshes_with_surface_toolbox(slicer_module, small_femur):
    pytest.importorskip("pyacvd", reason="pyacvd is not installed")

    phantom, ct, stem = small_femur
    ct_node, model = _nodes_under_transforms(slicer_module.scene, ct, stem)
    logic = slicer_module.module.ImplantBoneContactLogic(interactive=False)
    vertices, _ = logic.run(ct_node, model, {"remesh": True, "remeshPoints": 2000, "remeshSubdivide": 0})
    assert slicer_module.remesh_calls == [(2000, 0)]
    assert abs(len(vertices) - 2000) <= 20
    assert logic.lastResult.inputs["slicer"]["remesh"] == "Surface Toolbox"


def test_logic_reports_cli_errors(slicer_module, small_femur):
    from ImplantBoneContactLib import AnalysisParameters

    phantom, ct, stem = small_femur
    ct_node, model = _nodes_under_transforms(slicer_module.scene, ct, stem)
    slicer_module.cli.fail_with = "Input image file is empty: /tmp/x.nrrd"
    logic = slicer_module.module.ImplantBoneContactLogic(interactive=False)
    with pytest.raises(RuntimeError, match=r"Probe Volume With Model failed \(Completed with errors\): Input image file is empty"):
        logic.run(ct_node, model, AnalysisParameters(remesh="none"))
    assert slicer_module.scene.GetNumberOfNodesByClass("vtkMRMLCommandLineModuleNode") == 0


def test_missing_packages_in_batch_are_an_error_not_a_dialog(slicer_module, monkeypatch):
    module = slicer_module.module
    monkeypatch.setitem(module.REQUIREMENTS, "ibc_no_such_package", "ibc-no-such-package>=1")
    # A batch run is not Slicer's testing mode (which never installs anything).
    monkeypatch.setattr(slicer_module.slicer.app, "testingEnabled", lambda: False)
    logic = module.ImplantBoneContactLogic(interactive=False)
    with pytest.raises(RuntimeError, match=r"missing Python packages: ibc-no-such-package>=1.*--install-dependencies"):
        logic.ensureDependencies(remesh=False)
    # Allowed to install: slicer.packaging.pip_ensure where it exists, without prompts in batch ...
    calls = []
    packaging = _fake_module("slicer.packaging", pip_ensure=lambda reqs, **kw: calls.append(("pip_ensure", reqs, kw)))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    monkeypatch.setattr(slicer_module.slicer, "packaging", packaging, raising=False)
    logic.installMissingPackages = True
    with pytest.raises(RuntimeError, match="could not be installed"):
        logic.ensureDependencies(remesh=False)
    assert calls == [("pip_ensure", ["ibc-no-such-package>=1"],
                      {"requester": "ImplantBoneContact", "prompt_install": False, "prompt_restart": False})]
    # ... and the older slicer.util.pip_install where it does not.
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)
    monkeypatch.setattr(slicer_module.slicer.util, "pip_install", lambda req: calls.append(("pip_install", req)), raising=False)
    with pytest.raises(RuntimeError, match="could not be installed"):
        logic.ensureDependencies(remesh=False)
    assert calls[-1] == ("pip_install", "ibc-no-such-package>=1")


def test_module_self_test_passes_on_slicer_core(slicer_module):
    """ImplantBoneContactTest (what Slicer runs as the module's ctest) with the stand-ins above."""
    test = slicer_module.module.ImplantBoneContactTest()
    test.runTest()
    assert slicer_module.cli.calls >= 1


def test_batch_script_runs_and_exits_with_codes(slicer_module, small_femur, tmp_path, capsys):
    from ImplantBoneContactLib import write_volume
    from ImplantBoneContactLib.mesh import write_polydata

    phantom, ct, stem = small_femur
    write_volume(ct, tmp_path / "ct.nrrd")
    write_polydata(stem, tmp_path / "stem.stl", space="LPS")
    batch = _batch_module()
    common = ["--ct", str(tmp_path / "ct.nrrd"), "--model", str(tmp_path / "stem.stl"), "--remesh", "none", "--no-pictures", "--quiet"]
    assert batch.main(common + ["--out", str(tmp_path / "res")]) == 0
    assert {"zones.csv", "vertices.csv", "parameters.json"} <= {p.name for p in (tmp_path / "res").iterdir()}
    assert slicer_module.cli.calls == 1
    capsys.readouterr()
    # Bad input: one line, exit code 2; the result folder is not touched.
    assert batch.main(["--ct", str(tmp_path / "missing.nrrd"), "--model", str(tmp_path / "stem.stl"), "--out", str(tmp_path / "res2"),
                       "--remesh", "none", "--no-pictures"]) == 2
    assert "CT not found" in capsys.readouterr().err
    assert not (tmp_path / "res2").exists()
    # An existing result without --overwrite is an output error (2); a usage error is 2 too.
    assert batch.main(common + ["--out", str(tmp_path / "res")]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert batch.main(["--ct", "x.nrrd", "--remesh", "none", "--no-pictures"]) == 2
