"""scripts/compare_versions.py: real test images beside model versions (same seeds), lung crops and histograms."""

import sys

import datasets
import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import compare_versions  # noqa: E402

from cxr_diffusers import read_provenance  # noqa: E402

GROUPS = ["pediatric normal", "adult pneumonia"]


@pytest.fixture()
def real_dataset(tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 40), dtype=np.uint8)) for _ in range(6)]
    rows = {"image": images, "labels": [[], [], [], ["pneumonia"], ["pneumonia"], ["cardiomegaly"]],
            "source": ["kermany"] * 3 + ["nih_cxr8"] * 3, "age": [None, None, None, 60, 55, 70]}
    folder = tmp_path / "real"
    ds = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image(mode="L"))
    datasets.DatasetDict({"test": ds}).save_to_disk(folder)
    return str(folder)


def _run(folder, level, n=3):
    """A fake protocol run: n images of each group with evaluate's file names and seeds (-n 40)."""
    (folder / "generated").mkdir(parents=True)
    for g, group in enumerate(compare_versions_groups()):
        for i in range(n):
            Image.new("L", (32, 32), level).save(folder / "generated" / f"{g * n + i:04d}_{group.replace(' ', '')}"
                                                                        f"_seed{g * 40 + i}.png")
    return folder


def compare_versions_groups():
    from cxr_diffusers.evaluation.conditioning import GROUP_PROMPTS

    return list(GROUP_PROMPTS)


def test_figure_and_histograms_from_two_runs(real_dataset, tmp_path):
    v1, v2 = _run(tmp_path / "v1", 200), _run(tmp_path / "v2", 60)
    out = tmp_path / "out"
    assert compare_versions.main(["--version", f"v1={v1}", "--version", f"v2={v2}", "--real", real_dataset,
                                  "--size", "32", "--groups", *GROUPS, "--per-group", "2", "-o", str(out)]) == 0
    figure = Image.open(out / "versions_32.png")
    # rows: 2 groups x 2 images; columns: (real, v1, v2) x (image, 2x crop); 2 px padding, 14 px captions, footer
    assert figure.size == (6 * 34 + 2, 4 * (32 + 14 + 2) + 2 + 16)
    assert "NOT FOR CLINICAL USE" in str(read_provenance(figure))
    pixels = np.asarray(figure)
    assert (pixels[2:34, 2 + 2 * 34:34 + 2 * 34] == 200).all()  # row 1, v1's image: its own pixels
    assert (out / "versions_histograms.png").is_file()


def test_missing_seeds_and_bad_paths_are_one_line_errors(real_dataset, tmp_path):
    v1 = _run(tmp_path / "v1", 200, n=1)
    with pytest.raises(SystemExit, match="seeds \\[0, 1\\]"):
        compare_versions.main(["--version", f"v1={v1}", "--real", real_dataset, "--per-group", "2",
                               "--groups", "pediatric normal", "-o", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="neither a protocol run"):
        compare_versions.main(["--version", f"x={tmp_path}", "--real", real_dataset, "-o", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="unknown prompt group"):
        compare_versions.main(["--version", f"v1={v1}", "--real", real_dataset, "--groups", "adult", "-o", "o"])
