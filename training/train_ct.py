"""Train the CT lung network (2-D axial slices, right/left lung) on classical pseudo-labels with synthetic
pathology painted inside the lungs.

    python training/train_ct.py --config training/configs/ct_unet.json --data ../shared/data --run /work/runs/ct_unet

Seeded and resumable (``last.pt`` in the run folder, outside git). ``log.csv`` has per-epoch loss and volume
Dice per validation case; ``best.pt`` is the epoch with the best mean Dice on the validation CT (the test CT,
ct_slicerio_chest4, is logged but never used to select).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.models.networks import build_network  # noqa: E402
from lungx_core.preprocess import ct_window  # noqa: E402
from training.common import append_log, build_once, resume, save_checkpoint, start_run  # noqa: E402
from training.ct_data import build_cache, load_cache  # noqa: E402
from training.losses import SegmentationLoss  # noqa: E402
from training.schemas import CTSegmentationRun  # noqa: E402
from training.synthetic_pathology import insert_pathology  # noqa: E402


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.stack([labels == 1, labels == 2], axis=-3).astype(np.float32)


def make_batch(hu: np.ndarray, labels: np.ndarray, cfg: dict, rng: np.random.Generator):
    """Synthetic pathology and intensity changes in HU, then one random affine per sample on the batch."""
    a = cfg["augment"]
    images = []
    for h, lab in zip(hu, labels, strict=True):
        h = h.astype(np.float32)
        lung = lab > 0
        if lung.sum() > 200 and rng.random() < a["pathology_prob"]:
            for _ in range(rng.integers(1, 3)):
                side = lung if rng.random() < 0.4 else lab == rng.integers(1, 3)
                h = insert_pathology(h, side, rng)
        h = h * rng.uniform(0.95, 1.05) + rng.uniform(-a["hu_shift"], a["hu_shift"])
        if rng.random() < 0.5:
            h = h + rng.standard_normal(h.shape).astype(np.float32) * rng.uniform(0, a["noise_hu"])
        images.append(ct_window(h))
    x = torch.from_numpy(np.stack(images))[:, None]
    y = torch.from_numpy(one_hot(labels))
    if rng.random() < 0.3:  # smooth reconstruction kernels and thick slices
        x = _blur(x, rng.uniform(0.5, 1.2))
    n = len(x)
    angle = np.radians(rng.uniform(-a["rotate_deg"], a["rotate_deg"], n))
    scale = np.exp(rng.uniform(-np.log(a["scale"]), np.log(a["scale"]), n))
    shift = rng.uniform(-a["translate"], a["translate"], (n, 2)) * 2
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0] = np.cos(angle) / scale
    theta[:, 0, 1] = -np.sin(angle) / scale
    theta[:, 1, 0] = np.sin(angle) / scale
    theta[:, 1, 1] = np.cos(angle) / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(torch.from_numpy(theta), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    y = (F.grid_sample(y, grid, mode="bilinear", padding_mode="zeros", align_corners=False) >= 0.5).float()
    return x, y


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    r = int(math.ceil(2 * sigma))
    k = torch.exp(-(torch.arange(-r, r + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


@torch.no_grad()
def validate(net, data: dict, split: str, batch: int = 32) -> dict[str, float]:
    """Volume Dice per case and lung (summed over the case's slices) at the training resolution."""
    net.eval()
    out: dict[str, float] = {}
    idx_all = np.nonzero(data["split"] == split)[0]
    for case in sorted(set(data["case"][idx_all])):
        idx = idx_all[data["case"][idx_all] == case]
        inter, total = np.zeros(2), np.zeros(2)
        for start in range(0, len(idx), batch):
            sel = idx[start : start + batch]
            x = torch.from_numpy(ct_window(data["hu"][sel]))[:, None]
            pred = (net(x) > 0).numpy()
            truth = one_hot(data["labels"][sel]).astype(bool)
            inter += (pred & truth).sum(axis=(0, 2, 3))
            total += pred.sum(axis=(0, 2, 3)) + truth.sum(axis=(0, 2, 3))
        name = Path(case).name
        for c, lung in enumerate(("lung_right", "lung_left")):
            out[f"{name}/{lung}"] = float(2 * inter[c] / max(total[c], 1))
    net.train()
    return out


def main(argv=None) -> None:
    args, cfg = start_run(__doc__, CTSegmentationRun, argv)
    cache = build_once(args.run / "cache.npz", lambda path: build_cache(args.data, path, cfg["size"]))
    data = load_cache(cache)
    train_idx = np.nonzero(data["split"] == "train")[0]
    print(f"train slices {len(train_idx)}", flush=True)

    net = build_network(cfg["arch"], 1, 2, **cfg.get("arch_options", {}))
    loss_fn = SegmentationLoss(**cfg["loss"])
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))
    bs = cfg["batch_size"]
    steps = math.ceil(len(train_idx) / bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps, pct_start=0.05
    )
    start_epoch, best = resume(args.run, net, opt, sched)
    for epoch in range(start_epoch, cfg["epochs"]):
        rng = np.random.default_rng([cfg["seed"], epoch])  # per-epoch stream: resuming replays the same batches
        t0 = time.time()
        order = rng.permutation(train_idx)
        losses = []
        for b in range(steps):
            sel = np.sort(order[b * bs : (b + 1) * bs])
            x, y = make_batch(data["hu"][sel], data["labels"][sel], cfg, rng)
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        val = validate(net, data, "val")
        test = validate(net, data, "test")
        score = float(np.mean(list(val.values())))
        if score > best:
            best = score
            torch.save({"model": net.state_dict(), "epoch": epoch, "val": val}, args.run / "best.pt")
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0]}
        row |= {"seconds": time.time() - t0, "score": score, **val, **{f"test:{k}": v for k, v in test.items()}}
        append_log(args.run / "log.csv", row)
        save_checkpoint(args.run, net, opt, sched, epoch, best)
        shown = " ".join(f"{k}={v:.3f}" for k, v in {**val, **test}.items())
        print(f"epoch {epoch:3d} loss {row['train_loss']:.4f} {shown} ({row['seconds']:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
