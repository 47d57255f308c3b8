"""The benchmark scripts run end to end at toy sizes and write their JSON. No speed is asserted here: speed claims
live in benchmarks/results/, measured by running the benchmarks themselves."""

import importlib.util
import json

import pytest
from conftest import REPO_ROOT


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_bench_sampling_smoke(tmp_path, capsys):
    out = tmp_path / "sampling.json"
    result = _load("bench_sampling").main([
        "--model", "tiny", "--sizes", "64", "--batch-sizes", "2", "--seed-steps", "2", "3", "--steps", "2",
        "--repeats", "1", "--compile", "off", "--channels-last", "off", "--flops-repeats", "1", "--matmul-size", "256",
        "--output", str(out),
    ])
    saved = json.loads(out.read_text())
    assert saved["model"].startswith("random-init tiny")
    recipes = {(r["batch"], r["recipe"]) for r in saved["rows"]}
    assert recipes == {(2, n) for n in ("seed_ddim2", "seed_ddim3", "ours")}
    assert all(r["ms_per_image"] > 0 and r["peak_rss_mb"] > 0 for r in saved["rows"])
    quality = saved["quality"]["64"]
    assert quality["reference"] == "seed_ddim3" and quality["n_images"] == 2
    assert quality["fd_ours_vs_seed_ddim3"] > 0 and "psnr_seed_ddim2_vs_seed_ddim3" in quality
    flops = saved["flops"]["64"]["ours_unet"]
    assert flops["gflop_per_forward"] > 0 and 0 < flops["fraction_of_matmul_peak"]
    assert "goal_256" not in result  # only reported when 256 px is measured
    assert "ms/img" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_sampling_single_image_skips_fd_instead_of_failing(tmp_path):
    out = tmp_path / "sampling.json"
    _load("bench_sampling").main([
        "--model", "tiny", "--sizes", "64", "--batch-sizes", "1", "--seed-steps", "2", "3", "--steps", "2",
        "--repeats", "1", "--compile", "off", "--channels-last", "off", "--flops-repeats", "1", "--matmul-size", "128",
        "--output", str(out),
    ])
    quality = json.loads(out.read_text())["quality"]["64"]
    assert quality["n_images"] == 1 and quality["fd_ours_vs_seed_ddim3"] is None and "at least 2" in quality["note"]
    assert quality["psnr_ours_vs_seed_ddim3"] > 0


@pytest.mark.slow
def test_bench_training_smoke(tmp_path):
    out = tmp_path / "training.json"
    _load("bench_training").main(["--configs", "tiny", "--steps", "1", "--batch-size", "2", "--output", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["config"], r["model"]) for r in rows] == [("tiny", "vae"), ("tiny", "unet")]
    assert all(r["samples_per_s"] > 0 for r in rows)
