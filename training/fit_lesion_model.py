"""Fit the lesion model (``lungx_core/weights/cxr_lesions.json``) on real radiologist opacity masks.

    python training/fit_lesion_model.py --data ../shared/data [--out lungx_core/weights/cxr_lesions.json]

Measured on the covid_cxr_gb_seg *training* films (split by patientid, training/splits) that have opacity masks:

- gains: for each ground-glass and each consolidation mask, how far the film inside it sits above the clear
  lung right around it (a ring of lung outside every opacity: same zone), as a fraction of the film's
  soft-tissue minus clear-lung contrast (``lesions.soft_tissue_level``); the model draws between the median
  and the 90th percentile (``upper_gains`` says why not lower).
- area: the share of the lung field the opacity mask covers (10th-90th percentile);
- bilateral: the share of films with opacity in both lungs (at least 2 % of each lung);
- zone priors: the share of opacity in the lower half of each lung and in its outer (chest-wall) half; the prior
  weights of ``plan_lesion`` are chosen on a grid so that drawn lesions on these lungs match both shares.

Only these statistics are written: no pixels or masks of the films.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.generative.lesions import MODEL_FILE, LesionModel, LesionRequest, plan_lesion, soft_tissue_level  # noqa: E402
from training.synthesis_data import read_gray  # noqa: E402

DATASET = "covid_cxr_gb_seg"
SPLITS = Path(__file__).parent / "splits"


def _mask(root: Path, cls: str, id_: str) -> np.ndarray:
    path = root / "masks" / cls / f"{id_}.png"
    return read_gray(path) > 127 if path.exists() else None


def _lower_outer_share(opacity: np.ndarray, sides: dict[str, np.ndarray]) -> tuple[float, float]:
    """(share of opacity pixels in the lower half of their lung, share in the outer half)."""
    lower = outer = total = 0
    for side, m in sides.items():
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        if rows.size == 0:
            continue
        r_mid, c_mid = (rows[0] + rows[-1]) / 2, (cols[0] + cols[-1]) / 2
        rr, cc = np.nonzero(opacity & m)
        lower += int((rr > r_mid).sum())
        outer += int(((cc < c_mid) if side == "right" else (cc > c_mid)).sum())
        total += len(rr)
    return lower / max(total, 1), outer / max(total, 1)


def measure(data: Path) -> dict:
    root = data / DATASET
    train = set((SPLITS / f"{DATASET}_train.txt").read_text().split())
    with open(root / "index.csv", newline="") as f:
        ids = [r["id"] for r in csv.DictReader(f) if r["id"] in train]
    gains = {"ggo": [], "consolidation": []}
    areas, bilateral, lower, outer, lungs = [], [], [], [], []
    for id_ in ids:
        image = read_gray(root / "images" / f"{id_}.png").astype(np.float32)
        sides = {"right": _mask(root, "lung_right", id_), "left": _mask(root, "lung_left", id_)}
        opacity = _mask(root, "opacity", id_)
        if any(m is None for m in sides.values()) or opacity is None:
            continue
        lung = sides["right"] | sides["left"]
        if lung.mean() < 0.02:
            continue
        lungs.append(lung)
        opacity &= lung
        clear = lung & ~opacity
        if opacity.sum() < 0.01 * lung.sum() or clear.sum() < 0.1 * lung.sum():
            continue
        level, clear_level = soft_tissue_level(image, lung), float(np.median(image[clear]))
        contrast = level - clear_level
        if contrast <= 5:  # a washed-out film says nothing about gains
            continue
        height = np.ptp(np.nonzero(lung.any(axis=1))[0]) + 1
        for kind in gains:
            m = _mask(root, kind, id_)
            if m is None or (m & lung).sum() < 0.01 * lung.sum():
                continue
            # the clear lung right around the lesion: same zone, same overlying soft tissue
            ring = ndi.binary_dilation(m, iterations=max(2, int(0.08 * height))) & clear
            if ring.sum() < 0.25 * (m & lung).sum():
                continue
            gains[kind].append((float(image[m & lung].mean()) - float(image[ring].mean())) / contrast)
        areas.append(float(opacity.sum() / lung.sum()))
        bilateral.append(all((opacity & m).sum() >= 0.02 * m.sum() for m in sides.values()))
        lo, ou = _lower_outer_share(opacity, sides)
        lower.append(lo)
        outer.append(ou)
    return {"gains": gains, "areas": areas, "bilateral": bilateral, "lower": lower, "outer": outer, "lungs": lungs}


def upper_gains(values: list[float], floor: float = 0.08) -> tuple[float, float]:
    """The gain range drawn from: the median to the 90th percentile of the measured lifts. Outlined regions
    are generous (a ground-glass outline holds much lung that is hardly denser than its ring, and the ring is
    often hazy too), so the lower half of the measured lifts mostly says how loosely they were drawn; a lesion
    must also stay visible (``floor``)."""
    lo, hi = (float(v) for v in np.percentile(values, [50, 90]))
    lo = max(lo, floor)
    return round(lo, 3), round(max(hi, lo + 0.1), 3)


def drawn_shares(model: LesionModel, lungs: list[np.ndarray], areas: list[float], seed: int = 0) -> tuple[float, float]:
    """Mean (lower-half share, outer-half share) of lesions drawn with ``model`` on the real lungs."""
    from lungx_core.generative.lesions import split_lungs

    rng = np.random.default_rng(seed)
    lo, ou = [], []
    for i, lung in enumerate(lungs):
        lesion = plan_lesion(lung[::2, ::2], LesionRequest(area=areas[i % len(areas)], side="both", strokes=0), rng,
                             model)
        a, b = _lower_outer_share(lesion.hard, split_lungs(lung[::2, ::2]))
        lo.append(a)
        ou.append(b)
    return float(np.mean(lo)), float(np.mean(ou))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=MODEL_FILE)
    args = ap.parse_args(argv)
    m = measure(args.data)
    q = lambda v: tuple(round(float(x), 3) for x in np.percentile(v, [10, 90]))  # noqa: E731
    model = LesionModel(
        gain_ggo=upper_gains(m["gains"]["ggo"]),
        gain_consolidation=upper_gains(m["gains"]["consolidation"]),
        area=q(m["areas"]),
        bilateral=round(float(np.mean(m["bilateral"])), 3),
        source=f"{DATASET} training split (training/splits/{DATASET}_train.txt), {len(m['areas'])} films with "
        "opacity masks",
    )
    target = (float(np.mean(m["lower"])), float(np.mean(m["outer"])))
    best = None
    for lz in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0):
        for pe in (0.0, 0.5, 1.0, 1.5, 2.0):
            trial = replace(model, lower_zone=lz, peripheral=pe)
            got = drawn_shares(trial, m["lungs"], m["areas"])
            err = abs(got[0] - target[0]) + abs(got[1] - target[1])
            if best is None or err < best[0]:
                best = (err, trial, got)
    _, model, got = best
    measured = {
        "films": len(m["areas"]),
        "ggo_masks": len(m["gains"]["ggo"]),
        "consolidation_masks": len(m["gains"]["consolidation"]),
        "gain_ggo_median": round(float(np.median(m["gains"]["ggo"])), 3),
        "gain_consolidation_median": round(float(np.median(m["gains"]["consolidation"])), 3),
        "area_median": round(float(np.median(m["areas"])), 3),
        "lower_half_share": round(target[0], 3),
        "outer_half_share": round(target[1], 3),
        "drawn_lower_half_share": round(got[0], 3),
        "drawn_outer_half_share": round(got[1], 3),
    }
    args.out.write_text(json.dumps({"model": model.as_dict(), "measured": measured}, indent=2) + "\n")
    print(json.dumps(measured, indent=2))


if __name__ == "__main__":
    main()
