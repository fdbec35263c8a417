"""Posterior-rib masks for frontal chest radiographs.

The ``cxr_ribs`` model (a MONAI U-Net) was trained only on CT-derived radiographs with projected rib labels
(``training/rib_data.py``, ``training/train_ribs.py``): no real film here has rib labels. It sees the whole
film resized to ``size`` square, windowed by its 0.5/99.5 percentiles, as in training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DEFAULT_MODEL = "cxr_ribs"


class RibMasker:
    def __init__(self, model: str | Path = DEFAULT_MODEL, device: str = "auto"):
        from lungx_core.models.store import load_model

        self.net, self.config = load_model(model, device)
        self.device = next(self.net.parameters()).device

    def probability(self, image: np.ndarray) -> np.ndarray:
        """Rib probability (float32, ``image``'s shape) for a display-oriented 2-D film."""
        import torch

        from lungx_core.cxr.thoracic import resize, whole_film

        cfg = self.config
        small, _, _ = whole_film(image, int(cfg["size"]), cfg["low_percentile"], cfg["high_percentile"])
        x = torch.from_numpy(small[None, None]).to(self.device)
        with torch.inference_mode():
            p = torch.sigmoid(self.net(x))[0, 0].float().cpu().numpy()
        return np.clip(resize(p, np.shape(image)), 0.0, 1.0)

    def mask(self, image: np.ndarray, lung: np.ndarray | None = None, threshold: float = 0.5) -> np.ndarray:
        """Rib mask (bool) of a display-oriented film, limited to the lung field grown by 2 % of the film's
        long side when ``lung`` is given (ribs outside the lungs hide nothing a reader looks for)."""
        from scipy import ndimage as ndi

        ribs = self.probability(image) >= threshold
        if lung is not None:
            grow = max(1, round(0.02 * max(image.shape)))
            ribs &= ndi.binary_dilation(lung, iterations=grow)
        return ribs
