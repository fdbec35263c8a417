"""The ``qt`` module as Slicer's PythonQt shows it, mapped onto PySide6, so the LungXSlicer panel builds offscreen.

PythonQt (Slicer's Qt binding) and PySide6 wrap the same Qt classes but differ in three ways the module relies on:

- Qt properties are Python attributes: ``label.text = "Done"``, ``combo.currentIndex``, ``spin.value``;
- signals are connected by their C++ signature: ``button.connect("clicked(bool)", slot)``;
- every QObject has ``name`` (its objectName), which ``slicer.util.childWidgetVariables`` reads.

``module()`` returns a ``qt`` module whose QObject classes are PySide6 subclasses with those three additions (made
on first use from each class's meta-object, so every property Qt declares is there), everything else being PySide6's
own (enums, QFile, QApplication...). ``qt.QUiLoader`` builds ``.ui`` files with these classes and asks a factory for
the classes Qt does not know (the CTK and qMRML widgets: tests/slicer_widgets.py).

Needs ``PySide6-Essentials`` (the ``slicer-test`` extra) and ``QT_QPA_PLATFORM=offscreen`` without a display.
"""

from __future__ import annotations

import os
import sys
import types

# Virtual methods that are also properties: a Python attribute of that name would shadow what Qt calls back.
_NOT_ATTRIBUTES = {"sizeHint", "minimumSizeHint"}

_CLASSES: dict[str, type] = {}
_MODULE: types.ModuleType | None = None


def _connect(self, signature: str, slot) -> bool:
    """PythonQt's ``obj.connect("valueChanged(int)", slot)``: the signal by its name, whatever its arguments."""
    getattr(self, signature.split("(", 1)[0].strip()).connect(slot)
    return True


def pythonqt_class(cls: type) -> type:
    """``cls`` (a PySide6 QObject class) with its Qt properties as attributes, ``connect`` by signature and
    ``name``; made once per class."""
    if cls.__name__ in _CLASSES:
        return _CLASSES[cls.__name__]
    from PySide6 import QtCore

    namespace = {"__module__": "qt", "connect": _connect}
    meta = cls.staticMetaObject
    for i in range(meta.propertyCount()):
        name = meta.property(i).name()
        if name in _NOT_ATTRIBUTES:
            continue
        namespace[name] = property(
            lambda self, n=name: QtCore.QObject.property(self, n),
            lambda self, value, n=name: QtCore.QObject.setProperty(self, n, value),
        )
    namespace["name"] = property(QtCore.QObject.objectName, QtCore.QObject.setObjectName)
    shim = type(cls.__name__, (cls,), namespace)
    _CLASSES[cls.__name__] = shim
    return shim


def module(custom_widgets=None) -> types.ModuleType:
    """The ``qt`` module (one per process, as Qt allows one application). ``custom_widgets(class_name, parent)``
    returns a widget for a class Qt does not know, or None."""
    global _MODULE
    if _MODULE is not None:
        if custom_widgets is not None:
            _MODULE._custom_widgets = custom_widgets
        return _MODULE
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6 import QtCore, QtGui, QtUiTools, QtWidgets

    qt = types.ModuleType("qt", __doc__)
    qt._custom_widgets = custom_widgets
    sources = (QtWidgets, QtGui, QtCore)

    def lookup(name: str):
        for source in sources:
            value = getattr(source, name, None)
            if value is None:
                continue
            if isinstance(value, type) and issubclass(value, QtCore.QObject) and name.startswith("Q"):
                return pythonqt_class(value)
            return value
        raise AttributeError(f"module 'qt' has no attribute {name!r}")

    class QUiLoader(QtUiTools.QUiLoader):
        """Builds a .ui with the PythonQt-style classes; CTK/qMRML classes come from ``custom_widgets``."""

        def createWidget(self, className, parent=None, name=""):  # noqa: N802 - Qt's virtual
            widget = qt._custom_widgets(className, parent) if qt._custom_widgets else None
            if widget is None:
                cls = getattr(QtWidgets, className, None)
                if cls is None:
                    raise RuntimeError(f"no stand-in for the custom widget {className}")
                widget = pythonqt_class(cls)(parent)
            widget.setObjectName(name)
            return widget

    def quiet_ui_connections(mode, context, message) -> None:
        # the .ui connects mrmlSceneChanged(vtkMRMLScene*), a C++ signature PySide6 cannot have: the stand-in
        # qMRMLWidget hands the scene down itself, so Qt's complaint about it is noise
        if context.category == "qt.core.qobject.connect" or message.startswith("QObject::connect"):
            return
        sys.stderr.write(f"{message}\n")

    QtCore.qInstallMessageHandler(quiet_ui_connections)
    qt.QUiLoader = QUiLoader
    qt.__getattr__ = lookup
    if QtWidgets.QApplication.instance() is None:
        qt._application = QtWidgets.QApplication(["lungx-tests"])
    _MODULE = qt
    return qt
