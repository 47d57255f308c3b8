"""Classifier model: build, save (fp16) -> transformers pipeline round trip, Grad-CAM, and `cxr-diffusers classify`."""

import json

import numpy as np
import pytest
import torch
from conftest import FIXTURES_DIR
from PIL import Image
from safetensors import safe_open

from cxr_diffusers.classification import (
    ID2LABEL,
    build_classifier,
    grad_cam,
    load_classifier,
    load_xray,
    overlay_heatmap,
    predict_proba,
    save_classifier,
)
from cxr_diffusers.cli import main as cli_main
from cxr_diffusers.errors import CXRInputError, ModelLoadingError

XRAYS = sorted(str(p) for p in (FIXTURES_DIR / "kermany").rglob("*.jpeg"))


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A ResNet-18 at 64 px with a non-trivial head, saved in fp16."""
    torch.manual_seed(0)
    model, processor, init = build_classifier("resnet-18", "scratch", resolution=64)
    assert init.startswith("random initialisation")
    with torch.no_grad():
        model.classifier[1].bias.copy_(torch.tensor([0.3, -0.3]))
    folder = tmp_path_factory.mktemp("classifier")
    save_classifier(model.eval(), processor, folder, dtype="fp16")
    return folder


def test_build_classifier_architectures_and_offline_fallback():
    small, processor, _ = build_classifier("tiny", "scratch", resolution=64)
    assert small.config.id2label == ID2LABEL and small.config.layer_type == "basic"
    assert processor.size == {"height": 64, "width": 64}
    assert 11e6 < sum(p.numel() for p in small.parameters()) < 11.5e6
    # "auto" tries microsoft/resnet-50 and, offline (tests set HF_HUB_OFFLINE), falls back to scratch and says so
    large, _, init = build_classifier("resnet-50", "auto", resolution=64)
    assert large.config.hidden_sizes[-1] == 2048 and large.config.num_labels == 2
    assert "microsoft/resnet-50 was not reachable" in init
    with pytest.raises(CXRInputError, match="Unknown classifier architecture"):
        build_classifier("vit", "scratch")
    with pytest.raises(ModelLoadingError, match="classifier folder '/nonexistent/classifier' does not exist"):
        build_classifier("resnet-18", "/nonexistent/classifier")


def test_fp16_folder_round_trips_through_the_transformers_pipeline(saved_model, tmp_path):
    from transformers import pipeline

    with safe_open(str(saved_model / "model.safetensors"), "pt") as f:
        dtypes = {f.get_tensor(k).dtype for k in f.keys() if "num_batches" not in k}  # noqa: SIM118
    assert dtypes == {torch.float16}
    assert json.loads((saved_model / "config.json").read_text())["dtype"] == "float32"
    pipe = pipeline("image-classification", model=str(saved_model))
    assert pipe.model.dtype == torch.float32  # upcast on load: CPU inference in fp32
    gray = tmp_path / "gray.png"
    Image.open(XRAYS[0]).convert("L").save(gray)
    files = [str(gray), *XRAYS]
    assert Image.open(gray).mode == "L"  # a grayscale file
    outputs = pipe(files)
    model, processor = load_classifier(saved_model)
    ours = predict_proba(model, processor, [load_xray(p) for p in files])
    for result, p in zip(outputs, ours):
        scores = {r["label"]: r["score"] for r in result}
        assert set(scores) == {"NORMAL", "PNEUMONIA"} and sum(scores.values()) == pytest.approx(1, abs=1e-5)
        assert scores["PNEUMONIA"] == pytest.approx(float(p), abs=1e-5)


def test_load_classifier_errors(tmp_path):
    with pytest.raises(ModelLoadingError, match="not a classifier folder"):
        load_classifier(tmp_path)


def test_grad_cam_heatmap_and_overlay(saved_model):
    model, processor = load_classifier(saved_model)
    image = load_xray(XRAYS[0])
    pixel_values = processor(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"]
    cam = grad_cam(model, pixel_values)
    assert cam.shape == (64, 64) and cam.min() >= 0 and cam.max() <= 1
    assert not any(p.grad is not None for p in model.parameters())
    overlay = overlay_heatmap(image, cam)
    assert overlay.mode == "RGB" and overlay.size == image.size


def test_cli_classify_prints_label_and_probability(saved_model, tmp_path, capsys):
    rgba = tmp_path / "colour.png"
    Image.open(XRAYS[0]).convert("RGBA").save(rgba)
    deep = tmp_path / "deep.png"
    Image.fromarray(np.asarray(Image.open(XRAYS[1]).convert("L"), dtype=np.uint16) * 200).save(deep)
    code = cli_main(["classify", *XRAYS, str(rgba), str(deep), "--model", str(saved_model),
                     "--gradcam", "-o", str(tmp_path / "maps")])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(XRAYS) + 2
    for line in lines:
        _file, label, probability, heatmap = line.split("\t")
        assert label in ("NORMAL", "PNEUMONIA") and 0.5 <= float(probability) <= 1
        assert Image.open(heatmap).mode == "RGB"
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == sorted(
        [f"{p.split('/')[-1].rsplit('.', 1)[0]}_gradcam.png" for p in XRAYS] + ["colour_gradcam.png",
                                                                               "deep_gradcam.png"])
    assert cli_main(["classify", XRAYS[0], "--model", str(saved_model), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["label"] in ("NORMAL", "PNEUMONIA") and 0 <= record["p_pneumonia"] <= 1


def test_cli_classify_bad_input(saved_model, tmp_path, capsys):
    text = tmp_path / "report.txt"
    text.write_text("Findings: pneumonia.")
    tiny = tmp_path / "tiny.png"
    Image.new("L", (16, 16)).save(tmp_path / "tiny.png")
    cases = [
        ([str(text)], "Cannot read .*report.txt.* as an image"),
        ([str(tiny)], "only 16x16 pixels"),
        ([str(tmp_path / "absent.png")], "does not exist"),
        ([XRAYS[0], "--model", str(tmp_path)], "not a classifier folder"),
    ]
    for argv, message in cases:
        extra = [] if "--model" in argv else ["--model", str(saved_model)]
        assert cli_main(["classify", *argv, *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cxr-diffusers classify: error:") and len(err.strip().splitlines()) == 1
        assert __import__("re").search(message, err), err
