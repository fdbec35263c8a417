"""Evaluation of CXR segmentation against reference masks on disk.

Layouts read:
- ours (../shared/data): ``images/<id>.png`` and ``masks/<class>/<id>.png`` (0/255), classes among
  lung, lung_left, lung_right, heart, clavicles;
- Montgomery: ``CXR_png/<id>.png`` with ``ManualMask/leftMask|rightMask/<id>.png`` (scored as ``lung``);
- Shenzhen: ``CXR_png/<id>.png`` with ``mask/<id>_mask.png`` (``lung``).

An empty reference mask is read as "not annotated" and skipped for that class: every scored structure is
present on a frontal chest film, and some datasets write empty files for structures they did not label.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lungx_core.metrics import dice, hd95, iou

EVAL_CLASSES = ("lung", "lung_left", "lung_right", "heart", "clavicles")


@dataclass
class EvalCase:
    case_id: str
    image: Path
    masks: dict[str, list[Path]]  # class -> files whose union is the reference


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L")) > 127


def discover_cases(root: Path, ids: Iterable[str] | None = None) -> list[EvalCase]:
    root = Path(root)
    wanted = None if ids is None else set(ids)
    cases = []
    if (root / "images").is_dir():
        for img in sorted((root / "images").iterdir()):
            if img.suffix.lower() not in (".png", ".jpg", ".jpeg", ".tif", ".tiff") or img.name.startswith("."):
                continue
            cid = img.stem
            masks = {
                c: [root / "masks" / c / f"{cid}.png"]
                for c in EVAL_CLASSES
                if (root / "masks" / c / f"{cid}.png").exists()
            }
            cases.append(EvalCase(cid, img, masks))
    elif (root / "CXR_png").is_dir():
        for img in sorted((root / "CXR_png").glob("*.png")):
            cid = img.stem
            mont = [root / "ManualMask" / side / img.name for side in ("leftMask", "rightMask")]
            shen = root / "mask" / f"{cid}_mask.png"
            if all(p.exists() for p in mont):
                cases.append(EvalCase(cid, img, {"lung": mont}))
            elif shen.exists():
                cases.append(EvalCase(cid, img, {"lung": [shen]}))
    else:
        raise FileNotFoundError(f"{root}: no images/ or CXR_png/ folder (see `lungx evaluate cxr --help`)")
    if wanted is not None:
        cases = [c for c in cases if c.case_id in wanted]
    return [c for c in cases if c.masks]


def predicted_class_mask(masks: dict[str, np.ndarray], cls: str) -> np.ndarray:
    if cls == "lung":
        return masks["lung_left"] | masks["lung_right"]
    if cls == "clavicles":
        return masks["clavicle_left"] | masks["clavicle_right"]
    return masks[cls]


def evaluate_cxr(
    root: Path,
    segment: Callable[[Path], dict[str, np.ndarray]],
    ids: Iterable[str] | None = None,
    on_case: Callable[[str, dict[str, float]], None] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
) -> dict:
    """Mean Dice, IoU and HD95 (px) per reference class. ``segment`` maps an image path to our masks."""
    scores: dict[str, dict[str, list[float]]] = {m: {} for m in ("dice", "iou", "hd95_px")}
    cases = discover_cases(root, ids)
    for case in cases:
        pred = segment(case.image)
        per_case = {}
        for cls, files in case.masks.items():
            truth = np.logical_or.reduce([_read_mask(f) for f in files])
            if not truth.any():
                if on_skip:
                    on_skip(case.case_id, cls)
                continue
            p = predicted_class_mask(pred, cls)
            if p.shape != truth.shape:
                raise ValueError(f"{files[0]}: mask shape {truth.shape} differs from image shape {p.shape}")
            values = {"dice": dice(p, truth), "iou": iou(p, truth), "hd95_px": hd95(p, truth)}
            for metric, v in values.items():
                scores[metric].setdefault(cls, []).append(v)
            per_case[cls] = values["dice"]
        if on_case:
            on_case(case.case_id, per_case)
    summary: dict = {"n": len(cases)}
    for metric, by_class in scores.items():
        summary[metric] = {c: round(float(np.mean(v)), 4) for c, v in by_class.items()}
    return summary
