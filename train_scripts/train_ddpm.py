#!/usr/bin/env python
"""Train an unconditional pixel-space DDPM (diffusers `UNet2DModel` + `DDPMScheduler`) on grayscale chest X-rays.

    accelerate launch train_scripts/train_ddpm.py --config train_scripts/configs/small.json \
        --train_data_dir data/cxr-train-256 --output_dir runs/ddpm-small

The seed's pixel-space baseline: no VAE, no text. A one-channel `UNet2DModel` (sinusoidal time embedding) learns to
denoise `--resolution` images in [-1, 1] under the linear beta schedule of Ho et al. (2020). No flips: a chest
radiograph has a left and a right. Validation grids (`samples/step-*.png`) are sampled with DDIM in
`--ddpm_num_inference_steps` steps from a fixed generator, so grids at different steps are comparable. Ends with
a `diffusers.DDPMPipeline` (EMA weights) in `<output_dir>/pipeline` that `DDPMPipeline.from_pretrained` loads.
The noise-schedule and sampling flags have the names of diffusers' `examples/unconditional_image_generation/
train_unconditional.py` (`--ddpm_num_steps`, `--ddpm_beta_schedule`, `--ddpm_num_inference_steps`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from cxr_diffusers.configs import MODEL_CONFIGS, get_model_config
from cxr_diffusers.hub import DATA_CITATIONS, create_hub_repo, load_pretrained, push_folder, save_model_card
from cxr_diffusers.training_utils import (
    JsonlLogger,
    apply_config_file,
    check_output_dirs,
    check_positive,
    collate_images,
    ema_weights,
    image_to_tensor,
    load_training_dataset,
    make_transform,
    register_diffusers_checkpoint_hooks,
    resume_training,
    run_script,
    save_checkpoint,
    save_loss_plot,
    select_train_subset,
    training_steps,
)
from cxr_diffusers.utils.image_grid import make_grid

logger = get_logger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="JSON file of flag defaults (train_scripts/configs/*.json)")
    parser.add_argument("--model_config", default="small",
                        help=f"named model size (the `ddpm` entry of cxr_diffusers.configs): {', '.join(MODEL_CONFIGS)}")
    parser.add_argument("--pretrained_model_name_or_path", default=None,
                        help="continue from a saved DDPMPipeline (folder or Hub id)")
    parser.add_argument("--train_data_dir", default=None, help="dataset built by `cxr-diffusers data build`, or images")
    parser.add_argument("--dataset_name", default=None, help="Hub dataset id (alternative to --train_data_dir)")
    parser.add_argument("--max_train_samples", type=int, default=None, help="a seeded random subset of the training set")
    parser.add_argument("--resolution", type=int, default=64, help="image size (resized and padded, aspect kept)")
    parser.add_argument("--prediction_type", default="epsilon", choices=["epsilon", "v_prediction", "sample"])
    parser.add_argument("--ddpm_num_steps", type=int, default=1000, help="diffusion timesteps of the noise schedule")
    parser.add_argument("--ddpm_beta_schedule", default="linear",
                        choices=["linear", "scaled_linear", "squaredcos_cap_v2"])
    parser.add_argument("--ddpm_num_inference_steps", type=int, default=50,
                        help="DDIM steps of the validation sample grids")
    parser.add_argument("--num_validation_images", type=int, default=16, help="images in each sample grid")
    # Training flags whose defaults are this script's own
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-6)
    parser.add_argument("--lr_warmup_steps", type=int, default=500)
    parser.add_argument("--ema_decay", type=float, default=0.9999)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    # The standard training flags of diffusers' examples, the same in train_vae.py and train_ldm.py
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
    parser.add_argument("--output_dir", default="runs/ddpm")
    # Copied from train_scripts/train_ldm.py:logging_and_hub_flags
    parser.add_argument("--logging_dir", default="logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report_to", default="tensorboard", help='"tensorboard", "none", ...')
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None, help="Hub token for --push_to_hub (default: the saved login)")
    # End copy
    args = apply_config_file(parser, argv, section="ddpm")
    check_positive(parser, args, "resolution", "train_batch_size", "learning_rate", "gradient_accumulation_steps",
                   "checkpointing_steps", "validation_steps", "max_train_steps", "ddpm_num_inference_steps",
                   "num_validation_images", "ddpm_num_steps", "num_train_epochs")
    if args.lr_warmup_steps < 0:
        parser.error(f"--lr_warmup_steps cannot be negative, got {args.lr_warmup_steps}")
    if not 0 < args.ema_decay < 1:
        parser.error(f"--ema_decay must be in (0, 1), got {args.ema_decay}")
    if args.pretrained_model_name_or_path is None:
        if args.model_config not in MODEL_CONFIGS:
            parser.error(f"--model_config {args.model_config!r} is not one of {', '.join(MODEL_CONFIGS)}")
        factor = 2 ** (len(MODEL_CONFIGS[args.model_config]["ddpm"]["block_out_channels"]) - 1)
        if args.resolution % factor:
            parser.error(f"--resolution must be a multiple of {factor} (the {args.model_config} UNet's downsampling)")
    if args.ddpm_num_inference_steps > args.ddpm_num_steps:
        parser.error(f"--ddpm_num_inference_steps cannot exceed --ddpm_num_steps ({args.ddpm_num_steps})")
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


def build_unet(args) -> UNet2DModel:
    if args.pretrained_model_name_or_path:
        return load_pretrained(UNet2DModel, args.pretrained_model_name_or_path, "DDPM", subfolder="unet")
    return UNet2DModel(**get_model_config(args.model_config)["ddpm"], sample_size=args.resolution, in_channels=1, out_channels=1,
                       time_embedding_type="positional")


@torch.no_grad()
def generate_validation(unet, noise_scheduler, args) -> list:
    """`--num_validation_images` DDIM samples from a fixed generator (the same noise at every validation)."""
    pipe = DDPMPipeline(unet=unet, scheduler=DDIMScheduler.from_config(noise_scheduler.config))
    pipe.set_progress_bar_config(disable=True)
    was_training = unet.training
    unet.eval()
    images = pipe(batch_size=args.num_validation_images, num_inference_steps=args.ddpm_num_inference_steps,
                  generator=torch.Generator().manual_seed(args.seed)).images
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

    # Model and noise schedule
    unet = build_unet(args)
    unet.train()
    noise_scheduler = DDPMScheduler(num_train_timesteps=args.ddpm_num_steps, beta_schedule=args.ddpm_beta_schedule,
                                    prediction_type=args.prediction_type)
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    ema = EMAModel(unet.parameters(), decay=args.ema_decay, model_cls=UNet2DModel, model_config=unet.config) \
        if args.use_ema else None
    register_diffusers_checkpoint_hooks(accelerator, {"unet": unet}, {"unet_ema": ema} if ema else None)
    resolution = unet.config.sample_size

    # Data: whole images resized and padded to the UNet's size, in [-1, 1]; no flips (anatomy has a side)
    train_set = load_training_dataset(args.train_data_dir, args.dataset_name, "train")
    train_set = select_train_subset(train_set, args.max_train_samples, args.seed)

    def to_pixels(example):
        return {"pixel_values": image_to_tensor(example["image"], resolution)}

    train_set = train_set.with_transform(make_transform(to_pixels), columns=["image"])
    # <copy-source: image_loader>
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.train_batch_size, shuffle=True, collate_fn=collate_images,
        num_workers=args.dataloader_num_workers, drop_last=len(train_set) >= args.train_batch_size,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG exact across resume
    )
    # </copy-source>

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
    # Copied from train_scripts/train_ldm.py:trackers_and_resume with "train_ldm"->"train_ddpm"
    if ema:
        ema.to(accelerator.device)
    if accelerator.is_main_process and args.report_to != "none":
        tracker_config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("train_ddpm", config=tracker_config)
    history = JsonlLogger(output_dir / "metrics.jsonl") if accelerator.is_main_process else None
    global_step, first_epoch, skip_batches = resume_training(
        accelerator, args.output_dir, args.resume_from_checkpoint, updates_per_epoch, args.gradient_accumulation_steps)
    # End copy

    raw_unet = accelerator.unwrap_model(unet)
    logger.info(f"{len(train_set)} training images, {args.max_train_steps} steps of {args.train_batch_size} "
                f"{resolution}px images, UNet {sum(p.numel() for p in raw_unet.parameters()):,} parameters")
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="train_ddpm",
                    disable=not accelerator.is_local_main_process)
    start, last_logs = time.time(), {}
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
                images = batch["pixel_values"]
                noise = torch.randn_like(images)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (images.shape[0],),
                                          device=images.device)
                noisy = noise_scheduler.add_noise(images, noise, timesteps)
                prediction = unet(noisy, timesteps).sample
                if args.prediction_type == "epsilon":
                    target = noise
                elif args.prediction_type == "v_prediction":
                    target = noise_scheduler.get_velocity(images, noise, timesteps)
                else:
                    target = images
                loss = F.mse_loss(prediction.float(), target.float())
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

            if accelerator.is_main_process and global_step % args.validation_steps == 0:
                with ema_weights(ema, raw_unet):
                    samples = generate_validation(raw_unet, noise_scheduler, args)
                make_grid(samples, cols=math.ceil(math.sqrt(len(samples)))).save(
                    output_dir / "samples" / f"step-{global_step:06d}.png")
                save_loss_plot({"loss": history.history.get("loss", [])}, output_dir / "loss.png", "DDPM loss")
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

    # Final pipeline: EMA weights, the training scheduler (DDPM); samples, loss curve, summary, card
    if accelerator.is_main_process:
        if ema:
            ema.copy_to(raw_unet.parameters())
        raw_unet.eval()
        pipe = DDPMPipeline(unet=raw_unet, scheduler=noise_scheduler)
        pipe.save_pretrained(output_dir / "pipeline")
        samples = generate_validation(raw_unet, noise_scheduler, args)
        make_grid(samples, cols=math.ceil(math.sqrt(len(samples)))).save(output_dir / "pipeline" / "samples.png")
        save_loss_plot({"loss": history.history.get("loss", [])}, output_dir / "loss.png", "DDPM loss")
        parameters = sum(p.numel() for p in raw_unet.parameters())
        summary = {"global_step": global_step, "final_loss": last_logs.get("loss"), "train_images": len(train_set),
                   "resolution": resolution, "parameters": parameters, "prediction_type": args.prediction_type,
                   "seconds_this_run": round(time.time() - start, 1)}
        (output_dir / "pipeline" / "training_summary.json").write_text(json.dumps(summary, indent=2))
        config = raw_unet.config
        attention = [name for name in config.down_block_types if name.startswith("Attn")]
        save_model_card(
            output_dir / "pipeline", "ddpm",
            card_data={"license": "apache-2.0", "library_name": "diffusers",
                       "pipeline_tag": "unconditional-image-generation",
                       "tags": ["chest-x-ray", "medical-imaging", "synthetic-data", "ddpm", "not-for-clinical-use"]},
            model_name=args.hub_model_id or "cxr-ddpm", repo_id=args.hub_model_id or str(output_dir / "pipeline"),
            architecture=f"UNet2DModel, 1 channel, blocks {list(config.block_out_channels)}, "
                         f"{config.layers_per_block} layer(s)/block, attention in {len(attention)} down level(s) "
                         f"+ mid block, sinusoidal time embedding",
            parameters=f"{parameters:,}", resolution=resolution,
            schedule=f"{noise_scheduler.config.beta_schedule} betas, {noise_scheduler.config.num_train_timesteps} "
                     f"steps, predicts {args.prediction_type}",
            ema=f"decay {args.ema_decay}" if ema else "no",
            data=str(args.train_data_dir or args.dataset_name), steps=global_step, batch=args.train_batch_size,
            hardware=str(accelerator.device), hours=f"{(time.time() - start) / 3600:.2f} (this run)",
            losses="n/a" if summary["final_loss"] is None else f"{summary['final_loss']:.5f} (last step)",
            citations="\n".join(f"- {c}" for c in DATA_CITATIONS.values()),
        )
        accelerator.print(json.dumps(summary, indent=2))
        if args.push_to_hub:
            push_folder(output_dir / "pipeline", args.hub_model_id, token=args.hub_token)
    accelerator.end_training()


if __name__ == "__main__":
    sys.exit(run_script(main))
