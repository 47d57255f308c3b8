"""`CXRPipeline`: text -> chest X-ray with latent diffusion and classifier-free guidance.

    pipe = CXRPipeline.from_pretrained("pretrained/cxr-ldm-small")
    image = pipe("PA chest radiograph of a 45 year old male. Findings: right lower lobe pneumonia.",
                 generator=torch.Generator().manual_seed(0)).images[0]

Fast mode: a distilled few-step UNet (`time_cond_proj_dim`, `LCMScheduler`) and a small distilled decoder
(diffusers' `AutoencoderTiny`, trained on this VAE's scaled latents by `train_scripts/train_tiny_autoencoder.py`) swap
in the diffusers way (see `cxr_diffusers.load_fast_pipeline`):

    unet = CXRUNet2DConditionModel.from_pretrained("pretrained/cxr-ldm-small-lcm", subfolder="unet")
    pipe = CXRPipeline.from_pretrained("pretrained/cxr-ldm-small", unet=unet,
                                       scheduler=LCMScheduler.from_pretrained("pretrained/cxr-ldm-small-lcm",
                                                                              subfolder="scheduler"))
    pipe.vae = AutoencoderTiny.from_pretrained("pretrained/cxr-ldm-small-lcm", subfolder="vae_tiny")

Resolution is a cascade: the UNet learned 256 px layouts, so 512 and 768 px come from the optional `super_resolution`
component ([`CXRSuperResolutionModel`]): the pipeline samples 256 px (the same image as a 256 px call with that seed)
and upscales it 2x or 3x. A pipeline folder with `super_resolution/` loads it; otherwise pass one:

    sr = CXRSuperResolutionModel.from_pretrained("runs/super-resolution")
    pipe = CXRPipeline.from_pretrained("pretrained/cxr-ldm-small", super_resolution=sr)
    image = pipe(prompt, height=768, width=768).images[0]       # 256 px sampled, upscaled 3x

Synthetic images, NOT FOR CLINICAL USE: every PIL output carries that label and its generation parameters in its
metadata (see `cxr_diffusers.provenance`).
"""

from __future__ import annotations

import inspect
import logging
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import PIL.Image
import torch
from transformers import PreTrainedTokenizerBase

from diffusers import AutoencoderTiny, DiffusionPipeline
from diffusers.image_processor import VaeImageProcessor
from diffusers.schedulers import KarrasDiffusionSchedulers  # noqa: F401  (documented scheduler family)
from diffusers.utils import BaseOutput, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

# The custom components must be importable under the module paths stored in model_index.json.
from ..errors import CXRInputError, ModelLoadingError, SamplingError
from ..models.autoencoder_cxr import CXRAutoencoderKL
from ..models.super_resolution_cxr import CXRSuperResolutionModel
from ..models.text_encoder_cxr import CXRTextEncoder
from ..models.unet_cxr import CXRUNet2DConditionModel, guidance_scale_embedding
from ..provenance import attach_provenance, make_record

OUTPUT_TYPES = ("pil", "np", "pt")

# Resource limits of one call, as the app has them: beyond these a request would run out of memory or time rather
# than fail clearly. Larger datasets: several calls, or `cxr-diffusers synthesize`.
MAX_IMAGE_SIDE = 1024
MAX_IMAGES_PER_CALL = 64
# Classifier-free guidance far beyond this only amplifies the difference of two predictions until it overflows.
MAX_GUIDANCE_SCALE = 30.0
# Images the super-resolution stage upscales per forward: its 3x head holds 9x the trunk's channels at the input
# resolution (about 0.1 GB per 256 px image in fp32), so a large batch runs in chunks.
SUPER_RESOLUTION_BATCH = 4

logger = logging.getLogger(__name__)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from cxr_diffusers import CXRPipeline

        >>> pipe = CXRPipeline.from_pretrained("pretrained/cxr-ldm-small")
        >>> prompt = "PA chest radiograph of a 45 year old male. Findings: right lower lobe pneumonia."
        >>> image = pipe(prompt, num_inference_steps=25, guidance_scale=4.0,
        ...              generator=torch.Generator().manual_seed(0)).images[0]
        >>> image.mode, image.size
        ('L', (256, 256))
        >>> image.save("synthetic_cxr.png")  # the PNG carries "synthetic, NOT FOR CLINICAL USE" and the parameters
        ```
"""


def rescale_noise_cfg(noise_cfg: torch.Tensor, noise_pred_text: torch.Tensor, guidance_rescale: float = 0.0) -> torch.Tensor:
    r"""
    Rescale the guided prediction `noise_cfg` to the per-image standard deviation of the text-conditioned prediction
    `noise_pred_text`, mixed with the unrescaled one by `guidance_rescale` (Lin et al. 2023, "Common Diffusion Noise
    Schedules and Sample Steps are Flawed", section 3.4; as diffusers' Stable Diffusion pipeline). Strong guidance
    otherwise over-exposes images, most visibly with zero terminal SNR.

    Args:
        noise_cfg (`torch.Tensor`): the guided prediction `(B, C, h, w)`.
        noise_pred_text (`torch.Tensor`): the text-conditioned prediction of the same shape.
        guidance_rescale (`float`): 0 returns `noise_cfg` unchanged, 1 fully rescaled.
    """
    dims = list(range(1, noise_pred_text.ndim))
    std_text = noise_pred_text.std(dim=dims, keepdim=True)
    std_cfg = noise_cfg.std(dim=dims, keepdim=True)
    rescaled = noise_cfg * (std_text / std_cfg)
    return guidance_rescale * rescaled + (1 - guidance_rescale) * noise_cfg


def _as_int(value, name: str) -> int:
    """`value` as a Python int if it is an integer of any kind (int, numpy integer, 0-d integer tensor)."""
    if isinstance(value, torch.Tensor) and value.ndim == 0 and not value.is_floating_point() and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise CXRInputError(f"{name} must be a positive integer, got {value!r}.")
    return int(value)


def _json_number(value) -> float | str:
    """A float for a provenance record: infinity as the string "inf" (strict JSON has no infinity)."""
    value = float(value)
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def vae_downsample_factor(vae) -> int:
    """Image pixels per latent pixel of `vae`: `CXRAutoencoderKL.downsample_factor`, an `AutoencoderTiny`'s
    `upsampling_scaling_factor ** (levels - 1)`, else diffusers' `2 ** (len(block_out_channels) - 1)`."""
    if isinstance(vae, AutoencoderTiny):
        return int(vae.config.upsampling_scaling_factor) ** (len(vae.config.decoder_block_out_channels) - 1)
    factor = getattr(vae, "downsample_factor", None)
    if isinstance(factor, int):
        return factor
    return 2 ** (len(vae.config.block_out_channels) - 1)


#: The pipeline folder's subfolder of the super-resolution component.
SUPER_RESOLUTION_FOLDER = "super_resolution"


def load_super_resolution(path: str | os.PathLike) -> CXRSuperResolutionModel:
    """
    The [`CXRSuperResolutionModel`] at `path`: its own folder (`config.json`, as `save_pretrained` writes it) or a
    local pipeline folder with `super_resolution/`, or a Hub id of the model's own repo (safetensors only); one
    sentence when it is neither.
    """
    import json

    from ..hub import check_model_location, load_pretrained

    location = check_model_location(path, "super-resolution model")
    if os.path.isdir(location):
        sub = os.path.join(location, SUPER_RESOLUTION_FOLDER)
        if os.path.isfile(os.path.join(sub, "config.json")):
            location = sub
        elif os.path.isfile(os.path.join(location, "model_index.json")):
            raise ModelLoadingError(
                f"The pipeline folder {os.fspath(path)!r} has no {SUPER_RESOLUTION_FOLDER}/ component; give a "
                "super-resolution model folder (train_scripts/train_super_resolution.py writes one) or a pipeline "
                "exported with --super_resolution."
            )
        config = os.path.join(location, "config.json")
        try:
            with open(config, encoding="utf-8") as handle:
                class_name = json.load(handle).get("_class_name")
        except (OSError, ValueError, AttributeError):
            class_name = None
        if class_name != CXRSuperResolutionModel.__name__:
            raise ModelLoadingError(
                f"{os.fspath(path)!r} is neither a super-resolution model folder (a config.json of "
                f"{CXRSuperResolutionModel.__name__}) nor a pipeline folder with {SUPER_RESOLUTION_FOLDER}/"
                + (f"; its config.json is a {class_name}." if class_name else ".")
            )
    return load_pretrained(CXRSuperResolutionModel, location, "super-resolution model").eval()


@torch.no_grad()
def upscale_images(model: CXRSuperResolutionModel, images: torch.Tensor, scale: int,
                   batch_size: int = SUPER_RESOLUTION_BATCH) -> torch.Tensor:
    """
    `images` `(B, 1, H, W)` upscaled `scale` times by the super-resolution `model`: clamped to [-1, 1] (the image as
    it displays, what the model was trained on), run on the model's device and in its dtype, `batch_size` images per
    forward, clamped again (the residual may overshoot) and returned on the input's device and dtype. The one home of
    the stage: `CXRPipeline.__call__` and `cxr-diffusers upscale` both run it.
    """
    scale = model.check_scale(scale)
    weight = next(model.parameters())
    chunks = [model(chunk.to(weight.device, weight.dtype).clamp(-1, 1), scale).sample.clamp(-1, 1)
              for chunk in images.split(batch_size)]
    return torch.cat(chunks).to(images.device, images.dtype)


@dataclass
class CXRPipelineOutput(BaseOutput):
    """
    Args:
        images: `list[PIL.Image.Image]` (mode "L"), a numpy array `(B, H, W, 1)` in [0, 1], or a tensor `(B, 1, H, W)`
            in [0, 1], depending on `output_type`.
    """

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class CXRPipeline(DiffusionPipeline):
    r"""
    Text-to-chest-X-ray latent diffusion.

    Args:
        vae ([`CXRAutoencoderKL`] or `diffusers.AutoencoderTiny`): encodes/decodes grayscale X-rays to/from latents;
            an `AutoencoderTiny` trained on the VAE's scaled latents (scaling_factor 1.0) is the fast mode's decoder.
        text_encoder ([`CXRTextEncoder`]): BERT-family encoder with a projection to the UNet's cross-attention width.
        tokenizer (`transformers.PreTrainedTokenizerBase`): the text encoder's tokenizer.
        unet ([`CXRUNet2DConditionModel`]): the latent denoiser.
        scheduler ([`SchedulerMixin`]): any diffusers scheduler (default DPM-Solver++ multistep).
        super_resolution ([`CXRSuperResolutionModel`], *optional*): the second stage; sizes above `default_size`
            are sampled at `default_size` and upscaled by one of its `scale_factors` (see `super_resolution_plan`).
    """

    model_cpu_offload_seq = "text_encoder->unet->vae->super_resolution"
    _optional_components = ["super_resolution"]
    _callback_tensor_inputs = ["latents", "prompt_embeds", "negative_prompt_embeds"]
    max_text_length = 128

    def __init__(
        self,
        vae: CXRAutoencoderKL | AutoencoderTiny,
        text_encoder: CXRTextEncoder,
        tokenizer: PreTrainedTokenizerBase,
        unet: CXRUNet2DConditionModel,
        scheduler,
        super_resolution: CXRSuperResolutionModel | None = None,
    ):
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                              super_resolution=super_resolution)
        self._check_vae(vae, unet)
        self._check_super_resolution(super_resolution)
        if text_encoder.config.projection_dim != unet.config.cross_attention_dim:
            raise CXRInputError(
                f"The text encoder projects to {text_encoder.config.projection_dim} but the UNet's "
                f"cross_attention_dim is {unet.config.cross_attention_dim}."
            )
        # [-1, 1] decoder output -> [0, 1] -> np (B, H, W, 1) / PIL mode "L" (diffusers' grayscale case)
        self.image_processor = VaeImageProcessor(
            vae_scale_factor=vae_downsample_factor(vae),
            vae_latent_channels=vae.config.latent_channels,
            do_normalize=True,
            do_convert_grayscale=True,
        )

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "CXRPipeline":
        """Load from a local folder, a Hub id, or the Hub cache (`HF_HUB_OFFLINE=1`), with a clear error if missing."""
        from ..hub import check_model_location, load_failure, refuse_unsafe_weights

        path = check_model_location(pretrained_model_name_or_path, "model")
        if os.path.isdir(path) and not os.path.isfile(os.path.join(path, "model_index.json")):
            raise ModelLoadingError(f"{path!r} is a folder but has no model_index.json: it is not a saved CXRPipeline.")
        if os.path.isdir(path):
            refuse_unsafe_weights(path)
        kwargs.setdefault("use_safetensors", True)  # never unpickle weights
        try:
            return super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        except CXRInputError:
            raise
        except (OSError, ValueError, EnvironmentError, RuntimeError, KeyError, TypeError) as err:
            raise load_failure(path, err, "CXRPipeline", cache_dir=kwargs.get("cache_dir")) from err

    @classmethod
    def download(cls, pretrained_model_name: str, **kwargs) -> str:
        """
        The local snapshot of the Hub repo `pretrained_model_name` (from the Hub cache when offline): its files but
        pickled weights, which are never loaded. Replaces diffusers' `download`, which refuses this pipeline's
        components wherever it knows the repo's file list (online, or offline from the tree listing an earlier
        download cached): their library is a `cxr_diffusers.models.*` module, not diffusers, transformers or a
        `<component>/<library>.py` file of the repo (`_get_custom_components_and_folders`).
        """
        from ..hub import download_snapshot

        return download_snapshot(
            pretrained_model_name,
            **{k: kwargs[k] for k in ("cache_dir", "revision", "token", "force_download", "local_files_only") if k in kwargs},
        )

    @classmethod
    def _dict_from_json_file(cls, json_file: str | os.PathLike) -> dict[str, Any]:
        """
        model_index.json as diffusers reads it, but an export's `_class_name` `["pipeline", "CXRPipeline"]` (diffusers'
        custom pipeline: it makes `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` run the shipped
        `pipeline.py`, see `cxr_diffusers.remote_code`) is read as this class's name, so that `CXRPipeline.from_pretrained`
        loads the folder with this package's classes and never runs the shipped code.
        """
        config = super()._dict_from_json_file(json_file)
        name = config.get("_class_name")
        if isinstance(name, (list, tuple)) and len(name) == 2 and name[1] == cls.__name__:
            config["_class_name"] = cls.__name__
        return config

    def save_config(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs) -> None:
        """
        diffusers' `save_config` (the last step of `save_pretrained`, before any upload). Where this class is the code
        shipped with an export, which diffusers loaded with `trust_remote_code=True` (cxr-diffusers not installed), the
        code is shipped again and model_index.json keeps the export's layout (see `cxr_diffusers.remote_code`), so the
        saved folder loads as the export did.
        """
        super().save_config(save_directory, push_to_hub=push_to_hub, **kwargs)
        if __name__.split(".")[0] != "cxr_diffusers":
            from ..remote_code import write_remote_code

            write_remote_code(save_directory, type(self))

    def __setattr__(self, name: str, value: Any) -> None:
        """
        diffusers records an optional component assigned where there was None as absent (`(None, None)` in the
        config), so `save_pretrained` would leave it out: `pipe.super_resolution = model` registers it properly.
        """
        if name in self._optional_components and value is not None and name in self.__dict__:
            from diffusers.pipelines.pipeline_loading_utils import _fetch_class_library_tuple

            self._check_super_resolution(value)
            self.register_to_config(**{name: _fetch_class_library_tuple(value)})
            object.__setattr__(self, name, value)
            return
        super().__setattr__(name, value)

    @staticmethod
    def _check_super_resolution(model) -> None:
        if model is not None and model.config.in_channels != 1:
            raise CXRInputError(
                f"The super-resolution model upscales {model.config.in_channels} channels; chest X-rays have one grey "
                "channel."
            )

    @staticmethod
    def _check_vae(vae, unet) -> None:
        """The VAE (or tiny autoencoder) must decode the UNet's latents into one grey channel."""
        what = "tiny autoencoder (AutoencoderTiny)" if isinstance(vae, AutoencoderTiny) else "VAE"
        if vae.config.latent_channels != unet.config.in_channels:
            raise CXRInputError(
                f"The {what} has {vae.config.latent_channels} latent channels but the UNet expects "
                f"{unet.config.in_channels}."
            )
        if getattr(vae.config, "out_channels", 1) != 1:
            raise CXRInputError(
                f"The {what} decodes {vae.config.out_channels} channels; chest X-rays need one grey channel "
                "(an RGB TAESD does not fit this latent space: train one with train_scripts/train_tiny_autoencoder.py)."
            )

    # ------------------------------------------------------------------ properties
    @property
    def vae_scale_factor(self) -> int:
        return vae_downsample_factor(self.vae)

    @property
    def size_multiple(self) -> int:
        """Image height/width must be multiples of this (VAE downsampling x UNet downsampling)."""
        return vae_downsample_factor(self.vae) * self.unet.downsample_factor

    @property
    def tiny_decoder(self) -> bool:
        """Whether `vae` is a small distilled decoder (`AutoencoderTiny`, the fast mode's)."""
        return isinstance(self.vae, AutoencoderTiny)

    @property
    def default_size(self) -> int:
        """The UNet's native image side (its training latents x the VAE's downsampling): 256 px for the v1 model."""
        return self.unet.config.sample_size * self.vae_scale_factor

    # ------------------------------------------------------------------ super-resolution stage
    @property
    def super_resolution_sizes(self) -> tuple[int, ...]:
        """The image sides the super-resolution stage makes (`default_size` x each of its scale factors, at most
        `MAX_IMAGE_SIDE`); empty without the component."""
        model = getattr(self, "super_resolution", None)
        if model is None:
            return ()
        return tuple(self.default_size * s for s in sorted(model.scale_factors) if self.default_size * s <= MAX_IMAGE_SIDE)

    def super_resolution_plan(self, height: int, width: int, super_resolution: bool | None = None) -> int | None:
        """
        The scale by which `__call__` upscales a `height` x `width` request (it samples `height / scale` x
        `width / scale`), or None where it samples that canvas directly; a `CXRInputError` for a size the stage
        cannot make.

        Args:
            height (`int`), width (`int`): the requested output size.
            super_resolution (`bool`, *optional*): None uses the stage when the component is present and the size
                exceeds `default_size`; False never (a direct large canvas); True requires it.
        """
        if super_resolution is not None and not isinstance(super_resolution, bool):
            raise CXRInputError(f"super_resolution must be True, False or None, got {super_resolution!r}.")
        model, native = getattr(self, "super_resolution", None), self.default_size
        if super_resolution is False:
            return None
        if model is None:
            if super_resolution:
                raise CXRInputError(
                    "super_resolution=True needs a super-resolution component: load it with "
                    "CXRPipeline.from_pretrained(model, super_resolution=CXRSuperResolutionModel.from_pretrained(folder)) "
                    "(train_scripts/train_super_resolution.py trains one)."
                )
            return None
        if max(height, width) <= native:
            if super_resolution:
                raise CXRInputError(
                    f"super_resolution=True upscales sizes above the UNet's native {native} px; {height}x{width} is "
                    f"sampled directly, so ask for {self._sizes_text()}."
                )
            return None
        scale, remainder = divmod(max(height, width), native)
        base_h, base_w = height // scale, width // scale
        if (remainder or scale not in model.scale_factors or height % scale or width % scale
                or base_h % self.size_multiple or base_w % self.size_multiple):
            raise CXRInputError(
                f"{height}x{width} px cannot be made: this pipeline makes {self._sizes_text()} (as the longer side; "
                f"the shorter one divided by the same factor must be a multiple of {self.size_multiple} px); pass "
                f"super_resolution=False to sample the large canvas directly, which tiles the {native} px layout."
            )
        return scale

    def _sizes_text(self) -> str:
        """E.g. "256 px natively; 512 and 768 px through the super-resolution stage"."""
        sizes = [str(s) for s in self.super_resolution_sizes]
        if not sizes:
            return f"{self.default_size} px natively"
        staged = f"{', '.join(sizes[:-1])} and {sizes[-1]}" if len(sizes) > 1 else sizes[0]
        return f"{self.default_size} px natively; {staged} px through the super-resolution stage"

    def _super_resolution_record(self, scale: int, base_height: int, base_width: int) -> dict[str, Any]:
        """Provenance of the stage: the scale, the sampled base size and the model's folder (`_name_or_path`)."""
        model = str(getattr(self.super_resolution.config, "_name_or_path", None) or "unknown")
        return {"scale": scale, "base_height": base_height, "base_width": base_width, "model": model}

    # ------------------------------------------------------------------ VAE memory options
    def enable_vae_slicing(self) -> None:
        """Decode the batch one image at a time (less memory for large batches, same images)."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        """Decode the whole batch at once again."""
        self.vae.disable_slicing()

    def enable_vae_tiling(self, tile_sample_min_size: int | None = None, tile_overlap_factor: float | None = None) -> None:
        """
        Decode images larger than one VAE tile (`vae.tile_sample_min_size`, the VAE's training size by default) in
        overlapping blended tiles: bounded memory at 512-1024 px, close to but not equal to the untiled image.
        """
        if self.tiny_decoder:
            raise CXRInputError(
                "The tiny decoder (AutoencoderTiny) has no tiled decoding for one-channel images; it decodes large "
                "images whole, so call the pipeline without enable_vae_tiling."
            )
        self.vae.enable_tiling(tile_sample_min_size=tile_sample_min_size, tile_overlap_factor=tile_overlap_factor)

    def disable_vae_tiling(self) -> None:
        """Decode in one step again."""
        if not self.tiny_decoder:
            self.vae.disable_tiling()

    # ------------------------------------------------------------------ checks
    def _check_states(self, embeds, mask, name: str, mask_name: str) -> None:
        """Precomputed text states `(B, L, cross_attention_dim)`, finite, with an optional `(B, L)` mask."""
        width = self.unet.config.cross_attention_dim
        if not isinstance(embeds, torch.Tensor):
            raise CXRInputError(f"{name} must be a torch.Tensor, got {type(embeds).__name__}.")
        if embeds.ndim != 3 or embeds.shape[0] < 1 or embeds.shape[1] < 1 or embeds.shape[2] != width:
            raise CXRInputError(f"{name} must have shape (batch, tokens, {width}), got {tuple(embeds.shape)}.")
        if not torch.isfinite(embeds).all():
            raise CXRInputError(f"{name} contain NaN or infinite values.")
        if mask is not None and (not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(embeds.shape[:2])):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise CXRInputError(f"{mask_name} must be a tensor of shape {tuple(embeds.shape[:2])}, got {shape}.")

    def check_inputs(
        self,
        prompt: str | list[str] | None,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        num_images_per_prompt: int,
        output_type: str,
        latents: torch.Tensor | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        guidance_rescale: float = 0.0,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        guidance_interval: tuple[float, float] | None = None,
        super_resolution: bool | None = None,
    ) -> None:
        r"""
        Validate the arguments of `__call__`; raise `CXRInputError` with one sentence on the first bad one.

        Args:
            prompt (`str` or `list[str]`, *optional*): the radiology text (exactly one of `prompt`, `prompt_embeds`).
            height (`int`), width (`int`): image size, positive multiples of `size_multiple`, at most `MAX_IMAGE_SIDE`;
                above `default_size` with a super-resolution component, a size it makes (`super_resolution_plan`).
            num_inference_steps (`int`): at least 1 and at most the scheduler's training timesteps.
            guidance_scale (`float`): in [0, `MAX_GUIDANCE_SCALE`].
            num_images_per_prompt (`int`): at least 1; prompts x images at most `MAX_IMAGES_PER_CALL`.
            output_type (`str`): "pil", "np", "pt" or "latent".
            latents (`torch.Tensor`, *optional*): finite, of shape `(B, C, height / 8, width / 8)` (of the base size
                when the super-resolution stage upscales).
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): one, or one per image.
            negative_prompt (`str` or `list[str]`, *optional*): one per prompt; not with `negative_prompt_embeds`.
            prompt_embeds (`torch.Tensor`, *optional*): `(B, L, cross_attention_dim)`, finite; not with `prompt`.
            negative_prompt_embeds (`torch.Tensor`, *optional*): the same shape as `prompt_embeds` when both are given.
            prompt_attention_mask (`torch.Tensor`, *optional*): `(B, L)`, only with `prompt_embeds`.
            negative_prompt_attention_mask (`torch.Tensor`, *optional*): `(B, L)`, only with `negative_prompt_embeds`.
            guidance_rescale (`float`): in [0, 1].
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*): names from `_callback_tensor_inputs`.
            guidance_interval (`tuple[float, float]`, *optional*): `(lo, hi)` with `0 <= lo <= hi` (`hi` may be
                infinite), noise levels sigma; not for a UNet with a guidance embedding.
            super_resolution (`bool`, *optional*): None, True or False (see `super_resolution_plan`); a size the
                stage makes cannot be returned as latents.

        With a guidance-embedded UNet (`time_cond_proj_dim`, a latent consistency model) there is no unconditional
        branch: negative prompts, `guidance_rescale` and `guidance_interval` are refused.
        """
        if prompt is not None and prompt_embeds is not None:
            raise CXRInputError("Give prompt or prompt_embeds, not both.")
        self._check_vae(self.vae, self.unet)  # also a VAE swapped in after loading (`pipe.vae = tiny`)
        if self.guidance_embedded:
            unused = [name for name, value in (("negative_prompt", negative_prompt),
                                               ("negative_prompt_embeds", negative_prompt_embeds),
                                               ("guidance_interval", guidance_interval)) if value is not None]
            if not isinstance(guidance_rescale, bool) and isinstance(guidance_rescale, numbers.Real) and guidance_rescale:
                unused.append("guidance_rescale")
            if unused:
                raise CXRInputError(
                    f"This UNet has a guidance embedding (time_cond_proj_dim: a distilled few-step model) and runs one "
                    f"conditional call per step without classifier-free guidance, so {', '.join(unused)} cannot be "
                    "used; set the strength with guidance_scale."
                )
        if prompt is None and prompt_embeds is None:
            raise CXRInputError(
                "prompt is missing; describe the radiograph, e.g. 'PA chest radiograph, no acute findings' "
                "(or pass prompt_embeds)."
            )
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else prompt
            if not isinstance(prompts, (list, tuple)) or not prompts:
                raise CXRInputError(
                    f"prompt must be a non-empty string or a list of strings, got {type(prompt).__name__}."
                )
            for i, text in enumerate(prompts):
                if not isinstance(text, str):
                    raise CXRInputError(f"prompt[{i}] must be a string, got {type(text).__name__}.")
                if not text.strip():
                    raise CXRInputError(
                        "prompt is empty; describe the radiograph, e.g. 'PA chest radiograph, no acute findings'."
                    )
            num_prompts = len(prompts)
        else:
            self._check_states(prompt_embeds, prompt_attention_mask, "prompt_embeds", "prompt_attention_mask")
            num_prompts = prompt_embeds.shape[0]
        if prompt_attention_mask is not None and prompt_embeds is None:
            raise CXRInputError("prompt_attention_mask is only used with prompt_embeds; pass both or neither.")
        if negative_prompt is not None and negative_prompt_embeds is not None:
            raise CXRInputError("Give negative_prompt or negative_prompt_embeds, not both.")
        if negative_prompt_attention_mask is not None and negative_prompt_embeds is None:
            raise CXRInputError(
                "negative_prompt_attention_mask is only used with negative_prompt_embeds; pass both or neither."
            )
        if negative_prompt is not None:
            negatives = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
            if not isinstance(negatives, (list, tuple)) or not all(isinstance(t, str) for t in negatives):
                raise CXRInputError("negative_prompt must be a string or a list of strings.")
            if len(negatives) != num_prompts:
                raise CXRInputError(
                    f"negative_prompt has {len(negatives)} entries but prompt has {num_prompts}; give one per prompt."
                )
        if negative_prompt_embeds is not None:
            self._check_states(negative_prompt_embeds, negative_prompt_attention_mask, "negative_prompt_embeds",
                               "negative_prompt_attention_mask")
            if prompt_embeds is not None and negative_prompt_embeds.shape != prompt_embeds.shape:
                raise CXRInputError(
                    f"negative_prompt_embeds must have the shape of prompt_embeds {tuple(prompt_embeds.shape)}, "
                    f"got {tuple(negative_prompt_embeds.shape)}."
                )
            if negative_prompt_embeds.shape[0] != num_prompts:
                raise CXRInputError(
                    f"negative_prompt_embeds has {negative_prompt_embeds.shape[0]} entries but prompt has "
                    f"{num_prompts}; give one per prompt."
                )
        if _as_int(num_images_per_prompt, "num_images_per_prompt") < 1:
            raise CXRInputError(f"num_images_per_prompt must be a positive integer, got {num_images_per_prompt!r}.")
        if _as_int(num_inference_steps, "num_inference_steps") < 1:
            raise CXRInputError(f"num_inference_steps must be a positive integer, got {num_inference_steps!r}.")
        if num_inference_steps > self.scheduler.config.num_train_timesteps:
            raise CXRInputError(
                f"num_inference_steps ({num_inference_steps}) cannot exceed the {self.scheduler.config.num_train_timesteps} "
                "training timesteps."
            )
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, numbers.Real):
            raise CXRInputError(f"guidance_scale must be a number, got {guidance_scale!r}.")
        guidance = float(guidance_scale)
        if not math.isfinite(guidance) or not 0 <= guidance <= MAX_GUIDANCE_SCALE:
            raise CXRInputError(
                f"guidance_scale must be a number between 0 and {MAX_GUIDANCE_SCALE:g} (typically 1.5-7), "
                f"got {guidance_scale!r}."
            )
        if (isinstance(guidance_rescale, bool) or not isinstance(guidance_rescale, numbers.Real)
                or not 0 <= float(guidance_rescale) <= 1):
            raise CXRInputError(f"guidance_rescale must be a number between 0 and 1 (typically 0.7), got {guidance_rescale!r}.")
        if guidance_interval is not None:
            self._check_guidance_interval(guidance_interval)
        max_steps = getattr(self.scheduler.config, "original_inference_steps", None)  # LCMScheduler
        if isinstance(max_steps, int) and num_inference_steps > max_steps:
            raise CXRInputError(
                f"{type(self.scheduler).__name__} takes at most {max_steps} steps (its original_inference_steps, the "
                f"distillation schedule), got num_inference_steps={num_inference_steps}; 2-8 steps is what it is for."
            )
        multiple = self.size_multiple
        for name, value in (("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
                raise CXRInputError(
                    f"{name}={value!r} is not supported: use a positive multiple of {multiple} such as 256, 512 or 768."
                )
            if value > MAX_IMAGE_SIDE:
                raise CXRInputError(f"{name}={value} exceeds the largest supported side of {MAX_IMAGE_SIDE} px.")
        scale = self.super_resolution_plan(int(height), int(width), super_resolution)
        if scale is None:
            for name, value in (("height", height), ("width", width)):
                if value % multiple:
                    raise CXRInputError(
                        f"{name}={value!r} is not supported: use a positive multiple of {multiple} such as 256, 512 or 768."
                    )
        base_height, base_width = (int(height), int(width)) if scale is None else (height // scale, width // scale)
        if output_type not in OUTPUT_TYPES and output_type != "latent":
            raise CXRInputError(f"output_type must be one of {', '.join(OUTPUT_TYPES)} or 'latent', got {output_type!r}.")
        if output_type == "latent" and scale is not None:
            raise CXRInputError(
                f"output_type='latent' cannot give {height}x{width}: that size comes from the super-resolution stage, "
                f"which works on decoded pixels; ask for 'pil', 'np' or 'pt', or for the base latents with "
                f"height={base_height}, width={base_width} (or super_resolution=False)."
            )
        batch = num_prompts * int(num_images_per_prompt)
        if batch > MAX_IMAGES_PER_CALL:
            raise CXRInputError(
                f"{batch} images in one call exceed the limit of {MAX_IMAGES_PER_CALL}; generate them in several calls "
                "(or with `cxr-diffusers synthesize`)."
            )
        generators = generator if isinstance(generator, list) else [generator]
        for g in generators:
            if g is not None and not isinstance(g, torch.Generator):
                raise CXRInputError(
                    f"generator must be a torch.Generator (or a list of them), got {type(g).__name__}; "
                    "for a seed use generator=torch.Generator().manual_seed(seed)."
                )
        if isinstance(generator, list) and len(generator) != batch:
            raise CXRInputError(
                f"{len(generator)} generators were given for {batch} images "
                f"({num_prompts} prompts x {num_images_per_prompt} per prompt); give one per image or a single one."
            )
        if latents is not None:
            expected = (batch, self.unet.config.in_channels, base_height // self.vae_scale_factor,
                        base_width // self.vae_scale_factor)
            if not isinstance(latents, torch.Tensor):
                raise CXRInputError(f"latents must be a torch.Tensor, got {type(latents).__name__}.")
            if tuple(latents.shape) != expected:
                raise CXRInputError(f"latents must have shape {expected}, got {tuple(latents.shape)}.")
            if not torch.isfinite(latents).all():
                raise CXRInputError("latents contain NaN or infinite values; pass finite initial noise.")
        if isinstance(callback_on_step_end_tensor_inputs, str):
            raise CXRInputError(
                f"callback_on_step_end_tensor_inputs must be a list of names such as ['latents'], "
                f"got the string {callback_on_step_end_tensor_inputs!r}."
            )
        unknown = set(callback_on_step_end_tensor_inputs or ()) - set(self._callback_tensor_inputs)
        if unknown:
            raise CXRInputError(
                f"callback_on_step_end_tensor_inputs may only name {self._callback_tensor_inputs}, got {sorted(unknown)}."
            )
        if getattr(self.scheduler.config, "clip_sample", False):
            raise CXRInputError(
                f"{type(self.scheduler).__name__} has clip_sample=True, which clips the predicted latents to [-1, 1] and "
                "ruins the image; use cxr_diffusers.schedulers.scheduler_from_name(name, pipe.scheduler.config) or "
                "pass clip_sample=False to from_config."
            )

    def _check_guidance_interval(self, guidance_interval) -> None:
        """`(lo, hi)`: two numbers, `0 <= lo <= hi` (`hi` may be infinite), and a scheduler that has noise levels."""
        if isinstance(guidance_interval, (str, bytes)) or not isinstance(guidance_interval, (list, tuple)) \
                or len(guidance_interval) != 2:
            raise CXRInputError(
                f"guidance_interval must be a pair (lo, hi) of noise levels sigma, e.g. (0.3, 5.0), got {guidance_interval!r}."
            )
        for value in guidance_interval:
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or math.isnan(float(value)):
                raise CXRInputError(
                    f"guidance_interval bounds must be numbers (hi may be float('inf')), got {guidance_interval!r}."
                )
        lo, hi = (float(value) for value in guidance_interval)
        if lo < 0:
            raise CXRInputError(
                f"guidance_interval's lower bound must be 0 or more (sigma = sqrt((1 - alpha_bar) / alpha_bar) is never "
                f"negative), got {guidance_interval!r}."
            )
        if lo > hi:
            raise CXRInputError(f"guidance_interval (lo, hi) needs lo <= hi, got {guidance_interval!r}.")
        if getattr(self.scheduler, "alphas_cumprod", None) is None:
            raise CXRInputError(
                f"guidance_interval needs a scheduler with alphas_cumprod to know each step's noise level; "
                f"{type(self.scheduler).__name__} has none."
            )

    @property
    def guidance_embedded(self) -> bool:
        """Whether the UNet takes the guidance scale as an embedding (`time_cond_proj_dim`, a latent consistency model):
        one conditional UNet call per step instead of classifier-free guidance's two."""
        return getattr(self.unet.config, "time_cond_proj_dim", None) is not None

    def noise_levels(self, timesteps: torch.Tensor) -> np.ndarray:
        """
        The noise level sigma = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]) of each of `timesteps` (the
        scheduler's `alphas_cumprod`, interpolated linearly between training timesteps for a scheduler whose
        timesteps are not whole numbers); infinite at a zero-terminal-SNR schedule's last timestep where the
        scheduler keeps alphas_cumprod 0 there. What `guidance_interval` is compared with.
        """
        alphas_cumprod = torch.as_tensor(self.scheduler.alphas_cumprod).detach().to("cpu", torch.float64).numpy()
        with np.errstate(divide="ignore"):
            train_sigmas = np.sqrt((1.0 - alphas_cumprod) / alphas_cumprod)
        steps = torch.as_tensor(timesteps).detach().to("cpu", torch.float64).numpy()
        return np.interp(steps, np.arange(len(train_sigmas), dtype=np.float64), train_sigmas)

    def _guided_steps(self, timesteps: torch.Tensor, do_cfg: bool, guidance_interval) -> list[bool]:
        """For each step, whether it runs classifier-free guidance: every step, or those whose sigma lies in the
        closed interval `guidance_interval` (Kynkaanniemi et al. 2024)."""
        if not do_cfg:
            return [False] * len(timesteps)
        if guidance_interval is None:
            return [True] * len(timesteps)
        lo, hi = (float(value) for value in guidance_interval)
        return [bool(lo <= sigma <= hi) for sigma in self.noise_levels(timesteps)]

    # ------------------------------------------------------------------ text
    def _encode_text(self, prompts: list[str], device: torch.device, padding: str, text_encoder) -> tuple:
        """Tokenise `prompts` (cut to `max_text_length` tokens) and run `text_encoder`: states and attention mask."""
        tokens = self.tokenizer(
            prompts,
            padding=padding,
            max_length=min(self.max_text_length, self.tokenizer.model_max_length),
            truncation=True,
            return_tensors="pt",
        )
        output = text_encoder(tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device))
        return output.last_hidden_state, output.attention_mask

    def _given_states(self, embeds: torch.Tensor, mask: torch.Tensor | None, device: torch.device) -> tuple:
        """Precomputed states on `device` in the UNet's dtype, with an all-ones mask if none was given."""
        embeds = embeds.to(device=device, dtype=self.unet.dtype)
        if mask is None:
            return embeds, torch.ones(embeds.shape[:2], dtype=torch.long, device=device)
        return embeds, mask.to(device)

    def encode_prompt(
        self,
        prompt: str | list[str] | None,
        device: torch.device,
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: str | list[str] | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        padding: str = "max_length",
        text_encoder: torch.nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        r"""
        Encode the prompt, and for classifier-free guidance the negative prompt, into the text encoder's projected
        states. Not under `torch.no_grad`: `train_ldm.py` computes its training conditioning with it.

        Args:
            prompt (`str` or `list[str]`, *optional*): radiology text; not needed when `prompt_embeds` is given.
            device (`torch.device`): where the states are placed.
            num_images_per_prompt (`int`): each prompt's states are repeated this many times.
            do_classifier_free_guidance (`bool`): also return the negative side.
            negative_prompt (`str` or `list[str]`, *optional*): one per prompt; the empty (unconditional) text if
                neither it nor `negative_prompt_embeds` is given.
            prompt_embeds (`torch.Tensor`, *optional*): precomputed states `(B, L, cross_attention_dim)`, as this
                method returns them for one image per prompt.
            negative_prompt_embeds (`torch.Tensor`, *optional*): precomputed negative states.
            prompt_attention_mask (`torch.Tensor`, *optional*): `(B, L)`, 1 for tokens and 0 for padding, of
                `prompt_embeds`; all ones if omitted.
            negative_prompt_attention_mask (`torch.Tensor`, *optional*): the mask of `negative_prompt_embeds`.
            padding (`str`, defaults to `"max_length"`): the tokenizer's padding; `"max_length"` pads to
                `max_text_length` tokens (the pipeline), `"longest"` to the batch's longest prompt (training).
            text_encoder (`torch.nn.Module`, *optional*): run this module instead of `self.text_encoder`, e.g. a
                training loop's Accelerate-wrapped copy, so that DDP synchronises its gradients.

        Returns:
            `(prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask)` with
            `B * num_images_per_prompt` rows; the negative pair is None without classifier-free guidance.
        """
        encoder = self.text_encoder if text_encoder is None else text_encoder
        if prompt_embeds is None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompt_embeds, prompt_attention_mask = self._encode_text(prompts, device, padding, encoder)
        else:
            prompt_embeds, prompt_attention_mask = self._given_states(prompt_embeds, prompt_attention_mask, device)
        negative_mask = None
        if do_classifier_free_guidance:
            if negative_prompt_embeds is None:
                if negative_prompt is None:
                    negatives = [""] * prompt_embeds.shape[0]
                else:
                    negatives = [negative_prompt] if isinstance(negative_prompt, str) else list(negative_prompt)
                negative_prompt_embeds, negative_mask = self._encode_text(negatives, device, padding, encoder)
            else:
                negative_prompt_embeds, negative_mask = self._given_states(
                    negative_prompt_embeds, negative_prompt_attention_mask, device
                )
        else:
            negative_prompt_embeds = None
        if num_images_per_prompt > 1:
            prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
            prompt_attention_mask = prompt_attention_mask.repeat_interleave(num_images_per_prompt, dim=0)
            if negative_prompt_embeds is not None:
                negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
                negative_mask = negative_mask.repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_mask

    def prompts_as_seen(self, prompts: list[str]) -> list[str | None]:
        """
        For each prompt, the text the encoder sees when the tokenizer cuts it to `max_text_length` tokens (with a
        warning), or None when it is seen whole.
        """
        limit = min(self.max_text_length, self.tokenizer.model_max_length)
        seen: list[str | None] = []
        for text in prompts:
            ids = self.tokenizer(text, truncation=False, add_special_tokens=True)["input_ids"]
            if len(ids) <= limit:
                seen.append(None)
                continue
            kept = self.tokenizer(text, truncation=True, max_length=limit)["input_ids"]
            visible = self.tokenizer.decode(kept, skip_special_tokens=True)
            logger.warning(
                "The prompt has %d tokens; the text encoder sees only the first %d: %r", len(ids), limit, visible
            )
            seen.append(visible)
        return seen

    # ------------------------------------------------------------------ latents
    def prepare_latents(self, batch, height, width, dtype, device, generator, latents=None) -> torch.Tensor:
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * self.scheduler.init_noise_sigma

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images `(B, 1, H, W)` in [0, 1] (what `__call__` decodes before `image_processor.postprocess`)."""
        return self.image_processor.denormalize(self.vae.decode(latents / self.vae.config.scaling_factor).sample)

    @staticmethod
    def _pad_tokens(embeds: torch.Tensor, mask: torch.Tensor, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`embeds`/`mask` padded with masked-out zero tokens to `length` tokens (to batch both guidance branches)."""
        extra = length - embeds.shape[1]
        if extra <= 0:
            return embeds, mask
        embeds = torch.cat([embeds, embeds.new_zeros(embeds.shape[0], extra, embeds.shape[2])], dim=1)
        return embeds, torch.cat([mask, mask.new_zeros(mask.shape[0], extra)], dim=1)

    # ------------------------------------------------------------------ call
    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 25,
        guidance_scale: float = 4.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        guidance_rescale: float = 0.0,
        callback_on_step_end: Callable[["CXRPipeline", int, torch.Tensor, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
        enhancement: str | dict | Any | None = None,
        guidance_interval: tuple[float, float] | None = None,
        super_resolution: bool | None = None,
    ) -> CXRPipelineOutput | tuple:
        r"""
        Generate chest X-rays from text.

        Args:
            prompt (`str` or `list[str]`, *optional*): radiology text, e.g. "PA chest radiograph. Findings:
                cardiomegaly."; or pass `prompt_embeds`.
            negative_prompt (`str` or `list[str]`, *optional*): text to steer away from (one per prompt); default the
                unconditional (empty) text.
            height (`int`, *optional*), width (`int`, *optional*): output size, a multiple of `size_multiple`; default
                the UNet's native size (`default_size`, 256 px). Above it, with a super-resolution component, the
                pipeline samples the native size and upscales (512 px: 2x, 768 px: 3x); without one it samples the
                large canvas directly, where the UNet tiles its 256 px layout (with a warning).
            num_inference_steps (`int`, defaults to 25): denoising steps (20-25 with the default DPM-Solver++).
            guidance_scale (`float`, defaults to 4.0): classifier-free guidance weight; <= 1 disables guidance. With a
                guidance-embedded UNet (`time_cond_proj_dim`, a distilled few-step model with `LCMScheduler`) the
                embedding of `guidance_scale - 1` conditions a single UNet call per step instead.
            num_images_per_prompt (`int`, defaults to 1): images per prompt.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*): one, or one per image, for
                reproducible results.
            latents (`torch.Tensor`, *optional*): initial noise `(B, C, H / 8, W / 8)`.
            prompt_embeds (`torch.Tensor`, *optional*): precomputed text states `(B, L, cross_attention_dim)` from
                `encode_prompt`, instead of `prompt`.
            negative_prompt_embeds (`torch.Tensor`, *optional*): precomputed negative text states.
            prompt_attention_mask (`torch.Tensor`, *optional*): `(B, L)` mask of `prompt_embeds` (default all ones).
            negative_prompt_attention_mask (`torch.Tensor`, *optional*): `(B, L)` mask of `negative_prompt_embeds`.
            output_type (`str`, defaults to `"pil"`): "pil" (mode "L" images with provenance), "np" `(B, H, W, 1)`
                or "pt" `(B, 1, H, W)` in [0, 1], or "latent".
            return_dict (`bool`, defaults to `True`): return a `CXRPipelineOutput` instead of a tuple.
            guidance_rescale (`float`, defaults to 0.0): rescale the guided prediction towards the standard
                deviation of the text-conditioned one (Lin et al. 2023, section 3.4; 0.7 is typical with zero terminal
                SNR); 0 leaves guidance unchanged.
            callback_on_step_end (`Callable`, *optional*): `fn(pipe, step, timestep, callback_kwargs) -> dict` called
                after every step; may return replacements for the tensors named in
                `callback_on_step_end_tensor_inputs`.
            callback_on_step_end_tensor_inputs (`list[str]`, defaults to `("latents",)`): names from
                `_callback_tensor_inputs`.
            enhancement (`str`, `dict` or `EnhancementPipeline`, *optional*): a preset of `cxr_diffusers.enhancement`
                (`balanced`, `high_contrast`, `sharp_detail`, `radiographic_film`), a dict of steps, or an
                `EnhancementPipeline`, applied to the outputs.
            guidance_interval (`tuple[float, float]`, *optional*): `(lo, hi)`: apply classifier-free guidance only at
                the steps whose noise level sigma = sqrt((1 - alphas_cumprod[t]) / alphas_cumprod[t]) lies in
                [lo, hi] (`hi` may be `float("inf")`), and elsewhere run the conditional branch alone, one UNet
                evaluation instead of two (Kynkaanniemi et al. 2024, "Applying guidance in a limited interval
                improves sample and distribution quality"); see `noise_levels`. Default None: guidance at every step.
            super_resolution (`bool`, *optional*): None (default) upscales with the `super_resolution` component
                when it is present and the size exceeds `default_size`; False samples the requested canvas directly;
                True requires the stage. The denoising loop, `latents` and `callback_on_step_end` work at the base
                size; the stage is deterministic, so a seed gives the base image of a native call, upscaled.

        Examples:

        Returns:
            [`CXRPipelineOutput`] or `tuple`: the images (see `output_type`).
        """
        height = self.default_size if height is None else height
        width = self.default_size if width is None else width
        self.check_inputs(
            prompt,
            height,
            width,
            num_inference_steps,
            guidance_scale,
            num_images_per_prompt,
            output_type,
            latents,
            generator,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            prompt_attention_mask=prompt_attention_mask,
            negative_prompt_attention_mask=negative_prompt_attention_mask,
            guidance_rescale=guidance_rescale,
            callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs,
            guidance_interval=guidance_interval,
            super_resolution=super_resolution,
        )
        num_inference_steps = int(num_inference_steps)
        num_images_per_prompt = int(num_images_per_prompt)
        height, width = int(height), int(width)
        scale = self.super_resolution_plan(height, width, super_resolution)
        base_height, base_width = (height, width) if scale is None else (height // scale, width // scale)
        if scale is None and super_resolution is None and max(height, width) > self.default_size:
            logger.warning(
                "The UNet learned %d px layouts: on a %dx%d canvas it tiles the anatomy (several small lung fields). "
                "For %s px, add the super-resolution stage: CXRPipeline.from_pretrained(model, super_resolution="
                "CXRSuperResolutionModel.from_pretrained(folder)) (trained by train_scripts/train_super_resolution.py), "
                "or upscale a %d px image with `cxr-diffusers upscale`.",
                self.default_size, height, width, max(height, width), self.default_size,
            )
        guidance_rescale = float(guidance_rescale)
        from ..enhancement import resolve_enhancement  # lazy: the enhancement module is optional post-processing

        enhancer = resolve_enhancement(enhancement)
        if prompt is not None:
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            prompts_seen = self.prompts_as_seen(prompts)
            num_prompts = len(prompts)
        else:
            prompts, prompts_seen, num_prompts = None, None, prompt_embeds.shape[0]
        device = self._execution_device
        batch = num_prompts * num_images_per_prompt
        guidance_embedded = self.guidance_embedded
        do_cfg = guidance_scale > 1.0 and not guidance_embedded

        # 1. text
        prompt_embeds, prompt_mask, negative_prompt_embeds, negative_mask = self.encode_prompt(
            prompts,
            device,
            num_images_per_prompt,
            do_cfg,
            negative_prompt=negative_prompt,
            prompt_embeds=prompt_embeds,
            negative_prompt_embeds=negative_prompt_embeds,
            prompt_attention_mask=prompt_attention_mask,
            negative_prompt_attention_mask=negative_prompt_attention_mask,
        )

        # 2. timesteps and initial noise
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        if "Multistep" in type(self.scheduler).__name__ and len(torch.unique(timesteps)) < len(timesteps):
            # a repeated timestep is a zero-length step, which these solvers divide by (NaN latents, black images)
            raise CXRInputError(
                f"{type(self.scheduler).__name__} cannot take {num_inference_steps} steps: its timesteps would repeat; "
                f"use fewer steps (10-50 is plenty) or DDIM."
            )
        latents = self.prepare_latents(batch, base_height, base_width, prompt_embeds.dtype, device, generator, latents)
        # Stochastic schedulers (DDPM, ancestral samplers, LCM's re-noising) draw their noise from the same generator.
        step_kwargs = {"generator": generator} if "generator" in inspect.signature(self.scheduler.step).parameters else {}
        guided = self._guided_steps(timesteps, do_cfg, guidance_interval)
        unet_kwargs = {}
        if guidance_embedded:  # the LCM pipeline's w_embedding: the guidance weight w = guidance_scale - 1
            w = torch.full((batch,), float(guidance_scale) - 1.0)
            unet_kwargs["timestep_cond"] = guidance_scale_embedding(
                w, embedding_dim=self.unet.config.time_cond_proj_dim).to(device=device, dtype=latents.dtype)

        # 3. denoising loop (both guidance branches in one batch; the conditional one alone outside guidance_interval)
        # LCMScheduler's prev_sample is its denoised sample re-noised to the next timestep, and at the last step the
        # denoised sample itself, so this loop ends on what diffusers' LCM pipeline decodes.
        with self.progress_bar(total=len(timesteps)) as progress:
            for step, t in enumerate(timesteps):
                cfg_step = guided[step]
                model_input = torch.cat([latents] * 2) if cfg_step else latents
                model_input = self.scheduler.scale_model_input(model_input, t)
                if cfg_step:
                    length = max(negative_prompt_embeds.shape[1], prompt_embeds.shape[1])
                    negative_states, negative_states_mask = self._pad_tokens(negative_prompt_embeds, negative_mask, length)
                    states, states_mask = self._pad_tokens(prompt_embeds, prompt_mask, length)
                    states = torch.cat([negative_states, states])
                    mask = torch.cat([negative_states_mask, states_mask])
                else:
                    states, mask = prompt_embeds, prompt_mask
                noise_pred = self.unet(model_input, t, encoder_hidden_states=states, encoder_attention_mask=mask,
                                       **unet_kwargs).sample
                if cfg_step:
                    noise_uncond, noise_text = noise_pred.chunk(2)
                    noise_pred = noise_uncond + guidance_scale * (noise_text - noise_uncond)
                    if guidance_rescale > 0:
                        noise_pred = rescale_noise_cfg(noise_pred, noise_text, guidance_rescale)
                latents = self.scheduler.step(noise_pred, t, latents, **step_kwargs).prev_sample
                self._check_finite(latents, step, len(timesteps), guidance_scale)

                if callback_on_step_end is not None:
                    available = {
                        "latents": latents,
                        "prompt_embeds": prompt_embeds,
                        "negative_prompt_embeds": negative_prompt_embeds,
                    }
                    kwargs = {name: available[name] for name in callback_on_step_end_tensor_inputs}
                    returned = callback_on_step_end(self, step, t, kwargs) or {}
                    latents = returned.get("latents", latents)
                    prompt_embeds = returned.get("prompt_embeds", prompt_embeds)
                    negative_prompt_embeds = returned.get("negative_prompt_embeds", negative_prompt_embeds)
                    self._check_finite(latents, step, len(timesteps), guidance_scale, after="callback_on_step_end")
                progress.update()

        # 4. decode, upscale with the second stage if needed, post-process (VaeImageProcessor: [-1, 1] -> [0, 1] ->
        # np / PIL "L"); enhancement applies to the final image
        if output_type == "latent":
            images = latents
        else:
            images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
            if not torch.isfinite(images).all():
                raise SamplingError("The VAE decoded non-finite pixel values; the image would be black.")
            if scale is not None:
                images = upscale_images(self.super_resolution, images, scale)
            do_denormalize = None
            if enhancer is not None:
                images = self._apply_enhancement(self.image_processor.denormalize(images), enhancer)
                do_denormalize = [False] * images.shape[0]
            images = self.image_processor.postprocess(images, output_type=output_type, do_denormalize=do_denormalize)
            if output_type == "pt":
                images = images.float().cpu()
            if output_type == "pil":
                self._attach_provenance(
                    images, prompts, negative_prompt, num_images_per_prompt, generator,
                    num_inference_steps, guidance_scale, height, width, enhancer, prompts_seen, guidance_rescale,
                    guidance_interval, guidance_embedded,
                    None if scale is None else self._super_resolution_record(scale, base_height, base_width),
                )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return CXRPipelineOutput(images=images)

    def _check_finite(self, latents: torch.Tensor, step: int, num_steps: int, guidance_scale: float,
                      after: str = "the scheduler step") -> None:
        """Raise a clear error as soon as sampling diverges (it would otherwise return black images)."""
        if torch.isfinite(latents).all():
            return
        raise SamplingError(
            f"Sampling diverged: the latents became NaN or infinite after {after} at step {step + 1} of {num_steps} "
            f"({type(self.scheduler).__name__}, guidance_scale={float(guidance_scale):g}); use fewer steps (10-50 for "
            "DPM-Solver++ or UniPC), a lower guidance scale, or DDIM."
        )

    def _fast_components_record(self, guidance_embedded: bool) -> dict[str, Any]:
        """Provenance of the fast mode's parts: the distilled UNet's folder (`distilled_unet`) and the tiny decoder's
        (`tiny_decoder`), from their `_name_or_path` ("unknown" for a model built in memory)."""
        record: dict[str, Any] = {}
        if guidance_embedded:
            record["distilled_unet"] = str(getattr(self.unet.config, "_name_or_path", None) or "unknown")
        if self.tiny_decoder:
            record["tiny_decoder"] = str(getattr(self.vae.config, "_name_or_path", None) or "unknown")
            record["decoder"] = type(self.vae).__name__
        return record

    # ------------------------------------------------------------------ post-processing
    @staticmethod
    def _apply_enhancement(images: torch.Tensor, enhancer) -> torch.Tensor:
        """Enhance `(B, 1, H, W)` images in [0, 1] through 16-bit integers (no visible quantisation)."""
        arrays = (images[:, 0].float().cpu().numpy() * 65535.0).round().astype(np.uint16)
        enhanced = np.stack([np.asarray(enhancer(a)) for a in arrays]).astype(np.float32) / 65535.0
        return torch.from_numpy(enhanced)[:, None].to(images.device, images.dtype)

    def _attach_provenance(
        self, images, prompts, negative_prompt, per_prompt, generator, steps, guidance, height, width, enhancer,
        prompts_seen, guidance_rescale=0.0, guidance_interval=None, guidance_embedded=False, super_resolution=None,
    ) -> None:
        num_prompts = len(images) // per_prompt
        if prompts is None:  # precomputed prompt_embeds: the text is unknown
            prompts, prompts_seen = [None] * num_prompts, [None] * num_prompts
        generators = generator if isinstance(generator, list) else [generator] * len(images)
        negatives = (
            [negative_prompt] * num_prompts if isinstance(negative_prompt, str) or negative_prompt is None else negative_prompt
        )
        model = self.config.get("_name_or_path")
        model = str(model) if model else None
        components = self._fast_components_record(guidance_embedded)
        for i, image in enumerate(images):
            g = generators[i]
            record = make_record(
                prompt=prompts[i // per_prompt],
                **({"prompt_seen_by_model": prompts_seen[i // per_prompt]} if prompts_seen[i // per_prompt] else {}),
                **({"prompt_embeds": "precomputed"} if prompts[i // per_prompt] is None else {}),
                negative_prompt=negatives[i // per_prompt],
                seed=int(g.initial_seed()) if isinstance(g, torch.Generator) else None,
                index_in_batch=i if not isinstance(generator, list) else 0,
                num_inference_steps=steps,
                guidance_scale=float(guidance),
                **({"guidance_rescale": float(guidance_rescale)} if guidance_rescale else {}),
                **({"guidance_interval": [_json_number(v) for v in guidance_interval]}
                   if guidance_interval is not None else {}),
                **({"guidance_embedded": True} if guidance_embedded else {}),
                **components,
                **({"super_resolution": super_resolution} if super_resolution else {}),
                height=height,
                width=width,
                scheduler=type(self.scheduler).__name__,
                model=model,
                enhancement=enhancer.to_dict() if enhancer is not None else None,
            )
            attach_provenance(image, record)
