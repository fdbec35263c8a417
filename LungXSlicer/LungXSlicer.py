"""LungX in 3D Slicer: chest X-ray and CT tasks of lungx_core, run in a worker process, results as nodes.

Console API (no GUI needed)::

    logic = slicer.util.getModuleLogic("LungXSlicer")      # or LungXSlicer.LungXSlicerLogic()
    result = logic.run("cxr-anatomy", volumeNode)           # or "ct-lungs"; device="cpu", fast=True, ...
    result.segmentation, result.table, result.qcFlags, result.measurements
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent
if str(MODULE_DIR) not in sys.path:  # the helper sub-package next to this file
    sys.path.insert(0, str(MODULE_DIR))

from LungXSlicerLib import dependencies, results  # noqa: E402 - needs the path above
from LungXSlicerLib.geometry import as_slicer_array, same_grid  # noqa: E402
from LungXSlicerLib.options import option_field, values_to_send  # noqa: E402
from LungXSlicerLib.process import WorkerProcess, format_status, worker_command  # noqa: E402

TERMINOLOGY_FILE = MODULE_DIR / "Resources" / "Terminology" / "SegmentationCategoryTypeModifier-LungX.term.json"
MINIMUM_TORCH = ">=2.2"

CARDS = "https://github.com/lungx/lungx/blob/main/lungx_core/weights"
HELP_TEXT = f"""
Chest X-ray and chest CT analysis with <a href="https://github.com/lungx/lungx">LungX</a>: pick an input volume
(a radiograph is a one-slice volume; the task follows the input's kind) and a task, press Apply. The model runs in a
separate process: Slicer stays responsive, Apply turns into Cancel, and results come back next to the input (its
study, its transform) as a segmentation (named, coloured segments with SNOMED-CT terminology), image volumes on the
input's grid, a point list or a table of measurements and QC flags.<br><br>
Tasks (each model's card gives its data, accuracy and limits):<ul>
<li><b>Chest X-ray: lungs, heart, clavicles</b>: the five structures, cardiothoracic ratio, areas; films that are not
frontal chest radiographs are refused (<a href="{CARDS}/cxr_anatomy.md">anatomy</a>,
<a href="{CARDS}/cxr_gate.md">input check</a>).</li>
<li><b>Chest CT: right and left lungs, volumes</b>: both lungs and their volumes, shown in 3-D
(<a href="{CARDS}/ct_lungs.md">card</a>).</li>
<li><b>Chest X-ray: suppress bone</b>: the bone image estimated and subtracted, as a new volume
(<a href="{CARDS}/cxr_bone.md">card</a>; it still dims some nodules: see the card).</li>
<li><b>Chest X-ray: remove lung opacity</b>: density taken away inside the opacity, the changed region as a segment
(<a href="{CARDS}/cxr_opacity_removal.md">card</a>).</li>
<li><b>Chest X-ray: synthetic pathological version</b>: a healthy film with inserted opacity, for research
(<a href="{CARDS}/cxr_synthesis.md">card</a>).</li>
<li><b>Chest X-ray: lung nodule candidates</b>: ranked points with size and probability, research only, below the
published detection rates (<a href="{CARDS}/cxr_nodules.md">card</a>).</li></ul>
From the Python console:<br>
<code>result = slicer.util.getModuleLogic("LungXSlicer").run("cxr-anatomy", volumeNode)</code><br>
<code>result.segmentation, result.table, result.qcFlags</code><br>
Options: <code>device="cpu"</code>, <code>fast=True</code> (no QC picture), and each task's own options
(e.g. <code>method="classical"</code> for ct-lungs). The first Apply installs PyTorch (through the PyTorch
extension) and lungx_core, asking first. Not for clinical use.
"""


#
# Module
#


class LungXSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "LungX"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["LungX developers"]
        self.parent.helpText = HELP_TEXT
        self.parent.acknowledgementText = (
            "Models trained by the LungX project on public research datasets (JSRT with SCR masks, COVID-19 radiograph "
            "segmentation sets, NIH ChestX-ray14, dual-energy subtraction pairs, public TCIA chest CTs); each model's "
            f'data, split, metrics and training command are in its <a href="{CARDS}">model card</a>. '
            "Built on MONAI, PyTorch, SimpleITK and 3D Slicer."
        )
        slicer.app.connect("startupCompleted()", loadTerminology)


def loadTerminology() -> str:
    """Our own concepts (e.g. lung opacity) in Slicer's terminology selector; returns the context name."""
    if not hasattr(slicer.modules, "terminologies"):
        return ""
    return slicer.modules.terminologies.logic().LoadTerminologyFromFile(str(TERMINOLOGY_FILE))


def segmentTerminology(segment) -> str:
    """A segment's terminology entry string ("" when it has none), in every Slicer >= 5.10."""
    if hasattr(segment, "GetTerminology"):
        return segment.GetTerminology() or ""
    value = vtk.reference("")  # GetTag(name, value) fills value and returns whether the tag exists
    return str(value) if segment.GetTag(segment.GetTerminologyEntryTagName(), value) else ""


#
# Parameter node
#


@parameterNodeWrapper
class LungXSlicerParameterNode:
    """inputVolume: the radiograph or CT. task: a lungx_core task name (set from the task list, which comes from
    lungx_core). outputSegmentation/outputVolume: reused when set, created otherwise. forceCpu: never the GPU.
    fastMode: skip optional work (the QC picture). taskOptions: each task's options as last set in the panel
    (JSON ``{task: {option: value}}``), so they are saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    task: str = ""
    outputSegmentation: vtkMRMLSegmentationNode
    outputVolume: vtkMRMLScalarVolumeNode
    forceCpu: bool = False
    fastMode: bool = False
    taskOptions: str = ""


#
# Widget
#


class LungXSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._lastInput = None
        self._optionFields = []  # LungXSlicerLib.options.OptionField of the selected task
        self._optionWidgets = {}
        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)

    def setup(self) -> None:
        # No torch, no network here: the generic tests open this widget with no main window.
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LungXSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = LungXSlicerLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.taskComboBox.connect("currentIndexChanged(int)", self.onTaskChanged)
        self.ui.progressBar.hide()
        self._optionsLayout = qt.QFormLayout(self.ui.taskOptionsWidget)
        self._optionsLayout.setContentsMargins(0, 0, 0, 0)
        self.populateTasks()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.cancelRun()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUIFromParameterNode)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelRun()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first and not first.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputVolume = first

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUIFromParameterNode)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._updateGUIFromParameterNode)
            self.selectTask(self._parameterNode.task)
            self._checkCanApply()

    def _updateGUIFromParameterNode(self, caller=None, event=None) -> None:
        """The task and its options follow the parameter node (e.g. a scene was loaded); then Apply's state."""
        p = self._parameterNode
        combo = self.ui.taskComboBox
        if p.task and combo.itemData(combo.currentIndex) != p.task and combo.findData(p.task) >= 0:
            self.selectTask(p.task)
        elif (saved := self._savedOptions().get(p.task, {})) != self._optionValues():
            self._showOptions(saved)
        self._checkCanApply()

    # Tasks come from lungx_core's registry: a task added there appears here without GUI changes.
    def populateTasks(self) -> None:
        combo = self.ui.taskComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        tasks = self.logic.availableTasks()
        for task in tasks:
            combo.addItem(f"{task['title']} ({task['modality']})", task["name"])
        if not tasks:
            combo.addItem("lungx_core is installed on first Apply", "")
        combo.blockSignals(wasBlocked)
        if self._parameterNode:
            self.selectTask(self._parameterNode.task)

    def selectTask(self, name: str) -> None:
        combo = self.ui.taskComboBox
        index = combo.findData(name) if name else -1
        combo.setCurrentIndex(index if index >= 0 else 0)
        self.onTaskChanged(combo.currentIndex)

    def onTaskChanged(self, index: int) -> None:
        name = self.ui.taskComboBox.itemData(index) or ""
        info = self.logic.taskInfo(name) if name else None
        if info:
            outputs = {"segmentation": "a segmentation", "markups": "a point list"}.get(info["output_kind"],
                                                                                     "an image volume")
            self.ui.taskDescriptionLabel.text = f"Input: {info['modality']}. Output: {outputs} and a results table."
        else:
            self.ui.taskDescriptionLabel.text = ""
        self._buildOptionWidgets(info["options"] if info else [])
        if self._parameterNode:
            self._showOptions(self._savedOptions().get(name, {}))
            if self._parameterNode.task != name:
                self._parameterNode.task = name

    def _buildOptionWidgets(self, specs: list[dict]) -> None:
        """One row per option the task registers, with its default and its help as tooltip."""
        while self._optionsLayout.rowCount():
            self._optionsLayout.removeRow(0)
        self._optionFields = [option_field(spec) for spec in specs]
        self._optionWidgets = {}
        for f in self._optionFields:
            if f.widget == "QComboBox":
                widget = qt.QComboBox()
                widget.addItems(list(f.choices))
                widget.setCurrentText(f.default)
            elif f.widget == "QSpinBox":
                widget = qt.QSpinBox()
                widget.setRange(int(f.low), int(f.high))
                widget.setValue(int(f.default))
            elif f.widget == "QDoubleSpinBox":
                widget = qt.QDoubleSpinBox()
                widget.setDecimals(3)
                widget.setSingleStep(0.05)
                widget.setRange(f.low if f.low is not None else -1e9, f.high if f.high is not None else 1e9)
                widget.setValue(float(f.default))
            else:
                widget = qt.QLineEdit()
                widget.setText(str(f.default))
                widget.setPlaceholderText("default")
            widget.setToolTip(f.tooltip)
            self._optionsLayout.addRow(f.label, widget)
            self._optionWidgets[f.name] = widget
        for widget in self._optionWidgets.values():  # connected once all are there: a change saves them all
            if isinstance(widget, qt.QComboBox):
                widget.connect("currentIndexChanged(int)", self._saveOptions)
            elif isinstance(widget, qt.QLineEdit):
                widget.connect("textChanged(QString)", self._saveOptions)
            elif isinstance(widget, qt.QSpinBox):
                widget.connect("valueChanged(int)", self._saveOptions)
            else:
                widget.connect("valueChanged(double)", self._saveOptions)
        self.ui.taskOptionsCollapsibleButton.setVisible(bool(self._optionFields))

    def _optionValues(self) -> dict:
        """The option widgets' values, as shown."""
        values = {}
        for name, widget in self._optionWidgets.items():
            if isinstance(widget, qt.QComboBox):
                values[name] = widget.currentText
            elif isinstance(widget, qt.QLineEdit):
                values[name] = widget.text
            else:
                values[name] = widget.value
        return values

    def _showOptions(self, values: dict) -> None:
        """Set the option widgets to saved values (a value no longer valid for the widget is left at default)."""
        for name, value in values.items():
            widget = self._optionWidgets.get(name)
            if widget is None:
                continue
            wasBlocked = widget.blockSignals(True)
            if isinstance(widget, qt.QComboBox):
                if widget.findText(str(value)) >= 0:
                    widget.setCurrentText(str(value))
            elif isinstance(widget, qt.QLineEdit):
                widget.setText(str(value))
            else:
                widget.setValue(value)
            widget.blockSignals(wasBlocked)

    def _savedOptions(self) -> dict:
        try:
            saved = json.loads(self._parameterNode.taskOptions or "{}") if self._parameterNode else {}
        except ValueError:  # hand-edited scene: start from the defaults
            saved = {}
        return saved if isinstance(saved, dict) else {}

    def _saveOptions(self, *args) -> None:
        p = self._parameterNode
        if not p or not p.task:
            return
        saved = self._savedOptions()
        saved[p.task] = self._optionValues()
        p.taskOptions = json.dumps(saved, sort_keys=True)

    def taskOptions(self) -> dict:
        """The option values set in the panel, as the worker takes them."""
        return values_to_send(self._optionFields, self._optionValues())

    def _matchTaskToInput(self) -> None:
        """A newly chosen input gets a task of its modality (a one-slice volume is a radiograph)."""
        node = self._parameterNode.inputVolume
        if node is None or node is self._lastInput:
            return
        if not LungXSlicerLogic.modalityOf(node):
            # chosen as it is being loaded (the node enters the scene before its voxels): decide when they come
            if not self.hasObserver(node, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._checkCanApply):
                self.addObserver(node, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._checkCanApply)
            return
        self._lastInput = node
        # the outputs shown belong to the previous input: a new run makes its own nodes
        for name in ("outputSegmentation", "outputVolume"):
            if self.logic.belongsToAnotherInput(getattr(self._parameterNode, name), node):
                setattr(self._parameterNode, name, None)
        modality = LungXSlicerLogic.modalityOf(node)
        info = self.logic.taskInfo(self._parameterNode.task)
        if info and info["modality"] != modality:
            match = next((t for t in self.logic.availableTasks() if t["modality"] == modality), None)
            if match:
                self.selectTask(match["name"])

    def _checkCanApply(self, caller=None, event=None) -> None:
        if self._run is not None:
            return  # Apply is Cancel while a task runs
        p = self._parameterNode
        if p:
            self._matchTaskToInput()
        if p and p.inputVolume:
            self.ui.applyButton.toolTip = "Run the task (first time: installs what it needs, asking first)"
            self.ui.applyButton.enabled = True
        else:
            self.ui.applyButton.toolTip = "Select an input volume"
            self.ui.applyButton.enabled = False

    def onApplyButton(self) -> None:
        if self._run is not None:
            self.cancelRun()
            self.ui.statusLabel.text = "Cancelled."
            return
        with slicer.util.tryWithErrorDisplay("LungX could not start.", waitCursor=True):
            if not self.logic.ensureDependencies(confirm=True):
                self.ui.statusLabel.text = "Not started: dependencies were not installed."
                return
            if not self.ui.taskComboBox.itemData(self.ui.taskComboBox.currentIndex):
                self.populateTasks()  # lungx_core was just installed
            p = self._parameterNode
            self._run = self.logic.start(
                p.task,
                p.inputVolume,
                device="cpu" if p.forceCpu else "auto",
                fast=p.fastMode,
                outputSegmentation=p.outputSegmentation,
                outputVolume=p.outputVolume,
                **self.taskOptions(),
            )
            self.ui.applyButton.text = "Cancel"
            self.ui.applyButton.toolTip = "Stop the task (its process is killed; nothing is added to the scene)"
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.show()
            self.ui.statusLabel.text = "Starting..."
            self._timer.start()

    def onTimer(self) -> None:
        run = self._run
        if run is None:
            self._timer.stop()
            return
        finished = self.logic.poll(run)
        if run.fraction is not None:
            self.ui.progressBar.setValue(int(100 * run.fraction))
        self.ui.statusLabel.text = format_status(run.message or "Running", run.process.elapsed(), run.fraction)
        if not finished:
            return
        self._timer.stop()
        self._run = None
        self._resetApply()
        try:
            result = self.logic.finish(run)
        except Exception as exc:  # noqa: BLE001 - shown to the user; details in the log
            logging.error("LungX: %s\n%s", exc, "\n".join(run.process.stderr_lines[-50:]))
            slicer.util.errorDisplay(f"LungX failed: {exc}", detailedText="\n".join(run.process.stderr_lines[-50:]))
            # the worker's one-line reason stays in the panel after the message box is closed
            self.ui.statusLabel.text = f"Failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
            return
        self._showResult(result)

    def _showResult(self, result: LungXResult) -> None:
        if result.segmentation:
            self._parameterNode.outputSegmentation = result.segmentation
        if result.volumes:
            self._parameterNode.outputVolume = result.volumes[0]
            slicer.util.setSliceViewerLayers(background=result.volumes[0], fit=True)
        if result.table:
            self.ui.resultsTableView.setMRMLTableNode(result.table)
        flags = ", ".join(result.qcFlags) if result.qcFlags else "no QC flags"
        missing = f"; not found: {', '.join(result.notFound)}" if result.notFound else ""
        points = sum(node.GetNumberOfControlPoints() for node in result.markups)
        found = f"; {points} point(s) marked" if result.markups else ""
        self.ui.statusLabel.text = f"Done in {result.seconds:.1f} s on {result.device}; {flags}{missing}{found}."

    def cancelRun(self) -> None:
        if self._run is not None:
            self.logic.cancel(self._run)
            self._run = None
        self._timer.stop()
        if getattr(self, "ui", None):
            self._resetApply()

    def _resetApply(self) -> None:
        self.ui.applyButton.text = "Apply"
        self.ui.progressBar.hide()
        self._checkCanApply()


#
# Logic
#


@dataclass
class LungXRun:
    """A task in progress: its worker process, its temporary folder and what to do with the results."""

    task: str
    inputNode: object
    process: WorkerProcess
    tempDir: Path
    inputPath: Path
    outputSegmentation: object = None
    outputVolume: object = None
    fraction: float | None = None
    message: str = ""
    error: str = ""
    manifest: str = ""
    log: list[str] = field(default_factory=list)


@dataclass
class LungXResult:
    segmentation: object = None  # vtkMRMLSegmentationNode
    volumes: list = field(default_factory=list)  # vtkMRMLScalarVolumeNode
    markups: list = field(default_factory=list)  # vtkMRMLMarkupsFiducialNode
    table: object = None  # vtkMRMLTableNode
    qcFlags: list[str] = field(default_factory=list)
    measurements: dict = field(default_factory=dict)
    seconds: float = 0.0
    device: str = ""
    notFound: list[str] = field(default_factory=list)  # segment IDs the task looked for and did not find


INPUT_ATTRIBUTE = "LungX.InputNodeID"  # on every output node: the input it was made from


class LungXSlicerLogic(ScriptedLoadableModuleLogic):
    """Everything the panel does, scriptable from the Python console; no GUI needed."""

    def getParameterNode(self):
        return LungXSlicerParameterNode(super().getParameterNode())

    # -- tasks and dependencies

    def availableTasks(self) -> list[dict]:
        """lungx_core's task registry ([] when lungx_core is not installed yet). Light: imports no torch."""
        if importlib.util.find_spec("lungx_core") is None:
            return []
        from lungx_core.tasks import registry

        return registry.as_json()

    def taskInfo(self, name: str) -> dict | None:
        return next((t for t in self.availableTasks() if t["name"] == name), None)

    @staticmethod
    def modalityOf(volumeNode) -> str:
        """'CXR' for a one-slice volume (how Slicer loads a radiograph), 'CT' for more slices, '' while the node
        has no voxels yet (it is being loaded)."""
        image = volumeNode.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0:
            return ""
        return "CXR" if image.GetDimensions()[2] == 1 else "CT"

    def dependenciesReady(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in ("torch", "lungx_core", "monai"))

    def ensureDependencies(self, confirm: bool = True) -> bool:
        """Install torch (through the PyTorch extension) and lungx_core when missing; False when the user
        declined. Never called at import or widget set-up."""
        if self.dependenciesReady():
            return True
        try:
            import PyTorchUtils
        except ModuleNotFoundError as exc:
            raise RuntimeError(
                "LungX needs the PyTorch extension: install 'PyTorch' from the Extensions Manager, restart Slicer, "
                "then press Apply again."
            ) from exc
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torch = torchLogic.installTorch(askConfirmation=confirm, torchVersionRequirement=MINIMUM_TORCH)
            if torch is None:
                return False
        if importlib.util.find_spec("lungx_core") is None or importlib.util.find_spec("monai") is None:
            source = dependencies.install_source(MODULE_DIR)
            if confirm and not slicer.util.confirmOkCancelDisplay(
                f"LungX needs lungx_core and its Python dependencies (MONAI, slicerio, ...) in Slicer's Python.\n"
                f"Install them now from {source}? This takes a few minutes; Slicer's own numpy, SimpleITK, "
                "pydicom and VTK are kept."
            ):
                return False
            progress = slicer.util.createProgressDialog(labelText="Installing lungx_core...", maximum=0)
            slicer.app.processEvents()
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    installed, conflicts = dependencies.install_lungx_core(
                        slicer.util.pip_install, source, Path(tmp) / "constraints.txt", log=logging.info
                    )
            finally:
                progress.close()
            importlib.invalidate_caches()
            if conflicts:
                raise RuntimeError("LungX cannot run with this Slicer's Python packages:\n" + "\n".join(conflicts))
            if "lungx_core.tasks.registry" in sys.modules:  # the task list is read in this process
                importlib.reload(sys.modules["lungx_core.tasks.registry"])
            stale = dependencies.needs_restart(installed, sys.modules)
            if stale:  # the worker process would be fine, but this Slicer session still holds the old code
                if slicer.util.confirmYesNoDisplay(
                    f"Updated packages that this Slicer session had already loaded ({', '.join(stale)}). "
                    "Restart Slicer now?"
                ):
                    slicer.util.restart()
                return False
        return self.dependenciesReady()

    # -- running a task

    def start(
        self,
        task: str,
        inputNode,
        device: str = "auto",
        fast: bool = False,
        outputSegmentation=None,
        outputVolume=None,
        **options,
    ) -> LungXRun:
        """Start ``task`` on ``inputNode`` in a worker process and return at once; call :meth:`poll` until it
        returns True, then :meth:`finish`."""
        if inputNode is None or not inputNode.IsA("vtkMRMLScalarVolumeNode") or inputNode.IsA(
            "vtkMRMLLabelMapVolumeNode"
        ):
            raise ValueError("the input must be a scalar volume (a radiograph is a one-slice volume)")
        if inputNode.GetImageData() is None:
            raise ValueError(f"{inputNode.GetName()} has no image data")
        info = self.taskInfo(task)
        if info is None:
            names = ", ".join(t["name"] for t in self.availableTasks()) or "none (is lungx_core installed?)"
            raise ValueError(f"unknown task {task!r}; available: {names}")
        tempDir = Path(tempfile.mkdtemp(prefix="LungX-"))
        try:
            inputPath = tempDir / "input.nrrd"
            self._writeInput(inputNode, inputPath)
            command = worker_command(task, inputPath, tempDir / "out", device, fast, options)
            logging.info("LungX: %s", " ".join(command))
            process = WorkerProcess(command)
        except Exception:
            shutil.rmtree(tempDir, ignore_errors=True)
            raise
        return LungXRun(task, inputNode, process, tempDir, inputPath, outputSegmentation, outputVolume)

    @staticmethod
    def _writeInput(inputNode, path: Path) -> None:
        """The node's voxels and geometry (IJKToRAS, without parent transforms) as an LPS NRRD, without changing
        the node's own storage node."""
        storage = slicer.mrmlScene.CreateNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
        try:
            storage.SetFileName(str(path))
            storage.UseCompressionOff()
            if not storage.WriteData(inputNode):
                raise RuntimeError(f"could not write {inputNode.GetName()} to {path}")
        finally:
            storage.UnRegister(None)

    def poll(self, run: LungXRun) -> bool:
        """Take in the worker's new progress lines; True once the worker has exited and all output is read."""
        for event in run.process.poll():
            if event.event == "progress":
                run.fraction, run.message = event.fraction, event.message
            elif event.event == "error":
                run.error = event.message
            elif event.event == "done":
                run.manifest = event.manifest
            else:
                run.log.append(event.message)
                logging.info("LungX worker: %s", event.message)
        return run.process.finished

    def cancel(self, run: LungXRun) -> None:
        """Kill the worker and everything it started; nothing is added to the scene."""
        run.process.cancel()
        shutil.rmtree(run.tempDir, ignore_errors=True)

    def finish(self, run: LungXRun) -> LungXResult:
        """Turn a finished worker's outputs into nodes; raises RuntimeError with the worker's message on failure.
        The temporary folder is removed in every case."""
        try:
            code = run.process.wait()  # also joins the readers, so the poll below sees the last lines
            self.poll(run)
            if run.process.cancelled:
                raise RuntimeError("cancelled")
            if code != 0 or not run.manifest:
                message = run.error or (run.process.stderr_lines[-1] if run.process.stderr_lines else "")
                # the user knows the node, not our temporary file
                message = message.replace(str(run.inputPath), repr(run.inputNode.GetName()))
                raise RuntimeError(message or f"the worker stopped with exit code {code}")
            outputs = results.read_manifest(Path(run.manifest))
            return self.importResults(outputs, run.inputNode, run.outputSegmentation, run.outputVolume)
        finally:
            shutil.rmtree(run.tempDir, ignore_errors=True)

    def run(
        self,
        task: str,
        inputNode,
        device: str = "auto",
        fast: bool = False,
        outputSegmentation=None,
        outputVolume=None,
        progressCallback=None,
        **options,
    ) -> LungXResult:
        """Run ``task`` on ``inputNode`` and wait for it (the GUI keeps processing events); returns the output
        nodes. ``progressCallback(fraction, message)`` is called on each progress line."""
        run = self.start(task, inputNode, device, fast, outputSegmentation, outputVolume, **options)
        try:
            while not self.poll(run):
                if progressCallback and run.fraction is not None:
                    progressCallback(run.fraction, run.message)
                slicer.app.processEvents()
                time.sleep(0.05)
        except BaseException:
            self.cancel(run)
            raise
        return self.finish(run)

    # -- results as nodes

    def importResults(
        self, outputs: results.TaskOutputs, inputNode, outputSegmentation=None, outputVolume=None
    ) -> LungXResult:
        result = LungXResult(
            qcFlags=outputs.qc_flags, measurements=outputs.measurements, seconds=outputs.seconds, device=outputs.device
        )
        for path in outputs.segmentations:
            result.segmentation, notFound = self._importSegmentation(path, inputNode, outputSegmentation, outputs.task)
            result.notFound += notFound
        for i, path in enumerate(outputs.volumes):
            result.volumes.append(self._importVolume(path, inputNode, outputVolume if i == 0 else None, outputs.task))
        for path in outputs.markups:
            result.markups.append(self._importMarkups(path, inputNode, outputs.task))
        result.table = self._importTable(outputs, inputNode, result.notFound)
        return result

    @staticmethod
    def belongsToAnotherInput(node, inputNode) -> bool:
        """True when ``node`` holds the results of another input than ``inputNode``: a result never goes there."""
        owner = node.GetAttribute(INPUT_ATTRIBUTE) if node is not None else None
        return bool(owner) and owner != inputNode.GetID()

    def _placeNextToInput(self, node, inputNode) -> None:
        """Same subject-hierarchy parent (the input's study) and, for nodes that live in space (not tables), the
        same parent transform as the input; the node remembers its input."""
        node.SetAttribute(INPUT_ATTRIBUTE, inputNode.GetID())
        if node.IsA("vtkMRMLTransformableNode"):
            node.SetAndObserveTransformNodeID(inputNode.GetTransformNodeID())
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(slicer.mrmlScene)
        parent = sh.GetItemParent(sh.GetItemByDataNode(inputNode))
        if parent:
            sh.SetItemParent(sh.GetItemByDataNode(node), parent)

    @staticmethod
    def _ijkToRAS(volumeNode):
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def _importSegmentation(self, path: Path, inputNode, segmentationNode, task: str):
        seg = results.read_segmentation(path)
        inputShape = slicer.util.arrayFromVolume(inputNode).shape
        maskShape = seg.segments[0].mask_kji.shape if seg.segments else inputShape
        if not same_grid(seg.ijk_to_ras, self._ijkToRAS(inputNode), maskShape, inputShape):
            raise RuntimeError(f"{path.name} is not on the grid of {inputNode.GetName()}")
        if segmentationNode is None or self.belongsToAnotherInput(segmentationNode, inputNode):
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", slicer.mrmlScene.GenerateUniqueName(f"{inputNode.GetName()} {task}")
            )
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(inputNode)
        segmentation = segmentationNode.GetSegmentation()
        wasModified = segmentationNode.StartModify()
        # a reused node holds exactly this run's segments: nothing of an earlier task or input stays behind
        segmentation.RemoveAllSegments()
        notFound = []
        for spec in seg.segments:
            if not spec.mask_kji.any():  # not found: no empty segment, which 3-D surface building chokes on
                notFound.append(spec.segment_id)
                continue
            segmentation.AddEmptySegment(spec.segment_id, spec.name, list(spec.color))
            slicer.util.updateSegmentBinaryLabelmapFromArray(
                spec.mask_kji, segmentationNode, spec.segment_id, inputNode
            )
            if spec.terminology:
                segment = segmentation.GetSegment(spec.segment_id)
                segment.SetTag(segment.GetTerminologyEntryTagName(), spec.terminology)
        segmentationNode.EndModify(wasModified)
        if inputShape[0] > 1:  # a CT's structures are shown in 3-D at once, as Show 3D would
            segmentationNode.CreateClosedSurfaceRepresentation()
        self._placeNextToInput(segmentationNode, inputNode)
        return segmentationNode, notFound

    def _importVolume(self, path: Path, inputNode, volumeNode, task: str):
        array, ijkToRAS = results.read_volume(path)
        array = as_slicer_array(array)
        if volumeNode is None or self.belongsToAnotherInput(volumeNode, inputNode):
            # named by what it is ("film synthetic", "film ribs suppressed"), from the worker's file name
            name = slicer.mrmlScene.GenerateUniqueName(f"{inputNode.GetName()} {results.output_label(path) or task}")
            volumeNode = slicer.util.addVolumeFromArray(array, ijkToRAS, name)
        else:
            slicer.util.updateVolumeFromArray(volumeNode, array)
            volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRAS))
        self._placeNextToInput(volumeNode, inputNode)
        return volumeNode

    def _importMarkups(self, path: Path, inputNode, task: str):
        """A point list read by Slicer's own Markups JSON reader (positions in LPS become RAS), placed like the
        other results (under the input's transform, so points stay on the film when it is moved)."""
        name = slicer.mrmlScene.GenerateUniqueName(f"{inputNode.GetName()} {results.output_label(path) or task}")
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        storage = slicer.vtkMRMLMarkupsJsonStorageNode()
        storage.SetFileName(str(path))
        if not storage.ReadData(node):
            slicer.mrmlScene.RemoveNode(node)
            raise RuntimeError(f"{path.name}: Slicer could not read the point list")
        node.SetName(name)  # the file's own name is the case's, not the node's
        node.CreateDefaultDisplayNodes()
        self._placeNextToInput(node, inputNode)
        return node

    def _importTable(self, outputs: results.TaskOutputs, inputNode, notFound=()):
        name = slicer.mrmlScene.GenerateUniqueName(f"{inputNode.GetName()} {outputs.task} results")
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", name)
        wasModified = table.StartModify()
        table.AddColumn().SetName("Measurement")
        table.AddColumn().SetName("Value")
        for key, value in results.table_rows(outputs, notFound):
            row = table.AddEmptyRow()
            table.SetCellText(row, 0, key)
            table.SetCellText(row, 1, value)
        table.EndModify(wasModified)
        self._placeNextToInput(table, inputNode)
        return table


#
# Test
#


class LungXSlicerTest(ScriptedLoadableModuleTest):
    """Self-test: a synthetic one-slice CXR and an oblique CT, each task through the logic, and the widget.

    Needs lungx_core in Slicer's Python (press Apply once, or run the install from the console)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_cxr_anatomy()
        self.setUp()
        self.test_oblique_ct_lungs()
        self.setUp()
        self.test_cancel()
        self.setUp()
        self.test_widget()

    @staticmethod
    def _centroidRAS(segmentationNode, segmentId, volumeNode):
        import numpy as np

        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
        k, j, i = np.nonzero(mask)
        ijk = np.array([i.mean(), j.mean(), k.mean(), 1.0])
        return (LungXSlicerLogic._ijkToRAS(volumeNode) @ ijk)[:3], mask

    def _assertTerminology(self, segmentationNode, segmentId, *codes):
        tag = segmentTerminology(segmentationNode.GetSegmentation().GetSegment(segmentId))
        for code in codes:
            self.assertIn(code, tag, f"{segmentId}: {tag}")

    def test_cxr_anatomy(self):
        from LungXSlicerLib.geometry import ijk_to_ras

        from lungx_core.io.sample import sample_radiograph

        self.delayDisplay("One-slice CXR: cxr-anatomy")
        image = sample_radiograph()
        node = slicer.util.addVolumeFromArray(
            as_slicer_array(image.array), ijk_to_ras(image.spacing, image.origin, image.direction), "test CXR"
        )
        result = LungXSlicerLogic().run("cxr-anatomy", node, device="cpu")
        seg = result.segmentation
        ids = {seg.GetSegmentation().GetNthSegmentID(n) for n in range(seg.GetSegmentation().GetNumberOfSegments())}
        # a structure not found (a clavicle outside a DRR's field) is reported, not added as an empty segment
        self.assertEqual(ids | set(result.notFound), {"lung_left", "lung_right", "heart", "clavicle_left",
                                                      "clavicle_right"})
        self.assertFalse(ids & set(result.notFound))
        self._assertTerminology(seg, "lung_left", "39607008", "7771000")
        self._assertTerminology(seg, "lung_right", "39607008", "24028007")
        self._assertTerminology(seg, "heart", "80891009")
        left, mask = self._centroidRAS(seg, "lung_left", node)
        right, _ = self._centroidRAS(seg, "lung_right", node)
        self.assertEqual(mask.shape, slicer.util.arrayFromVolume(node).shape)
        self.assertLess(left[0], right[0], "the patient's left lung must be at lower RAS x than the right")
        self.assertIsNotNone(result.table)
        self.assertGreater(float(result.measurements["ctr"]), 0.3)

    def test_oblique_ct_lungs(self):
        import numpy as np
        from LungXSlicerLib.geometry import ijk_to_ras

        from lungx_core.io.sample import sample_ct

        self.delayDisplay("Oblique CT: ct-lungs")
        ct = sample_ct()
        angle = np.deg2rad(20.0)  # about the superior axis
        rotation = np.array(
            [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1.0]]
        ) @ np.asarray(ct.direction).reshape(3, 3)
        node = slicer.util.addVolumeFromArray(
            as_slicer_array(ct.array), ijk_to_ras(ct.spacing, ct.origin, rotation.ravel()), "test oblique CT"
        )
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "test transform")
        node.SetAndObserveTransformNodeID(transform.GetID())
        result = LungXSlicerLogic().run("ct-lungs", node, device="cpu")
        seg = result.segmentation
        self._assertTerminology(seg, "lung_right", "39607008", "24028007")
        right, mask = self._centroidRAS(seg, "lung_right", node)
        left, _ = self._centroidRAS(seg, "lung_left", node)
        self.assertEqual(mask.shape, slicer.util.arrayFromVolume(node).shape)
        self.assertGreater(right[0], left[0], "the right lung must be at higher RAS x")
        self.assertEqual(seg.GetTransformNodeID(), transform.GetID())
        self.assertGreater(float(result.measurements["volume_ml_lung"]), 500.0)
        self.assertTrue(any("oblique" in f for f in result.qcFlags), result.qcFlags)

    def test_cancel(self):
        import psutil
        from LungXSlicerLib.geometry import ijk_to_ras

        from lungx_core.io.sample import sample_ct

        self.delayDisplay("Cancel kills the worker tree")
        ct = sample_ct()
        node = slicer.util.addVolumeFromArray(
            as_slicer_array(ct.array), ijk_to_ras(ct.spacing, ct.origin, ct.direction), "test CT"
        )
        before = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
        logic = LungXSlicerLogic()
        run = logic.start("ct-lungs", node, device="cpu")
        pid = run.process.pid
        logic.cancel(run)
        self.assertFalse(psutil.pid_exists(pid))
        self.assertFalse(run.tempDir.exists())
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), before)

    def test_widget(self):
        self.delayDisplay("Widget")
        slicer.util.selectModule("LungXSlicer")
        widget = slicer.modules.lungxslicer.widgetRepresentation().self()
        names = [widget.ui.taskComboBox.itemData(i) for i in range(widget.ui.taskComboBox.count)]
        self.assertIn("cxr-anatomy", names)
        self.assertIn("ct-lungs", names)
        self.assertEqual(widget.ui.applyButton.text, "Apply")
