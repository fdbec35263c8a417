"""A no-network baseline for opacity removal, scored like the shipped remover (``cxr_opacity_removal`` card).

Inside the shipped remover's activation mask (same anatomy lungs, thoracic crop, ``cxr_opacity`` map and
activation spec as ``lungx remove-opacity``), take away the low-pass of how far the crop lies above the film's
clear-lung level (a percentile of the crop's lung outside the mask); the change goes back onto the film as a
residual. It only ever darkens. It is not shipped: it gives the lung probes back more of the hidden lung by
flattening the masked zone into a dark patch, erasing rib shadows and carving new borders (see the card's
``structure_kept_inside``), and on exact synthetic pairs it is further from the clear film than the input.

    python training/eval_density_baseline.py --data ../shared/data --split val [--percentile 40 --detail 1.5]
    python training/eval_density_baseline.py --pairs /work/runs/opacity_data/domains_144.npz   # synthetic pairs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def excess_density(crop: np.ndarray, mask: np.ndarray, lung: np.ndarray, percentile: float, detail: float):
    """The low-pass (sigma ``detail`` crop px) of how far ``crop`` lies above the ``percentile`` of its lung
    outside ``mask``, clipped at 0 (float32). A lung opaque throughout falls back to its 10th percentile."""
    from scipy import ndimage as ndi

    clear = lung & (mask < 0.05)
    level = np.percentile(crop[clear], percentile) if clear.sum() >= 0.05 * max(lung.sum(), 1) else (
        np.percentile(crop[lung], 10))
    return np.clip(ndi.gaussian_filter(crop.astype(np.float32) - np.float32(level), detail), 0, None)


def score_pairs(cache: Path, percentile: float, detail: float) -> dict:
    """PSNR inside the lesion of exact (opaque, clear, mask) triples on the healthy validation crops (those of
    ``train_deopacifier``'s validation, seed 1234): the input, the shipped de-opacifier and this baseline."""
    from lungx_core.tasks.opacity_removal import OpacityRemover
    from training.opacity_pairs import make_triple, real_residuals
    from training.synthesis_data import load_domain_cache
    from training.train_deopacifier import psnr

    data = load_domain_cache(cache)
    bank = real_residuals(data)
    network = OpacityRemover(device="cpu")
    margin = (data["images"].shape[-1] - network.spec.size) // 2
    rng = np.random.default_rng(1234)
    scores: dict[str, list[float]] = {"input": [], "network": [], "density": []}
    for i in np.nonzero((data["split"] == "val") & (data["domain"] == "healthy"))[0]:
        t = make_triple(data["images"][i].astype(np.float32), data["lungs"][i], rng, bank)
        window = (slice(margin, margin + network.spec.size),) * 2
        opaque, clear, mask, lesion = (a[window] for a in (t.opaque, t.clear, t.mask, t.lesion))
        if not lesion.any():
            continue
        lung = data["lungs"][i][window]
        outputs = {"input": opaque, "network": network.translate_crops(opaque[None], mask[None])[0],
                   "density": opaque - mask * excess_density(opaque, mask, lung, percentile, detail)}
        for name, out in outputs.items():
            scores[name].append(psnr(out, clear, lesion))
    return {"n": len(scores["input"]),
            **{f"psnr_in_lesion_{k}": round(float(np.mean(v)), 2) for k, v in scores.items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--split", default="val", choices=("train", "val"))
    ap.add_argument("--percentile", type=float, default=40.0)
    ap.add_argument("--detail", type=float, default=1.5)
    ap.add_argument("--per-case", type=Path)
    ap.add_argument("--pairs", type=Path, help="domain cache: score synthetic pairs instead of the GB films")
    ap.add_argument("--reference-mask", action="store_true",
                    help="use each film's reference opacity mask (softened like an activation mask) instead of the "
                    "opacity model's: what this removal could give back with a perfect mask")
    args = ap.parse_args(argv)
    if args.pairs:
        print(json.dumps(score_pairs(args.pairs, args.percentile, args.detail)))
        return
    if args.data is None:
        ap.error("--data is required without --pairs")

    from lungx_core.cxr.pathology import PathologyClassifier
    from lungx_core.cxr.thoracic import resize, thoracic_crop
    from lungx_core.eval.evaluate import discover_cases, evaluate_opacity_removal
    from lungx_core.eval.runners import lung_finder
    from lungx_core.generative.opacity import soften_mask
    from lungx_core.io.readers import read_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter
    from lungx_core.tasks.opacity_removal import OpacityRemover, put_back
    from training.cxr_data import SPLITS_DIR, read_mask

    remover = OpacityRemover(device="cpu")  # for its crop spec, opacity model and activation spec only
    find_lungs = lung_finder(CXRSegmenter(device="cpu"))
    rows = []

    ids = (SPLITS_DIR / f"covid_cxr_gb_seg_{args.split}.txt").read_text().split()
    root = args.data / "covid_cxr_gb_seg"
    reference = {}  # film digest -> its reference opacity mask (evaluate hands remove() the pixels only)
    if args.reference_mask:
        for case in discover_cases(root, ids):
            path = root / "masks" / "opacity" / f"{case.case_id}.png"
            if path.exists():
                reference[hashlib.sha1(read_radiograph(case.image).array.tobytes()).hexdigest()] = read_mask(path)

    def remove(image: np.ndarray):
        crop = thoracic_crop(image, find_lungs(image), remover.spec)
        if args.reference_mask:
            box, opacity = crop.box, reference[hashlib.sha1(image.tobytes()).hexdigest()]
            hard = resize(opacity[box.r0 : box.r1, box.c0 : box.c1].astype(np.float32), crop.image.shape) >= 0.5
            mask = soften_mask(hard, remover.activation.grow, remover.activation.soften)
        else:
            mask = remover.activation_of(crop)
        cleared = crop.image - mask * excess_density(crop.image, mask, crop.lung, args.percentile, args.detail)
        return put_back(image, crop, cleared, mask)

    summary = evaluate_opacity_removal(
        root, remove, lung_finder(CXRSegmenter("cxr_lung_probe", "cpu")),
        PathologyClassifier(device="cpu").probability, ids, on_case=lambda cid, s: rows.append({"id": cid, **s}),
        second_probe=lung_finder(CXRSegmenter("cxr_lung_probe_attention", "cpu")))
    if args.per_case:
        import csv

        with open(args.per_case, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
