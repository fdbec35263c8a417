"""The unpaired-translation engine: CycleGAN training with an optional shape-aware term.

Domain A is the one whose masks we know (healthy films for synthesis), domain B the other (pathological).
One :class:`CycleGANTrainer` holds two generators, two PatchGAN discriminators, their Adam optimisers, linear
learning-rate decay and the image pools of the reference CycleGAN (Zhu et al. 2017; defaults in
../shared/docs/TARGETS.md). ``lambda_surround > 0`` adds the shape-aware L1 between a healthy image and its
translation outside its lung mask (inside the thoracic crop); ``0`` is the plain CycleGAN used for comparison.

Region-aware translation (opacity removal, ARMUT-LOR style): given per-image masks ``mask_a``/``mask_b``, each
generator's output is composited as ``mask * G(x) + (1 - mask) * x`` before anything else sees it (the
discriminators, the cycle, the losses), so nothing outside the mask can change; ``lambda_align > 0`` adds the
cross-domain alignment of a frozen encoder's features (``losses.feature_alignment``) between each input and its
translation, weighted 1 outside the mask and ``align_inside`` inside; ``lambda_region > 0`` adds the
region-aware clearing term inside B's mask (``losses.region_clearing``: the translated region's mean brought
down to the same film's clear lung).

The whole state (networks, optimisers, schedulers, pools, random generators) goes in one checkpoint, so a
resumed run takes exactly the step an uninterrupted run would have taken.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from lungx_core.generative.opacity import composite
from lungx_core.models.translation import GeneratorConfig, ResnetGenerator, build_discriminator, init_weights
from training.losses import feature_alignment, masked_l1, region_clearing, surroundings_l1


@dataclass
class TranslationConfig:
    size: int = 128
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    disc_base: int = 32
    disc_layers: int = 3
    lr: float = 2e-4
    beta1: float = 0.5
    lambda_cycle: float = 10.0
    lambda_identity: float = 0.5  # times lambda_cycle, as in the reference
    lambda_surround: float = 0.0  # shape-aware term; 0 = plain CycleGAN
    lambda_align: float = 0.0  # cross-domain feature alignment (needs an encoder)
    align_inside: float = 0.1  # its weight inside the activation mask, relative to outside
    lambda_region: float = 0.0  # region-aware clearing inside B's mask (needs lung_b)
    disc_region: str = "image"  # "lung": the discriminators see the lung fields only (needs lung_a and lung_b)
    pool_size: int = 50
    epochs: int = 100  # constant learning rate ...
    decay_epochs: int = 100  # ... then linear decay to 0 over these
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> TranslationConfig:
        from lungx_core.config import strict_config

        d = dict(d)
        d["generator"] = strict_config(GeneratorConfig, d.get("generator", {}), "generator")
        config = strict_config(cls, d)
        if config.disc_region not in ("image", "lung"):
            raise ValueError(f"disc_region must be 'image' or 'lung', not {config.disc_region!r}")
        return config

    def as_dict(self) -> dict:
        return asdict(self)


class ImagePool:
    """The reference history buffer: the discriminator sees, half of the time, an older generated image, which
    damps oscillation. Its own random generator, so that it can be saved and restored."""

    def __init__(self, size: int, seed: int = 0):
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image[None]
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() < 0.5:
                k = self.rng.randrange(self.size)
                out.append(self.images[k].clone())
                self.images[k] = image.clone()
            else:
                out.append(image)
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"images": [i.cpu() for i in self.images], "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict, device) -> None:
        self.images = [i.to(device) for i in state["images"]]
        self.rng.setstate(state["rng"])


def linear_decay(epochs: int, decay_epochs: int):
    """LR factor per epoch: 1 for ``epochs``, then linearly down to 0 over ``decay_epochs``."""

    def factor(epoch: int) -> float:
        return 1.0 - max(0, epoch + 1 - epochs) / float(decay_epochs + 1)

    return factor


def _through(net: torch.nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The generator's output, composited into ``x`` by ``mask`` when one is given (region-aware translation)."""
    y = net(x)
    return y if mask is None else composite(x, y, mask)


def build_generators(config: TranslationConfig, device: torch.device) -> tuple[ResnetGenerator, ResnetGenerator]:
    """The A->B and B->A generators, seeded by ``config.seed``: the same start for both trainers below, so the
    paired pre-training's weights fit the CycleGAN's generators."""
    torch.manual_seed(config.seed)
    return tuple(init_weights(ResnetGenerator(config.generator)).to(device) for _ in range(2))


class CycleGANTrainer:
    def __init__(
        self, config: TranslationConfig, device: str | torch.device = "cpu", encoder: torch.nn.Module | None = None
    ):
        from monai.losses import PatchAdversarialLoss

        if config.lambda_align > 0 and encoder is None:
            raise ValueError("lambda_align > 0 needs a frozen encoder")
        self.config, self.device = config, torch.device(device)
        self.encoder = None if encoder is None else encoder.to(self.device)
        self.g_ab, self.g_ba = build_generators(config, self.device)
        c = config.generator.channels
        self.d_a = init_weights(build_discriminator(c, config.disc_base, config.disc_layers)).to(self.device)
        self.d_b = init_weights(build_discriminator(c, config.disc_base, config.disc_layers)).to(self.device)
        betas = (config.beta1, 0.999)
        self.opt_g = torch.optim.Adam([*self.g_ab.parameters(), *self.g_ba.parameters()], config.lr, betas=betas)
        self.opt_d = torch.optim.Adam([*self.d_a.parameters(), *self.d_b.parameters()], config.lr, betas=betas)
        decay = linear_decay(config.epochs, config.decay_epochs)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, decay)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, decay)
        self.pool_a = ImagePool(config.pool_size, config.seed)
        self.pool_b = ImagePool(config.pool_size, config.seed + 1)
        # LSGAN: mean squared error to 1 (real) / 0 (fake) on the raw patch outputs
        self.adversarial = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)
        self.epoch = 0
        self.steps = 0

    def _gan(self, logits: torch.Tensor, real: bool, for_discriminator: bool) -> torch.Tensor:
        return self.adversarial(logits, target_is_real=real, for_discriminator=for_discriminator)

    def step(
        self,
        real_a: torch.Tensor,
        real_b: torch.Tensor,
        lung_a: torch.Tensor | None = None,
        region_a: torch.Tensor | None = None,
        mask_a: torch.Tensor | None = None,
        mask_b: torch.Tensor | None = None,
        lung_b: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """One optimisation step on a batch of each domain (B, C, H, W) in [-1, 1]; ``lung_a``/``region_a``
        (B, 1, H, W) are needed when ``lambda_surround > 0``; ``mask_a``/``mask_b`` (B, 1, H, W in [0, 1]) make
        the translation of that domain's images region-aware. Returns the losses."""
        cfg = self.config
        real_a, real_b = real_a.to(self.device), real_b.to(self.device)
        mask_a = None if mask_a is None else mask_a.to(self.device)
        mask_b = None if mask_b is None else mask_b.to(self.device)

        def ab(x, mask):
            return _through(self.g_ab, x, mask)

        def ba(x, mask):
            return _through(self.g_ba, x, mask)

        lung_a_seen = lung_b_seen = None
        if cfg.disc_region == "lung":
            if lung_a is None or lung_b is None:
                raise ValueError("a lung-only discriminator needs lung_a and lung_b")
            lung_a_seen, lung_b_seen = lung_a.to(self.device), lung_b.to(self.device)

        def seen(x, lung):  # outside the lung fields: mid-grey, so no dataset style reaches the critic
            return x if lung is None else x * lung

        for d in (self.d_a, self.d_b):
            d.requires_grad_(False)
        fake_b, fake_a = ab(real_a, mask_a), ba(real_b, mask_b)
        # a translation keeps its source's lung fields: fake_b is seen through A's lungs, fake_a through B's
        loss_gan = (self._gan(self.d_b(seen(fake_b, lung_a_seen)), True, False)
                    + self._gan(self.d_a(seen(fake_a, lung_b_seen)), True, False))
        # the way back changes the same region the way there did
        loss_cycle = (ba(fake_b, mask_a) - real_a).abs().mean() + (ab(fake_a, mask_b) - real_b).abs().mean()
        loss_identity = torch.zeros((), device=self.device)
        if cfg.lambda_identity > 0:
            loss_identity = (self.g_ab(real_b) - real_b).abs().mean() + (self.g_ba(real_a) - real_a).abs().mean()
        loss_surround = torch.zeros((), device=self.device)
        if cfg.lambda_surround > 0:
            if lung_a is None:
                raise ValueError("the shape-aware term needs the domain-A lung masks")
            region = None if region_a is None else region_a.to(self.device)
            loss_surround = surroundings_l1(real_a, fake_b, lung_a.to(self.device), region)
        loss_align = torch.zeros((), device=self.device)
        if cfg.lambda_align > 0:
            for real, fake, mask in ((real_a, fake_b, mask_a), (real_b, fake_a, mask_b)):
                region = torch.zeros_like(real[:, :1]) if mask is None else mask
                loss_align = loss_align + feature_alignment(self.encoder(real), self.encoder(fake), region,
                                                            cfg.align_inside)
        loss_region = torch.zeros((), device=self.device)
        if cfg.lambda_region > 0:
            if mask_b is None or lung_a is None or lung_b is None:
                raise ValueError("the region-aware clearing term needs mask_b, lung_a and lung_b")
            lung_a_dev, lung_b = lung_a.to(self.device), lung_b.to(self.device)
            clear_mean = (real_a * lung_a_dev).sum() / lung_a_dev.sum().clamp_min(1.0)  # the clear domain's lung
            loss_region = region_clearing(fake_a, real_b, mask_b, lung_b, clear_mean.expand(real_b.shape[0]))
        loss_g = (
            loss_gan
            + cfg.lambda_cycle * loss_cycle
            + cfg.lambda_cycle * cfg.lambda_identity * loss_identity
            + cfg.lambda_surround * loss_surround
            + cfg.lambda_align * loss_align
            + cfg.lambda_region * loss_region
        )
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()

        for d in (self.d_a, self.d_b):
            d.requires_grad_(True)
        pooled_b = self.pool_b.query(seen(fake_b, lung_a_seen))
        pooled_a = self.pool_a.query(seen(fake_a, lung_b_seen))
        loss_d_b = 0.5 * (self._gan(self.d_b(seen(real_b, lung_b_seen)), True, True)
                          + self._gan(self.d_b(pooled_b), False, True))
        loss_d_a = 0.5 * (self._gan(self.d_a(seen(real_a, lung_a_seen)), True, True)
                          + self._gan(self.d_a(pooled_a), False, True))
        self.opt_d.zero_grad(set_to_none=True)
        (loss_d_a + loss_d_b).backward()
        self.opt_d.step()
        self.steps += 1
        losses = {"g_gan": loss_gan, "cycle": loss_cycle, "identity": loss_identity, "surround": loss_surround,
                  "align": loss_align, "region": loss_region, "d_a": loss_d_a, "d_b": loss_d_b}
        return {k: float(v.detach()) for k, v in losses.items()}

    def warm_start(self, generators: dict[str, dict]) -> None:
        """Start from pre-trained generators (``{"g_ab": state_dict, "g_ba": state_dict}``, e.g. the paired
        pre-training's ``paired.pt``) instead of random ones; discriminators and optimisers start fresh."""
        for name in ("g_ab", "g_ba"):
            getattr(self, name).load_state_dict(generators[name])

    def end_epoch(self) -> None:
        self.sched_g.step()
        self.sched_d.step()
        self.epoch += 1

    @torch.inference_mode()
    def translate(self, images: torch.Tensor, direction: str = "ab", mask: torch.Tensor | None = None) -> torch.Tensor:
        net = self.g_ab if direction == "ab" else self.g_ba
        net.eval()
        try:
            return _through(net, images.to(self.device), None if mask is None else mask.to(self.device)).cpu()
        finally:
            net.train()

    def state_dict(self) -> dict:
        return {
            "config": self.config.as_dict(),
            "nets": {k: getattr(self, k).state_dict() for k in ("g_ab", "g_ba", "d_a", "d_b")},
            "optim": {k: getattr(self, k).state_dict() for k in ("opt_g", "opt_d", "sched_g", "sched_d")},
            "pools": {"a": self.pool_a.state_dict(), "b": self.pool_b.state_dict()},
            "epoch": self.epoch,
            "steps": self.steps,
            "rng": {"torch": torch.get_rng_state(), "np": np.random.get_state(), "py": random.getstate()},
        }

    def load_state_dict(self, state: dict) -> None:
        for k, v in state["nets"].items():
            getattr(self, k).load_state_dict(v)
        for k, v in state["optim"].items():
            getattr(self, k).load_state_dict(v)
        self.pool_a.load_state_dict(state["pools"]["a"], self.device)
        self.pool_b.load_state_dict(state["pools"]["b"], self.device)
        self.epoch, self.steps = state["epoch"], state["steps"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["np"])
        random.setstate(state["rng"]["py"])


class PairedPretrainer:
    """The supervised start of lesion-guided synthesis (issue 18): on insertion pairs (a healthy crop, the same
    crop with a lesion of the lesion model drawn in, and that lesion's region), ``g_ab`` learns healthy -> with
    lesion and ``g_ba`` the way back, each composited through the region (as the CycleGAN will be), with L1 to
    the known other film inside it. Same generator architecture and initialisation as
    :class:`CycleGANTrainer`, so :meth:`CycleGANTrainer.warm_start` takes :meth:`generators` as they are.

    Example::

        pre = PairedPretrainer(config, lr=1e-3)
        losses = pre.step(clear, opaque, region)  # (B, 1, H, W) each; images in [-1, 1], region in [0, 1]
        trainer.warm_start(pre.generators())
    """

    def __init__(self, config: TranslationConfig, lr: float = 1e-3, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.g_ab, self.g_ba = build_generators(config, self.device)
        self.opt = torch.optim.Adam([*self.g_ab.parameters(), *self.g_ba.parameters()], lr,
                                    betas=(config.beta1, 0.999))
        self.steps = 0

    def step(self, clear: torch.Tensor, opaque: torch.Tensor, region: torch.Tensor) -> dict[str, float]:
        clear, opaque, region = clear.to(self.device), opaque.to(self.device), region.to(self.device)
        loss_ab = masked_l1(composite(clear, self.g_ab(clear), region), opaque, region)
        loss_ba = masked_l1(composite(opaque, self.g_ba(opaque), region), clear, region)
        self.opt.zero_grad(set_to_none=True)
        (loss_ab + loss_ba).backward()
        self.opt.step()
        self.steps += 1
        return {"paired_ab": float(loss_ab.detach()), "paired_ba": float(loss_ba.detach())}

    def generators(self) -> dict[str, dict]:
        return {"g_ab": self.g_ab.state_dict(), "g_ba": self.g_ba.state_dict()}

    def state_dict(self) -> dict:
        return {"nets": self.generators(), "opt": self.opt.state_dict(), "steps": self.steps,
                "rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict) -> None:
        for name, weights in state["nets"].items():
            getattr(self, name).load_state_dict(weights)
        self.opt.load_state_dict(state["opt"])
        self.steps = state["steps"]
        torch.set_rng_state(state["rng"])


def sample_grid(
    trainer: CycleGANTrainer,
    real_a: torch.Tensor,
    real_b: torch.Tensor,
    mask_a: torch.Tensor | None = None,
    mask_b: torch.Tensor | None = None,
) -> np.ndarray:
    """uint8 picture for the training log: rows of (A, A->B, A->B->A) and (B, B->A, B->A->B). With masks, two more
    columns: the mask and the change (|translation - input|, x4), which shows whether anything moved outside
    the mask, i.e. whether the generator learnt a dataset's style rather than the pathology."""
    if (mask_a is None) != (mask_b is None):  # both rows need the same columns
        mask_a = torch.ones_like(real_a) if mask_a is None else mask_a
        mask_b = torch.ones_like(real_b) if mask_b is None else mask_b
    fake_b = trainer.translate(real_a, "ab", mask_a)
    fake_a = trainer.translate(real_b, "ba", mask_b)
    rows = [
        [real_a.cpu(), fake_b, trainer.translate(fake_b, "ba", mask_a)],
        [real_b.cpu(), fake_a, trainer.translate(fake_a, "ab", mask_b)],
    ]
    for row, mask in zip(rows, (mask_a, mask_b), strict=True):
        if mask is not None:
            row += [mask.cpu() * 2 - 1, ((row[1] - row[0]).abs() * 4 - 1).clamp(-1, 1)]
    grid = torch.cat([torch.cat(list(torch.cat(r, dim=-1)), dim=-2) for r in rows], dim=-2)[0]  # channel 0
    return ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
