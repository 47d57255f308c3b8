"""`CXRSuperResolutionModel`: the second stage that turns a 256 px radiograph into one of 512 or 768 px.

The UNet learned 256 px layouts (32x32 latents); on a larger latent canvas it tiles small lung fields. The second
stage keeps the 256 px image, so its layout, and adds the detail of a real high-resolution radiograph: bicubic
upsampling plus a learned residual (EDSR, Lim et al. 2017; one shared trunk with a sub-pixel head per scale as in
their multi-scale MDSR). The trunk runs at the input resolution, so a 768 px image costs about as much as two
256 px VAE decodes. Each head's last convolution starts at zero: an untrained model is exactly bicubic upsampling.

It works in pixel space on images in [-1, 1] and on any input size (fully convolutional), so it upscales real
radiographs as well as the pipeline's output (`cxr-diffusers upscale`). Trained by
`train_scripts/train_super_resolution.py` on real 512-768 px radiographs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput

from ..errors import CXRInputError


@dataclass
class CXRSuperResolutionOutput(BaseOutput):
    """
    Args:
        sample (`torch.Tensor` of shape `(batch, channels, height * scale, width * scale)`): the upscaled images,
            in [-1, 1] up to the residual's overshoot (clamp before display).
    """

    sample: torch.Tensor


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, residual_scaling: float):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.residual_scaling = residual_scaling

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.residual_scaling * self.conv2(F.silu(self.conv1(hidden_states)))


class _UpsampleHead(nn.Module):
    """Sub-pixel convolution (Shi et al. 2016) to `scale` x the size, then one convolution to image channels."""

    def __init__(self, channels: int, out_channels: int, scale: int):
        super().__init__()
        self.conv_expand = nn.Conv2d(channels, channels * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale)
        self.conv_out = nn.Conv2d(channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.silu(self.shuffle(self.conv_expand(hidden_states))))


class CXRSuperResolutionModel(ModelMixin, ConfigMixin):
    r"""
    Upscales grayscale images in [-1, 1] by one of `scale_factors`: bicubic upsampling + a learned residual.

    Args:
        in_channels (`int`, defaults to 1): image channels (in and out).
        block_out_channels (`int`, defaults to 48): width of the trunk.
        num_blocks (`int`, defaults to 8): residual blocks (two 3x3 convolutions each) at the input resolution.
        scale_factors (`tuple[int, ...]`, defaults to `(2, 3)`): the scales it has a head for (256 -> 512, 768 px).
        residual_scaling (`float`, defaults to 1.0): factor on each block's residual branch (EDSR uses 0.1 for wide
            trunks).
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        block_out_channels: int = 48,
        num_blocks: int = 8,
        scale_factors: tuple[int, ...] = (2, 3),
        residual_scaling: float = 1.0,
    ):
        super().__init__()
        scales = [int(s) for s in scale_factors]
        if not scales or any(s < 2 for s in scales) or len(set(scales)) != len(scales):
            raise CXRInputError(f"scale_factors must be distinct integers >= 2, got {tuple(scale_factors)}.")
        if num_blocks < 1 or block_out_channels < 1:
            raise CXRInputError("num_blocks and block_out_channels must be at least 1.")
        self.conv_in = nn.Conv2d(in_channels, block_out_channels, 3, padding=1)
        self.blocks = nn.ModuleList(_ResidualBlock(block_out_channels, residual_scaling) for _ in range(num_blocks))
        self.conv_trunk = nn.Conv2d(block_out_channels, block_out_channels, 3, padding=1)
        self.heads = nn.ModuleDict({str(s): _UpsampleHead(block_out_channels, in_channels, s) for s in scales})
        self.gradient_checkpointing = False

    @property
    def scale_factors(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.config.scale_factors)

    def check_scale(self, scale: int) -> int:
        """`scale` as an int, or a `CXRInputError` naming the scales this model has."""
        if isinstance(scale, bool) or not isinstance(scale, int) or scale not in self.scale_factors:
            supported = ", ".join(str(s) for s in self.scale_factors)
            raise CXRInputError(f"This super-resolution model upscales by {supported}, not {scale!r}.")
        return int(scale)

    def forward(self, sample: torch.Tensor, scale: int, return_dict: bool = True):
        """
        Args:
            sample (`torch.Tensor` of shape `(batch, in_channels, height, width)`): images in [-1, 1].
            scale (`int`): one of `scale_factors`.
            return_dict (`bool`, defaults to True): a `CXRSuperResolutionOutput` instead of a tuple.
        """
        scale = self.check_scale(scale)
        if sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            raise CXRInputError(
                f"Expected images of shape (batch, {self.config.in_channels}, height, width), got {tuple(sample.shape)}."
            )
        upsampled = F.interpolate(sample, scale_factor=scale, mode="bicubic", align_corners=False)
        hidden = self.conv_in(sample)
        trunk = hidden
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:  # training: recompute in the backward pass
                trunk = self._gradient_checkpointing_func(block, trunk)
            else:
                trunk = block(trunk)
        hidden = hidden + self.conv_trunk(trunk)
        output = upsampled + self.heads[str(scale)](hidden)
        if not return_dict:
            return (output,)
        return CXRSuperResolutionOutput(sample=output)
