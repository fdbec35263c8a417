"""Training slices for the CT lung network: pseudo-labels from the classical pipeline on the real CTs in
../shared/data, cached as letterboxed axial slices (HU kept, so synthetic pathology can be painted in HU).

Split by CT (one patient each):
- train: cases with clean pseudo-labels (aerated lungs, where thresholds are right);
- val: acrinfltbreast_013 (pseudo-labels; low-dose, partial coverage, a large field of view) for model
  selection, and ct_slicerio_chest4 (its own reference labels) as a held-out test never used for selection;
- excluded: RICORD (COVID consolidation) and Lung-PET-CT-Dx A0002 (a lower-lobe mass): thresholds cut dense
  lung out of their pseudo-labels, which would teach the network the very error it exists to avoid. They are
  the pathological showcases, judged on overlays.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TRAIN_CASES = (
    "ct_tcia_dicom_samples/lidc-idri-0001",
    "ct_tcia_dicom_samples/lungfcp_01-0001",
    "ct_tcia_dicom_samples/lungpetctdx_A0001",
    "ct_misc/cip_testinput_ds",
)
VAL_CASES = ("ct_tcia_dicom_samples/acrinfltbreast_013",)
TEST_CASES = ("ct_slicerio_chest4",)
SHOWCASE_CASES = ("ct_tcia_dicom_samples/ricord1a_419639-001012", "ct_tcia_dicom_samples/lungpetctdx_A0002")


def case_labels(data: Path, case: str, pseudo_dir: Path | None = None):
    """(canonical HU volume, canonical labels 1 right / 2 left, spacing, source): the reference mask when the
    case has one, else the classical pipeline's pseudo-label (also saved to ``pseudo_dir`` for review)."""
    import SimpleITK as sitk

    from lungx_core.ct.classical import segment_lungs_classical
    from lungx_core.image import MedicalImage
    from lungx_core.orientation import reorientation

    folder = data / case
    image = MedicalImage.from_sitk(sitk.ReadImage(str(folder / "ct.nii.gz")), modality="CT", spacing_known=True)
    orient = reorientation(image.direction, image.spacing)
    hu = orient.to_canonical(image.array)
    reference = folder / "mask_lung_lr.nii.gz"
    if reference.exists():
        labels = orient.to_canonical(sitk.GetArrayFromImage(sitk.ReadImage(str(reference)))).astype(np.uint8)
        return hu, labels, orient.spacing, "reference"
    labels = segment_lungs_classical(hu, orient.spacing).labels
    if pseudo_dir is not None:
        from lungx_core.io.writers import write_image

        pseudo_dir.mkdir(parents=True, exist_ok=True)
        write_image(pseudo_dir / f"{Path(case).name}_pseudo_lr.nii.gz", image, orient.from_canonical(labels))
    return hu, labels, orient.spacing, "classical"


def build_cache(data: Path, cache: Path, size: int) -> None:
    """All axial slices of every train/val/test case, letterboxed to ``size``: HU int16 and labels uint8."""
    import torch
    import torch.nn.functional as F

    from lungx_core.preprocess import CT_HU_WINDOW, ct_slices_to_input

    hus, labels, splits, cases = [], [], [], []
    for split, names in (("train", TRAIN_CASES), ("val", VAL_CASES), ("test", TEST_CASES)):
        for case in names:
            if not (data / case / "ct.nii.gz").exists():
                print(f"missing {case}; skipped", flush=True)
                continue
            hu, lab, _spacing, source = case_labels(data, case, cache.parent / "pseudo_labels")
            x, box = ct_slices_to_input(hu, size)
            lo, hi = CT_HU_WINDOW  # back to HU: the window is where synthetic pathology is painted
            hus.append(np.round(x[:, 0] * (hi - lo) + lo).astype(np.int16))
            one_hot = torch.from_numpy(np.stack([lab == 1, lab == 2], axis=1).astype(np.float32))
            resized = F.interpolate(one_hot, size=box.resized_shape, mode="bilinear", antialias=True) >= 0.5
            canvas = np.zeros((len(lab), size, size), dtype=np.uint8)
            r0, c0 = box.offset
            sub = canvas[:, r0 : r0 + box.resized_shape[0], c0 : c0 + box.resized_shape[1]]
            sub[resized[:, 1].numpy()] = 2
            sub[resized[:, 0].numpy()] = 1
            labels.append(canvas)
            splits += [split] * len(lab)
            cases += [case] * len(lab)
            print(f"{case}: {len(lab)} slices ({source} labels)", flush=True)
    np.savez_compressed(
        cache,
        hu=np.concatenate(hus),
        labels=np.concatenate(labels),
        split=np.array(splits),
        case=np.array(cases),
    )


def lung_levels(data: dict[str, np.ndarray]) -> np.ndarray:
    """Each cached slice's height within its case's lungs: 0 at the lowest slice with lung (the bases; slices
    run inferior to superior), 1 at the apices; slices without lung get -1."""
    levels = np.full(len(data["case"]), -1.0, dtype=np.float32)
    for case in np.unique(data["case"]):
        idx = np.nonzero(data["case"] == case)[0]
        with_lung = idx[(data["labels"][idx] > 0).any(axis=(1, 2))]
        if len(with_lung) > 1:
            levels[with_lung] = (with_lung - with_lung[0]) / (with_lung[-1] - with_lung[0])
    return levels


def load_cache(cache: Path) -> dict[str, np.ndarray]:
    with np.load(cache) as z:
        return {k: z[k] for k in z.files}
