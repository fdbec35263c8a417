"""Where a chest radiograph is opaque: the opacity model's map and the adaptive activation mask built from it.

Opacity removal (``tasks/opacity_removal.py``) changes a film only inside its activation mask: the translated
crop is composited as ``mask * G(x) + (1 - mask) * x``. The mask comes from the ``cxr_opacity`` model's
probability map on the thoracic crop. A film whose strongest responses inside the lung field (the mean of the
top ``image_fraction`` of the crop) stay below ``image_floor`` is called clear and gets an empty mask. Otherwise
the map is thresholded per image (Otsu's cut inside the lung field, kept within fixed bounds: never so low that
weak responses get in, never so high that a film opaque throughout keeps only its densest part), cleared of
specks, grown a little to cover the opacity's fuzzy edge and softened so the change fades in.
Pure functions on arrays, plus a small wrapper that runs the model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "cxr_opacity"


@dataclass(frozen=True)
class ActivationSpec:
    image_floor: float = 0.5  # image-level gate (validation: passes 98 % of opaque films, 45 % of clear ones)
    image_fraction: float = 0.05  # share of the crop's pixels whose mean probability is gated
    floor: float = 0.35  # no cut below this: a clear film's weak responses stay out
    ceiling: float = 0.65  # no cut above this: a film that is opaque everywhere still gets its opacities
    lung_margin: int = 6  # px of the crop: opacities may blur the lung border, so look a little beyond it
    min_fraction: float = 0.005  # components smaller than this share of the crop are dropped
    grow: int = 2  # px of the crop the hard mask is dilated by
    soften: float = 1.5  # Gaussian sigma (crop px) of the soft edge
    hysteresis: float = 1.0  # < 1: also take the uncertain border, pixels above this share of the cut that touch
    # the mask (hysteresis thresholding); 1 keeps the plain cut

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ActivationSpec:
        from lungx_core.config import strict_config

        return strict_config(cls, d)


def adaptive_threshold(probability: np.ndarray, region: np.ndarray, spec: ActivationSpec) -> float:
    """The per-image cut: Otsu's threshold of the probabilities inside ``region``, clipped to
    [floor, ceiling]. A region whose probabilities barely vary gets the floor."""
    values = probability[region] if region.any() else probability.ravel()
    if values.size == 0 or np.ptp(values) < 1e-3:
        return spec.floor
    from skimage.filters import threshold_otsu

    return min(max(float(threshold_otsu(values)), spec.floor), spec.ceiling)


def image_score(probability: np.ndarray, region: np.ndarray, fraction: float) -> float:
    """Mean of the highest ``fraction`` (of all pixels) of the probabilities inside ``region``."""
    values = np.sort(probability[region] if region.any() else probability.ravel())[::-1]
    return float(values[: max(1, int(fraction * probability.size))].mean()) if values.size else 0.0


def activation_mask(probability: np.ndarray, lung: np.ndarray, spec: ActivationSpec = ActivationSpec()) -> np.ndarray:
    """Soft activation mask in [0, 1] (float32, the map's shape): exactly 0 wherever nothing may change."""
    from scipy import ndimage as ndi

    region = ndi.binary_dilation(lung, iterations=spec.lung_margin) if lung.any() else np.ones_like(lung, bool)
    if image_score(probability, region, spec.image_fraction) < spec.image_floor:
        return np.zeros(probability.shape, dtype=np.float32)
    cut = adaptive_threshold(probability, region, spec)
    if spec.hysteresis < 1:
        from skimage.filters import apply_hysteresis_threshold

        hard = apply_hysteresis_threshold(np.where(region, probability, 0.0), spec.hysteresis * cut, cut)
    else:
        hard = (probability > cut) & region
    labels, n = ndi.label(hard)
    if n:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.nonzero(sizes >= spec.min_fraction * hard.size)[0] + 1
        hard = np.isin(labels, keep)
    if not hard.any():
        return np.zeros(probability.shape, dtype=np.float32)
    return soften_mask(hard, spec.grow, spec.soften)


def soften_mask(hard: np.ndarray, grow: int, soften: float) -> np.ndarray:
    """A hard mask grown by ``grow`` px and given a Gaussian edge of sigma ``soften`` px -> float32 in [0, 1],
    exactly 0 far from it. How the activation mask gets its soft edge (and what de-opacifier training imitates)."""
    from scipy import ndimage as ndi

    if grow and hard.any():
        hard = ndi.binary_dilation(hard, iterations=grow)
    soft = ndi.gaussian_filter(hard.astype(np.float32), soften) if soften > 0 else hard.astype(np.float32)
    soft = np.maximum(soft, hard * 0.5)  # the hard core never fades below one half
    soft[soft < 1e-2] = 0.0  # a bounded support: the far Gaussian tail would touch every pixel
    return np.clip(soft, 0.0, 1.0).astype(np.float32)


def composite(original, translated, mask):
    """``mask * translated + (1 - mask) * original`` for numpy arrays or torch tensors; where the mask is 0 the
    result is the original, bit for bit."""
    return mask * translated + (1 - mask) * original


class OpacityModel:
    """Holds ``cxr_opacity``; :meth:`probability_of_crops` maps thoracic crops to opacity probabilities."""

    def __init__(self, model: str | Path = DEFAULT_MODEL, device: str = "auto"):
        from lungx_core.cxr.thoracic import CropSpec
        from lungx_core.models.store import load_model

        self.net, self.config = load_model(model, device)
        self.device = next(self.net.parameters()).device
        self.spec = CropSpec.from_dict(self.config["crop"])

    def probability_of_crops(self, crops: np.ndarray) -> np.ndarray:
        """(N, size, size) thoracic crops in [0, 1] -> (N, size, size) opacity probabilities."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))[:, None].to(self.device)
        with torch.inference_mode():
            return torch.sigmoid(self.net(x)[:, 0]).float().cpu().numpy()
