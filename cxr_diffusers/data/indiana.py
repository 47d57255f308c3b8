"""Indiana University chest X-rays (Open-i): reports with findings and impression, MeSH/Problems, projections.

Two layouts are read.

Kaggle (raddar/chest-xrays-indiana-university)::

    root/indiana_reports.csv        uid, MeSH, Problems, image, indication, comparison, findings, impression
    root/indiana_projections.csv    uid, filename (1_IM-0001-4001.dcm.png), projection (Frontal / Lateral)
    root/images/images_normalized/*.png   (or root/images_normalized/, root/images/, or root itself)

R2Gen (`iu_xray/annotation.json` + `iu_xray/images/`): `{"train"|"val"|"test": [{id, report, image_path: [...]}]}`
with image paths relative to `images/` (`CXR2384_IM-0942/0.png` in R2Gen, `CXR3321_IM-1588-1001.png` in other
releases). The official R2Gen splits are kept. When `indiana_projections.csv` / `indiana_reports.csv` lie next to
the annotation file, Open-i file names (`CXR<uid>_<rest>.png`) are joined to them for the projection and the labels.

One row per image. Labels are the MeSH terms mapped onto `FINDINGS` (`Cardiomegaly/borderline` -> cardiomegaly,
`Lung/hypoinflation` -> hypoinflation; `normal` -> []); the raw `mesh` and `problems` strings are kept. The prompt is
the view plus the report (impression, then findings), cleaned of the `XXXX` anonymisation tokens; rows without any
report text fall back to the labels. Open-i publishes no patient ids: each report `uid` is one study of one
anonymised patient and serves as `patient_id`, so the Kaggle layout is split by uid (`val_size`, `test_size`).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import datasets
from datasets import Value

from ..errors import DataError
from .citations import BIBTEX
from ._assemble import assemble, carve_patient_splits, make_info, row_prompts
from .checks import LoadReport, read_csv, require_dir, require_file
from .schema import make_features, normalize_view
from .vocabulary import normalize_findings

__all__ = ["load_indiana"]

CITATION = BIBTEX["indiana"]

REPORT_COLUMNS = ["uid", "MeSH", "Problems", "findings", "impression"]
PROJECTION_COLUMNS = ["uid", "filename", "projection"]
TEXT_COLUMNS = ("findings", "impression", "report", "indication", "mesh", "problems")
EXTRA_FEATURES = {
    "uid": Value("string"),
    "filename": Value("string"),
    "projection": Value("string"),
    "findings": Value("string"),
    "impression": Value("string"),
    "report": Value("string"),
    "indication": Value("string"),
    "mesh": Value("string"),
    "problems": Value("string"),
}
_R2GEN_SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
_OPENI_NAME = re.compile(r"^CXR(\d+)_(.+)\.png$")


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _pick_image_dir(candidates: list[Path], names: list[str]) -> tuple[Path | None, set[str]]:
    """The candidate folder holding the most of `names`, with the set of names found there."""
    wanted = set(names)
    best, best_found = None, set()
    for folder in candidates:
        if folder is None or not folder.is_dir():
            continue
        found = wanted & set(os.listdir(folder))
        if best is None or len(found) > len(best_found):
            best, best_found = folder, found
    return best, best_found


def _labels(mesh: str, problems: str) -> list[str]:
    terms = [t.strip() for t in (mesh or problems).split(";")]
    return normalize_findings(terms)


def _detect_layout(root: Path, layout: str, annotation_file) -> str:
    if layout not in ("auto", "kaggle", "r2gen"):
        raise DataError(f"layout must be 'auto', 'kaggle' or 'r2gen', not {layout!r}.")
    if layout != "auto":
        return layout
    if annotation_file is not None:
        return "r2gen"
    if (root / "indiana_projections.csv").is_file() or (root / "indiana_reports.csv").is_file():
        return "kaggle"
    if (root / "annotation.json").is_file():
        return "r2gen"
    raise DataError(
        f"No Indiana layout under {root}: expected indiana_reports.csv and indiana_projections.csv (Kaggle) or "
        f"annotation.json (R2Gen)."
    )


def load_indiana(
    root: str | os.PathLike,
    *,
    layout: str = "auto",
    images_dir: str | os.PathLike | None = None,
    annotation_file: str | os.PathLike | None = None,
    frontal_only: bool = False,
    val_size: float = 0.1,
    test_size: float = 0.1,
    seed: int = 0,
    check_images: str = "header",
    strict: bool = False,
    num_proc: int | None = 1,
    max_samples: int | None = None,
) -> datasets.DatasetDict:
    """Load the Indiana University / Open-i chest X-rays as a `DatasetDict` of the common schema.

    Args:
        root: the dataset folder (see the module docstring for both layouts).
        layout: `auto` (Kaggle CSVs if present, else `annotation.json`), `kaggle` or `r2gen`.
        images_dir: the image folder when it is not one of the usual places.
        annotation_file: the R2Gen annotation JSON (default `root/annotation.json`).
        frontal_only: keep frontal projections only.
        val_size, test_size: shares of studies (uids) for validation and test in the Kaggle layout.
        seed, check_images, strict, num_proc, max_samples: as in `load_pneumonia`.

    Columns: the common ones plus `uid`, `filename`, `projection`, `findings`, `impression`, `report` (R2Gen),
    `indication`, `mesh`, `problems`. Age and sex are not published (age None, sex "").
    """
    import pandas as pd

    root = require_dir(root, "Indiana root").resolve()
    layout = _detect_layout(root, layout, annotation_file)
    report = LoadReport("indiana", str(root))
    reports_path = root / "indiana_reports.csv"
    projections_path = root / "indiana_projections.csv"

    if layout == "kaggle":
        reports = read_csv(reports_path, REPORT_COLUMNS)
        projections = read_csv(projections_path, PROJECTION_COLUMNS)
        report.start(f"rows of {projections_path.name}", len(projections))
        reports = reports.drop_duplicates("uid").set_index("uid")
        unknown = ~projections["uid"].isin(reports.index)
        if unknown.any():
            report.notes.append(f"{int(unknown.sum())} projection rows whose uid has no report were dropped")
        frame = report.keep(projections, ~unknown, "uid has a report")
        frame = frame.join(reports, on="uid")
        frame = frame.assign(
            filename=frame["filename"].astype(str),
            mesh=frame["MeSH"].map(_text),
            problems=frame["Problems"].map(_text),
            findings=frame["findings"].map(_text),
            impression=frame["impression"].map(_text),
            indication=frame["indication"].map(_text) if "indication" in frame else "",
            report="",
            projection=frame["projection"].map(_text),
        )
        candidates = [Path(images_dir) if images_dir else None, root / "images" / "images_normalized",
                      root / "images_normalized", root / "images", root]  # fmt: skip
        if images_dir is not None:
            require_dir(images_dir, "Indiana image folder")
            candidates = [Path(images_dir)]
        folder, found = _pick_image_dir(candidates, frame["filename"].tolist())
        frame["split"] = ""
    else:
        path = Path(annotation_file) if annotation_file else root / "annotation.json"
        path = require_file(path, "R2Gen annotation file")
        try:
            annotation = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"The annotation file {path} is not valid JSON ({err}).") from None
        if not isinstance(annotation, dict) or not any(k in _R2GEN_SPLITS for k in annotation):
            raise DataError(f"The annotation file {path} lacks the keys 'train', 'val' and 'test'.")
        rows = []
        for key, entries in annotation.items():
            if key not in _R2GEN_SPLITS:
                continue
            for entry in entries:
                for field in ("id", "report", "image_path"):
                    if field not in entry:
                        raise DataError(f"The annotation file {path} has a {key} entry that lacks the field {field!r}.")
                for image_path in entry["image_path"]:
                    row = {"uid": str(entry["id"]), "filename": str(image_path)}
                    row.update(report=_text(entry["report"]), split=_R2GEN_SPLITS[key])
                    rows.append(row)
        frame = pd.DataFrame(rows, columns=["uid", "filename", "report", "split"])
        report.start(f"image paths in {path.name}", len(frame))
        frame["projection"], frame["mesh"], frame["problems"] = "", "", ""
        frame["findings"], frame["impression"], frame["indication"] = "", "", ""
        if projections_path.is_file():  # join Open-i names to the Kaggle projections
            projections = read_csv(projections_path, PROJECTION_COLUMNS)
            by_name = dict(zip(projections["filename"].astype(str), projections["projection"].map(_text)))

            def kaggle_name(name: str) -> str:
                match = _OPENI_NAME.match(os.path.basename(name))
                return f"{match.group(1)}_{match.group(2)}.dcm.png" if match else ""

            frame["projection"] = [by_name.get(kaggle_name(n), "") for n in frame["filename"]]
            report.notes.append(f"projection joined from {projections_path.name} for "
                                f"{int((frame['projection'] != '').sum())} of {len(frame)} images")  # fmt: skip
        if reports_path.is_file():
            reports = read_csv(reports_path, ["uid", "MeSH", "Problems"])
            reports = reports.assign(uid=reports["uid"].astype(str)).drop_duplicates("uid").set_index("uid")
            frame["mesh"] = frame["uid"].map(reports["MeSH"].map(_text)).fillna("")
            frame["problems"] = frame["uid"].map(reports["Problems"].map(_text)).fillna("")
            if "indication" in reports:
                frame["indication"] = frame["uid"].map(reports["indication"].map(_text)).fillna("")
        candidates = [Path(images_dir)] if images_dir else [root / "images", root]
        if images_dir is not None:
            require_dir(images_dir, "Indiana image folder")
        folder = next((c for c in candidates if c.is_dir()), root)
        found = {n for n in frame["filename"] if (folder / n).is_file()}

    frame = frame.copy()
    frame["uid"] = frame["uid"].astype(str)
    present = frame["filename"].isin(found)
    report.missing_images = sorted(frame.loc[~present, "filename"])
    if found:
        where = folder
    elif images_dir is not None:
        where = Path(images_dir)
    else:
        where = root / "images" / "images_normalized" if layout == "kaggle" else root / "images"
    frame = report.keep(
        frame,
        present,
        "image file present",
        hint=f"Put the PNG files named in the {'projections CSV' if layout == 'kaggle' else 'annotation file'} "
        f"in {where}.",
    )
    frame["image"] = [os.path.join(folder, n) for n in frame["filename"]]
    frame["view"] = frame["projection"].map(normalize_view)
    if frontal_only:
        frame = report.keep(
            frame,
            frame["view"].isin(["frontal", "PA", "AP", "AP supine"]),
            "frontal_only",
            hint=""
            if layout == "kaggle"
            else "(R2Gen layout: put indiana_projections.csv next to annotation.json so that projections are known.)",
        )
    if layout == "kaggle":
        frame["split"] = carve_patient_splits(
            frame["uid"], report, val_size=val_size, test_size=test_size, seed=seed, how="split by report uid"
        )
    else:
        report.notes.append("official R2Gen splits")
    frame["labels"] = [_labels(m, p) for m, p in zip(frame["mesh"], frame["problems"])]
    frame["patient_id"] = frame["uid"]
    frame["sex"], frame["age"], frame["source"] = "", None, "indiana"
    frame["prompt"] = row_prompts(frame, text_columns=["findings", "impression", "report"])
    info = make_info(
        "Indiana University chest X-ray collection (Open-i, NLM): frontal and lateral radiographs with "
        "radiology reports (findings, impression) and MeSH annotations.",
        CITATION,
        "https://openi.nlm.nih.gov/faq",
        "cc-by-nc-nd-4.0",
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
