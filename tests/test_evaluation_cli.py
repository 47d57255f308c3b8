"""End to end: `cxr-diffusers evaluate` and train_scripts/evaluate_generation.py on a tiny random pipeline, a tiny
random classifier and the real fixture X-rays."""

import importlib.util
import json

import numpy as np
import pytest
import torch
from conftest import FIXTURES_DIR, REPO_ROOT
from PIL import Image

from cxr_diffusers import read_provenance
from cxr_diffusers.cli import main


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], num_labels=2,
                          id2label={0: "NORMAL", 1: "PNEUMONIA"}, label2id={"NORMAL": 0, "PNEUMONIA": 1})
    path = tmp_path_factory.mktemp("tiny-classifier")
    ResNetForImageClassification(config).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"height": 64, "width": 64}, "image_mean": [0.5], "image_std": [0.5], "do_normalize": True}))
    return str(path)


def test_evaluate_end_to_end(tiny_model, tiny_classifier, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main([
        "evaluate", tiny_model, "--real", str(FIXTURES_DIR), "--train-data", str(FIXTURES_DIR),
        "--num-images", "3", "--batch-size", "2", "--steps", "2", "--classifier", tiny_classifier,
        "--real-vs-real", "--kid-subsets", "5", "--output-dir", str(out), "--no-progress",
    ])
    assert code == 0
    assert "Wrote metrics.json" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    for name in ("intensity_histograms.png", "metric_bars.png", "real_vs_generated.png", "nearest_neighbours.png"):
        assert (out / name).stat().st_size > 1000, name
    assert len(list((out / "generated").glob("*.png"))) == 6
    assert metrics["counts"] == {"generated": 6, "real": 9, "train": 9}
    assert metrics["config"]["size"] == 64 and metrics["synthetic_images_not_for_clinical_use"] is True
    for extractor in ("vae", "classifier"):
        entry = metrics["distribution"][extractor]
        for key in ("generated_vs_real", "real_vs_real", "generated_vs_real: normal", "generated_vs_real: pneumonia"):
            assert {"fd", "kid", "kid_std", "precision", "recall"} <= set(entry[key]), (extractor, key)
        # the reference doubles as the training set here, so real-vs-real compares the set with a sample of itself;
        # a random tiny pipeline must be farther away than that floor
        assert entry["generated_vs_real"]["fd"] > 2 * entry["real_vs_real"]["fd"] > 0
    assert {"sharpness", "entropy", "mean_intensity", "std_intensity", "contrast_ratio"} <= set(
        metrics["per_image"]["generated"])
    assert metrics["diversity_ms_ssim"]["generated"]["pairs"] == 15
    assert set(metrics["vae_reconstruction_real"]) >= {"psnr", "ssim", "ms_ssim"}
    conditioning = metrics["conditioning"]
    assert conditioning["n"] == 6 and 0.0 <= conditioning["agreement"] <= 1.0
    assert 0.0 <= conditioning["classifier_accuracy_on_real"] <= 1.0
    memo = metrics["memorization"]
    assert memo["generated_vs_train"]["n"] == 6 and memo["generated_vs_train"]["feature_cosine"]["features"] == "classifier"
    # real-vs-train with the training set equal to the reference: every image is its own nearest neighbour
    assert memo["real_vs_train"]["pixel_ssim"]["fraction_above_threshold"] == 1.0


def test_evaluate_is_deterministic_and_needs_no_classifier(tiny_model, tmp_path):
    args = ["evaluate", tiny_model, "--real", str(FIXTURES_DIR / "kermany"), "--no-train", "--features", "vae",
            "--num-images", "2", "--steps", "2", "--kid-subsets", "2", "--no-progress", "--classifier", "none"]
    assert main(args + ["--output-dir", str(tmp_path / "a"), "--batch-size", "1"]) == 0
    assert main(args + ["--output-dir", str(tmp_path / "b"), "--batch-size", "2"]) == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    files_a, files_b = sorted((tmp_path / "a" / "generated").glob("*.png")), sorted((tmp_path / "b" / "generated").glob("*.png"))
    assert [f.name for f in files_a] == [f.name for f in files_b] and len(files_a) == 4
    for fa, fb in zip(files_a, files_b):  # the same seeds give the same images whatever the batch size
        diff = np.abs(np.asarray(Image.open(fa), np.int16) - np.asarray(Image.open(fb), np.int16))
        assert diff.max() <= 1, fa.name
    assert "conditioning" not in a and any("conditioning check skipped" in n for n in a["notes"])
    assert "memorization" not in a
    # --guidance-rescale reaches the pipeline (other images) and the records
    assert main(args + ["--output-dir", str(tmp_path / "c"), "--guidance-rescale", "0.7"]) == 0
    files_c = sorted((tmp_path / "c" / "generated").glob("*.png"))
    assert any(np.asarray(Image.open(fa)).tobytes() != np.asarray(Image.open(fc)).tobytes()
               for fa, fc in zip(files_a, files_c))
    assert read_provenance(files_c[0])["guidance_rescale"] == 0.7


def test_evaluate_bad_input(tiny_model, tmp_path, capsys):
    assert main(["evaluate", tiny_model, "--real", str(tmp_path / "missing"), "-o", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["evaluate", tiny_model, "--real", str(FIXTURES_DIR), "--num-images", "0"]) == 2
    assert "--num-images must be at least 1" in capsys.readouterr().err
    assert main(["evaluate", tiny_model, "--real", str(FIXTURES_DIR), "--features", "clip"]) == 2
    assert "Unknown --features" in capsys.readouterr().err


def test_evaluate_generation_script(tiny_model, tmp_path):
    spec = importlib.util.spec_from_file_location("evaluate_generation", REPO_ROOT / "train_scripts" / "evaluate_generation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main([
        "--pretrained_model_name_or_path", tiny_model, "--real", str(FIXTURES_DIR / "nih"), "--no-train",
        "--features", "vae", "--validation_prompts", "Chest radiograph. Findings: pneumonia.",
        "--num-images", "2", "--steps", "2", "--kid-subsets", "2", "--resolution", "64",
        "--output_dir", str(tmp_path / "script"), "--no-progress",
    ])
    assert code == 0
    metrics = json.loads((tmp_path / "script" / "metrics.json").read_text())
    assert metrics["config"]["prompts"] == ["Chest radiograph. Findings: pneumonia."]
    assert metrics["counts"]["generated"] == 2


def test_find_classifier_needs_an_id2label(tmp_path):
    from cxr_diffusers.evaluation.runner import find_classifier

    assert find_classifier([tmp_path]) is None
    (tmp_path / "my-classifier").mkdir()
    (tmp_path / "my-classifier" / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    assert find_classifier([tmp_path]) is None  # no labels: not an image classifier
    (tmp_path / "my-classifier" / "config.json").write_text(json.dumps({"id2label": {"0": "NORMAL", "1": "PNEUMONIA"}}))
    assert find_classifier([tmp_path]) == str(tmp_path / "my-classifier")


def test_evaluate_with_a_fixed_feature_vae(tiny_model, tmp_path, capsys):
    """--feature-vae puts pipelines with different VAEs into one feature space; the pipeline's own VAE is the default."""
    from cxr_diffusers import CXRPipeline, create_components

    torch.manual_seed(1)
    other = tmp_path / "other-pipeline"
    CXRPipeline(**create_components("tiny")).save_pretrained(other)
    args = ["evaluate", tiny_model, "--real", str(FIXTURES_DIR / "kermany"), "--no-train", "--features", "vae",
            "--num-images", "2", "--steps", "2", "--kid-subsets", "2", "--no-progress", "--classifier", "none"]

    def fd(name, *extra):
        assert main(args + ["--output-dir", str(tmp_path / name), *extra]) == 0
        metrics = json.loads((tmp_path / name / "metrics.json").read_text())
        return metrics["distribution"]["vae"]["generated_vs_real"]["fd"], metrics["config"]["feature_vae"]

    own, own_path = fd("own")
    same, same_path = fd("same", "--feature-vae", tiny_model)  # a pipeline folder: its vae/ subfolder
    fixed, _ = fd("fixed", "--feature-vae", str(other / "vae"))  # a VAE folder
    assert own_path is None and same_path == tiny_model
    assert same == pytest.approx(own, rel=1e-5)
    assert abs(fixed - own) > 1e-3 * max(abs(own), 1e-6)
    assert main(args + ["--output-dir", str(tmp_path / "bad"), "--feature-vae", str(tmp_path / "missing")]) == 2
    assert "Could not load a CXRAutoencoderKL" in capsys.readouterr().err


def test_prompt_groups_protocol_reports_fidelity_per_group_with_floors(tiny_model, tmp_path):
    """`--prompt-groups`: one prompt per group; histogram W1, sharpness ratio and spectrum distance per group."""
    import datasets

    files = sorted(str(p) for p in (FIXTURES_DIR / "kermany").rglob("*.jpeg")) + sorted(
        str(p) for p in (FIXTURES_DIR / "nih").glob("*.png"))
    rows = {"image": files * 2, "source": ["kermany" if "/kermany/" in f else "nih_subset" for f in files] * 2,
            "labels": [["pneumonia"] if ("PNEUMONIA" in f or "/Pn_" in f) else [] for f in files] * 2}
    data = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image(mode="L"))
    datasets.DatasetDict({"test": data}).save_to_disk(tmp_path / "real")
    out = tmp_path / "eval"
    assert main(["evaluate", tiny_model, "--real", str(tmp_path / "real"), "--no-train", "--prompt-groups",
                 "-n", "2", "--steps", "2", "--classifier", "none", "--features", "vae", "-o", str(out),
                 "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["config"]["prompts"]) == 4 and metrics["counts"]["generated"] == 8
    fidelity = metrics["fidelity"]
    assert {"all", "pediatric normal", "pediatric pneumonia", "adult normal", "adult pneumonia"} <= set(fidelity)
    for entry in fidelity.values():
        assert entry["histogram_w1"] > 0 and entry["sharpness_ratio"] > 0 and entry["spectrum_distance"] > 0
    assert fidelity["all"]["real_vs_real"]["histogram_w1"] > 0 and fidelity["all"]["n_real"] == 12
    # distribution metrics per group against the same group's real images, beside a size-matched real floor
    # (4 real images of each of these groups: 2 held out as the floor, 2 as the reference)
    vae = metrics["distribution"]["vae"]
    for group in ("pediatric pneumonia", "adult normal"):
        entry = vae[f"group: {group}"]
        assert entry["generated_vs_real"]["n_real"] == entry["real_vs_real"]["n_real"] == 2
        assert entry["generated_vs_real"]["n_generated"] == entry["real_vs_real"]["n_generated"] == 2
        assert entry["generated_vs_real"]["fd"] > 0 and entry["real_vs_real"]["fd"] > 0
        assert metrics["diversity_ms_ssim"][f"real: {group}"]["pairs"] > 0
    assert "group: pediatric normal" not in vae  # 2 real images only: a note says so
    assert any("'pediatric normal': fewer than 4 real images" in note for note in metrics["notes"])


def test_run_evaluation_leaves_the_callers_scheduler_alone(tiny_model, tmp_path):
    from cxr_diffusers import CXRPipeline
    from cxr_diffusers.evaluation.runner import EvaluationConfig, load_reference, run_evaluation

    pipe = CXRPipeline.from_pretrained(tiny_model)
    before = pipe.scheduler
    config = EvaluationConfig(num_images_per_prompt=1, num_inference_steps=2, scheduler="ddim", features=(),
                              save_images=False, progress=False)
    metrics = run_evaluation(pipe, load_reference(FIXTURES_DIR).images, tmp_path, config)
    assert pipe.scheduler is before and metrics["config"]["scheduler"] == "DDIMScheduler"


def test_each_evaluation_step_returns_a_json_serialisable_dict(tmp_path):
    """The steps of `run_evaluation` on their own: explicit inputs in, plain JSON-ready sections of metrics.json out."""
    from conftest import make_tiny_pipeline

    from cxr_diffusers.evaluation.conditioning import DEFAULT_PROMPTS
    from cxr_diffusers.evaluation.features import images_to_tensor
    from cxr_diffusers.evaluation.runner import (
        EvaluationConfig,
        conditioning_step,
        distribution_step,
        fidelity_step,
        header_step,
        image_statistics_step,
        load_reference,
        memorization_step,
        merge_steps,
        reconstruction_step,
    )

    class StubClassifier:  # what conditioning_step uses of a ClassifierFeatureExtractor
        labels = ("NORMAL", "PNEUMONIA")

        def predict(self, images):
            return ["NORMAL" if float(image.mean()) < 0.5 else "PNEUMONIA" for image in images]

    pipe = make_tiny_pipeline()
    reference = load_reference(FIXTURES_DIR)
    real = images_to_tensor(reference.images[:6], 32)
    train = images_to_tensor(reference.images[3:], 32)
    generated = torch.rand(6, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    prompts = [DEFAULT_PROMPTS["NORMAL"]] * 3 + [DEFAULT_PROMPTS["PNEUMONIA"]] * 3
    config = EvaluationConfig(num_images_per_prompt=3, real_vs_real=True, memorization_size=32, kid_subsets=2,
                              ms_ssim_pairs=5, progress=False)
    rng = np.random.default_rng(0)
    features = {"vae": {"generated": rng.normal(size=(6, 8)), "real": rng.normal(size=(6, 8)),
                        "train": rng.normal(size=(6, 8))}}
    steps = {
        "header": header_step(pipe, config, 32, generated=generated, real=real, train=train, seconds_per_image=0.1,
                              extra={"model": "tiny"}),
        "fidelity": fidelity_step(generated, prompts, real),
        "image_statistics": image_statistics_step(generated, prompts, real, config),
        "reconstruction": reconstruction_step(pipe.vae, real, 2),
        "distribution": distribution_step(features, prompts, config),
        "memorization": memorization_step(generated, real, train, features, config,
                                          grid_path=tmp_path / "nearest_neighbours.png"),
        "conditioning": conditioning_step(StubClassifier(), generated, prompts, real, reference.classes[:6]),
    }
    for name, part in steps.items():
        assert isinstance(part, dict) and part, name
        json.dumps(part, allow_nan=False)  # plain Python values, no numpy scalars or arrays
    assert set(steps["image_statistics"]) == {"per_image", "diversity_ms_ssim"}
    vae_entry = steps["distribution"]["distribution"]["vae"]
    assert {"generated_vs_real", "generated_vs_real: normal", "real_vs_real"} <= set(vae_entry)
    assert steps["memorization"]["memorization"]["real_vs_train"]["n"] == 6
    assert (tmp_path / "nearest_neighbours.png").is_file()
    assert steps["conditioning"]["conditioning"]["n"] == 6
    # skipped steps say so in their notes, which merge_steps joins in order
    skipped = [memorization_step(generated, real, None, features, config), conditioning_step(None, generated, prompts),
               reconstruction_step(pipe.vae, real, 0)]
    merged = merge_steps(*steps.values(), *skipped)
    assert merged["notes"] == ["memorisation audit skipped: no training images",
                               "conditioning check skipped: no classifier given or found"]
    assert list(merged)[-1] == "notes" and merged["counts"] == {"generated": 6, "real": 6, "train": 6}
    json.dumps(merged, allow_nan=False)
