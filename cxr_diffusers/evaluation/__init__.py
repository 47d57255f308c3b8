"""Evaluation of generated chest X-rays.

- `image_quality`: classical per-image metrics (SSIM, PSNR, MS-SSIM, contrast, entropy, sharpness, intensity).
- `features`: feature extractors (`FeatureExtractor` protocol) and `images_to_tensor`.
- `distribution`: distribution metrics on feature arrays (FD, KID, precision/recall, density/coverage).
- `memorization`: nearest training image of each generated image (pixel SSIM and feature cosine).
- `conditioning`: agreement of a classifier with the prompt.
- `runner`: the end-to-end run behind `cxr-diffusers evaluate`; `report`: plots and metrics.json; `timing`:
  measurement helpers for benchmarks.

The per-image metrics are imported here; the other modules import torch and are loaded on first use of their names.
"""

from __future__ import annotations

import importlib

from .image_quality import (
    contrast_ratio,
    entropy,
    image_statistics,
    local_contrast,
    mean_intensity,
    ms_ssim,
    pairwise_ms_ssim,
    psnr,
    quality_metrics,
    rms_contrast,
    sharpness,
    ssim,
    std_intensity,
)

_LAZY = {
    "ClassifierFeatureExtractor": "features",
    "FeatureExtractor": "features",
    "InceptionFeatureExtractor": "features",
    "VAEFeatureExtractor": "features",
    "XRVFeatureExtractor": "features",
    "available_extractors": "features",
    "density_coverage": "distribution",
    "distribution_metrics": "distribution",
    "feature_statistics": "distribution",
    "frechet_distance": "distribution",
    "frechet_distance_from_statistics": "distribution",
    "images_to_tensor": "features",
    "kernel_distance": "distribution",
    "precision_recall": "distribution",
    "prdc": "distribution",
    "MemorizationReport": "memorization",
    "memorization_audit": "memorization",
    "nearest_by_cosine": "memorization",
    "nearest_by_ssim": "memorization",
    "save_nearest_grid": "memorization",
    "DEFAULT_PROMPTS": "conditioning",
    "conditioning_agreement": "conditioning",
    "expected_class": "conditioning",
    "EvaluationConfig": "runner",
    "generate_images": "runner",
    "load_reference": "runner",
    "run_evaluation": "runner",
}

__all__ = [
    "DEFAULT_PROMPTS",
    "ClassifierFeatureExtractor",
    "EvaluationConfig",
    "FeatureExtractor",
    "InceptionFeatureExtractor",
    "MemorizationReport",
    "VAEFeatureExtractor",
    "XRVFeatureExtractor",
    "available_extractors",
    "conditioning_agreement",
    "contrast_ratio",
    "density_coverage",
    "distribution_metrics",
    "entropy",
    "expected_class",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "generate_images",
    "image_statistics",
    "images_to_tensor",
    "kernel_distance",
    "load_reference",
    "local_contrast",
    "mean_intensity",
    "memorization_audit",
    "ms_ssim",
    "nearest_by_cosine",
    "nearest_by_ssim",
    "pairwise_ms_ssim",
    "prdc",
    "precision_recall",
    "psnr",
    "quality_metrics",
    "rms_contrast",
    "run_evaluation",
    "save_nearest_grid",
    "sharpness",
    "ssim",
    "std_intensity",
]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
