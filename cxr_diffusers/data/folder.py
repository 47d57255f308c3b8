"""Users' own X-rays: any folder of images, with an optional `metadata.csv`, read through the `imagefolder` builder.

Layout (the Hugging Face `imagefolder` conventions)::

    root/metadata.csv            optional: file_name (required), prompt, labels, view, sex, age, patient_id, ...
    root/xxx.png                 images, in any sub-folders; train/ validation/ test/ sub-folders become splits
    root/pneumonia/yyy.png       with label_from_folder=True the parent folder names the finding

`metadata.csv` columns: `file_name` (path relative to the folder holding the CSV), `prompt` (or `text`/`caption`;
built from labels and metadata where absent), `labels` (finding names separated by `|` or `;`, mapped onto
`FINDINGS`; an unknown name is an error), `view`, `sex`, `age`, `patient_id` (each image is its own patient where
absent); other columns are kept as text. When a metadata file exists, only the images it lists are loaded.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import datasets
from datasets import Value

from ..errors import DataError
from ._assemble import assemble, make_info
from .checks import IMAGE_EXTENSIONS, LoadReport, read_csv, require_dir
from .prompts import build_prompt
from .schema import COMMON_COLUMNS, SPLITS, make_features, normalize_sex, normalize_view, parse_age
from .splits import assign_patient_splits
from .vocabulary import normalize_finding

__all__ = ["folder_labels", "load_image_folder"]

_PROMPT_COLUMNS = ("prompt", "text", "caption")
_HEALTHY = {"normal", "healthy", "no finding", "no_finding", "negative", "0_normal"}
_SPLIT_NAMES = {"train": "train", "validation": "validation", "valid": "validation", "val": "validation",
                "dev": "validation", "test": "test"}  # fmt: skip


def folder_labels(name: str) -> list[str]:
    """Labels for a class folder name: `normal`/`healthy` -> [], `pneumonia` -> ["pneumonia"],
    `covid` -> ["pneumonia", "covid-19"]; DataError for a name outside `FINDINGS`."""
    key = name.strip().lower()
    if key in _HEALTHY:
        return []
    finding = normalize_finding(key)
    if finding is None:
        raise DataError(
            f"The folder name {name!r} is not a finding name; rename it (e.g. normal, pneumonia) or pass label_map."
        )
    return ["pneumonia", "covid-19"] if finding == "covid-19" else [finding]


def _split_labels(value) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, (list, tuple)):
        names = list(value)
    else:
        text = str(value).replace(";", "|").replace(",", "|")
        names = [n for n in text.split("|")]
    out = []
    for name in names:
        name = str(name).strip()
        if not name or name.lower() in {"no finding", "normal", "none"}:
            continue
        finding = normalize_finding(name)
        if finding is None:
            raise DataError(f"The label {name!r} in metadata.csv is not a finding name of cxr_diffusers.data.FINDINGS.")
        if finding not in out:
            out.append(finding)
    return out


def load_image_folder(
    root: str | os.PathLike,
    *,
    label_from_folder: bool = False,
    label_map: dict[str, list[str]] | None = None,
    source: str = "folder",
    val_size: float = 0.0,
    test_size: float = 0.0,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    check_images: str = "header",
    strict: bool = False,
    num_proc: int | None = 1,
    max_samples: int | None = None,
) -> datasets.DatasetDict:
    """Load a folder of images (plus optional `metadata.csv`) as a `DatasetDict` of the common schema.

    Args:
        root: the folder (see the module docstring).
        label_from_folder: labels from each image's parent folder name (`folder_labels`), unless metadata gives
            `labels`.
        label_map: folder name -> labels, overriding `folder_labels` (e.g. `{"abnormal": ["opacity"]}`).
        source: value of the `source` column.
        val_size, test_size: carve these shares of patients from train when the folder has no such split.
        cache_dir: cache of the `imagefolder` builder (default: the datasets cache; it stores paths, not pixels).
        seed, check_images, strict, num_proc, max_samples: as in `load_pneumonia`.

    Columns: the common ones plus `file_name` (relative to root), `class_name` (parent folder) and any other
    metadata column (as text).
    """
    import pandas as pd

    root = require_dir(root, "image folder").resolve()
    images = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")]
    if not images:
        raise DataError(f"The folder {root} holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    metadata = None
    for name in ("metadata.csv", "metadata.jsonl"):
        candidates = list(root.rglob(name))
        if candidates:
            metadata = candidates[0]
            break
    if metadata is not None and metadata.suffix == ".csv":
        read_csv(metadata, ["file_name"], nrows=5)
    report = LoadReport(source, str(root))
    try:
        loaded = datasets.load_dataset(
            "imagefolder",
            data_dir=str(root),
            cache_dir=str(cache_dir) if cache_dir else None,
            drop_labels=True,
            num_proc=num_proc if num_proc and num_proc > 1 else None,
        )
    except (ValueError, FileNotFoundError, datasets.exceptions.DatasetGenerationError) as err:
        raise DataError(f"The image folder {root} cannot be read by the imagefolder builder ({err}).") from None
    frames = []
    for split_name, ds in loaded.items():
        split = _SPLIT_NAMES.get(str(split_name).lower(), "train")
        part = ds.cast_column("image", datasets.Image(decode=False)).to_pandas()
        part["image"] = [item["path"] for item in part["image"]]
        part["split"] = split
        frames.append(part)
    frame = pd.concat(frames, ignore_index=True)
    report.start("images found by the imagefolder builder", len(frame))
    if metadata is not None:
        listed = len(frame)
        if listed < len(images):
            report.notes.append(f"{len(images) - listed} images not listed in {metadata.name} were ignored")

    frame["file_name"] = [os.path.relpath(p, root) for p in frame["image"]]
    frame["class_name"] = [Path(p).parent.name for p in frame["image"]]
    if "labels" in frame:
        frame["labels"] = [_split_labels(v) for v in frame["labels"]]
    elif label_from_folder or label_map:
        mapping = dict(label_map or {})
        frame["labels"] = [list(mapping[c]) if c in mapping else folder_labels(c) for c in frame["class_name"]]
    else:
        frame["labels"] = [[] for _ in range(len(frame))]
    frame["view"] = frame["view"].map(normalize_view) if "view" in frame else ""
    frame["sex"] = frame["sex"].map(normalize_sex) if "sex" in frame else ""
    frame["age"] = pd.Series(
        [parse_age(v) for v in frame["age"]] if "age" in frame else [None] * len(frame), index=frame.index, dtype=object
    )
    if "patient_id" in frame:
        frame["patient_id"] = frame["patient_id"].astype(str)
    else:
        frame["patient_id"] = [Path(p).stem for p in frame["image"]]
        report.notes.append("no patient_id column: each image is its own patient")
    prompt_column = next((c for c in _PROMPT_COLUMNS if c in frame), None)
    built = [
        build_prompt(labels, view=view, age=age, sex=sex)
        for labels, view, age, sex in zip(frame["labels"], frame["view"], frame["age"], frame["sex"])
    ]
    if prompt_column:
        given = frame[prompt_column].fillna("").astype(str).str.strip()
        frame["prompt"] = [g if g else b for g, b in zip(given, built)]
    else:
        frame["prompt"] = built
    frame["source"] = source

    carve = {name: size for name, size in (("validation", val_size), ("test", test_size))
             if size > 0 and not (frame["split"] == name).any()}  # fmt: skip
    if carve:
        train = frame["split"] == "train"
        assignment = assign_patient_splits(frame.loc[train, "patient_id"], carve, seed=seed)
        frame.loc[train, "split"] = frame.loc[train, "patient_id"].map(assignment)
        report.notes.append(f"{', '.join(carve)} carved from train by patient (seed {seed})")

    extra = {"file_name": Value("string"), "class_name": Value("string")}
    skip = set(COMMON_COLUMNS) | set(extra) | {"split", *_PROMPT_COLUMNS}
    for column in frame.columns:
        if column not in skip:
            frame[column] = frame[column].map(
                lambda v: None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            )
            extra[column] = Value("string")
    info = make_info(f"Chest X-rays from the folder {root.name}.", "", "", "unknown")
    missing_splits = [s for s in frame["split"].unique() if s not in SPLITS]
    if missing_splits:  # pragma: no cover - _SPLIT_NAMES maps everything to SPLITS
        raise DataError(f"Unknown split names {missing_splits} in {root}.")
    return assemble(
        frame,
        features=make_features(extra),
        info=info,
        report=report,
        strict=strict,
        check_images=check_images,
        num_proc=num_proc,
        max_samples=max_samples,
        seed=seed,
    )
