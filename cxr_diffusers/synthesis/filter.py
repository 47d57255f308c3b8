"""The optional quality filter of `cxr-diffusers synthesize` (the check RoentGen-v2 runs on its synthetic sets).

Two checks, either or both:

- ``classifier``: the pneumonia classifier must agree with the image's finding: P(expected class) >= threshold,
  where the expected class is PNEUMONIA for images whose labels name pneumonia and NORMAL otherwise (the
  pneumonia-vs-rest reading of `evaluation.conditioning`); images that are not radiographs at all (blank, a handful
  of grey levels: `classification.input_check.radiograph_problem`) fail too. The score is P(expected class).
- ``memorization``: the nearest training image (SSIM of 64 px versions, `evaluation.memorization.nearest_by_ssim`)
  must stay at or below the near-copy threshold (0.9 by default). The score is that SSIM.

A rejected image is made again with its next seed (`spec.image_seed(seed, index, attempt + 1)`) up to
`max_attempts` tries; every rejection is recorded in the image's row (seeds and reasons) and counted in the card. An
image that fails every try is kept with `filter_passed: false` (and counted), never dropped silently;
`train_classifier.py --synthetic_data_dir` leaves such images out.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import CXRInputError

__all__ = ["FILTERS", "FilterResult", "QualityFilter", "folder_digest"]

FILTERS = ("classifier", "memorization")
REASON_CLASSIFIER = "classifier disagrees"
REASON_NOT_RADIOGRAPH = "not a radiograph"
REASON_NEAR_COPY = "near copy of a training image"


def folder_digest(folder: str | os.PathLike, suffixes: Sequence[str] = (".json", ".safetensors", ".txt")) -> str:
    """sha256 (first 16 hex digits) of a model folder's configs and weights: its revision where no Hub commit is."""
    root = Path(folder)
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in suffixes
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    for path in files:
        digest.update(str(path.relative_to(root).as_posix()).encode("utf-8") + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return "sha256:" + digest.hexdigest()[:16]


@dataclass
class FilterResult:
    passed: bool
    reasons: list[str] = field(default_factory=list)
    classifier_score: float | None = None
    nearest_train_ssim: float | None = None


@dataclass
class QualityFilter:
    """Decides, per generated image, whether it is kept (see the module docstring). Without checks, all pass."""

    classifier_path: str | None = None
    classifier_threshold: float = 0.5
    training_data: str | None = None
    training_split: str = "train"
    max_training_images: int | None = 2000
    ssim_threshold: float = 0.9
    ssim_size: int = 64
    max_attempts: int = 5
    device: Any = "cpu"

    def __post_init__(self) -> None:
        if self.classifier_path is not None and not 0.0 <= self.classifier_threshold <= 1.0:
            raise CXRInputError(f"--classifier-threshold must be in [0, 1], got {self.classifier_threshold}.")
        if self.training_data is not None and not 0.0 < self.ssim_threshold <= 1.0:
            raise CXRInputError(f"--ssim-threshold must be in (0, 1], got {self.ssim_threshold}.")
        if self.max_attempts < 1:
            raise CXRInputError(f"--max-attempts must be at least 1, got {self.max_attempts}.")
        self._classifier = None
        self._training = None
        self.training_count = 0

    @property
    def checks(self) -> list[str]:
        return [name for name, on in (("classifier", self.classifier_path is not None),
                                      ("memorization", self.training_data is not None)) if on]

    @property
    def enabled(self) -> bool:
        return bool(self.checks)

    def identity(self) -> dict[str, Any]:
        """What decides which images pass (part of the run's fingerprint)."""
        out: dict[str, Any] = {"checks": self.checks}
        if not self.enabled:
            return out
        out["max_attempts"] = self.max_attempts
        if self.classifier_path is not None:
            out["classifier"] = str(Path(self.classifier_path).resolve())
            out["classifier_revision"] = folder_digest(self.classifier_path) if Path(
                self.classifier_path).is_dir() else None
            out["classifier_threshold"] = float(self.classifier_threshold)
        if self.training_data is not None:
            out["training_data"] = str(Path(self.training_data).resolve())
            out["training_split"] = self.training_split
            out["max_training_images"] = self.max_training_images
            out["ssim_threshold"] = float(self.ssim_threshold)
            out["ssim_size"] = self.ssim_size
        return out

    def check_inputs(self) -> None:
        """Fail early (before any model loads) when the classifier or the training data are missing."""
        if self.classifier_path is not None:
            folder = Path(self.classifier_path)
            if not (folder / "config.json").is_file():
                raise CXRInputError(f"--classifier {folder} is not a classifier folder (no config.json); train one "
                                    "with train_scripts/train_classifier.py.")
        if self.training_data is not None and not Path(self.training_data).exists():
            raise CXRInputError(f"--training-data {self.training_data} does not exist.")

    def load(self) -> QualityFilter:
        """Load the classifier and the training images (64 px) once."""
        if self.classifier_path is not None and self._classifier is None:
            from ..classification.model import load_classifier, pneumonia_index

            model, processor = load_classifier(self.classifier_path, device=str(self.device))
            self._classifier = (model, processor, pneumonia_index(model))
        if self.training_data is not None and self._training is None:
            from ..evaluation.features import images_to_tensor
            from ..evaluation.runner import load_reference

            reference = load_reference(self.training_data, self.training_split, max_images=self.max_training_images,
                                       seed=0)
            self._training = images_to_tensor(reference.images, self.ssim_size)
            self.training_count = len(reference.images)
        return self

    def __call__(self, images: list, labels: Sequence[Sequence[str] | None], prompts: Sequence[str]) -> list[FilterResult]:
        """One `FilterResult` per image (PIL, mode L) with its labels (None: read the class from the prompt)."""
        results = [FilterResult(passed=True) for _ in images]
        if not self.enabled or not images:
            return results
        self.load()
        if self._classifier is not None:
            from ..classification.input_check import radiograph_problem
            from ..classification.model import class_probabilities, prepare_pixel_values
            from ..evaluation.conditioning import expected_class, label_from_labels

            model, processor, pneumonia = self._classifier
            probabilities = class_probabilities(model, prepare_pixel_values(processor, images)).cpu().numpy()
            for i, image in enumerate(images):
                expected = label_from_labels(labels[i]) if labels[i] is not None else expected_class(prompts[i])
                p_pneumonia = float(probabilities[i, pneumonia])
                score = p_pneumonia if expected == "PNEUMONIA" else 1.0 - p_pneumonia
                results[i].classifier_score = round(score, 6)
                if radiograph_problem(image) is not None:
                    results[i].passed = False
                    results[i].reasons.append(REASON_NOT_RADIOGRAPH)
                elif score < self.classifier_threshold:
                    results[i].passed = False
                    results[i].reasons.append(REASON_CLASSIFIER)
        if self._training is not None:
            from ..evaluation.memorization import nearest_by_ssim

            best, _ = nearest_by_ssim(images, self._training, size=self.ssim_size)
            for i, value in enumerate(best):
                results[i].nearest_train_ssim = round(float(value), 6)
                if value > self.ssim_threshold:
                    results[i].passed = False
                    results[i].reasons.append(REASON_NEAR_COPY)
        return results
