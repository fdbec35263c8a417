"""Post-processing helpers shared by the CXR and CT tasks."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("shape", [(9,), (7, 11), (6, 8, 10), (3, 4, 5, 6)])
def test_bounding_box_is_find_objects_box(shape):
    from scipy import ndimage as ndi

    from lungx_core.postprocess import bounding_box

    rng = np.random.default_rng(len(shape))
    for density in (0.0, 0.002, 0.05, 0.5):
        mask = rng.random(shape) < density
        boxes = ndi.find_objects(mask.astype(np.uint8))
        assert bounding_box(mask) == (boxes[0] if boxes else None)
        assert bounding_box(mask.astype(np.uint8) * 2) == bounding_box(mask)  # any non-zero label counts
        if boxes:  # grown by a margin, never past the array
            grown = tuple(slice(max(0, b.start - 2), min(n, b.stop + 2)) for b, n in zip(boxes[0], shape, strict=True))
            assert bounding_box(mask, margin=2) == grown


def test_mean_column_is_the_mean_of_every_pixels_column():
    from lungx_core.postprocess import mean_column

    rng = np.random.default_rng(3)
    for shape, density in (((1, 1), 1.0), ((5, 9), 0.3), ((300, 257), 0.01), ((64, 64), 0.9)):
        mask = rng.random(shape) < density
        mask.flat[0] = True
        assert mean_column(mask) == np.nonzero(mask)[1].mean()  # exactly: integer sums, one division


def test_sigmoid_is_expit_within_one_float32_step():
    from scipy.special import expit

    from lungx_core.postprocess import sigmoid

    logits = np.concatenate([np.linspace(-30, 30, 2001), [0.0, -0.0, 1e-8]]).astype(np.float32).reshape(1, 1, -1)
    p = sigmoid(logits)
    assert p.dtype == np.float32 and p.shape == logits.shape
    np.testing.assert_allclose(p, expit(logits), rtol=0, atol=np.finfo(np.float32).eps)
    assert (p[logits >= 0] >= 0.5).all() and (p[logits < 0] < 0.5).all()  # a 0.5 threshold sees the logit's sign


def test_sigmoid_into_an_array_gives_the_same_probabilities():
    from lungx_core.postprocess import sigmoid

    logits = np.random.default_rng(0).normal(0, 6, (3, 37, 41)).astype(np.float32)
    expected = sigmoid(logits)
    same = logits.copy()
    assert sigmoid(same, out=same) is same and np.array_equal(same, expected)  # in place, bit for bit
    rows = np.zeros((3, 37, 41), np.float32)
    sigmoid(logits[1], out=rows[1])  # one channel of a larger array
    assert np.array_equal(rows[1], expected[1]) and not rows[0].any()
    with pytest.raises(ValueError, match="float32"):
        sigmoid(logits, out=np.zeros((3, 37, 41)))


@pytest.mark.parametrize("shape", [(40, 50), (70, 256, 256)])
def test_component_sizes_are_bincounts_in_small_and_large_volumes(shape):
    """Counted in each component's box for a few components in a large volume, by np.bincount otherwise: the same
    counts either way."""
    from scipy import ndimage as ndi

    from lungx_core.postprocess import component_sizes

    rng = np.random.default_rng(4)
    mask = rng.random(shape) > (0.9 if len(shape) == 2 else 0.99999)  # specks: many in 2-D, a few in 3-D
    mask[(slice(5, 30),) * len(shape)] = True  # one large component besides them
    labels, n = ndi.label(mask)
    assert n > 64 if len(shape) == 2 else 2 <= n <= 64
    assert np.array_equal(component_sizes(labels, n), np.bincount(labels.ravel())[1:])
    assert np.array_equal(component_sizes(labels, n, ndi.find_objects(labels)), np.bincount(labels.ravel())[1:])
