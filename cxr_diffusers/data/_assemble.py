"""Steps shared by the loaders: patient splits, prompts, then image checks, subsampling, split checks, DatasetDict
assembly and the report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import datasets

from .checks import LoadReport, find_bad_images
from .prompts import prompt_from_example
from .schema import SPLITS, frame_to_dataset_dict
from .splits import assign_patient_splits, check_patient_disjoint

#: The metadata columns of a loader's frame that its prompt reads (see `prompts.prompt_from_example`).
PROMPT_METADATA_COLUMNS = ("labels", "view", "age", "sex", "subtype", "source")

SOURCE_INFO_FIELDS = ("description", "citation", "homepage", "license")


def make_info(description: str, citation: str, homepage: str, license: str) -> datasets.DatasetInfo:
    return datasets.DatasetInfo(description=description, citation=citation, homepage=homepage, license=license)


def carve_patient_splits(
    patient_ids, report: LoadReport, *, val_size: float, test_size: float, seed: int,
    strata: Mapping[str, str] | None = None, how: str = "split by patient",
):  # fmt: skip
    """The split of each row (a Series like `patient_ids`): `val_size` and `test_size` of the patients go to
    validation and test, the rest to train (seeded, optionally stratified); the split is noted in `report`."""
    fractions = {"validation": val_size, "test": test_size}
    assignment = assign_patient_splits(patient_ids, fractions, seed=seed, strata=strata)
    report.notes.append(f"{how} ({val_size:.0%} val, {test_size:.0%} test, seed {seed})")
    return patient_ids.map(assignment)


def row_prompts(frame, text_columns: Sequence[str] = ()) -> list[str]:
    """The deterministic prompt of every row, from its `PROMPT_METADATA_COLUMNS` and report or note `text_columns`."""
    columns = [c for c in (*PROMPT_METADATA_COLUMNS, *text_columns) if c in frame]
    return [prompt_from_example(row) for row in frame[columns].to_dict("records")]


def subsample(frame, max_samples: int | None, seed: int, split_column: str = "split"):
    """At most `max_samples` rows per split, drawn with `seed` (for quick tests and previews)."""
    if not max_samples:
        return frame
    parts = []
    for _, part in frame.groupby(split_column, sort=False):
        if len(part) > max_samples:
            part = part.sample(n=max_samples, random_state=seed)
        parts.append(part)
    import pandas as pd

    return pd.concat(parts)


def assemble(
    frame,
    *,
    features: datasets.Features,
    info: datasets.DatasetInfo,
    report: LoadReport,
    strict: bool = False,
    check_images: str = "header",
    num_proc: int | None = 1,
    max_samples: int | None = None,
    seed: int = 0,
    allowed_overlaps=(),
) -> datasets.DatasetDict:
    """Checks images, subsamples, checks patient-disjoint splits, builds the DatasetDict and attaches the report.

    `frame` holds one row per image with an absolute `image` path and a `split` column.
    """
    frame = subsample(frame, max_samples, seed)
    if max_samples:
        report.notes.append(f"subsampled to at most {max_samples} images per split (max_samples)")
    bad = find_bad_images(frame["image"].tolist(), check_images, num_proc)
    if bad:
        report.bad_images.update(bad)
        frame = report.keep(frame, ~frame["image"].isin(bad), "readable image")
    frame = frame.sort_values(["split", "image"], kind="stable")
    check_patient_disjoint(
        {s: frame.loc[frame["split"] == s, "patient_id"].tolist() for s in SPLITS}, allowed=allowed_overlaps
    )
    dsd = frame_to_dataset_dict(frame, features, info=info)
    report.splits = {name: len(ds) for name, ds in dsd.items()}
    report.allowed_overlaps = [tuple(pair) for pair in allowed_overlaps]
    report.finish(strict)
    dsd.report = report
    return dsd
