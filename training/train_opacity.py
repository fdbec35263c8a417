"""Train the CXR opacity model (``cxr_opacity``): where on the thoracic crop the lung is opaque, and export it.

    python training/train_opacity.py --config training/configs/opacity_cxr.json --data ../shared/data \
        --run /work/runs/opacity_seg [--cache /work/runs/opacity_data/domains_144.npz] [--threads 2]

It gives opacity removal (issue 7) its activation maps. Supervision is mixed, because only 71 films have pixel
masks:
- pixel loss (BCE + soft Dice) on covid_cxr_gb_seg opacity masks and on healthy films (known empty);
- a multiple-instance loss on opaque films without masks (V7, NIH pneumonia): the mean of the top
  ``mil_top`` fraction of logits inside the lung field must call "opaque" (image-level labels become maps).
Domains, splits and crops are those of the translation models (``training/synthesis_data.py``). The epoch with
the best validation opacity Dice (GB validation films, pooled) is exported with its metrics.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.models.networks import build_network  # noqa: E402
from lungx_core.models.store import save_model  # noqa: E402
from training.common import append_log, centre_window, seed_everything  # noqa: E402
from training.schemas import OpacityRun, read_config
from training.synthesis_data import domain_data  # noqa: E402
from training.train_pathology import auc  # noqa: E402
from training.train_synthesis import random_windows  # noqa: E402

MODEL_NAME = "cxr_opacity"


def top_fraction_mean(logits: torch.Tensor, region: torch.Tensor, fraction: float) -> torch.Tensor:
    """Per image, the mean of the highest ``fraction`` of logits inside ``region`` (B, 1, H, W) -> (B,)."""
    flat = logits.flatten(1).masked_fill(region.flatten(1) < 0.5, float("-inf"))
    k = max(1, int(fraction * logits[0].numel()))
    top = flat.topk(k, dim=1).values
    return torch.where(torch.isfinite(top), top, torch.zeros_like(top)).mean(1)


def pixel_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    from monai.losses import DiceLoss

    dice = DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0)
    return F.binary_cross_entropy_with_logits(logits, target) + dice(logits, target)


@torch.no_grad()
def validate(net, data: dict, val: np.ndarray, size: int, fraction: float) -> dict[str, float]:
    net.eval()
    inter = total = 0.0
    scores = []
    for s in range(0, len(val), 32):
        idx = val[s : s + 32]
        x = torch.from_numpy(centre_window(data["images"][idx], size).astype(np.float32)[:, None])
        logits = net(x)
        lung = torch.from_numpy(centre_window(data["lungs"][idx], size)[:, None].astype(np.float32))
        scores.append(torch.sigmoid(top_fraction_mean(logits, lung, fraction)).numpy())
        gb = data["dataset"][idx] == "covid_cxr_gb_seg"
        if gb.any():
            pred = (torch.sigmoid(logits[gb][:, 0]) > 0.5).numpy()
            ref = centre_window(data["opacity"][idx[gb]], size)
            inter += float((pred & ref).sum())
            total += float(pred.sum() + ref.sum())
    net.train()
    labels = data["domain"][val] == "pathological"
    return {"opacity_dice_gb": 2 * inter / max(total, 1.0), "image_auc": auc(np.concatenate(scores), labels)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=MODEL_NAME,
                    help="model name or .safetensors path to write (default: the shipped model's)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = read_config(args.config, OpacityRun)
    seed_everything(cfg["seed"])
    args.run.mkdir(parents=True, exist_ok=True)
    (args.run / "config.json").write_text(json.dumps(cfg, indent=2))
    data = domain_data(args.data, args.cache, args.run, cfg["crop"], cfg["load_size"])
    train = data["split"] == "train"
    masked = np.nonzero(train & data["opacity_known"] & (data["domain"] == "pathological"))[0]
    clear = np.nonzero(train & (data["domain"] == "healthy"))[0]
    unmasked = np.nonzero(train & ~data["opacity_known"])[0]
    val = np.nonzero(data["split"] == "val")[0]
    print(f"train: {len(masked)} with opacity masks, {len(clear)} clear, {len(unmasked)} opaque without masks",
          flush=True)
    size, fraction, b = cfg["size"], cfg["mil_top"], cfg["batch_size"]
    parts = [(masked, b // 2), (clear, b // 4), (unmasked, b - b // 2 - b // 4)]

    net = build_network("unet", 1, 1, **cfg["arch_options"])
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps = cfg["steps_per_epoch"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps)
    rng = np.random.default_rng(cfg["seed"])
    best, best_state, best_metrics = -1.0, None, {}
    for epoch in range(cfg["epochs"]):
        t0, losses = time.time(), []
        for _ in range(steps):
            idx = np.concatenate([rng.choice(pool, n) for pool, n in parts])
            x, lung, target = random_windows([data["images"], data["lungs"], data["opacity"]], idx, size, rng)
            flip = rng.random(len(idx)) < 0.5
            x, lung, target = (np.where(flip[:, None, None], a[:, :, ::-1], a) for a in (x, lung, target))
            gamma = rng.uniform(*cfg["gamma"], size=(len(idx), 1, 1))
            x = torch.from_numpy((x.astype(np.float32).clip(0, 1) ** gamma).astype(np.float32)[:, None])
            lung = torch.from_numpy(lung[:, None].astype(np.float32))
            target = torch.from_numpy(target[:, None].astype(np.float32))
            logits = net(x)
            n_pix = parts[0][1] + parts[1][1]
            loss = pixel_loss(logits[:n_pix], target[:n_pix])
            mil = top_fraction_mean(logits[n_pix:], lung[n_pix:], fraction)
            loss = loss + cfg["lambda_mil"] * F.binary_cross_entropy_with_logits(mil, torch.ones_like(mil))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        metrics = validate(net, data, val, size, fraction)
        if metrics["opacity_dice_gb"] > best:
            best, best_metrics = metrics["opacity_dice_gb"], {**metrics, "epoch": epoch}
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        append_log(args.run / "log.csv", {"epoch": epoch, "loss": float(np.mean(losses)),
                                          "seconds": round(time.time() - t0, 1), **metrics})
        print(f"epoch {epoch} loss {np.mean(losses):.4f} " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()),
              flush=True)

    config = {
        "arch": "unet",
        "in_channels": 1,
        "classes": ["opacity"],
        "arch_options": cfg["arch_options"],
        "crop": cfg["crop"],
        "size": size,
        "mil_top": fraction,
        "validation": {"n": int(len(val)), "n_gb": int((data["dataset"][val] == "covid_cxr_gb_seg").sum()),
                       **{k: round(float(v), 4) for k, v in best_metrics.items()}},
        "training": {"config": cfg},
    }
    save_model(best_state, config, args.out)
    print(json.dumps(config["validation"]))


if __name__ == "__main__":
    main()
