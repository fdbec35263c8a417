"""Speed of healthy -> pathological synthesis on this machine, for a 512-px radiograph (the embedded sample
radiograph, rendered from slicerio's CT, resized to 512 px on its long side):

- synthesizer only with a known lung mask (insert: plan and draw the lesion; cyclegan: crop, translate, put
  back);
- the whole ``lungx synthesize`` step without a mask: read, segment the lungs, synthesise, write PNG + seg.nrrd
  + side-by-side picture.

    python benchmarks/bench_synthesis.py [--n 20] [--device cpu] [--threads 2] [--method insert|cyclegan]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--model", default="cxr_synthesis")
    ap.add_argument("--method", default="insert", choices=["insert", "cyclegan"])
    args = ap.parse_args()

    import torch
    from PIL import Image
    from skimage.transform import resize

    from lungx_core.io.inputs import Case
    from lungx_core.io.sample import sample_radiograph
    from lungx_core.io.writers import to_uint8_display
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter
    from lungx_core.tasks.synthesis import make_synthesizer, synthesize_case

    if args.threads:
        torch.set_num_threads(args.threads)
    image = resize(to_uint8_display(sample_radiograph().array), (452, 512), preserve_range=True).astype(np.uint8)
    synthesizer = make_synthesizer(args.method, args.model, args.device)
    segmenter = CXRSegmenter(device=args.device)
    probs = segmenter.predict_probabilities(image)
    lung = (probs[0] > 0.5) | (probs[1] > 0.5)
    synthesizer.synthesize_display(image, lung)  # warm-up: one-off allocations

    times = []
    for _ in range(args.n):
        t0 = time.perf_counter()
        synthesizer.synthesize_display(image, lung)
        times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        Image.fromarray(image).save(tmp / "film.png")
        synthesize_case(Case("warm", tmp / "film.png"), synthesizer, tmp / "warm", segmenter=segmenter)
        full = []
        for i in range(args.n):
            t0 = time.perf_counter()
            row = synthesize_case(Case(f"f{i}", tmp / "film.png"), synthesizer, tmp / "out", segmenter=segmenter)
            full.append(time.perf_counter() - t0)
            assert row["status"] == "ok", row["error"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"method {args.method}, device {synthesizer.device}, threads {torch.get_num_threads()}, "
          f"image {image.shape[1]}x{image.shape[0]}")
    print(f"synthesizer only: {1000 * statistics.median(times):.0f} ms per image (median of {args.n})")
    print(f"lungx synthesize step (segment lungs + synthesise + write): {1000 * statistics.median(full):.0f} ms")
    print(f"peak resident memory: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
