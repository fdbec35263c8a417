"""The ONNX Runtime fast path: a shipped torch network exported once to ONNX (cached by the hash of its weights)
and run by onnxruntime on CPU, or CUDA where onnxruntime has it. Needs the ``fast`` extra (onnxruntime, onnx).

:class:`OnnxNetwork` is called like the torch module it replaces (a float32 tensor (N, C, H, W) in, the logits
tensor out), so a segmenter swaps backends without other changes.

Example:
    >>> from lungx_core.models.store import load_model
    >>> net, config = load_model("cxr_anatomy", "cpu", backend="onnx")  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

# ONNX opset: 17 is supported by every onnxruntime >= 1.14 and covers the U-Nets' operators
OPSET = 17


def cache_dir() -> Path:
    """Where exported networks are kept: $LUNGX_CACHE_DIR, else $XDG_CACHE_HOME/lungx, else ~/.cache/lungx."""
    root = os.environ.get("LUNGX_CACHE_DIR")
    if root:
        return Path(root) / "onnx"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "lungx" / "onnx"


def weights_hash(weights: Path) -> str:
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def export(net: Any, in_channels: int, size: int, path: Path) -> Path:
    """Write ``net`` (torch, eval mode) as ONNX with a dynamic batch and dynamic height/width, atomically."""
    import torch

    from lungx_core.io.writers import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    cpu = net.to("cpu").eval()
    example = torch.zeros(1, in_channels, size, size)
    axes = {0: "batch", 2: "height", 3: "width"}
    with atomic_path(path) as tmp, torch.inference_mode(), warnings.catch_warnings():
        # instance norm always normalises with the input's own statistics; the exporter warns that it does
        warnings.filterwarnings("ignore", message=".*instance_norm.*")
        torch.onnx.export(cpu, (example,), str(tmp), input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": axes, "logits": axes}, opset_version=OPSET, dynamo=False)
    return path


class OnnxNetwork:
    """An exported network in an onnxruntime session, called like the torch module it came from.

    Args:
        path: the .onnx file.
        device: "cpu", "cuda" or "auto" (CUDA when onnxruntime offers it, else CPU).
    """

    def __init__(self, path: Path, device: str = "auto"):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeError("the onnx backend needs onnxruntime: pip install 'lungx-core[fast]'") from None
        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise RuntimeError("--device cuda was asked for, but this onnxruntime has no CUDA provider")
        use_cuda = device in ("cuda", "auto") and "CUDAExecutionProvider" in available
        providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = _threads()
        if threads:
            options.intra_op_num_threads = threads
        # Idle threads do not spin-wait for the next call: on a few cores they took the cores the rest of the
        # pipeline (reading, post-processing, writing, torch's gate) needed; CXR end to end ran 6.7 images/s
        # against torch's 9.1, and 11.3 (torch 10.1) without spinning (benchmarks/bench_backends.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        # where callers put input tensors: always host memory (onnxruntime copies to the GPU itself)
        self.device = "cpu"
        self.provider = "cuda" if use_cuda else "cpu"
        self.path = path

    def __call__(self, x: Any) -> Any:
        import numpy as np
        import torch

        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {"image": array})[0])


def _threads() -> int | None:
    """The thread count torch would use here (OMP_NUM_THREADS, e.g. 1 in each Dask worker), else None
    (onnxruntime's default: every core)."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def onnx_network(
    make_net: Callable[[], Any], config: dict[str, Any], weights: Path, name: str, device: str = "auto"
) -> OnnxNetwork:
    """The ONNX Runtime twin of the network ``make_net()`` builds (torch, eval mode, on CPU): exported on first
    use to ``cache_dir()/<name>-<weights hash>.onnx``. Once cached, the torch network is never built (nor MONAI
    imported: two seconds of a CT's start-up)."""
    size = int(config.get("size") or config.get("preprocess", {}).get("size", 256))
    path = cache_dir() / f"{name}-{weights_hash(weights)}.onnx"
    if not path.is_file():
        export(make_net(), int(config["in_channels"]), size, path)
    return OnnxNetwork(path, device)
