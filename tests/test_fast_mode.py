"""Fast mode: the tiny distilled decoder (diffusers' AutoencoderTiny for the VAE's scaled latents), its training script,
the fast folder train_lcm_distill.py exports (unet/ + scheduler/ + vae_tiny/ + card), `load_fast_pipeline`, the
CLI's `--distilled / --tiny-decoder / --fast` and the app's fast mode.

The fast folders of the CLI, loading and app tests are built in memory from the tiny test configuration (a student UNet
with a guidance embedding, an LCMScheduler, a tiny AutoencoderTiny), so only the training-script tests are slow.
"""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import (
    PROMPT,
    REPO_ROOT,
    TINY,
    assert_same_safetensors,
    load_train_script,
    make_tiny_pipeline,
)
from diffusers import AutoencoderTiny, LCMScheduler
from safetensors.torch import load_file

from cxr_diffusers import (
    MODEL_CONFIGS,
    TINY_AUTOENCODER_CONFIG,
    CXRAutoencoderKL,
    CXRInputError,
    CXRPipeline,
    CXRUNet2DConditionModel,
    get_model_config,
    load_fast_pipeline,
    read_provenance,
)
from cxr_diffusers.cli import main as cli
from cxr_diffusers.configs import SMALL_VAE_CONFIG, TINY_TEST_AUTOENCODER_CONFIG
from cxr_diffusers.evaluation.timing import count_flops
from cxr_diffusers.pipelines.pipeline_cxr import vae_downsample_factor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_autoencoder(seed=0, **overrides):
    """A random tiny-test AutoencoderTiny whose decoder's output spans grey levels (a fresh one decodes to -1: black)."""
    torch.manual_seed(seed)
    tiny = AutoencoderTiny(**{**TINY_TEST_AUTOENCODER_CONFIG, **overrides}).eval()
    with torch.no_grad():
        tiny.decoder.layers[-1].weight.mul_(20)
        tiny.decoder.layers[-1].bias.zero_()
    return tiny


def sample(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    return pipe(PROMPT, output_type="np", generator=torch.Generator().manual_seed(seed), **kwargs).images


# ---------------------------------------------------------------------------------------------- the tiny autoencoder
def test_every_named_size_has_a_tiny_autoencoder_for_its_vae_latents():
    for name in MODEL_CONFIGS:
        config = get_model_config(name)
        tiny = AutoencoderTiny(**config["tiny_autoencoder"])
        vae = CXRAutoencoderKL(**config["vae"])
        assert tiny.config.latent_channels == vae.config.latent_channels
        assert tiny.config.in_channels == tiny.config.out_channels == 1 and tiny.config.scaling_factor == 1.0
        assert vae_downsample_factor(tiny) == vae_downsample_factor(vae) == vae.downsample_factor == 8
    assert MODEL_CONFIGS["small"]["tiny_autoencoder"] is TINY_AUTOENCODER_CONFIG


def test_tiny_decoder_is_much_cheaper_than_the_base_decoder_at_256px():
    base, tiny = CXRAutoencoderKL(**SMALL_VAE_CONFIG).eval(), AutoencoderTiny(**TINY_AUTOENCODER_CONFIG).eval()
    z = torch.randn(1, 8, 32, 32)
    with torch.no_grad():
        base_flops = count_flops(lambda: base.decode(z))
        tiny_flops = count_flops(lambda: tiny.decode(z))
        assert tiny.decode(z).sample.shape == (1, 1, 256, 256)
    assert base_flops > 4 * tiny_flops  # 23.1 vs 4.35 GFLOP


def test_tiny_autoencoder_config_round_trip_and_decode_shapes(tmp_path):
    tiny = tiny_autoencoder()
    tiny.save_pretrained(tmp_path)
    loaded = AutoencoderTiny.from_pretrained(tmp_path).eval()
    for key in ("latent_channels", "in_channels", "out_channels", "num_decoder_blocks", "decoder_block_out_channels",
                "scaling_factor"):
        assert list(np.atleast_1d(loaded.config[key])) == list(np.atleast_1d(tiny.config[key])), key
    z = torch.randn(2, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = tiny.decode(z).sample, loaded.decode(z).sample
        latents = loaded.encode(torch.rand(2, 1, 64, 64) * 2 - 1).latents
    assert a.shape == (2, 1, 64, 64) and a.dtype == torch.float32 and torch.equal(a, b)
    assert latents.shape == (2, 8, 8, 8)
    with torch.no_grad():
        half = loaded.to(torch.float64).decode(z.double()).sample
    assert half.dtype == torch.float64


# ---------------------------------------------------------------------------------------------- the pipeline
def test_pipeline_with_a_tiny_vae_generates_deterministically_at_the_right_size():
    pipe = make_tiny_pipeline()
    multiple, size = pipe.size_multiple, pipe.default_size
    pipe.vae = tiny_autoencoder()
    assert pipe.tiny_decoder and pipe.size_multiple == multiple and pipe.default_size == size == 64
    a, b, c = sample(pipe, 0), sample(pipe, 0), sample(pipe, 1)
    assert a.shape == (1, 64, 64, 1) and a.dtype == np.float32 and np.isfinite(a).all()
    assert np.array_equal(a, b) and np.abs(a - c).max() > 0
    assert sample(pipe, 0, height=128, width=64).shape == (1, 128, 64, 1)
    image = pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.mode == "L" and image.size == (64, 64)
    record = read_provenance(image)
    assert record["decoder"] == "AutoencoderTiny" and record["tiny_decoder"] == "unknown"  # built in memory
    assert "distilled_unet" not in record  # the base UNet
    latents = torch.randn(1, 8, 8, 8)
    decoded = pipe.decode_latents(latents)  # latents / scaling_factor 1.0: what the tiny decoder was trained on
    assert decoded.shape == (1, 1, 64, 64) and 0 <= decoded.min() and decoded.max() <= 1
    with pytest.raises(CXRInputError, match="no tiled decoding"):
        pipe.enable_vae_tiling()
    pipe.enable_vae_slicing()
    assert np.array_equal(sample(pipe, 0), a)


def test_pipeline_saves_and_loads_with_a_tiny_vae_component(tmp_path):
    pipe = make_tiny_pipeline()
    pipe = CXRPipeline(**{**pipe.components, "vae": tiny_autoencoder()})
    pipe.set_progress_bar_config(disable=True)
    expected = sample(pipe, 3)
    pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["vae"] == ["diffusers", "AutoencoderTiny"]
    loaded = CXRPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.vae, AutoencoderTiny) and np.array_equal(sample(loaded, 3), expected)


def test_a_tiny_vae_that_does_not_fit_is_one_sentence():
    pipe = make_tiny_pipeline()
    pipe.vae = tiny_autoencoder(latent_channels=4)  # e.g. Stable Diffusion's TAESD latent space
    with pytest.raises(CXRInputError, match="tiny autoencoder .* has 4 latent channels but the UNet expects 8"):
        sample(pipe)
    pipe.vae = tiny_autoencoder(in_channels=3, out_channels=3)
    with pytest.raises(CXRInputError, match="decodes 3 channels; chest X-rays need one grey channel"):
        sample(pipe)


# ---------------------------------------------------------------------------------------------- fast folders
def test_evaluation_refuses_a_tiny_decoder_in_one_sentence():
    import torch

    from cxr_diffusers.evaluation.features import VAEFeatureExtractor
    from cxr_diffusers.evaluation.runner import _reconstruction

    for build in (lambda: VAEFeatureExtractor(tiny_autoencoder()), lambda: _reconstruction(tiny_autoencoder(),
                                                                                            torch.rand(2, 1, 32, 32), 2)):
        with pytest.raises(CXRInputError, match="needs the model's VAE .*AutoencoderTiny.*no posterior"):
            build()


def build_fast_folder(folder, tiny=True, time_cond_proj_dim=16):
    """A fast folder of the tiny configuration: student UNet (with a guidance embedding), LCMScheduler, vae_tiny/."""
    torch.manual_seed(1)
    unet = CXRUNet2DConditionModel(**{**get_model_config("tiny")["unet"], "time_cond_proj_dim": time_cond_proj_dim})
    if time_cond_proj_dim:
        torch.nn.init.normal_(unet.time_embedding.cond_proj.weight, std=0.02)
    unet.save_pretrained(folder / "unet")
    LCMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
                 original_inference_steps=50).save_pretrained(folder / "scheduler")
    if tiny:
        tiny_autoencoder().save_pretrained(folder / "vae_tiny")
    (folder / "README.md").write_text("fast folder of the tests; NOT FOR CLINICAL USE\n")
    return folder


@pytest.fixture(scope="module")
def fast_pair(tmp_path_factory):
    """`base/` (the tiny random pipeline) and its sibling fast folder `base-lcm/`."""
    root = tmp_path_factory.mktemp("fast-pair")
    make_tiny_pipeline().save_pretrained(root / "base")
    build_fast_folder(root / "base-lcm")
    return root / "base", root / "base-lcm"


def test_load_fast_pipeline_is_the_documented_diffusers_way(fast_pair):
    base, fast = fast_pair
    pipe = load_fast_pipeline(str(base))  # fast: the sibling base-lcm
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, LCMScheduler) and isinstance(pipe.vae, AutoencoderTiny) and pipe.guidance_embedded
    a, b = sample(pipe, 0, num_inference_steps=4), sample(pipe, 0, num_inference_steps=4)
    assert a.shape == (1, 64, 64, 1) and np.array_equal(a, b)

    unet = CXRUNet2DConditionModel.from_pretrained(fast, subfolder="unet")
    plain = CXRPipeline.from_pretrained(base, unet=unet, scheduler=LCMScheduler.from_pretrained(fast, subfolder="scheduler"))
    plain.vae = AutoencoderTiny.from_pretrained(fast, subfolder="vae_tiny")
    plain.set_progress_bar_config(disable=True)
    assert np.array_equal(sample(plain, 0, num_inference_steps=4), a)

    record = read_provenance(pipe(PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images[0])
    assert record["distilled_unet"] == str(fast) and record["tiny_decoder"] == str(fast / "vae_tiny")
    assert record["scheduler"] == "LCMScheduler" and record["guidance_embedded"] is True

    without = load_fast_pipeline(base, fast, tiny_decoder=False)
    assert isinstance(without.vae, CXRAutoencoderKL)
    other = load_fast_pipeline(base, fast, tiny_decoder=fast / "vae_tiny")
    assert isinstance(other.vae, AutoencoderTiny)


def test_fast_folder_errors_are_one_sentence(fast_pair, tmp_path):
    base, fast = fast_pair
    build_fast_folder(tmp_path / "no-tiny", tiny=False)
    with pytest.raises(CXRInputError, match="has no vae_tiny/ .* tiny_decoder=False"):
        load_fast_pipeline(base, tmp_path / "no-tiny")
    assert isinstance(load_fast_pipeline(base, tmp_path / "no-tiny", tiny_decoder=False).scheduler, LCMScheduler)
    shutil.copytree(fast, tmp_path / "no-unet", ignore=shutil.ignore_patterns("unet"))
    with pytest.raises(CXRInputError, match="has no unet/ \\(the student UNet\\)"):
        load_fast_pipeline(base, tmp_path / "no-unet")
    shutil.copytree(fast, tmp_path / "no-scheduler", ignore=shutil.ignore_patterns("scheduler"))
    with pytest.raises(CXRInputError, match="has no scheduler/scheduler_config.json"):
        load_fast_pipeline(base, tmp_path / "no-scheduler")
    build_fast_folder(tmp_path / "not-distilled", time_cond_proj_dim=None)
    with pytest.raises(CXRInputError, match="no guidance embedding"):
        load_fast_pipeline(base, tmp_path / "not-distilled")
    with pytest.raises(CXRInputError, match="No distilled model folder .*-lcm"):
        load_fast_pipeline(tmp_path / "no-tiny")  # no sibling "no-tiny-lcm"
    with pytest.raises(CXRInputError, match="not a local folder.*pass fast=FOLDER"):
        load_fast_pipeline("someone/cxr-model")
    with pytest.raises(CXRInputError, match="has no tiny decoder"):
        load_fast_pipeline(base, fast, tiny_decoder=tmp_path / "no-tiny")
    with pytest.raises(CXRInputError, match="describes a CXRUNet2DConditionModel, not an AutoencoderTiny"):
        load_fast_pipeline(base, fast, tiny_decoder=fast / "unet")


# ---------------------------------------------------------------------------------------------- CLI
def manifest(folder):
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def test_generate_fast_uses_the_sibling_folder_in_4_steps(fast_pair, tmp_path, capsys):
    base, fast = fast_pair
    for name in ("a", "b"):
        assert cli(["generate", str(base), "--fast", "-p", PROMPT, "-o", str(tmp_path / name)]) == 0
    assert "fast mode (distilled UNet, 4 steps, tiny decoder)" in capsys.readouterr().out
    (record,) = manifest(tmp_path / "a")
    assert record["steps"] == 4 and record["scheduler"] == "LCMScheduler"
    assert record["distilled"] == str(fast) and record["tiny_decoder"] == str(fast / "vae_tiny")
    provenance = read_provenance(tmp_path / "a" / record["file"])
    assert provenance["num_inference_steps"] == 4 and provenance["distilled_unet"] == str(fast)
    assert provenance["tiny_decoder"] == str(fast / "vae_tiny") and provenance["decoder"] == "AutoencoderTiny"
    from PIL import Image

    first, second = (np.asarray(Image.open(tmp_path / n / record["file"])) for n in ("a", "b"))
    assert first.shape == (64, 64) and np.array_equal(first, second)


def test_generate_distilled_and_tiny_decoder_separately(fast_pair, tmp_path):
    base, fast = fast_pair
    assert cli(["generate", str(base), "--distilled", str(fast), "-p", PROMPT, "--steps", "2",
                "-o", str(tmp_path / "distilled")]) == 0
    (record,) = manifest(tmp_path / "distilled")
    assert record["steps"] == 2 and record["distilled"] == str(fast) and "tiny_decoder" not in record
    provenance = read_provenance(tmp_path / "distilled" / record["file"])
    assert provenance["distilled_unet"] == str(fast) and "tiny_decoder" not in provenance
    assert cli(["generate", str(base), "--distilled", str(fast), "--tiny-decoder", "-p", PROMPT, "--steps", "2",
                "-o", str(tmp_path / "both")]) == 0
    assert manifest(tmp_path / "both")[0]["tiny_decoder"] == str(fast / "vae_tiny")
    # the base model's own UNet and scheduler with only the tiny decoder
    assert cli(["generate", str(base), "--tiny-decoder", str(fast / "vae_tiny"), "-p", PROMPT, "--steps", "2",
                "-o", str(tmp_path / "tiny")]) == 0
    (record,) = manifest(tmp_path / "tiny")
    assert record["scheduler"] != "LCMScheduler" and record["tiny_decoder"] == str(fast / "vae_tiny")
    assert "distilled" not in record and "distilled_unet" not in read_provenance(tmp_path / "tiny" / record["file"])


@pytest.mark.parametrize("argv, message", [
    (["--tiny-decoder"], "--tiny-decoder without FOLDER uses the distilled model's vae_tiny/"),
    (["--fast", "--distilled", "FAST"], "give --fast or --distilled FOLDER, not both"),
    (["--distilled", "NO_UNET"], "has no unet/ (the student UNet)"),
    (["--distilled", "NO_TINY", "--tiny-decoder"], "has no vae_tiny/ (the tiny decoder)"),
    (["--tiny-decoder", "FAST/unet"], "describes a CXRUNet2DConditionModel, not an AutoencoderTiny"),
    (["--distilled", "FAST", "--negative-prompt", "lateral"], "negative_prompt cannot be used"),
])
def test_generate_fast_mode_errors_are_one_line(fast_pair, tmp_path, capsys, argv, message):
    base, fast = fast_pair
    (tmp_path / "no-unet").mkdir()
    build_fast_folder(tmp_path / "no-tiny", tiny=False)
    names = {"FAST": str(fast), "NO_UNET": str(tmp_path / "no-unet"), "NO_TINY": str(tmp_path / "no-tiny")}
    argv = [names.get(a, a.replace("FAST", str(fast))) for a in argv]
    assert cli(["generate", str(base), *argv, "-p", PROMPT, "--steps", "2", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("cxr-diffusers generate: error:") and message in last and "Traceback" not in err


def test_generate_fast_without_a_sibling_folder(tiny_model, tmp_path, capsys):
    assert cli(["generate", tiny_model, "--fast", "-p", PROMPT, "-o", str(tmp_path)]) == 2
    assert "no distilled model folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- app
def test_app_offers_fast_mode_only_where_the_folder_exists(fast_pair, tiny_model):
    import gradio as gr

    sys.path.insert(0, str(REPO_ROOT / "spaces_app"))
    import tab_generate
    from state import AppConfig, AppState

    base, fast = fast_pair
    state = AppState(AppConfig(model=str(base)))
    state.load_pipeline()
    assert state.fast_folder == str(fast) and tab_generate.mode_choices(state) == ["standard", tab_generate.FAST_MODE]
    generate = tab_generate.make_generate_fn(state)
    args = [PROMPT, "", 64, 4, 4.0, "lcm", 5, False, 1, "none"]

    def run(*inputs):
        return generate(*inputs, progress=lambda *a, **k: None)

    _, timing, _, records, paths, _ = run(*args, tab_generate.FAST_MODE)
    assert records[0]["scheduler"] == "LCMScheduler" and records[0]["distilled_unet"] == str(fast)
    assert records[0]["tiny_decoder"] == str(fast / "vae_tiny") and records[0]["seed"] == 5
    assert "the distilled model" in timing
    again = run(*args, tab_generate.FAST_MODE)[4]
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(paths[0])), np.asarray(Image.open(again[0])))
    standard = run(*args[:5], "dpm++", *args[6:])[3]  # the default mode
    assert standard[0]["scheduler"] == "DPMSolverMultistepScheduler" and "distilled_unet" not in standard[0]

    plain = AppState(AppConfig(model=tiny_model))
    plain.load_pipeline()
    assert not plain.fast_available and tab_generate.mode_choices(plain) == ["standard"]
    with pytest.raises(gr.Error, match="Mode must be one of standard"):
        tab_generate.make_generate_fn(plain)(*args, tab_generate.FAST_MODE, progress=lambda *a, **k: None)


# ---------------------------------------------------------------------------------------------- training scripts
def train_tiny(data, vae, output_dir, *extra):
    return load_train_script("train_tiny_autoencoder").main(
        ["--config", TINY, "--pretrained_vae_model_name_or_path", str(vae), "--train_data_dir", data,
         "--output_dir", str(output_dir), *map(str, extra)])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("teacher")
    make_tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def trained_tiny(teacher, xray_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-autoencoder")
    train_tiny(xray_dataset, teacher, out, "--edge_loss_weight", "0.1")
    return out


@pytest.mark.slow
def test_train_tiny_autoencoder_writes_a_loadable_model_with_metrics_and_card(trained_tiny, teacher):
    tiny = AutoencoderTiny.from_pretrained(trained_tiny / "vae_tiny")
    assert tiny.config.latent_channels == 8 and tiny.config.scaling_factor == 1.0
    summary = json.loads((trained_tiny / "vae_tiny" / "training_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["base_vae"] == str(teacher)
    validation = summary["validation"]
    for part in ("tiny_decoder", "base_decoder", "tiny_roundtrip"):
        assert set(validation[part]) == {"psnr", "ssim", "sharpness_ratio"}
        assert np.isfinite(validation[part]["psnr"]) and validation[part]["psnr"] > 0
    assert np.isfinite(validation["tiny_vs_base_decoder"]["psnr"]) and validation["num_images"] == 2
    assert summary["decode_cost"]["tiny_gflop_per_image"] < summary["decode_cost"]["base_gflop_per_image"]
    logged = [json.loads(line) for line in (trained_tiny / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "loss" in row] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(row["loss"]) and "edge" in row and "encoder_mse" in row for row in logged if "loss" in row)
    last_validation = [row for row in logged if "val_psnr" in row][-1]  # in-loop validation sees the shipped EMA weights
    assert last_validation["step"] == 6 and last_validation["val_psnr"] == pytest.approx(validation["tiny_decoder"]["psnr"])
    card = (trained_tiny / "vae_tiny" / "README.md").read_text()
    assert "NOT FOR CLINICAL USE" in card and str(teacher) in card and "AutoencoderTiny" in card
    assert (trained_tiny / "loss.png").is_file() and (trained_tiny / "vae_tiny" / "reconstructions.png").is_file()
    assert [p.name for p in sorted(trained_tiny.glob("checkpoint-*"))] == ["checkpoint-3", "checkpoint-6"]
    assert (trained_tiny / "checkpoint-6" / "vae_tiny_ema" / "diffusion_pytorch_model.safetensors").is_file()
    pipe = make_tiny_pipeline()
    pipe.vae = tiny.eval()
    assert sample(pipe).shape == (1, 64, 64, 1)


@pytest.mark.slow
def test_train_tiny_autoencoder_resumes_exactly_and_reuses_the_latent_cache(teacher, xray_dataset, tmp_path):
    """6 steps in one run == 3 steps, stop, resume for 3 more from checkpoint-3 (model, EMA, optimizer, RNG), in
    another output folder that finds the first run's base latents in --latents_cache_dir and must not encode."""
    cache = tmp_path / "latents"
    args = ["--validation_steps", "100", "--latents_cache_dir", cache]
    full, half = tmp_path / "full", tmp_path / "half"
    train_tiny(xray_dataset, teacher, full, *args)
    assert len(list(cache.glob("latents-*.safetensors"))) == 1 and not (full / "latent_cache.safetensors").exists()
    half.mkdir()
    shutil.copytree(full / "checkpoint-3", half / "checkpoint-3")
    script = load_train_script("train_tiny_autoencoder")

    def must_not_encode(*args, **kwargs):
        raise AssertionError("the cached latents should have been reused")

    script.train_ldm.encode_moments = must_not_encode
    script.main(["--config", TINY, "--pretrained_vae_model_name_or_path", str(teacher), "--train_data_dir", xray_dataset,
                 "--output_dir", str(half), "--resume_from_checkpoint", "latest", *map(str, args)])
    assert_same_safetensors(full, half, ("vae_tiny", "checkpoint-6/vae_tiny", "checkpoint-6/vae_tiny_ema"))


@pytest.mark.slow
def test_train_decoder_only_leaves_the_encoder_and_decodes_posterior_means(teacher, xray_dataset, tmp_path,
                                                                           monkeypatch):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    def no_sampling(*args, **kwargs):
        raise AssertionError("--decoder_input mean must decode the posterior mean, not samples")

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", no_sampling)
    torch.manual_seed(0)
    start = AutoencoderTiny(**TINY_TEST_AUTOENCODER_CONFIG)
    start.save_pretrained(tmp_path / "start")
    train_tiny(xray_dataset, teacher / "vae", tmp_path / "run", "--pretrained_model_name_or_path", tmp_path / "start",
               "--train_decoder_only", "--decoder_input", "mean", "--max_train_steps", "2", "--crop_size", "64",
               "--ema_decay", "0.5")
    before = load_file(tmp_path / "start" / "diffusion_pytorch_model.safetensors")
    after = load_file(tmp_path / "run" / "vae_tiny" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("encoder."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    summary = json.loads((tmp_path / "run" / "vae_tiny" / "training_summary.json").read_text())
    assert summary["train_decoder_only"] and "tiny_roundtrip" not in summary["validation"]


@pytest.mark.parametrize("flags, message", [
    (["--crop_size", "128"], "--crop_size 128 cannot exceed --resolution 64"),
    (["--edge_loss_weight", "-1"], "--edge_loss_weight must be >= 0"),
    (["--ema_decay", "1"], "--ema_decay must be in [0, 1)"),
    (["--num_validation_images", "0"], "--num_validation_images must be positive"),
])
def test_train_tiny_autoencoder_bad_flags_exit_with_one_line(teacher, xray_dataset, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        train_tiny(xray_dataset, teacher, tmp_path, *flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]


def test_train_tiny_autoencoder_needs_a_base_vae_and_a_matching_size(teacher, xray_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit):
        load_train_script("train_tiny_autoencoder").main(["--config", TINY, "--train_data_dir", xray_dataset,
                                                          "--output_dir", str(tmp_path)])
    assert "--pretrained_vae_model_name_or_path" in capsys.readouterr().err
    with pytest.raises(CXRInputError, match="--resolution must be a multiple of 8"):
        train_tiny(xray_dataset, teacher, tmp_path, "--resolution", "60", "--crop_size", "32")
    with pytest.raises(CXRInputError, match="4 latent channels but the base VAE 8"):
        AutoencoderTiny(**{**TINY_TEST_AUTOENCODER_CONFIG, "latent_channels": 4}).save_pretrained(tmp_path / "rgb")
        train_tiny(xray_dataset, teacher, tmp_path / "run", "--pretrained_model_name_or_path", tmp_path / "rgb")


@pytest.mark.slow
def test_lcm_distill_exports_the_fast_folder_with_the_tiny_decoder(teacher, trained_tiny, xray_dataset, tmp_path):
    load_train_script("train_lcm_distill").main(
        ["--config", TINY, "--pretrained_teacher_model", str(teacher), "--train_data_dir", xray_dataset,
         "--output_dir", str(tmp_path / "lcm"), "--validation_steps", "100", "--max_train_steps", "2",
         "--tiny_autoencoder", str(trained_tiny / "vae_tiny")])
    fast = tmp_path / "lcm" / "fast"
    assert sorted(p.name for p in fast.iterdir()) == ["README.md", "scheduler", "training_summary.json", "unet",
                                                       "vae_tiny"]
    assert (tmp_path / "lcm" / "pipeline" / "model_index.json").is_file()  # the whole pipeline is still written
    card = (fast / "README.md").read_text()
    assert str(teacher) in card and "NOT FOR CLINICAL USE" in card and 'subfolder="vae_tiny"' in card
    assert (fast / "vae_tiny" / "README.md").is_file()  # the tiny autoencoder's own card travels with it
    pipe = load_fast_pipeline(teacher, fast)
    pipe.set_progress_bar_config(disable=True)
    a, b = sample(pipe, 0, num_inference_steps=4), sample(pipe, 0, num_inference_steps=4)
    assert a.shape == (1, 64, 64, 1) and np.array_equal(a, b)
    distilled = CXRPipeline.from_pretrained(tmp_path / "lcm" / "pipeline")
    shipped = CXRUNet2DConditionModel.from_pretrained(fast, subfolder="unet")
    for key, value in distilled.unet.state_dict().items():
        assert torch.equal(value, shipped.state_dict()[key])
    assert LCMScheduler.from_pretrained(fast, subfolder="scheduler").config == distilled.scheduler.config


def test_lcm_distill_refuses_a_tiny_autoencoder_that_is_not_one(teacher, xray_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_train_script("train_lcm_distill").main(
            ["--config", TINY, "--pretrained_teacher_model", str(teacher), "--train_data_dir", xray_dataset,
             "--output_dir", str(tmp_path), "--tiny_autoencoder", str(tmp_path / "missing")])
    assert exit_info.value.code == 2 and "is not a saved AutoencoderTiny folder" in capsys.readouterr().err
    tiny_autoencoder(latent_channels=4).save_pretrained(tmp_path / "four")
    with pytest.raises(CXRInputError, match="--tiny_autoencoder .* 4 latent channels but the UNet expects 8"):
        load_train_script("train_lcm_distill").main(
            ["--config", TINY, "--pretrained_teacher_model", str(teacher), "--train_data_dir", xray_dataset,
             "--output_dir", str(tmp_path / "out"), "--tiny_autoencoder", str(tmp_path / "four")])
