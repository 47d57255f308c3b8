"""Last steps shared by every loader: image checks, subsampling, split checks, DatasetDict assembly, report."""

from __future__ import annotations

import datasets

from .checks import LoadReport, find_bad_images
from .schema import SPLITS, frame_to_dataset_dict
from .splits import check_patient_disjoint

SOURCE_INFO_FIELDS = ("description", "citation", "homepage", "license")


def make_info(description: str, citation: str, homepage: str, license: str) -> datasets.DatasetInfo:
    return datasets.DatasetInfo(description=description, citation=citation, homepage=homepage, license=license)


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
