"""Kermany pediatric pneumonia X-rays (`chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}`) and PneumoniaMNIST (`.npz`).

Kermany layout. The root may be the folder holding `train/` and `test/` (and optionally `val/`), or any parent of it
such as the unpacked archive (`chest_xray/`, `chest_xray/chest_xray/`, or `dataset/` as in the shared copy). Class
comes from the folder; patient id and pneumonia subtype from the file name:

* `person1_bacteria_1.jpeg` -> patient `person1`, subtype `bacterial`; `person1_virus_6.jpeg` -> `viral`;
* `IM-0115-0001.jpeg` -> patient `IM-0115`; `NORMAL2-IM-1427-0001.jpeg` -> patient `NORMAL2-IM-1427` (the
  `NORMAL2-` files are a second, separately numbered batch, so the prefix stays part of the id).

Splits. The official `test/` split is kept as published. When there is no `val/` folder (or `use_official_val=False`:
the official val has only 16 images), a validation split is carved from `train/` by patient, stratified by class
(`val_size` of the patients of each class, seeded). When there is no `test/` folder (e.g. `kermany_fullres_512`, the
full-resolution originals of the official train split only), a test split is carved from `train/` the same way
(`test_size` of the patients of each class, seeded, in the same draw as validation), and `report.notes` says so;
`test_size=0` leaves the dataset without a test split. Only `train/` is required.

Official train/test overlap. In the published data 170 `personNNN` ids occur in both train and test (320 of the 390
test pneumonia images); no NORMAL id does. Train and test start their person numbering at 1 and the collision rate
(84% of test ids) is what two independent numberings of this size give, and e.g. `person1` is bacterial in train but
viral in test: the numbers are most likely per-split counters, not shared patients. `test_overlap` decides:
`"keep"` (default) keeps the official split, reports the count in `report.notes`, and never puts such an id into the
carved validation split (so validation is disjoint from test under either reading); `"drop"` removes those ids'
images from train; `"error"` raises. Splits created here (train vs validation) are always patient-disjoint.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import datasets
from datasets import Value

from ..errors import DataError
from ._assemble import assemble, make_info, row_prompts, subsample
from .checks import IMAGE_EXTENSIONS, LoadReport, require_dir, require_file
from .citations import BIBTEX
from .schema import frame_to_dataset_dict, make_features
from .splits import OVERLAP_POLICIES, assign_patient_splits, shared_patients

__all__ = ["find_kermany_root", "kermany_patient_id", "load_pneumonia", "load_pneumoniamnist"]

KERMANY_CITATION = BIBTEX["kermany"]
MEDMNIST_CITATION = BIBTEX["medmnist"]

CLASSES = ("NORMAL", "PNEUMONIA")
_OFFICIAL = {"train": "train", "val": "validation", "test": "test"}
_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)?", re.IGNORECASE)
_NORMAL = re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-", re.IGNORECASE)
_SUBTYPE = {"bacteria": "bacterial", "virus": "viral"}

EXTRA_FEATURES = {
    "subtype": Value("string"),
    "official_split": Value("string"),
    "file_name": Value("string"),
}


def kermany_patient_id(file_name: str) -> tuple[str, str]:
    """`(patient_id, subtype)` from a Kermany file name; the stem when the name has neither pattern."""
    match = _PERSON.match(file_name)
    if match:
        return match.group(1).lower(), _SUBTYPE.get((match.group(2) or "").lower(), "")
    match = _NORMAL.match(file_name)
    if match:
        return match.group(1).upper(), ""
    return Path(file_name).stem, ""


def _is_split_holder(folder: Path) -> bool:
    return (folder / "train").is_dir() and any((folder / "train" / c).is_dir() for c in CLASSES)


def find_kermany_root(root: str | os.PathLike) -> Path:
    """The folder that holds `train/` (and `test/`, `val/`), searched up to three levels below `root`."""
    root = require_dir(root, "Kermany root")
    queue = [(root, 0)]
    while queue:
        folder, depth = queue.pop(0)
        if _is_split_holder(folder):
            return folder
        if depth < 3:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith((".", "__MACOSX")))
            queue.extend((c, depth + 1) for c in children)
    raise DataError(
        f"No Kermany layout under {root}: expected a folder train/ with NORMAL/ and PNEUMONIA/ (for example "
        f"chest_xray/train/NORMAL)."
    )


def load_pneumonia(
    root: str | os.PathLike,
    *,
    val_size: float = 0.1,
    test_size: float = 0.1,
    use_official_val: bool = True,
    test_overlap: str = "keep",
    seed: int = 0,
    check_images: str = "header",
    strict: bool = False,
    num_proc: int | None = 1,
    max_samples: int | None = None,
) -> datasets.DatasetDict:
    """Load the Kermany pediatric chest X-ray set (NORMAL / PNEUMONIA) as a `DatasetDict` of the common schema.

    Args:
        root: the unpacked dataset (see the module docstring for the accepted layouts).
        val_size: share of train patients carved into `validation` when there is no official val folder.
        test_size: share of train patients carved into `test` when there is no `test/` folder (ignored otherwise).
        use_official_val: use `val/` when present; False carves validation from train instead.
        test_overlap: `keep`, `drop` or `error` for patient ids shared by the official splits (module docstring).
        seed: seed of the validation (and test) carve and of `max_samples`.
        check_images: `none`, `exists`, `header` (default) or `full`, see `checks.find_bad_images`.
        strict: raise instead of skipping unreadable images.
        num_proc: threads for the image check.
        max_samples: keep at most this many images per split (quick tests).

    Columns: the common ones (labels `[]` or `["pneumonia"]`, view "" since it is not recorded, age None: the
    children are 1-5 years old) plus `subtype` (`bacterial`, `viral` or ""), `official_split` and `file_name`.
    Images are file paths, decoded lazily.
    """
    import pandas as pd

    if test_overlap not in OVERLAP_POLICIES:
        raise DataError(f"test_overlap must be one of {', '.join(OVERLAP_POLICIES)}, not {test_overlap!r}.")
    holder = find_kermany_root(root).resolve()
    report = LoadReport("kermany", str(holder))
    rows = []
    for official in ("train", "val", "test"):
        for label in CLASSES:
            folder = holder / official / label
            if not folder.is_dir():
                continue
            for name in sorted(os.listdir(folder)):
                if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                patient, subtype = kermany_patient_id(name)
                rows.append(
                    {
                        "image": os.path.join(folder, name),
                        "file_name": name,
                        "official_split": official,
                        "class": label,
                        "patient_id": patient,
                        "subtype": subtype if label == "PNEUMONIA" else "",
                    }
                )
    frame = pd.DataFrame(rows, columns=["image", "file_name", "official_split", "class", "patient_id", "subtype"])
    report.start("images in train/val/test NORMAL/PNEUMONIA folders", len(frame))
    if not (frame["official_split"] == "train").any():
        raise DataError(f"The Kermany folder {holder / 'train'} has no NORMAL/PNEUMONIA images.")
    has_test = bool((frame["official_split"] == "test").any())

    has_val = use_official_val and (frame["official_split"] == "val").any()
    if not use_official_val:
        frame = report.keep(frame, frame["official_split"] != "val", "official val dropped (use_official_val=False)")
    frame["split"] = frame["official_split"].map(_OFFICIAL)

    # patient ids shared by the official splits
    official_ids = {s: frame.loc[frame["split"] == s, "patient_id"].tolist() for s in ("train", "validation", "test")}
    overlaps = shared_patients(official_ids)
    allowed = []
    test_ids = set(frame.loc[frame["split"] == "test", "patient_id"])
    for (a, b), common in overlaps.items():
        images = int((frame["patient_id"].isin(common) & frame["split"].isin([a, b])).sum())
        note = f"{len(common)} patient ids occur in both official {a} and {b} ({images} images)"
        if test_overlap == "error":
            examples = ", ".join(sorted(common)[:5])
            raise DataError(f"Duplicate patient ids across the official Kermany splits: {note} (e.g. {examples}).")
        if test_overlap == "drop":
            side = a if a != "test" else b
            frame = report.keep(
                frame, ~(frame["patient_id"].isin(common) & (frame["split"] == side)), f"{note}: dropped from {side}"
            )
            report.notes.append(note + f"; dropped from {side} (test_overlap='drop')")
        else:
            allowed.append((a, b))
            report.notes.append(note + "; kept (test_overlap='keep')")

    fractions = {}
    if not has_val and val_size > 0:
        fractions["validation"] = val_size
    if not has_test and test_size > 0:
        fractions["test"] = test_size
    if fractions:
        train = frame[frame["split"] == "train"]
        strata = dict(zip(train["patient_id"], train["class"]))
        assignment = assign_patient_splits(train["patient_id"], fractions, seed=seed, strata=strata, exclude=test_ids)
        carved = frame["split"] == "train"
        frame.loc[carved, "split"] = frame.loc[carved, "patient_id"].map(assignment)
        if "validation" in fractions:
            report.notes.append(
                f"validation carved from official train by patient ({val_size:.0%} per class, seed {seed})"
            )
    if not has_test:
        report.notes.append(
            f"no official test folder: test carved from official train by patient ({test_size:.0%} per class, "
            f"seed {seed})" if test_size > 0 else "no official test folder and test_size=0: no test split"
        )

    frame["labels"] = [["pneumonia"] if c == "PNEUMONIA" else [] for c in frame["class"]]
    frame["view"] = ""
    frame["sex"] = ""
    frame["age"] = None
    frame["source"] = "kermany"
    frame["prompt"] = row_prompts(frame)
    info = make_info(
        "Kermany et al. pediatric chest X-rays (Guangzhou Women and Children's Medical Center), normal vs "
        "pneumonia with bacterial/viral subtype.",
        KERMANY_CITATION,
        "https://data.mendeley.com/datasets/rscbjbr9sj/2",
        "cc-by-4.0",
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
        allowed_overlaps=allowed,
    )


# --------------------------------------------------------------------------------------------- PneumoniaMNIST

_NPZ_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def load_pneumoniamnist(
    npz_path: str | os.PathLike, *, max_samples: int | None = None, seed: int = 0
) -> datasets.DatasetDict:
    """Load PneumoniaMNIST (MedMNIST v2) from its `.npz` file as a `DatasetDict` of the common schema.

    The file holds `{train,val,test}_images` (N, H, W) uint8 and `{train,val,test}_labels` (N, 1), 0 = normal,
    1 = pneumonia. A folder is accepted when it holds exactly one `.npz` file (or `pneumoniamnist.npz`). The images
    are small arrays, so they are stored as PNG bytes. PneumoniaMNIST has no patient ids (`patient_id` is "") and
    its official splits are kept; they derive from the Kermany split (see `load_pneumonia`).
    """
    import numpy as np
    import pandas as pd
    import PIL.Image

    path = Path(npz_path).expanduser()
    if path.is_dir():
        candidates = sorted(path.glob("*.npz"))
        named = [c for c in candidates if c.name == "pneumoniamnist.npz"]
        if named:
            path = named[0]
        elif len(candidates) == 1:
            path = candidates[0]
        else:
            raise DataError(
                f"The folder {path} holds {len(candidates)} .npz files; pass the PneumoniaMNIST .npz file itself."
            )
    path = require_file(path, "PneumoniaMNIST file")
    try:
        archive = np.load(path)
    except (OSError, ValueError) as err:
        raise DataError(f"The PneumoniaMNIST file {path} cannot be read ({err}).") from None
    report = LoadReport("pneumoniamnist", str(path))
    rows = []
    with archive:
        present = [s for s in _NPZ_SPLITS if f"{s}_images" in archive.files]
        if not present:
            raise DataError(f"The file {path} lacks the arrays 'train_images' and 'train_labels'.")
        for split in present:
            if f"{split}_labels" not in archive.files:
                raise DataError(f"The file {path} lacks the array '{split}_labels'.")
            images, labels = archive[f"{split}_images"], archive[f"{split}_labels"].reshape(-1)
            if len(images) != len(labels):
                raise DataError(f"The file {path} has {len(images)} {split} images but {len(labels)} labels.")
            for index, (image, label) in enumerate(zip(images, labels)):
                rows.append({"array": image, "label": int(label), "split": _NPZ_SPLITS[split], "index": index})
    frame = pd.DataFrame(rows)
    report.start("images in the .npz file", len(frame))
    frame = subsample(frame, max_samples, seed).sort_values(["split", "index"], kind="stable")

    def png(array) -> dict:
        buffer = io.BytesIO()
        PIL.Image.fromarray(np.asarray(array, dtype=np.uint8).squeeze()).convert("L").save(buffer, "PNG")
        return {"bytes": buffer.getvalue(), "path": None}

    frame["image"] = [png(a) for a in frame["array"]]
    frame["labels"] = [["pneumonia"] if label == 1 else [] for label in frame["label"]]
    frame["view"], frame["sex"], frame["age"], frame["patient_id"] = "", "", None, ""
    frame["source"] = "pneumoniamnist"
    frame["prompt"] = row_prompts(frame)
    info = make_info(
        "PneumoniaMNIST (MedMNIST v2): Kermany pediatric chest X-rays resized to 28x28, normal vs pneumonia.",
        MEDMNIST_CITATION + "\n" + KERMANY_CITATION,
        "https://medmnist.com/",
        "cc-by-4.0",
    )
    features = make_features({"index": Value("int32")})
    dsd = frame_to_dataset_dict(frame, features, info=info)
    report.splits = {name: len(ds) for name, ds in dsd.items()}
    dsd.report = report
    return dsd
