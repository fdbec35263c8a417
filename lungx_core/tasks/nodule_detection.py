"""Lung nodule candidates on frontal chest radiographs (``lungx detect-nodules``, ``lx.detect_nodules``, the
worker and Slicer task ``cxr-nodules``).

Per film: every candidate above the model's floor, ranked by probability, with its centre (column and row of
the input's pixel array; LPS mm from the input's geometry), its estimated diameter (mm when the pixel size is
known) and its probability (``lungx_core/cxr/nodules.py``). Those at or above the model card's operating point
are the findings: they go into the Slicer markups file and the picture. It is a research aid, not a diagnosis;
the model card (cxr_nodules.md) gives the cross-validated sensitivity and false positives per image.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungx_core.cxr.gate import FrontalChestGate, optional_gate
from lungx_core.cxr.nodules import DEFAULT_NODULE_MODEL, NoduleDetector
from lungx_core.image import MedicalImage
from lungx_core.io.inputs import Case
from lungx_core.orientation import display_flips, flip_display
from lungx_core.tasks.common import Progress, ok_row, read_checked_radiograph, run_guarded

TASK = "cxr-nodules"
RESULT_COLUMNS = ["n_findings", "max_probability", "threshold", "seconds"]
NODULE_COLUMNS = ["case_id", "rank", "col", "row", "x_mm", "y_mm", "diameter_mm", "probability"]


@dataclass
class NoduleFindings:
    """Candidates on one film, most probable first. Each is a dict: ``rank``, ``col``/``row`` (the input
    array's pixels), ``x_mm``/``y_mm`` (the same centre in mm from the first pixel's centre along columns and
    rows; None when the pixel size is unknown), ``lps`` (x, y, z mm, from the image's geometry),
    ``diameter_px``, ``diameter_mm`` (None when the pixel size is unknown) and ``probability``. ``threshold``
    is the model card's operating point."""

    candidates: list[dict]
    threshold: float

    @property
    def findings(self) -> list[dict]:
        """The candidates at or above the operating point."""
        return [c for c in self.candidates if c["probability"] >= self.threshold]

    @property
    def max_probability(self) -> float:
        """The most probable candidate's probability (0 without candidates)."""
        return self.candidates[0]["probability"] if self.candidates else 0.0


def find_nodules(detector: NoduleDetector, image: MedicalImage) -> NoduleFindings:
    """Run ``detector`` on a radiograph in any stored orientation; positions come back on the input's own array
    and geometry."""
    flip_rows, flip_cols, _ = display_flips(image.metadata)
    display = np.ascontiguousarray(flip_display(image.array, flip_rows, flip_cols))
    rows, cols = image.array.shape
    to_lps = image.ijk_to_lps()
    sx, sy = image.spacing[0], image.spacing[1]
    known = image.spacing_known
    out = []
    for c in detector.detect(display):
        col = cols - 1 - c.col if flip_cols else c.col
        row = rows - 1 - c.row if flip_rows else c.row
        lps = to_lps @ np.array([col, row, 0.0, 1.0])
        out.append({
            "rank": c.rank, "col": col, "row": row, "x_mm": col * sx if known else None,
            "y_mm": row * sy if known else None, "lps": tuple(float(v) for v in lps[:3]),
            "diameter_px": c.diameter_px,
            # the network's diameter is in display pixels; non-square pixels: their mean size
            "diameter_mm": c.diameter_px * (sx + sy) / 2 if known else None, "probability": c.probability,
        })
    return NoduleFindings(out, detector.threshold)


def candidate_rows(case_id: str, found: NoduleFindings) -> list[dict]:
    """``nodules.csv`` rows (NODULE_COLUMNS) of one film: every candidate above the floor."""
    def mm(v):
        return "" if v is None else round(v, 2)

    return [{"case_id": case_id, "rank": c["rank"], "col": round(c["col"], 2), "row": round(c["row"], 2),
             "x_mm": mm(c["x_mm"]), "y_mm": mm(c["y_mm"]), "diameter_mm": mm(c["diameter_mm"]),
             "probability": round(c["probability"], 4)} for c in found.candidates]


def nodule_picture(image: MedicalImage, found: NoduleFindings, max_side: int = 1024) -> np.ndarray:
    """RGB picture of the film as stored: a numbered circle of the estimated diameter around each finding."""
    from PIL import Image, ImageDraw

    from lungx_core.io.writers import to_uint8_display

    grey = to_uint8_display(image.array.astype(np.float32))
    scale = min(1.0, max_side / max(grey.shape))
    picture = Image.fromarray(grey).convert("RGB")
    if scale < 1:
        picture = picture.resize((round(grey.shape[1] * scale), round(grey.shape[0] * scale)), Image.LANCZOS)
    draw = ImageDraw.Draw(picture)
    width = max(2, round(max(picture.size) / 400))
    for c in found.findings:
        x, y = c["col"] * scale, c["row"] * scale
        r = max(c["diameter_px"] * scale / 2 + 2 * width, 4 * width)
        draw.ellipse([x - r, y - r, x + r, y + r], outline=(255, 140, 0), width=width)
        draw.text((x + r + width, y - r), f"{c['rank']} ({c['probability']:.2f})", fill=(255, 140, 0),
                  font_size=max(12, round(max(picture.size) / 60)))
    return np.asarray(picture)


def write_outputs(
    out_dir: Path, case_id: str, image: MedicalImage, found: NoduleFindings, fmt: str = "markups",
    algorithm: str = DEFAULT_NODULE_MODEL,
) -> list[Path]:
    """All or nothing: ``<id>_nodules.csv`` (every candidate; the run's nodules.csv is made of these),
    ``<id>_nodules.mrk.json`` (Slicer markups: a point per finding, labelled rank and probability) and
    ``<id>_nodules.png`` (the film with the findings circled); ``fmt`` ``dicom-sr`` adds
    ``<id>_nodules_sr.dcm`` (a TID 1500 measurement report in the source's study; DICOM inputs only)."""
    if fmt not in ("markups", "dicom-sr"):
        raise ValueError(f"unknown nodule output format {fmt!r}; choose markups or dicom-sr")
    from lungx_core.io.markups import write_point_list
    from lungx_core.io.writers import all_or_nothing, write_csv_atomic, write_png

    points = [{"label": f"nodule {c['rank']} p={c['probability']:.2f}", "lps": c["lps"],
               "description": f"lungx nodule candidate {c['rank']}: probability {c['probability']:.3f}, diameter "
                              + (f"{c['diameter_mm']:.1f} mm" if c["diameter_mm"] else f"{c['diameter_px']:.1f} px")}
              for c in found.findings]
    with all_or_nothing() as written:
        written.append(out_dir / f"{case_id}_nodules.csv")
        write_csv_atomic(written[-1], candidate_rows(case_id, found), NODULE_COLUMNS, lineterminator="\n")
        written.append(out_dir / f"{case_id}_nodules.mrk.json")
        write_point_list(written[-1], points, f"{case_id} nodules")
        written.append(out_dir / f"{case_id}_nodules.png")
        write_png(written[-1], nodule_picture(image, found))
        if fmt == "dicom-sr":
            from lungx_core.io.dicom_sr import write_nodule_sr

            written.append(out_dir / f"{case_id}_nodules_sr.dcm")
            write_nodule_sr(written[-1], image, found.findings, algorithm)
    return written


def detect_nodules_case(
    case: Case, detector: NoduleDetector, out_dir: Path, gate: FrontalChestGate | None = None,
    fmt: str = "markups",
) -> dict[str, Any]:
    """Read, check with ``gate`` (when given), detect and write one radiograph; bad input becomes an error row."""
    def work() -> dict[str, Any]:
        t0 = time.perf_counter()
        image = read_checked_radiograph(case.path, gate)
        found = find_nodules(detector, image)
        outputs = write_outputs(out_dir, case.case_id, image, found, fmt, detector.name)
        return ok_row(
            case, TASK,
            qc_flags="" if image.spacing_known else "pixel_size_unknown",
            n_findings=len(found.findings), max_probability=round(found.max_probability, 4),
            threshold=round(found.threshold, 4),
            spacing_mm=f"{image.spacing[0]:.4g}x{image.spacing[1]:.4g}" if image.spacing_known else "",
            outputs=";".join(p.name for p in outputs), seconds=round(time.perf_counter() - t0, 3),
        )

    return run_guarded(case, TASK, work)


def run_one(
    case: Case,
    out_dir: Path,
    device: str = "auto",
    fast: bool = False,
    progress: Progress | None = None,
    model: str = DEFAULT_NODULE_MODEL,
    input_check: str = "on",
    *,
    fmt: str = "markups",
) -> dict[str, Any]:
    """One radiograph, as the worker process and batch runs (lungx_core.batch) run it; ``fmt`` ``dicom-sr`` also
    writes a DICOM SR (DICOM inputs). The model is loaded once per process."""
    from lungx_core.models.store import shared_model

    report = progress or (lambda fraction, message: None)
    report(0.0, "loading the nodule model")
    detector = shared_model(NoduleDetector, model or DEFAULT_NODULE_MODEL, device=device)
    report(0.3, "looking for nodules")
    return detect_nodules_case(case, detector, out_dir, optional_gate(input_check, device), fmt)


def write_run_candidates(out_dir: Path, rows: list[dict]) -> Path:
    """The run's ``nodules.csv``: every successful film's ``<id>_nodules.csv``, in the order of ``rows``
    (input order), written atomically. The same whether the films ran here, on workers or over resumed runs."""
    from lungx_core.io.writers import write_csv_atomic

    candidates = []
    for row in rows:
        path = out_dir / f"{row['case_id']}_nodules.csv"
        if row.get("status") == "ok" and path.exists():
            with open(path, newline="") as f:
                candidates += list(csv.DictReader(f))
    write_csv_atomic(out_dir / "nodules.csv", candidates, NODULE_COLUMNS, lineterminator="\n")
    return out_dir / "nodules.csv"
