"""Probe guidance for the de-opacifier (issue 17's "feature loss through the frozen lung probe against the known
lung mask"): real opaque training films with reference lung masks, and a loss that asks a lung model trained on
clear films only (``cxr_lung_probe``) to find the whole reference lung on the de-opacified film.

Each real training film is prepared once as inference sees it: the thoracic crop and activation mask that
``OpacityRemover`` builds (lungs from the anatomy model, ``cxr_opacity``'s map, the shipped activation spec), and
the probe's view of the film (percentile-normalised and letterboxed, before CLAHE) with the reference lung mask on
that grid. In training, the de-opacifier's change on the crop is resized onto the probe's grid (differentiable),
added, and the probe segments the result. The probe's CLAHE runs exactly in the forward pass and is passed
straight through in the backward pass: it is a monotone local contrast map, so the identity gives the right
direction of change. Random blur and gamma on the probe's input keep the change from becoming a pattern that
only this network reads (an adversarial texture) rather than clear lung.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.common import ArrayRecord


@dataclass
class RealFilms(ArrayRecord):
    crops: np.ndarray  # (N, S, S) float32 thoracic crops in [0, 1]
    masks: np.ndarray  # (N, S, S) float32 activation masks
    views: np.ndarray  # (N, P, P) float32: the probe's input before CLAHE
    lungs: np.ndarray  # (N, P, P) bool: reference lung masks on the probe's grid
    places: np.ndarray  # (N, 4) int: rows r0, r1 and cols c0, c1 of the crop box on the probe's grid
    gains: np.ndarray  # (N,) float32: one unit of crop intensity in units of the probe's input
    ids: np.ndarray  # (N,) str


def opaque_training_crops(data_root: Path, dataset: str, remover, segmenter, split: str = "train",
                          ids: list[str] | None = None):
    """The films ``images/<id>.png`` of ``dataset`` in ``split`` (``training/splits/<dataset>_<split>.txt``, or
    ``ids``) as the remover sees them at inference: yields (id, film, lung found, thoracic crop, activation mask)
    for each film whose activation mask is not empty. ``remover`` is an
    :class:`lungx_core.tasks.opacity_removal.OpacityRemover`, ``segmenter`` the lung segmenter of
    ``lungx_core.tasks.cxr_segmentation.lung_segmenter``."""
    from lungx_core.anatomy import class_mask
    from lungx_core.cxr.thoracic import thoracic_crop
    from lungx_core.generative.opacity import activation_mask
    from lungx_core.image import MedicalImage
    from lungx_core.io.readers import read_radiograph

    if ids is None:
        ids = (Path(__file__).parent / "splits" / f"{dataset}_{split}.txt").read_text().split()
    for film_id in ids:
        film = read_radiograph(data_root / dataset / "images" / f"{film_id}.png").array.astype(np.float32)
        found = class_mask(segmenter.segment(MedicalImage(film)).masks, "lung")
        if not found.any():
            continue
        crop = thoracic_crop(film, found, remover.spec)
        probability = remover.opacity.probability_of_crops(crop.image[None])[0]
        mask = activation_mask(probability, crop.lung, remover.activation)
        if mask.any():
            yield film_id, film, found, crop, mask


def prepare_films(data_root: Path, datasets: list[str], preprocess, remover_model: str = "cxr_opacity_removal",
                  split: str = "train") -> RealFilms:
    """The films of ``datasets`` in ``split`` that have a reference lung mask and an activation mask that is not
    empty (:func:`opaque_training_crops`), prepared as described above for a probe whose preprocessing is
    ``preprocess`` (a :class:`lungx_core.preprocess.PreprocessConfig`)."""
    from lungx_core.preprocess import letterbox, letterbox_mask, normalise_intensity
    from lungx_core.tasks.cxr_segmentation import lung_segmenter
    from lungx_core.tasks.opacity_removal import OpacityRemover
    from training.synthesis_data import read_gray

    remover = OpacityRemover(remover_model, "cpu")
    segmenter = lung_segmenter("cpu", "torch")  # the caches as built
    rows: dict[str, list] = {k: [] for k in RealFilms.__dataclass_fields__}
    for dataset in datasets:
        for film_id, film, _, crop, mask in opaque_training_crops(data_root, dataset, remover, segmenter, split):
            lung_path = data_root / dataset / "masks" / "lung" / f"{film_id}.png"
            if not lung_path.exists():
                continue
            reference = read_gray(lung_path) > 127
            if reference.shape != film.shape:
                continue
            percentiles = (preprocess.low_percentile, preprocess.high_percentile)
            lo, hi = (float(v) for v in np.percentile(film, percentiles))
            view, box = letterbox(normalise_intensity(film, *percentiles), preprocess.size)
            scale = box.resized_shape[0] / film.shape[0]
            b = crop.box
            place = [round(box.offset[0] + b.r0 * scale), round(box.offset[0] + b.r1 * scale),
                     round(box.offset[1] + b.c0 * scale), round(box.offset[1] + b.c1 * scale)]
            for key, value in (("crops", crop.image), ("masks", mask), ("views", view),
                               ("lungs", letterbox_mask(reference, box)), ("places", place),
                               ("gains", (crop.high - crop.low) / max(hi - lo, 1e-6)), ("ids", film_id)):
                rows[key].append(value)
        print(f"{dataset}: {len(rows['ids'])} films so far", flush=True)
    return RealFilms(**{k: np.asarray(v, dtype=np.float32 if k in ("crops", "masks", "views", "gains") else None)
                        for k, v in rows.items()})


def onto_probe_grid(change: torch.Tensor, films: RealFilms, idx: np.ndarray) -> torch.Tensor:
    """(B, 1, S, S) changes of the crops ``idx`` (crop intensity units) -> (B, 1, P, P) changes of the probe's
    input, each resized into its crop box."""
    size = films.views.shape[-1]
    out = []
    for k, i in enumerate(idx):
        r0, r1, c0, c1 = (int(v) for v in films.places[i])
        d = F.interpolate(change[k : k + 1], size=(r1 - r0, c1 - c0), mode="bilinear", align_corners=False)
        out.append(F.pad(d * float(films.gains[i]), (c0, size - c1, r0, size - r1)))
    return torch.cat(out)


def clahe_straight_through(view: torch.Tensor, clip_limit: float) -> torch.Tensor:
    """CLAHE of (B, 1, P, P) views in [0, 1] in the forward pass, the identity in the backward pass."""
    from lungx_core.preprocess import clahe

    exact = np.stack([clahe(v, clip_limit) for v in view.detach()[:, 0].numpy()])[:, None]
    return view + (torch.from_numpy(exact) - view).detach()


def jitter(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """A random gamma (0.8-1.25) and, half of the time, a Gaussian blur (sigma 0.5-1.2 px) of (B, 1, P, P)."""
    from training.common import blur

    x = x.clamp(1e-4, 1) ** float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
    return blur(x, float(rng.uniform(0.5, 1.2))) if rng.random() < 0.5 else x


class ProbeLoss:
    """1 - soft Dice of the probe's lung field (left or right) on de-opacified films against the reference."""

    def __init__(self, probe: str = "cxr_lung_probe"):
        from lungx_core.models.store import load_model
        from lungx_core.preprocess import PreprocessConfig

        self.net, config = load_model(probe, "cpu")
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.lungs = [config["classes"].index(c) for c in ("lung_left", "lung_right")]
        self.preprocess = PreprocessConfig.from_dict(config["preprocess"])

    def __call__(self, change: torch.Tensor, films: RealFilms, idx: np.ndarray, rng: np.random.Generator
                 ) -> tuple[torch.Tensor, float]:
        """(loss, mean hard Dice) for the crops ``idx`` changed by ``change`` (B, 1, S, S)."""
        from lungx_core.eval.metrics import dice

        view = (torch.from_numpy(films.views[idx])[:, None] + onto_probe_grid(change, films, idx)).clamp(0, 1)
        seen = jitter(clahe_straight_through(view, self.preprocess.clahe_clip_limit), rng)
        probs = torch.sigmoid(self.net(seen)[:, self.lungs])
        lung = 1 - (1 - probs[:, 0]) * (1 - probs[:, 1])
        ref = torch.from_numpy(films.lungs[idx]).float()
        soft = (2 * (lung * ref).sum((1, 2)) + 1) / (lung.sum((1, 2)) + ref.sum((1, 2)) + 1)
        hard = (lung.detach() > 0.5).numpy()
        return (1 - soft).mean(), float(np.mean([dice(h, r) for h, r in zip(hard, films.lungs[idx], strict=True)]))
