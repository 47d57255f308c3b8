"""Shared pytest fixtures.

Tests that need the real radiographs in `../shared/data` use the `shared_data` fixture, which skips the test when
that folder is absent (set `CXR_SHARED_DATA` to point elsewhere). `fixtures_dir` holds the few real X-rays shipped
with the project (see tests/fixtures/ATTRIBUTION.md).
"""

import os
from pathlib import Path

import pytest

# huggingface_hub reads these when it is imported, so set them before any test module imports diffusers.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"


#: The prompt the pipeline tests use.
PROMPT = "PA chest radiograph of a 58 year old female. Findings: cardiomegaly."


def make_tiny_pipeline():
    """The tiny random `CXRPipeline` of the tests (seeded, so every module gets the same weights), progress bar off."""
    import torch

    from cxr_diffusers import CXRPipeline, create_components

    torch.manual_seed(0)
    pipeline = CXRPipeline(**create_components("tiny"))
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


class ScriptResult:
    """Exit code and captured output of a script run (the fields of `subprocess.CompletedProcess` the tests use)."""

    def __init__(self, returncode: int, stdout: str, stderr: str):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


_SCRIPTS: dict = {}


def run_script_in_process(name: str, *args) -> ScriptResult:
    """
    Run `train_scripts/<name>.py` in this process as its `__main__` does (through `training_utils.run_script`: bad
    input ends in one sentence and exit code 2), with stdout and stderr captured. Seconds faster per call than a
    subprocess, which imports torch again. An unexpected exception propagates and fails the test.
    """
    import contextlib
    import importlib.util
    import io
    import sys

    from cxr_diffusers.training_utils import run_script

    if name not in _SCRIPTS:
        spec = importlib.util.spec_from_file_location(f"train_scripts_{name}_cli", REPO_ROOT / "train_scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _SCRIPTS[name] = module
    module = _SCRIPTS[name]

    def main() -> int:
        result = module.main([str(a) for a in args])
        return result if isinstance(result, int) else 0  # train_classifier returns its metrics

    out, err = io.StringIO(), io.StringIO()
    saved_argv, sys.argv = sys.argv, [str(REPO_ROOT / "train_scripts" / f"{name}.py"), *map(str, args)]  # error prefixes
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = run_script(main)
            except SystemExit as exit_info:  # argparse errors
                code = exit_info.code if isinstance(exit_info.code, int) else 1
    finally:
        sys.argv = saved_argv
    return ScriptResult(code, out.getvalue(), err.getvalue())


def shared_data_dir() -> Path:
    return Path(os.environ.get("CXR_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not root.is_dir():
        pytest.skip(f"real data not available at {root}")
    return root


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES_DIR


def load_train_script(name: str, module_name: str | None = None):
    """
    A fresh module of `train_scripts/<name>.py` (not run as `__main__`), registered in `sys.modules` as `module_name`
    (default `train_scripts_<name>`), for tests that call its `main(argv)` / `parse_args(argv)` or patch its names.
    """
    import importlib.util
    import sys

    module_name = module_name or f"train_scripts_{name}"
    spec = importlib.util.spec_from_file_location(module_name, REPO_ROOT / "train_scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def assert_same_safetensors(first, second, folders) -> None:
    """Every tensor of `<folder>/diffusion_pytorch_model.safetensors` is bit-identical under `first` and `second`
    (an uninterrupted run against a stopped-and-resumed one)."""
    import torch
    from safetensors.torch import load_file

    for folder in folders:
        a = load_file(Path(first) / folder / "diffusion_pytorch_model.safetensors")
        b = load_file(Path(second) / folder / "diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=f"{folder}: {key}")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    """A folder with the saved tiny random pipeline of `make_tiny_pipeline`, one per test module (CLI tests)."""
    folder = tmp_path_factory.mktemp("tiny-model")
    make_tiny_pipeline().save_pretrained(folder)
    return str(folder)


# ------------------------------------------------------------------------------------------------ training scripts
@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for a module (tiny models run faster so, and a busy machine is not slowed further)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TINY = str(REPO_ROOT / "train_scripts" / "configs" / "tiny.json")  # the tiny config of every training script


@pytest.fixture(scope="module")
def xray_dataset(tmp_path_factory):
    """A saved DatasetDict of real X-rays with prompts: a shared Kermany sample, or the shipped fixtures."""
    import datasets

    from cxr_diffusers.data.pneumonia import load_pneumonia

    kermany = shared_data_dir() / "kermany_pneumonia_224"
    if kermany.is_dir():
        data = load_pneumonia(kermany, max_samples=40, check_images="exists")
        train, validation = data["train"].select(range(8)), data["test"].select(range(2))
    else:
        files = sorted(str(p) for p in (FIXTURES_DIR / "kermany").rglob("*.jpeg"))
        rows = {
            "image": files * 3,
            "prompt": ["Pediatric chest radiograph. Findings: pneumonia." if "PNEUMONIA" in f else
                       "Pediatric chest radiograph. No acute cardiopulmonary abnormality." for f in files] * 3,
            "labels": [["pneumonia"] if "PNEUMONIA" in f else [] for f in files] * 3,
            "source": ["kermany"] * (3 * len(files)),
        }
        data = datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image(mode="L"))
        train, validation = data.select(range(8)), data.select(range(2))
    folder = tmp_path_factory.mktemp("xrays")
    datasets.DatasetDict({"train": train, "validation": validation}).save_to_disk(folder)
    return str(folder)
