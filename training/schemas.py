"""One validated config type per training run: ``read_config`` refuses a JSON config whose keys are unknown or
missing (a misspelt ``"lr"`` must not fall back to a default) and names the file, the section and the key.

Sections that a library type already validates strictly (``preprocess``: ``PreprocessConfig``, ``translation``:
``TranslationConfig``, ``diffusion``: ``DiffusionSpec``, ``crop``: ``CropSpec``) are checked there; here they
are plain objects. The config itself stays the dict the scripts index, so a valid config trains exactly as
before.

Example::

    cfg = read_config(Path("training/configs/bone_cxr.json"), BoneRun)
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lungx_core.config import strict_config


@dataclass
class CXRSegmentationRun:
    """``train_cxr.py`` (cxr_unet*.json)."""

    name: str
    arch: str
    arch_options: dict
    preprocess: dict
    augment: dict
    loss: dict
    optimizer: str
    lr: float
    batch_size: int
    epochs: int
    seed: int
    weight_decay: float = 0.0
    init: str | None = None  # a shipped model to start from
    train_datasets: list | None = None  # train on these datasets only
    synthesis: dict | None = None  # swap in synthetic pathological films
    distractors: dict | None = None  # dark regions outside the lungs (training/distractors.py): {"p", "count"}
    lung_convention: str | None = None  # "retrocardiac": JSRT training lungs redrawn behind the heart
    pseudo_labels: dict | None = None  # {"model": ...}: NIH films labelled by that model where plausible


@dataclass
class ClavicleRun:
    """``train_clavicles.py`` (clavicles_cxr.json): the clavicle band network."""

    name: str
    arch: str
    arch_options: dict
    augment: dict  # rotate_deg, scale, gamma
    loss: dict
    lr: float
    batch_size: int
    epochs: int
    films_per_epoch: int  # bands drawn (with replacement) per epoch
    box_jitter: float  # the lung box's edges moved by up to this share of its height/width
    seed: int
    weight_decay: float = 0.0
    band_rows: list | None = None  # the band as fractions of the lung box (default cxr/clavicles.BAND_ROWS)
    band_cols: list | None = None
    band_shape: list | None = None  # (rows, cols) the network sees (default BAND_SHAPE)
    band_shift: float = 0.0  # the whole band moved up or down by up to this share of its height


@dataclass
class CTSegmentationRun:
    """``train_ct.py`` (ct_unet.json)."""

    name: str
    arch: str
    arch_options: dict
    augment: dict
    loss: dict
    lr: float
    batch_size: int
    epochs: int
    seed: int
    size: int
    weight_decay: float = 0.0
    init: str | None = None  # a shipped model to fine-tune


@dataclass
class GateRun:
    """``train_gate.py`` (gate.json)."""

    name: str
    arch: str
    arch_options: dict
    batch_size: int
    epochs: int
    frontal_weight: float
    lr: float
    seed: int
    threshold: float
    weight_decay: float


@dataclass
class LateralityRun:
    """``train_laterality.py`` (laterality.json)."""

    name: str
    arch: str
    arch_options: dict
    batch_size: int
    epochs: int
    lr: float
    seed: int
    weight_decay: float


@dataclass
class InpaintingRun:
    """``train_inpainting.py`` and ``export_inpainting.py`` (inpainting_cxr.json)."""

    name: str
    arch_options: dict
    batch_size: int
    crop: int
    diffusion: dict
    epochs: int
    lr: float
    outside_weight: float
    seed: int
    steps_per_epoch: int
    val_crops: int
    val_fraction: float
    weight_decay: float


@dataclass
class RibsRun:
    """``train_ribs.py`` (ribs_cxr.json)."""

    name: str
    arch: str
    arch_options: dict
    batch_size: int
    epochs: int
    lr: float
    seed: int
    size: int
    steps_per_epoch: int
    weight_decay: float


@dataclass
class BoneStage:
    """One stage of ``train_bone.py``: ``drr`` (CT-derived pairs) or ``des`` (real dual-energy pairs)."""

    lr: float
    epochs: int
    steps_per_epoch: int
    warmup: float
    des_fraction: float = 0.5  # des stage: share of each batch that is DES


@dataclass
class BoneNodules:
    """``nodules`` of a BoneRun: simulated soft-tissue nodules that never belong in the bone image
    (``training/nodule_sim.py``; ``train_bone.py`` module docstring)."""

    per_image: list  # [min, max] nodules per training image
    diameter_mm: list  # [min, max], log-uniform
    mm_per_px: float  # the 256-px training images' pixel size, about (a 360-mm film)
    delta_mu: list  # [min, max] attenuation above aerated lung, 1/mm (soft tissue -100..+100 HU: 0.015-0.019)
    disc_weight: float  # extra loss weight inside each nodule's disc
    invariance_fraction: float  # des/nodules stage: share of each batch that is a real normal film with nodules
    stages: list = field(default_factory=lambda: ["drr", "des"])  # the stages whose batches carry nodules


@dataclass
class BoneRun:
    """``train_bone.py`` and ``eval_bone_loo.py`` (bone_cxr.json)."""

    name: str
    arch: str
    arch_options: dict
    size: int
    weight_decay: float
    batch_size: int
    seed: int
    drr: BoneStage
    des: BoneStage
    flip_average: bool = False
    tta_sizes: list = field(default_factory=list)
    tta_shifts: list = field(default_factory=list)
    nodules: BoneNodules | None = None
    nodule_stage: BoneStage | None = None  # a third stage: fine-tune each des model to keep nodules


@dataclass
class NoduleRun:
    """``train_nodules.py`` (nodules_cxr*.json)."""

    name: str
    arch: str
    arch_options: dict
    init: str  # the shipped network whose matching weights start training
    size: int  # the whole film's square, px
    crop: int
    batch_size: int
    steps: int
    lr: float
    weight_decay: float
    seed: int
    mix: list  # sampling shares: JSRT nodule films, JSRT normals, NIH normals
    simulate: float  # probability that a training film gets 1-2 simulated nodules
    centred: float  # probability that a crop is centred (jittered) on a nodule
    diameter_px: list  # simulated diameters, [min, max] px at 512
    contrast: list  # simulated contrasts, [min, max] in film window units (log-uniform)
    sigma_fraction: float  # heatmap Gaussian sigma as a fraction of the diameter (at least 2 px)
    size_weight: float
    floor: float
    min_distance: int
    max_candidates: int
    checkpoint_every: int
    start_run: str | None = None  # a run folder whose fold_<k>/last.pt starts fold k (instead of ``init``)
    hard_negatives: float = 0.0  # share of crops centred on the starting model's false positives
    hard_floor: float = 0.1  # the least probability of a false positive mined as a hard negative
    scales: list = field(default_factory=lambda: [1.0])  # test-time input scales whose logits are averaged
    bone_channel: str | None = None  # a bone model (e.g. cxr_bone): its suppressed film as a second input
    bone_keep: list | None = None  # with bone_channel: [lo, hi] share of a simulated nodule it keeps
    bone_single_view: bool = False  # with bone_channel: the bone model reads the film once and mirrored


@dataclass
class ProbeGuidance:
    """``probe`` of a DeopacifierRun: real training films whose de-opacified version the lung probe must segment
    as their reference lung field (``training/probe_guidance.py``)."""

    model: str  # the probe, e.g. cxr_lung_probe
    datasets: list  # datasets with reference lung masks whose training split is used
    weight: float  # of the probe loss against the supervised loss
    batch_size: int


@dataclass
class AdversarialRefinement:
    """``adversarial`` of a DeopacifierRun: the unpaired, region-aware stage (``training/region_adversary.py``)."""

    datasets: list  # datasets whose opaque training films are de-opacified (NIH: its pneumonia films)
    weight: float  # of the generator's adversarial loss against the supervised loss
    brighten_weight: float  # of the penalty on brightening inside the mask
    batch_size: int  # opaque films per step
    d_lr: float  # the discriminator's learning rate (Adam, betas 0.5, 0.999)
    width: int  # the discriminator's first layer's channels
    min_cover: float  # the least share of a region a partner's clear lung must show


@dataclass
class DeopacifierRun:
    """``train_deopacifier.py`` (deopacifier_cxr.json)."""

    name: str
    arch_options: dict
    batch_size: int
    crop: dict
    epochs: int
    lesion_weight: float
    load_size: int
    lr: float
    seed: int
    ssim_weight: float
    steps: int
    activation: dict = field(default_factory=dict)
    real_gain: list = field(default_factory=lambda: [0.7, 1.5])  # [low, high]: opacity_pairs.REAL_GAIN by default
    gb_backgrounds: bool = False  # also draw lesions into the clear lung of the GB training films
    probe: ProbeGuidance | None = None  # a fine-tuning stage: also a loss through the lung probe on real films
    adversarial: AdversarialRefinement | None = None  # a fine-tuning stage: the region-aware adversarial loss


@dataclass
class OpacityRun:
    """``train_opacity.py`` (opacity_cxr.json)."""

    name: str
    arch_options: dict
    batch_size: int
    crop: dict
    epochs: int
    gamma: list  # [low, high] of the random gamma
    lambda_mil: float
    load_size: int
    lr: float
    mil_top: float
    seed: int
    size: int
    steps_per_epoch: int
    weight_decay: float


@dataclass
class PathologyRun:
    """``train_pathology.py`` (pathology_cxr*.json)."""

    name: str
    arch_options: dict
    batch_size: int
    crop: dict
    epochs: int
    gamma: list  # [low, high] of the random gamma
    load_size: int
    lr: float
    seed: int
    steps_per_epoch: int
    weight_decay: float
    style_augment: bool = False
    # weight of the confusion loss against the within-class source critics (SourceCritics); 0 = off
    domain_adversarial: float = 0.0
    # weight of the auxiliary opacity map (reference opacity masks), and the classifier layer it reads; 0 = off
    opacity_aux: float = 0.0
    opacity_tap: int = 2
    # chance that a training crop is histogram matched to a film of the other class (style.augment)
    histogram_p: float = 0.5
    clahe_p: float = 0.3  # chance of CLAHE (style.augment)


@dataclass
class PairedStart:
    """``warm_start`` of a TranslationRun: the paired pre-training on insertion pairs before the CycleGAN."""

    steps: int
    lr: float
    batch_size: int
    area: list  # [low, high] share of the lung field a drawn lesion covers
    log_every: int = 100


@dataclass
class TranslationRun:
    """``train_synthesis.py`` (synthesis_cxr_*.json, opacity_removal_cxr.json)."""

    name: str
    translation: dict
    load_size: int
    steps_per_epoch: int
    batch_size: int = 1
    crop: dict = field(default_factory=dict)
    encoder: dict | None = None  # opacity removal: the frozen encoder of the alignment loss
    region_aware: dict | None = None  # activation masks of B (and lesions of A) and in-mask losses
    warm_start: PairedStart | None = None  # lesion-guided synthesis: paired pre-training first


def validate(schema: type, values: Any, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` and the key when ``values`` does not fit ``schema``; sections typed
    with another schema dataclass are checked the same way."""
    strict_config(schema, values, where)
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        # a section typed ``Schema`` or ``Schema | None`` is checked against Schema when present
        section = [t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if dataclasses.is_dataclass(t)]
        if section and values.get(f.name) is not None:
            validate(section[0], values[f.name], f"{where} {f.name}")


def read_config(path: Path, schema: type) -> dict:
    """The JSON config at ``path`` as a dict, after checking it against ``schema``.

    Raises:
        ValueError: e.g. ``training/configs/bone_cxr.json: BoneRun des: unknown key 'epoch' (known: ...)``.
    """
    cfg = json.loads(Path(path).read_text())
    validate(schema, cfg, f"{path}: {schema.__name__}")
    return cfg
