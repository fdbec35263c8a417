"""Shipped models: ``<name>.safetensors`` (weights, fp16) + ``<name>.json`` (architecture, classes,
preprocessing, metrics) + ``<name>.md`` (model card), all inside ``lungx_core/weights``. No pickle anywhere."""

from __future__ import annotations

import inspect
import json
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
BACKENDS = ("auto", "torch", "onnx", "bf16")  # what runs a network (load_model)


def model_paths(name_or_path: str | Path) -> tuple[Path, Path]:
    """(safetensors, json) for a shipped model name or a path to either file."""
    p = Path(name_or_path)
    if p.suffix in (".safetensors", ".json"):
        base = p.parent / p.name[: -len(p.suffix)]
    elif p.exists() and p.is_dir():
        raise FileNotFoundError(f"{p} is a folder; give a .safetensors file")
    else:
        base = WEIGHTS_DIR / str(name_or_path)
    # appended, not with_suffix(): a dotted name (run1.best, cxr_anatomy.v2) keeps every part of its name
    return base.parent / f"{base.name}.safetensors", base.parent / f"{base.name}.json"


def read_model_config(name_or_path: str | Path) -> dict[str, Any]:
    _, cfg = model_paths(name_or_path)
    if not cfg.exists():
        raise FileNotFoundError(f"model config {cfg} not found")
    return json.loads(cfg.read_text())


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA GPU is available to torch")
    return torch.device(device)


def auto_backend(device: str = "auto") -> str:
    """What ``backend="auto"`` runs a network with: ONNX Runtime on CPU where onnxruntime and onnx are installed
    (the ``fast`` extra), torch otherwise (and on a GPU). On this project's 2-core CPU ONNX Runtime gives the
    same CT labels voxel for voxel on every shared CT and the same radiograph masks (Dice 1.00000 on 60
    validation films; benchmarks/bench_backends.py), one CT in a fresh run 2-5 s sooner (no MONAI import;
    bench_ct_segment.py) and 8-15 % more radiographs per second (bench_cxr_segment.py)."""
    from importlib.util import find_spec

    if resolve_device(device).type != "cpu" or find_spec("onnxruntime") is None or find_spec("onnx") is None:
        return "torch"
    return "onnx"


def load_model(name_or_path: str | Path, device: str = "auto", backend: str = "torch"):
    """(network in eval mode on the device, config dict). Weights are cast to float32 on CPU.

    ``backend="onnx"`` returns the network's ONNX Runtime twin (lungx_core.models.onnx), exported on first use
    and cached by the weights' hash; ``backend="bf16"`` the torch network run in bfloat16 autocast
    (lungx_core.models.bf16: a GPU or a CPU with native bfloat16 only). Both are called like the torch module.
    ``backend="auto"``: :func:`auto_backend`; where its ONNX cache cannot be written or onnxruntime fails to
    load, torch (with a warning)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose {', '.join(BACKENDS)}")
    weights, _ = model_paths(name_or_path)
    config = read_model_config(name_or_path)
    chosen = backend == "auto"
    if chosen:
        backend = auto_backend(device)
    if backend == "onnx":
        from lungx_core.models.onnx import onnx_network

        def make_net():
            return _torch_network(weights, config, "cpu")

        try:
            return onnx_network(make_net, config, weights, weights.name[: -len(".safetensors")], device), config
        except (OSError, ImportError, RuntimeError) as e:
            if not chosen:  # asked for by name: say why it cannot run
                raise
            # a read-only cache folder or a broken onnxruntime: torch gives the same answers, a little slower
            import warnings

            warnings.warn(f"ONNX Runtime not usable here ({e}); running {weights.stem} with torch", stacklevel=2)
    net = _torch_network(weights, config, device)
    if backend == "bf16":
        from lungx_core.models.bf16 import bf16_network

        return bf16_network(net, network_device(net)), config
    return net, config


def _torch_network(weights: Path, config: dict[str, Any], device: str):
    """The config's network with the weights (float32) in eval mode on ``device``."""
    from safetensors.torch import load_file

    from lungx_core.models.networks import build_network

    net = build_network(config["arch"], config["in_channels"], len(config["classes"]), **config.get("arch_options", {}))
    net.load_state_dict({k: v.float() for k, v in load_file(str(weights)).items()})
    return net.eval().to(resolve_device(device))


def network_device(net: Any) -> Any:
    """Where a network's inputs go: a torch module's parameter device, or an ONNX network's host."""
    return getattr(net, "device", None) or next(net.parameters()).device


def save_model(state_dict: dict, config: dict[str, Any], name_or_path: str | Path, fp16: bool = True) -> Path:
    """Write weights (fp16 by default) and config atomically."""
    from safetensors.torch import save_file

    from lungx_core.io.writers import atomic_path, write_text_atomic

    weights, cfg = model_paths(name_or_path)
    tensors = {k: (v.half() if fp16 and v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}
    with atomic_path(weights) as tmp:
        # one metadata key: safetensors stores metadata unordered, so more keys make re-exports differ byte-wise
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_text_atomic(cfg, json.dumps(config, indent=2) + "\n")
    return weights


def shared_model(cls: type, *args: Any, **kwargs: Any) -> Any:
    """``cls(*args, **kwargs)`` made once per process and kept: a batch loads each model once, in the main
    process and in every Dask worker alike (arguments must be hashable: names, paths, numbers). The arguments
    are bound to ``cls``'s signature with its defaults first, so ``(m, "cpu")``, ``(m, device="cpu")`` and
    ``(device="cpu")`` for a default ``m`` share one instance.

    Example:
        >>> from lungx_core.tasks.cxr_segmentation import CXRSegmenter
        >>> a = shared_model(CXRSegmenter, "cxr_anatomy", "cpu")
        >>> a is shared_model(CXRSegmenter, device="cpu")
        True
    """
    bound = inspect.signature(cls).bind(*args, **kwargs)
    bound.apply_defaults()  # bound.args/kwargs: the normal form of this call
    with _MAKING:  # cases in flight in threads (batch overlap) load a model once, not once each
        return _made_once(cls, bound.args, tuple(sorted(bound.kwargs.items())))


_MAKING = threading.RLock()  # a model may load another in its constructor


@lru_cache(maxsize=16)
def _made_once(cls: type, args: tuple[Any, ...], kwargs: tuple[tuple[str, Any], ...]) -> Any:
    return cls(*args, **dict(kwargs))


# the cache's counters, for tests and for callers that want to free the models
shared_model.cache_info = _made_once.cache_info  # type: ignore[attr-defined]
shared_model.cache_clear = _made_once.cache_clear  # type: ignore[attr-defined]
