"""CXR anatomy segmentation: a radiograph in, lungs L/R, heart and clavicles L/R out on its exact grid.

:class:`CXRSegmenter` loads the model once and segments :class:`MedicalImage` objects (pure, no files).
:func:`process_case` is the file-level step used by the CLI and by batch runs: read, segment, write
outputs atomically, and return one results row, never raising for a bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungx_core.anatomy import CXR_CLASSES, CXR_STRUCTURES
from lungx_core.cxr.clavicles import ClavicleRefiner
from lungx_core.cxr.gate import FrontalChestGate, display_thumbnail, optional_gate
from lungx_core.image import MedicalImage
from lungx_core.io.inputs import Case
from lungx_core.models.store import shared_model
from lungx_core.orientation import display_flips, flip_display
from lungx_core.postprocess import Measurements, clean_masks, clean_structure, measure, sigmoid, smooth_heart
from lungx_core.preprocess import Letterbox, PreprocessConfig, preprocess_radiograph, unletterbox
from lungx_core.tasks.common import Progress, ok_row, read_checked_radiograph, run_guarded

DEFAULT_MODEL = "cxr_anatomy"
OUTPUT_FORMATS = ("seg.nrrd", "nii.gz", "nrrd", "png", "dicom-seg")


@dataclass
class CXRResult:
    masks: dict[str, np.ndarray]  # each bool, the input's shape and orientation
    probabilities: np.ndarray  # (C, rows, cols) float32, the input's orientation
    measurements: Measurements


class CXRSegmenter:
    """Holds the network; call :meth:`segment` for each radiograph."""

    def __init__(
        self,
        model: str | Path = DEFAULT_MODEL,
        device: str = "auto",
        threshold: float | None = None,
        backend: str = "torch",
        refine_clavicles: bool = True,
    ):
        """``model``: a shipped anatomy model's name or a weights path. Where its config names a
        ``clavicle_refiner`` (``cxr_anatomy``: ``cxr_clavicles``), the clavicles come from that band network
        (``lungx_core/cxr/clavicles.py``) unless ``refine_clavicles`` is False."""
        from lungx_core.models.store import load_model, network_device

        self.net, self.config = load_model(model, device, backend)
        self.device = network_device(self.net)
        self.name = str(self.config.get("name", model))
        self.preprocess = PreprocessConfig.from_dict(self.config["preprocess"])
        self.threshold = float(threshold if threshold is not None else self.config.get("threshold", 0.5))
        refiner = self.config.get("clavicle_refiner") if refine_clavicles else None
        self.refiner = ClavicleRefiner(refiner, device, backend) if refiner else None
        if self.refiner is not None and self.refiner.classes != CXR_CLASSES[-len(self.refiner.classes):]:
            raise ValueError(f"{model}: its clavicle refiner {refiner!r} gives {self.refiner.classes}, not the last "
                             f"classes of {CXR_CLASSES}")

    def predict_probabilities(self, image: np.ndarray, windowed: np.ndarray | None = None) -> np.ndarray:
        """(rows, cols) radiograph in display orientation -> (C, rows, cols) probabilities of the anatomy network
        alone (no clavicle refinement: :meth:`segment` adds it). ``windowed``: the radiograph already windowed
        to the model's percentiles (``MedicalImage.windowed``, turned to display)."""
        logits, box = self._network_logits(image, windowed)
        # Upsample the logits, not the probabilities: smooth full-resolution borders after the sigmoid.
        full = unletterbox(logits, box)
        return sigmoid(full, out=full)  # in place: a fresh array of this size costs more than the sigmoid

    def _network_logits(self, image: np.ndarray, windowed: np.ndarray | None) -> tuple[np.ndarray, Letterbox]:
        """The anatomy network's (C, size, size) logits (heart smoothed) and the letterbox that maps them back."""
        import torch

        x, box = preprocess_radiograph(image, self.preprocess, windowed)
        with torch.inference_mode():
            logits = self.net(torch.from_numpy(x)[None, None].to(self.device))[0].float().cpu().numpy()
        return smooth_heart(logits), box

    def segment(self, image: MedicalImage) -> CXRResult:
        flip_rows, flip_cols, readable = display_flips(image.metadata)
        display = np.ascontiguousarray(flip_display(image.array, flip_rows, flip_cols))
        pre = self.preprocess
        # one window of the film for the network, the mirrored-film check (and the gate and QC picture before
        # and after this): windowing commutes with the display flips
        windowed = np.ascontiguousarray(
            flip_display(image.windowed(pre.low_percentile, pre.high_percentile), flip_rows, flip_cols))
        logits, box = self._network_logits(display, windowed)
        probs = unletterbox(logits, box)
        # the channels the band network replaces get their sigmoid and clean-up only if it finds no band: on a
        # 2k film each costs about 15 ms
        own = len(CXR_CLASSES) - (len(self.refiner.classes) if self.refiner is not None else 0)
        sigmoid(probs[:own], out=probs[:own])
        masks = clean_masks(probs[:own], self.threshold, CXR_CLASSES[:own])
        tail = probs[own:]  # still logits: the anatomy network's own clavicles, unless the band network overwrites them
        if self.refiner is not None:  # the clavicles looked at again at about twice the resolution
            self.refiner.logits(windowed, masks["lung_left"] | masks["lung_right"], out=tail)
        for c, logit in enumerate(tail, start=own):
            name = CXR_CLASSES[c]
            masks[name] = clean_structure(name, sigmoid(logit, out=probs[c]) >= self.threshold)
        pixel_area = image.pixel_area_mm2 if image.spacing_known else None
        meas = measure(masks, probs, pixel_area)
        if not readable:
            meas.flags.append("orientation_unreadable")
        if not image.spacing_known:
            meas.flags.append("spacing_unknown")
        elif image.metadata.get("spacing_source") == "ImagerPixelSpacing":
            meas.flags.append("spacing_at_detector")
        if image.metadata.get("converted_from_colour"):
            meas.flags.append("converted_from_colour")
        if image.metadata.get("modality_unverified"):
            meas.flags.append("modality_unverified")
        if str(image.metadata.get("view_position", "")).upper() == "AP":
            meas.flags.append("ap_view_ctr_magnified")  # AP (often portable) films magnify the heart
        if "left_right_inconsistent" not in meas.flags and mirror_check().is_mirrored(
                display, view=display_thumbnail(image)):
            meas.flags.append("left_right_inconsistent")  # the lungs' labels follow the image, not the patient
        back = {k: np.ascontiguousarray(flip_display(m, flip_rows, flip_cols)) for k, m in masks.items()}
        return CXRResult(back, np.ascontiguousarray(flip_display(probs, flip_rows, flip_cols)), meas)


def mirror_check():
    """The mirrored-film check (``cxr/laterality.py``), loaded once per process; a 128-px classifier, on CPU."""
    from lungx_core.cxr.laterality import MirrorCheck
    from lungx_core.models.store import shared_model

    return shared_model(MirrorCheck)


def write_outputs(
    out_dir: Path,
    case_id: str,
    image: MedicalImage,
    result: CXRResult,
    fmt: str = "seg.nrrd",
    overlay: bool = True,
    algorithm: str = DEFAULT_MODEL,
) -> list[Path]:
    """Write the masks in ``fmt`` and a QC overlay; every file atomically. Returns the written paths.
    ``algorithm`` names the model in a DICOM SEG."""
    from lungx_core.io.writers import all_or_nothing, render_overlay, write_masks, write_png

    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    with all_or_nothing() as written:
        write_masks(written, out_dir, case_id, image, result.masks, CXR_STRUCTURES, fmt, algorithm)
        if overlay:
            written.append(out_dir / f"{case_id}_overlay.png")
            write_png(written[-1], render_overlay(image, result.masks, CXR_STRUCTURES))
    return written


RESULT_COLUMNS = (
    ["ctr", "heart_solidity", "clavicles_found"]
    + [f"area_cm2_{s.name}" for s in CXR_STRUCTURES]
    + [f"area_px_{s.name}" for s in CXR_STRUCTURES]
    + [f"confidence_{s.name}" for s in CXR_STRUCTURES]
)


def result_row(case: Case, image: MedicalImage, result: CXRResult, outputs: list[Path]) -> dict[str, Any]:
    m = result.measurements
    row = ok_row(
        case,
        "cxr-anatomy",
        qc_flags=";".join(m.flags),
        ctr="" if m.ctr is None else round(m.ctr, 4),
        heart_solidity="" if m.heart_solidity is None else round(m.heart_solidity, 4),
        clavicles_found=m.clavicles_found,
        spacing_mm=f"{image.spacing[0]:.4g}x{image.spacing[1]:.4g}" if image.spacing_known else "",
        outputs=";".join(p.name for p in outputs),
    )
    for s in CXR_STRUCTURES:
        row[f"area_px_{s.name}"] = m.area_px[s.name]
        row[f"area_cm2_{s.name}"] = "" if m.area_cm2 is None else round(m.area_cm2[s.name], 3)
        row[f"confidence_{s.name}"] = round(m.confidence[s.name], 4)
    return row


def process_case(
    case: Case,
    segmenter: CXRSegmenter,
    out_dir: Path,
    fmt: str = "seg.nrrd",
    overlay: bool = True,
    gate: FrontalChestGate | None = None,
) -> dict[str, Any]:
    """Read, check with ``gate`` (when given), segment and write one case. Bad input becomes an error row;
    nothing partial is left behind."""
    def work() -> dict[str, Any]:
        image = read_checked_radiograph(case.path, gate)
        result = segmenter.segment(image)
        outputs = write_outputs(out_dir, case.case_id, image, result, fmt, overlay, segmenter.name)
        return result_row(case, image, result, outputs)

    return run_guarded(case, "cxr-anatomy", work)


def run_one(
    case: Case,
    out_dir: Path,
    device: str = "auto",
    fast: bool = False,
    progress: Progress | None = None,
    model: str = DEFAULT_MODEL,
    threshold: float | None = None,
    input_check: str = "on",
    *,
    fmt: str = "seg.nrrd",
    overlay: bool | None = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """One radiograph, as the worker process and batch runs (lungx_core.batch) run it: masks in ``fmt`` plus the
    QC picture unless ``overlay`` is False (default: not ``fast``), the network run by ``backend`` (auto,
    torch or onnx: ``lungx_core.models.store.load_model``). Models are loaded once per process."""
    report = progress or (lambda fraction, message: None)
    report(0.0, "loading the model")
    segmenter = shared_model(CXRSegmenter, model or DEFAULT_MODEL, device, threshold, backend)
    gate = optional_gate(input_check, device)
    report(0.3, f"segmenting on {segmenter.device}")
    return process_case(case, segmenter, out_dir, fmt, overlay=not fast if overlay is None else overlay, gate=gate)


def lung_segmenter(device: str = "auto", backend: str = "auto") -> CXRSegmenter:
    """The shipped anatomy model that finds the lung fields for the other radiograph tasks (one per process,
    shared with ``segment``'s)."""
    return shared_model(CXRSegmenter, DEFAULT_MODEL, device, None, backend)
