"""Bone suppression speed and memory: seconds per film end to end (read, gate, bone image, subtraction, all
outputs written) for the default bone mode, with and without the nodule detector that keep_nodules runs, on the
embedded sample radiograph resized to a 2048-px long side (or your own films); optionally the diffusion modes'
seconds per film at 10/25/50 steps.

    python benchmarks/bench_rib_suppression.py --threads 2 [--size 2048] [--repeat 5] [--diffusion-steps 10 25]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from films import sample_film_png, seconds_per_case

from lungx_core.image import MedicalImage
from lungx_core.tasks.rib_suppression import RibSuppressor, SuppressionSettings, suppress_ribs_case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path)
    ap.add_argument("--size", type=int, default=2048, help="long side of the embedded sample film")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--diffusion-steps", type=int, nargs="*", default=[])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from lungx_core.cxr.gate import FrontalChestGate
    from lungx_core.io.inputs import Case

    with tempfile.TemporaryDirectory() as tmp:
        files = list(args.files)
        if not files:
            files = [sample_film_png(Path(tmp), args.size)]
        suppressor = RibSuppressor(device=args.device)
        gate = FrontalChestGate(device=args.device)
        cases = [Case(f.stem, f) for f in files]
        from lungx_core.io.readers import read_radiograph

        shape = read_radiograph(files[0]).array.shape
        print(f"device {suppressor.device}, {args.threads} threads, film {shape[1]}x{shape[0]}")
        for keep in (True, False):  # the default spares the nodule detector's findings (one more network)
            settings = SuppressionSettings(keep_nodules=keep)
            seconds = seconds_per_case(
                lambda case, out, settings=settings: suppress_ribs_case(case, suppressor, out, settings, gate=gate),
                cases, Path(tmp), args.repeat)
            label = "default (nodules kept)" if keep else "--no-keep-nodules"
            print(f"bone mode end to end, {label}: {seconds:.2f} s per film ({1 / seconds:.2f} images/s)")
        for steps in args.diffusion_steps:
            image = MedicalImage(read_radiograph(files[0]).array)
            ribs = np.zeros(image.array.shape, bool)
            ribs[image.array.shape[0] // 3: image.array.shape[0] // 2] = True
            diffusion = SuppressionSettings(mode="inpaint-subtract", steps=steps)
            t0 = time.perf_counter()
            suppressor.suppress(image, ribs, diffusion)
            print(f"inpaint-subtract, {steps} steps (suppression only): {time.perf_counter() - t0:.2f} s per film")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
