"""train_scripts/train_ddpm.py on the tiny configuration: a loadable DDPMPipeline, exact resume, one-line flag errors.

Runs on real X-rays (a shared Kermany sample, or the shipped fixtures) through the script's `main(argv)`, in-process.
"""

import json
import shutil

import pytest
import torch
from diffusers import DDPMPipeline
from safetensors.torch import load_file

from conftest import TINY, load_train_script as load_script

TINY_RESOLUTION = json.loads(open(TINY).read())["ddpm"]["resolution"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the tiny models are faster so on a busy CPU


@pytest.fixture(scope="module")
def ddpm_script():
    return load_script("train_ddpm")


@pytest.fixture(scope="module")
def full_run(ddpm_script, xray_dataset, tmp_path_factory):
    """6 steps, checkpoints every 3, validation every 3 (the tiny config), total limit 1."""
    out = tmp_path_factory.mktemp("ddpm")
    ddpm_script.main(["--config", TINY, "--train_data_dir", xray_dataset, "--output_dir", str(out),
                      "--checkpoints_total_limit", "1"])
    return out


@pytest.mark.slow
def test_tiny_run_saves_a_ddpm_pipeline_that_generates(full_run):
    pipe = DDPMPipeline.from_pretrained(full_run / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == pipe.unet.config.out_channels == 1
    assert pipe.unet.config.sample_size == TINY_RESOLUTION and type(pipe.scheduler).__name__ == "DDPMScheduler"
    image = pipe(num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.mode == "L" and image.size == (TINY_RESOLUTION, TINY_RESOLUTION)
    tensor = pipe(num_inference_steps=2, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert tensor.shape == (1, 1, TINY_RESOLUTION, TINY_RESOLUTION) and torch.isfinite(tensor).all()

    assert [p.name for p in sorted((full_run / "samples").glob("step-*.png"))] == ["step-000003.png",
                                                                                  "step-000006.png"]
    assert (full_run / "loss.png").is_file() and (full_run / "pipeline" / "samples.png").is_file()
    assert [p.name for p in full_run.glob("checkpoint-*")] == ["checkpoint-6"]  # checkpoint-3 rotated away
    assert (full_run / "checkpoint-6" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (full_run / "checkpoint-6" / "unet_ema").is_dir()
    losses = [json.loads(line)["loss"] for line in (full_run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(loss > 0 for loss in losses)
    summary = json.loads((full_run / "pipeline" / "training_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["final_loss"] > 0
    card = (full_run / "pipeline" / "README.md").read_text()
    assert card.count("Not for clinical use") == 1 and "DDPMPipeline.from_pretrained" in card


@pytest.mark.slow
def test_resume_is_exact(ddpm_script, xray_dataset, tmp_path):
    """6 steps in one run == 3 steps, stop, resume `latest` for 3 more (the state at 3 is the saved checkpoint)."""
    args = ["--config", TINY, "--train_data_dir", xray_dataset, "--validation_steps", "100"]
    full, half = tmp_path / "full", tmp_path / "half"
    ddpm_script.main([*args, "--output_dir", str(full)])
    half.mkdir()
    shutil.copytree(full / "checkpoint-3", half / "checkpoint-3")
    ddpm_script.main([*args, "--output_dir", str(half), "--resume_from_checkpoint", "latest"])
    a = load_file(full / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    b = load_file(half / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    start = load_file(full / "checkpoint-3" / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(start[key], a[key]) for key in a)  # the resumed half really trained


@pytest.mark.parametrize("flags, message", [
    (["--learning_rate", "-1"], "--learning_rate must be positive"),
    (["--resolution", "33"], "--resolution must be a multiple of 2"),
    (["--model_config", "huge"], "--model_config 'huge' is not one of tiny, small, base"),
    (["--ddpm_num_inference_steps", "0"], "--ddpm_num_inference_steps must be positive"),
    (["--ddpm_num_inference_steps", "1001"], "--ddpm_num_inference_steps cannot exceed --ddpm_num_steps (1000)"),
    (["--validation_inference_steps", "2"], "unrecognized arguments: --validation_inference_steps"),  # renamed
    (["--dataloader_num_workers", "-1"], "--dataloader_num_workers must be 0 or more"),
    (["--prediction_type", "noise"], "invalid choice: 'noise'"),
    (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
])
def test_bad_flags_exit_with_one_line(ddpm_script, xray_dataset, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        ddpm_script.main(["--config", TINY, "--train_data_dir", xray_dataset, *flags])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert ": error: " in error and message in error


def test_missing_data_flag_exits_with_one_line(ddpm_script, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ddpm_script.main(["--config", TINY])
    assert exit_info.value.code == 2
    assert "give --train_data_dir or --dataset_name" in capsys.readouterr().err
