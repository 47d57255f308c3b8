"""Distribution metrics between two feature matrices (rows = images), as in NVlabs/edm's fid.py: statistics, then
the distance. The features come from an extractor of `features` (e.g. `VAEFeatureExtractor`); nothing here runs a
network.

- `frechet_distance` (FD; "FID" with Inception features): float64, `scipy.linalg.sqrtm`; `feature_statistics` and
  `frechet_distance_from_statistics` for precomputed (mu, sigma).
- `kernel_distance` (KID): unbiased MMD^2 with the cubic polynomial kernel, mean and std over random subsets.
- `precision_recall` (Kynkaenniemi et al. 2019) and `density_coverage` (Naeem et al. 2020) from k-NN balls (`prdc`).
- `distribution_metrics`: all of them in one dict.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import CXRInputError

# The extractors lived here before `features` was split off; these names stay importable from this module.
from .features import (  # noqa: F401
    ClassifierFeatureExtractor,
    FeatureExtractor,
    InceptionFeatureExtractor,
    VAEFeatureExtractor,
    XRVFeatureExtractor,
    available_extractors,
    images_to_tensor,
)

__all__ = [
    "density_coverage",
    "distribution_metrics",
    "feature_statistics",
    "frechet_distance",
    "frechet_distance_from_statistics",
    "kernel_distance",
    "prdc",
    "precision_recall",
]


def _features(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise CXRInputError(f"{name} must be a 2-D array of features (N, D), got shape {a.shape}.")
    if not np.isfinite(a).all():
        raise CXRInputError(f"{name} contains NaN or infinite values.")
    return a


def _pair_features(a: Any, b: Any, min_rows: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a, b = _features(a, "real features"), _features(b, "generated features")
    if a.shape[1] != b.shape[1]:
        raise CXRInputError(f"The feature sets have different widths: {a.shape[1]} and {b.shape[1]}.")
    if min(len(a), len(b)) < min_rows:
        raise CXRInputError(f"Each feature set needs at least {min_rows} rows, got {len(a)} and {len(b)}.")
    return a, b


def feature_statistics(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) in float64 (`np.cov` with N - 1)."""
    f = _features(features, "features")
    if len(f) < 2:
        raise CXRInputError("At least 2 feature rows are needed for a covariance.")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance_from_statistics(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), computed in float64 with `scipy.linalg.sqrtm`.

    When the product is singular (sqrtm returns non-finite values) `eps` is added to both diagonals; a small imaginary
    part from rounding is dropped (a large one, relative to the trace, raises).
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise CXRInputError(
            f"Fréchet distance: inconsistent shapes mu {mu1.shape}/{mu2.shape}, sigma {s1.shape}/{s2.shape}."
        )
    diff = mu1 - mu2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a singular product is handled below
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(s1.shape[0]) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        scale = max(1.0, abs(np.trace(s1)) + abs(np.trace(s2)))
        if np.abs(covmean.imag).max() > 1e-3 * scale:
            raise ArithmeticError(
                f"Fréchet distance: sqrtm has a large imaginary part ({np.abs(covmean.imag).max():.3g})."
            )
        covmean = covmean.real
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))
    return max(value, 0.0)


def frechet_distance(real: Any, generated: Any) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (FID when the features are Inception's)."""
    a, b = _pair_features(real, generated, min_rows=2)
    return frechet_distance_from_statistics(*feature_statistics(a), *feature_statistics(b))


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    kxx = (x @ x.T * gamma + coef0) ** degree
    kyy = (y @ y.T * gamma + coef0) ** degree
    kxy = (x @ y.T * gamma + coef0) ** degree
    m, n = len(x), len(y)
    return float(
        (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
        + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
        - 2.0 * kxy.mean()
    )


def kernel_distance(
    real: Any,
    generated: Any,
    num_subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: float | None = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> tuple[float, float]:
    """KID: unbiased MMD^2 with the kernel k(x, y) = (gamma x.y + coef0)^degree (gamma = 1/D by default), averaged over
    `num_subsets` random subsets of `min(subset_size, N_real, N_generated)` rows from each set. Returns (mean, std)."""
    a, b = _pair_features(real, generated, min_rows=2)
    gamma = 1.0 / a.shape[1] if gamma is None else float(gamma)
    m = int(min(subset_size, len(a), len(b)))
    rng = np.random.default_rng(seed)
    values = [
        _mmd2_unbiased(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)], degree, gamma, coef0)
        for _ in range(int(num_subsets))
    ]
    return float(np.mean(values)), float(np.std(values))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from sklearn.metrics import pairwise_distances

    return pairwise_distances(a, b, metric="euclidean")


def _kth_neighbour_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row to its k-th nearest other row."""
    if len(x) <= k:
        raise CXRInputError(f"k-NN metrics need more than k={k} samples per set, got {len(x)}.")
    d = _distances(x, x)
    return np.partition(d, k, axis=1)[:, k]  # column 0 of the sorted row is the point itself


def precision_recall(real: Any, generated: Any, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019): the share of generated samples inside the union of
    the real samples' k-NN balls (precision), and of real samples inside the generated samples' balls (recall)."""
    return {key: v for key, v in prdc(real, generated, k=k).items() if key in ("precision", "recall")}


def density_coverage(real: Any, generated: Any, k: int = 5) -> dict[str, float]:
    """Density and coverage (Naeem et al. 2020) with k-NN balls around the real samples."""
    return {key: v for key, v in prdc(real, generated, k=k).items() if key in ("density", "coverage")}


def prdc(real: Any, generated: Any, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage with `k` nearest neighbours (Euclidean distances on the features)."""
    a, b = _pair_features(real, generated)
    real_radius = _kth_neighbour_radius(a, k)
    fake_radius = _kth_neighbour_radius(b, k)
    d = _distances(a, b)  # (real, generated)
    inside = d <= real_radius[:, None]
    return {
        "precision": float(inside.any(axis=0).mean()),
        "recall": float((d <= fake_radius[None, :]).any(axis=1).mean()),
        "density": float(inside.sum(axis=0).mean() / k),
        "coverage": float((d.min(axis=1) <= real_radius).mean()),
    }


def distribution_metrics(
    real: Any,
    generated: Any,
    k: int = 5,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """FD, KID (mean and std), precision, recall, density and coverage of two feature sets (N, D)."""
    a, b = _pair_features(real, generated, min_rows=2)
    out: dict[str, float] = {"n_real": len(a), "n_generated": len(b), "feature_dim": int(a.shape[1])}
    out["fd"] = frechet_distance(a, b)
    out["kid"], out["kid_std"] = kernel_distance(a, b, num_subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    k_eff = min(k, len(a) - 1, len(b) - 1)
    if k_eff >= 1:
        out.update(prdc(a, b, k=k_eff))
        out["k"] = int(k_eff)
    return out
