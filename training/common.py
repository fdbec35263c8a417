"""Pieces every training script shares: seeding, resumable checkpoints (kept in the run folder, outside git)
and the CSV training log."""

from __future__ import annotations

import csv
import random
from pathlib import Path

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_checkpoint(run: Path, net, opt, sched, epoch: int, best: float) -> None:
    """``last.pt`` with everything needed to continue bit-for-bit, replaced atomically."""
    tmp = run / "last.tmp"
    torch.save(
        {
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "epoch": epoch,
            "best": best,
            "py_rng": random.getstate(),
            "np_rng": np.random.get_state(),
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    tmp.replace(run / "last.pt")


def resume(run: Path, net, opt, sched) -> tuple[int, float]:
    """(first epoch to run, best score so far); (0, -1) for a fresh run."""
    last = run / "last.pt"
    if not last.exists():
        return 0, -1.0
    ck = torch.load(last, weights_only=False)
    net.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    sched.load_state_dict(ck["scheduler"])
    random.setstate(ck["py_rng"])
    np.random.set_state(ck["np_rng"])
    torch.set_rng_state(ck["torch_rng"])
    print(f"resumed from epoch {ck['epoch'] + 1}", flush=True)
    return ck["epoch"] + 1, ck["best"]


def append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
