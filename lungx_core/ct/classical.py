"""Classical CT lung segmentation: thresholds, connected components and morphology, no training data.

Works on a HU volume in canonical (superior, posterior, left) order (see :mod:`lungx_core.orientation`) with
its voxel size in mm. Steps: body mask; air inside the body; lung candidates by size and position; the
airway (trachea, main bronchi) grown from the trachea with leak control and removed; left/right split at the
anterior/posterior junction lines by erosion; per-lung hole filling and closing that bring vessels and
juxtapleural nodules back in. Dense consolidation that touches the chest wall is beyond thresholds: that is
what the trained network is for; this path produces its pseudo-labels and stays available as a fallback.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from lungx_core.postprocess import bounding_box, fill_holes, keep_components, per_slice

BODY_HU = -500.0  # tissue versus air, halfway between air (-1000) and water (0)
LUNG_HU = -400.0  # aerated and ground-glass lung below; consolidation and soft tissue above
AIRWAY_START_HU = -950.0
AIRWAY_MAX_HU = -850.0
MIN_LUNG_ML = 15.0
MIN_LUNG_DEPTH_MM = 8.0  # a lung has voxels this far from its border; the air sheet under the back does not
CLOSING_MM = 6.0
RIGHT, LEFT = 1, 2


@dataclass
class ClassicalResult:
    labels: np.ndarray  # uint8, canonical order: 0 background, 1 right lung, 2 left lung
    airway: np.ndarray  # bool, the removed trachea/bronchi
    notes: list[str] = field(default_factory=list)  # QC notes (e.g. airway_not_found)


def _voxel_ml(spacing: tuple[float, float, float]) -> float:
    return float(np.prod(spacing)) / 1000.0


def _disk(radius_px: tuple[float, float]) -> np.ndarray:
    ry, rx = (max(1.0, r) for r in radius_px)
    y, x = np.ogrid[-int(ry) : int(ry) + 1, -int(rx) : int(rx) + 1]
    return (y / ry) ** 2 + (x / rx) ** 2 <= 1.0


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient's body: largest 3-D tissue component (the table is separated by air), holes filled per slice."""
    return per_slice(keep_components(hu > BODY_HU), fill_holes)


def _select_lung_components(air: np.ndarray, hu: np.ndarray, spacing) -> np.ndarray:
    """Air components that are lungs: big enough, reaching the upper chest, not pure gas (stomach, bowel)."""
    labels, n = ndi.label(air)
    if n == 0:
        return air
    idx = np.arange(1, n + 1)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    boxes = ndi.find_objects(labels)
    tops = np.array([b[0].stop - 1 for b in boxes])
    mean_hu = ndi.mean(hu, labels, idx)
    # Depth on a ~4 mm subgrid: plenty for an 8 mm criterion, and ~50x cheaper than at full resolution.
    stride = tuple(max(1, int(4.0 / s)) for s in spacing)
    sub = tuple(slice(None, None, k) for k in stride)
    sub_spacing = tuple(s * k for s, k in zip(spacing, stride, strict=True))
    depth = ndi.maximum(ndi.distance_transform_edt(air[sub], sampling=sub_spacing), labels[sub], idx)
    sizes = np.where(depth >= MIN_LUNG_DEPTH_MM, sizes, 0)
    if not sizes.any():
        return np.zeros_like(air)
    largest = int(sizes.argmax())
    z_lo, z_hi = boxes[largest][0].start, tops[largest]
    keep = []
    for i in range(n):
        if sizes[i] == 0 or sizes[i] * _voxel_ml(spacing) < MIN_LUNG_ML:
            continue
        reaches_upper_half = tops[i] >= z_lo + 0.5 * (z_hi - z_lo)
        lung_like = sizes[i] >= 0.1 * sizes[largest] and mean_hu[i] > -960
        if i == largest or reaches_upper_half or lung_like:
            keep.append(i + 1)
    return np.isin(labels, keep)


def find_trachea_seed(air: np.ndarray, body: np.ndarray, hu: np.ndarray, spacing) -> tuple[int, int, int] | None:
    """A voxel inside the trachea: in the top slices, a small, round air region near the body's midline; its
    darkest voxel, and only where that is clearly air (thin top slices can be blurred by partial volume)."""
    sz, sy, sx = spacing
    slices = np.nonzero(air.any(axis=(1, 2)))[0]
    if slices.size == 0:
        return None
    top = slices.max()
    n_search = max(1, int(round(40.0 / sz)))  # the upper 4 cm of the air mask
    for z in range(top, max(top - n_search, slices.min()) - 1, -1):
        cols = np.nonzero(body[z].any(axis=0))[0]
        if cols.size == 0:
            continue
        mid_x = 0.5 * (cols.min() + cols.max())
        labels, n = ndi.label(air[z])
        best, best_dist = None, np.inf
        for i, sl in enumerate(ndi.find_objects(labels), start=1):
            comp = labels[sl] == i
            area_mm2 = comp.sum() * sy * sx
            if not 50.0 <= area_mm2 <= 900.0:  # trachea: ~1-3 cm across
                continue
            h, w = (sl[0].stop - sl[0].start) * sy, (sl[1].stop - sl[1].start) * sx
            if max(h, w) > 2.5 * min(h, w) + 2 * max(sy, sx):
                continue
            cy, cx = ndi.center_of_mass(comp)
            dist_mm = abs(sl[1].start + cx - mid_x) * sx
            darkest = np.where(comp, hu[z][sl], np.inf).argmin()
            dy, dx = np.unravel_index(darkest, comp.shape)
            seed = (z, sl[0].start + int(dy), sl[1].start + int(dx))
            if dist_mm < 30.0 and dist_mm < best_dist and hu[seed] < AIRWAY_START_HU + 25:
                best, best_dist = seed, dist_mm
        if best is not None:
            return best
    return None


def grow_airway(hu: np.ndarray, seed: tuple[int, int, int], candidate: np.ndarray, spacing) -> np.ndarray:
    """Trachea and bronchi by region growing from ``seed``, raising the threshold while the volume grows smoothly.

    A sudden jump in volume means the region leaked into lung parenchyma; the last threshold before it is kept.
    """
    from skimage.segmentation import flood

    best = np.zeros_like(candidate, dtype=bool)
    previous_ml = None
    for threshold in np.arange(max(AIRWAY_START_HU, float(hu[seed]) + 1), AIRWAY_MAX_HU + 1, 25.0):
        region = candidate & (hu < threshold)
        if not region[seed]:
            continue
        # the seed's face-connected component (ndi.label's default), filled from the seed alone instead of
        # labelling every air component of the volume
        grown = flood(region, seed, connectivity=1)
        ml = grown.sum() * _voxel_ml(spacing)
        if ml > 300.0 or (previous_ml is not None and ml > 2.0 * previous_ml and ml - previous_ml > 40.0):
            break
        best, previous_ml = grown, ml
    return best


def split_left_right(lungs: np.ndarray, spacing, max_erosion_mm: float = 20.0) -> np.ndarray:
    """Label 1 right, 2 left. Lungs joined at a junction line are split by in-plane erosion until two
    comparable parts appear; every voxel then goes to the nearer part."""
    sz, sy, sx = spacing
    labels, n = ndi.label(lungs)
    out = np.zeros(lungs.shape, dtype=np.uint8)
    if n == 0:
        return out
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    if n >= 2 and sizes[order[1]] >= 0.15 * sizes[order[0]]:
        markers = [labels == order[0] + 1, labels == order[1] + 1]
    else:
        markers = None
        step = np.zeros((3, 3, 3), dtype=bool)
        step[1] = ndi.generate_binary_structure(2, 1)  # in-plane only: junctions are thin in x
        eroded = lungs.copy()
        for _ in range(int(max_erosion_mm / min(sy, sx))):
            eroded = ndi.binary_erosion(eroded, step)
            lab, m = ndi.label(eroded)
            if m < 2:
                if m == 0:
                    break
                continue
            s = np.bincount(lab.ravel())[1:]
            o = np.argsort(s)[::-1]
            if s[o[1]] >= 0.15 * s[o[0]]:
                markers = [lab == o[0] + 1, lab == o[1] + 1]
                break
        if markers is None:  # one lung only (pneumonectomy, collapse, or a scan of one side)
            x = np.nonzero(lungs)[2].mean()
            out[lungs] = RIGHT if x < lungs.shape[2] / 2 else LEFT
            return out
    seeds = np.zeros(lungs.shape, dtype=np.uint8)
    centroids = [np.nonzero(m)[2].mean() for m in markers]
    right_first = centroids[0] < centroids[1]  # canonical x grows towards the patient's left
    seeds[markers[0]] = RIGHT if right_first else LEFT
    seeds[markers[1]] = LEFT if right_first else RIGHT
    box = bounding_box(lungs)
    _, nearest = ndi.distance_transform_edt(seeds[box] == 0, sampling=spacing, return_indices=True)
    inside = lungs[box]
    out[box][inside] = seeds[box][tuple(idx[inside] for idx in nearest)]
    return out


def _smooth_lung(mask: np.ndarray, spacing) -> np.ndarray:
    """Per axial slice: closing (juxtapleural nodules, vessels at the hilum), then hole filling."""
    _, sy, sx = spacing
    disk = _disk((CLOSING_MM / sy, CLOSING_MM / sx))
    pad = max(disk.shape)

    def one(slice_mask: np.ndarray) -> np.ndarray:
        padded = np.pad(slice_mask, pad)  # closing must not stick to the array border
        closed = ndi.binary_closing(padded, disk)[pad:-pad, pad:-pad]
        return fill_holes(closed | slice_mask)

    return per_slice(mask, one)


def segment_lungs_classical(hu: np.ndarray, spacing: tuple[float, float, float]) -> ClassicalResult:
    """Left/right lungs from a canonical-order HU volume (any float or int dtype, not copied to float64)."""
    notes: list[str] = []
    body = body_mask(hu)
    air = (hu < LUNG_HU) & body
    lungs = _select_lung_components(air, hu, spacing)
    airway = np.zeros_like(lungs)
    seed = find_trachea_seed(lungs, body, hu, spacing)
    if seed is None:
        notes.append("airway_not_found")
    else:
        airway = grow_airway(hu, seed, lungs, spacing)
        airway = ndi.binary_dilation(airway, iterations=1) & lungs
        lungs = lungs & ~airway
        lungs = _select_lung_components(lungs, hu, spacing)
    labels = split_left_right(lungs, spacing)
    out = np.zeros_like(labels)
    for value in (RIGHT, LEFT):
        # Closing may bridge into the main bronchi again: remove the airway, then refill only what the lung
        # encloses (intrapulmonary bronchi are lung; the trachea and main bronchi at the hilum are not).
        side = per_slice(_smooth_lung(labels == value, spacing) & body & ~airway, fill_holes)
        out[side & (out == 0)] = value
    return ClassicalResult(out, airway, notes)
