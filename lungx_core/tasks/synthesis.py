"""Healthy -> pathological CXR synthesis, two methods.

- ``insert``: :class:`LesionInserter` draws lesions of the lesion model (``lungx_core/generative/lesions.py``:
  gains, areas and zones measured on real radiologist opacity masks) into the lung field, with the requested
  area, side and kind. Only lung pixels change, so the lung mask stays valid by construction and the
  surroundings are the input's, bit for bit; the lesion mask comes with it.
- ``cyclegan``: :class:`Synthesizer`, the seed's CycleGAN generator (``cxr_synthesis``) on the thoracic crop,
  its change added back as a residual. A lesion-guided model (its JSON says ``"region": "lesion"``) lets the
  change in only through a lesion drawn by the same lesion model as ``insert`` (same area, side, kind and seed
  controls), so it too changes only lung pixels; the older shape-aware model was only trained to leave the
  lung surroundings alone.

A healthy radiograph and its lung-field mask in; a pathological-looking radiograph out, on the input's exact
grid. The pair (synthetic image, known mask) is what segmentation training uses as augmentation.
:func:`synthesize_case` is the file-level step of ``lungx synthesize``: read, find the lungs (given mask or our
anatomy model), synthesise, write everything atomically, one row back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lungx_core.cxr.crops import Box
from lungx_core.cxr.gate import FrontalChestGate, optional_gate
from lungx_core.cxr.thoracic import CropSpec, apply_residual, thoracic_crop
from lungx_core.errors import InputError
from lungx_core.generative.lesions import LesionRequest
from lungx_core.image import MedicalImage
from lungx_core.io.inputs import Case
from lungx_core.orientation import display_view
from lungx_core.tasks.common import Progress, ok_row, read_checked_radiograph, run_guarded

DEFAULT_MODEL = "cxr_synthesis"
METHODS = ("insert", "cyclegan")
DEFAULT_METHOD = "insert"
MIN_LUNG_FRACTION = 0.02  # of the image: less is no frontal chest film (or a wrong mask)
RESULT_COLUMNS = ["method", "lung_source", "lung_fraction", "lesion_fraction", "seconds"]


@dataclass
class SynthesisResult:
    array: np.ndarray  # the synthetic radiograph: input's shape, orientation and dtype
    lung: np.ndarray  # bool: the lung mask that stays valid for it (input's orientation)
    box: Box  # thoracic crop that the generator changed, in display orientation
    lesion: np.ndarray | None = None  # bool, input's orientation: the lesion (insert, lesion-guided cyclegan)


class Synthesizer:
    """The CycleGAN method: holds the generator; :meth:`synthesize` for each radiograph.

    ``request`` (area, side, kind of the lesion model) applies to lesion-guided models only
    (``self.lesion_guided``); the change of the others is not confined to a lesion.
    """

    method = "cyclegan"

    def __init__(self, model: str | Path = DEFAULT_MODEL, device: str = "auto", request: LesionRequest | None = None):
        from lungx_core.models.store import load_model

        self.net, self.config = load_model(model, device)
        self.device = next(self.net.parameters()).device
        self.spec = CropSpec.from_dict(self.config["crop"])
        self.lesion_guided = self.config.get("region") == "lesion"
        self.request = request or LesionRequest()

    def translate_crops(self, crops: np.ndarray) -> np.ndarray:
        """(N, size, size) thoracic crops in [0, 1] -> their pathological versions in [0, 1]."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))[:, None].to(self.device) * 2 - 1
        with torch.inference_mode():
            y = self.net(x)[:, 0].float().cpu().numpy()
        return np.clip((y + 1) / 2, 0.0, 1.0)

    def synthesize_lesion(
        self, image: np.ndarray, lung: np.ndarray, seed: int | None = None
    ) -> tuple[np.ndarray, Box, np.ndarray | None]:
        """A display-oriented radiograph and its lung mask -> (synthetic radiograph, crop box, lesion or None).

        Lesion-guided models: the lesion is planned as ``insert`` plans it (seed None draws as seed 0) and the
        generator's change enters only through its region; the lesion (bool) comes back. Other models: ``seed``
        shifts the crop window by a few pixels (as in training), which gives a different but equally plausible
        synthetic image; None keeps the centred window; no lesion comes back.
        """
        crop, lesion = thoracic_crop(image, lung, self.spec), None
        if self.lesion_guided:
            from lungx_core.generative.lesions import plan_lesion

            lesion = plan_lesion(lung, self.request, 0 if seed is None else seed)
        elif seed is not None:
            crop = thoracic_crop(image, lung, self.spec, shift=_seeded_shift(crop.box, image.shape, seed))
        translated = self.translate_crops(crop.image[None])[0]
        if lesion is None:
            return apply_residual(image, crop, translated), crop.box, None
        return apply_residual(image, crop, translated, weight=lesion.region), crop.box, lesion.hard

    def synthesize_display(
        self, image: np.ndarray, lung: np.ndarray, seed: int | None = None
    ) -> tuple[np.ndarray, Box]:
        """As :meth:`synthesize_lesion`, without the lesion: (synthetic radiograph, crop box)."""
        out, box, _ = self.synthesize_lesion(image, lung, seed)
        return out, box

    def synthesize(self, image: MedicalImage, lung: np.ndarray, seed: int | None = None) -> SynthesisResult:
        """``lung`` (bool, the image's shape and orientation) -> result in the image's orientation."""
        display, lung_display, undo = checked_display_view(image, lung)
        out, box, lesion = self.synthesize_lesion(display, lung_display, seed)
        return SynthesisResult(undo(out), lung.astype(bool), box, None if lesion is None else undo(lesion))


class LesionInserter:
    """The insertion method: lesions of the lesion model drawn into the lung field (``lungx_core.generative.lesions``).

    Example::

        inserter = LesionInserter(LesionRequest(area=0.3, side="right", kind="consolidation"))
        result = inserter.synthesize(image, lung, seed=1)  # result.lesion: where the lesion is
    """

    method = "insert"
    device = "cpu"  # no network
    lesion_guided = True  # every change goes through a drawn lesion

    def __init__(self, request: LesionRequest | None = None):
        self.request = request or LesionRequest()

    def insert_display(self, image: np.ndarray, lung: np.ndarray, seed: int | None = None):
        """A display-oriented film and its lung mask -> :class:`lungx_core.generative.lesions.InsertionResult`;
        seed None draws as seed 0 (the same film gives the same lesion unless asked otherwise)."""
        from lungx_core.generative.lesions import insert_lesions

        return insert_lesions(image, lung, self.request, 0 if seed is None else seed)

    def synthesize_display(
        self, image: np.ndarray, lung: np.ndarray, seed: int | None = None
    ) -> tuple[np.ndarray, Box]:
        """As :meth:`Synthesizer.synthesize_display`; the box is the thoracic box of the lungs."""
        return self.insert_display(image, lung, seed).array, _thoracic_square(lung)

    def synthesize(self, image: MedicalImage, lung: np.ndarray, seed: int | None = None) -> SynthesisResult:
        """``lung`` (bool, the image's shape and orientation) -> result in the image's orientation."""
        display, lung_display, undo = checked_display_view(image, lung)
        inserted = self.insert_display(display, lung_display, seed)
        return SynthesisResult(undo(inserted.array), lung.astype(bool), _thoracic_square(lung_display),
                               undo(inserted.lesion.hard))


def _thoracic_square(lung: np.ndarray) -> Box:
    """The rib-cage square of a display-oriented lung mask: the region the CycleGAN would have worked on."""
    from lungx_core.cxr.crops import square_around, thoracic_box_cxr

    return square_around(thoracic_box_cxr({"lung": lung}), lung.shape)


def make_synthesizer(
    method: str = DEFAULT_METHOD,
    model: str | Path = DEFAULT_MODEL,
    device: str = "auto",
    area: float | None = None,
    side: str = "any",
    kind: str = "mixed",
) -> Synthesizer | LesionInserter:
    """The synthesizer of ``method`` (``insert``: ``area``/``side``/``kind`` apply; ``cyclegan``: ``model``, and
    ``area``/``side``/``kind`` when that model is lesion-guided)."""
    request = LesionRequest(area=area, side=side, kind=kind)
    if method == "insert":
        return LesionInserter(request)
    if method == "cyclegan":
        return Synthesizer(model, device, request)
    raise ValueError(f"unknown synthesis method {method!r}; choose one of {', '.join(METHODS)}")


def _seeded_shift(box: Box, shape: tuple[int, int], seed: int) -> tuple[int, int]:
    limit = max(1, box.shape[0] // 18)  # 8 px of 144, the training jitter
    return tuple(int(v) for v in np.random.default_rng(seed).integers(-limit, limit + 1, 2))


def checked_display_view(image: MedicalImage, lung: np.ndarray):
    """(display-oriented image, lung, undo) after checking that ``lung`` fits ``image`` and holds lung fields;
    ``undo`` brings a display-oriented array back to the image's orientation."""
    if lung.shape != image.array.shape:
        raise InputError(image.source, f"the lung mask is {lung.shape[1]}x{lung.shape[0]} pixels but the "
                         f"image is {image.array.shape[1]}x{image.array.shape[0]}")
    check_lung(image.source, lung)
    return display_view(image, lung)


def check_lung(source: str | Path, lung: np.ndarray) -> None:
    fraction = float(lung.mean()) if lung.size else 0.0
    if fraction < MIN_LUNG_FRACTION:
        what = "empty" if not lung.any() else f"covers only {fraction:.1%} of the image"
        raise InputError(source, f"the lung mask is {what}; the lung fields of a frontal chest film are needed")


def read_lung_mask(path: Path, image: MedicalImage, what: str = "lung") -> np.ndarray:
    """A ``what`` mask (lung field by default; also ``rib``) for ``image`` from a file: PNG/JPEG (nonzero =
    inside), a label map (NRRD/NIfTI, nonzero = inside), or a Slicer ``.seg.nrrd`` (the segments whose name
    contains ``what``, else all). Its grid must be the image's."""
    from lungx_core.io.readers import read_bitmap, read_itk_radiograph, suffix_of

    if not path.exists():
        raise InputError(path, f"{what} mask file not found")
    name = path.name.lower()
    if name.endswith(".seg.nrrd"):
        mask, geometry = _segmentation_mask(path, what)
    elif suffix_of(path) in {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}:
        mask, geometry = read_bitmap(path).array > 0, None
    else:
        m = read_itk_radiograph(path)
        mask, geometry = m.array > 0, m.ijk_to_lps()
    if mask.shape != image.array.shape:
        raise InputError(path, f"{what} mask is {mask.shape[1]}x{mask.shape[0]} pixels but the image "
                         f"{Path(image.source).name} is {image.array.shape[1]}x{image.array.shape[0]}")
    if geometry is not None and image.spacing_known and not np.allclose(geometry, image.ijk_to_lps(), atol=1e-3):
        raise InputError(path, f"{what} mask geometry (origin, spacing or direction) differs from the image "
                         f"{Path(image.source).name}")
    return mask


def _segmentation_mask(path: Path, what: str) -> tuple[np.ndarray, np.ndarray]:
    import slicerio

    try:
        seg = slicerio.read_segmentation(str(path))
    except Exception as exc:  # noqa: BLE001 - slicerio/pynrrd raise many types for bad files
        raise InputError(path, f"not a readable segmentation ({type(exc).__name__})") from None
    voxels = np.asarray(seg["voxels"])
    layers = voxels if voxels.ndim == 4 else voxels[None]  # 4-D: several layers
    segments = seg["segments"]
    lungs = [s for s in segments if what in str(s.get("name", "")).lower()] or segments
    mask = np.zeros(layers.shape[1:], dtype=bool)
    for s in lungs:
        mask |= layers[s.get("layer", 0)] == s["labelValue"]
    ijk_to_lps = np.asarray(seg["ijkToLPS"], dtype=float)
    return mask[..., 0].T if mask.ndim == 3 else mask.T, ijk_to_lps


def find_lungs(path: Path, image: MedicalImage, lung_mask: Path | None, segmenter: Any) -> tuple[np.ndarray, str]:
    """(lung-field mask, where it came from): the given mask file, else the anatomy model's lungs."""
    from lungx_core.anatomy import class_mask

    if lung_mask is not None:
        return read_lung_mask(lung_mask, image), "given"
    lung = class_mask(segmenter.segment(image).masks, "lung")
    if lung.mean() < MIN_LUNG_FRACTION:
        raise InputError(path, "no lung fields found: not a frontal chest radiograph?")
    return lung, "cxr_anatomy"


def write_outputs(out_dir: Path, case_id: str, image: MedicalImage, result: SynthesisResult) -> list[Path]:
    """``<id>_synthetic.<input's family>``, its masks ``<id>_synthetic.seg.nrrd`` (lung; and opacity, the
    inserted lesion, for the insertion method) and ``<id>_synthesis.png`` (input | synthetic, lung outline on
    both); all or nothing."""
    from lungx_core.anatomy import LUNGS, OPACITY
    from lungx_core.io.derived import write_processed_set

    masks, structures = {"lung": result.lung}, [LUNGS]
    if result.lesion is not None:
        masks["opacity"] = result.lesion
        structures.append(OPACITY)
    return write_processed_set(
        out_dir, image, result.array, "Synthetic pathological chest radiograph", f"{case_id}_synthetic",
        (f"{case_id}_synthetic.seg.nrrd", masks, structures),
        (f"{case_id}_synthesis.png", side_by_side(image.array, result.array, result.lung)),
    )


def side_by_side(before: np.ndarray, after: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """RGB picture: input | synthetic, same grey scale, lung outline in yellow on both; each film at most
    ``PICTURE_MAX_SIDE`` px."""
    from scipy import ndimage as ndi

    from lungx_core.io.writers import shrink_for_picture, to_uint8_display

    before, after = shrink_for_picture(before), shrink_for_picture(after)
    lung = shrink_for_picture(lung) >= 0.5
    both = to_uint8_display(np.concatenate([before, after], axis=1).astype(np.float32))
    outline = lung & ~ndi.binary_erosion(lung, iterations=max(1, lung.shape[0] // 400))
    rgb = np.repeat(both[..., None], 3, axis=2)
    rgb[np.concatenate([outline, outline], axis=1)] = (255, 220, 0)
    return rgb


def film_seed(synthesizer: Synthesizer | LesionInserter, image: MedicalImage, seed: int | None) -> int | None:
    """The seed a film draws its lesion with, the one rule for the API, the CLI, the worker and Slicer: the same
    ``seed`` and the same film (its pixels, whatever the file is called or where it lies) give the same
    pixels. Insertion and lesion-guided models mix a digest of the film's pixels into ``seed`` (None as 0), so
    the films of a batch get different lesions (area, kind, shape); the older CycleGAN's seed shifts its crop
    window and is used as given."""
    if not synthesizer.lesion_guided:
        return seed
    import hashlib
    import zlib

    pixels = np.ascontiguousarray(image.array)
    digest = hashlib.blake2b(pixels.tobytes(), digest_size=8)
    digest.update(f"{pixels.dtype.str}{pixels.shape}".encode())
    return zlib.crc32(f"{digest.hexdigest()}/{seed or 0}".encode())


def synthesize_case(
    case: Case,
    synthesizer: Synthesizer | LesionInserter,
    out_dir: Path,
    lung_mask: Path | None = None,
    segmenter: Any = None,
    seed: int | None = None,
    gate: FrontalChestGate | None = None,
) -> dict[str, Any]:
    """Read, find the lungs, synthesise and write one radiograph. Bad input becomes an error row."""
    def work() -> dict[str, Any]:
        t0 = time.perf_counter()
        image = read_checked_radiograph(case.path, gate)
        lung, source = find_lungs(case.path, image, lung_mask, segmenter)
        result = synthesizer.synthesize(image, lung, film_seed(synthesizer, image, seed))
        outputs = write_outputs(out_dir, case.case_id, image, result)
        return ok_row(
            case, "cxr-synthesis",
            qc_flags="", method=synthesizer.method, lung_source=source,
            lung_fraction=round(float(lung.mean()), 4),
            lesion_fraction="" if result.lesion is None else round(float(result.lesion.sum() / lung.sum()), 4),
            seconds=round(time.perf_counter() - t0, 3), outputs=";".join(p.name for p in outputs),
        )

    return run_guarded(case, "cxr-synthesis", work)


def run_one(
    case: Case,
    out_dir: Path,
    device: str = "auto",
    fast: bool = False,
    progress: Progress | None = None,
    model: str = DEFAULT_MODEL,
    seed: int | None = None,
    input_check: str = "on",
    method: str = DEFAULT_METHOD,
    area: float = 0.0,
    side: str = "any",
    kind: str = "mixed",
) -> dict[str, Any]:
    """One radiograph, as the worker process and batch runs (lungx_core.batch) run it: lungs from ``case.mask``
    or else the anatomy model. Models are loaded once per process. ``area`` 0 draws the lesion area from the
    lesion model."""
    from lungx_core.models.store import shared_model
    from lungx_core.tasks.cxr_segmentation import lung_segmenter

    report = progress or (lambda fraction, message: None)
    report(0.0, "loading the models")
    synthesizer = shared_model(make_synthesizer, method, model or DEFAULT_MODEL, device, float(area) or None, side,
                               kind)
    segmenter = None if case.mask else lung_segmenter(device)
    report(0.3, f"synthesising on {synthesizer.device}")
    return synthesize_case(
        case, synthesizer, out_dir, case.mask, segmenter, seed=None if seed is None else int(seed),
        gate=optional_gate(input_check, device),
    )
