"""Is the CXR anatomy plausible on films without masks? Ragged hearts and found clavicles on the NIH films.

    python training/eval_cxr_plausibility.py --data ../shared/data [--model cxr_anatomy] [--sheet out.png]

Prints one JSON object: for all NIH films, the adults (age >= 18, from index.csv), and the validation split of
``cxr_pseudo_labels.nih_anatomy_splits`` (films no pseudo-label training saw), the share of ragged hearts (solidity
under postprocess.HEART_MIN_SOLIDITY, or none found) and of films with both clavicles found. ``--sheet`` draws 12
validation films as the task's QC overlays for a look; the picture holds NIH pixels, so it stays outside git.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.postprocess import HEART_MIN_SOLIDITY  # noqa: E402
from lungx_core.tasks.cxr_segmentation import CXRSegmenter  # noqa: E402
from training.cxr_pseudo_labels import nih_anatomy_splits  # noqa: E402
from training.synthesis_data import NIH  # noqa: E402


def film_plausibility(data_root: Path, segmenter: CXRSegmenter) -> list[dict]:
    """One row per NIH film: id, split, adult, heart_solidity (None without a heart), clavicles_found, and
    clavicles_plausible (those found without an ``implausible_clavicle_*`` flag: too small, or not clavicle-shaped)."""
    from lungx_core.io.readers import read_radiograph

    with open(data_root / NIH / "index.csv", newline="") as f:
        index = list(csv.DictReader(f))
    splits = nih_anatomy_splits(data_root)
    rows = []
    for r in index:
        m = segmenter.segment(read_radiograph(data_root / NIH / "images" / f"{r['id']}.png")).measurements
        rows.append({"id": r["id"], "split": splits[r["id"]], "adult": int(r["age"]) >= 18,
                     "heart_solidity": m.heart_solidity, "clavicles_found": m.clavicles_found,
                     "clavicles_plausible": m.clavicles_found - sum(f.startswith("implausible_clavicle")
                                                                    for f in m.flags)})
    return rows


def summarise(rows: list[dict]) -> dict:
    """Shares of ragged hearts, of both clavicles found and of both found and plausible, over all films, adults,
    and the validation split."""
    groups = {"all": rows, "adults": [r for r in rows if r["adult"]], "val": [r for r in rows if r["split"] == "val"],
              "val_adults": [r for r in rows if r["split"] == "val" and r["adult"]]}
    out = {}
    for name, g in groups.items():
        ragged = [r["heart_solidity"] is None or r["heart_solidity"] < HEART_MIN_SOLIDITY for r in g]
        out[name] = {"n": len(g), "heart_ragged": float(np.mean(ragged)),
                     "median_heart_solidity": float(np.median([r["heart_solidity"] or 0.0 for r in g])),
                     "clavicles_both": float(np.mean([r["clavicles_found"] == 2 for r in g])),
                     "clavicles_both_plausible": float(np.mean([r["clavicles_plausible"] == 2 for r in g]))}
    return out


def sheet_ids(data_root: Path, n: int = 12) -> list[str]:
    """The held-out films the contact sheet shows: every sixth of them in id order, ``n`` at most."""
    return sorted(i for i, s in nih_anatomy_splits(data_root).items() if s == "val")[::6][:n]


def contact_sheet(data_root: Path, segmenters: list[CXRSegmenter], ids: list[str], out: Path, tile: int = 320) -> None:
    """Two films a row, one column per segmenter, each film drawn as the task's QC overlay."""
    from PIL import Image

    from lungx_core.anatomy import CXR_STRUCTURES
    from lungx_core.io.readers import read_radiograph
    from lungx_core.io.writers import render_overlay

    sheet = Image.new("RGB", (tile * len(segmenters) * 2, tile * ((len(ids) + 1) // 2)))
    for k, cid in enumerate(ids):
        image = read_radiograph(data_root / NIH / "images" / f"{cid}.png")
        for j, seg in enumerate(segmenters):
            picture = render_overlay(image, seg.segment(image).masks, CXR_STRUCTURES, max_side=tile)
            col = (k % 2) * len(segmenters) + j
            sheet.paste(Image.fromarray(picture).resize((tile, tile)), (col * tile, (k // 2) * tile))
    sheet.save(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", default="cxr_anatomy")
    ap.add_argument("--sheet", type=Path, help="draw 12 validation films here (outside git)")
    args = ap.parse_args(argv)
    segmenter = CXRSegmenter(args.model, device="cpu")
    print(json.dumps(summarise(film_plausibility(args.data, segmenter))), flush=True)
    if args.sheet:
        contact_sheet(args.data, [segmenter], sheet_ids(args.data), args.sheet)


if __name__ == "__main__":
    main()
