"""CXR anatomy training data: patient-level splits and a preprocessed cache built from ../shared/data.

Per-dataset label availability (label_mask per sample):
- jsrt_scr: lungs L/R, heart, clavicles (the SCR clavicle mask is split by side).
- covid_cxr_gb_seg: lungs L/R, and the heart as the radiologists' cardiomediastinum below the level where
  the heart starts on JSRT/SCR films (HEART_TOP_FRACTION of the lung height): the only heart borders we have
  on COVID (often AP, portable) films, where a heart learnt from JSRT PA films alone comes out far too narrow.
- covid_cxr_v7labs: lung union only; split into L/R by connected components where the two lungs are
  separate, otherwise the sample is dropped. Its "ignore" regions (devices/markup) get zero pixel weight.
The COVID sets share patients and images, so they are split jointly by patientid (and original file name).
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from lungx_core.anatomy import CXR_CLASSES
from lungx_core.preprocess import PreprocessConfig, letterbox_mask, preprocess_radiograph

DATASETS = ("jsrt_scr", "covid_cxr_gb_seg", "covid_cxr_v7labs")
SPLITS_DIR = Path(__file__).parent / "splits"

# Median top row of the SCR heart, as a fraction of the lung fields' height from their top (measured on all 247
# JSRT/SCR films: 5-95 % range 0.40-0.57); the GB cardiomediastinum starts at about 0.22 (aorta, upper
# mediastinum) and ends at about 0.92, as the SCR heart (0.88).
HEART_TOP_FRACTION = 0.475


@dataclass
class Sample:
    dataset: str
    id: str
    group: str  # split unit: a patient


def _read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("L"))


def read_mask(path: Path) -> np.ndarray:
    """A 0/255 mask PNG as bool."""
    return _read_png(path) > 127


def _index(data_root: Path, dataset: str) -> list[dict[str, str]]:
    with open(data_root / dataset / "index.csv", newline="") as f:
        return list(csv.DictReader(f))


def list_samples(data_root: Path) -> list[Sample]:
    samples = []
    # Images that appear in both COVID sets under one file name must land in the same split: the first
    # patient seen with a file name owns it.
    group_of_file: dict[str, str] = {}
    for ds in DATASETS:
        for row in _index(data_root, ds):
            if ds == "jsrt_scr":
                group = f"jsrt:{row['id']}"
            else:
                group = group_of_file.setdefault(row["original_filename"], f"covid:{row['patientid']}")
            samples.append(Sample(ds, row["id"], group))
    return samples


SPLIT_SEED = 0  # the committed split (training/splits/); a training run's own seed never changes it


def make_splits(samples: list[Sample], val_fraction: float = 0.2, seed: int = SPLIT_SEED) -> dict[str, str]:
    """Assign each patient group to train or val; returns {'dataset/id': split}."""
    rng = random.Random(seed)
    groups = sorted({s.group for s in samples})
    jsrt = [g for g in groups if g.startswith("jsrt:")]
    covid = [g for g in groups if g.startswith("covid:")]
    val = set()
    for pool in (jsrt, covid):
        rng.shuffle(pool)
        val.update(pool[: round(len(pool) * val_fraction)])
    return {f"{s.dataset}/{s.id}": ("val" if s.group in val else "train") for s in samples}


def write_split_files(samples: list[Sample], splits: dict[str, str]) -> None:
    SPLITS_DIR.mkdir(exist_ok=True)
    for ds in DATASETS:
        for part in ("train", "val"):
            ids = [s.id for s in samples if s.dataset == ds and splits[f"{ds}/{s.id}"] == part]
            (SPLITS_DIR / f"{ds}_{part}.txt").write_text("\n".join(ids) + "\n")


def split_by_side(mask: np.ndarray, min_fraction: float = 0.02) -> tuple[np.ndarray, np.ndarray] | None:
    """Split a two-lung (or two-clavicle) mask into (patient-left = image-right, patient-right) halves.

    Components are assigned by centroid relative to the midpoint of the two largest. None if the mask does
    not hold two separate sizeable components.
    """
    labels, n = ndi.label(mask)
    if n < 2:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    big = np.argsort(sizes)[::-1][:2] + 1
    if sizes[big[1] - 1] < min_fraction * mask.sum():
        return None
    centroids = ndi.center_of_mass(mask, labels, range(1, n + 1))
    mid = (centroids[big[0] - 1][1] + centroids[big[1] - 1][1]) / 2
    cols = np.array([c[1] for c in centroids])
    image_right = np.isin(labels, np.nonzero(cols > mid)[0] + 1)
    image_left = mask & ~image_right
    return image_right, image_left


def heart_from_cardiomediastinum(cardiomediastinum: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """The heart label of a film that has only a cardiomediastinum mask: its part below HEART_TOP_FRACTION of
    the lung fields' height. (H, W) bool -> (H, W) bool; empty when either mask is empty."""
    rows = np.nonzero(lungs.any(axis=1))[0]
    if rows.size == 0 or not cardiomediastinum.any():
        return np.zeros_like(cardiomediastinum, dtype=bool)
    top = int(round(rows[0] + HEART_TOP_FRACTION * (rows[-1] - rows[0])))
    heart = cardiomediastinum.copy()
    heart[:top] = False
    return heart


def load_targets(data_root: Path, s: Sample) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(masks (C,H,W) bool, label_mask (C,) bool, ignore (H,W) bool or None) at the staged resolution."""
    d = data_root / s.dataset / "masks"
    shape = _read_png(data_root / s.dataset / "images" / f"{s.id}.png").shape
    masks = np.zeros((len(CXR_CLASSES), *shape), dtype=bool)
    labelled = np.zeros(len(CXR_CLASSES), dtype=bool)
    ignore = None
    if s.dataset == "jsrt_scr":
        masks[0] = read_mask(d / "lung_left" / f"{s.id}.png")
        masks[1] = read_mask(d / "lung_right" / f"{s.id}.png")
        masks[2] = read_mask(d / "heart" / f"{s.id}.png")
        sides = split_by_side(read_mask(d / "clavicles" / f"{s.id}.png"), min_fraction=0.1)
        if sides is not None:
            masks[3], masks[4] = sides
            labelled[3:5] = True
        labelled[:3] = True
    elif s.dataset == "covid_cxr_gb_seg":
        masks[0] = read_mask(d / "lung_left" / f"{s.id}.png")
        masks[1] = read_mask(d / "lung_right" / f"{s.id}.png")
        if not (masks[0].any() and masks[1].any()):
            return None
        labelled[:2] = True
        cardiomediastinum = read_mask(d / "cardiomediastinum" / f"{s.id}.png")
        masks[2] = heart_from_cardiomediastinum(cardiomediastinum, masks[0] | masks[1])
        labelled[2] = bool(masks[2].any())
    else:
        sides = split_by_side(read_mask(d / "lung" / f"{s.id}.png"))
        if sides is None:
            return None
        masks[0], masks[1] = sides
        labelled[:2] = True
        ignore_path = d / "ignore" / f"{s.id}.png"
        if ignore_path.exists():
            ignore = read_mask(ignore_path)
    return masks, labelled, ignore


def build_cache(data_root: Path, out: Path, config: PreprocessConfig) -> Path:
    """Preprocess every sample once (the slow CLAHE step) and store arrays in one compressed .npz, split as
    ``training/splits/`` says (SPLIT_SEED: every run, whatever its own seed, trains and validates on the same
    films)."""
    samples = list_samples(data_root)
    splits = make_splits(samples)
    write_split_files(samples, splits)
    images, masks, labelled, weights, meta = [], [], [], [], []
    for s in samples:
        targets = load_targets(data_root, s)
        if targets is None:
            continue
        m, lab, ignore = targets
        img, box = preprocess_radiograph(_read_png(data_root / s.dataset / "images" / f"{s.id}.png"), config)
        images.append(img.astype(np.float16))
        masks.append(np.stack([letterbox_mask(c, box) for c in m]))
        labelled.append(lab)
        w = np.ones((config.size, config.size), dtype=bool) if ignore is None else ~letterbox_mask(ignore, box)
        weights.append(w)
        meta.append((s.dataset, s.id, splits[f"{s.dataset}/{s.id}"]))
    return write_cache(out, images, masks, labelled, weights, meta, config)


def write_cache(out: Path, images: list, masks: list, labelled: list, weights: list,
                meta: list[tuple[str, str, str]], config: PreprocessConfig, **extra) -> Path:
    """One compressed .npz of preprocessed films (``load_cache`` reads it): per film its image, (C, H, W) masks,
    (C,) labelled flags, (H, W) pixel weights and (dataset, id, split); ``extra`` arrays are stored beside them."""
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        out,
        images=np.stack(images),
        masks=np.packbits(np.stack(masks), axis=-1),
        labelled=np.stack(labelled),
        weights=np.packbits(np.stack(weights), axis=-1),
        dataset=np.array([m[0] for m in meta]),
        ids=np.array([m[1] for m in meta]),
        split=np.array([m[2] for m in meta]),
        preprocess=np.array(repr(config.to_dict())),
        **extra,
    )
    return out


def load_cache(path: Path) -> dict[str, np.ndarray]:
    z = np.load(path)
    size = z["images"].shape[-1]
    return {
        "images": z["images"],
        "masks": np.unpackbits(z["masks"], axis=-1)[..., :size].astype(bool),
        "labelled": z["labelled"],
        "weights": np.unpackbits(z["weights"], axis=-1)[..., :size].astype(bool),
        "dataset": z["dataset"],
        "ids": z["ids"],
        "split": z["split"],
    }
