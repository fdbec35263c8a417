"""Pseudo-labels for CXR anatomy on films without masks (issue 40 item 2: learn from the NIH films).

A shipped anatomy model labels the NIH films of the training split at its own input size (its probabilities
resized to the cache's), averaged over a few intensity variants of each film (so a label must hold under
augmentation, not only once), then each structure is kept only where it is plausible on that film; what fails a
check stays unlabelled (its loss is masked), so a ragged heart or a speck of clavicle never becomes a target.
The NIH films are split by patient (20 % validation, kept out of training), so plausibility on them measures what
the training did not see.

The checks (on the cleaned masks at the cache's size, ``lungx_core.postprocess.measure``):
- lungs: both found, no implausible area, left/right ratio or side flags, each side's confidence >= LUNG_MIN_CONF;
- heart: lungs kept, solidity >= HEART_MIN_SOLIDITY, CTR within HEART_CTR, confidence >= HEART_MIN_CONF;
- each clavicle: lungs kept, found (its largest piece) over at least 1 % of its lung, confidence >= CLAVICLE_MIN_CONF.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lungx_core.anatomy import CXR_CLASSES
from lungx_core.postprocess import CLAVICLE_MIN_FRACTION_OF_LUNG, clean_masks, measure
from lungx_core.preprocess import PreprocessConfig, preprocess_radiograph
from training.cxr_data import write_cache
from training.synthesis_data import NIH, nih_splits

LUNG_MIN_CONF = 0.9
HEART_MIN_SOLIDITY = 0.95  # SCR hearts: 0.974-0.999; the shipped model's NIH median is 0.957
HEART_CTR = (0.35, 0.7)
HEART_MIN_CONF = 0.85
CLAVICLE_MIN_CONF = 0.8
GAMMAS = (0.8, 1.0, 1.25)  # intensity variants averaged into one pseudo-label


def nih_anatomy_splits(data_root: Path) -> dict[str, str]:
    """{film id: 'train' | 'val'} for every NIH film, split by ``patient_id`` (20 % validation, seed 0)."""
    with open(data_root / NIH / "index.csv", newline="") as f:
        return nih_splits(list(csv.DictReader(f)))


def accepted(masks: dict[str, np.ndarray], probabilities: np.ndarray) -> np.ndarray:
    """Which of CXR_CLASSES may serve as a target on this film: (C,) bool, by the checks in the module doc."""
    m = measure(masks, probabilities, None)
    keep = dict.fromkeys(CXR_CLASSES, False)
    lung_flags = {"lung_left_not_found", "lung_right_not_found", "implausible_lung_area",
                  "implausible_left_right_ratio", "left_right_inconsistent"}
    lungs_ok = (not lung_flags & set(m.flags)
                and min(m.confidence["lung_left"], m.confidence["lung_right"]) >= LUNG_MIN_CONF)
    keep["lung_left"] = keep["lung_right"] = lungs_ok
    keep["heart"] = (lungs_ok and m.heart_solidity is not None and m.heart_solidity >= HEART_MIN_SOLIDITY
                     and m.ctr is not None and HEART_CTR[0] <= m.ctr <= HEART_CTR[1]
                     and m.confidence["heart"] >= HEART_MIN_CONF)
    for side in ("left", "right"):
        c = masks[f"clavicle_{side}"]
        keep[f"clavicle_{side}"] = (lungs_ok and c.any()
                                    and c.sum() >= CLAVICLE_MIN_FRACTION_OF_LUNG * masks[f"lung_{side}"].sum()
                                    and m.confidence[f"clavicle_{side}"] >= CLAVICLE_MIN_CONF)
    return np.array([keep[c] for c in CXR_CLASSES])


def build_pseudo_cache(data_root: Path, out: Path, config: PreprocessConfig, model: str = "cxr_anatomy") -> Path:
    """Every NIH film preprocessed as the anatomy cache (same keys as ``cxr_data.build_cache``): training films
    with their accepted pseudo-labels, validation films with none (plausibility is measured on them)."""
    import torch
    from PIL import Image

    from lungx_core.models.store import load_model

    net, model_config = load_model(model, device="cpu")
    # the labeller sees each film at its own input size; its probabilities are resized to the cache's (both
    # letterboxes keep the aspect and are square, so they differ by a scale only)
    own = PreprocessConfig.from_dict(model_config["preprocess"])
    splits = nih_anatomy_splits(data_root)
    images, masks, labelled, meta = [], [], [], []
    for cid, part in sorted(splits.items()):
        film = np.asarray(Image.open(data_root / NIH / "images" / f"{cid}.png").convert("L"))
        img, _ = preprocess_radiograph(film, config)
        seen = img if own == config else preprocess_radiograph(film, own)[0]
        x = torch.as_tensor(np.stack([seen ** g for g in GAMMAS])[:, None], dtype=torch.float32)
        with torch.inference_mode():
            prob = torch.sigmoid(net(x)).mean(0)
            if own.size != config.size:
                prob = torch.nn.functional.interpolate(prob[None], size=(config.size, config.size),
                                                       mode="bilinear", align_corners=False)[0]
            prob = prob.numpy()
        clean = clean_masks(prob)
        lab = accepted(clean, prob) if part == "train" else np.zeros(len(CXR_CLASSES), dtype=bool)
        images.append(img.astype(np.float16))
        masks.append(np.stack([clean[c] & lab[k] for k, c in enumerate(CXR_CLASSES)]))
        labelled.append(lab)
        meta.append((NIH, cid, part))
    weights = [np.ones((config.size, config.size), dtype=bool)] * len(meta)
    return write_cache(out, images, masks, labelled, weights, meta, config, model=np.array(model))
