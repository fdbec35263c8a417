"""The LungXSlicer panel as a user drives it: the module's real widget and .ui, built with Qt (PySide6 seen as PythonQt,
tests/qt_shim.py) over a real MRML scene (slicer-core), CTK/qMRML widgets as stand-ins that read that scene.

Choosing a CT and a film switches the task; the task's options come from lungx_core's registry, are saved in the
parameter node (and so with the scene) and reach the worker; Apply starts the real worker and turns into Cancel with
a progress bar; Cancel leaves nothing behind; a second Apply ends with "Done in ... on cpu", a filled results
table and the output selector on the new segmentation; a refused input leaves its one-line reason in the panel.
"""

from __future__ import annotations

import importlib
import time

import numpy as np
import pytest
from slicer_mrml import install, volume_node

from lungx_core.tasks import registry

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def panel(monkeypatch):
    """(slicer, the LungXSlicer module, its widget set up as Slicer does when the module is opened)."""
    slicer = install(monkeypatch, with_qt=True)
    module = importlib.import_module("LungXSlicer")
    widget = module.LungXSlicerWidget()
    widget.setup()
    widget.parent.resize(460, 860)
    yield slicer, module, widget
    widget.cleanup()
    widget.parent.deleteLater()


def _film(slicer, name="film"):
    from lungx_core.io.sample import sample_radiograph

    return volume_node(sample_radiograph(), name)


def _small_ct(slicer, name="ct"):
    from conftest import chest_phantom

    from lungx_core.image import MedicalImage

    return volume_node(MedicalImage(chest_phantom(), spacing=(1.5, 1.5, 3.0), modality="CT"), name)


def _task(widget) -> str:
    combo = widget.ui.taskComboBox
    return combo.itemData(combo.currentIndex)


def _finish(qt, widget, timeout: float = 240.0) -> set[str]:
    """Process Qt events (the panel's timer polls the worker) until the run ends; the status texts shown meanwhile."""
    end = time.monotonic() + timeout
    shown = set()
    while widget._run is not None:
        assert time.monotonic() < end, f"the run did not end in {timeout} s: {widget.ui.statusLabel.text}"
        qt.QApplication.processEvents()
        shown.add(widget.ui.statusLabel.text)
        time.sleep(0.02)
    qt.QApplication.processEvents()
    return shown


def test_panel_lists_the_registry_tasks_and_their_options(panel):
    slicer, module, widget = panel
    ui = widget.ui
    names = [ui.taskComboBox.itemData(i) for i in range(ui.taskComboBox.count)]
    assert names == [t.name for t in registry.TASKS.values()]
    assert ui.applyButton.text == "Apply" and not ui.applyButton.enabled  # no input yet
    assert ui.applyButton.toolTip == "Select an input volume"
    assert ui.progressBar.isHidden()
    for task in registry.as_json():
        widget.selectTask(task["name"])
        rows = {f.name: w for f, w in zip(widget._optionFields, widget._optionWidgets.values(), strict=True)}
        assert list(rows) == [o["name"] for o in task["options"]]
        for option in task["options"]:
            shown = rows[option["name"]]
            assert option.get("help", "") in shown.toolTip
            if option["kind"] == "choice":
                assert [shown.itemText(i) for i in range(shown.count)] == list(option["choices"])
                assert shown.currentText == option["default"]
        assert ui.taskOptionsCollapsibleButton.isVisibleTo(widget.parent) == bool(task["options"])
        assert task["modality"] in ui.taskDescriptionLabel.text


def test_choosing_a_ct_or_a_film_switches_the_task(panel):
    slicer, module, widget = panel
    ct = _small_ct(slicer)
    assert widget._parameterNode.inputVolume is ct  # the first volume is chosen, as in Slicer
    assert registry.TASKS[_task(widget)].modality == "CT"
    assert widget.ui.applyButton.enabled
    film = _film(slicer)
    widget.ui.inputSelector.setCurrentNode(film)
    assert widget._parameterNode.inputVolume is film
    assert _task(widget) == "cxr-anatomy" and widget._parameterNode.task == "cxr-anatomy"
    widget.selectTask("cxr-rib-suppression")  # a CXR task the user picked stays while the input is a film
    widget.ui.inputSelector.setCurrentNode(ct)
    assert _task(widget) == "ct-lungs"
    widget.ui.inputSelector.setCurrentNode(film)
    assert registry.TASKS[_task(widget)].modality == "CXR"


def test_options_reach_the_worker_and_survive_a_scene_reload(panel, tmp_path, monkeypatch):
    slicer, module, widget = panel
    ct = _small_ct(slicer)
    widget.ui.inputSelector.setCurrentNode(ct)
    widget._optionWidgets["method"].setCurrentText("classical")
    widget.ui.forceCpuCheckBox.setChecked(True)
    assert widget._parameterNode.forceCpu
    assert widget.taskOptions() == {"method": "classical"}  # empty text fields: the task's default

    commands = []

    class Recorded(module.WorkerProcess):
        def __init__(self, command):
            commands.append(command)
            super().__init__(command)

    monkeypatch.setattr(module, "WorkerProcess", Recorded)
    widget.onApplyButton()
    widget.onApplyButton()  # cancel at once: only the command line matters here
    command = " ".join(commands[0])
    assert "ct-lungs" in command and "classical" in command and "--device cpu" in command

    path = tmp_path / "scene.mrml"
    slicer.mrmlScene.SetURL(str(path))
    assert slicer.mrmlScene.Commit()
    slicer.mrmlScene.Clear(0)  # close the scene, as File > Close Scene
    assert not widget.ui.forceCpuCheckBox.checked and widget._parameterNode.taskOptions == ""  # a new scene
    slicer.mrmlScene.SetURL(str(path))
    assert slicer.mrmlScene.Import()
    assert _task(widget) == "ct-lungs"
    assert widget._optionWidgets["method"].currentText == "classical"
    assert widget.ui.forceCpuCheckBox.checked


def test_apply_cancel_apply_ends_with_results_in_the_panel(panel):
    slicer, module, widget = panel
    import qt

    ui = widget.ui
    film = _film(slicer)
    widget.ui.inputSelector.setCurrentNode(film)
    ui.fastModeCheckBox.setChecked(True)
    ui.forceCpuCheckBox.setChecked(True)
    segmentations = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")

    widget.onApplyButton()
    assert ui.applyButton.text == "Cancel" and ui.progressBar.isVisibleTo(widget.parent)
    assert ui.statusLabel.text == "Starting..."
    widget.onApplyButton()
    assert ui.applyButton.text == "Apply" and ui.progressBar.isHidden() and ui.statusLabel.text == "Cancelled."
    assert widget._run is None
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == segmentations

    widget.onApplyButton()
    seen = _finish(qt, widget)
    status = ui.statusLabel.text
    assert status.startswith("Done in ") and " s on cpu" in status, status
    assert any(s.endswith(" s)") or "left" in s for s in seen if s != "Starting..."), seen  # progress with time
    seg = widget._parameterNode.outputSegmentation
    assert seg is not None and ui.outputSegmentationSelector.currentNode() is seg
    ids = [seg.GetSegmentation().GetNthSegmentID(i) for i in range(seg.GetSegmentation().GetNumberOfSegments())]
    assert {"lung_left", "lung_right", "heart"} <= set(ids)
    table = ui.resultsTableView.mrmlTableNode()
    assert table is not None and ui.resultsTableView.rowCount == table.GetNumberOfRows() > 0
    cells = {ui.resultsTableView.item(r, 0).text(): ui.resultsTableView.item(r, 1).text()
             for r in range(ui.resultsTableView.rowCount)}
    assert cells["device"] == "cpu" and "ctr" in cells
    assert ui.applyButton.text == "Apply" and ui.applyButton.enabled and ui.progressBar.isHidden()


def test_a_refused_input_leaves_its_one_line_reason_in_the_panel(panel):
    slicer, module, widget = panel
    import qt

    rng = np.random.default_rng(0)
    noise = slicer.util.addVolumeFromArray(rng.normal(100, 30, (1, 256, 256)).astype(np.float32), name="noise")
    widget.ui.inputSelector.setCurrentNode(noise)
    assert _task(widget) == "cxr-anatomy"
    widget.ui.forceCpuCheckBox.setChecked(True)
    segmentations = slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    widget.onApplyButton()
    _finish(qt, widget)
    status = widget.ui.statusLabel.text
    assert status.startswith("Failed: ") and "\n" not in status and "'noise'" in status, status
    assert "Traceback" not in status
    assert slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == segmentations
    assert widget.ui.applyButton.text == "Apply"
