"""Putting an inpainting back onto the full-resolution film, changing nothing outside the (dilated) hole.

The inpainting comes at the model's working size: ``known`` (the film as the model saw it) and ``filled``
(the same with the hole regenerated), equal outside the hole. Two ways back:

- ``inpaint``: the hole's pixels are replaced by the upsampled regenerated pixels. At working resolution the
  replacement is smoother than the film, so fine texture under the hole (vessels, nodule edges) is lost.
- ``subtract``: only the smooth bone signal ``max(known - filled, 0)`` (bone adds attenuation, so it only
  brightens), Gaussian-smoothed, is upsampled and subtracted. Everything finer than the working scale
  (vessels under a rib) stays.

Both fade in over a feathered border of ``feather_px`` film pixels outside the hole; every pixel beyond that
border is the input's, bit for bit.
"""

from __future__ import annotations

import numpy as np

MODES = ("inpaint", "subtract")


def blend_weight(hole: np.ndarray, feather_px: float) -> np.ndarray:
    """1 inside ``hole``, falling linearly to 0 over ``feather_px`` pixels outside it, 0 beyond (float32)."""
    from scipy import ndimage as ndi

    if feather_px <= 0:
        return hole.astype(np.float32)
    distance = ndi.distance_transform_edt(~hole)
    return np.clip(1.0 - distance / (feather_px + 1.0), 0.0, 1.0).astype(np.float32)


def suppress(
    image: np.ndarray,
    hole: np.ndarray,
    known: np.ndarray,
    filled: np.ndarray,
    mode: str = "subtract",
    feather_px: float = 3.0,
    bone_sigma: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(result with ``image``'s dtype, changeable pixels) for a film, its hole and a working-size inpainting.

    ``bone_sigma`` (working-size pixels) smooths the bone estimate in ``subtract`` mode. Integer images are
    rounded and clipped to their type's range.
    """
    from scipy import ndimage as ndi

    from lungx_core.cxr.thoracic import resize

    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    img = np.asarray(image, dtype=np.float32)
    weight = blend_weight(hole, feather_px)
    changeable = weight > 0
    if mode == "inpaint":
        target = resize(filled, img.shape)
        out = img + weight * (target - img)
    else:
        bone = np.maximum(known - filled, 0.0)
        if bone_sigma > 0:
            bone = ndi.gaussian_filter(bone, bone_sigma)
        out = img - weight * resize(bone, img.shape)
    from lungx_core.image import to_dtype

    return np.where(changeable, to_dtype(out, image.dtype), image), changeable
