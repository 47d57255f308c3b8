"""COVID-19 image data collection (ieee8023/covid-chestxray-dataset): `metadata.csv` + images, with clinical notes.

Layout: `root/metadata.csv` (one row per image: patientid, offset, sex, age, finding, view, modality, folder,
filename, license, clinical_notes, ...) and the images in `root/images/<filename>` (the repository layout). Downsampled
copies in `root/images_256/<stem>.png` (as in the shared copy) are used where the original is absent.

Rows are filtered to X-rays (`modality == "X-ray"`) whose image exists; a file named by two rows (the collection lists
five such duplicates under two patient ids) is kept once, with its first row. Rows whose finding is `todo` (not yet
labelled) are dropped unless `include_unlabelled=True`, in which case their labels are [] and `finding` says `todo`.

Labels: COVID-19 -> ["pneumonia", "covid-19"]; other pneumonias (SARS, Streptococcus, Pneumocystis, ...) ->
["pneumonia"] with `subtype` viral / bacterial / fungal / lipoid and the organism in `pathogen`; ARDS -> ["ards"];
`No Finding` -> []. Both the flat findings of 2020 (`Streptococcus`) and the later hierarchical ones
(`Pneumonia/Bacterial/Streptococcus`) are read. The prompt is the metadata prompt followed by the cleaned
`clinical_notes`. Splits are made by patient (`val_size`, `test_size`, seeded). Most images are CC BY-NC-SA or
similar: see the per-image `license` column before redistributing.
"""

from __future__ import annotations

import os
from pathlib import Path

import datasets
from datasets import Value

from .citations import BIBTEX
from ._assemble import assemble, carve_patient_splits, make_info, row_prompts
from .checks import LoadReport, read_csv, require_dir
from .schema import make_features, normalize_sex, normalize_view, parse_age

__all__ = ["load_covid_notes", "parse_covid_finding"]

CITATION = BIBTEX["covid"]

REQUIRED = ["patientid", "finding", "view", "modality", "filename", "sex", "age", "clinical_notes"]

_VIRAL = {"covid-19", "sars", "mers", "mers-cov", "influenza", "varicella", "herpes", "rsv", "h1n1", "viral"}
_BACTERIAL = {"streptococcus", "klebsiella", "legionella", "e.coli", "e. coli", "mycoplasma", "staphylococcus",
              "chlamydophila", "nocardia", "mycobacterium", "tuberculosis", "bacterial",
              "mycoplasma bacterial pneumonia"}  # fmt: skip
_FUNGAL = {"pneumocystis", "aspergillosis", "histoplasmosis", "fungal"}
_LIPOID = {"lipoid", "lipoid pneumonia"}

EXTRA_FEATURES = {
    "finding": Value("string"),
    "subtype": Value("string"),
    "pathogen": Value("string"),
    "clinical_notes": Value("string"),
    "offset": Value("string"),
    "filename": Value("string"),
    "license": Value("string"),
    "doi": Value("string"),
    "url": Value("string"),
}


def parse_covid_finding(finding: str) -> tuple[list[str], str, str]:
    """`(labels, subtype, pathogen)` for one `finding` value of the collection's metadata."""
    text = (finding or "").strip()
    if not text or text.lower() in {"todo", "unknown"}:
        return [], "", ""
    if text.lower() in {"no finding", "normal"}:
        return [], "", ""
    labels: list[str] = []
    subtype, pathogen = "", ""
    for part in [p.strip() for chunk in text.split(",") for p in chunk.split("/")]:
        key = part.lower()
        if not key or key == "pneumonia":
            if key:
                labels.append("pneumonia")
            continue
        if key == "ards":
            labels.append("ards")
            continue
        if key in ("viral", "bacterial", "fungal", "lipoid"):
            subtype = key
            labels.append("pneumonia")
            continue
        if key in ("aspiration", "chemical", "unknown"):
            labels.append("pneumonia")
            continue
        pathogen = part
        labels.append("pneumonia")
        if key in ("covid-19", "covid19", "sars-cov-2"):
            labels.append("covid-19")
        if key in _VIRAL or key.startswith("covid"):
            subtype = subtype or "viral"
        elif key in _BACTERIAL:
            subtype = subtype or "bacterial"
        elif key in _FUNGAL:
            subtype = subtype or "fungal"
        elif key in _LIPOID:
            subtype = subtype or "lipoid"
    ordered = [name for name in ("pneumonia", "covid-19", "ards") if name in labels]
    return ordered, subtype, pathogen


def _png_name(filename: str) -> str:
    return Path(filename).stem + ".png"


def load_covid_notes(
    root: str | os.PathLike,
    *,
    include_unlabelled: bool = False,
    views: tuple[str, ...] | None = None,
    val_size: float = 0.1,
    test_size: float = 0.1,
    seed: int = 0,
    check_images: str = "header",
    strict: bool = False,
    num_proc: int | None = 1,
    max_samples: int | None = None,
) -> datasets.DatasetDict:
    """Load the COVID-19 image data collection (X-rays with clinical notes) as a `DatasetDict` of the common schema.

    Args:
        root: folder with `metadata.csv` and `images/` (or `images_256/`).
        include_unlabelled: keep rows whose finding is `todo` (labels [], see the module docstring).
        views: keep only these views (`("PA", "AP", "AP supine")`); None keeps all (lateral included).
        val_size, test_size: shares of patients for validation and test.
        seed, check_images, strict, num_proc, max_samples: as in `load_pneumonia`.

    Columns: the common ones plus `finding` (raw), `subtype`, `pathogen`, `clinical_notes` (raw), `offset` (days
    since symptom onset, as text), `filename`, `license`, `doi`, `url`.
    """
    import pandas as pd

    root = require_dir(root, "COVID-19 collection root").resolve()
    csv_path = root / "metadata.csv"
    frame = read_csv(csv_path, REQUIRED, dtype={"patientid": str, "offset": str})
    report = LoadReport("covid", str(root))
    report.start(f"rows of {csv_path.name}", len(frame))
    frame = report.keep(frame, frame["modality"].astype(str).str.strip().str.lower() == "x-ray", "modality X-ray")
    frame = frame.copy()
    frame["filename"] = frame["filename"].astype(str)

    original_dir, small_dir = root / "images", root / "images_256"
    originals = set(os.listdir(original_dir)) if original_dir.is_dir() else set()
    smalls = set(os.listdir(small_dir)) if small_dir.is_dir() else set()

    def locate(name: str) -> str | None:
        if name in originals:
            return str(original_dir / name)
        if _png_name(name) in smalls:
            return str(small_dir / _png_name(name))
        return None

    frame["image"] = frame["filename"].map(locate)
    present = frame["image"].notna()
    report.missing_images = sorted(frame.loc[~present, "filename"])
    frame = report.keep(frame, present, "image file present", hint=f"Put the images in {original_dir}.")
    duplicated = frame["image"].duplicated(keep="first")
    if duplicated.any():
        report.notes.append(f"{int(duplicated.sum())} rows name an image already listed and were dropped")
    frame = report.keep(frame, ~duplicated, "one row per image")
    listed = set(frame["image"].map(os.path.basename))
    folder_files = smalls if small_dir.is_dir() and not original_dir.is_dir() else originals
    report.unmatched_images = sorted(
        n for n in folder_files if n.lower().endswith((".png", ".jpg", ".jpeg")) and n not in listed
    )
    frame = frame.copy()
    frame["finding"] = frame["finding"].fillna("").astype(str)
    unlabelled = frame["finding"].str.strip().str.lower().isin(["todo", ""])
    if not include_unlabelled:
        frame = report.keep(frame, ~unlabelled, "labelled finding (include_unlabelled=False)")
    parsed = [parse_covid_finding(f) for f in frame["finding"]]
    frame["labels"] = [p[0] for p in parsed]
    frame["subtype"] = [p[1] for p in parsed]
    frame["pathogen"] = [p[2] for p in parsed]
    frame["view"] = frame["view"].map(normalize_view)
    if views:
        wanted = {normalize_view(v) for v in views}
        frame = report.keep(frame, frame["view"].isin(wanted), f"views {', '.join(views)}")
    frame["sex"] = frame["sex"].map(normalize_sex)
    frame["age"] = pd.Series([parse_age(v) for v in frame["age"]], index=frame.index, dtype=object)
    frame["patient_id"] = frame["patientid"].astype(str)
    frame["source"] = "covid"
    for column in ("clinical_notes", "offset", "license", "doi", "url"):
        frame[column] = frame[column].fillna("").astype(str) if column in frame else ""
    frame["prompt"] = row_prompts(frame, text_columns=["clinical_notes"])
    frame["split"] = carve_patient_splits(
        frame["patient_id"], report, val_size=val_size, test_size=test_size, seed=seed
    )
    info = make_info(
        "COVID-19 image data collection (Cohen et al.): chest X-rays of COVID-19 and other pneumonias with "
        "age, sex, view and free-text clinical notes.",
        CITATION,
        "https://github.com/ieee8023/covid-chestxray-dataset",
        "other",  # per-image licenses, mostly CC BY-NC-SA
    )
    return assemble(
        frame,
        features=make_features(EXTRA_FEATURES),
        info=info,
        report=report,
        strict=strict,
        check_images=check_images,
        num_proc=num_proc,
        max_samples=max_samples,
        seed=seed,
    )
