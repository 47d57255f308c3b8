"""Smoke tests of the accelerate training scripts on the tiny configuration, and exact resume.

Each script runs a few steps on real X-rays: a small sample of the shared Kermany data when ../shared/data is present,
otherwise the shipped fixtures. They run in-process through each script's `main(argv)`.
"""

import json
import shutil

import datasets
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cxr_diffusers import CXRAutoencoderKL, CXRPipeline

from conftest import TINY, load_train_script

load_script = load_train_script  # (name) -> a fresh module of train_scripts/<name>.py


@pytest.fixture(scope="module")
def tiny_vae(xray_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae")
    load_script("train_vae").main(["--config", TINY, "--train_data_dir", xray_dataset, "--output_dir", str(out)])
    return out


@pytest.mark.slow
def test_train_vae_produces_a_loadable_vae_with_scaling_factor(tiny_vae):
    vae = CXRAutoencoderKL.from_pretrained(tiny_vae / "vae")
    assert vae.config.scaling_factor != 1.0 and np.isfinite(vae.config.scaling_factor)
    summary = json.loads((tiny_vae / "vae" / "training_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["validation"]["psnr"] > 0
    logged = [json.loads(line) for line in (tiny_vae / "metrics.jsonl").read_text().splitlines()]
    last_validation = [row for row in logged if "val_psnr" in row][-1]  # in-loop validation sees the shipped EMA weights
    assert last_validation["step"] == 6 and last_validation["val_psnr"] == pytest.approx(summary["validation"]["psnr"])
    assert (tiny_vae / "vae" / "README.md").read_text().count("Not for clinical use") == 1
    assert (tiny_vae / "loss.png").is_file() and list((tiny_vae / "samples").glob("reconstructions-*.png"))
    assert [p.name for p in sorted(tiny_vae.glob("checkpoint-*"))] == ["checkpoint-3", "checkpoint-6"]
    assert (tiny_vae / "checkpoint-6" / "vae" / "diffusion_pytorch_model.safetensors").is_file()
    assert (tiny_vae / "checkpoint-6" / "vae_ema").is_dir()


@pytest.mark.slow
def test_decoder_only_fine_tune_of_a_deeper_decoder_keeps_the_latent_space(tiny_vae, xray_dataset, tmp_path,
                                                                           monkeypatch):
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    def no_sampling(*args, **kwargs):
        raise AssertionError("--decoder_input mode must decode the posterior mode, not samples")

    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", no_sampling)
    load_script("train_vae").main(["--config", TINY, "--train_data_dir", xray_dataset, "--output_dir", str(tmp_path),
                                   "--pretrained_model_name_or_path", str(tiny_vae / "vae"), "--train_decoder_only",
                                   "--decoder_layers_per_block", "2", "--decoder_input", "mode",
                                   "--max_train_steps", "2"])
    before = CXRAutoencoderKL.from_pretrained(tiny_vae / "vae")
    after = CXRAutoencoderKL.from_pretrained(tmp_path / "vae")
    assert after.config.decoder_layers_per_block == 2 and after.config.scaling_factor == before.config.scaling_factor
    for name, tensor in before.state_dict().items():  # encoder untouched, the decoder trained
        if name.startswith(("encoder.", "quant_conv.")):
            torch.testing.assert_close(after.state_dict()[name], tensor, rtol=0, atol=0)
    assert not torch.equal(after.decoder.conv_out.weight, before.decoder.conv_out.weight)


def test_train_vae_rejects_a_bad_decoder_depth(xray_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as error:
        load_script("train_vae").main(["--config", TINY, "--train_data_dir", xray_dataset, "--output_dir",
                                       str(tmp_path), "--decoder_layers_per_block", "0"])
    assert error.value.code == 2 and "--decoder_layers_per_block must be positive" in capsys.readouterr().err


@pytest.mark.slow
def test_train_ldm_produces_a_pipeline_that_generates(tiny_vae, xray_dataset, tmp_path):
    load_script("train_ldm").main(["--config", TINY, "--train_data_dir", xray_dataset, "--output_dir", str(tmp_path),
                                   "--pretrained_vae_model_name_or_path", str(tiny_vae / "vae")])
    pipe = CXRPipeline.from_pretrained(tmp_path / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    image = pipe("Pediatric chest radiograph. Findings: pneumonia.", num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (64, 64) and image.mode == "L"
    assert (tmp_path / "pipeline" / "samples.png").is_file() and (tmp_path / "pipeline" / "README.md").is_file()
    assert list((tmp_path / "samples").glob("step-*.png"))


VAE_V2_FLAGS = ["--perceptual_weight", "0.5", "--disc_weight", "0.5", "--disc_start", "2", "--logging_steps", "1"]
LDM_V2_FLAGS = ["--prediction_type", "v_prediction", "--zero_terminal_snr", "--snr_gamma", "5.0", "--logging_steps", "1"]


@pytest.mark.parametrize("script,extra", [("train_ldm", []), ("train_ldm", LDM_V2_FLAGS), ("train_vae", []),
                                          ("train_vae", VAE_V2_FLAGS),
                                          ("train_vae", [*VAE_V2_FLAGS, "--disc_norm", "spectral"])],
                         ids=["ldm", "ldm-v-prediction-zero-snr", "vae", "vae-v2-objective", "vae-v2-spectral-norm"])
@pytest.mark.slow
def test_resume_is_exact(script, extra, tiny_vae, xray_dataset, tmp_path):
    """N steps in one run == N/2 steps, stop, resume for N/2 more (the state at N/2 is the saved checkpoint, with the
    discriminator and its optimizer for the VAE v2 objective)."""
    extra = ["--pretrained_vae_model_name_or_path", str(tiny_vae / "vae"), *extra] if script == "train_ldm" else extra
    args = ["--config", TINY, "--train_data_dir", xray_dataset, "--validation_steps", "100", *extra]
    full, half = tmp_path / "full", tmp_path / "half"
    load_script(script).main([*args, "--output_dir", str(full)])
    if extra == VAE_V2_FLAGS:
        assert (full / "checkpoint-3" / "discriminator" / "config.json").is_file()
        logged = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
        assert any("d_loss" in r and "adaptive_weight" in r and "perceptual" in r for r in logged)
    half.mkdir()
    shutil.copytree(full / "checkpoint-3", half / "checkpoint-3")
    load_script(script).main([*args, "--output_dir", str(half), "--resume_from_checkpoint", "latest"])
    final = "pipeline/unet" if script == "train_ldm" else "vae"
    a = load_file(full / final / "diffusion_pytorch_model.safetensors")
    b = load_file(half / final / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_bad_flags_exit_with_one_line(xray_dataset, capsys):
    vae = load_script("train_vae")
    with pytest.raises(SystemExit) as exit_info:
        vae.main(["--config", TINY, "--train_data_dir", xray_dataset, "--crop_size", "30"])
    assert exit_info.value.code == 2
    assert "--crop_size must be a multiple of 8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        vae.main(["--config", TINY, "--train_data_dir", xray_dataset, "--learning_rate", "-1"])
    assert "--learning_rate must be positive" in capsys.readouterr().err
    ldm = load_script("train_ldm")
    with pytest.raises(SystemExit):
        ldm.main(["--config", TINY, "--train_data_dir", xray_dataset])
    assert "--pretrained_vae_model_name_or_path" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- standard flags
class StopBeforeTraining(Exception):
    pass


def built_for_training(script_name, argv, monkeypatch):
    """Run a script's `main(argv)` up to the learning-rate scheduler (no training step) and return its models (as given
    to the checkpoint hooks), its optimizer and its training DataLoader."""
    script = load_script(script_name)
    built = {"loaders": []}
    register = script.register_diffusers_checkpoint_hooks

    def record_models(accelerator, models, ema_models=None):
        built["models"] = models
        return register(accelerator, models, ema_models)

    def stop(name, optimizer, **kwargs):
        built["optimizer"] = optimizer
        raise StopBeforeTraining

    class RecordedDataLoader(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built["loaders"].append(self)

    monkeypatch.setattr(script, "register_diffusers_checkpoint_hooks", record_models)
    monkeypatch.setattr(script, "get_scheduler", stop)
    monkeypatch.setattr(torch.utils.data, "DataLoader", RecordedDataLoader)
    with pytest.raises(StopBeforeTraining):
        script.main(argv)
    return built


STANDARD_FLAGS = ["--gradient_checkpointing", "--allow_tf32", "--adam_beta1", "0.8", "--adam_beta2", "0.95",
                  "--adam_weight_decay", "0.03", "--adam_epsilon", "1e-6", "--dataloader_num_workers", "2"]
# What each script used before the flags existed (torch's AdamW betas and eps), which the defaults keep.
DEFAULT_WEIGHT_DECAY = {"train_vae": 0.0, "train_ddpm": 1e-6, "train_ldm": 1e-2}
MODEL = {"train_vae": "vae", "train_ddpm": "unet", "train_ldm": "unet"}


@pytest.fixture
def no_tf32():
    """TF32 off before the test and restored after it (a process-wide torch setting; monkeypatch cannot patch it)."""
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32 = before


@pytest.mark.parametrize("script_name", ["train_vae", "train_ddpm", "train_ldm"])
def test_standard_training_flags_reach_the_optimizer_model_and_loader(script_name, tiny_vae, xray_dataset, tmp_path,
                                                                      monkeypatch, no_tf32):
    argv = ["--config", TINY, "--train_data_dir", xray_dataset, "--output_dir", str(tmp_path)]
    if script_name == "train_ldm":
        argv += ["--pretrained_vae_model_name_or_path", str(tiny_vae / "vae")]
    built = built_for_training(script_name, [*argv, *STANDARD_FLAGS], monkeypatch)
    group = built["optimizer"].param_groups[0]
    assert group["betas"] == (0.8, 0.95) and group["weight_decay"] == 0.03 and group["eps"] == 1e-6
    assert built["models"][MODEL[script_name]].is_gradient_checkpointing
    assert torch.backends.cuda.matmul.allow_tf32
    assert [loader.num_workers for loader in built["loaders"]] == [2]  # built, never iterated: no workers start

    torch.backends.cuda.matmul.allow_tf32 = False
    defaults = built_for_training(script_name, [*argv, "--output_dir", str(tmp_path / "defaults")], monkeypatch)
    group = defaults["optimizer"].param_groups[0]
    assert group["betas"] == (0.9, 0.999) and group["eps"] == 1e-8
    assert group["weight_decay"] == DEFAULT_WEIGHT_DECAY[script_name]
    assert not defaults["models"][MODEL[script_name]].is_gradient_checkpointing
    assert not torch.backends.cuda.matmul.allow_tf32
    assert [loader.num_workers for loader in defaults["loaders"]] == [0]


@pytest.mark.slow
@pytest.mark.parametrize("script_name", ["train_vae", "train_ddpm"])
def test_gradient_checkpointing_trains_to_the_same_weights(script_name, xray_dataset, tmp_path):
    """Recomputing the activations in the backward pass changes memory, not the result (for the VAE also with the
    discriminator, whose adaptive weight differentiates through the decoder)."""
    extra = ["--disc_weight", "0.5", "--disc_start", "0", "--scaling_factor_samples", "1"] \
        if script_name == "train_vae" else []
    argv = ["--config", TINY, "--train_data_dir", xray_dataset, "--max_train_steps", "2", "--validation_steps", "100",
            "--checkpointing_steps", "100", "--num_validation_images", "1", *extra]
    final = "vae" if script_name == "train_vae" else "pipeline/unet"
    weights = []
    for name, flags in (("plain", []), ("checkpointed", ["--gradient_checkpointing"])):
        load_script(script_name).main([*argv, *flags, "--output_dir", str(tmp_path / name)])
        weights.append(load_file(tmp_path / name / final / "diffusion_pytorch_model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=1e-4, atol=1e-5, msg=key)


def test_config_file_rejects_unknown_keys(tmp_path, xray_dataset, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"common": {"learning_rat": 1e-3}}))
    with pytest.raises(SystemExit):
        load_script("train_vae").main(["--config", str(bad), "--train_data_dir", xray_dataset])
    assert "unknown flags for this script: learning_rat" in capsys.readouterr().err


def test_evaluate_vae_writes_metrics(tiny_vae, xray_dataset, tmp_path):
    load_script("evaluate_vae").main(["--vae", str(tiny_vae / "vae"), "--train_data_dir", xray_dataset,
                                      "--split", "validation", "--num_images", "2", "--resolution", "64",
                                      "--output_dir", str(tmp_path)])
    metrics = json.loads((tmp_path / "vae_metrics.json").read_text())
    assert metrics["num_images"] == 2 and 0 < metrics["psnr"] < 100 and -1 <= metrics["ssim"] <= 1
    assert (tmp_path / "reconstructions.png").is_file()


def test_vae_metrics_spread_over_sources_and_report_each():
    from PIL import Image

    from cxr_diffusers.configs import get_model_config
    from cxr_diffusers.training_utils import vae_reconstruction_metrics

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32), dtype=np.uint8)) for _ in range(6)]
    dataset = datasets.Dataset.from_dict({"image": images, "source": ["a", "a", "a", "b", "b", "b"]},
                                         features=datasets.Features({"image": datasets.Image(),
                                                                     "source": datasets.Value("string")}))
    vae = CXRAutoencoderKL(**get_model_config("tiny")["vae"]).train()
    metrics, pairs = vae_reconstruction_metrics(vae, dataset, resolution=32, count=2)
    # two images spread evenly: the first and the last, one from each source
    assert metrics["num_images"] == 2 and len(pairs) == 2
    assert {name: m["num_images"] for name, m in metrics["per_source"].items()} == {"a": 1, "b": 1}
    assert vae.training  # the caller's mode is restored
    # the mean is the mean of the per-image values, so the per-source means average to it here
    per_source = [m["psnr"] for m in metrics["per_source"].values()]
    assert metrics["psnr"] == pytest.approx(float(np.mean(per_source)))


# ---------------------------------------------------------------------------------------------- LDM v2
@pytest.mark.slow
def test_train_ldm_v_prediction_zero_terminal_snr_trains_saves_and_generates(tiny_vae, xray_dataset, tmp_path):
    load_script("train_ldm").main(["--config", TINY, "--train_data_dir", xray_dataset, "--output_dir", str(tmp_path),
                                   "--pretrained_vae_model_name_or_path", str(tiny_vae / "vae"), *LDM_V2_FLAGS,
                                   "--gradient_checkpointing", "--allow_tf32", "--adam_beta1", "0.9",
                                   "--adam_beta2", "0.99", "--adam_epsilon", "1e-7", "--dataloader_num_workers", "0"])
    losses = [json.loads(line)["loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(np.isfinite(losses))
    config = json.loads((tmp_path / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert config["prediction_type"] == "v_prediction" and config["rescale_betas_zero_snr"] is True
    assert config["timestep_spacing"] == "trailing" and config["final_sigmas_type"] == "zero"
    summary = json.loads((tmp_path / "pipeline" / "training_summary.json").read_text())
    assert summary["prediction_type"] == "v_prediction" and summary["zero_terminal_snr"] is True
    pipe = CXRPipeline.from_pretrained(tmp_path / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    images = pipe("Pediatric chest radiograph. Findings: pneumonia.", num_inference_steps=3, guidance_rescale=0.7,
                  output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 64, 1) and np.isfinite(images).all() and images.std() > 1e-3


def test_min_snr_weights_are_finite_at_zero_terminal_snr():
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    from cxr_diffusers.schedulers import training_schedule

    ldm = load_script("train_ldm")
    timesteps = torch.tensor([0, 10, 500, 998, 999])
    zero_snr = DDPMScheduler(**training_schedule("v_prediction", zero_terminal_snr=True))
    snr = compute_snr(zero_snr, timesteps)
    assert snr[-1] == 0  # the last timestep is pure noise
    weights = ldm.min_snr_loss_weights(zero_snr, timesteps, 5.0, "v_prediction")
    assert torch.isfinite(weights).all() and weights[-1] == 0
    torch.testing.assert_close(weights, torch.minimum(snr, torch.tensor(5.0)) / (snr + 1))
    epsilon = ldm.min_snr_loss_weights(zero_snr, timesteps, 5.0, "epsilon")  # 0 / 0 guarded: the limit 1
    assert torch.isfinite(epsilon).all() and epsilon[-1] == 1
    v1 = DDPMScheduler(**training_schedule("epsilon"))
    snr = compute_snr(v1, timesteps)  # v1 schedule: exactly the former min(snr, gamma) / snr
    assert torch.equal(ldm.min_snr_loss_weights(v1, timesteps, 5.0, "epsilon"),
                       torch.minimum(snr, torch.full_like(snr, 5.0)) / snr)


@pytest.mark.parametrize("flags, message", [
    (["--zero_terminal_snr"], "--zero_terminal_snr needs --prediction_type v_prediction"),
    (["--prediction_type", "v_prediction", "--zero_terminal_snr", "--noise_offset", "0.1"],
     "--noise_offset is not used with --zero_terminal_snr"),
    (["--snr_gamma", "0"], "--snr_gamma must be positive"),
])
def test_train_ldm_v2_flag_errors(xray_dataset, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        load_script("train_ldm").main(["--config", TINY, "--train_data_dir", xray_dataset, "--output_dir",
                                       str(tmp_path), "--pretrained_vae_model_name_or_path", "unused", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_latents_cache_dir_is_reused_across_runs_and_resumes(tiny_vae, xray_dataset, tmp_path):
    """The first run encodes into --latents_cache_dir; a resume in another output folder finds the file and must not
    encode (the encoder is replaced by one that fails), and still ends exactly where the uninterrupted run did."""
    cache = tmp_path / "latents"
    args = ["--config", TINY, "--train_data_dir", xray_dataset, "--validation_steps", "100",
            "--pretrained_vae_model_name_or_path", str(tiny_vae / "vae"), "--latents_cache_dir", str(cache)]
    full, half = tmp_path / "full", tmp_path / "half"
    load_script("train_ldm").main([*args, "--output_dir", str(full)])
    files = list(cache.glob("latents-*.safetensors"))
    assert len(files) == 1 and not (full / "latent_cache.safetensors").exists()
    stamp = files[0].stat().st_mtime_ns
    half.mkdir()
    shutil.copytree(full / "checkpoint-3", half / "checkpoint-3")
    script = load_script("train_ldm")

    def must_not_encode(*args, **kwargs):
        raise AssertionError("the cached latents should have been reused")

    script.encode_moments = must_not_encode
    script.main([*args, "--output_dir", str(half), "--resume_from_checkpoint", "latest"])
    assert list(cache.glob("latents-*.safetensors")) == files and files[0].stat().st_mtime_ns == stamp
    a = load_file(full / "pipeline/unet/diffusion_pytorch_model.safetensors")
    b = load_file(half / "pipeline/unet/diffusion_pytorch_model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_latent_cache_key_follows_data_encoder_and_resolution(tiny_vae, xray_dataset, tmp_path):
    from cxr_diffusers.training_utils import load_training_dataset

    ldm = load_script("train_ldm")
    dataset = load_training_dataset(xray_dataset, None, "train")
    vae = CXRAutoencoderKL.from_pretrained(tiny_vae / "vae").eval()
    calls = []
    encode = ldm.encode_moments

    def counting(*args, **kwargs):
        calls.append(1)
        return encode(*args, **kwargs)

    ldm.encode_moments = counting
    path = tmp_path / "cache.safetensors"
    first = ldm.cached_latent_moments(vae, dataset, 64, 4, path, "cpu")
    again = ldm.cached_latent_moments(vae, dataset, 64, 4, path, "cpu")
    assert len(calls) == 1 and torch.equal(first, again) and again.stride() == first.stride()  # layout kept too
    key = ldm.latent_cache_key(vae, dataset, 64)
    assert ldm.latent_cache_key(vae, dataset, 128) != key
    assert ldm.latent_cache_key(vae, dataset.select(range(4)), 64) != key
    other = CXRAutoencoderKL.from_pretrained(tiny_vae / "vae").eval()
    with torch.no_grad():
        other.encoder.conv_in.weight.add_(1e-3)  # another encoder: other latents
    assert ldm.latent_cache_key(other, dataset, 64) != key
    ldm.cached_latent_moments(other, dataset, 64, 4, path, "cpu")
    assert len(calls) == 2
    decoder_only = CXRAutoencoderKL.from_pretrained(tiny_vae / "vae").eval()
    with torch.no_grad():
        decoder_only.decoder.conv_out.weight.add_(1e-3)  # the latents do not depend on the decoder
    decoder_only.register_to_config(scaling_factor=0.5)
    assert ldm.latent_cache_key(decoder_only, dataset, 64) == key
    half = ldm.cached_latent_moments(vae, dataset, 64, 4, tmp_path / "fp16.safetensors", "cpu", dtype=torch.float16)
    assert half.dtype == torch.float16 and len(calls) == 3
    torch.testing.assert_close(half.float(), first, rtol=1e-3, atol=1e-3)
