"""Ship a trained CT lung run: fp16 safetensors + config + a model card with measured metrics.

    python training/export_ct.py --run /work/runs/ct_unet --data ../shared/data

Every number in the card comes from running the exported fp16 weights through the same task code as
``lungx segment`` / ``lungx evaluate ct`` on the full-resolution staged CTs. QC overlays of every case are
written to ``<run>/overlays`` for review (they show research-only data and stay outside git).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.anatomy import CT_STRUCTURES  # noqa: E402
from lungx_core.eval.metrics import dice, hd95  # noqa: E402
from lungx_core.io.ct import read_ct  # noqa: E402
from lungx_core.io.writers import render_ct_overlay, write_png, write_text_atomic  # noqa: E402
from lungx_core.models.store import WEIGHTS_DIR, save_model  # noqa: E402
from lungx_core.tasks.ct_lungs import CTLungSegmenter  # noqa: E402
from training.common import fp16_agreement  # noqa: E402
from training.ct_data import SHOWCASE_CASES, TEST_CASES, TRAIN_CASES, VAL_CASES  # noqa: E402

NAME = "ct_lungs"
REPO = Path(__file__).resolve().parents[1]
STAGES = (  # (config, checkpoint exported) of the shipped model's training, in order
    ("training/configs/ct_unet.json", "best.pt"),
    ("training/configs/ct_unet_fov.json", "last.pt"),
    ("training/configs/ct_unet_mass.json", "last.pt"),
)
DENSE_HU = -300.0  # lung tissue denser than this is what thresholds lose: consolidation, masses, fluid


def validation_agreement(state: dict, cfg: dict, run: Path) -> float:
    """fp16 vs fp32 prediction Dice on the cached validation and test slices (1.0 = identical)."""
    from lungx_core.models.networks import build_network
    from lungx_core.preprocess import ct_window
    from training.ct_data import load_cache

    data = load_cache(run / "cache.npz")
    x = torch.from_numpy(ct_window(data["hu"][data["split"] != "train"]))[:, None]
    return fp16_agreement(lambda: build_network(cfg["arch"], 1, 2, **cfg.get("arch_options", {})), state, x)


def score_case(data: Path, case: str, run: Path, segmenters: dict[str, CTLungSegmenter]) -> dict:
    """Net and classical results on one CT: Dice/HD95 against its reference (or pseudo-label), volumes, and
    how much dense tissue each method keeps inside the lungs."""
    folder = data / case
    image = read_ct(folder / "ct.nii.gz")
    reference_path = folder / "mask_lung_lr.nii.gz"
    if not reference_path.exists():
        reference_path = run / "pseudo_labels" / f"{Path(case).name}_pseudo_lr.nii.gz"
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_path))) if reference_path.exists() else None
    kind = "reference" if "pseudo" not in reference_path.name else "classical pseudo-label"
    out: dict = {"reference": kind if reference is not None else "none"}
    voxel_ml = float(np.prod(image.spacing)) / 1000
    for method, segmenter in segmenters.items():
        result = segmenter.segment(image)
        row = {"seconds": round(result.seconds, 2), "flags": result.flags}
        row["volume_ml"] = {k: round(v, 1) for k, v in result.volumes_ml.items()}
        row["dense_ml_inside"] = round(float(((result.labels > 0) & (image.array > DENSE_HU)).sum()) * voxel_ml, 1)
        if reference is not None:
            for s in CT_STRUCTURES:
                pred, truth = result.labels == s.label, reference == s.label
                row[f"dice_{s.name}"] = round(dice(pred, truth), 4)
                row[f"hd95_mm_{s.name}"] = round(hd95(pred, truth, image.spacing[::-1]), 2)
        out[method] = row
        hu, labels, spacing = result.canonical
        canon = {s.name: labels == s.label for s in CT_STRUCTURES}
        write_png(
            run / "overlays" / f"{Path(case).name}_{method}.png", render_ct_overlay(hu, canon, CT_STRUCTURES, spacing)
        )
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--checkpoint", default="best.pt", help="best.pt (validation-selected) or last.pt")
    args = ap.parse_args(argv)

    cfg = json.loads((args.run / "config.json").read_text())
    ck = torch.load(args.run / args.checkpoint, weights_only=False)
    agreement = validation_agreement(ck["model"], cfg, args.run)
    print(f"fp16 vs fp32 prediction Dice on validation/test slices: {agreement:.5f}", flush=True)
    if agreement < 0.999:
        raise SystemExit("fp16 weights change predictions; export in fp32 instead")
    model_cfg = {
        "name": NAME,
        "task": "ct-lungs",
        "arch": cfg["arch"],
        "arch_options": cfg.get("arch_options", {}),
        "in_channels": 1,
        "classes": [s.name for s in CT_STRUCTURES],
        "size": cfg["size"],
        "threshold": 0.5,
        "training": {"config": cfg, "checkpoint": args.checkpoint, "epoch": int(ck["epoch"])},
    }
    save_model(ck["model"], model_cfg, NAME)
    segmenters = {"net": CTLungSegmenter("net", NAME, "cpu"), "classical": CTLungSegmenter("classical")}
    metrics = {}
    groups = (("test", TEST_CASES), ("val", VAL_CASES), ("train", TRAIN_CASES), ("pathological", SHOWCASE_CASES))
    for split, cases in groups:
        for case in cases:
            if (args.data / case / "ct.nii.gz").exists():
                metrics[case] = {"split": split, **score_case(args.data, case, args.run, segmenters)}
                print(case, json.dumps(metrics[case]), flush=True)
    model_cfg["evaluation"] = metrics
    save_model(ck["model"], model_cfg, NAME)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    write_text_atomic(WEIGHTS_DIR / f"{NAME}.md", model_card(model_cfg, metrics, agreement, commit, args.run))
    print(f"exported to {WEIGHTS_DIR}", flush=True)


def model_card(cfg: dict, metrics: dict, agreement: float, commit: str, run: Path) -> str:
    from safetensors.torch import load_file

    tr = cfg["training"]["config"]
    n_params = sum(v.numel() for v in load_file(str(WEIGHTS_DIR / f"{NAME}.safetensors")).values())
    lines = [
        f"# Model card: `{NAME}` (CT lung segmentation, right/left)",
        "",
        "## What it does",
        "Segments `lung_right` and `lung_left` (label map 1 right, 2 left) on a chest CT, slice by slice in",
        "canonical axial orientation (so left/right are anatomical whatever the direction matrix). Each axial slice",
        f"is windowed to [-1024, 600] HU, letterboxed to {cfg['size']}x{cfg['size']}; logits are mapped back to the",
        "slice grid, thresholded at 0.5; each lung keeps its large 3-D components, holes filled per slice.",
        "",
        "## Architecture and training",
        f"- MONAI `{cfg['arch']}` {cfg['arch_options']}, {n_params / 1e6:.2f} M parameters, fp16 (fp16 vs fp32",
        f"  prediction agreement on validation/test slices: Dice {agreement:.5f}).",
        f"- Loss {tr['loss']}; Adam, one-cycle LR max {tr['lr']}, {tr['epochs']} epochs, batch {tr['batch_size']},",
        f"  seed {tr['seed']}; exported checkpoint `{cfg['training']['checkpoint']}` (epoch "
        f"{cfg['training']['epoch']}).",
        f"- Augmentation: {tr['augment']}. `pathology_prob` is the share of slices that get synthetic",
        "  consolidation, ground glass, dependent (fluid-like) density, juxtapleural nodules or (where",
        "  `pathology_kinds` names them) peripheral masses against the chest wall, none below `mass_min_level` of",
        "  the lungs' height, painted inside the lung mask (`training/synthetic_pathology.py`); the label stays lung.",
        "",
        "## Data (../shared/data, research-only licences; nothing of it ships)",
        "Labels are pseudo-labels from the classical pipeline (`lungx_core/ct/classical.py`), except",
        "ct_slicerio_chest4, which has its own reference masks. Split by CT (each CT is one patient):",
        f"- train: {', '.join(Path(c).name for c, m in metrics.items() if m['split'] == 'train')};",
        f"- val (epoch selection): {', '.join(Path(c).name for c, m in metrics.items() if m['split'] == 'val')};",
        "- test (never used for training or selection): ct_slicerio_chest4 against its reference masks;",
        "- pathological cases excluded from training because thresholds cut dense lung out of their",
        "  pseudo-labels: " + ", ".join(Path(c).name for c, m in metrics.items() if m["split"] == "pathological") + ".",
        "",
        "## Measured (exported fp16 weights, full-resolution staged CTs, 2 CPU cores)",
        "`dense mL` = lung volume denser than -300 HU kept inside the masks (consolidation, masses, fluid-like).",
        "| CT | split | reference | method | Dice R | Dice L | HD95 R mm | HD95 L mm | R mL | L mL | dense mL | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case, m in metrics.items():
        for method in ("net", "classical"):
            r = m[method]
            lines.append(
                f"| {Path(case).name} | {m['split']} | {m['reference']} | {method} | {r.get('dice_lung_right', '-')} | "
                f"{r.get('dice_lung_left', '-')} | {r.get('hd95_mm_lung_right', '-')} | "
                f"{r.get('hd95_mm_lung_left', '-')} | {r['volume_ml']['lung_right']} | {r['volume_ml']['lung_left']} | "
                f"{r['dense_ml_inside']} | {r['seconds']} |"
            )
    lines += [
        "",
        "Train rows score the network against the pseudo-labels it was trained on: a consistency check, not a",
        "generalisation measure. On the pathological CTs the pseudo-labels are known to miss dense lung, so",
        "a lower Dice there with more dense mL inside is the intended behaviour; judge them on the overlays.",
        "",
    ]
    fields = run / "fields.md"  # training/eval_ct_fields.py's table for the exported weights, when measured
    if fields.exists():
        lines += [
            "## Fields of view and grids as scanners send them",
            "Each shared CT segmented whole, then cut or resampled and segmented again, and scored against the",
            "whole CT's labels cut the same way (`training/eval_ct_fields.py`: hemi = 55 % of the columns from",
            "that side, lung = that lung's box with 15 mm margin, tight = 10 % off every edge, off-centre = rows",
            "10-80 % and columns 25-100 %, thick = slabs averaged to 5 / 8 mm, aspect = columns averaged in pairs /",
            "fours).",
            "",
            fields.read_text().strip(),
            "",
        ]
    # each stage fine-tunes the model the one before it shipped; the run's own config says which stage it is
    known = [i for i, (config, _) in enumerate(STAGES) if json.loads((REPO / config).read_text()) == tr]
    stages = list(STAGES[: known[0] + 1]) if known else [*STAGES[:1], ("<this run's config>", "last.pt")]
    stages[-1] = (stages[-1][0], cfg["training"]["checkpoint"])
    lines += ["## Reproduce", "```"]
    for i, (config, checkpoint) in enumerate(stages):
        folder = f"{run}_stage{i + 1}" if i < len(stages) - 1 else str(run)
        lines += [
            f"python training/train_ct.py --config {config} --data ../shared/data --run {folder}",
            f"python training/export_ct.py --run {folder} --data ../shared/data --checkpoint {checkpoint}",
        ]
    if fields.exists():
        lines.append(f"python training/eval_ct_fields.py --data ../shared/data --out {run}/fields.csv")
        lines.append(f"python training/eval_ct_fields.py --data ../shared/data --mass 150 --variants hemi_right "
                     f"hemi_left lung_right lung_left --out {run}/mass150.csv")
    lines += [
        "lungx evaluate ct ../shared/data/ct_slicerio_chest4",
        "```",
        f"Exported from commit {commit or 'unknown'} on 2 CPU cores.",
        "",
        "## Limits",
        "- Five training CTs (pseudo-labelled) and one small labelled test CT: treat the numbers as a sanity check,",
        "  and look at the QC overlay of every study.",
        "- Trachea and main bronchi are excluded as the pseudo-labels exclude them; lobes are not separated.",
        "- Slices are segmented independently (2-D); 3-D consistency comes from the component clean-up.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
