"""ImplantBoneContact: CT Hounsfield units on a registered femoral stem, by Gruen zone and contact class.

The work is done by the ``ImplantBoneContactLib`` package next to this file
(pure numpy/VTK/pandas) and its MRML adapter ``ImplantBoneContactLib.mrml``.
This file holds only what needs the running Slicer application: the panel,
the Probe Volume With Model CLI, Surface Toolbox's remesh, package
installation and the self-test. The library is imported lazily: it needs
pandas, which is installed on first use (with the user's confirmation), never
when Slicer loads the module. Runs on Slicer 5.8 (Python 3.9, numpy 1.26) and later.
"""

import importlib
import importlib.util
import inspect
import logging
import time
import unittest
from pathlib import Path
from typing import Annotated

import numpy as np
import qt
import slicer
import vtk
from slicer import (
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLMarkupsLineNode,
    vtkMRMLMarkupsPlaneNode,
    vtkMRMLModelNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLTableNode,
)
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin
from vtk.util import numpy_support

#: Packages the library needs that Slicer does not bundle (import name: requirement). The
#: installed *version* is checked, not only the presence (pandas 1.x fails under numpy 2).
REQUIREMENTS = {"pandas": "pandas>=2.0"}
#: Needed only for the ACVD remesh (Surface Toolbox installs this exact version; it brings pyvista).
REMESH_REQUIREMENTS = {"pyacvd": "pyacvd==0.3.1"}
#: Needed only to draw the pictures of a saved result.
PICTURE_REQUIREMENTS = {"matplotlib": "matplotlib>=3.7"}
#: Bundled with Slicer (5.8: 1.26.4, 5.10: 2.0.2); never installed by the module.
NUMPY_REQUIREMENT = "numpy>=1.26"

#: Remesh choices of the panel (``mrml.PANEL_REMESH_METHODS``), with the times measured in
#: BENCHMARKS.md (2 shared cores; the phantom stem and a scanned stem).
REMESH_TOOLTIP = (
    "Surface Toolbox: Slicer's uniform remesh (ACVD, pyacvd 0.3.1), the reference; about 5-10 s at "
    "10 000 points, 17-37 s at 30 000, 60-160 s at 100 000. The window does not respond while it runs.\n"
    "Fast (library): the same ACVD clustering in numpy and VTK, needs no pyacvd; about 0.2-0.3 s at "
    "10 000 points, 0.8-1.2 s at 30 000, 3.8-6.3 s at 100 000. Its class fractions agree with "
    "Surface Toolbox's within about half a percentage point (BENCHMARKS.md)."
)


class MissingPackagesError(RuntimeError):
    """Python packages the run needs are missing or too old, and may not be installed now.

    Attributes:
        unmet: ``[(requirement, installed version or None), ...]``.
    """

    def __init__(self, message: str, unmet=()) -> None:
        super().__init__(message)
        self.unmet = list(unmet)


#
# ImplantBoneContact
#


class ImplantBoneContact(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Implant Bone Contact")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["ImplantBoneContact contributors"]
        self.parent.helpText = _("""
Maps CT Hounsfield units (HU) onto a registered femoral stem, splits the stem surface into
Gruen zones 1-14 and classifies the bone contact (cortical, cancellous, no bone, metal).
Select the CT and the implant model (it may sit under the registration transform), optionally
a line for the stem axis (first point proximal, second at the tip), a plane on the neck cut and a
point on the medial side, then Apply. The stem is shown as a heat map (HU, zones or classes)
and the per-zone table is filled; tables can also be saved as CSV.
Plain trilinear sampling on the surface uses the Probe Volume With Model module; sampling
at an offset or along a profile, and nearest-voxel sampling, use the library's sampler on the
volume's voxels with its IJK-to-RAS matrix. In a post-operative CT (the implant's metal is in
it) the library's metal-aware walk reads the bone past the metal's bloom along each normal;
Probe Volume With Model, which probes only the points it is given, is not used then.
""")
        self.parent.acknowledgementText = _("""
Remeshing uses Surface Toolbox (pyacvd). Probing uses Probe Volume With Model (Lauren O'Donnell).
""")


#
# ImplantBoneContactParameterNode
#


@parameterNodeWrapper
class ImplantBoneContactParameterNode:
    """The module's settings, saved with the scene.

    Field names and defaults are those of ``ImplantBoneContactLib.mrml.PANEL_DEFAULTS``
    (plus the input and output nodes); ``mrml.parameters_from_panel`` turns them into
    library parameters.
    """

    ctVolume: vtkMRMLScalarVolumeNode
    implantModel: vtkMRMLModelNode
    axisLine: vtkMRMLMarkupsLineNode
    resectionPlane: vtkMRMLMarkupsPlaneNode
    medialPoint: vtkMRMLMarkupsFiducialNode
    side: Annotated[str, Choice(["auto", "left", "right"])] = "auto"
    remesh: bool = True
    remeshMethod: Annotated[str, Choice(["Surface Toolbox", "Fast (library)"])] = "Surface Toolbox"
    remeshPoints: Annotated[int, WithinRange(100, 500000)] = 10000
    remeshSubdivide: Annotated[int, WithinRange(-1, 6)] = -1
    sampling: Annotated[str, Choice(["trilinear", "nearest"])] = "trilinear"
    offsetMm: Annotated[float, WithinRange(-20.0, 20.0)] = 0.0
    useProfile: bool = False
    profileStartMm: Annotated[float, WithinRange(-20.0, 20.0)] = 0.5
    profileStopMm: Annotated[float, WithinRange(-20.0, 20.0)] = 3.0
    profileStepMm: Annotated[float, WithinRange(0.05, 10.0)] = 0.5
    profileAggregate: Annotated[str, Choice(["max", "mean", "median"])] = "max"
    classesPreset: Annotated[str, Choice(["default", "pedicle-screw", "fixation", "custom"])] = "default"
    customClasses: str = ""
    metalClass: bool = True
    metalHu: Annotated[float, WithinRange(0.0, 30000.0)] = 2500.0
    zoneScheme: Annotated[str, Choice(["sector", "projection"])] = "sector"
    tipLengthMm: Annotated[float, WithinRange(0.0, 100.0)] = 10.0
    outputModel: vtkMRMLModelNode
    outputTable: vtkMRMLTableNode
    saveCsv: bool = False
    # Text, not Path: an empty Path shows as "." in the folder field. Kept in step with
    # the field by the widget (no automatic connection for a text in a path field).
    csvFolder: str = ""


#
# ImplantBoneContactWidget
#


class ImplantBoneContactWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._shownClasses = None
        self._updatingClassTable = False
        self._running = False

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/ImplantBoneContact.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = ImplantBoneContactLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.classTableWidget.connect("itemChanged(QTableWidgetItem*)", self.onClassTableEdited)
        self.ui.addClassButton.connect("clicked(bool)", self.onAddClass)
        self.ui.removeClassButton.connect("clicked(bool)", self.onRemoveClass)
        self.ui.colorByHuButton.connect("clicked(bool)", lambda checked: self.onColorBy("hu"))
        self.ui.colorByZoneButton.connect("clicked(bool)", lambda checked: self.onColorBy("zone"))
        self.ui.colorByClassButton.connect("clicked(bool)", lambda checked: self.onColorBy("class"))
        self.ui.csvFolderPathLineEdit.connect("currentPathChanged(QString)", self.onCsvFolderChanged)
        self.ui.remeshMethodComboBox.toolTip = _(REMESH_TOOLTIP)
        # Shown only where the library can register a stem to the metal in the CT.
        self.ui.registerButton.visible = self.logic.registrationAvailable()
        self.ui.registerButton.connect("clicked(bool)", self.onRegisterButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.ctVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.ctVolume = firstVolumeNode

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._shownClasses = None
        if self._parameterNode:
            # Widgets carry a "SlicerParameterName" property naming their parameter.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        reason = self.logic.applyRefusal(p, self._running)
        self.ui.applyButton.toolTip = reason or _("Map HU onto the implant surface")
        self.ui.applyButton.enabled = not reason
        self.ui.registerButton.enabled = bool(p and p.ctVolume and p.implantModel) and not self._running
        if p:
            folder = p.csvFolder or ""
            if self.ui.csvFolderPathLineEdit.currentPath != folder:
                self.ui.csvFolderPathLineEdit.currentPath = folder
            self._showClassTable()
            hasResult = bool(p.outputModel and p.outputModel.GetPolyData() and p.outputModel.GetPolyData().GetPointData().GetArray("gruen_zone"))
            for button in (self.ui.colorByHuButton, self.ui.colorByZoneButton, self.ui.colorByClassButton):
                button.enabled = hasResult

    def _showClassTable(self) -> None:
        """Fill the class table from the preset, or from the custom bands."""
        p = self._parameterNode
        shown = (p.classesPreset, p.customClasses)
        if shown == self._shownClasses or self._updatingClassTable:
            return
        spec = p.customClasses if p.classesPreset == "custom" else p.classesPreset
        try:
            from ImplantBoneContactLib.mrml import class_rows

            rows = class_rows(spec) if spec else []
        except Exception as exc:  # the library is not installed yet, or a bad custom text
            logging.info(f"ImplantBoneContact: cannot show the class table: {exc}")
            return
        self._shownClasses = shown
        table = self.ui.classTableWidget
        self._updatingClassTable = True
        try:
            table.setRowCount(len(rows))
            for r, row in enumerate(rows):
                for c, text in enumerate(row):
                    table.setItem(r, c, qt.QTableWidgetItem(text))
        finally:
            self._updatingClassTable = False

    def _classTableRows(self) -> list:
        table = self.ui.classTableWidget
        rows = []
        for r in range(table.rowCount):
            rows.append([table.item(r, c).text() if table.item(r, c) else "" for c in range(3)])
        return rows

    def onClassTableEdited(self, item=None) -> None:
        """An edited table makes the classes custom (when the bands are valid)."""
        if self._updatingClassTable or not self._parameterNode:
            return
        from ImplantBoneContactLib.errors import InputError
        from ImplantBoneContactLib.mrml import classes_from_rows

        try:
            spec = classes_from_rows(self._classTableRows())
        except InputError as exc:
            self.ui.classStatusLabel.text = str(exc)
            return
        self.ui.classStatusLabel.text = ""
        if spec:
            self._updatingClassTable = True
            try:
                with slicer.util.NodeModify(self._parameterNode):
                    self._parameterNode.customClasses = spec
                    self._parameterNode.classesPreset = "custom"
            finally:
                self._updatingClassTable = False
            self._shownClasses = ("custom", spec)

    def onAddClass(self) -> None:
        table = self.ui.classTableWidget
        self._updatingClassTable = True
        try:
            table.insertRow(table.rowCount)
        finally:
            self._updatingClassTable = False

    def onRemoveClass(self) -> None:
        table = self.ui.classTableWidget
        row = table.currentRow() if table.currentRow() >= 0 else table.rowCount - 1
        if row >= 0:
            table.removeRow(row)
            self.onClassTableEdited()

    def onCsvFolderChanged(self, path: str) -> None:
        if self._parameterNode is not None and self._parameterNode.csvFolder != path:
            self._parameterNode.csvFolder = path

    def onColorBy(self, coloring: str) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to change the colouring."), waitCursor=True):
            self.logic.setColoring(self._parameterNode.outputModel, coloring)

    def onApplyButton(self) -> None:
        """Check the inputs, then run the analysis behind a modal progress dialog.

        Nothing is created before the inputs are checked; output nodes created for a
        run that fails or is cancelled are removed again. Errors are shown in a message box.
        """
        p = self._parameterNode
        if self._running or p is None:
            return
        self._setRunning(True)
        createdNodes = []
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to compute the implant-bone contact."), waitCursor=True):
                csvFolder = self.logic.checkInputs(p.ctVolume, p.implantModel, p, p.outputModel, p.saveCsv, p.csvFolder)
                if not p.outputModel:
                    p.outputModel = slicer.mrmlScene.AddNewNodeByClass(
                        "vtkMRMLModelNode", slicer.mrmlScene.GenerateUniqueName(f"{p.implantModel.GetName()} contact"))
                    createdNodes.append(p.outputModel)
                if not p.outputTable:
                    p.outputTable = slicer.mrmlScene.AddNewNodeByClass(
                        "vtkMRMLTableNode", slicer.mrmlScene.GenerateUniqueName(f"{p.implantModel.GetName()} zones"))
                    createdNodes.append(p.outputTable)
                # Application-modal: while processEvents() runs, the user cannot press Apply
                # again, change the selectors or close the scene; only Cancel works.
                progress = slicer.util.createProgressDialog(
                    labelText=_("Starting..."), windowTitle=_("Implant Bone Contact"), maximum=100, autoClose=False,
                    windowModality=qt.Qt.ApplicationModal)

                def onProgress(fraction: float, message: str) -> None:
                    if progress.wasCanceled:
                        raise RuntimeError(_("Cancelled by the user."))
                    progress.value = int(100 * fraction)
                    progress.labelText = message
                    slicer.app.processEvents()

                try:
                    self.logic.run(p.ctVolume, p.implantModel, p, outputModelNode=p.outputModel,
                                   outputTableNode=p.outputTable, csvFolder=csvFolder, progressCallback=onProgress)
                finally:
                    progress.close()
                createdNodes = []  # the run filled them: they are results now
                self._showResult()
        finally:
            for node in createdNodes:
                if p.outputModel is node:
                    p.outputModel = None
                if p.outputTable is node:
                    p.outputTable = None
                slicer.mrmlScene.RemoveNode(node)
            self._setRunning(False)

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self._onParameterNodeModified()

    def _showResult(self) -> None:
        p = self._parameterNode
        result = self.logic.lastResult
        self.ui.resultsTableView.setMRMLTableNode(p.outputTable)
        lines = list(result.warnings)
        ctKind = self.logic.ctKindText(result)
        if ctKind:
            lines.insert(0, ctKind)
        if self.logic.lastSavedFolder:
            lines.append(_("Saved to {folder}").format(folder=self.logic.lastSavedFolder))
        self.ui.warningsLabel.text = "\n".join(lines)
        if p.implantModel.GetDisplayNode():
            p.implantModel.GetDisplayNode().SetVisibility(False)  # the coloured copy replaces it in the views
        self._onParameterNodeModified()

    def onRegisterButton(self) -> None:
        """Register the implant model to the metal in the CT; the new transform can be adjusted with its handles."""
        p = self._parameterNode
        if self._running or p is None:
            return
        self._setRunning(True)
        try:
            with slicer.util.tryWithErrorDisplay(_("Failed to register the stem to the CT."), waitCursor=True):
                transformNode, registration = self.logic.registerStem(p.ctVolume, p.implantModel)
                self.ui.warningsLabel.text = _("Registered: {verdict} (RMS {rms:.2f} mm, {inside:.0%} of the stem inside the metal). "
                                               "Adjust '{name}' with its handles if needed.").format(
                    verdict=registration.verdict, rms=registration.rms_mm, inside=registration.inside_fraction,
                    name=transformNode.GetName())
        finally:
            self._setRunning(False)


#
# ImplantBoneContactLogic
#


class ImplantBoneContactLogic(ScriptedLoadableModuleLogic):
    """Computation without the panel: usable from the Python console and batch scripts.

    ``run(ctVolumeNode, modelNode, parameters)`` returns the per-vertex and per-zone
    tables (pandas) and fills the output model and table nodes. The last full
    result (with frame, warnings, metadata) is kept in ``lastResult``.

    Attributes:
        interactive: False in batch: never open a dialog (missing packages are an error
            unless ``installMissingPackages``).
        installMissingPackages: install missing packages without asking (batch option).
        useProbeVolumeWithModel: probe with the CLI (False: library sampler everywhere).
        useSurfaceToolbox: remesh with Surface Toolbox (False: the library's identical remesh).
    """

    def __init__(self, interactive: bool = True) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.interactive = interactive
        self.installMissingPackages = interactive
        self.useProbeVolumeWithModel = True
        self.useSurfaceToolbox = True
        self.lastResult = None
        self.lastSavedFolder = None
        self.lastSampler = None
        self._progress = None
        self._lastFraction = 0.0
        #: Seconds between two looks at a running Probe Volume With Model CLI.
        self.pollInterval = 0.1
        #: Seconds to wait for a cancelled CLI to stop before its node is removed.
        self.cancelTimeout = 10.0

    def getParameterNode(self):
        return ImplantBoneContactParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------ packages
    @staticmethod
    def _testingEnabled() -> bool:
        app = getattr(slicer, "app", None)
        testing = getattr(app, "testingEnabled", None)
        return bool(testing()) if callable(testing) else False

    def ensureDependencies(self, remesh: bool = False, pictures: bool = False) -> None:
        """Install what the library needs, asking first (never at import time).

        The installed versions are checked (``importlib.metadata``), not only the
        presence. Uses ``slicer.packaging.pip_ensure`` where this Slicer has it (5.12+),
        else ``confirmOkCancelDisplay`` + ``slicer.util.pip_install`` (5.8, 5.10). In
        batch (``interactive=False``) no dialog opens: not even pip's progress dialog.

        Args:
            remesh: also pyacvd (the ACVD remesh of Surface Toolbox and of the library).
            pictures: also matplotlib.

        Raises:
            MissingPackagesError: a package is missing or too old and may not be installed
                now (testing mode, which never changes Slicer's Python; batch without
                permission; the user declined), or the installation did not provide it.
            RuntimeError: Slicer's numpy is too old (it cannot be replaced from here).
        """
        from ImplantBoneContactLib.dependencies import describe_unmet, unmet_requirements

        if unmet_requirements([NUMPY_REQUIREMENT]):
            raise RuntimeError(f"ImplantBoneContact needs {NUMPY_REQUIREMENT} (this Slicer has numpy {np.__version__}): "
                               "use Slicer 5.8 or later")
        needed = list(REQUIREMENTS.values())
        if remesh:
            needed += list(REMESH_REQUIREMENTS.values())
        if pictures:
            needed += list(PICTURE_REQUIREMENTS.values())
        unmet = unmet_requirements(needed)
        if not unmet:
            return
        missing = [req for req, _have in unmet]
        if self._testingEnabled():
            raise MissingPackagesError(
                "testing mode does not install Python packages, and these are missing or too old: " + describe_unmet(unmet), unmet)
        if not self.installMissingPackages:
            raise MissingPackagesError(
                "missing Python packages: " + describe_unmet(unmet)
                + ". Install them once from Slicer's Python console with slicer.util.pip_install("
                + repr(" ".join(missing)) + "), or rerun the batch script with --install-dependencies.", unmet)
        try:
            # import_module, not "import slicer.packaging": that would make "slicer" a local name here.
            pipEnsure = getattr(importlib.import_module("slicer.packaging"), "pip_ensure", None)
        except ImportError:
            pipEnsure = None
        if pipEnsure is not None:
            options = {"requester": "ImplantBoneContact", "prompt_install": self.interactive, "prompt_restart": self.interactive}
            try:
                accepted = inspect.signature(pipEnsure).parameters
            except (TypeError, ValueError):
                accepted = {}
            if "show_progress" in accepted:
                options["show_progress"] = self.interactive  # batch: no progress dialog either
            if "skip_in_testing" in accepted:
                options["skip_in_testing"] = False  # testing mode was handled above
            pipEnsure(missing, **options)
        else:
            if self.interactive and not slicer.util.confirmOkCancelDisplay(
                    _("Implant Bone Contact needs these Python packages: {packages}. Install them now?").format(
                        packages=describe_unmet(unmet))):
                raise MissingPackagesError("installation of " + ", ".join(missing) + " was declined", unmet)
            slicer.util.pip_install(" ".join(missing))
        importlib.invalidate_caches()
        still = unmet_requirements(needed)
        if still:
            raise MissingPackagesError("these Python packages could not be installed: " + describe_unmet(still)
                                       + " (if an older version was already loaded, restart Slicer)", still)

    # ------------------------------------------------------------------ checks
    @staticmethod
    def applyRefusal(parameterNode, running: bool = False) -> str:
        """Why the panel's Apply must stay disabled ("" when it may run)."""
        from ImplantBoneContactLib import mrml

        p = parameterNode
        if running:
            return _("A run is in progress")
        if p is None or not p.ctVolume or not p.implantModel:
            return _("Select the CT volume and the implant model")
        if mrml.same_node(p.implantModel, p.outputModel):
            return _("The output model is the implant model: choose another output model (the run would replace the implant)")
        return ""

    def checkInputs(self, ctVolumeNode, modelNode, parameters=None, outputModelNode=None, saveCsv: bool = False, csvFolder=None):
        """Everything that can be checked before a run creates or changes a node.

        Installs the packages the parameters need (asking first), converts and checks
        the parameters, refuses an output model that is the implant model and checks the
        CSV folder.

        Returns:
            the CSV folder to save into, or ``None``.

        Raises:
            ValueError: no CT or no model. ``InputError``: a refused value (with the reason).
            MissingPackagesError: see :meth:`ensureDependencies`.
        """
        if ctVolumeNode is None or modelNode is None:
            raise ValueError("a CT volume node and an implant model node are needed")
        from ImplantBoneContactLib import mrml

        mrml.check_output_nodes(modelNode, outputModelNode)
        folder = mrml.csv_folder_from_panel(saveCsv, csvFolder)
        self.ensureDependencies(remesh=False)
        params = mrml.to_analysis_parameters(parameters)
        self.ensureDependencies(remesh=params.remesh == "acvd", pictures=False)
        return folder

    # ------------------------------------------------------------------ analysis
    def run(self, ctVolumeNode, modelNode, parameters=None, outputModelNode=None, outputTableNode=None,
            csvFolder=None, progressCallback=None, inputs=None, pictures: bool = False):
        """Analyse a CT volume node and an implant model node.

        Args:
            ctVolumeNode: the CT (scalar volume node, HU). A linear parent transform is applied.
            modelNode: the implant surface; its parent transforms (the registration) are applied
                to a copy, the node itself is not changed.
            parameters: ``ImplantBoneContactLib.AnalysisParameters``, a dict of its fields,
                a dict of panel values, or the module's parameter node (``None``: defaults).
            outputModelNode: filled with the analysed surface (point arrays ``hu``, ``gruen_zone``,
                ``contact_class_id``, ...) shown as a HU heat map with a colour legend.
            outputTableNode: filled with the per-zone table.
            csvFolder: if given, the tables, surface and parameters are saved in a new subfolder.
            progressCallback: ``progressCallback(fraction, message)``.
            inputs: extra descriptions of the inputs for ``parameters.json``.
            pictures: also save the pictures (needs matplotlib) with the CSV files.

        Returns:
            ``(vertices, zones)``: pandas DataFrames, one row per vertex and one per Gruen zone.
        """
        if ctVolumeNode is None or modelNode is None:
            raise ValueError("a CT volume node and an implant model node are needed")
        from ImplantBoneContactLib import mrml

        # Before anything is installed, changed or computed: the output must not be the implant.
        mrml.check_output_nodes(modelNode, outputModelNode)
        self.ensureDependencies(remesh=False)
        params = mrml.to_analysis_parameters(parameters)
        self.ensureDependencies(remesh=params.remesh == "acvd", pictures=bool(csvFolder) and pictures)

        startTime = time.time()
        self._lastFraction = 0.0
        self._progress = None
        if progressCallback is not None:
            userCallback = progressCallback

            def reporting(fraction: float, message: str) -> None:
                self._lastFraction = fraction
                userCallback(fraction, message)

            self._progress = reporting
        remesher = self._surfaceToolboxRemesher() if params.remesh == "acvd" and self.useSurfaceToolbox else None
        sampler = self._sampler(ctVolumeNode)
        extra = dict(inputs or {})
        if remesher is not None:
            remeshedBy = "Surface Toolbox"
        else:
            remeshedBy = {"acvd": "ImplantBoneContactLib (same ACVD algorithm)", "fast": "ImplantBoneContactLib fast remesh",
                          "none": "none"}.get(params.remesh, params.remesh)
        extra["slicer"] = {"version": slicer.app.applicationVersion, "remesh": remeshedBy}
        self.lastSampler = None
        try:
            result = mrml.analyze_nodes(ctVolumeNode, modelNode, params, outputModelNode, outputTableNode,
                                        progress=self._progress, remesher=remesher, sampler=sampler, inputs=extra)
        finally:
            self._progress = None
        if (result.postop or {}).get("metal_aware_sampling"):
            # The metal-aware walk samples along each normal itself: the sampler above was not called.
            from ImplantBoneContactLib.postop import METAL_AWARE_SAMPLER

            self.lastSampler = METAL_AWARE_SAMPLER
        result.inputs["slicer"]["sampling"] = self.lastSampler
        if outputModelNode is not None and outputModelNode.GetScene() is not None:
            # The stem's outline on the CT slices, where the registration is checked.
            mrml.show_outline_in_slice_views(outputModelNode)
        for warning in result.warnings:
            logging.warning(f"ImplantBoneContact: {warning}")
        self.lastResult = result
        self.lastSavedFolder = self.saveResult(result, csvFolder, modelNode.GetName(), pictures) if csvFolder else None
        logging.info(f"ImplantBoneContact: done in {time.time() - startTime:.1f} s")
        return result.vertices, result.zones

    @staticmethod
    def saveResult(result, folder, name: str = "implant", pictures: bool = False) -> str:
        """Save a result in a new subfolder of ``folder`` (never replacing anything); return its path."""
        from ImplantBoneContactLib import save_result

        safe = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name) or "implant"
        target = Path(folder) / f"ImplantBoneContact-{safe}-{time.strftime('%Y%m%d-%H%M%S')}"
        save_result(result, target, overwrite=False, pictures=pictures)
        return str(target)

    def setColoring(self, modelNode, coloring: str) -> None:
        """Colour a result model by ``"hu"``, ``"zone"`` or ``"class"`` (with a colour legend)."""
        from ImplantBoneContactLib import mrml

        if modelNode is None:
            raise ValueError("no output model: run the analysis first")
        mrml.set_coloring(modelNode, coloring)

    # ------------------------------------------------------------------ remeshing
    def _surfaceToolboxRemesher(self):
        """Surface Toolbox's ``remesh`` as a library remesher, or None where Surface Toolbox is missing."""
        try:
            from SurfaceToolbox import SurfaceToolboxLogic
        except ImportError:
            logging.warning("ImplantBoneContact: Surface Toolbox is not available; remeshing with the library "
                            "(the same pyacvd algorithm and version)")
            return None

        def remesher(surface, points: int, subdivide: int):
            self._report(f"remeshing to {points} points with Surface Toolbox (subdivide {subdivide}; "
                         "Slicer does not respond until it is done)")
            inputModel = slicer.vtkMRMLModelNode()
            inputModel.SetAndObservePolyData(surface)
            outputModel = slicer.vtkMRMLModelNode()
            try:
                SurfaceToolboxLogic.remesh(inputModel, outputModel, subdivide=subdivide, clusters=points)
            except Exception as exc:
                from ImplantBoneContactLib.errors import InputError

                raise InputError(f"remeshing to {points} points (subdivide {subdivide}) failed: {exc}; "
                                 "raise the subdivision or lower the number of points") from exc
            out = outputModel.GetPolyData()
            if out is None or out.GetNumberOfPoints() == 0:
                # Surface Toolbox returns silently when pyacvd is missing and its installation was declined.
                raise RuntimeError("Surface Toolbox produced no remeshed surface (is pyacvd installed?)")
            self._report(f"remeshed: {out.GetNumberOfPoints()} points")
            return out

        return remesher

    def _report(self, message: str) -> None:
        """A progress message at the current fraction (raises when the user cancelled)."""
        if self._progress is not None:
            self._progress(self._lastFraction, message)

    # ------------------------------------------------------------------ sampling
    def _sampler(self, ctVolumeNode):
        """A library sampler that probes with Probe Volume With Model where it can."""
        from ImplantBoneContactLib.sampling import SurfaceSamples, sample_surface

        def sampler(volume, points, normals, method, offsets, aggregate):
            offsets = np.atleast_1d(np.asarray(offsets, dtype=float))
            onSurface = offsets.size == 1 and offsets[0] == 0.0
            cli = getattr(slicer.modules, "probevolumewithmodel", None)
            if method == "trilinear" and onSurface and cli is not None and self.useProbeVolumeWithModel:
                hu, inside = self.probeVolumeWithModel(ctVolumeNode, points)
                self.lastSampler = "Probe Volume With Model (trilinear, rounded to the CT's voxel type)"
                return SurfaceSamples(hu=hu, inside_ct=inside, offsets_mm=offsets, profile_hu=hu[:, None].copy())
            # The CLI probes only the points it is given, trilinearly: offsets, profiles and
            # nearest-voxel sampling use the library on the voxel array and IJK-to-RAS matrix.
            self.lastSampler = f"ImplantBoneContactLib ({method}, offsets {offsets.tolist()} mm)"
            return sample_surface(volume, points, normals, method, offsets, aggregate)

        return sampler

    def probeVolumeWithModel(self, ctVolumeNode, pointsWorld):
        """HU at world RAS points (mm) with the Probe Volume With Model CLI.

        The CLI writes the volume with its own geometry and ignores parent
        transforms, so the points are moved into the volume's coordinates first.
        Points the probe cannot sample (``vtkValidPointMask`` = 0) get NaN, not 0.

        Returns:
            ``(hu, inside)``: float64 HU (in the CT's voxel type, i.e. rounded for an
            integer CT) and a boolean array.
        """
        from ImplantBoneContactLib import mrml

        scene = slicer.mrmlScene
        local = mrml.points_world_to_node(pointsWorld, ctVolumeNode)
        inputModel = scene.AddNewNodeByClass("vtkMRMLModelNode", scene.GenerateUniqueName("ImplantBoneContact probe input"))
        outputModel = scene.AddNewNodeByClass("vtkMRMLModelNode", scene.GenerateUniqueName("ImplantBoneContact probe output"))
        inputModel.SetAndObservePolyData(mrml.probe_input_polydata(local))
        cliNode = None
        try:
            cliParameters = {
                "InputVolume": ctVolumeNode.GetID(),
                "InputModel": inputModel.GetID(),
                "OutputModel": outputModel.GetID(),
                "OutputArrayName": mrml.PROBE_ARRAY_NAME,
            }
            cliNode = self._startCli(slicer.modules.probevolumewithmodel, cliParameters)
            if cliNode is None:
                raise RuntimeError("Probe Volume With Model could not be started")
            self._waitForCli(cliNode, f"probing {local.shape[0]} points")
            if cliNode.GetStatus() != cliNode.Completed:
                errorText = cliNode.GetErrorText().strip() or "no error text"
                raise RuntimeError(f"Probe Volume With Model failed ({cliNode.GetStatusString()}): {errorText}")
            return mrml.samples_from_probe_output(outputModel.GetPolyData(), local.shape[0])
        finally:
            for node in (cliNode, inputModel, outputModel):
                if node is not None:
                    scene.RemoveNode(node)


    def _startCli(self, module, parameters: dict):
        """Start a CLI module: asynchronously when a progress callback is set (see :meth:`_waitForCli`), else synchronously."""
        run = getattr(slicer.cli, "run", None)
        if self._progress is None or run is None:
            return slicer.cli.runSync(module, None, parameters, update_display=False)
        return run(module, None, parameters, wait_for_completion=False, update_display=False)

    def _waitForCli(self, cliNode, what: str) -> None:
        """While a CLI runs, report its progress and let the user cancel (the CLI is cancelled then)."""
        started = time.time()
        try:
            while cliNode.IsBusy():
                percent = cliNode.GetProgress()
                detail = f" {percent}%" if 0 < percent <= 100 else ""
                self._report(f"{what} with Probe Volume With Model{detail} ({time.time() - started:.0f} s)")
                slicer.app.processEvents()
                time.sleep(self.pollInterval)
        except BaseException:
            cliNode.Cancel()
            # Let the CLI process stop before its node is removed.
            deadline = time.time() + self.cancelTimeout
            while cliNode.IsBusy() and time.time() < deadline:
                slicer.app.processEvents()
                time.sleep(self.pollInterval)
            raise

    # ------------------------------------------------------------------ post-operative CT and registration
    @staticmethod
    def registrationAvailable() -> bool:
        """Whether this version of the library can register a stem to the metal in a CT."""
        try:
            return importlib.util.find_spec("ImplantBoneContactLib.register") is not None
        except (ImportError, ValueError):
            return False

    @staticmethod
    def ctKindText(result) -> str:
        """One line on the kind of CT the library detected ("" where this library does not tell)."""
        kind = getattr(result, "ct_kind", None)
        if not kind:
            return ""
        kind = str(kind)
        if "post" in kind.lower():
            return _("Post-operative CT (metal of the implant found): metal-aware sampling was used")
        return _("CT kind: {kind}").format(kind=kind.replace("_", " "))

    def registerStem(self, ctVolumeNode, modelNode, name: str = "Stem registration"):
        """Register the implant model to the metal in the CT (``ImplantBoneContactLib.register``).

        A new linear transform node moves the model where the registration puts it,
        with interaction handles shown so that the user can adjust it.

        Returns:
            ``(transform node, registration result)``.

        Raises:
            RuntimeError: the library cannot register here, or the registration failed
                (its verdict in the message); nothing is changed then.
        """
        if ctVolumeNode is None or modelNode is None:
            raise ValueError("a CT volume node and an implant model node are needed")
        if not self.registrationAvailable():
            raise RuntimeError("this version of ImplantBoneContactLib cannot register a stem (no 'register' module)")
        self.ensureDependencies(remesh=False)
        from ImplantBoneContactLib import mrml
        from ImplantBoneContactLib.register import register_stem

        registration = register_stem(mrml.volume_from_node(ctVolumeNode), mrml.polydata_from_model_node(modelNode))
        if not registration.ok:
            raise RuntimeError(f"the stem could not be registered to the metal: {registration.verdict} "
                               f"(RMS {registration.rms_mm:.2f} mm); place it by hand with a transform")
        node = mrml.apply_registration(slicer.mrmlScene, modelNode, registration.matrix_ras, name)
        return node, registration


#
# ImplantBoneContactTest
#


class ImplantBoneContactTest(ScriptedLoadableModuleTest):
    """Runs the module logic in Slicer on the femur phantom and checks its ground truth.

    Passes offline in a clean Slicer: testing mode never installs packages, so a test
    that needs one that is missing (pandas for the analysis, pyacvd for Surface
    Toolbox's remesh) is skipped with the reason; every other test runs.
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.skipped = []
        tests = (
            self.test_DependencyCheckNeverInstallsInTesting,
            self.test_OutputModelMustNotBeTheImplant,
            self.test_ProbeVolumeWithModelMatchesLibrarySampler,
            self.test_RegistrationBecomesAnAdjustableTransform,
            self.test_PhantomUnderRegistration,
            self.test_OffsetUsesLibrarySampler,
            self.test_ParameterNodeToLibrary,
        )
        for test in tests:
            self.setUp()
            try:
                test()
            except unittest.SkipTest as exc:
                self.skipped.append((test.__name__, str(exc)))
                logging.warning(f"ImplantBoneContact self-test: {test.__name__} skipped: {exc}")
                self.delayDisplay(f"{test.__name__} skipped: {exc}")
        if len(self.skipped) == len(tests):
            raise AssertionError("every self-test was skipped")

    def _requireLibrary(self, remesh: bool = False) -> ImplantBoneContactLogic:
        """A logic whose packages are installed; skip the test (with the reason) when they are not."""
        logic = ImplantBoneContactLogic()
        try:
            logic.ensureDependencies(remesh=remesh)
        except MissingPackagesError as exc:
            raise unittest.SkipTest(str(exc)) from exc
        return logic

    def test_DependencyCheckNeverInstallsInTesting(self):
        # Never asks, also under "Reload and Test" (not testing mode): a logic that may not install.
        logic = ImplantBoneContactLogic(interactive=False)
        logic.installMissingPackages = False
        original = dict(REQUIREMENTS)
        REQUIREMENTS["ibc_absent_package"] = "implantbonecontact-absent-test-package>=1.0"
        try:
            with self.assertRaises(MissingPackagesError) as caught:
                logic.ensureDependencies(remesh=False)
        finally:
            REQUIREMENTS.clear()
            REQUIREMENTS.update(original)
        self.assertIn(("implantbonecontact-absent-test-package>=1.0", None), caught.exception.unmet)
        from ImplantBoneContactLib.dependencies import unmet_requirements

        # numpy is Slicer's own: the version check reads it, and an impossible version is unmet.
        self.assertEqual(unmet_requirements([NUMPY_REQUIREMENT]), [])
        self.assertEqual(len(unmet_requirements(["numpy>=999"])), 1)
        self.delayDisplay("Dependency check test passed")

    def test_OutputModelMustNotBeTheImplant(self):
        from ImplantBoneContactLib import FemurPhantom, PhantomSpec, mrml
        from ImplantBoneContactLib.errors import InputError

        phantom = FemurPhantom(PhantomSpec(voxel_mm=2.0))
        ctNode = mrml.volume_node_from_volume(slicer.mrmlScene, phantom.make_ct(), "PhantomCT")
        modelNode = mrml.model_node_from_polydata(slicer.mrmlScene, phantom.make_stem_surface(), "Stem")
        transformNode = mrml.linear_transform_node(slicer.mrmlScene, np.eye(4), "Registration")
        modelNode.SetAndObserveTransformNodeID(transformNode.GetID())
        surface = modelNode.GetPolyData()
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        logic = ImplantBoneContactLogic()
        with self.assertRaises(InputError):
            logic.run(ctNode, modelNode, None, outputModelNode=modelNode)
        # Nothing changed: the implant keeps its surface and its registration, no node was added.
        self.assertIs(modelNode.GetPolyData(), surface)
        self.assertEqual(modelNode.GetTransformNodeID(), transformNode.GetID())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        parameterNode = logic.getParameterNode()
        parameterNode.ctVolume, parameterNode.implantModel, parameterNode.outputModel = ctNode, modelNode, modelNode
        self.assertTrue(logic.applyRefusal(parameterNode))
        parameterNode.outputModel = None
        self.assertEqual(logic.applyRefusal(parameterNode), "")
        self.delayDisplay("Output model test passed")

    def test_ProbeVolumeWithModelMatchesLibrarySampler(self):
        if getattr(slicer.modules, "probevolumewithmodel", None) is None:
            raise unittest.SkipTest("the Probe Volume With Model module is not loaded")
        from ImplantBoneContactLib import FemurPhantom, PhantomSpec, mrml
        from ImplantBoneContactLib.mesh import points as meshPoints
        from ImplantBoneContactLib.sampling import sample

        phantom = FemurPhantom(PhantomSpec(voxel_mm=1.5))
        ct = phantom.make_ct()
        ctNode = mrml.volume_node_from_volume(slicer.mrmlScene, ct, "PhantomCT")
        pts = meshPoints(phantom.make_stem_surface())[::7]
        logic = ImplantBoneContactLogic()
        hu, inside = logic.probeVolumeWithModel(ctNode, pts)
        libraryHu, libraryInside = sample(ct, pts, "trilinear")
        self.assertTrue(np.array_equal(inside, libraryInside))
        # The CLI rounds to the CT's int16 voxel type: within 0.5 HU of the library's value.
        self.assertLessEqual(float(np.nanmax(np.abs(hu - libraryHu))), 0.5 + 1e-6)
        self.delayDisplay("Probe Volume With Model test passed")

    def test_RegistrationBecomesAnAdjustableTransform(self):
        from ImplantBoneContactLib import mrml

        modelNode = mrml.model_node_from_polydata(slicer.mrmlScene, _unitCube(), "Stem")
        old = np.eye(4)
        old[:3, 3] = [5.0, 0.0, 0.0]
        modelNode.SetAndObserveTransformNodeID(mrml.linear_transform_node(slicer.mrmlScene, old, "Manual").GetID())
        shift = np.eye(4)
        shift[:3, 3] = [0.0, 2.0, -3.0]
        node = mrml.apply_registration(slicer.mrmlScene, modelNode, shift)
        self.assertEqual(modelNode.GetTransformNodeID(), node.GetID())
        self.assertTrue(node.GetDisplayNode().GetEditorVisibility())
        self.assertTrue(np.allclose(mrml.matrix_to_world(modelNode)[:3, 3], [5.0, 2.0, -3.0]))
        self.delayDisplay("Registration transform test passed")

    def _phantomScene(self):
        """Phantom CT node, and the stem as a model node under a registration transform."""
        from ImplantBoneContactLib import FemurPhantom, PhantomSpec, mrml
        from ImplantBoneContactLib.mesh import transform_polydata

        phantom = FemurPhantom(PhantomSpec(voxel_mm=1.0))
        ct = phantom.make_ct()
        stem = phantom.make_stem_surface()
        ctNode = mrml.volume_node_from_volume(slicer.mrmlScene, ct, "PhantomCT")
        ctNode.CreateDefaultDisplayNodes()
        # The model file is in CAD coordinates; the transform moves it into the CT, as a registration does.
        c, s = np.cos(np.radians(30.0)), np.sin(np.radians(30.0))
        registration = np.array([[c, -s, 0, 15.0], [s, c, 0, -20.0], [0, 0, 1, 35.0], [0, 0, 0, 1.0]])
        modelNode = mrml.model_node_from_polydata(slicer.mrmlScene, transform_polydata(stem, np.linalg.inv(registration)), "Stem")
        modelNode.CreateDefaultDisplayNodes()
        transformNode = mrml.linear_transform_node(slicer.mrmlScene, registration, "Registration")
        modelNode.SetAndObserveTransformNodeID(transformNode.GetID())
        return phantom, ct, ctNode, modelNode

    def test_PhantomUnderRegistration(self):
        self.delayDisplay("Building the femur phantom")
        logic = self._requireLibrary()
        from ImplantBoneContactLib import AnalysisParameters
        from ImplantBoneContactLib.dependencies import unmet_requirements
        from ImplantBoneContactLib.frame import assign_zones
        from ImplantBoneContactLib.mesh import triangles
        from ImplantBoneContactLib.phantom import CANCELLOUS, CORTICAL
        from ImplantBoneContactLib.sampling import sample

        phantom, ct, ctNode, modelNode = self._phantomScene()
        # The ACVD remesh where pyacvd is installed (testing mode does not install it), else the fast one.
        remesh = "acvd" if not unmet_requirements(REMESH_REQUIREMENTS.values()) else "fast"
        params = AnalysisParameters(remesh=remesh, points=4000, **phantom.true_frame().parameter_fields())
        outputModel = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLModelNode", "Stem contact")
        outputTable = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "Stem zones")
        self.delayDisplay("Running the module logic")
        vertices, zones = logic.run(ctNode, modelNode, params, outputModelNode=outputModel, outputTableNode=outputTable)

        pts = vertices[["x_mm", "y_mm", "z_mm"]].to_numpy()
        # The output model is in world coordinates, vertex for vertex.
        outPts = numpy_support.vtk_to_numpy(outputModel.GetPolyData().GetPoints().GetData())
        self.assertLess(float(np.abs(outPts - pts).max()), 1e-4)
        self.assertIsNone(outputModel.GetParentTransformNode())
        # Probe Volume With Model did the sampling: it agrees with the library's trilinear
        # value to within its rounding to the int16 voxel type (0.5 HU).
        self.assertIn("Probe Volume With Model", logic.lastSampler)
        libraryHu, inside = sample(ct, pts, "trilinear")
        hu = vertices["hu"].to_numpy()
        self.assertTrue(np.array_equal(np.isfinite(hu), inside))
        self.assertLessEqual(float(np.nanmax(np.abs(hu - libraryHu))), 0.5 + 1e-6)
        # Frame: the axis points and the resection plane were given, so they are the true ones; the tip is
        # the remeshed surface's most distal vertex on that axis. The input surface's most distal point is
        # the true tip and a vertex of the remeshed surface lies within one edge of it, so the tip is the true
        # tip moved up the axis by 0 to one mean edge length.
        trueFrame = phantom.true_frame()
        frame = logic.lastResult.frame
        self.assertLess(float(np.degrees(np.arccos(min(1.0, frame.axis @ trueFrame.axis)))), 0.1)
        self.assertTrue(np.allclose(frame.resection_point, trueFrame.resection_point, atol=1e-9))
        self.assertTrue(np.allclose(frame.resection_normal, trueFrame.resection_normal, atol=1e-9))
        faces = triangles(logic.lastResult.surface)
        meanEdge = float(np.linalg.norm(pts[faces] - pts[np.roll(faces, 1, axis=1)], axis=2).mean())
        tipShift = frame.tip - trueFrame.tip
        upTheAxis = -float(tipShift @ trueFrame.axis)
        self.assertTrue(-1e-6 <= upTheAxis <= meanEdge, (upTheAxis, meanEdge))
        self.assertLess(float(np.linalg.norm(tipShift + upTheAxis * trueFrame.axis)), 0.01 * meanEdge)
        # Zones: every vertex is in the zone the frame gives it (the library's rule, without exception).
        self.assertTrue(np.array_equal(vertices["gruen_zone"].to_numpy(), np.asarray(assign_zones(frame, pts)["gruen_zone"])))
        # Contact classes against the tissue truth, away from tissue boundaries: beyond 2.5 blur sigmas
        # plus half a voxel diagonal the CT holds the tissue's HU within 15 HU (the Gaussian tail, int16
        # rounding and the cancellous gradient), far from every class border, so every vertex there has
        # its true class.
        spec = phantom.spec
        below = vertices["gruen_zone"].to_numpy() > 0
        deep = phantom.distance_to_tissue_boundary(pts, 2.5 * spec.blur_sigma_mm + 0.5 * np.sqrt(3.0) * spec.voxel_mm)
        truth = phantom.tissue_at(pts)
        expected = np.where(truth == CORTICAL, "cortical", np.where(truth == CANCELLOUS, "cancellous", "no_bone"))
        sel = below & deep
        self.assertGreater(int(sel.sum()), 500)
        agreement = float(np.mean(vertices["contact_class"].to_numpy()[sel] == expected[sel]))
        self.assertEqual(agreement, 1.0)
        # The table node holds the zone table.
        self.assertEqual(outputTable.GetNumberOfRows(), len(zones))
        self.assertEqual(outputTable.GetColumnUnitLabel("area_mm2"), "mm2")
        logic.setColoring(outputModel, "zone")
        self.assertEqual(outputModel.GetDisplayNode().GetActiveScalarName(), "gruen_zone")
        self.delayDisplay(f"Phantom test passed (agreement {agreement:.3f})")

    def test_OffsetUsesLibrarySampler(self):
        logic = self._requireLibrary()
        from ImplantBoneContactLib import AnalysisParameters

        phantom, ct, ctNode, modelNode = self._phantomScene()
        params = AnalysisParameters(remesh="none", offset_mm=1.0, **phantom.true_frame().parameter_fields())
        vertices, zones = logic.run(ctNode, modelNode, params)
        self.assertIn("ImplantBoneContactLib", logic.lastSampler)
        hu = vertices["hu"].to_numpy()
        # Interpolated values are not rounded on the library path.
        self.assertTrue(np.any(np.abs(hu[np.isfinite(hu)] - np.round(hu[np.isfinite(hu)])) > 1e-3))
        self.delayDisplay("Offset test passed")

    def test_ParameterNodeToLibrary(self):
        logic = self._requireLibrary()
        from ImplantBoneContactLib import AnalysisParameters
        from ImplantBoneContactLib.mrml import to_analysis_parameters

        parameterNode = logic.getParameterNode()
        # The panel's defaults are the library's, but for the remesh: Surface Toolbox's (the library's is the fast one).
        self.assertEqual(to_analysis_parameters(parameterNode), AnalysisParameters(remesh="acvd"))
        parameterNode.useProfile = True
        parameterNode.side = "right"
        params = to_analysis_parameters(parameterNode)
        self.assertEqual(params.profile, "0.5:3.0:0.5")
        self.assertEqual(params.side, "right")
        parameterNode.remesh = True
        parameterNode.remeshMethod = "Fast (library)"
        self.assertEqual(to_analysis_parameters(parameterNode).remesh, "fast")
        parameterNode.remesh = False
        self.assertEqual(to_analysis_parameters(parameterNode).remesh, "none")
        self.delayDisplay("Parameter node test passed")


def _unitCube():
    source = vtk.vtkCubeSource()
    source.Update()
    triangles = vtk.vtkTriangleFilter()
    triangles.SetInputData(source.GetOutput())
    triangles.Update()
    return triangles.GetOutput()
