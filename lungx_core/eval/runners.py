"""The ``lungx evaluate`` commands as functions: each loads the models it needs and scores one reference folder.

:mod:`lungx_core.eval.evaluate` scores any method given as a callable; the functions here bind those callables
to LungX's own tasks, so a researcher gets in Python exactly the numbers the command prints.

Example::

    from lungx_core.eval.runners import score_cxr

    summary = score_cxr("../shared/data/jsrt_scr", ids=["JPCLN001"], device="cpu")
    summary["dice"]["lung"]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from lungx_core.anatomy import class_mask

if TYPE_CHECKING:
    import numpy as np

    from lungx_core.image import MedicalImage

OnCase = Callable[[str, dict[str, float]], None]


def lung_finder(segmenter) -> Callable[[np.ndarray], np.ndarray]:
    """array -> the lung field (both lungs, bool) that ``segmenter`` (a :class:`CXRSegmenter`) finds on a
    display-oriented bitmap."""
    from lungx_core.image import MedicalImage

    return lambda array: class_mask(segmenter.segment(MedicalImage(array)).masks, "lung")


def score_cxr(
    directory: str | Path,
    ids: Iterable[str] | None = None,
    model: str = "cxr_anatomy",
    device: str = "auto",
    on_case: OnCase | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> dict:
    """Mean Dice, IoU and HD95 (px) per reference class of a CXR anatomy model (``lungx evaluate cxr``).

    Args:
        directory: ``images/`` with ``masks/<class>/`` (or the Montgomery/Shenzhen layout).
        ids: image IDs to score; None scores all.
        model: shipped model name or a ``.safetensors`` path.
        device: ``auto``, ``cpu`` or ``cuda``.
        on_case: called with (case_id, per-class Dice) after each film.
        on_skip: called with (case_id, class) for each empty (unannotated) reference mask.

    Returns:
        ``{"n", "dice", "iou", "hd95_px"}``, each score a dict per class.
    """
    from lungx_core.eval.evaluate import evaluate_cxr
    from lungx_core.io.readers import read_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    segmenter = CXRSegmenter(model, device)
    return evaluate_cxr(Path(directory), lambda p: segmenter.segment(read_radiograph(p)).masks, ids, on_case,
                        on_skip=on_skip)


def score_ct(
    directory: str | Path,
    model: str = "ct_lungs",
    method: str = "net",
    device: str = "auto",
    on_case: OnCase | None = None,
) -> dict:
    """Dice, volume error (%) and HD95 (mm) per lung of CT lung segmentation (``lungx evaluate ct``).

    Args:
        directory: ``<case>/ct.nii.gz`` with ``<case>/mask_lung_lr.nii.gz`` (1 right, 2 left).
        model: shipped model name or a ``.safetensors`` path (``method="net"``).
        method: ``net`` (the trained network) or ``classical`` (no model).
        device: ``auto``, ``cpu`` or ``cuda``.
        on_case: called with (case_id, per-lung Dice) after each volume.

    Returns:
        ``{"n", "dice", "volume_error_pct", "hd95_mm", "seconds_per_case"}``.
    """
    from lungx_core.eval.evaluate import evaluate_ct
    from lungx_core.io.ct import read_ct
    from lungx_core.tasks.ct_lungs import CTLungSegmenter

    segmenter = CTLungSegmenter(method, model, device)

    def segment_one(path: Path):
        image = read_ct(path)
        return segmenter.segment(image).labels, image.spacing[::-1]

    return evaluate_ct(Path(directory), segment_one, on_case=on_case)


def score_synthesis(
    directory: str | Path,
    ids: Iterable[str] | None = None,
    method: str = "insert",
    kind: str = "mixed",
    model: str = "cxr_synthesis",
    device: str = "auto",
    on_case: OnCase | None = None,
) -> dict:
    """Healthy -> pathological synthesis judged by ``cxr_pathology`` (``lungx evaluate synthesis``).

    Args:
        directory: ``images/`` with ``masks/lung/`` (healthy films).
        ids: image IDs to score; None scores all.
        method: ``insert`` (lesion model) or ``cyclegan``.
        kind: the lesion kind of insert and lesion-guided cyclegan models, ``mixed``, ``ggo`` or
            ``consolidation``.
        model: cyclegan's generator name or a ``.safetensors`` path.
        device: ``auto``, ``cpu`` or ``cuda``.
        on_case: called with (case_id, scores) after each film.

    Returns:
        ``{"n", "mae_surroundings", "lung_dice_preserved", "pathological_rate"}``. Insert and lesion-guided
        models draw each film's lesion with the film's position in the list as its seed (the same numbers on a
        rerun, the same lesions for both methods).
    """
    import numpy as np

    from lungx_core.cxr.pathology import PathologyClassifier
    from lungx_core.eval.evaluate import evaluate_synthesis
    from lungx_core.io.readers import read_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter
    from lungx_core.tasks.synthesis import make_synthesizer

    synthesizer = make_synthesizer(method, model, device, kind=kind)
    drawn = itertools.count()
    classifier = PathologyClassifier(device=device)

    def synthesize_one(path: Path, lung: np.ndarray):
        image = read_radiograph(path)
        if lung.shape != image.array.shape:
            raise ValueError(f"{path}: lung mask shape {lung.shape} differs from the image's {image.array.shape}")
        display = image.array  # evaluation folders hold display-oriented bitmaps
        # lesion-guided methods draw each film's lesion with its position as seed (the same lesions for insert
        # and a lesion-guided cyclegan); the older cyclegan keeps the centred window
        seed = next(drawn) if synthesizer.lesion_guided else None
        synthetic, box = synthesizer.synthesize_display(display, lung, seed)
        region = np.zeros(display.shape, dtype=bool)
        region[box.r0 : box.r1, box.c0 : box.c1] = True
        return display, synthetic, region

    return evaluate_synthesis(Path(directory), synthesize_one, lung_finder(CXRSegmenter(device=device)),
                              classifier.probability, classifier.threshold, ids, on_case=on_case)


def score_bone_suppression(
    directory: str | Path,
    mode: str = "bone",
    strength: float = 1.0,
    model: str = "cxr_bone",
    inpainting_model: str = "cxr_inpainting",
    steps: int = 25,
    seed: int = 0,
    sampler: str = "ddim",
    device: str = "auto",
    on_case: OnCase | None = None,
    keep_nodules: bool = True,
) -> dict:
    """Bone suppression against dual-energy soft-tissue images (``lungx evaluate bone-suppression``): PSNR,
    SSIM and BSR in the lung field after a least-squares linear match; and, when the folder has a
    ``nodules.csv`` (the jsrt_scr layout), each nodule's conspicuity before and after (``"nodules"``).

    Args:
        directory: ``images/<id>`` with ``soft_tissue/<id>`` pairs, or with a ``nodules.csv``, or both.
        mode: ``bone``, ``inpaint`` or ``inpaint-subtract``.
        strength: bone mode, 1 = the model card's fitted alpha.
        model, inpainting_model: bone-layer and diffusion model names or ``.safetensors`` paths.
        steps, seed, sampler: the diffusion modes' sampling.
        device: ``auto``, ``cpu`` or ``cuda``.
        on_case: called with (case_id, scores) after each pair.
        keep_nodules: bone mode, take the bone image out of the nodule detector's findings (as the task does).

    Returns:
        ``{"n", "psnr_input", "psnr_output", "ssim_input", "ssim_output", "bsr", "seconds_per_image"}`` for
        pairs; ``"nodules"``: ``{"n", "conspicuity_before", "conspicuity_after", "median_ratio",
        "dimmed_share", "contrast_n", "contrast_kept", "kept_below_0.8_share", "per_subtlety"}`` (medians over
        nodules; ratio = after / before; contrast kept = the nodule's disc-minus-ring contrast after / before).
    """
    from lungx_core.eval.evaluate import evaluate_bone_suppression, evaluate_nodule_conspicuity
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter
    from lungx_core.tasks.rib_suppression import RibSuppressor, SuppressionSettings

    suppressor = RibSuppressor(model, inpainting_model, device=device)
    settings = SuppressionSettings(mode, strength, steps, seed, sampler, keep_nodules=keep_nodules)

    def suppress(image: MedicalImage, lung: np.ndarray) -> np.ndarray:
        ribs = None if mode == "bone" else suppressor.rib_mask(image, lung)
        return suppressor.suppress(image, ribs, settings).array

    root, lungs = Path(directory), lung_finder(CXRSegmenter(device=device))
    summary: dict = {}
    if (root / "soft_tissue").is_dir():
        summary.update(evaluate_bone_suppression(root, suppress, lungs, on_case=on_case))
    if (root / "nodules.csv").is_file():
        summary["nodules"] = evaluate_nodule_conspicuity(root, suppress, lungs, on_case=on_case)
    if not summary:
        raise FileNotFoundError(f"{root}: neither soft_tissue/<id> pairs nor a nodules.csv to score against")
    return summary


def score_nodules(
    directory: str | Path, model: str = "cxr_nodules", device: str = "auto", on_case: OnCase | None = None,
    bone_model: str | None = None,
) -> dict:
    """Nodule detection scored by FROC (``lungx evaluate nodules``): ``directory/images/`` and
    ``directory/nodules.csv`` (id, x, y, diameter_px on the 512-px film, optional diameter_mm and subtlety;
    films without a row are normals). Every candidate above the model's floor is scored; a hit lies within the
    nodule's radius (at least 4 mm), each nodule counts once, every other candidate is a false positive.
    ``bone_model``: the detector reads each film after bone suppression with this model (bone mode, the card's
    strength, without sparing any findings) instead: what the bone model does to the nodules a detector finds.

    Returns:
        ``{"n_films", "n_nodules", "sensitivity": {fp rate: value} at 0.125-8 FP/image, "cpm", "auc",
        "sensitivity_at_2fp_by_subtlety", "n_by_subtlety", "operating_point", "curve"}``, and with reference lung
        masks in ``directory/masks/lung/`` the same over the films whose nodules lie in the lung field,
        ``"lung_field"`` (see :func:`lungx_core.eval.evaluate.evaluate_nodules`).
    """
    from lungx_core.cxr.nodules import NoduleDetector
    from lungx_core.eval.evaluate import evaluate_nodules
    from lungx_core.tasks.nodule_detection import find_nodules
    from lungx_core.tasks.rib_suppression import RibSuppressor, SuppressionSettings

    detector = NoduleDetector(model, device=device)
    suppressor = RibSuppressor(bone_model, device=device) if bone_model else None

    def detect(image: MedicalImage) -> list[tuple[float, float, float]]:
        if suppressor is not None:
            # the bone model alone: sparing the detector's own findings would score the detector twice
            settings = SuppressionSettings("bone", keep_nodules=False)
            image = image.with_array(suppressor.suppress(image, None, settings).array)
        return [(c["col"], c["row"], c["probability"]) for c in find_nodules(detector, image).candidates]

    return evaluate_nodules(Path(directory), detect, on_case=on_case)


def score_opacity_removal(
    directory: str | Path,
    ids: Iterable[str] | None = None,
    model: str = "cxr_opacity_removal",
    probe: str = "cxr_lung_probe",
    device: str = "auto",
    on_case: OnCase | None = None,
    second_probe: str | None = "cxr_lung_probe_attention",
) -> dict:
    """Opacity removal scored by a lung model trained on clear films only (``lungx evaluate opacity-removal``).

    Args:
        directory: the GB layout, ``images/`` with ``masks/lung/`` and ``masks/opacity/``.
        ids: image IDs to score; None scores all.
        model: opacity remover name or a ``.safetensors`` path.
        probe: the lung model that scores films before and after.
        device: ``auto``, ``cpu`` or ``cuda``.
        on_case: called with (case_id, scores) after each film.
        second_probe: another clear-film lung model (another architecture and seed) scoring the same films;
            None skips it.

    Returns:
        ``{"n", "lung_dice_before", "lung_dice_after", "lung_dice_ceiling", "lung_recall_in_opacity_before",
        "lung_recall_in_opacity_after", "recovered_share", "lung_recall_in_opacity_ceiling",
        "recovered_share_ceiling", "change_outside_mask", "change_outside_activation",
        "brighter_share", "gradient_energy_ratio_outside", "structure_kept_inside", "opacity_score_before",
        "opacity_score_after"}`` and,
        with a second probe, ``second_probe_lung_recall_in_opacity_before/after`` and
        ``second_probe_recovered_share`` (see :func:`lungx_core.eval.evaluate.evaluate_opacity_removal`).
    """
    from lungx_core.cxr.pathology import PathologyClassifier
    from lungx_core.eval.evaluate import evaluate_opacity_removal
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter
    from lungx_core.tasks.opacity_removal import OpacityRemover

    remover = OpacityRemover(model, device)
    find_lungs = lung_finder(CXRSegmenter(device=device))
    classifier = PathologyClassifier(device=device)

    def remove(array: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # evaluation folders hold display-oriented bitmaps; the remover finds the lungs itself, as in use
        result, changeable, _ = remover.remove_display(array, find_lungs(array))
        return result, changeable

    second = lung_finder(CXRSegmenter(second_probe, device)) if second_probe else None
    return evaluate_opacity_removal(Path(directory), remove, lung_finder(CXRSegmenter(probe, device)),
                                    classifier.probability, ids, on_case=on_case, second_probe=second)
