"""Fast mode: a distilled few-step UNet and a small distilled decoder beside a base pipeline.

A fast folder (`train_scripts/train_lcm_distill.py` writes one as `<output_dir>/fast`; shipped as
`pretrained/cxr-ldm-small-lcm` beside `pretrained/cxr-ldm-small`) holds

    unet/        the latent-consistency student: a CXRUNet2DConditionModel with `time_cond_proj_dim`
    scheduler/   its LCMScheduler config
    vae_tiny/    optional: an AutoencoderTiny trained on the base VAE's scaled latents (train_tiny_autoencoder.py)
    README.md    the card, naming the teacher (the base pipeline)

and loads the plain diffusers way, which `load_fast_pipeline` does with one-sentence errors:

    unet = CXRUNet2DConditionModel.from_pretrained(fast, subfolder="unet")
    pipe = CXRPipeline.from_pretrained(base, unet=unet, scheduler=LCMScheduler.from_pretrained(fast, subfolder="scheduler"))
    pipe.vae = AutoencoderTiny.from_pretrained(fast, subfolder="vae_tiny")
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Any

from .errors import CXRInputError, ModelLoadingError

#: The fast folder of a base pipeline folder `<base>` is `<base>` + this suffix (`pretrained/cxr-ldm-small-lcm`).
FAST_SUFFIX = "-lcm"
#: The subfolders of a fast folder.
UNET_FOLDER, SCHEDULER_FOLDER, TINY_DECODER_FOLDER = "unet", "scheduler", "vae_tiny"
#: Steps a distilled model samples with by default (2-8 is what it is for).
FAST_STEPS = 4


def default_fast_folder(base: str | os.PathLike) -> str:
    """`<base>-lcm` for a local base folder (`pretrained/cxr-ldm-small` -> `pretrained/cxr-ldm-small-lcm`)."""
    return os.path.normpath(os.fspath(base)) + FAST_SUFFIX


def has_distilled_unet(folder: str | os.PathLike | None) -> bool:
    """Whether `folder` is a local fast folder (it has `unet/` and `scheduler/` configs)."""
    if not folder:
        return False
    root = Path(folder)
    return (root / UNET_FOLDER / "config.json").is_file() and (root / SCHEDULER_FOLDER / "scheduler_config.json").is_file()


def has_tiny_decoder(folder: str | os.PathLike | None) -> bool:
    """Whether `folder` is (or holds in `vae_tiny/`) a saved AutoencoderTiny."""
    return bool(folder) and _tiny_decoder_location(Path(folder)) is not None


def _tiny_decoder_location(folder: Path) -> tuple[str, str | None] | None:
    """`(root, subfolder)` of the AutoencoderTiny in `folder` (itself, or its `vae_tiny/`), or None."""
    if (folder / "config.json").is_file():
        return str(folder), None
    if (folder / TINY_DECODER_FOLDER / "config.json").is_file():
        return str(folder), TINY_DECODER_FOLDER
    return None


class _DropAutoencoderTinyConfigWarning(logging.Filter):
    """diffusers' AutoencoderTiny registers `block_out_channels` in its config but does not take it back, so every
    load warns that the attribute "will be ignored" (for TAESD too); the warning says nothing about the model."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("'block_out_channels'" in message and "AutoencoderTiny" in message)


@contextlib.contextmanager
def _quiet_autoencoder_tiny_config():
    log = logging.getLogger("diffusers.configuration_utils")
    warning_filter = _DropAutoencoderTinyConfigWarning()
    log.addFilter(warning_filter)
    try:
        yield
    finally:
        log.removeFilter(warning_filter)


def _local_folder(path: str | os.PathLike, what: str) -> Path:
    from .hub import check_model_location, refuse_unsafe_weights

    location = check_model_location(path, what)
    if not os.path.isdir(location):
        raise ModelLoadingError(f"The {what} {location!r} must be a local folder (download it first).")
    refuse_unsafe_weights(location)
    return Path(location)


def load_distilled_unet(fast: str | os.PathLike, torch_dtype=None):
    """`(unet, scheduler)` of a fast folder: the student `CXRUNet2DConditionModel` (with `time_cond_proj_dim`) from
    `unet/` (in `torch_dtype` if given) and its `LCMScheduler` from `scheduler/`, with one-sentence errors for a folder
    that lacks them."""
    from diffusers import LCMScheduler

    from .hub import load_failure
    from .models import CXRUNet2DConditionModel

    root = _local_folder(fast, "distilled model folder")
    if not (root / UNET_FOLDER / "config.json").is_file():
        raise ModelLoadingError(
            f"The distilled model folder {str(root)!r} has no {UNET_FOLDER}/ (the student UNet); train_lcm_distill.py "
            "writes a complete one as <output_dir>/fast."
        )
    if not (root / SCHEDULER_FOLDER / "scheduler_config.json").is_file():
        raise ModelLoadingError(
            f"The distilled model folder {str(root)!r} has no {SCHEDULER_FOLDER}/scheduler_config.json (its "
            "LCMScheduler); train_lcm_distill.py writes a complete one as <output_dir>/fast."
        )
    try:
        unet = CXRUNet2DConditionModel.from_pretrained(str(root), subfolder=UNET_FOLDER, use_safetensors=True,
                                                       **({"torch_dtype": torch_dtype} if torch_dtype is not None else {}))
        scheduler = LCMScheduler.from_pretrained(str(root), subfolder=SCHEDULER_FOLDER)
    except CXRInputError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise load_failure(root, err, "distilled model") from err
    if getattr(unet.config, "time_cond_proj_dim", None) is None:
        raise ModelLoadingError(
            f"The UNet in {str(root / UNET_FOLDER)!r} has no guidance embedding (time_cond_proj_dim): it is not a "
            "distilled few-step model; give the folder train_lcm_distill.py wrote."
        )
    return unet.eval(), scheduler


def load_tiny_decoder(folder: str | os.PathLike, torch_dtype=None):
    """The `AutoencoderTiny` in `folder` (the folder itself, or its `vae_tiny/`), in eval mode (in `torch_dtype` if
    given), with a one-sentence error when there is none."""
    from diffusers import AutoencoderTiny

    from .hub import load_failure

    root = _local_folder(folder, "tiny decoder folder")
    location = _tiny_decoder_location(root)
    if location is None:
        raise ModelLoadingError(
            f"{str(root)!r} has no tiny decoder: neither a config.json nor {TINY_DECODER_FOLDER}/config.json (train one "
            "with train_scripts/train_tiny_autoencoder.py, or pass train_lcm_distill.py --tiny_autoencoder)."
        )
    path, subfolder = location
    config_path = Path(path) / (subfolder or "") / "config.json"
    try:
        import json

        class_name = json.loads(config_path.read_text()).get("_class_name")
    except (OSError, ValueError) as err:
        raise ModelLoadingError(f"{str(config_path)!r} is not a readable model config ({err}).") from err
    if class_name != "AutoencoderTiny":
        raise ModelLoadingError(f"{str(config_path)!r} describes a {class_name}, not an AutoencoderTiny (a tiny decoder).")
    try:
        with _quiet_autoencoder_tiny_config():
            tiny = AutoencoderTiny.from_pretrained(path, subfolder=subfolder, use_safetensors=True,
                                                   **({"torch_dtype": torch_dtype} if torch_dtype is not None else {}))
    except CXRInputError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as err:
        raise load_failure(Path(path) / (subfolder or ""), err, "tiny decoder") from err
    return tiny.eval()


def load_fast_pipeline(
    base: str | os.PathLike = "pretrained/cxr-ldm-small",
    fast: str | os.PathLike | None = None,
    tiny_decoder: bool | str | os.PathLike = True,
    **kwargs: Any,
):
    """
    The base `CXRPipeline` with the fast folder's distilled UNet and `LCMScheduler`, and (by default) its tiny decoder.

    Args:
        base: the base pipeline (folder or Hub id) whose text encoder, tokenizer and VAE latent space the student
            was distilled in.
        fast: the fast folder (`unet/`, `scheduler/`, optional `vae_tiny/`); default the sibling `<base>-lcm` of a
            local base folder.
        tiny_decoder: True: the fast folder's `vae_tiny/` (an error if it has none); a folder: that AutoencoderTiny;
            False: keep the base VAE's decoder.
        kwargs: passed to `CXRPipeline.from_pretrained` (e.g. `torch_dtype`).

    Sample with `num_inference_steps=4` (`FAST_STEPS`; 2-8 steps) and `guidance_scale` in the range the card names.
    """
    from .pipelines import CXRPipeline

    if fast is None:
        if not os.path.isdir(os.fspath(base)):
            raise CXRInputError(f"The base model {os.fspath(base)!r} is not a local folder, so there is no sibling "
                                f"'{FAST_SUFFIX}' folder to default to; pass fast=FOLDER.")
        fast = default_fast_folder(base)
        if not os.path.isdir(fast):
            raise ModelLoadingError(
                f"No distilled model folder {fast!r} beside the base model {os.fspath(base)!r}; pass fast=FOLDER "
                "(train_lcm_distill.py writes one as <output_dir>/fast)."
            )
    unet, scheduler = load_distilled_unet(fast, torch_dtype=kwargs.get("torch_dtype"))
    tiny = None
    if tiny_decoder is True:
        if not has_tiny_decoder(Path(fast) / TINY_DECODER_FOLDER):
            raise ModelLoadingError(
                f"The distilled model folder {os.fspath(fast)!r} has no {TINY_DECODER_FOLDER}/ (the tiny decoder); pass "
                "tiny_decoder=False to decode with the base VAE, or a tiny decoder folder."
            )
        tiny = load_tiny_decoder(Path(fast) / TINY_DECODER_FOLDER, torch_dtype=kwargs.get("torch_dtype"))
    elif tiny_decoder:
        tiny = load_tiny_decoder(tiny_decoder, torch_dtype=kwargs.get("torch_dtype"))
    pipe = CXRPipeline.from_pretrained(base, unet=unet, scheduler=scheduler, **kwargs)
    if tiny is not None:
        pipe._check_vae(tiny, pipe.unet)
        pipe.vae = tiny
    return pipe
