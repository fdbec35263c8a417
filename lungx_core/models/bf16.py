"""The bfloat16 path: a shipped torch network run under ``torch.autocast`` in bfloat16, for hardware that computes
in bfloat16 natively (CPUs with AVX512-BF16 or AMX, CUDA GPUs). Elsewhere the CPU emulates it and it is slower
than float32, so such a device is refused rather than slowed down.

Measured on the CT lung network (``--backend bf16``, the README's throughput section): the labels of the eight
shared CTs agree with float32 at Dice >= 0.998 per lung, and the network runs about 1.7x faster on an AVX512-BF16
CPU. The radiograph networks are not run this way: their clavicles move (agreement down to Dice 0.71 on a
validation film), so ``lungx segment`` keeps radiographs in float32 whatever ``--backend`` says.

Example:
    >>> from lungx_core.models.store import load_model
    >>> net, config = load_model("ct_lungs", "cpu", backend="bf16")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any


def native_bf16(device: Any) -> bool:
    """Whether ``device`` (a torch device) computes in bfloat16 natively: CUDA, or a CPU with AVX512-BF16 or
    AMX tiles."""
    import torch

    if torch.device(device).type == "cuda":
        return True
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                or getattr(cpu, "_is_amx_tile_supported", lambda: False)())


def require_native_bf16(device: Any) -> None:
    """ValueError (one line, for the user) where ``device`` would only emulate bfloat16."""
    if not native_bf16(device):
        raise ValueError("--backend bf16 needs a GPU or a CPU with AVX512-BF16 or AMX; this CPU would emulate "
                         "bfloat16 more slowly than float32: use --backend torch or onnx")


def bf16_network(net: Any, device: Any) -> Any:
    """``net`` (a torch module in eval mode) wrapped so that its forward runs in bfloat16 autocast and returns
    float32 logits; ValueError where ``device`` would only emulate bfloat16."""
    import torch

    device = torch.device(device)
    require_native_bf16(device)

    class Bfloat16Network(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return self.inner(x).float()

    return Bfloat16Network(net).eval()
