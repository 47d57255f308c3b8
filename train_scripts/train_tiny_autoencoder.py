#!/usr/bin/env python
"""Train a small distilled autoencoder (diffusers' `AutoencoderTiny`, TAESD-style) for the latents of a trained VAE.

    accelerate launch train_scripts/train_tiny_autoencoder.py --config train_scripts/configs/small.json \
        --pretrained_vae_model_name_or_path pretrained/cxr-ldm-small --train_data_dir data/cxr-train-256 \
        --latents_cache_dir runs/latent-cache --output_dir runs/tiny-autoencoder

The fast mode's decoder (DESIGN.md, second wave: speed comes from fewer UNet calls, then the decoder). Both halves are
distilled from the frozen base VAE (`--pretrained_vae_model_name_or_path`: a `CXRAutoencoderKL` folder, or a pipeline
folder whose `vae/` is used), as TAESD is: the decoder learns to reconstruct the real image (from the dataset, at
`--resolution`) from the base VAE's *scaled* latents (posterior samples, or the mean with `--decoder_input mean`;
MSE + optional `--l1_weight` and `--edge_loss_weight` Sobel terms as train_vae.py), the encoder to predict the base
VAE's scaled posterior mean (MSE x `--encoder_loss_weight`; `--train_decoder_only` leaves it untrained). The model
therefore keeps `scaling_factor` 1.0, and `pipe.vae = AutoencoderTiny.from_pretrained(...)` works in `CXRPipeline`
unchanged. The size comes from `--model_config` (`MODEL_CONFIGS[name]["tiny_autoencoder"]`, e.g.
`TINY_AUTOENCODER_CONFIG`), the latent channels from the base VAE; `--pretrained_model_name_or_path` continues from a
saved AutoencoderTiny.

The base latents are train_ldm.py's cache (the posterior's moments, encoded once; `--latents_cache_dir` shares them
with the LDM and LCM runs of the same data, VAE encoder and resolution). Training runs on aligned random crops
(`--crop_size`, a multiple of the VAE's downsampling; default the full image) of image and latents. Checkpoints hold
the model and its EMA (`--use_ema`), so `--resume_from_checkpoint latest` is exact. Validation reports PSNR, SSIM and
the sharpness ratio (variance of the Laplacian, reconstruction / real) of the tiny decoder and of the base decoder on
the same held-out images, and their decode time; the final model, its card, `reconstructions.png` (real | base |
tiny) and `training_summary.json` go to `<output_dir>/vae_tiny` (the `vae_tiny/` of a fast folder:
train_lcm_distill.py `--tiny_autoencoder`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers import AutoencoderTiny
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm

from cxr_diffusers import CXRAutoencoderKL, CXRInputError, get_model_config
from cxr_diffusers.evaluation.fidelity import sharpness_ratio
from cxr_diffusers.evaluation.image_quality import psnr, ssim
from cxr_diffusers.evaluation.timing import count_flops, time_call
from cxr_diffusers.fast import load_tiny_decoder
from cxr_diffusers.hub import (
    DATA_CITATIONS,
    create_hub_repo,
    load_pretrained,
    push_folder,
    save_model_card,
)
from cxr_diffusers.pipelines.pipeline_cxr import vae_downsample_factor
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


def _load_script(name: str):
    """`train_scripts/<name>.py` as a module (train_ldm's latent cache, train_vae's Sobel edges), loaded afresh."""
    module_name = f"{__name__}__{name}"
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).resolve().with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


train_ldm = _load_script("train_ldm")
train_vae = _load_script("train_vae")
logger = get_logger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="JSON file of flag defaults (train_scripts/configs/*.json)")
    parser.add_argument("--model_config", default="small",
                        help="named size: tiny, small or base (MODEL_CONFIGS[name]['tiny_autoencoder'])")
    parser.add_argument("--pretrained_vae_model_name_or_path", default=None,
                        help="the base CXRAutoencoderKL whose latents the tiny autoencoder learns: a VAE folder, or a "
                             "pipeline folder (its vae/ is used)")
    parser.add_argument("--pretrained_model_name_or_path", default=None,
                        help="continue from a saved AutoencoderTiny (its folder, or a fast folder with vae_tiny/)")
    parser.add_argument("--train_data_dir", default=None, help="dataset built by `cxr-diffusers data build`")
    parser.add_argument("--dataset_name", default=None, help="Hub dataset id (alternative to --train_data_dir)")
    parser.add_argument("--validation_split", default="validation", help="split used for validation metrics")
    parser.add_argument("--max_train_samples", type=int, default=None, help="a seeded random subset of the training set")
    parser.add_argument("--num_validation_images", type=int, default=64,
                        help="held-out images for PSNR/SSIM/sharpness of both decoders (of the EMA weights with --use_ema)")
    parser.add_argument("--resolution", type=int, default=256, help="image size of the latents and the real images")
    parser.add_argument("--crop_size", type=int, default=None,
                        help="train on aligned random crops of this size (a multiple of the VAE's downsampling; "
                             "default: the full --resolution image)")
    parser.add_argument("--train_decoder_only", action="store_true",
                        help="train only the decoder (the encoder, only needed to encode images, stays as it is)")
    parser.add_argument("--decoder_input", default="sample", choices=["sample", "mean"],
                        help="base latents the decoder learns from: posterior samples (what the diffusion model was "
                             "trained on and generates) or the posterior mean")
    parser.add_argument("--encoder_loss_weight", type=float, default=1.0,
                        help="weight of the encoder's MSE to the base VAE's scaled posterior mean")
    parser.add_argument("--l1_weight", type=float, default=0.0, help="extra L1 reconstruction term")
    parser.add_argument("--edge_loss_weight", type=float, default=0.0, help="Sobel-gradient L1 term (sharpness)")
    # Training flags whose defaults are this script's own
    parser.add_argument("--train_batch_size", type=int, default=8)
    parser.add_argument("--learning_rate", type=float, default=5e-4)
    parser.add_argument("--adam_weight_decay", type=float, default=0.0)
    parser.add_argument("--lr_warmup_steps", type=int, default=100)
    parser.add_argument("--ema_decay", type=float, default=0.999)
    parser.add_argument("--dataloader_num_workers", type=int, default=0,
                        help="workers that decode and resize the real images")
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
    parser.add_argument("--encode_batch_size", type=int, default=16)
    parser.add_argument("--latents_cache_dir", default=None,
                        help="train_ldm.py's latent cache folder: reuse (or write) the base VAE's encoded training "
                             "latents, one file per (dataset fingerprint, VAE encoder, resolution) "
                             "(default: <output_dir>, one file)")
    parser.add_argument("--latents_cache_dtype", default="float32", choices=["float32", "float16"],
                        help="dtype of the cached posterior moments (float16 halves memory and disk)")
    parser.add_argument("--output_dir", default="runs/tiny-autoencoder")
    # Copied from train_scripts/train_ldm.py:logging_and_hub_flags
    parser.add_argument("--logging_dir", default="logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report_to", default="tensorboard", help='"tensorboard", "none", ...')
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None, help="Hub token for --push_to_hub (default: the saved login)")
    # End copy
    args = apply_config_file(parser, argv, section="tiny_autoencoder")
    check_positive(parser, args, "resolution", "crop_size", "train_batch_size", "learning_rate",
                   "gradient_accumulation_steps", "checkpointing_steps", "validation_steps", "max_train_steps",
                   "num_validation_images", "encode_batch_size", "num_train_epochs")
    for name in ("encoder_loss_weight", "l1_weight", "edge_loss_weight", "lr_warmup_steps"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema_decay must be in [0, 1), got {args.ema_decay}")
    if args.pretrained_vae_model_name_or_path is None:
        parser.error("give --pretrained_vae_model_name_or_path (the trained VAE, or a pipeline folder with vae/)")
    args.crop_size = args.crop_size or args.resolution
    if args.crop_size > args.resolution:
        parser.error(f"--crop_size {args.crop_size} cannot exceed --resolution {args.resolution}")
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


# ----------------------------------------------------------------------------------------------- models
def load_base_vae(path: str) -> CXRAutoencoderKL:
    """The base VAE: a `CXRAutoencoderKL` folder or Hub id, or the `vae/` of a pipeline folder."""
    folder = Path(path)
    if (folder / "model_index.json").is_file():
        folder = folder / "vae"
    return load_pretrained(CXRAutoencoderKL, str(folder), "base VAE")


def base_pipeline_of(base: str) -> str:
    """The pipeline folder the base VAE belongs to (`base`, or the parent of its `vae/`), for the card's example."""
    path = Path(base)
    for folder in (path, path.parent):
        if (folder / "model_index.json").is_file():
            return str(folder)
    return "PIPELINE_WHOSE_VAE_IS_" + base


def build_tiny_autoencoder(args, base_vae) -> AutoencoderTiny:
    """A saved AutoencoderTiny (`--pretrained_model_name_or_path`) or a new one of `--model_config`'s size, checked
    against the base VAE's latent space (channels and downsampling)."""
    if args.pretrained_model_name_or_path:
        tiny = load_tiny_decoder(args.pretrained_model_name_or_path)
    else:
        config = get_model_config(args.model_config)["tiny_autoencoder"]
        tiny = AutoencoderTiny(**{**config, "latent_channels": base_vae.config.latent_channels,
                                  "in_channels": base_vae.config.in_channels,
                                  "out_channels": base_vae.config.out_channels})
    if tiny.config.latent_channels != base_vae.config.latent_channels:
        raise CXRInputError(f"The tiny autoencoder has {tiny.config.latent_channels} latent channels but the base VAE "
                            f"{base_vae.config.latent_channels}.")
    levels = (len(tiny.config.encoder_block_out_channels), len(tiny.config.decoder_block_out_channels))
    if vae_downsample_factor(tiny) != base_vae.downsample_factor or 2 ** (levels[0] - 1) != base_vae.downsample_factor:
        raise CXRInputError(f"The tiny autoencoder's {levels[0]} encoder / {levels[1]} decoder levels do not give the base "
                            f"VAE's {base_vae.downsample_factor}x downsampling.")
    if float(tiny.config.scaling_factor) != 1.0:
        raise CXRInputError("The tiny autoencoder must keep scaling_factor 1.0: it works on the base VAE's scaled latents.")
    return tiny


class TinyAutoencoderObjective(torch.nn.Module):
    """Both halves in one forward (the module Accelerate prepares, so that DDP synchronises their gradients): the
    decoder's reconstruction of `latents` and, when the encoder trains, its latents of `pixels`."""

    def __init__(self, tiny: AutoencoderTiny, train_encoder: bool):
        super().__init__()
        self.tiny = tiny
        self.train_encoder = train_encoder

    def forward(self, pixels: torch.Tensor, latents: torch.Tensor):
        reconstruction = self.tiny.decode(latents).sample
        predicted = self.tiny.encode(pixels).latents if self.train_encoder else None
        return reconstruction, predicted


# ----------------------------------------------------------------------------------------------- data
class IndexedImages(torch.utils.data.Dataset):
    """`{"index", "pixel_values"}` of each image of a `datasets.Dataset` at `resolution` ([-1, 1], (1, H, W)): the
    index finds the image's cached base latents."""

    def __init__(self, dataset, resolution: int):
        self.dataset, self.resolution = dataset, resolution

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        return {"index": index, "pixel_values": image_to_tensor(self.dataset[int(index)]["image"], self.resolution)}


def aligned_crops(pixels, latents: list[torch.Tensor], crop: int, factor: int, generator: torch.Generator):
    """The same random window of each image and its latents (`crop` pixels = `crop // factor` latent pixels, on the
    latent grid); unchanged when `crop` is the full size."""
    height = pixels.shape[-1] // factor
    size = crop // factor
    if size >= height:
        return pixels, latents
    rows = torch.randint(0, height - size + 1, (pixels.shape[0], 2), generator=generator).tolist()
    pixel_crops = torch.stack([pixels[i, :, t * factor:(t + size) * factor, s * factor:(s + size) * factor]
                               for i, (t, s) in enumerate(rows)])
    latent_crops = [torch.stack([z[i, :, t:t + size, s:s + size] for i, (t, s) in enumerate(rows)]) for z in latents]
    return pixel_crops, latent_crops


@torch.no_grad()
def validation_set(base_vae, dataset, resolution: int, count: int, device) -> dict:
    """`count` held-out images spread evenly over `dataset` (every source of a combined split), their base VAE's
    scaled posterior means and base decoder reconstructions (fixed through training)."""
    count = min(count, len(dataset))
    indices = sorted(set(np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist()))
    pixels = torch.stack([image_to_tensor(dataset[i]["image"], resolution) for i in indices])
    latents, base = [], []
    for start in range(0, len(pixels), 8):
        x = pixels[start:start + 8].to(device)
        mean = base_vae.encode(x).latent_dist.mean
        latents.append((mean * base_vae.config.scaling_factor).cpu())
        base.append(base_vae.decode(mean).sample.clamp(-1, 1).cpu())
    return {"pixels": pixels, "latents": torch.cat(latents), "base": torch.cat(base)}


def _uint8(images: torch.Tensor) -> np.ndarray:
    """`(N, 1, H, W)` in [-1, 1] -> `(N, H, W)` uint8, as a viewer sees the images."""
    return ((images[:, 0].float().clamp(-1, 1).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)


def _scores(real: np.ndarray, decoded: np.ndarray) -> dict:
    return {"psnr": float(np.mean([psnr(a, b) for a, b in zip(real, decoded)])),
            "ssim": float(np.mean([ssim(a, b) for a, b in zip(real, decoded)])),
            "sharpness_ratio": float(sharpness_ratio(decoded[:, None] / 255.0, real[:, None] / 255.0))}


@torch.no_grad()
def tiny_decoder_metrics(tiny: AutoencoderTiny, validation: dict, device, train_encoder: bool = True):
    """
    PSNR / SSIM / sharpness ratio against the real images of the tiny decoder (on the base VAE's scaled posterior
    means) and of the base decoder; the tiny decoder against the base decoder; with the encoder, the MSE of its
    latents to the base VAE's and the tiny autoencoder's own round trip. Returns the metrics and up to 8
    (real, base, tiny) triples of uint8 images.
    """
    was_training = tiny.training
    tiny.eval()
    decoded, roundtrip, encoder_mse = [], [], []
    for start in range(0, len(validation["pixels"]), 8):
        z = validation["latents"][start:start + 8].to(device, tiny.dtype)
        decoded.append(tiny.decode(z).sample.float().cpu())
        if train_encoder:
            predicted = tiny.encode(validation["pixels"][start:start + 8].to(device, tiny.dtype)).latents
            encoder_mse.append(F.mse_loss(predicted.float(), z.float(), reduction="none").mean(dim=(1, 2, 3)).cpu())
            roundtrip.append(tiny.decode(predicted).sample.float().cpu())
    tiny.train(was_training)
    real, base, fast = _uint8(validation["pixels"]), _uint8(validation["base"]), _uint8(torch.cat(decoded))
    metrics = {"tiny_decoder": _scores(real, fast), "base_decoder": _scores(real, base),
               "tiny_vs_base_decoder": {k: v for k, v in _scores(base, fast).items() if k != "sharpness_ratio"},
               "num_images": len(real)}
    metrics["sharpness_ratio_tiny_to_base"] = float(sharpness_ratio(fast[:, None] / 255.0, base[:, None] / 255.0))
    if train_encoder:
        metrics["encoder_latent_mse"] = float(torch.cat(encoder_mse).mean())
        metrics["tiny_roundtrip"] = _scores(real, _uint8(torch.cat(roundtrip)))
    triples = [(real[i], base[i], fast[i]) for i in range(min(8, len(real)))]
    return metrics, triples


@torch.no_grad()
def decode_cost(tiny: AutoencoderTiny, base_vae, latents: torch.Tensor, device) -> dict:
    """GFLOP per image and seconds per image (best of 2, at the batch of `latents`) of both decoders."""
    z = latents.to(device)
    scaling = base_vae.config.scaling_factor
    tiny.eval()
    cost = {"batch": len(z), "torch_threads": torch.get_num_threads(), "device": str(device)}
    for name, decode in (("tiny", lambda x: tiny.decode(x.to(tiny.dtype)).sample),
                         ("base", lambda x: base_vae.decode(x / scaling).sample)):
        cost[f"{name}_gflop_per_image"] = round(count_flops(lambda decode=decode: decode(z[:1])) / 1e9, 3)
        cost[f"{name}_seconds_per_image"] = round(min(time_call(lambda decode=decode: decode(z), repeats=2, warmup=1,
                                                                device=device)) / len(z), 4)
    cost["speedup"] = round(cost["base_seconds_per_image"] / max(cost["tiny_seconds_per_image"], 1e-9), 2)
    return cost


def describe(metrics: dict) -> str:
    tiny, base = metrics["tiny_decoder"], metrics["base_decoder"]
    text = (f"tiny decoder PSNR {tiny['psnr']:.2f} dB, SSIM {tiny['ssim']:.4f}, sharpness ratio "
            f"{tiny['sharpness_ratio']:.3f}; base decoder PSNR {base['psnr']:.2f} dB, SSIM {base['ssim']:.4f}, "
            f"sharpness ratio {base['sharpness_ratio']:.3f}; tiny vs base PSNR "
            f"{metrics['tiny_vs_base_decoder']['psnr']:.2f} dB")
    if "tiny_roundtrip" in metrics:
        text += (f"; tiny encoder + decoder PSNR {metrics['tiny_roundtrip']['psnr']:.2f} dB, encoder latent MSE "
                 f"{metrics['encoder_latent_mse']:.4f}")
    return text


def save_triples(triples, path: Path) -> None:
    from PIL import Image

    make_grid([Image.fromarray(a) for triple in triples for a in triple], cols=3).save(path)


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

    # Models: the frozen base VAE (latents and the reference decoder) and the tiny autoencoder
    base_vae = load_base_vae(args.pretrained_vae_model_name_or_path)
    base_vae.requires_grad_(False).eval()
    factor = base_vae.downsample_factor
    for name in ("resolution", "crop_size"):
        if getattr(args, name) % factor:
            raise CXRInputError(f"--{name} must be a multiple of {factor} (the base VAE's downsampling), got "
                                f"{getattr(args, name)}.")
    tiny = build_tiny_autoencoder(args, base_vae)
    tiny.train()
    train_encoder = not args.train_decoder_only
    if not train_encoder:
        tiny.encoder.requires_grad_(False)
    if args.gradient_checkpointing:
        tiny.enable_gradient_checkpointing()
        # diffusers' EncoderTiny skips its [-1, 1] -> [0, 1] input scaling when checkpointing: decoder only
        tiny.encoder.gradient_checkpointing = False
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    ema = EMAModel(tiny.parameters(), decay=args.ema_decay, model_cls=AutoencoderTiny, model_config=tiny.config) \
        if args.use_ema else None
    register_diffusers_checkpoint_hooks(accelerator, {"vae_tiny": tiny}, {"vae_tiny_ema": ema} if ema else None)

    # Data: train_ldm's cached base latents + the real images at --resolution
    train_set = load_training_dataset(args.train_data_dir, args.dataset_name, "train")
    train_set = select_train_subset(train_set, args.max_train_samples, args.seed)
    validation_from = args.validation_split
    try:
        eval_set = load_training_dataset(args.train_data_dir, args.dataset_name, args.validation_split)
    except Exception:  # no validation split: use the tail of train (reported in the summary)
        eval_set = train_set.select(range(max(0, len(train_set) - args.num_validation_images), len(train_set)))
        validation_from = "train (its last images)"
    base_vae.to(accelerator.device)
    with accelerator.main_process_first():
        moments = train_ldm.cached_latent_moments(base_vae, train_set, args.resolution, args.encode_batch_size,
                                                  train_ldm.latent_cache_path(args, base_vae, train_set),
                                                  accelerator.device, dtype=getattr(torch, args.latents_cache_dtype))
    validation = validation_set(base_vae, eval_set, args.resolution, args.num_validation_images, accelerator.device) \
        if accelerator.is_main_process else None
    # The loader's own generator keeps its per-epoch seed draw off the global RNG (restored exactly on resume).
    loader = torch.utils.data.DataLoader(IndexedImages(train_set, args.resolution), batch_size=args.train_batch_size,
                                         shuffle=True, drop_last=len(train_set) >= args.train_batch_size,
                                         num_workers=args.dataloader_num_workers,
                                         generator=torch.Generator().manual_seed(args.seed))

    objective = TinyAutoencoderObjective(tiny, train_encoder)
    trainable = [p for p in tiny.parameters() if p.requires_grad]
    # Copied from train_scripts/train_ldm.py:optimizer_and_lr_scheduler
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    updates_per_epoch, args.max_train_steps, num_epochs = training_steps(
        len(loader), args.gradient_accumulation_steps, args.max_train_steps, args.num_train_epochs)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    # End copy
    objective, optimizer, loader, lr_scheduler = accelerator.prepare(objective, optimizer, loader, lr_scheduler)
    # Copied from train_scripts/train_ldm.py:trackers_and_resume with "train_ldm"->"train_tiny_autoencoder"
    if ema:
        ema.to(accelerator.device)
    if accelerator.is_main_process and args.report_to != "none":
        tracker_config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("train_tiny_autoencoder", config=tracker_config)
    history = JsonlLogger(output_dir / "metrics.jsonl") if accelerator.is_main_process else None
    global_step, first_epoch, skip_batches = resume_training(
        accelerator, args.output_dir, args.resume_from_checkpoint, updates_per_epoch, args.gradient_accumulation_steps)
    # End copy

    logger.info(f"{len(train_set)} training images, latents {tuple(moments.shape[1:])}, {args.max_train_steps} steps of "
                f"{args.train_batch_size} {args.crop_size}px crops; tiny autoencoder "
                f"{sum(p.numel() for p in tiny.parameters()):,} parameters ({sum(p.numel() for p in trainable):,} "
                f"trainable), base VAE {args.pretrained_vae_model_name_or_path}")
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="train_tiny_autoencoder",
                    disable=not accelerator.is_local_main_process)
    start, last_logs = time.time(), {}
    last_validation = None  # (step, metrics, triples) of the newest in-loop validation of the shipped weights
    scaling = base_vae.config.scaling_factor
    # Copied from train_scripts/train_ldm.py:epoch_loop
    for epoch in range(first_epoch, num_epochs):
        loader.set_epoch(epoch)  # the shuffle order depends only on (seed, epoch): exact across resume
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        skip_batches = 0
        for batch in epoch_loader:
            if global_step >= args.max_train_steps:  # resumed at (or past) the end: just finalise
                break
            # End copy
            with accelerator.accumulate(objective):
                # Posterior noise and crops from a per-step generator: the same in a resumed run.
                generator = torch.Generator().manual_seed(args.seed * 1_000_003 + global_step)
                posterior = DiagonalGaussianDistribution(moments[batch["index"].cpu()].to(accelerator.device,
                                                                                          torch.float32))
                mean = posterior.mean * scaling
                decoder_latents = posterior.sample(generator=generator) * scaling \
                    if args.decoder_input == "sample" else mean
                pixels, (mean, decoder_latents) = aligned_crops(batch["pixel_values"], [mean, decoder_latents],
                                                                args.crop_size, factor, generator)
                # Call the prepared module (DDP, autocast), not the unwrapped model.
                reconstruction, predicted = objective(pixels, decoder_latents)
                reconstruction = reconstruction.float()
                mse = F.mse_loss(reconstruction, pixels)
                loss = mse
                if args.l1_weight:
                    loss = loss + args.l1_weight * F.l1_loss(reconstruction, pixels)
                edge = F.l1_loss(train_vae.sobel_edges(reconstruction), train_vae.sobel_edges(pixels)) \
                    if args.edge_loss_weight else None
                if edge is not None:
                    loss = loss + args.edge_loss_weight * edge
                encoder_mse = F.mse_loss(predicted.float(), mean) if predicted is not None else None
                if encoder_mse is not None:
                    loss = loss + args.encoder_loss_weight * encoder_mse
                # Copied from train_scripts/train_ldm.py:optimizer_step
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(trainable, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                # End copy

            # Copied from train_scripts/train_ldm.py:end_of_step with unet->objective
            if not accelerator.sync_gradients:
                continue
            if ema:
                ema.step(objective.parameters())
            global_step += 1
            progress.update(1)
            # End copy
            logs = last_logs = {"loss": loss.item(), "mse": mse.item(), "lr": lr_scheduler.get_last_lr()[0]}
            for name, value in (("edge", edge), ("encoder_mse", encoder_mse)):
                if value is not None:
                    logs[name] = value.item()
            progress.set_postfix(loss=f"{logs['loss']:.4f}", mse=f"{logs['mse']:.4f}")
            if args.report_to != "none":
                accelerator.log(logs, step=global_step)
            if accelerator.is_main_process and global_step % args.logging_steps == 0:
                history.log(global_step, **logs)

            if accelerator.is_main_process and (global_step % args.validation_steps == 0
                                                or global_step == args.max_train_steps):
                with ema_weights(ema, tiny):  # validate the weights that will be shipped
                    metrics, triples = tiny_decoder_metrics(tiny, validation, accelerator.device, train_encoder)
                last_validation = (global_step, metrics, triples)
                history.log(global_step, val_psnr=metrics["tiny_decoder"]["psnr"],
                            val_ssim=metrics["tiny_decoder"]["ssim"],
                            val_sharpness_ratio=metrics["tiny_decoder"]["sharpness_ratio"],
                            val_psnr_vs_base=metrics["tiny_vs_base_decoder"]["psnr"])
                accelerator.print(f"step {global_step}: {describe(metrics)}")
                save_triples(triples, output_dir / "samples" / f"reconstructions-{global_step:06d}.png")
                save_loss_plot({k: v for k, v in history.history.items() if k in ("loss", "mse", "edge", "encoder_mse")},
                               output_dir / "loss.png", "Tiny autoencoder training loss")
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

    # Final model: EMA weights, metrics beside the base decoder's, decode cost, card
    if accelerator.is_main_process:
        final = tiny
        if ema:
            ema.copy_to(final.parameters())
        final.eval()
        if last_validation is not None and last_validation[0] == global_step:  # the last step validated these weights
            metrics, triples = last_validation[1:]
        else:
            metrics, triples = tiny_decoder_metrics(final, validation, accelerator.device, train_encoder)
        cost = decode_cost(final, base_vae, validation["latents"][:8], accelerator.device)
        folder = output_dir / "vae_tiny"
        final.save_pretrained(folder)
        save_triples(triples, folder / "reconstructions.png")
        save_loss_plot({k: v for k, v in history.history.items() if k in ("loss", "mse", "edge", "encoder_mse")},
                       output_dir / "loss.png", "Tiny autoencoder training loss")
        config = final.config
        parameters = {"encoder": sum(p.numel() for p in final.encoder.parameters()),
                      "decoder": sum(p.numel() for p in final.decoder.parameters())}
        base_name = str(args.pretrained_vae_model_name_or_path)
        summary = {"global_step": global_step, "base_vae": base_name,
                   "base_vae_scaling_factor": float(base_vae.config.scaling_factor),
                   "latent_channels": int(config.latent_channels), "downsample_factor": int(factor),
                   "resolution": args.resolution, "crop_size": args.crop_size, "decoder_input": args.decoder_input,
                   "train_decoder_only": args.train_decoder_only, "validation": metrics, "decode_cost": cost,
                   "parameters": parameters, "train_images": len(train_set),
                   "validation_images_from": validation_from,
                   "seconds_this_run": round(time.time() - start, 1), "final_loss": last_logs.get("loss"),
                   "final_mse": last_logs.get("mse")}
        (folder / "training_summary.json").write_text(json.dumps(summary, indent=2))
        save_model_card(
            folder, "tiny_autoencoder",
            card_data={"license": "apache-2.0", "library_name": "diffusers",
                       "tags": ["chest-x-ray", "vae", "taesd", "autoencoder-tiny", "not-for-clinical-use"]},
            model_name=args.hub_model_id or "cxr-tiny-autoencoder", repo_id=args.hub_model_id or str(folder),
            base_vae=base_name,
            base_pipeline=base_pipeline_of(base_name),
            base_scaling_factor=f"{base_vae.config.scaling_factor:.4f}",
            latent=f"{config.latent_channels} channels, {factor}x downsampling",
            decoder_input="posterior samples" if args.decoder_input == "sample" else "posterior means",
            architecture=f"AutoencoderTiny, width {list(config.decoder_block_out_channels)}, encoder blocks "
                         f"{list(config.num_encoder_blocks)}, decoder blocks {list(config.num_decoder_blocks)}",
            parameters=f"{parameters['encoder'] + parameters['decoder']:,} (encoder {parameters['encoder']:,}, "
                       f"decoder {parameters['decoder']:,})",
            decoder_cost=f"{cost['tiny_gflop_per_image']} GFLOP per image (base decoder {cost['base_gflop_per_image']}); "
                         f"{cost['tiny_seconds_per_image'] * 1000:.1f} vs {cost['base_seconds_per_image'] * 1000:.1f} ms "
                         f"per image at batch {cost['batch']}, {cost['torch_threads']} thread(s) on {cost['device']} "
                         f"at the end of training",
            data=f"{Path(args.train_data_dir).name if args.train_data_dir else args.dataset_name} "
                 f"({len(train_set)} training images)",
            steps=global_step, batch=args.train_batch_size, crop=args.crop_size,
            losses=train_ldm.describe_final_loss(history.history.get("loss", [])),
            hardware=f"{accelerator.device.type}, {accelerator.num_processes} process(es), "
                     f"{torch.get_num_threads()} torch thread(s)",
            hours=f"{(time.time() - start) / 3600:.2f} (this run)",
            resolution=args.resolution, num_eval=metrics["num_images"], metrics=describe(metrics),
            citations="\n".join(f"- {c}" for c in DATA_CITATIONS.values()),
        )
        accelerator.print(json.dumps(summary, indent=2))
        if args.push_to_hub:
            push_folder(folder, args.hub_model_id, token=args.hub_token)
    accelerator.end_training()


if __name__ == "__main__":
    sys.exit(run_script(main))
