"""Where a lung model's Dice on the COVID validation films goes: the retrocardiac convention, the opacity, the rest.

The SCR masks of JSRT (all a healthy-trained probe learns from) stop the lung at the heart's border; the COVID
sets' masks run the lung on behind the heart to the spine. A JSRT-trained model is therefore scored as missing
the retrocardiac lung on every COVID film, diseased or not, and synthetic pathology cannot teach it a drawing
convention its masks do not have. This script separates the two, per model and validation set:

- ``dice``: lung Dice against the reference (what ``lungx evaluate cxr`` prints);
- ``dice_outside_heart``: the same with the heart region left out of both masks (the heart of one fixed model,
  ``--heart-model``, the same region for every model compared): convention-neutral;
- ``dice_outside_cardiomediastinum``: with the reference cardiomediastinum left out instead (GB only);
- the reference lung each model misses, as shares of the reference: ``missed`` in all, ``missed_behind_heart``,
  ``missed_in_opacity`` (GB's reference opacity masks); ``extra``: predicted lung outside the reference;
- ``dice_if_retrocardiac_given`` / ``dice_if_opacity_given``: Dice with the missed reference lung behind the
  heart / under the opacity filled in (what a perfect fix of that one cause would reach).

    python -m training.eval_lung_convention --data ../shared/data --models cxr_lung_probe,cxr_anatomy
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lungx_core.eval.metrics import dice
from training.cxr_data import DATASETS, SPLITS_DIR, read_mask


def film_measures(pred: np.ndarray, ref: np.ndarray, heart: np.ndarray, opacity: np.ndarray | None,
                  cardio: np.ndarray | None) -> dict:
    """The measures of one film (bool masks on the reference's grid)."""
    missed = ref & ~pred
    n = max(int(ref.sum()), 1)
    out = {
        "dice": dice(pred, ref),
        "dice_outside_heart": dice(pred & ~heart, ref & ~heart),
        "missed": missed.sum() / n,
        "missed_behind_heart": (missed & heart).sum() / n,
        "extra": (pred & ~ref).sum() / n,
        "dice_if_retrocardiac_given": dice(pred | (ref & heart), ref),
    }
    if cardio is not None:
        out["dice_outside_cardiomediastinum"] = dice(pred & ~cardio, ref & ~cardio)
    if opacity is not None:
        out["missed_in_opacity"] = (missed & opacity).sum() / n
        out["dice_if_opacity_given"] = dice(pred | (ref & opacity), ref)
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--models", default="cxr_lung_probe,cxr_anatomy", help="comma-separated model names or files")
    ap.add_argument("--heart-model", default="cxr_anatomy", help="whose heart region is left out")
    ap.add_argument("--sets", default=",".join(DATASETS))
    args = ap.parse_args(argv)

    from lungx_core.anatomy import class_mask
    from lungx_core.image import MedicalImage
    from lungx_core.io.readers import read_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    models = args.models.split(",")
    segmenters = {m: CXRSegmenter(model=m) for m in models}
    heart_model = None if args.heart_model in segmenters else CXRSegmenter(model=args.heart_model)
    for name in args.sets.split(","):
        root = args.data / name
        per_model: dict[str, list[dict]] = {m: [] for m in models}
        for cid in (SPLITS_DIR / f"{name}_val.txt").read_text().split():
            ref = read_mask(root / "masks" / "lung" / f"{cid}.png")
            if not ref.any():  # unannotated, as lungx evaluate cxr skips it
                continue
            film = MedicalImage(read_radiograph(root / "images" / f"{cid}.png").array.astype(np.float32))
            results = {m: segmenter.segment(film) for m, segmenter in segmenters.items()}
            heart = (results.get(args.heart_model) or heart_model.segment(film)).masks["heart"]
            extra = {}
            for cls in ("opacity", "cardiomediastinum"):
                path = root / "masks" / cls / f"{cid}.png"
                extra[cls] = read_mask(path) if path.exists() else None
            for m, result in results.items():
                pred = class_mask(result.masks, "lung")
                per_model[m].append(film_measures(pred, ref, heart, extra["opacity"], extra["cardiomediastinum"]))
        summary = {m: {"n": len(rows), **{k: round(float(np.mean([r[k] for r in rows if k in r])), 4)
                                          for k in rows[0]}} for m, rows in per_model.items() if rows}
        print(json.dumps({name: summary}, indent=1), flush=True)


if __name__ == "__main__":
    main()
