"""Ship a trained CXR anatomy run: fp16 safetensors + config + a model card with measured validation metrics.

    python training/export_cxr.py --run runs/cxr_unet --data ../shared/data

``--name`` ships the run under another model name: the lung probe of opacity removal, ``cxr_lung_probe``, is a
run trained on clear films only (``training/configs/cxr_unet_healthy_base.json``).

The card's metrics come from scoring the exported (fp16) weights with the same code as
``lungx evaluate cxr DIR --ids training/splits/<dataset>_val.txt``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.anatomy import CXR_CLASSES  # noqa: E402
from lungx_core.eval.evaluate import evaluate_cxr  # noqa: E402
from lungx_core.io.readers import read_radiograph  # noqa: E402
from lungx_core.io.writers import write_text_atomic  # noqa: E402
from lungx_core.models.store import WEIGHTS_DIR, model_paths, read_model_config, save_model  # noqa: E402
from lungx_core.tasks.cxr_segmentation import CXRSegmenter  # noqa: E402
from training.common import fp16_agreement  # noqa: E402
from training.cxr_data import DATASETS, SPLITS_DIR  # noqa: E402
from training.eval_cxr_plausibility import contact_sheet, film_plausibility, sheet_ids, summarise  # noqa: E402

NAME = "cxr_anatomy"


def validation_agreement(state: dict, cfg: dict, run: Path) -> float:
    """fp16 vs fp32 prediction Dice on the cached validation images (1.0 = identical)."""
    from lungx_core.models.networks import build_network
    from training.cxr_data import load_cache

    data = load_cache(run / "cache.npz")
    idx = np.nonzero(data["split"] == "val")[0][:48]
    x = torch.as_tensor(data["images"][idx].astype(np.float32))[:, None]
    return fp16_agreement(
        lambda: build_network(cfg["arch"], 1, len(CXR_CLASSES), **cfg.get("arch_options", {})), state, x
    )


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--name", default=NAME, help="model name in lungx_core/weights")
    ap.add_argument("--train-config", default="training/configs/cxr_unet.json", help="for the model card")
    args = ap.parse_args(argv)
    name = args.name

    cfg = json.loads((args.run / "config.json").read_text())
    ck = torch.load(args.run / "best.pt", weights_only=False)
    state = ck["model"]
    agreement = validation_agreement(state, cfg, args.run)
    print(f"fp16 vs fp32 prediction Dice on validation images: {agreement:.5f}", flush=True)
    if agreement < 0.999:
        raise SystemExit("fp16 weights change predictions; export in fp32 instead")
    model_cfg = {
        "name": name,
        "task": "cxr-anatomy",
        "arch": cfg["arch"],
        "arch_options": cfg.get("arch_options", {}),
        "in_channels": 1,
        "classes": list(CXR_CLASSES),
        "preprocess": cfg["preprocess"],
        "threshold": 0.5,
        "training": {"config": cfg, "best_epoch": int(ck["epoch"]), "val_at_training_resolution": ck["val"]},
    }
    refiner = read_model_config(name).get("clavicle_refiner") if model_paths(name)[1].exists() else None
    if refiner:  # the band network trained apart (training/export_clavicles.py) stays in use by this model's task
        model_cfg["clavicle_refiner"] = refiner
    before = None
    if cfg.get("pseudo_labels") and cfg.get("init"):  # plausibility on the NIH films, before and after
        before_segmenter = CXRSegmenter(cfg["init"], device="cpu")
        before = summarise(film_plausibility(args.data, before_segmenter))
    save_model(state, model_cfg, name)

    segmenter = CXRSegmenter(name, device="cpu")
    metrics = {}
    for ds in DATASETS:
        ids = (SPLITS_DIR / f"{ds}_val.txt").read_text().split()
        t0 = time.time()
        metrics[ds] = evaluate_cxr(args.data / ds, lambda p: segmenter.segment(read_radiograph(p)).masks, ids)
        print(ds, json.dumps(metrics[ds]), f"({time.time() - t0:.0f}s)", flush=True)
    model_cfg["validation"] = metrics
    from training.eval_heart_width import heart_width_report

    gb_val = (SPLITS_DIR / "covid_cxr_gb_seg_val.txt").read_text().split()
    model_cfg["heart_width_gb_val"] = heart_width_report(args.data, gb_val, segmenter)
    print("heart width on GB val", json.dumps(model_cfg["heart_width_gb_val"]), flush=True)
    if before is not None:
        model_cfg["plausibility_nih"] = {"before": before, "after": summarise(film_plausibility(args.data, segmenter))}
        pseudo = np.load(args.run / "pseudo.npz")
        kept = pseudo["labelled"][pseudo["split"] == "train"]
        model_cfg["pseudo_labels_kept"] = {"films": int(len(kept)), **{c: float(v) for c, v in
                                                                      zip(CXR_CLASSES, kept.mean(0), strict=True)}}
        print("plausibility on NIH", json.dumps(model_cfg["plausibility_nih"]), flush=True)
        contact_sheet(args.data, [before_segmenter, segmenter], sheet_ids(args.data), args.run / "plausibility_nih.png")
    save_model(state, model_cfg, name)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    card = model_card(name, model_cfg, metrics, agreement, commit, args.run, args.train_config)
    write_text_atomic(WEIGHTS_DIR / f"{name}.md", card)
    print(f"exported to {WEIGHTS_DIR}", flush=True)


def model_card(
    name: str, cfg: dict, metrics: dict, agreement: float, commit: str, run: Path, train_config: str
) -> str:
    tr = cfg["training"]["config"]
    n_params = sum(
        v.numel()
        for v in __import__("safetensors.torch").torch.load_file(str(WEIGHTS_DIR / f"{name}.safetensors")).values()
    )
    lines = [
        f"# Model card: `{name}` (CXR anatomy segmentation)",
        "",
        "## What it does",
        "Segments, on a frontal (PA/AP) chest radiograph: `lung_left`, `lung_right` (patient's sides), `heart`,",
        "`clavicle_left`, `clavicle_right`. Multi-label sigmoid outputs at 256x256 (letterboxed), mapped back to the",
        "input grid (the heart's probability first smoothed over 1 % of the frame), thresholded at 0.5, then cleaned",
        "(largest plausible component, holes filled).",
    ]
    if cfg.get("clavicle_refiner"):
        lines += [
            f"In the task (`lungx segment`, `CXRSegmenter`) the clavicles come from `{cfg['clavicle_refiner']}`, a",
            "second network on the band of the film above the lungs at about twice this resolution (its own card);",
            "the validation table below scores the task, so its clavicle rows are that network's.",
        ]
    lines += [
        "",
        "## Architecture and training",
        f"- MONAI `{cfg['arch']}` {cfg['arch_options']}, {n_params / 1e6:.2f} M parameters, stored in fp16 "
        f"(fp16 vs fp32 prediction agreement on validation images: Dice {agreement:.5f}).",
        f"- Preprocessing: {cfg['preprocess']}.",
        f"- Loss `{tr['loss']['name']}` {tr['loss']}; optimiser {tr['optimizer']}, one-cycle LR max {tr['lr']}, "
        f"{tr['epochs']} epochs, batch {tr['batch_size']}, seed {tr['seed']}; best epoch "
        f"{cfg['training']['best_epoch']} chosen on the validation split.",
        f"- Augmentation: {tr['augment']} (a mirror swaps left/right labels).",
        "- Per-dataset label masking: v7labs labels lungs only; GB labels lungs and (derived) heart; clavicles are"
        " learnt from JSRT/SCR" + (" and NIH pseudo-labels (below)." if tr.get("pseudo_labels") else " alone."),
        "",
        "## Data and split (../shared/data, research-only licences; nothing of it ships)",
        "- `jsrt_scr` (JSRT images, SCR masks): lungs L/R, heart, clavicles (split by side). 160 train / 40 val.",
        "- `covid_cxr_gb_seg` (radiologist masks): lungs L/R, and the heart as the radiologists' cardiomediastinum",
        "  below the level where the SCR heart starts (0.475 of the lung height from the apex;",
        "  `heart_from_cardiomediastinum` in training/cxr_data.py): heart borders on COVID (often AP) films.",
        "- `covid_cxr_v7labs` (V7 masks): lung union split into",
        "  L/R by connected components; V7 'ignore' regions (devices) carry zero loss weight.",
        "- The COVID sets are split jointly by `patientid` (images shared by both sets stay on one side), 20% val.",
        "- ID lists: `training/splits/<dataset>_{train,val}.txt`.",
    ]
    if tr.get("train_datasets"):
        lines.append(f"- **Trained on {', '.join(tr['train_datasets'])} only** (training films of the other sets "
                     "unused); the other sets are validated on all the same.")
    lines += [
        "",
        "## Validation metrics (full-resolution 512-px masks, the exported fp16 weights)",
        "Empty reference masks are read as unannotated and skipped (`lungx evaluate cxr` lists them on stderr).",
        "| dataset | n | class | Dice | IoU | HD95 (px) |",
        "|---|---|---|---|---|---|",
    ]
    for ds, m in metrics.items():
        for c in m["dice"]:
            lines.append(f"| {ds} | {m['n']} | {c} | {m['dice'][c]:.4f} | {m['iou'][c]:.4f} | {m['hd95_px'][c]:.2f} |")
    if "heart_width_gb_val" in cfg:
        h = cfg["heart_width_gb_val"]
        lines += [
            "",
            "Heart on the GB validation films (`python training/eval_heart_width.py --ids "
            "training/splits/covid_cxr_gb_seg_val.txt`):",
            f"median (predicted heart's widest row) / (widest row of the radiologist cardiomediastinum's lower half) "
            f"{h['median_heart_width_ratio']:.3f} over {h['n']} films; CTR in 0.35-0.75 on "
            f"{100 * h['ctr_in_plausible_range']:.0f} % (median {h['ctr_median']:.3f}); films outside that range "
            f"and not flagged: {h['outside_range_unflagged']}.",
        ]
    if tr.get("init"):
        lines += ["", f"Fine-tuned from the previously shipped `{tr['init']}` weights (config key `init`)."]
    if "plausibility_nih" in cfg:
        k = cfg["pseudo_labels_kept"]
        lines += [
            "",
            "## Learning from films without masks (NIH, pseudo-labels)",
            f"The {k['films']} NIH films of the training split (`training/cxr_pseudo_labels.py`, split by patient,"
            " 20 % held out) were labelled by the previous model, its probabilities averaged over three intensity",
            "variants, and each structure kept as a target only where it passed the plausibility checks (the rest of",
            f"the film's structures carry no loss): lungs kept on {100 * k['lung_left']:.0f} %, heart on "
            f"{100 * k['heart']:.0f} %, clavicles left/right on {100 * k['clavicle_left']:.0f} / "
            f"{100 * k['clavicle_right']:.0f} % of them.",
            "",
            "## Plausibility on the NIH films (`python training/eval_cxr_plausibility.py --model cxr_anatomy`)",
            "A heart is ragged when its solidity (area over convex-hull area) is under 0.9 (SCR reference hearts:"
            " 0.974-0.999); `val` films were never trained on, the others were pseudo-labelled training films.",
            "The task smooths the heart's probability over 1 % of the frame before thresholding (both rows).",
            "",
            "| model | films | n | hearts ragged | median heart solidity | both clavicles found |",
            "|---|---|---|---|---|---|",
        ]
        for label, key in (("previous", "before"), ("this", "after")):
            for group, g in cfg["plausibility_nih"][key].items():
                lines.append(f"| {label} | {group} | {g['n']} | {100 * g['heart_ragged']:.1f} % | "
                             f"{g['median_heart_solidity']:.3f} | {100 * g['clavicles_both']:.1f} % |")
    lines += [
        "",
        "## Reproduce",
        "```",
        f"python training/train_cxr.py --config {train_config} --data ../shared/data --run {run}",
        f"python training/export_cxr.py --run {run} --data ../shared/data --name {name} --train-config {train_config}",
        f"lungx evaluate cxr ../shared/data/jsrt_scr --ids training/splits/jsrt_scr_val.txt --model {name}",
        "```",
        f"Exported from commit {commit or 'unknown'} on 2 CPU cores.",
        "",
        "## Limits",
        "- Trained on adult frontal films; lateral views are rejected; paediatric films are untested.",
        "- Left/right assume standard display (patient's left on the image right) unless DICOM PatientOrientation",
        "  says otherwise; an anatomically inconsistent result is flagged, never silently swapped.",
        "- Clavicle labels come from one dataset (JSRT/SCR, 247 Japanese PA films); heart labels from JSRT/SCR and,",
        "  derived from cardiomediastinum masks, from the GB COVID films (the derived upper border is approximate).",
        "- CTR is measured on the film as taken: AP films magnify the heart (flagged `ap_view_ctr_magnified`).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
