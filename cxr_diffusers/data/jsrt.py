"""JSRT: 247 adult PA chest radiographs (154 with a lung nodule, 93 without) with SCR lung and heart masks.

Layout (the `jsrt_768` copy): `images/<name>.jpg` (JPCLN### with a nodule, JPCNN### without) and, optionally,
`masks/{left_lung,right_lung,heart}/<name>.png`. Masks follow the radiological convention (the patient's left lung is
on the image's right). One radiograph per patient, so splits by image are splits by patient. Research and education
use only: train and evaluate on it, never ship its images.
"""

from __future__ import annotations

import os
import re

import datasets
from datasets import Value

from ..errors import DataError
from .citations import BIBTEX
from ._assemble import assemble, carve_patient_splits, make_info, row_prompts
from .checks import LoadReport, index_images, require_dir
from .schema import make_features

__all__ = ["MASK_PARTS", "load_jsrt"]

MASK_PARTS = ("left_lung", "right_lung", "heart")
_NAME = re.compile(r"^JPC(LN|NN)(\d{3})\.(jpe?g|png)$", re.IGNORECASE)


def load_jsrt(
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
    """Load JSRT as a `DatasetDict` of the common schema, split by patient (= image), stratified by nodule.

    Columns: the common ones (labels `["nodule"]` or `[]`, view `PA`, source `jsrt`) plus `file_name` and the mask
    paths `mask_left_lung`, `mask_right_lung`, `mask_heart` (None where a mask file is absent).
    """
    import pandas as pd

    root = require_dir(root, "JSRT root").resolve()
    images = root / "images" if (root / "images").is_dir() else root
    report = LoadReport("jsrt", str(root))
    index, _ = index_images([images], recursive=False)
    rows = []
    for name, path in sorted(index.items()):
        match = _NAME.match(name)
        if not match:
            report.unmatched_images.append(name)
            continue
        stem = os.path.splitext(name)[0]
        masks = {part: root / "masks" / part / f"{stem}.png" for part in MASK_PARTS}
        rows.append({
            "image": path, "file_name": name, "patient_id": f"jsrt-{stem}",
            "labels": ["nodule"] if match.group(1).upper() == "LN" else [],
            **{f"mask_{part}": str(p) if p.is_file() else None for part, p in masks.items()},
        })
    if not rows:
        raise DataError(f"No JSRT images (JPCLN###.jpg / JPCNN###.jpg) were found in {images}.")
    frame = pd.DataFrame(rows)
    report.start(f"JSRT images in {images}", len(frame))
    strata = {p: str(bool(labels)) for p, labels in zip(frame["patient_id"], frame["labels"])}
    frame["split"] = carve_patient_splits(frame["patient_id"], report, val_size=val_size, test_size=test_size,
                                          seed=seed, strata=strata,
                                          how="split by image (one per patient), stratified by nodule")  # fmt: skip
    frame["view"], frame["sex"], frame["source"] = "PA", "", "jsrt"
    frame["age"] = pd.Series([None] * len(frame), dtype=object)
    frame["prompt"] = row_prompts(frame)
    info = make_info("JSRT adult PA chest radiographs with SCR lung and heart masks (research and education use).",
                     BIBTEX["jsrt"], "http://db.jsrt.or.jp/eng.php", "other")
    features = make_features({"file_name": Value("string"),
                              **{f"mask_{part}": Value("string") for part in MASK_PARTS}})
    return assemble(frame, features=features, info=info, report=report, strict=strict, check_images=check_images,
                    num_proc=num_proc, max_samples=max_samples, seed=seed)
