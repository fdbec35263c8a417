"""The lesion model: lung opacities (ground glass, consolidation) drawn inside the lung field of a chest film.

One model serves both directions of the opacity problem: ``lungx synthesize --method insert`` puts lesions into
a healthy film, and the de-opacifier of ``lungx remove-opacity`` is trained on the exact (opaque, clear, mask)
triples it makes (``training/opacity_pairs.py``).

A lesion is a soft weight map ``alpha`` in [0, 1), zero outside the lung field. A radiograph is (after the
reader's log/display mapping) roughly the sum of what the beam crossed, so an opacity adds density: the film
moves towards the soft-tissue level ``S`` of its own mediastinum and chest wall,

    out = x + alpha * (S - B) - damp * alpha * (x - B)

with ``B`` the film's local (blurred) background. Ground glass keeps the vessels (``damp`` 0, low gain);
consolidation hides them (``damp`` > 0, high gain) while ribs, wider than the blur, stay visible, as on real
films. Shapes are smooth random fields thresholded to the requested share of the lung (with a lower-zone and
peripheral prior, as COVID-19 and most pneumonias show), optionally with Bezier brush strokes, feathered.

Gains, areas and zone priors are *measured* from real radiologist opacity masks: ``weights/cxr_lesions.json``
is fitted by ``training/fit_lesion_model.py`` on the covid_cxr_gb_seg training films (statistics only: no
pixels or masks of those films ship). Pure functions on arrays; everything is reproducible under a seed.

Example::

    from lungx_core.generative.lesions import LesionRequest, insert_lesions
    result = insert_lesions(film, lung, LesionRequest(area=0.3, side="both", kind="mixed"), seed=0)
    result.array   # the film with lesions; identical to ``film`` wherever ``result.support`` is False
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

KINDS = ("ggo", "consolidation", "mixed", "whiteout")
# white-out: dense consolidation of the lower and outer lung that runs up to the lung's own border, so the border
# against the diaphragm and the chest wall vanishes (what defeats a lung model trained on healthy films)
WHITEOUT_AREA = (0.25, 0.7)  # share of the chosen side's lung field when no area is asked for
WHITEOUT_GAIN = (0.85, 1.0)  # how far towards soft tissue: from almost to fully opaque
WHITEOUT_DAMP = 0.9  # vessels hidden
SIDES = ("any", "both", "left", "right")  # the patient's sides
MODEL_FILE = Path(__file__).parents[1] / "weights" / "cxr_lesions.json"
WORK_SIZE = 256  # shapes are drawn on a grid of about this many pixels across, then enlarged: resolution-free


@dataclass(frozen=True)
class LesionModel:
    """Statistics of real opacities (fractions of the film's soft-tissue minus lung contrast, shares of the lung
    field); defaults are those fitted and shipped in ``weights/cxr_lesions.json``."""

    gain_ggo: tuple[float, float] = (0.15, 0.4)  # mean opacity lift of ground glass (10th, 90th percentile)
    gain_consolidation: tuple[float, float] = (0.35, 0.75)
    area: tuple[float, float] = (0.05, 0.6)  # share of the lung field a drawn ``area`` comes from
    lower_zone: float = 1.0  # score added from apex (0) to base (this): lesions favour the lower zones
    peripheral: float = 0.6  # score added from the mediastinal side (0) to the chest wall (this)
    bilateral: float = 0.7  # chance that ``side='any'`` gives both lungs
    damp_consolidation: float = 0.7  # how much of the fine lung detail (vessels) consolidation hides
    source: str = "defaults"  # what the numbers were measured on

    @classmethod
    def from_dict(cls, d: dict) -> LesionModel:
        from lungx_core.config import strict_config

        values = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return strict_config(cls, values, "lesion model")

    def as_dict(self) -> dict:
        return asdict(self)


@lru_cache(maxsize=1)
def shipped_model() -> LesionModel:
    """The lesion model fitted on real opacity masks (``weights/cxr_lesions.json``)."""
    return LesionModel.from_dict(json.loads(MODEL_FILE.read_text())["model"])


@dataclass(frozen=True)
class LesionRequest:
    """What to insert. ``area``: share of the lung field covered (0-1), None draws it from the model; ``side``:
    the patient's ``left``, ``right``, ``both``, or ``any`` (drawn); ``kind``: ``ggo``, ``consolidation`` or
    ``mixed`` (consolidated cores in ground glass) or ``whiteout`` (near-opaque consolidation of the lower and
    outer zones reaching the lung border, which then vanishes); ``strokes``: chance of adding Bezier brush
    strokes."""

    area: float | None = None
    side: str = "any"
    kind: str = "mixed"
    strokes: float = 0.3

    def __post_init__(self) -> None:
        if self.area is not None and not 0.0 < self.area <= 0.9:
            raise ValueError(f"area must be a share of the lung field in (0, 0.9], not {self.area}")
        if self.side not in SIDES:
            raise ValueError(f"side must be one of {', '.join(SIDES)}, not {self.side!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {self.kind!r}")


@dataclass
class Lesion:
    """A planned lesion on the film's grid."""

    alpha: np.ndarray  # float32 in [0, 1): how far each pixel moves towards soft tissue; 0 outside the lung
    damp: np.ndarray  # float32 in [0, 1]: share of the fine detail hidden (consolidation), 0 where alpha is 0
    hard: np.ndarray  # bool: the lesion itself (before feathering), what a mask of it would say
    sides: tuple[str, ...] = field(default=())  # the patient's sides it was drawn in
    # lift towards the tissue just outside the lung (diaphragm, chest wall) rather than the chest's median soft
    # tissue, so a lesion reaching the border takes the border's contrast away (the silhouette sign)
    local_level: bool = False

    @property
    def support(self) -> np.ndarray:
        """bool: the only pixels insertion may change."""
        return self.alpha > 0

    @property
    def region(self) -> np.ndarray:
        """float32 in [0, 1]: the lesion's feathered shape (alpha scaled to peak 1), the mask through which the
        lesion-guided CycleGAN's change is let in; 0 wherever insertion changes nothing."""
        peak = float(self.alpha.max()) if self.alpha.size else 0.0
        return (self.alpha / peak).astype(np.float32) if peak > 0 else np.zeros_like(self.alpha, np.float32)


@dataclass
class InsertionResult:
    array: np.ndarray  # the film with lesions: the input's shape and dtype
    lesion: Lesion

    @property
    def support(self) -> np.ndarray:
        return self.lesion.support


def split_lungs(lung: np.ndarray) -> dict[str, np.ndarray]:
    """A display-oriented two-lung mask -> {'right': ..., 'left': ...} (the patient's sides: the patient's right
    lung is on the viewer's left). The two largest components, or the mask cut at its middle column."""
    labels, n = ndi.label(lung)
    if n >= 2:
        sizes = np.bincount(labels.ravel())[1:]
        a, b = (np.argsort(sizes)[::-1][:2] + 1).tolist()
        ca, cb = (ndi.center_of_mass(labels == k)[1] for k in (a, b))
        if sizes[b - 1] > 0.1 * sizes[a - 1]:
            first, second = (a, b) if ca < cb else (b, a)
            return {"right": labels == first, "left": labels == second}
    cols = np.nonzero(lung.any(axis=0))[0]
    middle = (cols[0] + cols[-1] + 1) // 2 if cols.size else lung.shape[1] // 2
    right, left = lung.copy(), lung.copy()
    right[:, middle:] = False
    left[:, :middle] = False
    return {"right": right, "left": left}


def _zone_prior(side_mask: np.ndarray, side: str, model: LesionModel) -> np.ndarray:
    """Score added to the random field: rising towards the base and towards the chest wall of this lung."""
    rows = np.nonzero(side_mask.any(axis=1))[0]
    cols = np.nonzero(side_mask.any(axis=0))[0]
    if rows.size == 0:
        return np.zeros(side_mask.shape, np.float32)
    r = np.clip((np.arange(side_mask.shape[0]) - rows[0]) / max(1, rows[-1] - rows[0]), 0, 1)
    c = np.clip((np.arange(side_mask.shape[1]) - cols[0]) / max(1, cols[-1] - cols[0]), 0, 1)
    outward = 1 - c if side == "right" else c  # the chest wall is on the viewer's outer side of each lung
    return (model.lower_zone * r[:, None] + model.peripheral * outward[None, :]).astype(np.float32)


def _smooth_field(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    f = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (f - f.mean()) / (f.std() + 1e-6)


def _bezier_strokes(region: np.ndarray, rng: np.random.Generator, width: float) -> np.ndarray:
    """1-3 quadratic Bezier brush strokes with end and control points inside ``region``."""
    points = np.argwhere(region)
    out = np.zeros(region.shape, bool)
    if len(points) < 3:
        return out
    t = np.linspace(0, 1, 400)[:, None]  # dense enough for a solid stroke
    for _ in range(int(rng.integers(1, 4))):
        p0, p1, p2 = points[rng.integers(0, len(points), 3)].astype(np.float32)
        curve = ((1 - t) ** 2 * p0 + 2 * (1 - t) * t * p1 + t**2 * p2).round().astype(int)
        out[curve[:, 0], curve[:, 1]] = True
    return ndi.binary_dilation(out, iterations=max(1, int(round(width)))) & region


def _enlarge(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    zoom = (shape[0] / array.shape[0], shape[1] / array.shape[1])
    out = ndi.zoom(array.astype(np.float32), zoom, order=1, grid_mode=True, mode="nearest")
    return out[: shape[0], : shape[1]]


def plan_lesion(
    lung: np.ndarray,
    request: LesionRequest = LesionRequest(),
    seed: int | np.random.Generator | None = None,
    model: LesionModel | None = None,
) -> Lesion:
    """Draw a lesion inside the lung field ``lung`` (bool, display orientation, any size) -> :class:`Lesion` on
    the same grid. The covered share of the lung field is ``request.area`` (within a few per cent; capped by
    what the chosen side can hold)."""
    model = model or shipped_model()
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    lung = np.asarray(lung, bool)
    if not lung.any():
        raise ValueError("the lung mask is empty: lesions go inside the lung field")
    step = max(1, int(np.ceil(max(lung.shape) / WORK_SIZE)))
    small = lung[::step, ::step]
    small_shape = small.shape
    sides_all = split_lungs(small)
    if request.side == "any":
        sides = ("right", "left") if rng.random() < model.bilateral else (("right", "left")[int(rng.integers(2))],)
    elif request.side == "both":
        sides = ("right", "left")
    else:
        sides = (request.side,)
    height = np.ptp(np.nonzero(small.any(axis=1))[0]) + 1
    region = np.zeros(small_shape, bool)
    score = np.full(small_shape, -np.inf, np.float32)
    field = _smooth_field(small_shape, float(rng.uniform(0.05, 0.1)) * height, rng)
    whiteout = request.kind == "whiteout"
    for side in sides:
        # other kinds keep a rim of aerated lung; a white-out runs into the border (and the border's own lung)
        inner = sides_all[side] if whiteout else ndi.binary_erosion(sides_all[side],
                                                                    iterations=max(1, int(0.015 * height)))
        inner = inner if inner.any() else sides_all[side]
        region |= inner
        prior = _zone_prior(sides_all[side], side, model) * (3.0 if whiteout else 1.0)  # basal and lateral
        score = np.where(inner, field + prior, score)
    if request.area is not None:
        area = request.area
    elif whiteout:  # of the sides drawn, not of the whole field
        area = float(rng.uniform(*WHITEOUT_AREA)) * region.sum() / max(small.sum(), 1)
    else:
        area = float(rng.uniform(*model.area))
    target = min(area * small.sum(), 0.95 * region.sum())
    strokes = np.zeros(small_shape, bool)
    if rng.random() < request.strokes:
        strokes = _bezier_strokes(region, rng, float(rng.uniform(0.02, 0.05)) * height)
    values = np.sort(score[region])[::-1]
    count = max(1.0, target - strokes.sum())
    for _ in range(6):  # closing and hole filling grow the shape: aim lower until the area fits
        cut = values[max(0, min(len(values) - 1, int(count) - 1))]
        hard = ((score >= cut) & region) | strokes
        hard = ndi.binary_fill_holes(ndi.binary_closing(hard, iterations=max(1, int(0.02 * height)))) & region
        if hard.sum() <= 1.1 * target or count <= 1:
            break
        count = max(1.0, count * target / hard.sum())
    labels, n = ndi.label(hard)
    if n > 1:  # specks are no lesion
        sizes = np.bincount(labels.ravel())[1:]
        hard = np.isin(labels, np.nonzero(sizes >= 0.002 * small.sum())[0] + 1) | (labels == np.argmax(sizes) + 1)

    gain = np.zeros(small_shape, np.float32)
    damp = np.zeros(small_shape, np.float32)
    texture = _smooth_field(small_shape, max(1.0, 0.02 * height), rng)
    ggo = rng.uniform(*model.gain_ggo)
    cons = rng.uniform(*model.gain_consolidation)
    if whiteout:
        gain[:], damp[:] = rng.uniform(*WHITEOUT_GAIN), WHITEOUT_DAMP
    elif request.kind == "ggo":
        gain[:] = ggo
    elif request.kind == "consolidation":
        gain[:], damp[:] = cons, model.damp_consolidation
    else:  # consolidated cores where the shape field is strongest, ground glass around them
        core = ndi.gaussian_filter(hard.astype(np.float32), 0.04 * height)
        core = np.clip((core - 0.55) / 0.3, 0, 1)
        gain = (ggo + (cons - ggo) * core).astype(np.float32)
        damp = (model.damp_consolidation * core).astype(np.float32)
    gain *= np.clip(1 + 0.15 * texture, 0.6, 1.4)  # mottled, not a flat wash
    if whiteout:  # no fading margin where the lesion meets the lung's border: extend it past the border first
        hard_out = hard | (ndi.binary_dilation(hard, iterations=max(1, int(0.05 * height))) & ~small)
        soft = ndi.gaussian_filter(hard_out.astype(np.float32), max(0.8, 0.025 * height))
    else:
        soft = ndi.gaussian_filter(hard.astype(np.float32), max(0.8, 0.025 * height))  # fuzzy margins
    alpha_small = np.clip(soft * gain, 0, 1.0 if whiteout else 0.95)

    alpha = _enlarge(alpha_small, lung.shape) * lung  # nothing outside the lung field, at full resolution
    alpha[alpha < 1e-3] = 0.0
    damp_full = np.where(alpha > 0, _enlarge(damp, lung.shape), 0.0)
    hard_full = (_enlarge(hard.astype(np.float32), lung.shape) >= 0.5) & lung
    return Lesion(alpha.astype(np.float32), damp_full.astype(np.float32), hard_full, tuple(sides), whiteout)


def soft_tissue_level(image: np.ndarray, lung: np.ndarray) -> float:
    """Median intensity of the chest around the lungs (mediastinum, heart, diaphragm, chest wall): what a fully
    consolidated lung looks like on this film."""
    rows = np.nonzero(lung.any(axis=1))[0]
    cols = np.nonzero(lung.any(axis=0))[0]
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    around = ~lung[box]
    values = np.asarray(image, np.float32)[box][around]
    return float(np.median(values)) if values.size else float(np.percentile(image, 90))


def local_tissue_level(image: np.ndarray, lung: np.ndarray, sigma: float) -> np.ndarray:
    """Per pixel, the Gaussian-weighted mean (``sigma`` px) of the film outside the lung field: near the base the
    diaphragm's and abdomen's level, near the chest wall the wall's."""
    step = max(1, int(sigma // 8))  # a field this smooth is computed on a coarser grid, then enlarged
    outside = (~np.asarray(lung, bool)[::step, ::step]).astype(np.float32)
    weight = ndi.gaussian_filter(outside, sigma / step)
    level = ndi.gaussian_filter(np.asarray(image, np.float32)[::step, ::step] * outside, sigma / step)
    covered = weight > 1e-3
    level = level / np.maximum(weight, 1e-3)
    if not covered.all():  # far from any non-lung pixel: the chest's median soft tissue
        level[~covered] = soft_tissue_level(image, lung)
    return _enlarge(level, np.shape(image)) if step > 1 else level.astype(np.float32)


def apply_lesion(image: np.ndarray, lung: np.ndarray, lesion: Lesion) -> np.ndarray:
    """The film with ``lesion`` drawn in: the input's dtype; pixels where ``lesion.alpha`` is 0 are the input's,
    bit for bit."""
    from lungx_core.image import to_dtype

    x = np.asarray(image, np.float32)
    support = lesion.support
    if not support.any():
        return np.array(image, copy=True)
    height = np.ptp(np.nonzero(lung.any(axis=1))[0]) + 1
    background = ndi.gaussian_filter(x, 0.02 * height)
    level = local_tissue_level(x, lung, 0.08 * height) if lesion.local_level else soft_tissue_level(x, lung)
    lifted = x + lesion.alpha * (level - background) - lesion.damp * lesion.alpha * (x - background)
    out = np.array(image, copy=True)
    out[support] = to_dtype(lifted[support], image.dtype)
    return out


def insert_lesions(
    image: np.ndarray,
    lung: np.ndarray,
    request: LesionRequest = LesionRequest(),
    seed: int | np.random.Generator | None = None,
    model: LesionModel | None = None,
) -> InsertionResult:
    """Plan a lesion in ``lung`` and draw it into the display-oriented film ``image`` (same shape)."""
    if lung.shape != image.shape:
        raise ValueError(f"the lung mask is {lung.shape[1]}x{lung.shape[0]} pixels but the image is "
                         f"{image.shape[1]}x{image.shape[0]}")
    lesion = plan_lesion(lung, request, seed, model)
    return InsertionResult(apply_lesion(image, lung, lesion), lesion)
