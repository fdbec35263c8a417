"""Benchmark `lungx segment` end to end on 512-px radiographs: images/s, per-stage time, peak RSS, CLI cold start.

    python benchmarks/bench_cxr_segment.py [--n 40] [--device cpu] [--images DIR]

Inputs: PNGs from DIR (default: ../shared/data/jsrt_scr/images when present, else DRRs of the embedded CT
resized to 512 px). Numbers are printed, never asserted: run it on the machine you care about.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _inputs(folder: Path | None, n: int, tmp: Path) -> list[Path]:
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "jsrt_scr" / "images"
    folder = folder or (default if default.is_dir() else None)
    if folder is not None:
        files = sorted(folder.glob("*.png"))[:n]
        if files:
            return files
    from PIL import Image
    from skimage.transform import resize

    from lungx_core.io.sample import sample_radiograph
    from lungx_core.io.writers import to_uint8_display

    drr = to_uint8_display(sample_radiograph().array)
    img = (resize(drr, (452, 512), preserve_range=True)).astype(np.uint8)
    files = []
    for i in range(n):
        p = tmp / f"drr_{i:03d}.png"
        Image.fromarray(np.roll(img, i, axis=1)).save(p)
        files.append(p)
    return files


def cold_start_seconds(repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "lungx_core", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=Path)
    args = ap.parse_args()

    from lungx_core.io.inputs import Case
    from lungx_core.io.readers import read_radiograph
    from lungx_core.postprocess import clean_masks, measure
    from lungx_core.preprocess import PreprocessConfig, preprocess_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter, process_case, write_outputs

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        files = _inputs(args.images, args.n, tmp)
        t0 = time.perf_counter()
        seg = CXRSegmenter(device=args.device)
        load_s = time.perf_counter() - t0
        process_case(Case("warmup", files[0]), seg, tmp / "warm")  # first call pays one-off allocations

        out = tmp / "out"
        t0 = time.perf_counter()
        rows = [process_case(Case(p.stem, p), seg, out) for p in files]
        total = time.perf_counter() - t0
        assert all(r["status"] == "ok" for r in rows), [r for r in rows if r["status"] != "ok"][:1]

        # Per-stage breakdown on the same inputs.
        pre = PreprocessConfig.from_dict(seg.config["preprocess"])
        stages: dict[str, list[float]] = {
            k: [] for k in ("read", "preprocess", "infer+upsample", "postprocess", "write")
        }
        for p in files[: min(len(files), 15)]:
            t = time.perf_counter()
            img = read_radiograph(p)
            stages["read"].append(time.perf_counter() - t)
            t = time.perf_counter()
            preprocess_radiograph(img.array, pre)
            stages["preprocess"].append(time.perf_counter() - t)
            t = time.perf_counter()
            probs = seg.predict_probabilities(img.array)
            stages["infer+upsample"].append(time.perf_counter() - t - stages["preprocess"][-1])
            t = time.perf_counter()
            masks = clean_masks(probs)
            measure(masks, probs, None)
            stages["postprocess"].append(time.perf_counter() - t)
            result = seg.segment(img)
            t = time.perf_counter()
            write_outputs(tmp / "stage", p.stem, img, result)
            stages["write"].append(time.perf_counter() - t)

    import torch

    shape = read_radiograph(files[0]).array.shape
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"inputs: {len(files)} radiographs of {shape[1]}x{shape[0]} px; device {seg.device}; "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"model load: {load_s:.2f} s")
    print(
        f"end to end (read, preprocess, infer, post-process, write .seg.nrrd + overlay): "
        f"{len(files) / total:.2f} images/s ({1000 * total / len(files):.0f} ms/image)"
    )
    for k, v in stages.items():
        print(f"  {k:15s} {1000 * statistics.median(v):6.1f} ms (median)")
    print(f"peak RSS: {rss_mb:.0f} MB")
    print(f"`lungx --help` cold start: {cold_start_seconds():.2f} s (median of 5)")


if __name__ == "__main__":
    main()
