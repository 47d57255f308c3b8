"""The dataset card of a `cxr-diffusers synthesize` folder, and its upload to the Hub as a dataset repo.

The card is `cxr_diffusers/model_cards/synthetic_dataset.md` rendered with `huggingface_hub.DatasetCard`: YAML front
matter (license inherited from the model, tags, size category, "synthetic" / "not-for-clinical-use") and counts per
label and per metadata value, the model and revision, the sampling settings, the filter statistics and throughput.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import CXRInputError

__all__ = ["create_dataset_repo", "dataset_card", "push_dataset", "write_dataset_card"]

TEMPLATE = "synthetic_dataset.md"


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _table(title: str, counts: Counter, total: int) -> str:
    lines = [f"| {title} | images | share |", "|---|---|---|"]
    for key, count in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0]))):
        lines.append(f"| {key} | {count} | {count / total:.1%} |")
    return "\n".join(lines)


def _filter_section(run: dict[str, Any], rows: list[dict[str, Any]], training_images: int | None) -> str:
    settings = run.get("filter", {})
    checks = settings.get("checks") or []
    if not checks:
        return "No filter was used: every image is the first sample of its seed."
    parts = []
    if "classifier" in checks:
        parts.append(f"the classifier `{settings.get('classifier')}` had to give the prompt's class (pneumonia vs "
                     f"not) a probability of at least {settings.get('classifier_threshold')}, on an image that is a "
                     "radiograph at all")
    if "memorization" in checks:
        size = f" ({training_images} images)" if training_images else ""
        parts.append(f"the nearest training image of `{settings.get('training_data')}`{size} had to stay at or below "
                     f"SSIM {settings.get('ssim_threshold')} at {settings.get('ssim_size')} px (near-copy threshold)")
    first_try = sum(1 for r in rows if r.get("filter_passed") is True and (r.get("attempts") or 1) == 1)
    later = sum(1 for r in rows if r.get("filter_passed") is True and (r.get("attempts") or 1) > 1)
    failed = sum(1 for r in rows if r.get("filter_passed") is False)
    reasons = Counter(reason for r in rows for text in (r.get("rejection_reasons") or []) for reason in text.split("; "))
    rejected_tries = sum(len(r.get("rejected_seeds") or []) for r in rows)
    lines = [
        "Checks: " + "; ".join(parts) + ". A rejected image was made again with its next seed, up to "
        f"{settings.get('max_attempts')} tries.",
        "",
        "| | |",
        "|---|---|",
        f"| images passing on the first try | {first_try} |",
        f"| images made again (passed on a later try) | {later} |",
        f"| rejected tries in all | {rejected_tries} |",
        f"| images kept after failing every try (`filter_passed` false) | {failed} |",
    ]
    for reason, count in sorted(reasons.items()):
        lines.append(f"| rejected tries: {reason} | {count} |")
    scores = [r["classifier_score"] for r in rows if r.get("classifier_score") is not None]
    if scores:
        lines.append(f"| classifier score of the kept images: mean / min | {statistics.fmean(scores):.3f} / "
                     f"{min(scores):.3f} |")
    ssims = [r["nearest_train_ssim"] for r in rows if r.get("nearest_train_ssim") is not None]
    if ssims:
        lines.append(f"| nearest-training SSIM of the kept images: median / max | {statistics.median(ssims):.3f} / "
                     f"{max(ssims):.3f} |")
    return "\n".join(lines)


def _throughput_section(runs: list[dict[str, Any]]) -> str:
    if not runs:
        return "Not measured (the images were made by an earlier version)."
    lines = ["| launch | processes x threads | device | images | seconds | images/s |", "|---|---|---|---|---|---|"]
    for number, run in enumerate(runs, start=1):
        rate = run.get("images_per_s")
        lines.append(f"| {number} | {run.get('processes')} x {run.get('threads_per_process')} | {run.get('device')} | "
                     f"{run.get('images')} | {run.get('seconds')} | {rate if rate is not None else '-'} |")
    images = sum(r.get("images") or 0 for r in runs)
    seconds = sum(r.get("seconds") or 0 for r in runs)
    if seconds > 0 and len(runs) > 1:
        lines.append(f"| all | | | {images} | {round(seconds, 3)} | {images / seconds:.4g} |")
    lines += ["", "Sampling time only (after the model loaded), all processes together."]
    return "\n".join(lines)


def _spec_summary(spec: dict[str, Any]) -> str:
    keys = [k for k in ("findings", "population", "age_bands", "sex", "view", "template") if k in spec]
    if "prompts" in spec:
        return f"{len(spec['prompts'])} listed prompt(s)"
    return ", ".join(f"{k} {json.dumps(spec[k], sort_keys=True)}" for k in keys).replace("|", "\\|")


def dataset_card(run: dict[str, Any], rows: list[dict[str, Any]], runs: list[dict[str, Any]],
                 license_info: dict[str, Any] | None = None, training_images: int | None = None,
                 pretty_name: str | None = None):
    """The `huggingface_hub.DatasetCard` of a finished run (`run`: run.json, `rows`: metadata, `runs`: launches)."""
    from huggingface_hub import DatasetCard, DatasetCardData

    license_info = dict(license_info or {"license": "unknown"})
    n = len(rows)
    model = {"id": run.get("model_id") or (rows[0].get("model") if rows else None), **run["model"]}
    labels = Counter(r.get("label") or "(unknown)" for r in rows)
    metadata_tables = []
    for column in ("population", "sex", "view"):
        values = Counter(r.get(column) for r in rows if r.get(column) is not None)
        if values:
            metadata_tables.append(_table(column, values, n))
    ages = [r["age"] for r in rows if r.get("age") is not None]
    if ages:
        metadata_tables.append(f"Ages: {min(ages)}-{max(ages)} years, median {statistics.median(ages):g}.")
    sampling = run.get("sampling", {})
    first = rows[0] if rows else {}
    sampling_text = (f"{sampling.get('steps')} steps, guidance {sampling.get('guidance')}, "
                     f"{first.get('scheduler', sampling.get('scheduler'))}, {first.get('height')}x{first.get('width')} px")
    for key in ("negative_prompt", "enhancement"):
        if sampling.get(key):
            sampling_text += f", {key.replace('_', ' ')} {sampling[key]!r}"
    license_id = license_info.get("license") or "unknown"
    license_text = f"`{license_id}`"
    if license_info.get("license_name"):
        license_text += f" ({license_info['license_name']})"
    license_text += f", inherited from the model `{model['id']}`; see its card for the terms of its training data."
    card_data = DatasetCardData(
        license=license_id,
        pretty_name=pretty_name or f"Synthetic chest X-rays: {n} images from {Path(str(model['id'])).name}",
        task_categories=["image-classification", "text-to-image"],
        tags=["synthetic", "chest-x-ray", "medical", "not-for-clinical-use", "cxr-diffusers"],
        size_categories=[_size_category(n)],
        **{k: v for k, v in license_info.items() if k in ("license_name", "license_link")},
    )
    template = importlib.resources.files("cxr_diffusers") / "model_cards" / TEMPLATE
    with importlib.resources.as_file(template) as template_path:
        return DatasetCard.from_template(
            card_data, template_path=str(template_path),
            pretty_name=card_data.pretty_name, num_images=n, model_id=model["id"], model_revision=model["revision"],
            license_text=license_text, label_table=_table("label", labels, n),
            metadata_tables="\n\n".join(metadata_tables), sampling=sampling_text, seed=run.get("seed"),
            spec_summary=_spec_summary(run.get("spec", {})), fingerprint=run.get("fingerprint"),
            filter_section=_filter_section(run, rows, training_images), throughput_section=_throughput_section(runs),
        )


def write_dataset_card(root: str | os.PathLike, run: dict[str, Any], rows: list[dict[str, Any]],
                       runs: list[dict[str, Any]], license_info: dict[str, Any] | None = None,
                       training_images: int | None = None) -> Path:
    """Render `dataset_card` into `root/README.md` (through a temporary file and a rename)."""
    card = dataset_card(run, rows, runs, license_info, training_images)
    path = Path(root) / "README.md"
    staging = path.with_name(f".{path.name}.partial-{os.getpid()}")
    staging.write_text(str(card), encoding="utf-8")
    os.replace(staging, path)
    return path


def create_dataset_repo(repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Create (or find) the Hub dataset repo before any image is made, so that no network or a bad token fails now."""
    from huggingface_hub import create_repo, is_offline_mode

    if is_offline_mode():
        raise CXRInputError(f"--push_to_hub cannot create the Hub dataset {repo_id!r} while HF_HUB_OFFLINE=1 is set; "
                            "unset it or drop --push_to_hub.")
    try:
        return create_repo(repo_id=repo_id, repo_type="dataset", exist_ok=True, private=private, token=token).repo_id
    except Exception as error:  # validation, HTTP and network errors, whose classes vary between versions
        first_line = str(error).strip().split("\n")[0] or type(error).__name__
        raise CXRInputError(f"--push_to_hub could not create the Hub dataset {repo_id!r} ({first_line}).") from error


def push_dataset(root: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload the dataset folder (images, metadata.jsonl, README.md, .synthesis/run.json) as a Hub dataset repo."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True, private=private)
    info = api.upload_folder(folder_path=str(root), repo_id=repo_id, repo_type="dataset",
                             commit_message="Upload synthetic chest X-rays (cxr-diffusers synthesize)",
                             ignore_patterns=[".synthesis/progress/*", "**/.*.partial-*", ".*.partial-*"])
    return str(info)
