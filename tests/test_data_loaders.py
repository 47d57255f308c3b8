"""Loaders on the real shared data (`../shared/data`, skipped when absent) and on the shipped fixtures.

The expected counts are those of each folder's SOURCE.txt. Every loader's splits are checked to be
patient-disjoint. Real Indiana images are not available on these machines: the Indiana tests read the real CSVs and
annotation file and write small stand-in PNGs under the referenced file names.
"""

import io
import json
import shutil
import warnings
from collections import Counter

import pytest
from PIL import Image

from cxr_diffusers.data import (
    COMMON_COLUMNS,
    FINDINGS,
    DataWarning,
    check_patient_disjoint,
    load_covid_notes,
    load_image_folder,
    load_indiana,
    load_nih,
    load_nih_subset,
    load_pneumonia,
    load_pneumoniamnist,
)

pytestmark = pytest.mark.filterwarnings("ignore::cxr_diffusers.data.DataWarning")


def _total(dsd):
    return sum(len(ds) for ds in dsd.values())


def _check_schema(dsd, source):
    for ds in dsd.values():
        assert ds.column_names[: len(COMMON_COLUMNS)] == list(COMMON_COLUMNS)
        assert ds.features["image"].mode == "L"
        assert set(ds.unique("source")) == {source}
        for labels in ds["labels"]:
            assert set(labels) <= set(FINDINGS)
        assert all(isinstance(p, str) and p for p in ds["prompt"])
    check_patient_disjoint(dsd, allowed=dsd.report.allowed_overlaps)
    first = next(iter(dsd.values()))[0]
    assert first["image"].mode == "L"


def _patients(ds):
    return {p for p in ds["patient_id"] if p}


# ---------------------------------------------------------------------------------------------------- Kermany


@pytest.fixture(scope="module")
def kermany(shared_data):
    return load_pneumonia(shared_data / "kermany_pneumonia_224")


def test_kermany_counts_match_source(kermany, shared_data):
    # SOURCE.txt: train/NORMAL 1341, train/PNEUMONIA 3875, test/NORMAL 234, test/PNEUMONIA 390 -> 5840
    assert _total(kermany) == 5840
    assert len(kermany["test"]) == 624
    assert len(kermany["train"]) + len(kermany["validation"]) == 5216
    test_labels = Counter(bool(x) for x in kermany["test"]["labels"])
    assert test_labels == {False: 234, True: 390}
    official_train = list(kermany["train"]["labels"]) + list(kermany["validation"]["labels"])
    assert Counter(bool(x) for x in official_train) == {False: 1341, True: 3875}
    _check_schema(kermany, "kermany")
    # the root may also be the folder that holds train/ and test/
    again = load_pneumonia(shared_data / "kermany_pneumonia_224" / "dataset", check_images="none", max_samples=5)
    assert set(again) == {"train", "validation", "test"}


def test_kermany_validation_is_carved_by_patient_and_stratified(kermany):
    train, val, test = (_patients(kermany[s]) for s in ("train", "validation", "test"))
    assert not train & val and not val & test
    share = len(val) / (len(train) + len(val))
    assert 0.08 < share < 0.12
    val_classes = Counter(bool(x) for x in kermany["validation"]["labels"])
    assert val_classes[False] > 50 and val_classes[True] > 50
    # official train/test share 170 person ids (numbered independently per split): kept and reported
    assert len(train & test) == 170
    assert any("170 patient ids" in note for note in kermany.report.notes)
    assert ("train", "test") in kermany.report.allowed_overlaps


def test_kermany_subtype_and_patient_from_file_names(kermany):
    rows = kermany["test"].select_columns(["file_name", "patient_id", "subtype", "labels", "prompt"])
    by_name = {r["file_name"]: r for r in rows}
    row = by_name["person100_bacteria_475.jpeg"]
    assert row["patient_id"] == "person100" and row["subtype"] == "bacterial" and row["labels"] == ["pneumonia"]
    assert row["prompt"] == "Pediatric chest radiograph. Findings: bacterial pneumonia."
    assert by_name["IM-0001-0001.jpeg"]["patient_id"] == "IM-0001"
    assert Counter(kermany["train"]["subtype"])["viral"] > 500


def test_kermany_overlap_options(shared_data):
    root = shared_data / "kermany_pneumonia_224"
    dropped = load_pneumonia(root, test_overlap="drop", check_images="none")
    assert not _patients(dropped["train"]) & _patients(dropped["test"])
    assert len(dropped["test"]) == 624
    from cxr_diffusers.errors import DataError

    with pytest.raises(DataError, match="170 patient ids"):
        load_pneumonia(root, test_overlap="error", check_images="none")


def test_kermany_does_not_decode_images(shared_data, monkeypatch):
    import PIL.Image

    calls = []
    original = PIL.Image.Image.load
    monkeypatch.setattr(PIL.Image.Image, "load", lambda self: calls.append(1) or original(self))
    dsd = load_pneumonia(shared_data / "kermany_pneumonia_224", check_images="header")
    assert _total(dsd) == 5840 and not calls  # header check only, pixels are decoded on access
    dsd["train"][0]["image"]
    assert calls


# ------------------------------------------------------------------------------------------ PneumoniaMNIST


def _kermany_layout(fixtures_dir, root, splits=("train",), patients=12):
    """A Kermany layout of copies of the shipped fixture images under real-style file names: per split, `patients`
    NORMAL patients (one image each) and `patients` PNEUMONIA patients (two images each, bacterial or viral)."""
    source = fixtures_dir / "kermany"
    if not source.is_dir():
        pytest.skip("tests/fixtures/kermany not present")
    normal = next((source / "NORMAL").glob("*.jpeg"))
    sick = next((source / "PNEUMONIA").glob("*.jpeg"))
    for offset, split in enumerate(splits):
        (root / split / "NORMAL").mkdir(parents=True)
        (root / split / "PNEUMONIA").mkdir(parents=True)
        for i in range(patients):
            number = 100 * offset + i + 1
            shutil.copy(normal, root / split / "NORMAL" / f"IM-{number:04d}-0001.jpeg")
            kind = "bacteria" if i % 2 else "virus"
            for image in range(2):
                shutil.copy(sick, root / split / "PNEUMONIA" / f"person{number}_{kind}_{10 * number + image}.jpeg")
    return root


def test_kermany_without_test_folder_carves_test_by_patient(fixtures_dir, tmp_path):
    """kermany_fullres_512 holds only train/: test (and validation) are carved from it by patient, per class."""
    root = _kermany_layout(fixtures_dir, tmp_path / "chest_xray", splits=("train",), patients=20)
    dsd = load_pneumonia(root, check_images="none", test_size=0.2, val_size=0.1, seed=3)
    assert set(dsd) == {"train", "validation", "test"}
    _check_schema(dsd, "kermany")
    check_patient_disjoint(dsd)  # nothing allowed: carved splits never share a patient
    assert dsd.report.allowed_overlaps == []
    assert _total(dsd) == 60
    for split, per_class in (("test", 4), ("validation", 2)):  # 20% / 10% of the 20 patients of each class
        ds = dsd[split]
        classes = Counter(("pneumonia" in labels, p) for labels, p in zip(ds["labels"], ds["patient_id"]))
        assert sum(1 for sick, _ in classes if sick) == per_class and sum(1 for sick, _ in classes if not sick) == per_class
        assert set(ds["official_split"]) == {"train"}
    assert any("no official test folder: test carved from official train by patient (20% per class, seed 3)" in n
               for n in dsd.report.notes)  # fmt: skip
    # images of one patient stay together (the pneumonia patients have two each)
    for ds in dsd.values():
        counts = Counter(p for p, labels in zip(ds["patient_id"], ds["labels"]) if labels)
        assert set(counts.values()) <= {2}
    # seeded: the same seed gives the same split, another seed another one
    again = load_pneumonia(root, check_images="none", test_size=0.2, val_size=0.1, seed=3)
    assert sorted(again["test"]["file_name"]) == sorted(dsd["test"]["file_name"])
    other = load_pneumonia(root, check_images="none", test_size=0.2, val_size=0.1, seed=4)
    assert sorted(other["test"]["file_name"]) != sorted(dsd["test"]["file_name"])
    # test_size=0: no test split, and a note that says so
    none = load_pneumonia(root, check_images="none", test_size=0)
    assert "test" not in none and any("test_size=0" in n for n in none.report.notes)


def test_kermany_official_test_folder_is_kept_as_published(fixtures_dir, tmp_path):
    root = _kermany_layout(fixtures_dir, tmp_path / "chest_xray", splits=("train", "test"), patients=10)
    dsd = load_pneumonia(root, check_images="none")
    on_disk = sorted(p.name for p in (root / "test").glob("*/*.jpeg"))
    assert sorted(dsd["test"]["file_name"]) == on_disk
    assert set(dsd["validation"]["official_split"]) == {"train"}
    assert not any("no official test folder" in n for n in dsd.report.notes)
    # test_size only applies when there is no test folder
    other = load_pneumonia(root, check_images="none", test_size=0.5)
    for split in dsd:
        assert sorted(other[split]["file_name"]) == sorted(dsd[split]["file_name"])
    shutil.rmtree(root / "train")
    with pytest.raises(Exception, match="train"):
        load_pneumonia(root, check_images="none")


def test_kermany_fullres_carved_test(shared_data):
    root = shared_data / "kermany_fullres_512"
    if not root.is_dir():
        pytest.skip("kermany_fullres_512 not present")
    dsd = load_pneumonia(root, check_images="none")
    assert _total(dsd) == 803 and set(dsd) == {"train", "validation", "test"}
    check_patient_disjoint(dsd)
    assert 60 <= len(dsd["test"]) <= 110
    assert any("no official test folder" in n for n in dsd.report.notes)


def test_pneumoniamnist_official_counts(shared_data):
    dsd = load_pneumoniamnist(shared_data / "pneumoniamnist_28" / "pneumoniamnist_reconstructed_official_counts.npz")
    assert {k: len(v) for k, v in dsd.items()} == {"train": 4708, "validation": 524, "test": 624}
    assert Counter(bool(x) for x in dsd["train"]["labels"]) == {False: 1214, True: 3494}
    assert Counter(bool(x) for x in dsd["test"]["labels"]) == {False: 234, True: 390}
    image = dsd["train"][0]["image"]
    assert image.mode == "L" and image.size == (28, 28)
    assert dsd["train"].unique("source") == ["pneumoniamnist"]


# --------------------------------------------------------------------------------------------------- NIH


@pytest.fixture(scope="module")
def nih1000(shared_data):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dsd = load_nih(shared_data / "nih1000_64", labels_dir=shared_data / "nih_cxr14_labels")
    dsd.caught = [w for w in caught if issubclass(w.category, DataWarning)]
    return dsd


def test_nih_counts_and_official_split(nih1000):
    # SOURCE.txt: all 1000 NIH1000 images are in the (truncated, 40,000-row) Data_Entry_2017.csv
    assert _total(nih1000) == 1000
    assert len(nih1000["train"]) + len(nih1000["validation"]) == 690  # in train_val_list.txt
    assert len(nih1000["test"]) == 310  # not in train_val_list.txt = official test
    assert set(nih1000["test"]["official_split"]) == {"test"}
    _check_schema(nih1000, "nih")
    train, val, test = (_patients(nih1000[s]) for s in ("train", "validation", "test"))
    assert not (train & val or train & test or val & test)
    assert len(train | val | test) == 264


def test_nih_truncated_label_file_is_reported_not_fatal(nih1000, shared_data):
    report = nih1000.report
    assert len(report.missing_images) == 39000 and not report.unmatched_images
    assert len(nih1000.caught) == 1 and "39000 rows without an image file" in str(nih1000.caught[0].message)
    from cxr_diffusers.errors import DataError

    with pytest.raises(DataError, match="39000 rows without an image file"):
        load_nih(shared_data / "nih1000_64", labels_dir=shared_data / "nih_cxr14_labels", strict=True)


def test_nih_labels_demographics_and_boxes(nih1000):
    rows = {r["image_index"]: r for ds in nih1000.values() for r in ds.remove_columns("image")}
    first = rows["00000231_013.png"]
    assert first["labels"] == [] and first["finding_labels"] == "No Finding"
    assert (first["age"], first["sex"], first["view"]) == (56, "female", "PA")
    assert first["prompt"] == "PA chest radiograph of a 56 year old female. No acute cardiopulmonary abnormality."
    counts = Counter(label for r in rows.values() for label in r["labels"])
    assert counts["pleural effusion"] == 170 and counts["hernia"] == 9 and len(counts) == 14
    assert sum(len(r["bboxes"]) for r in rows.values()) == 9  # BBox_List_2017.csv rows for NIH1000 images
    boxed = next(r for r in rows.values() if r["bboxes"])
    assert set(boxed["bboxes"][0]) == {"label", "x", "y", "w", "h"}


def test_nih_full_resolution_images(shared_data):
    dsd = load_nih(shared_data / "nih_cxr14_labels", views=("PA", "AP"))
    assert _total(dsd) == 24  # SOURCE.txt: 24 original images, all in Data_Entry_2017.csv
    image = dsd["train"][0]["image"]
    assert image.mode == "L" and image.size == (1024, 1024)


def test_nih_subset_counts_and_patient_split(shared_data):
    dsd = load_nih_subset(shared_data / "nih_subset_300")
    # SOURCE.txt: this copy holds healthy 653, pneumonia 237, covid 98 = 988 images
    assert _total(dsd) == 988
    classes = Counter(c for ds in dsd.values() for c in ds["class_name"])
    assert classes == {"healthy": 653, "pneumonia": 237, "covid": 98}
    _check_schema(dsd, "nih_subset")
    for split in ("validation", "test"):
        assert Counter(dsd[split]["class_name"])["covid"] > 3


# ------------------------------------------------------------------------------------------------- Indiana


def _stand_in_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 90).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def indiana_kaggle(shared_data, tmp_path_factory):
    """The real Kaggle CSVs with stand-in PNGs (real Indiana images are not available here)."""
    import pandas as pd

    root = tmp_path_factory.mktemp("indiana")
    src = shared_data / "iu_xray_reports"
    for name in ("indiana_reports.csv", "indiana_projections.csv"):
        shutil.copy(src / name, root / name)
    images = root / "images" / "images_normalized"
    images.mkdir(parents=True)
    png = _stand_in_png()
    for name in pd.read_csv(src / "indiana_projections.csv")["filename"]:
        (images / name).write_bytes(png)
    return root


def test_indiana_kaggle_counts(indiana_kaggle):
    dsd = load_indiana(indiana_kaggle)
    # SOURCE.txt: projections 7466 rows (Frontal 3818 / Lateral 3648), 3851 reports
    assert _total(dsd) == 7466
    assert Counter(v for ds in dsd.values() for v in ds["view"]) == {"frontal": 3818, "lateral": 3648}
    assert len(set().union(*(_patients(ds) for ds in dsd.values()))) == 3851
    _check_schema(dsd, "indiana")
    frontal = load_indiana(indiana_kaggle, frontal_only=True, check_images="exists")
    assert _total(frontal) == 3818


def test_indiana_prompts_are_cleaned_reports(indiana_kaggle):
    dsd = load_indiana(indiana_kaggle, check_images="none")
    rows = {r["uid"]: r for ds in dsd.values() for r in ds.remove_columns("image") if r["view"] == "frontal"}
    assert rows["1"]["prompt"].startswith("Frontal chest radiograph. Impression: Normal chest x-ray. Findings: ")
    assert rows["2"]["labels"] == ["cardiomegaly", "enlarged pulmonary artery"]
    prompts = [r["prompt"] for r in rows.values()]
    assert not any("XXXX" in p for p in prompts)
    assert sum(1 for r in rows.values() if r["labels"]) > 2000


def test_indiana_r2gen_layout(shared_data, tmp_path):
    src = shared_data / "iu_xray_reports"
    shutil.copy(src / "annotation_MRG_RL.json", tmp_path / "annotation.json")
    annotation = json.loads((tmp_path / "annotation.json").read_text())
    (tmp_path / "images").mkdir()
    png = _stand_in_png()
    for entries in annotation.values():
        for entry in entries:
            for name in entry["image_path"]:
                (tmp_path / "images" / name).write_bytes(png)
    dsd = load_indiana(tmp_path, check_images="exists")
    # SOURCE.txt: R2Gen splits train 3062 / val 382 / test 382 studies
    assert {s: len(_patients(ds)) for s, ds in dsd.items()} == {"train": 3062, "validation": 382, "test": 382}
    assert _total(dsd) == sum(len(e["image_path"]) for v in annotation.values() for e in v)
    _check_schema(dsd, "indiana")
    # with the Kaggle CSVs beside it, projections and MeSH labels are joined
    for name in ("indiana_reports.csv", "indiana_projections.csv"):
        shutil.copy(src / name, tmp_path / name)
    joined = load_indiana(tmp_path, layout="r2gen", frontal_only=True, check_images="none")
    assert 3700 < _total(joined) < 3818
    assert any(ds.filter(lambda r: bool(r), input_columns="labels").num_rows for ds in joined.values())


# --------------------------------------------------------------------------------------------------- COVID


def test_covid_counts_notes_and_labels(shared_data):
    root = shared_data / "covid_ieee8023_notes"
    everything = load_covid_notes(root, include_unlabelled=True)
    # SOURCE.txt: 591 of the 648 downsampled images in this copy
    assert _total(everything) == 591
    _check_schema(everything, "covid")
    labelled = load_covid_notes(root, check_images="none")
    todo = sum(1 for ds in everything.values() for f in ds["finding"] if f == "todo")
    assert _total(labelled) == 591 - todo and todo > 50
    rows = [r for ds in labelled.values() for r in ds.remove_columns("image")]
    assert Counter(tuple(r["labels"]) for r in rows)[("pneumonia", "covid-19")] > 350
    with_notes = [r for r in rows if r["clinical_notes"].strip()]
    assert len(with_notes) > 400
    row = with_notes[0]
    assert row["clinical_notes"].split()[0] in row["prompt"]
    assert any(r["prompt"].startswith("PA chest radiograph of a ") for r in rows)


# ------------------------------------------------------------------------------------------- shipped fixtures


def test_image_folder_with_label_from_folder(fixtures_dir, tmp_path):
    root = fixtures_dir / "kermany"
    if not root.is_dir():
        pytest.skip("tests/fixtures/kermany not present")
    dsd = load_image_folder(root, label_from_folder=True, source="kermany_fixture", cache_dir=tmp_path / "cache")
    ds = dsd["train"]
    assert len(ds) == 3
    by_class = Counter((c, tuple(labels)) for c, labels in zip(ds["class_name"], ds["labels"]))
    assert by_class == {("NORMAL", ()): 1, ("PNEUMONIA", ("pneumonia",)): 2}
    assert ds[0]["image"].mode == "L"  # RGB JPEG on disk


def test_image_folder_with_metadata(fixtures_dir, tmp_path):
    source = fixtures_dir / "nih"
    if not source.is_dir():
        pytest.skip("tests/fixtures/nih not present")
    root = tmp_path / "mine"
    shutil.copytree(source, root)
    names = sorted(p.name for p in root.glob("*.png"))
    lines = ["file_name,prompt,labels,sex,age,patient_id,hospital"]
    for i, name in enumerate(names):
        labels = "Pneumonia" if name.startswith("Pn") else ""
        prompt = "my own prompt" if i == 0 else ""
        lines.append(f"{name},{prompt},{labels},F,{40 + i},{name.split('_')[1]},A")
    (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    dsd = load_image_folder(root, cache_dir=tmp_path / "cache")
    rows = {r["file_name"]: r for r in dsd["train"].remove_columns("image")}
    assert len(rows) == len(names)
    assert rows[names[0]]["prompt"] == "my own prompt"
    pneumonia = next(r for n, r in rows.items() if n.startswith("Pn"))
    assert pneumonia["labels"] == ["pneumonia"] and pneumonia["sex"] == "female"
    assert pneumonia["prompt"].endswith("Findings: pneumonia.") and pneumonia["hospital"] == "A"


def test_nih_subset_flat_fixture_folder(fixtures_dir):
    root = fixtures_dir / "nih"
    if not root.is_dir():
        pytest.skip("tests/fixtures/nih not present")
    dsd = load_nih_subset(root, val_size=0, test_size=0)
    assert Counter(dsd["train"]["class_name"]) == {"healthy": 2, "pneumonia": 1}


def test_nih_original_format_on_fixtures(fixtures_dir, tmp_path):
    """A Data_Entry_2017.csv in the original format, written from the fixture's real label rows."""
    import pandas as pd

    root = fixtures_dir / "nih1000_64"
    if not root.is_dir():
        pytest.skip("tests/fixtures/nih1000_64 not present")
    labels = pd.read_csv(root / "labels.csv")
    entry = pd.DataFrame(
        {
            "Image Index": labels["path"].str.split("/").str[-1],
            "Finding Labels": labels["Finding Labels"],
            "Follow-up #": 0,
            "Patient ID": labels["Patient ID"],
            "Patient Age": labels["Patient Age"],
            "Patient Gender": labels["Patient Gender"],
            "View Position": labels["View Position"],
        }
    )
    images = tmp_path / "nih" / "images_001" / "images"
    images.mkdir(parents=True)
    for path in labels["path"]:
        shutil.copy(root / path, images)
    entry.to_csv(tmp_path / "nih" / "Data_Entry_2017.csv", index=False)
    dsd = load_nih(tmp_path / "nih", val_size=0, test_size=0)  # no split lists: test carved by patient (none here)
    assert _total(dsd) == len(labels)
    assert any("no official split lists" in n for n in dsd.report.notes)
    assert all(ds.features["image"].mode == "L" for ds in dsd.values())


def test_nih_cxr8_split_by_patient_across_folders(shared_data, tmp_path):
    """nih_cxr8_768 and nih_subset_300 share about 100 NIH patients: each keeps one split across both folders."""
    from cxr_diffusers.cli import main
    from cxr_diffusers.data import load_nih_cxr8, load_nih_subset, load_saved

    subset = load_nih_subset(shared_data / "nih_subset_300", check_images="exists")
    given = {p: split for split, ds in subset.items() for p in ds["patient_id"]}
    cxr8 = load_nih_cxr8(shared_data / "nih_cxr8_768", labels_dir=shared_data / "nih_cxr14_labels",
                         patient_splits=given, check_images="exists")
    assert sum(len(ds) for ds in cxr8.values()) == 871
    shared = 0
    for split, ds in cxr8.items():
        for patient in ds["patient_id"]:
            if patient in given:
                shared += 1
                assert given[patient] == split, patient
    assert shared > 50
    row = next(r for r in cxr8["train"].remove_columns("image") if r["age"] is not None)
    assert row["source"] == "nih_cxr8" and row["view"] in ("PA", "AP") and str(row["age"]) in row["prompt"]
    # data build passes the patients of earlier sources on to later ones
    out = tmp_path / "nih"
    assert main(["data", "build", "--source", "nih_subset", "--root", str(shared_data / "nih_subset_300"),
                 "--source", "nih_cxr8", "--root", str(shared_data / "nih_cxr8_768"), "--check-images", "exists",
                 "--out", str(out)]) == 0
    built = load_saved(out)
    splits_of: dict[str, set] = {}
    for split, ds in built.items():
        for patient in ds["patient_id"]:
            splits_of.setdefault(patient, set()).add(split)
    assert all(len(s) == 1 for s in splits_of.values())
    # --splits-from: the same nih_cxr8 splits without saving nih_subset's images
    only = tmp_path / "nih_only"
    assert main(["data", "build", "--splits-from", f"nih_subset={shared_data / 'nih_subset_300'}",
                 "--source", "nih_cxr8", "--root", str(shared_data / "nih_cxr8_768"), "--check-images", "exists",
                 "--out", str(only)]) == 0
    alone = load_saved(only)
    assert {s for ds in alone.values() for s in ds["source"]} == {"nih_cxr8"}
    for split, ds in alone.items():
        assert all(splits_of[patient] == {split} for patient in ds["patient_id"])
    assert main(["data", "build", "--splits-from", "nih_subset", "--source", "nih_cxr8", "--root", "x",
                 "--out", str(tmp_path / "bad")]) == 2


def test_jsrt_loader_with_masks(shared_data):
    from cxr_diffusers.data import load_jsrt

    data = load_jsrt(shared_data / "jsrt_768", check_images="exists")
    rows = [r for ds in data.values() for r in ds.remove_columns("image")]
    assert len(rows) == 247 and sum(bool(r["labels"]) for r in rows) == 154
    assert all(r["mask_left_lung"] and r["mask_heart"] for r in rows)
    assert {r["source"] for r in rows} == {"jsrt"} and rows[0]["prompt"].startswith("PA chest radiograph")
    assert len({r["patient_id"] for r in rows}) == 247 and set(data) == {"train", "validation", "test"}
