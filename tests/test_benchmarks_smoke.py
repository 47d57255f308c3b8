"""The benchmark scripts run end to end at toy sizes and write their JSON; the sampling decision rule and the
real-vs-real scorer are checked on constructed inputs. No speed is asserted here: speed claims live in
benchmarks/results/, measured by running the benchmarks themselves."""

import importlib.util
import json
import sys

import numpy as np
import pytest
from conftest import FIXTURES_DIR, REPO_ROOT

from cxr_diffusers.evaluation.sampling_sweep import (
    RealScorer,
    floor_summary,
    recommend,
    within_noise,
)


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)  # sweep_sampling imports bench_sampling by name
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------------------- the decision rule
def _candidate(name, evals, seconds, **scores):
    return {"name": name, "unet_evals_per_image": evals, "seconds_per_image": seconds, "scores": scores}


def test_rule_picks_the_fewest_steps_within_noise_of_the_best_on_every_score():
    candidates = [
        _candidate("ddim_4", 8, 0.4, fd=12.0, w1=4.3),     # FD 2.0 above the best: outside a tolerance of 1.0
        _candidate("dpm++_8", 16, 0.8, fd=10.5, w1=4.2),   # within 1.0 and 0.5 of the best
        _candidate("unipc_8", 16, 0.7, fd=10.9, w1=4.4),   # within too, and faster: the tie on evaluations is broken
        _candidate("dpm++_25", 50, 2.4, fd=10.0, w1=4.0),  # the best on both
        _candidate("euler_6", 12, 0.6, fd=10.2, w1=4.9),   # good FD, histogram 0.9 above the best
    ]
    rule = recommend(candidates, {"fd": 1.0, "w1": 0.5})
    assert rule["best"] == {"fd": 10.0, "w1": 4.0}
    assert rule["recommended"] == "unipc_8"
    assert rule["qualifying"] == ["unipc_8", "dpm++_8", "dpm++_25"]  # cheapest first
    assert rule["checks"]["ddim_4"]["fd"]["within"] is False and rule["checks"]["ddim_4"]["w1"]["within"] is True
    assert rule["checks"]["euler_6"]["w1"]["within"] is False
    # a larger noise admits the 4-step configuration
    assert recommend(candidates, {"fd": 2.5, "w1": 1.0})["recommended"] == "ddim_4"


def test_rule_judges_a_guidance_interval_variant_on_real_scores_only():
    # the case measured on the v1 model: the interval variant is much closer to real images (fd) but, by design, far
    # from the full-guidance reference (ref); it must neither fail on ref nor set the best ref for the others
    variant = {**_candidate("unipc_8_gi", 14, 0.9, fd=36.0, ref=10.1), "exempt_scores": ("ref",)}
    candidates = [_candidate("ddim_100", 200, 8.3, fd=48.8, ref=4.6), _candidate("unipc_8", 16, 0.9, fd=55.3, ref=4.9),
                  variant]
    rule = recommend(candidates, {"fd": 14.3, "ref": 3.5})
    assert rule["best"] == {"fd": 36.0, "ref": 4.6}
    assert "ref" not in rule["checks"]["unipc_8_gi"] and rule["checks"]["unipc_8"]["fd"]["within"] is False
    assert rule["qualifying"] == ["unipc_8_gi", "ddim_100"] and rule["recommended"] == "unipc_8_gi"
    without = recommend([{k: v for k, v in c.items() if k != "exempt_scores"} for c in candidates], {"fd": 14.3, "ref": 3.5})
    assert without["recommended"] == "ddim_100"  # the artefact the exemption removes


def test_rule_ignores_scores_without_tolerance_fails_missing_values_and_takes_a_fixed_best():
    candidates = [_candidate("a_4", 8, 0.1, fd=None, w1=1.0), _candidate("b_8", 16, 0.2, fd=3.0, w1=1.0)]
    assert recommend(candidates, {"fd": 0.5, "w1": None})["recommended"] == "b_8"  # a_4 has no FD: it fails
    assert recommend(candidates, {"fd": None, "w1": 0.1})["recommended"] == "a_4"  # FD not tested
    fixed = recommend(candidates, {"fd": 0.5}, best={"fd": 2.0})  # the reference's own score as the best
    assert fixed["best"]["fd"] == 2.0 and fixed["recommended"] is None and "no candidate" in fixed["note"]
    nothing = recommend(candidates, {"fd": None})
    assert nothing["recommended"] is None and "no score has a noise tolerance" in nothing["note"]
    assert within_noise(1.2, 1.0, 0.2) and not within_noise(1.3, 1.0, 0.2) and within_noise(0.5, 1.0, 0.0)
    assert within_noise(1.0, 1.0, None) is None and within_noise(float("nan"), 1.0, 1.0) is False


def test_real_scorer_holds_out_the_generated_mix_and_its_floor_matches_real_images():
    import torch

    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.uniform(0, 1, (40, 1, 16, 16)).astype(np.float32))
    real[20:] = real[20:] * 0.5  # a darker second group
    real_groups = ["adult normal"] * 20 + ["adult pneumonia"] * 20

    def features(images):
        x = torch.as_tensor(images)
        return torch.nn.functional.avg_pool2d(x, 4).flatten(1).numpy().astype(np.float64)

    generated_groups = ["adult normal"] * 5 + ["adult pneumonia"] * 5
    scorer = RealScorer(real, real_groups, features, generated_groups, draws=4, seed=0)
    assert len(scorer.held) == 10 and len(scorer.reference) == 30 and not scorer.pooled
    assert sorted(scorer.scopes) == ["adult normal", "adult pneumonia", "all"]
    held_groups = [real_groups[i] for i in scorer.held]
    assert held_groups.count("adult normal") == 5 and held_groups.count("adult pneumonia") == 5
    floors = scorer.floors["all"]
    assert len(floors["fd_classifier"]["values"]) == 4 and floors["fd_pair"]["mean"] > 0
    assert scorer.tolerance("fd_classifier") == floors["fd_classifier"]["std"] > 0
    assert scorer.tolerance("sharpness_log_error") == floors["sharpness_log_ratio"]["std"]
    # the held-out real images themselves score as the first draw of the floor
    own = scorer.score(real[scorer.held], [real_groups[i] for i in scorer.held])
    assert own["all"]["fd_classifier"] == pytest.approx(floors["fd_classifier"]["values"][0])
    assert own["all"]["histogram_w1"] == pytest.approx(floors["histogram_w1"]["values"][0])
    # a washed-out generator is far outside the floor
    grey = torch.full((10, 1, 16, 16), 0.5)
    far = scorer.score(grey, generated_groups)["all"]
    assert far["histogram_w1"] > floors["histogram_w1"]["mean"] + 10 * floors["histogram_w1"]["std"]
    assert far["sharpness_ratio"] < 0.01
    assert floor_summary([None, 1.0]) == {"mean": 1.0, "std": None, "values": [1.0]}


def test_real_scorer_pools_real_images_whose_groups_are_unknown():
    import torch

    real = torch.rand(12, 1, 8, 8)
    scorer = RealScorer(real, None, None, ["pediatric normal"] * 4, draws=2)
    assert scorer.pooled and scorer.scopes == ["all"] and len(scorer.held) == 4
    assert scorer.floors["all"]["fd_classifier"] is None and scorer.floors["all"]["histogram_w1"]["mean"] >= 0


# ---------------------------------------------------------------------------------------------- toy fixtures
@pytest.fixture(scope="module")
def real_dataset(tmp_path_factory):
    """A saved DatasetDict ("test" split) of the shipped real X-rays with sources, labels and ages (all four prompt
    groups), four slightly noisy copies of each at 64 px, as `cxr-diffusers data build` writes datasets."""
    import datasets
    from PIL import Image

    files = [(p, "kermany", 5) for p in sorted((FIXTURES_DIR / "kermany").rglob("*.jpeg"))]
    files += [(p, "nih", 50) for p in sorted((FIXTURES_DIR / "nih").glob("*.png"))]
    rng = np.random.default_rng(0)
    rows = {"image": [], "labels": [], "source": [], "age": []}
    for copy in range(4):
        for path, source, age in files:
            a = np.asarray(Image.open(path).convert("L").resize((64, 64)), dtype=np.float32)
            a = np.clip(a + rng.normal(0, 3 * copy, a.shape), 0, 255).astype(np.uint8)
            rows["image"].append(Image.fromarray(a, mode="L"))
            rows["labels"].append(["pneumonia"] if "PNEUMONIA" in str(path) or "/Pn_" in str(path) else [])
            rows["source"].append(source)
            rows["age"].append(age)
    folder = tmp_path_factory.mktemp("real")
    data = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image(mode="L"))
    datasets.DatasetDict({"test": data}).save_to_disk(folder)
    return str(folder)


@pytest.fixture(scope="module")
def distilled_folder(tmp_path_factory):
    """A fast folder of the tiny configuration: a student UNet with a guidance embedding, its LCMScheduler and an
    AutoencoderTiny in vae_tiny/ (random weights)."""
    import torch
    from diffusers import AutoencoderTiny, LCMScheduler

    from cxr_diffusers import CXRUNet2DConditionModel, get_model_config
    from cxr_diffusers.configs import TINY_TEST_AUTOENCODER_CONFIG

    folder = tmp_path_factory.mktemp("fast")
    torch.manual_seed(1)
    CXRUNet2DConditionModel(**{**get_model_config("tiny")["unet"], "time_cond_proj_dim": 16}).save_pretrained(
        folder / "unet")
    LCMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                 original_inference_steps=50).save_pretrained(folder / "scheduler")
    AutoencoderTiny(**TINY_TEST_AUTOENCODER_CONFIG).save_pretrained(folder / "vae_tiny")
    return str(folder)


# -------------------------------------------------------------------------------------------- the benchmarks
@pytest.mark.slow
def test_sweep_sampling_smoke(tmp_path, real_dataset, one_torch_thread, capsys):
    out = tmp_path / "sweep.json"
    result = _load("sweep_sampling").main([
        "--model", "tiny", "--size", "32", "-n", "2", "--schedulers", "ddim", "dpm++", "--steps", "2",
        "--reference", "ddim:3", "--guidance-intervals", "0.5,inf", "--gi-scheduler", "ddim", "--gi-steps", "3", "--real", real_dataset, "--floor-draws", "3",
        "--no-progress", "--output", str(out),
    ])
    saved = json.loads(out.read_text())
    assert saved == result and saved["benchmark"] == "sweep_sampling" and saved["model"].startswith("random-init tiny")
    configs = {c["name"]: c for c in saved["configs"]}
    assert list(configs)[:4] == ["ddim_3_noise", "ddim_3", "ddim_2", "dpm++_2"] and len(configs) == 5
    assert {c["role"] for c in saved["configs"]} == {"reference_noise", "reference", "sweep", "guidance_interval"}
    for c in saved["configs"]:
        assert c["n_images"] == 8 and c["seconds_per_image"] > 0  # 2 images x 4 prompt groups
        assert set(c["scores"]) == {"fd_classifier", "histogram_w1", "sharpness_log_error", "fd_vs_reference"}
        assert c["scores"]["histogram_w1"] >= 0 and c["vs_real"]["all"]["n_generated"] == 8
    assert configs["ddim_2"]["unet_evals_per_image"] == 4 and configs["ddim_3"]["scores"]["fd_vs_reference"] > 0
    assert configs["ddim_2"]["vs_reference"]["psnr_paired"] > 0 and configs["ddim_3_noise"]["first_seed"] == 1_000_000
    gi = configs["ddim_3_gi[0.5,inf]"]  # DDIM 3 steps: t = 999, 500, 0; sigma(0) < 0.5, so one step is unguided
    assert gi["role"] == "guidance_interval" and gi["guidance_interval"] == [0.5, "inf"]
    assert gi["unet_evals_per_image"] == 5
    floors = saved["real"]["floors"]["all"]
    assert saved["real"]["n_held_out"] == 8 and floors["fd_classifier"]["std"] is not None
    tol = saved["tolerances"]
    assert set(tol) == {"fd_classifier", "histogram_w1", "sharpness_log_error", "fd_vs_reference"}
    assert tol["histogram_w1"]["tolerance"] == max(tol["histogram_w1"]["real_vs_real_std"],
                                                   tol["histogram_w1"]["seed_delta"])
    decision = saved["decision"]
    assert "cheapest" in decision["rule"] and set(decision["final"]["checks"]) == set(configs) - {"ddim_3_noise"}
    recommended = decision["recommended"]
    assert recommended is None or recommended["name"] in decision["final"]["qualifying"]
    assert (tmp_path / "sweep.png").stat().st_size > 0 and saved["plot"].endswith("sweep.png")
    assert "hist W1" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_sampling_smoke(tmp_path, real_dataset, distilled_folder, one_torch_thread, capsys):
    out = tmp_path / "sampling.json"
    result = _load("bench_sampling").main([
        "--model", "tiny", "--sizes", "32", "--batch-sizes", "2", "--seed-steps", "2", "--steps", "2",
        "--distilled", distilled_folder, "--lcm-steps", "1", "4", "--repeats", "1", "--matmul-size", "128",
        "--quality-n", "2", "--real", real_dataset, "--floor-draws", "3", "--no-progress", "--output", str(out),
    ])
    saved = json.loads(out.read_text())
    assert saved["model"].startswith("random-init tiny") and saved["tiny_decoder"].endswith("vae_tiny")
    names = ["seed_ddim2", "default", "lcm_1", "lcm_4", "lcm_1_tiny", "lcm_4_tiny"]
    assert [r["recipe"] for r in saved["rows"]] == names
    assert saved["pipeline_defaults"]["steps"] == result["pipeline_defaults"]["steps"] >= 1
    assert saved["recipes"]["lcm_4_tiny"]["decoder"] == "AutoencoderTiny"
    for row in saved["rows"]:
        assert row["ms_per_image"] > 0 and row["peak_rss_mb"] > 0 and row["speedup_vs_seed"] > 0
        shares = row["components"]["shares"]
        assert set(shares) == {"text", "unet", "decoder", "other"}
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6) and min(shares.values()) >= 0
        assert shares["unet"] > 0 and shares["decoder"] > 0 and shares["text"] > 0
        assert row["flops"]["unet_gflops"] > 0 and 0 < row["flops"]["unet_fraction_of_peak"]
        assert 0 < row["flops"]["decoder_fraction_of_peak"]
    rows = {r["recipe"]: r for r in saved["rows"]}
    assert rows["seed_ddim2"]["components"]["unet_evals_per_image"] == 4  # two UNet calls per step
    assert rows["lcm_4"]["components"]["unet_evals_per_image"] == 4  # one per step
    assert rows["lcm_4_tiny"]["flops"]["decoder_gflop_per_image"] > 0
    assert set(saved["flops"]["profile"]) == {"unet", "decoder", "distilled_unet", "tiny_decoder"}
    quality = saved["quality"]
    assert quality["size"] == 32 and quality["fd_pair_floor"] > 0
    assert set(quality["recipes"]) == {*names, "reference_dpm++_25"}
    assert quality["recipes"]["lcm_4"]["vs_default"]["fd"] > 0
    assert quality["recipes"]["lcm_4"]["vs_real"]["all"]["n_generated"] == 8
    assert isinstance(quality["default_vs_reference"]["within_noise"], bool)
    goals = saved["goals"]
    assert goals["size"] == 32 and goals["at_gate_conditions"] is False
    assert isinstance(goals["default"]["at_most_1_s_per_image"], bool)
    assert set(goals["distilled_4"]) == {"lcm_4", "lcm_4_tiny", "pass"}
    assert isinstance(goals["distilled_4"]["lcm_4"]["fd_within_15pct_of_default"], bool)
    assert isinstance(goals["matmul_peak"]["unet"]["at_least_70pct"], bool)
    assert goals["matmul_peak"]["decoder"]["holding_back"]
    assert "ms/img" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_sampling_without_real_images_or_distilled_model(tmp_path, one_torch_thread):
    out = tmp_path / "sampling.json"
    _load("bench_sampling").main([
        "--model", "tiny", "--sizes", "32", "--batch-sizes", "1", "--seed-steps", "2", "--steps", "2",
        "--reference-steps", "2", "--repeats", "1", "--matmul-size", "128", "--quality-n", "2", "--profile", "off",
        "--no-progress", "--output", str(out),
    ])
    saved = json.loads(out.read_text())
    assert [r["recipe"] for r in saved["rows"]] == ["seed_ddim2", "default"]
    assert saved["quality"]["recipes"]["seed_ddim2"]["vs_real"] is None
    assert saved["quality"]["fd_pair_floor"] is None and "default_vs_reference" not in saved["quality"]
    goals = saved["goals"]
    assert goals["default"]["within_noise_of_reference_steps"] is True  # the default is the reference-step recipe
    assert goals["distilled_4"]["pass"] is None and "no distilled model" in goals["distilled_4"]["note"]


@pytest.mark.slow
def test_bench_sampling_super_resolution_rows(tmp_path, one_torch_thread, capsys):
    """512/768 px rows through an (untrained, tiny) stage, timed beside the native size in the same run."""
    import torch

    from cxr_diffusers import CXRSuperResolutionModel

    torch.manual_seed(0)
    CXRSuperResolutionModel(block_out_channels=8, num_blocks=1).save_pretrained(tmp_path / "sr")
    out = tmp_path / "sampling.json"
    _load("bench_sampling").main([
        "--model", "tiny", "--sizes", "32", "--batch-sizes", "1", "2", "--seed-steps", "2", "--steps", "2",
        "--reference-steps", "2", "--repeats", "1", "--matmul-size", "128", "--quality-n", "0", "--profile", "off",
        "--super-resolution", str(tmp_path / "sr"), "--no-progress", "--output", str(out),
    ])
    saved = json.loads(out.read_text())
    assert [r["recipe"] for r in saved["rows"]] == ["seed_ddim2", "default"] * 2  # the main table as before
    section = saved["super_resolution"]
    assert section["model"] == str(tmp_path / "sr") and section["sizes"] == [128, 192] and section["native_size"] == 64
    assert section["config"]["block_out_channels"] == 8
    rows = section["rows"]
    assert [(r["size"], r["batch"], r["route"], r["scale"]) for r in rows] == [
        (64, 1, "native", None), (128, 1, "super_resolution", 2), (192, 1, "super_resolution", 3),
        (64, 2, "native", None), (128, 2, "super_resolution", 2), (192, 2, "super_resolution", 3)]
    for row in rows:
        assert row["ms_per_image"] > 0 and row["ratio_to_native"] > 0
        shares = row["components"]["shares"]
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)
        if row["scale"]:
            assert shares["super_resolution"] > 0 and row["flops"]["super_resolution_gflops"] > 0
    assert rows[0]["ratio_to_native"] == pytest.approx(1.0)
    goals = saved["goals"]["super_resolution"]
    assert goals["batch"] == 2 and goals["at_gate_conditions"] is False
    assert goals["128"]["at_most"] == 2.5 and goals["192"]["at_most"] == 5.0
    assert goals["pass"] == (goals["128"]["within"] and goals["192"]["within"])
    assert "x native" in capsys.readouterr().out

    _load("bench_sampling").main([
        "--model", "tiny", "--sizes", "32", "--batch-sizes", "1", "--seed-steps", "2", "--steps", "2",
        "--reference-steps", "2", "--repeats", "1", "--matmul-size", "128", "--quality-n", "0", "--profile", "off",
        "--super-resolution", "none", "--no-progress", "--output", str(out),
    ])
    saved = json.loads(out.read_text())
    assert "rows" not in saved["super_resolution"] and saved["goals"]["super_resolution"]["pass"] is None


@pytest.mark.slow
def test_bench_training_smoke(tmp_path):
    out = tmp_path / "training.json"
    _load("bench_training").main(["--configs", "tiny", "--steps", "1", "--batch-size", "2", "--output", str(out)])
    rows = json.loads(out.read_text())["rows"]
    assert [(r["config"], r["model"]) for r in rows] == [("tiny", "vae"), ("tiny", "unet")]
    assert all(r["samples_per_s"] > 0 for r in rows)
