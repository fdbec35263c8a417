"""Bone (rib) suppression: a frontal radiograph in, the same film with its bone shadows taken out.

Default mode ``bone``: the ``cxr_bone`` model estimates the film's bone image (ribs, clavicles, scapulae, spine;
``lungx_core/cxr/bone.py``) and the film minus ``alpha`` times it is the result, as dual-energy soft-tissue
images and every published suppressor that beats the input on them do. Nothing is regenerated: the soft
tissue under a rib (vessels, nodules) is the film's own. A rib mask is not needed; ``--rib-mask`` restricts
the subtraction to a mask (feathered). With ``keep_nodules`` (the default) the nodule detector (``cxr_nodules``)
looks at the film first and the bone image is taken out of a disc around each finding at its operating point
(:func:`lungx_core.cxr.bone.spare_nodules`): the bone model mistakes part of a soft-tissue nodule for bone, and
the subtraction would dim it (issue 39). A nodule the detector misses is still dimmed.

Research modes (the seed's method, ``lungx_core/generative/inpainting.py``): a rib mask (the ``cxr_ribs`` model inside
the lung field, or the user's), diffusion inpainting under it and blending back (``lungx_core/generative/blending.py``):
``inpaint`` replaces the rib pixels by regenerated ones, which erases what lies under a rib (it hallucinates
under the mask); ``inpaint-subtract`` removes only the inpainting's smooth bone signal. Beyond the feathered
border of their mask every pixel is the input's, bit for bit.

:class:`RibSuppressor` works on arrays; :func:`suppress_ribs_case` is the file-level step of
``lungx suppress-ribs``: read, suppress, write everything atomically, one row back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungx_core.cxr.gate import FrontalChestGate, optional_gate
from lungx_core.errors import InputError
from lungx_core.image import MedicalImage
from lungx_core.io.inputs import Case
from lungx_core.orientation import display_view
from lungx_core.tasks.common import Progress, ok_row, read_checked_radiograph, run_guarded
from lungx_core.tasks.synthesis import find_lungs, read_lung_mask

DEFAULT_BONE = "cxr_bone"
DEFAULT_INPAINTING = "cxr_inpainting"
DEFAULT_RIBS = "cxr_ribs"
DEFAULT_NODULES = "cxr_nodules"
TASK = "cxr-rib-suppression"
MODES = ("bone", "inpaint", "inpaint-subtract")
RESULT_COLUMNS = ["mask_source", "mode", "alpha", "nodules_spared", "steps", "seed", "rib_fraction", "seconds"]
MIN_RIB_PIXELS = 16


@dataclass(frozen=True)
class SuppressionSettings:
    """How to suppress: ``mode`` (see the module docstring); ``strength`` scales the bone mode's subtraction
    (1: the model card's fitted alpha, 0: no change, 2: twice as much); ``steps``, ``seed``, ``scheduler`` for
    the diffusion modes; ``feather`` the border over which a mask fades in, as a fraction of the film's long side;
    ``keep_nodules`` (bone mode) takes the bone image out of the nodule detector's findings (module docstring)."""

    mode: str = "bone"
    strength: float = 1.0
    steps: int = 25
    seed: int = 0
    scheduler: str = "ddim"  # or "dpm", "repaint"
    feather: float = 0.006
    keep_nodules: bool = True

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not 0.0 <= self.strength <= 5.0:
            raise ValueError(f"strength must be between 0 and 5, got {self.strength}")


@dataclass
class SuppressionResult:
    array: np.ndarray  # the suppressed film: the input's shape, orientation and dtype
    mask: np.ndarray  # bool: bone mode, where the bone image is strong; diffusion modes, the regenerated ribs
    changeable: np.ndarray  # bool, the pixels that were allowed to change
    bone: np.ndarray | None = None  # float32, bone mode: the subtracted bone image (alpha included), grey levels
    alpha: float | None = None  # bone mode: the alpha used (strength x the model's fitted alpha)
    spared: list[dict] = field(default_factory=list)  # keep_nodules: the findings the bone image was taken out of


class RibSuppressor:
    """Holds the models, each loaded on first use: the bone-layer model (``bone``), the nodule detector whose
    findings the bone image spares (``nodules``), and the inpainting and rib-mask models (the diffusion modes)."""

    def __init__(self, model: str | Path | None = None, inpainting_model: str | Path | None = None,
                 rib_model: str | Path = DEFAULT_RIBS, device: str = "auto",
                 nodule_model: str | Path = DEFAULT_NODULES):
        from lungx_core.models.store import resolve_device

        self.device = resolve_device(device)
        self._device_name = device
        self._names = {"bone": model or DEFAULT_BONE, "inpainting": inpainting_model or DEFAULT_INPAINTING,
                       "ribs": rib_model, "nodules": nodule_model}
        self._loaded: dict[str, Any] = {}

    def _get(self, kind: str) -> Any:
        if kind not in self._loaded:
            from lungx_core.models.store import shared_model

            name = self._names[kind]
            if kind == "bone":
                from lungx_core.cxr.bone import BoneLayerModel as cls
            elif kind == "ribs":
                from lungx_core.cxr.ribs import RibMasker as cls
            elif kind == "nodules":
                from lungx_core.cxr.nodules import NoduleDetector as cls
            else:
                from lungx_core.generative.inpainting import DiffusionInpainter as cls
            # one instance per process, shared with the other tasks (the nodule detector with detect-nodules)
            self._loaded[kind] = shared_model(cls, name, self._device_name)
        return self._loaded[kind]

    @property
    def inpainter(self) -> Any:
        return self._get("inpainting")

    @property
    def bone_model(self) -> Any:
        return self._get("bone")

    def rib_mask(self, image: MedicalImage, lung: np.ndarray | None) -> np.ndarray:
        """The rib mask of a film (bool, the image's orientation), inside the lung field when ``lung`` is given."""
        display, lung_display, undo = display_view(image, lung)
        return undo(self._get("ribs").mask(display, lung_display))

    def bone_image(self, image: MedicalImage) -> np.ndarray:
        """The film's bone image (float32, the image's shape and orientation, its grey levels)."""
        display, _, undo = display_view(image, None)
        return undo(self.bone_model.bone_image(display))

    def suppress(
        self, image: MedicalImage, ribs: np.ndarray | None, settings: SuppressionSettings,
        findings: list[dict] | None = None,
    ) -> SuppressionResult:
        """Suppress the bone of ``image``. ``ribs`` (bool, the image's shape): the diffusion modes' mask
        (required); in bone mode an optional restriction (None: the whole film). ``findings``: with
        ``keep_nodules``, the nodules to spare (dicts with ``row``, ``col``, ``diameter_px`` on the image's array,
        as :func:`lungx_core.tasks.nodule_detection.find_nodules` gives them) instead of the detector's."""
        from lungx_core.generative.blending import blend_weight

        feather_px = settings.feather * max(image.array.shape)
        if settings.mode != "bone":
            if ribs is None:
                raise ValueError(f"mode {settings.mode!r} needs a rib mask")
            return self._inpaint(image, ribs, settings, feather_px)
        from lungx_core.cxr.bone import bone_mask, subtract_bone

        alpha = settings.strength * self.bone_model.alpha
        bone = alpha * self.bone_image(image)
        spared = []
        if settings.keep_nodules and alpha > 0:
            from lungx_core.cxr.bone import spare_nodules
            from lungx_core.tasks.nodule_detection import find_nodules

            spared = find_nodules(self._get("nodules"), image).findings if findings is None else list(findings)
            bone = spare_nodules(bone, [(f["row"], f["col"], f["diameter_px"]) for f in spared])
        if ribs is not None:
            check_rib_mask(image, ribs)
            bone *= blend_weight(ribs, feather_px)
        out = subtract_bone(image.array, bone, 1.0)
        strong = bone_mask(bone) if alpha > 0 else np.zeros(bone.shape, bool)
        if ribs is not None:
            strong &= ribs
        return SuppressionResult(out, strong, bone != 0, bone.astype(np.float32), alpha, spared)

    def _inpaint(self, image: MedicalImage, ribs: np.ndarray, settings: SuppressionSettings,
                 feather_px: float) -> SuppressionResult:
        from lungx_core.generative.blending import suppress

        check_rib_mask(image, ribs)
        known, filled = self.inpainter.fill(image.array, ribs, settings.steps, settings.seed, settings.scheduler)
        blend = "inpaint" if settings.mode == "inpaint" else "subtract"
        out, changeable = suppress(image.array, ribs, known, filled, blend, feather_px)
        return SuppressionResult(out, ribs, changeable)


def check_rib_mask(image: MedicalImage, ribs: np.ndarray) -> None:
    if ribs.shape != image.array.shape:
        raise InputError(image.source, f"the rib mask is {ribs.shape[-1]}x{ribs.shape[0]} pixels but the image is "
                         f"{image.array.shape[-1]}x{image.array.shape[0]}")
    if int(ribs.sum()) < MIN_RIB_PIXELS:
        raise InputError(image.source, "the rib mask is empty: nothing to suppress")


def bone_for_writing(bone: np.ndarray, image: MedicalImage) -> np.ndarray:
    """The bone image as the derived writers store it: PNG (a picture) spread over the bitmap's 8 or 16 bits;
    other formats (float TIFF too) in the input's grey levels (rounded for integer types; DICOM keeps a linear
    rescale)."""
    from lungx_core.io.derived import derived_suffix

    if derived_suffix(image) == ".png":
        top = float(np.iinfo(image.array.dtype).max)
        low, high = float(bone.min()), float(bone.max())
        return (bone - low) / max(high - low, 1e-6) * top
    from lungx_core.image import to_dtype

    return to_dtype(bone, image.array.dtype)


def write_outputs(out_dir: Path, case_id: str, image: MedicalImage, result: SuppressionResult) -> list[Path]:
    """All or nothing: ``<id>_ribs_suppressed.<input's family>`` and ``<id>_rib_suppression.png`` (before |
    bone image or rib mask | after); bone mode adds ``<id>_bone.<family>`` (the subtracted bone image) and
    ``<id>_bone.seg.nrrd`` (where it is strong), the diffusion modes ``<id>_ribs.seg.nrrd`` (the rib mask)."""
    from lungx_core.anatomy import BONE, RIBS
    from lungx_core.io.derived import write_processed_set
    from lungx_core.tasks.opacity_removal import before_mask_after

    if result.bone is None:
        return write_processed_set(
            out_dir, image, result.array, "Rib-suppressed chest radiograph (lungx)", f"{case_id}_ribs_suppressed",
            (f"{case_id}_ribs.seg.nrrd", {"ribs": result.mask}, [RIBS]),
            (f"{case_id}_rib_suppression.png", before_mask_after(image.array, result.array, result.mask)),
        )
    return write_processed_set(
        out_dir, image, result.array, "Bone-suppressed chest radiograph (lungx)", f"{case_id}_ribs_suppressed",
        (f"{case_id}_bone.seg.nrrd", {"bone": result.mask}, [BONE]),
        (f"{case_id}_rib_suppression.png", before_bone_after(image.array, result.bone, result.array)),
        extra_images=((f"{case_id}_bone", bone_for_writing(result.bone, image), "Bone image (lungx)"),),
    )


def before_bone_after(before: np.ndarray, bone: np.ndarray, after: np.ndarray) -> np.ndarray:
    """RGB picture: input | bone image (its own grey scale) | result (the input's grey scale), each film at most
    ``PICTURE_MAX_SIDE`` px (a look at the result: the full-resolution films are written beside it)."""
    from lungx_core.io.writers import shrink_for_picture, to_uint8_display

    before, bone, after = (shrink_for_picture(a) for a in (before, bone, after))
    films = to_uint8_display(np.concatenate([before, after], axis=1).astype(np.float32))
    cols = before.shape[1]
    grey = np.concatenate([films[:, :cols], to_uint8_display(bone.astype(np.float32)), films[:, cols:]], axis=1)
    return np.repeat(grey[..., None], 3, axis=2)


def find_ribs(
    path: Path, image: MedicalImage, suppressor: RibSuppressor, rib_mask: Path | None, segmenter: Any,
    mode: str = "bone",
) -> tuple[np.ndarray | None, str]:
    """(rib mask, where it came from): the given mask file; else, bone mode, none (the whole film); else the
    rib model inside the anatomy model's lungs."""
    if rib_mask is not None:
        return read_lung_mask(rib_mask, image, what="rib"), "given"
    if mode == "bone":
        return None, "none"
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
        ribs, source = find_ribs(case.path, image, suppressor, rib_mask, segmenter, settings.mode)
        result = suppressor.suppress(image, ribs, settings)
        outputs = write_outputs(out_dir, case.case_id, image, result)
        return ok_row(
            case, TASK,
            qc_flags="", mask_source=source, mode=settings.mode,
            alpha="" if result.alpha is None else round(result.alpha, 3),
            nodules_spared=len(result.spared) if settings.mode == "bone" and settings.keep_nodules else "",
            steps="" if settings.mode == "bone" else settings.steps,
            seed="" if settings.mode == "bone" else settings.seed,
            rib_fraction=round(float(result.mask.mean()), 4),
            outputs=";".join(p.name for p in outputs), seconds=round(time.perf_counter() - t0, 3),
        )

    return run_guarded(case, TASK, work)


def run_one(
    case: Case,
    out_dir: Path,
    device: str = "auto",
    fast: bool = False,
    progress: Progress | None = None,
    model: str = DEFAULT_BONE,
    mode: str = "bone",
    strength: float = 1.0,
    inpainting_model: str = DEFAULT_INPAINTING,
    steps: int | None = None,
    seed: int = 0,
    scheduler: str = "ddim",
    input_check: str = "on",
    keep_nodules: str = "on",
) -> dict[str, Any]:
    """One radiograph, as the worker process and batch runs (lungx_core.batch) run it (the registry's options):
    ``case.mask`` restricts bone mode or is the mask to inpaint; without it the diffusion modes find the ribs
    with the rib model inside the anatomy model's lungs. ``steps`` is 25 by default or 10 with ``fast``;
    ``keep_nodules`` on|off. Models are loaded once per process."""
    from lungx_core.models.store import shared_model

    report = progress or (lambda fraction, message: None)
    report(0.0, "loading the models")
    suppressor = shared_model(RibSuppressor, model or DEFAULT_BONE, inpainting_model or DEFAULT_INPAINTING,
                              device=device)
    segmenter = None
    if mode != "bone" and not case.mask:
        from lungx_core.tasks.cxr_segmentation import lung_segmenter

        segmenter = lung_segmenter(device)
    report(0.3, f"suppressing bone on {suppressor.device}")
    steps = int(steps) if steps is not None else (10 if fast else 25)
    settings = SuppressionSettings(mode=mode, strength=float(strength), steps=steps, seed=int(seed),
                                   scheduler=scheduler, keep_nodules=keep_nodules == "on")
    return suppress_ribs_case(
        case, suppressor, out_dir, settings, case.mask, segmenter, optional_gate(input_check, device),
    )
