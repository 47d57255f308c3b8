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
    """

    @register_to_config
    def __init__(self, in_channels: int = 1, base_channels: int = 32, num_layers: int = 3):
        super().__init__()
        if num_layers < 1:
            raise CXRInputError(f"num_layers must be at least 1, got {num_layers}.")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1),
                                   nn.LeakyReLU(0.2, inplace=True)]
        channels = base_channels
        for index in range(1, num_layers + 1):
            out = base_channels * min(2**index, 8)
            stride = 2 if index < num_layers else 1
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.LeakyReLU(0.2, inplace=True)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.layers = nn.Sequential(*layers)
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
