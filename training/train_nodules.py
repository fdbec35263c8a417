"""Train the nodule detector (``cxr_nodules``): a centre heatmap and a diameter map on the whole film at 512 px.

Data (``<run>/films.npz``, built once): every JSRT film of ../shared/data/jsrt_scr (124 with a nodule from
``nodules.csv``, 76 normals) and the NIH no-finding PA films (normals, never scored), each as the detector sees
it (``lungx_core.cxr.nodules.detector_input``) with its lung field (JSRT: the SCR masks; NIH: the anatomy model).
Folds: ``--fold k`` (0-4) leaves out every fifth JSRT nodule film and every fifth normal (sorted by id, offset
k); ``--fold all`` trains on all of them (what ships). NIH films train in every fold.

Each step: ``batch_size`` crops of ``crop`` px; a film is a JSRT nodule film, a JSRT normal or an NIH normal
(``mix``), gets 1-2 simulated nodules (``training/nodule_sim.py``: ``contrast`` log-uniform, the visible part
of the JSRT range; 5-30 mm, solid, lobulated or part-solid; 10 % outside the lung field) with probability
``simulate``, and is cropped around one
of its nodules (jittered) with probability ``centred``, else anywhere in the lung field's bounding box; then a
mirror flip and a grey-level gamma. Targets: a Gaussian of sigma ``max(2, sigma_fraction * d)`` at each centre (the
penalty-reduced focal loss of CenterNet) and log(d) within half a radius of it (L1, weight ``size_weight``).
The encoder and decoder start from the shipped anatomy network (``init``), the output layer fresh; or, with
``start_run``, from that run's same fold (a second stage), where ``hard_negatives`` of the crops are centred on
the starting model's own false positives on the training films (mined once, ``hard_floor`` and up).

With ``bone_channel`` (a bone model, e.g. ``cxr_bone``; the ablation the issue asks for) the network reads two
channels: the film and the same film with that model's bone image subtracted (``<run>/bone.npz``, built once, in
the film's own window so the two channels differ by the bone image alone). A simulated nodule goes into the
suppressed channel at a share drawn from ``bone_keep``: running the bone model on every crop would triple the
step time, so the share is the spread measured for ``cxr_bone`` on simulated nodules in JSRT normals (5th-95th
percentile 0.62-0.98 of the nodule's integral kept, median 0.77). Real nodules are suppressed by the model itself.
Both channels start from the anatomy network's first layer: the film's channel takes its weights, the
suppressed film's starts at zero, so training starts from what the one-channel run starts from.

After training, the held-out fold's films are scored (``<run>/fold_<k>/candidates.csv``: every candidate above
the floor) and ``--report`` pools the five folds into the cross-validated FROC (``lungx_core.eval.metrics``).

    python -m training.train_nodules --config training/configs/nodules_cxr.json --run ../runs/nodules --fold 0
    ...  --fold 4, --fold all
    python -m training.train_nodules --config training/configs/nodules_cxr.json --run ../runs/nodules --report
    python -m training.train_nodules --config training/configs/nodules_cxr.json --run ../runs/nodules --export

The bone-channel ablation (the model card's table): ``nodules_cxr_ablation_film.json`` and
``nodules_cxr_ablation_bone.json``, the same commands with their own run folders.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from lungx_core.cxr.nodules import blank_regions, decode, detector_input, predict_heat
from lungx_core.models.networks import build_network
from training.common import append_log, resume, save_checkpoint, save_npz, seed_everything, warm_start
from training.nodule_sim import Nodule, random_nodules, render_nodules
from training.schemas import NoduleRun, read_config

FOLDS = 5
JSRT = "jsrt_scr"
PIXEL_MM = 0.7  # the staged 512-px JSRT films' pixel size, for the 4-mm least hit radius
NIH = "cxr_nih_nofinding_pneumonia"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--fold", default="all", help="0-4 (cross-validation) or all")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--report", action="store_true", help="pool the five folds' candidates into the CV FROC")
    ap.add_argument("--export", action="store_true", help="ship <run>/fold_all/last.pt as cxr_nodules")
    ap.add_argument("--rescore", action="store_true", help="score the held-out fold again (no training)")
    return ap.parse_args(argv)


def read_jsrt_nodules(data_root: Path) -> dict[str, list[tuple[float, float, float]]]:
    """JSRT film id -> [(x, y, diameter_px)] on the 512-px staged images."""
    with open(data_root / JSRT / "nodules.csv") as f:
        out: dict[str, list] = {}
        for r in csv.DictReader(f):
            out.setdefault(r["id"], []).append((float(r["x"]), float(r["y"]), float(r["diameter_px"])))
    return out


def build_films(data_root: Path, out: Path, size: int) -> Path:
    """``out`` (.npz): ``x`` (N, size, size) float16 inputs, ``lung`` bool, ``ids``, ``source`` (jsrt | nih)."""
    if out.exists():
        return out
    from PIL import Image

    from lungx_core.anatomy import class_mask
    from lungx_core.image import MedicalImage
    from lungx_core.io.readers import read_radiograph
    from lungx_core.preprocess import letterbox_mask
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    segmenter = CXRSegmenter()
    paths = [(p, "jsrt") for p in sorted((data_root / JSRT / "images").glob("*.png"))]
    with open(data_root / NIH / "index.csv") as f:
        paths += [(film_path(data_root, r["id"], "nih"), "nih") for r in csv.DictReader(f)
                  if r["group"] == "no_finding"]
    xs, lungs, ids, sources = [], [], [], []
    for path, source in paths:
        film = read_radiograph(path).array.astype(np.float32)
        x, box = detector_input(film, size)
        if source == "jsrt":
            lung = np.asarray(Image.open(data_root / JSRT / "masks" / "lung" / path.name)) > 127
        else:
            lung = class_mask(segmenter.segment(MedicalImage(film)).masks, "lung")
        xs.append(x.astype(np.float16))
        lungs.append(letterbox_mask(lung, box))
        ids.append(path.stem)
        sources.append(source)
    save_npz(out, x=np.stack(xs), lung=np.stack(lungs), ids=np.array(ids), source=np.array(sources))
    return out


def film_path(data_root: Path, film_id: str, source: str) -> Path:
    """Where a film of the cache (``source`` jsrt | nih) lies in ../shared/data."""
    return data_root / (JSRT if source == "jsrt" else NIH) / "images" / f"{film_id}.png"


def build_bone(data_root: Path, films, model: str, out: Path, single_view: bool = False) -> Path:
    """``out`` (.npz): ``bone`` (N, size, size) float16, what ``model`` takes out of each film of ``films`` as
    the shipped detector takes it (:func:`lungx_core.cxr.nodules.detector_bone` of the film's detector
    input; ``single_view`` as the detector's config says), so that ``x - bone`` is the suppressed film as the
    detector sees it."""
    if out.exists():
        return out
    from lungx_core.cxr.bone import BoneLayerModel
    from lungx_core.cxr.nodules import detector_bone
    from lungx_core.io.readers import read_radiograph

    bone_model = BoneLayerModel(model, device="cpu", single_view=single_view)
    size = films["x"].shape[-1]
    bones = []
    for film_id, source in zip(films["ids"], films["source"], strict=True):
        film = read_radiograph(film_path(data_root, film_id, source)).array.astype(np.float32)
        x, box = detector_input(film, size)
        bones.append(detector_bone(x, box, bone_model).astype(np.float16))
    save_npz(out, bone=np.stack(bones))
    return out


def channels(cfg: dict) -> int:
    """The detector's input channels: the film, and its bone-suppressed version with ``bone_channel``."""
    return 2 if cfg.get("bone_channel") else 1


def film_input(films, i: int) -> np.ndarray:
    """Film ``i``'s detector input as stored, (channels, size, size): the film, and with the bone channel the
    film less its bone image."""
    x = films["x"][i].astype(np.float32)
    if "bone" not in films:
        return x[None]
    return np.stack([x, x - films["bone"][i].astype(np.float32)])


def fold_of(ids: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Fold 0-4 of each JSRT film (nodule films and normals each dealt in id order), -1 for the NIH films."""
    fold = np.full(len(ids), -1)
    for prefix in ("JPCLN", "JPCNN"):
        members = sorted(i for i, (f, s) in enumerate(zip(ids, source, strict=True))
                         if s == "jsrt" and str(f).startswith(prefix))
        members.sort(key=lambda i: str(ids[i]))
        for k, i in enumerate(members):
            fold[i] = k % FOLDS
    return fold


def targets(
    shape: tuple[int, int], nodules: list[Nodule], sigma_fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heatmap, log-diameter map, size weight) for nodules on an image of ``shape``."""
    rows, cols = np.ogrid[:shape[0], :shape[1]]
    heat = np.zeros(shape, np.float32)
    size = np.zeros(shape, np.float32)
    weight = np.zeros(shape, np.float32)
    for n in nodules:
        d2 = (rows - n.y) ** 2 + (cols - n.x) ** 2
        sigma = max(2.0, n.diameter * sigma_fraction)
        heat = np.maximum(heat, np.exp(-d2 / (2 * sigma**2)))
        near = d2 <= (n.diameter / 4) ** 2 + 1
        size[near] = np.log(n.diameter)
        weight[near] = 1.0
    iy, ix = [], []
    for n in nodules:  # the exact peak: 1 at the nearest pixel to each centre
        r, c = int(round(n.y)), int(round(n.x))
        if 0 <= r < shape[0] and 0 <= c < shape[1]:
            iy.append(r)
            ix.append(c)
    heat[iy, ix] = 1.0
    return heat, size, weight


def focal_loss(logits: torch.Tensor, heat: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), summed and divided by the number of centres."""
    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = heat >= 1.0
    pos_loss = (torch.log(p) * (1 - p) ** 2)[pos].sum()
    neg_loss = (torch.log(1 - p) * p**2 * (1 - heat) ** 4)[~pos].sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)


def groups(films, train: np.ndarray, real: dict) -> list[list[int]]:
    """The training films by kind: JSRT nodule films, JSRT normals, NIH normals (``mix`` order)."""
    jsrt = [i for i in train if films["source"][i] == "jsrt"]
    return [[i for i in jsrt if str(films["ids"][i]) in real], [i for i in jsrt if str(films["ids"][i]) not in real],
            [i for i in train if films["source"][i] == "nih"]]


def sample(films, kinds: list[list[int]], real: dict, cfg: dict, rng: np.random.Generator,
           hard: np.ndarray | None = None):
    """One training crop: (input (1, c, c), heat, log-diameter, size weight) as arrays. With ``hard`` (rows of
    film index, row, col: :func:`mine_hard_negatives`), a share ``hard_negatives`` of the crops is centred on one
    of them instead."""
    c = cfg["crop"]
    focus = None
    if hard is not None and len(hard) and rng.random() < cfg["hard_negatives"]:
        i, *focus = hard[int(rng.integers(len(hard)))]
        i = int(i)
    else:
        i = int(rng.choice(kinds[int(rng.choice(3, p=cfg["mix"]))]))
    x = film_input(films, i)
    lung = films["lung"][i]
    nodules = [Nodule(px, py, d, 0.0, "real") for px, py, d in real.get(str(films["ids"][i]), [])]
    if rng.random() < cfg["simulate"]:
        sim = random_nodules(lung, rng, int(rng.integers(1, 3)), tuple(cfg["diameter_px"]), tuple(cfg["contrast"]),
                             anywhere=0.1)
        shown = render_nodules(x.shape[1:], sim, rng)
        if len(x) == 1:
            x = x + shown
        else:  # the suppressed channel keeps a share of the nodule, as the bone model would (module docstring)
            x = x + np.array([1.0, rng.uniform(*cfg["bone_keep"])], np.float32)[:, None, None] * shown
        nodules += sim
    if focus is not None:
        cy, cx = focus[0] + rng.uniform(-0.3, 0.3) * c, focus[1] + rng.uniform(-0.3, 0.3) * c
    elif nodules and rng.random() < cfg["centred"]:
        n = nodules[int(rng.integers(len(nodules)))]
        cy, cx = n.y + rng.uniform(-0.4, 0.4) * c, n.x + rng.uniform(-0.4, 0.4) * c
    else:
        rows, cols = np.nonzero(lung)
        cy, cx = rng.uniform(rows.min(), rows.max()), rng.uniform(cols.min(), cols.max())
    r0 = int(np.clip(round(cy - c / 2), 0, x.shape[1] - c))
    c0 = int(np.clip(round(cx - c / 2), 0, x.shape[2] - c))
    moved = [Nodule(n.x - c0, n.y - r0, n.diameter, 0.0, n.kind) for n in nodules]
    crop = np.clip(x[:, r0:r0 + c, c0:c0 + c], 0, 1.2)
    heat, size, weight = targets((c, c), moved, cfg["sigma_fraction"])
    heat, size, weight = heat[None], size[None], weight[None]
    if rng.random() < 0.5:
        crop, heat, size, weight = (a[..., ::-1] for a in (crop, heat, size, weight))
    crop = np.clip(crop, 0, None) ** float(np.exp(rng.uniform(-0.3, 0.3)))
    return [np.ascontiguousarray(a, np.float32) for a in (crop, heat, size, weight)]


def build(cfg: dict):
    return build_network(cfg["arch"], channels(cfg), 2, **cfg["arch_options"])


def train(args, cfg, films, real) -> Path:
    folder = args.run / f"fold_{args.fold}"
    folder.mkdir(parents=True, exist_ok=True)
    fold = fold_of(films["ids"], films["source"])
    train_idx = np.where(fold != int(args.fold))[0] if args.fold != "all" else np.arange(len(fold))
    net = build(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["lr"], total_steps=cfg["steps"], pct_start=0.05)
    start, _ = resume(folder, net, opt, sched)  # counted in steps here, not epochs
    if start == 0 and cfg.get("start_run"):
        net.load_state_dict(starting_state(cfg, args.fold))
    elif start == 0:
        warm_start(net, cfg["init"], widen_inputs=True)
        with torch.no_grad():  # a rare-event prior: the heatmap starts near 0.01 everywhere
            last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)][-1]
            if last.bias is not None:
                last.bias[0] = -4.6
    hard = mine_hard_negatives(cfg, args.fold, films, train_idx, real, folder) if cfg.get("hard_negatives") else None
    kinds = groups(films, train_idx, real)
    rng = np.random.default_rng(cfg["seed"] + 7919 * start + (99 if args.fold == "all" else int(args.fold)))
    net.train()
    t0, losses = time.perf_counter(), []
    for step in range(start, cfg["steps"]):
        parts = [sample(films, kinds, real, cfg, rng, hard) for _ in range(cfg["batch_size"])]
        x, heat, size, weight = (torch.from_numpy(np.stack(p)) for p in zip(*parts, strict=True))
        out = net(x)
        loss = focal_loss(out[:, :1], heat)
        loss = loss + cfg["size_weight"] * (weight * (out[:, 1:] - size).abs()).sum() / weight.sum().clamp(min=1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % cfg["checkpoint_every"] == 0 or step + 1 == cfg["steps"]:
            save_checkpoint(folder, net, opt, sched, step, 0.0)  # no best: the last step ships
            row = {"step": step + 1, "loss": round(float(np.mean(losses)), 4),
                   "seconds": round(time.perf_counter() - t0, 1)}
            append_log(folder / "log.csv", row)
            print(row, flush=True)
            t0, losses = time.perf_counter(), []
    return folder


def starting_state(cfg: dict, fold: str) -> dict:
    """The weights fold ``fold`` starts from when the config names a ``start_run``: that run's same fold."""
    return torch.load(Path(cfg["start_run"]) / f"fold_{fold}" / "last.pt", weights_only=False)["model"]


def mine_hard_negatives(cfg: dict, fold: str, films, train_idx: np.ndarray, real: dict, folder: Path) -> np.ndarray:
    """The starting model's false positives on this fold's training films: (film index, row, col) of every
    candidate at or above ``hard_floor`` that lies outside every real nodule's hit radius (as ``lungx evaluate
    nodules`` scores a hit). Mined once with the weights the fold starts from, cached in
    ``<folder>/hard_negatives.npy`` so a resumed run centres on the same places. Every film trained on is mined
    (NIH normals too): a held-out film is never looked at."""
    from lungx_core.eval.evaluate import nodule_hit_radius

    cached = folder / "hard_negatives.npy"
    if cached.exists():
        return np.load(cached)
    if not cfg.get("start_run"):
        raise ValueError("hard_negatives needs a start_run: the trained model whose false positives are mined")
    net = eval_net(cfg, starting_state(cfg, fold))
    # mined on the 512-px reading alone: the shipped run's negatives were mined before test-time scales existed
    at_512 = {**cfg, "scales": [1.0]}
    found = []
    for i in train_idx:
        nodules = real.get(str(films["ids"][i]), [])
        for c in film_candidates(net, at_512, film_input(films, i), cfg["hard_floor"]):
            if all(np.hypot(c.col - nx, c.row - ny) > nodule_hit_radius({"diameter_px": d}, PIXEL_MM)
                   for nx, ny, d in nodules):
                found.append((i, c.row, c.col))
    hard = np.array(found, np.float32).reshape(-1, 3)
    np.save(cached, hard)
    print(f"hard negatives: {len(hard)} on {len(train_idx)} training films", flush=True)
    return hard


def eval_net(cfg: dict, state: dict):
    """The detector with ``state`` loaded, in eval mode."""
    net = build(cfg)
    net.load_state_dict(state)
    return net.eval()


def film_candidates(net, cfg: dict, x: np.ndarray, floor: float) -> list:
    """Every candidate at or above ``floor`` on one staged film's detector input (the JSRT films are 512 px
    square, so the model grid is the film's; (channels, size, size): :func:`film_input`), as the shipped detector
    decodes them."""
    from lungx_core.preprocess import Letterbox

    size = cfg["size"]
    x = np.asarray(x, np.float32)
    box = Letterbox((size, size), (size, size), (0, 0), size)
    heat = predict_heat(net, x, scales=cfg.get("scales", [1.0]))
    return decode(heat, box, floor, cfg["min_distance"], cfg["max_candidates"], blank_regions(x[0]))


def score_fold(args, cfg, films, folder: Path) -> None:
    """Every candidate above the floor on the held-out fold's JSRT films: ``<folder>/candidates.csv``."""
    net = eval_net(cfg, torch.load(folder / "last.pt", weights_only=False)["model"])
    fold = fold_of(films["ids"], films["source"])
    rows = []
    for i in np.where(fold == int(args.fold))[0]:
        found = film_candidates(net, cfg, film_input(films, i), cfg["floor"])
        for c in found:
            rows.append({"case_id": str(films["ids"][i]), "rank": c.rank, "col": round(c.col, 2),
                         "row": round(c.row, 2), "diameter_px": round(c.diameter_px, 2),
                         "probability": round(c.probability, 5)})
        if not found:  # a film without candidates still counts as scored
            rows.append({"case_id": str(films["ids"][i]), "rank": 0, "col": "", "row": "", "diameter_px": "",
                         "probability": ""})
    with open(folder / "candidates.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"scored {len(set(r['case_id'] for r in rows))} held-out films", flush=True)


def report(args) -> dict:
    """The cross-validated FROC over the five folds' candidates (``<run>/cv.json``)."""
    from lungx_core.eval.evaluate import (
        films_with_nodules_outside_lungs,
        froc_summary,
        lung_field_summary,
        read_nodules,
    )

    candidates: dict[str, list] = {}
    widths: dict[str, list] = {}  # the same candidates' blob widths (px at 512, before any calibration)
    for k in range(FOLDS):
        with open(args.run / f"fold_{k}" / "candidates.csv") as f:
            for r in csv.DictReader(f):
                lst = candidates.setdefault(r["case_id"], [])
                if r["probability"]:
                    lst.append((float(r["col"]), float(r["row"]), float(r["probability"])))
                    widths.setdefault(r["case_id"], []).append(float(r["diameter_px"]))
    truth = read_nodules(args.data / JSRT / "nodules.csv")
    summary = froc_summary(candidates, truth, pixel_mm=PIXEL_MM)
    summary["diameter"] = diameter_calibration(candidates, widths, truth)
    # the nodules in the lung field alone (published JSRT subsets leave out those behind heart and diaphragm)
    by_film: dict[str, list[dict]] = {}
    for r in truth:
        if r["id"] in candidates:
            by_film.setdefault(r["id"], []).append(r)
    outside = films_with_nodules_outside_lungs(args.data / JSRT / "masks" / "lung", by_film)
    summary["lung_field"] = lung_field_summary(candidates, truth, outside, pixel_mm=PIXEL_MM)
    (args.run / "cv.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: v for k, v in summary.items() if k != "curve"}, indent=2))
    plot_froc(summary, args.run / "froc.png")
    review(args, candidates, truth, summary)
    return summary


def diameter_calibration(candidates: dict, widths: dict, truth: list[dict]) -> dict:
    """How the candidates' blob widths relate to the true diameters over the cross-validated hits (each nodule's
    most probable candidate within its hit radius): the median width / diameter ratio (its inverse calibrates the
    shipped model: ``diameter_scale``), the log-log correlation and the calibrated median absolute error."""
    from lungx_core.eval.evaluate import nodule_hit_radius

    ratios, true_d = [], []
    for nodule in truth:
        x, y, radius = float(nodule["x"]), float(nodule["y"]), nodule_hit_radius(nodule, PIXEL_MM)
        found = [(p, w) for (cx, cy, p), w in zip(candidates.get(nodule["id"], []), widths.get(nodule["id"], []),
                                                  strict=True) if (cx - x) ** 2 + (cy - y) ** 2 <= radius**2]
        if found:
            ratios.append(max(found)[1] / float(nodule["diameter_px"]))
            true_d.append(float(nodule["diameter_px"]))
    ratios, true_d = np.array(ratios), np.array(true_d)
    median = float(np.median(ratios))
    return {
        "n_hits": len(ratios),
        "blob_width_median_ratio_before_scale": round(median, 3),
        "log_correlation": round(float(np.corrcoef(np.log(ratios * true_d), np.log(true_d))[0, 1]), 3),
        "median_abs_error_px_512": round(float(np.median(np.abs(ratios * true_d / median - true_d))), 1),
    }


def plot_froc(summary: dict, path: Path) -> None:
    """The cross-validated FROC curve (log false positives per image), the seven scored rates marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=120)
    fppi, sens = summary["curve"]["fp_per_image"], summary["curve"]["sensitivity"]
    ax.step(np.maximum(fppi, 1e-3), sens, where="post", color="tab:blue", label="cxr_nodules, 5-fold CV")
    rates = [float(r) for r in summary["sensitivity"]]
    ax.plot(rates, list(summary["sensitivity"].values()), "o", color="tab:blue")
    ax.plot([2.0], [0.506], "s", color="grey", label="Schilham 2003 (all 154)")
    ax.plot([2.0], [0.714], "^", color="grey", label="Chen 2011 (140-nodule subset)")
    ax.set(xscale="log", xlim=(0.1, 10), ylim=(0, 1), xlabel="false positives per image", ylabel="sensitivity",
           title=f"JSRT ({summary['n_nodules']} nodules, {summary['n_films']} films): CPM {summary['cpm']:.3f}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def review(args, candidates: dict, truth: list[dict], summary: dict) -> None:
    """What the model misses at 2 FP/image and its most probable false positives, as ``review.csv`` and a
    contact sheet ``review.png`` (crops of the research-only films: they stay in the run folder, never in git)."""
    from PIL import Image, ImageDraw

    from lungx_core.eval.evaluate import nodule_hit_radius

    curve = summary["curve"]
    fppi, sens = np.array(curve["fp_per_image"]), np.array(curve["sensitivity"])
    within = np.nonzero(fppi <= 2.0)[0]
    threshold = curve["thresholds"][int(within[np.argmax(sens[within])])]  # the 2-FP/image operating point
    rows = []
    for r in truth:
        r_px = nodule_hit_radius(r, PIXEL_MM)
        best = max((c[2] for c in candidates.get(r["id"], []) if np.hypot(c[0] - float(r["x"]),
                                                                          c[1] - float(r["y"])) <= r_px), default=0)
        if best < threshold:
            rows.append({"kind": "miss", "id": r["id"], "x": r["x"], "y": r["y"], "diameter_px": r["diameter_px"],
                         "probability": round(best, 4), "subtlety": r["subtlety"], "location": r["location"],
                         "diagnosis": r["diagnosis"]})
    nodules = {}
    for r in truth:
        nodules.setdefault(r["id"], []).append((float(r["x"]), float(r["y"]), nodule_hit_radius(r, PIXEL_MM)))
    fps = []
    for film, cands in candidates.items():
        for c in cands:
            if not any(np.hypot(c[0] - x, c[1] - y) <= rr for x, y, rr in nodules.get(film, [])):
                fps.append((c[2], film, c[0], c[1]))
    for p, film, x, y in sorted(fps, reverse=True)[:24]:
        rows.append({"kind": "false_positive", "id": film, "x": round(x, 1), "y": round(y, 1), "diameter_px": 20,
                     "probability": round(p, 4), "subtlety": "", "location": "", "diagnosis": ""})
    with open(args.run / "review.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tiles = []
    for r in rows[:48]:
        film = Image.open(args.data / JSRT / "images" / f"{r['id']}.png").convert("RGB")
        x, y, half = float(r["x"]), float(r["y"]), 48
        tile = film.crop((int(x) - half, int(y) - half, int(x) + half, int(y) + half)).resize((192, 192))
        d = ImageDraw.Draw(tile)
        rad = max(float(r["diameter_px"]), 8) / 2 * 2
        d.ellipse([96 - rad, 96 - rad, 96 + rad, 96 + rad], outline=(255, 0, 0) if r["kind"] == "miss"
                  else (0, 200, 255), width=2)
        d.text((4, 4), f"{r['id']} {r['kind'][:4]} s{r['subtlety']} p{r['probability']}", fill=(255, 255, 0))
        tiles.append(tile)
    sheet = Image.new("RGB", (192 * 8, 192 * ((len(tiles) + 7) // 8)))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (192 * (i % 8), 192 * (i // 8)))
    sheet.save(args.run / "review.png")
    print(f"review: {sum(r['kind'] == 'miss' for r in rows)} misses at 2 FP/image, top false positives; "
          f"{args.run / 'review.png'}", flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    cfg = read_config(args.config, NoduleRun)
    torch.set_num_threads(args.threads)
    seed_everything(cfg["seed"])
    args.run.mkdir(parents=True, exist_ok=True)
    if args.report:
        report(args)
        return
    if args.export:
        export(args, cfg)
        return
    z = np.load(build_films(args.data, args.run / "films.npz", cfg["size"]))
    films = {k: z[k] for k in ("x", "lung", "ids", "source")}
    if cfg.get("bone_channel"):
        cache = build_bone(args.data, films, cfg["bone_channel"], args.run / "bone.npz",
                           bool(cfg.get("bone_single_view")))
        films["bone"] = np.load(cache)["bone"]
    real = read_jsrt_nodules(args.data)
    folder = args.run / f"fold_{args.fold}" if args.rescore else train(args, cfg, films, real)
    if args.fold != "all":
        score_fold(args, cfg, films, folder)


def export(args, cfg) -> None:
    """Ship ``fold_all/last.pt`` as ``lungx_core/weights/cxr_nodules`` with the CV metrics (``cv.json``)."""
    from lungx_core.models.store import WEIGHTS_DIR, save_model

    state = torch.load(args.run / "fold_all" / "last.pt", weights_only=False)["model"]
    cv = json.loads((args.run / "cv.json").read_text())
    config = {
        "arch": cfg["arch"], "arch_options": cfg["arch_options"], "in_channels": channels(cfg),
        "classes": ["nodule_centre", "log_diameter"], "size": cfg["size"], "floor": cfg["floor"],
        "min_distance": cfg["min_distance"], "max_candidates": cfg["max_candidates"],
        "scales": cfg.get("scales", [1.0]),
        **({"bone_channel": cfg["bone_channel"], "bone_single_view": bool(cfg.get("bone_single_view"))}
           if cfg.get("bone_channel") else {}),
        "threshold": cv["operating_point"]["probability"], "metrics": {k: v for k, v in cv.items() if k != "curve"},
        # blob width -> diameter: 1 / the median (blob width / true diameter) over the CV hits (report)
        "diameter_scale": round(1 / cv["diameter"]["blob_width_median_ratio_before_scale"], 3),
    }
    save_model(state, config, WEIGHTS_DIR / cfg["name"])
    print(f"exported {cfg['name']}")


if __name__ == "__main__":
    main()
