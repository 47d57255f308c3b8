"""Data for the pneumonia classifier: X-ray decoding, torchvision v2 transforms, records, synthetic mixing.

A training set is a list of `Record`s (image source + label + origin), built without decoding any image:

    real = records_from_dataset(load_pneumonia(root)["train"])          # lazy: file paths / PNG bytes
    synthetic = read_synthetic_manifest("outputs/synthetic")            # `cxr-diffusers synthesize` / `generate` folder
    records, counts = mix_records(real, synthetic, synthetic_ratio=0.5, seed=0)
    dataset = XrayClassificationDataset(records, build_transforms(224, train=True))

Mixing (`mix_records`), with N real training images and ratio r >= 0:

* `synthetic_ratio=r`: round(r * N) synthetic images, drawn at random without replacement (seeded) from the folder,
  are added to the N real ones; fewer synthetic images than that is an error (no silent duplication).
* `duplicate_real_ratio=r`, the control: round(r * N) *extra copies of real images* are added instead (a seeded
  permutation of the real set, cycled when r > 1), so both arms see the same number of samples per epoch.

The splits of a training run come from `load_splits` (Kermany root, PneumoniaMNIST .npz or a saved `DatasetDict`,
with a validation split carved from train by patient when there is none); `make_dataloader` batches records.

Labels of synthetic images come from the folder's list (`metadata.jsonl` of `cxr-diffusers synthesize`, or the
`manifest.jsonl` of `cxr-diffusers generate`): the `labels` findings, else an explicit `label` field (NORMAL/PNEUMONIA,
0/1), otherwise the prompt (`label_from_prompt`); an image whose label cannot be told is an error that names the file.

Transforms suited to radiographs: small rotations / translations / scaling, brightness and contrast jitter; no flips
(a vertical flip is anatomically impossible, a horizontal one moves the heart to the right). Images are resized to a
square (as the shipped image processor does), kept grayscale and repeated to 3 channels, ImageNet-normalised.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import PIL.Image

from ..errors import CXRInputError, DataError
from .model import IMAGENET_MEAN, IMAGENET_STD, LABEL2ID

__all__ = [
    "MIN_IMAGE_SIZE",
    "Record",
    "XrayClassificationDataset",
    "build_transforms",
    "carve_validation",
    "class_counts",
    "class_weights",
    "collate",
    "detect_dataset",
    "label_from_prompt",
    "load_splits",
    "load_xray",
    "make_dataloader",
    "mix_records",
    "read_synthetic_manifest",
    "records_from_dataset",
    "stratified_subset",
]

#: Smallest accepted image side: PneumoniaMNIST's 28 pixels.
MIN_IMAGE_SIZE = 28


# --------------------------------------------------------------------------------------------------- images
def load_xray(source: Any, name: str | None = None, min_size: int = MIN_IMAGE_SIZE) -> PIL.Image.Image:
    """Decode one X-ray into an 8-bit grayscale (mode L) PIL image.

    `source` is a path, PNG/JPEG bytes, a `{"path", "bytes"}` dict (a `datasets.Image(decode=False)` value) or a PIL
    image. RGB/RGBA/palette images are converted to grayscale; 16-bit and 32-bit integer or float images are scaled
    linearly from their [min, max] to [0, 255]. Raises `CXRInputError` (naming `name` or the path) for a missing or
    unreadable file or an image smaller than `min_size` pixels on a side.
    """
    if isinstance(source, dict):
        source = source.get("bytes") or source.get("path")
    label = name or (str(source) if isinstance(source, (str, os.PathLike)) else "image")
    if isinstance(source, PIL.Image.Image):
        image = source
    else:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise CXRInputError(f"Image file '{label}' does not exist.")
            if not path.is_file():
                raise CXRInputError(f"'{label}' is not a file.")
            opener = path
        elif isinstance(source, (bytes, bytearray)):
            opener = io.BytesIO(source)
        else:
            raise CXRInputError(f"Cannot read {type(source).__name__} as an image; give a file path or bytes.")
        try:
            with PIL.Image.open(opener) as opened:
                opened.load()  # decode now, so that truncated files fail here
                image = opened.copy()
        except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError, PIL.Image.DecompressionBombError) as err:
            raise CXRInputError(
                f"Cannot read '{label}' as an image ({type(err).__name__}); give a PNG or JPEG chest X-ray."
            ) from None
    if min(image.size) < min_size:
        raise CXRInputError(
            f"Image '{label}' is only {image.size[0]}x{image.size[1]} pixels; the classifier needs at least "
            f"{min_size}x{min_size}."
        )
    return to_grayscale(image)


def to_grayscale(image: PIL.Image.Image) -> PIL.Image.Image:
    """Mode L copy of any PIL image; high bit-depth images are min-max scaled (not clipped) to 8 bits."""
    if image.mode == "L":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        array = np.asarray(image, dtype=np.float64)
        if array.ndim == 3:
            array = array.mean(axis=-1)
        low, high = float(np.nanmin(array)), float(np.nanmax(array))
        scaled = (array - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        return PIL.Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = PIL.Image.new("RGBA", image.size, (0, 0, 0, 255))  # transparent -> black, as outside a film
        image = PIL.Image.alpha_composite(background, image)
    return image.convert("L")


def build_transforms(resolution: int, train: bool = False, *, rotation: float = 7.0, translate: float = 0.05,
                     scale: float = 0.08, brightness: float = 0.2, contrast: float = 0.2):
    """torchvision v2 pipeline: mode-L PIL -> float (3, resolution, resolution), ImageNet-normalised.

    With `train=True`: `RandomAffine` (+-`rotation` degrees, `translate` fraction, 1 +- `scale` zoom, black fill) and
    `ColorJitter` (brightness, contrast). No flips. The evaluation branch matches the saved image processor (square
    bilinear resize, rescale, normalise) up to resampling round-off.
    """
    import torch
    from torchvision.transforms import v2

    steps: list = [v2.PILToTensor(), v2.Resize((resolution, resolution), interpolation=v2.InterpolationMode.BILINEAR,
                                               antialias=True)]
    if train:
        if rotation or translate or scale:
            steps.append(v2.RandomAffine(degrees=rotation, translate=(translate, translate) if translate else None,
                                         scale=(1 - scale, 1 + scale) if scale else None, fill=0))
        if brightness or contrast:
            steps.append(v2.ColorJitter(brightness=brightness or None, contrast=contrast or None))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Lambda(_to_three_channels),
              v2.Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)]
    return v2.Compose(steps)


def _to_three_channels(tensor):
    return tensor.expand(3, -1, -1).contiguous() if tensor.shape[0] == 1 else tensor


# --------------------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class Record:
    """One training/evaluation example: an image source (path or bytes), its label (0 NORMAL, 1 PNEUMONIA)."""

    source: Any
    label: int
    origin: str = "real"  # real | synthetic | duplicate
    name: str = ""
    patient_id: str = ""  # from the dataset's patient_id column where it has one (patient-level subsets)


def records_from_dataset(dataset, origin: str = "real") -> list[Record]:
    """Records from a `datasets.Dataset` of the common schema, without decoding images.

    The label is 1 when "pneumonia" is in `labels` (or a `label` column is 1 / "PNEUMONIA"). A `patient_id` column,
    where there is one, is kept in each record's `patient_id`.
    """
    import datasets

    if "image" not in dataset.column_names:
        raise DataError(f"The dataset has no 'image' column (columns: {', '.join(dataset.column_names)}).")
    raw = dataset.cast_column("image", datasets.Image(decode=False)) if isinstance(
        dataset.features.get("image"), datasets.Image) else dataset
    if "labels" in raw.column_names:
        labels = [int("pneumonia" in (names or [])) for names in raw["labels"]]
    elif "label" in raw.column_names:
        labels = [_parse_label(v) for v in raw["label"]]
        if any(v is None for v in labels):
            raise DataError("The dataset's 'label' column holds values other than NORMAL/PNEUMONIA or 0/1.")
    else:
        raise DataError("The dataset has neither a 'labels' nor a 'label' column to take the class from.")
    names = raw["file_name"] if "file_name" in raw.column_names else [None] * len(raw)
    patients = raw["patient_id"] if "patient_id" in raw.column_names else [""] * len(raw)
    records = []
    for index, (image, label, name, patient) in enumerate(zip(raw["image"], labels, names, patients)):
        if isinstance(image, dict):
            source = image.get("bytes") or image.get("path")
            name = name or image.get("path") or f"{origin} image {index}"
        else:
            source, name = image, name or f"{origin} image {index}"
        records.append(Record(source, label, origin, str(name), str(patient or "")))
    return records


def class_counts(records: Iterable[Record]) -> dict[str, int]:
    labels = [r.label for r in records]
    return {"NORMAL": labels.count(0), "PNEUMONIA": labels.count(1)}


def class_weights(records: list[Record]) -> list[float]:
    """Balanced cross-entropy weights N / (2 N_c) (a missing class gets weight 1)."""
    counts = class_counts(records)
    total = sum(counts.values())
    return [total / (2 * counts[c]) if counts[c] else 1.0 for c in ("NORMAL", "PNEUMONIA")]


def stratified_subset(records: list[Record], count: int | None, seed: int = 0) -> list[Record]:
    """At most `count` records, drawn per class in proportion (each present class keeps at least one), seeded."""
    if count is None or count >= len(records):
        return list(records)
    if count < 1:
        raise CXRInputError(f"A subset needs at least one image, not {count}.")
    rng = np.random.default_rng(seed)
    by_class = {c: [i for i, r in enumerate(records) if r.label == c] for c in (0, 1)}
    present = [c for c in (0, 1) if by_class[c]]
    quota = {c: max(1, round(count * len(by_class[c]) / len(records))) for c in present}
    while sum(quota.values()) > count:  # rounding up of both classes
        largest = max(present, key=lambda c: quota[c])
        quota[largest] -= 1
    chosen = []
    for c in present:
        chosen += rng.choice(by_class[c], size=min(quota[c], len(by_class[c])), replace=False).tolist()
    return [records[i] for i in sorted(chosen)]


# --------------------------------------------------------------------------------------------------- splits
def detect_dataset(train_data_dir: str | os.PathLike | None, dataset_name: str | None = None) -> str:
    """`kermany`, `pneumoniamnist` or `saved`: the layout of a training data location (`--dataset auto`)."""
    if dataset_name:
        return "saved"
    root = Path(train_data_dir)
    if root.suffix == ".npz" or (root.is_dir() and any(root.glob("*.npz"))):
        return "pneumoniamnist"
    if (root / "dataset_dict.json").is_file():
        return "saved"
    return "kermany"


def load_splits(train_data_dir: str | os.PathLike | None = None, dataset_name: str | None = None, *,
                dataset: str = "auto", validation_size: float = 0.1, seed: int = 0,
                max_train_samples: int | None = None, max_eval_samples: int | None = None) -> tuple[dict, dict]:
    """The records of a classifier training run, without decoding any image.

    Args:
        train_data_dir: a Kermany root, a PneumoniaMNIST .npz (or its folder), or a `save_to_disk` `DatasetDict`.
        dataset_name: a Hub dataset of the common schema instead.
        dataset: `kermany`, `pneumoniamnist`, `saved`, or `auto` (`detect_dataset`).
        validation_size: share of training patients (per class) carved into validation when there is no such split.
        seed: seed of the validation carve and of the subsets.
        max_train_samples / max_eval_samples: seeded, class-stratified subsets (`stratified_subset`) of train, and of
            validation and test.

    Returns:
        `({"train", "validation", "test"}: list[Record], info)` with info `dataset`, `description` and `notes` (for
        the model card). Without a test split, test is the validation split (and a note says so).
    """
    import datasets

    kind = detect_dataset(train_data_dir, dataset_name) if dataset == "auto" else dataset
    notes: list[str] = []
    if kind == "kermany":
        from ..data import load_pneumonia

        data = load_pneumonia(train_data_dir, val_size=validation_size, use_official_val=False, seed=seed,
                              check_images="exists")
        notes += list(getattr(getattr(data, "report", None), "notes", []))
        description = "Kermany et al. pediatric chest X-rays (official train split; official 624-image test split)"
    elif kind == "pneumoniamnist":
        from ..data import load_pneumoniamnist

        data = load_pneumoniamnist(train_data_dir)
        description = "PneumoniaMNIST (MedMNIST v2, 28x28) with its official train/val/test splits"
    else:
        if dataset_name:
            data = datasets.load_dataset(dataset_name)
        else:
            root = Path(train_data_dir)
            if not root.exists():
                raise DataError(f"--train_data_dir {root} does not exist.")
            data = datasets.load_from_disk(str(root))
        if not isinstance(data, datasets.DatasetDict) or "train" not in data:
            raise DataError("The saved dataset must be a DatasetDict with a 'train' split.")
        description = f"saved dataset {dataset_name or train_data_dir}"
    splits = {name: records_from_dataset(data[name]) for name in ("train", "validation", "test") if name in data}
    if "validation" not in splits:
        splits["train"], splits["validation"] = carve_validation(data["train"], splits["train"], validation_size, seed)
        notes.append(f"validation carved from train by patient ({validation_size:.0%}, seed {seed})")
    if "test" not in splits:
        splits["test"] = splits["validation"]
        notes.append("no test split: test metrics are on the validation split")
    splits["train"] = stratified_subset(splits["train"], max_train_samples, seed)
    for name in ("validation", "test"):
        splits[name] = stratified_subset(splits[name], max_eval_samples, seed)
    if max_train_samples or max_eval_samples:
        notes.append(f"subsets: --max_train_samples {max_train_samples}, --max_eval_samples {max_eval_samples}")
    for name, records in splits.items():
        if not records:
            raise DataError(f"The {name} split is empty.")
    return splits, {"dataset": kind, "description": description, "notes": notes}


def carve_validation(dataset, records: list[Record], validation_size: float, seed: int = 0):
    """`(train, validation)` records: `validation_size` of the patients of `dataset` (rows = `records`), per class."""
    from ..data import assign_patient_splits

    if validation_size <= 0:
        raise DataError("The dataset has no validation split; give --validation_size > 0 to carve one from train.")
    ids = dataset["patient_id"] if "patient_id" in dataset.column_names else [""] * len(records)
    ids = [pid or f"image-{i}" for i, pid in enumerate(ids)]
    strata = {pid: str(r.label) for pid, r in zip(ids, records)}
    assignment = assign_patient_splits(ids, {"validation": validation_size}, seed=seed, strata=strata)
    train = [r for pid, r in zip(ids, records) if assignment[pid] == "train"]
    validation = [r for pid, r in zip(ids, records) if assignment[pid] == "validation"]
    return train, validation


def make_dataloader(records: list[Record], transform, batch_size: int, shuffle: bool = False, seed: int = 0,
                    num_workers: int = 0, drop_last: bool = False):
    """A torch `DataLoader` of `XrayClassificationDataset(records)`; shuffled loaders are seeded (order and, per item,
    the augmentation)."""
    import torch

    dataset = XrayClassificationDataset(records, transform, seed=seed if shuffle else None)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate, num_workers=num_workers,
        drop_last=drop_last, generator=torch.Generator().manual_seed(seed) if shuffle else None,
    )


# --------------------------------------------------------------------------------------------------- synthetic data
def label_from_prompt(prompt: str) -> int | None:
    """1 (PNEUMONIA), 0 (NORMAL) or None (cannot tell) from a generation prompt (`pneumonia_class_from_prompt`)."""
    from ..data.prompts import pneumonia_class_from_prompt

    found = pneumonia_class_from_prompt(prompt)
    return None if found is None else LABEL2ID[found]


def _parse_label(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)) and int(value) in (0, 1):
        return int(value)
    text = str(value).strip().upper()
    if text in LABEL2ID:
        return LABEL2ID[text]
    return {"0": 0, "1": 1, "NORMAL": 0, "HEALTHY": 0, "NO FINDING": 0}.get(text)


def read_synthetic_manifest(folder: str | os.PathLike, check_images: bool = True,
                            include_failed: bool = False) -> list[Record]:
    """Records of a synthetic folder: a `cxr-diffusers synthesize` dataset or a `cxr-diffusers generate` folder.

    A `synthesize` folder (an imagefolder dataset) lists its images in `metadata.jsonl`: `file_name` (relative to the
    folder) and `labels` (the findings; pneumonia among them -> PNEUMONIA, else NORMAL), else `label`, else `prompt`.
    Its rows with `filter_passed: false` (images that failed the quality filter on every try) are left out (kept
    with `include_failed=True`, as an experiment's "unfiltered" arm does; their records' origin is
    `synthetic-failed`). A
    `generate` folder lists them in `manifest.jsonl`: `file` and `prompt`, optionally `label`. Raises `DataError` for
    a missing folder or list, a malformed line, a missing image, or a label that is neither given nor readable from
    the prompt. With `check_images`, each image header is opened (cheap) to catch non-images.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"--synthetic_data_dir {root} is not a folder.")
    manifest = root / "metadata.jsonl"
    file_key = "file_name"
    if not manifest.is_file():
        manifest, file_key = root / "manifest.jsonl", "file"
    if not manifest.is_file():
        raise DataError(
            f"The synthetic folder {root} has no metadata.jsonl (a `cxr-diffusers synthesize` dataset, written when "
            f"its run is complete) and has no manifest.jsonl (a `cxr-diffusers generate` folder)."
        )
    records = []
    first_line: dict[str, int] = {}
    for number, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{manifest} line {number} is not valid JSON ({err.msg}).") from None
        if not isinstance(entry, dict) or not entry.get(file_key):
            raise DataError(f"{manifest} line {number} has no '{file_key}' field.")
        name = str(entry[file_key])
        if name in first_line:  # two labels for one image would silently corrupt an experiment
            raise DataError(f"{manifest} lists {name} twice (lines {first_line[name]} and {number}); "
                            "keep only the line of the image now on disk.")
        first_line[name] = number
        failed = entry.get("filter_passed") is False
        if failed and not include_failed:
            continue  # kept by synthesize only to be counted, never to be trained on
        path = root / name
        if isinstance(entry.get("labels"), list):
            label = int(any("pneumonia" in str(finding).lower() for finding in entry["labels"]))
        elif "label" in entry and entry["label"] is not None:
            label = _parse_label(entry["label"])
            if label is None:
                raise DataError(f"Synthetic image {name} has the unknown label {entry['label']!r} "
                                f"({manifest} line {number}); use NORMAL or PNEUMONIA.")
        else:
            label = label_from_prompt(entry.get("prompt", ""))
            if label is None:
                raise DataError(
                    f"Cannot tell NORMAL or PNEUMONIA for synthetic image {name} from its prompt "
                    f"{entry.get('prompt', '')!r} ({manifest} line {number}); add a 'label' field to that line."
                )
        if not path.is_file():
            raise DataError(f"Synthetic image {path} listed in {manifest} line {number} does not exist.")
        if check_images:
            try:
                with PIL.Image.open(path) as opened:
                    size = opened.size
            except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
                raise DataError(f"Synthetic file {path} is not a readable image ({type(err).__name__}).") from None
            if min(size) < MIN_IMAGE_SIZE:
                raise DataError(f"Synthetic image {path} is only {size[0]}x{size[1]} pixels (minimum "
                                f"{MIN_IMAGE_SIZE}).")
        records.append(Record(str(path), label, "synthetic-failed" if failed else "synthetic", name))
    if not records:
        raise DataError(f"{manifest} lists no images" + (" that passed the quality filter." if first_line else "."))
    return records


def mix_records(real: list[Record], synthetic: list[Record] | None = None, *, synthetic_ratio: float = 0.0,
                duplicate_real_ratio: float = 0.0, seed: int = 0) -> tuple[list[Record], dict[str, int]]:
    """The training records: the real ones plus round(r * N) synthetic images or extra real copies (see module doc).

    Returns `(records, counts)` with counts of `real`, `synthetic`, `duplicated_real`, `total` and per class.
    """
    for name, value in (("synthetic_ratio", synthetic_ratio), ("duplicate_real_ratio", duplicate_real_ratio)):
        if value is None or not math.isfinite(value) or value < 0:
            raise CXRInputError(f"--{name} must be a number >= 0, got {value}.")
    if synthetic_ratio > 0 and duplicate_real_ratio > 0:
        raise CXRInputError("Give either --synthetic_ratio or --duplicate_real_ratio (the control arm), not both.")
    if not real:
        raise DataError("The real training set is empty.")
    rng = np.random.default_rng(seed)
    n_real = len(real)
    extra: list[Record] = []
    if synthetic_ratio > 0:
        if not synthetic:
            raise CXRInputError("--synthetic_ratio needs --synthetic_data_dir (a folder with images and metadata.jsonl or manifest.jsonl).")
        wanted = round(synthetic_ratio * n_real)
        if wanted > len(synthetic):
            raise DataError(
                f"--synthetic_ratio {synthetic_ratio} asks for {wanted} synthetic images ({n_real} real) but the "
                f"folder has only {len(synthetic)}; generate more or lower the ratio."
            )
        extra = [synthetic[i] for i in sorted(rng.choice(len(synthetic), size=wanted, replace=False).tolist())]
    elif synthetic:
        raise CXRInputError("--synthetic_data_dir was given without --synthetic_ratio (> 0).")
    if duplicate_real_ratio > 0:
        wanted = round(duplicate_real_ratio * n_real)
        order: list[int] = []
        while len(order) < wanted:  # a permutation per pass: every image once before any twice
            order += rng.permutation(n_real).tolist()
        extra = [Record(real[i].source, real[i].label, "duplicate", real[i].name, real[i].patient_id)
                 for i in order[:wanted]]
    records = list(real) + extra
    counts = {
        "real": n_real,
        "synthetic": sum(r.origin.startswith("synthetic") for r in extra),
        "duplicated_real": sum(r.origin == "duplicate" for r in extra),
        "total": len(records),
        **{f"total_{k.lower()}": v for k, v in class_counts(records).items()},
    }
    return records, counts


class XrayClassificationDataset:
    """A torch map-style dataset over `Record`s: `{"pixel_values": (3, R, R) float, "labels": int}`.

    Images are decoded lazily on access (file paths or PNG bytes), converted to 8-bit grayscale and transformed. With
    `seed`, the random augmentation of item `i` in epoch `e` (`set_epoch`) is drawn from its own generator seeded by
    (seed, e, i): the same whatever the number of workers, the look-ahead of the loader or a resume in mid-epoch.
    """

    def __init__(self, records: list[Record], transform, seed: int | None = None):
        self.records = list(records)
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        import torch

        record = self.records[index]
        image = load_xray(record.source, record.name)
        if self.seed is None:
            return {"pixel_values": self.transform(image), "labels": record.label}
        item_seed = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(item_seed)
            pixel_values = self.transform(image)
        return {"pixel_values": pixel_values, "labels": record.label}

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]


def collate(examples: list[dict]) -> dict:
    """Batch of `XrayClassificationDataset` items: `pixel_values` (N, 3, R, R) and `labels` (N,) long."""
    import torch

    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long)}
