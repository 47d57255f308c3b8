"""Evaluation of the super-resolution stage (`CXRSuperResolutionModel`) on real and on generated radiographs.

Real images (`evaluate_super_resolution_real`): every held-out image whose longest side is at least
`base_resolution * scale` is made into a (high, low) resolution pair by `cxr_diffusers.data.super_resolution.
high_resolution_pair` (HR: `resize_and_pad` to `base * scale`, LR: HR resized to `base` with PIL bicubic), the LR is
upscaled back by

- `model`: the super-resolution model (LR -> [-1, 1] -> model -> clamp -> uint8, as `CXRPipeline` does),
- `lanczos`: PIL LANCZOS of the LR image to the HR size (`data.super_resolution.lanczos_upscale`),
- `bicubic`: torch bicubic (`align_corners=False`), the model's own skip path: what an untrained model outputs,

and compared with the HR original on uint8 images: mean PSNR and SSIM (`image_quality.psnr` / `ssim`) and the
sharpness ratio (mean variance of the Laplacian of the outputs / that of the originals, as
`fidelity.sharpness_ratio` defines it), overall and per `source`. The gate (`REAL_GATE`): PSNR at least 1 dB and
SSIM at least 0.02 above Lanczos, sharpness ratio in [0.8, 1.2], at every scale.

Generated images (`evaluate_super_resolution_generated`): the same prompts (the four prompt groups of
`conditioning.GROUP_PROMPTS`) and seeds at 256, 512 and 768 px (the pipeline samples 256 px and upscales when it
has a `super_resolution` component, otherwise it samples the large canvas directly and the result says so); per
size: the best 64x64 SSIM of each generated image to any real test image (`memorization.nearest_by_ssim`, beside
the real-vs-real value: each real test image's best match among the others), intensity-histogram W1 and sharpness
ratio against the real test images that are at least that large, resized to it (`fidelity.grouped_fidelity`, with
its real-vs-real floor), and the classifier's prompt agreement (`runner.conditioning_step`). The gate
(`GENERATED_GATE`) compares each size with the base size.

    from cxr_diffusers.data import load_saved
    from cxr_diffusers.pipelines.pipeline_cxr import load_super_resolution
    test = load_saved("~/cxr-runs/data/hr-native")["test"]
    metrics = evaluate_super_resolution_real(load_super_resolution("outputs/sr"), test)
    metrics["scales"]["3"]["gates"]["passed"]

`train_scripts/evaluate_super_resolution.py` is the command line around both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import CXRInputError

__all__ = [
    "GENERATED_GATE",
    "METHODS",
    "REAL_GATE",
    "best_ssim_to_real",
    "comparison_examples",
    "evaluate_super_resolution_generated",
    "evaluate_super_resolution_real",
    "generated_gates",
    "real_gates",
    "real_vs_real_best_ssim",
    "summarise_pairs",
]

#: The upscalers compared on real images (`model` only when a model is given).
METHODS = ("model", "lanczos", "bicubic")

#: Thresholds of the real-image gate (model against the Lanczos baseline and the originals' sharpness).
REAL_GATE = {"psnr_margin_db": 1.0, "ssim_margin": 0.02, "sharpness_ratio_range": (0.8, 1.2)}

#: Thresholds of the generated-image gate (each size against the base size).
GENERATED_GATE = {
    "best_ssim_64_tolerance": 0.05,
    "histogram_w1_factor": 1.1,
    "histogram_w1_slack": 0.5,
    "sharpness_log_factor": 1.1,
    "sharpness_log_slack": 0.05,
    "agreement_drop": 0.05,
}

GENERATED_GATE_DEFINITION = (
    "Each size against the base size (256 px): best_ssim_64: |mean best 64x64 SSIM - base's| <= 0.05; histogram_w1 "
    "'as good as': W1 <= W1_base * 1.1 + 0.5 grey levels, or W1 <= the real-vs-real W1 at that size (two halves of the "
    "real test images: within the noise of the reference); sharpness_ratio 'as good as': |log ratio| <= "
    "|log ratio_base| * 1.1 + 0.05, or |log ratio| <= |log real-vs-real ratio| at that size; prompt_agreement >= "
    "base's - 0.05 (5 points). passed: all four."
)
REAL_GATE_DEFINITION = (
    "At each scale, over all images of that scale: model PSNR >= Lanczos PSNR + 1 dB, model SSIM >= Lanczos SSIM + "
    "0.02, model sharpness ratio (mean Laplacian variance of the outputs / of the originals) in [0.8, 1.2]. "
    "passed: all three at every scale."
)

#: PSNR of an exact copy is infinite; it is counted as this (dB) in the means.
PSNR_CAP_DB = 100.0


# ---------------------------------------------------------------------------------------------- pairs, upscalers
def _high_resolution_pair(image, base_resolution: int, scale: int):
    """(HR, LR) PIL images: the one definition of the training data (`data.super_resolution.high_resolution_pair`)."""
    from ..data.super_resolution import high_resolution_pair

    return high_resolution_pair(image, base_resolution, scale)


def _to_uint8(images) -> np.ndarray:
    """(B, 1, H, W) tensor in [-1, 1] -> (B, H, W) uint8, as `CXRPipeline` post-processes ([0, 1], x 255, round)."""
    x = (images.detach().float().cpu() / 2 + 0.5).clamp(0, 1)
    return (x[:, 0].numpy() * 255).round().astype(np.uint8)


def _lr_tensor(lr_images: Sequence):
    import torch

    arrays = np.stack([np.asarray(image.convert("L"), dtype=np.float32) for image in lr_images])
    return torch.from_numpy(arrays / 127.5 - 1.0)[:, None]


def _model_upscale(model, lr, scale: int, batch_size: int):
    """The pipeline's own stage (`pipeline_cxr.upscale_images`: clamp, model, clamp) on a batch in [-1, 1]."""
    from ..pipelines.pipeline_cxr import upscale_images

    return upscale_images(model, lr, scale, batch_size=batch_size)


def _bicubic_upscale(lr, scale: int):
    """Torch bicubic of a batch in [-1, 1], clamped: the skip path of `CXRSuperResolutionModel` (an untrained model)."""
    import torch.nn.functional as F

    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)


def _lanczos_upscale(lr_image, scale: int) -> np.ndarray:
    """The classical baseline (`data.super_resolution.lanczos_upscale`) as a uint8 array."""
    from ..data.super_resolution import lanczos_upscale

    return np.asarray(lanczos_upscale(lr_image, scale), dtype=np.uint8)


def _pair_metrics(original: np.ndarray, output: np.ndarray) -> tuple[float, float, float]:
    """(PSNR capped at `PSNR_CAP_DB`, SSIM, sharpness of `output`) on uint8 images."""
    from .image_quality import psnr, sharpness, ssim

    value = psnr(original, output)
    return min(value, PSNR_CAP_DB) if math.isfinite(value) else PSNR_CAP_DB, ssim(original, output), sharpness(output)


# ---------------------------------------------------------------------------------------------- summaries, gates
def summarise_pairs(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> dict[str, Any] | None:
    """Means over `rows` (one per image: `original_sharpness` and, per method, `(psnr, ssim, sharpness)`):
    `{"n": N, "original_sharpness": mean, method: {"psnr", "ssim", "sharpness", "sharpness_ratio"}}`; None for no
    rows. The sharpness ratio is a ratio of means (`fidelity.sharpness_ratio`)."""
    if not rows:
        return None
    original = float(np.mean([r["original_sharpness"] for r in rows]))
    out: dict[str, Any] = {"n": len(rows), "original_sharpness": original}
    for method in methods:
        values = np.asarray([r[method] for r in rows], dtype=np.float64)
        out[method] = {
            "psnr": float(values[:, 0].mean()),
            "ssim": float(values[:, 1].mean()),
            "sharpness": float(values[:, 2].mean()),
            "sharpness_ratio": float(values[:, 2].mean() / max(original, 1e-12)),
        }
    return out


def real_gates(summary: Mapping[str, Any] | None, gate: Mapping[str, Any] = REAL_GATE) -> dict[str, Any] | None:
    """The real-image gate of one summary (`summarise_pairs` with `model` and `lanczos`); None without them."""
    if not summary or "model" not in summary or "lanczos" not in summary:
        return None
    model, lanczos = summary["model"], summary["lanczos"]
    low, high = gate["sharpness_ratio_range"]
    out = {
        "psnr_gain_db": model["psnr"] - lanczos["psnr"],
        "ssim_gain": model["ssim"] - lanczos["ssim"],
        "sharpness_ratio": model["sharpness_ratio"],
        "psnr": bool(model["psnr"] >= lanczos["psnr"] + gate["psnr_margin_db"]),
        "ssim": bool(model["ssim"] >= lanczos["ssim"] + gate["ssim_margin"]),
        "sharpness": bool(low <= model["sharpness_ratio"] <= high),
    }
    out["passed"] = out["psnr"] and out["ssim"] and out["sharpness"]
    return out


# ---------------------------------------------------------------------------------------------- real images
def _rows_of(dataset_split, num_images: int | None):
    """(index, PIL image, source) of `num_images` rows spread evenly over the split (all sources represented)."""
    if hasattr(dataset_split, "column_names"):
        keep = [c for c in ("image", "source") if c in dataset_split.column_names]
        if "image" not in keep:
            raise CXRInputError(f"The dataset has no 'image' column (columns: {', '.join(dataset_split.column_names)}).")
        data = dataset_split.select_columns(keep)  # no decoding of mask columns
        n = len(data)

        def get(i):
            row = data[int(i)]
            return row["image"], row.get("source") or "unknown"
    else:
        data = list(dataset_split)
        n = len(data)

        def get(i):
            item = data[int(i)]
            if isinstance(item, Mapping):
                return item["image"], item.get("source") or "unknown"
            return item, "unknown"

    if n == 0:
        raise CXRInputError("The split has no images.")
    indices = range(n)
    if num_images is not None:
        if num_images < 1:
            raise CXRInputError(f"num_images must be at least 1, not {num_images}.")
        indices = sorted(set(np.linspace(0, n - 1, min(num_images, n)).round().astype(int).tolist()))
    for index in indices:
        image, source = get(index)
        yield int(index), image, str(source)


def _check_scales(model, scales: Sequence[int], base_resolution: int) -> list[int]:
    scales = [int(s) for s in scales]
    if not scales or any(s < 2 for s in scales):
        raise CXRInputError(f"scales must be integers >= 2, got {tuple(scales)}.")
    if base_resolution < 8:
        raise CXRInputError(f"base_resolution must be at least 8 px, not {base_resolution}.")
    if model is not None:
        for s in scales:
            model.check_scale(s)
    return scales


def evaluate_super_resolution_real(
    model,
    dataset_split,
    scales: Sequence[int] = (2, 3),
    base_resolution: int = 256,
    num_images: int | None = None,
    *,
    batch_size: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """
    Super-resolution of real held-out images against the originals, beside Lanczos and bicubic upsampling.

    Args:
        model: a `CXRSuperResolutionModel`, or None for the baselines only.
        dataset_split: a `datasets.Dataset` with `image` (and `source`) columns, or a sequence of PIL images.
        scales: upscaling factors; scale s uses the images whose longest side is at least `base_resolution * s`.
        base_resolution: the side of the low-resolution input (the UNet's native size).
        num_images: at most this many images of the split (spread evenly over it); None: all.
        batch_size: images per model forward.
        progress: a tqdm bar.

    Returns a JSON-serialisable dict: `scales[str(s)]` with `size`, `n_images`, `skipped_too_small`, `overall` and
    `per_source` (`summarise_pairs`: n, original_sharpness, per method psnr / ssim / sharpness / sharpness_ratio),
    `gates` (`real_gates` of `overall`, None without a model) and `per_source_gates`; `passed` (every scale's gate, None
    without a model) and the gate's definition.
    """
    import torch
    from tqdm.auto import tqdm

    from .image_quality import sharpness

    scales = _check_scales(model, scales, base_resolution)
    methods = [m for m in METHODS if m != "model" or model is not None]
    if model is not None:
        model.eval()
    rows: dict[int, list[dict[str, Any]]] = {s: [] for s in scales}
    sources: dict[int, list[str]] = {s: [] for s in scales}
    skipped = {s: 0 for s in scales}
    pending: dict[int, list[tuple[Any, Any, str]]] = {s: [] for s in scales}

    def flush(scale: int) -> None:
        batch = pending[scale]
        if not batch:
            return
        lr = _lr_tensor([lr_image for _, lr_image, _ in batch])
        outputs = {"bicubic": _to_uint8(_bicubic_upscale(lr, scale))}
        if model is not None:
            with torch.no_grad():
                outputs["model"] = _to_uint8(_model_upscale(model, lr, scale, batch_size))
        for i, (hr_image, lr_image, source) in enumerate(batch):
            original = np.asarray(hr_image, dtype=np.uint8)
            row: dict[str, Any] = {"original_sharpness": sharpness(original)}
            row["lanczos"] = _pair_metrics(original, _lanczos_upscale(lr_image, scale))
            for name, upscaled in outputs.items():
                row[name] = _pair_metrics(original, upscaled[i])
            rows[scale].append(row)
            sources[scale].append(source)
        pending[scale] = []

    items = _rows_of(dataset_split, num_images)
    total = len(dataset_split) if num_images is None else min(num_images, len(dataset_split))
    from ..data.super_resolution import has_detail_for

    with tqdm(total=total, desc="super-resolution (real)", unit="img", disable=not progress) as bar:
        for _, image, source in items:
            for scale in scales:
                if not has_detail_for(image.size, base_resolution, scale):
                    skipped[scale] += 1
                    continue
                hr_image, lr_image = _high_resolution_pair(image, base_resolution, scale)
                pending[scale].append((hr_image.convert("L"), lr_image.convert("L"), source))
                if len(pending[scale]) >= batch_size:
                    flush(scale)
            bar.update(1)
        for scale in scales:
            flush(scale)

    out: dict[str, Any] = {
        "base_resolution": int(base_resolution),
        "methods": methods,
        "notes": [
            ("HR/LR pairs by data.super_resolution.high_resolution_pair; metrics on uint8 images; bicubic = torch "
             "bicubic (align_corners=False), the model's skip path (an untrained model equals it); lanczos = PIL "
             "LANCZOS of the LR image"),
        ],
        "gate_definition": REAL_GATE_DEFINITION,
        "scales": {},
    }
    for scale in scales:
        per_source = {}
        for name in sorted(set(sources[scale])):
            per_source[name] = summarise_pairs([r for r, s in zip(rows[scale], sources[scale]) if s == name], methods)
        overall = summarise_pairs(rows[scale], methods)
        out["scales"][str(scale)] = {
            "scale": scale,
            "size": base_resolution * scale,
            "n_images": len(rows[scale]),
            "skipped_too_small": skipped[scale],
            "overall": overall,
            "per_source": per_source,
            "gates": real_gates(overall),
            "per_source_gates": {name: real_gates(summary) for name, summary in per_source.items()}
            if model is not None else None,
        }
    if model is None:
        out["passed"] = None
    else:
        gates = [entry["gates"] for entry in out["scales"].values()]
        out["passed"] = bool(gates) and all(g is not None and g["passed"] for g in gates)
    return out


def comparison_examples(
    model, dataset_split, scale: int = 3, base_resolution: int = 256, n: int = 4
) -> list[dict[str, Any]]:
    """Up to `n` examples at `scale` (cycling through the sources): dicts with `source`, `index` and uint8 arrays
    `lanczos`, `bicubic`, `model` (without a model: None) and `original`, for the comparison figures."""
    import torch

    from ..data.super_resolution import has_detail_for

    if hasattr(dataset_split, "column_names") and "source" in dataset_split.column_names:
        row_sources = [str(v or "unknown") for v in dataset_split["source"]]
    else:
        row_sources = ["unknown"] * len(dataset_split)
    queues: dict[str, list[int]] = {}
    for index, source in enumerate(row_sources):
        queues.setdefault(source, []).append(index)
    data = dataset_split.select_columns(["image"]) if hasattr(dataset_split, "column_names") else dataset_split
    chosen: list[tuple[str, int, Any]] = []
    while len(chosen) < n and any(queues.values()):  # round robin over the sources, the first large enough images
        for source in sorted(queues):
            while queues[source] and len(chosen) < n:
                index = queues[source].pop(0)
                item = data[index]
                image = item["image"] if isinstance(item, Mapping) else item
                if has_detail_for(image.size, base_resolution, scale):
                    chosen.append((source, index, image))
                    break
    examples = []
    for source, index, image in chosen:
        hr_image, lr_image = _high_resolution_pair(image, base_resolution, scale)
        lr = _lr_tensor([lr_image])
        sr = None
        if model is not None:
            with torch.no_grad():
                sr = _to_uint8(_model_upscale(model.eval(), lr, scale, 1))[0]
        examples.append({
            "source": source, "index": index, "scale": scale,
            "original": np.asarray(hr_image.convert("L"), dtype=np.uint8),
            "lanczos": _lanczos_upscale(lr_image, scale),
            "bicubic": _to_uint8(_bicubic_upscale(lr, scale))[0],
            "model": sr,
        })
    return examples


# ---------------------------------------------------------------------------------------------- best 64 px SSIM
def best_ssim_to_real(images, real, size: int = 64) -> np.ndarray:
    """For each image, its highest SSIM to any of `real`, both downsampled to `size` x `size`
    (`memorization.nearest_by_ssim`, every pair compared). Images: PIL list, arrays, or (N, 1, H, W) in [0, 1]."""
    from .memorization import nearest_by_ssim

    best, _ = nearest_by_ssim(images, real, size=size, candidates=None)
    return np.asarray(best, dtype=np.float64)


def real_vs_real_best_ssim(real, size: int = 64) -> np.ndarray:
    """For each real image, its highest SSIM at `size` px to any *other* real image (leave-one-out): what
    `best_ssim_to_real` gives an image of the real distribution that is not itself in the reference."""
    from .features import images_to_tensor

    x = images_to_tensor(real, size)
    if len(x) < 2:
        raise CXRInputError("real_vs_real_best_ssim needs at least two images.")
    out = []
    for i in range(len(x)):
        others = np.r_[0:i, i + 1 : len(x)]
        out.append(best_ssim_to_real(x[i : i + 1], x[others], size=size)[0])
    return np.asarray(out, dtype=np.float64)


# ---------------------------------------------------------------------------------------------- generated images
def _log_distance(ratio: float | None) -> float | None:
    if ratio is None or not ratio > 0:
        return None
    return abs(math.log(ratio))


def generated_gates(size_entry: Mapping[str, Any], base_entry: Mapping[str, Any],
                    gate: Mapping[str, Any] = GENERATED_GATE) -> dict[str, Any]:
    """The generated-image gate of one size against the base size (`GENERATED_GATE_DEFINITION`). Each entry holds
    `best_ssim_64` (mean), `fidelity` (`fidelity.grouped_fidelity`, its "all" part is used) and
    `prompt_agreement` (None when not measured: that part is then skipped, not failed)."""
    out: dict[str, Any] = {}
    s, b = size_entry["best_ssim_64"]["mean"], base_entry["best_ssim_64"]["mean"]
    out["best_ssim_64"] = {"value": s, "base": b, "passed": bool(abs(s - b) <= gate["best_ssim_64_tolerance"])}

    fid, base_fid = size_entry["fidelity"]["all"], base_entry["fidelity"]["all"]
    floor = fid.get("real_vs_real") or {}
    w1, w1_base, w1_floor = fid["histogram_w1"], base_fid["histogram_w1"], floor.get("histogram_w1")
    out["histogram_w1"] = {
        "value": w1, "base": w1_base, "real_vs_real": w1_floor,
        "passed": bool(w1 <= w1_base * gate["histogram_w1_factor"] + gate["histogram_w1_slack"]
                       or (w1_floor is not None and w1 <= w1_floor)),
    }
    r, r_base, r_floor = fid["sharpness_ratio"], base_fid["sharpness_ratio"], floor.get("sharpness_ratio")
    d, d_base, d_floor = _log_distance(r), _log_distance(r_base), _log_distance(r_floor)
    out["sharpness_ratio"] = {
        "value": r, "base": r_base, "real_vs_real": r_floor,
        "passed": bool(d is not None and d_base is not None and (
            d <= d_base * gate["sharpness_log_factor"] + gate["sharpness_log_slack"]
            or (d_floor is not None and d <= d_floor))),
    }
    a, a_base = size_entry.get("prompt_agreement"), base_entry.get("prompt_agreement")
    if a is None or a_base is None:
        out["prompt_agreement"] = {"value": a, "base": a_base, "passed": None}
    else:
        out["prompt_agreement"] = {"value": a, "base": a_base, "passed": bool(a >= a_base - gate["agreement_drop"])}
    out["passed"] = all(v["passed"] is not False for v in out.values() if isinstance(v, dict))
    return out


def _real_reference(real_split, max_real: int | None):
    """Real test images: all of them (PIL, mode L) with their prompt group and the longest side of each."""
    from .fidelity import example_group

    images, groups = [], []
    if hasattr(real_split, "column_names"):
        keep = [c for c in ("image", "source", "labels", "age") if c in real_split.column_names]
        data = real_split.select_columns(keep)
        indices = range(len(data))
        if max_real is not None and len(data) > max_real:
            indices = sorted(set(np.linspace(0, len(data) - 1, max_real).round().astype(int).tolist()))
        for i in indices:
            row = data[int(i)]
            images.append(row["image"].convert("L"))
            groups.append(example_group(row.get("source"), row.get("labels"), row.get("age")))
    else:
        images = [im.convert("L") for im in real_split]
        groups = [None] * len(images)
    if len(images) < 2:
        raise CXRInputError("The real split needs at least two images.")
    return images, groups


def _generate(pipe, prompts: Sequence[str], n: int, seed: int, batch_size: int, steps: int, guidance: float,
              size: int, progress: bool):
    from .runner import generate_images

    images, image_prompts, seeds, seconds = generate_images(pipe, list(prompts), n, seed, batch_size, steps, guidance,
                                                            size=size, progress=progress)
    return images, image_prompts, seeds, seconds


def evaluate_super_resolution_generated(
    pipeline,
    real_split,
    prompt_groups: Mapping[str, str] | Sequence[str] | None = None,
    n: int = 12,
    seed: int = 0,
    steps: int = 25,
    guidance: float = 4.0,
    sizes: Sequence[int] | None = None,
    *,
    classifier: Any = "auto",
    batch_size: int = 4,
    reuse_base: bool = False,
    max_real: int | None = None,
    ssim_size: int = 64,
    progress: bool = True,
    return_images: bool = False,
):
    """
    Generated images at each size against real test images and against the base size.

    Args:
        pipeline: a `CXRPipeline`; with a `super_resolution` component the sizes above its native one are sampled
            at the native size and upscaled, without one they are sampled directly (noted in the result).
        real_split: the real test split (a `datasets.Dataset` with `image`, and `source`, `labels`, `age` for the
            groups) or a sequence of PIL images.
        prompt_groups: `{group name: prompt}` or group names of `conditioning.GROUP_PROMPTS` (default: all four).
        n: images per prompt group; image i of prompt p has seed `seed + p * n + i` at every size.
        steps, guidance: sampling steps and guidance scale.
        sizes: image sides; the first is the base the gate compares with (default: the pipeline's native size and
            those its super-resolution stage makes, else 256, 512, 768).
        classifier: a classifier folder or `ClassifierFeatureExtractor` for the prompt agreement; "auto" uses
            `runner.find_classifier()` (the bundled `pretrained/pneumonia-classifier`); None skips it.
        batch_size: images per pipeline call.
        reuse_base: sample the base size once and upscale it with the pipeline's own stage
            (`pipeline_cxr.upscale_images`, the same images as calling the pipeline at each size, at a third of the
            UNet cost); only with a `super_resolution` component.
        max_real: at most this many real images (spread over the split).
        ssim_size: the side of the layout comparison (64).
        return_images: also return `{size: (N, 1, size, size) tensor in [0, 1]}` and the prompts and seeds.

    Returns the metrics dict (JSON-serialisable): `sizes[str(size)]` with `mode`, `best_ssim_64` (mean, median,
    per group), `fidelity` (`fidelity.grouped_fidelity` against the real images at least that large, resized to it),
    `prompt_agreement` and `conditioning`, and `gates[str(size)]` (`generated_gates` against the base size);
    `real_vs_real_best_ssim_64`, `passed`, the gate definition and notes.
    """
    from .conditioning import GROUP_PROMPTS
    from .features import images_to_tensor
    from .fidelity import grouped_fidelity, prompt_group
    from .runner import conditioning_step, find_classifier

    if prompt_groups is None:
        groups = dict(GROUP_PROMPTS)
    elif isinstance(prompt_groups, Mapping):
        groups = dict(prompt_groups)
    else:
        unknown = [g for g in prompt_groups if g not in GROUP_PROMPTS]
        if unknown:
            raise CXRInputError(f"Unknown prompt groups {unknown}; choose from {', '.join(GROUP_PROMPTS)}.")
        groups = {g: GROUP_PROMPTS[g] for g in prompt_groups}
    if not groups or n < 1:
        raise CXRInputError("Give at least one prompt group and n >= 1.")
    stage = getattr(pipeline, "super_resolution", None)
    native = int(getattr(pipeline, "default_size", 256))
    if sizes is None:
        staged = tuple(getattr(pipeline, "super_resolution_sizes", ()) or ())
        sizes = (native, *staged) if staged else (256, 512, 768)
    sizes = [int(s) for s in sizes]
    if len(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise CXRInputError(f"sizes must be distinct image sides, got {sizes}.")
    base = sizes[0]
    notes: list[str] = []
    if classifier == "auto":
        classifier = find_classifier()
        if classifier is None:
            notes.append("prompt agreement skipped: no classifier found")
    if classifier is not None:
        from .runner import _load_classifier

        classifier = _load_classifier(classifier)
    if stage is None:
        notes.append("the pipeline has no super_resolution component: sizes above its native "
                     f"{native} px are sampled directly on the large canvas")
    if reuse_base and (stage is None or base != native):
        raise CXRInputError("reuse_base needs a super_resolution component and the native size as the first size.")

    real_images, real_groups = _real_reference(real_split, max_real)
    real_small = images_to_tensor(real_images, ssim_size)
    rvr = real_vs_real_best_ssim(real_small, size=ssim_size)
    prompts = list(groups.values())
    name_of = {text: name for name, text in groups.items()}

    results: dict[str, Any] = {}
    kept: dict[int, Any] = {}
    base_images = image_prompts = seeds = None
    for size in sizes:
        mode = "native"
        if size != native:
            mode = "super_resolution" if stage is not None else "direct canvas"
        if reuse_base and size != base:
            from ..pipelines.pipeline_cxr import upscale_images

            scale = size // base
            if scale * base != size:
                raise CXRInputError(f"reuse_base: {size} px is not a multiple of the base {base} px.")
            import torch

            with torch.no_grad():
                images = (upscale_images(stage, base_images * 2 - 1, scale) / 2 + 0.5).clamp(0, 1).float().cpu()
            seconds = None
            mode = "super_resolution (base reused)"
        else:
            images, image_prompts, seeds, seconds = _generate(pipeline, prompts, n, seed, batch_size, steps,
                                                              guidance, size, progress)
            if size == base:
                base_images = images
        if tuple(images.shape[-2:]) != (size, size):
            raise CXRInputError(f"The pipeline returned {tuple(images.shape[-2:])} images for {size} px.")
        best = best_ssim_to_real(images, real_small, size=ssim_size)
        image_groups = [prompt_group(p) for p in image_prompts]
        eligible = [i for i, im in enumerate(real_images) if max(im.size) >= size]
        entry: dict[str, Any] = {
            "mode": mode,
            "seconds_per_image": seconds,
            "n_generated": len(images),
            "n_real": len(eligible),
            "best_ssim_64": {
                "mean": float(best.mean()), "median": float(np.median(best)),
                "per_group": {name: float(best[[i for i, p in enumerate(image_prompts) if p == text]].mean())
                              for text, name in name_of.items()},
            },
        }
        if len(eligible) >= 1:
            real_at = images_to_tensor([real_images[i] for i in eligible], size)
            entry["fidelity"] = grouped_fidelity(images, image_groups, real_at, [real_groups[i] for i in eligible],
                                                 seed=seed)
            del real_at
        else:
            entry["fidelity"] = None
            notes.append(f"no real test image is at least {size} px: W1 and sharpness ratio not measured there")
        entry["prompt_agreement"] = None
        if classifier is not None:
            conditioning = conditioning_step(classifier, images, image_prompts)["conditioning"]
            entry["conditioning"] = conditioning
            entry["prompt_agreement"] = conditioning["agreement"]
        results[str(size)] = entry
        if return_images:
            kept[size] = images

    gates: dict[str, Any] = {}
    base_entry = results[str(base)]
    for size in sizes[1:]:
        entry = results[str(size)]
        if entry["fidelity"] is None or base_entry["fidelity"] is None:
            gates[str(size)] = None
            continue
        gates[str(size)] = generated_gates(entry, base_entry)
    out = {
        "base_size": base,
        "sizes": results,
        "prompt_groups": groups,
        "n_per_group": n,
        "seed": seed,
        "steps": steps,
        "guidance": guidance,
        "reuse_base": reuse_base,
        "n_real": len(real_images),
        "real_vs_real_best_ssim_64": {"mean": float(rvr.mean()), "median": float(np.median(rvr))},
        "gates": gates,
        "gate_definition": GENERATED_GATE_DEFINITION,
        "passed": bool(gates) and all(g is not None and g["passed"] for g in gates.values()),
        "notes": notes,
    }
    if return_images:
        return out, kept, image_prompts, seeds
    return out
