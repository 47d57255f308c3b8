"""CXRPipeline: determinism, guidance, batching, sizes, schedulers, output types, callbacks, round trips through
a local folder and a Hugging Face Hub cache (offline), provenance, and clear errors for bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_diffusers import CXRInputError, CXRPipeline, ModelLoadingError, create_components, read_provenance
from cxr_diffusers.schedulers import SCHEDULERS, scheduler_from_name

PROMPT = "PA chest radiograph of a 58 year old female. Findings: cardiomegaly."


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    pipeline = CXRPipeline(**create_components("tiny"))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def saved(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-cxr")
    pipe.save_pretrained(folder)
    return folder


def run(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 3)
    kwargs.setdefault("output_type", "np")
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs).images


def test_same_seed_same_image_other_seed_other_image(pipe):
    a, b, c = run(pipe, seed=1), run(pipe, seed=1), run(pipe, seed=2)
    assert np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_output_types(pipe):
    pil = run(pipe, output_type="pil")
    assert isinstance(pil[0], Image.Image) and pil[0].mode == "L" and pil[0].size == (64, 64)
    array = run(pipe, output_type="np")
    assert array.shape == (1, 64, 64, 1) and array.dtype == np.float32 and 0 <= array.min() <= array.max() <= 1
    tensor = run(pipe, output_type="pt")
    assert tensor.shape == (1, 1, 64, 64) and tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor[0, 0].numpy(), array[0, ..., 0], atol=1e-6)
    assert np.array_equal(np.asarray(pil[0]), (array[0, ..., 0] * 255).round().astype(np.uint8))
    latents = run(pipe, output_type="latent")
    assert latents.shape == (1, 8, 8, 8)


def test_num_images_per_prompt_and_batched_guidance_match_single_calls(pipe):
    prompts = [PROMPT, "AP chest radiograph. Findings: pneumonia."]
    generators = [torch.Generator().manual_seed(s) for s in range(4)]
    batched = pipe(prompts, num_images_per_prompt=2, generator=generators, num_inference_steps=3, output_type="np").images
    assert batched.shape == (4, 64, 64, 1)
    for index in range(4):
        single = run(pipe, prompts[index // 2], seed=index)
        np.testing.assert_allclose(batched[index], single[0], atol=2e-4)


def test_guidance_and_negative_prompt_change_the_image(pipe):
    base = run(pipe, guidance_scale=4.0)
    assert np.abs(base - run(pipe, guidance_scale=1.0)).max() > 1e-4
    assert np.abs(base - run(pipe, guidance_scale=4.0, negative_prompt="lateral view")).max() > 1e-4
    assert np.array_equal(base, run(pipe, guidance_scale=4.0, negative_prompt=""))  # "" is the unconditional text


@pytest.mark.parametrize("size", [(256, 256), (512, 256), (64, 128)])
def test_supported_sizes(pipe, size):
    height, width = size
    images = run(pipe, height=height, width=width, num_inference_steps=1)
    assert images.shape == (1, height, width, 1)


@pytest.mark.parametrize("size", [(100, 256), (256, 0), (255, 255)])
def test_unsupported_sizes_are_rejected(pipe, size):
    with pytest.raises(CXRInputError, match="multiple of 16"):
        run(pipe, height=size[0], width=size[1])


@pytest.mark.parametrize("name", ["ddim", "ddpm", "euler", "unipc", "dpm++"])
def test_schedulers_swap_in_via_from_config(pipe, name):
    original = pipe.scheduler
    try:
        pipe.scheduler = scheduler_from_name(name, original.config)
        assert isinstance(pipe.scheduler, SCHEDULERS[name])
        a, b = run(pipe, num_inference_steps=4), run(pipe, num_inference_steps=4)
        assert np.array_equal(a, b) and np.isfinite(a).all()
    finally:
        pipe.scheduler = original


def test_ode_solvers_agree_because_latents_are_never_clipped(pipe, saved):
    """DDIM with many steps and DPM-Solver++ solve the same ODE from the same noise: their images must match. DDIM's
    diffusers default clip_sample=True would clip the latents and give a different, broken image."""
    from diffusers import DDIMScheduler

    original = pipe.scheduler
    assert original.config.clip_sample is False  # stored, so diffusers' own from_config idiom inherits it
    assert CXRPipeline.from_pretrained(saved).scheduler.config.clip_sample is False
    try:
        dpm = run(pipe, num_inference_steps=50)
        for name in ("ddim", "ddpm"):
            assert scheduler_from_name(name, {**original.config, "clip_sample": True}).config.clip_sample is False
        pipe.scheduler = DDIMScheduler.from_config(original.config)
        ddim = run(pipe, num_inference_steps=100)
        psnr = 10 * np.log10(1.0 / np.mean((dpm - ddim) ** 2))
        assert psnr > 35, psnr
        pipe.scheduler = DDIMScheduler.from_config(original.config, clip_sample=True)
        with pytest.raises(CXRInputError, match="clip_sample=True"):
            run(pipe)
    finally:
        pipe.scheduler = original


def test_default_scheduler_is_dpm_solver_plus_plus(pipe):
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    with pytest.raises(CXRInputError, match="Did you mean 'euler'"):
        scheduler_from_name("eular", pipe.scheduler.config)


def test_callback_on_step_end_sees_and_can_replace_latents(pipe):
    seen = []

    def callback(p, step, timestep, kwargs):
        seen.append((step, int(timestep), tuple(kwargs["latents"].shape)))
        return {"latents": torch.zeros_like(kwargs["latents"])} if step == 2 else {}

    zeroed = pipe(PROMPT, num_inference_steps=3, output_type="latent", callback_on_step_end=callback,
                  generator=torch.Generator().manual_seed(0)).images
    assert [s[0] for s in seen] == [0, 1, 2] and seen[0][2] == (1, 8, 8, 8)
    assert torch.count_nonzero(zeroed) == 0


def test_progress_bar_can_be_configured(pipe, capsys):
    pipe.set_progress_bar_config(disable=False, desc="denoise")
    try:
        run(pipe, num_inference_steps=2)
    finally:
        pipe.set_progress_bar_config(disable=True)
    assert "denoise" in capsys.readouterr().err


def test_enhancement_is_applied(pipe):
    plain = run(pipe)
    enhanced = run(pipe, enhancement="high_contrast")
    assert enhanced.shape == plain.shape and np.abs(enhanced - plain).max() > 1e-3
    with pytest.raises(CXRInputError, match="balanced"):
        run(pipe, enhancement="hihg_contrast")


def test_pil_outputs_carry_provenance_through_png(pipe, tmp_path):
    image = pipe(PROMPT, num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(7)).images[0]
    path = tmp_path / "x.png"
    image.save(path)
    record = read_provenance(path)
    assert record["synthetic"] is True and record["not_for_clinical_use"] is True
    assert record["prompt"] == PROMPT and record["seed"] == 7
    assert record["num_inference_steps"] == 2 and record["guidance_scale"] == 3.0
    assert "NOT FOR CLINICAL USE" in Image.open(path).info["Description"]


def test_local_round_trip_is_bit_exact(pipe, saved):
    loaded = CXRPipeline.from_pretrained(saved)
    loaded.set_progress_bar_config(disable=True)
    index = json.loads((saved / "model_index.json").read_text())
    assert index["unet"] == ["cxr_diffusers.models.unet_cxr", "CXRUNet2DConditionModel"]
    assert index["vae"] == ["cxr_diffusers.models.autoencoder_cxr", "CXRAutoencoderKL"]
    assert index["text_encoder"] == ["cxr_diffusers.models.text_encoder_cxr", "CXRTextEncoder"]
    assert list(saved.rglob("*.safetensors")) and not list(saved.rglob("*.bin"))
    assert np.array_equal(run(pipe, seed=3), run(loaded, seed=3))


def test_hub_cache_round_trip_offline(pipe, saved, tmp_path):
    """`from_pretrained("org/name")` resolves from a Hub cache folder with HF_HUB_OFFLINE=1 (set in conftest)."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--radiology-lab--cxr-tiny"
    shutil.copytree(saved, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    loaded = CXRPipeline.from_pretrained("radiology-lab/cxr-tiny", cache_dir=tmp_path / "hub")
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(run(pipe, seed=4), run(loaded, seed=4))
    with pytest.raises(ModelLoadingError, match="radiology-lab/absent"):
        CXRPipeline.from_pretrained("radiology-lab/absent", cache_dir=tmp_path / "hub")


def test_missing_and_corrupt_model_folders(saved, tmp_path):
    with pytest.raises(ModelLoadingError, match="does not exist"):
        CXRPipeline.from_pretrained(tmp_path / "nothing-here")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadingError, match="no model_index.json"):
        CXRPipeline.from_pretrained(tmp_path / "empty")
    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    with pytest.raises(ModelLoadingError, match="Could not load"):
        CXRPipeline.from_pretrained(broken)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": ""}, "prompt is empty"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": 42}, "prompt must be"),
        ({"prompt": [PROMPT, None]}, r"prompt\[1\] must be a string"),
        ({"prompt": []}, "prompt must be"),
        ({"num_inference_steps": 0}, "num_inference_steps must be a positive integer"),
        ({"num_inference_steps": -3}, "num_inference_steps must be a positive integer"),
        ({"guidance_scale": float("nan")}, "guidance_scale must be a number between 0 and 30"),
        ({"guidance_scale": -1.0}, "guidance_scale must be a number between 0 and 30"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt must be a positive integer"),
        ({"negative_prompt": ["a", "b"]}, "negative_prompt has 2 entries but prompt has 1"),
        ({"generator": [torch.Generator()] * 3, "num_images_per_prompt": 2}, "3 generators were given for 2 images"),
        ({"output_type": "jpeg"}, "output_type must be one of"),
        ({"latents": torch.zeros(1, 8, 4, 4)}, "latents must have shape"),
    ],
)
def test_bad_input_gets_one_clear_sentence(pipe, kwargs, message):
    kwargs = {"prompt": PROMPT, "num_inference_steps": 2, **kwargs}
    with pytest.raises(CXRInputError, match=message):
        pipe(**kwargs)
