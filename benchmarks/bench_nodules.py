"""Nodule detection speed: seconds per film end to end (read, gate, detector with its mirror view and, where its
config names one, the bone model for its second channel; peaks, all outputs written: CSV, markups, picture), on
the embedded sample radiograph resized to a 2048-px long side (or your own films), and the detector alone.

    python benchmarks/bench_nodules.py --threads 2 [--size 2048] [--repeat 5] [files ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from films import sample_film_png, seconds_per_case

from lungx_core.cxr.nodules import NoduleDetector
from lungx_core.tasks.nodule_detection import detect_nodules_case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--size", type=int, default=2048, help="long side of the embedded sample film")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lungx_core.cxr.gate import FrontalChestGate
    from lungx_core.io.inputs import Case
    from lungx_core.io.readers import read_radiograph

    with tempfile.TemporaryDirectory() as tmp:
        files = list(args.files)
        if not files:
            files = [sample_film_png(Path(tmp), args.size)]
        detector = NoduleDetector(device=args.device)
        gate = FrontalChestGate(device=args.device)
        cases = [Case(f.stem, f) for f in files]
        end_to_end = seconds_per_case(lambda case, out: detect_nodules_case(case, detector, out, gate), cases,
                                      Path(tmp), args.repeat)
        arrays = [read_radiograph(f).array for f in files]
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            for a in arrays:
                detector.detect(a)
        alone = (time.perf_counter() - t0) / (args.repeat * len(arrays))
        shape = "x".join(str(n) for n in arrays[0].shape)
        bone = "" if detector.bone is None else f", {detector.config['bone_channel']}'s bone image as channel 2"
        print(f"nodule detection, {args.threads} threads, film {shape}: {end_to_end:.3f} s per film end to end, "
              f"{alone:.3f} s detector alone (input{bone}, network: 2 views at each scale, peaks)")


if __name__ == "__main__":
    main()
