"""Minimal CTK and qMRML widgets over the real MRML scene, for building the LungXSlicer panel with PySide6.

Slicer's own ctkCollapsibleButton, qMRMLWidget, qMRMLNodeComboBox and qMRMLTableView are C++ widgets that the
slicer-core wheel does not carry. These stand-ins do what the panel relies on, reading the real scene
(``slicer.vtkMRMLScene``): the combo box lists the scene's nodes of its ``nodeTypes`` and follows node additions,
removals and scene closes, the table view shows a real vtkMRMLTableNode. ``create`` is the factory that
tests/qt_shim.py's ``QUiLoader`` calls for classes Qt does not know.
"""

from __future__ import annotations

import shiboken6
from PySide6 import QtCore, QtWidgets
from qt_shim import pythonqt_class

_QWidget = pythonqt_class(QtWidgets.QWidget)
_QGroupBox = pythonqt_class(QtWidgets.QGroupBox)
_QComboBox = pythonqt_class(QtWidgets.QComboBox)
_QTableWidget = pythonqt_class(QtWidgets.QTableWidget)


def _propagate_scene(widget, scene) -> None:
    """What the .ui's mrmlSceneChanged -> setMRMLScene connections do (PySide6 cannot connect a vtkMRMLScene*)."""
    for child in widget.findChildren(QtWidgets.QWidget):
        if child is not widget and hasattr(child, "setMRMLScene"):
            child.setMRMLScene(scene)


class qMRMLWidget(_QWidget):  # noqa: N801 - Slicer's class name
    mrmlSceneChanged = QtCore.Signal(object)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None

    def setMRMLScene(self, scene) -> None:  # noqa: N802
        self._scene = scene
        _propagate_scene(self, scene)
        self.mrmlSceneChanged.emit(scene)

    def mrmlScene(self):  # noqa: N802
        return self._scene


class ctkCollapsibleButton(_QGroupBox):  # noqa: N801 - CTK's class name
    """A titled box whose contents hide when collapsed."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._collapsed = False

    def _get_text(self) -> str:
        return self.title

    def _set_text(self, value: str) -> None:
        self.title = value

    def _get_collapsed(self) -> bool:
        return self._collapsed

    def _set_collapsed(self, value: bool) -> None:
        self._collapsed = bool(value)
        for child in self.findChildren(QtWidgets.QWidget, options=QtCore.Qt.FindDirectChildrenOnly):
            child.setVisible(not self._collapsed)

    def childEvent(self, event) -> None:  # noqa: N802 - Qt's virtual: the .ui adds children after `collapsed`
        super().childEvent(event)
        child = event.child()
        if event.added() and self._collapsed and isinstance(child, QtWidgets.QWidget):
            child.setVisible(False)

    text = QtCore.Property(str, _get_text, _set_text)
    collapsed = QtCore.Property(bool, _get_collapsed, _set_collapsed)


class qMRMLNodeComboBox(_QComboBox):  # noqa: N801 - Slicer's class name
    """The scene's nodes of ``nodeTypes`` (subclasses too when ``showChildNodeTypes``), "None" first when
    ``noneEnabled``; like Slicer's, it selects the first node when nothing is selected and None is not allowed."""

    currentNodeChanged = QtCore.Signal(object)
    currentNodeIDChanged = QtCore.Signal(str)

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self._observers = []
        self._node_types: list[str] = []
        self._flags = {"showChildNodeTypes": True, "noneEnabled": False, "addEnabled": True, "removeEnabled": True,
                       "renameEnabled": False}
        self._none_display = "None"
        self.currentIndexChanged.connect(self._emit_current)

    def _flag(name):  # noqa: N805 - builds the Qt properties below
        return QtCore.Property(bool, lambda self: self._flags[name],
                               lambda self, value: (self._flags.__setitem__(name, bool(value)), self._refresh()))

    showChildNodeTypes = _flag("showChildNodeTypes")
    noneEnabled = _flag("noneEnabled")
    addEnabled = _flag("addEnabled")
    removeEnabled = _flag("removeEnabled")
    renameEnabled = _flag("renameEnabled")
    del _flag

    def _get_node_types(self) -> list:
        return list(self._node_types)

    def _set_node_types(self, value) -> None:
        self._node_types = [str(v) for v in value]
        self._refresh()

    def _get_none_display(self) -> str:
        return self._none_display

    def _set_none_display(self, value: str) -> None:
        self._none_display = value
        self._refresh()

    nodeTypes = QtCore.Property("QStringList", _get_node_types, _set_node_types)
    noneDisplay = QtCore.Property(str, _get_none_display, _set_none_display)

    def setMRMLScene(self, scene) -> None:  # noqa: N802
        for obj, tag in self._observers:
            obj.RemoveObserver(tag)
        self._scene = scene
        self._observers = [(scene, scene.AddObserver(event, self._on_scene_event))
                           for event in (scene.NodeAddedEvent, scene.NodeRemovedEvent, scene.EndCloseEvent,
                                         scene.EndImportEvent)] if scene is not None else []
        self._refresh()

    def mrmlScene(self):  # noqa: N802
        return self._scene

    def _on_scene_event(self, *args) -> None:
        if shiboken6.isValid(self):  # the scene outlives a panel that Python has let go of
            self._refresh()

    def _matches(self, node) -> bool:
        if node.GetHideFromEditors():
            return False
        if self._flags["showChildNodeTypes"]:
            return any(node.IsA(t) for t in self._node_types)
        return node.GetClassName() in self._node_types

    def _refresh(self) -> None:
        current = self.currentNodeID()
        blocked = self.blockSignals(True)
        self.clear()
        if self._flags["noneEnabled"]:
            self.addItem(self._none_display, "")
        if self._scene is not None:
            for i in range(self._scene.GetNumberOfNodes()):
                node = self._scene.GetNthNode(i)
                if self._matches(node):
                    self.addItem(node.GetName(), node.GetID())
        index = self.findData(current) if current else -1
        if index < 0:
            index = 0 if self.count else -1
        self.setCurrentIndex(index)
        self.blockSignals(blocked)
        if self.currentNodeID() != current:
            self._emit_current()

    def currentNodeID(self) -> str:  # noqa: N802
        index = self.currentIndex
        return (self.itemData(index) or "") if index >= 0 else ""

    def currentNode(self):  # noqa: N802
        node_id = self.currentNodeID()
        return self._scene.GetNodeByID(node_id) if node_id and self._scene is not None else None

    def setCurrentNodeID(self, node_id: str) -> None:  # noqa: N802
        index = self.findData(node_id or "")
        if index < 0 and not node_id and not self._flags["noneEnabled"]:
            return  # Slicer's combo box keeps its node when None is not allowed
        self.setCurrentIndex(index)

    def setCurrentNode(self, node) -> None:  # noqa: N802
        self.setCurrentNodeID(node.GetID() if node is not None else "")

    def _emit_current(self, *args) -> None:
        self.currentNodeChanged.emit(self.currentNode())
        self.currentNodeIDChanged.emit(self.currentNodeID())


class qMRMLTableView(_QTableWidget):  # noqa: N801 - Slicer's class name
    """Shows a vtkMRMLTableNode's cells, its column names as the header."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self._scene = None
        self._table = None

    def setMRMLScene(self, scene) -> None:  # noqa: N802
        self._scene = scene

    def setMRMLTableNode(self, node) -> None:  # noqa: N802
        self._table = node
        table = node.GetTable() if node is not None else None
        rows = table.GetNumberOfRows() if table is not None else 0
        cols = table.GetNumberOfColumns() if table is not None else 0
        self.setRowCount(rows)
        self.setColumnCount(cols)
        self.setHorizontalHeaderLabels([node.GetColumnName(c) for c in range(cols)] if cols else [])
        for r in range(rows):
            for c in range(cols):
                self.setItem(r, c, QtWidgets.QTableWidgetItem(node.GetCellText(r, c)))
        self.resizeColumnsToContents()

    def mrmlTableNode(self):  # noqa: N802
        return self._table


STAND_INS = {cls.__name__: cls for cls in (qMRMLWidget, ctkCollapsibleButton, qMRMLNodeComboBox, qMRMLTableView)}


def create(class_name: str, parent=None):
    """A stand-in for ``class_name``, or None for Qt's own classes."""
    cls = STAND_INS.get(class_name)
    return cls(parent) if cls is not None else None
