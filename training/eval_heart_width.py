"""How wide is the predicted heart on films with radiologist cardiomediastinum masks (the GB COVID set, often AP)?

    python training/eval_heart_width.py --data ../shared/data --ids training/splits/covid_cxr_gb_seg_val.txt \
        [--model cxr_anatomy]

Prints one JSON object: n; the median over films of (predicted heart's widest row) / (widest row of the lower half
of the radiologist's cardiomediastinum); the share of films whose CTR lies in the plausible range
(postprocess.CTR_PLAUSIBLE); and how many films outside that range are not flagged implausible_ctr.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.image import MedicalImage  # noqa: E402
from lungx_core.postprocess import CTR_PLAUSIBLE, row_extents  # noqa: E402
from lungx_core.tasks.cxr_segmentation import CXRSegmenter  # noqa: E402


def widest_row(mask: np.ndarray) -> int:
    """Largest (last - first + 1) filled column over rows; 0 for an empty mask."""
    return int(row_extents(mask).max())


def lower_half(mask: np.ndarray) -> np.ndarray:
    rows = np.nonzero(mask.any(axis=1))[0]
    out = mask.copy()
    if rows.size:
        out[: (rows[0] + rows[-1] + 1) // 2] = False
    return out


def heart_width_report(data: Path, ids: list[str], segmenter: CXRSegmenter) -> dict:
    """The figures this script prints, for ``ids`` of covid_cxr_gb_seg segmented by ``segmenter``."""
    folder = data / "covid_cxr_gb_seg"
    ratios, ctrs, unflagged = [], [], 0
    for case_id in ids:
        film = np.asarray(Image.open(folder / "images" / f"{case_id}.png").convert("L"))
        cm = np.asarray(Image.open(folder / "masks" / "cardiomediastinum" / f"{case_id}.png").convert("L")) > 127
        if not cm.any():
            continue
        result = segmenter.segment(MedicalImage(film))
        ratios.append(widest_row(result.masks["heart"]) / max(widest_row(lower_half(cm)), 1))
        ctr = result.measurements.ctr
        ctrs.append(ctr if ctr is not None else 0.0)
        outside = ctr is None or not CTR_PLAUSIBLE[0] <= ctr <= CTR_PLAUSIBLE[1]
        flagged = {"implausible_ctr", "heart_not_found"} & set(result.measurements.flags)
        unflagged += bool(outside and not flagged)
    ctrs_a = np.array(ctrs)
    return {
        "n": len(ratios),
        "median_heart_width_ratio": round(float(np.median(ratios)), 4),
        "ctr_in_plausible_range": round(float(((ctrs_a >= CTR_PLAUSIBLE[0]) & (ctrs_a <= CTR_PLAUSIBLE[1])).mean()), 4),
        "ctr_median": round(float(np.median(ctrs_a)), 4),
        "outside_range_unflagged": unflagged,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--ids", type=Path, required=True)
    ap.add_argument("--model", default="cxr_anatomy")
    args = ap.parse_args(argv)
    report = heart_width_report(args.data, args.ids.read_text().split(), CXRSegmenter(args.model, "cpu"))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
