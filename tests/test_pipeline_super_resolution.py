"""The super-resolution stage in CXRPipeline (issue 19: 512 / 768 px without tiled anatomy) and `cxr-diffusers upscale`:
sizes, the base layout kept (an untrained stage is exactly bicubic upsampling of the native image of the same seed),
determinism, batching, errors, the warning without a stage, provenance, saving and loading, bf16, and the CLI."""

import copy
import json
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from cxr_diffusers import CXRInputError, CXRPipeline, CXRSuperResolutionModel, ModelLoadingError, read_provenance
from cxr_diffusers.cli import main
from cxr_diffusers.data.transforms import resize_and_pad, to_tensor
from cxr_diffusers.enhancement import resolve_enhancement
from cxr_diffusers.pipelines.pipeline_cxr import SUPER_RESOLUTION_BATCH, upscale_images

from conftest import PROMPT, make_tiny_pipeline

PIPELINE_LOGGER = "cxr_diffusers.pipelines.pipeline_cxr"
XRAY = "nih/No_1000_1980.png"  # 300x300 grey PNG


def tiny_super_resolution(seed=0):
    torch.manual_seed(seed)
    return CXRSuperResolutionModel(block_out_channels=8, num_blocks=1).eval()


@pytest.fixture(scope="module")
def pipe():
    """The tiny pipeline without a stage (native 64 px)."""
    return make_tiny_pipeline()


@pytest.fixture(scope="module")
def sr_pipe(pipe):
    """The same weights with an untrained stage (scales 2 and 3: 128 and 192 px)."""
    staged = CXRPipeline(**{**pipe.components, "super_resolution": tiny_super_resolution()})
    staged.set_progress_bar_config(disable=True)
    return staged


@pytest.fixture(scope="module")
def saved(sr_pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-cxr-sr")
    sr_pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def plain(pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-cxr")
    pipe.save_pretrained(folder)
    return folder


def run(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "pt")
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs).images


def bicubic(images_01: torch.Tensor, scale: int) -> torch.Tensor:
    """What an untrained stage makes of `(B, 1, H, W)` images in [0, 1]."""
    return (F.interpolate(images_01 * 2 - 1, scale_factor=scale, mode="bicubic", align_corners=False).clamp(-1, 1)
            + 1) / 2


# ------------------------------------------------------------------------------------------------ the pipeline
@pytest.mark.parametrize("size, scale", [((128, 128), 2), ((192, 192), 3), ((128, 64), 2), ((96, 192), 3)])
def test_sizes_above_native_are_the_native_image_upscaled(pipe, sr_pipe, size, scale):
    height, width = size
    up = run(sr_pipe, height=height, width=width)
    assert up.shape == (1, 1, height, width)
    base = run(pipe, height=height // scale, width=width // scale, super_resolution=False)
    torch.testing.assert_close(up, bicubic(base, scale), rtol=0, atol=1e-5)  # the same layout, only larger
    direct = run(sr_pipe, height=height, width=width, super_resolution=False)  # the old large canvas: another image
    assert direct.shape == up.shape and (direct - up).abs().mean() > 1e-3


def test_native_size_is_unchanged_by_the_stage(pipe, sr_pipe):
    assert torch.equal(run(sr_pipe), run(pipe))
    assert sr_pipe.super_resolution_plan(64, 64) is None and sr_pipe.super_resolution_plan(128, 128) == 2
    assert sr_pipe.super_resolution_sizes == (128, 192) and pipe.super_resolution_sizes == ()


def test_same_seed_same_image(sr_pipe):
    a, b, c = run(sr_pipe, seed=3, height=192, width=192), run(sr_pipe, seed=3, height=192, width=192), \
        run(sr_pipe, seed=4, height=192, width=192)
    assert torch.equal(a, b) and (a - c).abs().max() > 1e-3


def test_batches_and_generator_lists_match_single_calls(sr_pipe):
    count = SUPER_RESOLUTION_BATCH + 1  # the stage runs in chunks
    generators = [torch.Generator().manual_seed(s) for s in range(count)]
    batched = sr_pipe(PROMPT, num_images_per_prompt=count, generator=generators, num_inference_steps=2,
                      height=128, width=128, output_type="np").images
    assert batched.shape == (count, 128, 128, 1)
    for seed in (0, count - 1):
        single = sr_pipe(PROMPT, generator=torch.Generator().manual_seed(seed), num_inference_steps=2, height=128,
                         width=128, output_type="np").images
        np.testing.assert_allclose(batched[seed], single[0], rtol=0, atol=2e-4)


def test_latents_and_callbacks_work_at_the_base_size(sr_pipe):
    shapes = []

    def callback(_pipe, _step, _t, tensors):
        shapes.append(tuple(tensors["latents"].shape))
        return {}

    latents = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(0))
    images = sr_pipe(PROMPT, latents=latents, num_inference_steps=2, height=192, width=192, output_type="np",
                     callback_on_step_end=callback).images
    assert images.shape == (1, 192, 192, 1) and shapes == [(1, 8, 8, 8)] * 2
    with pytest.raises(CXRInputError, match=r"latents must have shape \(1, 8, 8, 8\)"):
        sr_pipe(PROMPT, latents=torch.randn(1, 8, 24, 24), height=192, width=192)


def test_enhancement_applies_to_the_final_image(sr_pipe):
    enhanced = run(sr_pipe, height=128, width=128, enhancement="balanced")
    expected = CXRPipeline._apply_enhancement(run(sr_pipe, height=128, width=128), resolve_enhancement("balanced"))
    torch.testing.assert_close(enhanced, expected, rtol=0, atol=1e-6)


def test_vae_tiling_still_applies_to_the_base_decode(pipe, sr_pipe):
    try:
        sr_pipe.enable_vae_tiling(tile_sample_min_size=32)
        up = run(sr_pipe, height=128, width=128)
        base = run(sr_pipe, super_resolution=False)
    finally:
        sr_pipe.disable_vae_tiling()
    torch.testing.assert_close(up, bicubic(base, 2), rtol=0, atol=1e-5)
    assert (base - run(pipe)).abs().mean() > 0  # tiled: the decode really ran in tiles


@pytest.mark.parametrize("size", [(160, 160), (256, 256), (128, 120), (128, 48), (100, 192)])
def test_sizes_the_stage_cannot_make_are_one_sentence(sr_pipe, size):
    with pytest.raises(CXRInputError) as info:
        run(sr_pipe, height=size[0], width=size[1])
    text = str(info.value)
    assert f"{size[0]}x{size[1]} px cannot be made" in text
    assert "64 px natively; 128 and 192 px through the super-resolution stage" in text
    assert "super_resolution=False" in text and "\n" not in text


def test_the_v1_sizes_at_a_256_px_native_size(pipe):
    """The sizes of the issue on a UNet whose native size is 256 px (only the checks run: no sampling)."""
    from cxr_diffusers import CXRUNet2DConditionModel

    unet = CXRUNet2DConditionModel.from_config({**pipe.unet.config, "sample_size": 32})
    native = CXRPipeline(**{**pipe.components, "unet": unet, "super_resolution": tiny_super_resolution()})
    assert native.default_size == 256 and native.super_resolution_sizes == (512, 768)
    assert native.super_resolution_plan(512, 512) == 2 and native.super_resolution_plan(768, 768) == 3
    assert native.super_resolution_plan(512, 256) == 2 and native.super_resolution_plan(256, 256) is None
    for height, width in ((640, 640), (1024, 1024), (512, 300)):
        with pytest.raises(CXRInputError, match="256 px natively; 512 and 768 px through the super-resolution stage"):
            native(PROMPT, height=height, width=width)


def test_super_resolution_flag(pipe, sr_pipe):
    with pytest.raises(CXRInputError, match="super_resolution=True needs a super-resolution component"):
        run(pipe, height=128, width=128, super_resolution=True)
    with pytest.raises(CXRInputError, match="upscales sizes above the UNet's native 64 px"):
        run(sr_pipe, super_resolution=True)
    with pytest.raises(CXRInputError, match="super_resolution must be True, False or None"):
        run(sr_pipe, height=128, width=128, super_resolution="yes")
    assert run(sr_pipe, height=128, width=128, super_resolution=True).shape == (1, 1, 128, 128)


def test_a_large_canvas_without_the_stage_warns_once(pipe, caplog):
    with caplog.at_level(logging.WARNING, logger=PIPELINE_LOGGER):
        images = run(pipe, height=128, width=128, num_inference_steps=1)
    warnings = [r for r in caplog.records if r.name == PIPELINE_LOGGER]
    assert images.shape == (1, 1, 128, 128) and len(warnings) == 1
    message = warnings[0].getMessage()
    assert "learned 64 px layouts" in message and "tiles the anatomy" in message
    assert "super_resolution=CXRSuperResolutionModel.from_pretrained" in message and "cxr-diffusers upscale" in message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=PIPELINE_LOGGER):
        run(pipe, num_inference_steps=1)
        run(pipe, height=128, width=128, num_inference_steps=1, super_resolution=False)  # asked for: no warning
    assert not [r for r in caplog.records if r.name == PIPELINE_LOGGER]


def test_latent_output_of_a_staged_size_is_refused(sr_pipe):
    with pytest.raises(CXRInputError, match="output_type='latent' cannot give 128x128.*height=64, width=64"):
        run(sr_pipe, height=128, width=128, output_type="latent")
    assert run(sr_pipe, output_type="latent").shape == (1, 8, 8, 8)
    assert run(sr_pipe, height=128, width=128, output_type="latent", super_resolution=False).shape == (1, 8, 16, 16)


def test_provenance_records_the_stage(sr_pipe, saved, tmp_path):
    image = run(sr_pipe, seed=5, height=192, width=192, output_type="pil")[0]
    path = tmp_path / "x.png"
    image.save(path)
    record = read_provenance(path)
    assert image.size == (192, 192) and record["height"] == record["width"] == 192 and record["seed"] == 5
    assert record["super_resolution"] == {"scale": 3, "base_height": 64, "base_width": 64, "model": "unknown"}
    loaded = CXRPipeline.from_pretrained(saved)
    loaded.set_progress_bar_config(disable=True)
    record = read_provenance(run(loaded, height=128, width=128, output_type="pil")[0])
    assert record["super_resolution"]["model"] == str(saved / "super_resolution")
    assert "super_resolution" not in read_provenance(run(loaded, output_type="pil")[0])  # native: no stage


def test_save_and_load_with_and_without_the_component(pipe, sr_pipe, saved, plain):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["super_resolution"] == ["cxr_diffusers.models.super_resolution_cxr", "CXRSuperResolutionModel"]
    assert (saved / "super_resolution" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = CXRPipeline.from_pretrained(saved)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.super_resolution, CXRSuperResolutionModel)
    assert torch.equal(run(loaded, seed=2, height=128, width=128), run(sr_pipe, seed=2, height=128, width=128))

    without = CXRPipeline.from_pretrained(plain)  # a folder without it (older exports too)
    assert without.super_resolution is None and json.loads((plain / "model_index.json").read_text()).get(
        "super_resolution", [None])[0] is None
    added = CXRPipeline.from_pretrained(plain, super_resolution=CXRSuperResolutionModel.from_pretrained(
        saved / "super_resolution"))
    added.set_progress_bar_config(disable=True)
    assert torch.equal(run(added, seed=2, height=128, width=128), run(sr_pipe, seed=2, height=128, width=128))
    assert CXRPipeline.from_pretrained(saved, super_resolution=None).super_resolution is None

    older = json.loads((plain / "model_index.json").read_text())  # written before the component existed
    older.pop("super_resolution", None)
    (plain / "model_index.json").write_text(json.dumps(older))
    assert CXRPipeline.from_pretrained(plain).super_resolution is None


def test_component_assigned_after_loading_is_saved(pipe, tmp_path):
    assigned = CXRPipeline(**pipe.components)
    assigned.super_resolution = tiny_super_resolution()
    assigned.save_pretrained(tmp_path / "assigned")
    assert isinstance(CXRPipeline.from_pretrained(tmp_path / "assigned").super_resolution, CXRSuperResolutionModel)


def test_bfloat16_pipeline_with_the_stage(sr_pipe):
    bf16 = copy.deepcopy(sr_pipe).to(torch.bfloat16)
    assert bf16.super_resolution.dtype == torch.bfloat16
    low = bf16(PROMPT, generator=torch.Generator().manual_seed(0), num_inference_steps=2, height=128, width=128,
               output_type="np").images
    full = run(sr_pipe, height=128, width=128, output_type="np")
    assert low.shape == full.shape == (1, 128, 128, 1) and low.dtype == np.float32
    assert 0 < np.abs(low - full).mean() < 0.02


def test_upscale_images_chunks_clamps_and_keeps_dtype():
    model = tiny_super_resolution()
    images = torch.rand(SUPER_RESOLUTION_BATCH + 2, 1, 16, 16) * 2.4 - 1.2  # outside [-1, 1] as a decoder may be
    out = upscale_images(model, images, 3)
    assert out.shape == (SUPER_RESOLUTION_BATCH + 2, 1, 48, 48) and out.dtype == images.dtype
    assert out.min() >= -1 and out.max() <= 1
    torch.testing.assert_close(out, F.interpolate(images.clamp(-1, 1), scale_factor=3, mode="bicubic").clamp(-1, 1),
                               rtol=0, atol=1e-6)
    with pytest.raises(CXRInputError, match="upscales by 2, 3, not 4"):
        upscale_images(model, images, 4)


def test_a_stage_for_colour_images_is_refused(pipe):
    with pytest.raises(CXRInputError, match="one grey channel"):
        CXRPipeline(**{**pipe.components, "super_resolution": CXRSuperResolutionModel(in_channels=3, num_blocks=1,
                                                                                    block_out_channels=4)})


# ------------------------------------------------------------------------------------------------ the CLI
def read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float64)


def test_upscale_size_fits_the_input_then_upscales(saved, fixtures_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["upscale", str(fixtures_dir / XRAY), "-o", str(out), "--model", str(saved), "--size", "512",
                 "--no-progress"]) == 0
    target = out / "No_1000_1980_512.png"
    assert capsys.readouterr().out.strip() == str(target)
    with Image.open(target) as image:
        assert image.format == "PNG" and image.mode == "L" and image.size == (512, 512)
        assert "NOT FOR CLINICAL USE" in image.info["Description"]
    record = read_provenance(target)
    assert record["synthetic"] and record["not_for_clinical_use"] and record["operation"] == "upscale"
    assert record["scale"] == 2 and record["fitted_to"] == [256, 256] and record["derived_from"] is None
    assert record["super_resolution_model"] == str(saved / "super_resolution") and record["source"] == "No_1000_1980.png"
    with Image.open(fixtures_dir / XRAY) as original:  # untrained stage: bicubic of the fitted input
        fitted = resize_and_pad(original, 256)
    expected = (bicubic((to_tensor(fitted)[None] + 1) / 2, 2)[0, 0].numpy() * 255).round()
    assert np.abs(read(target) - expected).max() <= 1


def test_upscale_scale_keeps_the_input_size_ratio(saved, fixtures_dir, tmp_path):
    inputs = [fixtures_dir / XRAY, next(iter(sorted((fixtures_dir / "kermany").rglob("*.jpeg"))))]  # RGB JPEG
    out = tmp_path / "out"
    assert main(["upscale", *map(str, inputs), "-o", str(out), "--model", str(saved / "super_resolution"),
                 "--scale", "3"]) == 0
    for source in inputs:
        with Image.open(source) as original, Image.open(out / f"{source.stem}_x3.png") as image:
            assert image.mode == "L" and image.size == (original.width * 3, original.height * 3)
        assert read_provenance(out / f"{source.stem}_x3.png")["scale"] == 3
    assert main(["upscale", str(inputs[0]), "-o", str(tmp_path / "default"), "--model", str(saved)]) == 0
    assert (tmp_path / "default" / "No_1000_1980_x2.png").is_file()  # the model's smallest scale


def test_upscale_never_overwrites_without_the_flag(saved, fixtures_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["upscale", str(fixtures_dir / XRAY), "-o", str(out), "--model", str(saved), "--scale", "2"]
    assert main(argv) == 0
    target = out / "No_1000_1980_x2.png"
    target.write_bytes(b"mine")
    capsys.readouterr()
    assert main(argv) == 2
    assert "already exists; pass --overwrite" in capsys.readouterr().err and target.read_bytes() == b"mine"
    assert main([*argv, "--overwrite"]) == 0 and Image.open(target).size == (600, 600)
    own = tmp_path / "own_x2.png"  # an output that would replace its input, even with --overwrite
    Image.open(fixtures_dir / XRAY).convert("L").save(tmp_path / "own.png")
    Image.open(fixtures_dir / XRAY).convert("L").save(own)
    before = own.read_bytes()
    assert main(["upscale", str(own), "-o", str(tmp_path), "--model", str(saved), "--scale", "2"]) == 0
    assert own.read_bytes() == before and (tmp_path / "own_x2_x2.png").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--size", "640"], "--size 640 cannot be made: this super-resolution model makes 512 or 768 px"),
    (["--scale", "4"], "--scale 4 is not one this super-resolution model has; use 2 or 3"),
    (["--scale", "2", "--size", "512"], None),  # argparse: not both
])
def test_upscale_bad_sizes(saved, fixtures_dir, tmp_path, capsys, extra, message):
    argv = ["upscale", str(fixtures_dir / XRAY), "-o", str(tmp_path / "out"), "--model", str(saved), *extra]
    if message is None:
        with pytest.raises(SystemExit):
            main(argv)
        return
    assert main(argv) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_upscale_bad_inputs_and_models(saved, plain, fixtures_dir, tmp_path, capsys):
    broken = tmp_path / "broken.png"
    broken.write_bytes((fixtures_dir / XRAY).read_bytes()[:100])
    tiny = tmp_path / "tiny.png"
    Image.new("L", (8, 8)).save(tiny)
    cases = [
        ([str(broken)], str(saved), "Cannot read"),
        ([str(tmp_path / "missing.png")], str(saved), "does not exist"),
        ([str(tiny)], str(saved), "at least 16 px"),
        ([str(fixtures_dir / XRAY)], str(plain), "has no super_resolution/ component"),
        ([str(fixtures_dir / XRAY)], str(plain / "unet"), "neither a super-resolution model folder"),
        ([str(fixtures_dir / XRAY)], str(tmp_path / "no-model"), "does not exist"),
    ]
    for files, model, message in cases:
        assert main(["upscale", *files, "-o", str(tmp_path / "out"), "--model", model]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (files, model, err)
    assert not (tmp_path / "out").exists()


def test_upscale_a_synthetic_image_derives_its_record(sr_pipe, saved, tmp_path):
    source = tmp_path / "synthetic.png"
    run(sr_pipe, seed=9, output_type="pil")[0].save(source)
    assert main(["upscale", str(source), "-o", str(tmp_path / "out"), "--model", str(saved), "--scale", "3"]) == 0
    record = read_provenance(tmp_path / "out" / "synthetic_x3.png")
    assert record["operations"] == ["upscale"] and record["derived_from"]["seed"] == 9
    assert Image.open(tmp_path / "out" / "synthetic_x3.png").size == (192, 192)


def test_generate_cli_uses_the_stage(saved, plain, tmp_path, capsys):
    common = ["-p", "AP chest radiograph.", "--steps", "2", "--height", "128", "--width", "128"]
    assert main(["generate", str(saved), *common, "-o", str(tmp_path / "a")]) == 0
    assert "through the super-resolution stage (64x64 px sampled, upscaled 2x)" in capsys.readouterr().out
    record = json.loads((tmp_path / "a" / "manifest.jsonl").read_text().splitlines()[0])
    assert record["super_resolution"]["scale"] == 2 and Image.open(tmp_path / "a" / record["file"]).size == (128, 128)
    assert main(["generate", str(plain), *common, "--super-resolution", str(saved), "-o", str(tmp_path / "b")]) == 0
    assert np.array_equal(read(tmp_path / "a" / record["file"]), read(tmp_path / "b" / record["file"]))
    assert main(["generate", str(saved), *common, "--no-super-resolution", "-o", str(tmp_path / "c")]) == 0
    direct = json.loads((tmp_path / "c" / "manifest.jsonl").read_text().splitlines()[0])
    assert "super_resolution" not in direct and Image.open(tmp_path / "c" / direct["file"]).size == (128, 128)
