"""Writers. Every file is written to a temporary name in the target folder and renamed into place, so a
crash or a full disk never leaves a partial output under the final name."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from lungx_core.anatomy import Structure
from lungx_core.image import MedicalImage


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Keep the real suffix so that libraries choosing a format by extension (SimpleITK, PIL) still do.
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith((".nii.gz", ".seg.nrrd")) else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; outputs and shipped weights must be readable
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def all_or_nothing() -> Iterator[list[Path]]:
    """Collect the paths of one case's outputs as they are written; if any write fails, remove those already
    completed, so a case never leaves part of its outputs behind."""
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise


def write_masks(
    written: list[Path],
    out_dir: Path,
    case_id: str,
    image: MedicalImage,
    masks: dict[str, np.ndarray],
    structures: Sequence[Structure],
    fmt: str,
    algorithm: str = "lungx",
) -> None:
    """Masks as ``<id>.seg.nrrd``, a label map ``<id>_labels.nii.gz|nrrd``, one ``<id>_<structure>.png`` each, or
    a DICOM SEG ``<id>_seg.dcm`` (DICOM inputs; ``algorithm`` names the model in it); each path is appended to
    ``written`` before its file is written."""
    if fmt == "dicom-seg":
        from lungx_core.io.dicom_seg import write_dicom_seg

        written.append(out_dir / f"{case_id}_seg.dcm")
        write_dicom_seg(written[-1], image, masks, structures, algorithm)
    elif fmt == "seg.nrrd":
        written.append(out_dir / f"{case_id}.seg.nrrd")
        write_seg_nrrd(written[-1], image, masks, structures)
    elif fmt in ("nii.gz", "nrrd"):
        written.append(out_dir / f"{case_id}_labels.{fmt}")
        write_image(written[-1], image, labelmap_from_masks(masks, structures))
    elif fmt == "png":
        for s in structures:
            written.append(out_dir / f"{case_id}_{s.name}.png")
            write_png(written[-1], masks[s.name].astype(np.uint8) * 255)
    else:
        raise ValueError(f"unknown mask format {fmt!r}")


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(
    path: str | Path, rows: Iterable[dict], columns: Sequence[str], lineterminator: str = "\r\n"
) -> None:
    """``rows`` as a CSV table with a header of ``columns`` (keys beyond them ignored), written atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator=lineterminator)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _ijk_shape(image: MedicalImage) -> tuple[int, ...]:
    arr = image.array
    return (arr.shape[1], arr.shape[0], 1) if arr.ndim == 2 else arr.shape[::-1]


def _kji_to_ijk(mask: np.ndarray) -> np.ndarray:
    return (mask[None] if mask.ndim == 2 else mask).transpose(2, 1, 0)


def write_seg_nrrd(
    path: str | Path, image: MedicalImage, masks: dict[str, np.ndarray], structures: Sequence[Structure]
) -> None:
    """Slicer segmentation: one named, coloured segment per structure with SCT terminology, on the image grid."""
    import slicerio
    from slicerio.segmentation import terminology_entry_from_string

    seg = slicerio.create_segmentation(_ijk_shape(image), image.ijk_to_lps())
    for s in structures:
        mask = masks[s.name]
        if mask.shape != image.array.shape:
            raise ValueError(f"mask {s.name} has shape {mask.shape}, image has {image.array.shape}")
    fields = [{"id": s.name, "name": s.name, "color": list(s.color),
               "terminology": terminology_entry_from_string(s.terminology())} for s in structures]
    seg["voxels"], seg["segments"] = _segment_layers(image.array.shape, [masks[s.name] for s in structures], fields)
    with atomic_path(path) as tmp:
        # gzip level 1: several times faster than slicerio's default 9, and masks compress well anyway
        slicerio.write_segmentation(str(tmp), seg, compression_level=1)


def _segment_layers(
    shape: tuple[int, ...], masks: list[np.ndarray], fields: list[dict]
) -> tuple[np.ndarray, list[dict]]:
    """The voxels and segments ``slicerio.add_segment`` makes of 2-D or 3-D masks (array order) added in order
    (each segment in the first layer it does not overlap, label = that layer's highest + 1, extent in i, j, k),
    computed inside each mask's bounding box: add_segment scans the whole image several times per segment, a
    quarter of a second per 2k film and seconds per CT."""
    from lungx_core.postprocess import bounding_box

    layers, labels = [np.zeros(shape, np.uint8)], [0]  # as create_segmentation: one empty layer
    segments = []
    for mask, segment in zip(masks, fields, strict=True):
        mask = np.asarray(mask, dtype=bool)
        box = bounding_box(mask)
        empty = box is None
        box = (slice(0, 0),) * mask.ndim if empty else box
        inside = mask[box]
        layer = next((k for k, voxels in enumerate(layers) if labels[k] < 255 and not voxels[box][inside].any()),
                     None)
        if layer is None:
            layers.append(np.zeros(mask.shape, np.uint8))
            labels.append(0)
            layer = len(layers) - 1
        labels[layer] += 1
        layers[layer][box][inside] = labels[layer]
        ijk = [(b.start, b.stop - 1) for b in box[::-1]] + ([(0, 0)] if mask.ndim == 2 else [])  # columns, rows, slices
        extent = [0, -1] * 3 if empty else [v for span in ijk for v in span]
        segments.append({**segment, "labelValue": labels[layer], "layer": layer, "extent": extent})
    # slicerio's voxel order (i, j, k); several layers stack in front
    voxels = np.stack([_kji_to_ijk(v) for v in layers])
    return (voxels if len(layers) > 1 else voxels[0]), segments


def labelmap_from_masks(masks: dict[str, np.ndarray], structures: Sequence[Structure]) -> np.ndarray:
    """One uint8 label per pixel (structure.label); later structures win where masks overlap."""
    first = masks[structures[0].name]
    labels = np.zeros(first.shape, dtype=np.uint8)
    for s in structures:
        labels[masks[s.name].astype(bool)] = s.label
    return labels


def write_image(path: str | Path, image: MedicalImage, array: np.ndarray | None = None) -> None:
    """NRRD/NIfTI/MHA through SimpleITK with the image's exact geometry (a radiograph as one slice)."""
    import SimpleITK as sitk

    with atomic_path(path) as tmp:
        sitk.WriteImage(image.to_sitk(array), str(tmp), useCompression=True)


def write_png(path: str | Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG", compress_level=1)


def write_tiff(path: str | Path, array: np.ndarray) -> None:
    """A one-channel float32 TIFF (Pillow mode F): values kept exactly, whatever their range."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(array, dtype=np.float32)).save(tmp, format="TIFF")


def to_uint8_display(array: np.ndarray) -> np.ndarray:
    from lungx_core.preprocess import normalise_intensity

    return to_uint8(normalise_intensity(array))


def to_uint8(windowed01: np.ndarray) -> np.ndarray:
    """A [0, 1] picture as 8-bit grey levels (rounded)."""
    return (np.asarray(windowed01) * 255).round().astype(np.uint8)


PICTURE_MAX_SIDE = 1024  # QC pictures show each film at most this many pixels along its long side


def picture_shape(shape: tuple[int, ...], max_side: int = PICTURE_MAX_SIDE) -> tuple[int, int]:
    """(rows, cols) of a film of ``shape`` in a QC picture: reduced so its long side is at most ``max_side``."""
    scale = min(1.0, max_side / max(shape[:2]))
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def shrink_for_picture(plane: np.ndarray, max_side: int = PICTURE_MAX_SIDE) -> np.ndarray:
    """A film-sized plane as float32 at :func:`picture_shape` (area-weighted bilinear); unchanged in size when it
    is small enough. A mask comes back as its covered fraction: threshold it at 0.5."""
    shape = picture_shape(plane.shape, max_side)
    plane = np.ascontiguousarray(plane, dtype=np.float32)
    if shape == plane.shape:
        return plane
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():  # one plane at a time: no 100-MB stack of a 2k film's masks
        return F.interpolate(torch.from_numpy(plane)[None, None], size=shape, mode="bilinear", align_corners=False,
                             antialias=True)[0, 0].numpy()


def render_overlay(
    image: MedicalImage, masks: dict[str, np.ndarray], structures: Sequence[Structure],
    max_side: int = PICTURE_MAX_SIDE,
) -> np.ndarray:
    """RGB QC picture: the radiograph in grey, each structure tinted and outlined in its colour, at most
    ``max_side`` px. A larger film is reduced to that size first, picture and masks together (area-weighted
    bilinear), so the tint never touches more pixels than it shows."""
    gray = to_uint8(image.windowed()).astype(np.float32) / 255  # the image's shared window, in 8 bits
    shape = picture_shape(gray.shape, max_side)
    if shape != gray.shape:
        gray = shrink_for_picture(gray, max_side)
        masks = {s.name: shrink_for_picture(masks[s.name], max_side) >= 0.5 for s in structures}
    return tint(gray, masks, structures, shape)


def tint(
    gray01: np.ndarray, masks: dict[str, np.ndarray], structures: Sequence[Structure], shape: tuple[int, int]
) -> np.ndarray:
    """RGB uint8 of a [0, 1] grey picture resized to ``shape``, each structure tinted and outlined in its colour."""
    from skimage.transform import resize

    if gray01.shape != shape:
        gray01 = resize(gray01, shape, order=1, anti_aliasing=True)
    from lungx_core.postprocess import bounding_box

    planes = np.repeat(np.asarray(gray01, dtype=np.float32)[None], 3, axis=0)  # one plane per colour
    for s in structures:
        m = masks[s.name]
        if m.shape != shape:
            m = resize(m.astype(np.float32), shape, order=1) >= 0.5
        m = m.astype(bool, copy=False)
        box = bounding_box(m)  # work inside the mask's box only
        if box is None:
            continue
        inside, edge = m[box], _outline(m)[box]
        for plane, value in zip(planes, np.asarray(s.color, dtype=np.float32), strict=True):
            part = plane[box]
            part[...] = np.where(inside, 0.7 * part + 0.3 * value, part)
            part[edge] = value
    return np.ascontiguousarray((np.clip(planes, 0, 1) * 255).round().astype(np.uint8).transpose(1, 2, 0))


def render_ct_overlay(
    hu: np.ndarray,
    masks: dict[str, np.ndarray],
    structures: Sequence[Structure],
    spacing: tuple[float, float, float],
    height: int = 512,
) -> np.ndarray:
    """Axial and coronal QC views side by side, lung window, physical aspect ratio.

    ``hu`` and the masks are in canonical (S, P, L) order (:mod:`lungx_core.orientation`) with ``spacing`` in
    that order. The axial slice is the one with the most lung, the coronal one passes through the lungs' centre.
    """
    union = np.zeros(hu.shape, dtype=bool)
    for s in structures:
        union |= masks[s.name].astype(bool)
    area = union.sum(axis=(1, 2))
    z = int(area.argmax()) if area.any() else hu.shape[0] // 2
    ys = np.nonzero(union.any(axis=(0, 2)))[0]
    y = int(round(ys.mean())) if ys.size else hu.shape[1] // 2
    sz, sy, sx = spacing

    def window(a: np.ndarray) -> np.ndarray:
        return np.clip((a.astype(np.float32) + 1350.0) / 1500.0, 0.0, 1.0)  # lung window W 1500 / L -600

    def view(a: np.ndarray, masks2d: dict[str, np.ndarray], row_mm: float, col_mm: float) -> np.ndarray:
        aspect = (a.shape[0] * row_mm) / (a.shape[1] * col_mm)
        shape = (height, max(1, round(height / aspect)))
        return tint(window(a), masks2d, structures, shape)

    axial = view(hu[z], {s.name: masks[s.name][z] for s in structures}, sy, sx)
    # coronal: head at the top, so rows run from the highest slice down
    coronal = view(hu[::-1, y], {s.name: masks[s.name][::-1, y] for s in structures}, sz, sx)
    gap = np.zeros((height, 8, 3), dtype=np.uint8)
    return np.concatenate([axial, gap, coronal], axis=1)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of the mask with a 4-neighbour outside it (or on the image border)."""
    inner = np.zeros_like(mask)
    inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    return mask & ~inner
