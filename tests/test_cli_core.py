"""`cxr-diffusers generate` and `info`: outputs, provenance, manifest, and one-line errors for bad input."""

import json

import pytest

from cxr_diffusers import read_provenance
from cxr_diffusers.cli import main


def test_generate_writes_pngs_manifest_and_grid(tiny_model, tmp_path, capsys):
    out = tmp_path / "gen"
    code = main(["generate", tiny_model, "-p", "PA chest radiograph. Findings: pneumonia.", "-p",
                 "Pediatric chest radiograph.", "-n", "2", "--steps", "2", "--seed", "5", "--scheduler", "ddim",
                 "--enhancement", "balanced", "-o", str(out), "--grid"])
    assert code == 0
    pngs = sorted(p.name for p in out.glob("cxr_*.png"))
    assert len(pngs) == 4
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [5, 6, 7, 8]
    assert {r["prompt"] for r in records} == {"PA chest radiograph. Findings: pneumonia.", "Pediatric chest radiograph."}
    assert all(r["not_for_clinical_use"] and r["scheduler"] == "DDIMScheduler" for r in records)
    provenance = read_provenance(out / records[0]["file"])
    assert provenance["seed"] == 5 and provenance["enhancement"]["name"] == "balanced"
    assert (out / "grid.png").is_file()
    assert "median" in capsys.readouterr().out


def test_generate_same_seed_same_file(tiny_model, tmp_path):
    for name in ("a", "b"):
        assert main(["generate", tiny_model, "-p", "AP chest radiograph.", "--steps", "2", "-o", str(tmp_path / name)]) == 0
    first = (tmp_path / "a" / "cxr_00_000_seed0.png").read_bytes()
    second = (tmp_path / "b" / "cxr_00_000_seed0.png").read_bytes()
    from PIL import Image
    import io
    assert list(Image.open(io.BytesIO(first)).getdata()) == list(Image.open(io.BytesIO(second)).getdata())


def test_generate_bfloat16_is_close_to_float32_and_recorded(tiny_model, tmp_path):
    import numpy as np
    from PIL import Image

    images = {}
    for dtype in ("float32", "bfloat16"):
        out = tmp_path / dtype
        assert main(["generate", tiny_model, "-p", "AP chest radiograph.", "--steps", "2", "--dtype", dtype,
                     "-o", str(out)]) == 0
        record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
        assert record["dtype"] == dtype
        images[dtype] = np.asarray(Image.open(out / record["file"]), dtype=np.float64)
    difference = np.abs(images["float32"] - images["bfloat16"])
    assert images["bfloat16"].shape == images["float32"].shape and images["bfloat16"].std() > 0
    assert 0 < difference.mean() < 3.0  # grey levels: bf16 really ran, and it is the same image bar rounding


@pytest.mark.parametrize(
    "argv, message",
    [
        (["-p", ""], "prompt is empty"),
        (["-p", "x", "--guidance", "1e30"], "guidance_scale must be a number between 0 and 30"),
        (["-p", "x", "--height", "100"], "height=100 is not supported"),
        (["-p", "x", "--scheduler", "ddmi"], "Unknown scheduler 'ddmi'"),
        (["-p", "x", "--enhancement", "sharp"], "sharp"),
        (["-p", "x", "-n", "0"], "--num-images must be at least 1"),
    ],
)
def test_generate_bad_input_is_one_line(tiny_model, tmp_path, capsys, argv, message):
    assert main(["generate", tiny_model, "--steps", "2", "-o", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # earlier lines: the model-loading progress bar
    assert last.startswith("cxr-diffusers generate: error:") and message in last and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seed", "1e20"], "the seed must be a whole number"),
        (["--seed", "-1"], "the seed must be between 0 and 2**63 - 1"),
        (["--seed", str(2**64)], "the seed must be between 0 and 2**63 - 1"),
        (["--guidance", "nan"], "must be a finite number"),
        (["--steps", "0"], "must be at least 1"),
    ],
)
def test_generate_bad_flag_values_are_refused_by_the_parser(tiny_model, tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", tiny_model, "-p", "x", "-o", str(tmp_path), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err.strip().splitlines()[-1] and "Traceback" not in err


def test_generate_twice_into_one_folder_keeps_one_true_record_per_file(tiny_model, tmp_path):
    """Before: the manifest was appended to while PNGs were overwritten, so each file had a NORMAL and a PNEUMONIA line."""
    from cxr_diffusers.classification.data import read_synthetic_manifest

    out = tmp_path / "gen"
    for prompt in ("Pediatric chest radiograph. No acute cardiopulmonary abnormality.",
                   "Pediatric chest radiograph. Findings: pneumonia."):
        assert main(["generate", tiny_model, "-p", prompt, "-n", "2", "--steps", "2", "-o", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["file"] for r in lines) == sorted(p.name for p in out.glob("cxr_*.png"))
    assert all(r["prompt"].endswith("pneumonia.") for r in lines)
    records = read_synthetic_manifest(out)
    assert len(records) == 2 and {r.label for r in records} == {1}
    for record in lines:  # the manifest agrees with the file's own provenance
        assert read_provenance(out / record["file"])["prompt"] == record["prompt"]
    assert not list(out.glob(".*partial"))
    # a corrupted manifest with a file listed twice is refused, not read twice
    (out / "manifest.jsonl").write_text((out / "manifest.jsonl").read_text() * 2)
    from cxr_diffusers import DataError

    with pytest.raises(DataError, match="twice"):
        read_synthetic_manifest(out)


def test_generate_checks_the_output_folder_before_loading_the_model(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["generate", str(tmp_path / "no-model"), "-p", "x", "-o", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_generate_missing_model_folder(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "absent"), "-p", "x"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_info_reports_components_and_parameters(tiny_model, capsys):
    assert main(["info", tiny_model, "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    components = info["components"]
    assert set(components) == {"vae", "text_encoder", "tokenizer", "unet", "scheduler"}
    assert components["unet"]["parameters"] == components["unet"]["trainable_parameters"] > 0
    assert components["text_encoder"]["trainable_parameters"] < components["text_encoder"]["parameters"]
    assert info["total_parameters"] == sum(c.get("parameters", 0) for c in components.values())
    assert info["total_memory_mb"] > 0 and info["default_size"] == 64
    assert main(["info", tiny_model]) == 0
    table = capsys.readouterr().out
    assert "CXRUNet2DConditionModel" in table and "total" in table


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in ("generate", "enhance", "info", "data"):
        assert command in out


def test_generate_guidance_interval_and_lcm_scheduler(tiny_model, tmp_path, capsys):
    from PIL import Image

    common = ["generate", tiny_model, "-p", "AP chest radiograph.", "--steps", "3"]
    assert main([*common, "-o", str(tmp_path / "all")]) == 0
    assert main([*common, "--guidance-interval", "0", "inf", "-o", str(tmp_path / "inf")]) == 0
    assert main([*common, "--guidance-interval", "1", "20", "-o", str(tmp_path / "some")]) == 0
    pixels = {name: list(Image.open(tmp_path / name / "cxr_00_000_seed0.png").getdata()) for name in ("all", "inf", "some")}
    assert pixels["inf"] == pixels["all"] != pixels["some"]  # (0, inf) guides every step: today's image
    record = json.loads((tmp_path / "some" / "manifest.jsonl").read_text())
    assert record["guidance_interval"] == [1.0, 20.0]
    assert json.loads((tmp_path / "inf" / "manifest.jsonl").read_text())["guidance_interval"] == [0.0, "inf"]
    assert "guidance_interval" not in json.loads((tmp_path / "all" / "manifest.jsonl").read_text())
    assert read_provenance(tmp_path / "some" / "cxr_00_000_seed0.png")["guidance_interval"] == [1.0, 20.0]
    # bad intervals: the pipeline's sentence, or the parser's
    assert main([*common, "--guidance-interval", "5", "1", "-o", str(tmp_path / "bad")]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("cxr-diffusers generate: error:") and "needs lo <= hi" in last
    with pytest.raises(SystemExit) as exit_info:
        main([*common, "--guidance-interval", "nan", "1", "-o", str(tmp_path / "bad")])
    assert exit_info.value.code == 2 and "must be a number (or inf)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*common, "--guidance-interval", "1", "-o", str(tmp_path / "bad")])
    # --scheduler lcm (the sampler of a distilled few-step model) is selectable by name
    assert main([*common, "--scheduler", "lcm", "-o", str(tmp_path / "lcm")]) == 0
    assert json.loads((tmp_path / "lcm" / "manifest.jsonl").read_text())["scheduler"] == "LCMScheduler"
