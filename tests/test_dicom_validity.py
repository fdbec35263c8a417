"""Every DICOM object we write passes dciodvfy (dicom3tools) with no error that its source does not already have:
the derived images of suppress-ribs, remove-opacity and synthesize, and DICOM SEG. Skips without dciodvfy."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from conftest import chest_phantom, phantom_radiograph, write_ct_series, write_dicom
from pydicom.dataset import Dataset

pytestmark = pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) is not installed")


def errors(path: Path) -> set[str]:
    proc = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return {line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")}


def complete_dx(path: Path, intent: str) -> Path:
    """A DX film that dciodvfy passes without error (every type 1 and 2 attribute of its IOD present)."""
    write_dicom(path, phantom_radiograph(256, 240))
    ds = pydicom.dcmread(path)
    processing = intent == "FOR PROCESSING"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1" + (".1" if processing else "")
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.PresentationIntentType = intent
    for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "ReferringPhysicianName",
                    "StudyID", "AccessionNumber", "Manufacturer", "DetectorType", "PositionerType"):
        setattr(ds, keyword, "")
    ds.SeriesNumber, ds.InstanceNumber, ds.ImageLaterality = 3, 1, "U"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.AcquisitionContextSequence = []
    chest = Dataset()
    chest.CodeValue, chest.CodingSchemeDesignator, chest.CodeMeaning = "43799004", "SCT", "Chest"
    ds.AnatomicRegionSequence = [chest]
    ds.PixelIntensityRelationship, ds.PixelIntensityRelationshipSign = "LIN", 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.PresentationLUTShape, ds.LossyImageCompression, ds.BurnedInAnnotation = "IDENTITY", "00", "NO"
    ds.ImagerPixelSpacing = [0.2, 0.15]
    if not processing:
        ds.WindowCenter, ds.WindowWidth = 2048, 4096
    ds.save_as(path, enforce_file_format=True)
    return path


def _run(*args: str) -> None:
    from typer.testing import CliRunner

    from lungx_core import cli

    result = CliRunner().invoke(cli.app, [*args, "-q", "--no-input-check"])
    assert result.exit_code == 0, result.output


@pytest.mark.slow
@pytest.mark.parametrize("intent", ["FOR PROCESSING", "FOR PRESENTATION"])
def test_derived_images_and_seg_of_a_dx_add_no_dciodvfy_error(tmp_path, intent):
    source = complete_dx(tmp_path / "film.dcm", intent)
    assert errors(source) == set()  # the fixture itself is valid
    for command in ("suppress-ribs", "remove-opacity", "synthesize"):
        _run(command, str(source), "-o", str(tmp_path / command))
    _run("segment", str(source), "-o", str(tmp_path / "segment"), "--format", "dicom-seg")
    written = sorted(tmp_path.glob("*/*.dcm"))
    assert [p.name for p in written] == ["film_opacity_removed.dcm", "film_seg.dcm", "film_bone.dcm",
                                         "film_ribs_suppressed.dcm", "film_synthetic.dcm"]
    for path in written:
        assert errors(path) == set(), path.name


@pytest.mark.slow
def test_ct_seg_adds_no_dciodvfy_error(tmp_path):
    series = tmp_path / "ct"
    write_ct_series(series, chest_phantom())
    source_errors = set().union(*(errors(p) for p in series.iterdir()))
    _run("segment", str(series), "-o", str(tmp_path / "out"), "--format", "dicom-seg")
    assert errors(tmp_path / "out" / "ct_seg.dcm") - source_errors == set()
