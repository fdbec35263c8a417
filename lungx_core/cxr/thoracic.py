"""The thoracic crop that image-translation models see, and the way their result goes back onto the full image.

Translation models (synthesis, opacity removal) work on the rib-cage square of a radiograph (``crops.py``) at a
small fixed size, with a linear intensity map so that it can be inverted. Their change is brought back as a
residual: upsampled to the crop's full resolution and added to the original pixels, so the original's fine
detail survives and every pixel outside the crop is returned bit for bit. Pure functions on arrays.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from lungx_core.cxr.crops import Box, square_around, thoracic_box_cxr
from lungx_core.image import to_dtype


@dataclass(frozen=True)
class CropSpec:
    size: int = 128  # side of the square the network sees
    margin: float = 0.06  # rib-cage margin around the lung fields (fraction of their extent)
    low_percentile: float = 0.5
    high_percentile: float = 99.5

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CropSpec:
        from lungx_core.config import strict_config

        return strict_config(cls, d)


@dataclass
class ThoracicCrop:
    box: Box  # in the full image
    low: float  # intensity that maps to 0
    high: float  # intensity that maps to 1
    image: np.ndarray  # (size, size) float32 in [0, 1]
    lung: np.ndarray  # (size, size) bool


def resize(array: np.ndarray, shape: tuple[int, int], mask: bool = False) -> np.ndarray:
    """2-D resize with torch: area averaging when shrinking (anti-aliased), bilinear when enlarging; masks are
    resized as fractions and thresholded at 0.5."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    shrinking = shape[0] < array.shape[0]
    y = F.interpolate(x, size=shape, mode="area") if shrinking else F.interpolate(
        x, size=shape, mode="bilinear", align_corners=False
    )
    out = y[0, 0].numpy()
    return out >= 0.5 if mask else out


def thoracic_crop(
    image: np.ndarray,
    lung: np.ndarray,
    spec: CropSpec,
    size: int | None = None,
    shift: tuple[int, int] = (0, 0),
) -> ThoracicCrop:
    """Cut the rib-cage square of a display-oriented radiograph and map it linearly to [0, 1] at ``size``
    (default ``spec.size``). ``lung`` is the lung-field mask (both lungs) on the image's grid; ``shift`` moves
    the square by (rows, cols) pixels, kept inside the image."""
    if lung.shape != image.shape:
        raise ValueError(f"the lung mask is {lung.shape[1]}x{lung.shape[0]} pixels but the image is "
                         f"{image.shape[1]}x{image.shape[0]}")
    img = np.asarray(image, dtype=np.float32)
    if not np.isfinite(img).all():
        raise ValueError("image contains NaN or infinite values")
    box = square_around(thoracic_box_cxr({"lung": lung}, spec.margin), img.shape)
    if shift != (0, 0):
        dr = int(np.clip(shift[0], -box.r0, img.shape[0] - box.r1))
        dc = int(np.clip(shift[1], -box.c0, img.shape[1] - box.c1))
        box = Box(box.r0 + dr, box.r1 + dr, box.c0 + dc, box.c1 + dc)
    region = img[box.r0 : box.r1, box.c0 : box.c1]
    low, high = (float(v) for v in np.percentile(region, [spec.low_percentile, spec.high_percentile]))
    if high - low < 1e-6:
        raise ValueError("the chest region of the image is flat (no contrast)")
    side = size or spec.size
    scaled = np.clip((resize(region, (side, side)) - low) / (high - low), 0.0, 1.0).astype(np.float32)
    return ThoracicCrop(box, low, high, scaled, resize(lung[box.r0 : box.r1, box.c0 : box.c1], (side, side), True))


def whole_film(
    image: np.ndarray, size: int, low_percentile: float = 0.5, high_percentile: float = 99.5
) -> tuple[np.ndarray, float, float]:
    """The whole film resized to ``size`` square and mapped linearly to [0, 1] by its own percentiles (computed
    at full resolution): (scaled float32, low, high). What the rib and inpainting models see."""
    img = np.asarray(image, dtype=np.float32)
    low, high = (float(v) for v in np.percentile(img, [low_percentile, high_percentile]))
    if high - low < 1e-6:
        raise ValueError("the image is flat (no contrast)")
    return np.clip((resize(img, (size, size)) - low) / (high - low), 0.0, 1.0).astype(np.float32), low, high


def feather_window(shape: tuple[int, int], fraction: float) -> np.ndarray:
    """1 inside, falling linearly to 0 over the outer ``fraction`` of each side: no seam at the crop border."""
    ramps = []
    for n in shape:
        width = max(1.0, fraction * n)
        i = np.arange(n, dtype=np.float32)
        ramps.append(np.clip(np.minimum(i + 0.5, n - i - 0.5) / width, 0.0, 1.0))
    return np.outer(*ramps)


def apply_residual(
    image: np.ndarray,
    crop: ThoracicCrop,
    translated: np.ndarray,
    feather: float = 0.04,
    weight: np.ndarray | None = None,
) -> np.ndarray:
    """The full-resolution result: ``image`` plus the network's change (``translated - crop.image``, both in the
    crop's [0, 1] scale) upsampled to the crop box, faded out over its outer ``feather`` fraction and mapped back
    to the image's intensities. Same dtype as the input (rounded and clipped for integer types); pixels outside
    the box are the input's, bit for bit.

    ``weight`` (float, ``image``'s shape, in [0, 1]) instead lets the change in only where it is above 0 (a
    lesion's region): every pixel where it is 0 is the input's, bit for bit."""
    box = crop.box
    change = resize(translated.astype(np.float32) - crop.image, box.shape) * (crop.high - crop.low)
    out = np.array(image, copy=True)
    window = (slice(box.r0, box.r1), slice(box.c0, box.c1))
    if weight is not None:
        change *= weight[window]
        inside = weight[window] > 0
        region = image[window].astype(np.float32) + change
        out[window][inside] = to_dtype(region[inside], image.dtype)
        return out
    if feather > 0:
        change *= feather_window(box.shape, feather)
    out[window] = to_dtype(image[window].astype(np.float32) + change, image.dtype)
    return out
