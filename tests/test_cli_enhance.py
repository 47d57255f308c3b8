"""`cxr-diffusers enhance` on the real fixture X-rays."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cxr_diffusers import enhancement as E
from cxr_diffusers.cli import main
from cxr_diffusers.commands.enhance import PRESET_NAMES


@pytest.fixture()
def inputs(fixtures_dir):
    return [
        fixtures_dir / "kermany" / "PNEUMONIA" / "person10_virus_35.jpeg",  # RGB JPEG on disk
        fixtures_dir / "nih1000_64" / "NIH1000" / "test" / "0_normal" / "00000231_013.png",  # 64x64 RGB PNG
    ]


def test_preset_names_match_library():
    assert set(PRESET_NAMES) == set(E.PRESETS)


def test_writes_enhanced_pngs_with_provenance(inputs, tmp_path, capsys):
    out_dir = tmp_path / "out"
    assert main(["enhance", *map(str, inputs), "--preset", "sharp_detail", "--output-dir", str(out_dir)]) == 0
    written = sorted(p.name for p in out_dir.iterdir())
    assert written == ["00000231_013_sharp_detail.png", "person10_virus_35_sharp_detail.png"]
    assert capsys.readouterr().out.count("_sharp_detail.png") == 2
    for src in inputs:
        with Image.open(out_dir / f"{src.stem}_sharp_detail.png") as out, Image.open(src) as original:
            assert out.mode == "L" and out.size == original.size
            expected = E.get_preset("sharp_detail")(original.convert("L"))
            np.testing.assert_array_equal(np.array(out), np.array(expected))
            assert json.loads(out.text["cxr_diffusers.enhancement"]) == E.get_preset("sharp_detail").to_dict()
            assert out.text["Source"] == src.name


def test_default_preset_and_all(inputs, tmp_path):
    assert main(["enhance", str(inputs[1]), "-o", str(tmp_path / "a")]) == 0
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["00000231_013_balanced.png"]
    assert main(["enhance", str(inputs[1]), "--preset", "all", "-o", str(tmp_path / "b")]) == 0
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == sorted(f"00000231_013_{n}.png" for n in E.PRESETS)


def test_sixteen_bit_input_gives_sixteen_bit_output(fixtures_dir, tmp_path):
    with Image.open(fixtures_dir / "nih" / "Pn_1021_26.png") as im:
        a16 = np.array(im.convert("L")).astype(np.uint16) * 257
    src = tmp_path / "xray16.png"
    Image.fromarray(a16).save(src)
    assert main(["enhance", str(src), "--preset", "balanced", "-o", str(tmp_path)]) == 0
    out = np.array(Image.open(tmp_path / "xray16_balanced.png"))
    assert out.dtype in (np.uint16, np.int32) and out.max() > 255
    np.testing.assert_array_equal(out.astype(np.uint16), E.enhance(a16, "balanced"))


def test_compare_grid(inputs, tmp_path):
    assert main(["enhance", *map(str, inputs), "--compare", "-o", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00000231_013_compare.png", "person10_virus_35_compare.png"]
    with Image.open(tmp_path / "person10_virus_35_compare.png") as grid:
        assert grid.mode == "L"
        assert grid.text["Panels"] == "original, " + ", ".join(E.PRESETS)
        g = np.array(grid)
    # five panels (224 px doubled to 448) with 4 px gaps, under a 24 px label bar
    assert g.shape == (24 + 448, 5 * 448 + 4 * 4)
    panels = [g[24:, i * 452 : i * 452 + 448] for i in range(5)]
    with Image.open(inputs[0]) as im:
        original = np.array(im.convert("L"))
    np.testing.assert_array_equal(panels[0][::2, ::2], original)  # first panel is the untouched original
    for panel in panels[1:]:
        assert np.abs(panel.astype(int) - panels[0]).mean() > 2  # each preset panel differs
    for i in range(5):
        assert g[:24, i * 452 : i * 452 + 448].max() > 200  # a label is drawn above every panel
    # small images are upscaled to at least 256 px so the labels fit
    with Image.open(tmp_path / "00000231_013_compare.png") as small:
        assert small.height == 24 + 256


def test_corrupt_file_exits_2_with_one_line(inputs, tmp_path, capsys):
    bad = tmp_path / "x.png"
    bad.write_bytes(b"\x89PNG not really an image \x00\x01\x02" * 10)
    out_dir = tmp_path / "out"
    assert main(["enhance", str(inputs[0]), str(bad), "-o", str(out_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.png" in err and err.startswith("cxr-diffusers enhance: error:")
    assert "Traceback" not in err
    assert not out_dir.exists()  # inputs are all read before anything is written


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["missing.png"], ["missing.png", "does not exist"]),
        (["{fixture}", "--preset", "balnced"], ["balnced", "did you mean 'balanced'"]),
    ],
)
def test_bad_arguments_exit_2(inputs, tmp_path, capsys, argv, needles):
    argv = [a.replace("{fixture}", str(inputs[1])) for a in argv]
    assert main(["enhance", *argv, "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    for needle in needles:
        assert needle in err


def test_truncated_file_exits_2(fixtures_dir, tmp_path, capsys):
    data = (fixtures_dir / "nih" / "No_1000_1980.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 3])
    assert main(["enhance", str(tmp_path / "cut.png"), "-o", str(tmp_path / "o")]) == 2
    assert "cut.png" in capsys.readouterr().err


@pytest.mark.slow
def test_module_entry_point_on_corrupt_file(tmp_path):
    """End to end through `python -m cxr_diffusers.cli`: exit status 2 and a single line on stderr."""
    bad = tmp_path / "x.png"
    bad.write_bytes(b"garbage bytes")
    proc = subprocess.run(
        [sys.executable, "-m", "cxr_diffusers.cli", "enhance", str(bad), "-o", str(tmp_path / "o")],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "x.png" in proc.stderr
