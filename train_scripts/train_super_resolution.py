#!/usr/bin/env python
"""Train `CXRSuperResolutionModel`, the second stage that upscales 256 px radiographs to 512 (x2) and 768 px (x3).

    cxr-diffusers data build --source nih_cxr8 --root ../shared/data/nih_cxr8_768 \
        --source jsrt --root ../shared/data/jsrt_768 --source pneumonia --root ../shared/data/kermany_fullres_512 \
        --out data/cxr-hr                                                      # native sizes: no --resolution
    accelerate launch train_scripts/train_super_resolution.py --config train_scripts/configs/small.json \
        --train_data_dir data/cxr-hr --output_dir runs/super-resolution

Resolution is a cascade (DESIGN.md, second wave): the UNet learned 256 px layouts, and the detail of a 512 or 768 px
radiograph comes from this pixel-space model trained on real high-resolution images. For each scale s of
`--scale_factors` (default: the model's), the target is T = `--base_resolution` x s: only training images whose longest
side is at least T are used (real detail, never an upscaled image), the high-resolution image HR is the image fitted
into a T x T square and the input LR is HR resized to `--base_resolution` with Pillow's bicubic filter
(`cxr_diffusers.data.super_resolution.high_resolution_pair`, the one definition that evaluation shares). The pairs are
made once at the start (`--dataloader_num_workers` threads) and kept in memory as uint8 arrays, in every process
(about 1 GB for the 1,921 radiographs of 512-768 px in ../shared/data).

Each optimisation step trains one scale, in turn (step % number of scales), on `--train_batch_size` aligned random
crops: `--crop_size` px of HR (divisible by every scale) and `--crop_size / s` px of LR at the matching position.
Images and crops are drawn from seeded generators of the step alone, so `--resume_from_checkpoint latest` is exact.
Loss: `--l1_weight` x L1 + `--edge_loss_weight` x Sobel-gradient L1 (train_vae.py's) + `--laplacian_loss_weight` x L1
between the Laplacians of the output and HR (the operator of the sharpness metric), and optionally, from step
`--disc_start`, `--disc_weight` x a PatchGAN hinge loss as in train_vae.py, its weight adapted to the reconstruction
loss by the gradient norms at the current scale head's last convolution (the discriminator and its optimizer are
checkpointed). An epoch is as many batches as the pairs of all scales fill.

Validation (every `--validation_steps`, of the EMA weights with `--use_ema`) upscales full `--num_validation_images`
images of the validation split per scale and reports PSNR, SSIM and the sharpness ratio (variance of the Laplacian,
upscaled / real) of the model and of Lanczos upsampling of the same LR, with grids (bicubic | Lanczos | model | real,
and a 2x zoom of the centre) in `samples/`. The final model (`--final_dtype`, fp16 by default; it loads as fp32), its
card, validation grids and `training_summary.json` go to `<output_dir>/super_resolution`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import copy
import functools
import importlib.util
import io
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
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    ProjectConfiguration,
    set_seed,
)
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from PIL import Image, ImageDraw
from tqdm.auto import tqdm

from cxr_diffusers import (
    CXRInputError,
    CXRPatchDiscriminator,
    CXRSuperResolutionModel,
    get_model_config,
)
from cxr_diffusers.data.super_resolution import (
    blur_low_resolution,
    has_detail_for,
    high_resolution_pair,
    lanczos_upscale,
    target_resolution,
)
from cxr_diffusers.errors import DataError
from cxr_diffusers.evaluation.fidelity import sharpness_ratio
from cxr_diffusers.evaluation.image_quality import psnr, ssim
from cxr_diffusers.hub import (
    DATA_CITATIONS,
    create_hub_repo,
    load_pretrained,
    push_folder,
    save_model_card,
)
from cxr_diffusers.losses import (
    adaptive_adversarial_weight,
    generator_adversarial_loss,
    hinge_discriminator_loss,
)
from cxr_diffusers.provenance import (
    NOT_FOR_CLINICAL_USE,
    attach_provenance,
    derive_provenance,
    make_record,
)
from cxr_diffusers.training_utils import (
    JsonlLogger,
    apply_config_file,
    check_output_dirs,
    check_positive,
    ema_weights,
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
    """`train_scripts/<name>.py` as a module (train_vae's Sobel edges), loaded afresh."""
    module_name = f"{__name__}__{name}"
    spec = importlib.util.spec_from_file_location(module_name, Path(__file__).resolve().with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


train_vae = _load_script("train_vae")
logger = get_logger(__name__)
# Each step trains one scale's head, so the other heads get no gradient that step: DDP must be told so.
OneHeadPerStepAccelerator = functools.partial(
    Accelerator, kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="JSON file of flag defaults (train_scripts/configs/*.json)")
    parser.add_argument("--model_config", default="small",
                        help="named size: tiny, small or base (MODEL_CONFIGS[name]['super_resolution'] where it has "
                             "one, else the model's defaults)")
    parser.add_argument("--pretrained_model_name_or_path", default=None,
                        help="continue from a saved CXRSuperResolutionModel (its folder, or a folder with "
                             "super_resolution/: a run's output or a pipeline)")
    parser.add_argument("--block_out_channels", type=int, default=None, help="width of a new model's trunk")
    parser.add_argument("--num_blocks", type=int, default=None, help="residual blocks of a new model's trunk")
    parser.add_argument("--residual_scaling", type=float, default=None, help="a new model's residual scaling")
    parser.add_argument("--train_data_dir", default=None,
                        help="dataset built by `cxr-diffusers data build`, without --resolution (native sizes)")
    parser.add_argument("--dataset_name", default=None, help="Hub dataset id (alternative to --train_data_dir)")
    parser.add_argument("--validation_split", default="validation", help="split used for validation metrics")
    parser.add_argument("--max_train_samples", type=int, default=None, help="a seeded random subset of the training set")
    parser.add_argument("--num_validation_images", type=int, default=16,
                        help="full held-out images per scale for PSNR/SSIM/sharpness of the model and of Lanczos")
    parser.add_argument("--validation_grid_images", type=int, default=2,
                        help="images shown per scale in each samples/ grid (full size plus a 2x zoom of the centre)")
    parser.add_argument("--resolution", type=int, default=256,
                        help="size of the images the model upscales (the diffusion model's output); "
                             "the default of --base_resolution")
    parser.add_argument("--base_resolution", type=int, default=None,
                        help="side of the low-resolution input LR (default: --resolution); scale s trains on "
                             "base_resolution x s px")
    parser.add_argument("--scale_factors", type=int, nargs="+", default=None,
                        help="scales to train (default: all of the model's, e.g. 2 3)")
    parser.add_argument("--crop_size", type=int, default=192,
                        help="high-resolution crop side (divisible by every scale; LR crops are crop_size / s)")
    parser.add_argument("--lr_blur_probability", type=float, default=0.0,
                        help="share of training inputs blurred by a random Gaussian (generated images are softer "
                             "than downsampled real ones; validation stays clean); default 0 = off")
    parser.add_argument("--lr_blur_sigma", type=float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"),
                        help="range of the Gaussian's standard deviation in low-resolution pixels (default 0.5 2.0)")
    parser.add_argument("--l1_weight", type=float, default=1.0, help="L1 between the output and HR")
    parser.add_argument("--edge_loss_weight", type=float, default=0.0, help="Sobel-gradient L1 term (sharpness)")
    parser.add_argument("--laplacian_loss_weight", type=float, default=0.0,
                        help="L1 between the Laplacians of the output and HR (pixelwise high-frequency fidelity)")
    parser.add_argument("--disc_weight", type=float, default=0.0,
                        help="weight of the PatchGAN hinge loss, times the adaptive weight (0 = no discriminator)")
    parser.add_argument("--disc_start", type=int, default=0,
                        help="global step from which the discriminator trains and its loss applies")
    parser.add_argument("--disc_learning_rate", type=float, default=None, help="default: --learning_rate")
    parser.add_argument("--disc_channels", type=int, default=32, help="channels of the discriminator's first layer")
    parser.add_argument("--disc_layers", type=int, default=3, help="strided layers of the discriminator")
    parser.add_argument("--disc_norm", default="batch", choices=["batch", "spectral"],
                        help="discriminator normalisation: BatchNorm (pix2pix/taming) or spectral norm without BatchNorm")
    # Training flags whose defaults are this script's own
    parser.add_argument("--train_batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--adam_weight_decay", type=float, default=0.0)
    parser.add_argument("--lr_warmup_steps", type=int, default=100)
    parser.add_argument("--ema_decay", type=float, default=0.999)
    parser.add_argument("--dataloader_num_workers", type=int, default=0,
                        help="threads that decode and resize the images into training pairs at the start")
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
    parser.add_argument("--channels_last", action="store_true",
                        help="channels-last memory format for the model and its inputs (about 20%% faster x2 steps "
                             "on these CPUs)")
    parser.add_argument("--final_dtype", default="fp16", choices=["fp16", "fp32"],
                        help="precision of the saved final model (fp16 safetensors load as fp32)")
    parser.add_argument("--output_dir", default="runs/super-resolution")
    # Copied from train_scripts/train_ldm.py:logging_and_hub_flags
    parser.add_argument("--logging_dir", default="logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report_to", default="tensorboard", help='"tensorboard", "none", ...')
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None, help="Hub token for --push_to_hub (default: the saved login)")
    # End copy
    args = apply_config_file(parser, argv, section="super_resolution")
    check_positive(parser, args, "resolution", "base_resolution", "crop_size", "train_batch_size", "learning_rate",
                   "gradient_accumulation_steps", "checkpointing_steps", "validation_steps", "max_train_steps",
                   "num_validation_images", "num_train_epochs", "block_out_channels", "num_blocks",
                   "disc_learning_rate", "disc_channels", "disc_layers", "logging_steps")
    for name in ("l1_weight", "edge_loss_weight", "laplacian_loss_weight", "disc_weight", "disc_start",
                 "lr_warmup_steps", "validation_grid_images"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if not (args.l1_weight or args.edge_loss_weight or args.laplacian_loss_weight):
        parser.error("give at least one reconstruction loss (--l1_weight, --edge_loss_weight or --laplacian_loss_weight)")
    if not 0 <= args.ema_decay < 1:
        parser.error(f"--ema_decay must be in [0, 1), got {args.ema_decay}")
    if not 0 <= args.lr_blur_probability <= 1:
        parser.error(f"--lr_blur_probability must be in [0, 1], got {args.lr_blur_probability}")
    if not 0 < args.lr_blur_sigma[0] <= args.lr_blur_sigma[1]:
        parser.error(f"--lr_blur_sigma needs 0 < MIN <= MAX, got {' '.join(map(str, args.lr_blur_sigma))}")
    args.base_resolution = args.base_resolution or args.resolution
    if args.scale_factors is not None and (len(set(args.scale_factors)) != len(args.scale_factors)
                                           or min(args.scale_factors) < 2):
        parser.error(f"--scale_factors must be distinct integers >= 2, got {' '.join(map(str, args.scale_factors))}")
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


# ----------------------------------------------------------------------------------------------- model
def pretrained_folder(path: str) -> str:
    """A model folder: `path`, or its `super_resolution/` (a run's output folder, a pipeline folder)."""
    folder = Path(path)
    if not (folder / "config.json").is_file() and (folder / "super_resolution" / "config.json").is_file():
        return str(folder / "super_resolution")
    return path


def build_model(args) -> tuple[CXRSuperResolutionModel, tuple[int, ...]]:
    """The model (`--pretrained_model_name_or_path`, or a new one of `--model_config`'s size with the size flags) and
    the scales to train."""
    if args.pretrained_model_name_or_path:
        model = load_pretrained(CXRSuperResolutionModel, pretrained_folder(args.pretrained_model_name_or_path),
                                "super-resolution model").float()
        differ = [f"--{n} {getattr(args, n)}" for n in ("block_out_channels", "num_blocks", "residual_scaling")
                  if getattr(args, n) is not None and getattr(args, n) != model.config[n]]
        if differ:
            raise CXRInputError(f"{', '.join(differ)} cannot change the size of the pretrained model "
                                f"{args.pretrained_model_name_or_path}; drop them or train a new model.")
    else:
        config = dict(get_model_config(args.model_config).get("super_resolution", {}))
        for name in ("block_out_channels", "num_blocks", "residual_scaling"):
            if getattr(args, name) is not None:
                config[name] = getattr(args, name)
        if args.scale_factors:
            config["scale_factors"] = tuple(args.scale_factors)
        model = CXRSuperResolutionModel(**config)
    scales = tuple(args.scale_factors or model.scale_factors)
    missing = [s for s in scales if s not in model.scale_factors]
    if missing:
        raise CXRInputError(f"The pretrained model upscales by {', '.join(map(str, model.scale_factors))}, not by "
                            f"{', '.join(map(str, missing))}; choose --scale_factors among those or train a new model.")
    return model, scales


def check_crop_size(crop_size: int, base_resolution: int, scales) -> None:
    """`--crop_size` fits every scale: divisible by it, and its LR crop no larger than the LR image."""
    bad = [s for s in scales if crop_size % s]
    if bad:
        raise CXRInputError(f"--crop_size {crop_size} must be divisible by every scale factor, and it is not by "
                            f"{', '.join(map(str, bad))} (try {math.lcm(*scales) * max(1, crop_size // math.lcm(*scales))}).")
    if crop_size // min(scales) > base_resolution:
        raise CXRInputError(f"--crop_size {crop_size} is too large: its x{min(scales)} low-resolution crop "
                            f"({crop_size // min(scales)} px) exceeds --base_resolution {base_resolution}.")


class SuperResolutionObjective(torch.nn.Module):
    """The module Accelerate prepares (so DDP synchronises the gradients): the model's output at one scale."""

    def __init__(self, model: CXRSuperResolutionModel):
        super().__init__()
        self.model = model

    def forward(self, low_resolution: torch.Tensor, scale: int) -> torch.Tensor:
        return self.model(low_resolution, scale).sample


# ----------------------------------------------------------------------------------------------- data
def image_sizes(dataset) -> list[tuple[int, int]]:
    """(width, height) of every image of `dataset`, from the file headers where the images are stored encoded."""
    import datasets

    feature = dataset.features.get("image")
    if not isinstance(feature, datasets.Image):
        return [row["image"].size for row in dataset.select_columns(["image"])]
    raw = dataset.select_columns(["image"]).cast_column("image", datasets.Image(decode=False))
    sizes = []
    for row in raw:
        item = row["image"]
        with Image.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]) as image:
            sizes.append(image.size)
    return sizes


def make_pairs(dataset, base_resolution: int, scales, indices: dict[int, list[int]], workers: int, desc: str) -> dict:
    """For each scale, `{"hr": (N, T, T) uint8, "lr": (N, base, base) uint8, "rows": dataset rows}` of the images
    `indices[scale]` (each image decoded once for all its scales; `workers` threads)."""
    pairs = {s: {"hr": np.zeros((len(indices[s]),) + (target_resolution(base_resolution, s),) * 2, np.uint8),
                 "lr": np.zeros((len(indices[s]), base_resolution, base_resolution), np.uint8),
                 "rows": list(indices[s])} for s in scales}
    slots = {}
    for s in scales:
        for slot, row in enumerate(indices[s]):
            slots.setdefault(row, []).append((s, slot))

    def work(row: int):
        image = dataset[int(row)]["image"]
        return row, [(s, slot, high_resolution_pair(image, base_resolution, s)) for s, slot in slots[row]]

    rows = sorted(slots)
    with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(work, rows) if workers else map(work, rows)
        for _, made in tqdm(results, total=len(rows), desc=desc, leave=False):
            for s, slot, (hr, lr) in made:
                pairs[s]["hr"][slot] = np.asarray(hr)
                pairs[s]["lr"][slot] = np.asarray(lr)
    return pairs


def eligible_rows(sizes, base_resolution: int, scales) -> dict[int, list[int]]:
    """The rows whose images hold real detail at each scale (longest side >= base_resolution x s)."""
    return {s: [i for i, size in enumerate(sizes) if has_detail_for(size, base_resolution, s)] for s in scales}


def check_training_rows(rows: dict[int, list[int]], sizes, base_resolution: int) -> None:
    for s, found in rows.items():
        if not found:
            target = target_resolution(base_resolution, s)
            raise DataError(
                f"No training image is large enough for scale {s}: it needs a longest side of at least {target} px "
                f"(--base_resolution {base_resolution} x {s}) and the largest of the {len(sizes)} images is "
                f"{max((max(size) for size in sizes), default=0)} px (build the dataset without --resolution, or drop "
                f"{s} from --scale_factors).")


def source_counts(dataset, rows: list[int]) -> dict[str, int] | None:
    if "source" not in dataset.column_names:
        return None
    sources = dataset.select_columns(["source"])["source"]
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(sources[row])] = counts.get(str(sources[row]), 0) + 1
    return dict(sorted(counts.items()))


def batch_rows(num_images: int, batch_size: int, batch_number: int, seed: int, scale: int) -> list[int]:
    """The `batch_number`-th batch of one scale's images: consecutive slices of an endless chain of seeded
    permutations (every image once per pass), a function of its arguments alone (exact on resume)."""
    rows, position = [], batch_number * batch_size
    while len(rows) < batch_size:
        epoch, offset = divmod(position + len(rows), num_images)
        order = torch.randperm(num_images, generator=torch.Generator().manual_seed(
            (seed * 1_000_003 + scale) * 1_000_003 + epoch)).tolist()
        rows += order[offset:offset + batch_size - len(rows)]
    return rows


def aligned_crops(pairs: dict, rows: list[int], scale: int, crop_size: int, generator: torch.Generator):
    """`(lr, hr)` float tensors in [-1, 1]: random `crop_size / scale` px LR crops and the HR crops of the same area."""
    low = crop_size // scale
    base = pairs["lr"].shape[-1]
    corners = torch.randint(0, base - low + 1, (len(rows), 2), generator=generator).tolist()
    lr = np.stack([pairs["lr"][r, t:t + low, s:s + low] for r, (t, s) in zip(rows, corners)])
    hr = np.stack([pairs["hr"][r, t * scale:(t + low) * scale, s * scale:(s + low) * scale]
                   for r, (t, s) in zip(rows, corners)])
    # as `cxr_diffusers.data.transforms.to_tensor`
    return tuple(torch.from_numpy(a.astype(np.float32) / 127.5 - 1.0)[:, None] for a in (lr, hr))


def laplacian(images: torch.Tensor) -> torch.Tensor:
    """The 3x3 Laplacian of `cv2.Laplacian` (the sharpness metric's operator) with its reflected border."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], device=images.device,
                          dtype=images.dtype)[None, None]
    return F.conv2d(F.pad(images, (1, 1, 1, 1), mode="reflect"), kernel)


# ----------------------------------------------------------------------------------------------- validation
def _uint8(images: torch.Tensor) -> np.ndarray:
    """`(N, 1, H, W)` in [-1, 1] -> `(N, H, W)` uint8, as a viewer sees the images."""
    return ((images[:, 0].float().clamp(-1, 1).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)


def _scores(real: np.ndarray, upscaled: np.ndarray) -> dict:
    return {"psnr": float(np.mean([psnr(a, b) for a, b in zip(real, upscaled)])),
            "ssim": float(np.mean([ssim(a, b) for a, b in zip(real, upscaled)])),
            "sharpness_ratio": float(sharpness_ratio(upscaled[:, None] / 255.0, real[:, None] / 255.0))}


@torch.no_grad()
def upscale(model: CXRSuperResolutionModel, lr: np.ndarray, scale: int, device, batch_size: int = 4) -> np.ndarray:
    """uint8 `(N, h, w)` -> uint8 `(N, h * scale, w * scale)` through the model (clamped to [-1, 1])."""
    out = []
    for start in range(0, len(lr), batch_size):
        x = torch.from_numpy(lr[start:start + batch_size].astype(np.float32) / 127.5 - 1.0)[:, None]
        out.append(_uint8(model(x.to(device, model.dtype), scale).sample))
    return np.concatenate(out)


@torch.no_grad()
def validate(model: CXRSuperResolutionModel, validation: dict, device) -> tuple[dict, dict]:
    """Per scale: PSNR / SSIM / sharpness ratio of the model, of Lanczos and of bicubic upsampling of the same LR
    against HR; and the uint8 images (lr, bicubic, lanczos, model, real) for the grids."""
    was_training = model.training
    model.eval()
    metrics, images = {}, {}
    for scale, pairs in validation.items():
        if not len(pairs["rows"]):
            continue
        real, lr = pairs["hr"], pairs["lr"]
        predicted = upscale(model, lr, scale, device)
        lanczos = np.stack([np.asarray(lanczos_upscale(Image.fromarray(a), scale)) for a in lr])
        bicubic = np.stack([np.asarray(Image.fromarray(a).resize((a.shape[1] * scale, a.shape[0] * scale),
                                                                 Image.Resampling.BICUBIC)) for a in lr])
        metrics[str(scale)] = {"resolution": int(real.shape[-1]), "num_images": len(real),
                               "model": _scores(real, predicted), "lanczos": _scores(real, lanczos),
                               "bicubic": _scores(real, bicubic)}
        images[scale] = {"bicubic": bicubic, "lanczos": lanczos, "model": predicted, "real": real}
    model.train(was_training)
    return metrics, images


def describe(metrics: dict) -> str:
    parts = []
    for scale, m in metrics.items():
        model, lanczos = m["model"], m["lanczos"]
        parts.append(f"x{scale} ({m['resolution']} px, {m['num_images']} images): model PSNR {model['psnr']:.2f} dB, "
                     f"SSIM {model['ssim']:.4f}, sharpness ratio {model['sharpness_ratio']:.3f}; Lanczos "
                     f"{lanczos['psnr']:.2f} dB, {lanczos['ssim']:.4f}, {lanczos['sharpness_ratio']:.3f}")
    return "; ".join(parts) or "no validation image is large enough for any scale"


def flat_metrics(metrics: dict) -> dict:
    """`val_x2_psnr`, `val_x2_lanczos_psnr`, ... for metrics.jsonl and the trackers."""
    logs = {}
    for scale, m in metrics.items():
        for method, prefix in (("model", f"val_x{scale}_"), ("lanczos", f"val_x{scale}_lanczos_")):
            for name, value in m[method].items():
                logs[prefix + name] = value
    return logs


def save_grid(images: dict, scale: int, count: int, path: Path, step: int, model_name: str) -> None:
    """Columns bicubic | Lanczos | model | real; per image a full-size row and a 2x zoom of the centre (the
    mediastinum and the inner lung fields), with a NOT FOR CLINICAL USE banner and the model tiles' provenance."""
    tiles, labels = [], []
    columns = (("bicubic", "LR bicubic"), ("lanczos", "Lanczos"), ("model", "model"), ("real", "original"))
    for index in range(min(count, len(images["real"]))):
        size = images["real"].shape[-1]
        half, top = size // 2, int(size * 0.2)  # a half-size window a little above the centre
        left = (size - half) // 2
        for zoom in (False, True):
            for key, label in columns:
                tile = Image.fromarray(images[key][index])
                if zoom:
                    tile = tile.crop((left, top, left + half, top + half)).resize((size, size), Image.Resampling.NEAREST)
                if key == "model":
                    attach_provenance(tile, make_record(operation="super_resolution", model=model_name, scale=scale,
                                                        training_step=step,
                                                        input="a real validation radiograph downsampled to the base "
                                                              "resolution"))
                tiles.append(tile)
                labels.append(f"{label} (2x zoom)" if zoom else label)
    if not tiles:
        return
    grid = make_grid(tiles, cols=len(columns), labels=labels)
    banner = 16
    labelled = Image.new("L", (grid.width, grid.height + banner), color=0)
    labelled.paste(grid, (0, banner))
    ImageDraw.Draw(labelled).text((4, 2), f"x{scale}, step {step}: model detail is synthetic. NOT FOR CLINICAL USE.",
                                  fill=255)
    derive_provenance(labelled, grid, "label", notice=NOT_FOR_CLINICAL_USE)
    labelled.save(path)


def loss_curves(history: dict) -> dict:
    """The curves of loss.png: the loss of each scale apart (they differ), the edge, Laplacian and discriminator terms."""
    return {k: v for k, v in history.items() if k.startswith("loss_x") or k in ("edge", "laplacian", "d_loss")}


def save_final_model(model: CXRSuperResolutionModel, folder: Path, dtype: str) -> None:
    """`save_pretrained` (safetensors) of a copy of `model` in `dtype`; fp16 files load as fp32 by default."""
    to_save = copy.deepcopy(model).cpu().float()
    if dtype == "fp16":
        to_save = to_save.half()
    to_save.save_pretrained(folder, safe_serialization=True)


def loss_description(args) -> str:
    terms = [f"{w} x {name}" for w, name in ((args.l1_weight, "L1"), (args.edge_loss_weight, "Sobel-edge L1"),
                                             (args.laplacian_loss_weight, "Laplacian L1")) if w]
    if args.lr_blur_probability:
        terms.append(f"inputs blurred with probability {args.lr_blur_probability:g} (Gaussian sigma "
                     f"{args.lr_blur_sigma[0]:g}-{args.lr_blur_sigma[1]:g} LR px)")
    if args.disc_weight:
        terms.append(f"{args.disc_weight} x adaptive weight x PatchGAN hinge ({args.disc_norm} norm, "
                     f"{args.disc_layers} layers, {args.disc_channels} channels) from step {args.disc_start}")
    return " + ".join(terms)


def main(argv=None):
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    # Copied from train_scripts/train_ldm.py:accelerator with Accelerator(->OneHeadPerStepAccelerator(
    accelerator = OneHeadPerStepAccelerator(
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

    # Model (and the optional discriminator)
    model, scales = build_model(args)
    check_crop_size(args.crop_size, args.base_resolution, scales)
    model.train()
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model.to(memory_format=memory_format)
    if args.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    ema = EMAModel(model.parameters(), decay=args.ema_decay, model_cls=CXRSuperResolutionModel,
                   model_config=model.config) if args.use_ema else None
    discriminator = CXRPatchDiscriminator(in_channels=model.config.in_channels, base_channels=args.disc_channels,
                                          num_layers=args.disc_layers, norm=args.disc_norm) if args.disc_weight else None
    checkpointed = {"super_resolution": model, **({"discriminator": discriminator} if discriminator is not None else {})}
    register_diffusers_checkpoint_hooks(accelerator, checkpointed, {"super_resolution_ema": ema} if ema else None)

    # Data: (HR, LR) pairs of every large-enough image, per scale, in memory
    train_set = load_training_dataset(args.train_data_dir, args.dataset_name, "train")
    train_set = select_train_subset(train_set, args.max_train_samples, args.seed)
    validation_from = args.validation_split
    try:
        eval_set = load_training_dataset(args.train_data_dir, args.dataset_name, args.validation_split)
    except (ValueError, KeyError):  # no validation split: use the tail of train (reported in the summary)
        eval_set = train_set.select(range(max(0, len(train_set) - args.num_validation_images), len(train_set)))
        validation_from = "train (its last images)"
    sizes = image_sizes(train_set)
    rows = eligible_rows(sizes, args.base_resolution, scales)
    check_training_rows(rows, sizes, args.base_resolution)
    train_pairs = make_pairs(train_set, args.base_resolution, scales, rows, args.dataloader_num_workers,
                             "training pairs")
    counts = {str(s): {"resolution": target_resolution(args.base_resolution, s), "images": len(rows[s]),
                       "of": len(train_set), "per_source": source_counts(train_set, rows[s])} for s in scales}
    eval_rows = eligible_rows(image_sizes(eval_set), args.base_resolution, scales)
    for s in scales:  # spread evenly over the split (every source of a combined split)
        found = eval_rows[s]
        count = min(args.num_validation_images, len(found))
        eval_rows[s] = [found[i] for i in sorted(set(np.linspace(0, len(found) - 1, count).round().astype(int).tolist()))] \
            if count else []
        counts[str(s)]["validation_images"] = len(eval_rows[s])
    validation = make_pairs(eval_set, args.base_resolution, scales, eval_rows, args.dataloader_num_workers,
                            "validation pairs") if accelerator.is_main_process else None
    for s in scales:
        c = counts[str(s)]
        logger.info(f"x{s} ({c['resolution']} px): {c['images']} of {c['of']} training images are large enough "
                    f"{c['per_source'] or ''}; {c['validation_images']} validation images", main_process_only=True)
        if not c["validation_images"]:
            logger.warning(f"x{s}: no validation image is large enough ({c['resolution']} px); it is not validated")
    total_pairs = sum(len(rows[s]) for s in scales)
    # An epoch: as many batches as the pairs of all scales fill (whole optimiser updates)
    batches_per_epoch = math.ceil(total_pairs / (args.train_batch_size * accelerator.num_processes))
    batches_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps) * args.gradient_accumulation_steps

    objective = SuperResolutionObjective(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # Copied from train_scripts/train_ldm.py:optimizer_and_lr_scheduler with len(loader)->batches_per_epoch
    optimizer = torch.optim.AdamW(trainable, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    updates_per_epoch, args.max_train_steps, num_epochs = training_steps(
        batches_per_epoch, args.gradient_accumulation_steps, args.max_train_steps, args.num_train_epochs)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=args.max_train_steps * accelerator.num_processes)
    # End copy
    objective, optimizer, lr_scheduler = accelerator.prepare(objective, optimizer, lr_scheduler)
    if discriminator is not None:
        disc_optimizer = torch.optim.AdamW(discriminator.parameters(), lr=args.disc_learning_rate or args.learning_rate,
                                           betas=(0.5, 0.9), weight_decay=0.0)
        discriminator, disc_optimizer = accelerator.prepare(discriminator, disc_optimizer)
    # Copied from train_scripts/train_ldm.py:trackers_and_resume with "train_ldm"->"train_super_resolution"
    if ema:
        ema.to(accelerator.device)
    if accelerator.is_main_process and args.report_to != "none":
        tracker_config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("train_super_resolution", config=tracker_config)
    history = JsonlLogger(output_dir / "metrics.jsonl") if accelerator.is_main_process else None
    global_step, first_epoch, skip_batches = resume_training(
        accelerator, args.output_dir, args.resume_from_checkpoint, updates_per_epoch, args.gradient_accumulation_steps)
    # End copy

    logger.info(f"{total_pairs} training pairs over scales {', '.join(f'x{s}' for s in scales)}, {args.max_train_steps} "
                f"steps of {args.train_batch_size} {args.crop_size} px crops (one scale per step); model "
                f"{sum(p.numel() for p in model.parameters()):,} parameters; loss {loss_description(args)}")
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="train_super_resolution",
                    disable=not accelerator.is_local_main_process)
    start, cpu_start, last_logs = time.time(), time.process_time(), {}
    last_validation = None  # (step, metrics, images) of the newest in-loop validation of the shipped weights
    model_name = args.hub_model_id or "cxr-super-resolution"
    for epoch in range(first_epoch, num_epochs):
        first_batch, skip_batches = skip_batches, 0
        for batch_number in range(first_batch, batches_per_epoch):
            if global_step >= args.max_train_steps:  # resumed at (or past) the end: just finalise
                break
            # One scale per optimiser update, in turn; its images and crops from generators of the step alone
            scale = scales[global_step % len(scales)]
            micro = batch_number % args.gradient_accumulation_steps
            number = ((global_step // len(scales)) * args.gradient_accumulation_steps + micro) \
                * accelerator.num_processes + accelerator.process_index
            batch = batch_rows(len(rows[scale]), args.train_batch_size, number, args.seed, scale)
            generator = torch.Generator().manual_seed(
                ((args.seed * 1_000_003 + global_step) * 64 + micro) * 4096 + accelerator.process_index)
            lr, hr = (x.to(accelerator.device).contiguous(memory_format=memory_format)
                      for x in aligned_crops(train_pairs[scale], batch, scale, args.crop_size, generator))
            if args.lr_blur_probability:
                lr, _ = blur_low_resolution(lr, generator, args.lr_blur_probability, args.lr_blur_sigma)
            with accelerator.accumulate(*[m for m in (objective, discriminator) if m is not None]):
                # Call the prepared module (DDP, autocast), not the unwrapped model.
                output = objective(lr, scale).float()
                l1 = F.l1_loss(output, hr)
                reconstruction_loss = args.l1_weight * l1
                edge = F.l1_loss(train_vae.sobel_edges(output), train_vae.sobel_edges(hr)) \
                    if args.edge_loss_weight else None
                if edge is not None:
                    reconstruction_loss = reconstruction_loss + args.edge_loss_weight * edge
                high_frequency = F.l1_loss(laplacian(output), laplacian(hr)) if args.laplacian_loss_weight else None
                if high_frequency is not None:
                    reconstruction_loss = reconstruction_loss + args.laplacian_loss_weight * high_frequency
                loss = reconstruction_loss
                adversarial = discriminator is not None and global_step >= args.disc_start
                g_loss = adaptive_weight = None
                if adversarial:
                    discriminator.requires_grad_(False)
                    g_loss = generator_adversarial_loss(discriminator(output))
                    adaptive_weight = adaptive_adversarial_weight(
                        reconstruction_loss, g_loss, model.heads[str(scale)].conv_out.weight)
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
                if adversarial:  # the discriminator's step, on the outputs just made
                    discriminator.requires_grad_(True)
                    d_loss = hinge_discriminator_loss(discriminator(hr), discriminator(output.detach()))
                    accelerator.backward(d_loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(discriminator.parameters(), args.max_grad_norm)
                    disc_optimizer.step()
                    disc_optimizer.zero_grad()

            # Copied from train_scripts/train_ldm.py:end_of_step with unet->objective
            if not accelerator.sync_gradients:
                continue
            if ema:
                ema.step(objective.parameters())
            global_step += 1
            progress.update(1)
            # End copy
            logs = last_logs = {"loss": loss.item(), f"loss_x{scale}": loss.item(), "l1": l1.item(), "scale": scale,
                                "lr": lr_scheduler.get_last_lr()[0]}
            for name, value in (("edge", edge), ("laplacian", high_frequency), ("g_loss", g_loss), ("d_loss", d_loss),
                                ("adaptive_weight", adaptive_weight)):
                if value is not None:
                    logs[name] = value.item()
            progress.set_postfix(loss=f"{logs['loss']:.4f}", scale=f"x{scale}")
            if args.report_to != "none":
                accelerator.log(logs, step=global_step)
            # every --logging_steps, the next step of each scale (an even period would otherwise log one scale only)
            if accelerator.is_main_process and global_step % args.logging_steps < len(scales):
                history.log(global_step, **logs)

            if accelerator.is_main_process and (global_step % args.validation_steps == 0
                                                or global_step == args.max_train_steps):
                with ema_weights(ema, model):  # validate the weights that will be shipped
                    metrics, images = validate(model, validation, accelerator.device)
                last_validation = (global_step, metrics, images)
                history.log(global_step, **flat_metrics(metrics))
                if args.report_to != "none":
                    accelerator.log(flat_metrics(metrics), step=global_step)
                accelerator.print(f"step {global_step}: {describe(metrics)}")
                for s, found in images.items():
                    save_grid(found, s, args.validation_grid_images,
                              output_dir / "samples" / f"x{s}-{global_step:06d}.png", global_step, model_name)
                save_loss_plot(loss_curves(history.history),
                               output_dir / "loss.png", "Super-resolution training loss")
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

    # Final model: EMA weights, metrics beside Lanczos, card
    if accelerator.is_main_process:
        final = model
        if ema:
            ema.copy_to(final.parameters())
        final.eval()
        if last_validation is not None and last_validation[0] == global_step:  # the last step validated these weights
            metrics, images = last_validation[1:]
        else:
            metrics, images = validate(final, validation, accelerator.device)
        folder = output_dir / "super_resolution"
        folder.mkdir(parents=True, exist_ok=True)
        save_final_model(final, folder, args.final_dtype)
        for s, found in images.items():
            save_grid(found, s, 1, folder / f"validation_x{s}.png", global_step, model_name)
        save_loss_plot(loss_curves(history.history),
                       output_dir / "loss.png", "Super-resolution training loss")
        wall, cpu = time.time() - start, time.process_time() - cpu_start
        config = final.config
        parameters = sum(p.numel() for p in final.parameters())
        data_name = Path(args.train_data_dir).name if args.train_data_dir else args.dataset_name
        summary = {"global_step": global_step, "scale_factors": list(scales), "base_resolution": args.base_resolution,
                   "crop_size": args.crop_size, "batch_size": args.train_batch_size, "loss": loss_description(args),
                   "training_pairs": counts, "train_images": len(train_set), "validation_images_from": validation_from,
                   "validation": metrics, "parameters": parameters, "weights_dtype": args.final_dtype,
                   "data": str(args.train_data_dir or args.dataset_name),
                   "seconds_this_run": round(wall, 1), "cpu_seconds_this_run": round(cpu, 1),
                   "torch_threads": torch.get_num_threads(), "device": str(accelerator.device),
                   "num_processes": accelerator.num_processes, "final_loss": last_logs.get("loss")}
        (folder / "training_summary.json").write_text(json.dumps(summary, indent=2))
        recent = [value for _, value in history.history.get("loss", [])][-20:]
        scale_rows = "\n".join(
            f"| x{s} | {counts[str(s)]['resolution']} px | {counts[str(s)]['images']} of {counts[str(s)]['of']} | "
            f"{counts[str(s)]['validation_images']} |" for s in scales)
        metric_rows = "\n".join(
            f"| x{s} ({m['resolution']} px, {m['num_images']} images) | {method} | {m[key]['psnr']:.2f} | "
            f"{m[key]['ssim']:.4f} | {m[key]['sharpness_ratio']:.3f} |"
            for s, m in metrics.items() for key, method in (("model", "**this model**"), ("lanczos", "Lanczos"),
                                                            ("bicubic", "bicubic")))
        save_model_card(
            folder, "super_resolution",
            card_data={"license": "apache-2.0", "library_name": "diffusers",
                       "tags": ["chest-x-ray", "super-resolution", "not-for-clinical-use"]},
            model_name=model_name, repo_id=args.hub_model_id or str(folder),
            architecture=f"bicubic upsampling + learned residual: EDSR trunk of {config.num_blocks} residual blocks, "
                         f"width {config.block_out_channels}, one sub-pixel head per scale {list(config.scale_factors)}",
            parameters=f"{parameters:,}", weights_dtype=args.final_dtype,
            scales=", ".join(f"x{s} ({target_resolution(args.base_resolution, s)} px)" for s in scales),
            base_resolution=args.base_resolution, scale_rows=scale_rows,
            data=f"{data_name} ({len(train_set)} training images)", losses=loss_description(args),
            steps=global_step, batch=args.train_batch_size, crop=args.crop_size,
            final_loss=f"mean of the last {len(recent)} logged losses {float(np.mean(recent)):.4f}" if recent
            else "no loss logged in this run",
            hardware=f"{accelerator.device.type}, {accelerator.num_processes} process(es), "
                     f"{torch.get_num_threads()} torch thread(s)",
            hours=f"{wall / 3600:.2f} h wall, {cpu / 3600:.2f} h CPU (this run)",
            validation_from=validation_from, metric_rows=metric_rows or "| - | no validation image was large enough | | | |",
            grids=" ".join(f"![x{s}](validation_x{s}.png)" for s in images),
            citations="\n".join(f"- {c}" for c in DATA_CITATIONS.values()),
        )
        accelerator.print(json.dumps(summary, indent=2))
        if args.push_to_hub:
            push_folder(folder, args.hub_model_id, token=args.hub_token)
    accelerator.end_training()


if __name__ == "__main__":
    sys.exit(run_script(main))
