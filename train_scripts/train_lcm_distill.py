#!/usr/bin/env python
"""Distil a trained `CXRPipeline` into a few-step latent consistency model (LCM, Luo et al. 2023).

    accelerate launch train_scripts/train_lcm_distill.py --config train_scripts/configs/small.json \
        --pretrained_teacher_model runs/ldm-small/pipeline --train_data_dir data/cxr-train-256 \
        --output_dir runs/lcm-small

Latent consistency distillation as diffusers' `examples/consistency_distillation/train_lcm_distill_sd_wds.py` does it,
on this project's data and cached latents. The student is a copy of the teacher's UNet with a guidance-scale
embedding (`time_cond_proj_dim`, whose projection starts at zero, so the student starts as the teacher's conditional
model). At every step a training latent is noised to a timestep t_{n+k} of the `--num_ddim_timesteps` skipping-step
schedule; the frozen teacher, with classifier-free guidance at a weight w drawn from [`--w_min`, `--w_max`] (the LCM
paper's `cond + w * (cond - uncond)`, i.e. the pipeline's `guidance_scale - 1`), takes one DDIM step to t_n; the target
network, an EMA of the student (`--ema_decay`), maps that point to its clean estimate, and the student is trained to
map the point at t_{n+k} to the same estimate (consistency boundary scalings c_skip / c_out,
`--timestep_scaling_factor`; pseudo-Huber loss with `--huber_c`, or `--loss_type l2`). The teacher's prediction type
and schedule come from its scheduler config: `epsilon` (v1), or `v_prediction` with zero terminal SNR (v2).

The text encoder and VAE are the teacher's, frozen. The training latents are train_ldm.py's cache (the posterior's
moments, `--latents_cache_dir`: the teacher's own run's cache is reused when data, encoder and resolution match).
Checkpoints hold the student and its target network (`unet`, `unet_target`), so `--resume_from_checkpoint latest`
is exact. Ends with a complete `CXRPipeline` in `<output_dir>/pipeline` whose scheduler is `LCMScheduler` (the
teacher's schedule, `original_inference_steps=--num_ddim_timesteps`) and whose UNet has `time_cond_proj_dim`; with
`--use_ema` (the configs' default) it ships the target network's weights, else the online student's.

It also writes the fast folder `<output_dir>/fast` that ships beside the teacher (`pretrained/cxr-ldm-small-lcm` next
to `pretrained/cxr-ldm-small`): `unet/` (the same student), `scheduler/` (the same LCMScheduler), `README.md` (a card
naming the teacher) and, with `--tiny_autoencoder FOLDER` (from train_tiny_autoencoder.py, for the teacher's VAE),
`vae_tiny/`. It loads with `cxr_diffusers.load_fast_pipeline(teacher, fast)` or `cxr-diffusers generate TEACHER
--distilled FAST --tiny-decoder`.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import DDPMScheduler, LCMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from cxr_diffusers import CXRInputError, CXRPipeline, CXRUNet2DConditionModel
from cxr_diffusers.data.prompts import PromptBuilder
from cxr_diffusers.fast import SCHEDULER_FOLDER, TINY_DECODER_FOLDER, UNET_FOLDER, load_tiny_decoder
from cxr_diffusers.hub import DATA_CITATIONS, create_hub_repo, push_folder, save_model_card
from cxr_diffusers.models.unet_cxr import guidance_scale_embedding
from cxr_diffusers.training_utils import (
    JsonlLogger,
    apply_config_file,
    check_output_dirs,
    check_positive,
    load_training_dataset,
    register_diffusers_checkpoint_hooks,
    resume_training,
    run_script,
    save_checkpoint,
    save_loss_plot,
    select_train_subset,
    training_steps,
)
from cxr_diffusers.utils.image_grid import make_grid


def _load_train_ldm():
    """train_ldm.py as a module (its latent cache, prompt and validation helpers), loaded afresh beside this one."""
    name = f"{__name__}__train_ldm"
    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().with_name("train_ldm.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


train_ldm = _load_train_ldm()
logger = get_logger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="JSON file of flag defaults (train_scripts/configs/*.json)")
    parser.add_argument("--pretrained_teacher_model", default=None,
                        help="the trained CXRPipeline to distil (folder or Hub id), e.g. runs/ldm-small/pipeline")
    parser.add_argument("--model_config", default=None,
                        help="not used: the student has the teacher's architecture (accepted so that a --config "
                             "file's common section applies)")
    parser.add_argument("--train_data_dir", default=None, help="dataset built by `cxr-diffusers data build`")
    parser.add_argument("--dataset_name", default=None, help="Hub dataset id (alternative to --train_data_dir)")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=None, help="training image size (default: the teacher's)")
    parser.add_argument("--prompt_dropout", type=float, default=0.0,
                        help="probability of the empty prompt (diffusers' LCM distillation uses none)")
    parser.add_argument("--prompt_mode", default="training", choices=["training", "fixed"],
                        help="vary prompts from metadata (training) or use the dataset's prompt column (fixed)")
    # Latent consistency distillation
    parser.add_argument("--num_ddim_timesteps", type=int, default=50,
                        help="timesteps of the teacher's DDIM solver (the skipping-step schedule; also the saved "
                             "LCMScheduler's original_inference_steps)")
    parser.add_argument("--w_min", type=float, default=1.0,
                        help="smallest guidance weight w of the teacher, cond + w * (cond - uncond) "
                             "(the pipeline's guidance_scale - 1)")
    parser.add_argument("--w_max", type=float, default=6.0, help="largest guidance weight w of the teacher")
    parser.add_argument("--loss_type", default="huber", choices=["huber", "l2"],
                        help="pseudo-Huber sqrt(d^2 + c^2) - c (the LCM paper's) or mean squared error")
    parser.add_argument("--huber_c", type=float, default=0.001, help="the pseudo-Huber loss's c")
    parser.add_argument("--timestep_scaling_factor", type=float, default=10.0,
                        help="timestep scaling of the consistency boundary conditions c_skip / c_out (the saved "
                             "LCMScheduler's timestep_scaling)")
    parser.add_argument("--unet_time_cond_proj_dim", type=int, default=256,
                        help="width of the student's guidance-scale embedding (time_cond_proj_dim)")
    # Training flags whose defaults are this script's own
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-5)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--lr_warmup_steps", type=int, default=100)
    parser.add_argument("--ema_decay", type=float, default=0.95,
                        help="decay of the target network, the student's EMA (diffusers' LCM distillation's 0.95)")
    parser.add_argument("--dataloader_num_workers", type=int, default=0,
                        help="workers of the (index) loader; the latents are cached in memory, so 0 is usually best")
    # The standard training flags of diffusers' examples, the same in train_vae.py and train_ldm.py (--use_ema: ship
    # the target network's weights)
    # Copied from train_scripts/train_ldm.py:training_flags
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_epsilon", type=float, default=1e-8)
    parser.add_argument("--gradient_checkpointing", action="store_true",
                        help="recompute the model's block activations in the backward pass (less memory, slower)")
    parser.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs (faster, no effect on CPU)")
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--lr_scheduler", default="cosine",
                        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                 "constant_with_warmup"])
    parser.add_argument("--max_train_steps", type=int, default=None)
    parser.add_argument("--num_train_epochs", type=int, default=1)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--use_ema", action="store_true")
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoints_total_limit", type=int, default=3)
    parser.add_argument("--resume_from_checkpoint", default=None, help='"latest" or a checkpoint folder')
    parser.add_argument("--validation_steps", type=int, default=500)
    parser.add_argument("--logging_steps", type=int, default=10)
    # End copy
    parser.add_argument("--validation_prompts", nargs="+", default=None)
    parser.add_argument("--validation_inference_steps", type=int, default=4)
    parser.add_argument("--validation_guidance_scale", type=float, default=4.0)
    parser.add_argument("--encode_batch_size", type=int, default=16)
    parser.add_argument("--latents_cache_dir", default=None,
                        help="train_ldm.py's latent cache folder: reuse (or write) the encoded training latents, one "
                             "file per (dataset fingerprint, VAE encoder, resolution) (default: <output_dir>, one file)")
    parser.add_argument("--latents_cache_dtype", default="float32", choices=["float32", "float16"],
                        help="dtype of the cached posterior moments (float16 halves memory and disk)")
    parser.add_argument("--tiny_autoencoder", default=None,
                        help="an AutoencoderTiny folder trained for the teacher's VAE (train_tiny_autoencoder.py's "
                             "<output_dir>/vae_tiny), copied into <output_dir>/fast/vae_tiny")
    parser.add_argument("--output_dir", default="runs/lcm")
    # Copied from train_scripts/train_ldm.py:logging_and_hub_flags
    parser.add_argument("--logging_dir", default="logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report_to", default="tensorboard", help='"tensorboard", "none", ...')
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None, help="Hub token for --push_to_hub (default: the saved login)")
    # End copy
    args = apply_config_file(parser, argv, section="lcm_distill")
    check_positive(parser, args, "resolution", "train_batch_size", "learning_rate", "gradient_accumulation_steps",
                   "checkpointing_steps", "validation_steps", "max_train_steps", "validation_inference_steps",
                   "num_ddim_timesteps", "huber_c", "timestep_scaling_factor", "unet_time_cond_proj_dim",
                   "num_train_epochs")
    if args.pretrained_teacher_model is None:
        parser.error("give --pretrained_teacher_model (the trained CXRPipeline to distil)")
    if not 0 <= args.w_min <= args.w_max:
        parser.error(f"--w_min and --w_max need 0 <= w_min <= w_max, got {args.w_min} and {args.w_max}")
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema_decay must be in [0, 1), got {args.ema_decay}")
    if not 0 <= args.prompt_dropout < 1:
        parser.error(f"--prompt_dropout must be in [0, 1), got {args.prompt_dropout}")
    if args.lr_warmup_steps < 0:
        parser.error(f"--lr_warmup_steps cannot be negative, got {args.lr_warmup_steps}")
    if args.validation_inference_steps > args.num_ddim_timesteps:
        parser.error(f"--validation_inference_steps cannot exceed --num_ddim_timesteps ({args.num_ddim_timesteps}): "
                     "LCMScheduler samples a subset of the distillation schedule")
    args.validation_prompts = args.validation_prompts or train_ldm.DEFAULT_VALIDATION_PROMPTS
    if args.tiny_autoencoder is not None and not (Path(args.tiny_autoencoder) / "config.json").is_file():
        parser.error(f"--tiny_autoencoder {args.tiny_autoencoder} is not a saved AutoencoderTiny folder (no config.json); "
                     "give train_tiny_autoencoder.py's <output_dir>/vae_tiny")
    # Copied from train_scripts/train_ldm.py:common_flag_checks
    if args.dataloader_num_workers < 0:
        parser.error(f"--dataloader_num_workers must be 0 or more, got {args.dataloader_num_workers}")
    if args.train_data_dir is None and args.dataset_name is None:
        parser.error("give --train_data_dir or --dataset_name")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    check_output_dirs(parser, args, "output_dir")
    # End copy
    return args


# ----------------------------------------------------------------------------------------------- teacher and student
def teacher_schedule(scheduler_config) -> DDPMScheduler:
    """The teacher's noise schedule (betas, prediction type, zero terminal SNR) from its pipeline's scheduler config."""
    schedule = DDPMScheduler.from_config(scheduler_config, clip_sample=False)
    prediction_type = schedule.config.prediction_type
    if prediction_type not in ("epsilon", "v_prediction"):
        raise CXRInputError(f"The teacher predicts {prediction_type!r}; distillation supports epsilon and v_prediction.")
    if schedule.config.rescale_betas_zero_snr and prediction_type == "epsilon":
        raise CXRInputError("The teacher's schedule has zero terminal SNR with epsilon prediction, which cannot recover "
                            "the image at the last timestep; its scheduler config is inconsistent.")
    return schedule


def make_student(teacher_unet: CXRUNet2DConditionModel, time_cond_proj_dim: int) -> CXRUNet2DConditionModel:
    """The teacher's UNet with a guidance-scale embedding whose projection starts at zero (so, before training, the
    student is exactly the teacher's conditional model at every guidance scale)."""
    if teacher_unet.config.time_cond_proj_dim is not None:
        raise CXRInputError("The teacher's UNet already has a guidance embedding (time_cond_proj_dim): it is a distilled "
                            "model; distil the guided model it came from.")
    student = CXRUNet2DConditionModel.from_config(teacher_unet.config, time_cond_proj_dim=time_cond_proj_dim)
    missing, unexpected = student.load_state_dict(teacher_unet.state_dict(), strict=False)
    if unexpected or set(missing) != {"time_embedding.cond_proj.weight"}:
        raise CXRInputError(f"The teacher's UNet weights do not fit the student (missing {missing}, unexpected "
                            f"{unexpected}).")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student


def lcm_scheduler(scheduler_config, args) -> LCMScheduler:
    """The student's sampler: `LCMScheduler` on the teacher's schedule (betas, prediction type, zero terminal SNR; the
    teacher's sampler-specific settings are left behind), its timesteps those the student learned."""
    accepted = inspect.signature(LCMScheduler.__init__).parameters
    schedule = {key: value for key, value in dict(scheduler_config).items() if key in accepted}
    return LCMScheduler.from_config(schedule, original_inference_steps=args.num_ddim_timesteps,
                                    timestep_scaling=args.timestep_scaling_factor, clip_sample=False)


class EMATarget:
    """
    The consistency target network: a runnable copy of the student whose weights follow the student's by an
    exponential moving average with a fixed decay (diffusers' LCM `update_ema`), `step` after each update.
    """

    def __init__(self, student: torch.nn.Module, decay: float):
        self.decay = decay
        self.unet = CXRUNet2DConditionModel.from_config(student.config)
        self.unet.load_state_dict(student.state_dict())
        self.unet.requires_grad_(False).eval()

    @torch.no_grad()
    def step(self, parameters) -> None:
        for target, source in zip(self.unet.parameters(), parameters):
            target.mul_(self.decay).add_(source.detach(), alpha=1 - self.decay)

    def to(self, device) -> "EMATarget":
        self.unet.to(device)
        return self


# ----------------------------------------------------------------------------------------------- distillation loss
class DDIMSolver:
    """
    DDIM on the skipping-step schedule `[k - 1, 2k - 1, ..., N k - 1]` (k = T // N, the timesteps `LCMScheduler`
    samples from): one deterministic step from the n-th of these timesteps to the one below it (timestep 0 below
    the first).
    """

    def __init__(self, alphas_cumprod: torch.Tensor, num_train_timesteps: int, num_ddim_timesteps: int):
        if num_ddim_timesteps > num_train_timesteps:
            raise CXRInputError(f"--num_ddim_timesteps ({num_ddim_timesteps}) cannot exceed the teacher's "
                                f"{num_train_timesteps} training timesteps.")
        self.step_ratio = num_train_timesteps // num_ddim_timesteps
        self.timesteps = torch.arange(1, num_ddim_timesteps + 1, dtype=torch.long) * self.step_ratio - 1
        alphas_cumprod = torch.as_tensor(alphas_cumprod, dtype=torch.float32)
        self.alphas_cumprod_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.timesteps[:-1]]])

    def to(self, device) -> "DDIMSolver":
        self.timesteps = self.timesteps.to(device)
        self.alphas_cumprod_prev = self.alphas_cumprod_prev.to(device)
        return self

    def ddim_step(self, pred_x0: torch.Tensor, pred_noise: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        alpha_prev = per_example(self.alphas_cumprod_prev[index], pred_x0)
        return alpha_prev.sqrt() * pred_x0 + (1 - alpha_prev).sqrt() * pred_noise


def per_example(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """`(B,)` values shaped `(B, 1, 1, 1)` to broadcast over `like`, in its dtype."""
    return values.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def boundary_scalings(timesteps: torch.Tensor, timestep_scaling: float, sigma_data: float = 0.5):
    """The consistency boundary conditions of `LCMScheduler.get_scalings_for_boundary_condition_discrete`: c_skip 1 and
    c_out 0 at timestep 0, so that the consistency function is the identity there."""
    scaled = timestep_scaling * timesteps.double()
    c_skip = sigma_data**2 / (scaled**2 + sigma_data**2)
    c_out = scaled / (scaled**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


def predicted_x0_and_noise(model_output, timesteps, sample, schedule: DDPMScheduler):
    """The clean latent and the noise that the prediction `model_output` at `timesteps` implies (epsilon or v)."""
    alphas_cumprod = schedule.alphas_cumprod.to(sample.device)[timesteps]
    alpha, sigma = per_example(alphas_cumprod.sqrt(), sample), per_example((1 - alphas_cumprod).sqrt(), sample)
    if schedule.config.prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha, model_output
    return alpha * sample - sigma * model_output, alpha * model_output + sigma * sample  # v = alpha * eps - sigma * x0


def distillation_loss(unet, teacher_unet, target_unet, latents, text, uncond, schedule, solver, args) -> torch.Tensor:
    """
    One latent consistency distillation loss (diffusers' `train_lcm_distill_sd_wds.py`, steps 2-10). `text` and
    `uncond` are `(states, mask)` of the prompts and of the empty prompt.
    """
    batch = latents.shape[0]
    # the skipping-step pair t_{n+k} (start) -> t_n, both on the solver's schedule (t_n = 0 below its first timestep)
    index = torch.randint(0, len(solver.timesteps), (batch,), device=latents.device)
    start = solver.timesteps[index]
    end = (start - solver.step_ratio).clamp(min=0)
    noise = torch.randn_like(latents)
    noisy = schedule.add_noise(latents, noise, start)
    w = (args.w_max - args.w_min) * torch.rand((batch,)) + args.w_min
    w_embedding = guidance_scale_embedding(w, embedding_dim=target_unet.config.time_cond_proj_dim)
    w_embedding = w_embedding.to(latents.device, latents.dtype)
    w = per_example(w.to(latents.device), latents)

    # online student at t_{n+k}
    output = unet(noisy, start, text[0], encoder_attention_mask=text[1], timestep_cond=w_embedding).sample
    c_skip_start, c_out_start = (per_example(c, latents) for c in boundary_scalings(start, args.timestep_scaling_factor))
    student = c_skip_start * noisy + c_out_start * predicted_x0_and_noise(output, start, noisy, schedule)[0]

    with torch.no_grad():
        # the teacher with classifier-free guidance at w (the LCM paper's form), one DDIM step to t_n
        cond_x0, cond_noise = predicted_x0_and_noise(
            teacher_unet(noisy, start, text[0], encoder_attention_mask=text[1]).sample, start, noisy, schedule)
        uncond_x0, uncond_noise = predicted_x0_and_noise(
            teacher_unet(noisy, start, uncond[0], encoder_attention_mask=uncond[1]).sample, start, noisy, schedule)
        x0 = cond_x0 + w * (cond_x0 - uncond_x0)
        noise_estimate = cond_noise + w * (cond_noise - uncond_noise)
        previous = solver.ddim_step(x0, noise_estimate, index)
        # the target network's consistency estimate at t_n
        target_output = target_unet(previous, end, text[0], encoder_attention_mask=text[1],
                                    timestep_cond=w_embedding).sample
        c_skip, c_out = (per_example(c, latents) for c in boundary_scalings(end, args.timestep_scaling_factor))
        target = c_skip * previous + c_out * predicted_x0_and_noise(target_output, end, previous, schedule)[0]

    if args.loss_type == "l2":
        return F.mse_loss(student.float(), target.float())
    return torch.mean(torch.sqrt((student.float() - target.float()) ** 2 + args.huber_c**2) - args.huber_c)


# ----------------------------------------------------------------------------------------------- validation
@torch.no_grad()
def generate_validation(vae, text_encoder, tokenizer, unet, scheduler, args) -> list:
    pipe = CXRPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    was_training = unet.training
    unet.eval()
    images = []
    for index, prompt in enumerate(args.validation_prompts):
        images += pipe(prompt, num_inference_steps=args.validation_inference_steps,
                       guidance_scale=args.validation_guidance_scale, height=args.resolution, width=args.resolution,
                       generator=torch.Generator().manual_seed(index)).images
    unet.train(was_training)
    return images


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    # Copied from train_scripts/train_ldm.py:accelerator
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    # End copy
    # Copied from train_scripts/train_ldm.py:script_setup
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    create_hub_repo(args)  # main process: a bad token or no network fails now, not after the training
    if accelerator.is_main_process:
        (output_dir / "samples").mkdir(parents=True, exist_ok=True)
    # End copy

    # Models: the frozen teacher (VAE, text encoder, guided UNet), the student and its EMA target network
    teacher = CXRPipeline.from_pretrained(args.pretrained_teacher_model)  # safetensors only, clear errors
    vae, text_encoder, tokenizer, teacher_unet = teacher.vae, teacher.text_encoder, teacher.tokenizer, teacher.unet
    schedule = teacher_schedule(teacher.scheduler.config)
    args.resolution = args.resolution or teacher.default_size
    if args.resolution % teacher.size_multiple:
        raise CXRInputError(f"--resolution must be a multiple of {teacher.size_multiple} for this teacher, got "
                            f"{args.resolution}.")
    for frozen in (vae, text_encoder, teacher_unet):
        frozen.requires_grad_(False).eval()
    # The tiny decoder must fit the teacher's latents: checked now, not after the training.
    tiny_decoder = load_tiny_decoder(args.tiny_autoencoder) if args.tiny_autoencoder else None
    if tiny_decoder is not None:
        try:
            CXRPipeline._check_vae(tiny_decoder, teacher_unet)
        except CXRInputError as error:
            raise CXRInputError(f"--tiny_autoencoder {args.tiny_autoencoder}: {error}") from None
    unet = make_student(teacher_unet, args.unet_time_cond_proj_dim)
    unet.train()
    solver = DDIMSolver(schedule.alphas_cumprod, schedule.config.num_train_timesteps, args.num_ddim_timesteps)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    ema = EMATarget(unet, args.ema_decay)
    register_diffusers_checkpoint_hooks(accelerator, {"unet": unet, "unet_target": ema.unet})

    # Data: train_ldm's cached posterior moments + metadata rows for prompts
    dataset = load_training_dataset(args.train_data_dir, args.dataset_name, "train")
    dataset = select_train_subset(dataset, args.max_train_samples, args.seed)
    vae.to(accelerator.device)
    with accelerator.main_process_first():
        moments = train_ldm.cached_latent_moments(vae, dataset, args.resolution, args.encode_batch_size,
                                                  train_ldm.latent_cache_path(args, vae, dataset), accelerator.device,
                                                  dtype=getattr(torch, args.latents_cache_dtype))
    rows = train_ldm.example_rows(dataset)
    builder = PromptBuilder(training=args.prompt_mode == "training", p_empty=args.prompt_dropout)
    # The loader's own generator keeps its per-epoch seed draw off the global RNG (restored exactly on resume).
    loader = torch.utils.data.DataLoader(torch.arange(len(dataset)), batch_size=args.train_batch_size, shuffle=True,
                                         drop_last=len(dataset) >= args.train_batch_size,
                                         num_workers=args.dataloader_num_workers,
                                         generator=torch.Generator().manual_seed(args.seed))

    trainable = list(unet.parameters())
    # Copied from train_scripts/train_ldm.py:optimizer_and_lr_scheduler
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    updates_per_epoch, args.max_train_steps, num_epochs = training_steps(
        len(loader), args.gradient_accumulation_steps, args.max_train_steps, args.num_train_epochs)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    # End copy
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    # Copied from train_scripts/train_ldm.py:trackers_and_resume with "train_ldm"->"train_lcm_distill"
    if ema:
        ema.to(accelerator.device)
    if accelerator.is_main_process and args.report_to != "none":
        tracker_config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("train_lcm_distill", config=tracker_config)
    history = JsonlLogger(output_dir / "metrics.jsonl") if accelerator.is_main_process else None
    global_step, first_epoch, skip_batches = resume_training(
        accelerator, args.output_dir, args.resume_from_checkpoint, updates_per_epoch, args.gradient_accumulation_steps)
    # End copy

    raw_unet = accelerator.unwrap_model(unet)
    teacher_unet.to(accelerator.device)
    text_encoder.to(accelerator.device)
    solver.to(accelerator.device)
    # The teacher pipeline's own encode_prompt computes the conditioning (tokenisation, truncation, mask), with the
    # "longest" padding the teacher was trained with.
    text_pipe = CXRPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=teacher_unet,
                            scheduler=schedule)
    sampler = lcm_scheduler(teacher.scheduler.config, args)
    logger.info(f"{len(dataset)} training images, latents {tuple(moments.shape[1:])}, {args.max_train_steps} steps "
                f"of {args.train_batch_size}; teacher {args.pretrained_teacher_model} "
                f"({schedule.config.prediction_type}), student {sum(p.numel() for p in raw_unet.parameters()):,} "
                f"parameters, w in [{args.w_min}, {args.w_max}]")
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="train_lcm_distill",
                    disable=not accelerator.is_local_main_process)
    start, last_logs = time.time(), {}
    scaling = vae.config.scaling_factor
    # Copied from train_scripts/train_ldm.py:epoch_loop
    for epoch in range(first_epoch, num_epochs):
        loader.set_epoch(epoch)  # the shuffle order depends only on (seed, epoch): exact across resume
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        skip_batches = 0
        for batch in epoch_loader:
            if global_step >= args.max_train_steps:  # resumed at (or past) the end: just finalise
                break
            # End copy
            with accelerator.accumulate(unet):
                indices = batch.cpu()  # a batch of dataset indices
                posterior = DiagonalGaussianDistribution(moments[indices].to(accelerator.device, torch.float32))
                latents = posterior.sample() * scaling
                prompts = train_ldm.prompts_for(rows, indices.tolist(), global_step, args, builder)
                with torch.no_grad():
                    states, states_mask, _, _ = text_pipe.encode_prompt(prompts, latents.device, 1, False,
                                                                        padding="longest")
                    empty, empty_mask, _, _ = text_pipe.encode_prompt([""] * len(prompts), latents.device, 1, False,
                                                                      padding="longest")
                loss = distillation_loss(unet, teacher_unet, ema.unet, latents, (states, states_mask),
                                         (empty, empty_mask), schedule, solver, args)
                # Copied from train_scripts/train_ldm.py:optimizer_step
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                # End copy

            # Copied from train_scripts/train_ldm.py:end_of_step
            if not accelerator.sync_gradients:
                continue
            if ema:
                ema.step(unet.parameters())
            global_step += 1
            progress.update(1)
            # End copy
            # Copied from train_scripts/train_ldm.py:log_step
            last_logs = {"loss": loss.item(), "lr": lr_scheduler.get_last_lr()[0]}
            progress.set_postfix(loss=f"{last_logs['loss']:.4f}")
            if args.report_to != "none":
                accelerator.log(last_logs, step=global_step)
            if accelerator.is_main_process and global_step % args.logging_steps == 0:
                history.log(global_step, **last_logs)
            # End copy

            if accelerator.is_main_process and (global_step % args.validation_steps == 0):
                shipped = ema.unet if args.use_ema else raw_unet  # validate the weights that will be shipped
                images = generate_validation(vae, text_encoder, tokenizer, shipped, sampler, args)
                make_grid(images, cols=len(images)).save(output_dir / "samples" / f"step-{global_step:06d}.png")
                save_loss_plot({"loss": history.history.get("loss", [])}, output_dir / "loss.png", "LCM loss")
            # Copied from train_scripts/train_ldm.py:checkpoint_and_stop
            if global_step % args.checkpointing_steps == 0 and accelerator.is_main_process:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break
    progress.close()
    accelerator.wait_for_everyone()
    # End copy

    if accelerator.is_main_process:
        shipped = ema.unet if args.use_ema else raw_unet
        shipped.eval()
        pipe = CXRPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=shipped, scheduler=sampler)
        pipe.save_pretrained(output_dir / "pipeline")
        images = generate_validation(vae, text_encoder, tokenizer, shipped, sampler, args)
        make_grid(images, cols=len(images)).save(output_dir / "pipeline" / "samples.png")
        save_loss_plot({"loss": history.history.get("loss", [])}, output_dir / "loss.png", "LCM loss")
        teacher_name = str(args.pretrained_teacher_model)
        zero_snr = bool(schedule.config.rescale_betas_zero_snr)
        summary = {"global_step": global_step, "final_loss": last_logs.get("loss"), "train_images": len(dataset),
                   "seconds_this_run": round(time.time() - start, 1), "teacher": teacher_name,
                   "teacher_prediction_type": schedule.config.prediction_type, "teacher_zero_terminal_snr": zero_snr,
                   "num_ddim_timesteps": args.num_ddim_timesteps, "w_min": args.w_min, "w_max": args.w_max,
                   "guidance_scale_range": [args.w_min + 1, args.w_max + 1], "loss_type": args.loss_type,
                   "huber_c": args.huber_c, "ema_decay": args.ema_decay,
                   "shipped_weights": "target (EMA)" if args.use_ema else "online student",
                   "validation_prompts": args.validation_prompts}
        (output_dir / "pipeline" / "training_summary.json").write_text(json.dumps(summary, indent=2))
        local_teacher = os.path.exists(teacher_name)
        save_model_card(
            output_dir / "pipeline", "lcm",
            card_data={"license": "apache-2.0", "library_name": "diffusers", "pipeline_tag": "text-to-image",
                       "tags": ["chest-x-ray", "medical-imaging", "synthetic-data", "lcm", "latent-consistency",
                                "not-for-clinical-use"],
                       **({} if local_teacher else {"base_model": teacher_name})},
            model_name=args.hub_model_id or "cxr-lcm", repo_id=args.hub_model_id or str(output_dir / "pipeline"),
            teacher=teacher_name,
            teacher_schedule=f"{schedule.config.prediction_type} prediction"
                             f"{', zero terminal SNR' if zero_snr else ''}, "
                             f"{schedule.config.num_train_timesteps} timesteps",
            distillation=f"DDIM solver on {args.num_ddim_timesteps} timesteps, "
                         f"{'pseudo-Huber loss (c ' + str(args.huber_c) + ')' if args.loss_type == 'huber' else 'L2 loss'}, "
                         f"target network EMA decay {args.ema_decay}",
            guidance_range=f"{args.w_min + 1:g} to {args.w_max + 1:g} (guidance_scale; w = guidance_scale - 1 in "
                           f"[{args.w_min:g}, {args.w_max:g}])",
            shipped_weights=summary["shipped_weights"],
            time_cond_proj_dim=shipped.config.time_cond_proj_dim,
            unet_parameters=f"{sum(p.numel() for p in shipped.parameters()):,}",
            data=f"{Path(args.train_data_dir).name if args.train_data_dir else args.dataset_name} "
                 f"({len(dataset)} training images)",
            steps=global_step, batch=args.train_batch_size,
            hardware=f"{accelerator.device.type}, {accelerator.num_processes} process(es), "
                     f"{torch.get_num_threads()} torch thread(s)",
            hours=f"{(time.time() - start) / 3600:.2f} (this run)",
            losses=train_ldm.describe_final_loss(history.history.get("loss", [])),
            citations="\n".join(f"- {c}" for c in DATA_CITATIONS.values()),
        )
        export_fast_folder(output_dir / "fast", shipped, sampler, args, schedule, summary, history, dataset,
                           accelerator, start)
        accelerator.print(json.dumps(summary, indent=2))
        if args.push_to_hub:
            push_folder(output_dir / "pipeline", args.hub_model_id, token=args.hub_token)
    accelerator.end_training()


def export_fast_folder(folder: Path, unet, scheduler, args, schedule, summary: dict, history, dataset, accelerator,
                       start: float) -> Path:
    """
    The fast folder that ships beside the teacher: `unet/` (the student), `scheduler/` (its LCMScheduler), `README.md`
    (the card, naming the teacher) and, with `--tiny_autoencoder`, a copy of that folder as `vae_tiny/`; it loads
    with `cxr_diffusers.load_fast_pipeline(teacher, folder)`.
    """
    unet.save_pretrained(folder / UNET_FOLDER)
    scheduler.save_pretrained(folder / SCHEDULER_FOLDER)
    tiny_text = "not included: the teacher's VAE decodes (add one with train_lcm_distill.py --tiny_autoencoder)"
    if args.tiny_autoencoder:
        shutil.copytree(args.tiny_autoencoder, folder / TINY_DECODER_FOLDER, dirs_exist_ok=True)
        tiny_text = (f"the tiny decoder (AutoencoderTiny for the teacher's VAE latents) from {args.tiny_autoencoder}; "
                     "its own card is vae_tiny/README.md")
    (folder / "training_summary.json").write_text(json.dumps(
        {**summary, "tiny_autoencoder": str(args.tiny_autoencoder) if args.tiny_autoencoder else None}, indent=2))
    teacher_name = str(args.pretrained_teacher_model)
    zero_snr = bool(schedule.config.rescale_betas_zero_snr)
    save_model_card(
        folder, "lcm_fast",
        card_data={"license": "apache-2.0", "library_name": "diffusers", "pipeline_tag": "text-to-image",
                   "tags": ["chest-x-ray", "medical-imaging", "synthetic-data", "lcm", "latent-consistency",
                            "not-for-clinical-use"],
                   **({} if os.path.exists(teacher_name) else {"base_model": teacher_name})},
        model_name=(args.hub_model_id + "-fast") if args.hub_model_id else "cxr-lcm-fast", repo_id=str(folder),
        teacher=teacher_name,
        teacher_schedule=f"{schedule.config.prediction_type} prediction{', zero terminal SNR' if zero_snr else ''}, "
                         f"{schedule.config.num_train_timesteps} timesteps",
        scheduler=f"original_inference_steps {scheduler.config.original_inference_steps}, timestep_scaling "
                  f"{scheduler.config.timestep_scaling:g}",
        tiny_decoder=tiny_text,
        distillation=f"DDIM solver on {args.num_ddim_timesteps} timesteps, "
                     f"{'pseudo-Huber loss (c ' + str(args.huber_c) + ')' if args.loss_type == 'huber' else 'L2 loss'}, "
                     f"target network EMA decay {args.ema_decay}",
        guidance_range=f"{args.w_min + 1:g} to {args.w_max + 1:g} (guidance_scale)",
        shipped_weights=summary["shipped_weights"],
        time_cond_proj_dim=unet.config.time_cond_proj_dim,
        unet_parameters=f"{sum(p.numel() for p in unet.parameters()):,}",
        data=f"{Path(args.train_data_dir).name if args.train_data_dir else args.dataset_name} "
             f"({len(dataset)} training images)",
        steps=summary["global_step"], batch=args.train_batch_size,
        hardware=f"{accelerator.device.type}, {accelerator.num_processes} process(es), "
                 f"{torch.get_num_threads()} torch thread(s)",
        hours=f"{(time.time() - start) / 3600:.2f} (this run)",
        losses=train_ldm.describe_final_loss(history.history.get("loss", [])),
        citations="\n".join(f"- {c}" for c in DATA_CITATIONS.values()),
    )
    return folder


if __name__ == "__main__":
    sys.exit(run_script(main))
