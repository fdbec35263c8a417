"""Geometry contracts between lungx_core, files and Slicer (../shared/docs/SLICER.md): SimpleITK <-> IJKToRAS,
LPS <-> RAS, one-slice radiograph volumes, pydicom spacing order, and .seg.nrrd round trips through slicerio,
pynrrd and SimpleITK with segment IDs, names, colours, terminology and extents checked."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import phantom_radiograph, write_dicom
from LungXSlicerLib.geometry import as_slicer_array, ijk_to_ras, lps_to_ras, same_grid, sitk_geometry
from LungXSlicerLib.results import read_segmentation, read_volume

from lungx_core.anatomy import CXR_STRUCTURES
from lungx_core.image import MedicalImage
from lungx_core.io.writers import write_image, write_seg_nrrd


def _rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))  # proper rotation


@pytest.mark.parametrize("seed", range(4))
def test_ijk_to_ras_agrees_with_simpleitk_physical_points(seed: int):
    rng = np.random.default_rng(seed)
    img = sitk.Image(7, 9, 5, sitk.sitkInt16)
    img.SetSpacing(rng.uniform(0.3, 3.0, 3).tolist())
    img.SetOrigin(rng.uniform(-200, 200, 3).tolist())
    img.SetDirection(_rotation(seed).ravel().tolist())
    m = ijk_to_ras(img.GetSpacing(), img.GetOrigin(), img.GetDirection())
    for ijk in [(0, 0, 0), (6, 8, 4), (3, 1, 2)]:
        lps = np.array(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk]))
        ras = (m @ [*ijk, 1.0])[:3]
        np.testing.assert_allclose(ras, [-lps[0], -lps[1], lps[2]], atol=1e-9)
    spacing, origin, direction = sitk_geometry(m)
    np.testing.assert_allclose(spacing, img.GetSpacing())
    np.testing.assert_allclose(origin, img.GetOrigin())
    np.testing.assert_allclose(direction, img.GetDirection(), atol=1e-12)
    np.testing.assert_allclose(lps_to_ras(lps_to_ras(m)), m)  # the flip is its own inverse


def test_same_grid_and_slicer_arrays():
    m = ijk_to_ras((0.5, 0.5, 2.0), (1, 2, 3), np.eye(3).ravel())
    assert same_grid(m, m.copy(), (4, 5, 6), (4, 5, 6))
    assert not same_grid(m, m, (4, 5, 6), (4, 5, 7))
    shifted = m.copy()
    shifted[0, 3] += 0.01
    assert not same_grid(m, shifted, (4, 5, 6), (4, 5, 6))
    assert as_slicer_array(np.zeros((3, 4), np.uint8)).shape == (1, 3, 4)  # a radiograph is one slice
    assert as_slicer_array(np.ones((2, 3, 4), bool), is_mask=True).dtype == np.uint8
    assert as_slicer_array(np.ones((2, 3, 4), np.int64)).dtype == np.int16
    assert as_slicer_array(np.full((2, 3, 4), 70000, np.int64)).dtype == np.float32
    assert as_slicer_array(np.ones((2, 3, 4), np.float64)).dtype == np.float32


def test_radiograph_file_is_a_one_slice_volume(tmp_path: Path):
    image = MedicalImage(phantom_radiograph(64, 48), spacing=(0.15, 0.2, 1.0), origin=(-3.6, 5.0, 6.4),
                         direction=(1, 0, 0, 0, 0, 1, 0, -1, 0), spacing_known=True)
    path = tmp_path / "cxr.nrrd"
    write_image(path, image)
    read = sitk.ReadImage(str(path))
    assert read.GetDimension() == 3 and read.GetSize() == (48, 64, 1)
    array, m = read_volume(path)
    assert array.shape == (1, 64, 48)
    np.testing.assert_array_equal(array[0], image.array)
    np.testing.assert_allclose(m, lps_to_ras(image.ijk_to_lps()))
    _, header = nrrd.read(str(path))  # pynrrd: (I, J, K) sizes, LPS space
    assert list(header["sizes"]) == [48, 64, 1]
    assert header["space"] == "left-posterior-superior"


def test_dicom_pixel_spacing_is_row_then_column(tmp_path: Path):
    from lungx_core.io.readers import read_radiograph

    path = write_dicom(tmp_path / "cxr.dcm", phantom_radiograph(96, 80), pixel_spacing=(0.2, 0.15))
    image = read_radiograph(path)
    m = ijk_to_ras(image.spacing, image.origin, image.direction)
    # i runs along a row (columns apart: PixelSpacing[1]), j down a column (rows apart: PixelSpacing[0])
    np.testing.assert_allclose(np.linalg.norm(m[:3, :3], axis=0)[:2], [0.15, 0.2])
    image = read_radiograph(write_dicom(tmp_path / "dx.dcm", phantom_radiograph(96, 80), pixel_spacing=None,
                                        imager_spacing=(0.3, 0.25)))
    assert image.spacing[:2] == (0.25, 0.3) and image.metadata["spacing_source"] == "ImagerPixelSpacing"


def _oblique_image() -> MedicalImage:
    return MedicalImage(np.zeros((6, 7, 8), np.int16), spacing=(0.7, 0.8, 2.5), origin=(10.0, -20.0, 30.0),
                        direction=tuple(_rotation(7).ravel()), modality="CT", spacing_known=True)


def _overlapping_masks(shape) -> dict[str, np.ndarray]:
    masks = {s.name: np.zeros(shape, bool) for s in CXR_STRUCTURES}
    masks["lung_left"][1:3, 2:5, 1:4] = True
    masks["lung_right"][1:4, 0:2, 5:8] = True
    masks["heart"][2:4, 3:6, 2:7] = True  # overlaps lung_left: a second layer
    return masks


def test_seg_nrrd_round_trip_slicerio(tmp_path: Path):
    image, masks = _oblique_image(), _overlapping_masks((6, 7, 8))
    path = tmp_path / "case.seg.nrrd"
    write_seg_nrrd(path, image, masks, CXR_STRUCTURES)
    seg = read_segmentation(path)
    np.testing.assert_allclose(seg.ijk_to_ras, lps_to_ras(image.ijk_to_lps()), atol=1e-9)
    assert [s.segment_id for s in seg.segments] == [s.name for s in CXR_STRUCTURES]
    for spec, structure in zip(seg.segments, CXR_STRUCTURES, strict=True):
        assert spec.name == structure.name
        np.testing.assert_allclose(spec.color, structure.color, atol=1e-6)
        assert spec.terminology == structure.terminology()  # exactly what Slicer's tag holds
        np.testing.assert_array_equal(spec.mask_kji, masks[structure.name])


def test_seg_nrrd_header_pynrrd(tmp_path: Path):
    image, masks = _oblique_image(), _overlapping_masks((6, 7, 8))
    path = tmp_path / "case.seg.nrrd"
    write_seg_nrrd(path, image, masks, CXR_STRUCTURES)
    data, h = nrrd.read(str(path))
    assert h["space"] == "left-posterior-superior" and h["kinds"] == ["list", "domain", "domain", "domain"]
    assert data.shape == (2, 8, 7, 6)  # layers, I, J, K
    np.testing.assert_allclose(h["space directions"][1:], image.ijk_to_lps()[:3, :3].T, atol=1e-9)
    np.testing.assert_allclose(h["space origin"], image.origin)
    n = 0
    while f"Segment{n}_ID" in h:  # Slicer counts segments by consecutive SegmentN_ID
        n += 1
    assert n == len(CXR_STRUCTURES)
    for i, s in enumerate(CXR_STRUCTURES):
        assert h[f"Segment{i}_ID"] == s.name and h[f"Segment{i}_Name"] == s.name
        np.testing.assert_allclose([float(c) for c in h[f"Segment{i}_Color"].split()], s.color, atol=1e-6)
        assert h[f"Segment{i}_Tags"].startswith(f"TerminologyEntry:{s.terminology()}")
        k, j, i_ = np.nonzero(masks[s.name])
        layer, label = int(h[f"Segment{i}_Layer"]), int(h[f"Segment{i}_LabelValue"])
        np.testing.assert_array_equal(data[layer] == label, masks[s.name].transpose(2, 1, 0))
        if len(k):
            extent = [i_.min(), i_.max(), j.min(), j.max(), k.min(), k.max()]
            assert [int(v) for v in h[f"Segment{i}_Extent"].split()] == extent


def test_seg_nrrd_geometry_simpleitk(tmp_path: Path):
    image, masks = _oblique_image(), _overlapping_masks((6, 7, 8))
    path = tmp_path / "case.seg.nrrd"
    write_seg_nrrd(path, image, masks, CXR_STRUCTURES)
    read = sitk.ReadImage(str(path))
    assert read.GetSize() == (8, 7, 6) and read.GetNumberOfComponentsPerPixel() == 2
    np.testing.assert_allclose(read.GetSpacing(), image.spacing)
    np.testing.assert_allclose(read.GetOrigin(), image.origin)
    np.testing.assert_allclose(read.GetDirection(), image.direction, atol=1e-9)


def test_radiograph_seg_nrrd_is_cols_rows_one(tmp_path: Path):
    image = MedicalImage(phantom_radiograph(40, 30), spacing=(0.2, 0.2, 1.0), spacing_known=True)
    masks = {s.name: np.zeros((40, 30), bool) for s in CXR_STRUCTURES}
    masks["lung_left"][10:20, 5:12] = True
    path = tmp_path / "cxr.seg.nrrd"
    write_seg_nrrd(path, image, masks, CXR_STRUCTURES)
    data, h = nrrd.read(str(path))
    assert list(h["sizes"][-3:]) == [30, 40, 1]
    seg = read_segmentation(path)
    assert seg.segments[0].mask_kji.shape == (1, 40, 30)
    np.testing.assert_array_equal(seg.segments[0].mask_kji[0], masks["lung_left"])
