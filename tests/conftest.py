"""Shared fixtures: generated radiographs and DICOM files (no research data), and the optional shared data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


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
    ds.save_as(path, enforce_file_format=True)
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
