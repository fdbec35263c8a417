"""Train the clavicle band network (``lungx_core/cxr/clavicles.py``) on the JSRT/SCR films.

    python training/train_clavicles.py --config training/configs/clavicles_cxr.json --data ../shared/data \
        --run ../runs/clavicles --threads 2

Each training film gives its band placed by its reference lungs, with the lung box jittered (the anatomy
network's lungs are a little off at inference), then an affine and intensity augmentation and a mirror that
swaps the sides. Validation is at the films' own 512-px grid, the band placed by the shipped anatomy model's
lungs exactly as at inference, against the anatomy model's own clavicles on the same films. Seeded and resumable
(``last.pt``); the best validation epoch is ``best.pt``; ``--export`` ships it as ``cxr_clavicles``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.cxr.clavicles import band_box, band_geometry, band_logits, crop_band, resample_box  # noqa: E402
from lungx_core.eval.metrics import dice  # noqa: E402
from lungx_core.models.networks import build_network  # noqa: E402
from lungx_core.postprocess import fill_holes  # noqa: E402
from lungx_core.preprocess import normalise_intensity  # noqa: E402
from training.common import append_log, build_once, resume, save_checkpoint, start_run  # noqa: E402
from training.cxr_data import SPLITS_DIR, _read_png, read_mask, split_by_side  # noqa: E402
from training.losses import SegmentationLoss  # noqa: E402
from training.schemas import ClavicleRun  # noqa: E402

CLASSES = ("clavicle_left", "clavicle_right")
DATASET = "jsrt_scr"


def load_films(data: Path, part: str) -> dict[str, np.ndarray]:
    """The split's films as read and windowed as at inference, their reference lungs and (2, H, W) clavicles
    (patient left, right); films whose clavicle mask does not split into two sides are left out."""
    ids = (SPLITS_DIR / f"{DATASET}_{part}.txt").read_text().split()
    root = data / DATASET
    raw, films, lungs, clavicles, kept = [], [], [], [], []
    for cid in ids:
        sides = split_by_side(read_mask(root / "masks" / "clavicles" / f"{cid}.png"), min_fraction=0.1)
        if sides is None:
            continue
        raw.append(_read_png(root / "images" / f"{cid}.png"))
        films.append(normalise_intensity(raw[-1]))
        lungs.append(read_mask(root / "masks" / "lung" / f"{cid}.png"))
        clavicles.append(np.stack(sides))  # image right = patient left
        kept.append(cid)
    return {"raw": np.stack(raw), "films": np.stack(films), "lungs": np.stack(lungs), "clavicles": np.stack(clavicles),
            "ids": np.array(kept)}


def anatomy_predictions(raw: np.ndarray, path: Path) -> Path:
    """The shipped anatomy model on the validation films: its cleaned lungs (where the band goes) and clavicles
    (the baseline), stored once per run."""
    from lungx_core.image import MedicalImage
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    seg = CXRSegmenter("cxr_anatomy", device="cpu", refine_clavicles=False)
    lungs, clav = [], []
    for f in raw:
        res = seg.segment(MedicalImage(array=f))
        lungs.append(res.masks["lung_left"] | res.masks["lung_right"])
        clav.append(np.stack([res.masks["clavicle_left"], res.masks["clavicle_right"]]))
    np.savez_compressed(path, lungs=np.stack(lungs), clavicles=np.stack(clav))
    return path


def jittered_box(lungs: np.ndarray, rng: np.random.Generator, jitter: float, band: tuple, shift: float = 0.0
                 ) -> tuple[int, int, int, int]:
    """The band of ``lungs`` with the lung box's edges moved by up to ``jitter`` of its height/width, and the
    whole band up or down by up to ``shift`` of its height (clavicles lie higher above the apices on AP films)."""
    r0, r1, c0, c1 = band_box(lungs, *band)
    h, w = r1 - r0, c1 - c0
    dr = rng.uniform(-jitter, jitter, 2) * h + rng.uniform(-shift, shift) * h
    dc = rng.uniform(-jitter, jitter, 2) * w
    return int(r0 + dr[0]), int(r1 + dr[1]), int(c0 + dc[0]), int(c1 + dc[1])


def band_masks(masks: np.ndarray, box, shape: tuple[int, int]) -> np.ndarray:
    """(2, H, W) bool -> (2, band rows, band cols) float {0, 1}, resampled as the film (area-weighted, >= 0.5)."""
    return (resample_box(masks.astype(np.float32), box, shape) >= 0.5).astype(np.float32)


def make_augment(cfg: dict, seed: int):
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
    )

    a = cfg["augment"]
    t = Compose([
        RandAffined(keys=("image", "masks"), prob=0.8, rotate_range=math.radians(a["rotate_deg"]),
                    scale_range=(a["scale"], a["scale"]), mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandAdjustContrastd(keys="image", prob=0.5, gamma=tuple(a["gamma"])),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.3),
        RandGaussianSmoothd(keys="image", prob=0.2, sigma_x=(0.3, 1.2), sigma_y=(0.3, 1.2)),
        RandGaussianNoised(keys="image", prob=0.2, std=0.02),
    ])
    t.set_random_state(seed)
    return t


@torch.no_grad()
def validate(net, val: dict, anatomy: dict, band: tuple, shape: tuple[int, int]) -> dict[str, float]:
    """Dice of both clavicles together on the films' grid (the SCR measure), band placed by the anatomy model's
    lungs; the anatomy model's own clavicles beside it."""
    net.eval()
    ours, base = [], []
    for f, gt, lungs, prev in zip(val["films"], val["clavicles"], anatomy["lungs"], anatomy["clavicles"],
                                  strict=True):
        logits = band_logits(net, f, lungs, band, shape)
        pred = np.stack([fill_holes(m) for m in logits > 0])
        ours.append(dice(pred[0] | pred[1], gt[0] | gt[1]))
        base.append(dice(prev[0] | prev[1], gt[0] | gt[1]))
    net.train()
    return {"clavicles": float(np.mean(ours)), "anatomy_clavicles": float(np.mean(base))}


def main(argv=None) -> None:
    args, cfg = start_run(__doc__, ClavicleRun, argv, exportable=True)
    if args.export:
        from training.export_clavicles import export

        export(args.run, cfg, args.data)
        return
    train = load_films(args.data, "train")
    val = load_films(args.data, "val")
    anatomy = dict(np.load(build_once(args.run / "anatomy_val.npz",
                                      lambda p: anatomy_predictions(val["raw"], p))))
    print(f"train {len(train['ids'])}  val {len(val['ids'])}", flush=True)

    net = build_network(cfg["arch"], 1, len(CLASSES), **cfg["arch_options"])
    loss_fn = SegmentationLoss(**cfg["loss"])
    opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))
    steps_per_epoch = math.ceil(cfg["films_per_epoch"] / cfg["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps_per_epoch,
                                                pct_start=0.05)
    start_epoch, best = resume(args.run, net, opt, sched)
    band, shape = band_geometry(cfg)
    augment = make_augment(cfg, cfg["seed"] + start_epoch)
    rng = np.random.default_rng(cfg["seed"] + start_epoch)
    n = len(train["ids"])
    for epoch in range(start_epoch, cfg["epochs"]):
        t0 = time.time()
        losses = []
        for _ in range(steps_per_epoch):
            xs, ys = [], []
            for i in rng.integers(0, n, cfg["batch_size"]):
                box = jittered_box(train["lungs"][i], rng, cfg["box_jitter"], band, cfg.get("band_shift", 0.0))
                x = crop_band(train["films"][i], box, shape)[None]
                y = band_masks(train["clavicles"][i], box, shape)
                if rng.random() < 0.5:  # the mirror image: a patient-left clavicle where a right one would be
                    x, y = x[:, :, ::-1].copy(), y[::-1, :, ::-1].copy()
                out = augment({"image": x, "masks": y})
                xs.append(torch.as_tensor(np.asarray(out["image"]), dtype=torch.float32))
                ys.append(torch.as_tensor(np.asarray(out["masks"]), dtype=torch.float32))
            loss = loss_fn(net(torch.stack(xs)), torch.stack(ys))
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        scores = validate(net, val, anatomy, band, shape)
        if scores["clavicles"] > best:
            best = scores["clavicles"]
            torch.save({"model": net.state_dict(), "epoch": epoch, "val": scores}, args.run / "best.pt")
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "lr": sched.get_last_lr()[0],
               "seconds": time.time() - t0, **scores}
        append_log(args.run / "log.csv", row)
        save_checkpoint(args.run, net, opt, sched, epoch, best)
        print(f"epoch {epoch:3d} loss {row['train_loss']:.4f} clavicles {scores['clavicles']:.4f} "
              f"(anatomy {scores['anatomy_clavicles']:.4f}) ({row['seconds']:.0f}s)", flush=True)


if __name__ == "__main__":
    main()
