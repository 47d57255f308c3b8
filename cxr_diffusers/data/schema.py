"""The common schema of every loader, value normalisation, and DataFrame -> `DatasetDict` assembly.

Every loader returns a `datasets.DatasetDict` whose splits are named `train`, `validation`, `test` and whose first
columns are `COMMON_COLUMNS`:

==============  ==========================  ================================================================
column          feature                     meaning
==============  ==========================  ================================================================
image           Image(mode="L")             the radiograph; stored as a file path, decoded lazily to mode L
prompt          string                      deterministic prompt (`prompts.build_prompt` / report text)
labels          list of string              finding names from `prompts.FINDINGS`; [] = no finding
view            string                      `PA`, `AP`, `AP supine`, `lateral`, `frontal` or "" (unknown)
sex             string                      `female`, `male` or ""
age             int32 (nullable)            years, None when unknown
patient_id      string                      patient (or study) identifier; splits never share one
source          string                      `nih`, `nih_subset`, `indiana`, `kermany`, `pneumoniamnist`, ...
==============  ==========================  ================================================================

Source-specific columns follow (report findings/impression, pneumonia subtype, clinical notes, ...).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import datasets
from datasets import Features, Image, List, Value

__all__ = [
    "COMMON_COLUMNS",
    "SPLITS",
    "VIEWS",
    "common_features",
    "frame_to_dataset_dict",
    "make_features",
    "normalize_sex",
    "normalize_view",
    "parse_age",
]

COMMON_COLUMNS: tuple[str, ...] = ("image", "prompt", "labels", "view", "sex", "age", "patient_id", "source")
SPLITS: tuple[str, ...] = ("train", "validation", "test")
VIEWS: tuple[str, ...] = ("PA", "AP", "AP supine", "lateral", "frontal")

_VIEW_ALIASES = {
    "pa": "PA",
    "posteroanterior": "PA",
    "ap": "AP",
    "anteroposterior": "AP",
    "ap supine": "AP supine",
    "ap-supine": "AP supine",
    "supine": "AP supine",
    "ap erect": "AP",
    "l": "lateral",
    "ll": "lateral",
    "lat": "lateral",
    "lateral": "lateral",
    "frontal": "frontal",
}


def common_features() -> Features:
    """Features of the common columns."""
    return Features(
        {
            "image": Image(mode="L"),
            "prompt": Value("string"),
            "labels": List(Value("string")),
            "view": Value("string"),
            "sex": Value("string"),
            "age": Value("int32"),
            "patient_id": Value("string"),
            "source": Value("string"),
        }
    )


def make_features(extra: Mapping[str, Any] | None = None) -> Features:
    """Common features followed by the source-specific ones."""
    features = common_features()
    for name, feature in (extra or {}).items():
        features[name] = feature
    return features


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip() in {"", "?", "nan", "NaN", "None"}


def normalize_view(value: Any) -> str:
    """`PA`, `AP`, `AP supine`, `lateral`, `frontal`, or "" when unknown (NIH `View Position`, Open-i projection,
    COVID `view`)."""
    if _missing(value):
        return ""
    key = re.sub(r"\s+", " ", str(value)).strip().lower()
    return _VIEW_ALIASES.get(key, "")


def normalize_sex(value: Any) -> str:
    """`female`, `male`, or "" when unknown."""
    if _missing(value):
        return ""
    key = str(value).strip().lower()
    if key in {"f", "female", "woman", "w"}:
        return "female"
    if key in {"m", "male", "man"}:
        return "male"
    return ""


def parse_age(value: Any) -> int | None:
    """Age in whole years from `58`, `58.0`, `"058Y"`; None when missing or implausible (NIH has a few ages
    above 120, which are recording errors). Ages given in months (`"010M"`) become 0."""
    if _missing(value):
        return None
    if isinstance(value, (int, float)):
        years = float(value)
    else:
        text = str(value).strip().upper()
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([YMWD])?", text)
        if not match:
            return None
        years = float(match.group(1))
        unit = match.group(2) or "Y"
        if unit != "Y":
            years = 0.0
    if not 0 <= years <= 120:
        return None
    return int(years)


def _clean_cell(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def frame_to_dataset_dict(
    frame,
    features: Features,
    *,
    split_column: str = "split",
    info: datasets.DatasetInfo | None = None,
    splits: Sequence[str] = SPLITS,
) -> datasets.DatasetDict:
    """Build a `DatasetDict` from a pandas DataFrame holding one row per image (`image` = file path).

    Only the columns of `features` are kept, in that order. Images stay file paths: nothing is decoded here.
    """
    out = {}
    columns = list(features)
    for split in splits:
        part = frame[frame[split_column] == split]
        if len(part) == 0:
            continue
        data = {}
        for column in columns:
            values = part[column].tolist() if column in part else [None] * len(part)
            data[column] = [_clean_cell(v) for v in values]
        split_info = info.copy() if info is not None else datasets.DatasetInfo()
        split_info.features = features
        out[split] = datasets.Dataset.from_dict(data, features=features, info=split_info, split=split)
    return datasets.DatasetDict(out)
