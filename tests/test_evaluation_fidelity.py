"""Image-space fidelity measures: histogram W1, sharpness ratio, power-spectrum distance, floors and prompt groups."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cxr_diffusers.evaluation.fidelity import (
    example_group,
    grouped_fidelity,
    histogram_w1,
    prompt_group,
    real_vs_real_floor,
    sharpness_ratio,
    spectrum_distance,
)


@pytest.fixture(scope="module")
def real():
    """Real radiographs from the fixtures, as an (N, 1, 64, 64) tensor in [0, 1] (crops give more images)."""
    from PIL import Image

    from conftest import FIXTURES_DIR

    files = sorted(FIXTURES_DIR.rglob("*.jpeg")) + sorted((FIXTURES_DIR / "nih").glob("*.png"))
    tiles = []
    for f in files:
        a = np.asarray(Image.open(f).convert("L").resize((128, 128)), dtype=np.float32) / 255
        tiles += [a[:64, :64], a[:64, 64:], a[64:, :64], a[64:, 64:]]
    return torch.from_numpy(np.stack(tiles))[:, None]


def test_identical_sets_score_zero_and_w1_is_in_grey_levels(real):
    assert histogram_w1(real, real) == pytest.approx(0.0, abs=1e-9)
    assert sharpness_ratio(real, real) == pytest.approx(1.0)
    assert spectrum_distance(real, real) == pytest.approx(0.0, abs=1e-12)
    brighter = (real + 20 / 255).clamp(0, 1)
    assert 15 < histogram_w1(brighter, real) <= 20.5  # a uniform shift of 20 levels (less where it saturates)


def test_blur_is_caught_by_sharpness_and_spectrum_but_barely_by_the_histogram(real):
    blurred = F.avg_pool2d(F.pad(real, (2, 2, 2, 2), mode="replicate"), 5, 1)
    assert sharpness_ratio(blurred, real) < 0.2
    assert spectrum_distance(blurred, real) > 5 * spectrum_distance(real[::2], real[1::2])
    assert histogram_w1(blurred, real) < 5
    noisy = (real + 0.05 * torch.randn_like(real, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert sharpness_ratio(noisy, real) > 1.5


def test_real_vs_real_floor_is_small_against_a_washed_out_set(real):
    floor = real_vs_real_floor(real, seed=0)
    washed = 0.5 + 0.4 * (real - 0.5)  # lower contrast, greyer: the v1 failure
    assert histogram_w1(washed, real) > 3 * floor["histogram_w1"]
    assert real_vs_real_floor(real[:3]) is None


@pytest.mark.parametrize(
    "prompt, group",
    [
        ("Pediatric chest radiograph. Findings: pneumonia.", "pediatric pneumonia"),
        ("AP chest radiograph of a 5 year old girl. No acute cardiopulmonary abnormality.", "pediatric normal"),
        ("PA chest radiograph of a 58 year old female. Findings: pneumonia.", "adult pneumonia"),
        ("Chest radiograph of an adult. No acute cardiopulmonary abnormality.", "adult normal"),
        ("Chest radiograph. Findings: pneumonia.", None),
    ],
)
def test_prompt_groups(prompt, group):
    assert prompt_group(prompt) == group


def test_example_groups_and_grouped_report(real):
    assert example_group("kermany", ["pneumonia"]) == "pediatric pneumonia"
    assert example_group("nih_subset", []) == "adult normal"
    assert example_group("somewhere", [], age=7) == "pediatric normal"
    assert example_group("somewhere", []) is None
    groups = ["pediatric normal"] * (len(real) // 2) + ["adult normal"] * (len(real) - len(real) // 2)
    report = grouped_fidelity(real, groups, real, groups)
    assert set(report) == {"all", "pediatric normal", "adult normal"}
    assert report["adult normal"]["histogram_w1"] == pytest.approx(0.0, abs=1e-9)
    assert report["all"]["n_generated"] == len(real)
