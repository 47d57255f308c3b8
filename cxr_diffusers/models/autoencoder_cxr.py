"""`CXRAutoencoderKL`: a one-channel KL autoencoder for chest radiographs.

The encoder and decoder are diffusers' own `Encoder` / `Decoder` (the blocks of `AutoencoderKL`); what is specific to
chest X-rays is the single grey channel, the 8x spatial downsampling to an 8-channel latent, and self-attention at
the two lowest resolutions (where the global layout of lungs, heart and mediastinum is decided).

Like diffusers' `AutoencoderKL` it can encode and decode a batch one image at a time (`enable_slicing()`) and a
large image in overlapping tiles blended together (`enable_tiling()`), so that 512-1024 px images decode in bounded
memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import (
    AutoencoderMixin,
    DecoderOutput,
    DiagonalGaussianDistribution,
    Decoder,
    Encoder,
)
from diffusers.models.modeling_outputs import AutoencoderKLOutput
from diffusers.utils.accelerate_utils import apply_forward_hook

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


class CXRAutoencoderKL(ModelMixin, AutoencoderMixin, ConfigMixin):
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

    Attributes (not saved in the config, as in `AutoencoderKL`):
        use_slicing (`bool`): encode/decode a batch one image at a time (`enable_slicing()`).
        use_tiling (`bool`): encode/decode images larger than one tile in overlapping tiles (`enable_tiling()`).
        tile_sample_min_size (`int`): tile side in pixels (default `sample_size`).
        tile_latent_min_size (`int`): tile side in latent pixels (`tile_sample_min_size / downsample_factor`).
        tile_overlap_factor (`float`): fraction of a tile shared with its neighbour and blended linearly (0.25).
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

        self.use_slicing = False
        self.use_tiling = False
        self.tile_sample_min_size = sample_size
        self.tile_latent_min_size = sample_size // 2 ** (num_levels - 1)
        self.tile_overlap_factor = 0.25

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

    # ------------------------------------------------------------------ slicing and tiling
    def enable_tiling(self, tile_sample_min_size: int | None = None, tile_overlap_factor: float | None = None) -> None:
        """
        Encode and decode images larger than `tile_sample_min_size` pixels (default `sample_size`) in overlapping
        tiles blended linearly over `tile_overlap_factor` of a tile (default 0.25): memory then depends on the tile,
        not on the image. Each tile normalises and attends on its own, so the result is close to, not equal to, the
        untiled one.
        """
        if tile_sample_min_size is not None:
            if (isinstance(tile_sample_min_size, bool) or not isinstance(tile_sample_min_size, int)
                    or tile_sample_min_size <= 0 or tile_sample_min_size % self.downsample_factor):
                raise CXRInputError(
                    f"tile_sample_min_size must be a positive multiple of {self.downsample_factor}, "
                    f"got {tile_sample_min_size!r}."
                )
            self.tile_sample_min_size = tile_sample_min_size
            self.tile_latent_min_size = tile_sample_min_size // self.downsample_factor
        if tile_overlap_factor is not None:
            if not 0 <= tile_overlap_factor < 1:
                raise CXRInputError(f"tile_overlap_factor must be in [0, 1), got {tile_overlap_factor!r}.")
            self.tile_overlap_factor = float(tile_overlap_factor)
        self.use_tiling = True

    @staticmethod
    def _blend(previous: torch.Tensor, tile: torch.Tensor, extent: int, dim: int) -> torch.Tensor:
        """`tile` whose first `extent` rows (`dim=2`) or columns (`dim=3`) fade in linearly from `previous`'s last ones."""
        extent = min(previous.shape[dim], tile.shape[dim], extent)
        if extent <= 0:
            return tile
        ramp = torch.arange(extent, device=tile.device, dtype=tile.dtype) / extent
        ramp = ramp.view(-1, 1) if dim == 2 else ramp.view(1, -1)
        head = previous.narrow(dim, previous.shape[dim] - extent, extent) * (1 - ramp) + tile.narrow(dim, 0, extent) * ramp
        return torch.cat([head, tile.narrow(dim, extent, tile.shape[dim] - extent)], dim=dim)

    def _tiled(self, x: torch.Tensor, function, in_tile: int, out_tile: int) -> torch.Tensor:
        """
        Apply `function` to overlapping `in_tile`-sized tiles of `x`, blend each output tile with its upper and left
        neighbours over about `out_tile * overlap` pixels, and stitch the results. The stride is a whole number of
        latent pixels, so that input and output strides match for any overlap factor.
        """
        latent_stride = max(1, int(self.tile_latent_min_size * (1 - self.tile_overlap_factor)))
        stride = latent_stride * in_tile // self.tile_latent_min_size
        keep = latent_stride * out_tile // self.tile_latent_min_size
        extent = out_tile - keep
        rows = [
            [function(x[:, :, i : i + in_tile, j : j + in_tile]) for j in range(0, x.shape[3], stride)]
            for i in range(0, x.shape[2], stride)
        ]
        for i, row in enumerate(rows):  # neighbours are blended before the tiles after them, as in AutoencoderKL
            for j in range(len(row)):
                if i > 0:
                    row[j] = self._blend(rows[i - 1][j], row[j], extent, dim=2)
                if j > 0:
                    row[j] = self._blend(row[j - 1], row[j], extent, dim=3)
        return torch.cat([torch.cat([tile[:, :, :keep, :keep] for tile in row], dim=3) for row in rows], dim=2)

    def _moments(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior moments (mean and log-variance, `2 * latent_channels` channels) of images in [-1, 1]."""
        return self.quant_conv(self.encoder(x))

    def _pixels(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(x.shape[-2:]) > self.tile_sample_min_size:
            return self._tiled(x, self._moments, self.tile_sample_min_size, self.tile_latent_min_size)
        return self._moments(x)

    def tiled_encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Encode `x` in overlapping tiles (see `enable_tiling`), whatever its size."""
        self._check_input(x, self.config.in_channels, "Images", self.downsample_factor)
        moments = self._tiled(x, self._moments, self.tile_sample_min_size, self.tile_latent_min_size)
        posterior = DiagonalGaussianDistribution(moments)
        return AutoencoderKLOutput(latent_dist=posterior) if return_dict else (posterior,)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        if self.use_tiling and max(z.shape[-2:]) > self.tile_latent_min_size:
            return self._tiled(z, self._pixels, self.tile_latent_min_size, self.tile_sample_min_size)
        return self._pixels(z)

    def tiled_decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Decode `z` in overlapping tiles (see `enable_tiling`), whatever its size."""
        self._check_input(z, self.config.latent_channels, "Latents", 1)
        decoded = self._tiled(z, self._pixels, self.tile_latent_min_size, self.tile_sample_min_size)
        return DecoderOutput(sample=decoded) if return_dict else (decoded,)

    # ------------------------------------------------------------------ encode / decode
    @apply_forward_hook
    def encode(self, x: torch.Tensor, return_dict: bool = True) -> AutoencoderKLOutput | tuple:
        """Encode images in [-1, 1] of shape (B, 1, H, W) into a `DiagonalGaussianDistribution` over latents."""
        self._check_input(x, self.config.in_channels, "Images", self.downsample_factor)
        if self.use_slicing and x.shape[0] > 1:
            moments = torch.cat([self._encode(image) for image in x.split(1)])
        else:
            moments = self._encode(x)
        posterior = DiagonalGaussianDistribution(moments)
        if not return_dict:
            return (posterior,)
        return AutoencoderKLOutput(latent_dist=posterior)

    @apply_forward_hook
    def decode(self, z: torch.Tensor, return_dict: bool = True) -> DecoderOutput | tuple:
        """Decode (unscaled) latents of shape (B, latent_channels, h, w) into images in about [-1, 1]."""
        self._check_input(z, self.config.latent_channels, "Latents", 1)
        if self.use_slicing and z.shape[0] > 1:
            decoded = torch.cat([self._decode(latent) for latent in z.split(1)])
        else:
            decoded = self._decode(z)
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
