"""The unpaired-translation engine: CycleGAN training with an optional shape-aware term.

Domain A is the one whose masks we know (healthy films for synthesis), domain B the other (pathological).
One :class:`CycleGANTrainer` holds two generators, two PatchGAN discriminators, their Adam optimisers, linear
learning-rate decay and the image pools of the reference CycleGAN (Zhu et al. 2017; defaults in
../shared/docs/TARGETS.md). ``lambda_surround > 0`` adds the shape-aware L1 between a healthy image and its
translation outside its lung mask (inside the thoracic crop); ``0`` is the plain CycleGAN used for comparison.

The whole state (networks, optimisers, schedulers, pools, random generators) goes in one checkpoint, so a
resumed run takes exactly the step an uninterrupted run would have taken.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from lungx_core.losses import surroundings_l1
from lungx_core.models.translation import GeneratorConfig, ResnetGenerator, build_discriminator, init_weights


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
    pool_size: int = 50
    epochs: int = 100  # constant learning rate ...
    decay_epochs: int = 100  # ... then linear decay to 0 over these
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> TranslationConfig:
        d = dict(d)
        d["generator"] = GeneratorConfig(**d.get("generator", {}))
        return cls(**d)

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


class CycleGANTrainer:
    def __init__(self, config: TranslationConfig, device: str | torch.device = "cpu"):
        from monai.losses import PatchAdversarialLoss

        self.config, self.device = config, torch.device(device)
        torch.manual_seed(config.seed)
        self.g_ab = init_weights(ResnetGenerator(config.generator)).to(self.device)
        self.g_ba = init_weights(ResnetGenerator(config.generator)).to(self.device)
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
    ) -> dict[str, float]:
        """One optimisation step on a batch of each domain (B, C, H, W) in [-1, 1]; ``lung_a``/``region_a``
        (B, 1, H, W) are needed when ``lambda_surround > 0``. Returns the losses."""
        cfg = self.config
        real_a, real_b = real_a.to(self.device), real_b.to(self.device)
        for d in (self.d_a, self.d_b):
            d.requires_grad_(False)
        fake_b, fake_a = self.g_ab(real_a), self.g_ba(real_b)
        loss_gan = self._gan(self.d_b(fake_b), True, False) + self._gan(self.d_a(fake_a), True, False)
        loss_cycle = (self.g_ba(fake_b) - real_a).abs().mean() + (self.g_ab(fake_a) - real_b).abs().mean()
        loss_identity = torch.zeros((), device=self.device)
        if cfg.lambda_identity > 0:
            loss_identity = (self.g_ab(real_b) - real_b).abs().mean() + (self.g_ba(real_a) - real_a).abs().mean()
        loss_surround = torch.zeros((), device=self.device)
        if cfg.lambda_surround > 0:
            if lung_a is None:
                raise ValueError("the shape-aware term needs the domain-A lung masks")
            region = None if region_a is None else region_a.to(self.device)
            loss_surround = surroundings_l1(real_a, fake_b, lung_a.to(self.device), region)
        loss_g = (
            loss_gan
            + cfg.lambda_cycle * loss_cycle
            + cfg.lambda_cycle * cfg.lambda_identity * loss_identity
            + cfg.lambda_surround * loss_surround
        )
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()

        for d in (self.d_a, self.d_b):
            d.requires_grad_(True)
        pooled_b, pooled_a = self.pool_b.query(fake_b), self.pool_a.query(fake_a)
        loss_d_b = 0.5 * (self._gan(self.d_b(real_b), True, True) + self._gan(self.d_b(pooled_b), False, True))
        loss_d_a = 0.5 * (self._gan(self.d_a(real_a), True, True) + self._gan(self.d_a(pooled_a), False, True))
        self.opt_d.zero_grad(set_to_none=True)
        (loss_d_a + loss_d_b).backward()
        self.opt_d.step()
        self.steps += 1
        losses = {"g_gan": loss_gan, "cycle": loss_cycle, "identity": loss_identity, "surround": loss_surround,
                  "d_a": loss_d_a, "d_b": loss_d_b}
        return {k: float(v.detach()) for k, v in losses.items()}

    def end_epoch(self) -> None:
        self.sched_g.step()
        self.sched_d.step()
        self.epoch += 1

    @torch.inference_mode()
    def translate(self, images: torch.Tensor, direction: str = "ab") -> torch.Tensor:
        net = self.g_ab if direction == "ab" else self.g_ba
        net.eval()
        try:
            return net(images.to(self.device)).cpu()
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


def sample_grid(trainer: CycleGANTrainer, real_a: torch.Tensor, real_b: torch.Tensor) -> np.ndarray:
    """uint8 picture for the training log: rows of (A, A->B, A->B->A) and (B, B->A, B->A->B)."""
    fake_b = trainer.translate(real_a, "ab")
    fake_a = trainer.translate(real_b, "ba")
    rows = [
        torch.cat([real_a.cpu(), fake_b, trainer.translate(fake_b, "ba")], dim=-1),
        torch.cat([real_b.cpu(), fake_a, trainer.translate(fake_a, "ab")], dim=-1),
    ]
    grid = torch.cat([torch.cat(list(r), dim=-2) for r in rows], dim=-2)[0]  # channel 0
    return ((grid.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
