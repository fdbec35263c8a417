"""Exact (opaque, clear, mask) triples for the de-opacifier: lesions drawn into clear thoracic crops.

Clear crops: the healthy domain of ``training/synthesis_data.py`` (JSRT/SCR, NIH "No Finding" adult PA), 144 px,
lung masks known. Each sample gets, with equal chance:

- a procedural lesion of ``lungx_core.generative.lesions`` (random area 5-60 % of the lung, kind, side, strokes), or
- a real opacity of a covid_cxr_gb_seg *training* film (split by patientid): its residual over a smooth estimate
  of the clear lung behind it (normalised convolution of the lung outside the opacity), low-passed so the
  donor's own vessels stay behind, placed where it was in the donor's crop (crops are aligned on the lung
  fields) and clipped to the recipient's eroded lung, feathered.

Donor films and evaluation films never overlap: donors come from the GB training split only, the clear crops
from the healthy training splits; validation triples use the healthy validation crops.
The mask the network is given imitates the activation mask of inference: the lesion grown by a random margin
and softened.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from lungx_core.generative.lesions import LesionRequest, apply_lesion, plan_lesion
from lungx_core.generative.opacity import soften_mask

REAL_GAIN = (0.7, 1.5)  # the shipped recipe's range of the factor a transplanted real residual is scaled by


@dataclass
class Triple:
    opaque: np.ndarray  # (S, S) float32 in [0, 1]
    clear: np.ndarray  # (S, S) float32 in [0, 1]
    mask: np.ndarray  # (S, S) float32 in [0, 1]: the activation-like mask the network sees
    lesion: np.ndarray  # (S, S) bool: where the lesion is


def real_residuals(data: dict[str, np.ndarray], sigma: float = 8.0, detail: float = 1.5) -> list[tuple]:
    """(residual, opacity mask) of every GB training crop with a known opacity of at least 2 % of its lung."""
    out = []
    pick = (data["dataset"] == "covid_cxr_gb_seg") & (data["split"] == "train") & data["opacity_known"]
    for i in np.nonzero(pick)[0]:
        x = data["images"][i].astype(np.float32)
        lung, opacity = data["lungs"][i], data["opacity"][i] & data["lungs"][i]
        clear = lung & ~opacity
        if opacity.sum() < 0.02 * lung.sum() or clear.sum() < 0.1 * lung.sum():
            continue
        weight = ndi.gaussian_filter(clear.astype(np.float32), sigma)
        behind = ndi.gaussian_filter(x * clear, sigma) / np.maximum(weight, 1e-3)
        behind = np.where(weight > 0.02, behind, np.median(x[clear]))
        residual = np.clip(ndi.gaussian_filter(x - behind, detail), 0, None) * opacity
        if residual[opacity].mean() > 0.02:  # a visible lift, not an outline over unchanged lung
            out.append((residual.astype(np.float32), opacity))
    return out


def activation_like(lesion: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The lesion softened as inference softens an activation mask, grown by a random 1-4 px."""
    return soften_mask(lesion, int(rng.integers(1, 5)), 1.5)


def make_triple(
    clear: np.ndarray, lung: np.ndarray, rng: np.random.Generator, bank: list[tuple], gain: tuple = REAL_GAIN
) -> Triple:
    """One triple from a clear crop in [0, 1] and its lung mask; a real residual is scaled by a random ``gain``."""
    if bank and rng.random() < 0.5:
        residual, where = bank[int(rng.integers(len(bank)))]
        if rng.random() < 0.5:  # the other side's lung
            residual, where = residual[:, ::-1], where[:, ::-1]
        inner = ndi.binary_erosion(lung, iterations=2)
        lesion = where & inner
        feather = ndi.gaussian_filter(lesion.astype(np.float32), 2.0) * lung
        opaque = np.clip(clear + rng.uniform(*gain) * feather * residual, 0, 1)
        if lesion.sum() >= 0.01 * lung.sum():
            return Triple(opaque.astype(np.float32), clear, activation_like(lesion, rng), lesion)
    request = LesionRequest(area=float(rng.uniform(0.05, 0.6)), kind=("ggo", "consolidation", "mixed")[rng.integers(3)])
    lesion = plan_lesion(lung, request, rng)
    opaque = np.clip(apply_lesion(clear, lung, lesion), 0, 1)
    return Triple(opaque.astype(np.float32), clear, activation_like(lesion.hard, rng), lesion.hard)


def batch(
    images: np.ndarray, lungs: np.ndarray, idx: np.ndarray, size: int, rng: np.random.Generator, bank: list[tuple],
    gain: tuple = REAL_GAIN,
) -> tuple[np.ndarray, ...]:
    """(opaque, clear, mask, lesion) arrays (B, size, size): a triple per cached crop in ``idx``, then a random
    ``size`` window of it, flipped left-right half of the time."""
    out = [[], [], [], []]
    load = images.shape[-1]
    for i in idx:
        t = make_triple(images[i].astype(np.float32), lungs[i], rng, bank, gain)
        r, c = rng.integers(0, load - size + 1, 2)
        flip = rng.random() < 0.5
        for k, a in enumerate((t.opaque, t.clear, t.mask, t.lesion)):
            w = a[r : r + size, c : c + size]
            out[k].append(w[:, ::-1] if flip else w)
    return tuple(np.stack(o).astype(np.float32) for o in out)
