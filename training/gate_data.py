"""Training data of the frontal-chest gate (``lungx_core/cxr/gate.py``), built once into a cache of 128-px thumbnails.

Classes (``GATE_CLASSES``) and where each comes from (../shared/data only, and what we generate from it):
- frontal_chest: every frontal film of jsrt_scr, covid_cxr_gb_seg, covid_cxr_v7labs, cxr_nih_nofinding_pneumonia and
  bs_gusarev_des_samples (images and soft-tissue images), plus frontal DRRs (within 12 degrees of AP) of every CT
  that covers a whole chest (>= 240 mm head to foot; a short scan projects to a strip no film looks like), so that
  the embedded sample radiograph (a DRR) passes;
- ct_slice: axial, coronal and sagittal CT slices in lung, soft-tissue, bone and full windows, half of the axial ones
  inside a reconstruction circle with a flat value outside (as many scanners store them);
- lateral_or_oblique: DRRs of every CT rotated 35-145 degrees about the body axis, either side, 40 per CT;
- inverted_film: frontal films with inverted grey values (a MONOCHROME1 film read without its photometry);
- not_a_chest_image: procedural pictures (1/f noise, shapes, gradients, stripes, text-like blocks, blends).
The scikit-image sample photographs are not used: data shipped inside packages is not training data here.

Validation: a fixed fifth of the films by a hash of the dataset and id (patients of the COVID sets by patientid), and
two whole CTs (lidc-idri-0001, cip_testinput_ds) for everything made from CTs.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from lungx_core.ct.drr import hu_to_mu
from lungx_core.cxr.gate import GATE_CLASSES, GATE_SIZE, gate_input

FILM_SETS = (
    "jsrt_scr", "covid_cxr_gb_seg", "covid_cxr_v7labs", "cxr_nih_nofinding_pneumonia", "bs_gusarev_des_samples"
)
VAL_CTS = ("lidc-idri-0001", "cip_testinput_ds")
MIN_CHEST_MM = 240.0
WINDOWS = ((-1000, 400), (-160, 240), (-500, 1300), (-1024, 3071))


def is_validation(key: str) -> bool:
    """A fifth of the films, by a hash of ``dataset:patient``: the gate's and the mirror check's split."""
    return int(hashlib.sha1(key.encode()).hexdigest(), 16) % 5 == 0


def film_paths(data: Path) -> list[tuple[Path, str]]:
    """(film, split key) of every frontal film in the shared data."""
    out = []
    for ds in FILM_SETS:
        folder = data / ds
        rows = {}
        if (folder / "index.csv").exists():
            with open(folder / "index.csv", newline="") as f:
                rows = {r["id"]: r for r in csv.DictReader(f)}
        for sub in ("images", "soft_tissue"):
            for p in sorted((folder / sub).glob("*")) if (folder / sub).is_dir() else []:
                row = rows.get(p.stem, {})
                out.append((p, f"{ds}:{row.get('patientid') or p.stem}"))
    return out


def ct_paths(data: Path) -> list[Path]:
    return sorted(data.glob("ct_*/**/ct.nii.gz"))


def _isotropic(path: Path, mm: float = 2.0) -> np.ndarray:
    """A CT (HU, float32) resampled to ``mm`` isotropic voxels in (superior->inferior, anterior->posterior,
    right->left) order, the order a display needs."""
    import SimpleITK as sitk

    img = sitk.DICOMOrient(sitk.ReadImage(str(path)), "LPS")
    size = [max(8, round(sz * sp / mm)) for sz, sp in zip(img.GetSize(), img.GetSpacing(), strict=True)]
    img = sitk.Resample(img, size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(), (mm,) * 3,
                        img.GetDirection(), -1024.0, sitk.sitkFloat32)
    vol = sitk.GetArrayFromImage(img)  # (S->... in LPS: k increases superior), j posterior, i left
    return vol[::-1]  # rows top to bottom = superior to inferior


def _drr(vol: np.ndarray, degrees: float) -> np.ndarray:
    """Line integrals of attenuation through ``vol`` rotated ``degrees`` about the body axis; 0 is AP."""
    mu = hu_to_mu(vol)
    if degrees:
        mu = ndi.rotate(mu, degrees, axes=(1, 2), reshape=True, order=1, mode="constant", cval=0.0)
    return mu.sum(axis=1)  # (rows, cols): columns towards the patient's left at 0 degrees


def _film_look(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A projection made to vary like processed films: windowing, gamma, unsharp masking, noise."""
    a = (image - image.min()) / max(float(np.ptp(image)), 1e-6)
    a = a ** rng.uniform(0.6, 1.6)
    if rng.random() < 0.5:
        a = a + rng.uniform(0.3, 1.5) * (a - ndi.gaussian_filter(a, rng.uniform(2, 6)))
    return a + rng.normal(0, rng.uniform(0, 0.02), a.shape)


def _scan_field(plane: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An axial slice as many scanners store it: the reconstruction circle, with a flat value outside."""
    rows, cols = plane.shape
    yy, xx = np.mgrid[:rows, :cols]
    radius = min(rows, cols) / 2 * rng.uniform(0.85, 1.05)
    outside = (yy - rows / 2) ** 2 + (xx - cols / 2) ** 2 > radius**2
    return np.where(outside, rng.uniform(plane.min(), plane.max()), plane)


def procedural(rng: np.random.Generator, size: int = 192) -> np.ndarray:
    """A non-chest picture: 1/f noise, shapes, gradients, stripes, text-like blocks, or a blend of two."""
    kind = rng.integers(6)
    yy, xx = np.mgrid[:size, :size] / size
    if kind == 0:  # 1/f noise (natural-image statistics)
        f = np.fft.fftfreq(size)
        radius = np.sqrt(f[:, None] ** 2 + f[None] ** 2) + 1.0 / size
        spectrum = (rng.normal(size=(size, size)) + 1j * rng.normal(size=(size, size))) / radius ** rng.uniform(1, 2)
        img = np.fft.ifft2(spectrum).real
    elif kind == 1:  # shapes
        img = np.full((size, size), rng.uniform())
        for _ in range(rng.integers(3, 15)):
            cy, cx, ry, rx = rng.uniform(0, 1, 2).tolist() + rng.uniform(0.03, 0.3, 2).tolist()
            inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1 if rng.random() < 0.5 else (
                (abs(yy - cy) < ry) & (abs(xx - cx) < rx))
            img[inside] = rng.uniform()
    elif kind == 2:  # gradients
        img = rng.uniform(-1, 1) * yy + rng.uniform(-1, 1) * xx + rng.uniform(-1, 1) * (yy * xx)
    elif kind == 3:  # stripes and grids
        img = np.sin(2 * np.pi * (rng.uniform(2, 30) * yy * rng.uniform(-1, 1) + rng.uniform(2, 30) * xx))
        if rng.random() < 0.5:
            img = img * np.sin(2 * np.pi * rng.uniform(2, 30) * yy)
    elif kind == 4:  # text-like blocks on a page
        img = np.full((size, size), rng.uniform(0.7, 1.0))
        for r in range(rng.integers(4, 12), size - 8, rng.integers(8, 16)):
            c = rng.integers(4, 20)
            while c < size - 10:
                w = rng.integers(3, 20)
                img[r : r + rng.integers(3, 7), c : c + w] = rng.uniform(0, 0.3)
                c += w + rng.integers(2, 6)
    else:  # a blend of two
        img = procedural(rng, size) * rng.uniform(0.3, 0.7) + procedural(rng, size)
    return ndi.gaussian_filter(img, rng.uniform(0, 2)) + rng.normal(0, rng.uniform(0, 0.05), img.shape)


def read_film(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("F"), dtype=np.float32)


def build_cache(data: Path, out: Path, seed: int = 0) -> Path:
    """Thumbnails (uint8, N x 128 x 128), labels (index into GATE_CLASSES), split ("train"/"val") and source."""
    rng = np.random.default_rng(seed)
    images, labels, splits, sources = [], [], [], []

    def add(array: np.ndarray, label: str, val: bool, source: str) -> None:
        images.append(np.round(gate_input(array, GATE_SIZE) * 255).astype(np.uint8))
        labels.append(GATE_CLASSES.index(label))
        splits.append("val" if val else "train")
        sources.append(source)

    films = film_paths(data)
    for path, key in films:
        film = read_film(path)
        add(film, "frontal_chest", is_validation(key), str(path.relative_to(data)))
        if rng.random() < 0.4:
            add(film.max() - film, "inverted_film", is_validation(key), f"inverted {path.relative_to(data)}")
    print(f"{len(films)} films", flush=True)
    for ct_path in ct_paths(data):
        name = ct_path.parent.name
        val = name in VAL_CTS
        vol = _isotropic(ct_path)
        whole_chest = vol.shape[0] * 2.0 >= MIN_CHEST_MM
        for degrees in rng.uniform(-12, 12, 6 if whole_chest else 0):
            add(_film_look(_drr(vol, float(degrees)), rng), "frontal_chest", val, f"drr {name} {degrees:.0f}")
        for degrees in np.concatenate([rng.uniform(35, 145, 20), -rng.uniform(35, 145, 20)]):
            drr = _film_look(_drr(vol, float(degrees)), rng)
            add(drr[:, ::-1] if rng.random() < 0.5 else drr, "lateral_or_oblique", val, f"drr {name} {degrees:.0f}")
        for axis, count in ((0, 30), (1, 8), (2, 8)):
            for index in rng.integers(vol.shape[axis] // 6, vol.shape[axis] * 5 // 6, count):
                lo, hi = WINDOWS[rng.integers(len(WINDOWS))]
                plane = np.clip(np.take(vol, index, axis=axis), lo, hi)
                if axis == 0 and rng.random() < 0.5:
                    plane = _scan_field(plane, rng)
                add(plane, "ct_slice", val, f"ct {name} axis{axis} {index}")
        print(f"{name}: done", flush=True)
    for i in range(700):
        add(procedural(rng), "not_a_chest_image", i % 5 == 0, f"procedural {i}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=np.stack(images), labels=np.array(labels), split=np.array(splits),
                        source=np.array(sources))
    return out
