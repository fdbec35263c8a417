"""Canonical anatomical array order: volumes whatever the file's direction matrix, radiographs in standard display.

CT algorithms here work on arrays indexed (superior, posterior, left): index 0 grows towards the head, index 1
towards the back, index 2 towards the patient's left. An axial slice ``a[z]`` is then in radiological display
(anterior at the top, patient's right on the image's left). The mapping is a pure axis permutation and flip
chosen from the dominant LPS component of each axis, so it is exact and exactly invertible, also for oblique
direction matrices (their axes go to the nearest anatomical axis).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lungx_core.image import MedicalImage


@dataclass(frozen=True)
class Reorientation:
    """How a (K, J, I) array maps to canonical (S, P, L) order and back."""

    order: tuple[int, int, int]  # canonical axis n takes array axis order[n]
    flips: tuple[bool, bool, bool]  # canonical axes flipped after the transpose
    spacing: tuple[float, float, float]  # canonical (S, P, L) voxel size in mm
    obliquity_deg: float  # largest angle between an array axis and its anatomical axis

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        out = array.transpose(self.order)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]

    def from_canonical(self, array: np.ndarray) -> np.ndarray:
        """Back to the file's array order; extra leading axes (channels) are kept."""
        lead = array.ndim - 3
        flipped = array[(slice(None),) * lead + tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]
        inverse = np.argsort(self.order)
        return flipped.transpose(*range(lead), *(lead + int(i) for i in inverse))


def reorientation(direction: tuple[float, ...], spacing: tuple[float, float, float]) -> Reorientation:
    """Reorientation for a volume with row-major 3x3 ``direction`` (columns = i, j, k axes in LPS)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    lps_of_ijk = np.argmax(np.abs(d), axis=0)  # dominant LPS component of each of i, j, k
    if sorted(lps_of_ijk.tolist()) != [0, 1, 2]:
        raise ValueError(f"direction matrix {direction} does not map to three distinct anatomical axes")
    order, flips, canon_spacing = [0, 0, 0], [False, False, False], [0.0, 0.0, 0.0]
    for ijk_axis, lps_axis in enumerate(lps_of_ijk):
        canonical_axis = 2 - int(lps_axis)  # L -> 2, P -> 1, S -> 0
        array_axis = 2 - ijk_axis  # numpy order is (k, j, i)
        order[canonical_axis] = array_axis
        flips[canonical_axis] = bool(d[lps_axis, ijk_axis] < 0)
        canon_spacing[canonical_axis] = float(spacing[ijk_axis])
    cosines = np.clip(np.abs(d[lps_of_ijk, [0, 1, 2]]) / np.linalg.norm(d, axis=0), -1, 1)
    return Reorientation(tuple(order), tuple(flips), tuple(canon_spacing), float(np.degrees(np.arccos(cosines.min()))))


def display_flips(metadata: dict[str, Any]) -> tuple[bool, bool, bool]:
    """(flip_rows, flip_cols, readable) that bring a radiograph to standard PA display.

    DICOM PatientOrientation gives the patient direction of increasing column index and of increasing row
    index; standard display is (L, F): patient's left on the right, feet at the bottom. Without the
    attribute (PNG, most files) the standard display is assumed.
    """
    po = [str(v).upper() for v in metadata.get("patient_orientation") or []]
    if not po:
        return False, False, True
    if len(po) != 2 or not all(po) or any(set(v) - set("LRAPHF") for v in po):
        return False, False, False
    along_row, along_col = po
    flip_cols = "R" in along_row and "L" not in along_row
    flip_rows = "H" in along_col and "F" not in along_col
    return flip_rows, flip_cols, True


def flip_display(array: np.ndarray, flip_rows: bool, flip_cols: bool) -> np.ndarray:
    """Flip the last two axes (rows, cols) of ``array``; its own inverse, so it maps display back too."""
    if flip_rows:
        array = array[..., ::-1, :]
    if flip_cols:
        array = array[..., ::-1]
    return array


def display_view(image: MedicalImage, lung: np.ndarray | None):
    """(image array, lung) in standard PA display orientation (``lung`` None stays None), and the function that
    brings an array back to the image's own orientation (the flips are their own inverse)."""
    flip_rows, flip_cols, _ = display_flips(image.metadata)

    def orient(array: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(flip_display(array, flip_rows, flip_cols))

    return orient(image.array), None if lung is None else orient(lung), orient
