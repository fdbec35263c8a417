"""The healthy-vs-pathological chest radiograph classifier (``cxr_pathology``): the probability that the lung
fields hold disease (consolidation, ground glass, pneumonia), scored on the thoracic crop.

It judges synthetic pathological images (``lungx evaluate synthesis``) and scores opacity before and after
opacity removal. Trained here on JSRT/SCR and NIH no-finding (healthy) against the COVID sets and NIH pneumonia
(``training/train_pathology.py``); its model card reports how much it leans on dataset style.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lungx_core.cxr.thoracic import CropSpec, thoracic_crop

DEFAULT_MODEL = "cxr_pathology"


class PathologyClassifier:
    def __init__(self, model: str | Path = DEFAULT_MODEL, device: str = "auto"):
        from lungx_core.models.store import load_model

        self.net, self.config = load_model(model, device)
        self.device = next(self.net.parameters()).device
        self.spec = CropSpec.from_dict(self.config["crop"])
        # the validation cut that balances sensitivity and specificity (training/train_pathology.py)
        self.threshold = float(self.config.get("threshold", 0.5))

    def probability_of_crops(self, crops: np.ndarray) -> np.ndarray:
        """(N, size, size) thoracic crops in [0, 1] -> (N,) probabilities of pathology."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(crops, dtype=np.float32))[:, None].to(self.device)
        with torch.inference_mode():
            return torch.sigmoid(self.net(x)[:, 0]).float().cpu().numpy()

    def probability(self, image: np.ndarray, lung: np.ndarray) -> float:
        """One display-oriented radiograph with its lung-field mask -> probability of pathology."""
        crop = thoracic_crop(image, lung, self.spec)
        return float(self.probability_of_crops(crop.image[None])[0])
