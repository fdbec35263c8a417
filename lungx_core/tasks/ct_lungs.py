"""CT lung segmentation: a chest CT in, right and left lungs out on its exact grid, with volumes and QC.

Two methods share the same pre- and post-processing:

- ``net`` (default): the shipped 2-D slice network, trained on classical pseudo-labels with synthetic
  pathology painted inside the lungs, so consolidation, ground glass and dependent density stay lung;
- ``classical``: :mod:`lungx_core.ct.classical` (no model), on a working grid of about 1.4 mm in-plane.

Volumes are processed in canonical (S, P, L) order (:mod:`lungx_core.orientation`), so left and right are the
patient's whatever the direction matrix, and in batches of slices, so memory grows with one label byte per
voxel plus the input, never a float64 copy of the volume.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from lungx_core.anatomy import CT_STRUCTURES
from lungx_core.ct.classical import BODY_HU, LEFT, RIGHT
from lungx_core.errors import InputError
from lungx_core.image import MedicalImage
from lungx_core.io.ct import TILT_TOLERANCE_DEG
from lungx_core.io.inputs import Case
from lungx_core.orientation import reorientation
from lungx_core.postprocess import bounding_box, component_sizes, fill_holes, keep_components, per_slice
from lungx_core.preprocess import CT_HU_WINDOW
from lungx_core.tasks.common import Progress, ok_row, run_guarded

DEFAULT_MODEL = "ct_lungs"
METHODS = ("net", "classical")
OUTPUT_FORMATS = ("seg.nrrd", "nii.gz", "nrrd", "dicom-seg")
MIN_TOTAL_LUNG_ML = 50.0  # below this no lungs were found: not a chest CT (or not a CT at all)
LUNG_ML_RANGE = (250.0, 5000.0)  # one adult lung, full coverage
LR_RATIO_RANGE = (0.5, 2.0)  # right / left volume; the right lung is normally ~10% larger
WORKING_SPACING_MM = 1.4  # classical path: in-plane working resolution


@dataclass
class CTResult:
    labels: np.ndarray  # uint8 in the input's array order: 0 background, 1 right lung, 2 left lung
    volumes_ml: dict[str, float]
    flags: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # (HU, labels, spacing) in canonical order, kept for the QC overlay's anatomical views
    canonical: tuple[np.ndarray, np.ndarray, tuple[float, float, float]] | None = field(default=None, repr=False)

    @property
    def masks(self) -> dict[str, np.ndarray]:
        return {s.name: self.labels == s.label for s in CT_STRUCTURES}


def _keep_lung_components(mask: np.ndarray, keep_fraction: float = 0.2) -> np.ndarray:
    """Largest 3-D component and any other at least ``keep_fraction`` of it, holes filled per axial slice.

    Done inside the mask's bounding box: a lung is a small part of a 512x512x1000 volume.
    """
    box = bounding_box(mask)
    if box is None:
        return mask
    out = np.zeros_like(mask)
    out[box] = per_slice(keep_components(mask[box], keep_fraction), fill_holes)
    return out


def drop_below_lungs(labels: np.ndarray) -> np.ndarray:
    """Lung labels (canonical order: axis 0 runs inferior -> superior) without air that lies wholly below the
    lungs: bowel gas or free abdominal air in a field of view that reaches the upper abdomen.

    The lungs are the most superior air of the chest: the component (both sides together) that reaches highest,
    and every component sharing its slices, span the lungs' slice range; a component whose top slice lies below
    the bottom of that range is below the diaphragm and is dropped, unless it is a quarter of the largest
    component's size or more.
    """
    box = bounding_box(labels)
    if box is None:
        return labels
    components, n = ndi.label(labels[box] > 0)  # inside the lungs' box: the same components, a fraction of the scan
    if n <= 1:
        return labels
    boxes = ndi.find_objects(components)
    z_range = [(b[0].start, b[0].stop - 1) for b in boxes]  # (bottom, top) slice of each component
    sizes = component_sizes(components, n, boxes)
    top = max(range(n), key=lambda i: (z_range[i][1], sizes[i]))
    low, high = z_range[top]
    grown = True
    while grown:  # the other lung and lung pieces share slices with the range so far (a chain of them counts)
        grown = False
        for i in range(n):
            if z_range[i][1] >= low and z_range[i][0] <= high and z_range[i][0] < low:
                low, grown = z_range[i][0], True
    # a component of a quarter of the largest's size is lung cut apart (a missed slice, a field of view cutting
    # through it), not gas under the diaphragm
    below = [i + 1 for i in range(n) if z_range[i][1] < low and sizes[i] < 0.25 * sizes.max()]
    if not below:
        return labels
    out = labels.copy()
    out[box][np.isin(components, below)] = 0
    return out


AERATED_HU = -600.0  # lung air and bowel gas, not the diaphragm between them
GAS_HU = -910.0  # mean of a pocket of bowel or stomach gas (aerated lung, vessels and all, is about -850)


def drop_gas_below_lungs(labels: np.ndarray, hu: np.ndarray) -> np.ndarray:
    """Network lung labels (canonical order) without gas in the stomach or colon under a hemidiaphragm that the
    labels join to a lung across the diaphragm (the classical pipeline has its own rules).

    Split at ``AERATED_HU`` the labelled air falls apart into the lungs and any such pocket. A part that is
    small (under a quarter of the largest), reaches lower than every large part, and is as dark as gas (mean
    under ``GAS_HU``) is dropped with it: aerated lung at the bases holds vessels and is never that dark, and
    a gas pocket is bounded by tissue, not lung.
    """
    box = bounding_box(labels)
    if box is None:
        return labels
    sub_hu = hu[box]
    parts, n = ndi.label((labels[box] > 0) & (sub_hu < AERATED_HU))
    if n <= 1:
        return labels
    boxes = ndi.find_objects(parts)
    sizes = component_sizes(parts, n, boxes)
    bottoms = np.array([b[0].start for b in boxes])
    large = sizes >= 0.25 * sizes.max()
    low = [i for i in range(n) if not large[i] and bottoms[i] < bottoms[large].min()]
    # the mean HU of the few small low parts only, each inside its own box
    gas = [i + 1 for i in low if sub_hu[boxes[i]][parts[boxes[i]] == i + 1].mean(dtype=np.float64) < GAS_HU]
    if not gas:
        return labels
    out = labels.copy()
    out[box][np.isin(parts, gas)] = 0
    return out


# A field of view much wider than the body: PET/CT attenuation CTs are reconstructed over 500-700 mm, where the
# network, trained on chests filling fields of 330-430 mm, sees the lungs at half their usual size and labels the
# dense lung bases in specks. Such a field is cut to the body (and this margin) before the network looks at it.
WIDE_FOV_SHARE = 0.75
BODY_MARGIN_MM = 10.0


def body_box(hu: np.ndarray, spacing: tuple[float, float, float]) -> tuple[slice, slice] | None:
    """The (rows, columns) box of everything denser than air (> -500 HU: body, arms, table) on any slice of a
    canonical volume, grown by BODY_MARGIN_MM; None unless its longer physical side is under WIDE_FOV_SHARE of the
    field's, so a field the chest fills is left exactly as it is."""
    tissue = np.zeros(hu.shape[1:], dtype=bool)
    for z0 in range(0, hu.shape[0], 64):  # in slabs: no volume-sized boolean copy
        tissue |= (hu[z0 : z0 + 64] > BODY_HU).any(axis=0)
    box = bounding_box(tissue)
    if box is None:
        return None
    pixel = spacing[1:]
    field = max(n * s for n, s in zip(hu.shape[1:], pixel, strict=True))
    extent = max((b.stop - b.start) * s for b, s in zip(box, pixel, strict=True))
    if extent >= WIDE_FOV_SHARE * field:
        return None
    return tuple(slice(max(0, b.start - round(BODY_MARGIN_MM / s)), min(n, b.stop + round(BODY_MARGIN_MM / s)))
                 for b, s, n in zip(box, pixel, hu.shape[1:], strict=True))


# BODY_HU (tissue versus air) on the network's [0, 1] input scale
BODY_LEVEL = (BODY_HU - CT_HU_WINDOW[0]) / (CT_HU_WINDOW[1] - CT_HU_WINDOW[0])
# an edge of the field of view runs through the body when soft tissue covers this share of it
CUT_EDGE_SHARE = 0.25


def inside_body(slice01: np.ndarray, box, lung: np.ndarray) -> np.ndarray:
    """The body and everything it encloses on one letterboxed network input slice (values on [0, 1]).

    Where the field of view cuts through the body (soft tissue or the network's lung, ``lung``, over
    ``CUT_EDGE_SHARE`` of an edge of the image) and a lung reaches that edge, the edge closes the body: a lung cut
    by the field is inside it, not outside air (lung counts: a field cutting through a lung's widest part shows
    mostly lung at its edge). Other edges stay open, so the air between back and table is still outside."""
    (r0, c0), (h, w) = box.offset, box.resized_shape
    body = slice01[r0 : r0 + h, c0 : c0 + w] > BODY_LEVEL
    lung = lung[r0 : r0 + h, c0 : c0 + w]
    # A lung reaches an edge also through air the network left unlabelled near the cut (a lung tip, the anterior
    # junction): the air regions that are mostly the network's lung count as lung. Outside air, where the network
    # may leave a stray speck, is mostly not.
    edges = np.concatenate([body[0], body[-1], body[:, 0], body[:, -1]])
    air, n = ndi.label(~body) if edges.any() else (None, 0)  # a body clear of every edge closes none
    if n:
        mostly_lung = np.bincount(air[lung], minlength=n + 1) >= 0.5 * np.bincount(air.ravel(), minlength=n + 1)
        mostly_lung[0] = False
        lung = lung | mostly_lung[air]
    framed = np.pad(body, 1)
    for edge, lung_edge, frame in (
        (body[0], lung[:2].any(axis=0), (0, slice(None))),
        (body[-1], lung[-2:].any(axis=0), (-1, slice(None))),
        (body[:, 0], lung[:, :2].any(axis=1), (slice(None), 0)),
        (body[:, -1], lung[:, -2:].any(axis=1), (slice(None), -1)),
    ):
        if lung_edge.any() and (edge | lung_edge).mean() >= CUT_EDGE_SHARE:
            framed[frame] = True
    out = np.zeros(slice01.shape, dtype=bool)
    out[r0 : r0 + h, c0 : c0 + w] = fill_holes(keep_components(framed))[1:-1, 1:-1]
    return out


def remove_airway(labels: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Trachea and main bronchi out of the lung labels (canonical order), grown from the trachea as in the
    classical pipeline; airways enclosed by lung in their slice are refilled later with the holes."""
    from lungx_core.ct.classical import find_trachea_seed, grow_airway

    box = bounding_box(labels)
    if box is None:
        return labels
    sub_lung, sub_hu = labels[box] > 0, hu[box]
    seed = find_trachea_seed(sub_lung, sub_lung, sub_hu, spacing)
    if seed is None:
        return labels
    # Grown in all dark voxels, not only the network's mask: the network may label the trachea only in part,
    # and the leak control of grow_airway stops before the lungs themselves are reached.
    airway = grow_airway(sub_hu, seed, np.ones_like(sub_lung), spacing)
    near = bounding_box(airway, margin=1)  # dilated inside it: the same voxels as dilating the whole box
    if near is None:
        return labels
    grown = ndi.binary_dilation(airway[near]) & sub_lung[near]
    labels[box][near][grown] = 0
    return labels


def _upsample_labels(labels: np.ndarray, shape: tuple[int, int], batch: int = 32) -> np.ndarray:
    """Per-slice bilinear upsampling of each label's indicator, then the arg-max: smooth full-resolution borders."""
    import torch
    import torch.nn.functional as F

    out = np.zeros((labels.shape[0], *shape), dtype=np.uint8)
    for z0 in range(0, labels.shape[0], batch):
        sl = torch.from_numpy(labels[z0 : z0 + batch])
        onehot = torch.stack([sl == RIGHT, sl == LEFT], dim=1).float()
        up = F.interpolate(onehot, size=shape, mode="bilinear", align_corners=False)
        best = up.max(dim=1)
        out[z0 : z0 + batch] = torch.where(best.values >= 0.5, best.indices + 1, 0).numpy()
    return out


class CTLungSegmenter:
    """Loads the network once (``method='net'``); call :meth:`segment` for each CT."""

    def __init__(
        self,
        method: str = "net",
        model: str | Path = DEFAULT_MODEL,
        device: str = "auto",
        batch_slices: int = 16,
        backend: str = "torch",
    ):
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        self.method = method
        self.batch_slices = batch_slices
        self.net = None
        self.device = "cpu"
        self.name = "ct_lungs_classical"
        if method == "net":
            from lungx_core.models.store import load_model, network_device

            self.net, self.config = load_model(model, device, backend)
            self.device = network_device(self.net)
            self.name = str(self.config.get("name", model))
            self.size = int(self.config["size"])
            self.threshold = float(self.config.get("threshold", 0.5))

    def _labels_net(
        self, hu: np.ndarray, progress: Progress | None = None, pixel_mm: tuple[float, float] = (1.0, 1.0)
    ) -> np.ndarray:
        import torch

        from lungx_core.models.inference import forward_in_chunks
        from lungx_core.preprocess import ct_slices_to_input, unletterbox

        labels = np.zeros(hu.shape, dtype=np.uint8)
        logit_threshold = float(np.log(self.threshold / (1 - self.threshold)))
        for z0 in range(0, hu.shape[0], self.batch_slices):
            x, box = ct_slices_to_input(hu[z0 : z0 + self.batch_slices], self.size, pixel_mm)
            with torch.inference_mode():  # on CPU 4 slices per network call (lungx_core.models.inference)
                logits = forward_in_chunks(self.net, torch.from_numpy(x).to(self.device)).float().cpu().numpy()
            n = len(x)
            # Lungs lie inside the body: this removes stray detections in the air between the back and the table
            # (cheap at network resolution: one 2-D labelling per slice).
            for i in range(n):
                logits[i][:, ~inside_body(x[i, 0], box, logits[i].max(axis=0) >= logit_threshold)] = -20.0
            # logits, not probabilities, are upsampled: smooth borders; a monotone threshold gives the same mask
            full = unletterbox(logits.reshape(n * 2, self.size, self.size), box).reshape(n, 2, *hu.shape[1:])
            right, left = full[:, 0], full[:, 1]
            labels[z0 : z0 + n][(right >= logit_threshold) & (right >= left)] = RIGHT
            labels[z0 : z0 + n][(left >= logit_threshold) & (left > right)] = LEFT
            if progress:
                progress((z0 + n) / hu.shape[0], f"slices {z0 + n}/{hu.shape[0]}")
        return labels

    def _labels_classical(self, hu: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, list[str]]:
        from lungx_core.ct.classical import segment_lungs_classical

        factor = max(1, int(WORKING_SPACING_MM / max(spacing[1], spacing[2]) + 0.25))
        if factor == 1:
            result = segment_lungs_classical(hu, spacing)
            return result.labels, result.notes
        rows, cols = (hu.shape[1] // factor) * factor, (hu.shape[2] // factor) * factor
        work = np.empty((hu.shape[0], rows // factor, cols // factor), dtype=np.float32)
        for z in range(hu.shape[0]):  # block means slice by slice: no float copy of the whole volume
            work[z] = hu[z, :rows, :cols].reshape(rows // factor, factor, cols // factor, factor).mean(axis=(1, 3))
        result = segment_lungs_classical(work, (spacing[0], spacing[1] * factor, spacing[2] * factor))
        labels = np.zeros(hu.shape, dtype=np.uint8)
        labels[:, :rows, :cols] = _upsample_labels(result.labels, (rows, cols))
        return labels, result.notes

    def segment(self, image: MedicalImage, progress: Progress | None = None) -> CTResult:
        """Lungs of one CT; ``progress(fraction, message)`` is told how far the network is (net method)."""
        import time

        t0 = time.perf_counter()
        if image.array.ndim != 3:
            raise InputError(image.source or "input", "not a CT volume (a 2-D image goes to the CXR task)")
        orient = reorientation(image.direction, image.spacing)
        hu = orient.to_canonical(image.array)
        labels, flags = self._labels(hu, orient.spacing, progress)
        voxel_ml = float(np.prod(orient.spacing)) / 1000.0
        volumes = lung_volumes(labels, voxel_ml)
        if sum(volumes.values()) < MIN_TOTAL_LUNG_ML:
            raise InputError(
                image.source or "input", f"no lungs found ({sum(volumes.values()):.0f} mL of lung): not a chest CT?"
            )
        cut = body_cut_sides(hu, labels)
        smaller, larger = sorted(volumes.values())
        if cut in ("right", "left") and smaller < HEMITHORAX_RATIO * larger:
            # A targeted reconstruction of one hemithorax: the model, trained on whole chests, finds a fraction of
            # the lung. Mirrored across the cut edge it is a whole (symmetric) chest again; the half that is the
            # image is kept. The other lung is not in the image (flagged), so its volume is not measured.
            labels, flags = self._labels(mirror_across(hu, cut), orient.spacing, progress)
            labels = np.ascontiguousarray(labels[:, :, : hu.shape[2]] if cut == "left" else labels[:, :, -hu.shape[2]:])
            volumes = lung_volumes(labels, voxel_ml)
            flags.append(f"one_hemithorax_{'right' if cut == 'left' else 'left'}")
            if sum(volumes.values()) < MIN_TOTAL_LUNG_ML:
                raise InputError(image.source or "input", f"targeted field of view: no lung found in the hemithorax "
                                 f"({sum(volumes.values()):.0f} mL), the body runs out on the patient's {cut}")
        flags += qc_flags(labels, volumes, image.metadata, orient.obliquity_deg)
        if cut in ("right", "left"):  # "both": large patients fill full fields of view too, tight crops work
            flags.append(f"fov_cuts_body_{cut}")
        result_labels = np.ascontiguousarray(orient.from_canonical(labels))
        return CTResult(result_labels, volumes, flags, time.perf_counter() - t0, (hu, labels, orient.spacing))

    def _labels(self, hu: np.ndarray, spacing, progress: Progress | None) -> tuple[np.ndarray, list[str]]:
        """Canonical labels (airway removed, each lung its main components, nothing below the lungs) and the
        method's own flags."""
        flags: list[str] = []
        if self.method == "net":
            box = body_box(hu, spacing)
            sub = hu if box is None else hu[:, box[0], box[1]]
            # canonical (slice, row, column) spacing: the network sees square pixels whatever the scanner sent
            labels = remove_airway(self._labels_net(sub, progress, (spacing[1], spacing[2])), sub, spacing)
            labels = drop_gas_below_lungs(labels, sub)
            if box is not None:  # back onto the whole field
                whole = np.zeros(hu.shape, np.uint8)
                whole[:, box[0], box[1]] = labels
                labels = whole
        else:
            labels, flags = self._labels_classical(hu, spacing)
        for value in (RIGHT, LEFT):
            side = _keep_lung_components(labels == value)
            labels[(labels == value) & ~side] = 0
            labels[side & (labels == 0)] = value
        return drop_below_lungs(labels), flags


# a lung below this share of the other one on a one-sided field of view: the other hemithorax is not in the image.
# Not a quarter: on a right-hemithorax crop the network can call the liver dome under the cut "left lung" (455 mL
# against 1.1 L), and whole chests cut on one side keep both lungs far above half of each other.
HEMITHORAX_RATIO = 0.45


def lung_volumes(labels: np.ndarray, voxel_ml: float) -> dict[str, float]:
    """mL of each lung in a label volume."""
    return {s.name: float((labels == s.label).sum()) * voxel_ml for s in CT_STRUCTURES}


def mirror_across(hu: np.ndarray, cut: str) -> np.ndarray:
    """The canonical volume with its mirror image joined at the edge where the body runs out (``cut``: the
    patient's "left" is the last column): a hemithorax becomes a whole, symmetric chest."""
    flipped = hu[:, :, ::-1]
    return np.concatenate([hu, flipped] if cut == "left" else [flipped, hu], axis=2)


def body_cut_sides(hu: np.ndarray, labels: np.ndarray, share: float = 0.5) -> str:
    """Where the field of view cuts the body (canonical order: columns run to the patient's left): "right",
    "left", "both" or "" -- a side counts when, on at least ``share`` of the slices with lung, soft tissue
    (> -500 HU) reaches that image edge over a tenth of its height. A targeted reconstruction of one
    hemithorax cuts one side; a tight crop of the chest wall cuts both or neither."""
    slices = labels.reshape(labels.shape[0], -1).any(axis=1)
    if not slices.any():
        return ""
    body = hu[slices] > BODY_HU
    right = float(((body[:, :, 0]).mean(axis=1) > 0.1).mean()) >= share
    left = float(((body[:, :, -1]).mean(axis=1) > 0.1).mean()) >= share
    return "both" if right and left else "right" if right else "left" if left else ""


def qc_flags(labels: np.ndarray, volumes: dict[str, float], metadata: dict[str, Any], obliquity: float) -> list[str]:
    """Flags a reader should look at; ``labels`` in canonical order."""
    flags = []
    lung = labels > 0
    cut_top, cut_bottom = bool(lung[-1].any()), bool(lung[0].any())
    if cut_top or cut_bottom:
        flags.append(
            "truncated_scan_" + ("top_and_bottom" if cut_top and cut_bottom else "top" if cut_top else "bottom")
        )
    if lung[:, 0].any() or lung[:, -1].any() or lung[:, :, 0].any() or lung[:, :, -1].any():
        flags.append("lung_touches_fov_edge")
    right, left = volumes["lung_right"], volumes["lung_left"]
    if min(right, left) == 0:
        flags.append("one_lung_only")
    elif not (cut_top or cut_bottom):
        lo, hi = LUNG_ML_RANGE
        if not all(lo <= v <= hi for v in (right, left)):
            flags.append("implausible_volume")
        if not LR_RATIO_RANGE[0] <= right / left <= LR_RATIO_RANGE[1]:
            flags.append("implausible_lr_ratio")
    tilt = float(metadata.get("gantry_tilt_deg", 0.0) or 0.0)
    if tilt > TILT_TOLERANCE_DEG:
        flags.append(f"gantry_tilt_{tilt:.1f}deg")
    if obliquity > 1.0:
        flags.append(f"oblique_{obliquity:.0f}deg")
    if int(metadata.get("n_series", 1) or 1) > 1:
        flags.append(f"chose_series_{metadata.get('series_index', '')}_of_{metadata['n_series']}")
    if int(metadata.get("unreadable_files", 0) or 0):
        flags.append(f"ignored_{metadata['unreadable_files']}_unreadable_files")
    return flags


def write_outputs(
    out_dir: Path,
    case_id: str,
    image: MedicalImage,
    result: CTResult,
    fmt: str = "seg.nrrd",
    overlay: bool = True,
    algorithm: str = DEFAULT_MODEL,
) -> list[Path]:
    """The segmentation in ``fmt`` (label map: 1 right, 2 left; or a DICOM SEG naming ``algorithm``) and the QC
    overlay; all or nothing."""
    from lungx_core.io.writers import all_or_nothing, render_ct_overlay, write_masks, write_png

    if fmt not in OUTPUT_FORMATS:
        raise InputError(image.source, f"output format {fmt!r} is for radiographs; for CT use seg.nrrd, nii.gz, nrrd "
                         "or dicom-seg")
    with all_or_nothing() as written:
        write_masks(written, out_dir, case_id, image, result.masks, CT_STRUCTURES, fmt, algorithm)
        if overlay:
            hu, labels, spacing = result.canonical
            canon = {s.name: labels == s.label for s in CT_STRUCTURES}
            written.append(out_dir / f"{case_id}_overlay.png")
            write_png(written[-1], render_ct_overlay(hu, canon, CT_STRUCTURES, spacing))
    return written


RESULT_COLUMNS = ["volume_ml_lung_right", "volume_ml_lung_left", "volume_ml_lung", "seconds", "series"]


def result_row(case: Case, image: MedicalImage, result: CTResult, outputs: list[Path]) -> dict[str, Any]:
    sx, sy, sz = image.spacing
    return ok_row(
        case,
        "ct-lungs",
        qc_flags=";".join(result.flags),
        volume_ml_lung_right=round(result.volumes_ml["lung_right"], 1),
        volume_ml_lung_left=round(result.volumes_ml["lung_left"], 1),
        volume_ml_lung=round(sum(result.volumes_ml.values()), 1),
        seconds=round(result.seconds, 2),
        series=image.metadata.get("series_uid", ""),
        spacing_mm=f"{sx:.4g}x{sy:.4g}x{sz:.4g}",
        outputs=";".join(p.name for p in outputs),
    )


def process_case(
    case: Case,
    segmenter: CTLungSegmenter,
    out_dir: Path,
    fmt: str = "seg.nrrd",
    overlay: bool = True,
    series_uid: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Read, segment and write one CT. Bad input becomes an error row; nothing partial is left behind."""
    from lungx_core.io.ct import read_ct

    def work() -> dict[str, Any]:
        image = read_ct(case.path, series_uid)
        result = segmenter.segment(image, progress)
        outputs = write_outputs(out_dir, case.case_id, image, result, fmt, overlay, segmenter.name)
        return result_row(case, image, result, outputs)

    return run_guarded(case, "ct-lungs", work)


def run_one(
    case: Case,
    out_dir: Path,
    device: str = "auto",
    fast: bool = False,
    progress: Progress | None = None,
    model: str = DEFAULT_MODEL,
    method: str = "net",
    series: str | None = None,
    *,
    fmt: str = "seg.nrrd",
    overlay: bool | None = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """One CT, as the worker process and batch runs (lungx_core.batch) run it: masks in ``fmt`` plus the QC
    picture unless ``overlay`` is False (default: not ``fast``), the network run by ``backend`` (auto,
    torch or onnx: ``lungx_core.models.store.load_model``). The model is loaded once per process."""
    from lungx_core.models.store import shared_model

    report = progress or (lambda fraction, message: None)
    report(0.0, "loading the model" if method == "net" else "classical pipeline")
    segmenter = shared_model(CTLungSegmenter, method, model or DEFAULT_MODEL, device, backend=backend)
    report(0.1, f"reading the CT; segmenting on {segmenter.device}")

    def network_progress(fraction: float, message: str) -> None:  # the network is most of the time
        report(0.1 + 0.7 * fraction, f"segmenting {message}")

    overlay = not fast if overlay is None else overlay
    return process_case(case, segmenter, out_dir, fmt, overlay, series, network_progress)
