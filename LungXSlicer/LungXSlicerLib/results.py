"""What a finished worker left behind, read into plain data the module turns into nodes.

``manifest.json`` lists the output files (segmentation, volume, markups, table, picture), the QC flags and the
measurements; segments come from the ``.seg.nrrd`` itself (slicerio), so names, colours and terminology in Slicer
are exactly what lungx_core wrote.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from LungXSlicerLib.geometry import ijk_to_ras, lps_to_ras


@dataclass
class SegmentSpec:
    segment_id: str
    name: str
    color: tuple[float, float, float]
    terminology: str  # Slicer's terminology entry string ("" when the file has none)
    mask_kji: np.ndarray  # uint8, (K, J, I) like slicer.util.arrayFromVolume


@dataclass
class SegmentationOutput:
    path: Path
    ijk_to_ras: np.ndarray
    segments: list[SegmentSpec]


@dataclass
class TaskOutputs:
    task: str
    device: str
    seconds: float
    segmentations: list[Path] = field(default_factory=list)
    volumes: list[Path] = field(default_factory=list)
    pictures: list[Path] = field(default_factory=list)
    markups: list[Path] = field(default_factory=list)  # Slicer Markups JSON point lists (.mrk.json)
    tables: list[Path] = field(default_factory=list)  # CSV files (kept on disk; the measurements are the table)
    qc_flags: list[str] = field(default_factory=list)
    measurements: dict[str, object] = field(default_factory=dict)


def read_manifest(path: Path) -> TaskOutputs:
    data = json.loads(Path(path).read_text())
    out = TaskOutputs(data["task"], data.get("device", ""), float(data.get("seconds", 0.0)))
    by_kind = {"segmentation": out.segmentations, "volume": out.volumes, "picture": out.pictures,
               "markups": out.markups, "table": out.tables}
    for item in data.get("outputs", []):
        p = Path(item["path"])
        if not p.exists():
            raise FileNotFoundError(f"the worker listed {p} but it is not there")
        by_kind.get(item.get("kind"), out.pictures).append(p)
    out.qc_flags = list(data.get("qc_flags", []))
    out.measurements = dict(data.get("measurements", {}))
    return out


def read_segmentation(path: Path) -> SegmentationOutput:
    """Every segment of a ``.seg.nrrd`` as a (K, J, I) mask; overlapping segments (layers) stay separate."""
    import slicerio
    from slicerio.segmentation import terminology_entry_to_string

    seg = slicerio.read_segmentation(str(path))
    voxels = seg["voxels"]  # (I, J, K) or (layers, I, J, K)
    if voxels.ndim == 3:
        voxels = voxels[None]
    specs = []
    for s in seg["segments"]:
        layer = voxels[int(s.get("layer", 0))]
        mask = (layer == int(s["labelValue"])).transpose(2, 1, 0)
        term = s.get("terminology")
        specs.append(
            SegmentSpec(
                segment_id=s["id"],
                name=s.get("name", s["id"]),
                color=tuple(float(c) for c in s.get("color", (0.5, 0.5, 0.5)))[:3],
                terminology=terminology_entry_to_string(term) if term else "",
                mask_kji=np.ascontiguousarray(mask, dtype=np.uint8),
            )
        )
    return SegmentationOutput(Path(path), lps_to_ras(seg["ijkToLPS"]), specs)


def read_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(array (K, J, I), IJKToRAS) of an image file, for ``slicer.util.addVolumeFromArray``."""
    import SimpleITK as sitk

    img = sitk.ReadImage(str(path))
    if img.GetDimension() == 2:
        img = sitk.JoinSeries(img)  # a radiograph is a one-slice volume in Slicer
    return sitk.GetArrayFromImage(img), ijk_to_ras(img.GetSpacing(), img.GetOrigin(), img.GetDirection())


def output_label(path: Path, case_id: str = "input") -> str:
    """What an output file is, from its name: ``input_ribs_suppressed.nrrd`` -> "ribs suppressed" (the worker
    names files ``<case id>_<what>.<ext>``, and the module hands it ``input.nrrd``)."""
    name = Path(path).name.split(".")[0]
    if not name.startswith(case_id + "_"):
        return ""
    return name[len(case_id) + 1 :].replace("_", " ")


def table_rows(outputs: TaskOutputs, not_found: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(measurement, value) rows for a table node: the measurements, then the QC flags and the structures not
    found, then run facts; one row per name (a task's own ``seconds`` measurement gives way to the run's)."""
    facts = {"qc_flags", "not_found", "device", "seconds"}
    rows = [(key, _format(value)) for key, value in outputs.measurements.items() if key not in facts]
    rows.append(("qc_flags", "; ".join(outputs.qc_flags) if outputs.qc_flags else "none"))
    if not_found:
        rows.append(("not_found", ", ".join(not_found)))
    rows.append(("device", outputs.device))
    rows.append(("seconds", f"{outputs.seconds:.1f}"))
    return rows


def _format(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
