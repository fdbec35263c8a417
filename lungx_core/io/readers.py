"""Readers for chest radiographs: DICOM (DX/CR), PNG/JPEG/TIFF/BMP, NRRD/NIfTI/MHA.

Every reader returns a :class:`~lungx_core.image.MedicalImage` or raises :class:`InputError` with one line
that names the file and the problem. Nothing here needs torch.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from lungx_core.errors import InputError
from lungx_core.image import MedicalImage, to_dtype

PIL_SUFFIXES = {".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"}
ITK_SUFFIXES = {".nrrd", ".nii", ".nii.gz", ".mha", ".mhd", ".nhdr"}
DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
RADIOGRAPH_MODALITIES = {"DX", "CR", "DR", "RG", "PX"}
# Secondary captures and "other" often wrap a digitised film; accepted, with a QC note.
LOOSE_MODALITIES = {"OT", "SC", ""}
LATERAL_VIEWS = {"LL", "RL", "LAT", "LATERAL", "LLD", "RLD", "XCL"}
# DICOM objects that are no image (reports, presentation states, key-object selections, structure sets,
# segmentations, registrations, dose objects, plans, waveforms): ignored wherever a folder is searched for images
NON_IMAGE_MODALITIES = {"SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "RTRECORD", "RTDOSE", "SEG", "REG", "FID", "DOC",
                        "PLAN", "RWV", "AU", "ECG", "HD", "RESP"}
SR_SOP_CLASS_PREFIX = "1.2.840.10008.5.1.4.1.1.88."
MAX_PIXELS = 50_000_000  # larger than any chest detector (43 cm at 0.1 mm is ~18 Mpx)
MIN_SIDE = 64


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry 'DICM' at byte 128; extension-less files are common in DICOM folders."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_non_image_object(ds) -> bool:
    """True for a DICOM dataset (a header is enough) that is no image to segment: a report (any structured report
    SOP class, whatever its modality says), presentation state, key-object selection, structure set,
    segmentation, registration, dose object, plan or waveform."""
    modality = str(ds.get("Modality", "")).upper()
    return modality in NON_IMAGE_MODALITIES or str(ds.get("SOPClassUID", "")).startswith(SR_SOP_CLASS_PREFIX)


def read_radiograph(path: str | Path) -> MedicalImage:
    """Read one chest radiograph, whatever its format."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if path.is_dir():
        raise InputError(path, "is a folder; give the files inside it, or pass the folder to `lungx segment`")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    suffix = suffix_of(path)
    if suffix in DICOM_SUFFIXES or (suffix not in PIL_SUFFIXES | ITK_SUFFIXES and is_dicom_file(path)):
        image = read_dicom_radiograph(path)
    elif suffix in PIL_SUFFIXES:
        image = read_bitmap(path)
    elif suffix in ITK_SUFFIXES:
        image = read_itk_radiograph(path)
    else:
        raise InputError(path, f"unsupported file type {suffix or '(no extension, not DICOM)'}")
    check_radiograph_array(path, image.array)
    return image


def check_radiograph_array(path: Path, arr: np.ndarray) -> None:
    if arr.ndim != 2:
        raise InputError(path, f"expected a 2-D radiograph, got an array of shape {arr.shape}")
    rows, cols = arr.shape
    if rows * cols > MAX_PIXELS:
        raise InputError(path, f"image is {cols}x{rows} pixels, over the {MAX_PIXELS // 1_000_000} Mpx limit")
    if min(rows, cols) < MIN_SIDE:
        raise InputError(path, f"image is only {cols}x{rows} pixels; at least {MIN_SIDE} per side is needed")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(path, "image contains NaN or infinite pixel values")
    if arr.max() == arr.min():
        raise InputError(path, "image is blank (every pixel has the same value)")
    aspect = max(rows, cols) / min(rows, cols)
    if aspect > 3:
        raise InputError(path, f"aspect ratio {aspect:.1f}:1 is not that of a chest radiograph")


def _to_gray(path: Path, arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """(H, W, C) -> (H, W); True when real colour was discarded."""
    if arr.ndim == 2:
        return arr, False
    if arr.ndim != 3 or arr.shape[-1] not in (2, 3, 4):
        raise InputError(path, f"unexpected pixel layout {arr.shape}")
    rgb = arr[..., :3] if arr.shape[-1] >= 3 else arr[..., :1]
    if rgb.shape[-1] == 1 or (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
        return rgb[..., 0], False
    gray = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    if np.issubdtype(arr.dtype, np.integer):  # an 8- or 16-bit colour film stays an 8- or 16-bit grey one
        gray = to_dtype(gray, arr.dtype)
    return gray, True


def _is_deep_colour(im) -> bool:
    """A Pillow image of 16 bits per channel with colour or alpha (a 48/64-bit PNG or TIFF): Pillow opens those
    at 8 bits per channel, its raw mode (e.g. ``RGB;16B``) still says 16."""
    if im.mode not in ("RGB", "RGBA", "LA") or not im.tile:
        return False
    args = im.tile[0].args
    return ";16" in str(args[0] if isinstance(args, tuple) else args)


def read_bitmap(path: Path) -> MedicalImage:
    """PNG/JPEG/TIFF/BMP: 8- or 16-bit grey, palette or RGB(A); no physical spacing."""
    from PIL import Image, UnidentifiedImageError

    deep_colour = False
    try:
        with warnings.catch_warnings():
            # PIL's decompression-bomb guard stays as it is (process-wide); its warning is below our own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                cols, rows = im.size
                if rows * cols > MAX_PIXELS:
                    raise InputError(
                        path, f"image is {cols}x{rows} pixels, over the {MAX_PIXELS // 1_000_000} Mpx limit"
                    )
                if getattr(im, "n_frames", 1) > 1:
                    raise InputError(path, f"multi-page image ({im.n_frames} frames); give one radiograph per file")
                deep_colour = _is_deep_colour(im)  # read again below through ITK, at its 16 bits
                if im.mode == "P":
                    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                # a writable copy (torch warns on read-only arrays)
                arr = None if deep_colour else np.array(im)
    except InputError:
        raise
    except Image.DecompressionBombError:
        limit = f"{MAX_PIXELS // 1_000_000} Mpx"
        raise InputError(path, f"image is over the {limit} limit (decompression-bomb guard)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(path, f"not a readable image ({short_message(exc)})") from None
    return _read_deep_colour(path) if deep_colour else _bitmap_image(path, arr)


def _bitmap_image(path: Path, arr: np.ndarray) -> MedicalImage:
    arr, was_colour = _to_gray(path, arr)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    meta = {"format": path.suffix.lower().lstrip("."), "bits": int(arr.dtype.itemsize * 8)}
    if was_colour:
        meta["converted_from_colour"] = True
    return MedicalImage(array=arr, modality="CXR", spacing_known=False, source=str(path), metadata=meta)


def _read_deep_colour(path: Path) -> MedicalImage:
    """16-bit-per-channel colour PNG/TIFF through ITK's readers, which keep the 16 bits (size already checked)."""
    import SimpleITK as sitk

    try:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        raise InputError(path, f"not a readable image ({short_message(exc)})") from None
    return _bitmap_image(path, arr)


def read_itk_radiograph(path: Path) -> MedicalImage:
    """NRRD/NIfTI/MHA holding a 2-D image or a one-slice 3-D volume, geometry kept exactly."""
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"not a readable image ({short_message(exc)})") from None
    check_nifti_finite(path, "image contains NaN or infinite pixel values", img)
    if img.GetDimension() == 3 and img.GetSize()[2] > 1:
        size = img.GetSize()
        raise InputError(
            path,
            f"is a 3-D volume ({size[0]}x{size[1]}x{size[2]}), not a radiograph; CT volumes need the CT task",
        )
    if img.GetDimension() not in (2, 3):
        raise InputError(path, f"{img.GetDimension()}-D images are not supported")
    n_comp = img.GetNumberOfComponentsPerPixel()
    image = MedicalImage.from_sitk(img, modality="CXR", spacing_known=True, source=str(path))
    if n_comp > 1:
        gray, was_colour = _to_gray(path, image.array)
        image = MedicalImage(
            gray,
            image.spacing,
            image.origin,
            image.direction,
            "CXR",
            True,
            str(path),
            {"converted_from_colour": was_colour},
        )
    image.metadata["format"] = suffix_of(path).lstrip(".")
    return image


def check_nifti_finite(path: Path, message: str, read: Any = None) -> None:
    """Raise ``InputError(path, message)`` when a float NIfTI file holds NaN or infinite values. ITK's NIfTI reader
    turns them into 0 without a word, so the file's own data are looked at (nibabel, unscaled). ``read``: the
    SimpleITK image ITK made of the file; integer pixels there mean integer data in the file, which cannot hold
    NaN, so nothing is checked (and nibabel, a quarter of a second to import, is not loaded for them)."""
    if suffix_of(path) not in (".nii", ".nii.gz"):
        return
    if read is not None:
        import SimpleITK as sitk

        if np.issubdtype(sitk.GetArrayViewFromImage(read).dtype, np.integer):
            return
    import nibabel

    try:
        nifti = nibabel.load(path)
        if not np.issubdtype(nifti.header.get_data_dtype(), np.floating):
            return
        data = np.asarray(nifti.dataobj.get_unscaled())
    except Exception as exc:  # noqa: BLE001 - ITK read it; a file nibabel cannot is reported, not crashed on
        raise InputError(path, f"NIfTI data cannot be checked ({short_message(exc)})") from None
    if not np.isfinite(data).all():
        raise InputError(path, message)


def read_dicom_radiograph(path: Path) -> MedicalImage:
    """DX/CR DICOM with modality and VOI LUTs applied and MONOCHROME1 inverted to display polarity."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"not a readable DICOM file ({short_message(exc)})") from None
    modality = str(ds.get("Modality", "")).upper()
    if modality not in RADIOGRAPH_MODALITIES | LOOSE_MODALITIES:
        raise InputError(path, f"DICOM modality {modality} is not a chest radiograph (DX/CR expected)")
    view = str(ds.get("ViewPosition", "")).upper().strip()
    if view in LATERAL_VIEWS:
        raise InputError(path, f"lateral view ({view}); only frontal (PA/AP) chest radiographs are supported")
    body_part = str(ds.get("BodyPartExamined", "")).upper().strip()
    if body_part and not any(k in body_part for k in ("CHEST", "THORAX", "LUNG", "TORAX")):
        raise InputError(path, f"BodyPartExamined is {body_part}, not a chest radiograph")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(path, f"multi-frame DICOM ({frames} frames); a radiograph has one")
    if "PixelData" not in ds:
        raise InputError(path, "DICOM file has no pixel data")
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    if rows * cols > MAX_PIXELS:
        raise InputError(path, f"image is {cols}x{rows} pixels, over the {MAX_PIXELS // 1_000_000} Mpx limit")
    try:
        arr = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for truncated/compressed data
        raise InputError(path, f"DICOM pixel data cannot be decoded ({short_message(exc)})") from None
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if ds.get("SamplesPerPixel", 1) > 1:
        if photometric.startswith("YBR"):
            try:  # pydicom >= 3
                from pydicom.pixels import convert_color_space
            except ImportError:  # pydicom 2.4
                from pydicom.pixel_data_handlers.util import convert_color_space

            arr = convert_color_space(arr, photometric, "RGB")
        arr, was_colour = _to_gray(path, arr)
    else:
        was_colour = False
        arr = _apply_luts(ds, arr)
        if photometric == "MONOCHROME1":
            arr = arr.max() - arr  # display polarity: air dark, bone bright
    spacing, spacing_source = _dicom_spacing(ds)
    origin = tuple(float(v) for v in ds.get("ImagePositionPatient", (0.0, 0.0, 0.0)))
    direction = _dicom_direction(ds)
    meta = {
        "format": "dicom",
        "modality": modality,
        "photometric": photometric,
        "view_position": view,
        "patient_orientation": [str(v) for v in ds.get("PatientOrientation", [])],
        "spacing_source": spacing_source,
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "sop_uid": str(ds.get("SOPInstanceUID", "")),
    }
    if modality in LOOSE_MODALITIES:
        meta["modality_unverified"] = True
    if was_colour:
        meta["converted_from_colour"] = True
    return MedicalImage(
        array=np.asarray(arr, dtype=np.float32),
        spacing=spacing,
        origin=origin,
        direction=direction,
        modality="CXR",
        spacing_known=spacing_source != "none",
        source=str(path),
        metadata=meta,
    )


def _apply_luts(ds, arr: np.ndarray) -> np.ndarray:
    try:  # pydicom >= 3
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:  # pydicom 2.4, as bundled with Slicer 5.10
        from pydicom.pixel_data_handlers.util import apply_modality_lut, apply_voi_lut
    out = apply_modality_lut(arr, ds)
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        out = apply_voi_lut(out, ds)
    return np.asarray(out, dtype=np.float32)


def _dicom_spacing(ds) -> tuple[tuple[float, float, float], str]:
    """PixelSpacing is (row, column) spacing; ITK order is (column, row). ImagerPixelSpacing is the fallback
    (detector plane: it overstates anatomy size by the geometric magnification, ~10% for PA films)."""
    for tag, source in (("PixelSpacing", "PixelSpacing"), ("ImagerPixelSpacing", "ImagerPixelSpacing")):
        value = ds.get(tag)
        if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
            return (float(value[1]), float(value[0]), 1.0), source
    return (1.0, 1.0, 1.0), "none"


def _dicom_direction(ds) -> tuple[float, ...]:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    row = np.array([float(v) for v in iop[:3]])
    col = np.array([float(v) for v in iop[3:]])
    normal = np.cross(row, col)
    return tuple(float(v) for v in np.stack([row, col, normal], axis=1).ravel())


def short_message(exc: BaseException, limit: int = 160) -> str:
    """A library's exception as one short clause for a one-line error: its first line, without the advice meant
    for programmers ("Use force=True ...", " - the dataset may be ..."), cut at a word, never mid-word."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    text = text.split(" - ")[0]
    sentences = [t for t in re.split(r"(?<=\.)\s+", text) if "force=True" not in t]
    text = " ".join(sentences).strip().rstrip(".") or type(exc).__name__
    if len(text) > limit:
        text = text[:limit].rsplit(" ", 1)[0].rstrip(",;:") + "..."
    return text
