"""Schedulers known to work with `CXRPipeline`, by short name; any diffusers scheduler swaps in via `from_config`."""

from __future__ import annotations

import difflib
import inspect

from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from .errors import CXRInputError

SCHEDULERS = {
    "dpm++": DPMSolverMultistepScheduler,
    "ddim": DDIMScheduler,
    "ddpm": DDPMScheduler,
    "euler": EulerDiscreteScheduler,
    "unipc": UniPCMultistepScheduler,
}

# The noise schedule used for training and inference (Stable Diffusion's scaled-linear betas).
TRAINING_SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="epsilon"
)

# Latents are not confined to [-1, 1]: DDIM's and DDPM's default `clip_sample=True` would clip every predicted x0 and
# wreck the image. Stored in the default scheduler's config too, so that diffusers' own idiom
# `DDIMScheduler.from_config(pipe.scheduler.config)` inherits it (as it does for Stable Diffusion).
LATENT_SCHEDULER_DEFAULTS = dict(clip_sample=False)


def default_scheduler(prediction_type: str = "epsilon") -> DPMSolverMultistepScheduler:
    """DPM-Solver++ (2nd-order multistep), good images in 20-25 steps."""
    config = {**TRAINING_SCHEDULE, "prediction_type": prediction_type, "algorithm_type": "dpmsolver++",
              "solver_order": 2, **LATENT_SCHEDULER_DEFAULTS}
    return DPMSolverMultistepScheduler.from_config(config)


def scheduler_from_name(name: str, config) -> object:
    """Instantiate the scheduler called `name` (see `SCHEDULERS`) from another scheduler's config."""
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
