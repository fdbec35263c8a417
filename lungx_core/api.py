"""The public Python API: one call per task, on a :class:`MedicalImage` or a path, returning a :class:`Result`.

Every task function takes the image first and keyword-only options after it, and returns a :class:`Result` that
holds the output image (when the task makes one), the masks on the input's own array grid, measurements and QC
flags, and ``.save(folder)`` writes the same files the CLI writes. Models load on first use and stay loaded for
the next call with the same settings (a batch loop pays the load once). A radiograph is checked by the
frontal-chest gate first unless ``input_check=False``; a bad input raises :class:`lungx_core.InputError` with a
one-line message naming the file and the problem.

Example::

    import lungx_core as lx

    image = lx.read_image("film.dcm")            # a radiograph or a CT (a file, or a DICOM series folder)
    seg = lx.segment(image)                       # CXR or CT picked from the image
    seg.masks["lung_left"], seg.measurements["ctr"], seg.qc_flags
    seg.save("out/")                              # film.seg.nrrd and film_overlay.png, as `lungx segment`
    lx.suppress_ribs(image).output                # a MedicalImage on the input's grid
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lungx_core.errors import InputError
from lungx_core.image import MedicalImage

ImageLike = MedicalImage | str | Path
MaskLike = np.ndarray | str | Path | None


@dataclass
class Result:
    """What a task made of one image.

    Attributes:
        task: the registry name of the task, e.g. ``"cxr-anatomy"``.
        image: the input.
        output: the output image on the input's grid (same shape, geometry and dtype), or None for segmentation.
        masks: name -> bool array of the input's array shape (radiograph (rows, cols); CT (slices, rows, cols)).
        measurements: numbers about the result, e.g. ``ctr``, ``area_cm2_lung_left``, ``volume_ml_lung``,
            ``pathology_probability``.
        qc_flags: what a reader should check, e.g. ``implausible_ctr``, ``spacing_unknown``.
        bone: bone suppression (bone mode): the subtracted bone image on the input's grid, else None.
        nodules: nodule detection: every candidate above the model's floor, most probable first, each a dict
            (``rank``, ``col``, ``row``, ``x_mm``, ``y_mm``, ``lps``, ``diameter_px``, ``diameter_mm``,
            ``probability``; see ``lungx_core.tasks.nodule_detection.NoduleFindings``).
    """

    task: str
    image: MedicalImage
    output: MedicalImage | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    measurements: dict[str, Any] = field(default_factory=dict)
    qc_flags: list[str] = field(default_factory=list)
    _writer: Callable[[Path, str], list[Path]] | None = field(default=None, repr=False)
    bone: MedicalImage | None = None
    nodules: list[dict] = field(default_factory=list)

    def save(self, folder: str | Path, case_id: str | None = None) -> list[Path]:
        """Write the CLI's files for this result into ``folder`` (created if needed), each atomically.

        Args:
            folder: output folder.
            case_id: file-name stem; default the input file's name without its extension (``"image"`` when the
                input has no file).

        Returns:
            The written paths.
        """
        from lungx_core.io.inputs import case_id_of

        if self._writer is None:
            raise ValueError(f"{self.task} results have no files to write")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = case_id or (case_id_of(Path(self.image.source)) if self.image.source else "image")
        return self._writer(folder, stem)


def read_image(path: str | Path, series: str | None = None) -> MedicalImage:
    """Read a radiograph (DICOM, PNG/JPEG, NRRD, NIfTI) or a CT (a volume file or a DICOM series folder).

    Args:
        path: the file, or a folder holding one DICOM series (CT).
        series: for a DICOM folder with several series, the one to read (UID, UID prefix or series number);
            default the one with the most slices.

    Returns:
        The image with its geometry (spacing mm, origin, direction in LPS); ``image.modality`` is ``"CT"`` for
        volumes.

    Raises:
        InputError: the file is missing, unreadable, or not an image LungX takes.
    """
    from lungx_core.io.inputs import Case, case_id_of, detect_kind

    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or folder")
    if detect_kind(Case(case_id_of(path), path)) == "ct":
        from lungx_core.io.ct import read_ct

        return read_ct(path, series)
    from lungx_core.io.readers import read_radiograph

    return read_radiograph(path)


def segment(
    image: ImageLike,
    *,
    model: str | Path | None = None,
    device: str = "auto",
    threshold: float | None = None,
    method: str = "net",
    input_check: bool = True,
) -> Result:
    """Segment a chest radiograph (lungs L/R, heart, clavicles L/R, CTR) or a chest CT (lungs R/L, volumes).

    Args:
        image: a :class:`MedicalImage` or a path (see :func:`read_image`); a 2-D image is a radiograph, a volume
            a CT.
        model: shipped model name or a ``.safetensors`` path; default the task's (``cxr_anatomy``, ``ct_lungs``).
        device: ``"auto"`` (GPU when present), ``"cpu"`` or ``"cuda"``. On CPU the network runs in ONNX Runtime
            where the ``fast`` extra is installed (the same masks, faster), else in torch.
        threshold: radiographs: probability above which a pixel belongs to a structure (default the model's).
        method: CT: ``"net"`` (the lung network) or ``"classical"`` (thresholds and morphology, no model).
        input_check: radiographs: refuse what the frontal-chest gate does not take for a frontal chest film.

    Returns:
        masks ``lung_left``, ``lung_right``, ``heart``, ``clavicle_left``, ``clavicle_right`` (radiograph) or
        ``lung_right``, ``lung_left`` (CT), bool on the input's array grid; measurements (radiograph: ``ctr``,
        ``area_px_<s>``, ``area_cm2_<s>`` when the pixel size is known, ``confidence_<s>``; CT: ``volume_ml_<s>``
        and ``volume_ml_lung``);
        ``.save()`` writes ``<id>.seg.nrrd`` and ``<id>_overlay.png``.

    Example::

        seg = lx.segment("film.png")
        seg.measurements["ctr"]          # 0.47
    """
    image = _as_image(image)
    if image.array.ndim == 3:
        from lungx_core.tasks import ct_lungs

        ct = _ct_segmenter(method, model or ct_lungs.DEFAULT_MODEL, device).segment(image)
        measurements = {f"volume_ml_{k}": v for k, v in ct.volumes_ml.items()}
        measurements["volume_ml_lung"] = sum(ct.volumes_ml.values())
        return Result("ct-lungs", image, None, ct.masks, measurements, list(ct.flags),
                      lambda folder, stem: ct_lungs.write_outputs(folder, stem, image, ct))
    from lungx_core.tasks import cxr_segmentation

    _check_input(image, input_check, device)
    cxr = _cxr_segmenter(model or cxr_segmentation.DEFAULT_MODEL, device, threshold).segment(image)
    m = cxr.measurements
    measurements: dict[str, Any] = {"ctr": m.ctr, "heart_solidity": m.heart_solidity,
                                    "clavicles_found": m.clavicles_found}
    for name in cxr.masks:
        measurements[f"area_px_{name}"] = m.area_px[name]
        if m.area_cm2 is not None:
            measurements[f"area_cm2_{name}"] = m.area_cm2[name]
        measurements[f"confidence_{name}"] = m.confidence[name]
    return Result("cxr-anatomy", image, None, cxr.masks, measurements, list(m.flags),
                  lambda folder, stem: cxr_segmentation.write_outputs(folder, stem, image, cxr))


def lung_fields(image: ImageLike, *, device: str = "auto", input_check: bool = True) -> np.ndarray:
    """Both lung fields of a radiograph (bool, the image's array shape) from the anatomy model: the mask that
    :func:`synthesize`, :func:`remove_opacity`, :func:`suppress_ribs` and :func:`classify` use when none is given.

    Raises:
        InputError: no lung fields found (not a frontal chest radiograph?).
    """
    image = _as_radiograph(image, input_check, device)
    return _lungs(image, None, device)


def synthesize(
    image: ImageLike,
    *,
    lung_mask: MaskLike = None,
    seed: int | None = None,
    method: str = "insert",
    area: float | None = None,
    side: str = "any",
    kind: str = "mixed",
    model: str | Path | None = None,
    device: str = "auto",
    input_check: bool = True,
) -> Result:
    """A pathological-looking version of a healthy radiograph whose lung mask stays valid.

    Args:
        image: a radiograph (:class:`MedicalImage` or path).
        lung_mask: the lung fields (bool array of the image's shape, or a mask file on its grid); default from
            the anatomy model.
        seed: ``insert`` and lesion-guided ``cyclegan`` models: seeds the lesion draw (None as 0), mixed with a
            digest of the film's pixels, so the same seed and film give the same pixels here, in ``lungx
            synthesize`` and in Slicer (``synthesis.film_seed``); other ``cyclegan`` models: shifts the
            generator's crop window by a few pixels for another variant (None keeps it centred).
        method: ``insert`` (lesions of the lesion model drawn into the lung field; nothing else changes) or
            ``cyclegan`` (a CycleGAN generator on the thoracic crop; a lesion-guided one lets its change in only
            through a lesion drawn as ``insert`` draws it).
        area, side, kind: ``insert`` and lesion-guided ``cyclegan``: share of the lung field covered (None:
            drawn, 5-60 %), the patient's ``left``/``right``/``both``/``any`` side, ``ggo``/``consolidation``/
            ``mixed``.
        model: ``cyclegan``: generator name or ``.safetensors`` path (default ``cxr_synthesis``).
        device, input_check: as for :func:`segment`.

    Returns:
        ``output`` the synthetic radiograph; masks ``lung`` (and ``opacity``, the drawn lesion, for
        ``insert`` and lesion-guided ``cyclegan``); ``.save()`` writes ``<id>_synthetic.<ext>``, its
        ``.seg.nrrd`` and a side-by-side picture.

    Example::

        result = lx.synthesize("film.png", area=0.3, side="right", kind="consolidation", seed=2)
        result.masks["opacity"].mean()
    """
    from lungx_core.models.store import shared_model
    from lungx_core.tasks import synthesis

    image = _as_radiograph(image, input_check, device)
    lung = _lungs(image, lung_mask, device)
    synthesizer = shared_model(synthesis.make_synthesizer, method, model or synthesis.DEFAULT_MODEL, device, area,
                               side, kind)
    result = synthesizer.synthesize(image, lung, synthesis.film_seed(synthesizer, image, seed))
    masks = {"lung": result.lung} if result.lesion is None else {"lung": result.lung, "opacity": result.lesion}
    return Result("cxr-synthesis", image, image.with_array(result.array), masks, {}, [],
                  lambda folder, stem: synthesis.write_outputs(folder, stem, image, result))


def remove_opacity(
    image: ImageLike,
    *,
    lung_mask: MaskLike = None,
    model: str | Path | None = None,
    device: str = "auto",
    input_check: bool = True,
) -> Result:
    """Remove lung opacity from a radiograph, changing only the pixels inside the adaptive activation mask.

    Args:
        image: a radiograph (:class:`MedicalImage` or path).
        lung_mask: as for :func:`synthesize`.
        model: generator name or ``.safetensors`` path (default ``cxr_opacity_removal``).
        device, input_check: as for :func:`segment`.

    Returns:
        ``output`` the processed radiograph; masks ``opacity`` (the only pixels that may differ from the input);
        measurements ``changed_fraction`` (share of pixels whose value changed); flag ``no_opacity_found`` when
        the activation mask is empty, ``unchanged`` when it is not but no pixel changed.
    """
    from lungx_core.tasks import opacity_removal

    image = _as_radiograph(image, input_check, device)
    lung = _lungs(image, lung_mask, device)
    remover = _model(opacity_removal.OpacityRemover, model or opacity_removal.DEFAULT_MODEL, device)
    result = remover.remove(image, lung)
    changed = opacity_removal.changed_fraction(image.array, result.array)
    flags = ["no_opacity_found"] if not result.mask.any() else ["unchanged"] if changed == 0 else []
    return Result("cxr-opacity-removal", image, image.with_array(result.array), {"opacity": result.mask},
                  {"changed_fraction": changed}, flags,
                  lambda folder, stem: opacity_removal.write_outputs(folder, stem, image, result))


def suppress_ribs(
    image: ImageLike,
    *,
    rib_mask: MaskLike = None,
    mode: str = "bone",
    strength: float = 1.0,
    steps: int = 25,
    seed: int = 0,
    model: str | Path | None = None,
    inpainting_model: str | Path | None = None,
    device: str = "auto",
    input_check: bool = True,
    keep_nodules: bool = True,
) -> Result:
    """Suppress the bone of a radiograph (see ``lungx suppress-ribs --help`` and the cxr_bone model card for
    what is measured).

    Args:
        image: a radiograph (:class:`MedicalImage` or path).
        rib_mask: bool array of the image's shape, or a mask file on its grid. Bone mode: restricts the
            subtraction to it (default the whole film). Diffusion modes: the mask to inpaint (default the rib
            model inside the anatomy model's lung fields).
        mode: ``"bone"`` (subtract the estimated bone image), ``"inpaint"`` or ``"inpaint-subtract"`` (diffusion
            inpainting under a rib mask; research, ``inpaint`` hallucinates under the mask).
        strength: bone mode: 1 subtracts the model card's fitted amount, 0 nothing.
        steps, seed: denoising steps and seed of the diffusion modes.
        model: bone-layer model name or ``.safetensors`` path (default ``cxr_bone``).
        inpainting_model: diffusion modes' model (default ``cxr_inpainting``).
        device, input_check: as for :func:`segment`.
        keep_nodules: bone mode: the nodule detector looks first and the bone image is taken out of each of its
            findings, so the subtraction leaves the nodules it finds (a nodule it misses is still dimmed).

    Returns:
        ``output`` the suppressed radiograph; bone mode: ``bone`` (a :class:`MedicalImage`, the subtracted
        bone image in the film's grey levels), masks ``bone`` (where it is strong), measurements ``alpha`` and
        ``nodules_spared`` (the findings the bone image was taken out of); diffusion modes: masks ``ribs``.

    Example::

        res = lx.suppress_ribs("film.png")
        res.output.array, res.bone.array
    """
    from lungx_core.tasks import rib_suppression

    settings = rib_suppression.SuppressionSettings(mode=mode, strength=float(strength), steps=int(steps),
                                                   seed=int(seed), keep_nodules=bool(keep_nodules))
    image = _as_radiograph(image, input_check, device)
    suppressor = _model(rib_suppression.RibSuppressor, model or rib_suppression.DEFAULT_BONE, device,
                        inpainting_model or rib_suppression.DEFAULT_INPAINTING)
    if rib_mask is not None:
        ribs = _mask(image, rib_mask, "rib")
    elif mode == "bone":
        ribs = None
    else:
        ribs = suppressor.rib_mask(image, _lungs(image, None, device))
    result = suppressor.suppress(image, ribs, settings)
    bone_mode = result.bone is not None
    return Result("cxr-rib-suppression", image, image.with_array(result.array),
                  {"bone" if bone_mode else "ribs": result.mask},
                  {"alpha": result.alpha, "nodules_spared": len(result.spared)} if bone_mode else {}, [],
                  lambda folder, stem: rib_suppression.write_outputs(folder, stem, image, result),
                  bone=image.with_array(result.bone) if bone_mode else None)


def classify(
    image: ImageLike,
    *,
    lung_mask: MaskLike = None,
    model: str | Path | None = None,
    device: str = "auto",
    input_check: bool = True,
) -> Result:
    """Probability that a radiograph shows lung pathology (the ``cxr_pathology`` judge; a triage score, not a
    diagnosis).

    Returns:
        measurements ``pathology_probability`` in [0, 1] and ``pathological`` (1 at or above the model card's
        operating threshold, else 0); masks ``lung`` (the lung fields it looked at).
    """
    from lungx_core.cxr.pathology import DEFAULT_MODEL, PathologyClassifier
    from lungx_core.tasks.classification import TASK, triage

    image = _as_radiograph(image, input_check, device)
    lung = _lungs(image, lung_mask, device)
    p, pathological = triage(_model(PathologyClassifier, model or DEFAULT_MODEL, device), image, lung)
    return Result(TASK, image, None, {"lung": lung}, {"pathology_probability": p, "pathological": pathological})


def detect_nodules(
    image: ImageLike, *, model: str | Path | None = None, device: str = "auto", input_check: bool = True
) -> Result:
    """Lung nodule candidates on a frontal chest radiograph (``cxr_nodules``; research, not a diagnosis).

    Returns:
        ``nodules``: every candidate above the model's floor, most probable first, with its centre on the input's
        array (``col``, ``row``) and in LPS mm (``lps``), its diameter and probability; measurements
        ``n_findings`` (candidates at or above the model card's operating point), ``max_probability`` and
        ``threshold``. ``.save(folder)`` writes ``<id>_nodules.csv``, ``<id>_nodules.mrk.json`` (Slicer markups)
        and ``<id>_nodules.png``, as ``lungx detect-nodules``.
    """
    from lungx_core.cxr.nodules import DEFAULT_NODULE_MODEL, NoduleDetector
    from lungx_core.tasks.nodule_detection import TASK, find_nodules, write_outputs

    image = _as_radiograph(image, input_check, device)
    found = find_nodules(_model(NoduleDetector, model or DEFAULT_NODULE_MODEL, device), image)
    measurements = {"n_findings": len(found.findings), "max_probability": found.max_probability,
                     "threshold": found.threshold}
    return Result(TASK, image, None, {}, measurements, [] if image.spacing_known else ["pixel_size_unknown"],
                  lambda folder, stem: write_outputs(folder, stem, image, found), nodules=found.candidates)


# --- helpers: inputs, masks and models loaded once per setting ---------------------------------------------------


def _as_image(image: ImageLike) -> MedicalImage:
    if isinstance(image, MedicalImage):
        return image
    if isinstance(image, str | Path):
        return read_image(image)
    raise TypeError(f"expected a MedicalImage or a path, got {type(image).__name__}")


def _as_radiograph(image: ImageLike, input_check: bool, device: str) -> MedicalImage:
    image = _as_image(image)
    if image.array.ndim != 2:
        raise InputError(image.source or "input", f"a radiograph is needed, got a {image.array.ndim}-D volume")
    _check_input(image, input_check, device)
    return image


def _check_input(image: MedicalImage, input_check: bool, device: str) -> None:
    if input_check:
        from lungx_core.cxr.gate import FrontalChestGate

        _model(FrontalChestGate, "cxr_gate", device).check(image)


def _mask(image: MedicalImage, mask: np.ndarray | str | Path, what: str) -> np.ndarray:
    if isinstance(mask, str | Path):
        from lungx_core.tasks.synthesis import read_lung_mask

        return read_lung_mask(Path(mask), image, what=what)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != image.array.shape:
        raise InputError(image.source or "input", f"the {what} mask has shape {mask.shape} but the image has "
                         f"{image.array.shape}")
    return mask


def _lungs(image: MedicalImage, lung_mask: MaskLike, device: str) -> np.ndarray:
    from lungx_core.tasks.synthesis import find_lungs

    if lung_mask is not None:
        return _mask(image, lung_mask, "lung")
    lung, _ = find_lungs(Path(image.source or "input"), image, None, _cxr_segmenter("cxr_anatomy", device, None))
    return lung


def _model(cls: type, model: str | Path, device: str, *more: Any) -> Any:
    from lungx_core.models.store import shared_model

    return shared_model(cls, model, *more, device=device)


def _cxr_segmenter(model: str | Path, device: str, threshold: float | None) -> Any:
    from lungx_core.models.store import shared_model
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    return shared_model(CXRSegmenter, model, device, threshold, "auto")


def _ct_segmenter(method: str, model: str | Path, device: str) -> Any:
    from lungx_core.models.store import shared_model
    from lungx_core.tasks.ct_lungs import CTLungSegmenter

    return shared_model(CTLungSegmenter, method, model, device, backend="auto")
