"""Ship a clavicle band run (``train_clavicles.py``) as ``cxr_clavicles`` and let ``cxr_anatomy`` use it.

    python training/train_clavicles.py --config training/configs/clavicles_cxr.json --data ../shared/data \
        --run ../runs/clavicles --export

Writes the fp16 weights and config, names the refiner in ``cxr_anatomy.json`` (``clavicle_refiner``), then
measures the task with and without it, the same code as ``lungx evaluate cxr`` on the JSRT validation films and
``training/eval_cxr_plausibility.py`` on the NIH films, and writes both into the model card.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from lungx_core.cxr.clavicles import band_box, band_geometry, crop_band
from lungx_core.eval.evaluate import evaluate_cxr
from lungx_core.io.readers import read_radiograph
from lungx_core.io.writers import write_text_atomic
from lungx_core.models.networks import build_network
from lungx_core.models.store import WEIGHTS_DIR, model_paths, read_model_config, save_model
from lungx_core.tasks.cxr_segmentation import CXRSegmenter
from training.common import fp16_agreement
from training.cxr_data import SPLITS_DIR
from training.eval_cxr_plausibility import film_plausibility, summarise

NAME = "cxr_clavicles"
ANATOMY = "cxr_anatomy"


def export(run: Path, cfg: dict, data: Path = Path("../shared/data")) -> None:
    from training.train_clavicles import CLASSES, load_films

    ck = torch.load(run / "best.pt", weights_only=False)
    val = load_films(data, "val")
    anatomy = np.load(run / "anatomy_val.npz")
    band, shape = band_geometry(cfg)
    x = torch.stack([torch.from_numpy(crop_band(f, band_box(lungs, *band), shape))[None]
                     for f, lungs in zip(val["films"], anatomy["lungs"], strict=True)])
    agreement = fp16_agreement(lambda: build_network(cfg["arch"], 1, len(CLASSES), **cfg["arch_options"]),
                               ck["model"], x)
    print(f"fp16 vs fp32 prediction Dice on the validation bands: {agreement:.5f}", flush=True)
    if agreement < 0.999:
        raise SystemExit("fp16 weights change predictions; export in fp32 instead")
    model_cfg = {"name": NAME, "task": "cxr-clavicle-band", "arch": cfg["arch"], "arch_options": cfg["arch_options"],
                 "in_channels": 1, "classes": list(CLASSES), "band_rows": list(band[0]), "band_cols": list(band[1]),
                 "band_shape": list(shape), "size": shape[0],
                 "training": {"config": cfg, "best_epoch": int(ck["epoch"]), "val": ck["val"]}}
    save_model(ck["model"], model_cfg, NAME)
    anatomy_cfg = read_model_config(ANATOMY)
    anatomy_cfg["clavicle_refiner"] = NAME
    write_text_atomic(model_paths(ANATOMY)[1], json.dumps(anatomy_cfg, indent=2) + "\n")

    ids = (SPLITS_DIR / "jsrt_scr_val.txt").read_text().split()
    results, plausibility, seconds = {}, {}, {}
    for label, refine in (("anatomy network alone", False), ("with cxr_clavicles", True)):
        seg = CXRSegmenter(ANATOMY, device="cpu", refine_clavicles=refine)
        t0 = time.perf_counter()
        results[label] = evaluate_cxr(data / "jsrt_scr", lambda p, s=seg: s.segment(read_radiograph(p)).masks, ids)
        seconds[label] = (time.perf_counter() - t0) / len(ids)
        plausibility[label] = summarise(film_plausibility(data, seg))
        print(label, json.dumps(results[label]["dice"]), json.dumps(plausibility[label]), flush=True)
    model_cfg["validation"] = {"jsrt_scr": results, "plausibility_nih": plausibility,
                               "seconds_per_film": seconds}
    save_model(ck["model"], model_cfg, NAME)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    write_text_atomic(WEIGHTS_DIR / f"{NAME}.md", model_card(model_cfg, agreement, commit, run))
    print(f"exported {NAME}; {ANATOMY} now refines its clavicles with it", flush=True)


def model_card(cfg: dict, agreement: float, commit: str, run: Path) -> str:
    tr = cfg["training"]["config"]
    n_params = sum(
        v.numel() for v in __import__("safetensors.torch").torch.load_file(str(model_paths(NAME)[0])).values())
    val = cfg["validation"]
    rows, cols, shape = cfg["band_rows"], cfg["band_cols"], cfg["band_shape"]
    lines = [
        f"# Model card: `{NAME}` (clavicles on a band of the film, at about twice the anatomy network's resolution)",
        "",
        "## What it does",
        "`cxr_anatomy` sees the whole film at 256 px, where a clavicle is a few pixels wide. `lungx segment` (every",
        "task that segments a film through `CXRSegmenter`) then takes the band where the clavicles lie, placed by the",
        f"anatomy network's lung fields (rows {rows[0]:+.2f} to {rows[1]:+.2f} of the lungs' height from "
        f"their top, columns {cols[0]:+.2f} to {cols[1]:+.2f} of their width; on the 200 shared SCR films "
        "every clavicle lies between -0.02 and +0.31, and within 0.06-0.97),",
        f"resamples it to {shape[0]} x {shape[1]} px (a 512-px JSRT film's band is about that size),",
        "stretches it to its own 1-99 percentiles, and segments `clavicle_left` and `clavicle_right` there. Its",
        "logits replace the anatomy network's clavicles; outside the band there is no clavicle. The lungs and heart",
        "are the anatomy network's. `CXRSegmenter(..., refine_clavicles=False)` gives the network alone.",
        "",
        "## Architecture and training",
        f"- MONAI `{cfg['arch']}` {cfg['arch_options']}, {n_params / 1e6:.2f} M parameters, fp16 (fp16 vs fp32 "
        f"prediction agreement on the validation bands: Dice {agreement:.5f}).",
        "- Data: the 160 JSRT/SCR training films of `training/splits/jsrt_scr_train.txt` (the anatomy model's",
        "  split); SCR's clavicle mask split into sides by `split_by_side`. The 40 validation films choose the epoch.",
        f"- Each step draws {tr['batch_size']} films; a film's band is placed by its reference lungs with the lung",
        f"  box's edges moved by up to {tr['box_jitter']:.0%} of its size and the band up or down by up to "
        f"{tr.get('band_shift', 0):.0%} of its height, then {tr['augment']} and a mirror that",
        f"  swaps the sides. Loss `{tr['loss']['name']}`; Adam, one-cycle lr max {tr['lr']}, {tr['epochs']} epochs of",
        f"  {tr['films_per_epoch']} bands; seed {tr['seed']}; epoch {cfg['training']['best_epoch']} ships (best",
        "  validation Dice, band placed by the anatomy network's lungs as at inference).",
        "",
        "## Validation: JSRT (40 validation films, 512-px masks; `lungx evaluate cxr ../shared/data/jsrt_scr --ids",
        "training/splits/jsrt_scr_val.txt`)",
        "| `cxr_anatomy` | lung | heart | clavicles | clavicles IoU | clavicles HD95 (px) | seconds per film |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, m in val["jsrt_scr"].items():
        d = m["dice"]
        lines.append(f"| {label} | {d['lung']:.4f} | {d['heart']:.4f} | {d['clavicles']:.4f} | "
                     f"{m['iou']['clavicles']:.4f} | {m['hd95_px']['clavicles']:.2f} | "
                     f"{val['seconds_per_film'][label]:.3f} |")
    lines += [
        "",
        "## Plausibility on the NIH films (`python training/eval_cxr_plausibility.py`; `val`: films the anatomy",
        "model's pseudo-label training never saw; none of them trained this network)",
        "A clavicle is plausible when it is not flagged `implausible_clavicle_<side>_area` (under 1 % of its lung)",
        "or `_shape` (long axis under 0.4 of its lung's width, or under twice its short axis; SCR's lowest: 0.52",
        "and 2.5).",
        "",
        "| `cxr_anatomy` | films | n | both clavicles found | both found and plausible | hearts ragged |",
        "|---|---|---|---|---|---|",
    ]
    for label, groups in val["plausibility_nih"].items():
        for group, g in groups.items():
            lines.append(f"| {label} | {group} | {g['n']} | {100 * g['clavicles_both']:.1f} % | "
                         f"{100 * g['clavicles_both_plausible']:.1f} % | {100 * g['heart_ragged']:.1f} % |")
    lines += [
        "",
        "## What the pictures show (NIH films, anatomy network alone | with this network, looked at side by side)",
        "- On clear PA and AP films the clavicles are whole bars from the medial end to the lateral third, where the",
        "  network alone often drew a fragment or a stub; these are the films that move into 'found and plausible'.",
        "- Of the 20 NIH films where the network alone missed a clavicle, about half now get a plausible one. On the",
        "  rest (AP portable, lordotic or supine films whose clavicles lie high above the apices or over the neck) it",
        "  draws a blob or a short piece at the lung apex: found, but wrong, and flagged",
        "  `implausible_clavicle_<side>_shape` (that flag was added with this network; looked at on 6 flagged films:",
        "  every one a blob or a piece, not a clavicle).",
        "- The embedded sample (the DRR of a CT whose field starts below the clavicles) gets two small shapes inside",
        "  the lungs, both flagged.",
        "",
        "## Runs compared (same data, split and validation; `clavicles` is the validation Dice of the last epochs)",
        "| run | band rows, shape | band moved up/down | channels | clavicles | network ms (2 threads) |",
        "|---|---|---|---|---|---|",
        "| 1 | -0.08..+0.38, 192 x 448 | 0 | 16-256 | 0.930 | 35 |",
        "| 2 | -0.08..+0.38, 192 x 448 | 0 | 8-128 | 0.920 | 10 |",
        "| 3 (ships) | -0.22..+0.38, 240 x 448 | 12 % | 16-256 | 0.940 | 39 |",
        "The same 40 films choose the epoch and give the table above; over run 3's last ten epochs the validation",
        "Dice stayed within 0.9377-0.9395, so the choice adds little. Averaging with the mirror image gave run 1",
        "+0.003 for twice the time (not used).",
        "",
        "## Reproduce",
        "```",
        f"python training/train_clavicles.py --config training/configs/clavicles_cxr.json --data ../shared/data "
        f"--run {run} --threads 2",
        f"python training/train_clavicles.py --config training/configs/clavicles_cxr.json --data ../shared/data "
        f"--run {run} --export",
        "```",
        f"Exported from commit {commit or 'unknown'} on 2 CPU cores.",
        "",
        "## Limits",
        "- Learnt from one dataset (JSRT/SCR: 160 Japanese adult PA films); on NIH films (AP, portable, children) it",
        "  has no masks to learn from, and only the plausibility figures above say how it does there.",
        "- The band follows the anatomy network's lungs: where those are badly wrong, so is the band.",
        "",
    ]
    return "\n".join(lines)
