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
