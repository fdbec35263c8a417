"""The embedded sample: the redistributable chest CT shipped inside the ``slicerio`` package, and a frontal
radiograph rendered from it. Lets every command run on a fresh machine with no user data."""

from __future__ import annotations

from pathlib import Path

from lungx_core.image import MedicalImage


def sample_ct_path() -> Path:
    import slicerio

    path = Path(slicerio.__file__).parent / "data" / "CTChest4.nrrd"
    if not path.exists():
        raise FileNotFoundError(f"the slicerio package has no sample CT at {path}")
    return path


def sample_ct() -> MedicalImage:
    import SimpleITK as sitk

    path = sample_ct_path()
    return MedicalImage.from_sitk(sitk.ReadImage(str(path)), modality="CT", spacing_known=True, source=str(path))


def sample_radiograph() -> MedicalImage:
    """A 1-mm frontal DRR of the sample CT, with coronal-plane LPS geometry. Its source is ``sample_drr`` (the
    name ``lungx segment --sample`` gives it), so its results are not saved over the CT's (``CTChest4``)."""
    from dataclasses import replace

    from lungx_core.ct.drr import render_drr

    return replace(render_drr(sample_ct(), pixel_spacing=1.0), source="sample_drr")
