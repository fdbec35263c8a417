"""Diffusion inpainting of radiographs with diffusers: regenerate the pixels under a mask from their context.

The denoiser is a ``diffusers.UNet2DModel`` trained from scratch (``training/train_inpainting.py``) on real
radiographs with rib-shaped holes. Its input is three channels: the noisy image, the known image with the hole
given a smooth (normalised-convolution) fill, and the hole mask; it predicts the clean image
(``prediction_type`` in the model config). A whole film is worked
on at ``size`` x ``size`` (the model is fully convolutional; training used crops of that scale) and the result
is brought back to the film's resolution by the caller (``lungx_core/generative/blending.py``).

Sampling is DDIM or DPM-Solver++ at 10-50 steps, or RePaint (diffusers' ``RePaintScheduler``, resampling
jumps), all seeded: the same seed gives the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

SCHEDULERS = ("ddim", "dpm", "repaint")


@dataclass(frozen=True)
class DiffusionSpec:
    """The noise process a model was trained with, and the scale it works at (the model config's ``diffusion``)."""

    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "sample"  # x0: deterministic few-step sampling lands near the conditional mean
    size: int = 256  # a film is inpainted at size x size
    low_percentile: float = 0.5
    high_percentile: float = 99.5

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiffusionSpec:
        from lungx_core.config import strict_config

        return strict_config(cls, d)

    def scheduler_config(self) -> dict[str, Any]:
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_schedule": self.beta_schedule,
            "prediction_type": self.prediction_type,
        }


def training_scheduler(spec: DiffusionSpec):
    from diffusers import DDPMScheduler

    return DDPMScheduler(**spec.scheduler_config(), clip_sample=False)


def sampling_scheduler(spec: DiffusionSpec, kind: str = "ddim"):
    """A fresh scheduler of ``kind`` (one of :data:`SCHEDULERS`) for ``spec``'s noise process."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, RePaintScheduler

    if kind == "ddim":
        return DDIMScheduler(**spec.scheduler_config(), clip_sample=False, set_alpha_to_one=True)
    if kind == "dpm":
        return DPMSolverMultistepScheduler(**spec.scheduler_config(), algorithm_type="dpmsolver++")
    if kind == "repaint":
        config = spec.scheduler_config()
        config.pop("prediction_type")  # RePaint takes epsilon; inpaint() converts v to epsilon
        return RePaintScheduler(**config, eta=0.0)
    raise ValueError(f"unknown scheduler {kind!r}; choose one of {', '.join(SCHEDULERS)}")


def smooth_fill(known, hole, sigma: float = 6.0):
    """Normalised convolution: each hole pixel becomes the Gaussian-weighted mean of the known pixels around it
    (N,1,H,W tensors). The denoiser gets this coarse guess in the hole, so it only has to add what a blur
    misses, which it learns far sooner than filling a blank."""
    import torch
    import torch.nn.functional as F

    radius = max(1, int(3 * sigma))
    k = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=known.dtype, device=known.device) / sigma) ** 2)
    k = k / k.sum()

    def blur(x):
        x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
        return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="reflect"), k.view(1, 1, -1, 1))

    keep = 1 - hole
    guess = blur(known * keep) / blur(keep).clamp_min(1e-3)
    return torch.where(hole > 0, guess, known)


def network_input(noisy, known, hole):
    """The denoiser's 3-channel input: noisy image, known image with the hole replaced by its smooth fill,
    hole mask (1 = regenerate)."""
    import torch

    return torch.cat([noisy, smooth_fill(known, hole), hole], dim=1)


def _epsilon(output, sample, alpha_bar, prediction_type: str):
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return alpha_bar**0.5 * output + (1 - alpha_bar) ** 0.5 * sample
    if prediction_type == "sample":
        return (sample - alpha_bar**0.5 * output) / (1 - alpha_bar).clamp_min(1e-8) ** 0.5
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def inpaint(
    net,
    known,
    hole,
    spec: DiffusionSpec,
    steps: int = 25,
    seed: int = 0,
    scheduler: str = "ddim",
    on_step: Callable[[int, int], None] | None = None,
):
    """Fill ``hole`` (N,1,H,W, 1 = regenerate) of ``known`` (N,1,H,W in [-1, 1]) by ``steps`` denoising steps.

    The starting noise is drawn on the CPU from ``seed``, so a seed gives the same result on any device;
    DDIM runs with eta = 0 and DPM-Solver++ is deterministic, so nothing else is random. RePaint uses
    ``steps`` as its schedule length with jumps of 5 resampled twice (about 2x the network calls). Pixels
    outside the hole are ``known``'s exactly.
    """
    import torch

    sched = sampling_scheduler(spec, scheduler)
    generator = torch.Generator("cpu").manual_seed(int(seed))
    device = known.device
    x = torch.randn(known.shape, generator=generator, dtype=torch.float32).to(device) * sched.init_noise_sigma
    if scheduler == "repaint":
        sched.set_timesteps(steps, jump_length=5, jump_n_sample=2, device=device)
    else:
        sched.set_timesteps(steps, device=device)
    timesteps = list(sched.timesteps)
    previous = None
    with torch.inference_mode():
        for i, t in enumerate(timesteps):
            if scheduler == "repaint":
                if previous is not None and t > previous:  # a RePaint jump back: re-noise
                    x = sched.undo_step(x, previous, generator=generator)
                else:
                    out = net(network_input(x, known, hole), t).sample
                    eps = _epsilon(out, x, sched.alphas_cumprod[int(t)].to(device), spec.prediction_type)
                    # RePaint's mask is 1 where the image is known
                    x = sched.step(eps, t, x, known, 1 - hole, generator=generator).prev_sample
                previous = t
            else:
                out = net(network_input(sched.scale_model_input(x, t), known, hole), t).sample
                x = sched.step(out, t, x).prev_sample
            if on_step is not None:
                on_step(i + 1, len(timesteps))
    return hole * x.clamp(-1, 1) + (1 - hole) * known


def network_calls(steps: int, scheduler: str) -> int:
    """How many times :func:`inpaint` runs the network for ``steps`` (RePaint adds its resampling passes)."""
    if scheduler != "repaint":
        return steps
    sched = sampling_scheduler(DiffusionSpec(), "repaint")
    sched.set_timesteps(steps, jump_length=5, jump_n_sample=2)
    times = list(sched.timesteps)
    return sum(1 for i, t in enumerate(times) if i == 0 or t < times[i - 1])


class DiffusionInpainter:
    """A shipped inpainting model; :meth:`fill` regenerates a film's masked pixels."""

    def __init__(self, model: str | Path = "cxr_inpainting", device: str = "auto"):
        from lungx_core.models.store import load_model

        self.net, self.config = load_model(model, device)
        self.device = next(self.net.parameters()).device
        self.spec = DiffusionSpec.from_dict(self.config["diffusion"])

    def fill(
        self, image: np.ndarray, hole: np.ndarray, steps: int = 25, seed: int = 0, scheduler: str = "ddim"
    ) -> tuple[np.ndarray, np.ndarray]:
        """A 2-D film (any intensity scale) and its hole (bool, same shape) -> (the film as the model saw it,
        the same with the hole regenerated), both at the working size (``spec.size`` square) in the film's
        intensity scale, float32; they differ only inside the hole.

        The hole is grown to every working-size pixel it touches, so the fill covers it after upsampling.
        """
        import torch

        from lungx_core.cxr.thoracic import resize, whole_film

        size = self.spec.size
        scaled, low, high = whole_film(image, size, self.spec.low_percentile, self.spec.high_percentile)
        small = scaled * 2 - 1
        small_hole = resize(hole.astype(np.float32), (size, size)) > 0
        known = torch.from_numpy(small[None, None].astype(np.float32)).to(self.device)
        mask = torch.from_numpy(small_hole[None, None].astype(np.float32)).to(self.device)
        filled = inpaint(self.net, known, mask, self.spec, steps, seed, scheduler)[0, 0].float().cpu().numpy()

        def to_film(x: np.ndarray) -> np.ndarray:
            return ((x + 1) / 2 * (high - low) + low).astype(np.float32)

        return to_film(small), to_film(filled)
