"""Rib suppression: a frontal radiograph in, the same film with the posterior ribs taken out.

Three steps: a rib mask (the ``cxr_ribs`` model inside the lung field, or the user's mask), diffusion
inpainting of the film under the mask (``lungx_core/inpainting.py``, seeded), and blending back onto the
full-resolution film (``lungx_core/blending.py``): ``subtract`` removes only the smooth bone signal,
``inpaint`` replaces the pixels. Every pixel beyond the feathered border of the mask is the input's, bit for bit.

:class:`RibSuppressor` works on arrays; :func:`suppress_ribs_case` is the file-level step of
``lungx suppress-ribs``: read, mask, suppress, write everything atomically, one row back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungx_core.errors import InputError
from lungx_core.gate import FrontalChestGate, optional_gate
from lungx_core.image import MedicalImage
from lungx_core.io.inputs import Case
from lungx_core.orientation import display_view
from lungx_core.tasks.common import Progress, read_checked_radiograph, run_guarded
from lungx_core.tasks.synthesis import find_lungs, read_lung_mask

DEFAULT_INPAINTING = "cxr_inpainting"
DEFAULT_RIBS = "cxr_ribs"
TASK = "cxr-rib-suppression"
RESULT_COLUMNS = ["mask_source", "mode", "steps", "seed", "rib_fraction", "seconds"]
MIN_RIB_PIXELS = 16


@dataclass(frozen=True)
class SuppressionSettings:
    mode: str = "subtract"  # or "inpaint"; see lungx_core/blending.py
    steps: int = 25
    seed: int = 0
    scheduler: str = "ddim"  # or "dpm", "repaint"
    feather: float = 0.006  # feathered border, as a fraction of the film's long side


@dataclass
class SuppressionResult:
    array: np.ndarray  # the suppressed film: the input's shape, orientation and dtype
    ribs: np.ndarray  # bool, the rib mask that was regenerated
    changeable: np.ndarray  # bool, the ribs and their feathered border: the only pixels that may differ


class RibSuppressor:
    """Holds the inpainting model and (loaded on first use) the rib-mask model."""

    def __init__(self, model: str | Path = DEFAULT_INPAINTING, rib_model: str | Path = DEFAULT_RIBS,
                 device: str = "auto"):
        from lungx_core.inpainting import DiffusionInpainter

        self.inpainter = DiffusionInpainter(model, device)
        self.device = self.inpainter.device
        self._rib_model, self._device_name, self._masker = rib_model, device, None

    def rib_mask(self, image: MedicalImage, lung: np.ndarray | None) -> np.ndarray:
        """The rib mask of a film (bool, the image's orientation), inside the lung field when ``lung`` is given."""
        from lungx_core.ribs import RibMasker

        if self._masker is None:
            self._masker = RibMasker(self._rib_model, self._device_name)
        display, lung_display, undo = display_view(image, lung)
        return undo(self._masker.mask(display, lung_display))

    def suppress(self, image: MedicalImage, ribs: np.ndarray, settings: SuppressionSettings) -> SuppressionResult:
        """Suppress the bone under ``ribs`` (bool, the image's shape)."""
        from lungx_core.blending import suppress

        check_rib_mask(image, ribs)
        known, filled = self.inpainter.fill(image.array, ribs, settings.steps, settings.seed, settings.scheduler)
        feather_px = settings.feather * max(image.array.shape)
        out, changeable = suppress(image.array, ribs, known, filled, settings.mode, feather_px)
        return SuppressionResult(out, ribs, changeable)


def check_rib_mask(image: MedicalImage, ribs: np.ndarray) -> None:
    if ribs.shape != image.array.shape:
        raise InputError(image.source, f"the rib mask is {ribs.shape[-1]}x{ribs.shape[0]} pixels but the image is "
                         f"{image.array.shape[-1]}x{image.array.shape[0]}")
    if int(ribs.sum()) < MIN_RIB_PIXELS:
        raise InputError(image.source, "the rib mask is empty: nothing to suppress")


def write_outputs(out_dir: Path, case_id: str, image: MedicalImage, result: SuppressionResult) -> list[Path]:
    """``<id>_ribs_suppressed.<input's family>``, ``<id>_ribs.seg.nrrd`` and ``<id>_rib_suppression.png``
    (before | ribs | after); all or nothing."""
    from lungx_core.anatomy import RIBS
    from lungx_core.io.derived import write_processed_set
    from lungx_core.tasks.opacity_removal import before_mask_after

    return write_processed_set(
        out_dir, image, result.array, "Rib-suppressed chest radiograph (lungx)", f"{case_id}_ribs_suppressed",
        (f"{case_id}_ribs.seg.nrrd", {"ribs": result.ribs}, [RIBS]),
        (f"{case_id}_rib_suppression.png", before_mask_after(image.array, result.array, result.ribs)),
    )


def find_ribs(
    path: Path, image: MedicalImage, suppressor: RibSuppressor, rib_mask: Path | None, segmenter: Any
) -> tuple[np.ndarray, str]:
    """(rib mask, where it came from): the given mask file, else the rib model inside the anatomy model's lungs."""
    if rib_mask is not None:
        return read_lung_mask(rib_mask, image, what="rib"), "given"
    lung, _ = find_lungs(path, image, None, segmenter)
    return suppressor.rib_mask(image, lung), "cxr_ribs"


def suppress_ribs_case(
    case: Case,
    suppressor: RibSuppressor,
    out_dir: Path,
    settings: SuppressionSettings,
    rib_mask: Path | None = None,
    segmenter: Any = None,
    gate: FrontalChestGate | None = None,
) -> dict[str, Any]:
    """Read, mask, suppress and write one radiograph; bad input becomes an error row."""
    def work() -> dict[str, Any]:
        t0 = time.perf_counter()
        image = read_checked_radiograph(case.path, gate)
        ribs, source = find_ribs(case.path, image, suppressor, rib_mask, segmenter)
        result = suppressor.suppress(image, ribs, settings)
        outputs = write_outputs(out_dir, case.case_id, image, result)
        return {
            "case_id": case.case_id, "input": str(case.path), "task": TASK, "status": "ok", "error": "",
            "qc_flags": "", "mask_source": source, "mode": settings.mode, "steps": settings.steps,
            "seed": settings.seed, "rib_fraction": round(float(ribs.mean()), 4),
            "outputs": ";".join(p.name for p in outputs), "seconds": round(time.perf_counter() - t0, 3),
        }

    return run_guarded(case, TASK, work)


def run_one(
    case: Case,
    out_dir: Path,
    device: str = "auto",
    fast: bool = False,
    progress: Progress | None = None,
    model: str = DEFAULT_INPAINTING,
    mode: str = "subtract",
    steps: int | None = None,
    seed: int = 0,
    scheduler: str = "ddim",
    input_check: str = "on",
) -> dict[str, Any]:
    """One radiograph, as the worker process runs it: ribs from the rib model inside the anatomy model's lungs;
    ``steps`` defaults to 25, or 10 with ``fast``."""
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    report = progress or (lambda fraction, message: None)
    report(0.0, "loading the models")
    suppressor = RibSuppressor(model or DEFAULT_INPAINTING, device=device)
    segmenter = CXRSegmenter(device=device)
    report(0.3, f"suppressing ribs on {suppressor.device}")
    steps = int(steps) if steps is not None else (10 if fast else 25)
    settings = SuppressionSettings(mode=mode, steps=steps, seed=int(seed), scheduler=scheduler)
    return suppress_ribs_case(
        case, suppressor, out_dir, settings, segmenter=segmenter,
        gate=optional_gate(input_check, device),
    )
