"""Is this input a chest radiograph the classifier can speak about? The out-of-distribution check of its inputs.

A ResNet gives a confident probability for anything: a blank image, random noise or a photograph come out "PNEUMONIA
p = 1.0". `classify_images` (used by `cxr-diffusers classify`, the app's classifier tab and
`predict_proba(..., check_inputs=True)`) runs two checks before it believes the classifier, and reports a reason
instead of a probability for the images that fail:

1. **Structure** (always on, needs nothing stored): `structure_problem`
   - blank or nearly uniform (intensity std < 0.02 on [0, 1]) or fewer than 16 grey levels
     (`input_check.radiograph_problem`, shared with the evaluation and the synthesis filter);
   - no spatial structure: the correlation of neighbouring pixels, measured on a 64 x 64 bilinear (antialiased)
     resize, the smaller of the horizontal and vertical one, below `MIN_NEIGHBOUR_CORRELATION` = 0.6. Measured on
     all 10,364 real radiographs in ../shared/data (Kermany 224 px and full resolution, NIH subset 300, NIH 1000 64 px,
     NIH CXR8 768, NIH 1024, JSRT 768, the COVID collection 256 px): lowest 0.819, 0.1th percentile of each source
     0.86 or more; uniform or Gaussian pixel noise gives 0.0-0.3 at any size, brick / grass textures 0.18 / 0.47.
2. **Features** (where statistics are stored beside the weights, `ood_statistics.safetensors`): the Mahalanobis
   distance of the classifier's pooled penultimate features (the input of its head, `class_probabilities(...,
   return_features=True)`) to the mean and Ledoit-Wolf covariance of the features of real reference radiographs.
   The threshold is the `quantile` (0.995 by default) of the distances of held-out reference images (a validation
   split's patients, or a random 20% of a folder's images), so about 0.5% of real in-distribution images are refused;
   the held-out distance quantiles and the threshold are stored in the file's metadata. Measured for the bundled
   classifier with the command below (3,409 fit / 846 held-out images): threshold 30.8; refused 0.6% of the Kermany
   test split, 0.5% of NIH 1000 (64 px, not fitted), 2.8% of JSRT, 27% of the COVID collection (it holds CT slices,
   lateral views and annotated images); the natural images tried (scikit-image's camera, astronaut, cat, coffee,
   text, moon, rocket, and a grey ramp) lie at 36-66. Without the file the check is the structural one only
   (weaker: a photograph passes it).

Compute the statistics of a classifier folder (written into it, beside model.safetensors)::

    python -m cxr_diffusers.classification.compute_ood pretrained/pneumonia-classifier \
        --data ../shared/data/kermany_pneumonia_224 --data ../shared/data/nih_subset_300/healthy \
        --data ../shared/data/nih_subset_300/pneumonia --data ../shared/data/nih_cxr8_768/images --max-images 2000

Each `--data` is a Kermany root, a saved `DatasetDict` (`cxr-diffusers data build`) or a folder of images: its
train split (or 80% of its images) is fitted, its validation split (or the other 20%) sets the threshold.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CXRInputError, DataError, ModelLoadingError

__all__ = [
    "MIN_NEIGHBOUR_CORRELATION",
    "OOD_STATISTICS_FILE",
    "ClassifiedImage",
    "FeatureStatistics",
    "classify_images",
    "extract_features",
    "fit_feature_statistics",
    "input_problem",
    "load_ood_statistics",
    "neighbour_correlation",
    "structure_problem",
]

#: The statistics file beside a classifier's model.safetensors.
OOD_STATISTICS_FILE = "ood_statistics.safetensors"
#: Neighbouring-pixel correlation (64 x 64 resize) below which an image has no radiograph structure (noise).
MIN_NEIGHBOUR_CORRELATION = 0.6
#: Side of the square resize the neighbour correlation is measured on.
CORRELATION_SIDE = 64
#: Default share of held-out real reference images accepted by the feature check.
DEFAULT_QUANTILE = 0.995


# ------------------------------------------------------------------------------------------------ structure
def _single_images(images: Any) -> list:
    """A list of single images (PIL, 2-D arrays, (1, H, W) tensors) from a PIL image, a list or a batch."""
    import PIL.Image

    if isinstance(images, PIL.Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 2):
        return [images]
    if hasattr(images, "detach"):  # a tensor (N, 1, H, W) or (N, H, W) in [0, 1] -> 2-D float arrays
        tensor = images.detach().float().cpu()
        return [t.numpy() for t in (tensor[:, 0] if tensor.ndim == 4 else tensor)]
    if isinstance(images, np.ndarray):
        return [a for a in (images[..., 0] if images.ndim == 4 else images)]
    return list(images)


def neighbour_correlation(image: Any, side: int = CORRELATION_SIDE) -> float:
    """The smaller of the horizontal and vertical correlation of neighbouring pixels of `image` resized to `side`
    x `side` (bilinear, antialiased). About 0.85-0.99 for chest radiographs, about 0-0.3 for pixel noise; 0 for a
    uniform image."""
    import PIL.Image

    from ..evaluation.image_quality import _unit

    unit = _unit(_grey(image)).astype(np.float32)
    small = np.asarray(PIL.Image.fromarray(unit, mode="F").resize((side, side), PIL.Image.Resampling.BILINEAR),
                       dtype=np.float64)

    def correlation(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
        norm = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
        return float((a * b).sum() / norm) if norm > 0 else 0.0

    return min(correlation(small[:, 1:], small[:, :-1]), correlation(small[1:], small[:-1]))


def _grey(image: Any) -> Any:
    """A mode L PIL image or a 2-D array of one image (colour PIL images converted as the classifier's loader does)."""
    import PIL.Image

    from .data import to_grayscale

    if isinstance(image, PIL.Image.Image):
        return to_grayscale(image)
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    return image


def structure_problem(image: Any) -> str | None:
    """Why `image` cannot be a radiograph by its pixels alone (blank, few grey levels, noise), or None."""
    from .input_check import radiograph_problem

    image = _grey(image)
    problem = radiograph_problem(image)
    if problem:
        return problem
    correlation = neighbour_correlation(image)
    if correlation < MIN_NEIGHBOUR_CORRELATION:
        return (f"the image looks like noise, not a radiograph (neighbouring-pixel correlation {correlation:.2f}, "
                f"radiographs have {MIN_NEIGHBOUR_CORRELATION:.1f} or more)")
    return None


# ------------------------------------------------------------------------------------------------ features
@dataclass
class FeatureStatistics:
    """Mean and precision of a classifier's penultimate features on real radiographs, and the distance threshold."""

    mean: np.ndarray
    precision: np.ndarray
    threshold: float
    info: dict = field(default_factory=dict)

    def distances(self, features) -> np.ndarray:
        """Mahalanobis distances (N,) of features (N, D)."""
        x = np.asarray(features.cpu().numpy() if hasattr(features, "cpu") else features, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise CXRInputError(f"The OOD statistics are for {self.mean.shape[0]} features, got shape {x.shape}; "
                                "they were computed for another classifier.")
        centred = x - self.mean
        return np.sqrt(np.maximum(np.einsum("nd,de,ne->n", centred, self.precision, centred), 0.0))

    def save(self, folder: str | os.PathLike) -> Path:
        import torch
        from safetensors.torch import save_file

        path = Path(folder) / OOD_STATISTICS_FILE
        metadata = {"threshold": repr(float(self.threshold)), "info": json.dumps(self.info),
                    "format": "cxr-diffusers ood v1"}
        save_file({"mean": torch.from_numpy(self.mean.astype(np.float32)),
                   "precision": torch.from_numpy(self.precision.astype(np.float32))}, str(path), metadata=metadata)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStatistics:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="np") as f:
                metadata = f.metadata() or {}
                mean, precision = f.get_tensor("mean"), f.get_tensor("precision")
            return cls(mean.astype(np.float64), precision.astype(np.float64), float(metadata["threshold"]),
                       json.loads(metadata.get("info", "{}")))
        except (SafetensorError, OSError, KeyError, ValueError) as err:  # truncated or foreign: say so, do not guess
            raise ModelLoadingError(f"{path} is not a readable OOD statistics file ({type(err).__name__}); compute "
                                    "it again with `python -m cxr_diffusers.classification.compute_ood`.") from None


def load_ood_statistics(model_path: str | os.PathLike | None) -> FeatureStatistics | None:
    """The feature statistics stored with a classifier (a folder, or a Hub id in the local cache), or None when the
    classifier has none (the input check is then the structural one)."""
    if model_path is None:
        return None
    local = Path(model_path)
    if local.is_dir():
        path = local / OOD_STATISTICS_FILE
        return FeatureStatistics.load(path) if path.is_file() else None
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(model_path), OOD_STATISTICS_FILE)
    except (ImportError, OSError, ValueError):  # not a Hub id (HFValidationError is a ValueError), no cache
        return None
    return FeatureStatistics.load(cached) if isinstance(cached, str) and Path(cached).is_file() else None


def extract_features(model, processor, images, batch_size: int = 32) -> np.ndarray:
    """Pooled penultimate features (N, D) of images, through the one inference path (`class_probabilities`)."""
    from .model import class_probabilities, prepare_pixel_values

    images = _single_images(images)
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        _, features = class_probabilities(model, prepare_pixel_values(processor, images[start:start + batch_size]),
                                          return_features=True)
        out.append(features.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


def fit_feature_statistics(fit_features, heldout_features, quantile: float = DEFAULT_QUANTILE,
                           info: dict | None = None) -> FeatureStatistics:
    """Mean and Ledoit-Wolf shrunk covariance of `fit_features`; threshold = the `quantile` of the distances of
    `heldout_features` (images not in the fit). The info records counts and the held-out distance quantiles."""
    from sklearn.covariance import LedoitWolf

    fit = np.asarray(fit_features, dtype=np.float64)
    heldout = np.asarray(heldout_features, dtype=np.float64)
    if len(fit) < 2 or len(heldout) < 1:
        raise DataError(f"Fitting OOD statistics needs at least 2 fit images and 1 held-out image, got {len(fit)} "
                        f"and {len(heldout)}.")
    if not 0.5 <= quantile < 1:
        raise CXRInputError(f"The OOD quantile must be in [0.5, 1), got {quantile}.")
    estimator = LedoitWolf().fit(fit)
    stats = FeatureStatistics(fit.mean(axis=0), estimator.precision_, 0.0)
    held = stats.distances(heldout)
    stats.threshold = float(np.quantile(held, quantile))
    stats.info = {**(info or {}), "method": "Mahalanobis distance of pooled penultimate features (Ledoit-Wolf)",
                  "quantile": quantile, "n_fit": len(fit), "n_heldout": len(heldout),
                  "shrinkage": float(estimator.shrinkage_),
                  "heldout_distance": {q: float(np.quantile(held, float(q))) for q in
                                       ("0.5", "0.9", "0.99", "0.995", "1.0")},
                  "fit_distance_max": float(stats.distances(fit).max())}
    return stats


# ------------------------------------------------------------------------------------------------ classify
@dataclass
class ClassifiedImage:
    """One image's answer: `label` (NORMAL / PNEUMONIA, or `NOT_A_RADIOGRAPH` with `problem` saying why)."""

    label: str
    p_pneumonia: float | None
    problem: str | None = None
    ood_distance: float | None = None

    @property
    def probability(self) -> float | None:
        """Probability of the predicted label (None for a rejected image)."""
        return None if self.p_pneumonia is None else max(self.p_pneumonia, 1 - self.p_pneumonia)


def classify_images(model, processor, images, batch_size: int = 16, statistics: FeatureStatistics | None = None,
                    threshold: float = 0.5) -> list[ClassifiedImage]:
    """The classifier's answer for each image, or the reason it is not a radiograph (see the module docstring).

    One forward pass per batch (`class_probabilities`) gives both the probabilities and, with `statistics`, the
    features whose distance is checked. Rejected images get `label` `NOT_A_RADIOGRAPH` and `p_pneumonia` None.
    """
    from .input_check import NOT_A_RADIOGRAPH
    from .model import class_probabilities, pneumonia_index, prepare_pixel_values

    images = _single_images(images)
    if not images:
        raise CXRInputError("No images were given.")
    index = pneumonia_index(model)
    model.eval()
    results: list[ClassifiedImage] = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        pixel_values = prepare_pixel_values(processor, batch)
        if statistics is not None:
            probabilities, features = class_probabilities(model, pixel_values, return_features=True)
            distances = statistics.distances(features)
        else:
            probabilities, distances = class_probabilities(model, pixel_values), [None] * len(batch)
        p = probabilities[:, index].cpu().numpy()
        for image, p_i, distance in zip(batch, p, distances):
            problem = structure_problem(image)
            if problem is None and distance is not None and distance > statistics.threshold:
                problem = (f"the image is far from the chest radiographs this classifier knows (feature distance "
                           f"{distance:.1f}, threshold {statistics.threshold:.1f})")
            distance = None if distance is None else round(float(distance), 3)
            if problem:
                results.append(ClassifiedImage(NOT_A_RADIOGRAPH, None, problem, distance))
            else:
                label = "PNEUMONIA" if p_i >= threshold else "NORMAL"
                results.append(ClassifiedImage(label, float(p_i), None, distance))
    return results


def input_problem(image, model=None, processor=None, statistics: FeatureStatistics | None = None) -> str | None:
    """Why one image is not a radiograph the classifier can judge, or None (the feature check needs `model`,
    `processor` and `statistics`)."""
    if statistics is None or model is None or processor is None:
        return structure_problem(image)
    return classify_images(model, processor, [image], statistics=statistics)[0].problem


# ------------------------------------------------------------------------------------------------ fitting CLI
def _reference_images(location: str, seed: int) -> tuple[list, list, str]:
    """(fit, held-out) image sources of one `--data` location and its description."""
    from .data import load_splits

    root = Path(location)
    if not root.exists():
        raise DataError(f"--data {root} does not exist.")
    suffixes = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
    is_kermany = (root / "train").is_dir() or (root / "dataset" / "train").is_dir()
    if (root / "dataset_dict.json").is_file() or root.suffix == ".npz" or is_kermany:
        splits, info = load_splits(root, seed=seed)
        return ([r.source for r in splits["train"]], [r.source for r in splits["validation"]],
                f"{info['dataset']} {root.name} train / validation")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes)
    if len(files) < 5:
        raise DataError(f"--data {root} holds {len(files)} images; give a Kermany root, a saved dataset or a folder "
                        "of at least 5 images.")
    order = np.random.default_rng(seed).permutation(len(files))
    cut = round(0.8 * len(files))
    return ([files[i] for i in sorted(order[:cut])], [files[i] for i in sorted(order[cut:])],
            f"image folder {root.name} (80/20 random split)")


def _subset(items: list, count: int | None, seed: int) -> list:
    if count is None or len(items) <= count:
        return items
    return [items[i] for i in sorted(np.random.default_rng(seed).choice(len(items), count, replace=False))]


def compute_ood_statistics(model_path: str, data: Sequence[str], max_images: int | None = 2000,
                           quantile: float = DEFAULT_QUANTILE, batch_size: int = 32, seed: int = 0,
                           output: str | None = None, progress: bool = True) -> FeatureStatistics:
    """Fit the feature statistics of the classifier at `model_path` on the `data` locations and save them (into
    the classifier folder, or `output`). `max_images` caps the fit images per location (held-out: a quarter of it)."""
    from tqdm.auto import tqdm

    from .data import load_xray
    from .model import load_classifier

    model, processor = load_classifier(model_path)
    fit_features, held_features, described = [], [], []
    for location in data:
        fit, held, description = _reference_images(location, seed)
        fit = _subset(fit, max_images, seed)
        held = _subset(held, None if max_images is None else max(1, max_images // 4), seed)
        described.append(f"{description}: {len(fit)} fit, {len(held)} held out")
        for sources, sink in ((fit, fit_features), (held, held_features)):
            for start in tqdm(range(0, len(sources), batch_size), desc=f"features {Path(location).name}",
                              disable=not progress):
                images = [load_xray(s) for s in sources[start:start + batch_size]]
                sink.append(extract_features(model, processor, images, batch_size=batch_size))
    try:
        resolution = int(processor.size["height"])
    except (AttributeError, KeyError, TypeError, ValueError):
        resolution = None
    stats = fit_feature_statistics(np.concatenate(fit_features), np.concatenate(held_features), quantile,
                                   info={"data": described, "resolution": resolution, "seed": seed,
                                         "model": str(model_path)})
    target = Path(output or model_path)
    target.mkdir(parents=True, exist_ok=True)
    stats.save(target)
    return stats
