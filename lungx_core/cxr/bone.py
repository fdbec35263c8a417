"""Bone-layer estimation and subtraction for frontal chest radiographs (the default rib/bone suppression).

The ``cxr_bone`` model (a MONAI U-Net, ``training/train_bone.py``) maps a whole film, resized to ``size``
square and windowed by its own 0.5/99.5 percentiles, to its bone image in the same units: what the ribs,
clavicles, scapulae and spine add to the film (averaged with the bone image of the mirrored film when the
config says ``flip_average``). The bone image is brought back to the film's grey levels and full resolution
(bilinear, then given the film's own edges by :func:`refine_edges` when the config gives ``guided_radius``;
the film itself is never resampled), and the suppressed film is ``film - alpha * bone``. Nothing is inpainted
or regenerated: the soft tissue under a rib (vessels, nodules) is the film's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "cxr_bone"
BONE_MASK_FRACTION = 0.3  # of the film's strong bone signal (99th percentile of the bone image)


def subtract_bone(film: np.ndarray, bone: np.ndarray, alpha: float) -> np.ndarray:
    """``film - alpha * bone`` in ``film``'s dtype (integers rounded and clipped to the dtype's range).

    Args:
        film: (H, W) radiograph, any numeric dtype.
        bone: (H, W) bone image in the film's grey levels (float).
        alpha: strength, >= 0; 0 (or a zero bone image) gives the film back bit for bit.

    Example::

        soft = subtract_bone(film, BoneLayerModel().bone_image(film), alpha=1.0)
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if np.shape(bone) != np.shape(film):
        raise ValueError(f"the bone image is {np.shape(bone)} but the film is {np.shape(film)}")
    from lungx_core.image import to_dtype

    out = np.asarray(film, dtype=np.float64) - float(alpha) * np.asarray(bone, dtype=np.float64)
    return to_dtype(out, np.asarray(film).dtype)


def bone_mask(bone: np.ndarray, fraction: float = BONE_MASK_FRACTION) -> np.ndarray:
    """Where the bone image is strong (bool): at least ``fraction`` of its 99th percentile. A picture of where
    bone was taken out, not an anatomical rib label."""
    bone = np.asarray(bone, dtype=np.float32)
    strong = float(np.percentile(bone, 99))
    if strong <= 0:
        return np.zeros(bone.shape, bool)
    return bone >= fraction * strong


class BoneLayerModel:
    """The bone-image network, loaded once; ``alpha`` is the model card's fitted strength."""

    def __init__(self, model: str | Path = DEFAULT_MODEL, device: str = "auto"):
        from lungx_core.models.store import load_model

        self._use(*load_model(model, device))

    @classmethod
    def from_network(cls, net: Any, config: dict[str, Any]) -> BoneLayerModel:
        """Wrap an already built network and its config (training and cross-validation use this)."""
        model = cls.__new__(cls)
        model._use(net.eval(), config)
        return model

    def _use(self, net: Any, config: dict[str, Any]) -> None:
        self.net, self.config = net, config
        self.device = next(net.parameters()).device
        self.alpha = float(config.get("alpha", 1.0))

    def bone_image(self, film: np.ndarray) -> np.ndarray:
        """The bone image (float32, ``film``'s shape, the film's grey levels) of a display-oriented 2-D film."""
        import torch

        from lungx_core.cxr.thoracic import resize, whole_film

        cfg = self.config
        small, low, high = whole_film(film, int(cfg["size"]), cfg["low_percentile"], cfg["high_percentile"])
        x = torch.from_numpy(small[None, None]).to(self.device)
        with torch.inference_mode():
            if cfg.get("flip_average"):  # the film and its mirror image in one batch, the mirror's bone mirrored back
                both = self.net(torch.cat([x, x.flip(-1)]))
                b = (0.5 * (both[0, 0] + both[1, 0].flip(-1))).float().cpu().numpy()
            else:
                b = self.net(x)[0, 0].float().cpu().numpy()
        bone = resize(b * (high - low), np.shape(film))
        if cfg.get("guided_radius"):
            bone = refine_edges(bone, film, float(cfg["guided_radius"]), float(cfg["guided_eps"]))
        return bone.astype(np.float32)


def refine_edges(bone: np.ndarray, film: np.ndarray, radius: float, eps: float) -> np.ndarray:
    """The upsampled bone image given the film's own edges: a guided filter (He et al. 2010, kornia's
    ``guided_blur``) with the full-resolution film as guide, so rib and clavicle borders are as sharp in the
    bone image as in the film. ``radius`` is a fraction of the film's long side, ``eps`` the regularisation
    on the film scaled to unit standard deviation. A zero bone image stays zero.

    Args:
        bone: (H, W) bone image, float, the film's grey levels.
        film: (H, W) the film (the guide).
        radius: window radius as a fraction of max(H, W), e.g. 0.008 (4 px on a 512-px film).
        eps: regularisation; larger keeps the bone image smoother.
    """
    import torch
    from kornia.filters import guided_blur

    guide = np.asarray(film, dtype=np.float32)
    guide = (guide - guide.mean()) / max(float(guide.std()), 1e-6)
    long_side = max(np.shape(film))
    # the fast guided filter (He & Sun 2015) above 768 px: coefficients at about 512 px, where the bone image
    # was computed anyway; films near 512 px get the plain filter
    subsample = max(1, round(long_side / 512))
    r = max(1, round(radius * long_side / subsample))
    with torch.inference_mode():
        out = guided_blur(torch.from_numpy(guide)[None, None],
                          torch.from_numpy(np.asarray(bone, dtype=np.float32))[None, None], 2 * r + 1, eps,
                          subsample=subsample, separable=True)
    return out[0, 0].numpy()
