"""Bone-layer estimation and subtraction for frontal chest radiographs (the default rib/bone suppression).

The ``cxr_bone`` model (a MONAI U-Net, ``training/train_bone.py``) maps a whole film, resized to ``size``
square and windowed by its own 0.5/99.5 percentiles, to its bone image in the same units: what the ribs,
clavicles, scapulae and spine add to the film (averaged with the bone image of the mirrored film when the
config says ``flip_average``, and over the config's test-time sizes and shifts). The bone image is brought
back to the film's grey levels and full resolution (bilinear, then given the film's own edges by
:func:`refine_edges` when the config gives ``guided_radius``; the film itself is never resampled), and the
suppressed film is ``film - alpha * bone``. Nothing is inpainted or regenerated: the soft tissue under a rib
(vessels, nodules) is the film's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_MODEL = "cxr_bone"
BONE_MASK_FRACTION = 0.3  # of the film's strong bone signal (99th percentile of the bone image)
NODULE_MARGIN = 0.75  # radius, in nodule diameters, of the disc spare_nodules takes out of the bone image
NODULE_REACH = 1.35  # where spare_nodules samples the bone image around a disc, in disc radii
# keys of a model config that the model store reads (network, provenance), not the bone image's settings
_STORE_KEYS = ("arch", "arch_options", "in_channels", "classes", "metrics")


@dataclass(frozen=True)
class BoneSpec:
    """How the bone image is computed (the ``cxr_bone`` config, strict: a misspelt key is an error).

    Args:
        size: side of the square network input (px).
        low_percentile, high_percentile: the film's window (percentiles of its grey levels).
        alpha: strength fitted on the DES pairs; the suppressed film is ``film - alpha * bone``.
        flip_average: average with the bone image of the mirrored film.
        guided_radius, guided_eps: edge refinement (:func:`refine_edges`); radius 0 skips it.
        tta_sizes: input sides to average over (test-time augmentation); empty means ``[size]``.
        tta_shifts: (rows, cols) pixel shifts of the network input to average over; empty means no shift.
    """

    size: int
    low_percentile: float = 0.5
    high_percentile: float = 99.5
    alpha: float = 1.0
    flip_average: bool = False
    guided_radius: float = 0.0
    guided_eps: float = 0.0
    tta_sizes: tuple[int, ...] = ()
    tta_shifts: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BoneSpec:
        from lungx_core.config import strict_config

        values = {k: v for k, v in config.items() if k not in _STORE_KEYS}
        values["tta_sizes"] = tuple(int(v) for v in values.get("tta_sizes", ()))
        values["tta_shifts"] = tuple((int(a), int(b)) for a, b in values.get("tta_shifts", ()))
        spec = strict_config(cls, values, "cxr_bone config")
        if any(size % 16 for size in (spec.size, *spec.tta_sizes)):
            raise ValueError(f"cxr_bone config: input sizes must be multiples of 16, got {spec.size}, "
                             f"{list(spec.tta_sizes)}")
        return spec


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


def spare_nodules(bone: np.ndarray, nodules, margin: float = NODULE_MARGIN, reach: float = NODULE_REACH
                  ) -> np.ndarray:
    """The bone image with each nodule taken out of it, so that the subtraction leaves the nodule on the film.

    The bone model mistakes part of a soft-tissue nodule for bone (issue 39); where a nodule was found, the bone
    image inside a disc of radius ``margin`` x its diameter is replaced by what the bone image around the disc
    predicts: along the bone's dominant direction in a ring around the disc (the structure tensor's; a rib
    crossing the disc), each pixel takes the linear interpolation between the two points where the line through
    it meets a circle of ``reach`` disc radii (beyond the blur of the nodule's blob in the bone image), so a rib
    is carried straight across. The disc's edge, a quarter of its radius wide, blends into the bone image;
    outside it the bone image is returned unchanged, bit for bit.

    Args:
        bone: (H, W) bone image (float).
        nodules: (row, col, diameter_px) per nodule, on the bone image's grid.
        margin: disc radius in diameters (0.75: the nodule's edge plus half its radius, for the detector's
            diameter error).
        reach: radius of the circle the bone image is read on, in disc radii (at least the edge's 1.25).
    """
    from scipy import ndimage as ndi

    out = np.array(bone, dtype=np.float32, copy=True)
    h, w = out.shape
    for row, col, diameter in nodules:
        radius = max(margin * float(diameter), 1.0)
        rim = radius * max(reach, 1.25)  # the soft edge ends at 1.25 radius
        outer = max(rim, 2 * radius) + 2  # the ring the direction is read in ends here
        half = int(np.ceil(outer))
        r0, r1 = max(0, int(row) - half), min(h, int(row) + half + 1)
        c0, c1 = max(0, int(col) - half), min(w, int(col) + half + 1)
        if r0 >= r1 or c0 >= c1:
            continue
        window = out[r0:r1, c0:c1]
        values = window.astype(np.float64)
        smooth = ndi.gaussian_filter(values, 1.0)  # for the direction only
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float64)
        dy, dx = yy - row, xx - col
        dist = np.hypot(dy, dx)
        gy, gx = np.gradient(smooth)
        ring = (dist > 1.25 * radius) & (dist <= outer)
        jxx, jyy, jxy = (float((a * b)[ring].sum()) for a, b in ((gx, gx), (gy, gy), (gx, gy)))
        across = 0.5 * np.arctan2(2 * jxy, jxx - jyy)  # the gradients' direction: across the ribs
        ty, tx = np.cos(across), -np.sin(across)  # along them
        b = ty * dy + tx * dx
        root = np.sqrt(np.maximum(b**2 - (dist**2 - rim**2), 0.0))
        s1, s2 = -b - root, -b + root  # the line through each pixel meets the circle at s1 < 0 < s2
        ends = [ndi.map_coordinates(values, [dy + s * ty + row - r0, dx + s * tx + col - c0], order=1,
                                    mode="nearest") for s in (s1, s2)]
        span = np.maximum(s2 - s1, 1e-6)
        fill = (ends[0] * s2 - ends[1] * s1) / span
        hole = np.clip((1.25 * radius - dist) / (0.25 * radius), 0, 1)
        out[r0:r1, c0:c1] = np.where(hole > 0, (1 - hole) * window + hole * fill, window).astype(np.float32)
    return out


def bone_mask(bone: np.ndarray, fraction: float = BONE_MASK_FRACTION) -> np.ndarray:
    """Where the bone image is strong (bool): at least ``fraction`` of its 99th percentile. A picture of where
    bone was taken out, not an anatomical rib label."""
    bone = np.asarray(bone, dtype=np.float32)
    strong = float(np.percentile(bone, 99))
    if strong <= 0:
        return np.zeros(bone.shape, bool)
    return bone >= fraction * strong


class BoneLayerModel:
    """The bone-image network, loaded once; ``alpha`` is the model card's fitted strength.

    ``single_view``: read the film once at the network's own size and once mirrored (2 passes) instead of the
    card's sizes and shifts (20 passes for ``cxr_bone``). The nodule detector's bone channel uses it: 6x cheaper,
    and its cross-validated FROC came out the same with either (the ``cxr_nodules`` card)."""

    def __init__(self, model: str | Path = DEFAULT_MODEL, device: str = "auto", single_view: bool = False):
        from lungx_core.models.store import load_model

        net, config = load_model(model, device)
        if single_view:
            config = {**config, "tta_sizes": [config["size"]], "tta_shifts": []}
        self._use(net, config)

    @classmethod
    def from_network(cls, net: Any, config: dict[str, Any]) -> BoneLayerModel:
        """Wrap an already built network and its config (training and cross-validation use this)."""
        model = cls.__new__(cls)
        model._use(net.eval(), config)
        return model

    def _use(self, net: Any, config: dict[str, Any]) -> None:
        self.net, self.config = net, config
        self.spec = BoneSpec.from_config(config)
        self.device = next(net.parameters()).device
        self.alpha = self.spec.alpha

    def bone_image(self, film: np.ndarray) -> np.ndarray:
        """The bone image (float32, ``film``'s shape, the film's grey levels) of a display-oriented 2-D film.

        The mean over the spec's input sizes and shifts (and the mirrored film): each view's bone image is
        shifted back and brought to the film's size before averaging, so the views agree on where bone is
        and their independent errors partly cancel."""
        import torch

        from lungx_core.cxr.thoracic import resize, whole_film
        from lungx_core.models.inference import forward_in_chunks

        spec = self.spec
        sizes, shifts = spec.tta_sizes or (spec.size,), spec.tta_shifts or ((0, 0),)
        total = np.zeros(np.shape(film), np.float64)
        for size in sizes:
            small, low, high = whole_film(film, size, spec.low_percentile, spec.high_percentile)
            x = torch.from_numpy(small[None, None]).to(self.device)
            views = [torch.roll(x, shift, (-2, -1)) for shift in shifts]
            if spec.flip_average:  # each view and its mirror image, the mirror's bone mirrored back
                views += [v.flip(-1) for v in views]
            with torch.inference_mode():
                out = forward_in_chunks(self.net, torch.cat(views))[:, 0].float().cpu()
            k = len(shifts)
            if spec.flip_average:
                out = 0.5 * (out[:k] + out[k:].flip(-1))
            b = torch.stack([torch.roll(o, (-dy, -dx), (-2, -1)) for o, (dy, dx) in zip(out, shifts, strict=True)])
            total += resize(b.mean(0).numpy() * (high - low), np.shape(film))
        bone = (total / len(sizes)).astype(np.float32)
        if spec.guided_radius:
            bone = refine_edges(bone, film, spec.guided_radius, spec.guided_eps)  # float32 in, float32 out
        return bone


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
