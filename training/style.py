"""Style changes that must not change a judge's verdict: the augmentations that train the style-proof pathology
classifier and the placebo transforms its model card and tests report.

All work on thoracic crops in [0, 1] (float32). A placebo keeps the anatomy and pathology of a film and changes
only how it looks: exposure (gamma), local contrast (CLAHE), the whole intensity distribution (histogram
matching to another film), sharpness and noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def gamma(x: np.ndarray, g: float) -> np.ndarray:
    return np.clip(x, 0, 1) ** g


def clahe(x: np.ndarray, clip_limit: float = 0.01) -> np.ndarray:
    from lungx_core import preprocess

    return preprocess.clahe(np.clip(x, 0, 1), clip_limit)


def match_histogram(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``x`` with the intensity distribution of ``reference`` (rank-preserving quantile mapping)."""
    q = np.linspace(0, 100, 257)
    src, ref = np.percentile(x, q), np.percentile(reference, q)
    src = np.maximum.accumulate(src + np.arange(len(src)) * 1e-7)  # strictly increasing for interp
    return np.interp(x, src, ref).astype(np.float32)


PLACEBOS = {
    "gamma_0.6": lambda x, ref: gamma(x, 0.6),
    "gamma_1.6": lambda x, ref: gamma(x, 1.6),
    "clahe": lambda x, ref: clahe(x),
    "histogram_matched": match_histogram,
}


def augment(x: np.ndarray, other: np.ndarray, rng: np.random.Generator, histogram_p: float = 0.5,
            clahe_p: float = 0.3) -> np.ndarray:
    """One random style change of a crop: histogram matching to ``other`` (a crop of a film of the other class,
    so that a class's intensity distribution says nothing; chance ``histogram_p``), CLAHE (chance ``clahe_p``),
    gamma 0.5-1.8, blur, noise; each with its own chance, so the plain film is seen too."""
    if rng.random() < histogram_p:
        x = match_histogram(x, other)
    if rng.random() < clahe_p:
        x = clahe(x, float(rng.uniform(0.005, 0.03)))
    if rng.random() < 0.7:
        x = gamma(x, float(np.exp(rng.uniform(np.log(0.5), np.log(1.8)))))
    if rng.random() < 0.3:
        x = ndi.gaussian_filter(x, float(rng.uniform(0.3, 1.2)))
    if rng.random() < 0.3:
        x = x + rng.normal(0, rng.uniform(0.005, 0.03), x.shape)
    return np.clip(x, 0, 1).astype(np.float32)
