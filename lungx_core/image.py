"""The image convention used throughout lungx_core.

A :class:`MedicalImage` holds the pixel array in SimpleITK/NumPy order and its geometry in LPS, exactly as
ITK/Slicer read it from the file:

- a radiograph is a 2-D array (rows, cols); its geometry is still 3-D (spacing, origin, direction of a
  one-slice volume), because Slicer and ``.seg.nrrd`` files are always 3-D;
- a volume is (slices, rows, cols).

``spacing`` is (column, row, slice) spacing in mm, ``origin`` is the LPS position of the first pixel,
``direction`` the row-major 3x3 matrix whose columns are the i, j, k axis directions. Every mask we write
has the input's exact shape and geometry.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass
class MedicalImage:
    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = IDENTITY
    modality: str = "CXR"  # CXR or CT
    spacing_known: bool = False  # False when the file carries no physical pixel size (PNG, JPEG)
    source: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    # views derived from the pixels so far (windowed(), derived()), each with the array it came from; never
    # compared, copied or shown
    _views: dict[Hashable, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    @property
    def is_radiograph(self) -> bool:
        return self.array.ndim == 2

    @property
    def pixel_area_mm2(self) -> float:
        return float(self.spacing[0] * self.spacing[1])

    def with_array(self, array: np.ndarray) -> MedicalImage:
        """Same geometry and metadata, new pixels (shape must match)."""
        if array.shape != self.array.shape:
            raise ValueError(f"shape {array.shape} does not match the image's {self.array.shape}")
        return replace(self, array=array, metadata=dict(self.metadata))

    def windowed(self, low_percentile: float = 0.5, high_percentile: float = 99.5) -> np.ndarray:
        """The pixels windowed to their own percentiles, float32 in [0, 1]
        (:func:`lungx_core.preprocess.normalise_intensity`), computed once per image and window: the gate, the
        mirrored-film check, the network input and the QC picture of one film share it. Read-only; the image's
        ``array`` must not be changed in place after the first call."""
        from lungx_core.preprocess import normalise_intensity

        key = (float(low_percentile), float(high_percentile))
        return self.derived(("window", *key), lambda image: normalise_intensity(image.array, *key))

    def derived(self, key: Hashable, compute: Callable[[MedicalImage], np.ndarray]) -> np.ndarray:
        """``compute(self)``, computed once per image and ``key`` (again only when a new ``array`` is assigned):
        a view of the pixels that several steps of one film's processing need (its window, the gate's
        thumbnail). Read-only."""
        cached = self._views.get(key)
        if cached is None or cached[0] is not self.array:
            view = compute(self)
            view.flags.writeable = False
            cached = self._views[key] = (self.array, view)
        return cached[1]

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 matrix mapping (i, j, k) voxel indices to LPS mm."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.direction, dtype=float).reshape(3, 3) @ np.diag(self.spacing)
        m[:3, 3] = self.origin
        return m

    def to_sitk(self, array: np.ndarray | None = None):
        """A 3-D SimpleITK image carrying this geometry (a radiograph becomes one slice)."""
        import SimpleITK as sitk

        arr = self.array if array is None else array
        if arr.ndim == 2:
            arr = arr[None]
        img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
        img.SetSpacing([float(s) for s in self.spacing])
        img.SetOrigin([float(o) for o in self.origin])
        img.SetDirection([float(d) for d in self.direction])
        return img

    @classmethod
    def from_sitk(cls, img, **kwargs: Any) -> MedicalImage:
        """From a SimpleITK image of dimension 2 or 3; a one-slice 3-D image becomes a 2-D radiograph array."""
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(img)
        dim = img.GetDimension()
        if dim == 2:
            spacing = (*img.GetSpacing(), 1.0)
            origin = (*img.GetOrigin(), 0.0)
            d = img.GetDirection()
            direction = (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0)
        elif dim == 3:
            spacing, origin, direction = img.GetSpacing(), img.GetOrigin(), img.GetDirection()
            if arr.shape[0] == 1:
                arr = arr[0]
        else:
            raise ValueError(f"{dim}-D images are not supported")
        return cls(
            array=arr,
            spacing=tuple(float(s) for s in spacing),
            origin=tuple(float(o) for o in origin),
            direction=tuple(float(x) for x in direction),
            **kwargs,
        )


def to_dtype(values: np.ndarray, dtype: Any) -> np.ndarray:
    """``values`` as ``dtype``: integer types rounded (half to even) and clipped to the type's range, never wrapped
    round; float types cast. How every processed image gets back its input's dtype."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        values = np.clip(np.rint(values), info.min, info.max)
    return np.asarray(values).astype(dtype)
