"""`cxr-diffusers synthesize` (issue 17): spec expansion, an imagefolder dataset with a card, resume after a kill,
refusal of a changed spec, the quality filter, 2 processes under `accelerate launch`, and the benchmark's smoke run.
All on the tiny random pipeline at 64 px with 2 steps and one torch thread per process."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT
from PIL import Image

from cxr_diffusers.cli import main
from cxr_diffusers.errors import CXRInputError
from cxr_diffusers.provenance import NOT_FOR_CLINICAL_USE, read_provenance
from cxr_diffusers.synthesis import (
    STOP_AFTER_ENV,
    SimulatedInterruption,
    SpecError,
    expand_plan,
    image_seed,
    load_spec,
    parse_spec,
)

N = 6
SPEC = {"findings": {"normal": 0.5, "pneumonia": 0.5}, "population": {"pediatric": 1.0},
        "sex": {"female": 0.5, "male": 0.5}}
COMMON = ["--steps", "2", "--batch-size", "2", "--threads", "1"]


def _spec_file(folder: Path, spec: dict = SPEC, name: str = "spec.json") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(spec))
    return str(path)


def _synthesize(model, spec, out, *extra) -> int:
    return main(["synthesize", model, "--spec", spec, "-o", str(out), "-n", str(N), *COMMON, *map(str, extra)])


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def _pixels(folder: Path) -> dict[str, np.ndarray]:
    return {row["file_name"]: np.asarray(Image.open(folder / row["file_name"])) for row in _rows(folder)}


def _same_dataset(a: Path, b: Path) -> None:
    assert _rows(a) == _rows(b)
    pa, pb = _pixels(a), _pixels(b)
    assert pa.keys() == pb.keys() and len(pa) == N
    for name in pa:
        assert np.array_equal(pa[name], pb[name]), name


def _listing(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory) -> Path:
    """One uninterrupted 1-process run of the balanced spec: the dataset the other runs must reproduce."""
    root = tmp_path_factory.mktemp("synth-reference")
    assert _synthesize(tiny_model, _spec_file(root / "spec"), root / "out") == 0
    return root / "out"


# ------------------------------------------------------------------------------------------------ the spec
def test_spec_expansion_is_exact_and_deterministic(tmp_path):
    spec = parse_spec({"findings": {"normal": 0.5, "pneumonia": 0.5}, "sex": {"female": 0.5, "male": 0.5},
                       "population": {"pediatric": 0.6, "adult": 0.4},
                       "age_bands": [{"min": 1, "max": 5}, {"min": 6, "max": 12, "weight": 3}, [40, 80]],
                       "view": {"AP": 0.7, "PA": 0.3}})
    seed = 0
    plan = expand_plan(spec, 1000, seed)
    assert Counter(p.label for p in plan) == {"normal": 500, "pneumonia": 500}
    assert Counter(p.sex for p in plan) == {"female": 500, "male": 500}
    assert Counter(p.population for p in plan) == {"pediatric": 600, "adult": 400}
    assert Counter(p.view for p in plan) == {"AP": 700, "PA": 300}
    assert all((p.age <= 12) == (p.population == "pediatric") for p in plan)
    assert sum(p.age <= 5 for p in plan) == 150  # weight 1 of 4 among the 600 children
    assert plan[0].prompt.startswith(f"{plan[0].view} chest radiograph of a") and str(plan[0].age) in plan[0].prompt
    assert expand_plan(spec, 1000, seed) == plan and expand_plan(spec, 1000, 1) != plan
    seeds = [image_seed(0, i) for i in range(1000)]
    assert len(set(seeds)) == 1000 and seeds == [image_seed(0, i) for i in range(1000)]
    assert image_seed(0, 5, 1) != image_seed(0, 5) and all(0 <= s < 2**63 for s in seeds)

    counts = parse_spec({"findings": {"normal": 2, "cardiomegaly + pleural effusion": 1},
                         "view": {"PA": 1.0}, "template": "{view} chest X-ray. {findings_sentence}"})
    assert counts.resolve_num_images(None) == 3
    with pytest.raises(SpecError, match="contradicts the spec's counts"):
        counts.resolve_num_images(4)
    prompts = [p.prompt for p in expand_plan(counts, 3, 0)]
    assert sorted(prompts) == ["PA chest X-ray. Findings: cardiomegaly, pleural effusion.",
                               "PA chest X-ray. No acute cardiopulmonary abnormality.",
                               "PA chest X-ray. No acute cardiopulmonary abnormality."]

    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text("prompt,count,labels\nAP chest radiograph. Findings: pneumonia.,2,pneumonia\n"
                        "PA chest radiograph.,1,normal\n")
    from_csv = expand_plan(load_spec(csv_file), 3, 0)
    assert [(p.prompt, p.label) for p in from_csv] == [("AP chest radiograph. Findings: pneumonia.", "pneumonia")] * 2 + [
        ("PA chest radiograph.", "normal")]
    cycled = expand_plan(parse_spec({"prompts": ["Findings: pneumonia.", "Normal chest.", "Findings: cardiomegaly.",
                                                 "Findings: no pneumonia.", "A chest X-ray."]}), 6, 0)
    assert [p.label for p in cycled] == ["pneumonia", "normal", "cardiomegaly", "normal", None, "pneumonia"]


@pytest.mark.parametrize("spec,message", [
    ({"findings": {"pnemonia": 1}}, "'pnemonia' is not a known finding"),
    ({"findings": {"normal": 0.4, "pneumonia": 0.4}}, "proportions add up to 0.8, not 1"),
    ({"finding": {"normal": 1}}, "unknown key 'finding'"),
    ({"findings": {"normal": 2}, "sex": {"female": 3}}, "the counts disagree on the number of images"),
    ({"findings": {"normal": 0.5, "pneumonia": 0.5}, "template": "{age} {findings}"}, "has no 'age_bands'"),
    ({"findings": {"normal": 1}, "population": {"adult": 1}, "age_bands": [[1, 5]]}, "'adult' has no age band"),
    ({"findings": {"normal": 1}, "view": {"oblique": 1}}, "'oblique' is not one of"),
    ({"prompts": [{"prompt": "a", "count": 2}, "b"]}, "a count for every prompt or for none"),
    ({"prompts": ["x"], "findings": {"normal": 1}}, "cannot be combined with a list of prompts"),
    ([1, 2], "must be a mapping"),
])
def test_bad_specs_fail_in_one_sentence(tiny_model, tmp_path, capsys, spec, message):
    path = _spec_file(tmp_path, spec)
    with pytest.raises(SpecError, match=message):
        load_spec(path).resolve_num_images(4)
    assert main(["synthesize", tiny_model, "--spec", path, "-o", str(tmp_path / "out"), "-n", "4"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.endswith(".")
    assert not (tmp_path / "out").exists()  # refused before anything is written or loaded


def test_bad_files_and_flags_fail_in_one_sentence(tiny_model, tmp_path, capsys):
    (tmp_path / "spec.yaml").write_text("findings: [normal\n")
    (tmp_path / "spec.txt").write_text("{}")
    good = _spec_file(tmp_path, SPEC)
    cases = [
        (["--spec", str(tmp_path / "absent.yaml")], "does not exist"),
        (["--spec", str(tmp_path / "spec.yaml")], "is not valid YAML"),
        (["--spec", str(tmp_path / "spec.txt")], "must be a .yaml, .yml, .json or .csv file"),
        (["--spec", good], "say how many images to make"),
        (["--spec", good, "-n", "4", "--filter", "sharpness"], "is not a check"),
        (["--spec", good, "-n", "4", "--filter", "memorization"], "needs --training-data"),
        (["--spec", good, "-n", "4", "--batch-size", "65"], "--batch-size must be in 1-64"),
        (["--spec", good, "-n", "4", "--push_to_hub"], "while HF_HUB_OFFLINE=1 is set"),
    ]
    for extra, message in cases:
        assert main(["synthesize", tiny_model, "-o", str(tmp_path / "out"), *extra]) == 2, extra
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ the dataset
def test_output_is_an_imagefolder_dataset_with_provenance_and_a_card(reference, tiny_model, capsys):
    import datasets
    from huggingface_hub import DatasetCard

    ds = datasets.load_dataset("imagefolder", data_dir=str(reference), split="train")
    assert len(ds) == N and {"image", "prompt", "label", "labels", "age", "sex", "view", "seed", "steps", "guidance",
                             "model", "model_revision", "classifier_score", "nearest_train_ssim"} <= set(ds.column_names)
    assert Counter(ds["label"]) == {"normal": 3, "pneumonia": 3} and Counter(ds["sex"]) == {"female": 3, "male": 3}
    rows = _rows(reference)
    assert [r["index"] for r in rows] == list(range(N))
    assert [r["seed"] for r in rows] == [image_seed(0, i) for i in range(N)] and len({r["seed"] for r in rows}) == N
    assert all(r["steps"] == 2 and r["guidance"] == 4.0 and r["synthetic"] and r["not_for_clinical_use"] for r in rows)
    assert all(r["model_revision"].startswith("sha256:") and r["attempts"] == 1 for r in rows)
    record = read_provenance(reference / rows[1]["file_name"])
    assert record["notice"] == NOT_FOR_CLINICAL_USE and record["seed"] == rows[1]["seed"]
    assert record["prompt"] == rows[1]["prompt"] and record["dataset_index"] == 1

    card = DatasetCard.load(reference / "README.md")
    assert card.data.license == "unknown" and "not-for-clinical-use" in card.data.tags
    assert card.data.size_categories == ["n<1K"]
    assert "NOT FOR CLINICAL USE" in card.text and "| normal | 3 | 50.0% |" in card.text
    assert "images/s" in card.text and "No filter was used" in card.text
    run = json.loads((reference / ".synthesis" / "run.json").read_text())
    assert run["not_for_clinical_use"] and run["num_images"] == N and len(run["fingerprint"]) == 64
    launches = [json.loads(line) for line in (reference / ".synthesis" / "runs.jsonl").read_text().splitlines()]
    assert len(launches) == 1 and launches[0]["images"] == N and launches[0]["images_per_s"] > 0

    from cxr_diffusers.classification.data import read_synthetic_manifest

    records = read_synthetic_manifest(reference)  # what train_classifier.py --synthetic_data_dir reads
    assert [r.label for r in records] == [int(r["label"] == "pneumonia") for r in rows]

    before = _listing(reference)
    capsys.readouterr()
    assert _synthesize(tiny_model, str(reference.parent / "spec" / "spec.json"), reference) == 0
    assert "nothing to do" in capsys.readouterr().out and _listing(reference) == before  # a finished run: a no-op


def test_a_killed_run_resumes_to_the_same_dataset(reference, tiny_model, tmp_path, monkeypatch):
    spec = _spec_file(tmp_path / "spec")
    out = tmp_path / "out"
    monkeypatch.setenv(STOP_AFTER_ENV, "3")  # stops in the middle of the second batch of 2
    with pytest.raises(SimulatedInterruption):
        _synthesize(tiny_model, spec, out)
    monkeypatch.delenv(STOP_AFTER_ENV)
    assert len(list((out / "data").rglob("*.png"))) == 3 and not (out / "metadata.jsonl").exists()
    # what a real kill can leave: a half-written temporary file and an image whose row never reached the log
    (out / "data" / "0000" / ".0000004.png.partial-99999").write_bytes(b"\x89PNG half")
    Image.new("L", (64, 64)).save(out / "data" / "0000" / "0000005.png")
    assert _synthesize(tiny_model, spec, out) == 0
    _same_dataset(out, reference)
    assert not list(out.rglob("*.partial-*"))
    launches = [json.loads(line) for line in (out / ".synthesis" / "runs.jsonl").read_text().splitlines()]
    assert [launch["images"] for launch in launches] == [N - 3]


def test_a_changed_spec_or_setting_is_refused(reference, tiny_model, tmp_path, capsys):
    before = _listing(reference)
    spec = str(reference.parent / "spec" / "spec.json")
    other = _spec_file(tmp_path, {**SPEC, "findings": {"normal": 0.25, "pneumonia": 0.75}})
    cases = [
        ([other], "different spec 'findings'"),
        ([spec, "--seed", "1"], "different seed (0 there, 1 now)"),
        ([spec, "--guidance", "2"], "different sampling setting 'guidance' (4.0 there, 2.0 now)"),
    ]
    for (spec_path, *extra), message in cases:
        assert _synthesize(tiny_model, spec_path, reference, *extra) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and "choose a new --output-dir" in err and len(err.splitlines()) == 1, err
    assert main(["synthesize", tiny_model, "--spec", spec, "-o", str(reference), "-n", "7", *COMMON]) == 2
    assert "different num images (6 there, 7 now)" in capsys.readouterr().err
    assert _listing(reference) == before
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert _synthesize(tiny_model, spec, foreign) == 2
    assert "is not empty and holds no synthesize run" in capsys.readouterr().err
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------------------------------------ the filter
def test_memorization_filter_makes_near_copies_again_and_counts_them(reference, tiny_model, tmp_path):
    training = tmp_path / "training"
    training.mkdir()
    for index in (0, 3):  # two generated images become "training images": their first samples are copies
        shutil.copy(reference / "data" / "0000" / f"{index:07d}.png", training / f"train_{index}.png")
    out = tmp_path / "out"
    assert _synthesize(tiny_model, _spec_file(tmp_path / "spec"), out, "--filter", "memorization",
                       "--training-data", training, "--ssim-threshold", "0.99") == 0
    rows, reference_rows = _rows(out), _rows(reference)
    pixels, reference_pixels = _pixels(out), _pixels(reference)
    for row, ref in zip(rows, reference_rows):
        i = row["index"]
        assert row["filter_passed"] is True and row["nearest_train_ssim"] <= 0.99
        if i in (0, 3):
            assert row["attempts"] == 2 and row["rejected_seeds"] == [image_seed(0, i, 0)]
            assert row["rejection_reasons"] == ["near copy of a training image"]
            assert row["seed"] == image_seed(0, i, 1) != ref["seed"]
            assert not np.array_equal(pixels[row["file_name"]], reference_pixels[ref["file_name"]])
        else:
            assert row["attempts"] == 1 and row["rejected_seeds"] == [] and row["seed"] == ref["seed"]
            assert np.array_equal(pixels[row["file_name"]], reference_pixels[ref["file_name"]])
    card = (out / "README.md").read_text()
    assert "| rejected tries: near copy of a training image | 2 |" in card
    assert "| images made again (passed on a later try) | 2 |" in card and "(2 images)" in card


def _tiny_classifier(folder: Path) -> str:
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    from cxr_diffusers.classification.model import (
        ID2LABEL,
        LABEL2ID,
        make_image_processor,
        save_classifier,
    )

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1], layer_type="basic", num_labels=2,
                          id2label=dict(ID2LABEL), label2id=dict(LABEL2ID))
    save_classifier(ResNetForImageClassification(config), make_image_processor(32), folder)
    return str(folder)


def test_classifier_filter_keeps_and_flags_images_that_never_pass(tiny_model, tmp_path):
    from cxr_diffusers.classification.data import read_synthetic_manifest
    from cxr_diffusers.errors import DataError

    out = tmp_path / "out"
    assert _synthesize(tiny_model, _spec_file(tmp_path / "spec"), out, "--filter", "classifier", "--classifier",
                       _tiny_classifier(tmp_path / "classifier"), "--classifier-threshold", "1",
                       "--max-attempts", "2") == 0
    rows = _rows(out)
    assert len(rows) == N and all(r["filter_passed"] is False and r["attempts"] == 2 for r in rows)
    assert all(len(r["rejected_seeds"]) == 1 and 0 <= r["classifier_score"] < 1 for r in rows)
    assert all(r["rejection_reasons"] == ["classifier disagrees"] for r in rows)
    assert all(r["seed"] == image_seed(0, r["index"], 1) for r in rows)
    assert f"| images kept after failing every try (`filter_passed` false) | {N} |" in (out / "README.md").read_text()
    with pytest.raises(DataError, match="no images that passed the quality filter"):
        read_synthetic_manifest(out)  # never trained on


# ------------------------------------------------------------------------------------------------ processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_under_accelerate_launch_make_the_same_dataset(reference, tiny_model, tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(_free_port()), "-m", "cxr_diffusers.cli", "synthesize", tiny_model,
               "--spec", _spec_file(tmp_path / "spec"), "-o", str(out), "-n", str(N), *COMMON]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("Wrote 6 images") == 1  # the main process reports, once
    rows = _rows(out)
    assert len(rows) == N and len({r["seed"] for r in rows}) == N
    _same_dataset(out, reference)  # image for image what one process made
    logs = sorted((out / ".synthesis" / "progress").glob("*.jsonl"))
    shards = {log.name[:7]: [json.loads(line)["index"] for line in log.read_text().splitlines()] for log in logs}
    assert shards == {"rank000": [0, 1, 4, 5], "rank001": [2, 3]}  # batches of 2 dealt round-robin, disjoint
    launch = json.loads((out / ".synthesis" / "runs.jsonl").read_text().splitlines()[-1])
    assert launch["processes"] == 2 and launch["threads_per_process"] == 1 and launch["images_per_s"] > 0


@pytest.mark.slow
def test_bench_synthesize_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_synthesize", REPO_ROOT / "benchmarks" / "bench_synthesize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "bench.json"
    result = module.main(["--model", "tiny", "--size", "64", "--num-images", "4", "--steps", "2", "--batch-size", "2",
                          "--configs", "1x1", "2x1", "--work-dir", str(tmp_path / "work"), "--output", str(out)])
    saved = json.loads(out.read_text())
    assert [(r["processes"], r["threads"]) for r in saved["rows"]] == [(1, 1), (2, 1)]
    assert all(r["images_per_s"] > 0 and r["images"] == 4 for r in saved["rows"])
    assert saved["identical_datasets"] is True and result["rows"] == saved["rows"]
    assert "images/s" in capsys.readouterr().out


def test_synthesize_api_errors_are_input_errors(tiny_model, tmp_path):
    from cxr_diffusers.synthesis import synthesize

    with pytest.raises(CXRInputError, match="--batch-size must be in 1-64"):
        synthesize(tiny_model, parse_spec(SPEC), tmp_path / "out", num_images=2, batch_size=0)
    with pytest.raises(CXRInputError, match="does not exist"):
        synthesize(str(tmp_path / "no-model"), parse_spec(SPEC), tmp_path / "out", num_images=2)
