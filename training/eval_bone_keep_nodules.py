"""Nodule conspicuity after bone suppression with the bone image spared at *held-out* detector findings.

`lungx suppress-ribs` (keep_nodules on) takes the bone image out of the nodule detector's findings. On the JSRT
films the shipped detector trained on every film, so `lungx evaluate bone-suppression ../shared/data/jsrt_scr`
measures it in-sample. This script measures it as a new film would meet it: each film's findings come from the
cross-validation fold that held that film out (`<run>/fold_<k>/candidates.csv` of `training/train_nodules.py`,
diameters scaled by the shipped model's `diameter_scale`), at the shipped operating point. It prints the
conspicuity summary without and with sparing (same films, same bone model, same code as the task).

Conspicuity and contrast kept on real nodules cannot tell a nodule kept from a rib left in its disc (both keep
the disc bright). ``--simulated N`` therefore also pastes N simulated nodules (``training/nodule_sim.py``, JSRT's
sizes and contrasts) into each JSRT normal film and runs the task itself (detector and all) on it: a nodule's
*own* contrast kept is the suppressed film's disc-minus-ring contrast with the nodule minus that of the same film
without it, suppressed with the same discs spared, over the same difference before suppression (1: the bone
image took none of the nodule).

    python -m training.eval_bone_keep_nodules --run ../runs/nod_bone3k_hard --data ../shared/data [--per-case X.csv]
    python -m training.eval_bone_keep_nodules --simulated 2 --data ../shared/data
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np


def held_out_findings(run: Path, threshold: float, diameter_scale: float) -> dict[str, list[dict]]:
    """{film id: [{"row", "col", "diameter_px"}, ...]} on the 512-px grid: each fold's candidates at or above
    ``threshold`` (every film is in exactly one fold's held-out set)."""
    found: dict[str, list[dict]] = {}
    for path in sorted(run.glob("fold_[0-9]*/candidates.csv")):
        with open(path) as f:
            for r in csv.DictReader(f):
                if float(r["probability"]) >= threshold:
                    found.setdefault(r["case_id"], []).append(
                        {"row": float(r["row"]), "col": float(r["col"]),
                         "diameter_px": float(r["diameter_px"]) * diameter_scale})
    return found


def simulated_nodules_kept(data: Path, per_film: int, seed: int = 0) -> dict:
    """Own contrast kept of ``per_film`` simulated nodules in each JSRT normal film (module docstring), with the
    task's sparing (``spared``) and without it (``plain``); ``found``: the share the detector found."""
    from lungx_core.image import MedicalImage
    from lungx_core.io.readers import read_radiograph
    from lungx_core.preprocess import normalise_intensity
    from lungx_core.tasks.rib_suppression import RibSuppressor, SuppressionSettings
    from training.nodule_sim import measure_contrast, random_nodules, render_nodules
    from training.synthesis_data import read_gray

    rng = np.random.default_rng(seed)
    suppressor = RibSuppressor(device="cpu")
    kept: dict[str, list[float]] = {"spared": [], "plain": []}
    found = []
    for path in sorted((data / "jsrt_scr" / "images").glob("JPCNN*.png")):
        film = normalise_intensity(read_radiograph(path).array.astype(np.float32), 0.5, 99.5)
        scale = film.shape[1] / 512.0
        lung = read_gray(data / "jsrt_scr" / "masks" / "lung" / path.name) > 127
        nodules = random_nodules(lung, rng, per_film, (7 * scale, 43 * scale), anywhere=0.0)
        with_nodules = film + render_nodules(film.shape, nodules, rng)
        # the task itself, with and without the nodules, sparing the same discs in both (or none: plain)
        task = suppressor.suppress(MedicalImage(with_nodules), None, SuppressionSettings())
        without = suppressor.suppress(MedicalImage(film), None, SuppressionSettings(), findings=task.spared).array
        plain = SuppressionSettings(keep_nodules=False)
        plain_with = suppressor.suppress(MedicalImage(with_nodules), None, plain).array
        plain_without = suppressor.suppress(MedicalImage(film), None, plain).array
        for n in nodules:
            def contrast(a, n=n):
                return measure_contrast(a, n.x, n.y, n.diameter)

            own = contrast(with_nodules) - contrast(film)
            if own <= 0:
                continue
            kept["spared"].append((contrast(task.array) - contrast(without)) / own)
            kept["plain"].append((contrast(plain_with) - contrast(plain_without)) / own)
            found.append(any(np.hypot(f["col"] - n.x, f["row"] - n.y) < n.diameter for f in task.spared))
    hit = np.array(found)

    def summary(values: list[float]) -> dict:
        v = np.array(values)
        return {"median_kept": round(float(np.median(v)), 4),
                "kept_below_0.8_share": round(float(np.mean(v < 0.8)), 4),
                "median_kept_found": round(float(np.median(v[hit])), 4) if hit.any() else None,
                "median_kept_missed": round(float(np.median(v[~hit])), 4) if (~hit).any() else None}

    return {"n": len(found), "found": round(float(hit.mean()), 4), **{k: summary(v) for k, v in kept.items()}}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, help="a train_nodules run with fold_<k>/candidates.csv")
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument("--model", default="cxr_nodules", help="the detector whose operating point and size scale apply")
    ap.add_argument("--per-case", type=Path, help="one row per nodule and setting")
    ap.add_argument("--simulated", type=int, default=0, help="instead: N simulated nodules per JSRT normal film")
    args = ap.parse_args(argv)
    if args.simulated:
        print(json.dumps(simulated_nodules_kept(args.data, args.simulated)))
        return

    from lungx_core.eval.evaluate import evaluate_nodule_conspicuity
    from lungx_core.eval.runners import lung_finder
    from lungx_core.models.store import read_model_config
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter
    from lungx_core.tasks.rib_suppression import RibSuppressor, SuppressionSettings

    config = read_model_config(args.model)
    found = held_out_findings(args.run, float(config["threshold"]), float(config.get("diameter_scale", 1.0)))
    suppressor = RibSuppressor(device="cpu")
    lungs = lung_finder(CXRSegmenter(device="cpu"))
    rows: list[dict] = []
    summary = {}
    for spare in (False, True):
        settings = SuppressionSettings(keep_nodules=spare)

        def suppress(image, lung, settings=settings):  # the task, given the held-out fold's findings
            scale = image.array.shape[1] / 512.0
            findings = [{k: v * scale for k, v in f.items()} for f in found.get(Path(image.source).stem, [])]
            return suppressor.suppress(image, None, settings, findings=findings).array

        def on_case(case_id, scores, spare=spare):
            rows.append({"case_id": case_id, "spared": spare, **scores})

        key = "spared_at_held_out_findings" if spare else "plain"
        summary[key] = evaluate_nodule_conspicuity(args.data / "jsrt_scr", suppress, lungs, on_case=on_case)
    summary["films_with_findings"] = len(found)
    print(json.dumps(summary))
    if args.per_case:
        with open(args.per_case, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
