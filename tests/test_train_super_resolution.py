"""train_scripts/train_super_resolution.py and its training pairs (`cxr_diffusers.data.super_resolution`).

The training runs take 6 steps of the tiny config (`tiny.json`'s "super_resolution": base 32 px, 24 px crops, an
8-channel model) on the shipped fixture X-rays at their native sizes (224 and 300 px, and one of 64 px that is large
enough for x2 only), in-process through the script's `main(argv)`.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    FIXTURES_DIR,
    TINY,
    assert_same_safetensors,
    load_train_script,
    run_script_in_process,
)
from PIL import Image
from safetensors.torch import load_file

from cxr_diffusers import CXRInputError, CXRSuperResolutionModel, read_provenance
from cxr_diffusers.data.super_resolution import (
    blur_low_resolution,
    has_detail_for,
    high_resolution_pair,
    lanczos_upscale,
    make_low_resolution,
)
from cxr_diffusers.data.transforms import resize_and_pad

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NATIVE = sorted(str(p) for p in (FIXTURES_DIR / "kermany").rglob("*.jpeg")) + \
    sorted(str(p) for p in (FIXTURES_DIR / "nih").glob("*.png"))  # 3 x 224 px, 3 x 300 px
SMALL = str(next((FIXTURES_DIR / "nih1000_64").rglob("*.png")))  # 64 px: x2 of 32 px only


@pytest.fixture(scope="module")
def sr_dataset(tmp_path_factory) -> str:
    """A saved DatasetDict at native sizes: 9 training images (one of 64 px), 4 validation images."""
    import datasets

    files = NATIVE + [SMALL] + NATIVE[::-1][:2] + NATIVE[1:3] + NATIVE[4:6]
    rows = {"image": files, "prompt": ["Chest radiograph."] * len(files),
            "source": ["nih" if "nih" in f else "kermany" for f in files]}
    data = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image(mode="L"))
    folder = tmp_path_factory.mktemp("sr-data")
    datasets.DatasetDict({"train": data.select(range(9)), "validation": data.select(range(9, 13))}).save_to_disk(folder)
    return str(folder)


def train(data, output_dir, *extra):
    result = run_script_in_process("train_super_resolution", "--config", TINY, "--train_data_dir", data,
                                   "--output_dir", output_dir, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def smoke_run(sr_dataset, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("sr-run")
    train(sr_dataset, output, "--edge_loss_weight", "0.1", "--laplacian_loss_weight", "0.1")
    return output


# ------------------------------------------------------------------------------------------------ training pairs
def test_high_resolution_pair_shapes_and_its_low_resolution_image_is_bicubic_of_hr():
    image = Image.open(NATIVE[-1])
    for scale in (2, 3):
        hr, lr = high_resolution_pair(image, 64, scale)
        assert hr.mode == lr.mode == "L" and hr.size == (64 * scale,) * 2 and lr.size == (64, 64)
        assert np.array_equal(np.asarray(hr), np.asarray(resize_and_pad(image, 64 * scale)))
        assert np.array_equal(np.asarray(lr), np.asarray(hr.resize((64, 64), Image.Resampling.BICUBIC)))
        assert np.array_equal(np.asarray(make_low_resolution(hr, 64)), np.asarray(lr))
        # aligned: each LR pixel is about the mean of its scale x scale block of HR, and not of the shifted one
        blocks = np.asarray(hr, np.float64).reshape(64, scale, 64, scale).mean(axis=(1, 3))
        low = np.asarray(lr, np.float64)
        assert np.abs(blocks - low).mean() < 2.0 < np.abs(blocks[:, 1:] - low[:, :-1]).mean()
    assert lanczos_upscale(lr, 3).size == (192, 192)
    assert has_detail_for((300, 200), 100, 3) and not has_detail_for((299, 299), 100, 3)


def test_make_low_resolution_refuses_non_square_or_non_multiple_images():
    with pytest.raises(CXRInputError, match="must be square"):
        make_low_resolution(Image.new("L", (64, 48)), 32)
    with pytest.raises(CXRInputError, match="not a whole multiple"):
        make_low_resolution(Image.new("L", (70, 70)), 32)
    with pytest.raises(CXRInputError, match="scale must be an integer >= 2"):
        high_resolution_pair(Image.new("L", (70, 70)), 32, 1)


def test_blur_low_resolution_softens_the_chosen_images_reproducibly():
    image = torch.from_numpy(np.asarray(Image.open(NATIVE[0]).convert("L").resize((48, 48)), np.float32) / 127.5 - 1)
    batch = image[None, None].repeat(6, 1, 1, 1)
    same, sigmas = blur_low_resolution(batch, torch.Generator().manual_seed(0), 0.0, (0.5, 2.0))
    assert torch.equal(same, batch) and sigmas == [0.0] * 6
    blurred, sigmas = blur_low_resolution(batch, torch.Generator().manual_seed(0), 1.0, (0.5, 2.0))
    again, _ = blur_low_resolution(batch, torch.Generator().manual_seed(0), 1.0, (0.5, 2.0))
    assert torch.equal(blurred, again) and blurred.shape == batch.shape and all(0.5 <= s <= 2.0 for s in sigmas)
    sharpness = [float(train_module().laplacian(x[None]).var()) for x in blurred]
    original = float(train_module().laplacian(batch[:1]).var())
    assert all(v < 0.8 * original for v in sharpness)
    # stronger blur, less detail; the mean grey level is kept
    order = np.argsort(sigmas)
    assert sharpness[order[0]] > sharpness[order[-1]]
    assert torch.allclose(blurred.mean(dim=(1, 2, 3)), batch.mean(dim=(1, 2, 3)), atol=0.02)
    half, sigmas = blur_low_resolution(batch, torch.Generator().manual_seed(1), 0.5, (1.0, 1.0))
    assert set(sigmas) <= {0.0, 1.0}
    with pytest.raises(CXRInputError):
        blur_low_resolution(batch, torch.Generator(), 1.5, (0.5, 2.0))


def train_module():
    return load_train_script("train_super_resolution")


def test_aligned_crops_take_the_same_area_of_lr_and_hr():
    script = load_train_script("train_super_resolution")
    lr = np.random.default_rng(0).integers(0, 256, (3, 16, 16), dtype=np.uint8)
    for scale in (2, 3):
        pairs = {"lr": lr, "hr": np.kron(lr, np.ones((1, scale, scale), np.uint8))}  # HR = LR blown up exactly
        low, high = script.aligned_crops(pairs, [2, 0, 2], scale, 6 * scale, torch.Generator().manual_seed(scale))
        assert low.shape == (3, 1, 6, 6) and high.shape == (3, 1, 6 * scale, 6 * scale)
        assert low.min() >= -1 and high.max() <= 1
        assert torch.equal(torch.repeat_interleave(torch.repeat_interleave(low, scale, -1), scale, -2), high)


def test_batches_visit_every_image_once_per_pass_and_depend_on_the_step_only():
    script = load_train_script("train_super_resolution")
    chain = [row for number in range(6) for row in script.batch_rows(10, 4, number, 0, 2)]  # 24 = 2.4 passes
    assert sorted(chain[:10]) == list(range(10)) and sorted(chain[10:20]) == list(range(10))
    assert script.batch_rows(10, 4, 3, 0, 2) == chain[12:16]
    assert script.batch_rows(10, 4, 3, 0, 3) != chain[12:16] or script.batch_rows(10, 4, 3, 1, 2) != chain[12:16]


def test_laplacian_is_the_sharpness_metrics_operator():
    import cv2

    script = load_train_script("train_super_resolution")
    image = np.random.default_rng(1).random((20, 24))
    ours = script.laplacian(torch.from_numpy(image)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(ours, cv2.Laplacian(image, cv2.CV_64F), atol=1e-12)


# ------------------------------------------------------------------------------------------------ training runs
@pytest.mark.slow
def test_smoke_run_writes_a_loadable_model_card_samples_and_metrics(smoke_run):
    folder = smoke_run / "super_resolution"
    model = CXRSuperResolutionModel.from_pretrained(folder).eval()
    assert model.dtype == torch.float32 and model.scale_factors == (2, 3) and model.config.block_out_channels == 8
    assert all(t.dtype == torch.float16 for t in load_file(folder / "diffusion_pytorch_model.safetensors").values())
    with torch.no_grad():
        for scale in (2, 3):
            assert model(torch.zeros(1, 1, 32, 32), scale).sample.shape == (1, 1, 32 * scale, 32 * scale)
    summary = json.loads((folder / "training_summary.json").read_text())
    assert summary["global_step"] == 6 and summary["scale_factors"] == [2, 3] and summary["weights_dtype"] == "fp16"
    pairs = summary["training_pairs"]
    assert (pairs["2"]["images"], pairs["3"]["images"], pairs["2"]["of"]) == (9, 8, 9)  # the 64 px image: x2 only
    assert pairs["3"]["per_source"] == {"kermany": 3, "nih": 5} and pairs["2"]["validation_images"] == 2
    for scale in ("2", "3"):
        for method in ("model", "lanczos", "bicubic"):
            assert set(summary["validation"][scale][method]) == {"psnr", "ssim", "sharpness_ratio"}
    records = [json.loads(line) for line in (smoke_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert [r["scale"] for r in losses] == [2, 3, 2, 3, 2, 3] and all("laplacian" in r and "edge" in r for r in losses)
    assert all(f"loss_x{int(r['scale'])}" in r for r in losses)
    validated = [r for r in records if "val_x3_psnr" in r]
    assert [r["step"] for r in validated] == [3, 6] and "val_x2_lanczos_ssim" in validated[0]
    assert (smoke_run / "loss.png").is_file() and (smoke_run / "checkpoint-6" / "super_resolution_ema").is_dir()
    grid = smoke_run / "samples" / "x3-000006.png"
    assert Image.open(grid).size[0] == 4 * (96 + 2) + 2
    record = read_provenance(grid)
    assert record["not_for_clinical_use"] and "NOT FOR CLINICAL USE" in record["notice"]
    card = (folder / "README.md").read_text()
    assert "NOT FOR CLINICAL USE" in card and "Lanczos" in card and "x3 (96 px)" in card and "{{" not in card
    assert (folder / "validation_x2.png").is_file()


@pytest.mark.slow
def test_resume_with_the_discriminator_is_exact(sr_dataset, tmp_path):
    """6 steps in one run == 3 steps, stop, resume for 3 more from checkpoint-3 (model, EMA, optimizer, scheduler,
    discriminator and its optimizer), with the PatchGAN loss on from step 2."""
    disc = ["--disc_weight", "0.1", "--disc_start", "2", "--disc_layers", "1", "--disc_channels", "4",
            "--laplacian_loss_weight", "0.1", "--lr_blur_probability", "0.5", "--validation_steps", "100", "--channels_last", "--logging_steps", "4"]
    full, half = tmp_path / "full", tmp_path / "half"
    train(sr_dataset, full, *disc)
    records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    # every 4 steps, one step of each scale; the discriminator from the third step on
    assert [(r["step"], r["scale"]) for r in records] == [(1, 2), (4, 3), (5, 2)]
    assert "d_loss" not in records[0] and all("d_loss" in r and "adaptive_weight" in r for r in records[1:])
    assert "loss_x3" in records[1] and "loss_x2" in records[2]
    assert (full / "checkpoint-3" / "discriminator").is_dir()
    half.mkdir()
    shutil.copytree(full / "checkpoint-3", half / "checkpoint-3")
    train(sr_dataset, half, *disc, "--resume_from_checkpoint", "latest")
    assert_same_safetensors(full, half, ("super_resolution", "checkpoint-6/super_resolution",
                                         "checkpoint-6/super_resolution_ema", "checkpoint-6/discriminator"))


@pytest.mark.slow
def test_continues_from_a_pretrained_model_on_one_scale(smoke_run, sr_dataset, tmp_path):
    result = train(sr_dataset, tmp_path / "more", "--pretrained_model_name_or_path", smoke_run, "--scale_factors", "3",
                   "--max_train_steps", "2", "--final_dtype", "fp32")
    assert result.returncode == 0
    summary = json.loads((tmp_path / "more" / "super_resolution" / "training_summary.json").read_text())
    assert summary["scale_factors"] == [3] and set(summary["validation"]) == {"3"}
    model = CXRSuperResolutionModel.from_pretrained(tmp_path / "more" / "super_resolution")
    assert model.scale_factors == (2, 3)  # the x2 head is kept (untrained here)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("flags, message", [
    (["--crop_size", "20"], "--crop_size 20 must be divisible by every scale factor, and it is not by 3"),
    (["--crop_size", "96"], "its x2 low-resolution crop (48 px) exceeds --base_resolution 32"),
    (["--scale_factors", "2", "10", "--crop_size", "20"],
     "No training image is large enough for scale 10: it needs a longest side of at least 320 px"),
    (["--scale_factors", "2", "2"], "--scale_factors must be distinct integers >= 2"),
    (["--l1_weight", "0"], "give at least one reconstruction loss"),
    (["--lr_blur_probability", "1.5"], "--lr_blur_probability must be in [0, 1]"),
    (["--lr_blur_sigma", "2", "1"], "--lr_blur_sigma needs 0 < MIN <= MAX"),
    (["--pretrained_model_name_or_path", "/no/such/model"], "does not exist"),
])
def test_bad_input_ends_in_one_sentence(sr_dataset, tmp_path, flags, message):
    result = run_script_in_process("train_super_resolution", "--config", TINY, "--train_data_dir", sr_dataset,
                                   "--output_dir", tmp_path / "run", *flags)
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and message in last and "Traceback" not in result.stderr, result.stderr[-2000:]
