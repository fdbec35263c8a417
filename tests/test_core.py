"""Pure functions: preprocessing, losses, metrics, post-processing, orientation, DRR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lungx_core import postprocess, preprocess
from lungx_core.anatomy import CXR_CLASSES
from lungx_core.eval import metrics
from lungx_core.image import MedicalImage
from lungx_core.orientation import display_flips
from training import losses

# --- preprocessing -------------------------------------------------------------------------------------


def test_normalise_intensity_is_robust_to_outliers():
    img = np.full((100, 100), 1000.0)
    img[:50] = 3000.0
    img[0, 0] = 65535.0  # a burned-in marker must not squash the range
    out = preprocess.normalise_intensity(img)
    assert out.dtype == np.float32 and out.min() == 0.0 and out.max() == 1.0
    assert np.isclose(out[60, 60], 0.0) and np.isclose(out[10, 10], 1.0)


def test_normalise_intensity_rejects_nan():
    img = np.ones((10, 10))
    img[3, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        preprocess.normalise_intensity(img)


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.float64])
def test_ct_window_maps_the_hu_window_onto_0_1_and_leaves_its_input_alone(dtype):
    hu = np.array([[-3000, -1024, -212, 600, 3000]], dtype=dtype)
    before = hu.copy()
    out = preprocess.ct_window(hu)
    lo, hi = preprocess.CT_HU_WINDOW
    assert out.dtype == np.float32 and np.array_equal(out, np.clip((hu.astype(np.float32) - lo) / (hi - lo), 0, 1))
    assert out[0, 0] == 0 and out[0, 1] == 0 and out[0, 3] == 1 and out[0, -1] == 1 and 0 < out[0, 2] < 1
    assert np.array_equal(hu, before)


def test_clahe_and_tophat_keep_range_and_raise_local_contrast(phantom):
    img = preprocess.normalise_intensity(phantom) * 0.2 + 0.4  # low contrast, like JSRT PNGs
    eq = preprocess.clahe(img)
    assert eq.shape == img.shape and eq.min() >= 0 and eq.max() <= 1
    assert eq.std() > img.std()
    th = preprocess.tophat_enhance(img, radius=5)
    assert th.shape == img.shape and th.min() >= 0 and th.max() <= 1


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(64, 700), cols=st.integers(64, 700), size=st.sampled_from([64, 128, 256]))
def test_letterbox_round_trip(rows, cols, size):
    rng = np.random.default_rng(rows * 1000 + cols)
    mask = np.zeros((rows, cols), np.float32)
    mask[rows // 4 : 3 * rows // 4, cols // 4 : 3 * cols // 4] = 1
    img = mask + rng.random((rows, cols), dtype=np.float32) * 0.01
    boxed, box = preprocess.letterbox(img, size)
    assert boxed.shape == (size, size) and max(box.resized_shape) == size
    back = preprocess.unletterbox(boxed[None], box)[0]
    assert back.shape == (rows, cols)
    assert metrics.dice(back > 0.5, mask > 0.5) > 0.9


@pytest.mark.parametrize("shape, out", [((512, 512), (256, 256)), ((420, 512), (210, 256)), ((2048, 1785), (256, 223)),
                                        ((100, 70), (256, 179)), ((257, 3), (256, 3))])
def test_resize_linear_is_scikit_images_resize(shape, out):
    from skimage.transform import resize

    img = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    anti_aliasing = out[0] < shape[0]
    fast = preprocess.resize_linear(img, out, anti_aliasing=anti_aliasing)
    slow = resize(img, out, order=1, anti_aliasing=anti_aliasing, preserve_range=True)
    assert fast.dtype == np.float32 and fast.shape == out
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-6)


def test_preprocess_config_round_trip():
    cfg = preprocess.PreprocessConfig(size=128, tophat_radius=3)
    assert preprocess.PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown key 'unknown'"):  # a misspelt key must not fall back silently
        preprocess.PreprocessConfig.from_dict({**cfg.to_dict(), "unknown": 1})


# --- losses --------------------------------------------------------------------------------------------


def _perfect_logits(target: torch.Tensor) -> torch.Tensor:
    return (target * 2 - 1) * 20.0


@pytest.mark.parametrize("name", ["bce", "dice", "bce_dice", "penalty_combo"])
def test_losses_small_for_perfect_and_large_for_inverted(name):
    torch.manual_seed(0)
    target = (torch.rand(2, 5, 32, 32) > 0.5).float()
    fn = losses.SegmentationLoss(name)
    good = fn(_perfect_logits(target), target)
    bad = fn(_perfect_logits(1 - target), target)
    assert good < 0.01 and bad > 0.5


def test_unlabelled_classes_do_not_contribute():
    target = torch.zeros(1, 5, 16, 16)
    target[:, 0, 4:12, 4:12] = 1
    logits = _perfect_logits(target)
    logits[:, 2] = 20.0  # confidently wrong on class 2 ...
    label_mask = torch.tensor([[1.0, 1.0, 0.0, 1.0, 1.0]])  # ... which this dataset does not label
    for name in ("bce", "dice", "penalty_combo"):
        assert losses.SegmentationLoss(name)(logits, target, label_mask) < 0.01
        assert losses.SegmentationLoss(name)(logits, target) > 0.1


def test_pixel_weight_blanks_ignore_regions():
    target = torch.zeros(1, 5, 16, 16)
    logits = _perfect_logits(target)
    logits[:, :, :8] = 20.0  # wrong only in the top half ...
    weight = torch.ones(1, 1, 16, 16)
    weight[:, :, :8] = 0  # ... which is an ignore region
    assert losses.masked_bce(logits, target, pixel_weight=weight) < 1e-6


def test_penalty_gdl_formula():
    gdl = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(losses.penalty_generalized_dice(gdl, k=2.5), gdl / (1 + 2.5 * (1 - gdl)))


def test_generalized_dice_empty_labelled_class_is_finite():
    target = torch.zeros(1, 5, 16, 16)
    target[:, 0, :4, :4] = 1
    value = losses.masked_generalized_dice(torch.zeros(1, 5, 16, 16), target)
    assert torch.isfinite(value)


# --- metrics -------------------------------------------------------------------------------------------


def test_dice_iou_known_values():
    a = np.zeros((10, 10), bool)
    b = np.zeros((10, 10), bool)
    a[:, :5] = True
    b[:, 2:7] = True  # overlap 30 of 50 + 50
    assert metrics.dice(a, b) == pytest.approx(0.6)
    assert metrics.iou(a, b) == pytest.approx(30 / 70)
    assert metrics.dice(np.zeros((3, 3)), np.zeros((3, 3))) == 1.0


def test_hd95_shifted_square_in_px_and_mm():
    a = np.zeros((64, 64), bool)
    a[20:40, 20:40] = True
    b = np.roll(a, 3, axis=1)
    assert metrics.hd95(a, b) == pytest.approx(3.0)
    assert metrics.hd95(a, b, spacing=(0.5, 2.0)) == pytest.approx(6.0)
    assert metrics.hd95(a, a) == 0.0
    assert metrics.hd95(a, np.zeros_like(a)) == pytest.approx(np.hypot(64, 64))


def test_surface_dice_counts_the_surface_within_tolerance_in_px_and_mm():
    """A square moved 3 px: its left and right edges are 3 px off, the top and bottom mostly within 1 px."""
    a = np.zeros((64, 64), bool)
    a[20:40, 20:40] = True
    b = np.roll(a, 3, axis=1)
    assert metrics.surface_dice(a, a, 0.0) == 1.0
    assert metrics.surface_dice(a, b, 3.0) == 1.0
    assert 0.4 < metrics.surface_dice(a, b, 1.0) < 0.9
    assert metrics.surface_dice(a, b, 3.0, spacing=(1.0, 2.0)) < 1.0 == metrics.surface_dice(a, b, 6.0, (1.0, 2.0))
    assert metrics.surface_dice(a, np.zeros_like(a), 5.0) == 0.0
    assert metrics.surface_dice(np.zeros_like(a), np.zeros_like(a), 5.0) == 1.0


def test_psnr_ssim():
    rng = np.random.default_rng(0)
    ref = rng.random((64, 64))
    assert metrics.psnr(ref, ref) == float("inf")
    noisy = ref + 0.01
    assert metrics.psnr(ref, noisy, data_range=1.0) == pytest.approx(40.0, abs=1e-6)
    assert metrics.ssim(ref, ref) == pytest.approx(1.0)
    assert metrics.ssim(ref, rng.random((64, 64))) < 0.2


# --- post-processing and measurements ------------------------------------------------------------------


def _anatomy_probs(shape=(200, 200)) -> np.ndarray:
    p = np.zeros((len(CXR_CLASSES), *shape), np.float32)
    p[0, 40:160, 110:170] = 0.95  # lung_left on the image right
    p[1, 40:160, 30:90] = 0.95
    p[2, 110:170, 80:140] = 0.9  # heart
    p[3, 20:30, 110:170] = 0.9
    p[4, 20:30, 30:90] = 0.9
    return p


def test_clean_masks_removes_specks_and_fills_holes():
    p = _anatomy_probs()
    p[0, 5:8, 5:8] = 0.99  # speck
    p[0, 90:95, 130:135] = 0.1  # hole
    p[2, 180:185, 10:15] = 0.99  # second heart fragment
    masks = postprocess.clean_masks(p)
    assert not masks["lung_left"][6, 6] and masks["lung_left"][92, 132]
    assert not masks["heart"][182, 12]


def test_smooth_heart_rounds_off_a_frayed_heart_and_leaves_the_other_structures():
    logits = np.full((len(CXR_CLASSES), 256, 256), -8.0, np.float32)
    logits[2, 120:200, 90:170] = 8.0  # a square heart ...
    for c in range(92, 170, 6):  # ... frayed by thin notches, as on films where its border is hidden
        logits[2, 150:200, c : c + 2] = -8.0
    logits[0, 40:200, 170:230] = 8.0
    out = postprocess.smooth_heart(logits)
    assert np.array_equal(out[[0, 1, 3, 4]], logits[[0, 1, 3, 4]])
    frayed, smooth = logits[2] > 0, out[2] > 0
    assert postprocess.solidity(frayed) < 0.9 < postprocess.solidity(smooth)
    assert abs(int(smooth.sum()) - 80 * 80) < 0.1 * 80 * 80  # the notches closed, the heart's size kept
    assert not smooth[:110].any() and not smooth[:, :80].any()  # no spread beyond a few pixels


def test_left_right_lungs_never_overlap():
    p = _anatomy_probs()
    p[0, 40:160, 80:100] = 0.8
    p[1, 40:160, 80:100] = 0.6
    masks = postprocess.clean_masks(p)
    assert not (masks["lung_left"] & masks["lung_right"]).any()
    assert masks["lung_left"][100, 85]


def test_measurements_areas_ctr_and_flags():
    p = _anatomy_probs()
    masks = postprocess.clean_masks(p)
    m = postprocess.measure(masks, p, pixel_area_mm2=0.25)
    assert m.area_px["lung_left"] == 120 * 60
    assert m.area_cm2["lung_left"] == pytest.approx(120 * 60 * 0.25 / 100)
    assert m.ctr == pytest.approx(60 / 140)
    assert "left_right_inconsistent" not in m.flags
    swapped = {**masks, "lung_left": masks["lung_right"], "lung_right": masks["lung_left"]}
    assert "left_right_inconsistent" in postprocess.measure(swapped, p, None).flags
    empty = {k: np.zeros_like(v) for k, v in masks.items()}
    flags = postprocess.measure(empty, p, None).flags
    assert {"lung_left_not_found", "heart_not_found", "implausible_lung_area"} <= set(flags)


def test_heart_solidity_flags_a_ragged_heart_and_clavicles_are_counted():
    p = _anatomy_probs()
    masks = postprocess.clean_masks(p)
    m = postprocess.measure(masks, p, None)
    assert m.heart_solidity == pytest.approx(1.0) and "heart_ragged" not in m.flags  # a rectangle is convex
    ragged = masks["heart"].copy()
    rows, cols = np.nonzero(ragged)
    for c in range(cols.min(), cols.max() + 1, 4):  # deep notches every 4 columns: a comb, not a heart
        ragged[rows.min() + (rows.max() - rows.min()) // 3 :, c : c + 2] = False
    m = postprocess.measure({**masks, "heart": ragged}, p, None)
    assert m.heart_solidity < postprocess.HEART_MIN_SOLIDITY and "heart_ragged" in m.flags
    assert postprocess.solidity(np.zeros((5, 5), bool)) is None
    from skimage.morphology import convex_hull_image

    rng = np.random.default_rng(0)
    shapes = [ragged, masks["lung_left"], rng.random((40, 50)) < 0.1, np.eye(9, dtype=bool), np.zeros((7, 7), bool)]
    shapes[-1][3, 1:6] = True  # one row
    for shape in shapes:  # the row-by-row count is skimage's, pixel for pixel
        assert postprocess.convex_hull_pixels(shape) == convex_hull_image(shape).sum()
    found = m.clavicles_found
    no_right = postprocess.measure({**masks, "clavicle_right": np.zeros_like(masks["heart"])}, p, None)
    assert no_right.clavicles_found == found - 1 and "clavicle_right_not_found" in no_right.flags


@pytest.mark.parametrize(
    ("orientation", "expected"),
    [
        ([], (False, False, True)),
        (["L", "F"], (False, False, True)),
        (["R", "F"], (False, True, True)),
        (["L", "H"], (True, False, True)),
        (["X", "?"], (False, False, False)),
    ],
)
def test_display_flips(orientation, expected):
    assert display_flips({"patient_orientation": orientation}) == expected


# --- DRR -----------------------------------------------------------------------------------------------


def _ct_phantom(direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0)) -> MedicalImage:
    hu = np.full((20, 40, 30), -1000, np.int16)  # (S, P, L) slices
    hu[:, 5:35, 3:27] = 0  # body
    hu[:, 10:30, 6:12] = -800  # patient-right lung (low L index)
    hu[:, 10:30, 18:24] = -800  # patient-left lung
    hu[2:4, 12:28, 14:16] = 1500  # bone in inferior slices (k points superior): bottom rows of the DRR
    return MedicalImage(hu, (2.0, 2.0, 5.0), (0, 0, 0), direction, modality="CT", spacing_known=True)


def test_drr_geometry_and_monotonic_in_hu():
    from lungx_core.ct.drr import hu_to_mu, render_drr

    assert np.all(np.diff(hu_to_mu(np.arange(-1100, 2000, 10))) >= 0)
    ct = _ct_phantom()
    drr = render_drr(ct, pixel_spacing=2.0)
    assert drr.array.shape == (50, 30)  # rows: 20 slices x 5 mm / 2 mm; cols: 30 x 2 mm / 2 mm
    d = np.asarray(drr.direction).reshape(3, 3)
    assert np.allclose(d[:, 0], [1, 0, 0]) and np.allclose(d[:, 1], [0, 0, -1])
    # the bone at low slice indices (inferior) appears at the bottom rows
    assert drr.array[-8:, 14:16].mean() > drr.array[:8, 14:16].mean()
    # lungs darker than the mediastinum
    assert drr.array[25, 8] < drr.array[25, 15]


def test_drr_independent_of_direction_matrix():
    from lungx_core.ct.drr import render_drr

    ct = _ct_phantom()
    flipped = MedicalImage(
        ct.array[:, ::-1, ::-1].copy(), ct.spacing, (58.0, 78.0, 0.0), (-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0), "CT", True
    )
    a, b = render_drr(ct, 2.0), render_drr(flipped, 2.0)
    assert np.allclose(a.array, b.array, atol=1e-4)


def test_fill_holes_matches_scipy():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(3)
    for _ in range(20):
        m = ndi.binary_opening(rng.random((60, 70)) > 0.45)
        assert np.array_equal(postprocess.fill_holes(m), ndi.binary_fill_holes(m))
    assert postprocess.fill_holes(np.ones((5, 5), bool)).all()
    assert not postprocess.fill_holes(np.zeros((5, 5), bool)).any()


@pytest.mark.parametrize("arch", ["unet", "attention_unet", "resnet_unet", "unetplusplus", "effnet_b4_unet"])
def test_every_architecture_builds_and_keeps_the_grid(arch):
    from lungx_core.models.networks import build_network

    net = build_network(arch, 1, 5).eval()
    with torch.inference_mode():
        assert net(torch.zeros(1, 1, 64, 64)).shape == (1, 5, 64, 64)
