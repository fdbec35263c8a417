"""CT volume reading: DICOM series (headers checked with pydicom, pixels through SimpleITK) and NIfTI/NRRD/MHA.

A DICOM folder may hold several series. Localisers (scouts) and non-CT objects are ignored; among the CT
series the one the user names is read, else the one with the most slices (then the thinnest, then the lowest
series number). Slices are ordered by position along the slice normal and rescaled to HU. Missing slices,
non-uniform spacing, mixed orientations or matrix sizes, and duplicate positions are errors (a volume grid
cannot represent them honestly). A gantry-tilted series (slices stacked obliquely to their planes) is resampled
onto the orthogonal grid of its slice planes, so volumes and positions are physical; the tilt stays reported
(metadata ``gantry_tilt_deg``, the tasks' QC flag).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lungx_core.errors import InputError
from lungx_core.image import MedicalImage
from lungx_core.io.readers import (
    DICOM_SUFFIXES,
    ITK_SUFFIXES,
    PIL_SUFFIXES,
    check_nifti_finite,
    is_dicom_file,
    is_non_image_object,
    short_message,
    suffix_of,
)

MIN_SLICES = 8
MAX_VOXELS = 1_200_000_000  # 1024 x 1024 x 1100; beyond that one volume does not fit a workstation's memory
SPACING_TOLERANCE = 0.05  # relative variation of slice spacing accepted as uniform
TILT_TOLERANCE_DEG = 0.5


@dataclass
class SeriesInfo:
    uid: str
    number: int
    description: str
    modality: str
    files: list[Path] = field(default_factory=list)
    localizer: bool = False
    thickness: float = 0.0
    # per file, from the same header read: (ImagePositionPatient, ImageOrientationPatient, (Rows, Columns));
    # None where any of them is missing (non-image objects)
    geometry: list[tuple[list[float], list[float], tuple[int, int]] | None] = field(default_factory=list)


def dicom_files(folder: Path) -> list[Path]:
    """DICOM files directly in ``folder`` (by suffix or by the DICM marker)."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and (suffix_of(p) in DICOM_SUFFIXES or (suffix_of(p) not in PIL_SUFFIXES | ITK_SUFFIXES and is_dicom_file(p)))
    )


def list_series(files: list[Path]) -> tuple[list[SeriesInfo], list[Path]]:
    """Group files by SeriesInstanceUID from their headers; also returns the files whose header is unreadable.
    Non-image objects (a dose report, a presentation state, a SEG, ...) are left out: they are no series to
    choose from."""
    import pydicom

    series: dict[str, SeriesInfo] = {}
    unreadable: list[Path] = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            uid = str(ds.SeriesInstanceUID)
        except Exception:  # noqa: BLE001 - any header failure makes the file unusable; reported by the caller
            unreadable.append(f)
            continue
        if is_non_image_object(ds):
            continue
        info = series.get(uid)
        if info is None:
            number = ds.get("SeriesNumber")
            info = series[uid] = SeriesInfo(
                uid=uid,
                number=int(number) if number not in (None, "") else 0,
                description=str(ds.get("SeriesDescription", "")),
                modality=str(ds.get("Modality", "")).upper(),
                thickness=float(ds.get("SliceThickness", 0) or 0),
            )
        image_type = [str(v).upper() for v in ds.get("ImageType", [])]
        if "LOCALIZER" in image_type or "SCOUT" in " ".join(image_type):
            info.localizer = True
        info.files.append(f)
        ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        rows, cols = ds.get("Rows"), ds.get("Columns")
        info.geometry.append(
            None
            if ipp is None or iop is None or rows is None or cols is None
            else ([float(v) for v in ipp], [round(float(v), 4) for v in iop], (int(rows), int(cols)))
        )
    return list(series.values()), unreadable


def choose_series(path: Path, series: list[SeriesInfo], wanted: str | None = None) -> SeriesInfo:
    """The series to read: ``wanted`` (UID, UID prefix or series number), else the rule in the module doc."""
    ct = [s for s in series if s.modality == "CT" and not s.localizer]
    if wanted:
        # an exact UID or series number wins; a UID prefix counts only when exactly one series has it
        match = [s for s in series if s.uid == wanted or str(s.number) == wanted]
        if not match:
            match = [s for s in series if s.uid.startswith(wanted)]
        if len(match) > 1:
            raise InputError(path, f"series {wanted!r} matches {len(match)} series; give a full UID or series "
                                   f"number: {describe_series(match)}")
        if not match:
            raise InputError(path, f"no series {wanted!r}; available: {describe_series(series)}")
        return match[0]
    if not ct:
        found = ", ".join(sorted({f"{s.modality or '?'}{' localizer' if s.localizer else ''}" for s in series}))
        raise InputError(path, f"no CT series found (found: {found or 'nothing readable'})")
    return sorted(ct, key=lambda s: (-len(s.files), s.thickness or 1e9, s.number))[0]


def describe_series(series: list[SeriesInfo]) -> str:
    return "; ".join(
        f"#{s.number} {s.modality} {len(s.files)} files '{s.description}' uid {s.uid}"
        + (" (localizer)" if s.localizer else "")
        for s in series
    )


def _slice_geometry(path: Path, series: SeriesInfo):
    """Sort the series' files by position along the normal; check the stack. Returns (files, tilt_deg,
    positions of the sorted slices (N, 3) in LPS mm)."""
    files = series.files
    positions, orientations, sizes = [], [], set()
    for f, geometry in zip(files, series.geometry, strict=True):
        if geometry is None:
            raise InputError(path, f"{f.name} has no ImagePositionPatient/ImageOrientationPatient/Rows/Columns")
        positions.append(geometry[0])
        orientations.append(geometry[1])
        sizes.add(geometry[2])
    if len(sizes) > 1:
        raise InputError(path, f"slices of different sizes in one series: {sorted(sizes)}")
    if len({tuple(o) for o in orientations}) > 1:
        raise InputError(path, "slices with different orientations in one series (mixed or reformatted series)")
    row, col = np.array(orientations[0][:3]), np.array(orientations[0][3:])
    normal = np.cross(row, col)
    pos = np.array(positions)
    along = pos @ normal
    order = np.argsort(along)
    along = along[order]
    steps = np.diff(along)
    if (steps < 1e-3).any():
        raise InputError(path, f"{int((steps < 1e-3).sum())} slices share a position (several acquisitions?)")
    median = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - median)))
    if abs(steps[worst] - median) > SPACING_TOLERANCE * median:
        kind = "missing slices" if steps[worst] > 1.5 * median else "non-uniform slice spacing"
        raise InputError(
            path,
            f"{kind}: {steps[worst]:.2f} mm between slices at {along[worst]:.1f} and {along[worst + 1]:.1f} mm "
            f"where the series is {median:.2f} mm apart",
        )
    stack = pos[order[-1]] - pos[order[0]]
    cosine = abs(float(stack @ normal)) / max(float(np.linalg.norm(stack)), 1e-6)
    tilt = float(np.degrees(np.arccos(min(1.0, cosine))))
    return [files[i] for i in order], tilt, pos[order]


def deshear(image: MedicalImage, positions: np.ndarray) -> MedicalImage:
    """A gantry-tilted stack on the orthogonal grid of its slice planes: each slice shifted within its plane
    (linear interpolation, air outside) by its stack offset, the slice spacing the distance between the planes.
    Positions are (N, 3) LPS mm of the slices in ``image.array`` order."""
    from scipy import ndimage as ndi

    d = np.asarray(image.direction, dtype=float).reshape(3, 3)
    row, col = d[:, 0], d[:, 1]
    normal = np.cross(row, col)
    offsets = positions - positions[0]
    along = offsets @ normal
    in_plane = offsets - along[:, None] * normal[None, :]
    sx, sy = image.spacing[0], image.spacing[1]
    out = np.empty(image.array.shape, dtype=np.float32)
    for k in range(len(positions)):
        shift = (float(in_plane[k] @ col) / sy, float(in_plane[k] @ row) / sx)  # (rows, columns)
        out[k] = ndi.shift(image.array[k].astype(np.float32), shift, order=1, mode="constant", cval=-1024.0)
    dz = float(np.median(np.diff(along)))
    if not np.issubdtype(image.array.dtype, np.floating):
        out = np.round(out)
    return MedicalImage(
        out.astype(image.array.dtype), spacing=(sx, sy, dz), origin=tuple(float(v) for v in positions[0]),
        direction=tuple(np.column_stack([row, col, normal]).ravel().tolist()), modality=image.modality,
        spacing_known=image.spacing_known, source=image.source, metadata=dict(image.metadata),
    )


def read_dicom_ct(path: Path, series_uid: str | None = None) -> MedicalImage:
    """A CT series from a folder (or the folder of a given file), in HU with exact geometry."""
    import SimpleITK as sitk

    folder = path if path.is_dir() else path.parent
    files = dicom_files(folder)
    if not files:
        raise InputError(path, "folder holds no DICOM files")
    series, unreadable = list_series(files)
    if not series:
        raise InputError(path, f"none of the {len(files)} DICOM files is readable")
    if not path.is_dir() and series_uid is None:  # a file names its own series
        series_uid = next((s.uid for s in series if path in s.files), None)
    chosen = choose_series(path, series, series_uid)
    if chosen.modality != "CT":
        raise InputError(path, f"series #{chosen.number} is {chosen.modality}, not CT")
    if len(chosen.files) < MIN_SLICES:
        raise InputError(path, f"the CT series has {len(chosen.files)} slice(s); at least {MIN_SLICES} are needed")
    ordered, tilt, positions = _slice_geometry(path, chosen)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in ordered])
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(path, f"CT pixel data cannot be read ({short_message(exc)})") from None
    image = _ct_from_sitk(path, img)
    if tilt > TILT_TOLERANCE_DEG:
        # ITK takes the distance between slice positions as the spacing: a sheared grid, volumes x 1/cos(tilt)
        image = deshear(image, positions)
    image.metadata.update(
        format="dicom",
        gantry_tilt_corrected=tilt > TILT_TOLERANCE_DEG,
        series_uid=chosen.uid,
        series_number=chosen.number,
        series_description=chosen.description,
        n_series=len(series),
        # 1-based position among the folder's series in series-number order (the flag chose_series_<k>_of_<n>)
        series_index=sorted(series, key=lambda s: (s.number, s.uid)).index(chosen) + 1,
        other_series=describe_series([s for s in series if s is not chosen]),
        unreadable_files=len(unreadable),
        gantry_tilt_deg=round(tilt, 2),
        source_files=[str(f) for f in ordered],  # image.array[z] is ordered[z]: DICOM SEG frames reference them
    )
    return image


def _ct_from_sitk(path: Path, img) -> MedicalImage:
    import SimpleITK as sitk

    if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, "a CT must be a single-channel 3-D volume")
    size = img.GetSize()
    if size[2] < MIN_SLICES:
        what = "a single slice" if size[2] == 1 else f"{size[2]} slices"
        raise InputError(path, f"{what} (at least {MIN_SLICES} needed; a radiograph goes to the CXR task)")
    if int(np.prod(size)) > MAX_VOXELS:
        raise InputError(path, f"volume of {size[0]}x{size[1]}x{size[2]} voxels is over the size limit")
    if min(img.GetSpacing()) <= 0:
        raise InputError(path, f"invalid voxel spacing {img.GetSpacing()}")
    arr = sitk.GetArrayFromImage(img)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise InputError(path, "volume contains NaN or infinite values")
        if np.array_equal(arr, np.round(arr)) and arr.min() >= -32768 and arr.max() <= 32767:
            arr = arr.astype(np.int16)  # halves memory; float-typed NIfTI files often hold integer HU
    elif arr.dtype.itemsize > 2 and arr.min() >= -32768 and arr.max() <= 32767:
        arr = arr.astype(np.int16)
    low = float(np.percentile(arr[:: max(1, arr.shape[0] // 16)], 1))
    if low > -500:
        raise InputError(path, f"no air in the volume (1st percentile {low:.0f}): not a CT in Hounsfield units")
    return MedicalImage(
        array=arr,
        spacing=tuple(float(s) for s in img.GetSpacing()),
        origin=tuple(float(o) for o in img.GetOrigin()),
        direction=tuple(float(d) for d in img.GetDirection()),
        modality="CT",
        spacing_known=True,
        source=str(path),
        metadata={},
    )


def read_ct(path: str | Path, series_uid: str | None = None) -> MedicalImage:
    """Read a chest CT: a DICOM folder or file (one series chosen), or a NIfTI/NRRD/MHA volume."""
    import SimpleITK as sitk

    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    suffix = suffix_of(path)
    if path.is_dir() or suffix in DICOM_SUFFIXES or (suffix not in ITK_SUFFIXES | PIL_SUFFIXES and is_dicom_file(path)):
        return read_dicom_ct(path, series_uid)
    if suffix in PIL_SUFFIXES:
        raise InputError(path, "a 2-D picture, not a CT volume (radiographs go to the CXR task)")
    if suffix not in ITK_SUFFIXES:
        raise InputError(path, f"unsupported file type {suffix or '(no extension, not DICOM)'}")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(path, f"not a readable image ({short_message(exc)})") from None
    check_nifti_finite(path, "volume contains NaN or infinite values", img)
    image = _ct_from_sitk(path, img)
    image.metadata["format"] = suffix.lstrip(".")
    return image


def volume_kind(path: Path) -> str | None:
    """'ct' for a multi-slice volume file, 'cxr' for a 2-D or one-slice image, None when unknown (unreadable)."""
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
    except RuntimeError:
        return None
    size = reader.GetSize()
    return "ct" if len(size) == 3 and size[2] > 1 else "cxr"
