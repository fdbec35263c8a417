"""Train an unpaired healthy -> pathological CXR translator (issue 6): plain or shape-aware CycleGAN.

    python training/train_synthesis.py --config training/configs/synthesis_cxr_shape.json \
        --data ../shared/data --run /work/runs/synth_shape [--threads 1]

The config holds a :class:`TranslationConfig` (``lambda_surround`` 0 = plain CycleGAN) plus ``load_size``
(cached crop side; random crops of ``size`` give jitter) and ``steps_per_epoch``. One epoch = that many steps of
one random healthy and one random pathological training crop. Resumable: re-running the same command continues
from ``last.pt`` in the run folder (outside git) at the exact next step; losses go to ``log.csv`` and a sample
grid of validation crops to ``samples/epoch_NNN.png`` after every epoch.
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

from lungx_core.thoracic import CropSpec  # noqa: E402
from training.common import append_log  # noqa: E402
from training.synthesis_data import build_domain_cache, load_domain_cache  # noqa: E402
from training.translation import CycleGANTrainer, TranslationConfig, sample_grid  # noqa: E402


def random_crops(images: np.ndarray, lungs: np.ndarray, idx: np.ndarray, size: int, rng: np.random.Generator):
    """(B, 1, size, size) images in [-1, 1] and lung masks, each a random ``size`` window of its cached crop."""
    load = images.shape[-1]
    xs, ms = [], []
    for i in idx:
        r, c = rng.integers(0, load - size + 1, 2)
        xs.append(images[i, r : r + size, c : c + size].astype(np.float32) * 2 - 1)
        ms.append(lungs[i, r : r + size, c : c + size])
    return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ms)[:, None].astype(np.float32))


def centre_crops(images: np.ndarray, idx: np.ndarray, size: int) -> torch.Tensor:
    o = (images.shape[-1] - size) // 2
    return torch.from_numpy(images[idx, o : o + size, o : o + size].astype(np.float32)[:, None] * 2 - 1)


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

    raw = json.loads(args.config.read_text())
    spec = CropSpec.from_dict(raw.get("crop", {}))
    load_size, steps_per_epoch, batch = raw["load_size"], raw["steps_per_epoch"], raw.get("batch_size", 1)
    config = TranslationConfig.from_dict(raw["translation"])
    args.run.mkdir(parents=True, exist_ok=True)
    (args.run / "config.json").write_text(json.dumps(raw, indent=2))
    cache = args.cache or args.run / "domains.npz"
    if not cache.exists():
        build_domain_cache(args.data, cache, spec, load_size)
    data = load_domain_cache(cache)
    train = data["split"] == "train"
    idx_a = np.nonzero(train & (data["domain"] == "healthy"))[0]
    idx_b = np.nonzero(train & (data["domain"] == "pathological"))[0]
    val_a = np.nonzero(~train & (data["domain"] == "healthy"))[0][:4]
    val_b = np.nonzero(~train & (data["domain"] == "pathological"))[0][:4]
    print(f"healthy {len(idx_a)}  pathological {len(idx_b)}  (training crops)", flush=True)

    trainer = CycleGANTrainer(config, args.device)
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
            b, _ = random_crops(data["images"], data["lungs"], rng.choice(idx_b, batch), config.size, rng)
            for k, v in trainer.step(a, b, lung_a).items():
                sums[k] = sums.get(k, 0.0) + v
        trainer.end_epoch()
        grid = sample_grid(trainer, centre_crops(data["images"], val_a, config.size),
                           centre_crops(data["images"], val_b, config.size))
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
