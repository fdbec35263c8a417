"""Train the mirrored-film check (cxr_laterality: a frontal film as displayed vs the same film mirrored
left-right) and export it into lungx_core/weights.

    python training/train_laterality.py --config training/configs/laterality.json --data ../shared/data --run runs/lat
    python training/train_laterality.py --config training/configs/laterality.json --data ../shared/data \
        --run runs/lat --export

Every frontal film of ../shared/data (gate_data.film_paths, split by patient as the gate's) gives two examples,
itself and its mirror image, so the classes are balanced and nothing but the orientation tells them apart: the
network has to find the heart's side, the aortic knob, the gastric bubble. Its answer compares the two
orientations (the film's logits minus its mirror image's), so a film and its mirror never agree. Augmentation
is the gate's without its flip. Seeded and resumable (re-run the same command; ``last.pt`` in the run folder,
outside git). ``--export`` writes fp16 weights, the config and the measured validation table into the model
card's JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.cxr.gate import gate_input  # noqa: E402
from lungx_core.cxr.laterality import LATERALITY_CLASSES  # noqa: E402
from lungx_core.models.networks import build_network  # noqa: E402
from training.common import build_once, fit_classifier, start_run  # noqa: E402
from training.gate_data import film_paths, is_validation, read_film  # noqa: E402
from training.schemas import LateralityRun  # noqa: E402
from training.train_gate import augment  # noqa: E402


def build_cache(data: Path, out: Path) -> Path:
    """Thumbnails (uint8, N x 128 x 128) of every frontal film as displayed, split ("train"/"val"), source."""
    images, splits, sources = [], [], []
    for path, key in film_paths(data):
        images.append(np.round(gate_input(read_film(path)) * 255).astype(np.uint8))
        splits.append("val" if is_validation(key) else "train")
        sources.append(str(path.relative_to(data)))
    np.savez_compressed(out, images=np.stack(images), split=np.array(splits), source=np.array(sources))
    return out


def both_ways(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each thumbnail as displayed (label 0) and mirrored (label 1)."""
    return np.concatenate([images, images[:, :, ::-1]]), np.repeat([0, 1], len(images))


def antisymmetric(net, x: torch.Tensor) -> torch.Tensor:
    """The film's logits minus its mirror image's (lungx_core.cxr.laterality.mirror_logits): a comparison of
    the two orientations, so a film and its mirror always get opposite answers."""
    return net(x) - net(torch.flip(x, dims=(-1,)))


@torch.no_grad()
def predict_mirrored(net, images: np.ndarray, batch: int = 128) -> np.ndarray:
    """P(mirrored) of uint8 thumbnails, as MirrorCheck computes it."""
    net.eval()
    out = []
    for s in range(0, len(images), batch):
        x = torch.as_tensor(images[s : s + batch].astype(np.float32) / 255.0)[:, None]
        out.append(torch.softmax(antisymmetric(net, x), dim=1)[:, 1].numpy())
    net.train()
    return np.concatenate(out)


def main(argv=None) -> None:
    args, cfg = start_run(__doc__, LateralityRun, argv, exportable=True)
    cache = build_once(args.run / "cache.npz", lambda path: build_cache(args.data, path))
    z = np.load(cache)
    train_x, train_y = both_ways(z["images"][z["split"] == "train"])
    val_x, val_y = both_ways(z["images"][z["split"] == "val"])
    print(f"train {len(train_x)} val {len(val_x)}", flush=True)

    net = build_network(cfg["arch"], 1, len(LATERALITY_CLASSES), **cfg["arch_options"])
    loss_fn = torch.nn.CrossEntropyLoss()

    def batch_loss(indices: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
        x = augment(train_x[indices], rng, flip=False)
        return loss_fn(antisymmetric(net, x), torch.as_tensor(train_y[indices]))

    def val_accuracy() -> float:
        return float(((predict_mirrored(net, val_x) >= 0.5) == val_y).mean())

    fit_classifier(args.run, cfg, net, len(train_x), batch_loss, val_accuracy, train=not args.export)
    if args.export:
        export_laterality(args, cfg, net, z)


def error_rates(p_mirrored: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    called = p_mirrored >= threshold
    return {"n_films": int((labels == 0).sum()),
            "as_displayed_flagged": round(float(called[labels == 0].mean()), 4),
            "mirrored_missed": round(float((~called[labels == 1]).mean()), 4)}


def export_laterality(args, cfg: dict, net, z) -> None:
    """fp16 weights and the model card's JSON: validation error rates at the operating threshold (0.5) and per
    source set, and the same on every shared film (training films included, so optimistic there)."""
    from lungx_core.models.store import save_model

    state = torch.load(args.run / "best.pt", weights_only=True)
    net.load_state_dict({k: v.half().float() for k, v in state["model"].items()})  # measure what ships (fp16)
    threshold = 0.5
    val = z["split"] == "val"
    x, y = both_ways(z["images"][val])
    p = predict_mirrored(net, x)
    sets = np.array([s.split("/")[0] for s in z["source"][val]])
    per_set = {}
    for name in sorted(set(sets)):
        keep = np.concatenate([sets == name, sets == name])
        per_set[name] = error_rates(p[keep], y[keep], threshold)
    x_all, y_all = both_ways(z["images"])
    config = {
        "name": "cxr_laterality", "task": "laterality", "arch": cfg["arch"], "arch_options": cfg["arch_options"],
        "in_channels": 1, "classes": list(LATERALITY_CLASSES), "threshold": threshold,
        "training": {"config": cfg, "best_epoch": int(state["epoch"])},
        "validation": error_rates(p, y, threshold), "validation_per_set": per_set,
        "all_shared_films": error_rates(predict_mirrored(net, x_all), y_all, threshold),
    }
    path = save_model(state["model"], config,
                      Path(__file__).resolve().parents[1] / "lungx_core/weights/cxr_laterality")
    print(json.dumps({k: config[k] for k in ("validation", "validation_per_set", "all_shared_films")}, indent=1),
          path)


if __name__ == "__main__":
    main()
