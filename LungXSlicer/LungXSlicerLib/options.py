"""A task's own options as the panel offers them: which widget, its range and default, and which values to send.

The option descriptions come from lungx_core's task registry (``registry.as_json()``: name, kind, default, help,
choices, low, high), so a task's new option appears in the panel without GUI changes. Pure Python: the widget code
in LungXSlicer.py turns these into Qt widgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

INT_LIMIT = 2**31 - 1  # QSpinBox holds a C int


@dataclass(frozen=True)
class OptionField:
    name: str
    widget: str  # QComboBox, QSpinBox, QDoubleSpinBox or QLineEdit
    label: str
    tooltip: str
    default: Any  # the widget's initial value ("" for a text field whose default the task decides)
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None


def option_field(spec: dict) -> OptionField:
    """How to show one registry option (a dict from ``registry.as_json()``)."""
    kind, default = spec["kind"], spec.get("default")
    widget = {"choice": "QComboBox", "int": "QSpinBox", "float": "QDoubleSpinBox"}.get(kind, "QLineEdit")
    tooltip = spec.get("help", "")
    if kind == "str" and default is None:
        tooltip += " Leave empty for the default."
        default = ""
    low, high = spec.get("low"), spec.get("high")
    if kind == "int":
        low = -INT_LIMIT if low is None else max(int(low), -INT_LIMIT)
        high = INT_LIMIT if high is None else min(int(high), INT_LIMIT)
    return OptionField(
        name=spec["name"],
        widget=widget,
        label=spec["name"].replace("_", " ").capitalize() + ":",
        tooltip=tooltip,
        default=default,
        choices=tuple(spec.get("choices", ())),
        low=low,
        high=high,
    )


def values_to_send(fields: list[OptionField], values: dict[str, Any]) -> dict[str, Any]:
    """The options to hand to the worker: every number and choice, and text fields that are not empty (an empty
    text field means "the task's default", e.g. the shipped model)."""
    out = {}
    for f in fields:
        value = values.get(f.name, f.default)
        if f.widget == "QLineEdit":
            value = str(value).strip()
            if not value:
                continue
        elif f.widget == "QSpinBox":
            value = int(value)
        elif f.widget == "QDoubleSpinBox":
            value = float(value)
        out[f.name] = value
    return out
