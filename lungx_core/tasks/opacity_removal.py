"""Lung-opacity removal: an opaque radiograph in, a clear-looking one out, changed only where the opacity is.

Region-aware with adaptive activation masks (after ARMUT-LOR): the ``cxr_opacity`` model maps opacity on the
thoracic crop and :func:`lungx_core.generative.opacity.activation_mask` turns that into a per-image soft mask.
The shipped ``cxr_opacity_removal`` is a de-opacifier: a compact U-Net given the crop and that mask, trained on
exact (opaque, clear, mask) triples of the lesion model (``lungx_core/generative/lesions.py``,
``training/train_deopacifier.py``).
Its result is composited as ``x + mask * change``. (A ``cxr_opacity_removal``-style CycleGAN generator, whose
config has no ``conditioning``, still loads: ``mask * G(x) + (1 - mask) * x``.) The change goes back onto the
full-resolution film as a residual, so the film's own detail stays, and every pixel outside the mask is the
input's, bit for bit.

:class:`OpacityRemover` works on arrays; :func:`remove_opacity_case` is the file-level step of
``lungx remove-opacity``: read, find the lungs, remove, write everything atomically, one row back. Its
``changed_fraction`` is the share of the film's pixels whose value changed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungx_core.cxr.crops import Box
from lungx_core.cxr.gate import FrontalChestGate, optional_gate
from lungx_core.cxr.thoracic import ThoracicCrop, apply_residual, resize, thoracic_crop
from lungx_core.generative.opacity import ActivationSpec, OpacityModel, activation_mask, composite
from lungx_core.image import MedicalImage
from lungx_core.io.inputs import Case
from lungx_core.orientation import display_view
from lungx_core.tasks.common import Progress, ok_row, read_checked_radiograph, run_guarded
from lungx_core.tasks.synthesis import checked_display_view, find_lungs

DEFAULT_MODEL = "cxr_opacity_removal"
TASK = "cxr-opacity-removal"
RESULT_COLUMNS = ["lung_source", "opacity_score_before", "opacity_score_after", "changed_fraction", "seconds"]


@dataclass
class RemovalResult:
    array: np.ndarray  # the opacity-removed radiograph: the input's shape, orientation and dtype
    mask: np.ndarray  # bool, the input's orientation: the only pixels that may differ from the input
    box: Box  # thoracic crop the models saw, in display orientation


class OpacityRemover:
    """Holds the generator and the opacity model; :meth:`remove` for each radiograph."""

    def __init__(self, model: str | Path = DEFAULT_MODEL, device: str = "auto", opacity_model: str | None = None):
        from lungx_core.cxr.thoracic import CropSpec
        from lungx_core.models.store import load_model

        self.net, self.config = load_model(model, device)
        self.device = next(self.net.parameters()).device
        self.spec = CropSpec.from_dict(self.config["crop"])
        region_aware = self.config.get("region_aware", {})
        self.activation = ActivationSpec.from_dict(region_aware.get("activation", {}))
        self.opacity = OpacityModel(opacity_model or region_aware.get("opacity_model", "cxr_opacity"), device)

    def translate_crops(self, crops: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """(N, size, size) thoracic crops in [0, 1] and activation masks -> composited clear versions in [0, 1]."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))[:, None].to(self.device)
        if self.config.get("conditioning") == "mask":  # the de-opacifier: crop and mask in, a change out
            m = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None].to(self.device)
            with torch.inference_mode():
                change = self.net(torch.cat([x, m], dim=1))[:, 0].float().cpu().numpy()
            return np.clip(crops + masks * change, 0.0, 1.0) * (masks > 0) + crops * (masks <= 0)
        with torch.inference_mode():
            y = self.net(x * 2 - 1)[:, 0].float().cpu().numpy()
        return composite(crops, np.clip((y + 1) / 2, 0.0, 1.0), masks)

    def activation_of(self, crop: ThoracicCrop) -> np.ndarray:
        """The soft activation mask of a thoracic crop: where the opacity model lets the remover change it."""
        probability = self.opacity.probability_of_crops(crop.image[None])[0]
        return activation_mask(probability, crop.lung, self.activation)

    def remove_display(self, image: np.ndarray, lung: np.ndarray) -> tuple[np.ndarray, np.ndarray, Box]:
        """A display-oriented radiograph and its lung-field mask -> (result, changeable pixels, crop box)."""
        crop = thoracic_crop(image, lung, self.spec)
        mask = self.activation_of(crop)
        cleared = self.translate_crops(crop.image[None], mask[None])[0] if mask.any() else crop.image
        out, changeable = put_back(image, crop, cleared, mask)
        return out, changeable, crop.box

    def remove(self, image: MedicalImage, lung: np.ndarray) -> RemovalResult:
        """``lung`` (bool, the image's shape and orientation) -> result in the image's orientation."""
        display, lung_display, undo = checked_display_view(image, lung)
        out, changeable, box = self.remove_display(display, lung_display)
        return RemovalResult(undo(out), undo(changeable), box)


def put_back(image: np.ndarray, crop: ThoracicCrop, cleared: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, ...]:
    """A cleared version of ``crop`` (its size, [0, 1]) brought back onto the full film as a residual, changing
    only the support of the upsampled activation ``mask`` -> (result, changeable pixels). An empty mask gives
    back a copy of the film."""
    changeable = np.zeros(image.shape, dtype=bool)
    if not mask.any():
        return np.array(image, copy=True), changeable
    out = apply_residual(image, crop, cleared)
    box = crop.box
    # the support of the upsampled mask covers every pixel the upsampled change can touch
    changeable[box.r0 : box.r1, box.c0 : box.c1] = resize((mask > 0).astype(np.float32), box.shape) > 0
    return np.where(changeable, out, image), changeable


def write_outputs(out_dir: Path, case_id: str, image: MedicalImage, result: RemovalResult) -> list[Path]:
    """``<id>_opacity_removed.<input's family>``, the activation mask ``<id>_opacity_mask.seg.nrrd`` and
    ``<id>_opacity_removal.png`` (before | mask | after); all or nothing."""
    from lungx_core.anatomy import OPACITY
    from lungx_core.io.derived import write_processed_set

    return write_processed_set(
        out_dir, image, result.array, "Opacity-removed chest radiograph (lungx)", f"{case_id}_opacity_removed",
        (f"{case_id}_opacity_mask.seg.nrrd", {"opacity": result.mask}, [OPACITY]),
        (f"{case_id}_opacity_removal.png", before_mask_after(image.array, result.array, result.mask)),
    )


def before_mask_after(before: np.ndarray, after: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """RGB picture: input | input with the activation mask tinted orange | result, all on one grey scale, each
    film at most ``PICTURE_MAX_SIDE`` px."""
    from lungx_core.io.writers import shrink_for_picture, to_uint8_display

    before, after = shrink_for_picture(before), shrink_for_picture(after)
    mask = shrink_for_picture(mask) >= 0.5
    grey = to_uint8_display(np.concatenate([before, before, after], axis=1).astype(np.float32))
    rgb = np.repeat(grey[..., None], 3, axis=2).astype(np.float32)
    cols = before.shape[1]
    tinted = rgb[:, cols : 2 * cols]
    tinted[mask] = 0.55 * tinted[mask] + 0.45 * np.array([242.0, 140.0, 38.0])
    return rgb.round().astype(np.uint8)


def changed_fraction(before: np.ndarray, after: np.ndarray) -> float:
    """Share of pixels whose value differs between ``before`` and ``after`` (0 for an unchanged film), rounded
    up at the fourth decimal so that any change shows."""
    changed = np.count_nonzero(np.asarray(before) != np.asarray(after))
    return float(np.ceil(changed / max(before.size, 1) * 1e4) / 1e4)


def remove_opacity_case(
    case: Case,
    remover: OpacityRemover,
    out_dir: Path,
    lung_mask: Path | None = None,
    segmenter: Any = None,
    scorer: Any = None,
    gate: FrontalChestGate | None = None,
) -> dict[str, Any]:
    """Read, find the lungs, remove opacity and write one radiograph; ``scorer`` (a PathologyClassifier) adds
    the opacity score before and after. Bad input becomes an error row."""
    def work() -> dict[str, Any]:
        t0 = time.perf_counter()
        image = read_checked_radiograph(case.path, gate)
        lung, source = find_lungs(case.path, image, lung_mask, segmenter)
        result = remover.remove(image, lung)
        outputs = write_outputs(out_dir, case.case_id, image, result)
        changed = changed_fraction(image.array, result.array)
        row = ok_row(
            case, TASK,
            qc_flags="no_opacity_found" if not result.mask.any() else "unchanged" if changed == 0 else "",
            lung_source=source, changed_fraction=changed,
            outputs=";".join(p.name for p in outputs),
        )
        if scorer is not None:
            display, lung_display, undo = display_view(image, lung)
            row["opacity_score_before"] = round(scorer.probability(display, lung_display), 4)
            row["opacity_score_after"] = round(scorer.probability(undo(result.array), lung_display), 4)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row

    return run_guarded(case, TASK, work)


def run_one(
    case: Case,
    out_dir: Path,
    device: str = "auto",
    fast: bool = False,
    progress: Progress | None = None,
    model: str = DEFAULT_MODEL,
    input_check: str = "on",
    *,
    score: bool = False,
) -> dict[str, Any]:
    """One radiograph, as the worker process and batch runs (lungx_core.batch) run it: lungs from ``case.mask``
    or else the anatomy model; ``score`` adds the pathology classifier's opacity score before and after. Models
    are loaded once per process."""
    from lungx_core.models.store import shared_model
    from lungx_core.tasks.cxr_segmentation import lung_segmenter

    report = progress or (lambda fraction, message: None)
    report(0.0, "loading the models")
    remover = shared_model(OpacityRemover, model or DEFAULT_MODEL, device)
    segmenter = None if case.mask else lung_segmenter(device)
    scorer = None
    if score:
        from lungx_core.cxr.pathology import PathologyClassifier

        scorer = shared_model(PathologyClassifier, device=device)
    report(0.3, f"removing opacity on {remover.device}")
    return remove_opacity_case(case, remover, out_dir, case.mask, segmenter, scorer, optional_gate(input_check, device))
