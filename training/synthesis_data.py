"""Healthy and pathological CXR domains for unpaired translation (synthesis, opacity removal, the pathology
classifier): thoracic crops cached once.

- healthy (domain A, lung masks known): jsrt_scr (SCR masks), NIH "No Finding" adult PA films
  (``adult_pa_clear``; lungs from our cxr_anatomy model).
- pathological (domain B): covid_cxr_gb_seg and covid_cxr_v7labs (their lung masks; V7 images also in the GB
  set are taken once), NIH pneumonia (lungs from cxr_anatomy).

Splits: JSRT and the COVID sets reuse the anatomy model's patient-level splits (training/splits); the NIH set
is split here by ``patient_id`` (20 % validation, seed 0) and its lists written beside them. Every crop is the
rib-cage square (the lung fields widened by a margin) with a linear intensity map (``lungx_core.cxr.thoracic``), the
same code that runs at inference, stored a little larger than the training size for random-crop jitter.

Opacity (issue 7): every crop also carries an opacity mask and whether it is known. covid_cxr_gb_seg has
radiologist opacity masks (its ``opacity`` class, the union of ground glass and consolidation); healthy films
are known to be clear (empty mask); V7 and NIH pneumonia films are opaque somewhere, location unknown.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from lungx_core.cxr.thoracic import CropSpec, resize, thoracic_crop

SPLITS_DIR = Path(__file__).parent / "splits"
NIH = "cxr_nih_nofinding_pneumonia"


@dataclass
class DomainSample:
    dataset: str
    id: str
    domain: str  # "healthy" | "pathological"
    split: str  # "train" | "val"
    lung_source: str  # "reference" (dataset mask) | "model" (cxr_anatomy)


def _rows(data_root: Path, dataset: str) -> list[dict[str, str]]:
    with open(data_root / dataset / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def _split_of(dataset: str) -> dict[str, str]:
    out = {}
    for part in ("train", "val"):
        for line in (SPLITS_DIR / f"{dataset}_{part}.txt").read_text().split():
            out[line] = part
    return out


def nih_splits(rows: list[dict[str, str]], val_fraction: float = 0.2, seed: int = 0) -> dict[str, str]:
    patients = sorted({r["patient_id"] for r in rows})
    random.Random(seed).shuffle(patients)
    val = set(patients[: round(len(patients) * val_fraction)])
    return {r["id"]: ("val" if r["patient_id"] in val else "train") for r in rows}


def list_domain_samples(data_root: Path) -> list[DomainSample]:
    samples = []
    split = _split_of("jsrt_scr")
    samples += [DomainSample("jsrt_scr", r["id"], "healthy", split[r["id"]], "reference")
                for r in _rows(data_root, "jsrt_scr")]
    split = _split_of("covid_cxr_gb_seg")
    samples += [DomainSample("covid_cxr_gb_seg", r["id"], "pathological", split[r["id"]], "reference")
                for r in _rows(data_root, "covid_cxr_gb_seg")]
    split = _split_of("covid_cxr_v7labs")
    samples += [DomainSample("covid_cxr_v7labs", r["id"], "pathological", split[r["id"]], "reference")
                for r in _rows(data_root, "covid_cxr_v7labs") if not r["also_in_covid_cxr_gb_seg"]]
    rows = [r for r in _rows(data_root, NIH)
            if r["group"] == "pneumonia" or (r["group"] == "no_finding" and r["adult_pa_clear"] == "1")]
    split = nih_splits(rows)
    for part in ("train", "val"):
        ids = [r["id"] for r in rows if split[r["id"]] == part]
        (SPLITS_DIR / f"{NIH}_{part}.txt").write_text("\n".join(ids) + "\n")
    samples += [DomainSample(NIH, r["id"], "healthy" if r["group"] == "no_finding" else "pathological",
                             split[r["id"]], "model") for r in rows]
    return samples


def read_gray(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def reference_lung(data_root: Path, s: DomainSample) -> np.ndarray:
    return read_gray(data_root / s.dataset / "masks" / "lung" / f"{s.id}.png") > 127


def reference_opacity(data_root: Path, s: DomainSample) -> tuple[np.ndarray | None, bool]:
    """(opacity mask or None, known) for one sample at its staged resolution."""
    if s.domain == "healthy":
        return None, True
    path = data_root / s.dataset / "masks" / "opacity" / f"{s.id}.png"
    if s.dataset == "covid_cxr_gb_seg" and path.exists():
        return read_gray(path) > 127, True
    return None, False


def build_domain_cache(data_root: Path, out: Path, spec: CropSpec, load_size: int, device: str = "cpu") -> Path:
    """Crop every sample once; NIH lung fields come from the shipped anatomy model."""
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    segmenter = CXRSegmenter(device=device)
    images, lungs, opacities, known, meta = [], [], [], [], []
    for s in list_domain_samples(data_root):
        image = read_gray(data_root / s.dataset / "images" / f"{s.id}.png")
        if s.lung_source == "reference":
            lung = reference_lung(data_root, s)
        else:
            probs = segmenter.predict_probabilities(image)
            lung = (probs[0] > 0.5) | (probs[1] > 0.5)
        if lung.sum() < 0.02 * lung.size:
            print(f"skipped {s.dataset}/{s.id}: lung mask too small", flush=True)
            continue
        crop = thoracic_crop(image, lung, spec, size=load_size)
        images.append(crop.image.astype(np.float16))
        lungs.append(crop.lung)
        opacity, is_known = reference_opacity(data_root, s)
        box = crop.box
        opacities.append(np.zeros_like(crop.lung) if opacity is None else
                         resize(opacity[box.r0 : box.r1, box.c0 : box.c1], crop.lung.shape, mask=True))
        known.append(is_known)
        meta.append(s)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        images=np.stack(images),
        lungs=np.stack(lungs),
        opacity=np.stack(opacities),
        opacity_known=np.array(known),
        dataset=np.array([m.dataset for m in meta]),
        ids=np.array([m.id for m in meta]),
        domain=np.array([m.domain for m in meta]),
        split=np.array([m.split for m in meta]),
    )
    return out


def domain_data(data_root: Path, cache: Path | None, run: Path, crop: dict, load_size: int) -> dict[str, np.ndarray]:
    """The cached domains that every translation-side training script reads: ``cache`` (default
    ``<run>/domains.npz``), built first when missing."""
    path = cache or run / "domains.npz"
    if not path.exists():
        build_domain_cache(data_root, path, CropSpec.from_dict(crop), load_size)
    return load_domain_cache(path)


def load_domain_cache(path: Path) -> dict[str, np.ndarray]:
    z = np.load(path)
    return {k: z[k] for k in z.files}


def lesion_region(lung: np.ndarray, rng: np.random.Generator, area: tuple[float, float]):
    """A lesion of the lesion model planned in ``lung`` (bool, a crop), with a drawn area in ``area``, kind and
    side: the :class:`lungx_core.generative.lesions.Lesion`."""
    from lungx_core.generative.lesions import LesionRequest, plan_lesion

    kinds = ("ggo", "consolidation", "mixed")  # the kinds the shipped translation models were trained with
    request = LesionRequest(area=float(rng.uniform(*area)), kind=kinds[int(rng.integers(len(kinds)))])
    return plan_lesion(lung, request, rng)


def lesion_regions(lungs: np.ndarray, rng: np.random.Generator, area: tuple[float, float]) -> np.ndarray:
    """(B, S, S) float32 regions (:attr:`Lesion.region`) of a lesion drawn in each lung mask (B, S, S)."""
    return np.stack([lesion_region(lung, rng, area).region for lung in lungs])


def insertion_pairs(
    images: np.ndarray, lungs: np.ndarray, idx: np.ndarray, size: int, rng: np.random.Generator,
    area: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(clear, with lesion, region) float32 (B, size, size), images in [0, 1]: a random ``size`` window of each
    cached healthy crop in ``idx`` and the same window with a lesion drawn in by the lesion model, exactly as
    ``lungx synthesize --method insert`` draws it. No flips: they would move the heart."""
    from lungx_core.generative.lesions import apply_lesion

    out: list[list[np.ndarray]] = [[], [], []]
    load = images.shape[-1]
    for i in idx:
        r, c = rng.integers(0, load - size + 1, 2)
        clear = images[i, r : r + size, c : c + size].astype(np.float32)
        lung = lungs[i, r : r + size, c : c + size]
        lesion = lesion_region(lung, rng, area)
        for k, a in enumerate((clear, np.clip(apply_lesion(clear, lung, lesion), 0, 1), lesion.region)):
            out[k].append(a)
    return tuple(np.stack(o).astype(np.float32) for o in out)
