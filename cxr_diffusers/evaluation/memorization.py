"""Memorisation audit: how close is each generated image to its nearest training image?

Two views, both reported as a distribution over the generated images:

- pixels: SSIM (`pytorch_msssim.ssim`, 7x7 Gaussian window) between images downsampled to `size` x `size` (64 by
  default), against every training image;
- features: cosine similarity of feature vectors (any `FeatureExtractor`), against every training image.

A generated image whose nearest SSIM is above `ssim_threshold` (or cosine above `cosine_threshold`) is counted as a
near-copy. The thresholds are only meaningful next to the real-vs-real baseline: run the same audit for real test
images against the training images (`cxr-diffusers evaluate --real-vs-real` does) and compare the distributions.

    report = memorization_audit(generated, training, extractor=VAEFeatureExtractor(pipe.vae))
    report.summary()                                      # dict for metrics.json
    save_nearest_grid(report, generated, training, "nearest.png", k=8)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CXRInputError
from .features import images_to_tensor
from .image_quality import _NativeConv

__all__ = [
    "MemorizationReport",
    "memorization_audit",
    "nearest_by_cosine",
    "nearest_by_ssim",
    "save_nearest_grid",
]

# Near-copy thresholds: SSIM at 64 px and cosine of features. Real test-vs-train pairs of the Kermany set stay below
# them (see benchmarks/README.md); a copy of a training image, even re-encoded or slightly blurred, lies above.
DEFAULT_SSIM_THRESHOLD = 0.9
DEFAULT_COSINE_THRESHOLD = 0.99


def nearest_by_ssim(
    generated: Any, training: Any, size: int = 64, candidates: int | None = 128, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """For each generated image, the highest SSIM to any training image (both resized to `size`) and its index.

    With `candidates`, SSIM is computed only for the `candidates` training images with the highest pixel correlation
    (a matrix product; the SSIM-nearest image is among them in practice, see the tests); None compares against every
    training image.
    """
    import torch
    from pytorch_msssim import ssim

    gen = images_to_tensor(generated, size)
    train = images_to_tensor(training, size)
    win = min(7, size if size % 2 else size - 1)
    if win < 3:
        raise CXRInputError(f"nearest_by_ssim: size must be at least 3, got {size}.")
    if candidates is not None and candidates < len(train):
        def standardise(x):
            f = x.flatten(1).double()
            f = f - f.mean(dim=1, keepdim=True)
            return f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)

        correlation = standardise(gen) @ standardise(train).T
        shortlist = correlation.topk(int(candidates), dim=1).indices
    else:
        shortlist = torch.arange(len(train)).expand(len(gen), -1)
    pair_gen = torch.arange(len(gen)).repeat_interleave(shortlist.shape[1])
    pair_train = shortlist.reshape(-1)
    scores = []
    with torch.no_grad(), _NativeConv():
        for start in range(0, len(pair_gen), chunk):
            g, t = pair_gen[start : start + chunk], pair_train[start : start + chunk]
            scores.append(ssim(gen[g], train[t], data_range=1.0, win_size=win, size_average=False))
    s = torch.cat(scores).double().view(len(gen), -1)
    j = s.argmax(dim=1)
    best = s[torch.arange(len(gen)), j].numpy()
    index = shortlist[torch.arange(len(gen)), j].numpy().astype(np.int64)
    return best, index


def nearest_by_cosine(generated_features: Any, training_features: Any) -> tuple[np.ndarray, np.ndarray]:
    """For each generated feature row, the highest cosine similarity to any training row and its index."""
    a = np.asarray(generated_features, np.float64)
    b = np.asarray(training_features, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise CXRInputError(f"nearest_by_cosine needs (N, D) and (M, D) features, got {a.shape} and {b.shape}.")
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    sim = a @ b.T
    index = sim.argmax(axis=1)
    return sim[np.arange(len(a)), index], index


def _distribution(values: np.ndarray, threshold: float) -> dict[str, Any]:
    return {
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "p95": float(np.percentile(values, 95)),
        "max": float(values.max()),
        "threshold": float(threshold),
        "fraction_above_threshold": float((values > threshold).mean()),
        "histogram": [int(c) for c in np.histogram(values, bins=10, range=(min(0.0, float(values.min())), 1.0))[0]],
    }


@dataclass
class MemorizationReport:
    """Per generated image: the nearest training image and its similarity, by pixel SSIM and by feature cosine."""

    ssim: np.ndarray
    ssim_index: np.ndarray
    cosine: np.ndarray | None = None
    cosine_index: np.ndarray | None = None
    ssim_threshold: float = DEFAULT_SSIM_THRESHOLD
    cosine_threshold: float = DEFAULT_COSINE_THRESHOLD
    size: int = 64
    feature_name: str | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n": len(self.ssim),
            "pixel_ssim": {**_distribution(self.ssim, self.ssim_threshold), "size": self.size},
        }
        if self.cosine is not None:
            out["feature_cosine"] = {**_distribution(self.cosine, self.cosine_threshold), "features": self.feature_name}
        # A near copy is judged on pixels: penultimate-layer features of a classifier are all non-negative, so their
        # cosine is high for any two radiographs (0.99 for most real test/train pairs) and says little on its own.
        near = self.ssim > self.ssim_threshold
        out["near_copies"] = int(near.sum())
        out["fraction_near_copies"] = float(near.mean())
        out["closest_pairs"] = [
            {"generated": g, "training": t, "ssim": round(v, 4)} for g, t, v in self.closest_pairs(5, by="ssim")
        ]
        return out

    def closest_pairs(self, k: int = 8, by: str = "ssim") -> list[tuple[int, int, float]]:
        """The `k` generated images most similar to a training image: (generated index, training index, value)."""
        if by == "ssim":
            values, index = self.ssim, self.ssim_index
        elif by == "cosine" and self.cosine is not None:
            values, index = self.cosine, self.cosine_index
        else:
            raise CXRInputError(f"closest_pairs: by must be 'ssim' or 'cosine' (with features), got {by!r}.")
        order = np.argsort(-values, kind="stable")[:k]
        return [(int(g), int(index[g]), float(values[g])) for g in order]


def memorization_audit(
    generated: Any,
    training: Any,
    *,
    extractor=None,
    generated_features: Any = None,
    training_features: Any = None,
    size: int = 64,
    ssim_threshold: float = DEFAULT_SSIM_THRESHOLD,
    cosine_threshold: float = DEFAULT_COSINE_THRESHOLD,
) -> MemorizationReport:
    """Nearest training image of every generated image, by SSIM on `size` px images and (with an `extractor` or
    precomputed features) by feature cosine."""
    ssim_values, ssim_index = nearest_by_ssim(generated, training, size=size)
    cosine = cosine_index = None
    name = getattr(extractor, "name", None)
    if extractor is not None or (generated_features is not None and training_features is not None):
        gf = extractor(generated) if generated_features is None else generated_features
        tf = extractor(training) if training_features is None else training_features
        cosine, cosine_index = nearest_by_cosine(gf, tf)
    return MemorizationReport(
        ssim=ssim_values,
        ssim_index=ssim_index,
        cosine=cosine,
        cosine_index=cosine_index,
        ssim_threshold=ssim_threshold,
        cosine_threshold=cosine_threshold,
        size=size,
        feature_name=name,
    )


def _to_pil(images: Any, index: int, tile: int):
    from PIL import Image

    if isinstance(images, (list, tuple)) and isinstance(images[index], Image.Image):
        return images[index].convert("L").resize((tile, tile))
    x = images_to_tensor(images[index : index + 1] if not isinstance(images, (list, tuple)) else [images[index]], tile)
    return Image.fromarray((x[0, 0].numpy() * 255).round().astype(np.uint8), mode="L")


def save_nearest_grid(
    report: MemorizationReport,
    generated: Any,
    training: Any,
    path: str | Path,
    k: int = 8,
    by: str = "ssim",
    tile: int = 128,
) -> Path:
    """A grid of the `k` closest pairs: each row is [generated | nearest training image], captioned with the score."""
    from ..utils.image_grid import make_grid

    tiles, labels = [], []
    for g, t, value in report.closest_pairs(k, by=by):
        tiles += [_to_pil(generated, g, tile), _to_pil(training, t, tile)]
        labels += [f"gen {g}", f"train {t} {by} {value:.3f}"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(tiles, cols=2, labels=labels).save(path)
    return path
