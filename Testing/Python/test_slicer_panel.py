# ruff: noqa: F811  (the fixtures imported from test_slicer_module are arguments of the tests)
"""The Slicer module's run checks, dependency handling, progress and panel features on slicer-core.

The module file runs on a real ``vtkMRMLScene`` with the stand-ins of ``test_slicer_module``
(``slicer.app``, the CLI runner, Qt and the scripted-module base classes); the MRML helpers
are tested on slicer-core's real classes.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections import namedtuple

import numpy as np
import pytest

pytestmark = pytest.mark.mrml

slicer = pytest.importorskip("slicer", reason="slicer-core (Slicer's MRML classes) is not installed")

from ImplantBoneContactLib import mrml  # noqa: E402
from ImplantBoneContactLib.errors import InputError  # noqa: E402
from test_slicer_module import _fake_module, _nodes_under_transforms, slicer_module, small_femur  # noqa: E402, F401

ABSENT = "implantbonecontact-absent-test-package>=1.0"


@pytest.fixture()
def scene():
    return slicer.vtkMRMLScene()


def _cube():
    import vtk

    source = vtk.vtkCubeSource()
    source.SetXLength(10.0)
    source.Update()
    tri = vtk.vtkTriangleFilter()
    tri.SetInputData(source.GetOutput())
    tri.Update()
    return tri.GetOutput()


def _node_count(scene) -> int:
    return scene.GetNumberOfNodes()


# ------------------------------------------------------------------------------------------------
# 2. the self-test in testing mode: missing packages skip the tests that need them, the rest runs
# ------------------------------------------------------------------------------------------------
def test_self_test_skips_what_needs_a_missing_package_and_runs_the_rest(slicer_module, monkeypatch):
    module = slicer_module.module
    monkeypatch.setitem(module.REQUIREMENTS, "ibc_absent", ABSENT)
    installs = []
    monkeypatch.setattr(slicer_module.slicer.util, "pip_install", lambda req: installs.append(req), raising=False)
    test = module.ImplantBoneContactTest()
    test.runTest()  # passes: nothing raised
    skipped = dict(test.skipped)
    assert set(skipped) == {"test_PhantomUnderRegistration", "test_OffsetUsesLibrarySampler", "test_ParameterNodeToLibrary"}
    assert all(ABSENT in reason and "testing mode" in reason for reason in skipped.values())
    assert installs == []  # testing mode never installs
    assert slicer_module.cli.calls == 1  # the probe test ran the CLI


def test_self_test_fails_when_everything_would_be_skipped(slicer_module, monkeypatch):
    module = slicer_module.module
    monkeypatch.setitem(module.REQUIREMENTS, "ibc_absent", ABSENT)
    test = module.ImplantBoneContactTest()
    for name in ("test_DependencyCheckNeverInstallsInTesting", "test_OutputModelMustNotBeTheImplant",
                 "test_ProbeVolumeWithModelMatchesLibrarySampler", "test_RegistrationBecomesAnAdjustableTransform"):
        monkeypatch.setattr(test, name, test._requireLibrary)
    with pytest.raises(AssertionError, match="every self-test was skipped"):
        test.runTest()


# ------------------------------------------------------------------------------------------------
# 6. and 8. versions are checked; batch installs without any dialog, on every pip_ensure signature
# ------------------------------------------------------------------------------------------------
def test_an_old_installed_version_counts_as_missing(slicer_module, monkeypatch):
    module = slicer_module.module
    import pandas

    monkeypatch.setitem(module.REQUIREMENTS, "pandas", "pandas>=999")
    logic = module.ImplantBoneContactLogic(interactive=False)
    with pytest.raises(module.MissingPackagesError) as caught:
        logic.ensureDependencies()
    assert caught.value.unmet == [("pandas>=999", pandas.__version__)]


def _pip_ensure_of_slicer_main(calls):
    """``slicer.packaging.pip_ensure`` with the signature it has in Slicer's main branch."""
    def pip_ensure(requirements, constraints=None, skip_packages=None, prompt_install=True, prompt_restart=True,
                   requester=None, skip_in_testing=True, show_progress=True):
        calls.append(dict(requirements=requirements, prompt_install=prompt_install, prompt_restart=prompt_restart,
                          requester=requester, skip_in_testing=skip_in_testing, show_progress=show_progress))

    return pip_ensure


@pytest.mark.parametrize("interactive", [False, True])
def test_pip_ensure_shows_no_dialog_in_batch(slicer_module, monkeypatch, interactive):
    module = slicer_module.module
    monkeypatch.setitem(module.REQUIREMENTS, "ibc_absent", ABSENT)
    monkeypatch.setattr(slicer_module.slicer.app, "testingEnabled", lambda: False)
    calls = []
    packaging = _fake_module("slicer.packaging", pip_ensure=_pip_ensure_of_slicer_main(calls))
    monkeypatch.setitem(sys.modules, "slicer.packaging", packaging)
    logic = module.ImplantBoneContactLogic(interactive=interactive)
    logic.installMissingPackages = True
    with pytest.raises(module.MissingPackagesError, match="could not be installed"):
        logic.ensureDependencies()
    assert calls == [dict(requirements=[ABSENT], prompt_install=interactive, prompt_restart=interactive,
                          requester="ImplantBoneContact", skip_in_testing=False, show_progress=interactive)]


def test_declined_installation_on_slicer_5_8(slicer_module, monkeypatch):
    module = slicer_module.module
    monkeypatch.setitem(module.REQUIREMENTS, "ibc_absent", ABSENT)
    monkeypatch.setattr(slicer_module.slicer.app, "testingEnabled", lambda: False)
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)  # 5.8 and 5.10 have no slicer.packaging
    monkeypatch.setattr(slicer_module.slicer.util, "confirmOkCancelDisplay", lambda text, *a, **k: False, raising=False)
    installs = []
    monkeypatch.setattr(slicer_module.slicer.util, "pip_install", lambda req: installs.append(req), raising=False)
    logic = module.ImplantBoneContactLogic(interactive=True)
    with pytest.raises(module.MissingPackagesError, match="declined"):
        logic.ensureDependencies()
    assert installs == []


# ------------------------------------------------------------------------------------------------
# 4. and 9. the output model may not be the implant; nothing is created or changed before the checks
# ------------------------------------------------------------------------------------------------
def test_run_refuses_the_implant_as_output_and_changes_nothing(slicer_module, small_femur):
    phantom, ct, stem = small_femur
    scene = slicer_module.scene
    ct_node, model = _nodes_under_transforms(scene, ct, stem)
    surface, transform_id, n_nodes = model.GetPolyData(), model.GetTransformNodeID(), _node_count(scene)
    points_before = mrml.polydata_from_model_node(model).GetNumberOfPoints()
    logic = slicer_module.module.ImplantBoneContactLogic(interactive=False)
    same = scene.GetNodeByID(model.GetID())
    with pytest.raises(InputError, match="output model is the implant model"):
        logic.run(ct_node, model, {"remesh": False}, outputModelNode=same)
    assert model.GetPolyData() is surface and model.GetTransformNodeID() == transform_id
    assert mrml.polydata_from_model_node(model).GetNumberOfPoints() == points_before
    assert _node_count(scene) == n_nodes and slicer_module.cli.calls == 0


def test_apply_refusal_reasons(slicer_module, small_femur):
    phantom, ct, stem = small_femur
    scene = slicer_module.scene
    ct_node, model = _nodes_under_transforms(scene, ct, stem)
    logic = slicer_module.module.ImplantBoneContactLogic()
    p = types.SimpleNamespace(ctVolume=ct_node, implantModel=model, outputModel=None)
    assert logic.applyRefusal(p) == ""
    assert "in progress" in logic.applyRefusal(p, running=True)
    p.outputModel = model
    assert "implant" in logic.applyRefusal(p)
    p.outputModel, p.implantModel = None, None
    assert logic.applyRefusal(p) != ""


@pytest.mark.parametrize(("values", "save", "folder", "message"), [
    ({"classesPreset": "custom", "customClasses": ""}, False, "", "class table is empty"),
    ({}, True, "", "choose a folder"),
    ({}, True, ".", "choose a folder"),
    ({}, True, "relative/folder", "not a full path"),
    ({}, True, "/no/such/folder/anywhere", "does not exist"),
])
def test_check_inputs_refuses_before_any_node_exists(slicer_module, small_femur, values, save, folder, message):
    phantom, ct, stem = small_femur
    scene = slicer_module.scene
    ct_node, model = _nodes_under_transforms(scene, ct, stem)
    n_nodes = _node_count(scene)
    logic = slicer_module.module.ImplantBoneContactLogic()
    with pytest.raises(InputError, match=message):
        logic.checkInputs(ct_node, model, dict(values), None, save, folder)
    assert _node_count(scene) == n_nodes


def test_csv_folder_from_panel(tmp_path):
    assert mrml.csv_folder_from_panel(False, ".") is None
    assert mrml.csv_folder_from_panel(True, str(tmp_path)) == str(tmp_path)
    for empty in (None, "", ".", "  "):
        with pytest.raises(InputError, match="choose a folder"):
            mrml.csv_folder_from_panel(True, empty)


def test_parameter_node_starts_without_a_csv_folder(slicer_module):
    # 10.: a text field, empty by default (a Path field shows an empty path as ".").
    p = slicer_module.module.ImplantBoneContactLogic().getParameterNode()
    assert p.csvFolder == "" and p.saveCsv is False


# ------------------------------------------------------------------------------------------------
# 3. progress while Probe Volume With Model runs, and cancelling it
# ------------------------------------------------------------------------------------------------
def _asynchronous_cli(slicer_module, monkeypatch, busy_polls: int):
    """``slicer.cli.run`` whose node stays busy for ``busy_polls`` looks; ``slicer.app.processEvents`` counts them."""
    state = {"polls": 0, "node": None}

    def run(module, node=None, parameters=None, wait_for_completion=False, delete_temporary_files=True,
            update_display=True, hide_window=True):
        cli_node = slicer_module.cli.runSync(module, node, parameters)
        cli_node.SetStatus(cli_node.Running)
        state["node"] = cli_node
        return cli_node

    def process_events():
        state["polls"] += 1
        node = state["node"]
        if node is not None and state["polls"] >= busy_polls and node.GetStatus() == node.Running:
            node.SetStatus(node.Completed)
        if node is not None and node.GetStatus() == node.Cancelling:  # the CLI process stops
            node.SetStatus(node.Cancelled)

    monkeypatch.setattr(slicer_module.slicer, "cli", types.SimpleNamespace(runSync=slicer_module.cli.runSync, run=run))
    monkeypatch.setattr(slicer_module.slicer.app, "processEvents", process_events, raising=False)
    return state


def test_probe_reports_progress_while_the_cli_runs(slicer_module, small_femur, monkeypatch):
    from ImplantBoneContactLib import AnalysisParameters

    phantom, ct, stem = small_femur
    ct_node, model = _nodes_under_transforms(slicer_module.scene, ct, stem)
    state = _asynchronous_cli(slicer_module, monkeypatch, busy_polls=4)
    logic = slicer_module.module.ImplantBoneContactLogic(interactive=False)
    logic.pollInterval = 0.0
    messages = []
    vertices, _ = logic.run(ct_node, model, AnalysisParameters(remesh="none"), progressCallback=lambda f, m: messages.append((f, m)))
    probing = [m for f, m in messages if "Probe Volume With Model" in m]
    assert len(probing) == 4 and state["polls"] == 4
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions)  # the probe reports at the sampling step's fraction
    assert np.isfinite(vertices["hu"].to_numpy()).all()


def test_cancelling_during_the_probe_cancels_the_cli(slicer_module, small_femur, monkeypatch):
    from ImplantBoneContactLib import AnalysisParameters

    phantom, ct, stem = small_femur
    scene = slicer_module.scene
    ct_node, model = _nodes_under_transforms(scene, ct, stem)
    state = _asynchronous_cli(slicer_module, monkeypatch, busy_polls=100)
    logic = slicer_module.module.ImplantBoneContactLogic(interactive=False)
    logic.pollInterval = 0.0
    def progress(fraction, message):
        if "Probe Volume With Model" in message and state["polls"] >= 2:
            raise RuntimeError("Cancelled by the user.")

    with pytest.raises(RuntimeError, match="Cancelled"):
        logic.run(ct_node, model, AnalysisParameters(remesh="none"), progressCallback=progress)
    cli_node = state["node"]
    assert cli_node.GetStatus() == cli_node.Cancelled  # the real node's Cancel() was called, then it stopped
    assert state["polls"] == 3  # two while running, one while cancelling
    # The temporary probe models and the CLI node are gone.
    assert scene.GetNumberOfNodesByClass("vtkMRMLCommandLineModuleNode") == 0
    assert scene.GetNumberOfNodesByClass("vtkMRMLModelNode") == 1


# ------------------------------------------------------------------------------------------------
# the panel: remesh choice, slice outline, one HU range, post-operative CT, registration
# ------------------------------------------------------------------------------------------------
def test_fast_remesh_choice_needs_no_pyacvd_and_no_surface_toolbox(slicer_module, small_femur, monkeypatch):
    module = slicer_module.module
    phantom, ct, stem = small_femur
    ct_node, model = _nodes_under_transforms(slicer_module.scene, ct, stem)
    monkeypatch.setitem(module.REMESH_REQUIREMENTS, "pyacvd", ABSENT)  # as if pyacvd were missing
    out_model = slicer_module.scene.AddNewNodeByClass("vtkMRMLModelNode", "out")
    logic = module.ImplantBoneContactLogic(interactive=False)
    vertices, _ = logic.run(ct_node, model, {"remesh": True, "remeshMethod": "Fast (library)", "remeshPoints": 1500},
                            outputModelNode=out_model)
    assert slicer_module.remesh_calls == []
    assert logic.lastResult.parameters.remesh == "fast"
    assert logic.lastResult.inputs["slicer"]["remesh"] == "ImplantBoneContactLib fast remesh"
    assert abs(len(vertices) - 1500) <= 0.05 * 1500
    # The stem's outline is drawn on the slice views after a run.
    assert out_model.GetDisplayNode().GetVisibility2D() == 1
    # Surface Toolbox's remesh (the default) does need pyacvd: refused in batch without permission.
    with pytest.raises(module.MissingPackagesError, match=ABSENT):
        logic.run(ct_node, model, {"remesh": True, "remeshMethod": "Surface Toolbox"})


def test_remesh_method_from_panel():
    assert mrml.remesh_method_from_panel(True, "Surface Toolbox") == "acvd"
    assert mrml.remesh_method_from_panel(True, "Fast (library)") == "fast"
    assert mrml.remesh_method_from_panel(False, "Fast (library)") == "none"
    with pytest.raises(InputError):
        mrml.remesh_method_from_panel(True, "quick")


def test_heat_map_uses_the_pictures_hu_range(scene, phantom_result):
    plots = pytest.importorskip("ImplantBoneContactLib.plots", reason="matplotlib is not installed")
    from ImplantBoneContactLib.display import HU_DISPLAY_RANGE

    model = scene.AddNewNodeByClass("vtkMRMLModelNode", "result")
    mrml.write_result_to_model(phantom_result, model, "hu")
    display = model.GetDisplayNode()
    assert tuple(display.GetScalarRange()) == HU_DISPLAY_RANGE == tuple(plots.HU_RANGE)
    table = scene.GetNodeByID(display.GetColorNodeID())
    assert tuple(table.GetLookupTable().GetTableRange()) == HU_DISPLAY_RANGE


def test_outline_in_slice_views_on_a_model_without_display(scene):
    model = mrml.model_node_from_polydata(scene, _cube(), "stem")
    assert model.GetDisplayNode() is None
    mrml.show_outline_in_slice_views(model)
    assert model.GetDisplayNode().GetVisibility2D() == 1 and model.GetDisplayNode().GetVisibility() == 1
    mrml.show_outline_in_slice_views(model, False)
    assert model.GetDisplayNode().GetVisibility2D() == 0


def test_ct_kind_text(slicer_module):
    logic = slicer_module.module.ImplantBoneContactLogic
    assert logic.ctKindText(types.SimpleNamespace()) == ""
    assert logic.ctKindText(types.SimpleNamespace(ct_kind=None)) == ""
    assert "Post-operative" in logic.ctKindText(types.SimpleNamespace(ct_kind="postoperative"))
    assert logic.ctKindText(types.SimpleNamespace(ct_kind="pre_operative")) == "CT kind: pre operative"


def test_registration_matrix_becomes_an_adjustable_transform(scene):
    model = mrml.model_node_from_polydata(scene, _cube(), "stem")
    old = np.eye(4)
    old[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    old[:3, 3] = [5.0, -2.0, 1.0]
    old_node = mrml.linear_transform_node(scene, old, "manual")
    model.SetAndObserveTransformNodeID(old_node.GetID())
    before = np.array(mrml.polydata_from_model_node(model).GetPoints().GetData())
    c, s = np.cos(0.3), np.sin(0.3)
    registration = np.array([[c, 0.0, s, 1.5], [0.0, 1.0, 0.0, -4.0], [-s, 0.0, c, 2.0], [0.0, 0.0, 0.0, 1.0]])
    node = mrml.apply_registration(scene, model, registration)
    assert node.IsA("vtkMRMLLinearTransformNode") and model.GetTransformNodeID() == node.GetID()
    assert node.GetDisplayNode().GetEditorVisibility()
    after = np.array(mrml.polydata_from_model_node(model).GetPoints().GetData())
    # The model moved by the registration, from where it was shown (the old transform applied).
    np.testing.assert_allclose(after, before @ registration[:3, :3].T + registration[:3, 3], atol=1e-9)
    np.testing.assert_allclose(mrml.array_from_vtk_matrix(old_node.GetMatrixTransformToParent()), old)  # kept as it was
    for bad in (np.eye(3), np.zeros((4, 4)), np.full((4, 4), np.nan)):
        with pytest.raises(InputError):
            mrml.apply_registration(scene, model, bad)


RegistrationResult = namedtuple("RegistrationResult", "matrix_ras rms_mm inside_fraction ok verdict")


def _fake_register_module(monkeypatch, result):
    calls = []

    def register_stem(volume, model_surface):
        calls.append((volume.array.shape, model_surface.GetNumberOfPoints()))
        return result

    module = _fake_module("ImplantBoneContactLib.register", register_stem=register_stem, RegistrationResult=RegistrationResult)
    module.__spec__ = importlib.machinery.ModuleSpec("ImplantBoneContactLib.register", loader=None)
    monkeypatch.setitem(sys.modules, "ImplantBoneContactLib.register", module)
    return calls


def test_register_button_only_where_the_library_registers(slicer_module, small_femur, monkeypatch):
    logic = slicer_module.module.ImplantBoneContactLogic(interactive=False)
    if "ImplantBoneContactLib.register" not in sys.modules and importlib.util.find_spec("ImplantBoneContactLib.register") is None:
        assert not logic.registrationAvailable()
        with pytest.raises(RuntimeError, match="cannot register"):
            logic.registerStem(object(), object())
    phantom, ct, stem = small_femur
    scene = slicer_module.scene
    ct_node, model = _nodes_under_transforms(scene, ct, stem)
    shift = np.eye(4)
    shift[:3, 3] = [0.0, 0.0, 3.0]
    calls = _fake_register_module(monkeypatch, RegistrationResult(shift, 0.4, 0.97, True, "good"))
    assert logic.registrationAvailable()
    world_before = mrml.matrix_to_world(model)
    node, registration = logic.registerStem(ct_node, model)
    assert calls == [(ct.array.shape, stem.GetNumberOfPoints())]
    assert model.GetTransformNodeID() == node.GetID() and registration.verdict == "good"
    np.testing.assert_allclose(mrml.matrix_to_world(model), shift @ world_before)
    # A failed registration changes nothing.
    n_nodes, parent = _node_count(scene), model.GetTransformNodeID()
    _fake_register_module(monkeypatch, RegistrationResult(shift, 6.0, 0.2, False, "no metal found"))
    with pytest.raises(RuntimeError, match="no metal found"):
        logic.registerStem(ct_node, model)
    assert _node_count(scene) == n_nodes and model.GetTransformNodeID() == parent
