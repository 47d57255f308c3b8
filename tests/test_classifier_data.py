"""Classifier data: X-ray decoding (colour, 16-bit, tiny, non-images), transforms, synthetic manifests, mixing."""

import json

import numpy as np
import pytest
import torch
from conftest import FIXTURES_DIR
from PIL import Image

from cxr_diffusers.classification import (
    Record,
    build_transforms,
    class_weights,
    label_from_prompt,
    load_xray,
    make_image_processor,
    mix_records,
    read_synthetic_manifest,
    stratified_subset,
)
from cxr_diffusers.errors import CXRInputError, DataError

NORMAL_PROMPT = "Pediatric chest radiograph. No acute cardiopulmonary abnormality."
PNEUMONIA_PROMPT = "Pediatric chest radiograph. Findings: viral pneumonia."


def _fixture_xray():
    return Image.open(next((FIXTURES_DIR / "kermany" / "NORMAL").glob("*.jpeg"))).convert("L")


# ----------------------------------------------------------------------------------------------------- images
def test_load_xray_converts_colour_and_high_bit_depth(tmp_path):
    gray = _fixture_xray()
    gray.convert("RGB").save(tmp_path / "rgb.png")
    rgba = gray.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(tmp_path / "rgba.png")
    array16 = (np.asarray(gray, dtype=np.uint16) * 16).astype(np.uint16)  # 12-bit data in a 16-bit PNG
    Image.fromarray(array16).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    for name in ("rgb.png", "rgba.png", "deep.png"):
        image = load_xray(tmp_path / name)
        assert image.mode == "L" and image.size == gray.size
    deep = np.asarray(load_xray(tmp_path / "deep.png"), dtype=np.int16)
    assert deep.max() == 255 and deep.min() == 0  # scaled, not clipped at 255
    g = np.asarray(gray, dtype=np.float64)
    stretched = np.rint((g - g.min()) / (g.max() - g.min()) * 255)  # min-max window of the 16-bit data
    assert np.abs(deep - stretched).max() <= 1
    assert np.asarray(load_xray(tmp_path / "rgb.png")).tolist() == np.asarray(gray).tolist()


def test_load_xray_rejects_bad_files(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(CXRInputError, match="Cannot read .*notes.png.* as an image"):
        load_xray(tmp_path / "notes.png")
    with pytest.raises(CXRInputError, match="does not exist"):
        load_xray(tmp_path / "missing.png")
    Image.new("L", (20, 40)).save(tmp_path / "tiny.png")
    with pytest.raises(CXRInputError, match="only 20x40 pixels.*at least 28x28"):
        load_xray(tmp_path / "tiny.png")
    good = tmp_path / "good.jpeg"
    _fixture_xray().save(good)
    good.write_bytes(good.read_bytes()[:300])  # truncated
    with pytest.raises(CXRInputError, match="good.jpeg"):
        load_xray(good)


def test_transforms_match_the_saved_processor_and_never_flip():
    image = _fixture_xray()
    evaluation = build_transforms(64)(image)
    processed = make_image_processor(64)(images=[image.convert("RGB")], return_tensors="pt")["pixel_values"][0]
    assert evaluation.shape == (3, 64, 64) and torch.allclose(evaluation, processed, atol=1e-5)
    train = build_transforms(64, train=True)
    names = [type(t).__name__ for t in train.transforms]
    assert "RandomAffine" in names and "ColorJitter" in names
    assert not any("Flip" in n for n in names)
    torch.manual_seed(0)
    augmented = train(image)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    gray_channels = augmented * std[:, None, None] + mean[:, None, None]
    assert augmented.shape == (3, 64, 64) and torch.allclose(gray_channels[0], gray_channels[2], atol=1e-5)
    assert not torch.equal(augmented, evaluation)
    # an asymmetric image keeps its orientation on average: the bright half stays on top and on the left
    array = np.zeros((96, 96), dtype=np.uint8)
    array[:48, :48] = 255
    marked = Image.fromarray(array)
    for _ in range(10):
        out = train(marked)[0]  # a vertical or horizontal flip would move the bright corner
        assert out[:32, :32].mean() > out[32:, 32:].mean()


# ----------------------------------------------------------------------------------------------------- synthetic
@pytest.mark.parametrize("prompt,label", [
    (PNEUMONIA_PROMPT, 1),
    ("PA chest radiograph of a 5 year old female. Findings: pneumonia, pleural effusion.", 1),
    (NORMAL_PROMPT, 0),
    ("Normal chest X-ray", 0),
    ("No finding.", 0),
    ("Chest radiograph without pneumonia.", 0),
    ("Findings: cardiomegaly.", None),
    ("", None),
])
def test_label_from_prompt(prompt, label):
    assert label_from_prompt(prompt) == label


def _synthetic_folder(root, lines, images=True):
    root.mkdir(parents=True, exist_ok=True)
    if images:
        for entry in lines:
            if isinstance(entry, dict) and entry.get("file"):
                _fixture_xray().resize((64, 64)).save(root / entry["file"])
    (root / "manifest.jsonl").write_text("\n".join(json.dumps(e) if isinstance(e, dict) else e for e in lines) + "\n")
    return root


def test_read_synthetic_manifest_as_written_by_generate(tmp_path):
    lines = [{"file": f"cxr_00_{i:03d}_seed{i}.png", "prompt": PNEUMONIA_PROMPT, "seed": i, "synthetic": True}
             for i in range(3)]
    lines += [{"file": "cxr_01_000_seed3.png", "prompt": NORMAL_PROMPT, "seed": 3},
              {"file": "explicit.png", "prompt": "Findings: cardiomegaly.", "label": "NORMAL"},
              {"file": "numeric.png", "prompt": "anything", "label": 1}]
    records = read_synthetic_manifest(_synthetic_folder(tmp_path / "syn", lines))
    assert [r.label for r in records] == [1, 1, 1, 0, 0, 1]
    assert {r.origin for r in records} == {"synthetic"}
    assert load_xray(records[0].source).size == (64, 64)


def test_synthetic_folder_errors(tmp_path):
    empty = tmp_path / "no_manifest"
    empty.mkdir()
    with pytest.raises(DataError, match="has no manifest.jsonl"):
        read_synthetic_manifest(empty)
    with pytest.raises(DataError, match="is not a folder"):
        read_synthetic_manifest(tmp_path / "absent")
    unknown = _synthetic_folder(tmp_path / "unknown", [{"file": "a.png", "prompt": NORMAL_PROMPT},
                                                       {"file": "b.png", "prompt": "Findings: cardiomegaly."}])
    with pytest.raises(DataError, match="Cannot tell NORMAL or PNEUMONIA for synthetic image b.png .*line 2"):
        read_synthetic_manifest(unknown)
    bad_label = _synthetic_folder(tmp_path / "bad_label", [{"file": "a.png", "prompt": "x", "label": "COVID"}])
    with pytest.raises(DataError, match="a.png has the unknown label 'COVID'"):
        read_synthetic_manifest(bad_label)
    missing = _synthetic_folder(tmp_path / "missing", [{"file": "gone.png", "prompt": NORMAL_PROMPT}], images=False)
    with pytest.raises(DataError, match="gone.png .* does not exist"):
        read_synthetic_manifest(missing)
    broken = _synthetic_folder(tmp_path / "broken", ["{not json"], images=False)
    with pytest.raises(DataError, match="line 1 is not valid JSON"):
        read_synthetic_manifest(broken)
    not_image = _synthetic_folder(tmp_path / "not_image", [{"file": "t.png", "prompt": NORMAL_PROMPT}], images=False)
    (not_image / "t.png").write_text("text")
    with pytest.raises(DataError, match="t.png is not a readable image"):
        read_synthetic_manifest(not_image)


# ----------------------------------------------------------------------------------------------------- mixing
def _records(n, origin="real", pneumonia_every=3):
    return [Record(f"{origin}-{i}.png", int(i % pneumonia_every == 0), origin, f"{origin}-{i}") for i in range(n)]


@pytest.mark.parametrize("ratio,expected", [(0.0, 0), (0.25, 25), (0.5, 50), (1.0, 100)])
def test_synthetic_ratio_adds_the_stated_count(ratio, expected):
    real, synthetic = _records(100), _records(150, "synthetic")
    records, counts = mix_records(real, synthetic if ratio else None, synthetic_ratio=ratio, seed=0)
    assert counts["real"] == 100 and counts["synthetic"] == expected and counts["duplicated_real"] == 0
    assert len(records) == counts["total"] == 100 + expected
    assert counts["total_normal"] + counts["total_pneumonia"] == counts["total"]
    chosen = [r.source for r in records if r.origin == "synthetic"]
    assert len(set(chosen)) == expected  # without replacement
    again, _ = mix_records(real, synthetic if ratio else None, synthetic_ratio=ratio, seed=0)
    assert again == records
    if ratio:
        other, _ = mix_records(real, synthetic, synthetic_ratio=ratio, seed=1)
        assert other != records


@pytest.mark.parametrize("ratio,expected", [(0.5, 50), (1.0, 100), (1.5, 150)])
def test_duplicate_real_ratio_is_the_same_size_control(ratio, expected):
    real = _records(100)
    records, counts = mix_records(real, duplicate_real_ratio=ratio, seed=0)
    synthetic_arm, synthetic_counts = mix_records(real, _records(200, "synthetic"), synthetic_ratio=ratio, seed=0)
    assert counts["duplicated_real"] == expected and counts["synthetic"] == 0
    assert counts["total"] == synthetic_counts["total"] == len(records) == len(synthetic_arm)
    copies = [r.source for r in records if r.origin == "duplicate"]
    assert set(copies) <= {r.source for r in real}
    assert len(set(copies)) == min(expected, 100)  # every image once before any twice
    assert {r.label for r in records if r.origin == "duplicate"} == {0, 1}


def test_mixing_errors():
    real = _records(10)
    with pytest.raises(DataError, match="asks for 10 synthetic images .* only 4"):
        mix_records(real, _records(4, "synthetic"), synthetic_ratio=1.0)
    with pytest.raises(CXRInputError, match="either --synthetic_ratio or --duplicate_real_ratio"):
        mix_records(real, _records(10, "synthetic"), synthetic_ratio=0.5, duplicate_real_ratio=0.5)
    with pytest.raises(CXRInputError, match="needs --synthetic_data_dir"):
        mix_records(real, None, synthetic_ratio=0.5)
    with pytest.raises(CXRInputError, match=">= 0"):
        mix_records(real, duplicate_real_ratio=-1)


def test_class_weights_and_stratified_subset():
    records = _records(90)  # 30 pneumonia, 60 normal
    assert class_weights(records) == pytest.approx([90 / 120, 90 / 60])
    subset = stratified_subset(records, 9, seed=0)
    assert len(subset) == 9 and sum(r.label for r in subset) == 3
    assert stratified_subset(records, 9, seed=0) == subset
    assert stratified_subset(records, 1000) == records
    assert {r.label for r in stratified_subset(records, 2)} == {0, 1}
