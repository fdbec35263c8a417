"""Synthetic pathological lung tissue for CT slices: consolidation, ground glass, dependent (gravity-driven)
density and juxtapleural nodules, painted inside a known lung mask.

Used as training augmentation so that a network trained on aerated lungs keeps dense lung as lung: the label
does not change, only the HU values inside the mask. Pure NumPy/SciPy on 2-D HU slices in canonical axial
display (anterior at the top, row index growing towards the back).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

KINDS = ("consolidation", "ground_glass", "dependent", "nodule")


def _blobs(shape: tuple[int, int], rng: np.random.Generator, scale_px: float, coverage: float) -> np.ndarray:
    """Smooth random field thresholded to cover about ``coverage`` of the frame: irregular, patchy regions."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), scale_px)
    return field > np.quantile(field, 1.0 - coverage)


def _texture(shape: tuple[int, int], rng: np.random.Generator, sigma_hu: float) -> np.ndarray:
    return ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.0) * sigma_hu * 2.5


def insert_pathology(
    hu: np.ndarray,
    lung: np.ndarray,
    rng: np.random.Generator,
    kind: str | None = None,
) -> np.ndarray:
    """Return a copy of the HU slice with one kind of synthetic pathology inside ``lung`` (bool, same shape).

    Pixels outside the mask are returned unchanged. ``kind`` None picks one at random.
    """
    kind = kind or str(rng.choice(KINDS))
    out = hu.astype(np.float32, copy=True)
    lung = lung.astype(bool)
    if not lung.any():
        return out
    rows, cols = np.nonzero(lung)
    size = max(np.ptp(rows), np.ptp(cols)) + 1
    if kind == "consolidation":
        region = _blobs(hu.shape, rng, scale_px=size * rng.uniform(0.04, 0.1), coverage=rng.uniform(0.05, 0.25))
        region &= lung
        # Soft tissue density; keep darker vessels/bronchi partly visible (air bronchograms)
        target = rng.uniform(-40, 60) + _texture(hu.shape, rng, 15)
        keep_air = (out < -900) & (rng.random(hu.shape) < 0.5)
        out[region & ~keep_air] = target[region & ~keep_air]
    elif kind == "ground_glass":
        region = _blobs(hu.shape, rng, scale_px=size * rng.uniform(0.05, 0.12), coverage=rng.uniform(0.1, 0.4))
        weight = ndi.gaussian_filter((region & lung).astype(np.float32), 2.0)
        raise_by = rng.uniform(200, 450)
        out = np.where(lung, out + weight * raise_by + weight * _texture(hu.shape, rng, 20), out)
    elif kind == "dependent":
        # Fluid-like density filling the most posterior part of the lung, with a slightly curved upper border.
        depth = rng.uniform(0.1, 0.35) * np.ptp(rows)
        bottom = np.full(hu.shape[1], -1, dtype=int)
        np.maximum.at(bottom, cols, rows)
        wobble = ndi.gaussian_filter1d(rng.standard_normal(hu.shape[1]), 8) * depth * 0.3
        level = (bottom - depth + wobble)[None, :]
        region = lung & (np.arange(hu.shape[0])[:, None] >= level) & (bottom[None, :] >= 0)
        out[region] = rng.uniform(0, 40) + _texture(hu.shape, rng, 8)[region]
    elif kind == "nodule":
        # A soft-tissue nodule centred on the lung border, so half of it sits against the chest wall.
        border = lung & ~ndi.binary_erosion(lung)
        by, bx = np.nonzero(border)
        k = rng.integers(len(by))
        r = rng.uniform(0.03, 0.08) * size
        yy, xx = np.ogrid[: hu.shape[0], : hu.shape[1]]
        region = lung & ((yy - by[k]) ** 2 + (xx - bx[k]) ** 2 <= r * r)
        out[region] = rng.uniform(0, 60) + _texture(hu.shape, rng, 10)[region]
    else:
        raise ValueError(f"unknown pathology kind {kind!r}; choose one of {', '.join(KINDS)}")
    out[~lung] = hu[~lung]
    return out
