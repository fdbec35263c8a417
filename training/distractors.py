"""Dark regions outside the lungs drawn into healthy training films: what a lung model trained on JSRT takes for
lung on portable AP films.

On the COVID films, besides the retrocardiac convention, the JSRT-trained probe draws lung where there is none
(about a tenth of the reference lung's area on the validation films): gas in the stomach and bowel below the
diaphragm, the soft tissue of the neck and axillae above and beside the apices (AP films take in more of all
three than JSRT's PA films). Drawing such regions, as dark as the film's own lung, outside the lung field of a
film whose masks stay the label teaches that darkness alone is not lung. Pixels inside the (slightly grown)
lung field never change, so the masks stay valid by construction. Measured once (seed 0,
``weights/cxr_lesions.md``): it did not lower that error.

Enabled by a ``"distractors"`` block in a train_cxr config::

    "distractors": {"p": 0.5, "count": [1, 3]}
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

PLACES = ("below", "above", "beside")
PLACE_SHARES = (0.6, 0.2, 0.2)


def draw_distractors(image: np.ndarray, lung: np.ndarray, rng: np.random.Generator,
                     count: tuple[int, int] = (1, 3)) -> np.ndarray:
    """``image`` (float, a preprocessed film) with 1-3 lobulated dark regions outside ``lung`` (bool, same
    grid): below the lung bases, above the apices or beside the lungs, each moved part or all of the way to
    the lung field's mean level with a mottled texture. Returns a new array; unchanged without a lung."""
    lung = np.asarray(lung, bool)
    if not lung.any():
        return image
    out = np.array(image, np.float32, copy=True)
    h, w = out.shape
    rows, cols = np.nonzero(lung)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    height = bottom - top + 1
    level = float(out[lung].mean())
    spread = float(out[lung].std())
    keep_out = ndi.binary_dilation(lung, iterations=max(1, int(0.01 * height)))
    grid_r, grid_c = np.mgrid[:h, :w]
    for _ in range(int(rng.integers(count[0], count[1] + 1))):
        place = PLACES[int(rng.choice(len(PLACES), p=PLACE_SHARES))]
        ry, rx = rng.uniform(0.06, 0.2, 2) * height
        if place == "below":
            r = rng.uniform(bottom - 0.05 * height, bottom + 0.3 * height)
            c = rng.uniform(left, right)
        elif place == "above":
            r = rng.uniform(top - 0.15 * height, top + 0.1 * height)
            c = rng.choice([left, right]) + rng.uniform(-0.1, 0.1) * height
        else:
            r = rng.uniform(top + 0.2 * height, bottom)
            c = (left - rng.uniform(0.02, 0.12) * height) if rng.random() < 0.5 else (
                right + rng.uniform(0.02, 0.12) * height)
        field = ndi.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), max(1.0, 0.3 * min(ry, rx)))
        field /= field.std() + 1e-6
        shape = ((grid_r - r) / ry) ** 2 + ((grid_c - c) / rx) ** 2 < 1 + 0.35 * field  # lobulated
        shape &= ~keep_out
        if not shape.any():
            continue
        alpha = ndi.gaussian_filter(shape.astype(np.float32), max(0.7, 0.1 * min(ry, rx))) * ~keep_out
        depth = rng.uniform(0.5, 1.0)
        texture = ndi.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 3.0)
        texture = level + 0.6 * spread * texture / (texture.std() + 1e-6)
        out = out + depth * alpha * (texture - out)
    return np.clip(out, float(np.min(image)), float(np.max(image))).astype(np.asarray(image).dtype)


class Distractors:
    """Per drawn training film: with probability ``p``, :func:`draw_distractors` outside its lung masks (channels
    0 and 1, lung_left and lung_right); films without a lung label pass unchanged."""

    def __init__(self, spec: dict, seed: int):
        self.p, self.count = float(spec["p"]), tuple(spec.get("count", (1, 3)))
        self.rng = np.random.default_rng(seed)

    def __call__(self, image: np.ndarray, masks: np.ndarray) -> np.ndarray:
        lung = np.asarray(masks[0], bool) | np.asarray(masks[1], bool)
        if not lung.any() or self.rng.random() >= self.p:
            return image
        return draw_distractors(image, lung, self.rng, self.count)
