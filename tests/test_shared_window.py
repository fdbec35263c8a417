"""Issue 38: one window per film, shared by the gate, the mirrored-film check, the network input and the QC
picture, and a faster QC tint; the answers must stay exactly what they were."""

from __future__ import annotations

import numpy as np
import pytest

from lungx_core.anatomy import CXR_STRUCTURES
from lungx_core.image import MedicalImage
from lungx_core.preprocess import normalise_intensity


def test_an_image_windows_itself_once_and_again_only_for_new_pixels():
    rng = np.random.default_rng(0)
    image = MedicalImage(rng.integers(0, 4096, (64, 80)).astype(np.uint16))
    first = image.windowed()
    assert np.array_equal(first, normalise_intensity(image.array, 0.5, 99.5))
    assert image.windowed() is first  # computed once
    assert not first.flags.writeable  # shared: nobody may change it under the others
    assert np.array_equal(image.windowed(2, 98), normalise_intensity(image.array, 2, 98))
    image.array = image.array[::-1].copy()  # new pixels: a new window
    assert np.array_equal(image.windowed(), normalise_intensity(image.array, 0.5, 99.5))
    other = image.with_array(image.array * 2)
    assert other.windowed() is not image.windowed()


def test_the_gate_view_from_the_shared_window_is_the_gate_input_of_the_displayed_film():
    from lungx_core.cxr.gate import gate_input, thumbnail
    from lungx_core.orientation import display_view

    rng = np.random.default_rng(1)
    image = MedicalImage(rng.normal(1000, 200, (90, 70)).astype(np.float32),
                         metadata={"patient_orientation": ["R", "H"]})  # stored mirrored and upside down
    display = display_view(image, None)[0]
    shared = thumbnail(display_view(MedicalImage(image.windowed(), metadata=image.metadata), None)[0])
    assert np.array_equal(shared, gate_input(display))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.float32, np.float64])
def test_the_window_in_bands_is_the_whole_frame_formula_bit_for_bit(dtype):
    """normalise_intensity works in cache-sized bands of float64; the numbers are those of
    np.clip((img - lo) / (hi - lo), 0, 1) on the whole frame, over more than one band."""
    from lungx_core import preprocess

    rng = np.random.default_rng(2)
    info = np.iinfo(dtype) if np.issubdtype(dtype, np.integer) else None
    raw = rng.normal(0, 1, (700, 600)) if info is None else rng.integers(info.min, info.max, (700, 600))
    img = raw.astype(dtype)
    assert img.size > preprocess._BAND  # several bands and a partial last one
    f32 = np.asarray(img, dtype=np.float32)
    lo, hi = np.percentile(f32, [0.5, 99.5])
    assert np.array_equal(preprocess.normalise_intensity(img), np.clip((f32 - lo) / (hi - lo), 0, 1).astype(np.float32))


def test_the_gate_thumbnail_is_made_once_per_image(monkeypatch):
    """The gate and the mirrored-film check look at one thumbnail per film (a 2k film's costs tens of ms)."""
    from lungx_core.cxr import gate

    calls = []
    made = gate._display_thumbnail
    monkeypatch.setattr(gate, "_display_thumbnail", lambda image: calls.append(1) or made(image))
    image = MedicalImage(np.random.default_rng(3).integers(0, 4096, (300, 260)).astype(np.uint16))
    first = gate.display_thumbnail(image)
    assert gate.display_thumbnail(image) is first and len(calls) == 1 and not first.flags.writeable
    image.array = image.array[::-1].copy()  # new pixels: a new thumbnail
    assert not np.array_equal(gate.display_thumbnail(image), first) and len(calls) == 2


def _tint_one_pixel_at_a_time(gray01, masks, structures):
    """The QC tint as first written (boolean indexing over the whole picture): the reference."""
    from lungx_core.io.writers import _outline

    rgb = np.repeat(gray01[..., None], 3, axis=2)
    for s in structures:
        m = masks[s.name].astype(bool)
        if not m.any():
            continue
        color = np.asarray(s.color, dtype=np.float32)
        rgb[m] = 0.7 * rgb[m] + 0.3 * color
        rgb[_outline(m)] = color
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def test_the_faster_tint_draws_the_same_picture_bit_for_bit():
    from lungx_core.io.writers import tint

    rng = np.random.default_rng(2)
    gray = rng.random((120, 100)).astype(np.float32)
    rows, cols = np.mgrid[:120, :100]
    masks = {}
    for k, s in enumerate(CXR_STRUCTURES):  # overlapping discs, one touching the border, one empty
        masks[s.name] = np.hypot(rows - 20 - 20 * k, cols - 15 - 15 * k) < 25 if k < 4 else np.zeros((120, 100), bool)
    out = tint(gray, masks, CXR_STRUCTURES, gray.shape)
    assert out.flags.c_contiguous and out.shape == (120, 100, 3)
    assert np.array_equal(out, _tint_one_pixel_at_a_time(gray, masks, CXR_STRUCTURES))


def test_segmenting_with_the_shared_window_gives_the_masks_of_the_film_windowed_on_its_own():
    from lungx_core.io.sample import sample_radiograph
    from lungx_core.postprocess import clean_masks
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    # the anatomy network alone: predict_probabilities has no clavicle band (test_clavicles.py tests that)
    segmenter = CXRSegmenter("cxr_anatomy", device="cpu", refine_clavicles=False)
    image = sample_radiograph()
    result = segmenter.segment(image)
    alone = clean_masks(segmenter.predict_probabilities(image.array), segmenter.threshold)
    for name, mask in alone.items():
        assert np.array_equal(result.masks[name], mask), name


def _layer_case(ndim: int) -> list[np.ndarray]:
    grid = np.mgrid[:60, :50] if ndim == 2 else np.mgrid[:9, :60, :50]
    rows, cols = grid[-2], grid[-1]
    depth = 0 if ndim == 2 else grid[0] - 4
    def ball(r, c, radius):
        return np.sqrt((rows - r) ** 2 + (cols - c) ** 2 + depth**2) < radius

    return [ball(20, 15, 12), ball(40, 30, 12),  # apart: one layer
            ball(30, 22, 15),  # overlaps both: a second layer
            np.zeros(rows.shape, bool), rows < 3]  # empty; touching the border


@pytest.mark.parametrize("ndim", [2, 3])
def test_segments_are_layered_as_slicerio_layers_them(ndim):
    import slicerio

    from lungx_core.io.writers import _kji_to_ijk, _segment_layers

    masks = _layer_case(ndim)
    fields = [{"id": f"s{k}", "name": f"s{k}", "color": [0.1, 0.2, 0.3]} for k in range(len(masks))]
    reference = slicerio.create_segmentation(_kji_to_ijk(masks[0]).shape, np.eye(4))
    for mask, segment in zip(masks, fields, strict=True):
        slicerio.add_segment(reference, _kji_to_ijk(mask), segment)
    voxels, segments = _segment_layers(masks[0].shape, masks, fields)
    assert voxels.shape == reference["voxels"].shape == (2, 50, 60, 1 if ndim == 2 else 9)
    assert np.array_equal(voxels, reference["voxels"])
    assert segments == reference["segments"]
