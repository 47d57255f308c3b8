"""Image-space fidelity measures that a generator cannot game through its own feature space.

Three measures showed what FD on the model's own VAE features hid (washed-out, blurry images), each reported beside
its real-vs-real floor (two disjoint halves of the real images) and per prompt group:

- `histogram_w1`: Wasserstein-1 distance between the pooled 8-bit intensity distributions, in grey levels (0-255).
  A washed-out generator misses the dark background and the bright bone and sits tens of levels away.
- `sharpness_ratio`: mean variance of the Laplacian of the generated images / that of the real ones (1 = as sharp;
  blur drives it towards 0, noise above 1).
- `spectrum_distance`: mean absolute difference of log10 radially averaged power spectra (RAPS), Hann-windowed, DC
  excluded; blur shows as missing power at high frequencies.

Prompt groups (`prompt_group`, `example_group`): "pediatric normal", "pediatric pneumonia", "adult normal",
"adult pneumonia" (None when the population or class cannot be told).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..data.vocabulary import source_population
from ..errors import CXRInputError

GROUPS = ("pediatric normal", "pediatric pneumonia", "adult normal", "adult pneumonia")

_PEDIATRIC_WORDS = re.compile(r"\b(pediatric|paediatric|child|infant|toddler|boy|girl|baby|newborn)\b")
_ADULT_WORDS = re.compile(r"\b(adult|man|woman|male|female|elderly)\b")
_AGE = re.compile(r"\b(\d{1,3})[- ](year|month)s?[- ]old\b")


def _as_arrays(images: Any) -> np.ndarray:
    """Images -> float64 (N, H, W) in [0, 1] (PIL list, arrays, or an (N, 1, H, W) tensor)."""
    from .features import images_to_tensor

    x = images if hasattr(images, "ndim") and getattr(images, "ndim", 0) == 4 else images_to_tensor(images)
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 4 or x.shape[1] != 1:
        raise CXRInputError(f"Expected images of shape (N, 1, H, W), got {x.shape}.")
    if len(x) == 0:
        raise CXRInputError("No images were given.")
    return x[:, 0]


# ------------------------------------------------------------------------------------------------ measures
def intensity_histogram(images: Any) -> np.ndarray:
    """Pooled 8-bit intensity histogram of a set of images, normalised to sum 1 (256 bins)."""
    levels = np.clip(np.round(_as_arrays(images) * 255), 0, 255).astype(np.int64)
    counts = np.bincount(levels.ravel(), minlength=256).astype(np.float64)
    return counts / counts.sum()


def histogram_w1(images_a: Any, images_b: Any) -> float:
    """Wasserstein-1 distance between the pooled intensity distributions of two sets, in grey levels."""
    cdf_a = np.cumsum(intensity_histogram(images_a))
    cdf_b = np.cumsum(intensity_histogram(images_b))
    return float(np.abs(cdf_a - cdf_b).sum())


def mean_sharpness(images: Any) -> float:
    """Mean variance of the Laplacian (`image_quality.sharpness`) over a set."""
    from .image_quality import sharpness

    return float(np.mean([sharpness(a) for a in _as_arrays(images)]))


def sharpness_ratio(generated: Any, real: Any) -> float:
    """Mean Laplacian variance of `generated` / that of `real` (1 = as sharp as the real images)."""
    return mean_sharpness(generated) / max(mean_sharpness(real), 1e-12)


def radial_power_spectrum(images: Any) -> np.ndarray:
    """Mean radially averaged power spectrum of a set (Hann window, mean removed), bins 1 .. min(H, W) // 2."""
    arrays = _as_arrays(images)
    height, width = arrays.shape[-2:]
    window = np.outer(np.hanning(height), np.hanning(width))
    yy, xx = np.indices((height, width))
    radius = np.hypot(yy - height // 2, xx - width // 2).round().astype(np.int64)
    n_bins = min(height, width) // 2
    counts = np.bincount(radius.ravel(), minlength=n_bins + 1)[: n_bins + 1]
    total = np.zeros(n_bins + 1)
    for a in arrays:
        spectrum = np.abs(np.fft.fftshift(np.fft.fft2((a - a.mean()) * window))) ** 2
        total += np.bincount(radius.ravel(), weights=spectrum.ravel(), minlength=n_bins + 1)[: n_bins + 1]
    return (total / np.maximum(counts, 1) / len(arrays))[1:]


def spectrum_distance(images_a: Any, images_b: Any) -> float:
    """Mean |log10 RAPS(a) - log10 RAPS(b)| over the non-DC frequency bins (0 = the same spectrum)."""
    a, b = radial_power_spectrum(images_a), radial_power_spectrum(images_b)
    if a.shape != b.shape:
        raise CXRInputError(f"The two sets have different image sizes ({a.size} vs {b.size} frequency bins).")
    return float(np.mean(np.abs(np.log10(a + 1e-20) - np.log10(b + 1e-20))))


def fidelity_metrics(generated: Any, real: Any) -> dict[str, float]:
    """The three measures of `generated` against `real`."""
    return {"histogram_w1": histogram_w1(generated, real), "sharpness_ratio": sharpness_ratio(generated, real),
            "spectrum_distance": spectrum_distance(generated, real)}


def real_vs_real_floor(real: Any, seed: int = 0) -> dict[str, float] | None:
    """The measures between two random disjoint halves of `real` (None with fewer than 4 images): what two samples
    of the same real distribution differ by."""
    arrays = _as_arrays(real)
    if len(arrays) < 4:
        return None
    order = np.random.default_rng(seed).permutation(len(arrays))
    half = len(arrays) // 2
    a, b = arrays[order[:half]][:, None], arrays[order[half : 2 * half]][:, None]
    return fidelity_metrics(a, b)


# ------------------------------------------------------------------------------------------------ groups
def _population_from_prompt(prompt: str) -> str | None:
    text = prompt.lower()
    age = _AGE.search(text)
    if age:
        years = int(age.group(1)) / (12 if age.group(2) == "month" else 1)
        return "pediatric" if years < 18 else "adult"
    if _PEDIATRIC_WORDS.search(text):
        return "pediatric"
    if _ADULT_WORDS.search(text):
        return "adult"
    return None


def prompt_group(prompt: str) -> str | None:
    """The prompt group of a generation prompt ("pediatric pneumonia", ...), or None when it cannot be told."""
    from ..data.prompts import pneumonia_class_from_prompt

    population = _population_from_prompt(prompt)
    found = pneumonia_class_from_prompt(prompt) or "NORMAL"
    return None if population is None else f"{population} {found.lower()}"


def example_group(source: str | None, labels: Sequence[str] | None, age: Any = None) -> str | None:
    """The prompt group of a real image from its source, labels and age (None when the population is unknown)."""
    population = None
    if age is not None:
        try:
            population = "pediatric" if float(age) < 18 else "adult"
        except (TypeError, ValueError):
            population = None
    if population is None and source:
        population = source_population(source) or None
    if population is None or labels is None:
        return None
    pneumonia = any("pneumonia" in str(label).lower() for label in labels)
    return f"{population} {'pneumonia' if pneumonia else 'normal'}"


def grouped_fidelity(
    generated: Any, generated_groups: Sequence[str | None], real: Any, real_groups: Sequence[str | None],
    seed: int = 0,
) -> dict[str, Mapping[str, Any]]:
    """`fidelity_metrics` and the real-vs-real floor overall and for each group present in both sets."""
    gen, ref = _as_arrays(generated)[:, None], _as_arrays(real)[:, None]
    if len(generated_groups) != len(gen) or len(real_groups) != len(ref):
        raise CXRInputError("Give one group (or None) per image.")
    out: dict[str, Mapping[str, Any]] = {
        "all": {**fidelity_metrics(gen, ref), "real_vs_real": real_vs_real_floor(ref, seed),
                "n_generated": len(gen), "n_real": len(ref)},
    }
    for group in GROUPS:
        g = [i for i, name in enumerate(generated_groups) if name == group]
        r = [i for i, name in enumerate(real_groups) if name == group]
        if not g or not r:
            continue
        out[group] = {**fidelity_metrics(gen[g], ref[r]), "real_vs_real": real_vs_real_floor(ref[r], seed),
                      "n_generated": len(g), "n_real": len(r)}
    return out
