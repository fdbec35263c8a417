"""Rib suppression speed: seconds per film (rib mask + diffusion inpainting + blending) at 10/25/50 steps,
and peak memory, on the embedded sample radiograph resized to a 512-px long side (or your own films).

    python benchmarks/bench_rib_suppression.py --threads 2 [--steps 10 25 50] [--device cpu] [FILES...]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from lungx_core.image import MedicalImage
from lungx_core.tasks.rib_suppression import RibSuppressor, SuppressionSettings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*")
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--mode", default="subtract")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.files:
        from lungx_core.io.readers import read_radiograph

        films = [read_radiograph(f) for f in args.files]
    else:
        from lungx_core.sample import sample_radiograph
        from lungx_core.thoracic import resize

        drr = sample_radiograph().array
        scale = 512 / max(drr.shape)
        films = [MedicalImage(resize(drr, (round(drr.shape[0] * scale), round(drr.shape[1] * scale))))]
    suppressor = RibSuppressor(device=args.device)
    masks = []
    t0 = time.perf_counter()
    for film in films:
        masks.append(suppressor.rib_mask(film, None))
    mask_s = (time.perf_counter() - t0) / len(films)
    print(f"device {suppressor.device}, {args.threads} threads, {len(films)} film(s) of {films[0].array.shape}")
    print(f"rib mask: {mask_s:.3f} s per film")
    for steps in args.steps:
        settings = SuppressionSettings(mode=args.mode, steps=steps)
        suppressor.suppress(films[0], masks[0], settings)  # warm-up
        t0 = time.perf_counter()
        for film, ribs in zip(films, masks, strict=True):
            suppressor.suppress(film, ribs, settings)
        seconds = (time.perf_counter() - t0) / len(films) + mask_s
        print(f"{steps:3d} steps: {seconds:.2f} s per film ({len(films) / seconds:.3f} images/s)")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
