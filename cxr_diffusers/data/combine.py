"""Combining sources, saving with a dataset card, loading back, and pushing to the Hub.

    from cxr_diffusers.data import load_nih, load_pneumonia, concatenate_sources, save_dataset, load_saved

    train_set = concatenate_sources([load_pneumonia(kermany_root), load_nih(nih_root)])
    save_dataset(train_set, "data/cxr256", resolution=256, num_proc=2)   # + data/cxr256/README.md
    ds = load_saved("data/cxr256")
    push_to_hub(ds, "me/cxr256", private=True)                         # the one call for the Hub

`datasets` 5 embeds image bytes when saving (`save_to_disk` reads every referenced file), so a saved dataset is
self-contained. With `resolution`, the images are resized and padded once while saving (streamed in small batches
through arrow files on disk: memory stays flat) so the saved copy is small and ready for training; without it the
original file bytes are stored unchanged. For training on a loaded dataset without saving, use
`transforms.with_resolution`, which works on access and copies nothing.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import datasets

from ..errors import DataError
from ..utils.output_dir import staged_output_dir
from .card import write_card
from .schema import COMMON_COLUMNS, SPLITS
from .splits import check_patient_disjoint

__all__ = ["concatenate_sources", "load_saved", "push_to_hub", "resize_dataset", "save_dataset"]


def _as_list(sources) -> list[datasets.DatasetDict]:
    if isinstance(sources, datasets.DatasetDict):
        return [sources]
    if isinstance(sources, Mapping):
        return list(sources.values())
    return list(sources)


def concatenate_sources(
    sources: Sequence[datasets.DatasetDict] | Mapping[str, datasets.DatasetDict],
    *,
    columns: str | Sequence[str] = "common",
) -> datasets.DatasetDict:
    """Concatenate several loaders' `DatasetDict`s split by split into one training set.

    Args:
        sources: the DatasetDicts (a list, or a mapping whose keys are ignored).
        columns: `common` keeps `COMMON_COLUMNS` (the `source` column tells the origin); `all` keeps every column,
            filling columns a source lacks with None; or an explicit list (common columns are always kept).

    Patient disjointness is checked per source (`source` + `patient_id`). Reports of the inputs are kept in
    `.reports`. No image is read or decoded.
    """
    parts = _as_list(sources)
    if not parts:
        raise DataError("concatenate_sources needs at least one dataset.")
    for part in parts:
        missing = [c for c in COMMON_COLUMNS if c not in next(iter(part.values())).column_names]
        if missing:
            raise DataError(f"A dataset to concatenate lacks the columns {', '.join(missing)} of the common schema.")
    if columns == "common":
        keep = list(COMMON_COLUMNS)
    elif columns == "all":
        keep = list(COMMON_COLUMNS)
        for part in parts:
            for ds in part.values():
                keep += [c for c in ds.column_names if c not in keep]
    else:
        keep = list(COMMON_COLUMNS) + [c for c in columns if c not in COMMON_COLUMNS]
    features = datasets.Features()
    for name in keep:
        for part in parts:
            ds = next(iter(part.values()))
            if name in ds.features:
                features[name] = ds.features[name]
                break
        else:
            raise DataError(f"No dataset to concatenate has the column {name!r}.")

    split_names = [s for s in SPLITS if any(s in p for p in parts)]
    split_names += sorted({s for p in parts for s in p if s not in split_names})
    out = {}
    for split in split_names:
        pieces = []
        for part in parts:
            if split not in part:
                continue
            ds = part[split]
            for name in keep:
                if name not in ds.column_names:
                    ds = ds.add_column(name, [None] * len(ds), feature=features[name])
            ds = ds.select_columns(keep).cast(features)
            pieces.append(ds)
        out[split] = datasets.concatenate_datasets(pieces, split=split) if len(pieces) > 1 else pieces[0]
    dsd = datasets.DatasetDict(out)
    keys = {
        s: [f"{src}:{pid}" if pid else "" for src, pid in zip(ds["source"], ds["patient_id"])] for s, ds in out.items()
    }
    allowed = []
    for part in parts:  # official overlaps a loader was told to keep (Kermany train/test) stay allowed
        report = getattr(part, "report", None)
        if report is not None:
            allowed += report.allowed_overlaps
    check_patient_disjoint(keys, allowed=allowed)
    dsd.reports = [getattr(p, "report", None) for p in parts]
    return dsd


def resize_dataset(
    dsd: datasets.DatasetDict,
    resolution: int,
    *,
    work_dir: str | os.PathLike,
    num_proc: int | None = 1,
    batch_size: int = 32,
) -> datasets.DatasetDict:
    """Resize and pad every image to `resolution` and re-encode it as PNG, streaming to arrow files in `work_dir`.

    Images are decoded one batch at a time (`batch_size`), so memory does not grow with the dataset.
    """
    from .transforms import resize_batch_to_png

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, ds in dsd.items():
        features = ds.features.copy()
        features["image"] = datasets.Image(mode="L")
        out[split] = ds.map(
            resize_batch_to_png,
            batched=True,
            batch_size=batch_size,
            writer_batch_size=batch_size,
            input_columns=None,
            fn_kwargs={"resolution": resolution},
            features=features,
            num_proc=num_proc if num_proc and num_proc > 1 else None,
            cache_file_name=str(work_dir / f"{split}.arrow"),
            load_from_cache_file=False,
            desc=f"Resizing {split} to {resolution}px",
        )
    return datasets.DatasetDict(out)


def save_dataset(
    dsd: datasets.DatasetDict,
    path: str | os.PathLike,
    *,
    resolution: int | None = None,
    num_proc: int | None = 1,
    overwrite: bool = False,
    pretty_name: str | None = None,
    notes: Sequence[str] = (),
    max_shard_size: str | int | None = None,
) -> Path:
    """`save_to_disk` plus a dataset card (README.md with YAML front matter) in the same folder.

    Args:
        dsd: a DatasetDict of the common schema.
        path: the output folder (must be empty or absent unless `overwrite=True`).
        resolution: resize and pad the images to this size while saving (see the module docstring).
        num_proc: processes for resizing (and for saving sets of 50,000 images or more).
        overwrite: replace an existing saved dataset at `path`.
        pretty_name, notes: for the card; the loaders' reports are added to the notes.
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        if not overwrite:
            raise DataError(f"The output folder {path} is not empty; pass overwrite=True (--overwrite) to replace it.")
        if not (path / "dataset_dict.json").is_file():
            raise DataError(f"The output folder {path} is not a saved dataset; refusing to overwrite it.")
    reports = getattr(dsd, "reports", None) or [getattr(dsd, "report", None)]
    all_notes = list(notes)
    for report in reports:
        if report is None:
            continue
        all_notes += [f"{report.source}: {n}" for n in report.notes]
        if report.problems:
            all_notes.append(report.summary(limit=3))
    path.parent.mkdir(parents=True, exist_ok=True)
    work = tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        to_save = resize_dataset(dsd, resolution, work_dir=work, num_proc=num_proc) if resolution else dsd
        # Writing is I/O bound; worker processes (spawned, re-importing the package) only pay off for big sets.
        rows = sum(len(ds) for ds in to_save.values())
        save_procs = num_proc if num_proc and num_proc > 1 and rows >= 50_000 else None
        # The old dataset (with overwrite) is replaced only once the new one is completely written.
        with staged_output_dir(path) as staging:
            to_save.save_to_disk(str(staging), num_proc=save_procs, max_shard_size=max_shard_size)
        del to_save
    finally:
        shutil.rmtree(work, ignore_errors=True)
    saved = datasets.load_from_disk(str(path))
    write_card(saved, path, pretty_name=pretty_name, resolution=resolution, notes=all_notes)
    return path


def load_saved(path: str | os.PathLike) -> datasets.DatasetDict:
    """`datasets.load_from_disk` with a clear error when the folder is not a saved dataset."""
    path = Path(path)
    if path.is_file():
        raise DataError(f"{path} is a file; give the folder written by `cxr-diffusers data build`.")
    if not path.is_dir():
        raise DataError(f"The dataset folder {path} does not exist.")
    if not (path / "dataset_dict.json").is_file() and not (path / "state.json").is_file():
        raise DataError(f"The folder {path} is not a saved dataset (no dataset_dict.json); build one with "
                        "`cxr-diffusers data build`.")  # fmt: skip
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({str(loaded.split or "train"): loaded})
    return loaded


def push_to_hub(
    dsd: datasets.DatasetDict,
    repo_id: str,
    *,
    private: bool = True,
    token: str | None = None,
    pretty_name: str | None = None,
    **kwargs,
):
    """Upload a dataset and its card to the Hugging Face Hub in one call.

    `DatasetDict.push_to_hub` writes parquet shards with the image bytes embedded; the card (README.md with
    license, citation, sizes and splits) is then uploaded over the default one. Extra keyword arguments go to
    `DatasetDict.push_to_hub` (e.g. `max_shard_size`, `num_proc`). Check the source licenses before making a
    dataset public: the COVID-19 collection and Open-i are non-commercial.
    """
    from huggingface_hub import DatasetCard

    from .card import dataset_card

    commit = dsd.push_to_hub(repo_id, private=private, token=token, **kwargs)
    DatasetCard(dataset_card(dsd, pretty_name=pretty_name)).push_to_hub(repo_id, token=token)
    return commit
