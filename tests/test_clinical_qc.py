"""What a radiologist checks first (issue 15): air below the lungs is not lung, clavicle and CTR plausibility flags,
AP films flagged, and the heart label that training derives from a cardiomediastinum mask."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from lungx_core.anatomy import CXR_CLASSES
from lungx_core.postprocess import CTR_PLAUSIBLE, measure
from lungx_core.tasks.ct_lungs import LEFT, RIGHT, drop_below_lungs


def _lungs_and_gas() -> np.ndarray:
    """Canonical labels (axis 0 inferior -> superior): two lungs over slices 10-29, a gas pocket at slices 2-5."""
    labels = np.zeros((32, 40, 40), np.uint8)
    labels[10:30, 8:30, 4:18] = RIGHT
    labels[12:30, 8:30, 22:36] = LEFT
    labels[2:6, 20:30, 8:16] = RIGHT  # bowel gas below the right lung base
    return labels


def test_air_wholly_below_the_lungs_is_dropped():
    labels = _lungs_and_gas()
    out = drop_below_lungs(labels)
    assert not out[:6].any()
    np.testing.assert_array_equal(out[6:], labels[6:])


def test_lung_pieces_sharing_the_lungs_slices_stay():
    labels = _lungs_and_gas()
    labels[2:6] = 0
    labels[8:14, 32:38, 4:10] = RIGHT  # a separate piece of the right base, overlapping the lungs' slices
    np.testing.assert_array_equal(drop_below_lungs(labels), labels)


def test_lungs_cut_apart_across_slices_are_not_taken_for_gas():
    """Issue 34: on an off-centre field of view the lungs came back split across a missed slice, and the lower
    half (16 of 27 slices) was dropped as air below the lungs. A component a quarter of the largest's size or
    more is lung; a chain of pieces sharing slices counts as the lungs' range."""
    labels = _lungs_and_gas()
    labels[2:6] = 0
    labels[18:20] = 0  # a missed pair of slices splits both lungs
    np.testing.assert_array_equal(drop_below_lungs(labels), labels)
    labels = _lungs_and_gas()
    labels[4:9, 30:36, 30:36] = LEFT  # chained: shares slices with a piece that shares slices with the lungs
    labels[7:12, 0:6, 0:6] = RIGHT
    labels[2:6, 20:30, 8:16] = 0
    np.testing.assert_array_equal(drop_below_lungs(labels), labels)


def test_one_component_is_never_dropped():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[2:5, 2:5, 2:5] = LEFT
    np.testing.assert_array_equal(drop_below_lungs(labels), labels)


@pytest.mark.slow
def test_no_lung_below_the_diaphragm_on_an_abdominal_field_of_view():
    """The sample CT cut to its lower part (lung bases and upper abdomen) with synthetic bowel gas ~50 mm below the
    lung bases: no voxel below the bases is labelled lung."""
    from lungx_core.image import MedicalImage
    from lungx_core.io.sample import sample_ct
    from lungx_core.tasks.ct_lungs import CTLungSegmenter

    ct = sample_ct()  # 10-mm slices, superior with increasing k; the lung bases are at k = 7
    a = ct.array[:13].astype(np.int16).copy()
    cj, ci = ndi.center_of_mass(a[2] > -500)
    kk, jj, ii = np.mgrid[: a.shape[0], : a.shape[1], : a.shape[2]]
    gas = ((kk - 2) / 2.2) ** 2 + ((jj - cj) / 14) ** 2 + ((ii - (ci - 20)) / 16) ** 2 < 1
    a[gas] = -950
    image = MedicalImage(a, spacing=ct.spacing, origin=ct.origin, direction=ct.direction, modality="CT",
                         spacing_known=True)
    result = CTLungSegmenter("net", device="cpu").segment(image)
    assert not result.labels[:5].any() and not result.labels[gas].any()
    assert result.labels[8:].any() and "truncated_scan_top" in result.flags


def _masks(rows=200, cols=200, clavicle=True, heart_width=60):
    m = {name: np.zeros((rows, cols), bool) for name in CXR_CLASSES}
    m["lung_right"][40:170, 20:95] = True
    m["lung_left"][40:170, 105:180] = True
    m["heart"][110:165, 100 - heart_width // 2 : 100 + heart_width // 2] = True
    if clavicle:
        m["clavicle_right"][30:38, 30:95] = True
        m["clavicle_left"][30:38, 105:170] = True
    return m


def _flags(masks) -> list[str]:
    probs = np.stack([m.astype(np.float32) for m in masks.values()])
    return measure(masks, probs, None).flags


def test_clavicles_are_checked():
    assert not any("clavicle" in f for f in _flags(_masks()))
    missing = _flags(_masks(clavicle=False))
    assert "clavicle_left_not_found" in missing and "clavicle_right_not_found" in missing
    speck = _masks()
    speck["clavicle_right"][:] = False
    speck["clavicle_right"][32:34, 50:53] = True
    assert "implausible_clavicle_right_area" in _flags(speck)
    blob = _masks()  # as large as a clavicle but round: a blob at the apex, not a clavicle
    blob["clavicle_left"][:] = False
    blob["clavicle_left"][35:55, 120:140] = True
    assert "implausible_clavicle_left_shape" in _flags(blob)
    stub = _masks()  # clavicle-shaped but a quarter of the lung's width: a fragment
    stub["clavicle_left"][:] = False
    stub["clavicle_left"][30:36, 140:160] = True
    flags = _flags(stub)
    assert "implausible_clavicle_left_shape" in flags and not any("clavicle_right" in f for f in flags)


def test_ctr_outside_the_plausible_range_is_flagged():
    assert CTR_PLAUSIBLE == (0.35, 0.75)
    assert "implausible_ctr" not in _flags(_masks(heart_width=80))  # CTR 0.5
    assert "implausible_ctr" in _flags(_masks(heart_width=50))  # CTR 0.31: the narrow mediastinal strip


def test_ap_films_are_flagged(tmp_path):
    from conftest import phantom_radiograph, write_dicom

    from lungx_core.io.readers import read_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    segmenter = CXRSegmenter(device="cpu")
    film = phantom_radiograph(256, 240)
    ap = segmenter.segment(read_radiograph(write_dicom(tmp_path / "ap.dcm", film, view="AP"))).measurements.flags
    pa = segmenter.segment(read_radiograph(write_dicom(tmp_path / "pa.dcm", film, view="PA"))).measurements.flags
    assert "ap_view_ctr_magnified" in ap and "ap_view_ctr_magnified" not in pa


def test_heart_label_from_cardiomediastinum_starts_at_the_jsrt_heart_level():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from training.cxr_data import HEART_TOP_FRACTION, heart_from_cardiomediastinum

    lungs = np.zeros((100, 80), bool)
    lungs[10:90, 5:75] = True
    cm = np.zeros_like(lungs)
    cm[25:95, 30:50] = True
    heart = heart_from_cardiomediastinum(cm, lungs)
    top = 10 + round(HEART_TOP_FRACTION * 79)
    assert np.nonzero(heart.any(axis=1))[0][0] == top and (heart == (cm & (np.arange(100)[:, None] >= top))).all()
    assert not heart_from_cardiomediastinum(cm, np.zeros_like(lungs)).any()
