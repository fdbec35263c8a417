"""Slicer's geometry conventions, as plain numpy (see ../shared/docs/SLICER.md).

- A Slicer volume node holds IJKToRAS = [[D_RAS . diag(spacing), origin_RAS], [0, 0, 0, 1]]; its array
  (``slicer.util.arrayFromVolume``) is (K, J, I).
- Files, ITK and SimpleITK are LPS: IJKToLPS = [[D . diag(spacing), origin], [0, 0, 0, 1]], D row-major with the
  axis directions as columns. RAS = diag(-1, -1, 1) . LPS.
- A radiograph is a one-slice volume (1, rows, cols).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse


def ijk_to_lps(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.asarray(direction, dtype=float).reshape(3, 3) @ np.diag(np.asarray(spacing, dtype=float))
    m[:3, 3] = np.asarray(origin, dtype=float)
    return m


def lps_to_ras(matrix: np.ndarray) -> np.ndarray:
    """IJKToLPS -> IJKToRAS (and back: the flip is its own inverse)."""
    return LPS_TO_RAS @ np.asarray(matrix, dtype=float)


def ijk_to_ras(spacing: Sequence[float], origin: Sequence[float], direction: Sequence[float]) -> np.ndarray:
    """IJKToRAS of a node from SimpleITK-style (LPS) spacing, origin and direction."""
    return lps_to_ras(ijk_to_lps(spacing, origin, direction))


def sitk_geometry(ijk_to_ras_matrix: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(spacing, origin, direction) in LPS, as SimpleITK wants them, from a node's IJKToRAS."""
    m = lps_to_ras(ijk_to_ras_matrix)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise ValueError("IJKToRAS has a zero-length axis")
    direction = m[:3, :3] / spacing
    return tuple(spacing.tolist()), tuple(m[:3, 3].tolist()), tuple(direction.ravel().tolist())


def same_grid(
    a: np.ndarray, b: np.ndarray, shape_a: Sequence[int], shape_b: Sequence[int], tolerance_mm: float = 1e-3
) -> bool:
    """Whether two (IJKToRAS, KJI shape) pairs describe the same voxels: same shape and every corner within
    ``tolerance_mm``."""
    if tuple(shape_a) != tuple(shape_b):
        return False
    k, j, i = (int(n) - 1 for n in shape_a)
    corners = np.array([[x, y, z, 1.0] for x in (0, i) for y in (0, j) for z in (0, k)]).T
    return bool(np.abs(np.asarray(a) @ corners - np.asarray(b) @ corners).max() <= tolerance_mm)


def as_slicer_array(array: np.ndarray, is_mask: bool = False) -> np.ndarray:
    """An array that ``slicer.util.updateVolumeFromArray``/``addVolumeFromArray`` accept as is: 3-D (a 2-D
    radiograph becomes one slice), masks uint8, images int16 when they fit else float32 (no bool, no 64-bit)."""
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"expected a 2-D image or a 3-D volume, got shape {arr.shape}")
    if is_mask:
        return np.ascontiguousarray(arr != 0, dtype=np.uint8)
    if np.issubdtype(arr.dtype, np.integer) or arr.dtype == bool:
        if arr.size and (arr.min() < np.iinfo(np.int16).min or arr.max() > np.iinfo(np.int16).max):
            return np.ascontiguousarray(arr, dtype=np.float32)
        return np.ascontiguousarray(arr, dtype=np.int16)
    return np.ascontiguousarray(arr, dtype=np.float32)
