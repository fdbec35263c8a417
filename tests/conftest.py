"""Shared fixtures: generated radiographs and DICOM files (no research data), and the optional shared data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SLICER_MODULE_DIR = REPO / "LungXSlicer"
# the Slicer module's helper package (LungXSlicerLib) is plain Python: its tests import it from the checkout
if str(SLICER_MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(SLICER_MODULE_DIR))


def phantom_radiograph(rows: int = 512, cols: int = 480, seed: int = 0) -> np.ndarray:
    """A synthetic frontal chest film in display polarity: bright body and mediastinum, two dark lung fields,
    the heart bulging to the patient's left (image right)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:rows, 0:cols].astype(np.float32)
    cy, cx = rows * 0.5, cols * 0.5
    body = (((yy - cy) / (rows * 0.48)) ** 2 + ((xx - cx) / (cols * 0.46)) ** 2) < 1
    img = np.where(body, 170.0, 20.0)
    for side in (-1, 1):
        lung = (((yy - rows * 0.45) / (rows * 0.30)) ** 2 + ((xx - cx - side * cols * 0.2) / (cols * 0.13)) ** 2) < 1
        img[lung] = 60.0
    heart = (((yy - rows * 0.62) / (rows * 0.12)) ** 2 + ((xx - cx - cols * 0.06) / (cols * 0.13)) ** 2) < 1
    img[heart] = 175.0
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def phantom() -> np.ndarray:
    return phantom_radiograph()


def save_dicom(ds, path: Path) -> None:
    """Part 10 file with pydicom 3 and 2.4 (the version Slicer 5.10 bundles), whose keyword differs."""
    try:
        ds.save_as(path, enforce_file_format=True)
    except TypeError:
        ds.save_as(path, write_like_original=False)


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    modality: str = "DX",
    photometric: str = "MONOCHROME2",
    pixel_spacing: tuple[float, float] | None = (0.2, 0.15),
    imager_spacing: tuple[float, float] | None = None,
    view: str = "PA",
    body_part: str = "CHEST",
    frames: int = 1,
    patient_orientation: tuple[str, str] | None = ("L", "F"),
    window: tuple[float, float] | None = None,
    rescale: tuple[float, float] | None = None,
    series_uid: str | None = None,
) -> Path:
    """A minimal but valid DICOM Part 10 file written with pydicom."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.Modality = modality
    ds.PatientName = "Phantom^Test"
    ds.PatientID = "PHANTOM"
    if view:
        ds.ViewPosition = view
    if body_part:
        ds.BodyPartExamined = body_part
    if patient_orientation:
        ds.PatientOrientation = list(patient_orientation)
    arr = np.asarray(pixels, dtype=np.uint16)
    if frames > 1:
        arr = np.stack([arr] * frames)
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if pixel_spacing:
        ds.PixelSpacing = list(pixel_spacing)
    if imager_spacing:
        ds.ImagerPixelSpacing = list(imager_spacing)
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    ds.PixelData = arr.tobytes()
    save_dicom(ds, path)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.fixture(scope="session")
def segmenter():
    from lungx_core.models.store import model_paths

    weights, _ = model_paths("cxr_anatomy")
    if not weights.exists():
        pytest.fail("the shipped model lungx_core/weights/cxr_anatomy.safetensors is missing")
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    return CXRSegmenter("cxr_anatomy", device="cpu")


def write_ct_series(
    folder: Path,
    hu: np.ndarray,
    spacing: tuple[float, float, float] = (0.8, 0.8, 2.5),
    origin: tuple[float, float, float] = (-100.0, -120.0, -300.0),
    row_cosines: tuple[float, float, float] = (1.0, 0.0, 0.0),
    col_cosines: tuple[float, float, float] = (0.0, 1.0, 0.0),
    series_uid: str | None = None,
    series_number: int = 2,
    tilt_mm_per_slice: float = 0.0,
    slope_intercept: tuple[float, float] = (1.0, -1024.0),
    skip: tuple[int, ...] = (),
) -> str:
    """A CT Image Storage series, one file per slice of ``hu`` (K, J, I), written in shuffled order.

    Slice k sits at origin + k * spacing_z along the normal (plus a shift along the column direction per slice
    for a gantry tilt). Returns the SeriesInstanceUID.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_of_reference = generate_uid(), generate_uid()
    row, col = np.asarray(row_cosines, float), np.asarray(col_cosines, float)
    normal = np.cross(row, col)
    slope, intercept = slope_intercept
    order = np.random.default_rng(0).permutation(hu.shape[0])
    for k in order:
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.FrameOfReferenceUID = frame_of_reference
        ds.SeriesNumber, ds.InstanceNumber = series_number, int(k) + 1
        ds.Modality, ds.PatientName, ds.PatientID = "CT", "Phantom^CT", "PHANTOM"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SliceThickness = spacing[2]
        position = np.asarray(origin) + k * spacing[2] * normal + k * tilt_mm_per_slice * col
        ds.ImagePositionPatient = [round(float(v), 4) for v in position]
        ds.ImageOrientationPatient = [float(v) for v in (*row, *col)]
        ds.PixelSpacing = [spacing[1], spacing[0]]
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        stored = np.round((hu[k].astype(np.float64) - intercept) / slope).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        save_dicom(ds, folder / f"s{series_number}_{k:03d}.dcm")
    return series_uid


def chest_phantom(shape: tuple[int, int, int] = (24, 96, 96)) -> np.ndarray:
    """A CT-like chest in canonical (S, P, L) order, int16 HU: body ellipse, two lungs, mediastinum, spine,
    and a trachea running into the upper slices. The patient's right lung (low column index) is the larger."""
    k, n_rows, n_cols = shape
    yy, xx = np.mgrid[:n_rows, :n_cols]
    cy, cx = n_rows / 2, n_cols / 2
    vol = np.full(shape, -1000, dtype=np.int16)
    body = ((yy - cy) / (0.42 * n_rows)) ** 2 + ((xx - cx) / (0.47 * n_cols)) ** 2 <= 1
    for z in range(k):
        sl = np.where(body, 40, -1000).astype(np.int16)
        taper = 1.0 if z < 0.8 * k else 1.0 - (z - 0.8 * k) / (0.25 * k)
        if z >= 2:
            right = ((yy - cy) / (0.3 * n_rows * taper)) ** 2 + ((xx - 0.3 * n_cols) / (0.15 * n_cols * taper)) ** 2
            left = ((yy - cy) / (0.28 * n_rows * taper)) ** 2 + ((xx - 0.7 * n_cols) / (0.13 * n_cols * taper)) ** 2
            sl[right <= 1] = -850
            sl[left <= 1] = -850
        sl[((yy - 0.8 * n_rows) ** 2 + (xx - cx) ** 2) <= (0.05 * n_rows) ** 2] = 700  # spine
        if z >= 0.6 * k:
            sl[((yy - 0.4 * n_rows) ** 2 + (xx - cx) ** 2) <= (0.035 * n_rows) ** 2] = -1000  # trachea
        vol[z] = sl
    return vol
