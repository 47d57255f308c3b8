#!/usr/bin/env python
"""Train `CXRAutoencoderKL` on chest X-rays.

    accelerate launch train_scripts/train_vae.py --config train_scripts/configs/small.json \
        --train_data_dir data/cxr-train-256 --output_dir runs/vae-small

The VAE is fully convolutional, so it trains on random crops (`--crop_size`) of the full-resolution images, which is
several times faster than full images; validation PSNR/SSIM and the sharpness ratio are measured on full `--resolution`
images. Loss: MSE per pixel (+ optional L1) reconstruction + `--kl_weight` x KL per latent element (+ optional
`--edge_loss_weight` x Sobel-gradient loss), and the VAE v2 terms of the latent-diffusion autoencoders:
`--perceptual_weight` x a feature distance on a frozen chest-X-ray classifier (`--perceptual_model`, LPIPS-style) and,
from step `--disc_start`, `--disc_weight` x a PatchGAN hinge loss whose weight adapts to the reconstruction loss
(gradient norms at the decoder's last layer). The discriminator is checkpointed with the VAE (exact resume). At the
end the latent `scaling_factor` (1 / std of training latents) is computed and stored in the config.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from cxr_diffusers import CXRAutoencoderKL, CXRInputError, CXRPatchDiscriminator, get_model_config
from cxr_diffusers.hub import DATA_CITATIONS, create_hub_repo, load_pretrained, push_folder, save_model_card
from cxr_diffusers.losses import (
    ClassifierPerceptualLoss,
    adaptive_adversarial_weight,
    generator_adversarial_loss,
    hinge_discriminator_loss,
)
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
    random_crop,
    register_diffusers_checkpoint_hooks,
    resume_training,
    run_script,
    save_checkpoint,
    save_loss_plot,
    select_train_subset,
    training_steps,
    vae_reconstruction_metrics,
)
from cxr_diffusers.utils.image_grid import make_grid

logger = get_logger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="JSON file of flag defaults (train_scripts/configs/*.json)")
    parser.add_argument("--model_config", default="small", help="named model size: tiny, small or base")
    parser.add_argument("--pretrained_model_name_or_path", default=None, help="start from this VAE folder / Hub id")
    parser.add_argument("--train_data_dir", default=None, help="dataset built by `cxr-diffusers data build`, or images")
    parser.add_argument("--dataset_name", default=None, help="Hub dataset id (alternative to --train_data_dir)")
    parser.add_argument("--validation_split", default="validation", help="split used for validation metrics")
    parser.add_argument("--max_train_samples", type=int, default=None, help="a seeded random subset of the training set")
    parser.add_argument("--num_validation_images", type=int, default=64,
                        help="full validation images for PSNR/SSIM (of the EMA weights when --use_ema)")
    parser.add_argument("--resolution", type=int, default=256, help="full image size")
    parser.add_argument("--crop_size", type=int, default=128, help="random crop size for training")
    # Training flags whose defaults are this script's own
    parser.add_argument("--train_batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--adam_weight_decay", type=float, default=0.0)
    parser.add_argument("--lr_warmup_steps", type=int, default=100)
    parser.add_argument("--ema_decay", type=float, default=0.999)
    parser.add_argument("--dataloader_num_workers", type=int, default=0)
    # The standard training flags of diffusers' examples, the same in train_ldm.py and train_ddpm.py
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
    parser.add_argument("--kl_weight", type=float, default=1e-4)
    parser.add_argument("--l1_weight", type=float, default=0.0, help="extra L1 reconstruction term")
    parser.add_argument("--edge_loss_weight", type=float, default=0.0, help="Sobel-gradient L1 term (sharpness)")
    parser.add_argument("--perceptual_weight", type=float, default=0.0,
                        help="weight of the perceptual feature loss on --perceptual_model (0 = off)")
    parser.add_argument("--perceptual_model", default=None,
                        help="classifier folder whose frozen ResNet backbone gives the perceptual features "
                             "(default: the bundled pretrained/pneumonia-classifier)")
    parser.add_argument("--disc_weight", type=float, default=0.0,
                        help="weight of the PatchGAN hinge loss, times the adaptive weight (0 = no discriminator)")
    parser.add_argument("--disc_start", type=int, default=0,
                        help="global step from which the discriminator trains and its loss applies")
    parser.add_argument("--disc_learning_rate", type=float, default=None, help="default: --learning_rate")
    parser.add_argument("--disc_channels", type=int, default=32, help="channels of the discriminator's first layer")
    parser.add_argument("--disc_layers", type=int, default=3, help="strided layers of the discriminator")
    parser.add_argument("--disc_norm", default="batch", choices=["batch", "spectral"],
                        help="discriminator normalisation: BatchNorm (pix2pix/taming) or spectral norm without BatchNorm")
    parser.add_argument("--train_decoder_only", action="store_true",
                        help="freeze the encoder (latent space unchanged, e.g. while an LDM trains on it); no KL")
    parser.add_argument("--decoder_input", default="sample", choices=["sample", "mode"],
                        help="latents the decoder learns from: posterior samples (default) or the posterior mode, "
                             "which is what reconstruction (and PSNR) uses")
    parser.add_argument("--decoder_layers_per_block", type=int, default=None,
                        help="a deeper decoder: with --pretrained_model_name_or_path the added blocks start as the "
                             "identity (same reconstructions), then train (use with --train_decoder_only)")
    parser.add_argument("--scaling_factor_samples", type=int, default=256, help="images used for scaling_factor")
    parser.add_argument("--output_dir", default="runs/vae")
    # Copied from train_scripts/train_ldm.py:logging_and_hub_flags
    parser.add_argument("--logging_dir", default="logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report_to", default="tensorboard", help='"tensorboard", "none", ...')
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None, help="Hub token for --push_to_hub (default: the saved login)")
    # End copy
    args = apply_config_file(parser, argv, section="vae")
    check_positive(parser, args, "resolution", "crop_size", "train_batch_size", "learning_rate",
                   "gradient_accumulation_steps", "checkpointing_steps", "validation_steps", "max_train_steps",
                   "decoder_layers_per_block", "disc_learning_rate", "disc_channels", "disc_layers")
    for name in ("perceptual_weight", "disc_weight", "disc_start", "kl_weight", "l1_weight", "edge_loss_weight"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.perceptual_weight:
        if args.perceptual_model is None:
            from cxr_diffusers.evaluation.runner import find_classifier

            args.perceptual_model = find_classifier()
        if args.perceptual_model is None or not (Path(args.perceptual_model) / "config.json").is_file():
            parser.error(f"--perceptual_model {args.perceptual_model} is not a classifier folder (needed by "
                         "--perceptual_weight); train one with train_classifier.py or give its path")
    if args.crop_size > args.resolution:
        parser.error(f"--crop_size {args.crop_size} cannot exceed --resolution {args.resolution}")
    factor = 2 ** (len(get_model_config(args.model_config)["vae"]["block_out_channels"]) - 1)
    for name in ("resolution", "crop_size"):
        if getattr(args, name) % factor:
            parser.error(f"--{name} must be a multiple of {factor} (the VAE's downsampling)")
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


def sobel_edges(images: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=images.device) / 4
    kernels = torch.stack([kernel, kernel.T])[:, None].to(images.dtype)
    return F.conv2d(images, kernels, padding=1)


@torch.no_grad()
def compute_scaling_factor(vae, dataset, resolution, count, device) -> float:
    """1 / std of posterior samples of up to `count` training images (so scaled latents have unit variance)."""
    vae.eval()
    generator = torch.Generator(device="cpu").manual_seed(0)
    latents = []
    for index in range(min(count, len(dataset))):
        x = image_to_tensor(dataset[index]["image"], resolution)[None].to(device)
        latents.append(vae.encode(x).latent_dist.sample(generator=generator).flatten().cpu())
    return float(1.0 / torch.cat(latents).std())


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

    # Model
    if args.pretrained_model_name_or_path:
        vae = load_pretrained(CXRAutoencoderKL, args.pretrained_model_name_or_path, "VAE")
        if args.decoder_layers_per_block:
            try:
                vae = vae.with_deeper_decoder(args.decoder_layers_per_block)
            except CXRInputError as error:
                raise CXRInputError(f"--decoder_layers_per_block: {error}") from None
    else:
        vae = CXRAutoencoderKL(**{**get_model_config(args.model_config)["vae"], "sample_size": args.resolution,
                                  "decoder_layers_per_block": args.decoder_layers_per_block})
    vae.train()
    if args.train_decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    if args.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    ema = EMAModel(vae.parameters(), decay=args.ema_decay, model_cls=CXRAutoencoderKL, model_config=vae.config) \
        if args.use_ema else None
    discriminator = CXRPatchDiscriminator(in_channels=vae.config.out_channels, base_channels=args.disc_channels,
                                          num_layers=args.disc_layers, norm=args.disc_norm) if args.disc_weight else None
    perceptual = ClassifierPerceptualLoss.from_pretrained(args.perceptual_model).to(accelerator.device) \
        if args.perceptual_weight else None
    checkpointed = {"vae": vae, **({"discriminator": discriminator} if discriminator is not None else {})}
    register_diffusers_checkpoint_hooks(accelerator, checkpointed, {"vae_ema": ema} if ema else None)

    # Data: random crops of the resized/padded full image
    train_set = load_training_dataset(args.train_data_dir, args.dataset_name, "train")
    train_set = select_train_subset(train_set, args.max_train_samples, args.seed)
    try:
        eval_set = load_training_dataset(args.train_data_dir, args.dataset_name, args.validation_split)
    except Exception:  # no validation split: use the tail of train (reported in the card)
        eval_set = train_set.select(range(max(0, len(train_set) - args.num_validation_images), len(train_set)))

    def to_tensor(example):
        return {"pixel_values": image_to_tensor(example["image"], args.resolution)}

    raw_train_set = train_set
    train_set = train_set.with_transform(make_transform(to_tensor), columns=["image"])
    # Copied from train_scripts/train_ddpm.py:image_loader
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.train_batch_size, shuffle=True, collate_fn=collate_images,
        num_workers=args.dataloader_num_workers, drop_last=len(train_set) >= args.train_batch_size,
        generator=torch.Generator().manual_seed(args.seed),  # keeps the global RNG exact across resume
    )
    # End copy

    trainable = [p for p in vae.parameters() if p.requires_grad]
    # Copied from train_scripts/train_ldm.py:optimizer_and_lr_scheduler
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    updates_per_epoch, args.max_train_steps, num_epochs = training_steps(
        len(loader), args.gradient_accumulation_steps, args.max_train_steps, args.num_train_epochs)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    # End copy
    vae, optimizer, loader, lr_scheduler = accelerator.prepare(vae, optimizer, loader, lr_scheduler)
    if discriminator is not None:
        disc_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=args.disc_learning_rate or args.learning_rate,
                                           betas=(0.5, 0.9), weight_decay=0.0)
        discriminator, disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)
    # Copied from train_scripts/train_ldm.py:trackers_and_resume with "train_ldm"->"train_vae"
    if ema:
        ema.to(accelerator.device)
    if accelerator.is_main_process and args.report_to != "none":
        tracker_config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("train_vae", config=tracker_config)
    history = JsonlLogger(output_dir / "metrics.jsonl") if accelerator.is_main_process else None
    global_step, first_epoch, skip_batches = resume_training(
        accelerator, args.output_dir, args.resume_from_checkpoint, updates_per_epoch, args.gradient_accumulation_steps)
    # End copy

    logger.info(f"{len(train_set)} training images, {args.max_train_steps} steps of {args.train_batch_size} "
                f"{args.crop_size}px crops, {sum(p.numel() for p in vae.parameters()):,} parameters")
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="train_vae",
                    disable=not accelerator.is_local_main_process)
    start = time.time()
    unwrapped = accelerator.unwrap_model(vae)
    last_logs: dict = {}
    last_validation = None  # (step, metrics, pairs) of the newest in-loop validation of the EMA weights
    # Copied from train_scripts/train_ldm.py:epoch_loop
    for epoch in range(first_epoch, num_epochs):
        loader.set_epoch(epoch)  # the shuffle order depends only on (seed, epoch): exact across resume
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        skip_batches = 0
        for batch in epoch_loader:
            if global_step >= args.max_train_steps:  # resumed at (or past) the end: just finalise
                break
            # End copy
            with accelerator.accumulate(*[m for m in (vae, discriminator) if m is not None]):
                # Crops are drawn in the loop from a per-step generator (the loader prefetches a batch, so
                # drawing them in the transform would make resumed runs diverge).
                crop_generator = torch.Generator().manual_seed(args.seed * 1_000_003 + global_step)
                x = torch.stack([random_crop(image, args.crop_size, crop_generator) for image in batch["pixel_values"]])
                # Call the prepared model (DDP, autocast), not the unwrapped one.
                output = vae(x, sample_posterior=args.decoder_input == "sample")
                posterior, reconstruction = output.latent_dist, output.sample
                mse = F.mse_loss(reconstruction, x)
                kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element
                reconstruction_loss = mse
                if args.l1_weight:
                    reconstruction_loss = reconstruction_loss + args.l1_weight * F.l1_loss(reconstruction, x)
                edge = F.l1_loss(sobel_edges(reconstruction), sobel_edges(x)) if args.edge_loss_weight else None
                if edge is not None:
                    reconstruction_loss = reconstruction_loss + args.edge_loss_weight * edge
                perceptual_loss = perceptual(reconstruction, x) if perceptual is not None else None
                if perceptual_loss is not None:
                    reconstruction_loss = reconstruction_loss + args.perceptual_weight * perceptual_loss
                loss = reconstruction_loss if args.train_decoder_only else reconstruction_loss + args.kl_weight * kl
                adversarial = discriminator is not None and global_step >= args.disc_start
                g_loss = adaptive_weight = None
                if adversarial:
                    discriminator.requires_grad_(False)
                    g_loss = generator_adversarial_loss(discriminator(reconstruction))
                    adaptive_weight = adaptive_adversarial_weight(
                        reconstruction_loss, g_loss, unwrapped.decoder.conv_out.weight)
                    loss = loss + args.disc_weight * adaptive_weight * g_loss
                # Copied from train_scripts/train_ldm.py:optimizer_step
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                # End copy

                d_loss = None
                if adversarial:  # the discriminator's step, on the reconstructions just made
                    discriminator.requires_grad_(True)
                    d_loss = hinge_discriminator_loss(discriminator(x), discriminator(reconstruction.detach()))
                    accelerator.backward(d_loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(discriminator.parameters(), args.max_grad_norm)
                    disc_optimizer.step()
                    disc_optimizer.zero_grad()

            # Copied from train_scripts/train_ldm.py:end_of_step with unet->vae
            if not accelerator.sync_gradients:
                continue
            if ema:
                ema.step(vae.parameters())
            global_step += 1
            progress.update(1)
            # End copy
            logs = last_logs = {"loss": loss.item(), "mse": mse.item(), "kl": kl.item(), "lr": lr_scheduler.get_last_lr()[0]}
            for name, value in (("edge", edge), ("perceptual", perceptual_loss), ("g_loss", g_loss),
                                ("d_loss", d_loss), ("adaptive_weight", adaptive_weight)):
                if value is not None:
                    logs[name] = value.item()
            progress.set_postfix(loss=f"{logs['loss']:.4f}", mse=f"{logs['mse']:.4f}")
            if args.report_to != "none":
                accelerator.log(logs, step=global_step)
            if accelerator.is_main_process and global_step % args.logging_steps == 0:
                history.log(global_step, **logs)

            if global_step % args.validation_steps == 0 or global_step == args.max_train_steps:
                if accelerator.is_main_process:
                    with ema_weights(ema, unwrapped):  # validate the weights that will be shipped
                        metrics, pairs = vae_reconstruction_metrics(unwrapped, eval_set, args.resolution,
                                                                    args.num_validation_images, accelerator.device)
                    last_validation = (global_step, metrics, pairs)
                    history.log(global_step, val_psnr=metrics["psnr"], val_ssim=metrics["ssim"],
                                val_sharpness_ratio=metrics["sharpness_ratio"])
                    accelerator.print(f"step {global_step}: val PSNR {metrics['psnr']:.2f} dB SSIM {metrics['ssim']:.4f} "
                                      f"sharpness ratio {metrics['sharpness_ratio']:.3f}")
                    from PIL import Image
                    tiles = [Image.fromarray(a) for pair in pairs for a in pair]
                    make_grid(tiles, cols=4).save(output_dir / "samples" / f"reconstructions-{global_step:06d}.png")
                    save_loss_plot({k: v for k, v in history.history.items() if k in ("loss", "mse", "edge", "perceptual", "d_loss")},
                                   output_dir / "loss.png", "VAE training loss")
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

    # Final model: EMA weights, scaling factor, metrics, card
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(vae)
        if ema:
            ema.copy_to(final.parameters())
        if last_validation is not None and last_validation[0] == global_step:  # the last step validated these weights
            metrics, pairs = last_validation[1:]
        else:
            metrics, pairs = vae_reconstruction_metrics(final, eval_set, args.resolution, args.num_validation_images,
                                                        accelerator.device)
        if args.train_decoder_only:  # same encoder, same latent space: keep the scaling factor the LDM uses
            scaling = final.config.scaling_factor
        else:
            scaling = compute_scaling_factor(final, raw_train_set, args.resolution, args.scaling_factor_samples,
                                             accelerator.device)
        final.register_to_config(scaling_factor=scaling, sample_size=args.resolution)
        final.save_pretrained(output_dir / "vae")
        from PIL import Image
        tiles = [Image.fromarray(a) for pair in pairs for a in pair]
        make_grid(tiles, cols=4).save(output_dir / "vae" / "reconstructions.png")
        save_loss_plot({k: v for k, v in history.history.items() if k in ("loss", "mse", "edge", "perceptual", "d_loss")},
                       output_dir / "loss.png", "VAE training loss")
        summary = {"global_step": global_step, "scaling_factor": scaling, "validation": metrics,
                   "train_images": len(train_set), "seconds_this_run": round(time.time() - start, 1),
                   "final_loss": last_logs.get("loss"), "final_mse": last_logs.get("mse")}
        (output_dir / "vae" / "training_summary.json").write_text(json.dumps(summary, indent=2))
        config = final.config
        save_model_card(
            output_dir / "vae", "vae",
            card_data={"license": "apache-2.0", "library_name": "diffusers", "tags": ["chest-x-ray", "vae",
                                                                                      "not-for-clinical-use"]},
            model_name=args.hub_model_id or "CXRAutoencoderKL",
            architecture=f"blocks {list(config.block_out_channels)}, {config.layers_per_block} layer(s)/block, "
                         f"attention at the {config.attention_levels} lowest levels",
            parameters=f"{sum(p.numel() for p in final.parameters()):,}",
            latent=f"{config.latent_channels} channels, {final.downsample_factor}x downsampling",
            scaling_factor=f"{scaling:.4f}", data=str(args.train_data_dir or args.dataset_name),
            steps=global_step, batch=args.train_batch_size, crop=args.crop_size, hardware=str(accelerator.device),
            hours=f"{(time.time() - start) / 3600:.2f} (this run)",
            losses=f"loss {summary['final_loss']:.5f}" if summary["final_loss"] is not None else "see metrics.jsonl", resolution=args.resolution, num_eval=metrics["num_images"],
            metrics=f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.4f}",
            repo_id=args.hub_model_id or str(output_dir / "vae"), citations="\n".join(f"- {c}" for c in DATA_CITATIONS.values()),
        )
        accelerator.print(json.dumps(summary, indent=2))
        if args.push_to_hub:
            push_folder(output_dir / "vae", args.hub_model_id, token=args.hub_token)
    accelerator.end_training()


if __name__ == "__main__":
    sys.exit(run_script(main))
