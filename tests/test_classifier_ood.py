"""The classifier's input check (`cxr_diffusers.classification.ood`): blank, uniform and noise images are refused with a
reason (never "PNEUMONIA p=1.0"), the fixture radiographs pass, and the feature statistics (Mahalanobis distance of
the penultimate features) are fitted, saved beside the weights, loaded, tolerated when absent and used by
`cxr-diffusers classify`, `predict_proba(check_inputs=True)` and the app's classifier tab."""

import json
import sys

import numpy as np
import pytest
import torch
from conftest import FIXTURES_DIR, REPO_ROOT
from PIL import Image

from cxr_diffusers.classification import (
    OOD_STATISTICS_FILE,
    FeatureStatistics,
    class_probabilities,
    classify_images,
    load_ood_statistics,
    load_xray,
    make_image_processor,
    predict_proba,
    prepare_pixel_values,
    save_classifier,
    structure_problem,
)
from cxr_diffusers.classification.ood import (
    extract_features,
    fit_feature_statistics,
    neighbour_correlation,
)
from cxr_diffusers.errors import CXRInputError

FIXTURE_XRAYS = sorted(p for p in FIXTURES_DIR.rglob("*") if p.suffix in (".png", ".jpeg"))


def tiny_classifier():
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic", num_labels=2,
                          id2label={0: "NORMAL", 1: "PNEUMONIA"}, label2id={"NORMAL": 0, "PNEUMONIA": 1})
    return ResNetForImageClassification(config).eval()


def not_radiographs():
    rng = np.random.default_rng(0)
    return {
        "blank": Image.new("L", (224, 224), 0),
        "white": Image.new("L", (224, 224), 255),
        "uniform grey": Image.new("L", (224, 224), 128),
        "uniform noise": Image.fromarray(rng.integers(0, 256, (224, 224), dtype=np.uint8)),
        "gaussian noise": Image.fromarray(np.clip(rng.normal(128, 40, (300, 300)), 0, 255).astype(np.uint8)),
        "noise, RGB": Image.fromarray(rng.integers(0, 256, (128, 128, 3), dtype=np.uint8)),
    }


@pytest.fixture(scope="module")
def xrays():
    return [load_xray(p) for p in FIXTURE_XRAYS]


def test_blank_uniform_and_noise_images_are_refused_with_a_reason(xrays):
    assert len(FIXTURE_XRAYS) == 9
    for name, image in not_radiographs().items():
        problem = structure_problem(image)
        assert problem, name
        assert ("blank or uniform" in problem) if "noise" not in name else ("looks like noise" in problem), name
    for path, image in zip(FIXTURE_XRAYS, xrays):  # every fixture radiograph passes, 64 px NIH ones too
        assert structure_problem(image) is None, path
        assert neighbour_correlation(image) > 0.8, path


def test_classify_images_never_gives_a_probability_to_a_non_radiograph(xrays):
    model, processor = tiny_classifier(), make_image_processor(64)
    with torch.no_grad():  # a head biased to PNEUMONIA: the unchecked answer for a blank image is confident
        model.classifier[1].bias.copy_(torch.tensor([-8.0, 8.0]))
    blanks = list(not_radiographs().values())
    assert predict_proba(model, processor, blanks).min() > 0.99
    results = classify_images(model, processor, blanks + xrays, batch_size=4)
    for result in results[: len(blanks)]:
        assert result.label == "NOT_A_RADIOGRAPH" and result.p_pneumonia is None and result.problem
        assert result.probability is None
    assert all(r.problem is None and r.label == "PNEUMONIA" for r in results[len(blanks):])
    np.testing.assert_allclose([r.p_pneumonia for r in results[len(blanks):]],
                               predict_proba(model, processor, xrays), atol=1e-6)
    with pytest.raises(CXRInputError, match=r"Image 0 is not classified: the image is blank or uniform"):
        predict_proba(model, processor, blanks, check_inputs=True)
    np.testing.assert_allclose(predict_proba(model, processor, xrays, check_inputs=True),
                               predict_proba(model, processor, xrays), atol=1e-6)
    tensor = torch.zeros(2, 1, 64, 64)  # tensors and array batches are checked image by image
    assert [r.problem is not None for r in classify_images(model, processor, tensor)] == [True, True]


def test_features_are_those_that_feed_the_head(xrays):
    model, processor = tiny_classifier(), make_image_processor(64)
    pixel_values = prepare_pixel_values(processor, xrays)
    probabilities, logits, features = class_probabilities(model, pixel_values, return_logits=True,
                                                          return_features=True)
    torch.testing.assert_close(probabilities, class_probabilities(model, pixel_values))
    torch.testing.assert_close(logits, model(pixel_values=pixel_values).logits)
    assert features.shape == (len(xrays), 16)
    np.testing.assert_allclose(extract_features(model, processor, xrays, batch_size=2), features.numpy(), atol=1e-6)


def _augmented(images, n, seed=0):
    """n crops / brightness variants of real radiographs (the feature statistics need more images than 9)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        image = images[i % len(images)]
        w, h = image.size
        dx, dy = (int(v) for v in rng.integers(0, max(1, w // 8), 2))
        crop = image.crop((dx, dy, w - w // 8 + dx, h - h // 8 + dy)).resize((128, 128))
        out.append(Image.fromarray(np.clip(np.asarray(crop, dtype=np.int16) + int(rng.integers(-12, 13)), 0, 255)
                                   .astype(np.uint8)))
    return out


def test_feature_statistics_fit_save_load_and_reject(tmp_path, xrays):
    model, processor = tiny_classifier(), make_image_processor(64)
    fit = extract_features(model, processor, _augmented(xrays, 60, seed=0))
    held = extract_features(model, processor, _augmented(xrays, 20, seed=1))
    stats = fit_feature_statistics(fit, held, quantile=0.99, info={"data": ["fixtures"]})
    assert stats.info["n_fit"] == 60 and stats.info["n_heldout"] == 20 and stats.info["quantile"] == 0.99
    assert stats.threshold == pytest.approx(np.quantile(stats.distances(held), 0.99))
    folder = tmp_path / "classifier"
    save_classifier(model, processor, folder)
    assert load_ood_statistics(folder) is None  # tolerated: the structural check alone
    stats.save(folder)
    loaded = load_ood_statistics(folder)
    assert (folder / OOD_STATISTICS_FILE).is_file() and loaded.info["data"] == ["fixtures"]
    assert loaded.threshold == pytest.approx(stats.threshold)
    np.testing.assert_allclose(loaded.distances(held), stats.distances(held), rtol=1e-4)
    # an image far away in feature space is refused, with its distance; real ones pass
    far = FeatureStatistics(loaded.mean, loaded.precision, threshold=float(loaded.distances(fit).max()) + 1e-3)
    results = classify_images(model, processor, xrays, statistics=far)
    assert all(r.ood_distance is not None for r in results)
    strict = FeatureStatistics(loaded.mean, loaded.precision, threshold=0.0)
    refused = classify_images(model, processor, xrays[:2], statistics=strict)
    assert all("far from the chest radiographs" in r.problem and r.p_pneumonia is None for r in refused)
    (folder / OOD_STATISTICS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(Exception, match="not a readable OOD statistics file"):
        load_ood_statistics(folder)
    with pytest.raises(CXRInputError, match="computed for another classifier"):
        loaded.distances(np.zeros((1, 3)))


def test_compute_command_writes_the_statistics_beside_the_weights(tmp_path, xrays, capsys):
    from cxr_diffusers.classification.compute_ood import main

    model_dir = tmp_path / "classifier"
    save_classifier(tiny_classifier(), make_image_processor(64), model_dir)
    images = tmp_path / "reference"
    images.mkdir()
    for i, image in enumerate(_augmented(xrays, 30)):
        image.save(images / f"{i:03d}.png")
    assert main([str(model_dir), "--data", str(images), "--quantile", "0.9", "--batch-size", "8"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["n_fit"] == 24 and report["n_heldout"] == 6 and report["resolution"] == 64
    assert load_ood_statistics(model_dir).threshold == pytest.approx(report["threshold"])
    assert main([str(model_dir), "--data", str(tmp_path / "missing")]) == 2


def test_classify_command_reports_noise_and_uses_stored_statistics(tmp_path, capsys, xrays):
    from cxr_diffusers.cli import main

    model_dir = tmp_path / "classifier"
    model, processor = tiny_classifier(), make_image_processor(64)
    save_classifier(model, processor, model_dir)
    noise = tmp_path / "noise.png"
    not_radiographs()["uniform noise"].save(noise)
    xray = str(FIXTURE_XRAYS[0])
    assert main(["classify", str(noise), xray, "--model", str(model_dir), "--json"]) == 0
    captured = capsys.readouterr()
    first, second = (json.loads(line) for line in captured.out.strip().splitlines()[-2:])
    assert first["label"] == "NOT_A_RADIOGRAPH" and first["p_pneumonia"] is None and "noise" in first["reason"]
    assert second["label"] in ("NORMAL", "PNEUMONIA") and "ood_distance" not in second
    assert "not classified" in captured.err
    # with statistics that refuse everything, the fixture X-ray is refused by the feature check
    FeatureStatistics(np.zeros(16), np.eye(16), threshold=0.0).save(model_dir)
    assert main(["classify", xray, "--model", str(model_dir), "--json"]) == 0
    record = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert record["label"] == "NOT_A_RADIOGRAPH" and "feature distance" in record["reason"]
    assert record["ood_distance"] > 0


def test_app_classifier_tab_refuses_a_blank_image(tmp_path, monkeypatch):
    import gradio as gr

    monkeypatch.syspath_prepend(str(REPO_ROOT / "spaces_app"))
    sys.modules.pop("tab_classifier", None)
    import tab_classifier

    model_dir = tmp_path / "classifier"
    model, processor = tiny_classifier(), make_image_processor(64)
    save_classifier(model, processor, model_dir)

    class State:  # the two things the tab asks of the app's state
        class config:
            classifier = str(model_dir)

        def get_classifier(self):
            return model, processor

        def new_output_dir(self):
            return tmp_path

    classify = tab_classifier.make_fn(State())
    for name in ("blank", "uniform grey", "uniform noise"):
        with pytest.raises(gr.Error, match="Not classified: the image"):
            classify(not_radiographs()[name], "predicted class")
    label, _overlay, note = classify(load_xray(FIXTURE_XRAYS[0]), "predicted class")
    assert set(label) == {"NORMAL", "PNEUMONIA"} and "Grad-CAM" in note


@pytest.mark.slow
def test_bundled_classifier_never_calls_a_blank_image_pneumonia(xrays):
    from cxr_diffusers.classification import load_classifier
    from cxr_diffusers.evaluation.runner import find_classifier

    path = find_classifier()
    if path is None:
        pytest.skip("bundled classifier absent")
    model, processor = load_classifier(path)
    statistics = load_ood_statistics(path)
    results = classify_images(model, processor, list(not_radiographs().values()) + xrays, statistics=statistics)
    assert all(r.label == "NOT_A_RADIOGRAPH" for r in results[:6])
    assert all(r.label in ("NORMAL", "PNEUMONIA") for r in results[6:])
