"""Dataset cards: README.md with YAML front matter (license, citation, sizes, splits) for a saved dataset."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import datasets
import yaml

from .covid import CITATION as COVID_CITATION
from .indiana import CITATION as INDIANA_CITATION
from .nih import COVID_COLLECTION_CITATION, NIH_CITATION
from .pneumonia import KERMANY_CITATION, MEDMNIST_CITATION

__all__ = ["SOURCES", "dataset_card", "write_card"]

#: What the card says about each value of the `source` column.
SOURCES: dict[str, dict[str, str]] = {
    "nih": {
        "name": "NIH ChestX-ray14",
        "license": "other",
        "license_note": "NIH Clinical Center: unrestricted use, citation required",
        "homepage": "https://nihcc.app.box.com/v/ChestXray-NIHCC",
        "citation": NIH_CITATION,
    },
    "nih_subset": {
        "name": "NIH ChestX-ray14 No Finding / Pneumonia + COVID-19 collection subset",
        "license": "other",
        "license_note": "NIH images: unrestricted use with citation; COVID-19 images: per-image licenses (ieee8023)",
        "homepage": "https://github.com/austinauyeung/covid-classifier",
        "citation": NIH_CITATION + "\n" + COVID_COLLECTION_CITATION,
    },
    "indiana": {
        "name": "Indiana University chest X-rays (Open-i)",
        "license": "cc-by-nc-nd-4.0",
        "license_note": "Open-i / NLM terms (commonly redistributed as CC BY-NC-ND 4.0)",
        "homepage": "https://openi.nlm.nih.gov/faq",
        "citation": INDIANA_CITATION,
    },
    "kermany": {
        "name": "Kermany et al. pediatric chest X-rays (pneumonia)",
        "license": "cc-by-4.0",
        "license_note": "CC BY 4.0 (Mendeley Data doi:10.17632/rscbjbr9sj.2)",
        "homepage": "https://data.mendeley.com/datasets/rscbjbr9sj/2",
        "citation": KERMANY_CITATION,
    },
    "pneumoniamnist": {
        "name": "PneumoniaMNIST (MedMNIST v2)",
        "license": "cc-by-4.0",
        "license_note": "CC BY 4.0",
        "homepage": "https://medmnist.com/",
        "citation": MEDMNIST_CITATION + "\n" + KERMANY_CITATION,
    },
    "covid": {
        "name": "COVID-19 image data collection (ieee8023)",
        "license": "other",
        "license_note": "per-image licenses (column `license`), mostly CC BY-NC-SA: non-commercial use",
        "homepage": "https://github.com/ieee8023/covid-chestxray-dataset",
        "citation": COVID_CITATION,
    },
}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _features_yaml(features: datasets.Features) -> list:
    try:
        return features._to_yaml_list()
    except AttributeError:  # pragma: no cover - older datasets
        return [{"name": k, "dtype": str(v)} for k, v in features.items()]


def _prompt_examples(ds: datasets.Dataset, n: int, scan: int = 5000) -> list[str]:
    """Up to `n` distinct prompts, spread over the first `scan` rows (different labels first)."""
    if n <= 0 or len(ds) == 0:
        return []
    head = ds.select_columns(["prompt", "labels"]).select(range(min(scan, len(ds))))
    seen: dict[str, str] = {}
    by_label: dict[tuple, str] = {}
    for prompt, labels in zip(head["prompt"], head["labels"]):
        key = tuple(labels or ())
        if key not in by_label and prompt not in seen.values():
            by_label[key] = prompt
        seen.setdefault(prompt, prompt)
    picked = list(by_label.values())[:n]
    for prompt in seen:
        if len(picked) >= n:
            break
        if prompt not in picked:
            picked.append(prompt)
    return picked


def dataset_card(
    dsd: datasets.DatasetDict,
    *,
    pretty_name: str | None = None,
    resolution: int | None = None,
    notes: list[str] | None = None,
    num_prompt_examples: int = 3,
) -> str:
    """The README.md text of a dataset of the common schema: YAML front matter and a short description."""
    splits = {name: len(ds) for name, ds in dsd.items()}
    total = sum(splits.values())
    sources = sorted({s for ds in dsd.values() for s in ds.unique("source")})
    known = [SOURCES[s] for s in sources if s in SOURCES]
    licenses = sorted({k["license"] for k in known})
    if not known:
        infos = [ds.info for ds in dsd.values()]
        licenses = sorted({i.license for i in infos if i.license}) or ["unknown"]
    license_id = licenses[0] if len(licenses) == 1 else "other"
    first = next(iter(dsd.values()))
    citations = [k["citation"] for k in known]
    if not citations and first.info.citation:
        citations = [first.info.citation]
    pretty = pretty_name or ("Chest X-rays: " + ", ".join(SOURCES.get(s, {}).get("name", s) for s in sources))

    labels = Counter()
    per_source = Counter()
    for ds in dsd.values():
        per_source.update(ds["source"])
        for row in ds["labels"]:
            labels.update(row or ["(no finding)"])
    front = {
        "license": license_id,
        "pretty_name": pretty,
        "language": ["en"],
        "task_categories": ["text-to-image", "image-classification"],
        "tags": ["medical", "chest-x-ray", "radiology", "cxr-diffusers"],
        "size_categories": [_size_category(total)],
        "source_datasets": [SOURCES.get(s, {}).get("homepage", s) for s in sources],
        "dataset_info": {
            "features": _features_yaml(first.features),
            "splits": [{"name": name, "num_examples": n} for name, n in splits.items()],
        },
    }
    if citations:
        front["citation"] = "\n\n".join(c.strip() for c in citations)
    if license_id == "other":
        front["license_name"] = "mixed"
        front["license_details"] = "; ".join(f"{s}: {SOURCES[s]['license_note']}" for s in sources if s in SOURCES)
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "", f"# {pretty}", ""]
    lines += [
        (
            "Real chest radiographs in the common schema of `cxr_diffusers.data` (`image` in mode L, `prompt`, "
            "`labels`, `view`, `sex`, `age`, `patient_id`, `source`, plus source columns). Splits are by patient. "
            "Not for clinical use."
        ),
        "",
    ]
    if resolution:
        fitted = (
            f"Images were resized to fit {resolution}x{resolution} with their aspect ratio kept and padded with black."
        )
        lines += [fitted, ""]
    lines += ["## Sizes", "", "| split | images |", "|---|---|"]
    lines += [f"| {name} | {n} |" for name, n in splits.items()]
    lines += ["", "| source | images | license |", "|---|---|---|"]
    lines += [
        f"| {s} | {per_source[s]} | {SOURCES.get(s, {}).get('license_note', 'see the source')} |" for s in sources
    ]
    lines += ["", "| label | images |", "|---|---|"]
    lines += [f"| {name} | {n} |" for name, n in labels.most_common()]
    examples = _prompt_examples(first, num_prompt_examples)
    if examples:
        lines += ["", "## Prompt examples", ""] + [f"- {p}" for p in examples]
    if notes:
        lines += ["", "## Build notes", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Loading", "", "```python", "from datasets import load_from_disk", ""]
    lines += ['ds = load_from_disk("path/to/this/folder")', "```"]
    if citations:
        lines += ["", "## Citation", "", "```bibtex", "\n\n".join(c.strip() for c in citations), "```"]
    return "\n".join(lines) + "\n"


def write_card(dsd: datasets.DatasetDict, folder: str | os.PathLike, **kwargs) -> Path:
    """Write `dataset_card(dsd, **kwargs)` to `folder/README.md`."""
    path = Path(folder) / "README.md"
    path.write_text(dataset_card(dsd, **kwargs), encoding="utf-8")
    return path
