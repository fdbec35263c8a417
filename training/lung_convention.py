"""SCR lung masks redrawn to the COVID sets' convention: the lung runs on behind the heart.

SCR's outlines (JSRT) stop each lung at the heart's border; the COVID sets' outlines carry each lung's medial
border straight down behind the heart towards the diaphragm (``training/eval_lung_convention.py`` measures what
that difference costs a model trained on one and scored on the other). This redraws SCR masks, from the SCR
masks alone: each lung gains the heart pixels lateral to its medial border as it runs just above the heart,
down to the lung's lowest row. Used by a train_cxr config with ``"lung_convention": "retrocardiac"`` to show
how much of a healthy-trained model's COVID Dice is convention rather than disease.
"""

from __future__ import annotations

import numpy as np

ABOVE_HEART_ROWS = 0.05  # the medial border is read over this share of the lung height above the heart's top


def retrocardiac_lungs(lung_left: np.ndarray, lung_right: np.ndarray,
                       heart: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lung_left, lung_right) (bool, display orientation: the patient's left lung on the image's right) with the
    heart pixels behind which each lung runs added; unchanged where a lung or the heart is empty."""
    left, right = np.array(lung_left, bool), np.array(lung_right, bool)
    heart = np.asarray(heart, bool)
    heart_rows = np.nonzero(heart.any(axis=1))[0]
    if heart_rows.size == 0:
        return left, right
    top = heart_rows[0]
    cols = np.arange(heart.shape[1])[None, :]
    rows = np.arange(heart.shape[0])[:, None]
    for lung, medial_is_min in ((left, True), (right, False)):
        lung_rows = np.nonzero(lung.any(axis=1))[0]
        if lung_rows.size == 0:
            continue
        band = max(2, int(ABOVE_HEART_ROWS * (lung_rows[-1] - lung_rows[0] + 1)))
        above = [r for r in range(max(top - band, 0), top) if lung[r].any()]
        if not above:
            continue
        edges = [np.nonzero(lung[r])[0].min() if medial_is_min else np.nonzero(lung[r])[0].max() for r in above]
        edge = float(np.median(edges))
        lateral = cols >= edge if medial_is_min else cols <= edge
        lung |= heart & lateral & (rows <= lung_rows[-1]) & (rows >= top)
    return left, right
