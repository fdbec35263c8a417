"""DICOM Segmentation (SEG) output with highdicom, for results that go back to PACS: one SEG instance per case in
the source's study, referencing the source images (a radiograph: its DX/CR instance; a CT: each slice), with
the same SNOMED CT codes as our ``.seg.nrrd`` (lungx_core.anatomy). Needs the ``dicom`` extra (highdicom).

Example:
    >>> write_dicom_seg(Path("out/film_seg.dcm"), image, result.masks, CXR_STRUCTURES, "cxr_anatomy")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lungx_core.anatomy import Structure
from lungx_core.errors import InputError
from lungx_core.image import MedicalImage
from lungx_core.io.derived import fill_type2
from lungx_core.io.writers import atomic_path

SERIES_NUMBER_OFFSET = 2000  # SEG series numbers: the source's + 2000 (derived images use + 1000)


def source_files(image: MedicalImage) -> list[Path]:
    """The DICOM files ``image`` was read from, in array order (a CT: one per slice, as ``image.array[z]``)."""
    if str(image.metadata.get("format", "")).lower() != "dicom":
        raise InputError(image.source or "input", "DICOM SEG and SR output needs a DICOM input (this one is not "
                                                  "DICOM)")
    files = image.metadata.get("source_files") or [image.source]
    return [Path(f) for f in files]


def _coded(code: str, meaning: str):
    from highdicom.sr.coding import CodedConcept

    return CodedConcept(code, "SCT", meaning)


def segment_descriptions(structures: Sequence[Structure], algorithm: str) -> list:
    """One highdicom SegmentDescription per structure, numbered from 1: category, type and laterality modifier
    as SNOMED CT codes, the display colour in CIELab, and the model that made it."""
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from skimage.color import rgb2lab

    from lungx_core import __version__

    identification = hd.AlgorithmIdentificationSequence(
        name=f"LungX {algorithm}", family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    descriptions = []
    for number, s in enumerate(structures, start=1):
        lab = rgb2lab(np.array([[s.color]], dtype=np.float64))[0, 0]
        description = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=s.name,
            segmented_property_category=_coded(s.category_code, s.category_meaning),
            segmented_property_type=_coded(s.property_code, s.property_meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
            display_color=hd.color.CIELabColor(float(lab[0]), float(lab[1]), float(lab[2])),
        )
        if s.modifier_code:  # laterality lives inside the type code item (PS3.3 C.8.20.2)
            description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                _coded(s.modifier_code, s.modifier_meaning)
            ]
        descriptions.append(description)
    return descriptions


def write_dicom_seg(
    path: Path,
    image: MedicalImage,
    masks: dict[str, np.ndarray],
    structures: Sequence[Structure],
    algorithm: str,
) -> Path:
    """Write the masks of ``image`` (a DICOM radiograph or CT) as a binary DICOM SEG instance, atomically.

    Args:
        path: the output file (``<id>_seg.dcm``).
        image: what was segmented, read from DICOM (its metadata lists the source files).
        masks: one bool array per structure name, ``image.array``'s shape: (rows, cols) or (slices, rows, cols).
        structures: the segments, in order (their SNOMED CT codes and colours).
        algorithm: the model's name, recorded as the segments' algorithm.

    Returns:
        ``path``. Empty frames are left out; each frame references the source instance it lies on.

    Raises:
        InputError: the input is not DICOM, or a mask does not fit the image.
    """
    try:
        import highdicom as hd
    except ImportError:
        raise RuntimeError("DICOM SEG output needs highdicom: pip install 'lungx-core[dicom]'") from None
    import pydicom

    files = source_files(image)
    if image.metadata.get("gantry_tilt_corrected"):
        raise InputError(image.source or path, "DICOM SEG cannot reference a gantry-tilted series slice by slice (the "
                                               "masks lie on the corrected grid); write seg.nrrd or nii.gz")
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    for ds in sources:
        fill_type2(ds)  # the SEG copies these from its source: an empty value is valid, a missing one is not
    stack = np.stack([np.asarray(masks[s.name], dtype=bool) for s in structures], axis=-1)
    if stack.shape[:-1] != image.array.shape:
        raise InputError(image.source or path, f"masks of shape {stack.shape[:-1]} do not fit the image's "
                                               f"{image.array.shape}")
    if stack.ndim == 3:  # one radiograph: a single frame
        stack = stack[None]
    if len(sources) != stack.shape[0]:
        raise InputError(image.source or path, f"{stack.shape[0]} mask frames for {len(sources)} source files")
    first = sources[0]
    try:
        seg = _segmentation(hd, sources, stack, structures, algorithm, first)
    except ValueError as exc:  # highdicom's checks of the sources, e.g. a CT without a Frame of Reference
        raise InputError(image.source or path, f"DICOM SEG cannot reference this input ({exc})") from None
    if "FrameOfReferenceUID" not in first:
        # a projection radiograph: frames are located by the instance they reference, not in patient space.
        # General Image then needs PatientOrientation (type 2C, dciodvfy), and highdicom's reader refuses a
        # Pixel Measures item without SliceThickness, which a DX does not have
        seg.PatientOrientation = first.get("PatientOrientation", "")
        for group in seg.SharedFunctionalGroupsSequence:
            if "PixelMeasuresSequence" in group:
                del group.PixelMeasuresSequence
    with atomic_path(path) as tmp:
        seg.save_as(tmp)
    return path


def _segmentation(hd, sources, stack, structures, algorithm, first):
    from pydicom.uid import generate_uid

    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=stack.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(structures, algorithm),
        series_instance_uid=generate_uid(),
        series_number=int(first.get("SeriesNumber", 0) or 0) + SERIES_NUMBER_OFFSET,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="LungX",
        manufacturer_model_name=algorithm,
        software_versions=_version(),
        device_serial_number="none",
        series_description=f"{algorithm} segmentation (lungx)"[:64],
        content_label="LUNGX",
        content_description=f"{algorithm} (LungX, research use)"[:64],
    )


def _version() -> str:
    from lungx_core import __version__

    return __version__
