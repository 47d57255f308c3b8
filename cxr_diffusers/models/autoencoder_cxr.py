"""`CXRAutoencoderKL`: a one-channel KL autoencoder for chest radiographs.

The encoder and decoder are diffusers' own `Encoder` / `Decoder` (the blocks of `AutoencoderKL`); what is specific to
chest X-rays is the single grey channel, the 8x spatial downsampling to an 8-channel latent, and self-attention at
the two lowest resolutions (where the global layout of lungs, heart and mediastinum is decided).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput, DiagonalGaussianDistribution, Decoder, Encoder
from diffusers.models.modeling_outputs import AutoencoderKLOutput

from ..errors import CXRInputError


@dataclass
class CXRAutoencoderKLOutput(DecoderOutput):
    """
    Args:
        sample (`torch.Tensor` of shape `(B, 1, H, W)`): the reconstruction.
        latent_dist (`DiagonalGaussianDistribution`): the encoder's posterior that it was decoded from (what a
            training loop needs for the KL term; calling the model itself lets Accelerate's DDP and autocast apply).
    """

    latent_dist: DiagonalGaussianDistribution | None = None


class CXRAutoencoderKL(ModelMixin, ConfigMixin):
    r"""
    Variational autoencoder with a KL-regularised latent, for grayscale chest X-rays.

    Args:
        in_channels / out_channels (`int`, defaults to 1): image channels (grayscale).
        block_out_channels (`tuple[int]`): channels per resolution level; `len - 1` downsamplings (4 levels = 8x).
        layers_per_block (`int`): residual blocks per level in the encoder (the decoder has one more).
        decoder_layers_per_block (`int`, *optional*): the decoder's own `layers_per_block` (an asymmetric autoencoder
            with a stronger decoder); defaults to `layers_per_block`. See `with_deeper_decoder`.
        attention_levels (`int`, defaults to 2): self-attention in the lowest `attention_levels` resolution levels
            (plus the mid block).
        latent_channels (`int`, defaults to 8): channels of the latent.
        norm_num_groups (`int`): GroupNorm groups.
        sample_size (`int`): nominal image size the model was trained for (informational).
        scaling_factor (`float`): multiply latents by this before diffusion (`1 / std` of training latents, set by
            `train_vae.py`); divide by it before `decode`.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        block_out_channels: tuple[int, ...] = (32, 64, 128, 128),
        layers_per_block: int = 1,
        attention_levels: int = 2,
        latent_channels: int = 8,
        norm_num_groups: int = 32,
        sample_size: int = 256,
        scaling_factor: float = 1.0,
        decoder_layers_per_block: int | None = None,
    ):
        super().__init__()
        num_levels = len(block_out_channels)
        if decoder_layers_per_block is not None and decoder_layers_per_block < 1:
            raise CXRInputError(f"decoder_layers_per_block must be at least 1, got {decoder_layers_per_block}.")
        if not 0 <= attention_levels <= num_levels:
            raise CXRInputError(f"attention_levels must be between 0 and {num_levels}, got {attention_levels}.")
        down_block_types = tuple(
            "AttnDownEncoderBlock2D" if level >= num_levels - attention_levels else "DownEncoderBlock2D"
            for level in range(num_levels)
        )
        # The decoder walks the levels from lowest resolution to highest.
        up_block_types = tuple(
            "AttnUpDecoderBlock2D" if level < attention_levels else "UpDecoderBlock2D" for level in range(num_levels)
        )
        self.encoder = Encoder(
            in_channels=in_channels,
            out_channels=latent_channels,
            down_block_types=down_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            double_z=True,
        )
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=decoder_layers_per_block or layers_per_block,
            norm_num_groups=norm_num_groups,
        )
        self.quant_conv = nn.Conv2d(2 * latent_channels, 2 * latent_channels, 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def with_deeper_decoder(self, decoder_layers_per_block: int) -> "CXRAutoencoderKL":
        """
        A copy of this autoencoder whose decoder has `decoder_layers_per_block` residual blocks per level (more than
        now), computing exactly the same function: every weight is copied and each added residual block (and its
        self-attention, where the level has one) starts as the identity, its last projection set to zero. Fine-tune
        the decoder from there (`train_vae.py --train_decoder_only --decoder_layers_per_block N`); the encoder and
        so the latent space, and any latent diffusion model trained on it, stay valid.
        """
        current = self.config.decoder_layers_per_block or self.config.layers_per_block
        if decoder_layers_per_block < current:
            raise CXRInputError(
                f"decoder_layers_per_block must be at least the current {current}, got {decoder_layers_per_block}."
            )
        # Built from the public keys only: from_config would let `_use_default_values` override the new value.
        config = {key: value for key, value in self.config.items() if not key.startswith("_")}
        deeper = CXRAutoencoderKL(**{**config, "decoder_layers_per_block": decoder_layers_per_block})
        for up_block in deeper.decoder.up_blocks:  # identity: zero the output projection of each added block
            for resnet in up_block.resnets[current + 1:]:
                resnet.conv2.weight.data.zero_()
                resnet.conv2.bias.data.zero_()
            for attention in (up_block.attentions[current + 1:] if hasattr(up_block, "attentions") else []):
                attention.to_out[0].weight.data.zero_()
                attention.to_out[0].bias.data.zero_()
        missing, unexpected = deeper.load_state_dict(self.state_dict(), strict=False)
        assert not unexpected and all(".up_blocks." in key for key in missing), (missing, unexpected)
        return deeper.to(self.device) if self.dtype == torch.float32 else deeper.to(self.device, self.dtype)

    def _check_input(self, x: torch.Tensor, channels: int, what: str, multiple: int) -> None:
        if x.ndim != 4 or x.shape[1] != channels:
            raise CXRInputError(
                f"{what} must have shape (batch, {channels}, height, width), got {tuple(x.shape)}."
            )
        if x.shape[-1] % multiple or x.shape[-2] % multiple:
            raise CXRInputError(
                f"{what} height and width must be multiples of {multiple}, got {x.shape[-2]}x{x.shape[-1]}."
            )

    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Encode images in [-1, 1] of shape (B, 1, H, W) into a `DiagonalGaussianDistribution` over latents."""
        self._check_input(x, self.config.in_channels, "Images", self.downsample_factor)
        moments = self.quant_conv(self.encoder(x))
        posterior = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Decode (unscaled) latents of shape (B, latent_channels, h, w) into images in about [-1, 1]."""
        self._check_input(z, self.config.latent_channels, "Latents", 1)
        decoded = self.decoder(self.post_quant_conv(z))
        if not return_dict:
            return (decoded,)
        return DecoderOutput(sample=decoded)

    def forward(
        self,
        sample: torch.Tensor,
        sample_posterior: bool = False,
        return_dict: bool = True,
        generator: torch.Generator | None = None,
    ) -> CXRAutoencoderKLOutput | tuple:
        """Reconstruct `sample` (posterior mode unless `sample_posterior`); the output also holds the posterior."""
        posterior = self.encode(sample).latent_dist
        z = posterior.sample(generator=generator) if sample_posterior else posterior.mode()
        decoded = self.decode(z).sample
        if not return_dict:
            return (decoded,)
        return CXRAutoencoderKLOutput(sample=decoded, latent_dist=posterior)
