"""Train the posterior-rib mask model on CT-derived radiographs (``training/rib_data.py``).

Every step renders new film-like radiographs from the cached DRR pairs: bone contrast scaled (real films show
bone more than a 70-keV DRR does), percentile windowing, gamma, scatter (a broad blur added), edge enhancement
(unsharp masking, as film processing does), noise, and a random affine (rotation, anisotropic scale, shift)
with a left-right flip, so the model meets the variety of real films. Validation: Dice on the projections of
the held-out CT (``rib_data.VALIDATION_CT``) at a fixed mid-range appearance.

    python -m training.train_ribs --config training/configs/ribs_cxr.json --run ../runs/ribs --threads 1
    python -m training.train_ribs --config training/configs/ribs_cxr.json --run ../runs/ribs --export
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from lungx_core.models.networks import build_network
from training.common import append_log, blur, random_affine, resume, save_checkpoint, start_run
from training.rib_data import VALIDATION_CT, build_rib_cache
from training.schemas import RibsRun


def render_films(drr: np.ndarray, soft: np.ndarray, rng: np.random.Generator | None) -> torch.Tensor:
    """(N, 1, H, W) film-like images in [0, 1] from DRR pairs; ``rng`` None gives the fixed validation look."""
    films = []
    for d, s in zip(drr.astype(np.float32), soft.astype(np.float32), strict=True):
        k = 2.5 if rng is None else rng.uniform(1.5, 3.5)
        x = torch.from_numpy(s + k * (d - s))[None, None]
        lo_p, hi_p = (0.5, 99.5) if rng is None else (rng.uniform(0, 3), rng.uniform(97, 100))
        lo, hi = np.percentile(x.numpy(), [lo_p, hi_p])
        x = ((x - float(lo)) / max(float(hi - lo), 1e-6)).clamp(0, 1)
        if rng is not None:
            x = x ** rng.uniform(0.6, 1.8)
            x = x + rng.uniform(0, 0.4) * blur(x, rng.uniform(10, 30))
            x = x + rng.uniform(0, 1.5) * (x - blur(x, rng.uniform(2, 8)))
            x = blur(x, rng.uniform(0.3, 1.2)) + rng.uniform(0, 0.03) * torch.randn_like(x)
            lo, hi = np.percentile(x.numpy(), [0.5, 99.5])
            x = ((x - float(lo)) / max(float(hi - lo), 1e-6)).clamp(0, 1)
        films.append(x[0])
    return torch.stack(films)


def dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    p = logits > 0
    return float(2 * (p & target).sum() / max(int(p.sum() + target.sum()), 1))


def main(argv=None) -> None:
    args, cfg = start_run(__doc__, RibsRun, argv, exportable=True)
    cache = np.load(build_rib_cache(args.data, args.run / "rib_cache.npz", cfg["size"]))
    val = cache["case"] == VALIDATION_CT
    train_idx, val_idx = np.where(~val)[0], np.where(val)[0]
    val_x = render_films(cache["drr"][val_idx], cache["soft"][val_idx], None)
    val_y = torch.from_numpy(cache["ribs"][val_idx][:, None])
    net = build_network(cfg["arch"], 1, 1, **cfg["arch_options"])
    if args.export:
        return export_model(args, cfg, net, val_x, val_y)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["lr"], total_steps=cfg["epochs"] * cfg["steps_per_epoch"])
    start, best = resume(args.run, net, opt, sched)
    rng = np.random.default_rng(cfg["seed"] + start)
    for epoch in range(start, cfg["epochs"]):
        net.train()
        t0, losses = time.perf_counter(), []
        for _ in range(cfg["steps_per_epoch"]):
            idx = rng.choice(train_idx, cfg["batch_size"])
            x = render_films(cache["drr"][idx], cache["soft"][idx], rng)
            x, y = random_affine([x, torch.from_numpy(cache["ribs"][idx][:, None]).float()], rng, scale=(0.8, 1.2),
                                 shift=0.1, padding=["border", "zeros"])
            y = y > 0.5
            logits = net(x)
            prob = torch.sigmoid(logits)
            yf = y.float()
            soft_dice = 1 - (2 * (prob * yf).sum() + 1) / (prob.sum() + yf.sum() + 1)
            loss = F.binary_cross_entropy_with_logits(logits, yf) + soft_dice
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        net.eval()
        with torch.inference_mode():
            score = dice(net(val_x), val_y)
        if score > best:
            best = score
            torch.save(net.state_dict(), args.run / "best.pt")
        save_checkpoint(args.run, net, opt, sched, epoch, best)
        row = {"epoch": epoch, "loss": round(float(np.mean(losses)), 4), "val_dice": round(score, 4),
               "seconds": round(time.perf_counter() - t0, 1)}
        append_log(args.run / "log.csv", row)
        print(row, flush=True)


def export_model(args, cfg, net, val_x, val_y) -> None:
    """Ship ``best.pt`` as ``lungx_core/weights/<name>`` (fp16 safetensors + JSON) with its validation Dice."""
    from lungx_core.models.store import WEIGHTS_DIR, save_model

    state = torch.load(args.run / "best.pt", weights_only=True)
    net.load_state_dict({k: v.half().float() for k, v in state.items()})
    with torch.inference_mode():
        score = dice(net.eval()(val_x), val_y)
    config = {
        "arch": cfg["arch"], "arch_options": cfg["arch_options"], "in_channels": 1, "classes": ["posterior_ribs"],
        "size": cfg["size"], "low_percentile": 0.5, "high_percentile": 99.5,
        "metrics": {"val_dice_fp16": round(score, 4), "validation_ct": VALIDATION_CT},
    }
    save_model(state, config, WEIGHTS_DIR / cfg["name"])
    print(f"exported {cfg['name']}: held-out CT Dice (fp16) {score:.4f}")


if __name__ == "__main__":
    main()
