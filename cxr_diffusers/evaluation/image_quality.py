"""Classical per-image quality metrics for grayscale X-rays (used to measure the enhancement pipeline).

Inputs are anything `cxr_diffusers.enhancement` accepts (PIL mode L / I;16 / I, uint8 or uint16 arrays, float arrays
in [0, 1]; colour is converted to luminance with a warning). Intensities are first scaled to [0, 1] by the dtype's
range, so a metric gives the same value for an 8-bit image and its 16-bit copy (up to quantisation).
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np

from ..enhancement import ImageLike, to_grayscale_array
from ..errors import CXRInputError

__all__ = [
    "contrast_ratio",
    "entropy",
    "image_statistics",
    "local_contrast",
    "mean_intensity",
    "ms_ssim",
    "ms_ssim_window",
    "pairwise_ms_ssim",
    "psnr",
    "quality_metrics",
    "rms_contrast",
    "sharpness",
    "ssim",
    "std_intensity",
]


def _unit(image: ImageLike) -> np.ndarray:
    """2-D float64 array in [0, 1]."""
    if isinstance(image, np.ndarray) and np.issubdtype(image.dtype, np.floating) and image.ndim == 2:
        to_grayscale_array(image)  # validates: finite, in [0, 1]
        return image.astype(np.float64)
    a = to_grayscale_array(image)
    return a.astype(np.float64) / np.iinfo(a.dtype).max


def _pair(reference: ImageLike, image: ImageLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    ref, img = _unit(reference), _unit(image)
    if ref.shape != img.shape:
        raise CXRInputError(f"{name}: the images must have the same size, got {ref.shape} and {img.shape}.")
    return ref, img


def contrast_ratio(image: ImageLike, low: float = 1.0, high: float = 99.0) -> float:
    """Robust Michelson contrast ``(p_high - p_low) / (p_high + p_low)`` of the `low`/`high` intensity percentiles;
    0 (flat) .. 1 (the darkest percentile is black)."""
    if not 0.0 <= low < high <= 100.0:
        raise CXRInputError(f"contrast_ratio: need 0 <= low < high <= 100, got low={low!r}, high={high!r}.")
    p_lo, p_hi = np.percentile(_unit(image), [low, high])
    return 0.0 if p_hi + p_lo <= 0 else float((p_hi - p_lo) / (p_hi + p_lo))


def rms_contrast(image: ImageLike) -> float:
    """Root-mean-square contrast: the standard deviation of the [0, 1] intensities."""
    return float(_unit(image).std())


def local_contrast(image: ImageLike, window_size: int = 9) -> float:
    """Mean local standard deviation of the [0, 1] intensities in a `window_size` x `window_size` box."""
    if isinstance(window_size, bool) or not isinstance(window_size, (int, np.integer)) or window_size < 2:
        raise CXRInputError(f"local_contrast: window_size must be an integer >= 2, got {window_size!r}.")
    a = _unit(image)
    k = (int(window_size), int(window_size))
    mean = cv2.blur(a, k, borderType=cv2.BORDER_REFLECT)
    var = cv2.blur(a * a, k, borderType=cv2.BORDER_REFLECT) - mean * mean
    return float(np.sqrt(np.clip(var, 0.0, None)).mean())


def entropy(image: ImageLike, bins: int = 256) -> float:
    """Shannon entropy (bits) of the intensity histogram with `bins` equal bins over [0, 1]."""
    if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 2:
        raise CXRInputError(f"entropy: bins must be an integer >= 2, got {bins!r}.")
    hist, _ = np.histogram(_unit(image), bins=int(bins), range=(0.0, 1.0))
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def sharpness(image: ImageLike) -> float:
    """Variance of the Laplacian (3x3 aperture) of the [0, 1] intensities; higher is sharper."""
    return float(cv2.Laplacian(_unit(image), cv2.CV_64F).var())


def psnr(reference: ImageLike, image: ImageLike) -> float:
    """Peak signal-to-noise ratio in dB of `image` against `reference` (data range 1 after scaling); inf if equal."""
    ref, img = _pair(reference, image, "psnr")
    mse = float(np.mean((ref - img) ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(1.0 / mse)


def ssim(reference: ImageLike, image: ImageLike) -> float:
    """Structural similarity (`skimage.metrics.structural_similarity`, 7x7 window or the largest odd one that fits)."""
    from skimage.metrics import structural_similarity

    ref, img = _pair(reference, image, "ssim")
    win = min(7, min(ref.shape) - (1 - min(ref.shape) % 2))
    if win < 3:
        raise CXRInputError(f"ssim: the images are too small ({ref.shape}); they need at least 3x3 pixels.")
    return float(structural_similarity(ref, img, data_range=1.0, win_size=win))


def quality_metrics(image: ImageLike, reference: ImageLike | None = None) -> dict[str, Any]:
    """All no-reference metrics of `image`, plus `psnr` and `ssim` against `reference` when one is given."""
    out: dict[str, Any] = {
        "contrast_ratio": contrast_ratio(image),
        "rms_contrast": rms_contrast(image),
        "local_contrast": local_contrast(image),
        "entropy": entropy(image),
        "sharpness": sharpness(image),
    }
    if reference is not None:
        out["psnr"] = psnr(reference, image)
        out["ssim"] = ssim(reference, image)
    return out


def mean_intensity(image: ImageLike) -> float:
    """Mean of the [0, 1] intensities."""
    return float(_unit(image).mean())


def std_intensity(image: ImageLike) -> float:
    """Standard deviation of the [0, 1] intensities (the same number as `rms_contrast`, named for reports)."""
    return float(_unit(image).std())


def image_statistics(image: ImageLike) -> dict[str, float]:
    """The per-image numbers reported by `cxr-diffusers evaluate`: `quality_metrics` plus mean/std intensity."""
    out = quality_metrics(image)
    out["mean_intensity"] = mean_intensity(image)
    out["std_intensity"] = std_intensity(image)
    return out


def ms_ssim_window(size: int) -> int:
    """The largest odd Gaussian window (<= 11, pytorch-msssim's default) that MS-SSIM's 4 downsamplings allow for an
    image whose smaller side is `size` (pytorch-msssim needs `size > (win - 1) * 16`)."""
    for win in (11, 9, 7, 5, 3):
        if size > (win - 1) * 16:
            return win
    raise CXRInputError(f"ms_ssim: the images are too small ({size} px); MS-SSIM needs at least 33x33 pixels.")


class _NativeConv:
    """Run pytorch-msssim's one-channel Gaussian convolutions with torch's native kernel: oneDNN is several times
    slower for them on CPU."""

    def __enter__(self):
        import warnings

        import torch

        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore", UserWarning)
        self._flags = torch.backends.mkldnn.flags(enabled=False)
        self._flags.__enter__()
        return self

    def __exit__(self, *exc):
        self._flags.__exit__(*exc)
        self._warnings.__exit__(*exc)


def _msssim_tensor(images) -> Any:
    import torch

    return torch.from_numpy(np.stack([_unit(i) for i in images]).astype(np.float32))[:, None]


def ms_ssim(reference: ImageLike, image: ImageLike) -> float:
    """Multi-scale structural similarity (`pytorch_msssim.ms_ssim`, 5 scales, data range 1; the Gaussian window
    shrinks from 11 for images under 161 px, see `ms_ssim_window`)."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    ref, img = _pair(reference, image, "ms_ssim")
    x, y = _msssim_tensor([ref]), _msssim_tensor([img])
    with _NativeConv():
        return float(_ms_ssim(x, y, data_range=1.0, win_size=ms_ssim_window(min(ref.shape))))


def pairwise_ms_ssim(images, num_pairs: int | None = 200, seed: int = 0) -> dict[str, float]:
    """Diversity of a set: mean (and std) MS-SSIM over pairs of distinct images (lower = more diverse).

    All pairs are used when there are at most `num_pairs` of them (or `num_pairs` is None), otherwise `num_pairs`
    random pairs drawn with `seed`.
    """
    from pytorch_msssim import ms_ssim as _ms_ssim

    arrays = [_unit(i) for i in images]
    n = len(arrays)
    if n < 2:
        raise CXRInputError(f"pairwise_ms_ssim needs at least 2 images, got {n}.")
    if len({a.shape for a in arrays}) != 1:
        raise CXRInputError("pairwise_ms_ssim: all images must have the same size.")
    ii, jj = np.triu_indices(n, k=1)
    if num_pairs is not None and len(ii) > num_pairs:
        pick = np.random.default_rng(seed).choice(len(ii), size=int(num_pairs), replace=False)
        ii, jj = ii[pick], jj[pick]
    stack = _msssim_tensor(arrays)
    win = ms_ssim_window(min(arrays[0].shape))
    values = []
    with _NativeConv():
        for start in range(0, len(ii), 64):
            a, b = ii[start : start + 64], jj[start : start + 64]
            values.append(_ms_ssim(stack[a], stack[b], data_range=1.0, win_size=win, size_average=False).numpy())
    v = np.concatenate(values).astype(np.float64)
    return {"mean": float(v.mean()), "std": float(v.std()), "pairs": len(v)}
