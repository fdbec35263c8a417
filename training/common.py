"""Pieces every training script shares: seeding, resumable checkpoints (kept in the run folder, outside git)
and the CSV training log."""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


class ArrayRecord:
    """A dataclass of arrays kept as one compressed .npz in a run folder (``save``, ``load``)."""

    def save(self, path: Path) -> None:
        np.savez_compressed(path, **self.__dict__)

    @classmethod
    def load(cls, path: Path):
        with np.load(path) as z:
            return cls(**{k: z[k] for k in cls.__dataclass_fields__})


def save_npz(out: Path, **arrays) -> None:
    """``arrays`` as one compressed .npz at ``out``, written under a temporary name of its own and then renamed
    (``lungx_core.io.writers.atomic_path``): two trainings that build the same shared cache at once (the folds of
    one run, started together) each finish theirs instead of renaming each other's half-written file."""
    from lungx_core.io.writers import atomic_path

    with atomic_path(out) as tmp:
        np.savez_compressed(tmp, **arrays)


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


def fit_classifier(run: Path, cfg: dict, net, n_train: int, batch_loss, val_accuracy, train: bool = True) -> None:
    """The image classifiers' training loop (the gate, the mirror check): AdamW with a one-cycle schedule over
    ``cfg["epochs"]``, resumed from ``run/last.pt``, ``batch_loss(indices, rng)`` on shuffled batches of
    ``cfg["batch_size"]`` of the ``n_train`` examples, ``val_accuracy()`` after each epoch, ``best.pt`` kept at
    the best accuracy (the last of equals), the log and checkpoint written every epoch. ``train=False`` only
    resumes (``--export`` of a finished run)."""
    import math
    import time

    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps = math.ceil(n_train / cfg["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps)
    start, best = resume(run, net, opt, sched)
    rng = np.random.default_rng(cfg["seed"] + start)
    for epoch in range(start if train else cfg["epochs"], cfg["epochs"]):
        t0 = time.time()
        order = rng.permutation(n_train)
        losses = []
        for b in range(steps):
            loss = batch_loss(order[b * cfg["batch_size"] : (b + 1) * cfg["batch_size"]], rng)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        accuracy = val_accuracy()
        if accuracy >= best:
            best = accuracy
            torch.save({"model": net.state_dict(), "epoch": epoch}, run / "best.pt")
        append_log(run / "log.csv", {"epoch": epoch, "loss": float(np.mean(losses)), "val_accuracy": accuracy,
                                     "seconds": time.time() - t0})
        save_checkpoint(run, net, opt, sched, epoch, best)
        print(f"epoch {epoch} loss {np.mean(losses):.4f} val accuracy {accuracy:.4f} ({time.time() - t0:.0f}s)",
              flush=True)


def append_log(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def start_run(doc: str, schema: type, argv=None, exportable: bool = False) -> tuple[argparse.Namespace, dict]:
    """The training scripts' shared command line (--config --data --run --epochs --seed --threads, and --export for a
    script that ships its run's best weights instead of training when ``exportable``) and run set-up: the config
    checked against ``schema`` (training/schemas.py), threads set, run folder created with the effective
    config.json, everything seeded. Returns (args, config)."""
    from training.schemas import read_config

    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--run", type=Path, required=True, help="run folder for cache, checkpoints and logs")
    ap.add_argument("--epochs", type=int, help="override the config's epoch count")
    ap.add_argument("--seed", type=int, help="override the config's seed (a recipe over several seeds)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    if exportable:
        ap.add_argument("--export", action="store_true", help="ship the run's weights instead of training")
    args = ap.parse_args(argv)
    cfg = read_config(args.config, schema)
    if args.epochs:
        cfg["epochs"] = args.epochs
    if args.seed is not None:
        cfg["seed"] = args.seed
    torch.set_num_threads(args.threads)
    args.run.mkdir(parents=True, exist_ok=True)
    (args.run / "config.json").write_text(json.dumps(cfg, indent=2))
    seed_everything(cfg["seed"])
    return args, cfg


def build_once(path: Path, build) -> Path:
    """``build(path)`` writes the run's cache at ``path`` unless it is there already (a resumed run reuses it)."""
    if not path.exists():
        t0 = time.time()
        build(path)
        print(f"cache built in {time.time() - t0:.0f}s", flush=True)
    return path


def warm_start(net, model: str, strict: bool = False, widen_inputs: bool = False) -> None:
    """Start ``net`` from the shipped network ``model`` (fp16 weights cast back): every tensor whose name and
    shape match, or, with ``strict``, all of them (the same architecture fine-tuned). With ``widen_inputs``, a
    convolution that reads more input channels than the shipped one's takes its weights for the first channels
    and zeros for the rest, so the wider network starts computing what the shipped one computes."""
    from safetensors.torch import load_file

    from lungx_core.models.store import model_paths

    state = {k: v.float() for k, v in load_file(str(model_paths(model)[0])).items()}
    own = net.state_dict()
    loaded = state if strict else {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if widen_inputs:
        for k, v in state.items():
            mine = own.get(k)
            if (mine is not None and mine.ndim == 4 and mine.shape[1] > v.shape[1]
                    and mine.shape[0] == v.shape[0] and mine.shape[2:] == v.shape[2:]):
                loaded[k] = torch.cat([v, v.new_zeros((v.shape[0], mine.shape[1] - v.shape[1], *v.shape[2:]))], 1)
    own.update(loaded)
    net.load_state_dict(own, strict=strict)
    print(f"warm start from {model}: {len(loaded)} of {len(own)} tensors", flush=True)


def fp16_agreement(build_net, state: dict, x: torch.Tensor) -> float:
    """Dice between the predictions (logit > 0) of fp32 weights and of the same weights rounded to fp16 on
    ``x``; 1.0 means shipping fp16 changes nothing."""
    nets = []
    for sd in (state, {k: v.half().float() for k, v in state.items()}):
        net = build_net()
        net.load_state_dict(sd)
        nets.append(net.eval())
    with torch.inference_mode():
        a, b = ((n(x) > 0).numpy() for n in nets)
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, 1, H, W), replicate padding."""
    radius = max(1, int(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
    k = (k / k.sum()).to(x)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))


def random_affine(
    tensors: list[torch.Tensor],
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.85, 1.15),
    shift: float = 0.08,
    padding: list[str] | None = None,
) -> list[torch.Tensor]:
    """The same random rotation (+-8 degrees), anisotropic scale, shift (fraction of the half-size) and left-right
    flip applied to every (N, C, H, W) tensor in ``tensors``: bilinear, ``padding`` per tensor (default border)."""
    n = len(tensors[0])
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    for i in range(n):
        a = np.deg2rad(rng.uniform(-8, 8))
        sx, sy = rng.uniform(*scale, 2)
        flip = -1.0 if rng.random() < 0.5 else 1.0
        theta[i, :, :2] = [[flip * sx * np.cos(a), -sy * np.sin(a)], [sx * np.sin(a), sy * np.cos(a)]]
        theta[i, :, 2] = rng.uniform(-shift, shift, 2)
    grid = F.affine_grid(torch.from_numpy(theta), list(tensors[0].shape), align_corners=False)
    padding = padding or ["border"] * len(tensors)
    return [F.grid_sample(t, grid, padding_mode=p, align_corners=False) for t, p in zip(tensors, padding, strict=True)]


def centre_window(images: np.ndarray, size: int) -> np.ndarray:
    """The centre ``size`` x ``size`` window of square images (..., H, W), as a view: the fixed crop that
    validation sees where training draws random windows."""
    o = (images.shape[-1] - size) // 2
    return images[..., o : o + size, o : o + size]
