"""Multi-label segmentation losses that honour per-sample label availability.

Datasets label different subsets of classes (the COVID sets have lungs only). Every loss takes
``label_mask`` (B, C): 1 where the class is annotated for that sample, 0 where it is unknown, so unknown
classes contribute nothing instead of being learned as background. ``pixel_weight`` (B, 1, H, W) can blank
out regions whose annotation is unreliable (the V7 "ignore" areas). MONAI's losses have no per-sample class
mask, hence these small implementations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-6


def _weights(target: torch.Tensor, label_mask: torch.Tensor | None, pixel_weight: torch.Tensor | None):
    b, c = target.shape[:2]
    lm = torch.ones(b, c, device=target.device) if label_mask is None else label_mask.float()
    pw = torch.ones_like(target[:, :1]) if pixel_weight is None else pixel_weight.float()
    return lm, pw


def masked_bce(logits, target, label_mask=None, pixel_weight=None) -> torch.Tensor:
    lm, pw = _weights(target, label_mask, pixel_weight)
    w = lm[:, :, None, None] * pw
    bce = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
    return (bce * w).sum() / w.sum().clamp_min(_EPS)


def masked_soft_dice(logits, target, label_mask=None, pixel_weight=None, batch: bool = False) -> torch.Tensor:
    """1 - mean soft Dice over the (sample, class) pairs that are labelled.

    ``batch=True`` pools each class over the batch first (MONAI's ``DiceLoss(batch=True)``): right for slices
    of volumes, where many slices hold little or none of a structure and per-slice Dice is mostly noise.
    """
    lm, pw = _weights(target, label_mask, pixel_weight)
    p = torch.sigmoid(logits) * pw
    g = target.float() * pw
    if batch:
        w = lm[:, :, None, None]
        inter = (p * g * w).sum((0, 2, 3))
        denom = ((p + g) * w).sum((0, 2, 3))
        dice = (2 * inter + 1.0) / (denom + 1.0)
        labelled = lm.amax(0)
        return ((1 - dice) * labelled).sum() / labelled.sum().clamp_min(_EPS)
    inter = (p * g).sum((2, 3))
    denom = p.sum((2, 3)) + g.sum((2, 3))
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ((1 - dice) * lm).sum() / lm.sum().clamp_min(_EPS)


def masked_generalized_dice(logits, target, label_mask=None, pixel_weight=None) -> torch.Tensor:
    """Generalised Dice loss (Sudre 2017), per sample over its labelled classes, then averaged.

    Class weights are 1 / (ground-truth volume)^2; an empty labelled class takes the largest weight of the
    sample (as MONAI does) instead of an infinite one.
    """
    lm, pw = _weights(target, label_mask, pixel_weight)
    p = torch.sigmoid(logits) * pw
    g = target.float() * pw
    vol = g.sum((2, 3))
    w = 1.0 / vol.clamp_min(1.0) ** 2
    w = torch.where(vol > 0, w, torch.zeros_like(w))
    w_max = w.max(dim=1, keepdim=True).values
    w = torch.where(vol > 0, w, w_max) * lm
    numer = (w * (p * g).sum((2, 3))).sum(1)
    denom = (w * (p.sum((2, 3)) + vol)).sum(1)
    has_label = lm.sum(1) > 0
    gdl = 1 - 2 * numer / denom.clamp_min(_EPS)
    if not has_label.any():
        return logits.sum() * 0.0
    return gdl[has_label].mean()


def penalty_generalized_dice(gdl: torch.Tensor, k: float = 2.5) -> torch.Tensor:
    """PGDL = GDL / (1 + k (1 - GDL)): penalises false positives and negatives more as overlap improves."""
    return gdl / (1 + k * (1 - gdl))


class SegmentationLoss(torch.nn.Module):
    """Loss chosen by name: ``bce``, ``dice``, ``bce_dice`` or ``penalty_combo`` (α·BCE + β·PGDL).

    ``batch_dice`` pools Dice over the batch (see :func:`masked_soft_dice`).
    """

    def __init__(
        self,
        name: str = "penalty_combo",
        alpha: float = 1.0,
        beta: float = 1.0,
        k: float = 2.5,
        batch_dice: bool = False,
    ):
        super().__init__()
        if name not in {"bce", "dice", "bce_dice", "penalty_combo"}:
            raise ValueError(f"unknown loss {name!r}")
        self.name, self.alpha, self.beta, self.k, self.batch_dice = name, alpha, beta, k, batch_dice

    def forward(self, logits, target, label_mask=None, pixel_weight=None) -> torch.Tensor:
        if self.name == "bce":
            return masked_bce(logits, target, label_mask, pixel_weight)
        if self.name == "dice":
            return masked_soft_dice(logits, target, label_mask, pixel_weight, self.batch_dice)
        if self.name == "bce_dice":
            return self.alpha * masked_bce(logits, target, label_mask, pixel_weight) + self.beta * masked_soft_dice(
                logits, target, label_mask, pixel_weight, self.batch_dice
            )
        gdl = masked_generalized_dice(logits, target, label_mask, pixel_weight)
        return self.alpha * masked_bce(logits, target, label_mask, pixel_weight) + self.beta * penalty_generalized_dice(
            gdl, self.k
        )


def masked_l1(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over the pixels where ``weight`` (broadcastable, 0..1) is on."""
    w = weight.float().expand_as(a)
    return ((a - b).abs() * w).sum() / w.sum().clamp_min(_EPS)


def surroundings_l1(
    real: torch.Tensor, fake: torch.Tensor, lung_mask: torch.Tensor, region: torch.Tensor | None = None
) -> torch.Tensor:
    """The shape-aware term: L1 between a real healthy image and its translation over the lung surroundings,
    i.e. outside the (healthy) lung mask and, when given, inside the thoracic ``region``. Zero when only the
    lungs changed, so the known lung mask stays valid for the synthetic image."""
    weight = 1.0 - lung_mask.float()
    if region is not None:
        weight = weight * region.float()
    return masked_l1(real, fake, weight)


def feature_alignment(
    features_x: list[torch.Tensor], features_y: list[torch.Tensor], mask: torch.Tensor, inside_weight: float = 0.1
) -> torch.Tensor:
    """Cross-domain alignment: L1 between a frozen encoder's feature maps of an input and of its translation,
    summed over layers. Weight 1 outside the activation ``mask`` (B, 1, H, W; anatomy there must look the same
    to the encoder) and ``inside_weight`` inside it (the opacity may change, the structures under it should
    not move). Zero for identical inputs."""
    total = features_x[0].new_zeros(())
    for fx, fy in zip(features_x, features_y, strict=True):
        m = F.interpolate(mask.float(), size=fx.shape[-2:], mode="area")
        total = total + masked_l1(fx, fy, (1 - m) + inside_weight * m)
    return total


def region_clearing(
    translated: torch.Tensor, original: torch.Tensor, mask: torch.Tensor, lung: torch.Tensor, fallback: torch.Tensor
) -> torch.Tensor:
    """Region-aware loss inside the activation mask: the mean intensity of the translated mask region must come
    down to that of the same film's clear lung (lung pixels outside the mask), so the reference for "clear" is
    the film's own exposure, not another dataset's style. Films with too little clear lung (< 5 % of the crop)
    use ``fallback`` (per image, e.g. the clear domain's lung mean). Only the excess counts: a region already
    as dark as clear lung costs nothing, and texture is left to the other terms. Images in any one scale."""
    clear = lung.float() * (mask <= 0.01).float()
    n_clear = clear.flatten(1).sum(1)
    own = (original * clear).flatten(1).sum(1) / n_clear.clamp_min(1.0)
    reference = torch.where(n_clear >= 0.05 * clear[0].numel(), own, fallback)
    weight = mask.float().flatten(1)
    region_mean = (translated.flatten(1) * weight).sum(1) / weight.sum(1).clamp_min(_EPS)
    has_region = (weight.sum(1) > 0).float()
    return (torch.relu(region_mean - reference) * has_region).mean()
