"""`CXRPatchDiscriminator`: the PatchGAN that teaches the VAE decoder to draw sharp radiographs.

The adversarial part of the latent-diffusion autoencoder objective (Esser et al. 2021, "Taming transformers";
Rombach et al. 2022): a fully convolutional network that scores every ~70x70 patch of a grayscale image as real or
reconstructed (pix2pix's N-layer discriminator, Isola et al. 2017). It is only used in training (`train_vae.py`);
checkpoints store it in diffusers format beside the VAE so that resuming is exact.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config

from ..errors import CXRInputError


class CXRPatchDiscriminator(ModelMixin, ConfigMixin):
    r"""
    N-layer PatchGAN discriminator for grayscale images in [-1, 1].

    Args:
        in_channels (`int`, defaults to 1): image channels.
        base_channels (`int`, defaults to 32): channels of the first convolution; doubled per layer up to 8x.
        num_layers (`int`, defaults to 3): strided layers; 3 gives a 70x70 receptive field per output logit.
        norm (`str`, defaults to `"batch"`): `"batch"` (pix2pix / taming: BatchNorm after each inner convolution) or
            `"spectral"` (spectral normalisation of every convolution and no BatchNorm, Miyato et al. 2018: a
            Lipschitz-bounded critic whose scores do not depend on the other images of the batch).
    """

    @register_to_config
    def __init__(self, in_channels: int = 1, base_channels: int = 32, num_layers: int = 3, norm: str = "batch"):
        super().__init__()
        if num_layers < 1:
            raise CXRInputError(f"num_layers must be at least 1, got {num_layers}.")
        if norm not in ("batch", "spectral"):
            raise CXRInputError(f"norm must be 'batch' or 'spectral', got {norm!r}.")
        spectral = norm == "spectral"

        def conv(c_in: int, c_out: int, stride: int, bias: bool) -> nn.Module:
            layer = nn.Conv2d(c_in, c_out, 4, stride=stride, padding=1, bias=bias)
            return nn.utils.parametrizations.spectral_norm(layer) if spectral else layer

        layers: list[nn.Module] = [conv(in_channels, base_channels, 2, True), nn.LeakyReLU(0.2, inplace=True)]
        channels = base_channels
        for index in range(1, num_layers + 1):
            out = base_channels * min(2**index, 8)
            stride = 2 if index < num_layers else 1
            layers += [conv(channels, out, stride, spectral)]
            if not spectral:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            channels = out
        layers.append(conv(channels, 1, 1, True))
        self.layers = nn.Sequential(*layers)
        if not spectral:  # spectral normalisation fixes the scale itself; PyTorch's default init suits it
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # pix2pix / taming initialisation
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight, 0.0, 0.02)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Real-vs-fake logits `(B, 1, h, w)`, one per patch."""
        if images.ndim != 4 or images.shape[1] != self.config.in_channels:
            raise CXRInputError(
                f"Images must have shape (batch, {self.config.in_channels}, height, width), got {tuple(images.shape)}."
            )
        return self.layers(images)
