"""Networks of the unpaired image-translation engine (CycleGAN family), used by synthesis (healthy -> pathological)
and opacity removal (opaque -> clear).

- :class:`ResnetGenerator`: the reference CycleGAN generator (Zhu et al. 2017): 7x7 stem, strided down-sampling,
  residual blocks, up-sampling, 7x7 head, tanh; instance norm and reflection padding throughout. Width, depth and
  block count are configurable so that it trains on 2 CPU cores (narrow, 128-256 px) or at reference size on a
  GPU (base 64, 9 blocks). MONAI has no such generator; everything around it is MONAI/torch.
- :func:`build_discriminator`: MONAI's ``PatchDiscriminator`` (the 70x70 PatchGAN with 3 layers) with instance norm.
- :class:`FrozenEncoder`: the first layers of a trained chest-radiograph classifier, frozen; its feature maps
  drive the cross-domain alignment loss of opacity removal.

Images are single-channel in [-1, 1].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class GeneratorConfig:
    channels: int = 1
    base: int = 32  # reference: 64
    n_down: int = 2
    n_blocks: int = 6  # reference: 9 at 256 px
    upsample: str = "transpose"  # or "resize" (nearest + conv: no checkerboard artefacts)
    residual: bool = False  # output = input + change: starts as the identity (opacity removal changes little)

    def as_dict(self) -> dict:
        return asdict(self)


class _ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3, bias=False),
            nn.InstanceNorm2d(width),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(width, width, 3, bias=False),
            nn.InstanceNorm2d(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    def __init__(self, config: GeneratorConfig = GeneratorConfig()):
        super().__init__()
        self.config = config
        c, w = config.channels, config.base
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(c, w, 7, bias=False),
            nn.InstanceNorm2d(w),
            nn.ReLU(inplace=True),
        ]
        for i in range(config.n_down):
            a, b = w * 2**i, w * 2 ** (i + 1)
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1, bias=False), nn.InstanceNorm2d(b), nn.ReLU(True)]
        width = w * 2**config.n_down
        layers += [_ResidualBlock(width) for _ in range(config.n_blocks)]
        for i in reversed(range(config.n_down)):
            a, b = w * 2 ** (i + 1), w * 2**i
            if config.upsample == "resize":
                up = [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(a, b, 3, padding=1, bias=False)]
            else:
                up = [nn.ConvTranspose2d(a, b, 3, stride=2, padding=1, output_padding=1, bias=False)]
            layers += [*up, nn.InstanceNorm2d(b), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(w, c, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    @property
    def divisor(self) -> int:
        """Input sides must be multiples of this."""
        return 2**self.config.n_down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % self.divisor or x.shape[-2] % self.divisor:
            raise ValueError(f"input sides {tuple(x.shape[-2:])} must be multiples of {self.divisor}")
        if self.config.residual:
            return (x + self.model(x)).clamp(-1.0, 1.0)
        return self.model(x)


def build_discriminator(channels: int = 1, base: int = 32, n_layers: int = 3) -> nn.Module:
    """MONAI's PatchGAN; returns a module whose forward gives the patch logits only (not MONAI's feature list)."""
    from monai.networks.nets import PatchDiscriminator

    return _LastOutput(
        PatchDiscriminator(spatial_dims=2, channels=base, in_channels=channels, num_layers_d=n_layers,
                           norm="INSTANCE")
    )


class _LastOutput(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


def init_weights(net: nn.Module, gain: float = 0.02) -> nn.Module:
    """The reference initialisation: conv weights ~ N(0, gain), biases 0 (norms are affine-free)."""
    for m in net.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return net


class FrozenEncoder(nn.Module):
    """The first ``n_layers`` stages of a MONAI ``Classifier``/``Regressor`` (its ``net`` Sequential), frozen and in
    eval mode. Input in [-1, 1] (the generators' scale), mapped to the classifier's [0, 1]; returns every stage's
    feature map. Gradients flow to the input, never to the weights."""

    def __init__(self, classifier: nn.Module, n_layers: int = 2):
        super().__init__()
        self.stages = nn.ModuleList(list(classifier.net.children())[:n_layers])
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> FrozenEncoder:
        return super().train(False)  # stays in eval mode (dropout/norm statistics frozen)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x + 1) / 2
        out = []
        for stage in self.stages:
            x = stage(x)
            out.append(x)
        return out
