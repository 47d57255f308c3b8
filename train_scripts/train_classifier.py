#!/usr/bin/env python
"""Train the NORMAL / PNEUMONIA classifier (a transformers ResNet) on Kermany or PneumoniaMNIST, optionally with synthetic X-rays.

    # the shipped CPU model (ResNet-18, 128 px, fp16 safetensors, ~21 MB) straight into pretrained/
    python train_scripts/train_classifier.py --config train_scripts/configs/small.json \
        --train_data_dir ../shared/data/kermany_pneumonia_224 --output_dir runs/pneumonia-classifier \
        --final_model_dir pretrained/pneumonia-classifier --resume_from_checkpoint latest

    # ResNet-50 at 224 px on a GPU (ImageNet start where the Hub is reachable)
    accelerate launch train_scripts/train_classifier.py --config train_scripts/configs/base.json \
        --train_data_dir ../shared/data/kermany_pneumonia_224 --output_dir runs/classifier-r50

    # PneumoniaMNIST, to compare with the MedMNIST v2 baselines (ResNet-50 at 224: 0.884 acc / 0.962 AUC)
    ... --train_data_dir ../shared/data/pneumoniamnist_28/pneumoniamnist_reconstructed_official_counts.npz \
        --model_config resnet-50 --resolution 224   (or --resolution 28)

    # does synthetic data help beyond simply having more samples? (same sample count in both arms, 3 seeds each)
    ... --synthetic_data_dir outputs/synthetic --synthetic_ratio 0.5 --seeds 0 1 2 --output_dir runs/cls-synth
    ... --duplicate_real_ratio 0.5 --seeds 0 1 2 --output_dir runs/cls-dup

Data: `--dataset kermany` (validation carved from the official train split by patient, stratified by class; the
official 624-image test split for the final metrics), `pneumoniamnist` (the MedMNIST .npz with its official splits), or
`saved` (a DatasetDict written by `cxr-diffusers data build` / `save_to_disk`, or `--dataset_name` on the Hub); `auto`
picks from `--train_data_dir`. Loss: class-weighted cross-entropy (weights N / (2 N_c) of the final, mixed training
set). Augmentation: small rotations / translations / zoom, brightness / contrast; no flips. The checkpoint with the best
validation AUROC (ties: lower validation loss) is kept in `<output_dir>/best` and training stops after
`--early_stopping_patience` validations without improvement. At the end the best model is saved in `<output_dir>/model`
(`--final_dtype fp16` by default) with its image processor, model card, metrics.json and PNG plots, and evaluated on the
test split with bootstrap 95% CIs. `--seeds 0 1 2` repeats the whole run per seed in `<output_dir>/seed-<s>` and writes
mean +- std to `<output_dir>/metrics_summary.json`.

The splits (`load_splits`), the predictions (`class_probabilities`) and the model card (`save_classifier_card`) come
from `cxr_diffusers.classification`; the training loop is here.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
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
from diffusers.optimization import get_scheduler
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from cxr_diffusers.classification import (
    build_classifier,
    build_transforms,
    class_probabilities,
    class_weights,
    evaluate_predictions,
    load_classifier,
    load_splits,
    make_dataloader,
    mix_records,
    plot_confusion_matrix,
    plot_roc,
    plot_training_curves,
    pneumonia_probabilities,
    read_synthetic_manifest,
    resolve_architecture,
    save_classifier,
    save_classifier_card,
    summarize_seeds,
)
from cxr_diffusers.classification.metrics import METRICS
from cxr_diffusers.classification.model import pneumonia_index
from cxr_diffusers.errors import CXRInputError
from cxr_diffusers.hub import create_hub_repo, push_folder
from cxr_diffusers.training_utils import (
    EarlyStopping,
    JsonlLogger,
    apply_config_file,
    check_output_dirs,
    check_positive,
    resume_training,
    run_script,
    save_checkpoint,
    training_steps,
)
from cxr_diffusers.utils.output_dir import check_output_dir, staged_output_dir

logger = get_logger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=None, help="JSON file of flag defaults (train_scripts/configs/*.json)")
    parser.add_argument("--model_config", default="resnet-50",
                        help="resnet-50 (default) or resnet-18; the shared config names tiny/small -> resnet-18, "
                             "base -> resnet-50")
    parser.add_argument("--pretrained_model_name_or_path", default="auto",
                        help='"auto": ImageNet microsoft/resnet-* when the Hub is reachable, else from scratch; '
                             '"scratch"; or a classifier folder / Hub id to start from')
    parser.add_argument("--dataset", default="auto", choices=["auto", "kermany", "pneumoniamnist", "saved"],
                        help="layout of --train_data_dir (auto: .npz -> pneumoniamnist, save_to_disk folder -> saved, "
                             "else kermany)")
    parser.add_argument("--train_data_dir", default=None,
                        help="Kermany root (train/ and test/ with NORMAL/ PNEUMONIA/), PneumoniaMNIST .npz, or a saved "
                             "DatasetDict")
    parser.add_argument("--dataset_name", default=None, help="Hub dataset id of the common schema (alternative)")
    parser.add_argument("--validation_size", type=float, default=0.1,
                        help="share of training patients (per class) carved into validation")
    parser.add_argument("--split_seed", type=int, default=0, help="seed of the validation carve and of subsets")
    parser.add_argument("--max_train_samples", type=int, default=None,
                        help="a seeded random subset of train, stratified by class (--split_seed; debugging)")
    parser.add_argument("--max_eval_samples", type=int, default=None,
                        help="stratified subset of validation and test (debugging; the metrics then are not the "
                             "official ones)")
    parser.add_argument("--synthetic_data_dir", default=None,
                        help="folder written by `cxr-diffusers synthesize` (imagefolder + metadata.jsonl) or "
                             "`cxr-diffusers generate` (images + manifest.jsonl)")
    parser.add_argument("--synthetic_ratio", type=float, default=0.0,
                        help="add round(r * N_real) synthetic images to the N_real training images")
    parser.add_argument("--duplicate_real_ratio", type=float, default=0.0,
                        help="control: add round(r * N_real) extra copies of real training images instead")
    parser.add_argument("--resolution", type=int, default=224, help="square input size (128 is ~3x faster on CPU)")
    parser.add_argument("--train_batch_size", type=int, default=32)
    parser.add_argument("--eval_batch_size", type=int, default=64)
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--adam_beta1", type=float, default=0.9)
    parser.add_argument("--adam_beta2", type=float, default=0.999)
    parser.add_argument("--adam_weight_decay", type=float, default=1e-4)
    parser.add_argument("--adam_epsilon", type=float, default=1e-8)
    parser.add_argument("--gradient_checkpointing", action="store_true",
                        help="recompute activations in the backward pass (less memory, slower), where the model "
                             "supports it")
    parser.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs (faster, no effect on CPU)")
    parser.add_argument("--max_grad_norm", type=float, default=1.0)
    parser.add_argument("--lr_scheduler", default="cosine",
                        choices=["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                                 "constant_with_warmup"])
    parser.add_argument("--lr_warmup_steps", type=int, default=100)
    parser.add_argument("--max_train_steps", type=int, default=None, help="overrides --num_train_epochs")
    parser.add_argument("--num_train_epochs", type=int, default=20)
    parser.add_argument("--class_weighting", default="balanced", choices=["balanced", "none"],
                        help="cross-entropy class weights N / (2 N_c) of the final training set, or none")
    parser.add_argument("--label_smoothing", type=float, default=0.0)
    parser.add_argument("--rotation_degrees", type=float, default=7.0, help="augmentation: max rotation")
    parser.add_argument("--translate", type=float, default=0.05, help="augmentation: max shift (fraction)")
    parser.add_argument("--scale_jitter", type=float, default=0.08, help="augmentation: zoom 1 +- this")
    parser.add_argument("--brightness", type=float, default=0.2, help="augmentation: brightness jitter")
    parser.add_argument("--contrast", type=float, default=0.2, help="augmentation: contrast jitter")
    parser.add_argument("--validation_steps", type=int, default=None, help="validate every N steps (default: each epoch)")
    parser.add_argument("--early_stopping_patience", type=int, default=5,
                        help="stop after this many validations without a better AUROC (0: never)")
    parser.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--use_ema", action="store_true",
                        help="validate and keep an exponential moving average of the weights and BatchNorm statistics")
    parser.add_argument("--ema_decay", type=float, default=0.999)
    parser.add_argument("--checkpointing_steps", type=int, default=500)
    parser.add_argument("--checkpoints_total_limit", type=int, default=2)
    parser.add_argument("--resume_from_checkpoint", default=None, help='"latest" or a checkpoint folder')
    parser.add_argument("--logging_steps", type=int, default=10)
    parser.add_argument("--num_bootstrap", type=int, default=1000, help="bootstrap resamples for the 95%% CIs")
    parser.add_argument("--final_dtype", default="fp16", choices=["fp16", "fp32"],
                        help="precision of the saved final model (fp16 safetensors load as fp32)")
    parser.add_argument("--output_dir", default="runs/classifier")
    parser.add_argument("--final_model_dir", default=None,
                        help="where the final model folder goes (default <output_dir>/model), e.g. "
                             "pretrained/pneumonia-classifier")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a non-empty --final_model_dir (it is only replaced once the new model is complete)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="run once per seed into <output_dir>/seed-<s> and report mean +- std")
    parser.add_argument("--dataloader_num_workers", type=int, default=0,
                        help="worker processes decoding the images (0: in the main process)")
    # Copied from train_scripts/train_ldm.py:logging_and_hub_flags
    parser.add_argument("--logging_dir", default="logs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report_to", default="tensorboard", help='"tensorboard", "none", ...')
    parser.add_argument("--push_to_hub", action="store_true")
    parser.add_argument("--hub_model_id", default=None)
    parser.add_argument("--hub_token", default=None, help="Hub token for --push_to_hub (default: the saved login)")
    # End copy
    args = apply_config_file(parser, argv, section="classifier")
    check_positive(parser, args, "resolution", "train_batch_size", "eval_batch_size", "learning_rate",
                   "gradient_accumulation_steps", "checkpointing_steps", "validation_steps", "max_train_steps",
                   "num_train_epochs", "logging_steps", "num_bootstrap", "max_train_samples", "max_eval_samples")
    try:
        args.architecture = resolve_architecture(args.model_config)
    except CXRInputError as err:
        parser.error(str(err))
    if args.resolution < 28:
        parser.error(f"--resolution must be at least 28, got {args.resolution}")
    if args.dataloader_num_workers < 0:
        parser.error(f"--dataloader_num_workers must be 0 or more, got {args.dataloader_num_workers}")
    if args.gradient_checkpointing:
        from transformers import ResNetForImageClassification

        if not ResNetForImageClassification.supports_gradient_checkpointing:
            parser.error("--gradient_checkpointing: transformers' ResNetForImageClassification does not support "
                         "gradient checkpointing; lower --train_batch_size or use --gradient_accumulation_steps")
    if not 0 <= args.validation_size < 1:
        parser.error(f"--validation_size must be in [0, 1), got {args.validation_size}")
    for name in ("synthetic_ratio", "duplicate_real_ratio", "label_smoothing", "early_stopping_patience"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.synthetic_ratio > 0 and args.duplicate_real_ratio > 0:
        parser.error("give either --synthetic_ratio or --duplicate_real_ratio (the control), not both")
    if args.synthetic_ratio > 0 and not args.synthetic_data_dir:
        parser.error("--synthetic_ratio needs --synthetic_data_dir")
    if args.synthetic_data_dir and not args.synthetic_ratio > 0:
        parser.error("--synthetic_data_dir needs --synthetic_ratio > 0")
    if args.train_data_dir is None and args.dataset_name is None:
        parser.error("give --train_data_dir (Kermany root, PneumoniaMNIST .npz or saved dataset) or --dataset_name")
    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id")
    if args.seeds is not None and len(set(args.seeds)) != len(args.seeds):
        parser.error("--seeds must not repeat a seed")
    if args.seeds is not None and args.final_model_dir:
        parser.error("--final_model_dir cannot be combined with --seeds (each seed writes <output_dir>/seed-<s>/model)")
    check_output_dirs(parser, args, "output_dir")
    if args.final_model_dir:  # checked now, not after hours of training
        try:
            check_output_dir(args.final_model_dir, overwrite=args.overwrite, flag="--final_model_dir",
                             protected=(args.train_data_dir, args.output_dir, args.synthetic_data_dir))
        except CXRInputError as err:
            parser.error(str(err))
    return args


# ----------------------------------------------------------------------------------------------------- one run
def predict(model, loader, accelerator, weight=None):
    """(labels, P(PNEUMONIA), mean weighted CE) over a prepared loader, gathered across processes."""
    index = pneumonia_index(accelerator.unwrap_model(model))
    model.eval()
    labels, probs, losses = [], [], []
    for batch in loader:
        with accelerator.autocast():
            probabilities, logits = class_probabilities(model, batch["pixel_values"], return_logits=True)
        loss = F.cross_entropy(logits, batch["labels"], weight=weight, reduction="none")
        p, targets, loss = accelerator.gather_for_metrics((probabilities[:, index].contiguous(), batch["labels"], loss))
        labels.append(targets.cpu())
        probs.append(p.cpu())
        losses.append(loss.cpu())
    model.train()
    return torch.cat(labels).numpy(), torch.cat(probs).numpy(), float(torch.cat(losses).mean())


def train_one(args, seed: int, output_dir: Path) -> dict:
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    from transformers import ResNetForImageClassification

    # Copied from train_scripts/train_ldm.py:accelerator
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    # End copy
    set_seed(seed)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)

    # Data
    splits, data_info = load_splits(args.train_data_dir, args.dataset_name, dataset=args.dataset,
                                    validation_size=args.validation_size, seed=args.split_seed,
                                    max_train_samples=args.max_train_samples, max_eval_samples=args.max_eval_samples)
    synthetic = read_synthetic_manifest(args.synthetic_data_dir) if args.synthetic_data_dir else None
    train_records, counts = mix_records(splits["train"], synthetic, synthetic_ratio=args.synthetic_ratio,
                                        duplicate_real_ratio=args.duplicate_real_ratio, seed=seed)
    weights = class_weights(train_records) if args.class_weighting == "balanced" else [1.0, 1.0]
    augment = {"rotation": args.rotation_degrees, "translate": args.translate, "scale": args.scale_jitter,
               "brightness": args.brightness, "contrast": args.contrast}
    train_tf = build_transforms(args.resolution, train=True, **augment)
    eval_tf = build_transforms(args.resolution, train=False)
    train_loader = make_dataloader(train_records, train_tf, args.train_batch_size, shuffle=True, seed=seed,
                                   num_workers=args.dataloader_num_workers,
                                   drop_last=len(train_records) >= args.train_batch_size)
    train_dataset = train_loader.dataset
    val_loader = make_dataloader(splits["validation"], eval_tf, args.eval_batch_size,
                                 num_workers=args.dataloader_num_workers)

    # Model
    model, processor, init = build_classifier(args.architecture, args.pretrained_model_name_or_path, args.resolution)
    model.train()
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if args.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    # a local max_train_steps: args (written to metrics.json) keeps the flag as given
    updates_per_epoch, max_train_steps, num_epochs = training_steps(
        len(train_loader), args.gradient_accumulation_steps, args.max_train_steps, args.num_train_epochs)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer,
                                 num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
                                 num_training_steps=max_train_steps * accelerator.num_processes)
    model, optimizer, train_loader, val_loader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, lr_scheduler)
    unwrapped = accelerator.unwrap_model(model)
    # EMA of parameters and BatchNorm buffers (torch's AveragedModel); validation, the best model and the final model
    # use it when --use_ema is given
    ema = AveragedModel(unwrapped, multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay), use_buffers=True) \
        if args.use_ema else None
    class_weight = torch.tensor(weights, dtype=torch.float32, device=accelerator.device)

    # Checkpoints: weights with save_pretrained (safetensors), EMA and the early-stopping state beside them
    stopping = EarlyStopping(args.early_stopping_patience, {"best_val": None})
    state = stopping.state  # checkpointed in trainer_state.json

    def save_hook(wrapped_models, model_weights, ckpt_dir):
        if accelerator.is_main_process:
            unwrapped.save_pretrained(os.path.join(ckpt_dir, "model"), safe_serialization=True)
            processor.save_pretrained(os.path.join(ckpt_dir, "model"))
            if ema:
                # AveragedModel: module + n_averaged; safetensors, never pickle
                save_file({k: v.contiguous() for k, v in ema.state_dict().items()},
                          os.path.join(ckpt_dir, "ema.safetensors"))
            Path(ckpt_dir, "trainer_state.json").write_text(json.dumps(state, indent=2))
            if (output_dir / "best").is_dir():  # self-contained: the best model so far travels with the checkpoint
                shutil.copytree(output_dir / "best", os.path.join(ckpt_dir, "best"), dirs_exist_ok=True)
        while model_weights:
            model_weights.pop()

    def load_hook(wrapped_models, ckpt_dir):
        loaded = ResNetForImageClassification.from_pretrained(os.path.join(ckpt_dir, "model"), dtype=torch.float32)
        unwrapped.load_state_dict(loaded.state_dict())
        del loaded
        if ema:
            ema.load_state_dict(load_file(os.path.join(ckpt_dir, "ema.safetensors"), device=str(accelerator.device)))
        state.update(json.loads(Path(ckpt_dir, "trainer_state.json").read_text()))
        if accelerator.is_main_process and Path(ckpt_dir, "best").is_dir():  # the best as of this checkpoint
            shutil.rmtree(output_dir / "best", ignore_errors=True)
            shutil.copytree(os.path.join(ckpt_dir, "best"), output_dir / "best")
        while wrapped_models:
            wrapped_models.pop()

    handles = [accelerator.register_save_state_pre_hook(save_hook), accelerator.register_load_state_pre_hook(load_hook)]
    # Trackers, metrics.jsonl and the resume from this seed's folder (the hooks above restore the weights, the EMA,
    # the early-stopping state and best/ of the checkpoint)
    # Copied from train_scripts/train_ldm.py:trackers_and_resume with "train_ldm"->"train_classifier", args.output_dir->output_dir
    if ema:
        ema.to(accelerator.device)
    if accelerator.is_main_process and args.report_to != "none":
        tracker_config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("train_classifier", config=tracker_config)
    history = JsonlLogger(output_dir / "metrics.jsonl") if accelerator.is_main_process else None
    global_step, first_epoch, skip_batches = resume_training(
        accelerator, output_dir, args.resume_from_checkpoint, updates_per_epoch, args.gradient_accumulation_steps)
    # End copy

    def validate(step: int) -> None:
        evaluated = ema.module if ema else model
        labels, probs, val_loss = predict(evaluated, val_loader, accelerator, class_weight)
        val_accuracy = float(((probs >= 0.5) == labels).mean())
        auroc = evaluate_predictions(labels, probs, n_bootstrap=0)["metrics"]["auroc"]["value"]
        improved = stopping.update(step, (auroc if math.isfinite(auroc) else -1.0, -val_loss))
        if improved:
            state["best_val"] = {"auroc": auroc, "accuracy": val_accuracy, "loss": val_loss}
            if accelerator.is_main_process:
                save_classifier(ema.module if ema else unwrapped, processor, output_dir / "best")
                (output_dir / "best" / "best.json").write_text(json.dumps({"step": step, **state["best_val"]}))
        if accelerator.is_main_process:
            history.log(step, val_loss=val_loss, val_accuracy=val_accuracy, val_auroc=auroc)
        if args.report_to != "none":
            accelerator.log({"val_loss": val_loss, "val_accuracy": val_accuracy, "val_auroc": auroc}, step=step)
        accelerator.print(f"step {step}: val loss {val_loss:.4f} acc {val_accuracy:.4f} AUROC {auroc:.4f}"
                          f"{' (best)' if improved else ''}")

    logger.info(f"{counts['total']} training images ({counts}), {len(splits['validation'])} validation, "
                f"{len(splits['test'])} test; {max_train_steps} steps of {args.train_batch_size} at "
                f"{args.resolution}px; {args.architecture} ({init}); class weights {weights}")
    progress = tqdm(range(max_train_steps), initial=global_step, desc=f"train_classifier seed {seed}",
                    disable=not accelerator.is_local_main_process)
    start = time.time()
    window = {"loss": 0.0, "correct": 0, "seen": 0}
    done = state["stopped_early"] or global_step >= max_train_steps
    for epoch in range(first_epoch, num_epochs):
        if done:
            break
        train_loader.set_epoch(epoch)  # the shuffle order of epoch `epoch`, also right after a resume
        train_dataset.set_epoch(epoch)  # and its augmentations
        epoch_loader = accelerator.skip_first_batches(train_loader, skip_batches) if skip_batches else train_loader
        skip_batches = 0
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    logits = model(pixel_values=batch["pixel_values"]).logits.float()
                loss = F.cross_entropy(logits, batch["labels"], weight=class_weight,
                                       label_smoothing=args.label_smoothing)
                # Copied from train_scripts/train_ldm.py:optimizer_step with trainable->model.parameters()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
                # End copy
            window["loss"] += loss.item() * len(batch["labels"])
            window["correct"] += int((logits.argmax(-1) == batch["labels"]).sum())
            window["seen"] += len(batch["labels"])
            # Copied from train_scripts/train_ldm.py:end_of_step with ema.step(unet.parameters())->ema.update_parameters(unwrapped)
            if not accelerator.sync_gradients:
                continue
            if ema:
                ema.update_parameters(unwrapped)
            global_step += 1
            progress.update(1)
            # End copy
            progress.set_postfix(loss=f"{loss.item():.4f}")
            if global_step % args.logging_steps == 0 or global_step == max_train_steps:
                logs = {"train_loss": window["loss"] / window["seen"],
                        "train_accuracy": window["correct"] / window["seen"], "lr": lr_scheduler.get_last_lr()[0]}
                window = {"loss": 0.0, "correct": 0, "seen": 0}
                if accelerator.is_main_process:
                    history.log(global_step, **logs)
                if args.report_to != "none":
                    accelerator.log(logs, step=global_step)
            end_of_epoch = global_step % updates_per_epoch == 0
            if (args.validation_steps and global_step % args.validation_steps == 0) or \
                    (not args.validation_steps and end_of_epoch) or global_step == max_train_steps:
                validate(global_step)
            if global_step % args.checkpointing_steps == 0 and accelerator.is_main_process:
                save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)
            if state["stopped_early"] or global_step >= max_train_steps:
                done = True
                break
    progress.close()
    if state["best_step"] is None:  # e.g. resumed at the very end: validate what we have
        validate(global_step)
    accelerator.wait_for_everyone()
    seconds = time.time() - start

    result: dict = {}
    if accelerator.is_main_process:
        result = finish(args, seed, output_dir, splits, data_info, counts, weights, init, state, global_step,
                        max_train_steps, seconds, accelerator, history)
    for handle in handles:
        handle.remove()
    accelerator.end_training()
    accelerator.free_memory()
    return result


def finish(args, seed, output_dir, splits, data_info, counts, weights, init, state, global_step, max_train_steps,
           seconds, accelerator, history) -> dict:
    """Best model -> <output_dir>/model (final dtype), test metrics with CIs, plots, metrics.json, model card."""
    final_dir = Path(args.final_model_dir) if args.final_model_dir else output_dir / "model"
    with staged_output_dir(final_dir) as model_dir:  # the old folder is replaced only once this one is complete
        metrics = _write_final_model(args, seed, output_dir, model_dir, str(final_dir), splits, data_info, counts,
                                     weights, init, state, global_step, max_train_steps, seconds, accelerator, history)
    shutil.copy(final_dir / "metrics.json", output_dir / "metrics.json")
    if args.push_to_hub:
        push_folder(final_dir, args.hub_model_id, token=args.hub_token)
    return metrics


def _write_final_model(args, seed, output_dir, model_dir, location, splits, data_info, counts, weights, init, state,
                       global_step, max_train_steps, seconds, accelerator, history) -> dict:
    best, processor = load_classifier(output_dir / "best")
    save_classifier(best, processor, model_dir, dtype=args.final_dtype)
    model, _ = load_classifier(model_dir, device=str(accelerator.device))  # exactly what users will load
    loader = make_dataloader(splits["test"], build_transforms(args.resolution, train=False), args.eval_batch_size,
                             num_workers=args.dataloader_num_workers)
    labels, probs = [], []
    for batch in loader:
        probs.append(pneumonia_probabilities(model, batch["pixel_values"]).cpu())
        labels.append(batch["labels"])
    labels, probs = torch.cat(labels).numpy(), torch.cat(probs).numpy()
    test = evaluate_predictions(labels, probs, threshold=0.5, n_bootstrap=args.num_bootstrap, seed=seed)

    plot_training_curves(history.history, model_dir / "training_curves.png",
                         f"{args.architecture} {args.resolution}px, seed {seed}")
    plot_confusion_matrix(test["confusion_matrix"], model_dir / "confusion_matrix.png",
                          title=f"Test confusion matrix (n={test['n']})")
    plot_roc(labels, probs, model_dir / "roc.png", title=f"Test ROC (n={test['n']})")
    weights_file = model_dir / "model.safetensors"
    metrics = {
        "test": test,
        "validation_best": {"step": state["best_step"], **(state["best_val"] or {})},
        "training": {"seed": seed, "global_step": global_step, "max_train_steps": max_train_steps,
                     "stopped_early": state["stopped_early"], "seconds": round(seconds, 1),
                     "seconds_per_step": round(seconds / max(1, global_step), 3), "device": str(accelerator.device),
                     "num_processes": accelerator.num_processes},
        "data": {**data_info, "train_counts": counts, "validation_images": len(splits["validation"]),
                 "test_images": len(splits["test"]), "class_weights": weights,
                 "synthetic_data_dir": args.synthetic_data_dir, "synthetic_ratio": args.synthetic_ratio,
                 "duplicate_real_ratio": args.duplicate_real_ratio},
        "model": {"architecture": args.architecture, "init": init, "resolution": args.resolution,
                  "parameters": sum(p.numel() for p in model.parameters()), "weights_dtype": args.final_dtype,
                  "weights_mb": round(weights_file.stat().st_size / 2**20, 1) if weights_file.is_file() else None},
        "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, list, type(None)))},
    }
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_classifier_card(model_dir, metrics, repo_id=args.hub_model_id or location, model_name=args.hub_model_id)
    lines = [f"{m:12s} {v['value']:.4f} [{v['ci_low']:.4f}, {v['ci_high']:.4f}]" for m, v in test["metrics"].items()]
    accelerator.print(f"Test ({test['n']} images, seed {seed}):\n" + "\n".join(lines))
    return metrics


# ----------------------------------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    create_hub_repo(args)  # main process: a bad token or no network fails now, not after the training
    output_dir = Path(args.output_dir)
    if args.seeds is None:
        return train_one(args, args.seed, output_dir)
    results = []
    for seed in args.seeds:
        run_args = copy.copy(args)
        run_args.seed = seed
        results.append(train_one(run_args, seed, output_dir / f"seed-{seed}"))
    if not all(results):  # not the main process
        return None
    summary = {"seeds": list(args.seeds), "test": summarize_seeds([r["test"] for r in results]),
               "train_counts": results[0]["data"]["train_counts"],
               "synthetic_ratio": args.synthetic_ratio, "duplicate_real_ratio": args.duplicate_real_ratio,
               "synthetic_data_dir": args.synthetic_data_dir}
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics_summary.json").write_text(json.dumps(summary, indent=2))
    print(f"Test metrics over seeds {args.seeds} (mean +- std):")
    for name in METRICS:
        print(f"  {name:12s} {summary['test'][name]['mean']:.4f} +- {summary['test'][name]['std']:.4f}")
    return summary


if __name__ == "__main__":
    sys.exit(run_script(lambda: main() and 0))  # bad input (incl. --push_to_hub without a Hub): one sentence, exit 2
