"""Running a network over a batch of views on CPU a few images at a time.

On CPU a batch larger than the cores' caches runs slower per image than a few images at a time, with the same
results bit for bit (each image is computed on its own: instance or eval-mode batch norm). Measured on our 2-core
CPU: the bone model's 10 test-time views at 320 px take 359 ms in one call and 196 ms two at a time, at 256 px 185
ms against 130 four at a time; a 2k film's whole bone image (20 views) 588-623 ms -> 474-532 ms. The CT network
reads its 256-px slices 4 per call (ms per slice at 1/2/4/8/16 slices: torch 19.1/14.5/12.6/13.5/15.9, ONNX
Runtime 9.0/8.2/9.0/8.5/8.9; benchmarks/bench_ct_segment.py --batch-sweep). About 256 x 256 x 4 pixels per call
suits both. The nodule detector's film and mirror at 512 px gained nothing in its pipeline (199-223 ms together, 203-243
one at a time), so it calls the network as before. A GPU takes the whole batch at once.
"""

from __future__ import annotations

from typing import Any

CPU_PIXELS_PER_CALL = 4 * 256 * 256


def forward_in_chunks(net: Any, x: Any, pixels: int = CPU_PIXELS_PER_CALL) -> Any:
    """``net(x)`` for a (N, C, H, W) tensor, on CPU in calls of at most ``pixels`` // (H * W) images (at least
    one), concatenated; elsewhere in one call."""
    import torch

    per_call = max(1, pixels // (x.shape[-2] * x.shape[-1]))
    if x.device.type != "cpu" or per_call >= len(x):
        return net(x)
    return torch.cat([net(x[i : i + per_call]) for i in range(0, len(x), per_call)])
