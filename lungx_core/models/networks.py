"""Architectures, selected by name from a model config: MONAI segmentation networks and classifier, and the
translation generator of ``models/translation.py``.

Imported only when a model is built, so torch at module level costs nothing at CLI start-up.
"""

from __future__ import annotations

from typing import Any

import torch

ARCHITECTURES = (
    "unet", "attention_unet", "resnet_unet", "unetplusplus", "effnet_b4_unet", "classifier", "resnet_generator",
    "diffusion_unet",
)


def build_network(arch: str, in_channels: int, out_channels: int, **options: Any):
    """Build a 2-D network.

    - ``unet``: MONAI UNet with residual units (compact; the shipped CXR model).
    - ``attention_unet``: MONAI AttentionUnet (attention gates on the skips).
    - ``resnet_unet``: MONAI FlexibleUNet with a ResNet encoder (``backbone``, default resnet34).
    - ``unetplusplus``: MONAI BasicUNetPlusPlus (nested dense skips).
    - ``effnet_b4_unet``: FlexibleUNet with an EfficientNet-B4 encoder (GPU-sized; no pretrained weights
      are downloaded: everything we ship is trained by us).
    - ``classifier``: MONAI Classifier (strided residual convolutions, one logit per class) on square
      ``size``-pixel inputs.
    - ``diffusion_unet``: a diffusers ``UNet2DModel`` (timestep-conditioned; the inpainting denoiser of
      ``lungx_core/generative/inpainting.py``), ``options`` are its keyword arguments.
    - ``resnet_generator``: the CycleGAN generator (``models/translation.py``); ``out_channels`` must equal
      ``in_channels``.
    """
    if arch == "diffusion_unet":
        from diffusers import UNet2DModel

        return UNet2DModel(in_channels=in_channels, out_channels=out_channels, **options)
    from monai.networks import nets

    channels = tuple(options.get("channels", (16, 32, 64, 128, 256)))
    if arch == "unet":
        unet = nets.UNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=channels,
            strides=(2,) * (len(channels) - 1),
            num_res_units=int(options.get("num_res_units", 2)),
            dropout=float(options.get("dropout", 0.0)),
            norm=options.get("norm", "instance"),
        )
        return _ZeroStartOutput(unet) if options.get("zero_start") else unet
    if arch == "attention_unet":
        return nets.AttentionUnet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=channels,
            strides=(2,) * (len(channels) - 1),
        )
    if arch == "resnet_unet":
        return nets.FlexibleUNet(
            in_channels, out_channels, options.get("backbone", "resnet34"), pretrained=False, spatial_dims=2
        )
    if arch == "unetplusplus":
        features = tuple(options.get("features", (16, 32, 64, 128, 256, 16)))
        return _FirstOutput(nets.BasicUNetPlusPlus(2, in_channels, out_channels, features=features))
    if arch == "effnet_b4_unet":
        return nets.FlexibleUNet(in_channels, out_channels, "efficientnet-b4", pretrained=False, spatial_dims=2)
    if arch == "classifier":
        size = int(options["size"])
        return nets.Classifier(
            in_shape=(in_channels, size, size),
            classes=out_channels,
            channels=channels,
            strides=tuple(options.get("strides", (2,) * len(channels))),
            num_res_units=int(options.get("num_res_units", 2)),
            dropout=options.get("dropout"),
        )
    if arch == "resnet_generator":
        from lungx_core.models.translation import GeneratorConfig, ResnetGenerator

        if out_channels != in_channels:
            raise ValueError("a translation generator maps an image to an image of the same channels")
        return ResnetGenerator(GeneratorConfig(channels=in_channels, **options))
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


class _ZeroStartOutput(torch.nn.Module):
    """The network's output times a learned gain that starts at 0 (ReZero): a regression whose target is small
    (a bone image is a few per cent of the film's range) starts from "no change" instead of from the
    initialisation's noise, which a plain U-Net here never unlearned."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.gain = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.gain


class _FirstOutput(torch.nn.Module):
    """BasicUNetPlusPlus returns one map per depth (deep supervision); inference uses the first."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return out[0] if isinstance(out, (list, tuple)) else out
