"""Schedulers known to work with `CXRPipeline`, by short name; any diffusers scheduler swaps in via `from_config`.

Two noise schedules: v1's epsilon prediction on Stable Diffusion's scaled-linear betas (`TRAINING_SCHEDULE`), and
v2's v-prediction with zero terminal SNR (Lin et al. 2023: `rescale_betas_zero_snr=True`, "trailing" timesteps so
that sampling starts from pure noise, the last step to sigma 0), built with
`default_scheduler(prediction_type="v_prediction", zero_terminal_snr=True)` or `training_schedule(...)`. The settings
live in the scheduler's config, so `scheduler_from_name` and diffusers' `from_config` carry them to any scheduler.

"lcm" (`LCMScheduler`) is the sampler of a latent-consistency-distilled model (`train_scripts/train_lcm_distill.py`,
a UNet with `time_cond_proj_dim`) in 2-8 steps; on a model that was not distilled it gives poor images.
"""

from __future__ import annotations

import difflib
import inspect

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LCMScheduler,
    UniPCMultistepScheduler,
)

from .errors import CXRInputError

SCHEDULERS = {
    "dpm++": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "euler": EulerDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
    "lcm": LCMScheduler,
}

# The noise schedule used for training and inference (Stable Diffusion's scaled-linear betas).
TRAINING_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon"
)

# Latents are not confined to [-1, 1]: DDIM's and DDPM's default `clip_sample=True` would clip every predicted x0 and
# wreck the image. Stored in the default scheduler's config too, so that diffusers' own idiom
# `DDIMScheduler.from_config(pipe.scheduler.config)` inherits it (as it does for Stable Diffusion).
LATENT_SCHEDULER_DEFAULTS = dict(clip_sample=False)

PREDICTION_TYPES = ("epsilon", "v_prediction")

# Zero terminal SNR (Lin et al. 2023, sections 3.1-3.3): betas rescaled so that the last timestep is pure noise,
# sampling from that last timestep ("trailing" spacing), and the last step going all the way to sigma 0. Every
# scheduler in SCHEDULERS accepts `rescale_betas_zero_snr` (DPM-Solver++, UniPC and Euler replace the terminal
# alpha_cumprod of 0 by 2**-24 so that their sigmas stay finite); `final_sigmas_type="zero"` is already the default
# of DPM-Solver++ (which needs algorithm_type "dpmsolver++" for it), UniPC and Euler and is stored so that it travels
# with the config; DDIM and DDPM have no such setting and end at alpha_cumprod 1 (`set_alpha_to_one`). LCM's own
# timestep schedule (`original_inference_steps`) always starts at the last timestep and ends on its denoised sample.
ZERO_TERMINAL_SNR = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", final_sigmas_type="zero")


def training_schedule(prediction_type: str = "epsilon", zero_terminal_snr: bool = False) -> dict:
    """
    The noise-schedule config shared by training (`DDPMScheduler(**training_schedule(...))`) and inference.

    Args:
        prediction_type (`str`): "epsilon" (v1) or "v_prediction".
        zero_terminal_snr (`bool`): rescale the betas to zero terminal SNR, with trailing timesteps; needs
            v-prediction (at SNR 0 the noisy latent is pure noise, so predicting the noise says nothing about the image).
    """
    if prediction_type not in PREDICTION_TYPES:
        raise CXRInputError(f"prediction_type must be one of {', '.join(PREDICTION_TYPES)}, got {prediction_type!r}.")
    if zero_terminal_snr and prediction_type != "v_prediction":
        raise CXRInputError(
            "Zero terminal SNR needs prediction_type='v_prediction': at SNR 0 an epsilon prediction cannot recover the image."
        )
    config = {**TRAINING_SCHEDULE, "prediction_type": prediction_type}
    if zero_terminal_snr:
        config.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return config


def default_scheduler(prediction_type: str = "epsilon", zero_terminal_snr: bool = False) -> DPMSolverMultistepScheduler:
    """
    DPM-Solver++ (2nd-order multistep), good images in 20-25 steps, on the schedule the model was trained with.

    Args:
        prediction_type (`str`): "epsilon" (v1) or "v_prediction" (v2).
        zero_terminal_snr (`bool`): the zero-terminal-SNR schedule (`ZERO_TERMINAL_SNR`); needs v-prediction.
    """
    config = {**training_schedule(prediction_type, zero_terminal_snr), "algorithm_type": "dpmsolver++",
              "solver_order": 2, **LATENT_SCHEDULER_DEFAULTS}
    if zero_terminal_snr:
        config.update(ZERO_TERMINAL_SNR)
    return DPMSolverMultistepScheduler.from_config(config)


def scheduler_from_name(name: str, config) -> object:
    """
    Instantiate the scheduler called `name` (see `SCHEDULERS`) from another scheduler's config. The noise schedule
    travels with it (betas, `prediction_type`, `rescale_betas_zero_snr`, `timestep_spacing`, `final_sigmas_type`
    where accepted), as with diffusers' `from_config`; `clip_sample` is always off (latents are not in [-1, 1]).
    """
    if not isinstance(name, str):
        raise CXRInputError(f"The scheduler name must be a string, one of {', '.join(SCHEDULERS)}; got {name!r}.")
    key = name.lower()
    if key not in SCHEDULERS:
        close = difflib.get_close_matches(key, SCHEDULERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise CXRInputError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}.{hint}")
    cls = SCHEDULERS[key]
    accepted = inspect.signature(cls.__init__).parameters
    latent_defaults = {k: v for k, v in LATENT_SCHEDULER_DEFAULTS.items() if k in accepted}
    return cls.from_config(config, **latent_defaults)
