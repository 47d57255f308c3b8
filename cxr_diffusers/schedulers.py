"""Schedulers known to work with `CXRPipeline`, by short name; any diffusers scheduler swaps in via `from_config`."""

from __future__ import annotations

import difflib

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


def default_scheduler(prediction_type: str = "epsilon") -> DPMSolverMultistepScheduler:
    """DPM-Solver++ (2nd-order multistep), good images in 20-25 steps."""
    return DPMSolverMultistepScheduler(
        **{**TRAINING_SCHEDULE, "prediction_type": prediction_type},
        algorithm_type="dpmsolver++",
        solver_order=2,
    )


def scheduler_from_name(name: str, config) -> object:
    """Instantiate the scheduler called `name` (see `SCHEDULERS`) from another scheduler's config."""
    key = name.lower()
    if key not in SCHEDULERS:
        close = difflib.get_close_matches(key, SCHEDULERS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise CXRInputError(f"Unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}.{hint}")
    return SCHEDULERS[key].from_config(config)
