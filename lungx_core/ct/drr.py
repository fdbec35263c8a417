"""Digitally reconstructed radiographs: a frontal (AP-projected) radiograph computed from a chest CT.

Used for the embedded sample (from the CT that the ``slicerio`` package ships) and for the rib-suppression
training data and validation pairs: the same CT projected with its bone, and with bone replaced by soft
tissue. Parallel-beam projection along the patient's anterior-posterior axis, whatever the CT's direction
matrix; the result carries exact coronal-plane LPS geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lungx_core.image import MedicalImage

MU_WATER_PER_MM = 0.02  # linear attenuation of water near 70 keV, the effective energy of a chest film
BONE_HU = 200.0  # above blood with contrast and soft tissue, below cortical and most trabecular bone
SOFT_TISSUE_HU = 40.0


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation (1/mm) from Hounsfield units; air and below count as zero."""
    return np.clip(MU_WATER_PER_MM * (1.0 + hu.astype(np.float32) / 1000.0), 0.0, None)


def render_drr(ct: MedicalImage, pixel_spacing: float = 1.0) -> MedicalImage:
    """Project a CT (HU) along anterior-posterior into a display-oriented frontal radiograph.

    Pixel values are line integrals of attenuation (what a log-transformed detector signal measures): bone
    and mediastinum bright, aerated lung dark. Columns run towards the patient's left and rows towards the
    feet (standard PA display); spacing is isotropic ``pixel_spacing`` mm.
    """
    return project_ap(ct, hu_to_mu(_volume(ct)), pixel_spacing, f"DRR of {ct.source}")


@dataclass
class BonePair:
    """CT-derived radiographs of one CT on one grid: ``with_bone`` (an ordinary DRR), ``soft_tissue`` (the
    same with every bone voxel given soft-tissue attenuation: the ideal bone-suppressed film) and
    ``bone_mm`` (path length through bone along each ray, mm)."""

    with_bone: MedicalImage
    soft_tissue: MedicalImage
    bone_mm: MedicalImage


def bone_by_hu(ct: MedicalImage, threshold_hu: float = BONE_HU) -> np.ndarray:
    """Bone voxels (bool, the CT's array shape): HU at or above ``threshold_hu``, specks under 3 voxels
    dropped (noise, contrast-filled vessel specks)."""
    from scipy import ndimage as ndi

    bone = _volume(ct) >= threshold_hu
    return ndi.binary_opening(bone, structure=np.ones((1, 1, 3), bool)) | ndi.binary_opening(
        bone, structure=np.ones((1, 3, 1), bool)
    )


def render_bone_pair(
    ct: MedicalImage, bone: np.ndarray, pixel_spacing: float = 1.0, soft_tissue_hu: float = SOFT_TISSUE_HU
) -> BonePair:
    """The with-bone / bone-replaced DRR pair of ``ct`` and the projected bone thickness, for a ``bone`` mask
    (bool, the CT's array shape; e.g. :func:`bone_by_hu` or a rib label). Bone removal can only lower a pixel,
    and only where a ray crosses bone."""
    volume = _volume(ct)
    if bone.shape != volume.shape:
        raise ValueError(f"the bone mask has shape {bone.shape} but the CT has {volume.shape}")
    mu = hu_to_mu(volume)
    soft_mu = np.where(bone, np.minimum(mu, hu_to_mu(np.float32(soft_tissue_hu))), mu)
    name = f"DRR of {ct.source}"
    return BonePair(
        with_bone=project_ap(ct, mu, pixel_spacing, name),
        soft_tissue=project_ap(ct, soft_mu, pixel_spacing, f"{name}, bone replaced by soft tissue"),
        bone_mm=project_ap(ct, bone.astype(np.float32), pixel_spacing, f"bone path length of {ct.source}"),
    )


def _volume(ct: MedicalImage) -> np.ndarray:
    if ct.array.ndim != 3 or ct.array.shape[0] < 2:
        raise ValueError("a DRR needs a CT volume with at least two slices")
    return ct.array.astype(np.float32)


def project_ap(ct: MedicalImage, values: np.ndarray, pixel_spacing: float = 1.0, source: str = "") -> MedicalImage:
    """Line integrals (sum x path length in mm) of a per-voxel quantity on ``ct``'s grid along the patient's
    anterior-posterior axis, whatever the CT's direction matrix; parallel beam, display orientation (columns
    towards the patient's left, rows towards the feet), isotropic ``pixel_spacing`` mm, exact coronal LPS
    geometry."""
    import SimpleITK as sitk

    vol = sitk.DICOMOrient(ct.to_sitk(values.astype(np.float32)), "LPS")  # i->L, j->P, k->S
    arr = sitk.GetArrayFromImage(vol)  # (S, P, L)
    sx, sy, sz = vol.GetSpacing()
    ox, oy, oz = vol.GetOrigin()
    line_integral = arr.sum(axis=1) * sy  # (S, L)
    projection = line_integral[::-1]  # head at the top
    n_rows, n_cols = projection.shape
    drr = sitk.GetImageFromArray(projection.astype(np.float32))
    drr.SetSpacing((sx, sz))
    target_size = [max(1, round(n_cols * sx / pixel_spacing)), max(1, round(n_rows * sz / pixel_spacing))]
    drr = sitk.Resample(
        drr,
        target_size,
        sitk.Transform(),
        sitk.sitkLinear,
        (0.0, 0.0),
        (pixel_spacing, pixel_spacing),
        (1.0, 0.0, 0.0, 1.0),
        0.0,
        sitk.sitkFloat32,
    )
    out = sitk.GetArrayFromImage(drr)
    y_centre = oy + sy * (arr.shape[1] - 1) / 2
    z_top = oz + sz * (arr.shape[0] - 1)
    return MedicalImage(
        array=out,
        spacing=(pixel_spacing, pixel_spacing, 1.0),
        origin=(ox, y_centre, z_top),
        # i towards the patient's left, j towards the feet, k (the beam) anterior to posterior
        direction=(1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0),
        modality="CXR",
        spacing_known=True,
        source=source or f"DRR of {ct.source}",
        metadata={"format": "drr", "view_position": "AP", "patient_orientation": ["L", "F"]},
    )
