"""Speed of opacity removal on this machine, for a 512-px radiograph: the embedded sample radiograph (rendered
from slicerio's CT, resized to 512 px on its long side) with a consolidation-like density painted into the
lower right lung, so that the activation mask is not empty and the generator runs.

- remover only (crop, opacity map, activation mask, translate, put back) with a known lung mask;
- the whole ``lungx remove-opacity`` step without a mask: read, segment the lungs, remove, score before/after,
  write PNG + seg.nrrd + before/mask/after picture.

    python benchmarks/bench_opacity_removal.py [--n 20] [--device cpu] [--threads 2]
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
    ap.add_argument("--model", default="cxr_opacity_removal")
    args = ap.parse_args()

    import torch
    from PIL import Image
    from scipy import ndimage as ndi
    from skimage.transform import resize

    from lungx_core.anatomy import class_mask
    from lungx_core.cxr.pathology import PathologyClassifier
    from lungx_core.image import MedicalImage
    from lungx_core.io.inputs import Case
    from lungx_core.io.sample import sample_radiograph
    from lungx_core.io.writers import to_uint8_display
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter
    from lungx_core.tasks.opacity_removal import OpacityRemover, remove_opacity_case

    if args.threads:
        torch.set_num_threads(args.threads)
    film = resize(to_uint8_display(sample_radiograph().array), (452, 512), preserve_range=True)
    segmenter = CXRSegmenter(device=args.device)
    lung = class_mask(segmenter.segment(MedicalImage(film.astype(np.uint8))).masks, "lung")
    rows, cols = np.nonzero(lung)
    centre = np.zeros(lung.shape)
    centre[int(np.percentile(rows, 75)), int(np.percentile(cols, 20))] = 1
    density = ndi.gaussian_filter(centre, 25)
    film = np.clip(film + 90 * density / density.max() * lung, 0, 255)
    image = film.astype(np.uint8)
    remover = OpacityRemover(args.model, args.device)
    scorer = PathologyClassifier(device=args.device)
    _, changeable, _ = remover.remove_display(image, lung)  # warm-up: one-off allocations

    times = []
    for _ in range(args.n):
        t0 = time.perf_counter()
        remover.remove_display(image, lung)
        times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        Image.fromarray(image).save(tmp / "film.png")
        remove_opacity_case(Case("warm", tmp / "film.png"), remover, tmp / "warm", segmenter=segmenter, scorer=scorer)
        full = []
        for i in range(args.n):
            t0 = time.perf_counter()
            row = remove_opacity_case(Case(f"f{i}", tmp / "film.png"), remover, tmp / "out", segmenter=segmenter,
                                      scorer=scorer)
            full.append(time.perf_counter() - t0)
            assert row["status"] == "ok", row["error"]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"device {remover.device}, threads {torch.get_num_threads()}, image {image.shape[1]}x{image.shape[0]}, "
          f"activation mask {changeable.mean():.1%} of the film")
    print(f"remover only: {1000 * statistics.median(times):.0f} ms per image (median of {args.n})")
    step = 1000 * statistics.median(full)
    print(f"lungx remove-opacity step (segment lungs + remove + score + write): {step:.0f} ms")
    print(f"peak resident memory: {peak_mb:.0f} MB")


if __name__ == "__main__":
    main()
