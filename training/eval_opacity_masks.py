"""The opacity model's activation masks on the validation films of the translation domains (``cxr_opacity`` card).

Per validation film of the domain cache (``training/synthesis_data.py``; 144-px thoracic crops, resized to the
model's input size), the adaptive activation mask of inference (``lungx_core.generative.opacity``):
- pooled recall and precision of the reference opacity (GB films with an opacity in their lung), and the pooled
  opacity Dice of the probability map at 0.5;
- the share of clear and of opaque films that pass the image-level gate (a non-empty mask).

    python training/eval_opacity_masks.py --cache /work/runs/opacity_data/domains_144.npz [--model PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, required=True, help="domain cache of training/synthesis_data.py")
    ap.add_argument("--model", default="cxr_opacity", help="opacity model name or .safetensors path")
    ap.add_argument("--split", default="val", choices=("train", "val"), help="tune on train, report on val")
    ap.add_argument("--hysteresis", type=float, default=1.0, help="ActivationSpec.hysteresis")
    args = ap.parse_args(argv)

    from lungx_core.cxr.thoracic import resize
    from lungx_core.generative.opacity import ActivationSpec, OpacityModel, activation_mask
    from training.synthesis_data import load_domain_cache

    data = load_domain_cache(args.cache)
    model = OpacityModel(args.model, "cpu")
    size = model.spec.size
    val = np.nonzero(data["split"] == args.split)[0]
    spec = ActivationSpec(hysteresis=args.hysteresis)
    hit = mask_total = ref_total = inter = pred_total = 0
    passed = {"healthy": [], "pathological": []}
    for i in val:
        crop = resize(data["images"][i].astype(np.float32), (size, size))
        lung = resize(data["lungs"][i].astype(np.float32), (size, size), mask=True)
        probability = model.probability_of_crops(crop[None])[0]
        mask = activation_mask(probability, lung, spec) > 0
        passed[str(data["domain"][i])].append(bool(mask.any()))
        if data["dataset"][i] == "covid_cxr_gb_seg" and data["opacity_known"][i]:
            ref = resize((data["opacity"][i] & data["lungs"][i]).astype(np.float32), (size, size), mask=True)
            if ref.any():
                hit += int((mask & ref).sum())
                mask_total += int(mask.sum())
                ref_total += int(ref.sum())
                pred = probability > 0.5
                inter += int((pred & ref).sum())
                pred_total += int(pred.sum())
    print(json.dumps({
        "model": str(args.model),
        "split": args.split,
        "hysteresis": args.hysteresis,
        "n_val": int(len(val)),
        "activation_recall_gb": round(hit / max(ref_total, 1), 4),
        "activation_precision_gb": round(hit / max(mask_total, 1), 4),
        "opacity_dice_gb_in_lung": round(2 * inter / max(pred_total + ref_total, 1), 4),
        "clear_films_passing_gate": round(float(np.mean(passed["healthy"])), 4),
        "opaque_films_passing_gate": round(float(np.mean(passed["pathological"])), 4),
    }))


if __name__ == "__main__":
    main()
