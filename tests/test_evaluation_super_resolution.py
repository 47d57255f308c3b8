"""Evaluation of the super-resolution stage (`cxr_diffusers.evaluation.super_resolution`) and its script.

On the shipped fixture X-rays (224 px Kermany JPEGs, 300 px NIH PNGs, 64 px NIH1000 PNGs) at a base of 32 px, with
an untrained `CXRSuperResolutionModel`: its residual heads start at zero, so it is exactly bicubic upsampling.
"""

import json

import numpy as np
import pytest
import torch
from conftest import make_tiny_pipeline, run_script_in_process
from PIL import Image

from cxr_diffusers.evaluation import super_resolution as sr_eval
from cxr_diffusers.models.super_resolution_cxr import CXRSuperResolutionModel

BASE = 32


def _fixture_rows(fixtures_dir):
    rows = []
    for path in sorted((fixtures_dir / "kermany").glob("*/*.jpeg")):
        rows.append({"image": str(path), "source": "kermany"})
    for path in sorted((fixtures_dir / "nih").glob("*.png")):
        rows.append({"image": str(path), "source": "nih_subset"})
    small = sorted((fixtures_dir / "nih1000_64").glob("**/*.png"))[:2]
    for path in small:
        rows.append({"image": str(path), "source": "nih1000"})
    if len(rows) < 8:
        pytest.skip("the fixture images are not all present")
    return rows


@pytest.fixture(scope="module")
def split(fixtures_dir):
    import datasets

    rows = _fixture_rows(fixtures_dir)
    ds = datasets.Dataset.from_dict({"image": [r["image"] for r in rows], "source": [r["source"] for r in rows],
                                     "labels": [[] for _ in rows]})
    return ds.cast_column("image", datasets.Image(mode="L"))


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    return CXRSuperResolutionModel(block_out_channels=8, num_blocks=1).eval()


@pytest.fixture(scope="module")
def real_metrics(split, untrained):
    return sr_eval.evaluate_super_resolution_real(untrained, split, scales=(2, 3), base_resolution=BASE,
                                                  batch_size=3, progress=False)


def test_real_evaluation_keys_counts_and_skips(real_metrics, split):
    assert real_metrics["methods"] == ["model", "lanczos", "bicubic"]
    assert set(real_metrics["scales"]) == {"2", "3"}
    two, three = real_metrics["scales"]["2"], real_metrics["scales"]["3"]
    assert two["size"] == 64 and three["size"] == 96
    # the 64 px images hold detail for 64 px, not for 96 px: skipped and counted there
    assert two["n_images"] == len(split) and two["skipped_too_small"] == 0
    assert three["n_images"] == len(split) - 2 and three["skipped_too_small"] == 2
    assert set(three["per_source"]) == {"kermany", "nih_subset"}
    assert set(two["per_source"]) == {"kermany", "nih_subset", "nih1000"}
    for entry in (two, three):
        for method in ("model", "lanczos", "bicubic"):
            m = entry["overall"][method]
            assert set(m) == {"psnr", "ssim", "sharpness", "sharpness_ratio"}
            assert 10 < m["psnr"] < 60 and 0 < m["ssim"] <= 1 and 0 < m["sharpness_ratio"] < 2
        assert set(entry["gates"]) == {"psnr_gain_db", "ssim_gain", "sharpness_ratio", "psnr", "ssim", "sharpness",
                                       "passed"}
        assert set(entry["per_source_gates"]) == set(entry["per_source"])
    json.dumps(real_metrics, allow_nan=False)  # strict JSON


def test_untrained_model_equals_bicubic_and_lanczos_differs(real_metrics):
    for entry in real_metrics["scales"].values():
        for summary in [entry["overall"], *entry["per_source"].values()]:
            assert summary["model"] == summary["bicubic"]
            assert summary["lanczos"] != summary["bicubic"]
        gates = entry["gates"]
        # the model is bicubic: no gain over Lanczos, so the PSNR and SSIM parts fail and the gate fails
        assert gates["psnr_gain_db"] == pytest.approx(entry["overall"]["model"]["psnr"] - entry["overall"]["lanczos"]["psnr"])
        assert not gates["psnr"] and not gates["ssim"] and not gates["passed"]
    assert real_metrics["passed"] is False


def test_real_evaluation_matches_the_definition(split, untrained):
    """One image by hand: HR/LR by high_resolution_pair, PIL Lanczos, uint8 metrics of image_quality."""
    from cxr_diffusers.data.super_resolution import (
        high_resolution_pair,
        lanczos_upscale,
    )
    from cxr_diffusers.evaluation.image_quality import psnr, sharpness, ssim

    one = split.select([0])
    metrics = sr_eval.evaluate_super_resolution_real(None, one, scales=(3,), base_resolution=BASE, progress=False)
    hr, lr = high_resolution_pair(one[0]["image"], BASE, 3)
    original, lanczos = np.asarray(hr), np.asarray(lanczos_upscale(lr, 3))
    summary = metrics["scales"]["3"]["overall"]
    assert summary["lanczos"]["psnr"] == pytest.approx(psnr(original, lanczos))
    assert summary["lanczos"]["ssim"] == pytest.approx(ssim(original, lanczos))
    assert summary["lanczos"]["sharpness_ratio"] == pytest.approx(sharpness(lanczos) / sharpness(original))
    assert summary["original_sharpness"] == pytest.approx(sharpness(original))


def test_baseline_only_and_num_images(split):
    metrics = sr_eval.evaluate_super_resolution_real(None, split, scales=(2,), base_resolution=BASE, num_images=3,
                                                     progress=False)
    entry = metrics["scales"]["2"]
    assert metrics["methods"] == ["lanczos", "bicubic"] and metrics["passed"] is None
    assert entry["gates"] is None and entry["per_source_gates"] is None and "model" not in entry["overall"]
    assert entry["n_images"] == 3
    # a scale no image is large enough for: no numbers, every image counted as skipped
    empty = sr_eval.evaluate_super_resolution_real(None, split, scales=(20,), base_resolution=BASE, progress=False)
    assert empty["scales"]["20"]["overall"] is None and empty["scales"]["20"]["skipped_too_small"] == len(split)


def test_real_gates_on_hand_built_summaries():
    def summary(model_psnr, model_ssim, model_ratio, lanczos_psnr=30.0, lanczos_ssim=0.90):
        return {"n": 4, "original_sharpness": 1.0,
                "model": {"psnr": model_psnr, "ssim": model_ssim, "sharpness": model_ratio, "sharpness_ratio": model_ratio},
                "lanczos": {"psnr": lanczos_psnr, "ssim": lanczos_ssim, "sharpness": 0.5, "sharpness_ratio": 0.5}}

    passed = sr_eval.real_gates(summary(31.0, 0.92, 0.8))  # exactly on every threshold
    assert passed["psnr"] and passed["ssim"] and passed["sharpness"] and passed["passed"]
    assert passed["psnr_gain_db"] == pytest.approx(1.0) and passed["ssim_gain"] == pytest.approx(0.02)
    assert sr_eval.real_gates(summary(31.0, 0.92, 1.2))["passed"]
    low_psnr = sr_eval.real_gates(summary(30.99, 0.95, 1.0))
    assert not low_psnr["psnr"] and low_psnr["ssim"] and not low_psnr["passed"]
    assert not sr_eval.real_gates(summary(32.0, 0.919, 1.0))["ssim"]
    assert not sr_eval.real_gates(summary(32.0, 0.95, 0.79))["sharpness"]
    assert not sr_eval.real_gates(summary(32.0, 0.95, 1.21))["sharpness"]
    assert sr_eval.real_gates(None) is None
    assert sr_eval.real_gates({"n": 1, "original_sharpness": 1.0, "lanczos": {}}) is None  # baselines only


def test_summarise_pairs_sharpness_ratio_is_fidelity_definition():
    from cxr_diffusers.evaluation.fidelity import sharpness_ratio
    from cxr_diffusers.evaluation.image_quality import sharpness

    rng = np.random.default_rng(0)
    originals = [rng.integers(0, 256, (32, 32), dtype=np.uint8) for _ in range(3)]
    outputs = [(o // 2 + 60).astype(np.uint8) for o in originals]
    rows = [{"original_sharpness": sharpness(o), "x": (30.0, 0.5, sharpness(g))} for o, g in zip(originals, outputs)]
    summary = sr_eval.summarise_pairs(rows, ["x"])
    assert summary["x"]["sharpness_ratio"] == pytest.approx(sharpness_ratio(outputs, originals))
    assert sr_eval.summarise_pairs([], ["x"]) is None


def test_best_ssim_on_hand_made_arrays():
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    real = np.stack([xx, yy, (xx * yy), np.sin(6 * xx) * 0.5 + 0.5]).astype(np.float32)
    rng = np.random.default_rng(1)
    generated = np.stack([real[2], rng.random((64, 64)).astype(np.float32), 1 - real[0]])
    best = sr_eval.best_ssim_to_real(generated, real)
    assert best[0] == pytest.approx(1.0, abs=1e-6)  # identical to a real image
    assert best[1] < 0.2 and best[2] < 0.99
    # larger images are downsampled to 64 px first: an upscaled copy of a real image still scores ~1
    big = torch.from_numpy(real[1:2])[:, None]
    big = torch.nn.functional.interpolate(big, size=(128, 128), mode="bilinear", align_corners=False)
    assert sr_eval.best_ssim_to_real(big, real)[0] > 0.99
    # real vs real leaves the image itself out: a duplicated image finds its twin, the others do not score 1
    with_twin = np.concatenate([real, real[:1]])
    rvr = sr_eval.real_vs_real_best_ssim(with_twin)
    assert rvr[0] == pytest.approx(1.0, abs=1e-6) and rvr[-1] == pytest.approx(1.0, abs=1e-6)
    assert (rvr[1:4] < 0.999).all()


def _entry(best, w1, ratio, agreement, w1_floor=1.0, ratio_floor=0.95):
    return {"best_ssim_64": {"mean": best},
            "fidelity": {"all": {"histogram_w1": w1, "sharpness_ratio": ratio,
                                 "real_vs_real": {"histogram_w1": w1_floor, "sharpness_ratio": ratio_floor}}},
            "prompt_agreement": agreement}


def test_generated_gates_on_hand_built_entries():
    base = _entry(0.50, 10.0, 0.8, 0.90)
    ok = sr_eval.generated_gates(_entry(0.45, 11.5, 0.79, 0.85), base)  # all on the edge: 0.05, 10*1.1+0.5, -5 pts
    assert ok["best_ssim_64"]["passed"] and ok["histogram_w1"]["passed"] and ok["prompt_agreement"]["passed"]
    assert ok["sharpness_ratio"]["passed"] and ok["passed"]
    assert not sr_eval.generated_gates(_entry(0.44, 10, 0.8, 0.9), base)["best_ssim_64"]["passed"]
    assert not sr_eval.generated_gates(_entry(0.56, 10, 0.8, 0.9), base)["best_ssim_64"]["passed"]
    assert not sr_eval.generated_gates(_entry(0.5, 11.6, 0.8, 0.9), base)["histogram_w1"]["passed"]
    # within the real-vs-real noise passes even when worse than the base
    assert sr_eval.generated_gates(_entry(0.5, 2.0, 0.8, 0.9, w1_floor=2.5), _entry(0.5, 0.5, 0.8, 0.9))[
        "histogram_w1"]["passed"]
    assert not sr_eval.generated_gates(_entry(0.5, 2.0, 0.8, 0.9, w1_floor=1.5), _entry(0.5, 0.5, 0.8, 0.9))[
        "histogram_w1"]["passed"]
    # sharpness: distance from 1 in log; 1/0.8 is as far as 0.8, and noise within the floor passes
    assert sr_eval.generated_gates(_entry(0.5, 10, 1.25, 0.9), base)["sharpness_ratio"]["passed"]
    assert not sr_eval.generated_gates(_entry(0.5, 10, 0.6, 0.9), base)["sharpness_ratio"]["passed"]
    assert sr_eval.generated_gates(_entry(0.5, 10, 0.96, 0.9), _entry(0.5, 10, 1.0, 0.9))["sharpness_ratio"]["passed"]
    assert not sr_eval.generated_gates(_entry(0.5, 10, 0.8, 0.84), base)["prompt_agreement"]["passed"]
    skipped = sr_eval.generated_gates(_entry(0.5, 10, 0.8, None), _entry(0.5, 10, 0.8, None))
    assert skipped["prompt_agreement"]["passed"] is None and skipped["passed"]


@pytest.fixture(scope="module")
def staged_pipeline(untrained):
    from cxr_diffusers import CXRPipeline

    pipe = make_tiny_pipeline()
    if "super_resolution" not in getattr(CXRPipeline, "_optional_components", []):
        pytest.skip("this CXRPipeline has no super_resolution component yet")
    staged = CXRPipeline(**{**pipe.components, "super_resolution": untrained})
    staged.set_progress_bar_config(disable=True)
    return staged


def test_generated_evaluation_with_a_staged_tiny_pipeline(staged_pipeline, split):
    real = split.select(range(6))  # 224 and 300 px: large enough for 3 x 64 px
    kwargs = {"prompt_groups": ["pediatric normal", "adult pneumonia"], "n": 2, "steps": 2, "guidance": 2.0,
              "classifier": None, "progress": False}
    metrics, images, prompts, seeds = sr_eval.evaluate_super_resolution_generated(
        staged_pipeline, real, return_images=True, **kwargs)
    assert metrics["base_size"] == 64 and list(metrics["sizes"]) == ["64", "128", "192"]
    assert metrics["sizes"]["128"]["mode"] == "super_resolution" and metrics["sizes"]["64"]["mode"] == "native"
    assert seeds == [0, 1, 2, 3] and len(set(prompts)) == 2
    for size, entry in metrics["sizes"].items():
        assert images[int(size)].shape == (4, 1, int(size), int(size))
        assert entry["n_generated"] == 4 and entry["n_real"] == 6
        assert 0 < entry["best_ssim_64"]["mean"] <= 1 and set(entry["best_ssim_64"]["per_group"]) == {
            "pediatric normal", "adult pneumonia"}
        assert {"histogram_w1", "sharpness_ratio", "real_vs_real"} <= set(entry["fidelity"]["all"])
        assert entry["prompt_agreement"] is None
    assert set(metrics["gates"]) == {"128", "192"} and "W1 <= W1_base * 1.1 + 0.5" in metrics["gate_definition"]
    assert 0 < metrics["real_vs_real_best_ssim_64"]["mean"] <= 1
    json.dumps(metrics, allow_nan=False)
    # the staged images are the base images upscaled by the stage: reuse_base gives the same numbers
    reused, reused_images, _, _ = sr_eval.evaluate_super_resolution_generated(
        staged_pipeline, real, reuse_base=True, return_images=True, **kwargs)
    for size in (128, 192):
        assert torch.allclose(reused_images[size], images[size], atol=1e-5)
        assert reused["sizes"][str(size)]["best_ssim_64"]["mean"] == pytest.approx(
            metrics["sizes"][str(size)]["best_ssim_64"]["mean"], abs=1e-5)


def test_generated_evaluation_prompt_agreement_with_the_bundled_classifier(staged_pipeline, split):
    from cxr_diffusers.evaluation.runner import find_classifier

    if find_classifier() is None:
        pytest.skip("pretrained/pneumonia-classifier not present")
    metrics = sr_eval.evaluate_super_resolution_generated(
        staged_pipeline, split.select(range(6)), prompt_groups=["pediatric pneumonia"], n=1, steps=2,
        sizes=(64, 128), progress=False, reuse_base=True)
    for entry in metrics["sizes"].values():
        assert 0 <= entry["prompt_agreement"] <= 1 and entry["conditioning"]["n"] == 1
    assert metrics["gates"]["128"]["prompt_agreement"]["passed"] is not None


def test_generated_evaluation_without_a_stage_samples_directly(split):
    pipe = make_tiny_pipeline()
    if getattr(pipe, "super_resolution", None) is not None:
        pytest.skip("the tiny pipeline has a stage")
    metrics = sr_eval.evaluate_super_resolution_generated(
        pipe, split.select(range(6)), prompt_groups=["adult normal"], n=1, steps=2, sizes=(64, 128), classifier=None,
        progress=False)
    assert metrics["sizes"]["128"]["mode"] == "direct canvas"
    assert any("no super_resolution component" in note for note in metrics["notes"])
    with pytest.raises(Exception, match="reuse_base"):
        sr_eval.evaluate_super_resolution_generated(pipe, split.select(range(6)), n=1, steps=2, sizes=(64, 128),
                                                    classifier=None, reuse_base=True, progress=False)


# ------------------------------------------------------------------------------------------------------ script
@pytest.fixture(scope="module")
def saved_dataset(split, tmp_path_factory):
    import datasets

    folder = tmp_path_factory.mktemp("sr-data") / "tiny"
    datasets.DatasetDict({"test": split}).save_to_disk(str(folder))
    return folder


def test_script_baseline_only(saved_dataset, tmp_path):
    out = tmp_path / "eval"
    result = run_script_in_process("evaluate_super_resolution", "--baseline-only", "--data", saved_dataset,
                                   "--base_resolution", BASE, "--figure_images", 2, "--output_dir", out)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "super_resolution_metrics.json").read_text())
    assert metrics["model"] is None and metrics["real"]["methods"] == ["lanczos", "bicubic"]
    assert metrics["real"]["scales"]["3"]["skipped_too_small"] == 2
    assert "lanczos" in result.stdout and "bicubic" in result.stdout and "PSNR" in result.stdout
    figures = sorted(p.name for p in out.glob("*.png"))
    assert "lung_crops_96.png" in figures and len([f for f in figures if f.startswith("comparison_96_")]) == 2
    assert set(metrics["files"]) == set(figures) | {"super_resolution_metrics.json"}
    with Image.open(out / "lung_crops_96.png") as crops:
        assert crops.mode == "L"


def test_script_with_a_model_tags_its_figures(saved_dataset, untrained, tmp_path):
    from cxr_diffusers.provenance import read_provenance

    model_dir = tmp_path / "sr"
    untrained.save_pretrained(model_dir)
    out = tmp_path / "eval"
    result = run_script_in_process("evaluate_super_resolution", "--model", model_dir, "--data", saved_dataset,
                                   "--base_resolution", BASE, "--scales", 2, "--figure_images", 1,
                                   "--num_images", 4, "--output_dir", out)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "super_resolution_metrics.json").read_text())
    entry = metrics["real"]["scales"]["2"]
    assert entry["n_images"] == 4 and entry["overall"]["model"] == entry["overall"]["bicubic"]
    assert metrics["real"]["passed"] is False and "FAIL" in result.stdout
    figure = next(out.glob("comparison_64_*.png"))
    record = read_provenance(figure)
    assert record is not None and record["not_for_clinical_use"] and record["operation"] == "grid"
    assert read_provenance(out / "lung_crops_64.png") is not None


def test_script_input_errors(saved_dataset, tmp_path):
    result = run_script_in_process("evaluate_super_resolution", "--data", saved_dataset, "--output_dir", tmp_path)
    assert result.returncode == 2 and "--baseline-only" in result.stderr
    result = run_script_in_process("evaluate_super_resolution", "--baseline-only", "--generated", "--data",
                                   saved_dataset, "--output_dir", tmp_path)
    assert result.returncode == 2 and "--pipeline" in result.stderr
    result = run_script_in_process("evaluate_super_resolution", "--model", tmp_path / "missing", "--data",
                                   saved_dataset, "--output_dir", tmp_path / "o")
    assert result.returncode == 2 and "error" in result.stderr
