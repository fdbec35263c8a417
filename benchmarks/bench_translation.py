"""Speed of the unpaired-translation engine on this machine: seconds per training step (batch 1, both directions,
both discriminators) and generator inference time per image, for a few widths and resolutions.

    python benchmarks/bench_translation.py [--steps 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lungx_core.models.translation import GeneratorConfig, ResnetGenerator  # noqa: E402
from training.translation import CycleGANTrainer, TranslationConfig  # noqa: E402

CONFIGS = [  # (train size, base width, residual blocks)
    (128, 16, 6),
    (128, 32, 6),
    (256, 32, 6),
    (256, 64, 9),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"threads={args.threads}  device=cpu")
    print("size  base  blocks  gen_params  s/train_step  ms/translate@size  ms/translate@512")
    for size, base, blocks in CONFIGS:
        gen = GeneratorConfig(base=base, n_blocks=blocks)
        trainer = CycleGANTrainer(TranslationConfig(size=size, generator=gen, disc_base=base, lambda_surround=1.0))
        a, b = torch.rand(1, 1, size, size) * 2 - 1, torch.rand(1, 1, size, size) * 2 - 1
        lung = torch.zeros(1, 1, size, size)
        trainer.step(a, b, lung)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.step(a, b, lung)
        per_step = (time.perf_counter() - t0) / args.steps
        g = ResnetGenerator(gen).eval()
        times = []
        for side in (size, 512):
            x = torch.rand(1, 1, side, side)
            with torch.inference_mode():
                g(x)
                t0 = time.perf_counter()
                for _ in range(3):
                    g(x)
            times.append((time.perf_counter() - t0) / 3 * 1000)
        params = sum(p.numel() for p in g.parameters())
        print(f"{size:4d}  {base:4d}  {blocks:6d}  {params / 1e6:9.2f}M  {per_step:12.2f}  {times[0]:17.0f}  "
              f"{times[1]:16.0f}", flush=True)


if __name__ == "__main__":
    main()
