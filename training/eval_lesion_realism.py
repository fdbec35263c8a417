"""How real do the de-opacifier's synthetic opacities look? A patch classifier, real against synthetic, held out.

Patches of ``--patch`` px of the 144-px thoracic crops of the translation domains (``training/synthesis_data.py``):
- real: centred in the reference opacity of the covid_cxr_gb_seg films (inside their lung);
- synthetic: centred in the lesion of a triple of ``training/opacity_pairs.py`` drawn into a clear crop (JSRT/SCR,
  NIH "No Finding"): procedural lesions of the lesion model and real GB training residuals transplanted;
- the control: clear lung of the GB films (outside their opacity) against clear lung of the clear crops. Its
  AUC is what the two film sources alone give away (scanners, processing), with no opacity on either side;
- so also synthetic lesions drawn into the GB films' own clear lung (``*_in_gb``): real against synthetic with
  the film source the same on both sides, the comparison that measures the lesions' realism.

A small CNN is trained on the training split's patches and scored (ROC AUC) on the validation split's: 0.5 means
the classifier cannot tell them apart. The COVID films are split by patientid, as everywhere.

    python training/eval_lesion_realism.py --cache /work/runs/opacity_data/domains_144.npz [--real-gain 0.7 1.5]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.opacity_pairs import REAL_GAIN  # noqa: E402


def patches_at(image: np.ndarray, region: np.ndarray, n: int, size: int, rng: np.random.Generator) -> list:
    """Up to ``n`` patches of ``image`` centred on random pixels of ``region`` (kept whole inside the image)."""
    half = size // 2
    inner = np.zeros_like(region)
    inner[half : region.shape[0] - half, half : region.shape[1] - half] = True
    rows, cols = np.nonzero(region & inner)
    if rows.size == 0:
        return []
    pick = rng.choice(rows.size, min(n, rows.size), replace=False)
    return [image[r - half : r + half, c - half : c + half] for r, c in zip(rows[pick], cols[pick], strict=True)]


def patch_sets(data: dict, split: str, size: int, rng: np.random.Generator, gain: tuple) -> dict[str, np.ndarray]:
    """{real, procedural, transplanted, gb_clear, clear, procedural_in_gb, transplanted_in_gb} patch stacks of one
    split."""
    from scipy import ndimage as ndi

    from training.opacity_pairs import make_triple, real_residuals

    bank = real_residuals(data)  # GB *training* residuals only
    # without a bank make_triple draws procedural lesions only: no "transplanted" sets then
    kinds = (("procedural", []), ("transplanted", bank)) if bank else (("procedural", []),)
    sets: dict[str, list] = {k: [] for k in ("real", "procedural", "transplanted", "gb_clear", "clear",
                                             "procedural_in_gb", "transplanted_in_gb")}
    in_split = data["split"] == split
    gb = np.nonzero(in_split & (data["dataset"] == "covid_cxr_gb_seg") & data["opacity_known"])[0]
    for i in gb:
        image, lung = data["images"][i].astype(np.float32), data["lungs"][i]
        opacity = data["opacity"][i] & lung
        sets["real"] += patches_at(image, opacity, 6, size, rng)
        clear_lung = lung & ~ndi.binary_dilation(opacity, iterations=4)
        sets["gb_clear"] += patches_at(image, clear_lung, 6, size, rng)
        if clear_lung.sum() > 0.2 * lung.sum():  # synthetic lesions drawn into the same film's clear lung
            for kind, use in kinds:
                t = make_triple(image, clear_lung, rng, use, gain)
                sets[f"{kind}_in_gb"] += patches_at(t.opaque, t.lesion & clear_lung, 3, size, rng)
    for i in np.nonzero(in_split & (data["domain"] == "healthy"))[0]:
        image, lung = data["images"][i].astype(np.float32), data["lungs"][i]
        sets["clear"] += patches_at(image, lung, 2, size, rng)
        for kind, use in kinds:
            t = make_triple(image, lung, rng, use, gain)
            sets[kind] += patches_at(t.opaque, t.lesion, 2, size, rng)
    return {k: np.stack(v).astype(np.float32) for k, v in sets.items() if v}


def train_and_score(pos_train, neg_train, pos_val, neg_val, steps: int, seed: int) -> float:
    """ROC AUC on (pos_val, neg_val) of a small CNN trained on (pos_train, neg_train)."""
    import torch
    from torch import nn

    from training.train_pathology import auc

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, 1),
    )
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    for _ in range(steps):
        p = pos_train[rng.integers(len(pos_train), size=32)]
        q = neg_train[rng.integers(len(neg_train), size=32)]
        x = np.concatenate([p, q])
        x = np.where(rng.random((len(x), 1, 1)) < 0.5, x, x[:, :, ::-1])  # left-right flips
        y = torch.cat([torch.ones(len(p)), torch.zeros(len(q))])
        loss = nn.functional.binary_cross_entropy_with_logits(net(torch.from_numpy(x.copy())[:, None])[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scores = net(torch.from_numpy(np.concatenate([pos_val, neg_val]))[:, None])[:, 0].numpy()
    return float(auc(scores, np.r_[np.ones(len(pos_val)), np.zeros(len(neg_val))].astype(bool)))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="domain cache of training/synthesis_data.py")
    ap.add_argument("--patch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--real-gain", type=float, nargs=2, default=REAL_GAIN, help="of transplanted residuals")
    ap.add_argument("--seeds", type=int, default=3, help="classifiers trained per comparison (AUCs averaged)")
    args = ap.parse_args(argv)

    import torch

    from training.synthesis_data import load_domain_cache

    torch.set_num_threads(2)
    data = load_domain_cache(args.cache)
    rng = np.random.default_rng(0)
    train = patch_sets(data, "train", args.patch, rng, tuple(args.real_gain))
    val = patch_sets(data, "val", args.patch, rng, tuple(args.real_gain))
    out = {"patch": args.patch, "n_val": {k: len(v) for k, v in val.items()}}
    for positive, negative in (("real", "procedural"), ("real", "transplanted"), ("gb_clear", "clear"),
                               ("real", "procedural_in_gb"), ("real", "transplanted_in_gb")):
        aucs = [train_and_score(train[positive], train[negative], val[positive], val[negative], args.steps, s)
                for s in range(args.seeds)]
        out[f"auc_{positive}_vs_{negative}"] = round(float(np.mean(aucs)), 3)
        out[f"auc_{positive}_vs_{negative}_spread"] = [round(min(aucs), 3), round(max(aucs), 3)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
