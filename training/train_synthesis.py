"""Train an unpaired CXR translator between healthy/clear (A) and pathological/opaque (B) films: the plain or
shape-aware CycleGAN of synthesis (issue 6, A -> B) and the region-aware one of opacity removal (issue 7, B -> A).

    python training/train_synthesis.py --config training/configs/synthesis_cxr_shape.json \
        --data ../shared/data --run /work/runs/synth_shape [--threads 1]
    python training/train_synthesis.py --config training/configs/opacity_removal_cxr.json \
        --data ../shared/data --run /work/runs/opacity_removal --cache /work/runs/opacity_data/domains_144.npz

The config holds a :class:`TranslationConfig` (``lambda_surround`` 0 = plain CycleGAN) plus ``load_size``
(cached crop side; random crops of ``size`` give jitter) and ``steps_per_epoch``. One epoch = that many steps of
one random healthy and one random pathological training crop. Resumable: re-running the same command continues
from ``last.pt`` in the run folder (outside git) at the exact next step; losses go to ``log.csv`` and a sample
grid of validation crops to ``samples/epoch_NNN.png`` after every epoch.

A ``region_aware`` block (opacity removal) composites every translation with a mask: opaque films (B) with
their activation mask from the ``cxr_opacity`` model (``lungx_core.generative.opacity``, the same code as at inference),
clear films (A) with their lung field. An ``encoder`` block adds the frozen-encoder alignment loss.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.common import append_log, centre_window  # noqa: E402
from training.schemas import TranslationRun, read_config
from training.synthesis_data import domain_data  # noqa: E402
from training.translation import CycleGANTrainer, TranslationConfig, sample_grid  # noqa: E402


def random_windows(arrays: list[np.ndarray], idx: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The same random ``size`` window of each array (N, load, load), per sample in ``idx``: (B, size, size) each."""
    load = arrays[0].shape[-1]
    out: list[list[np.ndarray]] = [[] for _ in arrays]
    for i in idx:
        r, c = rng.integers(0, load - size + 1, 2)
        for k, a in enumerate(arrays):
            out[k].append(a[i, r : r + size, c : c + size])
    return [np.stack(o) for o in out]


def random_crops(images: np.ndarray, lungs: np.ndarray, idx: np.ndarray, size: int, rng: np.random.Generator):
    """(B, 1, size, size) images in [-1, 1] and lung masks, each a random ``size`` window of its cached crop."""
    x, m = random_windows([images, lungs], idx, size, rng)
    return (torch.from_numpy(x.astype(np.float32)[:, None] * 2 - 1),
            torch.from_numpy(m[:, None].astype(np.float32)))


def centre_crops(images: np.ndarray, idx: np.ndarray, size: int, scale: bool = True) -> torch.Tensor:
    """(B, 1, size, size) centre windows; images scaled to [-1, 1] unless ``scale`` is False (masks)."""
    x = torch.from_numpy(centre_window(images, size)[idx].astype(np.float32)[:, None])
    return x * 2 - 1 if scale else x


def activation_masks(data: dict[str, np.ndarray], cfg: dict, device: str = "cpu") -> np.ndarray:
    """(N, load, load) float32 activation masks of every cached crop, from the opacity model."""
    from lungx_core.generative.opacity import ActivationSpec, OpacityModel, activation_mask

    model = OpacityModel(cfg["opacity_model"], device)
    spec = ActivationSpec.from_dict(cfg.get("activation", {}))
    out = np.zeros(data["images"].shape, dtype=np.float32)
    for s in range(0, len(out), 64):
        probs = model.probability_of_crops(data["images"][s : s + 64].astype(np.float32))
        for k, p in enumerate(probs):
            out[s + k] = activation_mask(p, data["lungs"][s + k], spec)
    return out


def frozen_encoder(cfg: dict, device: str = "cpu"):
    from lungx_core.models.store import load_model
    from lungx_core.models.translation import FrozenEncoder

    net, _ = load_model(cfg["model"], device)
    return FrozenEncoder(net, cfg["layers"])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--cache", type=Path, help="domain cache (.npz); default: <run>/domains.npz, built if missing")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    raw = read_config(args.config, TranslationRun)
    load_size, steps_per_epoch, batch = raw["load_size"], raw["steps_per_epoch"], raw.get("batch_size", 1)
    config = TranslationConfig.from_dict(raw["translation"])
    args.run.mkdir(parents=True, exist_ok=True)
    (args.run / "config.json").write_text(json.dumps(raw, indent=2))
    data = domain_data(args.data, args.cache, args.run, raw.get("crop", {}), load_size)
    train = data["split"] == "train"
    idx_a = np.nonzero(train & (data["domain"] == "healthy"))[0]
    idx_b = np.nonzero(train & (data["domain"] == "pathological"))[0]
    val_a = np.nonzero(~train & (data["domain"] == "healthy"))[0][:4]
    val_b = np.nonzero(~train & (data["domain"] == "pathological"))[0][:4]
    print(f"healthy {len(idx_a)}  pathological {len(idx_b)}  (training crops)", flush=True)

    activation = None
    if "region_aware" in raw:
        activation = activation_masks(data, raw["region_aware"], args.device)
        on = activation.reshape(len(activation), -1).max(1) > 0
        for dom in ("healthy", "pathological"):
            sel = data["domain"] == dom
            print(f"{dom}: activation mask on {on[sel].mean():.0%} of crops, "
                  f"mean area {activation[sel].mean():.3f}", flush=True)
    encoder = frozen_encoder(raw["encoder"], args.device) if "encoder" in raw else None
    trainer = CycleGANTrainer(config, args.device, encoder)
    last = args.run / "last.pt"
    rng = np.random.default_rng(config.seed)
    if last.exists():
        state = torch.load(last, weights_only=False)
        trainer.load_state_dict(state["trainer"])
        rng.bit_generator.state = state["data_rng"]
        print(f"resumed at epoch {trainer.epoch} (step {trainer.steps})", flush=True)
    (args.run / "samples").mkdir(exist_ok=True)
    for epoch in range(trainer.epoch, config.epochs + config.decay_epochs):
        t0 = time.time()
        sums: dict[str, float] = {}
        for _ in range(steps_per_epoch):
            a, lung_a = random_crops(data["images"], data["lungs"], rng.choice(idx_a, batch), config.size, rng)
            if activation is None:
                b, _ = random_crops(data["images"], data["lungs"], rng.choice(idx_b, batch), config.size, rng)
                losses = trainer.step(a, b, lung_a)
            else:
                b, mask_b, lung_b = random_windows([data["images"], activation, data["lungs"]],
                                                   rng.choice(idx_b, batch), config.size, rng)
                b = torch.from_numpy(b.astype(np.float32)[:, None] * 2 - 1)
                losses = trainer.step(a, b, lung_a, mask_a=lung_a, mask_b=torch.from_numpy(mask_b[:, None]),
                                      lung_b=torch.from_numpy(lung_b[:, None].astype(np.float32)))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
        trainer.end_epoch()
        masks = (None, None) if activation is None else (
            centre_crops(data["lungs"], val_a, config.size, scale=False),
            centre_crops(activation, val_b, config.size, scale=False))
        grid = sample_grid(trainer, centre_crops(data["images"], val_a, config.size),
                           centre_crops(data["images"], val_b, config.size), *masks)
        Image.fromarray(grid).save(args.run / "samples" / f"epoch_{epoch:03d}.png")
        row = {"epoch": epoch, "steps": trainer.steps, "seconds": round(time.time() - t0, 1),
               "lr": trainer.sched_g.get_last_lr()[0], **{k: v / steps_per_epoch for k, v in sums.items()}}
        append_log(args.run / "log.csv", row)
        tmp = args.run / "last.tmp"
        torch.save({"trainer": trainer.state_dict(), "data_rng": rng.bit_generator.state}, tmp)
        tmp.replace(last)
        print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)


if __name__ == "__main__":
    main()
