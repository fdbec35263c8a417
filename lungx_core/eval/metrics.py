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

    from lungx_core.postprocess import bounding_box

    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    spacing = tuple(float(s) for s in (spacing or (1.0,) * pred.ndim))
    if not pred.any() and not truth.any():
        return 0.0
    if not pred.any() or not truth.any():
        return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(pred.shape, spacing, strict=True))))
    # Distances between surface points do not depend on voxels outside the masks' common bounding box (plus a
    # one-voxel frame): cropping makes HD95 of a lung in a 512x512x1000 CT cost seconds, not minutes.
    box = bounding_box(pred | truth, margin=1)
    pred, truth = pred[box], truth[box]
    sp, st = _surface(pred), _surface(truth)
    dist_to_truth = ndi.distance_transform_edt(~st, sampling=spacing)
    dist_to_pred = ndi.distance_transform_edt(~sp, sampling=spacing)
    distances = np.concatenate([dist_to_truth[sp], dist_to_pred[st]])
    return float(np.percentile(distances, 95))


def surface_dice(
    pred: np.ndarray, truth: np.ndarray, tolerance: float, spacing: Sequence[float] | None = None
) -> float:
    """Normalised surface Dice (MONAI's ``compute_surface_dice``): the share of both masks' surface points that lie
    within ``tolerance`` (px, or mm with ``spacing``) of the other mask's surface. Unlike Dice it does not fall
    with the voxel size: on a CT of 2.7 mm pixels a lung one pixel smaller all round keeps Dice of only about
    0.92, and a surface Dice of 1 within the voxel's diagonal. Both empty: 1; exactly one empty: 0."""
    import warnings

    import torch
    from monai.metrics import compute_surface_dice

    from lungx_core.postprocess import bounding_box

    pred, truth = np.asarray(pred, bool), np.asarray(truth, bool)
    if not pred.any() or not truth.any():
        return float(pred.any() == truth.any())
    box = bounding_box(pred | truth, margin=1)  # distances do not depend on the voxels outside it
    pred, truth = pred[box], truth[box]
    with warnings.catch_warnings():  # MONAI 1.5-1.6 warns about an argument it passes to itself
        warnings.simplefilter("ignore", FutureWarning)
        value = compute_surface_dice(
            torch.from_numpy(np.stack([~pred, pred]))[None], torch.from_numpy(np.stack([~truth, truth]))[None],
            [float(tolerance)], include_background=False,
            spacing=[float(s) for s in spacing] if spacing is not None else None)
    return float(value[0, 0])


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


def _nodule_regions(image: np.ndarray, centre_xy: tuple[float, float], radius: float):
    """(disc, ring, window) pixel values around a nodule: disc of 0.7 radius, ring at 1.3-2.2 radii, all pixels
    within 4 radii; pixels outside the image are left out."""
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
    return disc, ring, window[distance <= reach]


def nodule_contrast(image: np.ndarray, centre_xy: tuple[float, float], radius: float) -> float:
    """A nodule's own contrast in the image's grey levels: mean in a disc of 0.7 radius minus mean in a ring at
    1.3-2.2 radii. Its ratio after / before bone suppression is the share of the nodule the suppression kept: 1
    when the bone image carries none of it, whatever the clutter around it (which
    :func:`nodule_conspicuity` also counts)."""
    disc, ring, _ = _nodule_regions(image, centre_xy, radius)
    return float(disc.mean() - ring.mean())


def nodule_conspicuity(image: np.ndarray, centre_xy: tuple[float, float], radius: float) -> float:
    """How much a nodule stands out from what surrounds it: (mean in a disc of 0.7 radius - mean in a ring at
    1.3-2.2 radii) / standard deviation within 4 radii, in the image's own grey levels (so a linear rescale of
    the film leaves it unchanged). ``centre_xy`` is (column, row) in pixels; pixels outside the image are left
    out. Bone suppression should raise it: less rib clutter around a nodule, the nodule kept."""
    disc, ring, window = _nodule_regions(image, centre_xy, radius)
    spread = float(window.std())
    return float((disc.mean() - ring.mean()) / spread) if spread > 0 else 0.0


FROC_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def match_candidates(
    candidates: dict[str, Sequence[tuple[float, float, float]]],
    nodules: dict[str, Sequence[tuple[float, float, float]]],
) -> list[tuple[float, int, int]]:
    """Every candidate as (probability, hit, nodule index): candidates are ``(x, y, probability)`` per film,
    nodules ``(x, y, hit radius)`` per film (same pixels). Going down each film's candidates by probability, a
    candidate whose centre lies within the radius of a nodule not yet hit hits it (the nearest such nodule);
    every other candidate, a second one on a hit nodule included, is a false positive (hit 0, index -1).
    Nodule indices count over all films in the order given."""
    out = []
    base = 0
    for film in sorted(set(candidates) | set(nodules)):
        truth = list(nodules.get(film, []))
        hit = [False] * len(truth)
        for x, y, p in sorted(candidates.get(film, []), key=lambda c: -c[2]):
            best, best_d = -1, np.inf
            for j, (nx, ny, r) in enumerate(truth):
                d = float(np.hypot(x - nx, y - ny))
                if not hit[j] and d <= r and d < best_d:
                    best, best_d = j, d
            if best >= 0:
                hit[best] = True
                out.append((float(p), 1, base + best))
            else:
                out.append((float(p), 0, -1))
        base += len(truth)
    return out


def froc(
    matched: Sequence[tuple[float, int, int]], n_nodules: int, n_films: int, rates: Sequence[float] = FROC_RATES
) -> dict:
    """Sensitivity at each false-positive rate (per film) of ``rates`` from :func:`match_candidates`'s output:
    the highest sensitivity over probability thresholds whose false positives per film stay at or below the
    rate. Returns ``sensitivity`` ({rate: value}), ``cpm`` (their mean) and the curve (``fp_per_image``,
    ``curve_sensitivity``, ``thresholds``; one point per distinct probability, highest first)."""
    if n_nodules <= 0 or n_films <= 0:
        raise ValueError("FROC needs at least one nodule and one film")
    probs = np.array([m[0] for m in matched], np.float64)
    hits = np.array([m[1] for m in matched], np.int64)
    order = np.argsort(-probs, kind="stable")
    probs, hits = probs[order], hits[order]
    tp, fp = np.cumsum(hits), np.cumsum(1 - hits)
    # one operating point per distinct threshold: the last index of each run of equal probabilities
    last = np.r_[np.nonzero(np.diff(probs))[0], len(probs) - 1] if len(probs) else np.array([], int)
    fppi = np.r_[0.0, fp[last] / n_films]
    sens = np.r_[0.0, tp[last] / n_nodules]
    thresholds = np.r_[np.inf, probs[last]]
    at = {float(r): float(sens[fppi <= r].max()) for r in rates}
    return {"sensitivity": at, "cpm": float(np.mean(list(at.values()))), "fp_per_image": fppi.tolist(),
            "curve_sensitivity": sens.tolist(), "thresholds": thresholds.tolist()}


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float:
    """Area under the ROC curve (the Mann-Whitney statistic, ties counted half) of ``scores`` for ``labels``
    (1 positive, 0 negative)."""
    s, y = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("AUC needs positive and negative examples")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))
