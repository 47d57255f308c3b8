"""End-to-end evaluation of a pipeline against real images (what `cxr-diffusers evaluate` runs).

    pipe = CXRPipeline.from_pretrained("pretrained/cxr-ldm-small")
    real = load_reference("/path/to/kermany", "test", max_images=500)
    train = load_reference("/path/to/kermany", "train", max_images=1000)
    metrics = run_evaluation(pipe, real.images, "outputs/evaluation", EvaluationConfig(num_images_per_prompt=50),
                             train_images=train.images, classifier="pretrained/pneumonia-classifier")

Writes metrics.json, intensity_histograms.png, metric_bars.png, real_vs_generated.png, nearest_neighbours.png and
generated/*.png to the output folder. The generated PNGs and the two image grids carry a provenance record (SYNTHETIC,
NOT FOR CLINICAL USE; see `cxr_diffusers.provenance`).

`run_evaluation` is a sequence of parts that can be used on their own:

- inputs: `evaluation_pipeline` (the pipeline to sample with; the caller's scheduler is left alone), `build_extractors`,
  `generate` (-> `GeneratedImages`: images with their prompts, seeds and provenance), `save_generated`,
  `extract_features` (-> `features[extractor][set]` arrays);
- steps, each returning its sections of metrics.json as a JSON-serialisable dict (a skipped step or part says so in
  a "notes" list): `header_step` (config, counts, speed), `fidelity_step`, `image_statistics_step` (per-image
  statistics and MS-SSIM diversity), `reconstruction_step`, `distribution_step`, `memorization_step`,
  `conditioning_step`; `merge_steps` joins them;
- `write_plots`: the histogram, bar and real-vs-generated figures.
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.checks import IMAGE_EXTENSIONS
from ..errors import CXRInputError, DataError
from ..provenance import attach_provenance, make_record
from .conditioning import (
    DEFAULT_PROMPTS,
    GROUP_PROMPTS,
    check_classifier_labels,
    conditioning_agreement,
    expected_class,
    label_from_labels,
)
from .distribution import distribution_metrics
from .features import (
    ClassifierFeatureExtractor,
    InceptionFeatureExtractor,
    VAEFeatureExtractor,
    XRVFeatureExtractor,
    available_extractors,
    images_to_tensor,
)
from .fidelity import example_group, grouped_fidelity, prompt_group
from .image_quality import image_statistics, ms_ssim, pairwise_ms_ssim, psnr, ssim
from .memorization import DEFAULT_COSINE_THRESHOLD, DEFAULT_SSIM_THRESHOLD, memorization_audit, save_nearest_grid
from .report import plot_intensity_histograms, plot_metric_bars, save_real_vs_generated_grid, write_metrics_json

__all__ = [
    "EvaluationConfig",
    "GeneratedImages",
    "Reference",
    "build_extractors",
    "conditioning_step",
    "distribution_step",
    "evaluation_pipeline",
    "extract_features",
    "fidelity_step",
    "find_classifier",
    "generate",
    "generate_images",
    "header_step",
    "image_statistics_step",
    "load_reference",
    "memorization_step",
    "merge_steps",
    "reconstruction_step",
    "run_evaluation",
    "save_generated",
    "write_plots",
]


FEATURE_CHOICES = ("vae", "classifier", "inception", "xrv")


@dataclass
class EvaluationConfig:
    """Settings of one evaluation run (all recorded in metrics.json)."""

    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS.values()))
    num_images_per_prompt: int = 50
    seed: int = 0
    batch_size: int = 8
    num_inference_steps: int = 25
    guidance_scale: float = 4.0
    guidance_rescale: float = 0.0
    scheduler: str | None = None
    size: int | None = None
    features: Sequence[str] = ("vae", "classifier")
    feature_vae: str | None = None  # VAE (pipeline or VAE folder) for "vae" features; default: the pipeline's own
    real_vs_real: bool = False
    memorization_size: int = 64
    ssim_threshold: float = DEFAULT_SSIM_THRESHOLD
    cosine_threshold: float = DEFAULT_COSINE_THRESHOLD
    k: int = 5
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    ms_ssim_pairs: int = 200
    reconstruction_images: int = 16
    grid_images: int = 8
    save_images: bool = True
    progress: bool = True


@dataclass
class Reference:
    """Real images of one split, with their class (NORMAL / PNEUMONIA, or None when unknown)."""

    images: list
    classes: list[str | None]
    source: str
    skipped: list[str] = field(default_factory=list)  # unreadable images, left out (and counted)
    groups: list[str | None] | None = None  # prompt group per image (`fidelity.example_group`), where known


# ------------------------------------------------------------------------------------------------------ data
def _subsample(n: int, max_images: int | None, seed: int) -> list[int]:
    if max_images is None or n <= max_images:
        return list(range(n))
    return sorted(np.random.default_rng(seed).choice(n, size=int(max_images), replace=False).tolist())


def _is_kermany(root: Path) -> bool:
    from ..data.pneumonia import find_kermany_root

    try:
        find_kermany_root(root)
    except (DataError, OSError):
        return False
    return True


def load_reference(path: str | os.PathLike, split: str = "test", max_images: int | None = None, seed: int = 0) -> Reference:
    """Real images from a dataset saved by `cxr-diffusers data build`, a Kermany folder, or a folder of images.

    For a folder of images `split` is ignored and the class comes from the parent folder name (the word "pneumonia":
    PNEUMONIA; "normal" or "healthy": NORMAL; otherwise unknown). `max_images` keeps a random subset (seeded).
    """
    from PIL import Image

    root = Path(path)
    if not root.exists():
        raise DataError(f"The reference data {root} does not exist.")
    dsd = None
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        from ..data import load_saved

        dsd = load_saved(root)
    elif _is_kermany(root):
        from ..data import load_pneumonia

        dsd = load_pneumonia(root, check_images="exists")
    if dsd is not None:
        if split not in dsd:
            raise DataError(f"The dataset {root} has no {split!r} split (it has {', '.join(dsd)}).")
        ds = dsd[split]
        rows = ds.select(_subsample(len(ds), max_images, seed))
        columns = rows.column_names
        labels = rows["labels"] if "labels" in columns else [None] * len(rows)
        sources = rows["source"] if "source" in columns else [None] * len(rows)
        ages = rows["age"] if "age" in columns else [None] * len(rows)
        images, classes, groups, skipped = [], [], [], []
        for index in range(len(rows)):
            try:
                images.append(rows[index]["image"].convert("L"))
            except (OSError, ValueError, SyntaxError) as err:  # an unreadable image file: skip it and count it
                skipped.append(f"row {index} ({type(err).__name__})")
                continue
            classes.append(label_from_labels(labels[index]))
            groups.append(example_group(sources[index], labels[index], ages[index]))
        return _checked_reference(Reference(images, classes, f"{root}:{split}", skipped, groups))
    files = sorted(f for f in glob.glob(str(root / "**" / "*"), recursive=True) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise DataError(f"No images ({', '.join(IMAGE_EXTENSIONS)}) were found under {root}.")
    files = [files[i] for i in _subsample(len(files), max_images, seed)]

    def folder_class(file: str) -> str | None:
        words = set(re.split(r"[^a-z]+", Path(file).parent.name.lower()))
        return "PNEUMONIA" if "pneumonia" in words else "NORMAL" if words & {"normal", "healthy"} else None

    images, classes, skipped = [], [], []
    for file in files:
        try:
            with Image.open(file) as image:
                images.append(image.convert("L"))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            skipped.append(f"{file} ({type(err).__name__})")
            continue
        classes.append(folder_class(file))
    return _checked_reference(Reference(images, classes, str(root), skipped))


def _checked_reference(reference: Reference) -> Reference:
    """Warn about skipped unreadable images; refuse a reference with none left."""
    if reference.skipped:
        warnings.warn(f"{len(reference.skipped)} unreadable image(s) in {reference.source} were skipped, e.g. "
                      f"{reference.skipped[0]}.", stacklevel=3)
    if not reference.images:
        raise DataError(f"None of the images in {reference.source} could be read ({len(reference.skipped)} tried).")
    return reference


def find_classifier(search_dirs: Sequence[str | os.PathLike] | None = None) -> str | None:
    """The first image-classification model folder (a `config.json` with an `id2label`) named `*classif*` under
    `search_dirs` (default: `./pretrained`, then the repository's `pretrained/`), or None."""
    if search_dirs is None:
        search_dirs = ("pretrained", Path(__file__).resolve().parents[2] / "pretrained")
    for folder in search_dirs:
        for candidate in sorted(glob.glob(os.path.join(str(folder), "*classif*", "config.json"))):
            try:
                config = json.loads(Path(candidate).read_text())
            except (OSError, ValueError):
                continue
            if "id2label" in config:
                return str(Path(candidate).parent)
    return None


# ------------------------------------------------------------------------------------------------ generation
def evaluation_pipeline(pipe, scheduler: str | None = None):
    """`pipe` itself, or with a `scheduler` name (`cxr_diffusers.schedulers`) a pipeline of the same modules with a
    scheduler of its own: the caller's `pipe.scheduler` is never replaced or changed."""
    if not scheduler:
        return pipe
    from ..schedulers import scheduler_from_name

    progress_config = dict(getattr(pipe, "_progress_bar_config", {}))
    own = type(pipe)(**{**pipe.components, "scheduler": scheduler_from_name(scheduler, pipe.scheduler.config)})
    own.set_progress_bar_config(**progress_config)
    return own


def generate_images(
    pipe,
    prompts: Sequence[str],
    num_images_per_prompt: int,
    seed: int = 0,
    batch_size: int = 8,
    num_inference_steps: int = 25,
    guidance_scale: float = 4.0,
    size: int | None = None,
    progress: bool = True,
    guidance_rescale: float = 0.0,
):
    """Images (N, 1, H, W) in [0, 1], N = len(prompts) * num_images_per_prompt, image i of prompt p seeded with
    `seed + p * num_images_per_prompt + i` (the convention of `cxr-diffusers generate`, independent of the batch
    size). Returns (images, prompt of each image, seed of each image, seconds per image). A non-zero
    `guidance_rescale` is passed to the pipeline (Lin et al. 2023)."""
    import torch
    from tqdm.auto import tqdm

    if num_images_per_prompt < 1 or batch_size < 1:
        raise CXRInputError("num_images_per_prompt and batch_size must be at least 1.")
    pipe.set_progress_bar_config(disable=True)
    out, image_prompts, seeds = [], [], []
    total = len(prompts) * num_images_per_prompt
    start = time.perf_counter()
    with tqdm(total=total, desc="generating", disable=not progress, unit="img") as bar:
        for p, prompt in enumerate(prompts):
            for first in range(0, num_images_per_prompt, batch_size):
                chunk = [seed + p * num_images_per_prompt + i for i in range(first, min(first + batch_size, num_images_per_prompt))]
                images = pipe(
                    prompt,
                    height=size,
                    width=size,
                    num_inference_steps=num_inference_steps,
                    guidance_scale=guidance_scale,
                    **({"guidance_rescale": guidance_rescale} if guidance_rescale else {}),
                    num_images_per_prompt=len(chunk),
                    generator=[torch.Generator().manual_seed(s) for s in chunk],
                    output_type="pt",
                ).images
                out.append(images.float().cpu())
                image_prompts += [prompt] * len(chunk)
                seeds += chunk
                bar.update(len(chunk))
    seconds = (time.perf_counter() - start) / total
    return torch.cat(out), image_prompts, seeds, seconds


@dataclass
class GeneratedImages:
    """What `generate` made: the images (N, 1, H, W) in [0, 1], the prompt, seed and provenance record of each, and
    the same images as 8-bit PIL images carrying their record (for the PNG files and the grids)."""

    images: Any
    prompts: list[str]
    seeds: list[int]
    seconds_per_image: float
    records: list[dict[str, Any]]
    pil: list

    def __len__(self) -> int:
        return len(self.prompts)


def generate(pipe, config: EvaluationConfig, size: int | None = None) -> GeneratedImages:
    """`generate_images` with the settings of `config`, with each image's provenance record and tagged PIL image."""
    images, prompts, seeds, seconds = generate_images(
        pipe, config.prompts, config.num_images_per_prompt, config.seed, config.batch_size,
        config.num_inference_steps, config.guidance_scale, size, config.progress, config.guidance_rescale,
    )
    records = _generation_records(pipe, prompts, seeds, config, tuple(images.shape[-2:]))
    return GeneratedImages(images, prompts, seeds, seconds, records, _tagged_images(images, records))


def save_generated(generated: GeneratedImages, folder: str | os.PathLike, config_prompts: Sequence[str]) -> list[Path]:
    """Write the tagged images as `folder/NNNN_<class>_seed<seed>.png` (class as in metrics.json, without spaces)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (image, prompt, seed) in enumerate(zip(generated.pil, generated.prompts, generated.seeds)):
        paths.append(folder / f"{i:04d}_{_class_name(prompt, config_prompts).replace(' ', '')}_seed{seed}.png")
        image.save(paths[-1])
    return paths


def _generation_records(pipe, image_prompts: Sequence[str], seeds: Sequence[int], config: EvaluationConfig,
                       size: tuple[int, int]) -> list[dict[str, Any]]:
    """The provenance record of each image made by `generate_images` (as the pipeline writes for PIL outputs)."""
    model = pipe.config.get("_name_or_path") if hasattr(pipe, "config") else None
    return [
        make_record(
            prompt=prompt,
            negative_prompt=None,
            seed=int(seed),
            num_inference_steps=config.num_inference_steps,
            guidance_scale=float(config.guidance_scale),
            **({"guidance_rescale": float(config.guidance_rescale)} if config.guidance_rescale else {}),
            height=int(size[0]),
            width=int(size[1]),
            scheduler=type(pipe.scheduler).__name__,
            model=str(model) if model else None,
            enhancement=None,
            generated_by="cxr-diffusers evaluate",
        )
        for prompt, seed in zip(image_prompts, seeds)
    ]


def _tagged_images(images, records: Sequence[dict[str, Any]]) -> list:
    """(N, 1, H, W) images in [0, 1] -> 8-bit PIL images, each carrying its provenance record."""
    from PIL import Image

    if len(images) != len(records):
        raise CXRInputError(f"Got {len(images)} images but {len(records)} provenance records.")
    return [
        attach_provenance(Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8), mode="L"), record)
        for image, record in zip(images, records)
    ]


def _class_name(prompt: str, config_prompts: Sequence[str]) -> str:
    """The name of a prompt's images in metrics.json ("normal", "pneumonia", a group name, or "prompt <i>")."""
    if set(config_prompts) <= set(GROUP_PROMPTS.values()) and not set(config_prompts) <= set(DEFAULT_PROMPTS.values()):
        for name, text in GROUP_PROMPTS.items():
            if text == prompt:
                return name
    for name, text in DEFAULT_PROMPTS.items():
        if text == prompt:
            return name.lower()
    return f"prompt {list(config_prompts).index(prompt)}"


def _by_prompt(images, image_prompts: Sequence[str], prompts: Sequence[str]) -> dict[str, Any]:
    """The images of each prompt of `prompts` (`image_prompts`: the prompt of each image)."""
    return {p: images[[i for i, q in enumerate(image_prompts) if q == p]] for p in prompts}


# ------------------------------------------------------------------------------------------------- features
def _load_classifier(classifier):
    """A `ClassifierFeatureExtractor` from a folder; an extractor (or None) as it is."""
    if isinstance(classifier, (str, os.PathLike)):
        return ClassifierFeatureExtractor.from_pretrained(classifier)
    return classifier


def build_extractors(names: Sequence[str], pipe, classifier=None, size: int | None = None,
                     feature_vae: str | os.PathLike | None = None) -> tuple[dict[str, Any], list[str]]:
    """The feature extractors named in `names` (`FEATURE_CHOICES`) and notes on those skipped: "classifier" without a
    classifier, "inception" / "xrv" without their weights. Other failures raise."""
    extractors, notes = {}, []
    classifier = _load_classifier(classifier)
    for name in names:
        try:
            if name == "vae" and feature_vae is not None:
                # A fixed feature space, so that pipelines with different VAEs can be compared.
                extractors["vae"] = VAEFeatureExtractor.from_pretrained(feature_vae, image_size=size, device=pipe.device)
            elif name == "vae":
                extractors["vae"] = VAEFeatureExtractor(pipe.vae, image_size=size)
            elif name == "classifier":
                if classifier is None:
                    notes.append("classifier features skipped: no classifier given or found")
                    continue
                extractors["classifier"] = classifier
            elif name == "inception":
                extractors["inception"] = InceptionFeatureExtractor()
            elif name == "xrv":
                extractors["xrv"] = XRVFeatureExtractor()
            else:
                raise CXRInputError(f"Unknown feature extractor {name!r}; choose from {', '.join(FEATURE_CHOICES)}.")
        except CXRInputError as err:
            if name not in ("inception", "xrv"):
                raise
            notes.append(f"{name} features skipped: {err}")
    return extractors, notes


def extract_features(extractors: dict[str, Any], image_sets: dict[str, Any],
                     progress: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Features of each image set (e.g. {"generated": ..., "real": ..., "train": ...}) with each extractor:
    `features[extractor][set]`, an (N, D) array."""
    from tqdm.auto import tqdm

    features: dict[str, dict[str, np.ndarray]] = {}
    total = len(extractors) * sum(len(images) for images in image_sets.values())
    with tqdm(total=total, desc="features", disable=not progress, unit="img") as bar:
        for name, extractor in extractors.items():
            features[name] = {}
            for split, images in image_sets.items():
                bar.set_postfix_str(f"{name}: {split}")
                features[name][split] = extractor(images)
                bar.update(len(images))
    return features


# ---------------------------------------------------------------------------------------------------- steps
# Each step takes its inputs explicitly and returns the sections of metrics.json it computes, as a JSON-serialisable
# dict; a step that is skipped (or skips a part) says so in a "notes" list, which `run_evaluation` collects.
def header_step(pipe, config: EvaluationConfig, size: int, *, generated, real, train=None,
                seconds_per_image: float | None = None, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run's settings, `extra`, the image counts and the generation speed."""
    return {
        "synthetic_images_not_for_clinical_use": True,
        "config": {**asdict(config), "size": size, "scheduler": type(pipe.scheduler).__name__},
        **(extra or {}),
        "counts": {"generated": len(generated), "real": len(real), "train": 0 if train is None else len(train)},
        "generation": {"seconds_per_image": seconds_per_image, "batch_size": config.batch_size,
                       "device": str(pipe.device)},
        "available_extractors": available_extractors(),
    }


def fidelity_step(generated, image_prompts: Sequence[str], real, real_groups: Sequence[str | None] | None = None,
                  seed: int = 0) -> dict[str, Any]:
    """"fidelity": image-space fidelity (intensity histogram, sharpness, power spectrum) with real-vs-real floors,
    overall and per prompt group."""
    groups = list(real_groups) if real_groups is not None else [None] * len(real)
    return {"fidelity": grouped_fidelity(generated, [prompt_group(p) for p in image_prompts], real, groups, seed=seed)}


def _stats_summary(images) -> dict[str, dict[str, float]]:
    rows = [image_statistics(a[0].numpy().astype(np.float64)) for a in images]
    return {key: {"mean": float(np.mean([r[key] for r in rows])), "std": float(np.std([r[key] for r in rows]))}
            for key in rows[0]}


def _diversity(images, pairs: int, seed: int) -> dict[str, float] | None:
    if len(images) < 2:
        return None
    try:
        return pairwise_ms_ssim([a[0].numpy() for a in images], num_pairs=pairs, seed=seed)
    except CXRInputError:
        return None


def image_statistics_step(generated, image_prompts: Sequence[str], real, config: EvaluationConfig,
                          real_groups: Sequence[str | None] | None = None) -> dict[str, Any]:
    """"per_image": mean and std of the per-image statistics; "diversity_ms_ssim": pairwise MS-SSIM within a set.
    Both for the real images, all generated images and those of each prompt of `config.prompts`; with `real_groups`
    also the diversity of the real images of each group ("real: <group>", 2 images or more)."""
    by_prompt = _by_prompt(generated, image_prompts, config.prompts)
    per_image = {"real": _stats_summary(real), "generated": _stats_summary(generated)}
    for p, images in by_prompt.items():
        per_image[f"generated: {_class_name(p, config.prompts)}"] = _stats_summary(images)
    diversity = {
        "real": _diversity(real, config.ms_ssim_pairs, config.seed),
        "generated": _diversity(generated, config.ms_ssim_pairs, config.seed),
        **{f"generated: {_class_name(p, config.prompts)}": _diversity(images, config.ms_ssim_pairs, config.seed)
           for p, images in by_prompt.items()},
    }
    for group in dict.fromkeys(g for g in (real_groups or ()) if g):
        rows = [i for i, g in enumerate(real_groups) if g == group]
        if len(rows) >= 2:
            diversity[f"real: {group}"] = _diversity(real[rows], config.ms_ssim_pairs, config.seed)
    return {"per_image": per_image, "diversity_ms_ssim": diversity}


def _reconstruction(vae, images, n: int) -> dict[str, float]:
    import torch

    from .features import require_posterior_vae

    require_posterior_vae(vae, "The reconstruction check")
    x = images[:n]
    with torch.no_grad():
        dtype = next(vae.parameters()).dtype
        posterior = vae.encode((x * 2 - 1).to(vae.device, dtype)).latent_dist
        recon = (vae.decode(posterior.mode()).sample.float().cpu() / 2 + 0.5).clamp(0, 1)
    pairs = [(a[0].numpy().astype(np.float64), b[0].numpy().astype(np.float64)) for a, b in zip(x, recon)]
    out = {"n": len(pairs), "psnr": float(np.mean([psnr(a, b) for a, b in pairs])),
           "ssim": float(np.mean([ssim(a, b) for a, b in pairs]))}
    try:
        out["ms_ssim"] = float(np.mean([ms_ssim(a, b) for a, b in pairs]))
    except CXRInputError:
        pass
    return out


def reconstruction_step(vae, real, n: int) -> dict[str, Any]:
    """"vae_reconstruction_real": PSNR / SSIM / MS-SSIM of the VAE's reconstruction of the first `n` real images
    (nothing when `n` is 0)."""
    return {"vae_reconstruction_real": _reconstruction(vae, real, n)} if n else {}


def _group_split(real_groups: Sequence[str | None], group: str, n_generated: int, seed: int):
    """The real images of `group` as (held out, reference) index arrays: `n_generated` held-out images (at most half)
    give the size-matched real-vs-real floor of the group's generated images; None below 4 real images."""
    rows = np.flatnonzero(np.asarray([g == group for g in real_groups]))
    if len(rows) < 4:
        return None
    held = min(n_generated, len(rows) // 2)
    rows = np.random.default_rng(seed).permutation(rows)
    return np.sort(rows[:held]), np.sort(rows[held:])


def distribution_step(features: dict[str, dict[str, np.ndarray]], image_prompts: Sequence[str],
                      config: EvaluationConfig, real_groups: Sequence[str | None] | None = None) -> dict[str, Any]:
    """"distribution": FD, KID and precision / recall / density / coverage per feature space (`extract_features`),
    generated vs real overall and per prompt (3 images or more), and with `config.real_vs_real` a seeded random
    subset of the training images vs the real ones (the noise floor).

    With `real_groups` (one prompt group per real image) and group prompts (`GROUP_PROMPTS`), also "group: <name>":
    the group's generated images against the real images of the same group, beside the floor of as many held-out real
    images of that group against the same reference (equal sample sizes: FD's small-sample bias cancels)."""
    kw = {"k": config.k, "kid_subsets": config.kid_subsets, "kid_subset_size": config.kid_subset_size,
          "seed": config.seed}
    distribution, notes = {}, []
    prompt_groups = {text: name for name, text in GROUP_PROMPTS.items()}
    for name, f in features.items():
        entry = {"generated_vs_real": distribution_metrics(f["real"], f["generated"], **kw)}
        for p in config.prompts:
            rows = [i for i, q in enumerate(image_prompts) if q == p]
            if len(rows) >= 3:
                entry[f"generated_vs_real: {_class_name(p, config.prompts)}"] = distribution_metrics(
                    f["real"], f["generated"][rows], **kw)
            group = prompt_groups.get(p)
            split = _group_split(real_groups, group, len(rows), config.seed) if real_groups and group else None
            if split is not None and len(rows) >= 2:
                held, reference = split
                entry[f"group: {group}"] = {
                    "generated_vs_real": distribution_metrics(f["real"][reference], f["generated"][rows], **kw),
                    "real_vs_real": distribution_metrics(f["real"][reference], f["real"][held], **kw),
                }
            elif real_groups and group:
                notes.append(f"{name} features, group {group!r}: fewer than 4 real images (or 2 generated), no "
                             "per-group distribution metrics")
        if config.real_vs_real:
            if "train" in f:
                n = min(len(f["train"]), len(f["generated"]))
                # a seeded random subset: the first n training images may all come from one source or class
                subset = np.sort(np.random.default_rng(config.seed).permutation(len(f["train"]))[:n])
                entry["real_vs_real"] = distribution_metrics(f["real"], f["train"][subset], **kw)
                entry["real_vs_real"]["note"] = f"{n} random training images vs the real reference (noise floor)"
            else:
                notes.append("real_vs_real skipped: no training images")
        distribution[name] = entry
    return {"distribution": distribution, "notes": notes}


def memorization_step(generated, real, train, features: dict[str, dict[str, np.ndarray]], config: EvaluationConfig, *,
                      generated_pil: Sequence | None = None,
                      grid_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """"memorization": the nearest training image of each generated image (pixel SSIM, and feature cosine in the
    "classifier" feature space, else the first one with training features), with `config.real_vs_real` the same for
    real images (the baseline). `grid_path`: also save the closest pairs there (from `generated_pil` when given, the
    tagged images). Skipped without training images."""
    if train is None:
        return {"notes": ["memorisation audit skipped: no training images"]}
    with_train = [name for name, f in features.items() if "train" in f]
    cos_name = "classifier" if "classifier" in with_train else next(iter(with_train), None)
    audit_kw = {"size": config.memorization_size, "ssim_threshold": config.ssim_threshold,
                "cosine_threshold": config.cosine_threshold}

    def audit(images, split: str, n: int):
        if cos_name is None:
            return memorization_audit(images[:n], train, **audit_kw)
        report = memorization_audit(images[:n], train, generated_features=features[cos_name][split][:n],
                                    training_features=features[cos_name]["train"], **audit_kw)
        report.feature_name = cos_name
        return report

    report = audit(generated, "generated", len(generated))
    memorization = {"generated_vs_train": report.summary()}
    if grid_path is not None:
        save_nearest_grid(report, generated if generated_pil is None else generated_pil, train, grid_path,
                          k=config.grid_images)
    if config.real_vs_real:
        memorization["real_vs_train"] = audit(real, "real", min(len(real), len(generated))).summary()
    return {"memorization": memorization}


def conditioning_step(classifier, generated, image_prompts: Sequence[str], real=None,
                      real_classes: Sequence[str | None] | None = None) -> dict[str, Any]:
    """"conditioning": how often the classifier (a folder or a `ClassifierFeatureExtractor`) predicts the class of
    each image's prompt, and its accuracy on the real images of known class. Skipped without a classifier."""
    classifier = _load_classifier(classifier)
    if classifier is None:
        return {"notes": ["conditioning check skipped: no classifier given or found"]}
    check_classifier_labels(classifier.labels)
    conditioning = conditioning_agreement([expected_class(p) for p in image_prompts], classifier.predict(generated),
                                          prompts=image_prompts)
    if real is not None and real_classes is not None and any(c is not None for c in real_classes):
        known = [i for i, c in enumerate(real_classes) if c is not None]
        conditioning["classifier_accuracy_on_real"] = conditioning_agreement(
            [real_classes[i] for i in known], classifier.predict(real[known]))["agreement"]
    return {"conditioning": conditioning}


def merge_steps(*parts: dict[str, Any]) -> dict[str, Any]:
    """The sections of several steps in one dict, their "notes" joined in order (last)."""
    merged: dict[str, Any] = {}
    notes: list[str] = []
    for part in parts:
        part = dict(part)
        notes += part.pop("notes", [])
        merged.update(part)
    merged["notes"] = notes
    return merged


# ---------------------------------------------------------------------------------------------------- plots
def _metric_bars(distribution: dict[str, Any], conditioning: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    bars: dict[str, dict[str, Any]] = {}
    for name, entry in distribution.items():
        for key in ("generated_vs_real", "real_vs_real"):
            if key in entry:
                e = entry[key]
                group = bars.setdefault(key.replace("_", " "), {})
                group[f"FD [{name}]"] = e["fd"]
                group[f"KID [{name}]"] = (e["kid"], e["kid_std"])
                for m in ("precision", "recall", "density", "coverage"):
                    if m in e:
                        group[f"{m} [{name}]"] = e[m]
    if conditioning is not None:
        bars.setdefault("generated vs real", {})["prompt agreement [classifier]"] = conditioning["agreement"]
    return bars


def write_plots(out_dir: str | os.PathLike, real, generated: GeneratedImages, config: EvaluationConfig,
                distribution: dict[str, Any], conditioning: dict[str, Any] | None = None) -> list[Path]:
    """intensity_histograms.png, metric_bars.png (from the "distribution" and "conditioning" sections) and
    real_vs_generated.png (tagged with the generated images' records) in `out_dir`."""
    out_dir = Path(out_dir)
    by_prompt = _by_prompt(generated.images, generated.prompts, config.prompts)
    by_class = {_class_name(p, config.prompts): images for p, images in by_prompt.items()}
    records = {_class_name(p, config.prompts): [r for r, q in zip(generated.records, generated.prompts) if q == p]
               for p in config.prompts}
    paths = [out_dir / "intensity_histograms.png", out_dir / "metric_bars.png", out_dir / "real_vs_generated.png"]
    plot_intensity_histograms({"real": real, **{f"gen: {name}": images for name, images in by_class.items()}}, paths[0])
    plot_metric_bars(_metric_bars(distribution, conditioning), paths[1],
                     title="Distribution metrics (lower FD/KID, higher P/R/D/C is better)")
    save_real_vs_generated_grid(real, by_class, paths[2], n=config.grid_images, records=records)
    return paths


# ------------------------------------------------------------------------------------------------------ run
def run_evaluation(
    pipe,
    real_images: Any,
    output_dir: str | os.PathLike,
    config: EvaluationConfig | None = None,
    *,
    train_images: Any = None,
    real_classes: Sequence[str | None] | None = None,
    real_groups: Sequence[str | None] | None = None,
    classifier: str | os.PathLike | ClassifierFeatureExtractor | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Generate, measure everything against `real_images`, and write metrics.json and the plots to `output_dir`.

    Args:
        pipe: a `CXRPipeline` (its scheduler is left as it is, also with `config.scheduler`).
        real_images: the real reference split (PIL images, arrays, or a tensor), e.g. the test split.
        config: an `EvaluationConfig`.
        train_images: training images for the memorisation audit and the `real_vs_real` baseline (train vs test).
        real_classes: NORMAL / PNEUMONIA per real image, to report the classifier's accuracy on real images.
        real_groups: prompt group per real image (`fidelity.example_group`), for the per-group fidelity measures.
        classifier: a `transformers` image-classification folder (or a `ClassifierFeatureExtractor`) for classifier
            features and the conditioning check.
        extra: more entries for metrics.json (e.g. the model and data paths).
    """
    config = config or EvaluationConfig()
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    size = config.size or pipe.default_size
    pipe = evaluation_pipeline(pipe, config.scheduler)  # with config.scheduler: a pipeline of its own
    classifier = _load_classifier(classifier)
    extractors, extractor_notes = build_extractors(config.features, pipe, classifier, size, config.feature_vae)

    # inputs: the generated images (fixed seeds), the real and training images as tensors, their features
    generated = generate(pipe, config, size)
    if config.save_images:
        save_generated(generated, out_dir / "generated", config.prompts)
    real = images_to_tensor(real_images, size)
    train = images_to_tensor(train_images, size) if train_images is not None and len(train_images) else None
    image_sets = {"generated": generated.images, "real": real, **({"train": train} if train is not None else {})}
    features = extract_features(extractors, image_sets, config.progress)

    # steps: each returns its sections of metrics.json
    images, prompts = generated.images, generated.prompts
    metrics = {
        **header_step(pipe, config, size, generated=images, real=real, train=train,
                      seconds_per_image=generated.seconds_per_image, extra=extra),
        **merge_steps(
            fidelity_step(images, prompts, real, real_groups, config.seed),
            image_statistics_step(images, prompts, real, config, real_groups),
            reconstruction_step(pipe.vae, real, config.reconstruction_images),
            {"notes": extractor_notes},
            distribution_step(features, prompts, config, real_groups),
            memorization_step(images, real, train, features, config, generated_pil=generated.pil,
                              grid_path=out_dir / "nearest_neighbours.png"),
            conditioning_step(classifier, images, prompts, real, real_classes),
        ),
    }
    write_plots(out_dir, real, generated, config, metrics["distribution"], metrics.get("conditioning"))
    metrics["files"] = sorted(str(p.relative_to(out_dir)) for p in out_dir.glob("*.png")) + ["metrics.json"]
    write_metrics_json(metrics, out_dir / "metrics.json")
    return metrics
