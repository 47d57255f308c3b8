"""cxr_diffusers.hub: card templates are package data, and `--push_to_hub` creates the Hub repo before training."""

import argparse
import configparser
import fnmatch
import importlib
from pathlib import Path

import pytest
from conftest import REPO_ROOT, run_script_in_process

import cxr_diffusers
from cxr_diffusers import CXRInputError
from cxr_diffusers.hub import TEMPLATES_DIR, create_hub_repo, list_templates, render_model_card, save_model_card

TINY = str(REPO_ROOT / "train_scripts" / "configs" / "tiny.json")


# ------------------------------------------------------------------------------------------------ templates
def test_card_templates_are_package_data():
    package_dir = Path(cxr_diffusers.__file__).parent
    assert Path(str(TEMPLATES_DIR)).parent == package_dir and not (REPO_ROOT / "model_cards").exists()
    assert list_templates() == ["classifier", "ddpm", "lcm", "lcm_fast", "pipeline", "super_resolution", "synthetic_dataset",
                                "tiny_autoencoder", "vae"]
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    patterns = setup["options.package_data"]["cxr_diffusers"].split()
    for name in list_templates():  # a non-editable install ships exactly what setup.cfg declares
        assert any(fnmatch.fnmatch(f"model_cards/{name}.md", p) for p in patterns), name


@pytest.mark.parametrize("template", ["pipeline", "vae", "ddpm", "classifier"])
def test_every_template_renders(template, tmp_path):
    path = save_model_card(tmp_path, template, {"license": "apache-2.0", "library_name": "diffusers"},
                           model_name="test-model", repo_id="me/test-model")
    text = path.read_text()
    assert text.startswith("---\n") and "license: apache-2.0" in text and "test-model" in text


def test_unknown_template_is_one_sentence():
    with pytest.raises(CXRInputError, match="not found .* there are classifier, ddpm, lcm, lcm_fast, pipeline, super_resolution, synthetic_dataset, tiny_autoencoder, vae"):
        render_model_card("nope")


# ------------------------------------------------------------------------------------------------ create_hub_repo
def hub_args(**kwargs):
    defaults = {"push_to_hub": True, "hub_model_id": "me/cxr-test", "hub_token": None, "output_dir": "runs/x"}
    return argparse.Namespace(**{**defaults, **kwargs})


def test_create_hub_repo_is_a_no_op_without_push_to_hub(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda **kw: pytest.fail("called without --push_to_hub"))
    assert create_hub_repo(hub_args(push_to_hub=False)) is None


def test_create_hub_repo_returns_the_full_id_and_uses_the_token(monkeypatch):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def create_repo(**kwargs):
        calls.append(kwargs)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/me/{kwargs['repo_id'].split('/')[-1]}")

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    assert create_hub_repo(hub_args(hub_token="hf_x")) == "me/cxr-test"
    assert calls[0]["token"] == "hf_x" and calls[0]["exist_ok"] is True
    assert create_hub_repo(hub_args(hub_model_id=None, output_dir="runs/ldm-small")) == "me/ldm-small"  # diffusers' default


def test_create_hub_repo_offline_bad_token_and_no_network_are_one_sentence(monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    real_create_repo = huggingface_hub.create_repo
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CXRInputError, match="HF_HUB_OFFLINE=1"):
        create_hub_repo(hub_args())
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    http = importlib.import_module(HfHubHTTPError.__mro__[1].__module__.split(".")[0])  # httpx (or its fork)
    response = http.Response(401, request=http.Request("POST", "https://huggingface.co/api/repos/create"))

    def refused(**kwargs):
        raise HfHubHTTPError("401 Client Error: Unauthorized", response=response)

    monkeypatch.setattr(huggingface_hub, "create_repo", refused)
    with pytest.raises(CXRInputError, match=r"refused the token .*HTTP 401.*--hub_token") as info:
        create_hub_repo(hub_args(hub_token="hf_bad"))
    assert "\n" not in str(info.value)

    def unreachable(**kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "create_repo", unreachable)
    with pytest.raises(CXRInputError, match="cannot reach the Hub .*Name or service not known"):
        create_hub_repo(hub_args())
    monkeypatch.setattr(huggingface_hub, "create_repo", real_create_repo)  # validates the id before any request
    with pytest.raises(CXRInputError, match="not a valid Hub repo id"):
        create_hub_repo(hub_args(hub_model_id="a/b/c"))


@pytest.mark.slow
@pytest.mark.parametrize("script", ["train_vae", "train_ldm", "train_ddpm", "train_classifier"])
def test_push_to_hub_offline_fails_before_training(script, tmp_path):
    out = tmp_path / "out"
    argv = ["--config", TINY, "--train_data_dir", str(tmp_path), "--output_dir", str(out), "--push_to_hub",
            "--hub_model_id", "me/x", "--hub_token", "hf_not_a_token", "--report_to", "none"]
    if script == "train_ldm":
        argv += ["--pretrained_vae_model_name_or_path", str(tmp_path / "vae")]  # checked later, when it loads
    result = run_script_in_process(script, *argv)  # HF_HUB_OFFLINE=1 is set by conftest.py
    last = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert last == f"{script}.py: error: --push_to_hub cannot create the Hub repo 'me/x' while HF_HUB_OFFLINE=1 is set; " \
                   "unset it or drop --push_to_hub."
    assert not list(out.rglob("*")), "nothing trained or written"  # the repo is created before any data or model


# ------------------------------------------------------------------------------------------------ loading by Hub id
@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory):
    """A saved tiny pipeline and its export (the code shipped, `_class_name` `["pipeline", "CXRPipeline"]`)."""
    import shutil

    from conftest import make_tiny_pipeline

    from cxr_diffusers.remote_code import write_remote_code

    root = tmp_path_factory.mktemp("hub-id")
    pipe = make_tiny_pipeline()
    pipe.save_pretrained(root / "saved")
    shutil.copytree(root / "saved", root / "exported")
    write_remote_code(root / "exported")
    return pipe, root


def tiny_image(pipe):
    import torch

    return pipe("PA chest radiograph of an adult.", height=64, width=64, num_inference_steps=2,
                generator=torch.Generator().manual_seed(0), output_type="np").images


@pytest.mark.parametrize("layout", ["saved", "exported"])
def test_pipeline_loads_by_hub_id_offline_from_the_hub_cache(layout, tiny_folders, tmp_path, monkeypatch):
    """`CXRPipeline.from_pretrained("owner/name")` with HF_HUB_OFFLINE=1 (conftest) and the repo in the Hub cache, as a
    download leaves it: with the tree listing, from which diffusers' own download step knows the repo's files and
    refuses components whose library is `cxr_diffusers.models.*` (no `unet/<library>.py`). An export loads with the
    package's classes and never runs its shipped code."""
    import huggingface_hub
    import numpy as np
    from diffusers.pipelines import pipeline_loading_utils
    from hub_cache import put_in_hub_cache

    from cxr_diffusers import CXRPipeline

    pipe, root = tiny_folders
    cache = tmp_path / "hub-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read at import, so set it too
    snapshot = put_in_hub_cache(root / layout, cache, "radiology-lab/cxr-tiny")
    assert (snapshot.parent.parent / "trees").is_dir() or not hasattr(huggingface_hub, "get_cached_repo_tree")

    def refuse(*args, **kwargs):
        raise AssertionError(f"ran shipped code: {args} {kwargs}")

    monkeypatch.setattr(pipeline_loading_utils, "get_class_from_dynamic_module", refuse)
    loaded = CXRPipeline.from_pretrained("radiology-lab/cxr-tiny")
    assert type(loaded) is CXRPipeline and type(loaded.unet).__module__ == "cxr_diffusers.models.unet_cxr"
    assert loaded.config._name_or_path == "radiology-lab/cxr-tiny"  # what the images' provenance names
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(tiny_image(loaded), tiny_image(pipe))
    # a pinned revision, and the cache folder given as cache_dir instead
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    again = CXRPipeline.from_pretrained("radiology-lab/cxr-tiny", cache_dir=cache, revision=snapshot.name)
    assert type(again.vae).__module__ == "cxr_diffusers.models.autoencoder_cxr"


def test_hub_id_errors_say_missing_or_what_failed(tiny_folders, tmp_path, monkeypatch):
    import shutil

    from hub_cache import put_in_hub_cache

    from cxr_diffusers import CXRPipeline, ModelLoadingError

    _, root = tiny_folders
    cache = tmp_path / "hub-cache"
    with pytest.raises(ModelLoadingError, match="'radiology-lab/absent'.* not in the local Hub cache .*HF_HUB_OFFLINE"):
        CXRPipeline.from_pretrained("radiology-lab/absent", cache_dir=cache)
    broken = tmp_path / "broken"
    shutil.copytree(root / "saved", broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    put_in_hub_cache(broken, cache, "radiology-lab/broken")
    with pytest.raises(ModelLoadingError, match="Could not load the CXRPipeline 'radiology-lab/broken' from the Hub "
                                                "cache: ") as info:
        CXRPipeline.from_pretrained("radiology-lab/broken", cache_dir=cache)
    assert "\n" not in str(info.value)
