"""`CXRUNet2DConditionModel`: the latent denoiser, conditioned on report text through cross-attention.

Assembled from diffusers' UNet blocks (`get_down_block`, `UNetMidBlock2DCrossAttn`, `get_up_block`) and its
sinusoidal timestep embedding. Compared with `UNet2DConditionModel` it keeps only what a chest-X-ray latent model
needs and exposes the number of attention heads per level, which matters a lot for speed on small channel counts.
"""

from __future__ import annotations

import torch
from torch import nn

from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2DCrossAttn, get_down_block, get_up_block
from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

from ..errors import CXRInputError


class CXRUNet2DConditionModel(ModelMixin, ConfigMixin):
    r"""
    Conditional UNet predicting noise (or v) in the latent space of `CXRAutoencoderKL`.

    Args:
        sample_size (`int`): latent height/width it was trained at (32 for 256x256 images).
        in_channels / out_channels (`int`): latent channels.
        down_block_types / up_block_types (`tuple[str]`): diffusers block names per level, e.g.
            `("DownBlock2D", "CrossAttnDownBlock2D", ...)`; `CrossAttn*` blocks hold self- and cross-attention.
        block_out_channels (`tuple[int]`): channels per level.
        layers_per_block (`int`): residual blocks per level (up blocks use one more).
        num_attention_heads (`int | tuple[int]`): heads per level (the mid block uses the last one).
        cross_attention_dim (`int`): width of the text hidden states (the text encoder's projection).
        norm_num_groups (`int`): GroupNorm groups.
        transformer_layers_per_block (`int`): transformer layers in each attention block.
        mid_block_attention (`bool`): whether the mid block has self/cross-attention.
        time_cond_proj_dim (`int`, *optional*): width of an extra condition added to the timestep embedding
            (diffusers' `TimestepEmbedding(cond_proj_dim=...)`), passed as `forward(..., timestep_cond=...)`: the
            guidance-scale embedding of a latent consistency model (`guidance_scale_embedding`), which then needs no
            classifier-free guidance batch. None (the default, and every model saved without it): no such input,
            exactly the former model.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(
        self,
        sample_size: int = 32,
        in_channels: int = 8,
        out_channels: int = 8,
        down_block_types: tuple[str, ...] = (
            "DownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
        ),
        up_block_types: tuple[str, ...] = (
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "UpBlock2D",
        ),
        block_out_channels: tuple[int, ...] = (64, 128, 256, 256),
        layers_per_block: int = 2,
        num_attention_heads: int | tuple[int, ...] = (2, 4, 8, 8),
        cross_attention_dim: int = 768,
        norm_num_groups: int = 32,
        transformer_layers_per_block: int = 1,
        mid_block_attention: bool = True,
        time_cond_proj_dim: int | None = None,
    ):
        super().__init__()
        num_levels = len(block_out_channels)
        if len(down_block_types) != num_levels or len(up_block_types) != num_levels:
            raise CXRInputError(
                f"down_block_types and up_block_types need one entry per level of block_out_channels ({num_levels})."
            )
        if isinstance(num_attention_heads, int):
            num_attention_heads = (num_attention_heads,) * num_levels
        if len(num_attention_heads) != num_levels:
            raise CXRInputError(f"num_attention_heads needs {num_levels} entries, got {len(num_attention_heads)}.")

        time_embed_dim = block_out_channels[0] * 4
        self.conv_in = nn.Conv2d(in_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        if time_cond_proj_dim is not None and (isinstance(time_cond_proj_dim, bool) or time_cond_proj_dim < 1):
            raise CXRInputError(f"time_cond_proj_dim must be a positive integer or None, got {time_cond_proj_dim!r}.")
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, cond_proj_dim=time_cond_proj_dim)

        common = dict(
            temb_channels=time_embed_dim,
            resnet_eps=1e-5,
            resnet_act_fn="silu",
            resnet_groups=norm_num_groups,
            cross_attention_dim=cross_attention_dim,
            transformer_layers_per_block=transformer_layers_per_block,
        )
        self.down_blocks = nn.ModuleList()
        output_channel = block_out_channels[0]
        for level, block_type in enumerate(down_block_types):
            input_channel, output_channel = output_channel, block_out_channels[level]
            self.down_blocks.append(
                get_down_block(
                    block_type,
                    num_layers=layers_per_block,
                    in_channels=input_channel,
                    out_channels=output_channel,
                    add_downsample=level < num_levels - 1,
                    num_attention_heads=num_attention_heads[level],
                    attention_head_dim=output_channel // num_attention_heads[level],
                    downsample_padding=1,
                    **common,
                )
            )

        if mid_block_attention:
            self.mid_block = UNetMidBlock2DCrossAttn(
                in_channels=block_out_channels[-1],
                temb_channels=time_embed_dim,
                resnet_eps=1e-5,
                resnet_act_fn="silu",
                resnet_groups=norm_num_groups,
                num_attention_heads=num_attention_heads[-1],
                cross_attention_dim=cross_attention_dim,
                transformer_layers_per_block=transformer_layers_per_block,
            )
        else:
            self.mid_block = get_down_block(
                "DownBlock2D",
                num_layers=1,
                in_channels=block_out_channels[-1],
                out_channels=block_out_channels[-1],
                add_downsample=False,
                attention_head_dim=1,
                **common,
            )

        self.up_blocks = nn.ModuleList()
        reversed_channels = list(reversed(block_out_channels))
        reversed_heads = list(reversed(num_attention_heads))
        output_channel = reversed_channels[0]
        for level, block_type in enumerate(up_block_types):
            prev_output_channel = output_channel
            output_channel = reversed_channels[level]
            input_channel = reversed_channels[min(level + 1, num_levels - 1)]
            self.up_blocks.append(
                get_up_block(
                    block_type,
                    num_layers=layers_per_block + 1,
                    in_channels=input_channel,
                    out_channels=output_channel,
                    prev_output_channel=prev_output_channel,
                    add_upsample=level < num_levels - 1,
                    resolution_idx=level,
                    num_attention_heads=reversed_heads[level],
                    attention_head_dim=output_channel // reversed_heads[level],
                    **common,
                )
            )

        self.conv_norm_out = nn.GroupNorm(norm_num_groups, block_out_channels[0], eps=1e-5)
        self.conv_act = nn.SiLU()
        self.conv_out = nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        return_dict: bool = True,
        timestep_cond: torch.Tensor | None = None,
    ) -> UNet2DConditionOutput | tuple:
        """
        Args:
            sample: noisy latents `(B, C, h, w)`; `h` and `w` must be multiples of `downsample_factor`.
            timestep: a scalar or `(B,)` tensor of diffusion timesteps.
            encoder_hidden_states: text states `(B, L, cross_attention_dim)` from `CXRTextEncoder`.
            encoder_attention_mask: `(B, L)` with 1 for real tokens and 0 for padding.
            timestep_cond: `(B, time_cond_proj_dim)` (or `(1, time_cond_proj_dim)` for the whole batch), added to
                the timestep embedding; only for a model with `time_cond_proj_dim` (as diffusers'
                `UNet2DConditionModel`, None leaves the embedding unconditioned).
        """
        if sample.ndim != 4 or sample.shape[1] != self.config.in_channels:
            raise CXRInputError(
                f"sample must have shape (batch, {self.config.in_channels}, h, w), got {tuple(sample.shape)}."
            )
        factor = self.downsample_factor
        if sample.shape[-1] % factor or sample.shape[-2] % factor:
            raise CXRInputError(
                f"latent height and width must be multiples of {factor}, got {sample.shape[-2]}x{sample.shape[-1]}."
            )
        if encoder_hidden_states.shape[-1] != self.config.cross_attention_dim:
            raise CXRInputError(
                f"encoder_hidden_states width {encoder_hidden_states.shape[-1]} does not match the UNet's "
                f"cross_attention_dim {self.config.cross_attention_dim}."
            )

        batch = sample.shape[0]
        timesteps = torch.as_tensor(timestep, device=sample.device)
        if timesteps.ndim == 0:
            timesteps = timesteps[None]
        timesteps = timesteps.expand(batch)
        if timestep_cond is not None:
            width = self.config.time_cond_proj_dim
            if width is None:
                raise CXRInputError("timestep_cond was given, but this UNet has no time_cond_proj_dim (it takes no "
                                    "guidance embedding; use classifier-free guidance instead).")
            if timestep_cond.ndim != 2 or timestep_cond.shape[1] != width or timestep_cond.shape[0] not in (1, batch):
                raise CXRInputError(f"timestep_cond must have shape ({batch}, {width}) or (1, {width}), got "
                                    f"{tuple(timestep_cond.shape)}.")
            timestep_cond = timestep_cond.to(device=sample.device, dtype=sample.dtype).expand(batch, -1)
        temb = self.time_embedding(self.time_proj(timesteps).to(dtype=sample.dtype), timestep_cond)

        if encoder_attention_mask is not None:
            # 1 = keep, 0 = padding -> additive bias of shape (B, 1, L)
            encoder_attention_mask = (1 - encoder_attention_mask.to(sample.dtype)) * -10000.0
            encoder_attention_mask = encoder_attention_mask.unsqueeze(1)

        hidden = self.conv_in(sample)
        skips: tuple[torch.Tensor, ...] = (hidden,)
        for block in self.down_blocks:
            if getattr(block, "has_cross_attention", False):
                hidden, res = block(
                    hidden,
                    temb,
                    encoder_hidden_states=encoder_hidden_states,
                    encoder_attention_mask=encoder_attention_mask,
                )
            else:
                hidden, res = block(hidden, temb)
            skips += res

        if isinstance(self.mid_block, UNetMidBlock2DCrossAttn):
            hidden = self.mid_block(
                hidden,
                temb,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask,
            )
        else:
            hidden, _ = self.mid_block(hidden, temb)

        for block in self.up_blocks:
            res = skips[-len(block.resnets) :]
            skips = skips[: -len(block.resnets)]
            if getattr(block, "has_cross_attention", False):
                hidden = block(
                    hidden,
                    res_hidden_states_tuple=res,
                    temb=temb,
                    encoder_hidden_states=encoder_hidden_states,
                    encoder_attention_mask=encoder_attention_mask,
                )
            else:
                hidden = block(hidden, res_hidden_states_tuple=res, temb=temb)

        out = self.conv_out(self.conv_act(self.conv_norm_out(hidden)))
        if not return_dict:
            return (out,)
        return UNet2DConditionOutput(sample=out)


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 512, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """
    Sinusoidal embedding `(B, embedding_dim)` of guidance weights `w` `(B,)` (VDM's, as diffusers'
    `LatentConsistencyModelPipeline.get_guidance_scale_embedding`): the `timestep_cond` of a model with
    `time_cond_proj_dim`. `w` is the weight of the LCM paper's guidance `cond + w * (cond - uncond)`, i.e. the
    pipeline's `guidance_scale - 1`.
    """
    if w.ndim != 1:
        raise CXRInputError(f"w must be a 1-D tensor of guidance weights, got shape {tuple(w.shape)}.")
    w = w * 1000.0
    half_dim = embedding_dim // 2
    frequencies = torch.exp(torch.arange(half_dim, dtype=dtype) * -(torch.log(torch.tensor(10000.0)) / (half_dim - 1)))
    emb = w.to(dtype)[:, None] * frequencies.to(w.device)[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:  # zero pad
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb
