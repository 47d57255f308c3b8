"""train_scripts/train_classifier.py: a few steps on real X-rays, its outputs, exact resume, early stopping.

Runs in-process through the script's `main(argv)` with the tiny configuration (ResNet-18, 64 px, 6 steps). Mixing,
seeds and PneumoniaMNIST are in test_classifier_mixing.py.
"""

import json
import shutil

import datasets
import pytest
import torch
from conftest import FIXTURES_DIR, REPO_ROOT, load_train_script, shared_data_dir
from PIL import Image
from safetensors.torch import load_file

from cxr_diffusers.classification.metrics import METRICS

TINY = str(REPO_ROOT / "train_scripts" / "configs" / "tiny.json")


@pytest.fixture(scope="module")
def script():
    return load_train_script("train_classifier")


@pytest.fixture(scope="module")
def data_args(tmp_path_factory):
    """The shared Kermany copy (24 train / 12 validation / 12 test images via the tiny config), else the fixtures."""
    kermany = shared_data_dir() / "kermany_pneumonia_224"
    if kermany.is_dir():
        return ["--train_data_dir", str(kermany), "--dataset", "kermany"]
    files = sorted(str(p) for p in (FIXTURES_DIR / "kermany").rglob("*.jpeg"))
    def split(n):
        rows = {"image": (files * n)[: 3 * n], "labels": [["pneumonia"] if "PNEUMONIA" in f else [] for f in files] * n,
                "patient_id": [f"p{i}" for i in range(3 * n)]}
        return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image(mode="L"))
    folder = tmp_path_factory.mktemp("fixture_xrays")
    datasets.DatasetDict({"train": split(8), "validation": split(2), "test": split(2)}).save_to_disk(folder)
    return ["--train_data_dir", str(folder)]


@pytest.fixture(scope="module")
def tiny_run(script, data_args, tmp_path_factory):
    out = tmp_path_factory.mktemp("classifier_run")
    script.main(["--config", TINY, *data_args, "--output_dir", str(out)])
    return out


@pytest.mark.slow
def test_short_run_writes_model_metrics_plots_and_card(tiny_run):
    from transformers import pipeline

    model_dir = tiny_run / "model"
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics == json.loads((tiny_run / "metrics.json").read_text())
    assert metrics["training"]["global_step"] == 6 and metrics["model"]["architecture"] == "resnet-18"
    assert metrics["model"]["weights_dtype"] == "fp16" and metrics["model"]["weights_mb"] < 25
    test = metrics["test"]
    assert set(test["metrics"]) == set(METRICS) and test["n_bootstrap"] == 50
    for value in test["metrics"].values():
        if value["value"] == value["value"]:  # not NaN
            assert value["ci_low"] <= value["value"] + 1e-9 and value["value"] <= value["ci_high"] + 1e-9
    assert sum(map(sum, test["confusion_matrix"])) == test["n"]
    assert metrics["validation_best"]["step"] in (3, 6)
    for plot in ("training_curves.png", "confusion_matrix.png", "roc.png"):
        assert Image.open(model_dir / plot).size[0] > 100
    card = (model_dir / "README.md").read_text()
    assert "Not for clinical use" in card and "trained from scratch" in card and "| auroc |" in card
    assert [p.name for p in sorted(tiny_run.glob("checkpoint-*"))] == ["checkpoint-3", "checkpoint-6"]
    assert (tiny_run / "checkpoint-6" / "model" / "model.safetensors").is_file()
    assert (tiny_run / "checkpoint-6" / "ema.safetensors").is_file()  # tiny.json sets use_ema
    assert json.loads((tiny_run / "best" / "best.json").read_text())["step"] == metrics["validation_best"]["step"]
    result = pipeline("image-classification", model=str(model_dir))(str(next(FIXTURES_DIR.glob("nih/*.png"))))
    assert {r["label"] for r in result} == {"NORMAL", "PNEUMONIA"}


@pytest.mark.slow
def test_resume_from_checkpoint_is_exact(script, data_args, tiny_run, tmp_path):
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(tiny_run / "checkpoint-3", resumed / "checkpoint-3")
    script.main(["--config", TINY, *data_args, "--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    original = load_file(tiny_run / "checkpoint-6" / "model" / "model.safetensors")
    again = load_file(resumed / "checkpoint-6" / "model" / "model.safetensors")
    assert original.keys() == again.keys()
    for key in original:
        assert torch.equal(original[key], again[key]), key
    assert json.loads((resumed / "checkpoint-6" / "trainer_state.json").read_text()) == \
        json.loads((tiny_run / "checkpoint-6" / "trainer_state.json").read_text())


def test_early_stopping_rule():
    from cxr_diffusers.training_utils import EarlyStopping

    stopping = EarlyStopping(patience=2)
    keys = [(0.6, -1.0), (0.7, -0.9), (0.7, -0.95), (0.65, -0.8), (0.9, -0.5)]
    improved = [stopping.update(step, key) for step, key in enumerate(keys[:4], start=1)]
    assert improved == [True, True, False, False]  # ties on AUROC are broken by the lower loss
    assert stopping.should_stop and stopping.state["best_step"] == 2 and stopping.state["bad_validations"] == 2
    resumed = EarlyStopping(patience=2, state=dict(stopping.state))  # a checkpoint's state
    assert resumed.should_stop and resumed.state["best_key"] == [0.7, -0.9]
    never = EarlyStopping(patience=0)
    for step, key in enumerate([(0.5, 0.0)] * 10):
        never.update(step, key)
    assert not never.should_stop


@pytest.mark.slow
def test_training_stops_early_and_keeps_the_best_validation(script, data_args, tmp_path):
    """Patience 1 with a validation every step: training ends at the first validation that is not better."""
    script.main(["--config", TINY, *data_args, "--output_dir", str(tmp_path), "--validation_steps", "1",
                 "--early_stopping_patience", "1", "--checkpointing_steps", "100", "--num_bootstrap", "10",
                 "--learning_rate", "0.05"])
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    aurocs = {v["step"]: v["val_auroc"] for v in logged if "val_auroc" in v}
    best = metrics["validation_best"]
    assert aurocs[best["step"]] == pytest.approx(best["auroc"]) and best["auroc"] == pytest.approx(max(aurocs.values()))
    if metrics["training"]["stopped_early"]:
        assert metrics["training"]["global_step"] < 6 and max(aurocs) == metrics["training"]["global_step"]
    else:
        assert metrics["training"]["global_step"] == 6


@pytest.mark.slow
def test_final_model_dir_is_never_deleted_without_overwrite(script, data_args, tmp_path, capsys):
    """A non-empty --final_model_dir is refused before training; with --overwrite it is replaced only when complete."""
    final = tmp_path / "shipped"
    final.mkdir()
    (final / "README.md").write_text("my card")
    base = ["--config", TINY, *data_args, "--output_dir", str(tmp_path / "run"), "--final_model_dir", str(final)]
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(base)
    assert exit_info.value.code == 2 and "is not empty; pass --overwrite" in capsys.readouterr().err
    assert (final / "README.md").read_text() == "my card"
    with pytest.raises(SystemExit):  # the run's own output folder (checkpoints) is an input, even with --overwrite
        script.parse_args([*base[:-1], str(tmp_path), "--overwrite"])
    assert "an input of this run" in capsys.readouterr().err
    script.main([*base, "--overwrite", "--max_train_steps", "2", "--checkpointing_steps", "2"])
    assert (final / "model.safetensors").is_file() and "my card" not in (final / "README.md").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".shipped.")]
    assert not list((tmp_path / "run").rglob("*.pt"))  # checkpoints hold no pickles (EMA in safetensors)


def test_standard_optimizer_and_loader_flags(script, data_args, tmp_path, capsys):
    base = ["--config", TINY, *data_args, "--output_dir", str(tmp_path)]
    args = script.parse_args([*base, "--adam_beta1", "0.8", "--adam_beta2", "0.99", "--adam_epsilon", "1e-6",
                              "--allow_tf32", "--dataloader_num_workers", "1"])
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.allow_tf32) == (0.8, 0.99, 1e-6, True)
    for extra, message in ((["--gradient_checkpointing"], "does not support gradient checkpointing"),
                           (["--dataloader_num_workers", "-1"], "--dataloader_num_workers must be 0 or more")):
        with pytest.raises(SystemExit):
            script.parse_args([*base, *extra])
        assert message in capsys.readouterr().err
