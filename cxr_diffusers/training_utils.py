"""Helpers shared by the accelerate scripts in `train_scripts/` (data, config files, checkpoints, plots).

The scripts stay readable top to bottom like diffusers' `examples/`; what would otherwise be copied into each of them
lives here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .errors import CXRInputError, DataError

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


# ----------------------------------------------------------------------------------------------------- entry point
def run_script(main: Callable[[], int | None]) -> int:
    """Run a script's `main`: bad input (data, models, checkpoints) ends in one sentence and exit code 2."""
    try:
        return int(main() or 0)
    except CXRInputError as error:
        print(f"{Path(sys.argv[0]).name}: error: {error}", file=sys.stderr)
        return 2


def load_checkpoint(accelerator, checkpoint: str | os.PathLike) -> None:
    """`accelerator.load_state(checkpoint)` with a one-sentence error for an incomplete or corrupt checkpoint."""
    try:
        accelerator.load_state(str(checkpoint))
    except CXRInputError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, EOFError) as error:
        raise CXRInputError(
            f"Cannot resume from {checkpoint}: it is not a complete checkpoint written by this script "
            f"({type(error).__name__}); delete it or resume from an older one."
        ) from error


# ----------------------------------------------------------------------------------------------------- config files
def apply_config_file(parser: argparse.ArgumentParser, argv: list[str] | None = None,
                      section: str | None = None) -> argparse.Namespace:
    """
    Parse `argv`. The JSON file given by `--config` supplies defaults that explicit flags override: its `common`
    section applies to every script, then the script's own `section` (`vae`, `ldm`, `ddpm`, `classifier`).
    Unknown keys are an error (a typo would otherwise be silently ignored).
    """
    args, _ = parser.parse_known_args(argv)
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            parser.error(f"--config file {path} does not exist")
        try:
            document = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            parser.error(f"--config file {path} is not valid JSON: {err}")
        values = {**document.get("common", {}), **(document.get(section, {}) if section else {})}
        known = {action.dest for action in parser._actions}
        unknown = sorted(set(values) - known)
        if unknown:
            parser.error(f"--config file {path} sets unknown flags for this script: {', '.join(unknown)}")
        parser.set_defaults(**values)
    return parser.parse_args(argv)


def check_positive(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """`parser.error` (one line, exit code 2) unless every named numeric flag is > 0."""
    for name in names:
        value = getattr(args, name)
        if value is not None and not value > 0:
            parser.error(f"--{name} must be positive, got {value}")


def check_output_dirs(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    """`parser.error` (one line, before any model loads) unless each named folder flag can be created and written."""
    from .utils.output_dir import check_writable_dir

    for name in names:
        value = getattr(args, name, None)
        if value is None:
            continue
        try:
            check_writable_dir(value, f"--{name}")
        except CXRInputError as error:
            parser.error(str(error))


# ----------------------------------------------------------------------------------------------------- data
def load_training_dataset(train_data_dir: str | None = None, dataset_name: str | None = None, split: str = "train"):
    """
    The split `split` of a dataset: a folder written by `cxr-diffusers data build` / `save_to_disk`, a folder of
    images (optionally with metadata.csv), or a Hub dataset id (`dataset_name`, also from the local Hub cache).
    """
    import datasets

    if train_data_dir:
        root = Path(train_data_dir)
        if not root.exists():
            raise DataError(f"--train_data_dir {root} does not exist.")
        if (root / "dataset_dict.json").is_file() or (root / "dataset_info.json").is_file():
            data = datasets.load_from_disk(str(root))
        else:
            from .data import load_image_folder

            data = load_image_folder(str(root))
    elif dataset_name:
        data = datasets.load_dataset(dataset_name)
    else:
        raise DataError("Give --train_data_dir (a built dataset or image folder) or --dataset_name.")
    if isinstance(data, datasets.DatasetDict):
        if split not in data:
            raise DataError(f"The dataset has no {split!r} split (it has {', '.join(data)}).")
        data = data[split]
    if "image" not in data.column_names:
        raise DataError(f"The dataset has no 'image' column (columns: {', '.join(data.column_names)}).")
    return data


def select_train_subset(dataset, max_train_samples: int | None, seed: int):
    """`--max_train_samples`, the same in every script: a seeded random subset (combined datasets are concatenated
    source by source, so the first N images would all come from the first source)."""
    if not max_train_samples or max_train_samples >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(max_train_samples))


def image_to_tensor(image, resolution: int | None = None) -> torch.Tensor:
    """PIL image -> float tensor (1, H, W) in [-1, 1], resized/padded to `resolution` with aspect ratio kept."""
    from .data.transforms import resize_and_pad, to_tensor

    image = image.convert("L")
    if resolution is not None and image.size != (resolution, resolution):
        image = resize_and_pad(image, resolution)
    return to_tensor(image)


def random_crop(tensor: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random `size` x `size` crop of a (C, H, W) tensor (uses the torch RNG, restored by accelerate on resume)."""
    _, height, width = tensor.shape
    if size > height or size > width:
        raise CXRInputError(f"crop size {size} is larger than the image ({height}x{width}).")
    top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
    return tensor[:, top : top + size, left : left + size]


@torch.no_grad()
def vae_reconstruction_metrics(vae, dataset, resolution: int, count: int, device=None):
    """
    Mean PSNR / SSIM of posterior-mode reconstructions of `count` images spread evenly over `dataset` (so that every
    source of a combined split is represented) at `resolution`, computed on uint8 images (as a viewer sees them),
    and the sharpness ratio: mean variance of the Laplacian of the reconstructions / that of the originals (1 = as
    sharp as the real images; MSE-trained decoders reach about 0.1 at 30 dB). Overall and per `source` where the
    dataset has that column. Returns the metrics and up to 8 (real, reconstruction) pairs.
    """
    import torch
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from .evaluation.image_quality import sharpness

    device = device or next(vae.parameters()).device
    count = min(count, len(dataset))
    indices = sorted(set(np.linspace(0, len(dataset) - 1, count).round().astype(int).tolist()))
    sources = dataset.column_names if hasattr(dataset, "column_names") else []
    was_training = vae.training
    vae.eval()
    rows, pairs, per_source = [], [], {}
    with torch.no_grad():
        for index in indices:
            row = dataset[index]
            x = image_to_tensor(row["image"], resolution)[None].to(device)
            y = vae(x).sample.clamp(-1, 1)
            real = ((x[0, 0].cpu().numpy() + 1) * 127.5).round().astype(np.uint8)
            fake = ((y[0, 0].cpu().numpy() + 1) * 127.5).round().astype(np.uint8)
            values = (peak_signal_noise_ratio(real, fake, data_range=255), structural_similarity(real, fake, data_range=255),
                      sharpness(fake), sharpness(real))
            rows.append(values)
            if "source" in sources:
                per_source.setdefault(row["source"], []).append(values)
            if len(pairs) < 8:
                pairs.append((real, fake))
    vae.train(was_training)

    def summarise(values: list[tuple[float, float, float, float]]) -> dict:
        psnr, ssim, sharp_fake, sharp_real = (np.asarray(v, dtype=np.float64) for v in zip(*values))
        return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean()),
                "sharpness_ratio": float(sharp_fake.mean() / max(sharp_real.mean(), 1e-12)), "num_images": len(values)}

    metrics = summarise(rows)
    if per_source:
        metrics["per_source"] = {name: summarise(values) for name, values in sorted(per_source.items())}
    return metrics, pairs


# ----------------------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """`checkpoint-<step>` folders in `output_dir`, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and CHECKPOINT_PATTERN.match(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.match(p.name).group(1)))


def resolve_resume_checkpoint(output_dir: str, resume_from_checkpoint: str | None) -> Path | None:
    """The checkpoint folder to resume from (`latest`, a folder name in `output_dir`, or a path), or None."""
    if not resume_from_checkpoint:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir():
        path = Path(output_dir) / resume_from_checkpoint
    if not path.is_dir():
        raise CXRInputError(f"--resume_from_checkpoint {resume_from_checkpoint!r} not found (looked in {output_dir}).")
    return path


def checkpoint_step(path: Path) -> int:
    match = CHECKPOINT_PATTERN.match(path.name)
    if not match:
        raise CXRInputError(f"{path} is not a checkpoint-<step> folder.")
    return int(match.group(1))


def prune_checkpoints(output_dir: str, total_limit: int | None) -> None:
    """Delete the oldest checkpoints so that, after saving one more, at most `total_limit` remain."""
    if not total_limit:
        return
    checkpoints = list_checkpoints(output_dir)
    for old in checkpoints[: max(0, len(checkpoints) - total_limit + 1)]:
        shutil.rmtree(old)


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None) -> Path:
    """`accelerator.save_state` into `<output_dir>/checkpoint-<step>`, after deleting the oldest checkpoints so that at
    most `total_limit` remain (call it on the main process)."""
    prune_checkpoints(str(output_dir), total_limit)
    path = Path(output_dir) / f"checkpoint-{step}"
    accelerator.save_state(str(path))
    return path


def training_steps(num_batches: int, gradient_accumulation_steps: int, max_train_steps: int | None,
                   num_train_epochs: int) -> tuple[int, int, int]:
    """
    `(updates_per_epoch, max_train_steps, num_epochs)` for a loader of `num_batches` batches per epoch, as diffusers'
    examples compute them: an optimiser update every `gradient_accumulation_steps` batches, `max_train_steps` updates
    in all (default: `num_train_epochs` epochs), and the epochs that takes (the last one may stop part way).
    """
    updates_per_epoch = math.ceil(num_batches / gradient_accumulation_steps)
    if max_train_steps is None:
        max_train_steps = num_train_epochs * updates_per_epoch
    return updates_per_epoch, max_train_steps, math.ceil(max_train_steps / updates_per_epoch)


def resume_training(accelerator, output_dir: str | os.PathLike, resume_from_checkpoint: str | None,
                    updates_per_epoch: int, gradient_accumulation_steps: int) -> tuple[int, int, int]:
    """
    `(global_step, first_epoch, skip_batches)` to start the loop from: `(0, 0, 0)` for a fresh run (also for
    `--resume_from_checkpoint latest` when there is no checkpoint yet), else the state of the checkpoint (`latest`,
    a folder name in `output_dir`, or a path) is loaded and the loop continues at its step: in the epoch it was
    saved in, after the batches that epoch had already used (so the data order is exactly that of an uninterrupted run).
    """
    checkpoint = resolve_resume_checkpoint(str(output_dir), resume_from_checkpoint)
    if checkpoint is None:
        return 0, 0, 0
    accelerator.print(f"Resuming from {checkpoint}")
    load_checkpoint(accelerator, checkpoint)
    global_step = checkpoint_step(checkpoint)
    first_epoch = global_step // updates_per_epoch
    skip_batches = (global_step % updates_per_epoch) * gradient_accumulation_steps
    return global_step, first_epoch, skip_batches


def register_diffusers_checkpoint_hooks(accelerator, models: dict[str, Any], ema_models: dict[str, Any] | None = None):
    """
    Make `accelerator.save_state` write each model with `save_pretrained` (diffusers format, safetensors) into
    `<checkpoint>/<name>` and `load_state` read them back, as diffusers' examples do. `models` maps a folder name to
    the (unwrapped) model; `ema_models` maps a folder name to an `EMAModel`.
    """
    ema_models = ema_models or {}

    def save_hook(wrapped_models, weights, output_dir):
        if accelerator.is_main_process:
            for name, ema in ema_models.items():
                ema.save_pretrained(os.path.join(output_dir, name))
            for name, model in models.items():
                model.save_pretrained(os.path.join(output_dir, name))
        while weights:  # models are saved above; don't let accelerate pickle them again
            weights.pop()

    def load_hook(wrapped_models, input_dir):
        from diffusers.training_utils import EMAModel

        for name, ema in ema_models.items():
            loaded = EMAModel.from_pretrained(os.path.join(input_dir, name), type(ema_model_of(ema, models, name)))
            ema.load_state_dict(loaded.state_dict())
            ema.to(accelerator.device)
            del loaded
        for name, model in models.items():
            loaded = type(model).from_pretrained(os.path.join(input_dir, name))
            model.register_to_config(**{k: v for k, v in loaded.config.items() if not k.startswith("_")})
            model.load_state_dict(loaded.state_dict())
            del loaded
        while wrapped_models:
            wrapped_models.pop()

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def ema_model_of(ema, models: dict[str, Any], ema_name: str):
    """The model an EMA folder such as `unet_ema` shadows (`unet`)."""
    base = ema_name[: -len("_ema")] if ema_name.endswith("_ema") else ema_name
    if base not in models:
        raise CXRInputError(f"EMA folder {ema_name!r} has no matching model in {list(models)}.")
    return models[base]


@contextlib.contextmanager
def ema_weights(ema, model):
    """Within the block `model` holds the EMA weights of `ema` (a diffusers `EMAModel`, or None: no change); its own
    weights are restored afterwards, also on an error. For validating the weights that will be shipped."""
    if ema is None:
        yield model
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield model
    finally:
        ema.restore(model.parameters())


class EarlyStopping:
    """
    Stop after `patience` validations in a row without a better key (0 = never); keys compare as tuples, higher
    is better (e.g. `(auroc, -loss)`). The state is a plain dict, so that checkpoints can store and restore it.
    """

    def __init__(self, patience: int, state: dict | None = None):
        self.patience = patience
        self.state = {"best_key": None, "best_step": None, "bad_validations": 0, "stopped_early": False,
                      **(state or {})}

    def update(self, step: int, key) -> bool:
        """Record the validation at `step`; True when it is the best so far."""
        key = list(key)
        improved = self.state["best_key"] is None or key > self.state["best_key"]
        if improved:
            self.state.update(best_key=key, best_step=step, bad_validations=0)
        else:
            self.state["bad_validations"] += 1
        if self.patience and self.state["bad_validations"] >= self.patience:
            self.state["stopped_early"] = True
        return improved

    @property
    def should_stop(self) -> bool:
        return bool(self.state["stopped_early"])


# ----------------------------------------------------------------------------------------------------- plots and logs
def save_loss_plot(history: dict[str, list[tuple[int, float]]], path: str | os.PathLike, title: str = "") -> None:
    """Plot named (step, value) series on a log axis (smoothed) into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in history.items():
        if not points:
            continue
        steps, values = zip(*points)
        values = np.asarray(values, dtype=np.float64)
        window = max(1, len(values) // 50)
        smooth = np.convolve(values, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1 :], smooth, label=name)
    ax.set_xlabel("step")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


class JsonlLogger:
    """Append metrics as JSON lines (readable without tensorboard) and keep them for plots."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.history: dict[str, list[tuple[int, float]]] = {}
        if self.path.exists():  # resumed run: keep the earlier curve
            for line in self.path.read_text().splitlines():
                record = json.loads(line)
                for key, value in record.items():
                    if key != "step" and isinstance(value, (int, float)):
                        self.history.setdefault(key, []).append((record["step"], value))

    def log(self, step: int, **values: float) -> None:
        values = {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}
        for key, value in values.items():
            self.history.setdefault(key, []).append((step, value))
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": step, **values}) + "\n")


def collate_images(examples: list[dict], key: str = "pixel_values") -> dict[str, torch.Tensor]:
    return {key: torch.stack([e[key] for e in examples])}


def make_transform(function: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """Wrap a per-example function for `Dataset.with_transform` (which passes batches as dicts of lists)."""

    def transform(batch: dict) -> dict:
        keys = list(batch)
        rows = [dict(zip(keys, values)) for values in zip(*batch.values())]
        outputs = [function(row) for row in rows]
        return {key: [o[key] for o in outputs] for key in outputs[0]} if outputs else {}

    return transform
