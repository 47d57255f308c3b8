"""The one classifier inference path (`class_probabilities`): the same P(PNEUMONIA) from PIL images, arrays and
tensors, from the evaluation's feature extractor, and from train_classifier.py's validation."""

import importlib.util
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import FIXTURES_DIR, REPO_ROOT

from cxr_diffusers.classification import (
    Record,
    build_transforms,
    class_probabilities,
    load_xray,
    make_dataloader,
    make_image_processor,
    pneumonia_probabilities,
    predict_proba,
    prepare_pixel_values,
)
from cxr_diffusers.errors import CXRInputError
from cxr_diffusers.evaluation.features import ClassifierFeatureExtractor, images_to_tensor

XRAYS = sorted(str(p) for p in (FIXTURES_DIR / "kermany").rglob("*.jpeg"))


def tiny_classifier(id2label=None):
    """A 3-channel ResNet of a few thousand weights with a biased head, as the shipped classifier is built."""
    from transformers import ResNetConfig, ResNetForImageClassification

    id2label = id2label or {0: "NORMAL", 1: "PNEUMONIA"}
    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=2,
                          id2label=id2label, label2id={v: k for k, v in id2label.items()})
    model = ResNetForImageClassification(config).eval()
    with torch.no_grad():
        model.classifier[1].bias.copy_(torch.tensor([0.3, -0.3]))
    return model


@pytest.fixture(scope="module")
def images():
    return [load_xray(p) for p in XRAYS]


def test_pil_images_arrays_and_tensors_give_the_same_probabilities(images):
    model, processor = tiny_classifier(), make_image_processor(64)
    from_pil = predict_proba(model, processor, images)
    assert from_pil.shape == (len(images),) and from_pil.dtype == np.float32
    arrays = [np.asarray(image) for image in images]
    tensor = torch.from_numpy(np.stack(arrays).astype(np.float32) / 255)[:, None]  # (N, 1, H, W) in [0, 1]
    np.testing.assert_allclose(predict_proba(model, processor, arrays), from_pil, atol=1e-6)
    np.testing.assert_allclose(predict_proba(model, processor, tensor), from_pil, atol=1e-6)
    np.testing.assert_allclose(predict_proba(model, processor, tensor, batch_size=2), from_pil, atol=1e-6)
    assert predict_proba(model, processor, images[0]) == pytest.approx(from_pil[:1], abs=1e-6)
    # the reference: the model on the processor's own pixel values
    pixel_values = processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(prepare_pixel_values(processor, images), pixel_values)
    with torch.no_grad():
        expected = torch.softmax(model(pixel_values=pixel_values).logits, dim=-1)[:, 1].numpy()
    np.testing.assert_allclose(from_pil, expected, atol=1e-6)
    with pytest.raises(CXRInputError, match="No images"):
        prepare_pixel_values(processor, [])


def test_pneumonia_column_comes_from_id2label(images):
    swapped = tiny_classifier({0: "PNEUMONIA", 1: "NORMAL"})
    pixel_values = prepare_pixel_values(make_image_processor(64), images)
    both, logits = class_probabilities(swapped, pixel_values, return_logits=True)
    assert both.shape == logits.shape == (len(images), 2) and both.sum(dim=1).allclose(torch.ones(len(images)))
    torch.testing.assert_close(pneumonia_probabilities(swapped, pixel_values), both[:, 0])
    torch.testing.assert_close(both, torch.softmax(logits, dim=-1))


def test_feature_extractor_predictions_use_the_same_inference():
    model = tiny_classifier()
    extractor = ClassifierFeatureExtractor(model, image_size=64, image_mean=[0.485, 0.456, 0.406],
                                           image_std=[0.229, 0.224, 0.225])
    x = images_to_tensor([load_xray(p) for p in XRAYS], 64)
    np.testing.assert_allclose(extractor.predict_proba(x), class_probabilities(model, extractor.preprocess(x)).numpy())
    # for square images its preprocessing is the image processor's, so its P(PNEUMONIA) is predict_proba's
    np.testing.assert_allclose(extractor.predict_proba(x)[:, 1], predict_proba(model, make_image_processor(64), x),
                               atol=1e-4)


def test_train_classifier_validation_matches_the_library(images):
    from accelerate import Accelerator

    spec = importlib.util.spec_from_file_location("train_scripts_train_classifier_inference",
                                                  REPO_ROOT / "train_scripts" / "train_classifier.py")
    script = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = script
    spec.loader.exec_module(script)

    model = tiny_classifier()
    records = [Record(path, int("PNEUMONIA" in path)) for path in XRAYS] * 3
    loader = make_dataloader(records, build_transforms(64, train=False), batch_size=4)
    weight = torch.tensor([0.7, 1.3])
    labels, probs, loss = script.predict(model, loader, Accelerator(cpu=True), weight)
    assert labels.tolist() == [r.label for r in records]
    assert model.training  # predict() hands the model back in train mode, as the loop expects
    model.eval()
    batches = list(loader)
    expected = torch.cat([pneumonia_probabilities(model, b["pixel_values"]) for b in batches]).numpy()
    np.testing.assert_array_equal(probs, expected)
    np.testing.assert_allclose(probs, np.tile(predict_proba(model, make_image_processor(64), images), 3), atol=1e-5)
    logits = torch.cat([class_probabilities(model, b["pixel_values"], return_logits=True)[1] for b in batches])
    targets = torch.tensor(labels)
    assert loss == pytest.approx(float(F.cross_entropy(logits, targets, weight=weight, reduction="none").mean()))
