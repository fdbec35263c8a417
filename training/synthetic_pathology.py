"""Synthetic pathological lung tissue for CT slices: consolidation, ground glass, dependent (gravity-driven)
density, juxtapleural nodules and peripheral masses, painted inside a known lung mask (and, for evaluation,
a 3-D peripheral mass: :func:`insert_mass`).

Used as training augmentation so that a network trained on aerated lungs keeps dense lung as lung: the label
does not change, only the HU values inside the mask. Pure NumPy/SciPy on 2-D HU slices in canonical axial
display (anterior at the top, row index growing towards the back).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from lungx_core.postprocess import bounding_box, keep_components

KINDS = ("consolidation", "ground_glass", "dependent", "nodule")  # the shipped recipe's draw
ALL_KINDS = (*KINDS, "mass")


def _blobs(shape: tuple[int, int], rng: np.random.Generator, scale_px: float, coverage: float) -> np.ndarray:
    """Smooth random field thresholded to cover about ``coverage`` of the frame: irregular, patchy regions."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), scale_px)
    return field > np.quantile(field, 1.0 - coverage)


def _texture(shape: tuple[int, ...], rng: np.random.Generator, sigma_hu: float) -> np.ndarray:
    return ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 1.0) * sigma_hu * 2.5


def _lobes(shape: tuple[int, ...], rng: np.random.Generator, sigma) -> np.ndarray:
    """A smooth random field of unit spread (``sigma`` px, per axis or one for all): a mass's lobulation."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(field.std()), 1e-6)


def insert_pathology(
    hu: np.ndarray,
    lung: np.ndarray,
    rng: np.random.Generator,
    kind: str | None = None,
    kinds: tuple[str, ...] = KINDS,
) -> np.ndarray:
    """Return a copy of the HU slice with one kind of synthetic pathology inside ``lung`` (bool, same shape).

    Pixels outside the mask are returned unchanged. ``kind`` None picks one of ``kinds`` at random.
    """
    kind = kind or str(rng.choice(kinds))
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
    elif kind == "mass":
        # A peripheral tumour's cross-section: a lobulated soft-tissue mass whose outer face lies on the chest wall
        # (its centre inside the lung, a fraction of its radius in from a border within ~1.5 % of the frame of a
        # rib), up to 60 % of the lung's size across. Not on the mediastinal or diaphragmatic border, and not on
        # the thin crescent of lung around the liver dome: there a mass would teach that liver is lung.
        largest = keep_components(lung)
        if largest.sum() < 0.4 * largest[bounding_box(largest)].size:  # a crescent, not a lung's cross-section
            return out
        border = lung & ~ndi.binary_erosion(lung)
        near_rib = ndi.distance_transform_edt(hu < 250) < 0.015 * max(hu.shape) + 1
        by, bx = np.nonzero(border & near_rib)
        if not len(by):
            return out
        k = rng.integers(len(by))
        r = rng.uniform(0.08, 0.3) * size
        inward = np.array([rows.mean() - by[k], cols.mean() - bx[k]])
        depth = rng.uniform(0.2, 0.7)
        yy, xx = np.ogrid[: hu.shape[0], : hu.shape[1]]
        lobes = _lobes(hu.shape, rng, max(r * 0.3, 1.0))
        region = None
        # at most half of the lung's cross-section: aerated lung always lies beside the mass, as it does beside a
        # tumour, and never beside the liver or spleen that a mass filling the whole section would look like
        while r > 1.0:
            cy, cx = np.array([by[k], bx[k]]) + inward / max(np.hypot(*inward), 1e-6) * depth * r
            region = lung & (np.hypot(yy - cy, xx - cx) / r + 0.12 * lobes < 1.0)
            if region.sum() <= 0.5 * lung.sum():
                break
            r *= 0.8
        if region is None:  # a lung a few pixels across (a field-of-view crop's corner): no room for a mass
            return out
        out[region] = rng.uniform(10, 60) + _texture(hu.shape, rng, 12)[region]
    else:
        raise ValueError(f"unknown pathology kind {kind!r}; choose one of {', '.join(ALL_KINDS)}")
    out[~lung] = hu[~lung]
    return out


def insert_mass(
    hu: np.ndarray,
    lung: np.ndarray,
    spacing: tuple[float, float, float],
    volume_ml: float,
    rng: np.random.Generator,
    side: str,
    level: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """A lobulated soft-tissue mass of about ``volume_ml`` against the chest wall of one lung, in 3-D.

    ``hu`` and ``lung`` (bool, the patient's ``side`` lung, "right" or "left") are canonical (S, P, L) volumes
    (columns run to the patient's left, rows to the back) with ``spacing`` in mm. The mass is centred at
    ``level`` of the lung's height, 0.4 of its radius in from the lung's lateral to posterior border (a random
    direction between the two), and drawn only inside ``lung``: its outer face lies on the chest wall, as a
    peripheral tumour's does, and the lung label stays valid. Returns (the HU volume with the mass, the mass).
    """
    zz = np.nonzero(lung.any(axis=(1, 2)))[0]
    z = int(zz[0] + level * (zz[-1] - zz[0]))
    rows, cols = np.nonzero(lung[z])
    radius_mm = (3 * volume_ml * 1000 / (4 * np.pi)) ** (1 / 3)
    angle = rng.uniform(0, np.radians(80))  # 0: straight lateral, 80 degrees: nearly straight back
    outward = np.array([np.sin(angle), np.cos(angle) * (-1 if side == "right" else 1)])  # (row, column)
    points_mm = np.stack([rows * spacing[1], cols * spacing[2]], axis=1)
    far = int(np.argmax(points_mm @ outward))  # the lung's border furthest out in that direction
    centre_mm = np.array([z * spacing[0], *(points_mm[far] - outward * 0.4 * radius_mm)])
    # lobulation: the radius varies smoothly with a random field over the mass's box
    reach = 1.4 * radius_mm
    lo = np.maximum(np.floor((centre_mm - reach) / spacing).astype(int), 0)
    hi = np.minimum(np.ceil((centre_mm + reach) / spacing).astype(int) + 1, hu.shape)
    grid = np.meshgrid(*[np.arange(a, b) * s for a, b, s in zip(lo, hi, spacing, strict=True)], indexing="ij")
    distance = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre_mm, strict=True))) / radius_mm
    field = _lobes(distance.shape, rng, [0.3 * radius_mm / s for s in spacing])
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    mass = np.zeros(hu.shape, dtype=bool)
    mass[box] = (distance + 0.12 * field < 1.0) & lung[box]
    out = hu.astype(np.float32, copy=True)
    texture = ndi.gaussian_filter(rng.standard_normal(distance.shape).astype(np.float32), 1.0) * 30
    out[box][mass[box]] = (rng.uniform(20, 50) + texture)[mass[box]]
    return out, mass
