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
    assert list_templates() == ["classifier", "ddpm", "pipeline", "vae"]
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
    with pytest.raises(CXRInputError, match="not found .* there are classifier, ddpm, pipeline, vae"):
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
