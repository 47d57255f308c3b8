"""The weights shipped in `pretrained/`: they load offline, are fp16 safetensors within the size budget, generate and
classify, and their model cards carry the not-for-clinical-use notice. Skipped where the folders are absent (an
installed package without the repository's weights)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO_ROOT

PIPELINE_DIR = REPO_ROOT / "pretrained" / "cxr-ldm-small"
CLASSIFIER_DIR = REPO_ROOT / "pretrained" / "pneumonia-classifier"


def _require(folder: Path) -> Path:
    if not (folder / "README.md").is_file():
        pytest.skip(f"{folder} is not bundled here")
    return folder


def _weight_files(folder: Path):
    files = sorted(folder.rglob("*.safetensors"))
    assert files, f"no safetensors under {folder}"
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt")), "pickled weights are not allowed"
    return files


def _dtypes(path: Path) -> set:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return {handle.get_slice(name).get_dtype() for name in handle.keys()}


@pytest.fixture(scope="module")
def bundled_pipeline():
    from cxr_diffusers import CXRPipeline

    pipe = CXRPipeline.from_pretrained(_require(PIPELINE_DIR))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_pipeline_weights_are_fp16_safetensors_within_budget():
    files = _weight_files(_require(PIPELINE_DIR))
    assert all(_dtypes(path) == {"F16"} for path in files)
    total_mib = sum(path.stat().st_size for path in files) / 2**20
    assert total_mib <= 90, f"bundled pipeline is {total_mib:.1f} MiB"


def test_pipeline_card_states_data_and_clinical_notice():
    card = (_require(PIPELINE_DIR) / "README.md").read_text()
    assert "NOT FOR CLINICAL USE" in card
    for citation in ("Kermany", "Cohen", "Wang"):
        assert citation in card
    assert (PIPELINE_DIR / "samples.png").is_file()


def test_pipeline_loads_in_fp32_and_generates_with_provenance(bundled_pipeline):
    from cxr_diffusers import read_provenance

    assert bundled_pipeline.unet.dtype == torch.float32  # fp16 on disk, upcast for CPU inference
    assert bundled_pipeline.vae.config.scaling_factor != 1.0  # the trained VAE's latent scale was stored
    prompt = "PA chest radiograph of an adult. Findings: pneumonia."
    out = bundled_pipeline(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    image = out.images[0]
    assert image.mode == "L" and image.size == (256, 256)
    assert "NOT FOR CLINICAL USE" in read_provenance(image)["notice"]
    again = bundled_pipeline(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    np.testing.assert_array_equal(np.asarray(image), np.asarray(again))
    pixels = np.asarray(image, dtype=np.float32)
    assert np.isfinite(pixels).all() and pixels.std() > 1.0  # not a blank image


def test_classifier_is_a_transformers_image_classifier(fixtures_dir):
    from transformers import pipeline

    folder = _require(CLASSIFIER_DIR)
    files = _weight_files(folder)
    assert sum(path.stat().st_size for path in files) / 2**20 <= 50
    weights = [path for path in files if path.name != "ood_statistics.safetensors"]  # the input check's fp32 statistics
    assert weights and all(_dtypes(path) <= {"F16", "I64"} for path in weights)  # I64: batch-norm step counters
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["data"]["test_images"] == 624 and 0.5 < metrics["test"]["metrics"]["auroc"]["value"] <= 1.0
    assert "Not for clinical use" in (folder / "README.md").read_text()

    classifier = pipeline("image-classification", model=str(folder))
    result = classifier(str(fixtures_dir / "kermany" / "PNEUMONIA" / "person100_bacteria_475.jpeg"))
    assert {row["label"] for row in result} == {"NORMAL", "PNEUMONIA"}
    assert abs(sum(row["score"] for row in result) - 1.0) < 1e-4
