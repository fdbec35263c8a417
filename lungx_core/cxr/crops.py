"""Thoracic crops set by the rib cage and spine, so that every training image shows the chest at the same scale
(the zoom bias of unpaired translation: one domain's films are tighter crops than the other's).

- CXR: from our anatomy masks. The ribs wrap the lung fields, so the rib cage is the lungs' extent widened by a
  margin; the top is the higher of the lung apices and clavicles.
- CT (one axial slice): the extent of bone (ribs and spine, above ``bone_hu``).
Boxes are half-open (r0, r1, c0, c1) in pixels, clipped to the image.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy import ndimage as ndi


class Box(NamedTuple):
    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.r1 - self.r0, self.c1 - self.c0


def _bbox(mask: np.ndarray) -> Box | None:
    found = ndi.find_objects(mask.astype(np.uint8))  # as elsewhere in lungx_core: the box of the nonzero pixels
    if not found:
        return None
    rows, cols = found[0]
    return Box(rows.start, rows.stop, cols.start, cols.stop)


def _widen(box: Box, margin_r: float, margin_c: float, shape: tuple[int, int]) -> Box:
    h, w = box.shape
    dr, dc = int(round(h * margin_r)), int(round(w * margin_c))
    return Box(max(0, box.r0 - dr), min(shape[0], box.r1 + dr), max(0, box.c0 - dc), min(shape[1], box.c1 + dc))


def thoracic_box_cxr(masks: dict[str, np.ndarray], margin: float = 0.06) -> Box:
    """The rib-cage box of a frontal radiograph from its lung (and clavicle) masks."""
    lungs = np.zeros_like(next(iter(masks.values())), dtype=bool)
    for name in ("lung_left", "lung_right", "lung"):
        if name in masks:
            lungs |= masks[name].astype(bool)
    box = _bbox(lungs)
    if box is None:
        raise ValueError("no lung in the masks: the thoracic crop needs the lung fields")
    for name in ("clavicle_left", "clavicle_right"):
        top = _bbox(masks[name].astype(bool)) if name in masks else None
        if top is not None:
            box = box._replace(r0=min(box.r0, top.r0))
    return _widen(box, margin, margin, lungs.shape)


def thoracic_box_ct(hu_slice: np.ndarray, bone_hu: float = 200.0, margin: float = 0.04) -> Box | None:
    """The rib-cage/spine box of one axial CT slice; None when the slice holds too little bone (above or
    below the thorax)."""
    bone = hu_slice > bone_hu
    if bone.sum() < 0.002 * bone.size:
        return None
    bone = ndi.binary_opening(bone)  # drop isolated bright pixels (noise, contrast specks)
    box = _bbox(bone)
    return None if box is None else _widen(box, margin, margin, hu_slice.shape)


def square_around(box: Box, shape: tuple[int, int]) -> Box:
    """The smallest square containing ``box``, moved (not shrunk) to fit the image where possible."""
    side = min(max(box.shape), *shape)
    rc, cc = (box.r0 + box.r1) // 2, (box.c0 + box.c1) // 2
    r0 = int(np.clip(rc - side // 2, 0, shape[0] - side))
    c0 = int(np.clip(cc - side // 2, 0, shape[1] - side))
    return Box(r0, r0 + side, c0, c0 + side)
