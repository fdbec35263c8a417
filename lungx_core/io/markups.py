"""Slicer Markups JSON: point lists that 3D Slicer loads as they are (File > Add Data, or
``slicer.util.loadMarkups``), written in LPS millimetres as Slicer itself writes them."""

from __future__ import annotations

import json
from pathlib import Path

MARKUPS_SCHEMA = (
    "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/Resources/Schema/"
    "markups-schema-v1.0.3.json#"
)


def point_list(points: list[dict], name: str, color: tuple[float, float, float] = (1.0, 0.5, 0.0)) -> dict:
    """A ``Fiducial`` markups document: ``points`` are dicts with ``label``, ``description`` and ``lps`` (x, y, z
    mm). Points are locked (findings to look at, not to drag)."""
    control_points = [
        {"id": str(i + 1), "label": p["label"], "description": p.get("description", ""), "associatedNodeID": "",
         "position": [round(float(v), 3) for v in p["lps"]], "orientation": [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0,
                                                                              0.0, 1.0],
         "selected": True, "locked": True, "visibility": True, "positionStatus": "defined"}
        for i, p in enumerate(points)
    ]
    return {
        "@schema": MARKUPS_SCHEMA,
        "markups": [{
            "type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm", "locked": True,
            "fixedNumberOfControlPoints": False, "labelFormat": "%N-%d", "lastUsedControlPointNumber": len(points),
            "name": name, "controlPoints": control_points, "measurements": [],
            "display": {"visibility": True, "opacity": 1.0, "color": list(color), "selectedColor": list(color),
                        "propertiesLabelVisibility": True, "pointLabelsVisibility": True, "textScale": 3.0,
                        "glyphType": "Circle2D", "glyphScale": 3.0, "sliceProjection": False},
        }],
    }


def write_point_list(path: Path, points: list[dict], name: str) -> None:
    """:func:`point_list` written atomically to ``path`` (``.mrk.json``)."""
    from lungx_core.io.writers import write_text_atomic

    write_text_atomic(path, json.dumps(point_list(points, name), indent=2))
