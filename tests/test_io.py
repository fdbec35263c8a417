"""Readers and writers: geometry round trips (SimpleITK, slicerio, pynrrd), DICOM specifics, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import write_dicom
from PIL import Image

from lungx_core.anatomy import CXR_STRUCTURES
from lungx_core.image import MedicalImage
from lungx_core.io.inputs import collect_cases
from lungx_core.io.readers import read_radiograph
from lungx_core.io.writers import atomic_path, labelmap_from_masks, write_image, write_seg_nrrd

OBLIQUE = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def test_png_8bit_and_16bit(tmp_path, phantom):
    p8 = tmp_path / "a.png"
    Image.fromarray(phantom).save(p8)
    img = read_radiograph(p8)
    assert img.array.shape == phantom.shape and not img.spacing_known
    assert np.array_equal(img.array, phantom)
    p16 = tmp_path / "b.png"
    wide = phantom.astype(np.uint16) * 200
    Image.fromarray(wide).save(p16)
    img16 = read_radiograph(p16)
    assert img16.array.max() == wide.max()  # the full 16-bit range is kept


def test_rgb_is_converted_to_gray(tmp_path, phantom):
    rgb = np.stack([phantom, phantom // 2, phantom], axis=-1)
    p = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(p)
    img = read_radiograph(p)
    assert img.array.ndim == 2 and img.metadata["converted_from_colour"]
    grey_rgb = tmp_path / "grey_rgb.jpg"
    Image.fromarray(np.stack([phantom] * 3, axis=-1)).save(grey_rgb, quality=95)
    assert read_radiograph(grey_rgb).array.ndim == 2


def test_nrrd_geometry_round_trip(tmp_path, phantom):
    src = MedicalImage(phantom.astype(np.int16), (0.14, 0.16, 1.0), (-10.0, 5.0, 30.0), OBLIQUE, spacing_known=True)
    path = tmp_path / "cxr.nrrd"
    write_image(path, src)
    back = read_radiograph(path)
    assert back.array.shape == phantom.shape
    assert np.allclose(back.spacing, src.spacing) and np.allclose(back.origin, src.origin)
    assert np.allclose(back.direction, src.direction)
    assert np.array_equal(back.array, src.array)


@pytest.mark.parametrize("suffix", [".nii.gz", ".mha"])
def test_nifti_mha_one_slice_volume(tmp_path, phantom, suffix):
    img = sitk.GetImageFromArray(phantom[None].astype(np.float32))
    img.SetSpacing((0.3, 0.25, 2.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    path = tmp_path / f"x{suffix}"
    sitk.WriteImage(img, str(path))
    back = read_radiograph(path)
    assert back.array.shape == phantom.shape
    assert np.allclose(back.spacing, (0.3, 0.25, 2.0)) and np.allclose(back.origin, (1.0, 2.0, 3.0))


def test_seg_nrrd_geometry_names_and_terminology(tmp_path, phantom):
    import nrrd
    import slicerio

    image = MedicalImage(phantom, (0.2, 0.15, 1.0), (-40.0, 10.0, 120.0), OBLIQUE, spacing_known=True)
    rng = np.random.default_rng(1)
    masks = {s.name: rng.random(phantom.shape) > 0.7 for s in CXR_STRUCTURES}
    path = tmp_path / "case.seg.nrrd"
    write_seg_nrrd(path, image, masks, CXR_STRUCTURES)

    seg = slicerio.read_segmentation(str(path))
    assert np.allclose(seg["ijkToLPS"], image.ijk_to_lps())
    assert [s["name"] for s in seg["segments"]] == [s.name for s in CXR_STRUCTURES]
    for s, struct in zip(seg["segments"], CXR_STRUCTURES, strict=True):
        assert s["terminology"]["type"][1] == struct.property_code
        assert np.allclose(s["color"], struct.color)
        got = slicerio.segment_mask(seg, s)  # (I, J, K)
        assert np.array_equal(got[:, :, 0].T, masks[struct.name])

    header = nrrd.read_header(str(path))
    assert header["space"] == "left-posterior-superior"
    assert header["sizes"][-3:].tolist() == [phantom.shape[1], phantom.shape[0], 1]
    assert header["Segment0_ID"] == "lung_left"
    # SimpleITK reads the same grid: a labelmap from it lines up with the image pixel for pixel.
    itk = sitk.ReadImage(str(path))
    assert np.allclose(itk.GetOrigin(), image.origin) and np.allclose(itk.GetSpacing(), image.spacing)
    assert np.allclose(itk.GetDirection(), image.direction)


def test_labelmap_writer_keeps_geometry(tmp_path, phantom):
    image = MedicalImage(phantom, (0.2, 0.15, 1.0), (3.0, 4.0, 5.0), spacing_known=True)
    masks = {s.name: np.zeros(phantom.shape, bool) for s in CXR_STRUCTURES}
    masks["heart"][100:200, 100:200] = True
    path = tmp_path / "lab.nii.gz"
    write_image(path, image, labelmap_from_masks(masks, CXR_STRUCTURES))
    back = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(back)[0]
    assert set(np.unique(arr)) == {0, 3} and np.array_equal(arr == 3, masks["heart"])
    assert np.allclose(back.GetSpacing(), image.spacing) and np.allclose(back.GetOrigin(), image.origin)


def test_dicom_pixel_spacing_is_row_then_column(tmp_path, phantom):
    p = write_dicom(tmp_path / "a.dcm", phantom.astype(np.uint16) * 16, pixel_spacing=(0.2, 0.15))
    img = read_radiograph(p)
    assert img.spacing[:2] == (0.15, 0.2)  # ITK order: column spacing first
    assert img.spacing_known and img.metadata["spacing_source"] == "PixelSpacing"


def test_dicom_imager_pixel_spacing_fallback(tmp_path, phantom):
    p = write_dicom(tmp_path / "a.dcm", phantom, pixel_spacing=None, imager_spacing=(0.143, 0.139))
    img = read_radiograph(p)
    assert img.spacing[:2] == (0.139, 0.143) and img.metadata["spacing_source"] == "ImagerPixelSpacing"
    none = read_radiograph(write_dicom(tmp_path / "b.dcm", phantom, pixel_spacing=None))
    assert not none.spacing_known


def test_dicom_monochrome1_is_inverted(tmp_path, phantom):
    raw = phantom.astype(np.uint16) * 16
    m2 = read_radiograph(write_dicom(tmp_path / "m2.dcm", raw))
    m1 = read_radiograph(write_dicom(tmp_path / "m1.dcm", raw.max() - raw, photometric="MONOCHROME1"))
    # Same display polarity either way: lungs darker than the mediastinum.
    assert np.corrcoef(m1.array.ravel(), m2.array.ravel())[0, 1] > 0.999


def test_dicom_rescale_and_window_applied(tmp_path, phantom):
    raw = phantom.astype(np.uint16) * 16
    img = read_radiograph(write_dicom(tmp_path / "w.dcm", raw, rescale=(2.0, -100.0), window=(2000.0, 1000.0)))
    hu_like = raw.astype(float) * 2 - 100  # modality LUT
    order = np.argsort(hu_like.ravel(), kind="stable")
    out = img.array.ravel()[order]
    assert np.all(np.diff(out) >= 0)  # the VOI LUT is monotonic in the rescaled value
    above, below = hu_like > 2500, hu_like < 1500  # outside the window: saturated
    assert above.any() and below.any()
    assert np.ptp(img.array[above]) == 0 and np.ptp(img.array[below]) == 0
    assert img.array[above].min() > img.array[below].max()


def test_dicom_patient_orientation_is_kept(tmp_path, phantom):
    img = read_radiograph(write_dicom(tmp_path / "o.dcm", phantom, patient_orientation=("R", "F")))
    assert img.metadata["patient_orientation"] == ["R", "F"]


def test_collect_cases_expands_folders_and_dedupes_ids(tmp_path, phantom):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.fromarray(phantom).save(tmp_path / "a" / "x.png")
    Image.fromarray(phantom).save(tmp_path / "b" / "x.png")
    write_dicom(tmp_path / "b" / "IM0001", phantom)  # extension-less DICOM, as in PACS exports
    cases = collect_cases([tmp_path / "a", tmp_path / "b"])
    assert sorted(c.case_id for c in cases) == ["IM0001", "a", "b"]  # named by the folders that tell them apart


def test_generic_file_names_take_the_nearest_distinguishing_folder(tmp_path, phantom):
    """Issue 34: case1/ct.nii.gz and case2/ct.nii.gz are case1 and case2, not ct and ct_2; a level that does not
    tell them apart (both in a 'series' folder) is skipped; names still repeated get numeric suffixes."""
    for case in ("case1", "case2"):
        (tmp_path / case / "series").mkdir(parents=True)
        Image.fromarray(phantom).save(tmp_path / case / "series" / "ct.png")
    cases = collect_cases([tmp_path / "case1" / "series" / "ct.png", tmp_path / "case2" / "series" / "ct.png"])
    assert [c.case_id for c in cases] == ["case1", "case2"]
    Image.fromarray(phantom).save(tmp_path / "film.png")
    Image.fromarray(phantom).save(tmp_path / "film.jpg")
    Image.fromarray(phantom).save(tmp_path / "film_2.png")
    same_folder = collect_cases([tmp_path / "film.png", tmp_path / "film.jpg", tmp_path / "film_2.png"])
    assert [c.case_id for c in same_folder] == ["film", "film_3", "film_2"]
    # a folder name that another input already has as its ID: the numeric suffix instead
    Image.fromarray(phantom).save(tmp_path / "case1.png")
    clash = collect_cases([tmp_path / "case1" / "series" / "ct.png", tmp_path / "case2" / "series" / "ct.png",
                           tmp_path / "case1.png"])
    assert [c.case_id for c in clash] == ["ct", "ct_2", "case1"]


def test_collect_cases_makes_one_ct_case_per_folder_and_flags_other_series_once(tmp_path, phantom):
    from pydicom.uid import generate_uid

    uid, mr_uid = generate_uid(), generate_uid()
    (tmp_path / "ct").mkdir()
    (tmp_path / "mr").mkdir()
    for i in range(3):
        write_dicom(tmp_path / "ct" / f"ct{i}.dcm", phantom, modality="CT", series_uid=uid)
        write_dicom(tmp_path / "mr" / f"mr{i}.dcm", phantom, modality="MR", series_uid=mr_uid)
    cases = sorted(collect_cases([tmp_path]), key=lambda c: c.case_id)
    assert [(c.case_id, c.kind) for c in cases] == [("ct", "ct"), ("mr", None)]
    assert cases[0].problem is None and cases[0].path == tmp_path / "ct"
    assert "MR series of 3" in cases[1].problem


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.seg.nrrd"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        assert tmp.name.endswith(".seg.nrrd")
        tmp.write_bytes(b"done")
    assert target.read_bytes() == b"done" and len(list(tmp_path.iterdir())) == 1


def test_all_or_nothing_removes_a_case_s_finished_outputs_when_a_later_write_fails(tmp_path):
    from lungx_core.io.writers import all_or_nothing, write_text_atomic

    with pytest.raises(OSError), all_or_nothing() as written:
        written.append(tmp_path / "a.txt")
        write_text_atomic(written[-1], "first output")
        assert (tmp_path / "a.txt").exists()
        written.append(tmp_path / "b.txt")
        raise OSError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_side_by_side_pictures_show_each_film_at_the_qc_picture_size():
    """The before | ... | after pictures of the radiograph-to-radiograph tasks show each film at most
    PICTURE_MAX_SIDE px like every other QC picture (the full-resolution films are written beside them); a small
    film keeps its size, and a mask is shrunk with its film (tint only where it covers half a pixel or more)."""
    from lungx_core.io.writers import PICTURE_MAX_SIDE, picture_shape
    from lungx_core.tasks.opacity_removal import before_mask_after
    from lungx_core.tasks.rib_suppression import before_bone_after
    from lungx_core.tasks.synthesis import side_by_side

    rng = np.random.default_rng(0)
    big = rng.integers(0, 4096, (1800, 2048)).astype(np.uint16)
    mask = np.zeros(big.shape, bool)
    mask[600:1200, 400:900] = True
    assert picture_shape(big.shape) == (900, PICTURE_MAX_SIDE)
    assert before_bone_after(big, big * 0.1, big).shape == (900, 3 * PICTURE_MAX_SIDE, 3)
    picture = before_mask_after(big, big, mask)
    assert picture.shape == (900, 3 * PICTURE_MAX_SIDE, 3)
    tinted = picture[:, PICTURE_MAX_SIDE : 2 * PICTURE_MAX_SIDE, 0] != picture[:, :PICTURE_MAX_SIDE, 0]
    rows, cols = np.nonzero(tinted)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (300, 600, 200, 450)
    assert side_by_side(big, big, mask).shape == (900, 2 * PICTURE_MAX_SIDE, 3)
    small = big[:500, :400]
    assert before_bone_after(small, small * 0.1, small).shape == (500, 1200, 3)
