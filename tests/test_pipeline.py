"""CXRPipeline: determinism, guidance, batching, sizes, schedulers, output types, callbacks, round trips through
a local folder and a Hugging Face Hub cache (offline), provenance, and clear errors for bad input."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cxr_diffusers import CXRInputError, CXRPipeline, ModelLoadingError, create_components, read_provenance
from cxr_diffusers import enhancement as E
from cxr_diffusers.schedulers import SCHEDULERS, scheduler_from_name

from conftest import PROMPT, make_tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline()


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
    # the pipeline reads a specification as `enhance` does (one resolver): "none" is no enhancement, a dict is steps
    np.testing.assert_array_equal(run(pipe, enhancement="none"), plain)
    as_dict = run(pipe, enhancement={"name": "high_contrast", "steps": E.get_preset("high_contrast").to_dict()["steps"]})
    np.testing.assert_array_equal(as_dict, enhanced)


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


# ---------------------------------------------------------------------------------------------- diffusers-shaped API
EXPECTED_SLICE = np.array([0.50461173, 0.51974016, 0.4743796, 0.51073325, 0.54559124, 0.50350213, 0.474915,
                           0.51057047, 0.50448906])


def pinned_pipeline():
    """The tiny pipeline built after `torch.manual_seed(0)`, with a VAE scaling factor != 1 so that mis-scaled
    latents change the image."""
    torch.manual_seed(0)
    components = create_components("tiny")
    components["vae"].register_to_config(scaling_factor=0.7)
    pipeline = CXRPipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def flip_guidance_sign(pipeline):
    """Make the UNet return 2 * uncond - text for the text branch: the guided prediction becomes
    uncond - g * (text - uncond), exactly what a sign error in classifier-free guidance computes."""
    forward = pipeline.unet.forward

    def flipped(*args, **kwargs):
        output = forward(*args, **kwargs)
        uncond, text = output.sample.chunk(2)
        output.sample = torch.cat([uncond, 2 * uncond - text])
        return output

    pipeline.unet.forward = flipped


def test_pinned_output_slice():
    """As diffusers' pipeline tests: fixed components and seed give these pixels (tolerance 1e-3). A consistent maths
    error shifts them by far more: the CFG sign by ~1e-2, ignoring the VAE scaling factor by ~5e-2 (checked below)."""
    def slice_of(pipeline):
        image = run(pipeline, num_inference_steps=3)
        assert image.shape == (1, 64, 64, 1)
        return image[0, -3:, -3:, -1].flatten()

    pipeline = pinned_pipeline()
    assert np.abs(slice_of(pipeline) - EXPECTED_SLICE).max() < 1e-3
    flip_guidance_sign(pipeline)
    assert np.abs(slice_of(pipeline) - EXPECTED_SLICE).max() > 5e-3
    unscaled = pinned_pipeline()
    unscaled.vae.register_to_config(scaling_factor=1.0)  # = decoding latents without dividing by the scaling factor
    assert np.abs(slice_of(unscaled) - EXPECTED_SLICE).max() > 5e-3


def test_outputs_go_through_vae_image_processor_with_the_old_pixel_values():
    """pil/np/pt equal, bit for bit, what the pipeline's own conversion (`_to_output_type`, replaced by diffusers'
    VaeImageProcessor) made of the same decoded latents."""
    from diffusers.image_processor import VaeImageProcessor

    pipeline = pinned_pipeline()
    assert isinstance(pipeline.image_processor, VaeImageProcessor)
    latents = run(pipeline, output_type="latent")
    with torch.no_grad():
        decoded = pipeline.vae.decode(latents / pipeline.vae.config.scaling_factor).sample
    old = (decoded / 2 + 0.5).clamp(0, 1).float().cpu()  # the former decode_latents + _to_output_type
    old_np = old.permute(0, 2, 3, 1).numpy()
    old_pil = (old_np[0, ..., 0] * 255).round().astype(np.uint8)
    image_np = run(pipeline, output_type="np")
    assert image_np.dtype == np.float32 and image_np.shape == (1, 64, 64, 1)
    assert np.array_equal(image_np, old_np)
    image_pt = run(pipeline, output_type="pt")
    assert image_pt.dtype == torch.float32 and image_pt.shape == (1, 1, 64, 64) and torch.equal(image_pt, old)
    image_pil = run(pipeline, output_type="pil")[0]
    assert image_pil.mode == "L" and np.array_equal(np.asarray(image_pil), old_pil)
    assert read_provenance(image_pil)["synthetic"] is True
    enhanced = run(pipeline, output_type="np", enhancement="balanced")  # enhanced in [0, 1], not denormalised twice
    expected = pipeline._apply_enhancement(old, E.resolve_enhancement("balanced")).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(enhanced, expected)


def test_example_docstring_and_check_inputs_returns_none(pipe):
    assert ">>> image = pipe(prompt" in CXRPipeline.__call__.__doc__
    assert "Examples:" in CXRPipeline.__call__.__doc__ and "Args:" in CXRPipeline.check_inputs.__doc__
    assert pipe.check_inputs(PROMPT, 64, 64, 2, 4.0, 1, "np") is None


def test_encode_prompt_returns_both_sides_with_masks_and_keeps_gradients(pipe):
    embeds, mask, negative, negative_mask = pipe.encode_prompt([PROMPT, "AP chest radiograph."], "cpu", 2, True)
    assert embeds.shape[:2] == mask.shape and embeds.shape[0] == 4 and negative.shape == embeds.shape
    assert mask.shape == negative_mask.shape and negative_mask.sum(dim=1).tolist() == [2] * 4  # [CLS] [SEP]
    assert torch.equal(embeds[0], embeds[1]) and not torch.equal(embeds[1], embeds[2])
    assert pipe.encode_prompt(PROMPT, "cpu", 1, False)[2:] == (None, None)
    with torch.enable_grad():  # no torch.no_grad inside: training computes its conditioning with it
        trained = pipe.encode_prompt(PROMPT, "cpu", 1, False, padding="longest")[0]
    assert trained.requires_grad and trained.shape[1] == int(pipe.tokenizer(PROMPT, return_tensors="pt").input_ids.shape[1])


def test_precomputed_prompt_embeds_give_the_same_images(pipe):
    embeds, mask, negative, negative_mask = pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt="lateral view")
    by_text = run(pipe, negative_prompt="lateral view")
    by_embeds = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt_embeds=negative,
                     negative_prompt_attention_mask=negative_mask, num_inference_steps=3, output_type="np",
                     generator=torch.Generator().manual_seed(0)).images
    assert np.array_equal(by_text, by_embeds)
    # shorter precomputed states (padding="longest") batch with the computed 128-token negative side, padded and masked
    short, short_mask, _, _ = pipe.encode_prompt(PROMPT, "cpu", 1, False, padding="longest")
    images = pipe(prompt_embeds=short, prompt_attention_mask=short_mask, num_inference_steps=3, output_type="pil",
                  generator=torch.Generator().manual_seed(0)).images
    np.testing.assert_allclose(np.asarray(images[0], dtype=np.float32), (run(pipe)[0, ..., 0] * 255).round(), atol=1)
    record = read_provenance(images[0])
    assert record["prompt"] is None and record["prompt_embeds"] == "precomputed"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompt": None}, "prompt is missing"),
        ({"prompt_embeds": torch.zeros(1, 4, 32)}, "Give prompt or prompt_embeds, not both"),
        ({"prompt": None, "prompt_embeds": torch.zeros(1, 4, 16)}, r"prompt_embeds must have shape \(batch, tokens, 32\)"),
        ({"prompt": None, "prompt_embeds": torch.full((1, 4, 32), float("nan"))}, "prompt_embeds contain NaN"),
        ({"prompt": None, "prompt_embeds": torch.zeros(1, 4, 32), "prompt_attention_mask": torch.ones(1, 5)},
         r"prompt_attention_mask must be a tensor of shape \(1, 4\)"),
        ({"prompt_attention_mask": torch.ones(1, 4)}, "prompt_attention_mask is only used with prompt_embeds"),
        ({"negative_prompt": "x", "negative_prompt_embeds": torch.zeros(1, 4, 32)},
         "Give negative_prompt or negative_prompt_embeds, not both"),
        ({"prompt": None, "prompt_embeds": torch.zeros(2, 4, 32), "negative_prompt_embeds": torch.zeros(2, 5, 32)},
         "negative_prompt_embeds must have the shape of prompt_embeds"),
        ({"negative_prompt_embeds": torch.zeros(2, 4, 32)}, "negative_prompt_embeds has 2 entries but prompt has 1"),
        ({"guidance_rescale": 1.5}, "guidance_rescale must be a number between 0 and 1"),
        ({"guidance_rescale": "0.7"}, "guidance_rescale must be a number between 0 and 1"),
    ],
)
def test_bad_precomputed_embeds_and_guidance_rescale_get_one_sentence(pipe, kwargs, message):
    kwargs = {"prompt": PROMPT, "num_inference_steps": 2, **kwargs}
    with pytest.raises(CXRInputError, match=message):
        pipe(**kwargs)


def test_guidance_rescale_zero_is_todays_image_and_positive_changes_it(pipe):
    from cxr_diffusers.pipelines.pipeline_cxr import rescale_noise_cfg

    base = run(pipe)
    assert np.array_equal(run(pipe, guidance_rescale=0.0), base)
    rescaled = run(pipe, guidance_rescale=0.7)
    assert np.isfinite(rescaled).all() and np.abs(rescaled - base).max() > 1e-3
    assert np.array_equal(run(pipe, guidance_scale=1.0, guidance_rescale=0.7), run(pipe, guidance_scale=1.0))  # no CFG
    guided, text = torch.randn(2, 8, 4, 4) * 3, torch.randn(2, 8, 4, 4)
    torch.testing.assert_close(rescale_noise_cfg(guided, text, 1.0).std(dim=(1, 2, 3)), text.std(dim=(1, 2, 3)))
    assert torch.equal(rescale_noise_cfg(guided, text, 0.0), guided)
    record = read_provenance(run(pipe, output_type="pil", guidance_rescale=0.7)[0])
    assert record["guidance_rescale"] == 0.7


@pytest.mark.parametrize("name", ["dpm++", "ddim", "ddpm", "euler", "unipc"])
def test_v_prediction_zero_terminal_snr_schedulers(pipe, name):
    from cxr_diffusers.schedulers import default_scheduler

    original = pipe.scheduler
    try:
        pipe.scheduler = scheduler_from_name(name, default_scheduler("v_prediction", zero_terminal_snr=True).config)
        config = pipe.scheduler.config
        assert (config.prediction_type, config.rescale_betas_zero_snr, config.timestep_spacing) == \
            ("v_prediction", True, "trailing")
        pipe.scheduler.set_timesteps(4)
        assert int(pipe.scheduler.timesteps[0]) == 999  # sampling starts from the pure-noise timestep
        images = run(pipe, num_inference_steps=4, guidance_rescale=0.7)
        assert np.isfinite(images).all() and images.std() > 1e-2 and images.max() - images.min() > 0.1
    finally:
        pipe.scheduler = original


def test_zero_terminal_snr_needs_v_prediction():
    from cxr_diffusers.schedulers import default_scheduler, training_schedule

    assert default_scheduler().config.rescale_betas_zero_snr is False  # v1 default unchanged
    assert default_scheduler().config.timestep_spacing == "linspace"
    assert training_schedule("v_prediction", True)["rescale_betas_zero_snr"] is True
    with pytest.raises(CXRInputError, match="needs prediction_type='v_prediction'"):
        default_scheduler("epsilon", zero_terminal_snr=True)
    with pytest.raises(CXRInputError, match="prediction_type must be one of"):
        default_scheduler("sample")


def test_vae_slicing_and_tiling_through_the_pipeline(pipe):
    prompts = [PROMPT, "AP chest radiograph. Findings: pneumonia.", "Pediatric chest radiograph."]
    generators = lambda: [torch.Generator().manual_seed(s) for s in range(3)]  # noqa: E731
    batched = pipe(prompts, num_inference_steps=2, generator=generators(), output_type="np").images
    try:
        pipe.enable_vae_slicing()
        assert pipe.vae.use_slicing
        sliced = pipe(prompts, num_inference_steps=2, generator=generators(), output_type="np").images
    finally:
        pipe.disable_vae_slicing()
    np.testing.assert_allclose(sliced, batched, rtol=0, atol=1e-5)
    full = run(pipe, height=256, width=256, num_inference_steps=1)
    try:
        pipe.enable_vae_tiling()  # the tiny VAE's 64 px tiles
        assert pipe.vae.use_tiling and pipe.vae.tile_sample_min_size == 64
        tiled = run(pipe, height=256, width=256, num_inference_steps=1)
    finally:
        pipe.disable_vae_tiling()
    assert not pipe.vae.use_tiling and tiled.shape == full.shape == (1, 256, 256, 1)
    assert 0 < np.abs(tiled - full).mean() < 0.1


# ---------------------------------------------------------------------------------------------- guidance interval
def unet_rows(pipe, **kwargs):
    """The images and the batch size of every UNet call of one `run` (a forward hook)."""
    rows = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    try:
        images = run(pipe, **kwargs)
    finally:
        hook.remove()
    return images, rows


def test_noise_levels_are_the_schedules_sigmas(pipe):
    from cxr_diffusers.schedulers import default_scheduler

    pipe.scheduler.set_timesteps(3)
    alphas_cumprod = pipe.scheduler.alphas_cumprod.double()
    expected = ((1 - alphas_cumprod[[999, 666, 333]]) / alphas_cumprod[[999, 666, 333]]).sqrt().numpy()
    assert pipe.scheduler.timesteps.tolist() == [999, 666, 333]
    np.testing.assert_allclose(pipe.noise_levels(pipe.scheduler.timesteps), expected, rtol=1e-12)
    original = pipe.scheduler
    try:  # zero terminal SNR: DDIM keeps alphas_cumprod 0 at the last timestep, an infinite noise level
        pipe.scheduler = scheduler_from_name("ddim", default_scheduler("v_prediction", zero_terminal_snr=True).config)
        pipe.scheduler.set_timesteps(3)
        levels = pipe.noise_levels(pipe.scheduler.timesteps)
        assert levels[0] == np.inf and np.isfinite(levels[1:]).all()
        assert pipe._guided_steps(pipe.scheduler.timesteps, True, (0, 1e9)) == [False, True, True]
        assert pipe._guided_steps(pipe.scheduler.timesteps, True, (0, float("inf"))) == [True, True, True]
    finally:
        pipe.scheduler = original


def test_guidance_interval_covering_every_step_is_todays_image(pipe):
    base, rows = unet_rows(pipe)
    for interval in [(0, float("inf")), [0.0, np.inf], (0, 1e6)]:
        images, interval_rows = unet_rows(pipe, guidance_interval=interval)
        assert np.array_equal(images, base) and interval_rows == rows == [2, 2, 2]


def test_guidance_interval_excluding_every_step_is_conditional_only_sampling(pipe):
    conditional, conditional_rows = unet_rows(pipe, guidance_scale=1.0)
    for interval in [(100, 200), (0, 0.5), (0, 0)]:  # the 3 steps' sigmas are 14.6, 2.9 and 0.93
        images, rows = unet_rows(pipe, guidance_interval=interval)
        assert np.array_equal(images, conditional) and rows == conditional_rows == [1, 1, 1]


def test_guidance_interval_on_some_steps_makes_fewer_unet_evaluations(pipe):
    base, conditional = run(pipe), run(pipe, guidance_scale=1.0)
    images, rows = unet_rows(pipe, guidance_interval=(1.0, 20.0))
    assert rows == [2, 2, 1]  # the last step (sigma 0.93) runs the conditional branch alone
    assert np.abs(images - base).max() > 1e-4 and np.abs(images - conditional).max() > 1e-4
    _, rows = unet_rows(pipe, guidance_interval=(0.5, 5.0))
    assert rows == [1, 2, 2]
    record = read_provenance(run(pipe, output_type="pil", guidance_interval=(1, 20))[0])
    assert record["guidance_interval"] == [1.0, 20.0] and record["guidance_scale"] == 4.0
    record = read_provenance(run(pipe, output_type="pil", guidance_interval=(0.5, float("inf")))[0])
    assert record["guidance_interval"] == [0.5, "inf"]  # strict JSON: no Infinity
    assert "guidance_interval" not in read_provenance(run(pipe, output_type="pil")[0])


@pytest.mark.parametrize(
    "interval, message",
    [
        ((1.0,), "must be a pair \\(lo, hi\\)"),
        ("0 5", "must be a pair \\(lo, hi\\)"),
        ({"lo": 0, "hi": 5}, "must be a pair \\(lo, hi\\)"),
        ((0, 1, 2), "must be a pair \\(lo, hi\\)"),
        ((2.0, 1.0), "needs lo <= hi"),
        ((-1.0, 5.0), "lower bound must be 0 or more"),
        ((float("nan"), 5.0), "bounds must be numbers"),
        (("0", 5.0), "bounds must be numbers"),
        ((True, 5.0), "bounds must be numbers"),
    ],
)
def test_bad_guidance_intervals_get_one_clear_sentence(pipe, interval, message):
    with pytest.raises(CXRInputError, match=message):
        run(pipe, guidance_interval=interval)
