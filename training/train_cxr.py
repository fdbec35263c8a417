"""Train the CXR anatomy model (lungs L/R, heart, clavicles L/R) on ../shared/data.

    python training/train_cxr.py --config training/configs/cxr_unet.json --data ../shared/data --run runs/cxr_unet

Seeded and resumable: checkpoints live in the run folder (outside git); re-running the same command continues
from ``last.pt``. Curves are appended to ``log.csv``; the best validation epoch is kept as ``best.pt``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.anatomy import CXR_CLASSES, CXR_MIRROR_PAIRS  # noqa: E402
from lungx_core.models.networks import build_network  # noqa: E402
from lungx_core.postprocess import HEART_MIN_SOLIDITY, clean_masks, solidity  # noqa: E402
from lungx_core.preprocess import PreprocessConfig  # noqa: E402
from training.common import append_log, build_once, resume, save_checkpoint, start_run, warm_start  # noqa: E402
from training.cxr_data import Sample, _read_png, build_cache, load_cache, load_targets  # noqa: E402
from training.cxr_pseudo_labels import build_pseudo_cache  # noqa: E402
from training.distractors import Distractors  # noqa: E402
from training.losses import SegmentationLoss  # noqa: E402
from training.lung_convention import retrocardiac_lungs  # noqa: E402
from training.schemas import CXRSegmentationRun  # noqa: E402
from training.synthetic_augment import SyntheticSwap, synthetic_versions  # noqa: E402


def mirror(image: np.ndarray, masks: np.ndarray, weight: np.ndarray):
    """Horizontal flip: a patient-left structure ends up where a patient-right one would be, so swap labels."""
    masks = masks[:, :, ::-1].copy()
    for a, b in CXR_MIRROR_PAIRS:
        masks[[a, b]] = masks[[b, a]]
    return image[:, :, ::-1].copy(), masks, weight[:, :, ::-1].copy()


def make_augment(cfg: dict, seed: int):
    from monai.transforms import (
        Compose,
        RandAdjustContrastd,
        RandAffined,
        RandGaussianNoised,
        RandGaussianSmoothd,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    size = cfg["preprocess"]["size"]
    a = cfg["augment"]
    t = Compose(
        [
            RandAffined(
                keys=("image", "masks", "weight"),
                prob=0.8,
                rotate_range=math.radians(a["rotate_deg"]),
                shear_range=(a["shear"], a["shear"]),
                translate_range=(a["translate"] * size, a["translate"] * size),
                scale_range=(a["scale"], a["scale"]),
                mode=("bilinear", "nearest", "nearest"),
                padding_mode="zeros",
            ),
            RandAdjustContrastd(keys="image", prob=0.5, gamma=tuple(a["gamma"])),
            RandScaleIntensityd(keys="image", factors=0.1, prob=0.3),
            RandShiftIntensityd(keys="image", offsets=0.05, prob=0.3),
            RandGaussianSmoothd(keys="image", prob=0.15, sigma_x=(0.3, 1.0), sigma_y=(0.3, 1.0)),
            RandGaussianNoised(keys="image", prob=0.2, std=0.02),
        ]
    )
    t.set_random_state(seed)
    rng = np.random.default_rng(seed)

    def apply(image, masks, weight):
        if rng.random() < a.get("flip_prob", 0.0):
            image, masks, weight = mirror(image, masks, weight)
        out = t({"image": image, "masks": masks, "weight": weight})
        return [torch.as_tensor(np.asarray(out[k]), dtype=torch.float32) for k in ("image", "masks", "weight")]

    return apply


@torch.no_grad()
def validate(net, data: dict, idx: np.ndarray, batch: int = 16) -> dict[str, float]:
    """Mean Dice at the training resolution, per (dataset, class) with labels; on films without any label, the
    share of ragged hearts and of films with both clavicles found (the network's own masks, cleaned, before the
    task smooths the heart: what training changed, not what post-processing hides)."""
    net.eval()
    scores: dict[str, list[float]] = {}
    for start in range(0, len(idx), batch):
        sel = idx[start : start + batch]
        x = torch.as_tensor(data["images"][sel].astype(np.float32))[:, None]
        probs = torch.sigmoid(net(x)).numpy()
        pred = probs > 0.5
        for j, i in enumerate(sel):
            ds = source_of(data["dataset"][i])
            gt = data["masks"][i]
            for c, name in enumerate(CXR_CLASSES):
                if not data["labelled"][i, c]:
                    continue
                p, g = pred[j, c], gt[c]
                d = 2 * (p & g).sum() / max(p.sum() + g.sum(), 1)
                scores.setdefault(f"{ds}/{name}", []).append(float(d))
            if data["labelled"][i, 0] and data["labelled"][i, 1]:
                p, g = pred[j, 0] | pred[j, 1], gt[0] | gt[1]
                scores.setdefault(f"{ds}/lung", []).append(float(2 * (p & g).sum() / max(p.sum() + g.sum(), 1)))
            if not data["labelled"][i].any():  # a film without masks: how plausible is what the model draws?
                masks = clean_masks(probs[j])
                hs = solidity(masks["heart"])
                scores.setdefault(f"{ds}/heart_ragged", []).append(float(hs is None or hs < HEART_MIN_SOLIDITY))
                scores.setdefault(f"{ds}/clavicles_both", []).append(
                    float(masks["clavicle_left"].any() and masks["clavicle_right"].any()))
    net.train()
    return {k: float(np.mean(v)) for k, v in sorted(scores.items())}


def source_of(dataset: str) -> str:
    """The source a dataset's validation Dice is logged under: ``jsrt`` (jsrt_scr), ``covid`` (both COVID sets)."""
    return str(dataset).split("_")[0]


def selection_score(val: dict[str, float], sources: set[str] | None = None) -> float:
    """The validation score that picks ``best.pt``; with ``sources`` (e.g. ``{"jsrt"}``), only those sources'
    Dice count: a run trained on healthy films alone must not be picked by the pathological films' masks."""
    keys = ["jsrt/lung", "covid/lung", "jsrt/heart", "covid/heart", "jsrt/clavicle_left", "jsrt/clavicle_right"]
    keys = [k for k in keys if sources is None or k.split("/")[0] in sources]
    terms = [val[k] for k in keys if k in val]
    if "cxr/heart_ragged" in val:  # films without masks (NIH) count by their plausibility
        terms += [1 - val["cxr/heart_ragged"], val["cxr/clavicles_both"]]
    return float(np.mean(terms))


def synthetic_swap(
    args, cfg: dict, data: dict, train_idx: np.ndarray, pre: PreprocessConfig, seed: int
) -> SyntheticSwap:
    """The run's synthetic pathological versions of its healthy training films (built once into
    ``synthetic.npz`` in the run folder), as a per-draw swap drawing with ``seed``."""
    syn = cfg["synthesis"]
    path = args.run / "synthetic.npz"
    if not path.exists():
        t0 = time.time()
        has = np.zeros(len(data["ids"]), dtype=bool)
        has[train_idx] = np.isin(data["dataset"][train_idx], syn["datasets"]) & data["labelled"][train_idx, 0]
        images, lungs = [], []
        for i in np.nonzero(has)[0]:
            ds, cid = str(data["dataset"][i]), str(data["ids"][i])
            images.append(_read_png(args.data / ds / "images" / f"{cid}.png"))
            masks = load_targets(args.data, Sample(ds, cid, ""))[0]
            lungs.append(masks[0] | masks[1])
        synthetic = synthetic_versions(images, lungs, pre, syn.get("model", "cxr_synthesis"),
                                       method=syn.get("method", "cyclegan"), kind=syn.get("kind", "mixed"),
                                       versions=syn.get("versions", 1))
        made_by = str(syn.get("model", syn.get("method")))
        np.savez_compressed(path, synthetic=synthetic, has_synthetic=has, model=np.array(made_by))
        print(f"{len(images)} synthetic films made in {time.time() - t0:.0f}s", flush=True)
    z = np.load(path)
    return SyntheticSwap(z["synthetic"], z["has_synthetic"], syn["share"], seed)


def main(argv=None) -> None:
    args, cfg = start_run(__doc__, CXRSegmentationRun, argv)

    pre = PreprocessConfig.from_dict(cfg["preprocess"])
    cache = build_once(args.run / "cache.npz", lambda path: build_cache(args.data, path, pre))
    data = load_cache(cache)
    if "pseudo_labels" in cfg:  # films without masks, labelled by a shipped model where plausible
        pseudo = build_once(args.run / "pseudo.npz", lambda path: build_pseudo_cache(
            args.data, path, pre, cfg["pseudo_labels"]["model"]))
        extra = load_cache(pseudo)
        data = {k: np.concatenate([data[k], extra[k]]) for k in data}
    train_idx = np.nonzero(data["split"] == "train")[0]
    if "train_datasets" in cfg:  # e.g. healthy films only, to measure what synthesis adds
        train_idx = train_idx[np.isin(data["dataset"][train_idx], cfg["train_datasets"])]
    val_idx = np.nonzero(data["split"] == "val")[0]
    if cfg.get("lung_convention") == "retrocardiac":  # the training films' lungs drawn as the COVID sets draw them
        for i in train_idx[data["dataset"][train_idx] == "jsrt_scr"]:
            m = data["masks"][i]
            m[0], m[1] = retrocardiac_lungs(m[0], m[1], m[2])
    elif cfg.get("lung_convention"):
        raise ValueError(f"{args.config}: lung_convention must be 'retrocardiac', not {cfg['lung_convention']!r}")
    print(f"train {len(train_idx)}  val {len(val_idx)}", flush=True)

    net = build_network(cfg["arch"], 1, len(CXR_CLASSES), **cfg.get("arch_options", {}))
    loss_fn = SegmentationLoss(**cfg["loss"])
    opt_cls = {"adam": torch.optim.Adam, "nadam": torch.optim.NAdam}[cfg["optimizer"]]
    opt = opt_cls(net.parameters(), lr=cfg["lr"], weight_decay=cfg.get("weight_decay", 0.0))
    steps_per_epoch = math.ceil(len(train_idx) / cfg["batch_size"])
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps_per_epoch, pct_start=0.05
    )
    start_epoch, best = resume(args.run, net, opt, sched)
    if start_epoch == 0 and "init" in cfg:  # fine-tune a shipped model
        warm_start(net, cfg["init"], strict=True)

    augment = make_augment(cfg, cfg["seed"] + start_epoch)
    # seeded per start epoch, as augment: a resumed run draws afresh
    swap = synthetic_swap(args, cfg, data, train_idx, pre, cfg["seed"] + start_epoch) if "synthesis" in cfg else None
    # the validation sources that may choose the epoch: those trained on (all, when unrestricted)
    sources = {source_of(d) for d in cfg["train_datasets"]} if "train_datasets" in cfg else None
    distract = Distractors(cfg["distractors"], cfg["seed"] + start_epoch) if cfg.get("distractors") else None
    log_path = args.run / "log.csv"
    bs = cfg["batch_size"]
    for epoch in range(start_epoch, cfg["epochs"]):
        t0 = time.time()
        order = np.random.permutation(train_idx)
        losses = []
        for b in range(steps_per_epoch):
            sel = order[b * bs : (b + 1) * bs]
            items = []
            for i in sel:
                image = data["images"][i] if swap is None else swap.image(i, data["images"][i])
                if distract is not None:
                    image = distract(image, data["masks"][i])
                items.append(augment(image[None].astype(np.float32), data["masks"][i].astype(np.float32),
                                     data["weights"][i][None].astype(np.float32)))
            x, y, w = (torch.stack(t) for t in zip(*items, strict=True))
            lab = torch.as_tensor(data["labelled"][sel], dtype=torch.float32)
            loss = loss_fn(net(x), y, lab, w)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        val = validate(net, data, val_idx)
        score = selection_score(val, sources)
        if score > best:
            best = score
            torch.save({"model": net.state_dict(), "epoch": epoch, "val": val}, args.run / "best.pt")
        row = {
            "epoch": epoch,
            "train_loss": float(np.mean(losses)),
            "lr": sched.get_last_lr()[0],
            "seconds": time.time() - t0,
            "score": score,
            **val,
        }
        append_log(log_path, row)
        save_checkpoint(args.run, net, opt, sched, epoch, best)
        print(
            f"epoch {epoch:3d} loss {row['train_loss']:.4f} score {score:.4f} "
            + " ".join(f"{k}={v:.3f}" for k, v in val.items())
            + f" ({row['seconds']:.0f}s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
