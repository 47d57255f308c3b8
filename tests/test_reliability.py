"""Reliability: no silent black images, clear one-sentence errors, limits, and what the model saw recorded.

Each test here failed before the fix it covers (docs/reliability.md lists the inputs tried).
"""

import logging

import numpy as np
import pytest
import torch

from cxr_diffusers import CXRInputError, CXRPipeline, SamplingError
from cxr_diffusers.schedulers import scheduler_from_name

from conftest import PROMPT, make_tiny_pipeline


@pytest.fixture(scope="module")
def pipe():
    return make_tiny_pipeline()


def generate(pipe, **kwargs):
    kwargs = {"prompt": PROMPT, "num_inference_steps": 2, "output_type": "np",
              "generator": torch.Generator().manual_seed(0), **kwargs}
    return pipe(**kwargs).images


# ------------------------------------------------------------------------------------------ silent black images
def test_nan_latents_from_the_user_are_refused(pipe):
    latents = torch.full((1, 8, 4, 4), float("nan"))
    with pytest.raises(CXRInputError, match="latents contain NaN"):
        generate(pipe, latents=latents, height=32, width=32)


def test_divergence_during_sampling_raises_instead_of_returning_black(pipe):
    def poison(p, step, timestep, kwargs):
        return {"latents": kwargs["latents"] * float("inf")} if step == 1 else {}

    with pytest.raises(SamplingError, match="diverged.*step 2 of 3"):
        generate(pipe, num_inference_steps=3, callback_on_step_end=poison)


@pytest.mark.parametrize("name", ["dpm++", "unipc"])
def test_1000_multistep_solver_steps_are_refused_instead_of_giving_a_black_image(pipe, name):
    """Before: repeated timesteps made a zero-length step, all-NaN latents, a black PNG and exit code 0."""
    original = pipe.scheduler
    pipe.scheduler = scheduler_from_name(name, original.config)
    try:
        with pytest.raises(CXRInputError, match="cannot take 1000 steps: its timesteps would repeat"):
            generate(pipe, num_inference_steps=1000, height=32, width=32)
    finally:
        pipe.scheduler = original


@pytest.mark.parametrize("value", [1e30, 31.0, float("inf")])
def test_guidance_scale_is_bounded(pipe, value):
    with pytest.raises(CXRInputError, match="guidance_scale must be a number between 0 and 30"):
        generate(pipe, guidance_scale=value)


# ------------------------------------------------------------------------------------------ types and limits
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"guidance_scale": "4"}, "guidance_scale must be a number, got '4'"),
        ({"generator": 0}, "generator must be a torch.Generator"),
        ({"generator": [0]}, "generator must be a torch.Generator"),
        ({"height": 4096, "width": 4096}, "exceeds the largest supported side of 1024 px"),
        ({"num_images_per_prompt": 1000}, "1000 images in one call exceed the limit of 64"),
        ({"num_inference_steps": 2.5}, "num_inference_steps must be a positive integer"),
        ({"latents": np.zeros((1, 8, 4, 4))}, "latents must be a torch.Tensor"),
    ],
)
def test_bad_types_and_resource_limits_get_one_sentence(pipe, kwargs, message):
    with pytest.raises(CXRInputError, match=message):
        generate(pipe, **kwargs)


def test_numpy_integers_are_accepted(pipe):
    a = generate(pipe, num_inference_steps=np.int64(2), num_images_per_prompt=np.int32(1), height=np.int64(32),
                 width=np.int64(32))
    b = generate(pipe, num_inference_steps=2, height=32, width=32)
    np.testing.assert_array_equal(a, b)


def test_scheduler_from_name_none():
    with pytest.raises(CXRInputError, match="scheduler name must be a string"):
        scheduler_from_name(None, {})


# ------------------------------------------------------------------------------------------ long prompts
def test_a_long_prompt_warns_and_provenance_records_what_the_model_saw(pipe, caplog):
    from cxr_diffusers import read_provenance

    prompt = "PA chest radiograph. " + "Findings: pneumonia. " * 500
    with caplog.at_level(logging.WARNING):
        image = pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert any("text encoder sees only the first" in r.message for r in caplog.records)
    record = read_provenance(image)
    assert record["prompt"] == prompt
    seen = record["prompt_seen_by_model"]
    assert len(seen) < len(prompt) and prompt.lower().startswith(seen.lower()[:20])
    short = pipe(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0)).images[0]
    assert "prompt_seen_by_model" not in read_provenance(short)


# ------------------------------------------------------------------------------------------ command line
def cli_error(argv, capsys):
    """Run the CLI; return (exit code, last stderr line); argparse errors count as exit code 2 too."""
    from cxr_diffusers.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, (err.strip().splitlines() or [""])[-1]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["data", "build", "--source", "folder", "--root", "x", "--out", "o", "--max-samples", "0"], "must be at least 1"),
        (["data", "build", "--source", "folder", "--root", "x", "--out", "o", "--resolution", "7"],
         "--resolution must be at least 32 pixels"),
        (["data", "info", "x", "--examples", "-1"], "must be 0 or more"),
    ],
)
def test_data_commands_refuse_values_that_used_to_do_something_else(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    code, last = cli_error(argv, capsys)
    assert code == 2 and message in last


def test_every_command_checks_its_output_folder_first(tmp_path, capsys, fixtures_dir):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    image = str(next((fixtures_dir / "kermany").rglob("*.jpeg")))
    for argv in (
        ["generate", str(tmp_path / "no-model"), "-p", "x", "-o", str(blocker / "out")],
        ["enhance", image, "-o", str(blocker)],
        ["evaluate", str(tmp_path / "no-model"), "--real", str(tmp_path), "-o", str(blocker / "out")],
        ["classify", image, "--gradcam", "-o", str(blocker)],
        ["data", "build", "--source", "folder", "--root", str(tmp_path), "--out", str(blocker / "ds")],
    ):
        code, last = cli_error(argv, capsys)
        assert code == 2 and "is a file" in last, (argv, last)


def test_blank_images_are_not_radiographs(tmp_path, capsys):
    """Before: a uniform image was PNEUMONIA with p = 1.0, inflating the prompt agreement of a collapsed generator."""
    from PIL import Image

    from cxr_diffusers.classification.input_check import NOT_A_RADIOGRAPH, radiograph_problem
    from cxr_diffusers.evaluation.features import ClassifierFeatureExtractor
    from cxr_diffusers.evaluation.runner import find_classifier

    blanks = [Image.new("L", (128, 128), value) for value in (0, 128, 255)]
    assert all("blank or uniform" in radiograph_problem(b) for b in blanks)
    two_levels = Image.fromarray((np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8))
    assert "grey levels" in radiograph_problem(two_levels)
    classifier = find_classifier()
    if classifier is None:
        pytest.skip("bundled classifier absent")
    extractor = ClassifierFeatureExtractor.from_pretrained(classifier)
    assert extractor.predict(blanks) == [NOT_A_RADIOGRAPH] * 3
    from cxr_diffusers.evaluation.conditioning import conditioning_agreement

    result = conditioning_agreement(["PNEUMONIA"] * 3, extractor.predict(blanks))
    assert result["agreement"] == 0.0 and result["not_a_radiograph"] == 3
    path = tmp_path / "grey.png"
    blanks[1].save(path)
    code, last = cli_error(["classify", str(path)], capsys)
    assert code == 0


def test_classify_reports_a_blank_image_instead_of_a_probability(tmp_path, capsys):
    import json

    from PIL import Image

    from cxr_diffusers.cli import main
    from cxr_diffusers.evaluation.runner import find_classifier

    if find_classifier() is None:
        pytest.skip("bundled classifier absent")
    path = tmp_path / "white.png"
    Image.new("L", (128, 128), 255).save(path)
    assert main(["classify", str(path), "--json"]) == 0
    captured = capsys.readouterr()
    record = json.loads(captured.out.strip().splitlines()[-1])
    assert record["label"] == "NOT_A_RADIOGRAPH" and record["p_pneumonia"] is None and "uniform" in record["reason"]
    assert "not classified" in captured.err


def test_evaluation_reference_skips_and_counts_unreadable_images(tmp_path, fixtures_dir):
    import shutil

    from cxr_diffusers import DataError
    from cxr_diffusers.evaluation.runner import load_reference

    for image in (fixtures_dir / "kermany").rglob("*.jpeg"):
        shutil.copy(image, tmp_path / image.name)
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.warns(UserWarning, match="1 unreadable image"):
        reference = load_reference(tmp_path)
    assert len(reference.images) == 3 and len(reference.skipped) == 1 and "broken.png" in reference.skipped[0]
    assert len(reference.classes) == len(reference.images)
    only_broken = tmp_path / "only-broken"
    only_broken.mkdir()
    (only_broken / "x.png").write_bytes(b"junk")
    with pytest.raises(DataError, match="None of the images"), pytest.warns(UserWarning):
        load_reference(only_broken)


# ------------------------------------------------------------------------------------------ loading
def test_a_missing_folder_that_looks_like_a_hub_id_is_called_missing_offline(tmp_path, monkeypatch):
    from cxr_diffusers import ModelLoadingError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadingError, match=r"No CXRPipeline folder 'pretrained/cxr-ldm-small' exists .*"
                                                r"the Hub cannot be reached"):
        CXRPipeline.from_pretrained("pretrained/cxr-ldm-small")


def test_pickled_weights_are_refused(pipe, tmp_path):
    from cxr_diffusers import CXRAutoencoderKL, ModelLoadingError
    from cxr_diffusers.hub import load_pretrained

    folder = tmp_path / "pickled"
    pipe.save_pretrained(folder, safe_serialization=False)
    assert list((folder / "unet").glob("*.bin"))
    with pytest.raises(ModelLoadingError, match="pickled weights .* safetensors only"):
        CXRPipeline.from_pretrained(folder)
    with pytest.raises(ModelLoadingError, match="pickled weights"):
        load_pretrained(CXRAutoencoderKL, folder / "vae", "VAE")


# ------------------------------------------------------------------------------------------ training scripts
def run_training_script(name, *args):
    from conftest import run_script_in_process

    return run_script_in_process(name, *args)


def test_training_scripts_end_bad_input_in_one_sentence(tmp_path):
    from conftest import REPO_ROOT

    tiny = REPO_ROOT / "train_scripts" / "configs" / "tiny.json"
    (tmp_path / "a-file").write_text("x")
    cases = [
        (["train_vae", "--config", tiny, "--train_data_dir", tmp_path / "missing"], "does not exist"),
        (["train_vae", "--config", tiny, "--train_data_dir", tmp_path, "--output_dir", tmp_path / "a-file"],
         "is a file"),
        (["train_vae", "--config", tiny, "--train_data_dir", tmp_path, "--pretrained_model_name_or_path",
          tmp_path / "no" / "vae"], "does not exist"),
        (["train_ldm", "--config", tiny, "--train_data_dir", tmp_path, "--pretrained_vae_model_name_or_path",
          tmp_path / "no-vae"], "does not exist"),
        (["train_ldm", "--config", tiny, "--train_data_dir", tmp_path, "--pretrained_vae_model_name_or_path",
          tmp_path / "no-vae", "--resolution", "40"], "--resolution must be a multiple of 16"),
    ]
    for argv, message in cases:
        result = run_training_script(*argv)
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode == 2 and message in last and "Traceback" not in result.stderr, (argv, result.stderr)


def test_probe_findings_get_one_sentence(pipe, tmp_path):
    """Cases found by scripts/probe_reliability.py (tracebacks or misleading messages before)."""
    from cxr_diffusers import DataError, ModelLoadingError
    from cxr_diffusers.classification import load_classifier
    from cxr_diffusers.data import load_saved

    with pytest.raises(ModelLoadingError, match="must be a folder path or a Hub id, got NoneType"):
        CXRPipeline.from_pretrained(None)
    with pytest.raises(ModelLoadingError, match="classifier folder .* does not exist"):
        load_classifier(tmp_path / "missing" / "classifier")
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file"):
        load_saved(tmp_path / "file")
    with pytest.raises(CXRInputError, match="must be a list of names"):
        generate(pipe, callback_on_step_end=lambda *a: {}, callback_on_step_end_tensor_inputs="latents")


def test_junk_checkpoint_and_evaluate_vae_flags_get_one_sentence(tmp_path):
    from conftest import REPO_ROOT

    tiny = REPO_ROOT / "train_scripts" / "configs" / "tiny.json"
    (tmp_path / "a-file").write_text("x")
    result = run_training_script("evaluate_vae", "--vae", tmp_path, "--train_data_dir", tmp_path, "--output_dir",
                                 tmp_path / "a-file" / "out")
    assert result.returncode == 2 and "is a file" in result.stderr.strip().splitlines()[-1]
    result = run_training_script("evaluate_vae", "--vae", tmp_path, "--resolution", "-64")
    assert result.returncode == 2 and "--resolution must be a positive multiple of 8" in result.stderr
    junk = tmp_path / "run" / "checkpoint-3"
    junk.mkdir(parents=True)
    (junk / "random_states_0.pkl").write_bytes(b"junk")
    result = run_training_script("train_vae", "--config", tiny, "--train_data_dir", REPO_ROOT / "tests" / "fixtures" /
                                 "kermany", "--output_dir", tmp_path / "run", "--resume_from_checkpoint", "latest")
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "is not a complete checkpoint" in last and "huggingface.co" not in last, last
