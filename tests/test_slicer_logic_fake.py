"""LungXSlicer.py imported against stand-ins for slicer/qt/vtk, to exercise the logic's process handling (start,
poll, finish, cancel, clean-up, error messages) without Slicer.

The stand-ins encode OUR ASSUMPTIONS about Slicer's API (names and call shapes only); the real thing is checked by
the Slicer self-tests (tests/test_slicer_selftests.py) where a Slicer executable exists.
"""

from __future__ import annotations

import sys
import types
import typing

import numpy as np
import pytest
from conftest import SLICER_MODULE_DIR, phantom_radiograph

from lungx_core.image import MedicalImage
from lungx_core.io.writers import write_image


class _Base:
    def __init__(self, *args, **kwargs):
        pass


class _FakeVolumeNode:
    """Enough of a vtkMRMLScalarVolumeNode for the logic's checks; its voxels come from a MedicalImage."""

    def __init__(self, name: str, image: MedicalImage):
        self.name, self.image = name, image

    def IsA(self, cls: str) -> bool:
        return cls == "vtkMRMLScalarVolumeNode"

    def GetImageData(self):
        shape = self.image.array.shape
        dims = (shape[1], shape[0], 1) if len(shape) == 2 else shape[::-1]
        return types.SimpleNamespace(GetDimensions=lambda: dims)

    def GetName(self) -> str:
        return self.name


@pytest.fixture
def module(monkeypatch):
    slicer = types.ModuleType("slicer")
    slicer.vtkMRMLScalarVolumeNode = type("vtkMRMLScalarVolumeNode", (), {})
    slicer.vtkMRMLSegmentationNode = type("vtkMRMLSegmentationNode", (), {})
    slicer.app = types.SimpleNamespace(connect=lambda *a: None, processEvents=lambda: None)
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = lambda cls: cls
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for name in ("ScriptedLoadableModule", "ScriptedLoadableModuleWidget", "ScriptedLoadableModuleLogic",
                 "ScriptedLoadableModuleTest"):
        setattr(slm, name, type(name, (_Base,), {}))
    util = types.ModuleType("slicer.util")
    util.VTKObservationMixin = type("VTKObservationMixin", (_Base,), {})
    slicer.util = util
    fakes = {"slicer": slicer, "slicer.parameterNodeWrapper": pnw, "slicer.ScriptedLoadableModule": slm,
             "slicer.util": util, "qt": types.ModuleType("qt"), "vtk": types.ModuleType("vtk")}
    for name, mod in fakes.items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.syspath_prepend(str(SLICER_MODULE_DIR))
    monkeypatch.delitem(sys.modules, "LungXSlicer", raising=False)
    import LungXSlicer

    # the real _writeInput uses Slicer's volume storage node; here lungx_core writes the same LPS NRRD
    monkeypatch.setattr(LungXSlicer.LungXSlicerLogic, "_writeInput",
                        staticmethod(lambda node, path: write_image(path, node.image)))
    imported = []
    monkeypatch.setattr(LungXSlicer.LungXSlicerLogic, "importResults",
                        lambda self, outputs, *a: imported.append(outputs) or outputs)
    LungXSlicer.imported = imported
    yield LungXSlicer
    sys.modules.pop("LungXSlicer", None)


def test_parameter_node_hints_resolve(module):
    hints = typing.get_type_hints(module.LungXSlicerParameterNode)
    assert hints["inputVolume"] is sys.modules["slicer"].vtkMRMLScalarVolumeNode
    assert hints["task"] is str and hints["forceCpu"] is bool and hints["fastMode"] is bool


def test_modality_of_a_node(module):
    logic = module.LungXSlicerLogic
    assert logic.modalityOf(_FakeVolumeNode("cxr", MedicalImage(phantom_radiograph(64, 64)))) == "CXR"
    assert logic.modalityOf(_FakeVolumeNode("ct", MedicalImage(np.zeros((10, 64, 64))))) == "CT"


def test_logic_lists_tasks_from_lungx_core(module):
    logic = module.LungXSlicerLogic()
    names = [t["name"] for t in logic.availableTasks()]
    assert names[:2] == ["cxr-anatomy", "ct-lungs"]
    assert logic.taskInfo("ct-lungs")["modality"] == "CT"
    assert logic.dependenciesReady()


@pytest.mark.slow
def test_logic_run_finishes_and_cleans_up(module):
    node = _FakeVolumeNode("chest film", MedicalImage(phantom_radiograph(256, 240), spacing=(0.2, 0.2, 1.0)))
    logic = module.LungXSlicerLogic()
    seen = []
    outputs = logic.run("cxr-anatomy", node, device="cpu", fast=True, progressCallback=lambda f, m: seen.append(f))
    assert outputs.task == "cxr-anatomy" and outputs.segmentations
    assert seen and seen == sorted(seen)
    assert not outputs.segmentations[0].exists()  # read into nodes, then the temporary folder is removed


def test_logic_error_names_the_node_and_cleans_up(module):
    node = _FakeVolumeNode("my radiograph", MedicalImage(phantom_radiograph(128, 120), spacing=(0.2, 0.2, 1.0)))
    logic = module.LungXSlicerLogic()
    run = logic.start("ct-lungs", node, device="cpu")
    with pytest.raises(RuntimeError) as info:
        while not logic.poll(run):
            pass
        logic.finish(run)
    assert "'my radiograph'" in str(info.value) and "input.nrrd" not in str(info.value)
    assert not run.tempDir.exists() and module.imported == []


def test_logic_cancel_removes_everything(module):
    node = _FakeVolumeNode("ct", MedicalImage(phantom_radiograph(128, 120), spacing=(0.2, 0.2, 1.0)))
    logic = module.LungXSlicerLogic()
    run = logic.start("cxr-anatomy", node, device="cpu")
    logic.cancel(run)
    assert not run.process.running and not run.tempDir.exists()
    with pytest.raises(RuntimeError, match="cancelled"):
        logic.finish(run)


def test_logic_rejects_unknown_task_and_non_volumes(module):
    logic = module.LungXSlicerLogic()
    node = _FakeVolumeNode("x", MedicalImage(phantom_radiograph(64, 64)))
    with pytest.raises(ValueError, match="unknown task"):
        logic.start("no-such-task", node)
    with pytest.raises(ValueError, match="scalar volume"):
        logic.start("cxr-anatomy", None)
