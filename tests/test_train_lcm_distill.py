"""train_scripts/train_lcm_distill.py: latent consistency distillation of a tiny teacher into a few-step pipeline
(LCMScheduler, a UNet with a guidance embedding), exact resume, a v-prediction teacher, and the model pieces it needs
(`time_cond_proj_dim`, `timestep_cond`, the DDIM solver's schedule) that leave existing models unchanged.

The training runs take a few steps on real X-rays (a shared Kermany sample, or the shipped fixtures) from the tiny
random teacher of `make_tiny_pipeline`, in-process through the script's `main(argv)`.
"""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import PROMPT, TINY, assert_same_safetensors, make_tiny_pipeline
from conftest import load_train_script as load_script
from diffusers import LCMScheduler

from cxr_diffusers import (
    CXRInputError,
    CXRPipeline,
    CXRUNet2DConditionModel,
    get_model_config,
    read_provenance,
)
from cxr_diffusers.models.unet_cxr import guidance_scale_embedding
from cxr_diffusers.schedulers import default_scheduler, scheduler_from_name

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # the tiny models are faster so on a busy CPU


@pytest.fixture(scope="module")
def script():
    return load_script("train_lcm_distill")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The tiny random pipeline, saved: an epsilon teacher on the v1 schedule (DPM-Solver++)."""
    folder = tmp_path_factory.mktemp("teacher")
    make_tiny_pipeline().save_pretrained(folder)
    return folder


def distil(teacher, data, output_dir, *extra):
    return load_script("train_lcm_distill").main(["--config", TINY, "--pretrained_teacher_model", str(teacher),
                                                  "--train_data_dir", data, "--output_dir", str(output_dir),
                                                  *map(str, extra)])


@pytest.fixture(scope="module")
def distilled(teacher, xray_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("lcm")
    distil(teacher, xray_dataset, out)
    return out


def sample(pipe, seed, **kwargs):
    kwargs.setdefault("num_inference_steps", 4)
    return pipe(PROMPT, output_type="np", generator=torch.Generator().manual_seed(seed), **kwargs).images


def count_unet_calls(pipe, **kwargs):
    rows = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    try:
        sample(pipe, 0, **kwargs)
    finally:
        hook.remove()
    return rows


# ---------------------------------------------------------------------------------------------- training runs
@pytest.mark.slow
def test_distilled_pipeline_loads_and_generates_deterministically_in_4_steps(distilled, teacher):
    pipe = CXRPipeline.from_pretrained(distilled / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert isinstance(pipe.scheduler, LCMScheduler)
    assert pipe.scheduler.config.original_inference_steps == 50 and pipe.scheduler.config.clip_sample is False
    assert "algorithm_type" not in pipe.scheduler.config  # the teacher's DPM-Solver++ settings stay behind
    assert pipe.unet.config.time_cond_proj_dim == 256 and pipe.guidance_embedded
    a, b, c = sample(pipe, 0), sample(pipe, 0), sample(pipe, 1)
    assert a.shape == (1, 64, 64, 1) and np.isfinite(a).all()
    assert np.array_equal(a, b) and np.abs(a - c).max() > 1e-3
    assert np.abs(a - sample(pipe, 0, guidance_scale=2.0)).max() > 0  # the guidance embedding conditions the UNet
    record = read_provenance(pipe(PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(0)).images[0])
    assert record["scheduler"] == "LCMScheduler" and record["guidance_embedded"] is True
    summary = json.loads((distilled / "pipeline" / "training_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["teacher"] == str(teacher)
    assert summary["teacher_prediction_type"] == "epsilon" and summary["shipped_weights"] == "target (EMA)"
    card = (distilled / "pipeline" / "README.md").read_text()
    assert str(teacher) in card and "NOT FOR CLINICAL USE" in card and "LCMScheduler" in card
    losses = [json.loads(line)["loss"] for line in (distilled / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(np.isfinite(losses))
    assert [p.name for p in sorted(distilled.glob("checkpoint-*"))] == ["checkpoint-3", "checkpoint-6"]
    for folder in ("unet", "unet_target"):
        config = json.loads((distilled / "checkpoint-6" / folder / "config.json").read_text())
        assert config["time_cond_proj_dim"] == 256
    assert list((distilled / "samples").glob("step-*.png")) and (distilled / "pipeline" / "samples.png").is_file()


@pytest.mark.slow
def test_distilled_student_makes_one_unet_call_per_step(distilled):
    pipe = CXRPipeline.from_pretrained(distilled / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    assert count_unet_calls(pipe) == [1, 1, 1, 1]  # no guidance batch of two
    assert count_unet_calls(pipe, num_inference_steps=2, num_images_per_prompt=3) == [3, 3]
    with pytest.raises(CXRInputError, match="guidance embedding .* negative_prompt cannot be used"):
        sample(pipe, 0, negative_prompt="lateral view")
    with pytest.raises(CXRInputError, match="guidance_interval cannot be used"):
        sample(pipe, 0, guidance_interval=(0, 5))
    with pytest.raises(CXRInputError, match="takes at most 50 steps"):
        sample(pipe, 0, num_inference_steps=51)


@pytest.mark.slow
def test_resume_is_exact_and_reuses_the_latent_cache(teacher, xray_dataset, tmp_path):
    """6 steps in one run == 3 steps, stop, resume for 3 more from checkpoint-3 (student, target network, optimizer,
    RNG), in another output folder that finds the first run's latents in --latents_cache_dir and must not encode."""
    cache = tmp_path / "latents"
    args = ["--validation_steps", "100", "--latents_cache_dir", cache]
    full, half = tmp_path / "full", tmp_path / "half"
    distil(teacher, xray_dataset, full, *args)
    files = list(cache.glob("latents-*.safetensors"))
    assert len(files) == 1 and not (full / "latent_cache.safetensors").exists()
    half.mkdir()
    shutil.copytree(full / "checkpoint-3", half / "checkpoint-3")
    script = load_script("train_lcm_distill")

    def must_not_encode(*args, **kwargs):
        raise AssertionError("the cached latents should have been reused")

    script.train_ldm.encode_moments = must_not_encode
    script.main(["--config", TINY, "--pretrained_teacher_model", str(teacher), "--train_data_dir", xray_dataset,
                 "--output_dir", str(half), "--resume_from_checkpoint", "latest", *map(str, args)])
    assert_same_safetensors(full, half, ("pipeline/unet", "checkpoint-6/unet", "checkpoint-6/unet_target"))


@pytest.mark.slow
def test_v_prediction_zero_terminal_snr_teacher(xray_dataset, tmp_path):
    teacher = make_tiny_pipeline()
    teacher.scheduler = default_scheduler("v_prediction", zero_terminal_snr=True)
    teacher.save_pretrained(tmp_path / "teacher")
    distil(tmp_path / "teacher", xray_dataset, tmp_path / "lcm", "--validation_steps", "100", "--loss_type", "l2")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "lcm" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 6 and all(np.isfinite(losses))
    config = json.loads((tmp_path / "lcm" / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert config["_class_name"] == "LCMScheduler"
    assert config["prediction_type"] == "v_prediction" and config["rescale_betas_zero_snr"] is True
    summary = json.loads((tmp_path / "lcm" / "pipeline" / "training_summary.json").read_text())
    assert summary["teacher_prediction_type"] == "v_prediction" and summary["teacher_zero_terminal_snr"] is True
    assert "zero terminal SNR" in (tmp_path / "lcm" / "pipeline" / "README.md").read_text()
    pipe = CXRPipeline.from_pretrained(tmp_path / "lcm" / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler.set_timesteps(4)
    assert int(pipe.scheduler.timesteps[0]) == 999  # from the pure-noise timestep
    images = sample(pipe, 0)
    assert np.isfinite(images).all() and np.array_equal(images, sample(pipe, 0))


@pytest.mark.parametrize("flags, message", [
    (["--w_min", "5", "--w_max", "2"], "need 0 <= w_min <= w_max"),
    (["--w_min", "-1"], "need 0 <= w_min <= w_max"),
    (["--validation_inference_steps", "8", "--num_ddim_timesteps", "4"], "cannot exceed --num_ddim_timesteps"),
    (["--ema_decay", "1"], "--ema_decay must be in [0, 1)"),
    (["--huber_c", "0"], "--huber_c must be positive"),
    (["--num_ddim_timesteps", "0"], "--num_ddim_timesteps must be positive"),
])
def test_bad_flags_exit_with_one_line(teacher, xray_dataset, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        distil(teacher, xray_dataset, tmp_path, *flags)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err.strip().splitlines()[-1]


def test_teacher_is_required(xray_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_script("train_lcm_distill").main(["--config", TINY, "--train_data_dir", xray_dataset,
                                               "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2 and "--pretrained_teacher_model" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- model pieces
def tiny_unet(**kwargs):
    torch.manual_seed(0)
    return CXRUNet2DConditionModel(**{**get_model_config("tiny")["unet"], **kwargs}).eval()


def unet_inputs():
    generator = torch.Generator().manual_seed(1)
    return (torch.randn(2, 8, 8, 8, generator=generator), torch.tensor([10, 500]),
            torch.randn(2, 5, 32, generator=generator))


def test_old_unet_configs_without_time_cond_proj_dim_load_unchanged(tmp_path):
    unet = tiny_unet()
    assert unet.config.time_cond_proj_dim is None and unet.time_embedding.cond_proj is None
    unet.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("time_cond_proj_dim")  # as every model saved before the option existed
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = CXRUNet2DConditionModel.from_pretrained(tmp_path).eval()
    assert loaded.config.time_cond_proj_dim is None and loaded.time_embedding.cond_proj is None
    assert loaded.state_dict().keys() == unet.state_dict().keys()
    sample_, timesteps, states = unet_inputs()
    with torch.no_grad():
        assert torch.equal(loaded(sample_, timesteps, states).sample, unet(sample_, timesteps, states).sample)
    with pytest.raises(CXRInputError, match="has no time_cond_proj_dim"):
        loaded(sample_, timesteps, states, timestep_cond=torch.zeros(2, 16))


def test_timestep_cond_conditions_a_guidance_embedded_unet_and_is_checked():
    unet = tiny_unet(time_cond_proj_dim=16)
    assert unet.time_embedding.cond_proj.weight.shape == (32, 16)
    torch.nn.init.normal_(unet.time_embedding.cond_proj.weight)
    sample_, timesteps, states = unet_inputs()
    w = guidance_scale_embedding(torch.tensor([3.0, 3.0]), embedding_dim=16)
    with torch.no_grad():
        a = unet(sample_, timesteps, states, timestep_cond=w).sample
        b = unet(sample_, timesteps, states, timestep_cond=w[:1]).sample  # one row for the whole batch
        c = unet(sample_, timesteps, states, timestep_cond=guidance_scale_embedding(torch.tensor([1.0, 1.0]), 16)).sample
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-4
    for bad in (torch.zeros(2, 15), torch.zeros(3, 16), torch.zeros(16)):
        with pytest.raises(CXRInputError, match="timestep_cond must have shape"):
            unet(sample_, timesteps, states, timestep_cond=bad)
    with pytest.raises(CXRInputError, match="time_cond_proj_dim must be a positive integer"):
        tiny_unet(time_cond_proj_dim=0)


def test_guidance_scale_embedding_is_diffusers_lcm_pipelines():
    from diffusers import LatentConsistencyModelPipeline

    w = torch.tensor([0.0, 1.5, 3.0, 7.0])
    for dim in (16, 33, 256):
        expected = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=dim)
        assert torch.equal(guidance_scale_embedding(w, embedding_dim=dim), expected)


def test_student_starts_as_the_teacher_and_samples_with_one_call_per_step(script):
    teacher = make_tiny_pipeline()
    student = script.make_student(teacher.unet, 16).eval()
    assert student.config.time_cond_proj_dim == 16 and not student.time_embedding.cond_proj.weight.any()
    sample_, timesteps, states = unet_inputs()
    w = guidance_scale_embedding(torch.tensor([2.0, 5.0]), 16)
    with torch.no_grad():  # a zero projection: the teacher's conditional model at every guidance scale
        assert torch.equal(student(sample_, timesteps, states, timestep_cond=w).sample,
                           teacher.unet(sample_, timesteps, states).sample)
    with pytest.raises(CXRInputError, match="already has a guidance embedding"):
        script.make_student(student, 16)
    args = script.parse_args(["--pretrained_teacher_model", "unused", "--train_data_dir", "unused",
                              "--output_dir", "unused", "--num_ddim_timesteps", "20"])
    pipe = CXRPipeline(vae=teacher.vae, text_encoder=teacher.text_encoder, tokenizer=teacher.tokenizer, unet=student,
                       scheduler=script.lcm_scheduler(teacher.scheduler.config, args))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.scheduler.config.original_inference_steps == 20
    assert count_unet_calls(pipe) == [1, 1, 1, 1]
    assert count_unet_calls(pipe, guidance_scale=1.0) == [1, 1, 1, 1]


def test_ddim_solver_and_boundary_scalings_match_lcm_scheduler(script):
    from diffusers import DDPMScheduler

    for prediction_type, zero_snr in (("epsilon", False), ("v_prediction", True)):
        config = default_scheduler(prediction_type, zero_terminal_snr=zero_snr).config
        schedule = script.teacher_schedule(config)
        assert isinstance(schedule, DDPMScheduler) and schedule.config.prediction_type == prediction_type
        for steps in (50, 30, 8):
            solver = script.DDIMSolver(schedule.alphas_cumprod, 1000, steps)
            lcm = scheduler_from_name("lcm", {**config, "original_inference_steps": steps})
            lcm.set_timesteps(steps)
            assert solver.timesteps.flip(0).tolist() == lcm.timesteps.tolist()  # the timesteps the student learns
            assert solver.alphas_cumprod_prev[0] == schedule.alphas_cumprod[0]
            assert torch.equal(solver.alphas_cumprod_prev[1:], schedule.alphas_cumprod[solver.timesteps[:-1]])
        if zero_snr:
            assert schedule.alphas_cumprod[-1] == 0  # x0 and noise stay finite from a v prediction there
            x0, noise = script.predicted_x0_and_noise(torch.ones(1, 2, 2, 2), torch.tensor([999]),
                                                      torch.full((1, 2, 2, 2), 3.0), schedule)
            assert torch.equal(x0, -torch.ones(1, 2, 2, 2)) and torch.equal(noise, torch.full((1, 2, 2, 2), 3.0))
    lcm = LCMScheduler(timestep_scaling=10.0)
    c_skip, c_out = script.boundary_scalings(torch.tensor([0, 19, 999]), 10.0)
    for index, t in enumerate((0, 19, 999)):
        expected = lcm.get_scalings_for_boundary_condition_discrete(t)
        assert c_skip[index].item() == pytest.approx(expected[0]) and c_out[index].item() == pytest.approx(expected[1])
    assert c_skip[0] == 1 and c_out[0] == 0  # the consistency function is the identity at timestep 0


def test_lcm_is_a_scheduler_name():
    config = default_scheduler().config
    lcm = scheduler_from_name("lcm", {**config, "clip_sample": True})
    assert isinstance(lcm, LCMScheduler) and lcm.config.clip_sample is False
    assert lcm.config.prediction_type == "epsilon" and lcm.config.original_inference_steps == 50
