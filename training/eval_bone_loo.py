"""Leave-one-out scores of the bone-layer model on the real dual-energy pairs (bs_gusarev_des_samples).

For every DES pair: the model fine-tuned without it (``<run>/des_<id>/best.pt``, ``train_bone --stage des
--fold <id>``; ``<run>/nodules_<id>/best.pt`` when the config has a nodule stage, the stage that ships); its
inference settings, the edge refinement (none or one of ``GUIDED``: guided-filter radius and eps) and the
strength alpha (a grid 0-2), chosen by the mean PSNR gain on the other five films; then the pair scored exactly
as ``lungx evaluate bone-suppression`` scores it (lung field from the anatomy model, least-squares linear match,
PSNR/SSIM/BSR). The stage-1 model (CT-derived pairs only, ``<run>/drr/best.pt``)
never saw a DES film: it is scored the same way. Writes ``<run>/loo.json``; ``chosen_all`` (settings chosen on
all six with the final stage's ``<stage>_all``) is what ``--export`` ships.

    python -m training.eval_bone_loo --config training/configs/bone_cxr.json --run ../runs/bone
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from lungx_core.cxr.bone import BoneLayerModel, refine_edges, subtract_bone
from lungx_core.eval.evaluate import bone_suppression_scores
from lungx_core.models.networks import build_network
from training.bone_data import bone_inference_config, psnr_gain, read_des_pairs
from training.schemas import BoneRun, read_config
from training.train_bone import final_stage, stage_folder

ALPHAS = np.round(np.arange(0.0, 2.0001, 0.05), 2)
GUIDED = (None, (0.004, 1e-2), (0.008, 1e-2), (0.008, 1e-3), (0.016, 1e-3))  # (radius fraction, eps)
KEYS = ("psnr_input", "psnr_output", "ssim_input", "ssim_output", "bsr")


def bone_images(weights: Path, cfg: dict, pairs: list[dict]) -> list[np.ndarray]:
    net = build_network(cfg["arch"], 1, 1, **cfg["arch_options"])
    net.load_state_dict(torch.load(weights, weights_only=True))
    model = BoneLayerModel.from_network(net, bone_inference_config(cfg))
    return [model.bone_image(p["film"]) for p in pairs]


def fit_alpha(pairs: list[dict], bones: list[np.ndarray]) -> float:
    """The alpha of ``ALPHAS`` with the best mean PSNR gain over ``pairs``."""
    return fit_settings(pairs, [{None: b} for b in bones])[1]


def fit_settings(pairs: list[dict], refined: list[dict]) -> tuple:
    """(refinement, alpha, mean gain) with the best mean PSNR gain over ``pairs``; ``refined[i]`` maps each
    refinement of ``GUIDED`` to pair i's bone image."""
    best = (None, 0.0, -np.inf)
    for setting in refined[0]:
        for alpha in ALPHAS:
            gain = float(np.mean([psnr_gain(p["film"], r[setting], p["soft"], p["lung"], alpha)
                                  for p, r in zip(pairs, refined, strict=True)]))
            if gain > best[2] + 1e-9:
                best = (setting, float(alpha), gain)
    return best


def refinements(pair: dict, bone: np.ndarray) -> dict:
    return {g: bone if g is None else refine_edges(bone, pair["film"], *g) for g in GUIDED}


def loo(pairs: list[dict], bones_per_fold: list[list[np.ndarray]]) -> dict:
    """Per-pair scores with the refinement and alpha chosen on the other pairs; ``bones_per_fold[k]`` are fold
    k's (unrefined) bone images of every pair."""
    rows = {}
    for k, pair in enumerate(pairs):
        others = [i for i in range(len(pairs)) if i != k]
        refined = [refinements(pairs[i], bones_per_fold[k][i]) for i in others]
        setting, alpha, _ = fit_settings([pairs[i] for i in others], refined)
        bone = bones_per_fold[k][k] if setting is None else refine_edges(bones_per_fold[k][k], pair["film"], *setting)
        scores = bone_suppression_scores(pair["film"], subtract_bone(pair["film"], bone, alpha), pair["soft"],
                                         pair["lung"])
        rows[pair["id"]] = {"guided": setting, "alpha": alpha, **{key: round(scores[key], 4) for key in KEYS}}
        print(pair["id"], rows[pair["id"]], flush=True)
    mean = {key: round(float(np.mean([r[key] for r in rows.values()])), 4) for key in KEYS}
    mean["psnr_gain"] = round(mean["psnr_output"] - mean["psnr_input"], 4)
    return {"per_pair": rows, "mean": mean}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--run", type=Path, required=True)
    args = ap.parse_args(argv)
    cfg = read_config(args.config, BoneRun)
    pairs = read_des_pairs(args.data)
    report = {}
    stage1 = bone_images(args.run / "drr" / "best.pt", cfg, pairs)
    report["ct_only"] = loo(pairs, [stage1] * len(pairs))
    print("CT-derived pairs only:", report["ct_only"]["mean"], flush=True)
    stage = final_stage(cfg)  # the folds of the stage that ships (a nodule stage's des folds are only its start)
    weights = [stage_folder(args.run, stage, p["id"]) / "best.pt" for p in pairs]
    if all(w.exists() for w in weights):
        report[f"{stage}_finetuned"] = loo(pairs, [bone_images(w, cfg, pairs) for w in weights])
        print(f"{stage} stage, without the scored pair:", report[f"{stage}_finetuned"]["mean"], flush=True)
    final = stage_folder(args.run, stage)
    shipped = final.name if (final / "best.pt").exists() else "drr"
    bones = bone_images(args.run / shipped / "best.pt", cfg, pairs)
    setting, alpha, gain = fit_settings(pairs, [refinements(p, b) for p, b in zip(pairs, bones, strict=True)])
    report["chosen_all"] = {"guided": setting, "alpha": alpha, "mean_gain_on_all_six": round(gain, 4)}
    best = report.get(f"{stage}_finetuned", report["ct_only"])
    report["summary"] = {"shipped_stage": shipped, "loo_des": best["mean"],
                         "ct_only_loo_des": report["ct_only"]["mean"]}
    (args.run / "loo.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report["summary"], indent=2))


if __name__ == "__main__":
    main()
