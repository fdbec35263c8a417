"""DICOM SEG output (--format dicom-seg): highdicom reads it back, its frames reference the right source instances,
its masks equal the .seg.nrrd's, and its segments carry the .seg.nrrd's SNOMED CT codes."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from conftest import chest_phantom, phantom_radiograph, write_ct_series, write_dicom

hd = pytest.importorskip("highdicom")
slicerio = pytest.importorskip("slicerio")


def _segment(inputs, out, fmt):
    from typer.testing import CliRunner

    from lungx_core import cli

    result = CliRunner().invoke(cli.app, ["segment", *map(str, inputs), "-o", str(out), "-q", "--no-input-check",
                                          "--format", fmt, "--no-overlay"])
    assert result.exit_code == 0, result.output


def _nrrd_masks(path) -> dict[str, np.ndarray]:
    """Each segment of a .seg.nrrd as a (K, J, I) bool array (the image array's order)."""
    seg = slicerio.read_segmentation(str(path))
    return {s["name"]: slicerio.segment_mask(seg, s).transpose(2, 1, 0).astype(bool) for s in seg["segments"]}


def _codes(seg) -> dict[str, tuple[str, str]]:
    out = {}
    for d in seg.SegmentSequence:
        typ = d.SegmentedPropertyTypeCodeSequence[0]
        modifier = typ.get("SegmentedPropertyTypeModifierCodeSequence", [None])[0]
        out[d.SegmentLabel] = (typ.CodeValue, modifier.CodeValue if modifier is not None else "")
    return out


def test_radiograph_seg_references_its_dx_instance_and_equals_the_seg_nrrd(tmp_path):
    from lungx_core.anatomy import CXR_STRUCTURES

    film = write_dicom(tmp_path / "film.dcm", phantom_radiograph(256, 240))
    _segment([film], tmp_path / "seg", "dicom-seg")
    _segment([film], tmp_path / "nrrd", "seg.nrrd")
    source = pydicom.dcmread(film)
    seg = hd.seg.segread(tmp_path / "seg" / "film_seg.dcm")

    assert seg.Modality == "SEG" and seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.SeriesInstanceUID != source.SeriesInstanceUID
    assert [r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence] \
        == [source.SOPInstanceUID]
    expected = _nrrd_masks(tmp_path / "nrrd" / "film.seg.nrrd")
    numbers = {d.SegmentLabel: int(d.SegmentNumber) for d in seg.SegmentSequence}
    assert list(numbers) == [s.name for s in CXR_STRUCTURES]
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=list(numbers.values()))
    for name, number in numbers.items():
        assert np.array_equal(pixels[0, :, :, number - 1].astype(bool), expected[name][0]), name
    assert _codes(seg) == {s.name: (s.property_code, s.modifier_code) for s in CXR_STRUCTURES}


def test_ct_seg_frames_reference_their_slices_and_equal_the_seg_nrrd(tmp_path):
    from lungx_core.anatomy import CT_STRUCTURES

    series = tmp_path / "ct"
    write_ct_series(series, chest_phantom())
    _segment([series], tmp_path / "seg", "dicom-seg")
    _segment([series], tmp_path / "nrrd", "seg.nrrd")
    seg = hd.seg.segread(tmp_path / "seg" / "ct_seg.dcm")
    slices = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(series.iterdir())]
    # the array order of the reader: along the slice normal, i.e. by ImagePositionPatient z here
    slices.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
    uids = [ds.SOPInstanceUID for ds in slices]
    referenced = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence
                  for r in s.ReferencedInstanceSequence}
    assert referenced == set(uids) and seg.FrameOfReferenceUID == slices[0].FrameOfReferenceUID
    expected = _nrrd_masks(tmp_path / "nrrd" / "ct.seg.nrrd")
    numbers = {d.SegmentLabel: int(d.SegmentNumber) for d in seg.SegmentSequence}
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=list(numbers.values()),
                                               ignore_spatial_locations=True, assert_missing_frames_are_empty=True)
    for name, number in numbers.items():
        assert expected[name].any() and np.array_equal(pixels[..., number - 1].astype(bool), expected[name]), name
    assert _codes(seg) == {s.name: (s.property_code, s.modifier_code) for s in CT_STRUCTURES}


def test_dicom_seg_of_a_png_is_a_one_line_error(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from lungx_core import cli

    Image.fromarray(phantom_radiograph(128, 120)).save(tmp_path / "film.png")
    result = CliRunner().invoke(cli.app, ["segment", str(tmp_path / "film.png"), "-o", str(tmp_path / "out"), "-q",
                                          "--no-input-check", "--format", "dicom-seg"])
    assert result.exit_code == 1
    row = (tmp_path / "out" / "results.csv").read_text().splitlines()[1]
    assert "needs a DICOM input" in row and not list((tmp_path / "out").glob("film*"))
