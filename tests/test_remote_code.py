"""An exported pipeline loads with diffusers alone, where cxr-diffusers is not installed
(`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`: diffusers' custom pipeline named by model_index.json),
and makes the same image as the installed package; the package loads it as before, without running the shipped code."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from hub_cache import put_in_hub_cache

import cxr_diffusers
from cxr_diffusers import CXRPipeline, create_components
from cxr_diffusers.remote_code import ENTRY_POINT, remote_code_modules, write_remote_code

EXPORT = REPO_ROOT / "train_scripts" / "export_pipeline.py"
PROMPT = "PA chest radiograph of an adult. Findings: pneumonia."


def export(*args):
    return subprocess.run([sys.executable, str(EXPORT), *map(str, args)], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("remote")
    torch.manual_seed(0)
    CXRPipeline(**create_components("tiny")).save_pretrained(root / "trained")
    result = export("--pipeline", root / "trained", "--output_dir", root / "export")
    assert result.returncode == 0, result.stderr
    return root / "export"


def run_without_the_package(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -S` (no site, so no .pth file and no editable-install finder) with only the venv's site-packages on the
    path, from a folder outside the checkout: diffusers and transformers import, cxr_diffusers does not."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.update(PYTHONPATH=sysconfig.get_paths()["purelib"], HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(cwd / "modules"))
    return subprocess.run([sys.executable, "-S", "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, check=False)


def generate(pipe):
    return pipe(PROMPT, height=64, width=64, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                output_type="np").images


@pytest.mark.slow
def test_diffusers_alone_loads_the_export_and_makes_the_same_image(exported, tmp_path):
    """`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)` alone (model_index.json's list `_class_name`
    names `pipeline.py`), with `custom_pipeline=folder` as well, and from the snapshot folder of a Hub repo; the
    remote-loaded pipeline's `save_pretrained` folder loads the same way in a fresh process."""
    hub = tmp_path / "hub"
    put_in_hub_cache(exported, hub, "radiology-lab/cxr-tiny")
    header = f"""
        import json, sys
        try:
            import cxr_diffusers
        except ImportError:
            pass
        else:
            sys.exit("cxr_diffusers is importable: " + cxr_diffusers.__file__)
        import numpy as np
        import torch
        from diffusers import DiffusionPipeline

        def generate(pipe):
            assert type(pipe).__name__ == "CXRPipeline" and type(pipe).__module__.startswith("diffusers_modules."), type(pipe)
            for part in (pipe.unet, pipe.vae, pipe.text_encoder):
                assert type(part).__module__.startswith("diffusers_modules."), type(part)
            pipe.set_progress_bar_config(disable=True)
            return pipe({PROMPT!r}, height=64, width=64, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                        output_type="np").images
    """
    code = header + f"""
        from huggingface_hub import snapshot_download

        path = {str(exported)!r}
        for kwargs in ({{}}, {{"custom_pipeline": path}}):
            try:
                DiffusionPipeline.from_pretrained(path, **kwargs)
            except ValueError as error:
                assert "trust_remote_code=True" in str(error), error
            else:
                sys.exit(f"loaded custom code without trust_remote_code ({{kwargs}})")
        pipe = DiffusionPipeline.from_pretrained(path, trust_remote_code=True)
        np.save("alone.npy", generate(pipe))
        np.save("custom_pipeline.npy", generate(DiffusionPipeline.from_pretrained(path, custom_pipeline=path,
                                                                                  trust_remote_code=True)))
        snapshot = snapshot_download("radiology-lab/cxr-tiny", cache_dir={str(hub)!r})  # HF_HUB_OFFLINE=1
        np.save("snapshot.npy", generate(DiffusionPipeline.from_pretrained(snapshot, trust_remote_code=True)))
        pipe.save_pretrained("resaved")
        assert "cxr_diffusers" not in sys.modules
    """
    result = run_without_the_package(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    resaved = tmp_path / "resaved"
    index = json.loads((resaved / "model_index.json").read_text())
    exported_index = json.loads((exported / "model_index.json").read_text())
    assert {k: v for k, v in index.items() if k != "_name_or_path"} == \
        {k: v for k, v in exported_index.items() if k != "_name_or_path"}  # the export's layout, component paths
    assert (resaved / ENTRY_POINT).read_text() == (exported / ENTRY_POINT).read_text()
    assert sorted(p.relative_to(resaved).as_posix() for p in resaved.rglob("*.py")) == \
        sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*.py"))

    result = run_without_the_package(header + f"""
        np.save("resaved.npy", generate(DiffusionPipeline.from_pretrained({str(resaved)!r}, trust_remote_code=True)))
    """, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    pipe = CXRPipeline.from_pretrained(exported)  # the installed package: its own classes, no remote code
    assert type(pipe) is CXRPipeline and type(pipe.unet).__module__ == "cxr_diffusers.models.unet_cxr"
    pipe.set_progress_bar_config(disable=True)
    local = generate(pipe)
    assert local.shape == (1, 64, 64, 1) and local.std() > 0
    assert np.array_equal(generate(CXRPipeline.from_pretrained(resaved)), local)
    for name in ("alone", "custom_pipeline", "snapshot", "resaved"):
        remote = np.load(tmp_path / f"{name}.npy")
        assert remote.shape == local.shape, name
        # the same function and weights; another process may sum in another order (thread count), so not bit-exact
        np.testing.assert_allclose(remote, local, rtol=0, atol=1e-5, err_msg=name)


def test_remote_code_uses_the_installed_package_where_there_is_one(exported, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline
    from diffusers.utils import dynamic_modules_utils

    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # diffusers appends its module cache
    with pytest.raises(ValueError, match="trust_remote_code=True"):  # was: module diffusers has no attribute ...
        DiffusionPipeline.from_pretrained(exported)
    try:
        for kwargs in ({}, {"custom_pipeline": str(exported)}):
            pipe = DiffusionPipeline.from_pretrained(exported, trust_remote_code=True, **kwargs)
            assert type(pipe) is CXRPipeline and type(pipe.unet).__module__ == "cxr_diffusers.models.unet_cxr", kwargs
    finally:  # diffusers imported the shipped copies as diffusers_modules.*
        for name in [m for m in sys.modules if m.startswith("diffusers_modules")]:
            del sys.modules[name]


def test_the_package_loads_the_export_without_running_its_code(exported, monkeypatch):
    from diffusers.pipelines import pipeline_loading_utils

    def refuse(*args, **kwargs):
        raise AssertionError(f"ran shipped code: {args} {kwargs}")

    monkeypatch.setattr(pipeline_loading_utils, "get_class_from_dynamic_module", refuse)
    pipe = CXRPipeline.from_pretrained(exported)  # no trust_remote_code needed
    assert type(pipe) is CXRPipeline and type(pipe.unet).__module__ == "cxr_diffusers.models.unet_cxr"


def test_export_names_its_pipeline_file_and_ships_the_package_sources(exported, tmp_path):
    index = json.loads((exported / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline", "CXRPipeline"]  # diffusers' custom pipeline: pipeline.py, its class
    assert (exported / f"{index['_class_name'][0]}.py").is_file() and ENTRY_POINT == "pipeline.py"
    assert index["unet"] == ["cxr_diffusers.models.unet_cxr", "CXRUNet2DConditionModel"]  # the public module paths
    assert index["vae"] == ["cxr_diffusers.models.autoencoder_cxr", "CXRAutoencoderKL"]
    assert index["text_encoder"] == ["cxr_diffusers.models.text_encoder_cxr", "CXRTextEncoder"]
    package = Path(cxr_diffusers.__file__).parent
    shipped = sorted(p.relative_to(exported).as_posix() for p in exported.rglob("*.py"))
    assert ENTRY_POINT in shipped and "pipelines/pipeline_cxr.py" in shipped and "models/unet_cxr.py" in shipped
    assert "remote_code.py" in shipped  # the remote-loaded pipeline's save_pretrained ships the code again
    for name in shipped:
        if name != ENTRY_POINT:  # the package's own files, unchanged
            assert (exported / name).read_bytes() == (package / name).read_bytes(), name
    assert not [p for p in exported.glob("*/*.py") if p.parent.name in index]  # nothing in component folders

    again = tmp_path / "again"  # writing the code into an export again changes nothing
    shutil.copytree(exported, again)
    write_remote_code(again)
    assert (again / "model_index.json").read_text() == (exported / "model_index.json").read_text()
    assert (again / ENTRY_POINT).read_text() == (exported / ENTRY_POINT).read_text()

    result = export("--pipeline", exported, "--output_dir", tmp_path / "plain", "--no-remote_code")
    assert result.returncode == 0, result.stderr
    assert not list((tmp_path / "plain").rglob("*.py"))
    assert json.loads((tmp_path / "plain" / "model_index.json").read_text())["_class_name"] == "CXRPipeline"


def test_remote_code_refuses_imports_it_cannot_ship(tmp_path, monkeypatch):
    from cxr_diffusers import remote_code

    package = tmp_path / "cxr_diffusers"
    (package / "sub").mkdir(parents=True)
    (package / "ok.py").write_text("from .helper import x\n")
    (package / "helper.py").write_text("def f():\n    from . import y\n")
    (package / "y.py").write_text("")
    (package / "attr.py").write_text("from . import __version__\n")
    (package / "absolute.py").write_text("def f():\n    from cxr_diffusers.helper import x\n")
    monkeypatch.setattr(remote_code, "PACKAGE_DIR", package)
    assert remote_code_modules(["cxr_diffusers.ok"]) == {"cxr_diffusers.ok": set(), "cxr_diffusers.helper": {"x"},
                                                         "cxr_diffusers.y": set()}
    with pytest.raises(RuntimeError, match="only modules can be shipped"):
        remote_code_modules(["cxr_diffusers.attr"])
    with pytest.raises(RuntimeError, match="absolutely"):
        remote_code_modules(["cxr_diffusers.absolute"])


# ------------------------------------------------------------------------------------------ the super-resolution stage
@pytest.fixture(scope="module")
def exported_sr(tmp_path_factory):
    from cxr_diffusers import CXRSuperResolutionModel

    root = tmp_path_factory.mktemp("remote-sr")
    torch.manual_seed(0)
    pipe = CXRPipeline(**create_components("tiny"))
    torch.manual_seed(1)
    CXRSuperResolutionModel(block_out_channels=8, num_blocks=1).save_pretrained(root / "sr")
    pipe.save_pretrained(root / "trained")
    result = export("--pipeline", root / "trained", "--super_resolution", root / "sr", "--output_dir", root / "export",
                    "--dtype", "fp32")
    assert result.returncode == 0, result.stderr
    return root / "export"


def generate_large(pipe):
    return pipe(PROMPT, height=128, width=128, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                output_type="np").images


def test_export_with_the_stage_ships_and_names_it(exported_sr, tmp_path, monkeypatch):
    from diffusers import DiffusionPipeline
    from diffusers.utils import dynamic_modules_utils

    index = json.loads((exported_sr / "model_index.json").read_text())
    assert index["super_resolution"] == ["cxr_diffusers.models.super_resolution_cxr", "CXRSuperResolutionModel"]
    entry = (exported_sr / ENTRY_POINT).read_text()
    assert '"cxr_diffusers.models.super_resolution_cxr": CXRSuperResolutionModel' in entry
    assert (exported_sr / "models" / "super_resolution_cxr.py").read_bytes() == \
        (Path(cxr_diffusers.__file__).parent / "models" / "super_resolution_cxr.py").read_bytes()
    monkeypatch.setattr(dynamic_modules_utils, "HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    try:
        pipe = DiffusionPipeline.from_pretrained(exported_sr, trust_remote_code=True)
        assert type(pipe.super_resolution).__module__ == "cxr_diffusers.models.super_resolution_cxr"
    finally:
        for name in [m for m in sys.modules if m.startswith("diffusers_modules")]:
            del sys.modules[name]


@pytest.mark.slow
def test_diffusers_alone_loads_the_stage_and_makes_the_same_large_image(exported_sr, tmp_path):
    code = f"""
        import sys
        import numpy as np
        import torch
        from diffusers import DiffusionPipeline

        pipe = DiffusionPipeline.from_pretrained({str(exported_sr)!r}, trust_remote_code=True)
        assert type(pipe.super_resolution).__module__.startswith("diffusers_modules."), type(pipe.super_resolution)
        pipe.set_progress_bar_config(disable=True)
        images = pipe({PROMPT!r}, height=128, width=128, num_inference_steps=2,
                      generator=torch.Generator().manual_seed(0), output_type="np").images
        np.save("large.npy", images)
        assert "cxr_diffusers" not in sys.modules
    """
    result = run_without_the_package(code, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    pipe = CXRPipeline.from_pretrained(exported_sr)
    pipe.set_progress_bar_config(disable=True)
    local = generate_large(pipe)
    remote = np.load(tmp_path / "large.npy")
    assert remote.shape == local.shape == (1, 128, 128, 1)
    np.testing.assert_allclose(remote, local, rtol=0, atol=1e-5)
