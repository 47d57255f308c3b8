"""NIH ChestX-ray14: `Data_Entry_2017.csv` + `images*/` + the official split lists; and the `nih_subset` folders.

`load_nih(root)` reads the layout of the NIH Clinical Center release (box.com / Kaggle `nih-chest-xrays/data`)::

    root/Data_Entry_2017.csv            one row per image (Image Index, Finding Labels, Patient ID, Age, Gender, View)
    root/train_val_list.txt             official train/val image names (86,524)
    root/test_list.txt                  official test image names (25,596)
    root/BBox_List_2017.csv             optional, 984 boxes
    root/images/*.png                   or root/images_001/images/*.png ... root/images_012/images/*.png

The label files may live in another folder (`labels_dir`). When none of `images/`, `images_*/` exists, every image
below `root` is indexed by file name (e.g. the NIH1000 `train/valid/test/0_normal` folders, whose split is ignored).

Splits: the official test list is the test split. When `test_list.txt` is absent the test split is every image that
is not in `train_val_list.txt` (the official test set is exactly that complement); when both lists are absent the
test split is carved by patient like validation. Validation is carved from train/val by patient (`val_size` of the
patients, seeded). The official split is patient-disjoint and so are the carved ones (checked).

Rows whose image file is absent and images that have no row are counted, listed in a warning and skipped; with
`strict=True` they raise. (The shared label file is truncated to its first 40,000 rows, so most rows have no image.)

`load_nih_subset(root)` reads the `{healthy,pneumonia,covid}/{No,Pn,CO}_<patient>_<n>.png` folders of the
austinauyeung/covid-classifier subset and splits them by patient.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import datasets
from datasets import List, Value

from ..errors import DataError
from .citations import BIBTEX
from ._assemble import assemble, carve_patient_splits, make_info, row_prompts
from .checks import (
    LoadReport,
    find_file,
    find_required_file,
    index_images,
    read_csv,
    require_columns,
    require_dir,
    require_file,
)
from .schema import make_features, normalize_sex, normalize_view, parse_age
from .splits import assign_patient_splits
from .vocabulary import normalize_findings

__all__ = ["NIH_FINDINGS", "load_nih", "load_nih_cxr8", "load_nih_subset"]

NIH_CITATION = BIBTEX["nih"]
COVID_COLLECTION_CITATION = BIBTEX["covid"]

#: The 14 NIH findings in the spelling of Data_Entry_2017.csv.
NIH_FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis", "Hernia",
    "Infiltration", "Mass", "Nodule", "Pleural_Thickening", "Pneumonia", "Pneumothorax",
)  # fmt: skip

_COLUMNS = {  # canonical column -> key of its normalised spelling (sample_labels.csv uses Image_Index, ...)
    "Image Index": "imageindex",
    "Finding Labels": "findinglabels",
    "Follow-up #": "followup",
    "Patient ID": "patientid",
    "Patient Age": "patientage",
    "Patient Gender": "patientgender",
    "View Position": "viewposition",
}
REQUIRED = ["Image Index", "Finding Labels", "Patient ID", "Patient Age", "Patient Gender", "View Position"]
LABEL_FILES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv")

BBOX_FEATURE = List({"label": Value("string"), "x": Value("float32"), "y": Value("float32"),
                     "w": Value("float32"), "h": Value("float32")})  # fmt: skip
EXTRA_FEATURES = {
    "image_index": Value("string"),
    "finding_labels": Value("string"),
    "follow_up": Value("int32"),
    "official_split": Value("string"),
    "bboxes": BBOX_FEATURE,
}


def _canonical_columns(frame) -> None:
    keys = {re.sub(r"[^a-z0-9]", "", c.lower()): c for c in frame.columns}
    rename = {keys[key]: name for name, key in _COLUMNS.items() if key in keys and keys[key] != name}
    frame.columns = [rename.get(c, c) for c in frame.columns]


def _read_list(path: Path | None) -> set[str] | None:
    if path is None:
        return None
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _read_bboxes(path: Path) -> dict[str, list[dict]]:
    frame = read_csv(path)
    if frame.shape[1] < 6:
        raise DataError(f"The file {path} lacks the columns 'Image Index', 'Finding Label', 'Bbox [x', 'y', 'w', 'h]'.")
    boxes: dict[str, list[dict]] = {}
    for row in frame.iloc[:, :6].itertuples(index=False):
        name, label, x, y, w, h = row
        mapped = normalize_findings([label])
        box = {"label": mapped[0] if mapped else str(label)}
        box.update(x=float(x), y=float(y), w=float(w), h=float(h))
        boxes.setdefault(str(name), []).append(box)
    return boxes


def _image_folders(root: Path) -> tuple[list[Path], bool]:
    folders = [root / "images"] + sorted(p for p in root.glob("images_*") if p.is_dir())
    folders = [f for f in folders if f.is_dir()]
    return (folders, True) if folders else ([root], True)


def load_nih(
    root: str | os.PathLike,
    *,
    labels_dir: str | os.PathLike | None = None,
    val_size: float = 0.1,
    test_size: float = 0.2,
    views: tuple[str, ...] | None = None,
    include_bboxes: bool = True,
    seed: int = 0,
    check_images: str = "header",
    strict: bool = False,
    num_proc: int | None = 1,
    max_samples: int | None = None,
) -> datasets.DatasetDict:
    """Load NIH ChestX-ray14 as a `DatasetDict` of the common schema (see the module docstring for the layout).

    Args:
        root: folder with the images (and, unless `labels_dir` is given, the label files).
        labels_dir: folder with `Data_Entry_2017.csv`, `train_val_list.txt`, `test_list.txt`, `BBox_List_2017.csv`
            when they are not in `root`.
        val_size: share of train/val patients carved into `validation`.
        test_size: share of patients for `test`, used only when neither split list exists.
        views: keep only these views (`("PA",)`, `("PA", "AP")`); None keeps all.
        include_bboxes: read `BBox_List_2017.csv` into the `bboxes` column when present.
        seed, check_images, strict, num_proc, max_samples: as in `load_pneumonia`.

    Columns: the common ones (labels: the 14 findings in `FINDINGS` spelling, `No Finding` = []) plus `image_index`,
    `finding_labels` (raw), `follow_up`, `official_split` (`train_val` / `test`), `bboxes`
    (list of `{label, x, y, w, h}` in pixels of the 1024x1024 original).
    """
    import pandas as pd

    root = require_dir(root, "NIH root").resolve()
    label_root = require_dir(labels_dir, "NIH labels folder").resolve() if labels_dir is not None else root
    folders = [label_root, root]
    csv_path = find_required_file(folders, LABEL_FILES, "NIH label file")
    frame = read_csv(csv_path, dtype={"Image Index": str})
    _canonical_columns(frame)
    require_columns(frame, REQUIRED, csv_path)
    report = LoadReport("nih", str(root))
    report.start(f"rows of {csv_path.name}", len(frame))
    frame = frame.drop_duplicates("Image Index")

    image_folders, recursive = _image_folders(root)
    index, duplicates = index_images(image_folders, recursive=recursive)
    if duplicates:
        report.notes.append(f"{len(duplicates)} duplicate image file names ignored (first kept), e.g. {duplicates[0]}")
    names = set(frame["Image Index"])
    report.missing_images = sorted(names - index.keys())
    report.unmatched_images = sorted(index.keys() - names)
    frame = report.keep(
        frame,
        frame["Image Index"].isin(index.keys()),
        "image file present",
        hint=f"Put the images in {root / 'images'} or {root / 'images_001' / 'images'} ... (none of the "
        f"{len(names)} listed images was found).",
    )
    frame = frame.copy()
    frame["image"] = frame["Image Index"].map(index)

    if views:
        wanted = {normalize_view(v) for v in views}
        frame["view"] = frame["View Position"].map(normalize_view)
        frame = report.keep(frame, frame["view"].isin(wanted), f"views {', '.join(views)}")

    # official split
    train_val = _read_list(find_file(folders, ["train_val_list.txt"], "train/val list"))
    test = _read_list(find_file(folders, ["test_list.txt"], "test list"))
    patients = frame["Patient ID"].astype(str)
    if test is not None:
        official = frame["Image Index"].map(lambda n: "test" if n in test else "train_val")
        if train_val is not None:
            unlisted = ~frame["Image Index"].isin(train_val | test)
            if unlisted.any():
                report.notes.append(f"{int(unlisted.sum())} images in neither split list were dropped")
                frame, official, patients = frame[~unlisted], official[~unlisted], patients[~unlisted]
        report.notes.append("official split from test_list.txt")
    elif train_val is not None:
        official = frame["Image Index"].map(lambda n: "train_val" if n in train_val else "test")
        report.notes.append("test_list.txt absent: test = images not in train_val_list.txt (the official test set)")
    else:
        assignment = assign_patient_splits(patients, {"test": test_size}, seed=seed, rest="train_val")
        official = patients.map(assignment)
        report.notes.append(f"no official split lists: test carved by patient ({test_size:.0%}, seed {seed})")
    frame["official_split"] = official.values
    frame["patient_id"] = patients.values
    frame["split"] = frame["official_split"].map({"train_val": "train", "test": "test"})
    carve = frame["split"] == "train"
    assignment = assign_patient_splits(frame.loc[carve, "patient_id"], {"validation": val_size}, seed=seed)
    frame.loc[carve, "split"] = frame.loc[carve, "patient_id"].map(assignment)
    report.notes.append(f"validation carved from train/val by patient ({val_size:.0%}, seed {seed})")

    boxes: dict[str, list[dict]] = {}
    bbox_path = find_file(folders, ["BBox_List_2017.csv"], "bounding boxes") if include_bboxes else None
    if bbox_path is not None:
        boxes = _read_bboxes(bbox_path)
    frame["image_index"] = frame["Image Index"]
    frame["finding_labels"] = frame["Finding Labels"].fillna("").astype(str)
    frame["labels"] = [normalize_findings(s.split("|")) for s in frame["finding_labels"]]
    frame["view"] = frame["View Position"].map(normalize_view)
    frame["sex"] = frame["Patient Gender"].map(normalize_sex)
    frame["age"] = pd.Series([parse_age(v) for v in frame["Patient Age"]], index=frame.index, dtype=object)
    frame["follow_up"] = frame.get("Follow-up #")
    frame["bboxes"] = [boxes.get(n, []) for n in frame["image_index"]]
    frame["source"] = "nih"
    frame["prompt"] = row_prompts(frame)
    info = make_info(
        "NIH ChestX-ray14 (NIH Clinical Center): frontal chest X-rays with 14 text-mined findings, age, sex, view.",
        NIH_CITATION,
        "https://nihcc.app.box.com/v/ChestXray-NIHCC",
        "other",  # unrestricted use with citation
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


# ------------------------------------------------------------------------------------------------- nih_subset

SUBSET_CLASSES = {
    "healthy": ("No", [], "nih"),
    "pneumonia": ("Pn", ["pneumonia"], "nih"),
    "covid": ("CO", ["pneumonia", "covid-19"], "ieee8023"),
}
_SUBSET_NAME = re.compile(r"^(No|Pn|CO)_([^_]+)_(\d+)\.(png|jpe?g)$", re.IGNORECASE)


def load_nih_subset(
    root: str | os.PathLike,
    *,
    val_size: float = 0.1,
    test_size: float = 0.1,
    seed: int = 0,
    check_images: str = "header",
    strict: bool = False,
    num_proc: int | None = 1,
    max_samples: int | None = None,
) -> datasets.DatasetDict:
    """Load the `{healthy,pneumonia,covid}` folders (file names `{No,Pn,CO}_<patient>_<n>.png`).

    The class is read from the file-name prefix (`No` healthy, `Pn` pneumonia, `CO` covid), so the images may also
    lie in one flat folder; other image files are counted as unmatched and skipped (an error with `strict=True`).

    `healthy` are NIH images labelled No Finding (labels []), `pneumonia` NIH images whose labels include Pneumonia
    (other findings of the same image are not recorded, so labels are just ["pneumonia"]), `covid` images of the
    ieee8023 COVID-19 collection (labels ["pneumonia", "covid-19"]). Patient ids are prefixed by their collection
    (`nih-1021`, `ieee8023-112`) because the two number patients independently. Splits are made by patient,
    stratified by class; age, sex and view are not recorded (the images are adults'). Columns: the common ones plus
    `class_name` and `file_name`.
    """
    import pandas as pd

    root = require_dir(root, "nih_subset root").resolve()
    by_prefix = {prefix.lower(): name for name, (prefix, _, _) in SUBSET_CLASSES.items()}
    report = LoadReport("nih_subset", str(root))
    index, duplicates = index_images([root], recursive=True)
    if duplicates:
        report.notes.append(f"{len(duplicates)} duplicate file names ignored (first kept), e.g. {duplicates[0]}")
    rows = []
    for name, path in index.items():
        match = _SUBSET_NAME.match(name)
        if not match:
            report.unmatched_images.append(os.path.relpath(path, root))
            continue
        class_name = by_prefix[match.group(1).lower()]
        _, labels, collection = SUBSET_CLASSES[class_name]
        folder = Path(path).parent.name
        if folder in SUBSET_CLASSES and folder != class_name:
            raise DataError(f"The image {path} is in the folder {folder}/ but its name says {class_name}.")
        rows.append(
            {
                "image": path,
                "file_name": name,
                "class_name": class_name,
                "labels": list(labels),
                "patient_id": f"{collection}-{match.group(2)}",
            }
        )
    frame = pd.DataFrame(rows, columns=["image", "file_name", "class_name", "labels", "patient_id"])
    report.start(f"images named {{No,Pn,CO}}_<patient>_<n> ({len(index)} image files)", len(frame))
    # a patient's stratum: its most severe class (a few NIH patients have healthy and pneumonia images)
    order = {"covid": 2, "pneumonia": 1, "healthy": 0}
    strata = frame.assign(o=frame["class_name"].map(order)).groupby("patient_id")["o"].max().astype(str).to_dict()
    frame["split"] = carve_patient_splits(frame["patient_id"], report, val_size=val_size, test_size=test_size,
                                          seed=seed, strata=strata, how="split by patient, stratified by class")
    frame["view"], frame["sex"], frame["age"], frame["source"] = "", "", None, "nih_subset"
    frame["prompt"] = row_prompts(frame)
    info = make_info(
        "Adult chest X-rays: NIH ChestX-ray14 images labelled No Finding or Pneumonia plus COVID-19 images of the "
        "ieee8023 collection, 300x300 (austinauyeung/covid-classifier).",
        NIH_CITATION + "\n" + COVID_COLLECTION_CITATION,
        "https://github.com/austinauyeung/covid-classifier",
        "other",
    )
    features = make_features({"class_name": Value("string"), "file_name": Value("string")})
    return assemble(
        frame,
        features=features,
        info=info,
        report=report,
        strict=strict,
        check_images=check_images,
        num_proc=num_proc,
        max_samples=max_samples,
        seed=seed,
    )


# ------------------------------------------------------------------------------------------------- nih_cxr8

CXR8_LABELS = {"no_finding": [], "pneumonia": ["pneumonia"]}


def load_nih_cxr8(
    root: str | os.PathLike,
    *,
    labels_dir: str | os.PathLike | None = None,
    patient_splits: dict[str, str] | None = None,
    val_size: float = 0.1,
    test_size: float = 0.1,
    seed: int = 0,
    check_images: str = "header",
    strict: bool = False,
    num_proc: int | None = 1,
    max_samples: int | None = None,
) -> datasets.DatasetDict:
    """Load a folder of NIH ChestX-ray8 images with a `labels.csv` (`file_name`, `image_index`, `patient_id`,
    `label` = `no_finding` | `pneumonia`), the layout of `nih_cxr8_768` (adult PA/AP radiographs at 768 px).

    Args:
        labels_dir: a folder with NIH's `Data_Entry_2017.csv`; the images it lists get their age, sex, view and full
            finding labels (the others keep the folder's label and no demographics).
        patient_splits: `{patient_id: split}` decided by another loader for patients this folder shares with it (e.g.
            `load_nih_subset`, whose ids are the same `nih-<NIH patient id>`): those patients keep that split, so no
            radiograph of a test patient is trained on. The other patients are carved by patient, stratified by label.
        val_size, test_size, seed, check_images, strict, num_proc, max_samples: as in `load_nih_subset`.

    Columns: the common ones (source `nih_cxr8`, patient ids `nih-<id>`) plus `image_index`.
    """
    import pandas as pd

    root = require_dir(root, "nih_cxr8 root").resolve()
    csv_path = require_file(root / "labels.csv", "nih_cxr8 labels.csv")
    frame = read_csv(csv_path, required=["file_name", "image_index", "patient_id", "label"], dtype=str)
    report = LoadReport("nih_cxr8", str(root))
    report.start(f"rows of {csv_path.name}", len(frame))
    unknown = sorted(set(frame["label"]) - set(CXR8_LABELS))
    if unknown:
        raise DataError(f"{csv_path} has unknown labels {unknown}; expected {', '.join(CXR8_LABELS)}.")
    frame = frame.copy()
    frame["image"] = [str(root / name) for name in frame["file_name"]]
    exists = frame["image"].map(os.path.isfile)
    report.missing_images = sorted(frame.loc[~exists, "file_name"])
    frame = report.keep(frame, exists, "image file present", hint=f"Put the images where {csv_path} says they are.")
    frame["patient_id"] = "nih-" + frame["patient_id"].astype(str).str.lstrip("0").replace("", "0")
    frame["labels"] = frame["label"].map(lambda label: list(CXR8_LABELS[label]))
    frame["view"], frame["sex"], frame["age"] = "", "", None
    frame["age"] = frame["age"].astype(object)
    if labels_dir is not None:
        entries_path = find_required_file([require_dir(labels_dir, "NIH labels folder")], LABEL_FILES, "NIH label file")
        entries = read_csv(entries_path, dtype={"Image Index": str})
        _canonical_columns(entries)
        require_columns(entries, REQUIRED, entries_path)
        entries = entries.drop_duplicates("Image Index").set_index("Image Index")
        known = frame["image_index"].isin(entries.index)
        rows = entries.loc[frame.loc[known, "image_index"]]
        frame.loc[known, "view"] = rows["View Position"].map(normalize_view).values
        frame.loc[known, "sex"] = rows["Patient Gender"].map(normalize_sex).values
        frame.loc[known, "age"] = pd.Series([parse_age(v) for v in rows["Patient Age"]], dtype=object).values
        frame.loc[known, "labels"] = pd.Series(
            [normalize_findings(str(s).split("|")) for s in rows["Finding Labels"].fillna("")], dtype=object).values
        report.notes.append(f"{int(known.sum())} images joined to {entries_path.name} (age, sex, view, findings)")

    given = dict(patient_splits or {})
    shared = frame["patient_id"].isin(given.keys())
    strata = frame.assign(p=frame["label"].eq("pneumonia")).groupby("patient_id")["p"].max().astype(str).to_dict()
    assignment = assign_patient_splits(frame.loc[~shared, "patient_id"], {"validation": val_size, "test": test_size},
                                       seed=seed, strata=strata)
    frame["split"] = [given[p] if p in given else assignment[p] for p in frame["patient_id"]]
    report.notes.append(
        f"split by patient, stratified by label ({val_size:.0%} val, {test_size:.0%} test, seed {seed}); "
        f"{int(frame.loc[shared, 'patient_id'].nunique())} patients kept the split given for them (patient_splits)"
    )
    frame["source"] = "nih_cxr8"
    frame["prompt"] = row_prompts(frame)
    info = make_info(
        "Adult NIH ChestX-ray8 PA/AP radiographs, No Finding / Pneumonia (NLP-mined, noisy), with NIH image index and "
        "patient id.", NIH_CITATION, "https://nihcc.app.box.com/v/ChestXray-NIHCC", "other",
    )
    return assemble(frame, features=make_features({"image_index": Value("string")}), info=info, report=report,
                    strict=strict, check_images=check_images, num_proc=num_proc, max_samples=max_samples, seed=seed)

