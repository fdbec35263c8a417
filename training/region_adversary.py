"""The seed's unpaired, region-aware refinement of the de-opacifier (ARMUT-LOR; issue 37 item 2).

After the supervised stage, the de-opacifier is fine-tuned on real opaque training films (no masks needed) with
an adversarial loss from a discriminator that sees only the lung field inside the activation mask: the
de-opacified film there against *clear lung in the same place* of another film. Each opaque film's region is
matched with partner films whose lung fields cover it (crops are aligned on the lung fields, so a place in the
crop is an anatomical place): clear films (JSRT, NIH no-finding adult PA) and the other opaque films where their
own activation mask leaves that region clear. The discriminator therefore cannot tell real from fake by where
the region lies or by its shape (both come from the fake's mask) nor, with opaque partners, by which dataset's
films it sees; what is left for it is whether the region's content looks like clear lung.

The generator's loss adds, to the supervised pair loss of ``train_deopacifier.py`` (which holds the identity
outside the lesions), the adversarial term and a penalty on brightening: removal only ever takes density away.
Outside the mask the output is the input by construction (``restore``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.common import ArrayRecord

NIH = "cxr_nih_nofinding_pneumonia"


@dataclass
class RegionFilms(ArrayRecord):
    crops: np.ndarray  # (N, S, S) float32 thoracic crops in [0, 1], as inference cuts them
    masks: np.ndarray  # (N, S, S) float32 soft activation masks (zero for clear films)
    lungs: np.ndarray  # (N, S, S) bool lung fields on the crop
    opaque: np.ndarray  # (N,) bool: an opaque film (a fake when de-opacified) or a clear one
    ids: np.ndarray  # (N,) str, "<dataset>/<id>"


def opaque_ids(data_root: Path, dataset: str, split: str = "train") -> list[str]:
    """A dataset's ``split`` films that carry disease: NIH's pneumonia films only (its split file also lists the
    no-finding films); V7 without the films that are also in GB (as the synthesis domains count them)."""
    import csv

    ids = (Path(__file__).parent / "splits" / f"{dataset}_{split}.txt").read_text().split()
    with open(data_root / dataset / "index.csv") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    if dataset == NIH:
        return [i for i in ids if rows[i]["group"] == "pneumonia"]
    return [i for i in ids if not rows[i].get("also_in_covid_cxr_gb_seg")]


def prepare_region_films(data_root: Path, opaque_datasets: list[str], clear: dict[str, np.ndarray],
                         remover_model: str = "cxr_opacity_removal") -> RegionFilms:
    """Opaque training films of ``opaque_datasets`` as the remover sees them (crop and activation mask), and the
    clear training crops of ``clear`` (the healthy domain of a ``training/synthesis_data.py`` cache) resized to
    the remover's crop size."""
    from lungx_core.cxr.thoracic import resize
    from lungx_core.tasks.cxr_segmentation import lung_segmenter
    from lungx_core.tasks.opacity_removal import OpacityRemover
    from training.probe_guidance import opaque_training_crops

    remover = OpacityRemover(remover_model, "cpu")
    segmenter = lung_segmenter("cpu", "torch")  # the caches as built
    size = remover.spec.size
    rows: dict[str, list] = {k: [] for k in RegionFilms.__dataclass_fields__}

    def add(crop, mask, lung, opaque, name):
        for key, value in (("crops", crop), ("masks", mask), ("lungs", lung), ("opaque", opaque), ("ids", name)):
            rows[key].append(value)

    for dataset in opaque_datasets:
        ids = opaque_ids(data_root, dataset)
        for film_id, _, _, crop, mask in opaque_training_crops(data_root, dataset, remover, segmenter, ids=ids):
            add(crop.image, mask, crop.lung, True, f"{dataset}/{film_id}")
        print(f"{dataset}: {sum(rows['opaque'])} opaque films so far", flush=True)
    pick = np.nonzero((clear["domain"] == "healthy") & (clear["split"] == "train"))[0]
    for i in pick:
        add(resize(clear["images"][i].astype(np.float32), (size, size)), np.zeros((size, size), np.float32),
            resize(clear["lungs"][i], (size, size), mask=True), False, f"{clear['dataset'][i]}/{clear['ids'][i]}")
    print(f"{len(pick)} clear films", flush=True)
    return RegionFilms(**{k: np.asarray(v, dtype=np.float32 if k in ("crops", "masks") else None)
                          for k, v in rows.items()})


def partners(films: RegionFilms, min_cover: float = 0.9, max_overlap: float = 0.05, grid: int = 32,
             fallback: int = 5) -> list[np.ndarray]:
    """For each opaque film i, the partners whose clear lung shows its region (activation mask > 0.5): rows of
    (film j, flipped 0/1) where j's lung field (mirrored when flipped) covers at least ``min_cover`` of the region
    and, for an opaque j, j's own activation mask takes at most ``max_overlap`` of it. Computed on a ``grid``-px
    copy of the masks. A film with no such partner gets the ``fallback`` clear films that cover most of it."""

    def small(a):
        return F.adaptive_avg_pool2d(torch.from_numpy(np.asarray(a, np.float32))[:, None], grid)[:, 0].numpy()

    region = small(films.masks > 0.5)
    lung = small(films.lungs)
    busy = small(films.masks > 0.1)
    out, n = [], len(films.ids)
    for i in np.nonzero(films.opaque)[0]:
        r = region[i]
        total = max(float(r.sum()), 1e-6)
        rows, best = [], [None, None]
        for flip in (0, 1):
            lungs = lung[:, :, ::-1] if flip else lung
            taken = busy[:, :, ::-1] if flip else busy
            cover = (np.minimum(lungs, r)).sum((1, 2)) / total
            overlap = (np.minimum(taken, r)).sum((1, 2)) / total
            ok = (cover >= min_cover) & (overlap <= max_overlap)
            ok[i] = False
            rows += [(j, flip) for j in np.nonzero(ok)[0]]
            best[flip] = np.where(films.opaque, -1.0, cover)
        if not rows:  # a region no film shows clear at min_cover (a white-out): the clear films that show most of it
            flat = np.concatenate(best)
            rows = [(int(f) % n, int(f) // n) for f in np.argsort(flat)[::-1][:fallback] if flat[f] >= 0]
        out.append(np.array(rows, dtype=int).reshape(-1, 2))
    return out


class RegionDiscriminator(torch.nn.Module):
    """A patch discriminator (spectral-normalised, LSGAN) on a crop seen only through a region: input the crop
    times the soft region and the region itself; output one logit per 8x8 px."""

    def __init__(self, width: int = 32):
        super().__init__()
        sn = torch.nn.utils.parametrizations.spectral_norm
        layers, c = [], 2
        for w in (width, 2 * width, 4 * width):
            layers += [sn(torch.nn.Conv2d(c, w, 4, stride=2, padding=1)), torch.nn.LeakyReLU(0.2)]
            c = w
        layers.append(sn(torch.nn.Conv2d(c, 1, 3, padding=1)))
        self.net = torch.nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image * region, region], dim=1))


def region_weights(region: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The share of each logit's patch inside the region, normalised to sum 1 per crop."""
    w = F.adaptive_avg_pool2d(region, logits.shape[-2:])
    return w / w.sum((1, 2, 3), keepdim=True).clamp(min=1e-6)


def lsgan(logits: torch.Tensor, target: float, weights: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN loss, each crop's patches weighted by ``weights``, mean over the batch."""
    return (((logits - target) ** 2) * weights).sum((1, 2, 3)).mean()


def real_regions(films: RegionFilms, fakes: np.ndarray, pairs: list[np.ndarray], rng: np.random.Generator
                 ) -> torch.Tensor:
    """(B, 1, S, S) partner crops for the opaque films ``fakes`` (indices into ``pairs``' order): one partner
    drawn per film, mirrored when so paired."""
    out = []
    for k in fakes:
        j, flip = pairs[k][int(rng.integers(len(pairs[k])))]
        crop = films.crops[j]
        out.append(crop[:, ::-1] if flip else crop)
    return torch.from_numpy(np.ascontiguousarray(np.stack(out)))[:, None]


def brightening(out: torch.Tensor, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean brightening (output above input) inside the mask: removal only ever takes density away."""
    return (F.relu(out - x) * mask).sum() / mask.sum().clamp(min=1)
