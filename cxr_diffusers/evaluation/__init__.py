"""Evaluation: classical per-image quality metrics (image_quality)."""

from .image_quality import (
    contrast_ratio,
    entropy,
    local_contrast,
    psnr,
    quality_metrics,
    rms_contrast,
    sharpness,
    ssim,
)

__all__ = [
    "contrast_ratio",
    "entropy",
    "local_contrast",
    "psnr",
    "quality_metrics",
    "rms_contrast",
    "sharpness",
    "ssim",
]
