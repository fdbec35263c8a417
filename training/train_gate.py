"""Train the frontal-chest gate (cxr_gate: frontal chest film vs CT slice, lateral/oblique view, inverted film,
non-chest picture) and export it into lungx_core/weights.

    python training/train_gate.py --config training/configs/gate.json --data ../shared/data --run runs/gate
    python training/train_gate.py --config training/configs/gate.json --data ../shared/data --run runs/gate --export

Seeded and resumable (re-run the same command; ``last.pt`` in the run folder, outside git). ``--export`` writes
fp16 weights, the config and the measured validation table into the model card's JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.cxr.gate import GATE_CLASSES  # noqa: E402
from lungx_core.models.networks import build_network  # noqa: E402
from training.common import build_once, fit_classifier, start_run  # noqa: E402
from training.gate_data import build_cache  # noqa: E402
from training.schemas import GateRun  # noqa: E402


def padded_scan_field(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An axial CT thumbnail as a file padded far below air (e.g. -3024 HU outside the reconstruction circle)
    shows it once windowed to its own percentiles: black outside the circle, the body squeezed into the top of
    the grey range."""
    size = img.shape[-1]
    yy, xx = np.mgrid[:size, :size]
    radius = size / 2 * rng.uniform(0.85, 1.05)
    low = rng.uniform(0.3, 0.7)
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius**2
    return np.where(inside, low + (1 - low) * img, rng.uniform(0, low))


def augment(
    batch: np.ndarray, rng: np.random.Generator, labels: np.ndarray | None = None, flip: bool = True
) -> torch.Tensor:
    """Geometry and film-processing variation that keeps each class what it is (no grey-value inversion; no
    left-right flip with ``flip=False``, for a model that tells a mirrored film)."""
    from scipy import ndimage as ndi

    out = []
    for i, img in enumerate(batch.astype(np.float32) / 255.0):
        if labels is not None and GATE_CLASSES[labels[i]] == "ct_slice" and rng.random() < 0.3:
            img = padded_scan_field(img, rng)
        if rng.random() < 0.7:
            angle, zoom = rng.uniform(-12, 12), rng.uniform(0.85, 1.35)  # up to 1.35: tightly cut films
            img = ndi.rotate(img, angle, reshape=False, order=1, mode="constant")
            img = ndi.zoom(img, zoom, order=1)
            size = batch.shape[-1]
            if img.shape[0] >= size:
                o = (img.shape[0] - size) // 2
                img = img[o : o + size, o : o + size]
            else:
                p = size - img.shape[0]
                img = np.pad(img, ((p // 2, p - p // 2),) * 2)
        if flip and rng.random() < 0.5:
            img = img[:, ::-1]
        img = np.clip(img, 0, 1) ** rng.uniform(0.7, 1.4)
        if rng.random() < 0.3:
            img = ndi.gaussian_filter(img, rng.uniform(0.3, 1.2))
        img = img + rng.normal(0, rng.uniform(0, 0.03), img.shape)
        out.append(np.clip(img, 0, 1))
    return torch.as_tensor(np.stack(out), dtype=torch.float32)[:, None]


@torch.no_grad()
def predict(net, images: np.ndarray, batch: int = 128) -> np.ndarray:
    net.eval()
    probs = []
    for s in range(0, len(images), batch):
        x = torch.as_tensor(images[s : s + batch].astype(np.float32) / 255.0)[:, None]
        probs.append(torch.softmax(net(x), dim=1).numpy())
    net.train()
    return np.concatenate(probs)


def report(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Per class: n, and the share called frontal (accepted) at ``threshold``."""
    accepted = probs[:, 0] >= threshold
    return {name: {"n": int((labels == i).sum()), "accepted": round(float(accepted[labels == i].mean()), 4)}
            for i, name in enumerate(GATE_CLASSES) if (labels == i).any()}


def main(argv=None) -> None:
    args, cfg = start_run(__doc__, GateRun, argv, exportable=True)
    cache = build_once(args.run / "cache.npz", lambda path: build_cache(args.data, path, cfg["seed"]))
    z = np.load(cache)
    images, labels, split = z["images"], z["labels"], z["split"]
    train, val = np.nonzero(split == "train")[0], np.nonzero(split == "val")[0]
    print(f"train {len(train)} val {len(val)} per class {np.bincount(labels, minlength=len(GATE_CLASSES))}",
          flush=True)

    net = build_network(cfg["arch"], 1, len(GATE_CLASSES), **cfg["arch_options"])
    # balanced classes: each class weighs the same in the loss, whatever its count
    counts = np.bincount(labels[train], minlength=len(GATE_CLASSES))
    weights = torch.as_tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)
    weights[0] *= cfg["frontal_weight"]  # refusing a real film costs more than passing an odd picture
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)

    def batch_loss(indices: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        sel = train[indices]
        return loss_fn(net(augment(images[sel], rng, labels[sel])), torch.as_tensor(labels[sel]))

    def val_accuracy() -> float:
        return float((predict(net, images[val]).argmax(1) == labels[val]).mean())

    fit_classifier(args.run, cfg, net, len(train), batch_loss, val_accuracy, train=not args.export)
    if args.export:
        export_gate(args, cfg, net, images, labels, split, z["source"])


def export_gate(args, cfg: dict, net, images: np.ndarray, labels: np.ndarray, split: np.ndarray,
                sources: np.ndarray) -> None:
    """fp16 weights and the model card's JSON. The operating threshold is the config's, lowered where needed so
    that every real frontal film in ../shared/data and the embedded sample pass with a 2x margin (a refused real
    film costs more than a passed odd picture); the validation table is measured at that threshold."""
    from lungx_core.cxr.gate import gate_input
    from lungx_core.io.sample import sample_radiograph
    from lungx_core.models.store import save_model

    state = torch.load(args.run / "best.pt", weights_only=True)
    net.load_state_dict({k: v.half().float() for k, v in state["model"].items()})  # measure what ships (fp16)
    probs = predict(net, images)
    sample = np.round(gate_input(sample_radiograph().array) * 255).astype(np.uint8)[None]
    sample_p = float(predict(net, sample)[0, 0])
    films = (labels == 0) & ~np.char.startswith(sources.astype(str), "drr")
    least = min(float(probs[films, 0].min()), sample_p)
    threshold = round(min(cfg["threshold"], least / 2), 4)
    val = split == "val"
    config = {
        "name": "cxr_gate", "task": "gate", "arch": cfg["arch"], "arch_options": cfg["arch_options"],
        "in_channels": 1, "classes": list(GATE_CLASSES), "threshold": threshold,
        "training": {"config": cfg, "best_epoch": int(state["epoch"])},
        "validation": report(probs[val], labels[val], threshold),
        "validation_at_0.5": report(probs[val], labels[val], 0.5),
        "shared_frontal_films": {
            "n": int(films.sum()), "accepted": round(float((probs[films, 0] >= threshold).mean()), 4),
            "least_frontal_probability": round(float(probs[films, 0].min()), 5),
        },
        "embedded_sample_frontal_probability": round(sample_p, 4),
    }
    path = save_model(state["model"], config, Path(__file__).resolve().parents[1] / "lungx_core/weights/cxr_gate")
    print(json.dumps({k: config[k] for k in ("threshold", "validation", "validation_at_0.5", "shared_frontal_films",
                                             "embedded_sample_frontal_probability")}, indent=1), path)


if __name__ == "__main__":
    main()
