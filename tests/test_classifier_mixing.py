"""train_scripts/train_classifier.py: synthetic mixing and its duplicate-real control, several seeds (mean +- std),
bad arguments, PneumoniaMNIST. A few steps each (ResNet-18, 64 px) on a small saved sample of real X-rays."""

import json

import datasets
import pytest
from conftest import FIXTURES_DIR, REPO_ROOT, load_train_script, shared_data_dir
from PIL import Image

from cxr_diffusers.classification.metrics import METRICS
from cxr_diffusers.errors import DataError

TINY = str(REPO_ROOT / "train_scripts" / "configs" / "tiny.json")


@pytest.fixture(scope="module")
def script():
    return load_train_script("train_classifier", "train_scripts_train_classifier_mixing")


@pytest.fixture(scope="module")
def data_args(tmp_path_factory):
    """A saved DatasetDict of real X-rays (a Kermany sample, else the fixtures), quick to load."""
    kermany = shared_data_dir() / "kermany_pneumonia_224"
    folder = tmp_path_factory.mktemp("saved_xrays")
    if kermany.is_dir():
        from cxr_diffusers.data import load_pneumonia

        data = load_pneumonia(kermany, max_samples=24, check_images="exists")  # 24 images per split
    else:
        files = sorted(str(p) for p in (FIXTURES_DIR / "kermany").rglob("*.jpeg"))

        def split(n):
            rows = {"image": files * n, "labels": [["pneumonia"] if "PNEUMONIA" in f else [] for f in files] * n,
                    "patient_id": [f"p{i}" for i in range(len(files) * n)]}
            return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image(mode="L"))

        data = datasets.DatasetDict({"train": split(8), "validation": split(4), "test": split(4)})
    data.save_to_disk(folder)
    return ["--train_data_dir", str(folder)]


def _synthetic_folder(root, count):
    """A folder in the layout `cxr-diffusers synthesize` writes: data/0000/<index>.png and metadata.jsonl."""
    root.mkdir()
    sources = sorted((FIXTURES_DIR / "kermany").rglob("*.jpeg"))
    lines = []
    for i in range(count):
        source = sources[i % len(sources)]
        name = f"data/{i // 1000:04d}/{i:07d}.png"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(source).convert("L").resize((96, 96)).save(root / name)
        pneumonia = "PNEUMONIA" in str(source)
        prompt = ("Pediatric chest radiograph. Findings: pneumonia." if pneumonia
                  else "Pediatric chest radiograph. No acute cardiopulmonary abnormality.")
        lines.append(json.dumps({"file_name": name, "index": i, "prompt": prompt,
                                 "label": "pneumonia" if pneumonia else "normal",
                                 "labels": ["pneumonia"] if pneumonia else [], "seed": i, "filter_passed": None,
                                 "synthetic": True, "not_for_clinical_use": True}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.slow
def test_synthetic_mixing_with_seeds_and_the_duplicate_control(script, data_args, tmp_path):
    synthetic = _synthetic_folder(tmp_path / "synthetic", 16)
    fast = ["--config", TINY, *data_args, "--max_train_steps", "2", "--checkpointing_steps", "100",
            "--num_bootstrap", "10"]
    summary = script.main([*fast, "--output_dir", str(tmp_path / "mix"), "--synthetic_data_dir", str(synthetic),
                           "--synthetic_ratio", "0.5", "--seeds", "0", "1"])
    written = json.loads((tmp_path / "mix" / "metrics_summary.json").read_text())
    assert written["seeds"] == [0, 1] and set(written["test"]) == set(METRICS)
    for name in METRICS:
        values = written["test"][name]["values"]
        assert len(values) == 2 and written["test"][name]["mean"] == pytest.approx(sum(values) / 2)
    accuracies = summary["test"]["accuracy"]["values"]
    assert summary["test"]["accuracy"]["std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2 ** 0.5)
    counts = [json.loads((tmp_path / "mix" / f"seed-{s}" / "metrics.json").read_text())["data"]["train_counts"]
              for s in (0, 1)]
    real = counts[0]["real"]
    assert counts[0]["total"] == counts[1]["total"] and counts[0]["real"] == counts[1]["real"]
    assert counts[0]["synthetic"] == round(0.5 * real) and counts[0]["total"] == real + round(0.5 * real)
    card = (tmp_path / "mix" / "seed-0" / "model" / "README.md").read_text()
    assert f"{real} real + {round(0.5 * real)} synthetic" in card

    script.main([*fast, "--output_dir", str(tmp_path / "dup"), "--duplicate_real_ratio", "0.5",
                 "--final_model_dir", str(tmp_path / "shipped")])
    assert (tmp_path / "shipped" / "model.safetensors").is_file() and not (tmp_path / "dup" / "model").exists()
    assert str(tmp_path / "shipped") in (tmp_path / "shipped" / "README.md").read_text()
    control = json.loads((tmp_path / "dup" / "metrics.json").read_text())["data"]["train_counts"]
    assert control["duplicated_real"] == round(0.5 * real) and control["synthetic"] == 0
    assert control["total"] == counts[0]["total"]  # same number of samples as the synthetic arm


def test_bad_arguments_and_synthetic_folders(script, data_args, tmp_path):
    base = ["--config", TINY, *data_args, "--output_dir", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args([*base, "--synthetic_ratio", "0.5", "--duplicate_real_ratio", "0.5",
                           "--synthetic_data_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        script.parse_args([*base, "--synthetic_ratio", "0.5"])  # no folder
    with pytest.raises(SystemExit):
        script.parse_args([*base, "--model_config", "vgg"])
    with pytest.raises(SystemExit):
        script.parse_args([*base, "--seeds", "0", "1", "--final_model_dir", str(tmp_path / "m")])
    with pytest.raises(SystemExit):
        script.parse_args([*base, "--seeds", "0", "0"])
    assert script.parse_args([*base, "--model_config", "base"]).architecture == "resnet-50"
    (tmp_path / "no_manifest").mkdir()
    with pytest.raises(DataError, match="has no metadata.jsonl"):
        script.main([*base, "--synthetic_data_dir", str(tmp_path / "no_manifest"), "--synthetic_ratio", "0.5"])
    too_few = _synthetic_folder(tmp_path / "too_few", 2)
    with pytest.raises(DataError, match="only 2"):
        script.main([*base, "--synthetic_data_dir", str(too_few), "--synthetic_ratio", "1.0"])


@pytest.mark.slow
def test_pneumoniamnist_28px(script, shared_data, tmp_path):
    npz = shared_data / "pneumoniamnist_28" / "pneumoniamnist_reconstructed_official_counts.npz"
    script.main(["--config", TINY, "--train_data_dir", str(npz), "--resolution", "28", "--max_train_steps", "2",
                 "--checkpointing_steps", "100", "--num_bootstrap", "10", "--output_dir", str(tmp_path)])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["data"]["dataset"] == "pneumoniamnist" and metrics["model"]["resolution"] == 28
    assert "MedMNIST v2 PneumoniaMNIST test baselines" in (tmp_path / "model" / "README.md").read_text()
