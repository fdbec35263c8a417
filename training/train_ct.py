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
from training.common import append_log, build_once, resume, save_checkpoint, start_run, warm_start  # noqa: E402
from training.ct_data import build_cache, load_cache, lung_levels  # noqa: E402
from training.losses import SegmentationLoss  # noqa: E402
from training.schemas import CTSegmentationRun  # noqa: E402
from training.synthetic_pathology import KINDS, insert_pathology  # noqa: E402


def one_hot(labels: np.ndarray) -> np.ndarray:
    return np.stack([labels == 1, labels == 2], axis=-3).astype(np.float32)


def make_batch(
    hu: np.ndarray, labels: np.ndarray, cfg: dict, rng: np.random.Generator, levels: np.ndarray | None = None
):
    """Synthetic pathology and intensity changes in HU, then one random affine per sample on the batch.

    ``levels`` (``training.ct_data.lung_levels`` of the slices): no mass is painted below the config's
    ``mass_min_level`` of the lungs' height, where a mass beside the liver dome would teach that liver is lung."""
    a = cfg["augment"]
    kinds = tuple(a.get("pathology_kinds", KINDS))
    no_mass = tuple(k for k in kinds if k != "mass")
    if levels is None:
        levels = np.ones(len(hu), dtype=np.float32)
    images, cropped = [], []
    for h, lab, level in zip(hu, labels, levels, strict=True):
        allowed = kinds if level >= a.get("mass_min_level", 0.0) else no_mass
        h = h.astype(np.float32)
        if rng.random() < a.get("fov_crop_prob", 0.0):
            h, lab = field_of_view_crop(h, lab, rng)
        cropped.append(lab)
        lung = lab > 0
        if lung.sum() > 200 and rng.random() < a["pathology_prob"]:
            for _ in range(rng.integers(1, 3)):
                side = lung if rng.random() < 0.4 else lab == rng.integers(1, 3)
                h = insert_pathology(h, side, rng, kinds=allowed)
        h = h * rng.uniform(0.95, 1.05) + rng.uniform(-a["hu_shift"], a["hu_shift"])
        if rng.random() < 0.5:
            h = h + rng.standard_normal(h.shape).astype(np.float32) * rng.uniform(0, a["noise_hu"])
        images.append(ct_window(h))
    x = torch.from_numpy(np.stack(images))[:, None]
    y = torch.from_numpy(one_hot(np.stack(cropped)))
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


FOV_KINDS = ("hemithorax", "one_lung", "tight", "off_centre")


def field_of_view_crop(
    hu: np.ndarray, labels: np.ndarray, rng: np.random.Generator, kind: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A letterboxed slice as a scanner would send a smaller field of view of it, letterboxed again the way
    inference does (physical aspect kept, centred, air around): one hemithorax (the cut between 35 and 65 % of
    the body's width, so it may cross a lung), one lung with a margin, a tight box that cuts the body wall, or
    an off-centre box. The labels are cut the same way: the network learns that a lung is a lung whether or
    not its partner, the body's midline or air all around are in the field.
    """
    import torch
    import torch.nn.functional as F

    size = hu.shape[0]
    body = np.nonzero(hu > -500)
    if len(body[0]) < 100:
        return hu, labels
    r0, r1, c0, c1 = body[0].min(), body[0].max() + 1, body[1].min(), body[1].max() + 1
    kind = kind or FOV_KINDS[rng.integers(len(FOV_KINDS))]
    if kind == "hemithorax":
        cut = int(c0 + rng.uniform(0.35, 0.65) * (c1 - c0))
        box = (r0, r1, c0, cut) if rng.random() < 0.5 else (r0, r1, cut, c1)
    elif kind == "one_lung" and (labels > 0).any():
        lung = np.nonzero(labels == rng.integers(1, 3)) if rng.random() < 0.9 else np.nonzero(labels > 0)
        if len(lung[0]) == 0:
            lung = np.nonzero(labels > 0)
        margin = rng.uniform(0.02, 0.12) * size
        box = (lung[0].min() - margin, lung[0].max() + margin, lung[1].min() - margin, lung[1].max() + margin)
    elif kind == "tight":
        h, w = r1 - r0, c1 - c0
        box = (r0 + rng.uniform(0, 0.12) * h, r1 - rng.uniform(0, 0.12) * h,
               c0 + rng.uniform(0, 0.12) * w, c1 - rng.uniform(0, 0.12) * w)
    else:
        h, w = rng.uniform(0.5, 0.85) * size, rng.uniform(0.5, 0.85) * size
        top, left = rng.uniform(0, size - h), rng.uniform(0, size - w)
        box = (top, top + h, left, left + w)
    b0, b1, b2, b3 = (int(np.clip(round(v), 0, size)) for v in box)
    if b1 - b0 < 16 or b3 - b2 < 16:
        return hu, labels
    sub_hu, sub_lab = hu[b0:b1, b2:b3], labels[b0:b1, b2:b3]
    scale = size / max(b1 - b0, b3 - b2)
    rows, cols = min(size, round((b1 - b0) * scale)), min(size, round((b3 - b2) * scale))
    t = torch.from_numpy(np.stack([sub_hu, sub_lab == 1, sub_lab == 2]).astype(np.float32))[None]
    t = F.interpolate(t, size=(rows, cols), mode="bilinear", align_corners=False)[0].numpy()
    out_hu = np.full((size, size), -1024.0, dtype=np.float32)
    out_lab = np.zeros((size, size), dtype=labels.dtype)
    o0, o1 = (size - rows) // 2, (size - cols) // 2
    out_hu[o0 : o0 + rows, o1 : o1 + cols] = t[0]
    window = out_lab[o0 : o0 + rows, o1 : o1 + cols]
    window[t[2] >= 0.5] = 2
    window[t[1] >= 0.5] = 1
    return out_hu, out_lab


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
    levels = lung_levels(data)
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
    if start_epoch == 0 and cfg.get("init"):
        warm_start(net, cfg["init"], strict=True)
    for epoch in range(start_epoch, cfg["epochs"]):
        rng = np.random.default_rng([cfg["seed"], epoch])  # per-epoch stream: resuming replays the same batches
        t0 = time.time()
        order = rng.permutation(train_idx)
        losses = []
        for b in range(steps):
            sel = np.sort(order[b * bs : (b + 1) * bs])
            x, y = make_batch(data["hu"][sel], data["labels"][sel], cfg, rng, levels[sel])
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
