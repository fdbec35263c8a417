"""Write a processed radiograph (synthetic, rib-suppressed, opacity-removed) in the input's format family, on the
input's grid: PNG/JPEG/TIFF/BMP in -> PNG out (lossless, the input's 8 or 16 bits), or a float32 TIFF when the
bitmap held floats or other integers (a mode-F TIFF in [0, 1] keeps its values instead of being rounded to 0
and 1); NRRD/NIfTI/MHA in -> the same format with the same geometry; DICOM in -> a derived DICOM image in a
new series of the same study.

The DICOM output copies the patient, study and equipment attributes of its source, gets new Series and SOP
Instance UIDs, ImageType DERIVED\\SECONDARY, a DerivationDescription and a SourceImageSequence pointing at the
original. Its pixels are what lungx_core computed on (modality and VOI LUTs applied, display polarity) stored as
MONOCHROME2 with a linear rescale, so any viewer shows what our PNGs show. A DX source (for processing or for
presentation) gives a DX *for presentation* image (display-ready pixels, a window, rescale 1/0 as the DX Image
module requires), so the output passes dciodvfy with no error that its source does not already have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lungx_core.image import MedicalImage, to_dtype
from lungx_core.io.writers import atomic_path, write_image, write_png, write_tiff

PNG_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))  # what a PNG holds losslessly (grey)
ITK_FORMATS = {"nrrd": ".nrrd", "nhdr": ".nrrd", "nii": ".nii", "nii.gz": ".nii.gz", "mha": ".mha", "mhd": ".mha"}


def derived_suffix(image: MedicalImage) -> str:
    """The file suffix of a derived image of ``image``."""
    fmt = str(image.metadata.get("format", "")).lower()
    if fmt == "dicom":
        return ".dcm"
    if fmt in ITK_FORMATS:
        return ITK_FORMATS[fmt]
    return ".png" if image.array.dtype in PNG_DTYPES else ".tif"


def write_derived(path: Path, image: MedicalImage, array: np.ndarray, description: str) -> None:
    """Write ``array`` (the shape of ``image.array``) atomically at ``path`` (its suffix from
    :func:`derived_suffix`)."""
    if array.shape != image.array.shape:
        raise ValueError(f"derived image shape {array.shape} differs from the input's {image.array.shape}")
    suffix = derived_suffix(image)
    if suffix == ".dcm":
        write_derived_dicom(path, Path(image.source), array, description)
    elif suffix == ".png":
        write_png(path, to_dtype(array, image.array.dtype))
    elif suffix == ".tif":
        write_tiff(path, np.asarray(array, dtype=np.float32))
    else:
        write_image(path, image, array.astype(image.array.dtype, copy=False))


def write_processed_set(
    out_dir: Path,
    image: MedicalImage,
    array: np.ndarray,
    description: str,
    stem: str,
    segmentation: tuple[str, dict[str, np.ndarray], list],
    picture: tuple[str, np.ndarray],
    extra_images: tuple[tuple[str, np.ndarray, str], ...] = (),
) -> list[Path]:
    """What every radiograph-to-radiograph task writes, all or nothing: ``<stem><derived suffix>`` (``array`` in
    ``image``'s format family), a ``.seg.nrrd`` (``(name, masks, structures)``) on ``image``'s grid and a PNG
    picture (``(name, RGB array)``), and each of ``extra_images`` (``(stem, array, description)``, written like
    ``array``). Returns the paths written."""
    from lungx_core.io.writers import all_or_nothing, write_seg_nrrd

    seg_name, masks, structures = segmentation
    picture_name, picture_array = picture
    with all_or_nothing() as written:
        written.append(out_dir / f"{stem}{derived_suffix(image)}")
        write_derived(written[-1], image, array, description)
        for extra_stem, extra_array, extra_description in extra_images:
            written.append(out_dir / f"{extra_stem}{derived_suffix(image)}")
            write_derived(written[-1], image, extra_array, extra_description)
        written.append(out_dir / seg_name)
        write_seg_nrrd(written[-1], image, masks, structures)
        written.append(out_dir / picture_name)
        write_png(written[-1], picture_array)
    return written


DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
# Patient and General Study attributes of type 2 (present, possibly empty) in every image and SEG we write
TYPE2_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
               "ReferringPhysicianName", "StudyID", "AccessionNumber")


def fill_type2(ds: Any, keywords: tuple[str, ...] = TYPE2_STUDY) -> None:
    """Add each of ``keywords`` that ``ds`` lacks, empty: a type 2 attribute must be present, empty is valid."""
    for keyword in keywords:
        if keyword not in ds:
            setattr(ds, keyword, "")


def write_derived_dicom(path: Path, source: Path, array: np.ndarray, description: str) -> None:
    import pydicom
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = pydicom.dcmread(source)
    values = np.asarray(array, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    is_dx = ds.SOPClassUID in (DX_FOR_PRESENTATION, DX_FOR_PROCESSING)
    if is_dx:
        # no rescale allowed: store the values themselves (film values are unsigned and fit 16 bits); only a
        # negative or over-range result is shifted or scaled into 0..65535
        low_dx = min(low, 0.0)
        slope = max(1.0, (high - low_dx) / 65535.0)
        stored = np.clip(np.rint((values - low_dx) / slope), 0, 65535).astype(np.uint16)
    else:
        slope = max(high - low, 1e-6) / 65535.0
        stored = np.clip(np.rint((values - low) / slope), 0, 65535).astype(np.uint16)

    source_ref = Dataset()
    source_ref.ReferencedSOPClassUID = ds.SOPClassUID
    source_ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    for keyword in ("VOILUTSequence", "ModalityLUTSequence", "PixelPaddingValue", "PlanarConfiguration",
                    "PixelPaddingRangeLimit", "LargestImagePixelValue", "SmallestImagePixelValue"):
        if keyword in ds:
            delattr(ds, keyword)
    ds.SourceImageSequence = [source_ref]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = description[:1024]
    series = description if description.endswith("(lungx)") else f"{description} (lungx)"
    ds.SeriesDescription = series[:64]
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesNumber = int(ds.get("SeriesNumber", 0) or 0) + 1000
    ds.InstanceNumber = 1
    ds.BurnedInAnnotation = ds.get("BurnedInAnnotation", "NO")
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.SamplesPerPixel = 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.Rows, ds.Columns = stored.shape
    if is_dx:
        # DX Image module: rescale slope 1 and intercept 0 (enumerated), so the stored values are the output
        # values; a window belongs in a for-presentation image, which display-ready pixels are
        ds.SOPClassUID = DX_FOR_PRESENTATION
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.RescaleSlope, ds.RescaleIntercept, ds.RescaleType = "1", "0", "US"
        ds.PresentationLUTShape = "IDENTITY"
        s_low, s_high = float(stored.min()), float(stored.max())
        ds.WindowCenter, ds.WindowWidth = f"{(s_low + s_high) / 2:.6g}", f"{max(s_high - s_low, 1):.6g}"
        if "ContentDate" in ds or "ContentTime" in ds:
            fill_type2(ds, ("ContentDate", "ContentTime"))
    else:
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}"[:16], f"{low:.10g}"[:16]
        ds.RescaleType = ds.get("RescaleType", "US")
        ds.WindowCenter, ds.WindowWidth = f"{(low + high) / 2:.6g}", f"{max(high - low, 1):.6g}"
    fill_type2(ds)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    with atomic_path(path) as tmp:
        try:  # pydicom >= 3
            ds.save_as(tmp, enforce_file_format=True)
        except TypeError:  # pydicom 2.4 (Slicer 5.10)
            ds.is_little_endian, ds.is_implicit_VR = True, False
            ds.save_as(tmp, write_like_original=False)
