"""train_scripts/export_pipeline.py: fp16 Hub-layout export that loads back, keeps the card, and refuses a VAE from
another latent space."""

import json
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler
from safetensors import safe_open

from cxr_diffusers import CXRAutoencoderKL, CXRPipeline, create_components

from conftest import run_script_in_process

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    torch.manual_seed(0)
    pipe = CXRPipeline(**create_components("tiny"))
    pipe.scheduler = type(pipe.scheduler).from_config({k: v for k, v in pipe.scheduler.config.items()
                                                       if k != "clip_sample"})  # as saved by older versions
    pipe.save_pretrained(folder)
    (folder / "README.md").write_text("card")
    return folder


def run(*args):
    return run_script_in_process("export_pipeline", *args)


def test_export_fp16_loads_back_with_card_and_latent_safe_scheduler(trained, tmp_path):
    out = tmp_path / "export"
    result = run("--pipeline", trained, "--output_dir", out, "--dtype", "fp16")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["total_mb"] > 0 and (out / "README.md").read_text() == "card"
    for part in ("unet", "vae", "text_encoder"):
        files = list((out / part).glob("*.safetensors"))
        assert files and not list((out / part).glob("*.bin"))
        with safe_open(str(files[0]), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} <= {torch.float16, torch.int64}
    pipe = CXRPipeline.from_pretrained(out)
    assert pipe.unet.dtype == torch.float32  # loaded back in fp32 on the CPU
    assert DDIMScheduler.from_config(pipe.scheduler.config).config.clip_sample is False
    original = CXRPipeline.from_pretrained(trained)
    a = original.unet.state_dict()["conv_in.weight"]
    assert torch.allclose(pipe.unet.state_dict()["conv_in.weight"], a, atol=1e-2)


def test_export_refuses_a_vae_from_another_latent_space(trained, tmp_path):
    vae = CXRAutoencoderKL.from_pretrained(trained / "vae")
    vae.register_to_config(scaling_factor=vae.config.scaling_factor * 2)
    vae.save_pretrained(tmp_path / "other-vae")
    result = run("--pipeline", trained, "--vae", tmp_path / "other-vae", "--output_dir", tmp_path / "export")
    assert result.returncode == 2 and "not the same latent space" in result.stderr


def test_export_never_deletes_files_it_was_not_told_to_replace(trained, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run("--pipeline", trained, "--output_dir", out)
    assert result.returncode == 2 and "is not empty; pass --overwrite" in result.stderr
    assert (out / "notes.txt").read_text() == "mine"
    # the source of the export itself, even with --overwrite (this deleted the bundled model's card before)
    for target in (trained, trained.parent):
        result = run("--pipeline", trained, "--output_dir", target, "--overwrite")
        assert result.returncode == 2 and "an input of this run" in result.stderr
    assert (trained / "README.md").read_text() == "card"
    # --overwrite replaces the folder as a whole, once the new export is complete
    result = run("--pipeline", trained, "--output_dir", out, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert not (out / "notes.txt").exists() and (out / "model_index.json").is_file()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".existing.")]  # no staging left behind


def test_export_failure_leaves_the_old_folder_untouched(trained, tmp_path):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run("--pipeline", tmp_path / "missing", "--output_dir", out, "--overwrite")
    assert result.returncode == 2 and "error" in result.stderr and "Traceback" not in result.stderr
    assert (out / "notes.txt").read_text() == "mine"


def test_export_refuses_an_unwritable_output_dir(trained, tmp_path):
    (tmp_path / "a-file").write_text("x")
    result = run("--pipeline", trained, "--output_dir", tmp_path / "a-file" / "sub")
    assert result.returncode == 2 and "is a file, not a folder" in result.stderr


def test_export_adds_the_super_resolution_stage(trained, tmp_path):
    from cxr_diffusers import CXRSuperResolutionModel

    torch.manual_seed(0)
    CXRSuperResolutionModel(block_out_channels=8, num_blocks=1).save_pretrained(tmp_path / "sr")
    out = tmp_path / "export"
    result = run("--pipeline", trained, "--super_resolution", tmp_path / "sr", "--output_dir", out)
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "model_index.json").read_text())
    assert index["super_resolution"] == ["cxr_diffusers.models.super_resolution_cxr", "CXRSuperResolutionModel"]
    assert (out / "models" / "super_resolution_cxr.py").is_file()  # shipped with the remote code
    with safe_open(str(out / "super_resolution" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    pipe = CXRPipeline.from_pretrained(out)
    assert isinstance(pipe.super_resolution, CXRSuperResolutionModel) and pipe.super_resolution_sizes == (128, 192)
    assert pipe.super_resolution.dtype == pipe.unet.dtype == torch.float32  # fp16 on disk, fp32 on the CPU
    pipe.set_progress_bar_config(disable=True)
    image = pipe("AP chest radiograph.", num_inference_steps=1, height=128, width=128, output_type="np").images
    assert image.shape == (1, 128, 128, 1)
    # a pipeline folder as the source of the stage, and a re-export keeps it
    again = run("--pipeline", out, "--output_dir", tmp_path / "again", "--super_resolution", out)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "model_index.json").read_text())["super_resolution"][1] == \
        "CXRSuperResolutionModel"
    missing = run("--pipeline", trained, "--super_resolution", trained, "--output_dir", tmp_path / "none")
    assert missing.returncode == 2 and "has no super_resolution/ component" in missing.stderr
