"""Bone-layer training data: CT-derived (film, bone image) pairs with a randomised film look, and the real
dual-energy (DES) pairs of ../shared/data/bs_gusarev_des_samples.

CT pairs: the cached DRRs of ``training/rib_data.py`` (every CT, the CT as scanned and 11 small 3-D rotations,
cut to the body, 256 px): ``drr`` with bone and ``soft`` with every bone voxel (>= 200 HU) given soft-tissue
attenuation. :func:`render_pair` turns one into what a film looks like, applying *the same* operations to both
images, so the bone image (film with bone minus film without) stays exactly aligned and noise-free.

DES pairs: each film at 256 px (the whole film, windowed by its 0.5/99.5 percentiles, as at inference) and its
bone image = film - (soft-tissue image linearly matched to the film over the lung field): dual-energy
processing sets the soft-tissue image's brightness and contrast arbitrarily, the scores ignore them too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from training.common import blur, save_npz

DES_ROOT = "bs_gusarev_des_samples"
BONE_VALIDATION_CT = "lidc-idri-0001"  # full-height chest, never trained on: the CT-derived validation


def _window(x: torch.Tensor, ref: torch.Tensor, low_p: float, high_p: float) -> tuple[torch.Tensor, float, float]:
    lo, hi = (float(v) for v in np.percentile(ref.numpy(), [low_p, high_p]))
    return (x - lo) / max(hi - lo, 1e-6), lo, hi


def render_pair(drr: np.ndarray, soft: np.ndarray, rng: np.random.Generator | None) -> tuple[torch.Tensor, ...]:
    """(film, bone) as (1, H, W) float32 tensors from one DRR pair (line integrals, H x W).

    ``film`` is scaled as the model sees a real film (0.5/99.5 percentiles of the film to [0, 1]); ``bone`` is
    film minus the same rendering of ``soft``. ``rng`` None gives a fixed mid-range look (validation).
    Randomised: bone attenuation x0.6-2.5 (a 70-keV DRR shows bone less than most films), a compressive
    characteristic curve, scatter (a broad blur added), windowing, gamma, two-scale unsharp masking (film
    processing), local contrast equalisation, detector blur, signal-dependent and flat noise (identical in both
    images, so the bone image carries none), and inverted polarity for 10 % of films.
    """
    d = torch.from_numpy(np.asarray(drr, np.float32))[None, None]
    s = torch.from_numpy(np.asarray(soft, np.float32))[None, None]
    if rng is None:
        k, curve, scatter, gamma = 1.5, 0.0, 0.0, 1.0
    else:
        k, curve, scatter = rng.uniform(0.6, 2.5), rng.uniform(0.0, 3.0), rng.uniform(0.0, 0.4)
        gamma = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    d = s + k * (d - s)
    scale = float(np.percentile(d.numpy(), 99.5)) or 1.0
    pair = torch.cat([d, s]) / scale  # both on the with-bone film's scale
    if curve > 0:  # film/detector characteristic: compresses the dense end
        pair = (1 - torch.exp(-curve * pair)) / (1 - np.exp(-curve))
    if scatter > 0:  # scatter: a broad haze that follows the film, computed once, added to both
        pair = pair + scatter * blur(pair[:1], float(rng.uniform(15, 40)))
    low_p, high_p = (0.5, 99.5) if rng is None else (rng.uniform(0, 3), rng.uniform(97, 100))
    pair, _, _ = _window(pair, pair[0], low_p, high_p)
    pair = pair.clamp(0, 1.2) ** gamma
    if rng is not None:
        for _ in range(2):  # unsharp masking at two scales (processing), the same kernel and gain for both
            sigma, gain = rng.uniform(2, 25), rng.uniform(0, 1.2)
            pair = pair + gain * (pair - blur(pair, sigma))
        if rng.random() < 0.3:  # local contrast equalisation with the with-bone film's local statistics
            sigma = rng.uniform(10, 40)
            mean = blur(pair[:1], sigma)
            std = blur((pair[:1] - mean) ** 2, sigma).sqrt() + 0.05
            pair = pair + rng.uniform(0.2, 0.8) * ((pair - mean) / std * float(std.mean()) - (pair - mean))
        pair = blur(pair, rng.uniform(0.3, 1.2))
        noise = rng.uniform(0, 0.02) * torch.randn_like(pair[:1]) * pair[:1].clamp(0, None).sqrt()
        pair = pair + noise + rng.uniform(0, 0.01) * torch.randn_like(pair[:1])
        if rng.random() < 0.1:
            pair = -pair
    pair, _, _ = _window(pair, pair[0], 0.5, 99.5)
    return pair[0], pair[0] - pair[1]


def render_batch(drr: np.ndarray, soft: np.ndarray, rng: np.random.Generator | None):
    """(films, bones), each (N, 1, H, W), from N cached DRR pairs."""
    pairs = [render_pair(d, s, rng) for d, s in zip(drr, soft, strict=True)]
    return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])


def read_des_pairs(data_root: Path) -> list[dict]:
    """The DES pairs, full resolution: ``id``, ``film`` and ``soft`` (float64, the stored grey levels) and
    ``lung`` (bool: the anatomy model's lungs on the film, the scoring region of ``lungx evaluate``)."""
    from lungx_core.anatomy import class_mask
    from lungx_core.image import MedicalImage
    from lungx_core.io.readers import read_radiograph
    from lungx_core.tasks.cxr_segmentation import CXRSegmenter

    root = data_root / DES_ROOT
    segmenter = CXRSegmenter()
    pairs = []
    for path in sorted((root / "images").glob("*.png")):
        film = read_radiograph(path).array.astype(np.float64)
        soft = read_radiograph(root / "soft_tissue" / path.name).array.astype(np.float64)
        lung = class_mask(segmenter.segment(MedicalImage(film)).masks, "lung")  # as the evaluation does
        pairs.append({"id": path.stem, "film": film, "soft": soft, "lung": lung})
    return pairs


def des_training_arrays(pairs: list[dict], size: int) -> dict[str, np.ndarray]:
    """``film``, ``bone`` (float32) and ``lung`` (float32 0/1), each (N, 1, size, size): every DES film as the
    model sees it, with its bone image in the same units."""
    from lungx_core.cxr.thoracic import resize, whole_film
    from lungx_core.eval.evaluate import linear_match

    films, bones, lungs = [], [], []
    for p in pairs:
        film, lo, hi = whole_film(p["film"], size)
        matched = linear_match(p["soft"], p["film"], p["lung"])  # soft tissue on the film's grey scale
        bone = resize(((p["film"] - matched) / (hi - lo)).astype(np.float32), (size, size))
        films.append(film)
        bones.append(bone)
        lungs.append(resize(p["lung"].astype(np.float32), (size, size)))
    return {k: np.stack(v)[:, None] for k, v in (("film", films), ("bone", bones), ("lung", lungs))}


def psnr_gain(film: np.ndarray, bone: np.ndarray, soft: np.ndarray, region: np.ndarray, alpha: float) -> float:
    """PSNR gain (dB) of ``film - alpha * bone`` over the film against ``soft`` in ``region``, each linearly
    matched to ``soft`` there: the PSNR of ``lungx evaluate bone-suppression``, without its SSIM."""
    from lungx_core.eval.evaluate import linear_match

    errors = []
    for image in (film, film - alpha * bone):
        errors.append(float(np.mean((linear_match(image, soft, region)[region] - soft[region]) ** 2)))
    return float(10 * np.log10(errors[0] / errors[1]))


def bone_inference_config(cfg: dict) -> dict:
    """The ``cxr_bone`` settings that come from a training config (``BoneSpec`` keys; the film window is the
    0.5/99.5 percentiles the training films were windowed with), for cross-validation and for the export."""
    return {"size": cfg["size"], "low_percentile": 0.5, "high_percentile": 99.5,
            "flip_average": cfg.get("flip_average", False), "tta_sizes": cfg.get("tta_sizes", []),
            "tta_shifts": cfg.get("tta_shifts", [])}


def drr_nodules(drr: np.ndarray, soft: np.ndarray, rng: np.random.Generator, ncfg: dict):
    """(drr, soft, disc): a CT-derived pair with simulated soft-tissue nodules added to both line-integral images
    (what inserting them into the CT before projecting gives, parallel beam), and their discs (bool). Placed in
    the lung fields (the darkest 40 % of the body's soft-tissue projection, so mostly behind ribs)."""
    from training.nodule_sim import Nodule, disc_mask, render_nodules, sample_centres, sample_kind

    soft = np.asarray(soft, np.float32)
    body = soft > 0.25 * np.percentile(soft, 99)
    lungs = body & (soft < np.percentile(soft[body], 40))
    n = int(rng.integers(ncfg["per_image"][0], ncfg["per_image"][1] + 1))
    nodules = []
    for x, y in sample_centres(lungs, n, rng):
        d_mm = float(np.exp(rng.uniform(*np.log(ncfg["diameter_mm"]))))
        # disc mean of a sphere's chord over 0.7 radius is ~0.83 of the diameter
        amplitude = rng.uniform(*ncfg["delta_mu"]) * d_mm * 0.83
        nodules.append(Nodule(float(x), float(y), d_mm / ncfg["mm_per_px"], float(amplitude), sample_kind(rng)))
    added = render_nodules(soft.shape, nodules, rng)
    return np.asarray(drr, np.float32) + added, soft + added, disc_mask(soft.shape, nodules)


def render_batch_with_nodules(drr: np.ndarray, soft: np.ndarray, rng: np.random.Generator, ncfg: dict):
    """(films, bones, discs), each (N, 1, H, W): :func:`render_batch` of pairs that carry simulated nodules."""
    films, bones, discs = [], [], []
    for d, s in zip(drr, soft, strict=True):
        d, s, disc = drr_nodules(d, s, rng, ncfg)
        film, bone = render_pair(d, s, rng)
        films.append(film)
        bones.append(bone)
        discs.append(torch.from_numpy(disc.astype(np.float32))[None])
    return torch.stack(films), torch.stack(bones), torch.stack(discs)


def film_nodules(films: np.ndarray, lungs: np.ndarray, polarity: np.ndarray, rng: np.random.Generator, ncfg: dict):
    """(films + nodules, discs), (N, 1, H, W) float32: simulated nodules pasted into windowed films at the JSRT
    contrast range, in the lung fields (10 % anywhere in their bounding box), brighter where ``polarity`` is
    +1 and darker where it is -1 (inverted films)."""
    from training.nodule_sim import disc_mask, random_nodules, render_nodules

    out, discs = films.copy(), np.zeros_like(films)
    size_px = (ncfg["diameter_mm"][0] / ncfg["mm_per_px"], ncfg["diameter_mm"][1] / ncfg["mm_per_px"])
    for i in range(len(films)):
        n = int(rng.integers(ncfg["per_image"][0], ncfg["per_image"][1] + 1))
        nodules = random_nodules(lungs[i, 0] > 0.5, rng, n, size_px)
        out[i, 0] += polarity[i] * render_nodules(films.shape[-2:], nodules, rng)
        discs[i, 0] = disc_mask(films.shape[-2:], nodules)
    return out, discs


def read_normal_films(data_root: Path, out: Path, size: int) -> dict[str, np.ndarray]:
    """Real films with no finding, for the nodule-invariance term: the JSRT normals (JPCNN: the JSRT nodule
    films, which the conspicuity is scored on, are never used) and the NIH no-finding PA films, each at ``size``
    (whole film, 0.5/99.5 percentile window) with the anatomy model's lungs; cached at ``out`` (.npz)."""
    if not out.exists():
        import csv

        from lungx_core.anatomy import class_mask
        from lungx_core.cxr.thoracic import resize, whole_film
        from lungx_core.image import MedicalImage
        from lungx_core.io.readers import read_radiograph
        from lungx_core.tasks.cxr_segmentation import CXRSegmenter

        segmenter = CXRSegmenter()
        paths = sorted((data_root / "jsrt_scr" / "images").glob("JPCNN*.png"))
        nih = data_root / "cxr_nih_nofinding_pneumonia"
        with open(nih / "index.csv") as f:
            paths += [nih / "images" / f"{r['id']}.png" for r in csv.DictReader(f) if r["group"] == "no_finding"]
        films, lungs = [], []
        for path in paths:
            film = read_radiograph(path).array.astype(np.float32)
            lung = class_mask(segmenter.segment(MedicalImage(film)).masks, "lung")
            films.append(whole_film(film, size)[0])
            lungs.append(resize(lung.astype(np.float32), (size, size)))
        save_npz(out, film=np.stack(films)[:, None], lung=np.stack(lungs)[:, None])
    z = np.load(out)
    return {"film": z["film"], "lung": z["lung"]}
