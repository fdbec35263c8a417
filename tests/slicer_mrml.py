"""Real 3D Slicer MRML for tests, without the Slicer application.

The `slicer-core` wheel (the `slicer-test` extra) is Slicer's own MRML, Segmentations, Volumes, Colors,
Terminologies, Subject Hierarchy and Tables logic plus Slicer's `slicer/util.py`, without Qt. What the Qt application
normally does, this harness does:

- creates the scene and the module logics and sets ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``
  (creating the Segmentations logic registers the representation converters);
- adds a subject-hierarchy item for each new data node, as Slicer's subject-hierarchy plugins do;
- stands in for what truly needs Qt only: ``qt`` (the widget; not exercised), ``slicer.app`` (event processing),
  and the Qt-bound ``slicer.ScriptedLoadableModule`` base classes and ``slicer.parameterNodeWrapper`` decorator,
  which the logic does not use beyond a parameter node and ``unittest``-style test cases.

Everything the module does to nodes (segments, labelmaps, terminology tags, tables, transforms, subject hierarchy,
storage nodes) runs on the real classes, so a call that real Slicer rejects fails here too.
"""

from __future__ import annotations

import sys
import types
import typing
import unittest
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SLICER_MODULE_DIR = REPO / "LungXSlicer"
TESTING_DIR = REPO / "Testing" / "Python"

# Node classes that Slicer's subject-hierarchy plugins take into the hierarchy when they are added to the scene.
_HIERARCHY_CLASSES = (
    "vtkMRMLScalarVolumeNode",
    "vtkMRMLSegmentationNode",
    "vtkMRMLTableNode",
    "vtkMRMLTransformNode",
    "vtkMRMLModelNode",
    "vtkMRMLMarkupsNode",  # Slicer's Markups subject-hierarchy plugin
)


_ALIVE: list = []


def _logic(instance):
    return types.SimpleNamespace(logic=lambda: instance)


class _ScriptedLoadableModule:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else types.SimpleNamespace()


class _ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent


class _ScriptedLoadableModuleLogic:
    """Slicer's base logic as far as the module uses it: a singleton parameter node in the real scene."""

    def __init__(self, parent=None):
        self.moduleName = type(self).__name__.removesuffix("Logic")

    def getParameterNode(self):
        import slicer

        node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(self.moduleName)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            node.SetAttribute("ModuleName", self.moduleName)
            node = slicer.mrmlScene.AddNode(node)
        return node


class _ScriptedLoadableModuleTest(unittest.TestCase):
    def delayDisplay(self, message, msec=None):
        pass


def _parameter_node_wrapper(cls):
    """Typed fields over a real vtkMRMLScriptedModuleNode, defaults from the class (no GUI connections)."""
    hints = typing.get_type_hints(cls)

    class Wrapped:
        def __init__(self, parameterNode):
            object.__setattr__(self, "parameterNode", parameterNode)
            values = {name: getattr(cls, name, None) for name in hints}
            object.__setattr__(self, "_values", values)

        def __getattr__(self, name):
            if name in hints:
                return self._values[name]
            raise AttributeError(name)

        def __setattr__(self, name, value):
            if name not in hints:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            self._values[name] = value

    Wrapped.__name__ = Wrapped.__qualname__ = cls.__name__
    Wrapped.__annotations__ = dict(cls.__annotations__)
    Wrapped.__module__ = cls.__module__
    return Wrapped


def install(monkeypatch) -> types.ModuleType:
    """A fresh real MRML scene and module logics, with the Qt-only stand-ins; returns the ``slicer`` module.

    Skips the calling test when slicer-core is not installed (``pip install -e ".[slicer-test]"``)."""
    pytest.importorskip("slicer_core", reason="slicer-core (real Slicer MRML) is not installed")
    import slicer
    import slicer.util
    import vtk

    scene = slicer.vtkMRMLScene()
    # the application logic is how module logics find each other (the Volumes logic asks it for Colors)
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)

    def module_logic(cls, name: str):
        logic = cls()
        logic.SetMRMLApplicationLogic(app)
        logic.SetMRMLScene(scene)
        app.SetModuleLogic(name, logic)
        return logic

    colors = module_logic(slicer.vtkSlicerColorLogic, "Colors")  # Slicer's default colour files are not in the wheel
    volumes = module_logic(slicer.vtkSlicerVolumesLogic, "Volumes")
    segmentations = module_logic(slicer.vtkSlicerSegmentationsModuleLogic, "Segmentations")  # registers converters
    subjectHierarchy = module_logic(slicer.vtkSlicerSubjectHierarchyModuleLogic, "SubjectHierarchy")
    tables = module_logic(slicer.vtkSlicerTablesLogic, "Tables")
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    # VTK objects that hold raw pointers to each other: keep every one alive until the next install()
    _ALIVE[:] = [scene, app, colors, volumes, segmentations, subjectHierarchy, tables, terminologies]

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def on_node_added(caller, event, node):
        if node.GetHideFromEditors() or not any(node.IsA(c) for c in _HIERARCHY_CLASSES):
            return
        sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
        if not sh.GetItemByDataNode(node):
            sh.CreateItem(sh.GetSceneItemID(), node)

    scene.AddObserver(scene.NodeAddedEvent, on_node_added)

    monkeypatch.setattr(slicer, "mrmlScene", scene, raising=False)
    monkeypatch.setattr(
        slicer,
        "modules",
        types.SimpleNamespace(
            colors=_logic(colors),
            volumes=_logic(volumes),
            segmentations=_logic(segmentations),
            terminologies=_logic(terminologies),
            subjecthierarchy=_logic(subjectHierarchy),
            tables=_logic(tables),
        ),
        raising=False,
    )
    monkeypatch.setattr(
        slicer, "app", types.SimpleNamespace(connect=lambda *a: None, processEvents=lambda *a: None), raising=False
    )
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = _ScriptedLoadableModule
    slm.ScriptedLoadableModuleWidget = _ScriptedLoadableModuleWidget
    slm.ScriptedLoadableModuleLogic = _ScriptedLoadableModuleLogic
    slm.ScriptedLoadableModuleTest = _ScriptedLoadableModuleTest
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = _parameter_node_wrapper
    qt = types.ModuleType("qt")  # only the widget touches Qt; it is not built here
    for name, module in {"slicer.ScriptedLoadableModule": slm, "slicer.parameterNodeWrapper": pnw, "qt": qt}.items():
        monkeypatch.setitem(sys.modules, name, module)
    for path in (SLICER_MODULE_DIR, TESTING_DIR):
        monkeypatch.syspath_prepend(str(path))
    for name in ("LungXSlicer", "LungXSlicerSelfTests"):  # imported afresh against this scene
        monkeypatch.delitem(sys.modules, name, raising=False)
    return slicer


def terminology_entry_in_list(terminologies, entry: str) -> bool:
    """Whether a terminology entry string (context~category~type~modifier~...) names a category, type and
    modifier that its context's loaded list really holds (Slicer's own look-up accepts any entry)."""
    import slicer

    context, category, typ, modifier = entry.split("~")[:4]

    def code(text):
        return tuple(text.split("^")[:2])

    names = _strings(terminologies.GetLoadedTerminologyNames)
    if context not in names:
        return False
    cat = slicer.vtkSlicerTerminologyCategory()
    for c in range(terminologies.GetNumberOfCategoriesInTerminology(context)):
        terminologies.GetNthCategoryInTerminology(context, c, cat)
        if (cat.GetCodingSchemeDesignator(), cat.GetCodeValue()) != code(category):
            continue
        t = slicer.vtkSlicerTerminologyType()
        for n in range(terminologies.GetNumberOfTypesInTerminologyCategory(context, cat)):
            terminologies.GetNthTypeInTerminologyCategory(context, cat, n, t)
            if (t.GetCodingSchemeDesignator(), t.GetCodeValue()) != code(typ):
                continue
            if code(modifier) == ("", ""):
                return True
            m = slicer.vtkSlicerTerminologyType()
            for k in range(terminologies.GetNumberOfTypeModifiersInTerminologyType(context, cat, t)):
                terminologies.GetNthTypeModifierInTerminologyType(context, cat, t, k, m)
                if (m.GetCodingSchemeDesignator(), m.GetCodeValue()) == code(modifier):
                    return True
    return False


def _strings(getter) -> list[str]:
    import vtk

    array = vtk.vtkStringArray()
    getter(array)
    return [array.GetValue(i) for i in range(array.GetNumberOfValues())]
