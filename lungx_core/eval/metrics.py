"""Image and segmentation metrics shared by evaluation, training and the later tasks.

Segmentation metrics take boolean masks of equal shape; spacing is per array axis (NumPy order) in mm.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient; 1.0 when both masks are empty (nothing to find, nothing found)."""
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    total = pred.sum() + truth.sum()
    return 1.0 if total == 0 else float(2 * np.logical_and(pred, truth).sum() / total)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    union = np.logical_or(pred, truth).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, truth).sum() / union)


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    return mask & ~ndi.binary_erosion(mask, border_value=0)


def hd95(pred: np.ndarray, truth: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """Symmetric 95th-percentile Hausdorff distance between mask surfaces (px, or mm with ``spacing``).

    Both empty: 0. Exactly one empty: the extent of the image diagonal, a finite worst case that keeps means
    meaningful.
    """
    from scipy import ndimage as ndi

    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    spacing = tuple(float(s) for s in (spacing or (1.0,) * pred.ndim))
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing, strict=True))))
    # Distances between surface points do not depend on voxels outside the masks' common bounding box (plus a
    # one-voxel frame): cropping makes HD95 of a lung in a 512x512x1000 CT cost seconds, not minutes.
    box = ndi.find_objects((pred | truth).astype(np.uint8))[0]
    box = tuple(slice(max(0, b.start - 1), b.stop + 1) for b in box)
    pred, truth = pred[box], truth[box]
    sp, st = _surface(pred), _surface(truth)
    dist_to_truth = ndi.distance_transform_edt(~st, sampling=spacing)
    dist_to_pred = ndi.distance_transform_edt(~sp, sampling=spacing)
    distances = np.concatenate([dist_to_truth[sp], dist_to_pred[st]])
    return float(np.percentile(distances, 95))


def psnr(reference: np.ndarray, test: np.ndarray, data_range: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, computed in float64 (never on rounded uint8)."""
    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(test, dtype=np.float64)
    rng = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    mse = float(np.mean((ref - out) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(rng**2 / mse))


def ssim(reference: np.ndarray, test: np.ndarray, data_range: float | None = None) -> float:
    """Structural similarity (scikit-image, Gaussian-weighted as in Wang et al. 2004), in float."""
    from skimage.metrics import structural_similarity

    ref = np.asarray(reference, dtype=np.float64)
    out = np.asarray(test, dtype=np.float64)
    rng = float(ref.max() - ref.min()) if data_range is None else float(data_range)
    return float(
        structural_similarity(ref, out, data_range=rng, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    )


def nodule_conspicuity(image: np.ndarray, centre_xy: tuple[float, float], radius: float) -> float:
    """How much a nodule stands out from what surrounds it: (mean in a disc of 0.7 radius - mean in a ring at
    1.3-2.2 radii) / standard deviation within 4 radii, in the image's own grey levels (so a linear rescale of
    the film leaves it unchanged). ``centre_xy`` is (column, row) in pixels; pixels outside the image are left
    out. Bone suppression should raise it: less rib clutter around a nodule, the nodule kept."""
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    x, y = float(centre_xy[0]), float(centre_xy[1])
    reach = 4 * radius
    r0, r1 = max(0, int(np.floor(y - reach))), min(image.shape[0], int(np.ceil(y + reach)) + 1)
    c0, c1 = max(0, int(np.floor(x - reach))), min(image.shape[1], int(np.ceil(x + reach)) + 1)
    window = np.asarray(image[r0:r1, c0:c1], dtype=np.float64)
    rows, cols = np.ogrid[r0:r1, c0:c1]
    distance = np.hypot(rows - y, cols - x)
    disc, ring = window[distance <= 0.7 * radius], window[(distance >= 1.3 * radius) & (distance <= 2.2 * radius)]
    if disc.size == 0 or ring.size == 0:
        raise ValueError(f"nodule at ({x:.1f}, {y:.1f}) with radius {radius:.1f} px lies outside the image")
    spread = float(window[distance <= reach].std())
    return float((disc.mean() - ring.mean()) / spread) if spread > 0 else 0.0
