"""Real 3D Slicer MRML for tests, without the Slicer application.

The `slicer-core` wheel (the `slicer-test` extra) is Slicer's own MRML, Segmentations, Volumes, Colors,
Terminologies, Subject Hierarchy and Tables logic plus Slicer's `slicer/util.py`, without Qt. What the Qt application
normally does, this harness does:

- creates the scene and the module logics and sets ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()``
  (creating the Segmentations logic registers the representation converters);
- adds a subject-hierarchy item for each new data node, as Slicer's subject-hierarchy plugins do;
- stands in for what the Qt application provides: ``slicer.app`` (testing mode, event processing), the Qt-bound
  ``slicer.ScriptedLoadableModule`` base classes, and ``slicer.parameterNodeWrapper`` (fields kept in the real
  parameter node, widgets tied to them by ``SlicerParameterName``);
- ``qt``: empty for the logic, or (``install(..., with_qt=True)``) PySide6 seen as PythonQt with CTK/qMRML
  stand-ins over the real scene, so the module's real widget and .ui are built offscreen (tests/qt_shim.py).

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
    """Slicer's base widget as far as the module uses it: ``parent`` (the module panel, a QWidget with a vertical
    layout and ``isEntered``), ``layout`` and ``resourcePath``. Without Qt (no ``qt_shim``) only ``parent``."""

    def __init__(self, parent=None):
        import qt

        if parent is None and hasattr(qt, "QWidget"):
            parent = qt.QWidget()
            parent.setLayout(qt.QVBoxLayout())
            parent.isEntered = True
        self.parent = parent
        self.layout = parent.layout() if parent is not None and hasattr(parent, "layout") else None

    def setup(self) -> None:
        pass

    def resourcePath(self, filename: str) -> str:
        return str(Path(sys.modules[type(self).__module__].__file__).parent / "Resources" / filename)


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
    """Typed fields stored in a real vtkMRMLScriptedModuleNode as Slicer's wrapper stores them (nodes as node
    references, the rest as parameters), so they survive saving and reloading the scene; defaults from the class.
    ``connectGui`` ties widgets carrying a ``SlicerParameterName`` property to their field both ways."""
    hints = typing.get_type_hints(cls)

    def is_node(hint) -> bool:
        import slicer

        return isinstance(hint, type) and issubclass(hint, slicer.vtkMRMLNode)

    class Wrapped:
        def __init__(self, parameterNode):
            object.__setattr__(self, "parameterNode", parameterNode)
            names = list(parameterNode.GetParameterNames())
            for name, hint in hints.items():
                default = getattr(cls, name, None)
                if not is_node(hint) and name not in names and default is not None:
                    parameterNode.SetParameter(name, str(default))

        def __getattr__(self, name):
            if name not in hints:
                raise AttributeError(name)
            node, hint = self.parameterNode, hints[name]
            if is_node(hint):
                return node.GetNodeReference(name)
            text = node.GetParameter(name)
            if hint is bool:
                return text == "True"
            return hint(text) if text or hint is str else None

        def __setattr__(self, name, value):
            if name not in hints:
                raise AttributeError(f"{cls.__name__} has no parameter {name!r}")
            if is_node(hints[name]):
                self.parameterNode.SetNodeReferenceID(name, value.GetID() if value is not None else None)
            else:
                self.parameterNode.SetParameter(name, str(value))

        def AddObserver(self, *args):  # noqa: N802 - VTK's name, forwarded as Slicer's wrapper does
            return self.parameterNode.AddObserver(*args)

        def RemoveObserver(self, *args):  # noqa: N802
            return self.parameterNode.RemoveObserver(*args)

        def connectGui(self, ui):  # noqa: N802
            """Each ``SlicerParameterName`` widget shows its field and sets it when the user changes it."""
            links = []
            for widget in vars(ui).values():
                name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
                if not name:
                    continue
                if name not in hints:
                    raise AttributeError(f"{widget.objectName()}: {cls.__name__} has no parameter {name!r}")
                if hasattr(widget, "currentNodeChanged"):
                    signal, slot = widget.currentNodeChanged, self._setter(name)
                elif hasattr(widget, "toggled"):
                    signal, slot = widget.toggled, self._setter(name)
                else:
                    raise TypeError(f"{widget.objectName()}: no GUI connector for {type(widget).__name__}")
                signal.connect(slot)
                links.append((widget, name, signal, slot))
            import vtk

            tag = self.parameterNode.AddObserver(vtk.vtkCommand.ModifiedEvent, lambda *a: self._updateGui(links))
            self._updateGui(links)
            return tag, links

        def disconnectGui(self, tag):  # noqa: N802
            if tag is None:
                return
            observer, links = tag
            self.parameterNode.RemoveObserver(observer)
            for _, _, signal, slot in links:
                signal.disconnect(slot)

        def _setter(self, name):
            def set_value(value):
                if getattr(self, name) != value:
                    setattr(self, name, value)

            return set_value

        def _updateGui(self, links) -> None:  # noqa: N802
            for widget, name, _, _ in links:
                value = getattr(self, name)
                if hasattr(widget, "currentNodeChanged"):
                    if widget.currentNode() is not value:
                        widget.setCurrentNode(value)
                elif widget.isChecked() != bool(value):
                    widget.setChecked(bool(value))

    Wrapped.__name__ = Wrapped.__qualname__ = cls.__name__
    Wrapped.__annotations__ = dict(cls.__annotations__)
    Wrapped.__module__ = cls.__module__
    return Wrapped


def _application(app_logic, qt=None) -> types.SimpleNamespace:
    """``slicer.app`` as the module uses it: in testing mode (message boxes are logged, not shown), events
    processed by Qt's application when there is one, no main window and no layout manager."""
    process = qt.QApplication.processEvents if qt is not None else (lambda *a: None)
    return types.SimpleNamespace(
        applicationLogic=lambda: app_logic, connect=lambda *a: None, processEvents=lambda *a: process(),
        testingEnabled=lambda: True, applicationName="Slicer", setOverrideCursor=lambda *a: None,
        restoreOverrideCursor=lambda *a: None,
        layoutManager=lambda: None,
    )


def install(monkeypatch, with_qt: bool = False) -> types.ModuleType:
    """A fresh real MRML scene and module logics, with the Qt-only stand-ins; returns the ``slicer`` module.

    ``with_qt``: ``qt`` is PySide6 seen as PythonQt (tests/qt_shim.py) with the CTK/qMRML stand-ins
    (tests/slicer_widgets.py), so the module's widget can be built; else an empty ``qt`` (the logic needs none).
    Skips the calling test when slicer-core (or, with_qt, PySide6) is not installed (``pip install -e
    ".[slicer-test]"``)."""
    pytest.importorskip("slicer_core", reason="slicer-core (real Slicer MRML) is not installed")
    if with_qt:
        pytest.importorskip("PySide6.QtUiTools", reason="PySide6-Essentials (Qt for the panel) is not installed")
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
    markups = module_logic(slicer.vtkSlicerMarkupsLogic, "Markups")  # the markups views ask it for their widgets
    terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
    # VTK objects that hold raw pointers to each other: keep every one alive until the next install()
    _ALIVE[:] = [scene, app, colors, volumes, segmentations, subjectHierarchy, tables, markups, terminologies]

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
            markups=_logic(markups),
        ),
        raising=False,
    )
    if with_qt:
        import qt_shim
        import slicer_widgets

        qt = qt_shim.module(slicer_widgets.create)
    else:
        qt = types.ModuleType("qt")  # only the widget touches Qt; it is not built here
    monkeypatch.setattr(slicer, "app", _application(app, qt if with_qt else None), raising=False)
    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    slm.ScriptedLoadableModule = _ScriptedLoadableModule
    slm.ScriptedLoadableModuleWidget = _ScriptedLoadableModuleWidget
    slm.ScriptedLoadableModuleLogic = _ScriptedLoadableModuleLogic
    slm.ScriptedLoadableModuleTest = _ScriptedLoadableModuleTest
    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    pnw.parameterNodeWrapper = _parameter_node_wrapper
    for name, module in {"slicer.ScriptedLoadableModule": slm, "slicer.parameterNodeWrapper": pnw, "qt": qt}.items():
        monkeypatch.setitem(sys.modules, name, module)
    for path in (SLICER_MODULE_DIR, TESTING_DIR):
        monkeypatch.syspath_prepend(str(path))
    for name in ("LungXSlicer", "LungXSlicerSelfTests"):  # imported afresh against this scene
        monkeypatch.delitem(sys.modules, name, raising=False)
    return slicer


def volume_node(image, name: str):
    """A lungx_core MedicalImage as a scalar volume node of the current scene, with its geometry (LPS -> RAS), as
    the module's worker results are placed."""
    import slicer
    from LungXSlicerLib.geometry import as_slicer_array, ijk_to_ras

    return slicer.util.addVolumeFromArray(
        as_slicer_array(image.array), ijk_to_ras(image.spacing, image.origin, image.direction), name
    )


def terminology_entry_in_list(terminologies, entry: str) -> bool:
    """Whether a terminology entry string (context~category~type~modifier~...) names a category, type and
    modifier that its context's loaded list really holds (Slicer's own look-up accepts any entry)."""
    return terminology_lookup(terminologies, entry) is not None


def terminology_lookup(terminologies, entry: str):
    """The loaded list's type (or its modifier, when the entry has one) that an entry string names, or None; its
    ``GetRecommendedDisplayRGBValue()`` is the colour the list recommends."""
    import slicer

    context, category, typ, modifier = entry.split("~")[:4]

    def code(text):
        return tuple(text.split("^")[:2])

    names = _strings(terminologies.GetLoadedTerminologyNames)
    if context not in names:
        return None
    cat = slicer.vtkSlicerTerminologyCategory()
    for c in range(terminologies.GetNumberOfCategoriesInTerminology(context)):
        terminologies.GetNthCategoryInTerminology(context, c, cat)
        if (cat.GetCodingSchemeDesignator(), cat.GetCodeValue()) != code(category):
            continue
        for n in range(terminologies.GetNumberOfTypesInTerminologyCategory(context, cat)):
            t = slicer.vtkSlicerTerminologyType()
            terminologies.GetNthTypeInTerminologyCategory(context, cat, n, t)
            if (t.GetCodingSchemeDesignator(), t.GetCodeValue()) != code(typ):
                continue
            if code(modifier) == ("", ""):
                return t
            for k in range(terminologies.GetNumberOfTypeModifiersInTerminologyType(context, cat, t)):
                m = slicer.vtkSlicerTerminologyType()
                terminologies.GetNthTypeModifierInTerminologyType(context, cat, t, k, m)
                if (m.GetCodingSchemeDesignator(), m.GetCodeValue()) == code(modifier):
                    return m
    return None


def _strings(getter) -> list[str]:
    import vtk

    array = vtk.vtkStringArray()
    getter(array)
    return [array.GetValue(i) for i in range(array.GetNumberOfValues())]
