"""Bad input: missing root, file or column; unreadable and truncated images; shared patients; empty results.

These tests build small layouts in tmp_path with stand-in images (synthetic-free: plain grey PNG/JPEG files that
only exercise the file handling) and need no shared data.
"""

import io
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from cxr_diffusers.data import (
    DataWarning,
    assign_patient_splits,
    check_patient_disjoint,
    find_bad_images,
    load_covid_notes,
    load_image_folder,
    load_indiana,
    load_nih,
    load_nih_subset,
    load_pneumonia,
    load_pneumoniamnist,
)
from cxr_diffusers.errors import CXRInputError, DataError


def _image_bytes(fmt="PNG", size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", size, 100).save(buffer, fmt)
    return buffer.getvalue()


def _kermany(root, per_class=6):
    """A tiny Kermany layout: chest_xray/{train,test}/{NORMAL,PNEUMONIA}."""
    jpeg = _image_bytes("JPEG")
    for split in ("train", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            folder = root / "chest_xray" / split / label
            folder.mkdir(parents=True)
            for i in range(per_class):
                offset = 0 if split == "train" else 100
                name = (
                    f"IM-{offset + i:04d}-0001.jpeg" if label == "NORMAL" else f"person{offset + i}_bacteria_{i}.jpeg"
                )
                (folder / name).write_bytes(jpeg)
    return root


def test_data_error_is_a_value_error():
    assert issubclass(DataError, CXRInputError) and issubclass(DataError, ValueError)


@pytest.mark.parametrize(
    "loader", [load_pneumonia, load_nih, load_nih_subset, load_indiana, load_covid_notes, load_image_folder]
)
def test_missing_root_names_the_folder(loader, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match="nowhere.*does not exist"):
        loader(missing)


def test_missing_csv_is_named(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="Data_Entry_2017.csv is missing"):
        load_nih(tmp_path)
    with pytest.raises(DataError, match=r"metadata.csv is missing"):
        load_covid_notes(tmp_path)
    (tmp_path / "indiana_projections.csv").write_text("uid,filename,projection\n1,a.png,Frontal\n")
    with pytest.raises(DataError, match="indiana_reports.csv is missing"):
        load_indiana(tmp_path)
    with pytest.raises(DataError, match="PneumoniaMNIST file .*missing"):
        load_pneumoniamnist(tmp_path / "pneumoniamnist.npz")


def test_missing_columns_are_named(tmp_path):
    (tmp_path / "Data_Entry_2017.csv").write_text("Image Index,Finding Labels,Patient ID\n00000001_000.png,,1\n")
    with pytest.raises(DataError, match="'Patient Age', 'Patient Gender', 'View Position'"):
        load_nih(tmp_path)
    (tmp_path / "metadata.csv").write_text("patientid,finding,filename\n1,COVID-19,a.png\n")
    with pytest.raises(DataError, match="lacks the columns 'view', 'modality', 'sex', 'age', 'clinical_notes'"):
        load_covid_notes(tmp_path)
    (tmp_path / "indiana_reports.csv").write_text("uid,findings,impression\n1,a,b\n")
    (tmp_path / "indiana_projections.csv").write_text("uid,filename,projection\n1,a.png,Frontal\n")
    with pytest.raises(DataError, match="lacks the columns 'MeSH', 'Problems'"):
        load_indiana(tmp_path)
    np.savez(tmp_path / "bad.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match="lacks the array 'train_labels'"):
        load_pneumoniamnist(tmp_path / "bad.npz")


def test_wrong_layout_is_explained(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="No Kermany layout"):
        load_pneumonia(tmp_path)
    with pytest.raises(DataError, match="No Indiana layout"):
        load_indiana(tmp_path)
    with pytest.raises(DataError, match="no image files"):
        load_image_folder(tmp_path)
    (tmp_path / "annotation.json").write_text(json.dumps({"foo": []}))
    with pytest.raises(DataError, match="lacks the keys 'train', 'val' and 'test'"):
        load_indiana(tmp_path)


def test_truncated_and_unreadable_images_are_skipped_or_fatal(tmp_path):
    root = _kermany(tmp_path)
    train = root / "chest_xray" / "train" / "PNEUMONIA"
    good = (train / "person0_bacteria_0.jpeg").read_bytes()
    (train / "person0_bacteria_0.jpeg").write_bytes(good[: len(good) // 2])  # truncated
    (train / "person1_bacteria_1.jpeg").write_bytes(b"not an image at all")  # unreadable
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dsd = load_pneumonia(root, val_size=0)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 1 and "2 unreadable or truncated images skipped" in messages[0]
    assert "person0_bacteria_0.jpeg" in messages[0] and "person1_bacteria_1.jpeg" in messages[0]
    assert len(dsd["train"]) == 10 and len(dsd.report.bad_images) == 2
    with pytest.raises(DataError, match="2 unreadable or truncated images"):
        load_pneumonia(root, strict=True)


def test_truncated_png_is_detected(tmp_path):
    data = _image_bytes("PNG", (64, 64))
    (tmp_path / "ok.png").write_bytes(data)
    (tmp_path / "cut.png").write_bytes(data[:-20])
    (tmp_path / "empty.png").write_bytes(b"")
    paths = [str(tmp_path / n) for n in ("ok.png", "cut.png", "empty.png", "gone.png")]
    bad = find_bad_images(paths, "header")
    assert set(bad) == set(paths[1:])
    assert "truncated" in bad[paths[1]] and bad[paths[3]] == "missing"
    assert find_bad_images(paths, "none") == {}
    assert set(find_bad_images(paths, "full", num_proc=2)) == set(paths[1:])
    with pytest.raises(DataError, match="check_images must be one of"):
        find_bad_images(paths, "sometimes")


def test_duplicate_patients_across_splits_are_an_error():
    with pytest.raises(DataError, match="1 patients are in both train and test"):
        check_patient_disjoint({"train": ["a", "b"], "validation": ["c"], "test": ["b"]})
    check_patient_disjoint({"train": ["a", "b"], "test": ["b"]}, allowed=[("train", "test")])
    check_patient_disjoint({"train": ["", ""], "test": [""]})  # unknown ids are not compared


def test_patient_splits_are_deterministic_and_grouped():
    patients = [f"p{i // 3}" for i in range(300)]  # 100 patients, 3 images each
    first = assign_patient_splits(patients, {"validation": 0.1, "test": 0.2}, seed=1)
    again = assign_patient_splits(reversed(patients), {"validation": 0.1, "test": 0.2}, seed=1)
    assert first == again
    counts = {s: sum(1 for v in first.values() if v == s) for s in ("train", "validation", "test")}
    assert counts == {"train": 70, "validation": 10, "test": 20}
    other = assign_patient_splits(patients, {"validation": 0.1, "test": 0.2}, seed=2)
    assert other != first
    with pytest.raises(DataError, match="leave no patient"):
        assign_patient_splits(patients, {"validation": 0.5, "test": 0.5})


def test_empty_result_names_the_filter(tmp_path):
    (tmp_path / "indiana_reports.csv").write_text("uid,MeSH,Problems,findings,impression\n1,normal,normal,a,b\n")
    (tmp_path / "indiana_projections.csv").write_text("uid,filename,projection\n1,1_IM-0001-4001.dcm.png,Lateral\n")
    with pytest.raises(DataError, match="after the filter 'image file present'.*images_normalized"):
        load_indiana(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "1_IM-0001-4001.dcm.png").write_bytes(_image_bytes())
    assert sum(len(d) for d in load_indiana(tmp_path, val_size=0, test_size=0).values()) == 1
    with pytest.raises(DataError, match="after the filter 'frontal_only'"):
        load_indiana(tmp_path, frontal_only=True)


def test_covid_filters(tmp_path):
    header = "patientid,offset,sex,age,finding,view,modality,folder,filename,clinical_notes\n"
    rows = ["1,0,M,50,COVID-19,PA,CT,images,ct.png,", "2,0,F,60,todo,AP,X-ray,images,x.png,notes here"]
    (tmp_path / "metadata.csv").write_text(header + "\n".join(rows) + "\n")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.png").write_bytes(_image_bytes())
    with pytest.raises(DataError, match="labelled finding"):
        load_covid_notes(tmp_path)
    dsd = load_covid_notes(tmp_path, include_unlabelled=True, val_size=0, test_size=0)
    row = dsd["train"][0]
    assert row["labels"] == [] and row["finding"] == "todo" and row["prompt"].endswith("Notes here.")


def test_unknown_folder_label_is_an_error(tmp_path):
    (tmp_path / "weird").mkdir()
    (tmp_path / "weird" / "a.png").write_bytes(_image_bytes())
    with pytest.raises(DataError, match="'weird' is not a finding name"):
        load_image_folder(tmp_path, label_from_folder=True, cache_dir=tmp_path / ".cache")
    dsd = load_image_folder(tmp_path, label_map={"weird": ["opacity"]}, cache_dir=tmp_path / ".cache2")
    assert dsd["train"][0]["labels"] == ["opacity"]


def test_kermany_without_test_folder(tmp_path):
    root = _kermany(tmp_path)
    import shutil

    shutil.rmtree(root / "chest_xray" / "test")
    dsd = load_pneumonia(root, test_size=0.2)  # no test/ (as kermany_fullres_512): test carved by patient
    assert len(dsd["test"]) > 0
    assert any("no official test folder" in note for note in dsd.report.notes)
    shutil.rmtree(root / "chest_xray" / "train")
    with pytest.raises(DataError, match="No Kermany layout under"):
        load_pneumonia(root)


def test_kermany_official_val_folder_is_used(tmp_path):
    root = _kermany(tmp_path)
    val = root / "chest_xray" / "val" / "NORMAL"
    val.mkdir(parents=True)
    (val / "IM-0500-0001.jpeg").write_bytes(_image_bytes("JPEG"))
    dsd = load_pneumonia(root)
    assert len(dsd["validation"]) == 1 and dsd["validation"][0]["official_split"] == "val"
    carved = load_pneumonia(root, use_official_val=False, val_size=0.2)
    assert "val" not in set(carved["validation"]["official_split"])
