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
