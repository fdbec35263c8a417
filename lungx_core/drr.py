"""Digitally reconstructed radiographs: a frontal (AP-projected) radiograph computed from a chest CT.

Used for the embedded sample (from the CT that the ``slicerio`` package ships) and, later, for CT-derived
training pairs. Parallel-beam projection along the patient's anterior-posterior axis, whatever the CT's
direction matrix; the result carries exact coronal-plane LPS geometry.
"""

from __future__ import annotations

import numpy as np

from lungx_core.image import MedicalImage

MU_WATER_PER_MM = 0.02  # linear attenuation of water near 70 keV, the effective energy of a chest film


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    """Linear attenuation (1/mm) from Hounsfield units; air and below count as zero."""
    return np.clip(MU_WATER_PER_MM * (1.0 + hu.astype(np.float32) / 1000.0), 0.0, None)


def render_drr(ct: MedicalImage, pixel_spacing: float = 1.0) -> MedicalImage:
    """Project a CT (HU) along anterior-posterior into a display-oriented frontal radiograph.

    Pixel values are line integrals of attenuation (what a log-transformed detector signal measures): bone
    and mediastinum bright, aerated lung dark. Columns run towards the patient's left and rows towards the
    feet (standard PA display); spacing is isotropic ``pixel_spacing`` mm.
    """
    import SimpleITK as sitk

    if ct.array.ndim != 3 or ct.array.shape[0] < 2:
        raise ValueError("a DRR needs a CT volume with at least two slices")
    vol = sitk.DICOMOrient(ct.to_sitk(ct.array.astype(np.float32)), "LPS")  # i->L, j->P, k->S
    arr = sitk.GetArrayFromImage(vol)  # (S, P, L)
    sx, sy, sz = vol.GetSpacing()
    ox, oy, oz = vol.GetOrigin()
    line_integral = hu_to_mu(arr).sum(axis=1) * sy  # (S, L)
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
        source=f"DRR of {ct.source}",
        metadata={"format": "drr", "view_position": "AP", "patient_orientation": ["L", "F"]},
    )
