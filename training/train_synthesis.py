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

A ``region_aware`` block composites every translation with a mask: opaque films (B) with their activation
mask from the ``cxr_opacity`` model (``lungx_core.generative.opacity``, the same code as at inference), clear
films (A) with their lung field (opacity removal) or, with ``"mask_a": "lesion"`` (lesion-guided synthesis), with
the region of a lesion freshly drawn by the lesion model at every step. An ``encoder`` block adds the
frozen-encoder alignment loss.

A ``warm_start`` block (lesion-guided synthesis, issue 18) first pre-trains both generators on insertion pairs
(``training.translation.PairedPretrainer``: healthy crop -> the same crop with a drawn lesion, and back), saves
them as ``paired.pt`` (resumable through ``paired_last.pt``) and starts the CycleGAN from them:

    python training/train_synthesis.py --config training/configs/synthesis_cxr_lesion.json \
        --data ../shared/data --run /work/runs/synth_lesion --cache /work/runs/synth_data/domains_144.npz
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
from training.synthesis_data import domain_data, insertion_pairs, lesion_regions  # noqa: E402
from training.translation import (  # noqa: E402
    CycleGANTrainer,
    PairedPretrainer,
    TranslationConfig,
    sample_grid,
)

MASK_A = ("lung", "lesion")  # what region_aware composites the healthy films' translation with


def random_windows(arrays: list[np.ndarray], idx: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The same random ``size`` window of each array (N, load, load), per sample in ``idx``: (B, size, size) each."""
    load = arrays[0].shape[-1]
    out: list[list[np.ndarray]] = [[] for _ in arrays]
    for i in idx:
        r, c = rng.integers(0, load - size + 1, 2)
        for k, a in enumerate(arrays):
            out[k].append(a[i, r : r + size, c : c + size])
    return [np.stack(o) for o in out]


def to_tensor(x: np.ndarray, scale: bool = True) -> torch.Tensor:
    """(B, S, S) array -> (B, 1, S, S) float tensor, scaled from [0, 1] to [-1, 1] unless ``scale`` is False."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)[:, None])
    return t * 2 - 1 if scale else t


def random_crops(images: np.ndarray, lungs: np.ndarray, idx: np.ndarray, size: int, rng: np.random.Generator):
    """(B, 1, size, size) images in [-1, 1] and lung masks, each a random ``size`` window of its cached crop."""
    x, m = random_windows([images, lungs], idx, size, rng)
    return to_tensor(x), to_tensor(m, scale=False)


def centre_crops(images: np.ndarray, idx: np.ndarray, size: int, scale: bool = True) -> torch.Tensor:
    """(B, 1, size, size) centre windows; images scaled to [-1, 1] unless ``scale`` is False (masks)."""
    return to_tensor(centre_window(images, size)[idx], scale)


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


def paired_pretraining(
    warm: dict, config: TranslationConfig, data: dict[str, np.ndarray], idx_a: np.ndarray, run: Path, device: str
) -> dict[str, dict]:
    """The generators after ``warm["steps"]`` paired steps on insertion pairs of the healthy training crops
    ``idx_a``; resumable (``paired_last.pt``), finished runs are read back from ``paired.pt``."""
    done = run / "paired.pt"
    if done.exists():
        return torch.load(done, weights_only=False)
    pre = PairedPretrainer(config, warm["lr"], device)
    rng = np.random.default_rng(config.seed + 100)
    last = run / "paired_last.pt"
    if last.exists():
        state = torch.load(last, weights_only=False)
        pre.load_state_dict(state["pretrainer"])
        rng.bit_generator.state = state["data_rng"]
        print(f"paired pre-training resumed at step {pre.steps}", flush=True)
    sums: dict[str, float] = {}
    t0, every = time.time(), warm.get("log_every", 100)
    while pre.steps < warm["steps"]:
        clear, opaque, region = insertion_pairs(data["images"], data["lungs"], rng.choice(idx_a, warm["batch_size"]),
                                                config.size, rng, tuple(warm["area"]))
        for k, v in pre.step(to_tensor(clear), to_tensor(opaque), to_tensor(region, scale=False)).items():
            sums[k] = sums.get(k, 0.0) + v
        if pre.steps % every == 0 or pre.steps == warm["steps"]:
            row = {"paired_step": pre.steps, "seconds": round(time.time() - t0, 1),
                   **{k: v / every for k, v in sums.items()}}
            append_log(run / "paired_log.csv", row)
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
            sums, t0 = {}, time.time()
            tmp = run / "paired_last.tmp"
            torch.save({"pretrainer": pre.state_dict(), "data_rng": rng.bit_generator.state}, tmp)
            tmp.replace(last)
    tmp = run / "paired.tmp"
    torch.save(pre.generators(), tmp)
    tmp.replace(done)
    return pre.generators()


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

    activation, mask_a_kind = None, "lung"
    if raw.get("region_aware"):
        mask_a_kind = raw["region_aware"].get("mask_a", "lung")
        if mask_a_kind not in MASK_A:
            raise ValueError(f"{args.config}: region_aware mask_a must be one of {MASK_A}, not {mask_a_kind!r}")
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
    area = tuple(raw["warm_start"]["area"]) if raw.get("warm_start") else (0.05, 0.6)
    if raw.get("warm_start") and not last.exists():
        trainer.warm_start(paired_pretraining(raw["warm_start"], config, data, idx_a, args.run, args.device))
        print("CycleGAN warm-started from the paired generators (paired.pt)", flush=True)
    if last.exists():
        state = torch.load(last, weights_only=False)
        trainer.load_state_dict(state["trainer"])
        rng.bit_generator.state = state["data_rng"]
        print(f"resumed at epoch {trainer.epoch} (step {trainer.steps})", flush=True)
    (args.run / "samples").mkdir(exist_ok=True)
    masks = (None, None)  # of the validation crops in the sample pictures; fixed, so the epochs compare
    if activation is not None:
        val_mask_a = centre_crops(data["lungs"], val_a, config.size, scale=False)
        if mask_a_kind == "lesion":
            val_mask_a = to_tensor(lesion_regions(val_mask_a[:, 0].numpy() > 0.5, np.random.default_rng(0), area),
                                   scale=False)
        masks = (val_mask_a, centre_crops(activation, val_b, config.size, scale=False))
    for epoch in range(trainer.epoch, config.epochs + config.decay_epochs):
        t0 = time.time()
        sums: dict[str, float] = {}
        for _ in range(steps_per_epoch):
            a, lung_a = random_crops(data["images"], data["lungs"], rng.choice(idx_a, batch), config.size, rng)
            if activation is None:
                b, lung_b = random_crops(data["images"], data["lungs"], rng.choice(idx_b, batch), config.size, rng)
                losses = trainer.step(a, b, lung_a, lung_b=lung_b)
            else:
                b, mask_b, lung_b = random_windows([data["images"], activation, data["lungs"]],
                                                   rng.choice(idx_b, batch), config.size, rng)
                mask_a = lung_a if mask_a_kind == "lung" else to_tensor(
                    lesion_regions(lung_a[:, 0].numpy() > 0.5, rng, area), scale=False)
                losses = trainer.step(a, to_tensor(b), lung_a, mask_a=mask_a, mask_b=to_tensor(mask_b, scale=False),
                                      lung_b=to_tensor(lung_b, scale=False))
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
        trainer.end_epoch()
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
