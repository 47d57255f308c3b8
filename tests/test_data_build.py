"""Transforms, concatenation, saving with a dataset card, and the `cxr-diffusers data` CLI.

Uses the shipped fixtures (real X-rays in tests/fixtures) arranged into the original Kermany layout in tmp_path,
and the shared data where noted (skipped when absent).
"""

import shutil

import numpy as np
import pytest
import yaml
from PIL import Image

from cxr_diffusers.cli import main
from cxr_diffusers.data import (
    COMMON_COLUMNS,
    PromptBuilder,
    concatenate_sources,
    load_nih_subset,
    load_pneumonia,
    load_saved,
    resize_and_pad,
    save_dataset,
    with_resolution,
)
from cxr_diffusers.errors import DataError


@pytest.fixture()
def kermany_root(fixtures_dir, tmp_path):
    """The shipped Kermany fixtures (3 real images) in the original chest_xray/{train,test} layout."""
    source = fixtures_dir / "kermany"
    if not source.is_dir():
        pytest.skip("tests/fixtures/kermany not present")
    root = tmp_path / "chest_xray"
    for split in ("train", "test"):
        for label in ("NORMAL", "PNEUMONIA"):
            (root / split / label).mkdir(parents=True)
    for path in sorted(source.glob("*/*.jpeg")):
        split = "test" if path.name.startswith("person10_") else "train"
        shutil.copy(path, root / split / path.parent.name / path.name)
    shutil.copy(source / "NORMAL" / "IM-0001-0001.jpeg", root / "test" / "NORMAL" / "IM-0003-0001.jpeg")
    return root


@pytest.fixture()
def nih_fixture(fixtures_dir):
    root = fixtures_dir / "nih"
    if not root.is_dir():
        pytest.skip("tests/fixtures/nih not present")
    return root


# --------------------------------------------------------------------------------------------------- transforms


def test_resize_and_pad_keeps_aspect_ratio():
    image = Image.new("L", (200, 100), 255)
    out = resize_and_pad(image, 64)
    assert out.size == (64, 64) and out.mode == "L"
    array = np.asarray(out)
    assert array[:15].max() == 0 and array[-15:].max() == 0  # black padding above and below
    assert array[32, :].min() > 200  # image content across the full width
    tall = resize_and_pad(Image.new("RGB", (50, 100), (255, 255, 255)), (32, 64))  # (height, width)
    assert tall.size == (64, 32) and tall.mode == "L"
    square = Image.new("L", (64, 64), 7)
    assert resize_and_pad(square, 64).size == (64, 64)


def test_training_tensors_come_from_the_one_converter(nih_fixture):
    torch = pytest.importorskip("torch")
    from cxr_diffusers.data import to_tensor
    from cxr_diffusers.training_utils import image_to_tensor

    image = load_nih_subset(nih_fixture, val_size=0, test_size=0)["train"][0]["image"]
    x = image_to_tensor(image, 64)
    assert x.shape == (1, 64, 64) and x.dtype == torch.float32 and -1.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x, to_tensor(resize_and_pad(image, 64)))
    assert float(to_tensor(Image.new("L", (4, 4), 255)).min()) == 1.0 and float(to_tensor(Image.new("L", (4, 4))).max()) == -1.0


def test_with_resolution_is_lazy(nih_fixture):
    dsd = load_nih_subset(nih_fixture, val_size=0, test_size=0)
    ds = with_resolution(dsd["train"], 96)
    assert ds[0]["image"].size == (96, 96)
    assert dsd["train"][0]["image"].size == (300, 300)  # the data is untouched
    assert ds.column_names == dsd["train"].column_names


# ------------------------------------------------------------------------------------------ combine and save


def test_concatenate_sources_and_save_with_card(kermany_root, nih_fixture, tmp_path):
    kermany = load_pneumonia(kermany_root, val_size=0)
    nih = load_nih_subset(nih_fixture, val_size=0, test_size=0)
    combined = concatenate_sources([kermany, nih])
    assert combined["train"].column_names == list(COMMON_COLUMNS)
    assert len(combined["train"]) == len(kermany["train"]) + len(nih["train"])
    assert set(combined["train"]["source"]) == {"kermany", "nih_subset"}
    assert len(combined["test"]) == len(kermany["test"])
    wide = concatenate_sources({"k": kermany, "n": nih}, columns="all")
    assert {"subtype", "class_name"} <= set(wide["train"].column_names)
    assert wide["train"].filter(lambda s: s == "nih_subset", input_columns="source")["subtype"][0] is None

    out = save_dataset(combined, tmp_path / "saved", resolution=64, pretty_name="Test set")
    loaded = load_saved(out)
    assert {k: len(v) for k, v in loaded.items()} == {k: len(v) for k, v in combined.items()}
    image = loaded["train"][0]["image"]
    assert image.size == (64, 64) and image.mode == "L"
    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["license"] == "other" and front["pretty_name"] == "Test set"
    assert {s["name"]: s["num_examples"] for s in front["dataset_info"]["splits"]} == {
        k: len(v) for k, v in combined.items()
    }
    assert "Kermany" in front["citation"] and "Wang" in front["citation"]
    assert "kermany" in front["license_details"] and "## Prompt examples" in card
    with pytest.raises(DataError, match="not empty"):
        save_dataset(combined, out)
    save_dataset(combined, out, overwrite=True)  # original bytes, no resizing
    assert load_saved(out)["train"][0]["image"].size == (224, 224)


def test_concatenate_rejects_non_schema_and_load_saved_errors(tmp_path):
    import datasets

    bad = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [1]})})
    with pytest.raises(DataError, match="lacks the columns image, prompt"):
        concatenate_sources([bad])
    with pytest.raises(DataError, match="does not exist"):
        load_saved(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a saved dataset"):
        load_saved(tmp_path / "empty")


def test_concatenate_checks_patients_per_source(kermany_root, nih_fixture):
    kermany = load_pneumonia(kermany_root, val_size=0)
    # the same ids in two sources are different patients: no error
    concatenate_sources([kermany, load_nih_subset(nih_fixture, val_size=0, test_size=0)])
    moved = kermany["train"].select([0])
    clash = type(kermany)({"train": kermany["train"], "test": moved})
    clash.report = None
    with pytest.raises(DataError, match="Duplicate patient ids across splits"):
        concatenate_sources([clash])


def test_push_to_hub_is_one_call(kermany_root, monkeypatch):
    import datasets
    import huggingface_hub

    from cxr_diffusers.data import push_to_hub

    calls = {}
    monkeypatch.setattr(
        datasets.DatasetDict, "push_to_hub", lambda self, repo, **kw: calls.setdefault("data", (repo, kw))
    )
    monkeypatch.setattr(huggingface_hub.DatasetCard, "push_to_hub",
                        lambda self, repo, **kw: calls.setdefault("card", (repo, self.content)))  # fmt: skip
    push_to_hub(load_pneumonia(kermany_root, val_size=0), "me/cxr", private=True)
    assert calls["data"][0] == "me/cxr" and calls["data"][1]["private"] is True
    assert calls["card"][1].startswith("---\nlicense: cc-by-4.0")


# ------------------------------------------------------------------------------------------------------ CLI


def test_cli_build_and_info(kermany_root, tmp_path, capsys):
    out = tmp_path / "built"
    code = main(["data", "build", "--source", "pneumonia", "--root", str(kermany_root), "--out", str(out),
                 "--resolution", "32", "--num-proc", "1"])  # fmt: skip
    assert code == 0
    assert "saved 4 images (train 2, test 2)" in capsys.readouterr().out
    assert (out / "README.md").is_file()
    assert main(["data", "info", str(out), "--examples", "2"]) == 0
    text = capsys.readouterr().out
    assert "[train]" in text and "[test]" in text
    assert "image sizes: 32x32" in text and "labels: " in text and "Pediatric chest radiograph" in text


def test_cli_info_on_a_raw_source(nih_fixture, capsys):
    assert main(["data", "info", str(nih_fixture), "--source", "nih_subset", "--examples", "1"]) == 0
    assert "300x300" in capsys.readouterr().out


def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    code = main(["data", "build", "--source", "nih", "--root", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "does not exist" in errors[0]
    code = main(["data", "build", "--source", "nih", "--source", "covid", "--root", str(tmp_path), "--out", "o"])
    assert code == 2 and "one --root per --source" in capsys.readouterr().err
    assert main(["data", "info", str(tmp_path)]) == 2
    assert "not a saved dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_build_real_nih_subset(shared_data, tmp_path, capsys):
    out = tmp_path / "subset"
    code = main(["data", "build", "--source", "nih_subset", "--root", str(shared_data / "nih_subset_300"),
                 "--out", str(out), "--resolution", "64", "--max-samples", "40"])  # fmt: skip
    assert code == 0
    loaded = load_saved(out)
    assert sum(len(d) for d in loaded.values()) == 40 + 40 + 40
    assert loaded["train"][0]["image"].size == (64, 64)
