"""Train the healthy-vs-pathological CXR classifier (``cxr_pathology``) on thoracic crops, and export it.

    python training/train_pathology.py --config training/configs/pathology_cxr.json --data ../shared/data \
        --run /work/runs/pathology [--cache /work/runs/synth_data/domains_144.npz]

It judges synthetic images (``lungx evaluate synthesis``: the share called pathological) and scores opacity.
Domains, splits and crops are those of the translation models (``training/synthesis_data.py``). Sampling is
balanced between the classes; the epoch with the best validation AUC is written to the run folder (``--out``) with
its metrics (overall and per source, to show how much it leans on dataset style rather than pathology).

With ``"style_augment": true`` (v2, ``pathology_cxr_v2.json``) it is trained to be style-proof: sources are
balanced within each class and every training film is restyled (``training/style.py``: histogram matching to a
film of the other class, gamma, CLAHE, blur, noise); the epoch kept is the one with the best AUC of pathological
validation films against healthy ones pooled with their placebos, the threshold is that pool's Youden cut, and
the placebo table (share called pathological per placebo) goes into the exported config.

With ``"domain_adversarial": w > 0`` (v3, ``pathology_cxr_v3.json``) a critic per class learns to tell a film's
source from the judge's features (JSRT from NIH among healthy films; GB, V7 and NIH among pathological ones),
and the judge is trained, with weight ``w`` ramped in over training, to leave it guessing (``SourceCritics``):
features from which, within a class, the source cannot be told, so that a source's look cannot stand in for its
class (JSRT is healthy only, the COVID sets pathological only). ``"opacity_aux": w > 0`` (v4) adds a
training-only head that maps the reference opacity from the judge's mid-level features.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.models.networks import build_network  # noqa: E402
from lungx_core.models.store import save_model  # noqa: E402
from training.common import append_log, centre_window, seed_everything  # noqa: E402
from training.schemas import PathologyRun, read_config
from training.style import PLACEBOS, augment  # noqa: E402
from training.synthesis_data import domain_data  # noqa: E402
from training.train_synthesis import random_crops, random_windows  # noqa: E402

MODEL_NAME = "cxr_pathology"


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties averaged."""
    from scipy.stats import rankdata

    ranks = rankdata(scores)
    pos = labels.astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / max(n_pos * n_neg, 1))


@torch.no_grad()
def predict(net, images: np.ndarray, size: int, batch: int = 32) -> np.ndarray:
    net.eval()
    images = centre_window(images, size)
    out = []
    for s in range(0, len(images), batch):
        x = torch.from_numpy(images[s : s + batch].astype(np.float32)[:, None])
        out.append(torch.sigmoid(net(x)[:, 0]).numpy())
    net.train()
    return np.concatenate(out)


def youden_threshold(probs: np.ndarray, labels: np.ndarray) -> float:
    """The probability cut that maximises sensitivity + specificity - 1 (balanced, whatever the class sizes)."""
    cuts = np.unique(probs)
    pos = labels.astype(bool)
    j = [(probs[pos] >= t).mean() + (probs[~pos] < t).mean() for t in cuts]
    return float(cuts[int(np.argmax(j))])


def report(probs: np.ndarray, labels: np.ndarray, datasets: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    calls = probs >= threshold
    out = {"auc": auc(probs, labels), "accuracy": float((calls == labels).mean())}
    for ds in sorted(set(datasets)):
        sel = datasets == ds
        out[f"accuracy/{ds}"] = float((calls[sel] == labels[sel]).mean())
    nih = datasets == "cxr_nih_nofinding_pneumonia"
    if len(set(labels[nih])) == 2:
        out["auc/nih_only"] = auc(probs[nih], labels[nih])  # one source: no style difference to lean on
    return out


PLACEBO_DRAWS = 5  # pathological films each healthy film is histogram matched to: one draw is a noisy share


def placebo_sets(images: np.ndarray, labels: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """The validation films' centre crops: 'healthy' and 'pathological' as they are, and every placebo of
    ``style.PLACEBOS`` applied to the healthy ones; histogram matching to PLACEBO_DRAWS pathological films of the
    set each (drawn with a fixed seed), all pooled: its share comes from 5 x 49 films, not 49."""
    crops = centre_window(images, size).astype(np.float32)
    healthy, sick = crops[labels == 0], crops[labels == 1]
    rng = np.random.default_rng(7)
    refs = [sick[rng.integers(0, len(sick), len(healthy))] for _ in range(PLACEBO_DRAWS)]
    out = {"healthy": healthy, "pathological": sick}
    for name, fn in PLACEBOS.items():
        draws = refs if name == "histogram_matched" else refs[:1]  # the others do not look at the reference
        out[name] = np.stack([fn(x, r) for ref in draws for x, r in zip(healthy, ref, strict=True)])
    return out


def score_sets(net, sets: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    return {k: predict(net, v, size) for k, v in sets.items()}


def style_auc(scores: dict[str, np.ndarray]) -> tuple[float, float]:
    """(AUC, Youden cut) of pathological films against healthy films pooled with all their placebos: what the
    judge must separate when style varies."""
    neg = np.concatenate([scores["healthy"]] + [scores[k] for k in PLACEBOS])
    probs = np.concatenate([neg, scores["pathological"]])
    labels = np.concatenate([np.zeros(len(neg)), np.ones(len(scores["pathological"]))])
    return auc(probs, labels), youden_threshold(probs, labels)


def placebo_table(scores: dict[str, np.ndarray], threshold: float) -> dict[str, float]:
    """Share called pathological at ``threshold``: healthy films, each placebo of them, pathological films."""
    return {k: float((v >= threshold).mean()) for k, v in scores.items()}


def style_batch(data, idx, partners, size, rng, histogram_p: float = 0.5,
                clahe_p: float = 0.3) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, size, size) random windows in [0, 1], each restyled (``style.augment``) with a film of the other
    class as its histogram partner, and the same windows of the reference opacity masks."""
    windows, opacity = random_windows([data["images"], data["opacity"]], np.concatenate([idx, partners]), size, rng)
    windows = windows.astype(np.float32)
    out = np.stack([augment(a, b, rng, histogram_p, clahe_p)
                    for a, b in zip(windows[: len(idx)], windows[len(idx) :], strict=True)])
    return torch.from_numpy(out[:, None]), torch.from_numpy(opacity[: len(idx), None].astype(np.float32))


class SourceCritics(torch.nn.Module):
    """One small head per class that names a film's source from the judge's features (B, F).

    The heads learn the source on detached features (``source_loss``); the judge is trained to leave them
    guessing (``confusion_loss``: cross-entropy to the uniform guess, Tzeng et al. 2015). Unlike a gradient
    reversal, whose judge can win by inflating its features without bound (it diverged here at weight 0.5),
    the confusion loss is bounded below by log(number of sources)."""

    def __init__(self, features: int, sources_per_class: list[int], hidden: int = 64):
        super().__init__()
        self.heads = torch.nn.ModuleList(
            torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, n))
            for n in sources_per_class
        )

    def _per_class(self, feats: torch.Tensor, classes: torch.Tensor):
        for c, head in enumerate(self.heads):
            sel = classes == c
            if sel.any():
                yield sel, head(feats[sel])

    def source_loss(self, feats: torch.Tensor, classes: torch.Tensor, sources: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the true source, summed over the classes."""
        return sum(torch.nn.functional.cross_entropy(logits, sources[sel])
                   for sel, logits in self._per_class(feats, classes))

    def confusion_loss(self, feats: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the heads' guesses to the uniform guess, summed over the classes."""
        return sum(-torch.log_softmax(logits, 1).mean() for _, logits in self._per_class(feats, classes))


def judge_features(net, x: torch.Tensor, tap: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The MONAI Classifier's flattened features before its final linear layer (its forward: net, final,
    reshape), and the feature map after its layer ``tap`` (None: not kept)."""
    kept = None
    for k, layer in enumerate(net.net):
        x = layer(x)
        if k == tap:
            kept = x
    return x.flatten(1), kept


def opacity_loss(head: torch.nn.Module, fmap: torch.Tensor, opacity: torch.Tensor, known: torch.Tensor):
    """BCE of a 1x1-conv head on the judge's feature map against the share of each cell that the reference
    opacity mask covers, on films whose mask is known (GB's radiologist masks; healthy films: none)."""
    if not known.any():
        return fmap.new_zeros(())
    target = torch.nn.functional.adaptive_avg_pool2d(opacity, fmap.shape[-2:])
    return torch.nn.functional.binary_cross_entropy_with_logits(head(fmap[known]), target[known])


def balanced_draw(pools: list[np.ndarray], n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices: a source drawn uniformly, then a film of it, so no source dominates its class."""
    return np.array([rng.choice(pools[rng.integers(len(pools))]) for _ in range(n)])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--cache", type=Path)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", type=Path, help="the model written (default: the run folder's cxr_pathology; "
                    "to ship, copy its .safetensors and .json into lungx_core/weights)")
    ap.add_argument("--evaluate", metavar="MODEL", help="only score MODEL (a shipped name or a path) on the "
                    "validation films and their placebos, at its own threshold; print the table as JSON")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = read_config(args.config, PathologyRun)
    seed_everything(cfg["seed"])
    args.run.mkdir(parents=True, exist_ok=True)
    data = domain_data(args.data, args.cache, args.run, cfg["crop"], cfg["load_size"])
    labels = (data["domain"] == "pathological").astype(np.float32)
    train = np.nonzero(data["split"] == "train")[0]
    val = np.nonzero(data["split"] == "val")[0]
    if args.evaluate:
        from lungx_core.models.store import load_model

        judge, judge_cfg = load_model(args.evaluate, "cpu")
        judge_size = judge_cfg["arch_options"]["size"]
        scores = score_sets(judge, placebo_sets(data["images"][val], labels[val], judge_size), judge_size)
        print(json.dumps({"model": args.evaluate, "threshold": judge_cfg["threshold"],
                          "style_auc": round(style_auc(scores)[0], 4),
                          **{k: round(v, 4) for k, v in placebo_table(scores, judge_cfg["threshold"]).items()}}))
        return
    by_class = [train[labels[train] == c] for c in (0, 1)]
    sources = [[by_class[c][data["dataset"][by_class[c]] == ds] for ds in sorted(set(data["dataset"][by_class[c]]))]
               for c in (0, 1)]
    size = cfg["arch_options"]["size"]
    style_proof = cfg.get("style_augment", False)
    sets = placebo_sets(data["images"][val], labels[val], size) if style_proof else None

    net = build_network("classifier", 1, 1, **cfg["arch_options"])
    adversarial = cfg.get("domain_adversarial", 0.0)
    aux = cfg.get("opacity_aux", 0.0)
    tap = cfg.get("opacity_tap", 2)
    if aux and not style_proof:
        raise ValueError("opacity_aux needs style_augment: only the style-proof batches carry opacity windows")
    if adversarial or aux:  # one pass on a blank crop gives the sizes the extra heads read
        blank_feats, blank_map = judge_features(net, torch.zeros(1, 1, size, size), tap)
    if adversarial:  # each training film's source, numbered within its class
        source_of = np.zeros(len(labels), np.int64)
        for per_class in sources:
            for k, members in enumerate(per_class):
                source_of[members] = k
        critics = SourceCritics(blank_feats.shape[1], [len(per_class) for per_class in sources])
        critic_opt = torch.optim.AdamW(critics.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    params = list(net.parameters())
    if aux:  # the judge's mid-level features must also say where the opacity is (not shipped: training only)
        opacity_head = torch.nn.Conv2d(blank_map.shape[1], 1, 1)
        params += list(opacity_head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps = cfg["steps_per_epoch"]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg["lr"], total_steps=cfg["epochs"] * steps)
    rng = np.random.default_rng(cfg["seed"])
    half = cfg["batch_size"] // 2
    best, best_state, best_metrics = -1.0, None, {}
    for epoch in range(cfg["epochs"]):
        t0, losses, critic_losses = time.time(), [], []
        for _ in range(steps):
            if style_proof:  # sources balanced within each class; every film restyled against the other class
                idx = np.concatenate([balanced_draw(sources[0], half, rng), balanced_draw(sources[1], half, rng)])
                partners = np.concatenate([rng.choice(by_class[1], half), rng.choice(by_class[0], half)])
                x, opacity = style_batch(data, idx, partners, size, rng, cfg.get("histogram_p", 0.5),
                                          cfg.get("clahe_p", 0.3))
            else:
                idx = np.concatenate([rng.choice(by_class[0], half), rng.choice(by_class[1], half)])
                x, _ = random_crops(data["images"], data["lungs"], idx, size, rng)
                x = (x + 1) / 2  # the classifier sees [0, 1], as at inference
                gamma = torch.from_numpy(rng.uniform(*cfg["gamma"], size=(len(idx), 1, 1, 1)).astype(np.float32))
                x = x.clamp(0, 1) ** gamma  # exposure variation, so brightness alone does not decide
            y = torch.from_numpy(labels[idx])
            feats, fmap = judge_features(net, x, tap if aux else None)
            loss = judged = torch.nn.functional.binary_cross_entropy_with_logits(net.final(feats)[:, 0], y)
            if aux:
                loss = loss + aux * opacity_loss(opacity_head, fmap, opacity,
                                                 torch.from_numpy(data["opacity_known"][idx]))
            if adversarial:  # ramped in (Ganin & Lempitsky 2015) so the judge first learns its task
                progress = (epoch * steps + len(losses)) / (cfg["epochs"] * steps)
                ramp = 2 / (1 + np.exp(-10 * progress)) - 1
                loss = loss + adversarial * ramp * critics.confusion_loss(feats, y.long())
            opt.zero_grad()
            loss.backward()
            opt.step()
            if adversarial:  # the critics learn the sources on the judge's features as they now are
                critic = critics.source_loss(feats.detach(), y.long(), torch.from_numpy(source_of[idx]))
                critic_opt.zero_grad()
                critic.backward()
                critic_opt.step()
                critic_losses.append(critic.item())
            sched.step()
            losses.append(judged.item())
        probs = predict(net, data["images"][val], size)
        metrics = report(probs, labels[val], data["dataset"][val])
        if critic_losses:  # near log(sources) when the critic cannot tell sources apart
            metrics["critic_loss"] = float(np.mean(critic_losses))
        if style_proof:  # kept: the epoch that best separates disease from healthy films under any style
            scores = score_sets(net, sets, size)
            metrics["style_auc"], threshold = style_auc(scores)
            selection = metrics["style_auc"]
        else:
            threshold, selection = youden_threshold(probs, labels[val]), metrics["auc"]
        if selection > best:
            best, best_metrics = selection, report(probs, labels[val], data["dataset"][val], threshold)
            best_metrics["threshold"] = threshold
            if style_proof:
                best_metrics["style_auc"] = metrics["style_auc"]
                best_metrics.update({f"placebo/{k}": v for k, v in placebo_table(scores, threshold).items()})
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        append_log(args.run / "log.csv", {"epoch": epoch, "loss": float(np.mean(losses)),
                                          "seconds": round(time.time() - t0, 1), **metrics})
        print(f"epoch {epoch} loss {np.mean(losses):.4f} " + " ".join(f"{k}={v:.3f}" for k, v in metrics.items()),
              flush=True)

    config = {
        "arch": "classifier",
        "in_channels": 1,
        "classes": ["pathological"],
        "arch_options": cfg["arch_options"],
        "crop": cfg["crop"],
        "threshold": round(best_metrics.pop("threshold"), 4),
        "validation": {"n": int(len(val)), **{k: round(v, 4) for k, v in best_metrics.items()}},
    }
    save_model(best_state, config, args.out or args.run / MODEL_NAME)
    print(json.dumps(config["validation"]))


if __name__ == "__main__":
    main()
