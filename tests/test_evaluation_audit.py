"""Memorisation audit (nearest training image by SSIM and feature cosine) and the conditioning check."""

import glob
import json

import numpy as np
import pytest
import torch
from conftest import FIXTURES_DIR
from PIL import Image, ImageFilter

from cxr_diffusers.data.transforms import resize_and_pad
from cxr_diffusers.errors import CXRInputError
from cxr_diffusers.evaluation.conditioning import (
    DEFAULT_PROMPTS,
    check_classifier_labels,
    conditioning_agreement,
    expected_class,
    label_from_labels,
)
from cxr_diffusers.evaluation.features import ClassifierFeatureExtractor, images_to_tensor
from cxr_diffusers.evaluation.memorization import (
    MemorizationReport,
    memorization_audit,
    nearest_by_cosine,
    nearest_by_ssim,
    save_nearest_grid,
)
from cxr_diffusers.evaluation.report import to_jsonable


@pytest.fixture(scope="module")
def training():
    """Real fixture X-rays at 96 px plus mirrored copies: 18 training images."""
    files = sorted(f for f in glob.glob(str(FIXTURES_DIR / "**" / "*"), recursive=True)
                   if f.lower().endswith((".png", ".jpeg", ".jpg")))
    images = [resize_and_pad(Image.open(f), 96) for f in files]
    return images + [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in images]


def _generated(training):
    """[blurred copy of training[3], noise, mirrored+shifted training[5] crop, copy of training[10]]."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (96, 96), dtype=np.uint8))
    shifted = training[5].crop((20, 20, 96, 96)).resize((96, 96)).rotate(15)
    return [training[3].filter(ImageFilter.GaussianBlur(0.8)), noise, shifted, training[10].copy()]


def test_nearest_by_ssim_finds_near_copies(training):
    generated = _generated(training)
    values, index = nearest_by_ssim(generated, training, size=64, candidates=None)
    assert index[0] == 3 and values[0] > 0.9
    assert index[3] == 10 and values[3] == pytest.approx(1.0, abs=1e-5)
    assert values[1] < 0.3  # noise is close to nothing
    assert values[2] < 0.9
    # the correlation shortlist keeps the near copies
    fast_values, fast_index = nearest_by_ssim(generated, training, size=64, candidates=4)
    assert fast_index[0] == 3 and fast_index[3] == 10
    np.testing.assert_allclose(fast_values[[0, 3]], values[[0, 3]], atol=1e-6)


def test_nearest_by_cosine():
    train = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    values, index = nearest_by_cosine(np.array([[2.0, 0.1], [0.5, 0.5]]), train)
    assert index.tolist() == [0, 2] and values[1] == pytest.approx(1.0)
    with pytest.raises(CXRInputError):
        nearest_by_cosine(np.ones((2, 3)), train)


def test_memorization_audit_report_and_grid(training, tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    model = ResNetForImageClassification(ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[8, 16],
                                                      depths=[1, 1], num_labels=2)).eval()
    extractor = ClassifierFeatureExtractor(model, image_size=64)
    generated = _generated(training)
    report = memorization_audit(generated, training, extractor=extractor, size=64, ssim_threshold=0.9)
    assert isinstance(report, MemorizationReport)
    assert report.cosine_index[3] == 10 and report.cosine[3] == pytest.approx(1.0, abs=1e-6)
    summary = report.summary()
    assert summary["n"] == 4
    assert summary["pixel_ssim"]["fraction_above_threshold"] == pytest.approx(0.5)
    assert summary["near_copies"] == 2  # by pixel SSIM only; a high feature cosine alone is not a copy
    assert summary["closest_pairs"][0]["generated"] == 3 and summary["closest_pairs"][0]["training"] == 10
    assert sum(summary["pixel_ssim"]["histogram"]) == 4
    json.dumps(to_jsonable(summary), allow_nan=False)
    pairs = report.closest_pairs(2)
    assert [p[:2] for p in pairs] == [(3, 10), (0, 3)]
    path = save_nearest_grid(report, generated, training, tmp_path / "nn.png", k=3, tile=64)
    grid = Image.open(path)
    assert grid.mode == "L" and grid.width > 2 * 64 and grid.height > 3 * 64
    # tensors work as well as PIL images
    save_nearest_grid(report, images_to_tensor(generated, 64), images_to_tensor(training, 64), tmp_path / "t.png", k=2)
    with pytest.raises(CXRInputError, match="by must be"):
        memorization_audit(generated[:1], training, size=32).closest_pairs(by="cosine")


def test_expected_class_from_prompts_and_labels():
    assert expected_class(DEFAULT_PROMPTS["PNEUMONIA"]) == "PNEUMONIA"
    assert expected_class(DEFAULT_PROMPTS["NORMAL"]) == "NORMAL"
    assert expected_class("PA chest radiograph. Findings: right lower lobe Pneumonia.") == "PNEUMONIA"
    assert expected_class("Chest radiograph. No evidence of pneumonia.") == "NORMAL"
    assert expected_class("Findings: cardiomegaly.") == "NORMAL"
    assert label_from_labels(["pneumonia"]) == "PNEUMONIA" and label_from_labels([]) == "NORMAL"
    assert label_from_labels(None) is None


def test_conditioning_agreement_counts():
    prompts = ["a", "a", "b", "b", "b"]
    out = conditioning_agreement(["NORMAL", "NORMAL", "PNEUMONIA", "PNEUMONIA", "PNEUMONIA"],
                                 ["normal", "PNEUMONIA", "PNEUMONIA", "PNEUMONIA", "NORMAL"], prompts=prompts)
    assert out["agreement"] == pytest.approx(3 / 5)
    assert out["per_class"]["NORMAL"] == {"n": 2, "agreement": 0.5}
    assert out["per_class"]["PNEUMONIA"]["agreement"] == pytest.approx(2 / 3)
    assert out["per_prompt"]["b"]["n"] == 3
    assert out["confusion_matrix"] == {"labels": ["NORMAL", "PNEUMONIA"], "matrix": [[1, 1], [1, 2]]}
    with pytest.raises(CXRInputError):
        conditioning_agreement(["NORMAL"], [])


def test_classifier_labels_are_checked():
    check_classifier_labels(["normal", "Pneumonia"])
    with pytest.raises(CXRInputError, match="id2label"):
        check_classifier_labels(["LABEL_0", "LABEL_1"])
