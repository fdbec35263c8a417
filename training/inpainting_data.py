"""Training data for the rib-inpainting diffusion model: real radiographs at the model's working scale, and
rib-shaped holes.

The films come from every CXR set in ../shared/data except the bone-suppression evaluation pairs (and the JSRT
film that one of those pairs was made from). Each film is resized whole to ``size`` x ``size`` (as
``DiffusionInpainter.fill`` does at inference) and mapped to [0, 255] by its 0.5/99.5 percentiles.

Holes are drawn procedurally: posterior ribs on a frontal film run from the spine laterally, rise a little and
curve down towards the lateral chest wall, 1.5-3 cm wide with intercostal gaps about as wide. Random curvature,
slope, width and count cover the variety of real rib cages without needing a rib label on a real film.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi

from training.common import save_npz

FILM_SETS = ("jsrt_scr", "cxr_nih_nofinding_pneumonia", "covid_cxr_gb_seg", "covid_cxr_v7labs")
HELD_OUT_IDS = {"JPCLN139"}  # the source of bs_gusarev_des_samples/bsejsrt_JPCLN139_aug1


def film_paths(data_root: Path) -> list[tuple[str, Path]]:
    """(dataset:id, image path) of every usable film, sorted."""
    out = []
    for ds in FILM_SETS:
        with open(data_root / ds / "index.csv", newline="") as f:
            for row in csv.DictReader(f):
                if row["id"] in HELD_OUT_IDS:
                    continue
                path = data_root / ds / "images" / f"{row['id']}.png"
                if path.exists():
                    out.append((f"{ds}:{row['id']}", path))
    return sorted(out)


def build_film_cache(data_root: Path, out: Path, size: int = 256) -> Path:
    """``out`` (.npz): ``films`` uint8 (N, size, size) and ``ids``; built once, reused after."""
    if out.exists():
        return out
    from lungx_core.cxr.thoracic import resize

    films, ids = [], []
    for key, path in film_paths(data_root):
        img = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
        low, high = np.percentile(img, [0.5, 99.5])
        if high - low < 1:
            continue
        small = np.clip((resize(img, (size, size)) - low) / (high - low), 0, 1)
        films.append((small * 255).round().astype(np.uint8))
        ids.append(key)
    save_npz(out, films=np.stack(films), ids=np.array(ids))
    return out


def rib_holes(shape: tuple[int, int], rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """A bool mask of 2-6 rib-shaped bands on a (rows, cols) canvas; ``scale`` is pixels per pixel of a
    256-pixel film (widths and lengths follow it)."""
    rows, cols = shape
    canvas = np.zeros(shape, dtype=bool)
    n = int(rng.integers(2, 7))
    width = rng.uniform(7, 13) * scale
    gap = width * rng.uniform(0.8, 1.6)
    side = rng.choice([-1.0, 1.0])  # which way is lateral
    x0 = rng.uniform(0.0, cols) if rng.random() < 0.5 else (cols * (0.5 - 0.45 * side))
    y0 = rng.uniform(-0.2 * rows, 0.5 * rows)
    length = rng.uniform(0.6, 1.2) * max(rows, cols)
    rise = rng.uniform(0.02, 0.12) * length
    drop = rng.uniform(0.15, 0.5) * length
    s = np.linspace(0, 1, 200)
    points = []
    for k in range(n):
        jitter = rng.normal(0, 0.05)
        x = x0 + side * s * length
        y = y0 + k * (width + gap) - (rise * (1 + jitter)) * np.sin(np.pi * s * 0.6) + drop * (1 + jitter) * s**2
        points.append(np.stack([y, x], axis=1))
    pts = np.concatenate(points).round().astype(int)
    inside = (pts[:, 0] >= 0) & (pts[:, 0] < rows) & (pts[:, 1] >= 0) & (pts[:, 1] < cols)
    canvas[pts[inside, 0], pts[inside, 1]] = True
    if not canvas.any():
        return rib_holes(shape, rng, scale)
    return ndi.distance_transform_edt(~canvas) <= width / 2
