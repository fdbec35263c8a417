"""Evaluation against reference masks on disk: CXR segmentation, CT lung segmentation.

Layouts read:
- ours (../shared/data): ``images/<id>.png`` and ``masks/<class>/<id>.png`` (0/255), classes among
  lung, lung_left, lung_right, heart, clavicles;
- Montgomery: ``CXR_png/<id>.png`` with ``ManualMask/leftMask|rightMask/<id>.png`` (scored as ``lung``);
- Shenzhen: ``CXR_png/<id>.png`` with ``mask/<id>_mask.png`` (``lung``).

An empty reference mask is read as "not annotated" and skipped for that class: every scored structure is
present on a frontal chest film, and some datasets write empty files for structures they did not label.

Opacity removal: the GB layout, ``images/<id>.png`` with ``masks/lung`` and ``masks/opacity`` (an empty
opacity mask is a valid "no opacity" reference there).

Bone suppression: ``images/<id>.<ext>`` with ``soft_tissue/<id>.<ext>`` (bs_gusarev_des_samples).

CT: ``<case>/ct.nii.gz`` with ``<case>/mask_lung_lr.nii.gz`` (1 right, 2 left), one folder per case (or the
folder itself is one case).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from lungx_core.anatomy import class_mask
from lungx_core.eval.metrics import dice, hd95, iou

if TYPE_CHECKING:
    from lungx_core.image import MedicalImage

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
            p = class_mask(pred, cls)
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


CT_REFERENCE = "mask_lung_lr.nii.gz"
CT_EVAL_STRUCTURES = {"lung_right": (1,), "lung_left": (2,), "lung": (1, 2)}


def discover_ct_cases(root: Path) -> list[tuple[str, Path, Path]]:
    """(case id, CT file, reference label map) for every case folder under ``root``."""
    root = Path(root)
    folders = [root] if (root / "ct.nii.gz").exists() else sorted(p for p in root.iterdir() if p.is_dir())
    cases = [(f.name, f / "ct.nii.gz", f / CT_REFERENCE) for f in folders]
    cases = [c for c in cases if c[1].exists() and c[2].exists()]
    if not cases:
        raise FileNotFoundError(f"{root}: no <case>/ct.nii.gz with <case>/{CT_REFERENCE}")
    return cases


def evaluate_ct(
    root: Path,
    segment: Callable[[Path], tuple[np.ndarray, tuple[float, float, float]]],
    on_case: Callable[[str, dict[str, float]], None] | None = None,
) -> dict:
    """Dice, absolute volume error (%) and HD95 (mm) per lung and for both together, plus seconds per case.

    ``segment`` maps a CT path to (labels in the file's array order, spacing in NumPy axis order).
    """
    import time

    import SimpleITK as sitk

    scores: dict[str, dict[str, list[float]]] = {m: {} for m in ("dice", "volume_error_pct", "hd95_mm")}
    seconds = []
    cases = discover_ct_cases(root)
    for case_id, ct_path, ref_path in cases:
        t0 = time.perf_counter()
        labels, spacing = segment(ct_path)
        seconds.append(time.perf_counter() - t0)
        reference = sitk.GetArrayFromImage(sitk.ReadImage(str(ref_path)))
        if reference.shape != labels.shape:
            raise ValueError(f"{ref_path}: reference shape {reference.shape} differs from the CT's {labels.shape}")
        per_case = {}
        for name, values in CT_EVAL_STRUCTURES.items():
            pred, truth = np.isin(labels, values), np.isin(reference, values)
            volume_error = 100.0 * abs(int(pred.sum()) - int(truth.sum())) / max(int(truth.sum()), 1)
            per_case[name] = dice(pred, truth)
            scores["dice"].setdefault(name, []).append(per_case[name])
            scores["volume_error_pct"].setdefault(name, []).append(volume_error)
            scores["hd95_mm"].setdefault(name, []).append(hd95(pred, truth, spacing))
        if on_case:
            on_case(case_id, per_case)
    summary: dict = {"n": len(cases)}
    for metric, by_structure in scores.items():
        summary[metric] = {k: round(float(np.mean(v)), 4) for k, v in by_structure.items()}
    summary["seconds_per_case"] = round(float(np.mean(seconds)), 3)
    return summary


def evaluate_synthesis(
    root: Path,
    synthesize: Callable[[Path, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    segment_lungs: Callable[[np.ndarray], np.ndarray],
    pathology_probability: Callable[[np.ndarray, np.ndarray], float],
    threshold: float = 0.5,
    ids: Iterable[str] | None = None,
    on_case: Callable[[str, dict[str, float]], None] | None = None,
) -> dict:
    """Scores of healthy -> pathological synthesis on films with known lung masks.

    ``synthesize(image_path, lung)`` returns (original, synthetic, changed_region) display-oriented arrays,
    ``changed_region`` being the thoracic crop the generator worked on. Per film:
    - mae_surroundings: mean |synthetic - original| outside the lung inside that region, intensities scaled to
      [0, 1] by the original's range (outside the region pixels are returned unchanged by construction);
    - lung_dice_preserved: Dice of our lung segmentation of the synthetic film against the known mask;
    - pathological: the classifier's call (probability >= ``threshold``) on the synthetic film.
    """
    cases = [c for c in discover_cases(root, ids) if "lung" in c.masks or {"lung_left", "lung_right"} <= set(c.masks)]
    mae, kept, calls = [], [], []
    for case in cases:
        files = case.masks.get("lung") or case.masks["lung_left"] + case.masks["lung_right"]
        lung = np.logical_or.reduce([_read_mask(f) for f in files])
        original, synthetic, region = synthesize(case.image, lung)
        scale = float(original.max() - original.min()) or 1.0
        outside = region & ~lung
        change = np.abs(synthetic.astype(np.float64) - original.astype(np.float64)) / scale
        per_case = {
            "mae_surroundings": float(change[outside].mean()) if outside.any() else 0.0,
            "lung_dice_preserved": dice(segment_lungs(synthetic), lung),
            "pathological_probability": pathology_probability(synthetic, lung),
        }
        mae.append(per_case["mae_surroundings"])
        kept.append(per_case["lung_dice_preserved"])
        calls.append(per_case["pathological_probability"] >= threshold)
        if on_case:
            on_case(case.case_id, per_case)
    if not cases:
        raise FileNotFoundError(f"{root}: no images with masks/lung (or masks/lung_left and lung_right)")
    return {
        "n": len(cases),
        "mae_surroundings": round(float(np.mean(mae)), 5),
        "lung_dice_preserved": round(float(np.mean(kept)), 4),
        "pathological_rate": round(float(np.mean(calls)), 4),
    }


OUTSIDE_MASK_DILATION = 0.02  # of the image's longer side: the reference opacity border is not sharp
CHANGED = 1e-4  # of the film's grey range: a pixel moved by less is unchanged (rounding of the written film)
# difference-of-Gaussians band, sigmas as fractions of the film's longer side: from vessels to rib shadows
STRUCTURE_BAND = (0.004, 0.02)


def recovered_share(before: float | None, after: float | None) -> float | None:
    """The share of the lung hidden from the probe that removal gave back: (after - before) / (1 - before) of
    the probe's lung recall under the opacity; None when nothing was hidden (recall 1) or unknown."""
    if before is None or after is None or before >= 1:
        return None
    return (after - before) / (1 - before)


def recall_under(found: np.ndarray, hidden: np.ndarray) -> float | None:
    """The share of the ``hidden`` pixels that ``found`` covers; None when nothing is hidden."""
    return float(found[hidden].mean()) if hidden.any() else None


def structure_kept(original: np.ndarray, result: np.ndarray, activation: np.ndarray | None) -> float | None:
    """Correlation of the :data:`STRUCTURE_BAND` images (a difference of Gaussians: vessels, rib shadows,
    borders) of ``original`` and ``result`` inside ``activation``, less a border as wide as twice the band's
    coarse scale (the mask's own soft edge is no structure). 1 when removal takes broad density away and keeps
    what lies in it; lower when it erases rib shadows or carves new borders. None without a mask or with
    nothing left of it."""
    from scipy import ndimage as ndi

    if activation is None or not activation.any():
        return None
    border = max(1, round(2 * STRUCTURE_BAND[1] * max(activation.shape)))
    core = ndi.binary_erosion(activation, iterations=border)
    if core.sum() < 2:
        return None
    before, after = structure_band(original)[core], structure_band(result)[core]
    if before.std() == 0 or after.std() == 0:
        return None
    return float(np.corrcoef(before, after)[0, 1])


def structure_band(image: np.ndarray) -> np.ndarray:
    """The image's :data:`STRUCTURE_BAND`, sigmas scaled to its longer side (float64)."""
    from scipy import ndimage as ndi

    img = np.asarray(image, dtype=np.float64)
    fine, coarse = (s * max(img.shape) for s in STRUCTURE_BAND)
    return ndi.gaussian_filter(img, fine) - ndi.gaussian_filter(img, coarse)


def gradient_energy(image: np.ndarray, region: np.ndarray) -> float:
    """Sum of squared forward differences (rows and columns) over the pixels of ``region``: the edges there."""
    img = np.asarray(image, dtype=np.float64)
    dr, dc = np.zeros_like(img), np.zeros_like(img)
    dr[:-1] = np.diff(img, axis=0)
    dc[:, :-1] = np.diff(img, axis=1)
    return float(((dr**2 + dc**2)[region]).sum())


def evaluate_opacity_removal(
    root: Path,
    remove: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]],
    segment_lungs: Callable[[np.ndarray], np.ndarray],
    opacity_probability: Callable[[np.ndarray, np.ndarray], float],
    ids: Iterable[str] | None = None,
    on_case: Callable[[str, dict[str, float]], None] | None = None,
    second_probe: Callable[[np.ndarray], np.ndarray] | None = None,
) -> dict:
    """Scores of opacity removal on films with reference lung and opacity masks.

    ``remove(image)`` returns the opacity-removed version of a display-oriented film and the remover's
    activation mask (the pixels it may change; None if it has none). Per film:
    - lung_dice_before/after: Dice of ``segment_lungs`` (a probe model trained on clear films only) on the
      original and on the result, against the reference lung mask: opacity hides lung from such a model;
    - change_outside_mask: mean |result - original| (intensities scaled to [0, 1] by the original's range)
      over the pixels outside the reference opacity mask dilated by 2 % of the image's longer side;
    - change_outside_activation: the same outside the remover's activation mask (only density it meant to take);
    - brighter_share: of the pixels changed by more than CHANGED of the range, the share made brighter (more
      attenuating): removal should only ever take density away;
    - gradient_energy_ratio_outside: the result's gradient energy over the original's, outside the dilated
      reference opacity: 1 when removal draws no new edges (rib bands, painted lung borders) elsewhere;
    - structure_kept_inside: :func:`structure_kept` inside the remover's activation mask: 1 when removal takes
      broad density away and keeps the vessels and rib shadows in it; lower when it erases them or carves new
      borders (a dark, featureless patch with a drawn border, which lung probes readily call lung);
    - lung_recall_in_opacity_before/after: the share of the reference lung under the reference opacity that the
      probe calls lung (films whose lung has no opacity are left out of its mean). What removal alone can move:
      the probe's other errors (lung it misses or adds away from any opacity, e.g. where its training masks
      drew the lung border differently from the reference) bound how far the Dice can rise;
    - recovered_share: (recall after - before) / (1 - before), per film and, in the summary, of the mean recalls;
    - lung_recall_in_opacity_ceiling: the recall had the probe also found every hidden lung pixel inside the
      remover's activation mask (what any remover confined to that mask could give back at best); the summary's
      recovered_share_ceiling is the recovered share it would make, from the mean recalls;
    - lung_dice_ceiling: that bound, the probe's Dice on the original had it also found every reference lung
      pixel under the opacity;
    - opacity_score_before/after: the opacity classifier's probability, on the reference lung field;
    - with ``second_probe`` (another lung model trained on clear films), its recall before/after and recovered
      share too (``second_probe_*``): a recovered share that only one probe sees is that probe's illusion.
    """
    from scipy import ndimage as ndi

    from lungx_core.io.readers import read_radiograph

    root = Path(root)
    cases = [
        c for c in discover_cases(root, ids)
        if "lung" in c.masks and (root / "masks" / "opacity" / f"{c.case_id}.png").exists()
    ]
    if not cases:
        raise FileNotFoundError(f"{root}: no images with both masks/lung and masks/opacity")
    scores: dict[str, list[float]] = {}
    for case in cases:
        original = read_radiograph(case.image).array
        lung = _read_mask(case.masks["lung"][0])
        opacity = _read_mask(root / "masks" / "opacity" / f"{case.case_id}.png")
        if lung.shape != original.shape or opacity.shape != original.shape:
            raise ValueError(f"{case.image}: reference masks do not match the image size {original.shape}")
        result, activation = remove(original)
        radius = max(1, round(OUTSIDE_MASK_DILATION * max(original.shape)))
        outside = ~ndi.binary_dilation(opacity, ndi.generate_binary_structure(2, 1), iterations=radius)
        scale = float(original.max() - original.min()) or 1.0
        delta = (result.astype(np.float64) - original.astype(np.float64)) / scale
        changed = np.abs(delta) > CHANGED
        found_before, found_after = segment_lungs(original), segment_lungs(result)
        hidden = lung & opacity
        before, after = recall_under(found_before, hidden), recall_under(found_after, hidden)
        energy = gradient_energy(original, outside) if outside.any() else 0.0
        per_case = {
            "lung_dice_before": dice(found_before, lung),
            "lung_dice_after": dice(found_after, lung),
            "lung_dice_ceiling": dice(found_before | hidden, lung),
            "lung_recall_in_opacity_before": before,
            "lung_recall_in_opacity_after": after,
            "recovered_share": recovered_share(before, after),
            "lung_recall_in_opacity_ceiling": (None if activation is None
                                               else recall_under(found_before | (activation > 0), hidden)),
            "change_outside_mask": float(np.abs(delta)[outside].mean()) if outside.any() else 0.0,
            "change_outside_activation": (None if activation is None or activation.all()
                                          else float(np.abs(delta)[~activation].mean())),
            "brighter_share": float((delta[changed] > 0).mean()) if changed.any() else None,
            "gradient_energy_ratio_outside": gradient_energy(result, outside) / energy if energy else None,
            "structure_kept_inside": structure_kept(original, result, activation),
            "opacity_score_before": opacity_probability(original, lung),
            "opacity_score_after": opacity_probability(result, lung),
        }
        if second_probe is not None:
            b2, a2 = recall_under(second_probe(original), hidden), recall_under(second_probe(result), hidden)
            per_case.update({"second_probe_lung_recall_in_opacity_before": b2,
                             "second_probe_lung_recall_in_opacity_after": a2,
                             "second_probe_recovered_share": recovered_share(b2, a2)})
        for k, v in per_case.items():
            scores.setdefault(k, [])
            if v is not None:
                scores[k].append(v)
        if on_case:
            on_case(case.case_id, per_case)
    summary = {"n": len(cases), **{k: round(float(np.mean(v)), 4 if "lung_" in k else 5) if v else None
                                   for k, v in scores.items()}}
    # the summary's recovered share is that of the mean recalls (the definition), not a mean of ratios
    if summary.get("lung_recall_in_opacity_ceiling") is not None:
        ceiling = recovered_share(summary["lung_recall_in_opacity_before"], summary["lung_recall_in_opacity_ceiling"])
        summary["recovered_share_ceiling"] = None if ceiling is None else round(ceiling, 4)
    for prefix in ("", "second_probe_"):
        if f"{prefix}recovered_share" in summary:
            share = recovered_share(summary[f"{prefix}lung_recall_in_opacity_before"],
                                    summary[f"{prefix}lung_recall_in_opacity_after"])
            summary[f"{prefix}recovered_share"] = None if share is None else round(share, 4)
    return summary


def linear_match(image: np.ndarray, reference: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``a * image + b`` (float64) with (a, b) the least-squares fit to ``reference`` over ``region``: scores
    then ignore a film's overall brightness and contrast, which dual-energy processing sets arbitrarily."""
    x = image[region].astype(np.float64)
    design = np.stack([x, np.ones_like(x)], axis=1)
    (a, b), *_ = np.linalg.lstsq(design, reference[region].astype(np.float64), rcond=None)
    return a * image.astype(np.float64) + b


def bone_suppression_scores(
    original: np.ndarray, result: np.ndarray, soft_tissue: np.ndarray, lung: np.ndarray
) -> dict[str, float]:
    """PSNR, SSIM and bone suppression ratio of ``original`` and ``result`` against the soft-tissue image, in
    the lung field, after each is linearly matched to it there (float throughout).

    PSNR's peak is the soft-tissue image's full range; SSIM is scikit-image's Gaussian-window map averaged over
    the lung field; BSR = 1 - sum((S - result)^2) / sum((S - original)^2) over the lung field (1: all bone
    signal removed, 0: none, negative: worse than the input).
    """
    from skimage.metrics import structural_similarity

    soft = soft_tissue.astype(np.float64)
    peak = float(soft.max() - soft.min()) or 1.0
    out: dict[str, float] = {}
    errors = {}
    for name, image in (("input", original), ("output", result)):
        matched = linear_match(image, soft, lung)
        errors[name] = float(np.sum((matched[lung] - soft[lung]) ** 2))
        mse = errors[name] / max(int(lung.sum()), 1)
        out[f"psnr_{name}"] = float("inf") if mse == 0 else float(10 * np.log10(peak**2 / mse))
        _, ssim_map = structural_similarity(soft, matched, data_range=peak, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, full=True)
        out[f"ssim_{name}"] = float(ssim_map[lung].mean())
    out["bsr"] = 1.0 - errors["output"] / errors["input"] if errors["input"] > 0 else 0.0
    return out


def evaluate_bone_suppression(
    root: Path,
    suppress: Callable[[MedicalImage, np.ndarray], np.ndarray],
    segment_lungs: Callable[[np.ndarray], np.ndarray],
    on_case: Callable[[str, dict[str, float]], None] | None = None,
) -> dict:
    """Scores of bone suppression on ``images/<id>.<ext>`` / ``soft_tissue/<id>.<ext>`` pairs (the
    bs_gusarev_des_samples layout): means of :func:`bone_suppression_scores` and the seconds ``suppress(path,
    lung)`` took per film. The lung field is ``segment_lungs`` on the input film."""
    import time

    from lungx_core.io.readers import read_radiograph

    root = Path(root)
    pairs = []
    for path in sorted((root / "images").glob("*")):
        targets = sorted((root / "soft_tissue").glob(f"{path.stem}.*"))
        if targets:
            pairs.append((path, targets[0]))
    if not pairs:
        raise FileNotFoundError(f"{root}: no images/<id> with a soft_tissue/<id> pair")
    scores: dict[str, list[float]] = {}
    for image_path, soft_path in pairs:
        image = read_radiograph(image_path)
        original = image.array
        soft = read_radiograph(soft_path).array
        if soft.shape != original.shape:
            raise ValueError(f"{soft_path}: {soft.shape[1]}x{soft.shape[0]} pixels, but the image is "
                             f"{original.shape[1]}x{original.shape[0]}")
        lung = segment_lungs(original)
        if not lung.any():
            raise ValueError(f"{image_path}: no lung field found")
        t0 = time.perf_counter()
        result = suppress(image, lung)
        seconds = time.perf_counter() - t0  # the suppression alone, not the scoring below
        per_case = {**bone_suppression_scores(original, result, soft, lung), "seconds": seconds}
        for k, v in per_case.items():
            scores.setdefault(k, []).append(v)
        if on_case:
            on_case(image_path.stem, per_case)
    mean = {k: float(np.mean(v)) for k, v in scores.items()}
    keys = ("psnr_input", "psnr_output", "ssim_input", "ssim_output", "bsr")
    return {"n": len(pairs), **{k: round(mean[k], 4) for k in keys},
            "seconds_per_image": round(mean["seconds"], 3)}


def read_nodules(path: Path) -> list[dict]:
    """``nodules.csv`` (the jsrt_scr layout): one row per nodule, ``id``, ``x``, ``y`` (centre on the 512-px
    image), ``diameter_px`` (on the 512-px image) and ``subtlety`` (1 hardest - 5 obvious)."""
    import csv

    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = {"id", "x", "y", "diameter_px"} - set(rows[0] if rows else {})
    if missing:
        raise ValueError(f"{path}: no column(s) {', '.join(sorted(missing))}")
    return rows


def nodule_hit_radius(row: dict, pixel_mm: float | None = None, min_radius_mm: float = 4.0) -> float:
    """A nodule's hit radius in pixels: its radius, and at least ``min_radius_mm`` (pixel size from the row's
    ``diameter_mm`` / ``diameter_px`` when given, else ``pixel_mm``; without either, its radius alone)."""
    d_px = float(row["diameter_px"])
    if row.get("diameter_mm"):
        pixel_mm = float(row["diameter_mm"]) / d_px
    return max(d_px / 2, min_radius_mm / pixel_mm) if pixel_mm else d_px / 2


def froc_summary(
    candidates: dict[str, list[tuple[float, float, float]]],
    truth: list[dict],
    pixel_mm: float | None = None,
    operating_fp: float = 1.0,
) -> dict:
    """Detection scores of ``candidates`` (film id -> [(x, y, probability)], every scored film a key, [] when
    it has none) against ``truth`` (``read_nodules`` rows; films with no row are normals): ``n_films``,
    ``n_nodules``, sensitivity at 0.125-8 false positives per image and their mean ``cpm``, image-level ``auc``
    (highest probability, nodule films vs normals), sensitivity at 2 FP/image per subtlety grade, and the
    ``operating_point`` (the lowest probability threshold with at most ``operating_fp`` false positives per
    image). A hit lies within the nodule's radius (at least 4 mm); see ``metrics.match_candidates``."""
    from lungx_core.eval.metrics import froc, match_candidates, roc_auc

    rows = [r for r in truth if r["id"] in candidates]
    nodules: dict[str, list] = {}
    for r in rows:
        nodules.setdefault(r["id"], []).append((float(r["x"]), float(r["y"]), nodule_hit_radius(r, pixel_mm)))
    if not rows:
        raise ValueError("none of the scored films has a nodule in nodules.csv")
    matched = match_candidates(candidates, nodules)
    n_films = len(candidates)
    curve = froc(matched, len(rows), n_films)
    films_with = {r["id"] for r in rows}
    scores = [max((c[2] for c in candidates[f]), default=0.0) for f in sorted(candidates)]
    labels = [int(f in films_with) for f in sorted(candidates)]
    auc = roc_auc(scores, labels) if 0 < sum(labels) < len(labels) else None

    fppi, sens, thr = (np.array(curve[k]) for k in ("fp_per_image", "curve_sensitivity", "thresholds"))

    def threshold_at(rate: float) -> float:
        ok = np.nonzero(fppi <= rate)[0]
        return float(thr[ok[np.argmax(sens[ok])]])

    # per subtlety: the share of each grade's nodules hit at the 2-FP/image threshold
    t2 = threshold_at(2.0)
    hit_at = {i: p >= t2 for p, h, i in matched if h}
    ordered_rows = [r for f in sorted(nodules) for r in rows if r["id"] == f]  # match_candidates' numbering
    grades: dict[str, list[bool]] = {}
    for k, r in enumerate(ordered_rows):
        grades.setdefault(str(r.get("subtlety", "")) or "unknown", []).append(bool(hit_at.get(k, False)))
    op = min(threshold_at(operating_fp), 1.0)  # inf: not even the most probable candidate is that sparse
    i = int(np.nonzero(thr >= op)[0][-1])
    return {
        "n_films": n_films, "n_nodules": len(rows),
        "sensitivity": {str(k): round(v, 4) for k, v in curve["sensitivity"].items()},
        "cpm": round(curve["cpm"], 4), "auc": None if auc is None else round(auc, 4),
        "sensitivity_at_2fp_by_subtlety": {g: round(float(np.mean(v)), 4) for g, v in sorted(grades.items())},
        "n_by_subtlety": {g: len(v) for g, v in sorted(grades.items())},
        "operating_point": {"probability": op, "fp_per_image": round(float(fppi[i]), 4),
                            "sensitivity": round(float(sens[i]), 4)},
        "curve": {"fp_per_image": [round(v, 4) for v in curve["fp_per_image"]],
                  "sensitivity": [round(v, 4) for v in curve["curve_sensitivity"]],
                  "thresholds": [min(v, 1.0) for v in curve["thresholds"]]},  # the origin's inf as 1
    }


def evaluate_nodules(
    root: Path,
    detect: Callable[[MedicalImage], list[tuple[float, float, float]]],
    on_case: Callable[[str, dict[str, float]], None] | None = None,
) -> dict:
    """Nodule detection on ``root/images/<id>.<ext>`` against ``root/nodules.csv`` (films without a row are
    normals; centres and sizes given on a 512-px image are scaled to the film's width): ``detect(image)`` gives
    (column, row, probability) candidates on the film's pixels. Returns :func:`froc_summary`; with reference lung
    masks (``root/masks/lung/<id>.png``, the jsrt_scr layout) also ``"lung_field"``: the same summary (without its
    curve) over the films whose every nodule centre lies in the reference lung field, and ``"films_left_out"``.
    Nodules behind the heart or below the diaphragm are where published JSRT figures often leave films out
    (Chen 2011's 140-nodule subset), so this is the figure to set beside theirs."""
    from lungx_core.io.readers import read_radiograph

    root = Path(root)
    by_film: dict[str, list[dict]] = {}
    for row in read_nodules(root / "nodules.csv"):
        by_film.setdefault(row["id"], []).append(row)
    candidates: dict[str, list] = {}
    truth: list[dict] = []
    for path in sorted(p for p in (root / "images").iterdir() if p.is_file() and not p.name.startswith(".")):
        film_id = path.name.split(".")[0]
        image = read_radiograph(path)
        found = detect(image)
        candidates[film_id] = found
        scale = image.array.shape[1] / 512.0
        truth += [{**r, "x": float(r["x"]) * scale, "y": float(r["y"]) * scale,
                   "diameter_px": float(r["diameter_px"]) * scale} for r in by_film.get(film_id, [])]
        if on_case:
            on_case(film_id, {"n_candidates": len(found), "max_probability": max((c[2] for c in found), default=0.0),
                              "n_nodules": len(by_film.get(film_id, []))})
    if not candidates:
        raise FileNotFoundError(f"{root / 'images'}: no films")
    summary = froc_summary(candidates, truth)
    scored = {f: by_film[f] for f in candidates if f in by_film}  # nodules.csv's rows: the 512-px grid
    field = lung_field_summary(candidates, truth, films_with_nodules_outside_lungs(root / "masks" / "lung", scored))
    if field is not None:
        summary["lung_field"] = field
    return summary


def lung_field_summary(
    candidates: dict[str, list[tuple[float, float, float]]],
    truth: list[dict],
    outside: set[str] | None,
    pixel_mm: float | None = None,
) -> dict | None:
    """:func:`froc_summary` (without its curve) over the films not in ``outside`` (those with a nodule outside
    the lung field: :func:`films_with_nodules_outside_lungs`), with ``"films_left_out"``; None when ``outside`` is
    None (no masks) or holds every nodule film."""
    if outside is None or all(r["id"] in outside for r in truth if r["id"] in candidates):
        return None
    kept = {f: c for f, c in candidates.items() if f not in outside}
    field = froc_summary(kept, [r for r in truth if r["id"] not in outside], pixel_mm=pixel_mm)
    field.pop("curve")
    return {**field, "films_left_out": sorted(outside)}


def films_with_nodules_outside_lungs(mask_dir: Path, nodules: dict[str, list[dict]]) -> set[str] | None:
    """The ids among ``nodules`` (film id -> nodules.csv rows, centres on the 512-px image) with a nodule centre
    outside the reference lung mask ``mask_dir/<id>.png`` (scaled from 512 px to the mask's width); None when
    ``mask_dir`` does not exist or lacks one of these films' masks."""
    if not mask_dir.is_dir():
        return None
    outside = set()
    for film_id, rows in nodules.items():
        path = mask_dir / f"{film_id}.png"
        if not path.is_file():
            return None
        mask = _read_mask(path)
        scale = mask.shape[1] / 512.0
        for r in rows:
            row = min(max(int(round(float(r["y"]) * scale)), 0), mask.shape[0] - 1)
            col = min(max(int(round(float(r["x"]) * scale)), 0), mask.shape[1] - 1)
            if not mask[row, col]:
                outside.add(film_id)
    return outside


KEPT_LOW = 0.8  # a nodule keeping less of its own contrast than this after bone suppression counts as taken
# a nodule whose own contrast (disc minus ring) is under this share of the film's grey range has no kept share:
# the ratio of two near-zero numbers is noise
CONTRAST_FLOOR = 0.005


def evaluate_nodule_conspicuity(
    root: Path,
    suppress: Callable[[MedicalImage, np.ndarray], np.ndarray],
    segment_lungs: Callable[[np.ndarray], np.ndarray],
    on_case: Callable[[str, dict[str, float]], None] | None = None,
) -> dict:
    """Each nodule's :func:`~lungx_core.eval.metrics.nodule_conspicuity` on the film and on ``suppress(image,
    lung)``, for ``root/nodules.csv`` and ``root/images/<id>.<ext>`` (centres and sizes given on a 512-px
    image are scaled to the film's width). Returns the medians before and after, the median ratio (after /
    before), the share of nodules dimmed (after < before), the median share of each nodule's own contrast kept
    (:func:`~lungx_core.eval.metrics.nodule_contrast` after / before; nodules whose contrast is under
    ``CONTRAST_FLOOR`` of the film's grey range are left out of it) and the share of those keeping less than
    ``KEPT_LOW`` of it, and the same per subtlety grade."""
    from lungx_core.eval.metrics import nodule_conspicuity, nodule_contrast
    from lungx_core.io.readers import read_radiograph

    root = Path(root)
    by_film: dict[str, list[dict]] = {}
    for row in read_nodules(root / "nodules.csv"):
        by_film.setdefault(row["id"], []).append(row)
    results = []
    for film_id, nodules in sorted(by_film.items()):
        paths = sorted((root / "images").glob(f"{film_id}.*"))
        if not paths:
            raise FileNotFoundError(f"{root / 'images'}: no image {film_id}.* for nodules.csv")
        image = read_radiograph(paths[0])
        output = suppress(image, segment_lungs(image.array))
        scale = image.array.shape[1] / 512.0
        grey_range = float(np.ptp(image.array))
        for k, nodule in enumerate(nodules):
            centre = (float(nodule["x"]) * scale, float(nodule["y"]) * scale)
            radius = max(float(nodule["diameter_px"]) * scale / 2, 1.0)
            before = nodule_conspicuity(image.array, centre, radius)
            after = nodule_conspicuity(output, centre, radius)
            contrast = nodule_contrast(image.array, centre, radius)
            measurable = abs(contrast) >= CONTRAST_FLOOR * grey_range
            case = {"conspicuity_before": before, "conspicuity_after": after,
                    "ratio": after / before if before else float("nan"),
                    "contrast_kept": nodule_contrast(output, centre, radius) / contrast if measurable else float("nan"),
                    "subtlety": int(nodule.get("subtlety") or 0)}
            results.append(case)
            if on_case:
                on_case(film_id if len(nodules) == 1 else f"{film_id}_{k + 1}", case)
    if not results:
        raise ValueError(f"{root / 'nodules.csv'} lists no nodule")
    return {**conspicuity_summary(results), "per_subtlety": {
        str(grade): conspicuity_summary([r for r in results if r["subtlety"] == grade])
        for grade in sorted({r["subtlety"] for r in results})}}


def conspicuity_summary(results: list[dict]) -> dict:
    """n, median conspicuity before and after, median ratio, share dimmed; over the nodules with a measurable
    contrast (``contrast_n``), the median contrast kept and the share keeping less than KEPT_LOW of it."""
    before = np.array([r["conspicuity_before"] for r in results])
    after = np.array([r["conspicuity_after"] for r in results])
    ratio = np.array([r["ratio"] for r in results])
    kept = np.array([r["contrast_kept"] for r in results])
    kept = kept[np.isfinite(kept)]
    return {"n": len(results), "conspicuity_before": round(float(np.median(before)), 4),
            "conspicuity_after": round(float(np.median(after)), 4),
            "median_ratio": round(float(np.nanmedian(ratio)), 4),
            "dimmed_share": round(float(np.mean(after < before)), 4),
            "contrast_n": int(kept.size),
            "contrast_kept": round(float(np.median(kept)), 4) if kept.size else None,
            f"kept_below_{KEPT_LOW}_share": round(float(np.mean(kept < KEPT_LOW)), 4) if kept.size else None}
