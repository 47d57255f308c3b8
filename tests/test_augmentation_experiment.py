"""train_scripts/augmentation_experiment.py on tiny data: the arms' training sets (counts, duplicates that really are
copies, the low regime's shared 10% of patients, the quality filter), skipped arms, the aggregated JSON, resume and
refused changed cells. Training is replaced by a stub that saves a tiny classifier (the experiment's own code runs:
data, evaluation through the one inference path, bootstrap, comparisons); the end-to-end test runs
train_classifier.py for real and is marked slow."""

import copy
import io
import json

import datasets
import numpy as np
import pytest
import torch
from conftest import FIXTURES_DIR, REPO_ROOT, load_train_script
from PIL import Image

from cxr_diffusers.errors import CXRInputError

TINY = REPO_ROOT / "train_scripts" / "configs" / "augmentation_experiment_tiny.json"
FULL = REPO_ROOT / "train_scripts" / "configs" / "augmentation_experiment.json"
BASES = sorted(p for p in FIXTURES_DIR.rglob("*") if p.suffix in (".png", ".jpeg"))
N_TRAIN_PER_CLASS = 20  # 10 patients of 2 images per class


def is_pneumonia(path) -> int:
    return int("PNEUMONIA" in str(path) or "/Pn_" in str(path))


def variant(index: int, label: int) -> Image.Image:
    """A distinct real-looking image: a crop of a fixture radiograph of the class, with a brightness offset."""
    bases = [p for p in BASES if is_pneumonia(p) == label]
    with Image.open(bases[index % len(bases)]) as opened:
        image = opened.convert("L")
    w, h = image.size
    dx, dy = (index * 3) % (w // 6), (index * 7) % (h // 6)
    crop = image.crop((dx, dy, dx + w - w // 6, dy + h - h // 6)).resize((48, 48))
    return Image.fromarray(np.clip(np.asarray(crop, np.int16) + (index % 9) - 4, 0, 255).astype(np.uint8))


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def split(rows, start, per_class, images_per_patient, source="kermany", prefix="p"):
    out = {"image": [], "labels": [], "patient_id": [], "source": []}
    for label in (0, 1):
        for i in range(per_class):
            index = start + i + 1000 * label
            out["image"].append({"bytes": png_bytes(variant(index, label)), "path": None})
            out["labels"].append(["pneumonia"] if label else [])
            out["patient_id"].append(f"{prefix}{label}-{(start + i) // images_per_patient}")
            out["source"].append(source)
    features = datasets.Features({"image": datasets.Image(), "labels": datasets.Sequence(datasets.Value("string")),
                                  "patient_id": datasets.Value("string"), "source": datasets.Value("string")})
    return datasets.Dataset.from_dict(out, features=features)


def write_synthesize_folder(root, n_per_class, failed_per_class, start=5000, filtered=True):
    """A fake `cxr-diffusers synthesize` output: data/0000/NNNNNNN.png + metadata.jsonl (its fields)."""
    rows = []
    index = 0
    for label in (0, 1):
        for i in range(n_per_class):
            name = f"data/{index // 1000:04d}/{index:07d}.png"
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            variant(start + index, label).transpose(Image.Transpose.ROTATE_180).save(root / name)
            prompt = ("Pediatric chest radiograph. Findings: pneumonia." if label else
                      "Pediatric chest radiograph. No acute cardiopulmonary abnormality.")
            rows.append({"file_name": name, "index": index, "prompt": prompt, "label": "pneumonia" if label else
                         "normal", "labels": ["pneumonia"] if label else [], "seed": index, "attempts": 1,
                         "filter_passed": (i >= failed_per_class) if filtered else None, "synthetic": True,
                         "not_for_clinical_use": True})
            index += 1
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("augmentation_data")
    datasets.DatasetDict({"train": split(None, 0, N_TRAIN_PER_CLASS, 2), "validation": split(None, 100, 4, 1),
                          "test": split(None, 200, 4, 1)}).save_to_disk(root / "real")
    datasets.DatasetDict({"test": split(None, 300, 4, 1, source="nih_cxr8", prefix="nih")}).save_to_disk(root / "nih")
    ldm = root / "ldm"
    rows = write_synthesize_folder(ldm, 30, 3)
    ddpm = root / "ddpm"
    ddpm.mkdir()
    for i in range(24):
        variant(7000 + i, i % 2).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(ddpm / f"{i:06d}.png")
    failed = {r["file_name"] for r in rows if r["filter_passed"] is False}
    return {"root": root, "real": root / "real", "nih": root / "nih", "ldm": ldm, "ddpm": ddpm, "failed": failed}


@pytest.fixture(scope="module")
def script():
    return load_train_script("augmentation_experiment")


def tiny_config(tiny_data, tmp_path, synthetic=True):
    config = json.loads(TINY.read_text())
    config["output_dir"] = str(tmp_path / "experiment")
    config["results"] = str(tmp_path / "results" / "augmentation_experiment.json")
    config["real_data"]["train_data_dir"] = str(tiny_data["real"])
    config["test_sets"]["kermany_test"]["data"] = str(tiny_data["real"])
    config["test_sets"]["nih_test"]["data"] = str(tiny_data["nih"])
    if synthetic:
        config["synthetic"] = {"ldm_filtered": str(tiny_data["ldm"]), "ddpm_images": str(tiny_data["ddpm"])}
    return config


class StubTraining:
    """Stands in for train_classifier.main: records each call's training set and saves a tiny random classifier."""

    def __init__(self):
        self.calls = []

    def __call__(self, argv):
        from transformers import ResNetConfig, ResNetForImageClassification

        from cxr_diffusers.classification import make_image_processor, save_classifier

        args = {flag: argv[i + 1] for i, flag in enumerate(argv[:-1]) if flag in ("--train_data_dir", "--output_dir")}
        train = datasets.load_from_disk(args["--train_data_dir"])["train"]
        self.calls.append({"argv": argv, "train": train.to_dict()})
        torch.manual_seed(len(self.calls))
        config = ResNetConfig(embedding_size=4, hidden_sizes=[4, 8], depths=[1, 1], layer_type="basic",
                              num_labels=2, id2label={0: "NORMAL", 1: "PNEUMONIA"},
                              label2id={"NORMAL": 0, "PNEUMONIA": 1})
        model_dir = f"{args['--output_dir']}/model"
        save_classifier(ResNetForImageClassification(config).eval(), make_image_processor(32), model_dir)
        metrics = {"training": {"global_step": 2, "seconds": 0.1}, "validation_best": {"step": 2}}
        with open(f"{model_dir}/metrics.json", "w") as f:
            json.dump(metrics, f)
        return metrics


def pixels(source):
    from cxr_diffusers.classification import load_xray

    return np.asarray(load_xray(source)).tobytes()


def test_generated_flags_are_accepted_by_train_classifier(script, tiny_data, tmp_path):
    for path in (TINY, FULL):
        experiment = script.Experiment(json.loads(path.read_text()), progress=False)
        for arm in ("real", "real_classic_aug"):
            argv = ["--train_data_dir", str(tiny_data["real"]), "--output_dir", str(tmp_path / "x"),
                    *script.flags_to_argv(experiment._flags(experiment.arms[arm], "low"))]
            args = script._train_classifier_module().parse_args(argv)
            assert args.architecture == "resnet-18" and args.report_to == "none"
            assert (args.rotation_degrees > 0) == (arm == "real_classic_aug")
    arms = [a.name for a in script.all_arms(json.loads(FULL.read_text()))]
    assert arms == ["real", "real_classic_aug", "real_duplicates_0.25", "real_duplicates_0.5", "real_duplicates_1",
                    "real_ldm_0.25_filtered", "real_ldm_0.25_unfiltered", "real_ldm_0.5_filtered",
                    "real_ldm_0.5_unfiltered", "real_ldm_1_filtered", "real_ldm_1_unfiltered", "real_ddpm_pseudo_0.5",
                    "synthetic_pretrain_real_finetune"]


def test_arms_have_the_right_counts_and_duplicates_are_copies(script, tiny_data, tmp_path):
    experiment = script.Experiment(tiny_config(tiny_data, tmp_path), progress=False)
    n = 2 * N_TRAIN_PER_CLASS
    for regime, n_real in (("full", n), ("low", 4)):
        real = experiment.build_training_set("real", regime, 0)
        assert real.counts["real"] == len(real.records) == n_real and real.counts["extra"] == 0
        real_pixels = {pixels(r.source) for r in real.records}
        for ratio in (0.25, 0.5, 1):
            name = f"{ratio:g}"
            duplicates = experiment.build_training_set(f"real_duplicates_{name}", regime, 0)
            ldm = experiment.build_training_set(f"real_ldm_{name}_filtered", regime, 0)
            extra = round(ratio * n_real)
            assert duplicates.counts["extra"] == ldm.counts["extra"] == extra
            assert duplicates.counts["extra_by_class"] == ldm.counts["extra_by_class"]  # label-matched
            assert len(duplicates.records) == len(ldm.records) == n_real + extra
            assert duplicates.records[:n_real] == ldm.records[:n_real] == real.records  # the same real images
            copies = duplicates.records[n_real:]
            assert all(r.origin == "duplicate" for r in copies)
            assert all(pixels(r.source) in real_pixels for r in copies)  # really copies, pixel for pixel
            assert all(r.origin == "synthetic" for r in ldm.records[n_real:])
            assert not {pixels(r.source) for r in ldm.records[n_real:]} & real_pixels
        # nested draws: the synthetic images of ratio 0.25 are among those of ratio 1
        small = {r.name for r in experiment.build_training_set("real_ldm_0.25_filtered", regime, 0).records[n_real:]}
        large = {r.name for r in experiment.build_training_set("real_ldm_1_filtered", regime, 0).records[n_real:]}
        assert small <= large


def test_low_regime_is_ten_percent_of_whole_patients_and_the_same_for_every_arm(script, tiny_data, tmp_path):
    experiment = script.Experiment(tiny_config(tiny_data, tmp_path), progress=False)
    full = experiment.splits()["train"]
    subsets = {}
    for seed in (0, 1, 2):
        low = experiment.real_train("low", seed)
        assert script._class_names(low) == {"NORMAL": 2, "PNEUMONIA": 2}  # round(0.1 * 20) per class
        patients = {r.patient_id for r in low}
        assert sorted(r.name for r in low) == sorted(r.name for r in full if r.patient_id in patients)  # whole
        for arm in ("real", "real_classic_aug", "real_duplicates_0.5", "real_ldm_0.5_filtered"):
            records = experiment.build_training_set(arm, "low", seed).records
            assert records[: len(low)] == low
        subsets[seed] = tuple(r.name for r in low)
        assert tuple(r.name for r in script.Experiment(tiny_config(tiny_data, tmp_path), progress=False)
                     .real_train("low", seed)) == subsets[seed]  # seeded
    assert len(set(subsets.values())) > 1  # seeds draw different patients


def test_filtered_arm_leaves_out_failed_rows_and_unfiltered_keeps_them(script, tiny_data, tmp_path):
    experiment = script.Experiment(tiny_config(tiny_data, tmp_path), progress=False)
    filtered_pool, _ = experiment.ldm_pool("filtered")
    unfiltered_pool, notes = experiment.ldm_pool("unfiltered")
    assert len(filtered_pool) == 54 and len(unfiltered_pool) == 60
    assert not {r.name for r in filtered_pool} & tiny_data["failed"]
    assert {r.name for r in unfiltered_pool} >= tiny_data["failed"] and "including its 6 filter_passed" in notes[0]
    for seed in (0, 1, 2):
        arm = experiment.build_training_set("real_ldm_1_filtered", "full", seed)
        assert not {r.name for r in arm.records if r.origin != "real"} & tiny_data["failed"]
    # a separate unfiltered run, when configured, is read as it is
    unfiltered = tmp_path / "unfiltered"
    write_synthesize_folder(unfiltered, 25, 0, start=9000, filtered=False)
    config = tiny_config(tiny_data, tmp_path)
    config["synthetic"]["ldm_unfiltered"] = str(unfiltered)
    other = script.Experiment(config, progress=False)
    assert len(other.ldm_pool("unfiltered")[0]) == 50
    assert other.build_training_set("real_ldm_0.5_unfiltered", "full", 0).counts["extra"] == 20


def test_missing_or_short_synthetic_inputs_are_skipped_with_a_reason(script, tiny_data, tmp_path):
    experiment = script.Experiment(tiny_config(tiny_data, tmp_path, synthetic=False), progress=False)
    stub = StubTraining()
    script.run_training, saved = stub, script.run_training
    try:
        for arm, words in (("real_ldm_0.5_filtered", "no filtered LDM synthesize folder"),
                           ("real_ldm_0.5_unfiltered", "no LDM synthesize folder"),
                           ("real_ddpm_pseudo_0.5", "no DDPM images"),
                           ("synthetic_pretrain_real_finetune", "no filtered LDM synthesize folder")):
            result = experiment.run_cell(arm, "full", 0)
            assert result["status"] == "skipped" and words in result["reason"], result
        assert len(stub.calls) == 1  # the real model the DDPM arm's pseudo-labels would need
        # a folder with too few images of a class for the ratio is skipped, not crashed
        short = tmp_path / "short"
        write_synthesize_folder(short, 8, 1)
        config = tiny_config(tiny_data, tmp_path)
        config["output_dir"] = str(tmp_path / "short-run")
        config["synthetic"] = {"ldm_filtered": str(short)}
        result = script.Experiment(config, progress=False).run_cell("real_ldm_1_filtered", "full", 0)
        assert result["status"] == "skipped" and "needs 20 NORMAL images, the pool has 7" in result["reason"]
    finally:
        script.run_training = saved
    document = experiment.aggregate()
    skipped = {(c["arm"], c["regime"], c["seed"]): c["reason"] for c in document["skipped"]}
    assert "no filtered LDM synthesize folder" in skipped[("real_ldm_1_filtered", "low", 2)]


def test_every_cell_is_in_the_results_with_metrics_and_a_rerun_trains_nothing(script, tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path)
    stub = StubTraining()
    script.run_training, saved = stub, script.run_training
    try:
        experiment = script.Experiment(config, progress=False)
        document = experiment.run()
        arms = [a.name for a in script.all_arms(config)]
        assert len(stub.calls) == len(arms) * 2 * 3 + 3  # every cell once, plus one synthetic pretraining per seed
        cells = {(c["arm"], c["regime"], c["seed"]): c for c in document["cells"]}
        assert set(cells) == {(a, r, s) for a in arms for r in ("full", "low") for s in (0, 1, 2)}
        for cell in cells.values():
            assert cell["status"] == "done", cell
            assert 0 <= cell["threshold"] <= 1
            for test in ("kermany_test", "nih_test"):
                metrics = cell["metrics"][test]
                assert metrics["n"] == 8
                for name in ("accuracy", "auroc", "sensitivity", "specificity", "f1"):
                    assert set(metrics[name]) == {"value", "ci_low", "ci_high"}
        assert set(document["summary"]["low"]["real_ldm_0.5_filtered"]["nih_test"]["auroc"]) >= {
            "mean", "std", "values", "ci_low", "ci_high", "seeds"}
        comparison = document["comparisons"]["full"]["real_ldm_0.5_filtered"]
        assert comparison["vs_real"]["kermany_test"]["auroc"]["reference"] == "real"
        versus = comparison["vs_duplicates"]["kermany_test"]["f1"]
        assert versus["reference"] == "real_duplicates_0.5" and versus["seeds"] == [0, 1, 2]
        assert len(versus["per_seed_difference"]) == 3 and "p_bootstrap" in versus
        ddpm = cells[("real_ddpm_pseudo_0.5", "full", 0)]
        assert ddpm["counts"]["ddpm_images"] == 24 and ddpm["counts"]["extra"] <= 20
        assert "count_matched" in document["comparisons"]["full"]["real_ddpm_pseudo_0.5"]["vs_duplicates"][
            "nih_test"]["auroc"]
        assert cells[("synthetic_pretrain_real_finetune", "low", 1)]["counts"]["pretrained_on"]["synthetic"] == 20
        finetune = [c for c in stub.calls if "synthetic_pretrain_real_finetune" in " ".join(c["argv"])]
        assert all("--pretrained_model_name_or_path" in c["argv"] for c in finetune)
        saved_json = json.loads(experiment.results_path.read_text())
        assert saved_json["counts"] == {"cells": len(cells), "done": len(cells), "skipped": 0, "pending": 0}
        assert experiment.plot_path.is_file() and Image.open(experiment.plot_path).size[0] > 300
        # resume: a rerun of the same config trains nothing and rewrites no cell
        results = sorted(experiment.output_dir.glob("cells/*/*/*/result.json"))
        mtimes = [p.stat().st_mtime_ns for p in results]
        calls = len(stub.calls)
        again = script.Experiment(config, progress=False)
        again.run()
        assert len(stub.calls) == calls and again.train_calls == 0
        assert [p.stat().st_mtime_ns for p in results] == mtimes
        # a finished cell whose settings changed is refused in one sentence
        changed = copy.deepcopy(config)
        changed["training"]["learning_rate"] = 0.01
        with pytest.raises(CXRInputError, match=r"cell real / full / seed 0 was finished with other settings "
                                                 r"\(training.learning_rate changed\)"):
            script.Experiment(changed, progress=False).run(arms=["real"], seeds=[0], regimes=["full"])
        # filters pick cells; unknown names are refused
        with pytest.raises(CXRInputError, match="matches none"):
            again.cells(arms=["no_such_arm"])
        assert again.cells(arms=["real_duplicates_*"], regimes=["low"], seeds=[1]) == [
            (f"real_duplicates_{r}", "low", 1) for r in ("0.25", "0.5", "1")]
    finally:
        script.run_training = saved


def test_interrupted_cell_is_trained_again_and_filters_leave_other_cells_pending(script, tiny_data, tmp_path):
    config = tiny_config(tiny_data, tmp_path)
    stub = StubTraining()
    script.run_training, saved = stub, script.run_training
    try:
        experiment = script.Experiment(config, progress=False)
        document = experiment.run(arms=["real", "real_duplicates_0.5"], regimes=["low"], seeds=[0])
        assert len(stub.calls) == 2 and document["counts"]["done"] == 2
        pending = [c for c in document["cells"] if c["status"] == "pending"]
        assert len(pending) == document["counts"]["cells"] - 2
        (experiment.cell_dir("real_duplicates_0.5", "low", 0) / "result.json").unlink()  # killed before the end
        script.Experiment(config, progress=False).run(arms=["real", "real_duplicates_0.5"], regimes=["low"], seeds=[0])
        assert len(stub.calls) == 3 and "real_duplicates_0.5" in " ".join(stub.calls[-1]["argv"])
    finally:
        script.run_training = saved


def test_ddpm_images_are_sampled_from_a_pipeline_and_resume(script, tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=32, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4)
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=50)).save_pretrained(tmp_path / "pipeline")
    folder = tmp_path / "images"
    script.generate_ddpm_images(tmp_path / "pipeline", folder, 3, steps=2, batch_size=2, progress=False)
    files = sorted(folder.glob("*.png"))
    assert [p.name for p in files] == ["000000.png", "000001.png", "000002.png"]
    assert Image.open(files[0]).mode == "L" and Image.open(files[0]).size == (32, 32)
    before = [p.stat().st_mtime_ns for p in files]
    script.generate_ddpm_images(tmp_path / "pipeline", folder, 4, steps=2, batch_size=2, progress=False)
    assert [p.stat().st_mtime_ns for p in files] == before and len(list(folder.glob("*.png"))) == 4


@pytest.mark.slow
def test_end_to_end_with_train_classifier(script, tiny_data, tmp_path):
    """Three cells trained for real by train_classifier.py (ResNet-18, 32 px, 2 steps) and the results written."""
    config = tiny_config(tiny_data, tmp_path)
    out = tmp_path / "results.json"
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    document = script.main(["--config", str(config_path), "--output", str(out), "--no_progress",
                            "--arms", "real", "real_duplicates_0.5", "real_ldm_0.5_filtered", "--regimes", "full",
                            "--seeds", "0"])
    assert document["counts"]["done"] == 3 and out.is_file() and out.with_suffix(".png").is_file()
    cell = script.Experiment(config, progress=False).cell_dir("real_ldm_0.5_filtered", "full", 0)
    metrics = json.loads((cell / "train" / "model" / "metrics.json").read_text())
    assert metrics["data"]["train_counts"]["total"] == 60 and metrics["training"]["global_step"] == 2
    assert metrics["args"]["rotation_degrees"] == 0.0 and metrics["model"]["resolution"] == 32
    assert not list((cell / "train").glob("checkpoint-*")) and not (cell / "data").exists()
    cells = {(c["arm"], c["regime"], c["seed"]): c for c in json.loads(out.read_text())["cells"]}
    assert cells[("real_ldm_0.5_filtered", "full", 0)]["metrics"]["kermany_test"]["auroc"]["value"] >= 0
    again = script.main(["--config", str(config_path), "--output", str(out), "--no_progress", "--aggregate_only"])
    assert again["counts"]["done"] == 3
