"""CT-derived rib training data: DRRs of the chest CTs in ../shared/data with the ribs projected into the same
geometry, and the with-bone / bone-replaced pairs that validate suppression.

For each CT: ``variants`` small random 3-D rotations (tilt, rotation, obliquity up to ``max_angle`` degrees;
the first is the CT as scanned), each projected AP (``lungx_core.ct.drr.render_bone_pair``). Bone:
- ct_slicerio_chest4: its rib label (``labels_all`` == 1) is the rib target; every voxel >= 200 HU or rib is bone;
- the other CTs: bone by HU, and the rib target is that bone.
Either way the target keeps only rays off the midline (spine and sternum are not ribs) whose path through rib
bone is at least ``min_bone_mm``.
Only the posterior half of the body counts as rib target (anterior ribs criss-cross the posterior ones and
together cover most of the lung field; they are fainter on a real film). ct_slicerio_chest4 (10-mm slices:
blocky, barely visible ribs in its DRR) is used for suppression pairs but its rib projections are coarse.
Each projection is cut to the body's extent and resized to ``size`` square, as a whole film is at inference.
The film-like appearance (windowing, gamma, scatter, noise, edge enhancement) is randomised per training step
in ``train_ribs.py``, not here.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lungx_core.ct.drr import bone_by_hu, project_ap, render_bone_pair
from lungx_core.image import MedicalImage
from training.common import save_npz

CT_CASES = {
    "ct_slicerio_chest4": "ct_slicerio_chest4",
    "lidc-idri-0001": "ct_tcia_dicom_samples/lidc-idri-0001",
    "lungfcp_01-0001": "ct_tcia_dicom_samples/lungfcp_01-0001",
    "ricord1a_419639-001012": "ct_tcia_dicom_samples/ricord1a_419639-001012",
    "acrinfltbreast_013": "ct_tcia_dicom_samples/acrinfltbreast_013",
    "lungpetctdx_A0001": "ct_tcia_dicom_samples/lungpetctdx_A0001",
    "lungpetctdx_A0002": "ct_tcia_dicom_samples/lungpetctdx_A0002",
}
VALIDATION_CT = "lungfcp_01-0001"  # 1-mm slices: the sharpest ribs, kept out of mask training
MIDLINE_HALF_WIDTH_MM = 18.0


def read_ct(path: Path) -> MedicalImage:
    import SimpleITK as sitk

    return MedicalImage.from_sitk(sitk.ReadImage(str(path)), modality="CT", spacing_known=True, source=str(path))


def _rotated(ct: MedicalImage, volumes: list[np.ndarray], angles_deg: np.ndarray, fill: list[float]) -> list:
    """``volumes`` (on ``ct``'s grid) rotated about the volume centre by Euler angles, resampled on the same grid
    (linear for the first, nearest for the rest)."""
    import SimpleITK as sitk

    ref = ct.to_sitk(volumes[0])
    centre = ref.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in ref.GetSize()])
    t = sitk.Euler3DTransform(centre, *np.deg2rad(angles_deg).tolist())
    out = []
    for i, (v, f) in enumerate(zip(volumes, fill, strict=True)):
        interp = sitk.sitkLinear if i == 0 else sitk.sitkNearestNeighbor
        img = sitk.Resample(ct.to_sitk(v.astype(np.float32)), ref, t, interp, float(f), sitk.sitkFloat32)
        out.append(sitk.GetArrayFromImage(img))
    return out


def posterior_half(ct: MedicalImage, body: np.ndarray) -> np.ndarray:
    """Voxels (bool, the CT's array shape) posterior to the body's anterior-posterior centre: where the
    posterior ribs are, and not the anterior ones, which criss-cross them on a frontal film."""
    k, j, i = (np.arange(n, dtype=np.float32) for n in ct.array.shape)
    d = np.asarray(ct.direction, dtype=np.float32).reshape(3, 3)
    sx, sy, sz = ct.spacing
    # LPS y (posterior) of each voxel: origin + direction row 1 . (i sx, j sy, k sz)
    y = (ct.origin[1] + d[1, 0] * sx * i[None, None, :] + d[1, 1] * sy * j[None, :, None]
         + d[1, 2] * sz * k[:, None, None])
    centre = float(np.broadcast_to(y, body.shape)[body].mean())
    return np.broadcast_to(y > centre, body.shape)


def _body_box(drr: np.ndarray) -> tuple[slice, slice]:
    body = drr > 0.25 * np.percentile(drr, 99)
    rows, cols = np.where(body)
    return slice(rows.min(), rows.max() + 1), slice(cols.min(), cols.max() + 1)


def project_case(data_root: Path, name: str, variants: int, max_angle: float, seed: int, min_bone_mm: float = 2.0):
    """[(with_bone, soft_tissue, rib_target)] full-resolution (1 mm) float/bool arrays, one per variant."""
    from scipy import ndimage as ndi

    folder = data_root / CT_CASES[name]
    ct = read_ct(folder / "ct.nii.gz")
    hu = ct.array.astype(np.float32)
    bone = bone_by_hu(ct)
    ribs = bone & posterior_half(ct, hu > -300)
    if name == "ct_slicerio_chest4":
        import SimpleITK as sitk

        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labels_all.nii.gz")))
        ribs = (labels == 1) & posterior_half(ct, hu > -300)
        bone = bone | (labels == 1)
    rng = np.random.default_rng(seed)
    out = []
    for v in range(variants):
        angles = np.zeros(3) if v == 0 else rng.uniform(-max_angle, max_angle, 3)
        vols = [hu, bone, ribs]
        rotated = _rotated(ct, vols, angles, [-1000.0, 0.0, 0.0]) if v else [x.astype(np.float32) for x in vols]
        rot_ct = MedicalImage(rotated[0], ct.spacing, ct.origin, ct.direction, "CT", True, ct.source)
        pair = render_bone_pair(rot_ct, rotated[1] > 0.5)
        target = project_ap(rot_ct, (rotated[2] > 0.5).astype(np.float32)).array >= min_bone_mm
        profile = pair.with_bone.array.sum(axis=0)
        centre = float((profile * np.arange(len(profile))).sum() / profile.sum())
        cols = np.arange(target.shape[1])
        target &= (np.abs(cols - centre) > MIDLINE_HALF_WIDTH_MM)[None, :]
        target = ndi.binary_opening(target, np.ones((3, 3), bool))
        rows, cols = _body_box(pair.with_bone.array)
        out.append((pair.with_bone.array[rows, cols], pair.soft_tissue.array[rows, cols], target[rows, cols]))
    return out


def build_rib_cache(data_root: Path, out: Path, size: int = 256, variants: int = 12, max_angle: float = 8.0) -> Path:
    """``out`` (.npz): ``drr``/``soft`` float16 and ``ribs`` bool at ``size`` square, ``case`` names."""
    if out.exists():
        return out
    from lungx_core.cxr.thoracic import resize

    drr, soft, ribs, case = [], [], [], []
    for i, name in enumerate(CT_CASES):
        for with_bone, soft_tissue, target in project_case(data_root, name, variants, max_angle, seed=i):
            drr.append(resize(with_bone, (size, size)).astype(np.float16))
            soft.append(resize(soft_tissue, (size, size)).astype(np.float16))
            ribs.append(resize(target.astype(np.float32), (size, size)) >= 0.5)
            case.append(name)
        print(f"{name}: {variants} projections", flush=True)
    save_npz(out, drr=np.stack(drr), soft=np.stack(soft), ribs=np.stack(ribs), case=np.array(case))
    return out


PAIR_CTS = ("ricord1a_419639-001012", "lidc-idri-0001")  # the two full-height thin-slice chests


def write_validation_pairs(
    data_root: Path, out: Path, cases: tuple[str, ...] = PAIR_CTS, variants: int = 3, seed: int = 100
) -> Path:
    """CT-derived pairs as a ``lungx evaluate bone-suppression`` folder: ``images/<id>.png`` (with bone) and
    ``soft_tissue/<id>.png`` (bone replaced), 16-bit, one intensity scale per pair, 1 mm pixels. The held-out
    CT of mask training covers only 98 mm of chest (a 4:1 strip, not a film), so the pairs come from the two
    full-height CTs: the rib-mask model has seen their projections, the inpainting model never saw a CT."""
    from PIL import Image

    for sub in ("images", "soft_tissue"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    projections = [
        (name, v, p) for name in cases for v, p in enumerate(project_case(data_root, name, variants, 8.0, seed))
    ]
    for name, v, (with_bone, soft_tissue, _) in projections:
        low, high = np.percentile(with_bone, [0.5, 99.5])
        case_id = f"{name}_v{v}"
        for sub, arr in (("images", with_bone), ("soft_tissue", soft_tissue)):
            scaled = np.clip((arr - low) / (high - low), 0, 1) * 65535
            Image.fromarray(scaled.round().astype(np.uint16)).save(out / sub / f"{case_id}.png")
        rows.append({"id": case_id, "source_ct": CT_CASES[name], "rotation_variant": v})
    with open(out / "index.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Build the rib DRR cache and the CT-derived validation pairs.")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--out", type=Path, required=True, help="folder for rib_cache.npz and drr_pairs/")
    args = ap.parse_args()
    build_rib_cache(args.data, args.out / "rib_cache.npz")
    write_validation_pairs(args.data, args.out / "drr_pairs")
