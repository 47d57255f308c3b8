#!/usr/bin/env python
"""Reliability probe: feed cxr-diffusers the bad inputs a careless or hurried user would, and write what they get.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/probe_reliability.py                  # everything -> docs/reliability.md
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/probe_reliability.py --groups api,cli --output /tmp/partial.md
    HF_HUB_OFFLINE=1 .venv/bin/python scripts/probe_reliability.py --isolated       # one fresh interpreter per script run

The contract probed: bad input gets ONE clear sentence (a `CXRInputError` subclass in the Python API; exit code 2 and a
single `cxr-diffusers <cmd>: error: ...` / `<script>.py: error: ...` line for the CLI and the training scripts), never
a traceback, never a silent wrong result (NaN/black image, exit 0 with nothing done, wrong count), never a deleted
user file. Every case runs offline in a temporary folder; nothing in the repository is written except the report.

Training scripts run as child processes of one "runner" interpreter that has imported them once and forks a fresh
child per case (same argv, cwd, environment, exit code and stderr as `python train_scripts/<name>.py ...`, without
paying ~9 s of imports per case); `--isolated` starts `[sys.executable, script, ...]` for every case instead.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUTPUT = REPO / "docs" / "reliability.md"
TINY_CONFIG = REPO / "train_scripts" / "configs" / "tiny.json"
FIXTURES = REPO / "tests" / "fixtures"

# Offline, and caches inside the probe's temporary folder: set before anything imports huggingface_hub / datasets.
TMP = Path(tempfile.mkdtemp(prefix="cxr-probe-"))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_DATASETS_CACHE"] = str(TMP / "hf-datasets-cache")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ["MPLBACKEND"] = "Agg"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")

OUTCOMES = ("clear error", "ok", "TRACEBACK", "SILENT", "DATA LOSS")
GROUPS = {
    "api": "1. Python API: `CXRPipeline.__call__` (tiny pipeline, 32x32, 2 steps)",
    "loading": "2. Loading: `CXRPipeline.from_pretrained`, `scheduler_from_name`",
    "cli": "3. CLI sub-commands (in-process `cxr_diffusers.cli.main(argv)`)",
    "scripts": "4. Training scripts (child processes, `--config train_scripts/configs/tiny.json`)",
    "dataloss": "5. Data-loss checks (files of every folder a case targeted, after the case)",
}
PROMPT = "PA chest radiograph of a 58 year old female. Findings: cardiomegaly."
SCRIPT_TIMEOUT = 150  # seconds per training-script case (they should stop at argument checking)


# ================================================================================================ results and text
@dataclass
class Result:
    group: str
    input: str
    outcome: str
    detail: str


def first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else (type(error).__name__ if isinstance(error, BaseException) else "")


def describe_exception(error: BaseException) -> str:
    return f"{type(error).__name__}: {first_line(error)}"


def scrub(text: str) -> str:
    """Replace run-specific paths and names by placeholders so the report is stable across runs."""
    text = str(text)
    for path, placeholder in ((os.path.realpath(TMP), "<tmp>"), (str(TMP), "<tmp>"), (str(REPO), "<repo>"),
                              (sys.executable, "<python>"), (str(Path.home()), "~")):
        text = text.replace(path, placeholder)
    text = re.sub(r"0x[0-9a-fA-F]{6,}", "0x...", text)
    text = re.sub(r"(\.cxr-write-test-|\.partial-|\.old-|/tmp)[A-Za-z0-9_]{6,}", r"\1<rand>", text)
    text = re.sub(r"\b\d+\.\d+ ?s\b", "<t> s", text)
    text = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(,\d+)?", "<time>", text)
    return text


def shorten(text: str, limit: int = 140) -> str:
    text = re.sub(r"\s*[\r\n\t]+\s*", " ", str(text)).strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def code_cell(text: str) -> str:
    """A markdown table cell holding `text` as inline code (placeholders such as <tmp> stay visible)."""
    text = text.replace("|", "\\|")
    if not text:
        return ""
    fence = "``" if "`" in text else "`"
    pad = " " if fence == "``" or text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def snapshot(folder: Path) -> dict[str, str]:
    """relative path -> sha1 of every file under `folder` (or of `folder` itself when it is a file)."""
    folder = Path(folder)
    if folder.is_file():
        return {".": hashlib.sha1(folder.read_bytes()).hexdigest()}
    if not folder.is_dir():
        return {}
    return {p.relative_to(folder).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class Probe:
    def __init__(self) -> None:
        self.results: list[Result] = []
        self.started = time.time()

    def add(self, group: str, label: str, outcome: str, detail: str) -> Result:
        assert outcome in OUTCOMES, outcome
        result = Result(group, scrub(label), outcome, scrub(detail))
        self.results.append(result)
        flag = "" if outcome in ("ok", "clear error") else "   <<<<"
        print(f"[{time.time() - self.started:6.1f}s] {group:8} {outcome:11} {shorten(result.input, 90)}"
              f" -> {shorten(result.detail, 120)}{flag}", flush=True)
        return result

    def case(self, group: str, label: str, fn: Callable[[], tuple[str, str]],
             protect: tuple[Path, ...] | list[Path] = ()) -> Result:
        """Run one case; `fn` returns (outcome, detail). `protect`: folders (or files) whose files must survive."""
        before = {Path(p): snapshot(Path(p)) for p in protect}
        try:
            outcome, detail = fn()
        except Exception as error:  # noqa: BLE001 - the probe must survive any single case
            outcome, detail = "TRACEBACK", f"(escaped the probe's handler) {describe_exception(error)}"
            traceback.print_exc()
        result = self.add(group, label, outcome, detail)
        for folder, files in before.items():
            self.verify_kept(result, folder, files)
        return result

    def verify_kept(self, result: Result, folder: Path, before: dict[str, str]) -> None:
        after = snapshot(folder)
        missing = [name for name in before if name not in after]
        changed = [name for name in before if name in after and after[name] != before[name]]
        what = "file" if before.keys() == {"."} else f"{len(before)} files of"
        label = f"after `{result.input}`: {what} {scrub(str(folder))}"
        if missing or changed:
            parts = ([f"missing: {', '.join(missing[:5])}"] if missing else []) + \
                    ([f"changed: {', '.join(changed[:5])}"] if changed else [])
            detail = f"{len(missing)} of {len(before)} files gone, {len(changed)} changed ({'; '.join(parts)})"
            result.outcome = "DATA LOSS"
            result.detail = scrub(f"{detail}; the case itself gave: {result.detail}")
            self.add("dataloss", label, "DATA LOSS", detail)
        else:
            self.add("dataloss", label, "ok", f"all {len(before)} file(s) still there, unchanged")

    # --------------------------------------------------------------------------------------------- report
    def counts(self, group: str | None = None) -> dict[str, int]:
        rows = [r for r in self.results if group is None or r.group == group]
        return {outcome: sum(r.outcome == outcome for r in rows) for outcome in OUTCOMES}

    def markdown(self, elapsed: float, mode: str) -> str:
        total = self.counts()
        lines = [
            "# Reliability: what a careless user gets",
            "",
            "This file is written by `scripts/probe_reliability.py`; do not edit it by hand. The probe feeds the "
            "library the bad inputs a careless or hurried user would (empty and mistyped prompts, NaN/inf/negative "
            "and out-of-range numbers, wrong types, impossible sizes, missing/corrupt/pickled models, files where "
            "folders are expected and the reverse, non-images, blank images, output folders that are files or hold "
            "the run's own inputs, garbage checkpoints) through the Python API, the `cxr-diffusers` CLI and the "
            "training scripts, plus a few valid inputs whose results are sanity-checked. Everything runs offline in "
            "a temporary folder (`<tmp>` below; `<repo>` is the checkout).",
            "",
            "Rerun: `HF_HUB_OFFLINE=1 .venv/bin/python scripts/probe_reliability.py` "
            "(a few minutes on one CPU core; it rewrites this file; `--help` for subsets).",
            "",
            "Outcome classes: **clear error** (one sentence, exit code 2 / a `CXRInputError`, no traceback), "
            "**ok** (a valid input accepted with a sane result: right count and size, finite, non-constant), "
            "**TRACEBACK** (an exception other than `CXRInputError` in the API, a traceback on the command line), "
            "**SILENT** (wrong, blank or NaN result, exit 0 without doing what was asked, bad input accepted), "
            "**DATA LOSS** (a file that existed before the case is gone or changed).",
            "",
            f"Training scripts: {mode}.",
            "",
            f"**Summary: {len(self.results)} inputs: "
            + ", ".join(f"{total[o]} {o}" for o in OUTCOMES) + ".**",
            "",
        ]
        for group, title in GROUPS.items():
            rows = [r for r in self.results if r.group == group]
            if not rows:
                continue
            counts = self.counts(group)
            lines += [f"## {title}", "",
                      f"{len(rows)} inputs: " + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES if counts[o]) + ".", "",
                      "| input | outcome | what the user gets |", "|---|---|---|"]
            for r in rows:
                outcome = r.outcome if r.outcome in ("ok", "clear error") else f"**{r.outcome}**"
                lines.append(f"| {code_cell(shorten(r.input, 160))} | {outcome} | {code_cell(shorten(r.detail))} |")
            lines.append("")
        return "\n".join(lines)


# ================================================================================================ helpers
@contextlib.contextmanager
def working_dir(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data)
    else:
        path.write_bytes(data)
    return path


def image_problem(path: Path, size: tuple[int, int] | None = None) -> str | None:
    """Why the image file at `path` is not a sane result (missing, unreadable, wrong size, constant), or None."""
    import numpy as np
    from PIL import Image

    if not path.is_file():
        return f"{path.name} was not written"
    try:
        with Image.open(path) as im:
            im.load()
            array = np.asarray(im, dtype=np.float64)
            actual = im.size
    except Exception as error:  # noqa: BLE001
        return f"{path.name} is unreadable ({type(error).__name__})"
    if size is not None and actual != size:
        return f"{path.name} is {actual[0]}x{actual[1]}, not {size[0]}x{size[1]}"
    if not np.isfinite(array).all():
        return f"{path.name} has non-finite pixels"
    if array.std() < 0.5:
        return f"{path.name} is a constant image (all {array.mean():.0f})"
    return None


# ================================================================================================ 1. Python API
class Missing:
    """Marker: leave this keyword out of the call."""


def api_group(probe: Probe, pipe) -> None:
    import numpy as np
    import torch

    from cxr_diffusers import CXRInputError
    from cxr_diffusers.schedulers import scheduler_from_name

    latent_channels = pipe.unet.config.in_channels
    factor = pipe.vae_scale_factor

    def gen(seed: int = 0):
        return torch.Generator().manual_seed(seed)

    def check_output(images, output_type, count, height, width) -> tuple[str | None, str]:
        """(problem or None, description) of a pipeline output."""
        if output_type == "pil":
            if not isinstance(images, list):
                return f"expected a list of PIL images, got {type(images).__name__}", ""
            if len(images) != count:
                return f"{len(images)} images returned for {count} requested", ""
            for im in images:
                if im.size != (width, height):
                    return f"image is {im.size[0]}x{im.size[1]}, not {width}x{height}", ""
                array = np.asarray(im, dtype=np.float32)
                if array.std() < 0.5:
                    return f"constant image (every pixel {array.mean():.0f})", ""
            return None, f"{count} PIL image(s) {width}x{height}, non-constant"
        if output_type in ("np", "pt"):
            array = images if output_type == "np" else images.numpy()
            shape = (count, height, width, 1) if output_type == "np" else (count, 1, height, width)
            if tuple(array.shape) != shape:
                return f"shape {tuple(array.shape)}, expected {shape}", ""
            if not np.isfinite(array).all():
                return "non-finite pixel values", ""
            if array.min() < 0 or array.max() > 1:
                return f"values outside [0, 1] ({array.min():.3g}..{array.max():.3g})", ""
            if min(float(a.std()) for a in array) < 1e-3:
                return "a constant image", ""
            return None, f"{output_type} array {shape}, finite, in [0, 1], non-constant"
        if output_type == "latent":
            shape = (count, latent_channels, height // factor, width // factor)
            if tuple(images.shape) != shape:
                return f"latents of shape {tuple(images.shape)}, expected {shape}", ""
            if not torch.isfinite(images).all():
                return "non-finite latents", ""
            return None, f"latents {shape}, finite"
        return f"unexpected output_type {output_type!r} came back", ""

    def call(label: str, expect: str, extra: Callable[[Any], str | None] | None = None, **overrides) -> None:
        """expect: 'error' (bad input: must be refused), 'ok' (valid: must work), 'either' (either is fine)."""

        def run() -> tuple[str, str]:
            kwargs = {"prompt": PROMPT, "height": 32, "width": 32, "num_inference_steps": 2,
                      "generator": gen(0), "output_type": "np"}
            kwargs.update(overrides)
            kwargs = {k: v for k, v in kwargs.items() if v is not Missing}
            import logging

            records: list[logging.LogRecord] = []

            class Capture(logging.Handler):
                def emit(self, record):
                    records.append(record)

            handler = Capture(level=logging.WARNING)
            logging.getLogger("cxr_diffusers").addHandler(handler)
            try:
                output = pipe(**kwargs)
            except CXRInputError as error:
                message = describe_exception(error)
                if expect == "ok":
                    return "clear error", f"valid input refused: {message}"
                return "clear error", message
            except Exception as error:  # noqa: BLE001
                return "TRACEBACK", describe_exception(error)
            finally:
                logging.getLogger("cxr_diffusers").removeHandler(handler)
            images = output[0] if isinstance(output, tuple) else output.images
            try:
                prompts = kwargs["prompt"]
                n_prompts = 1 if isinstance(prompts, str) else len(prompts)
                count = n_prompts * int(kwargs.get("num_images_per_prompt", 1))
                height = int(kwargs.get("height") or pipe.default_size)
                width = int(kwargs.get("width") or pipe.default_size)
            except Exception as error:  # noqa: BLE001
                return "SILENT", f"accepted although the count/size cannot be read ({describe_exception(error)})"
            problem, description = check_output(images, kwargs.get("output_type", "pil"), count, height, width)
            if problem is None and extra is not None:
                problem = extra(images)
            if problem is not None:
                return "SILENT", f"returned without an error but {problem}"
            warning = f"; warning: {records[0].getMessage()}" if records else ""
            if expect == "error":
                return "SILENT", f"accepted without complaint: {description}{warning}"
            return "ok", description + warning

        probe.case("api", label, run)

    # prompts
    call('prompt=""', "error", prompt="")
    call('prompt="   " (only spaces)', "error", prompt="   ")
    call("prompt=None", "error", prompt=None)
    call("prompt=5", "error", prompt=5)
    call('prompt=["ok", None]', "error", prompt=["PA chest radiograph", None])
    call("prompt=[] (empty list)", "error", prompt=[])
    call("prompt of 10,000 characters", "either", prompt=("PA chest radiograph. Findings: pneumonia. " * 240)[:10_000])
    call('prompt="肺炎 – opacité basale droite 🫁" (unicode)', "ok", prompt="肺炎 – opacité basale droite 🫁")
    call('prompt="?!.,;:-()" (only punctuation)', "either", prompt="?!.,;:-()")
    call("prompt=[two prompts]", "ok", prompt=[PROMPT, "PA chest radiograph, no acute findings"])
    call("prompt=(tuple of two prompts)", "ok", prompt=(PROMPT, "PA chest radiograph, no acute findings"))
    # negative prompts
    call('negative_prompt=["a", "b"] for 1 prompt (wrong length)', "error", negative_prompt=["blurry", "noise"])
    call("negative_prompt=5 (wrong type)", "error", negative_prompt=5)
    call('negative_prompt=["blurry", None] for 2 prompts', "error", prompt=[PROMPT, PROMPT],
         negative_prompt=["blurry", None])
    call('negative_prompt="" (empty)', "ok", negative_prompt="")
    call('negative_prompt="blurry"', "ok", negative_prompt="blurry")
    # steps
    for value, label, expect in ((0, "0", "error"), (-1, "-1", "error"), (2.5, "2.5", "error"), ("3", '"3"', "error"),
                                 (True, "True", "error"), (None, "None", "error"), (100000, "100000", "error"),
                                 (np.int64(2), "np.int64(2)", "ok"), (1, "1", "either")):
        call(f"num_inference_steps={label}", expect, num_inference_steps=value)
    call("num_inference_steps=1000 (default DPM-Solver++)", "error", num_inference_steps=1000)
    original_scheduler = pipe.scheduler
    for name in ("unipc", "ddim"):
        try:
            pipe.scheduler = scheduler_from_name(name, original_scheduler.config)
            if name == "unipc":
                call("num_inference_steps=1000 with UniPC", "error", num_inference_steps=1000)
                call("num_inference_steps=2 with UniPC", "ok")
            else:
                call("num_inference_steps=2 with DDIM (scheduler_from_name)", "ok")
        finally:
            pipe.scheduler = original_scheduler
    try:
        from diffusers import DDIMScheduler

        pipe.scheduler = DDIMScheduler.from_config(original_scheduler.config)
        call("DDIMScheduler.from_config(pipe.scheduler.config), 2 steps", "ok")
        pipe.scheduler = DDIMScheduler.from_config({**original_scheduler.config, "clip_sample": True})
        call("DDIMScheduler with clip_sample=True", "error")
    finally:
        pipe.scheduler = original_scheduler
    # guidance
    for value, label, expect in ((float("nan"), "nan", "error"), (float("inf"), "inf", "error"), (-1, "-1", "error"),
                                 (1e30, "1e30", "error"), (31, "31", "error"), ("4", '"4"', "error"),
                                 (None, "None", "error"), (True, "True", "error"),
                                 (np.float32(3), "np.float32(3)", "ok"), (0, "0", "ok"), (1, "1 (no guidance)", "ok"),
                                 (30, "30 (the limit)", "either")):
        call(f"guidance_scale={label}", expect, guidance_scale=value)
    # images per prompt
    for value, label, expect in ((0, "0", "error"), (-1, "-1", "error"), (1000, "1000", "error"), (65, "65", "error"),
                                 (2.0, "2.0", "error"), (None, "None", "error"), (np.int64(2), "np.int64(2)", "ok")):
        call(f"num_images_per_prompt={label}", expect, num_images_per_prompt=value)
    # sizes
    for value, label in ((7, "7"), (33, "33"), (0, "0"), (-32, "-32"), (4096, "4096"), ("32", '"32"'), (32.0, "32.0"),
                         (True, "True")):
        call(f"height={label}", "error", height=value)
    call("width=33", "error", width=33)
    call("height=width=np.int64(32)", "ok", height=np.int64(32), width=np.int64(32))
    call("height=48, width=32 (non-square)", "ok", height=48)
    call("height=width=None (model default)", "ok", height=None, width=None)
    # generators
    call("generator=0 (an int seed)", "error", generator=0)
    call('generator="x"', "error", generator="x")
    call("generator=[g1, g2] for 1 image (wrong length)", "error", generator=[gen(0), gen(1)])
    call("generator=[0] (list of ints)", "error", generator=[0])
    call("generator=[0, 1] with num_images_per_prompt=2", "error", generator=[0, 1], num_images_per_prompt=2)

    def different(images):
        return "the two images are identical" if np.array_equal(images[0], images[1]) else None

    call("generator=[g0, g1] with num_images_per_prompt=2", "ok", extra=different,
         generator=[gen(0), gen(1)], num_images_per_prompt=2)
    reference = pipe(PROMPT, height=32, width=32, num_inference_steps=2, generator=gen(7), output_type="np").images

    def same_as_reference(images):
        return None if np.array_equal(images, reference) else "the same seed gave a different image"

    call("generator=torch.Generator().manual_seed(7) twice (reproducible)", "ok", extra=same_as_reference,
         generator=gen(7))
    # latents
    shape = (1, latent_channels, 32 // factor, 32 // factor)
    call("latents full of NaN", "error", latents=torch.full(shape, float("nan")))
    with_inf = torch.randn(shape, generator=gen(0))
    with_inf[0, 0, 0, 0] = float("inf")
    call("latents with one inf", "error", latents=with_inf)
    call(f"latents of the wrong shape {(1, latent_channels, 8, 8)} for 32x32", "error",
         latents=torch.randn(1, latent_channels, 8, 8))
    call("latents for 2 images, 1 requested", "error", latents=torch.randn(2, *shape[1:]))
    call("latents as a numpy array", "error", latents=np.random.default_rng(0).standard_normal(shape).astype("float32"))
    call("latents as float64", "either", latents=torch.randn(shape, dtype=torch.float64, generator=gen(0)))
    call("latents as float16", "either", latents=torch.randn(shape, generator=gen(0)).half())
    call("latents as int64 (wrong dtype)", "either", latents=torch.randint(-2, 3, shape, generator=gen(0)))
    call("latents=torch.randn(right shape)", "ok", latents=torch.randn(shape, generator=gen(0)))
    # output types
    call('output_type="jpeg"', "error", output_type="jpeg")
    call("output_type=None", "error", output_type=None)
    call('output_type="PIL" (upper case)', "either", output_type="PIL")
    call('output_type="latent"', "ok", output_type="latent")
    call('output_type="pil"', "ok", output_type="pil")
    call('output_type="pt"', "ok", output_type="pt")
    call("return_dict=False", "ok", return_dict=False)
    # enhancement
    call('enhancement="nope" (unknown preset)', "error", enhancement="nope")
    call('enhancement={"steps": [{"name": "nope"}]}', "error", enhancement={"steps": [{"name": "nope"}]})
    call('enhancement={"clahe": {"clip_limit": "high"}} (bad parameter)', "error",
         enhancement={"clahe": {"clip_limit": "high"}})
    call('enhancement={"foo": 1} (bad dict)', "error", enhancement={"foo": 1})
    call("enhancement=3", "error", enhancement=3)
    call('enhancement="balanced"', "ok", enhancement="balanced", output_type="pil")
    call('enhancement="High-Contrast" (loose spelling)', "either", enhancement="High-Contrast")
    # callbacks

    def nan_callback(p, step, timestep, kwargs):
        return {"latents": kwargs["latents"] * float("nan")}

    def shape_callback(p, step, timestep, kwargs):
        return {"latents": kwargs["latents"][:, :1]}

    def none_callback(p, step, timestep, kwargs):
        return None

    call("callback_on_step_end returns NaN latents", "error", callback_on_step_end=nan_callback)
    call("callback_on_step_end returns latents of the wrong shape", "error", num_inference_steps=3,
         callback_on_step_end=shape_callback)
    call("callback_on_step_end returns None", "ok", callback_on_step_end=none_callback)
    call('callback_on_step_end_tensor_inputs=["noise"] (unknown name)', "error",
         callback_on_step_end=none_callback, callback_on_step_end_tensor_inputs=["noise"])
    call('callback_on_step_end_tensor_inputs="latents" (a string, not a list)', "either",
         callback_on_step_end=none_callback, callback_on_step_end_tensor_inputs="latents")


# ================================================================================================ 2. Loading
def loading_group(probe: Probe, pipe, models: Path) -> None:
    import torch

    from cxr_diffusers import CXRAutoencoderKL, CXRInputError, CXRPipeline
    from cxr_diffusers.hub import load_pretrained
    from cxr_diffusers.schedulers import scheduler_from_name

    tiny = models / "tiny"

    def variant(name: str, edit: Callable[[Path], None]) -> Path:
        folder = models / name
        shutil.copytree(tiny, folder)
        edit(folder)
        return folder

    def load(label: str, target, expect: str = "error", cwd: Path | None = None, loader=None):
        def run():
            try:
                with working_dir(cwd) if cwd else contextlib.nullcontext():
                    loaded = (loader or CXRPipeline.from_pretrained)(target)
            except CXRInputError as error:
                return "clear error", ("valid input refused: " if expect == "ok" else "") + describe_exception(error)
            except Exception as error:  # noqa: BLE001
                return "TRACEBACK", describe_exception(error)
            if expect == "error":
                return "SILENT", f"loaded without complaint: {type(loaded).__name__}"
            if isinstance(loaded, CXRPipeline):
                loaded.set_progress_bar_config(disable=True)
                images = loaded(PROMPT, height=32, width=32, num_inference_steps=2,
                                generator=torch.Generator().manual_seed(0), output_type="np").images
                if not (images.shape == (1, 32, 32, 1) and float(images.std()) > 1e-3):
                    return "SILENT", f"loaded, but it generates a bad image (shape {images.shape})"
                return "ok", "loaded; generates a sane 32x32 image"
            return "ok", f"loaded a {type(loaded).__name__}"

        probe.case("loading", label, run)

    elsewhere = mkdir(TMP / "elsewhere")
    empty = mkdir(models / "empty")
    a_file = write(models / "weights.safetensors", b"not a model")

    def truncate(folder: Path):
        weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
        data = weights.read_bytes()
        weights.write_bytes(data[: len(data) // 2])

    def garbage(folder: Path):
        (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\x00garbage" * 64)

    def bad_index(folder: Path):
        (folder / "model_index.json").write_text("{not json")

    def no_text_encoder(folder: Path):
        shutil.rmtree(folder / "text_encoder")

    def bad_config(folder: Path):
        config = json.loads((folder / "unet" / "config.json").read_text())
        config["in_channels"] = 3
        (folder / "unet" / "config.json").write_text(json.dumps(config))

    load("from_pretrained(<tmp>/does-not-exist)", str(TMP / "does-not-exist"))
    load('from_pretrained("pretrained/cxr-ldm-small") from another cwd (looks like a Hub id)',
         "pretrained/cxr-ldm-small", cwd=elsewhere)
    load('from_pretrained("someone/cxr-model") (a Hub id, offline)', "someone/cxr-model")
    load('from_pretrained("") (empty string)', "")
    load("from_pretrained(None)", None)
    load("from_pretrained(<tmp>/models/empty) (empty folder)", str(empty))
    load("from_pretrained(<tmp>/models/weights.safetensors) (a file)", str(a_file))
    load("from_pretrained(folder with a truncated unet safetensors)", str(variant("truncated", truncate)))
    load("from_pretrained(folder whose vae safetensors is garbage)", str(variant("garbage", garbage)))
    load("from_pretrained(folder with an invalid model_index.json)", str(variant("bad-index", bad_index)))
    load("from_pretrained(folder without its text_encoder/)", str(variant("no-text-encoder", no_text_encoder)))
    load("from_pretrained(folder whose unet config has in_channels=3)", str(variant("bad-config", bad_config)))
    pickled = models / "pickled"
    try:
        pipe.save_pretrained(pickled, safe_serialization=False)
    except Exception as error:  # noqa: BLE001
        probe.add("loading", "save_pretrained(safe_serialization=False)", "TRACEBACK", describe_exception(error))
    load("from_pretrained(folder saved with safe_serialization=False: pickled .bin)", str(pickled))
    load("from_pretrained(<tmp>/models/tiny/vae) (a VAE folder, not a pipeline)", str(tiny / "vae"))
    load("from_pretrained(Path(<tmp>/models/tiny)) (valid, a Path)", tiny, expect="ok")
    load("load_pretrained(CXRAutoencoderKL, <tmp>/missing-vae)", str(TMP / "missing-vae"),
         loader=lambda p: load_pretrained(CXRAutoencoderKL, p, "VAE"))
    load("load_pretrained(CXRAutoencoderKL, <tmp>/models/tiny) (pipeline root, not its vae/)", str(tiny),
         loader=lambda p: load_pretrained(CXRAutoencoderKL, p, "VAE"))
    load("load_pretrained(CXRAutoencoderKL, pickled vae/)", str(pickled / "vae"),
         loader=lambda p: load_pretrained(CXRAutoencoderKL, p, "VAE"))

    def sched(label: str, name, expect: str = "error"):
        def run():
            try:
                scheduler = scheduler_from_name(name, pipe.scheduler.config)
            except CXRInputError as error:
                return "clear error", describe_exception(error)
            except Exception as error:  # noqa: BLE001
                return "TRACEBACK", describe_exception(error)
            if expect == "error":
                return "SILENT", f"accepted: {type(scheduler).__name__}"
            if getattr(scheduler.config, "clip_sample", False):
                return "SILENT", f"{type(scheduler).__name__} with clip_sample=True (ruins latents)"
            return "ok", f"{type(scheduler).__name__}" + (", clip_sample=False" if "clip_sample" in scheduler.config else "")

        probe.case("loading", label, run)

    sched("scheduler_from_name(None, config)", None)
    sched('scheduler_from_name("ddmi", config) (typo)', "ddmi")
    sched("scheduler_from_name(3, config)", 3)
    sched('scheduler_from_name("", config)', "")
    sched('scheduler_from_name("DDIM", config)', "DDIM", expect="ok")
    sched('scheduler_from_name("ddpm", config)', "ddpm", expect="ok")


# ================================================================================================ 3. CLI
@dataclass
class CliRun:
    code: int | None
    out: str
    err: str
    exception: BaseException | None


def run_cli(argv: list[str], cwd: Path) -> CliRun:
    from cxr_diffusers.cli import main

    out, err = io.StringIO(), io.StringIO()
    code, exception = None, None
    with working_dir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_info:
            code = exit_info.code if isinstance(exit_info.code, int) else (0 if exit_info.code is None else 1)
        except BaseException as error:  # noqa: BLE001 - an uncaught exception is a traceback for the user
            exception = error
            traceback.print_exc(file=err)
    return CliRun(code, out.getvalue(), err.getvalue(), exception)


PROGRESS_BAR = re.compile(r"\d+%\|.*\|")


def output_lines(text: str) -> list[str]:
    """Lines as a terminal shows them (a carriage return starts a new one), without blank and progress-bar lines."""
    return [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip() and not PROGRESS_BAR.search(line)]


def last_line(text: str) -> str:
    lines = output_lines(text)
    return lines[-1] if lines else ""


def error_line(text: str, prefix: str) -> str | None:
    """
    The last `<prefix>...: error: ...` message in `text` (also when printed right after a progress bar), followed by
    ` (then: ...)` with the last line printed after it, if any (blank and progress-bar lines aside).
    """
    segments = re.split(r"[\r\n]+", text)
    for position in range(len(segments) - 1, -1, -1):
        index = segments[position].find(prefix)
        if index >= 0 and ": error: " in segments[position][index:]:
            message = segments[position][index:].strip()
            after = output_lines("\n".join(segments[position + 1:]))
            return message + (f" (then: {after[-1]})" if after else "")
    return None


def exit_outcome(result, expect: str, message: str | None, last: str) -> tuple[str, str]:
    """The outcome of a command that was expected to fail (`expect == "error"`) or that failed: a one-line error with
    exit code 2 is a clear error; exit 0 or any other failure is silent."""
    if expect == "error":
        if result.code == 2 and message is not None:
            return "clear error", message
        if result.code == 0:
            return "SILENT", f"exit 0 (accepted): {last_line(result.out) or last or '(no output)'}"
        return "SILENT", f"exit {result.code} without a one-line error: {last or '(no stderr)'}"
    return "clear error", f"valid input refused (exit {result.code}): {message or last}"


def cli_group(probe: Probe, work: Path, models: Path, images: dict[str, Path]) -> None:
    from PIL import Image

    tiny = str(models / "tiny")
    blocker = write(work / "a-file", "I am a file, not a folder\n")
    mkdir(models / "empty")

    def cli(label: str, argv: list, expect: str = "error", check: Callable[[CliRun], tuple[str | None, str]] | None = None,
            protect=(), cwd: Path = work):
        """expect 'error': exit 2 with one `cxr-diffusers <cmd>: error:` line; 'ok': exit 0 and check() passes."""
        command = str(argv[0])  # `data build` errors say `cxr-diffusers data build: error:` or `cxr-diffusers data: error:`

        def run():
            result = run_cli(argv, cwd)
            line = last_line(result.err)
            if result.exception is not None or "Traceback (most recent call last)" in result.err:
                what = describe_exception(result.exception) if result.exception else line
                return "TRACEBACK", what
            message = error_line(result.err, f"cxr-diffusers {command}")
            if expect == "error" or result.code != 0:
                return exit_outcome(result, expect, message, line)
            problem, description = check(result) if check else (None, last_line(result.out))
            if problem:
                return "SILENT", f"exit 0 but {problem}"
            return "ok", description

        probe.case("cli", label, run, protect=protect)

    def cmd(argv) -> str:
        return "cxr-diffusers " + " ".join(str(a) if str(a) else '""' for a in argv)

    # ------------------------------------------------------------------ generate
    def gen_case(extra: list, expect="error", check=None, out: Path | None = None, label_extra: str = "",
                 model: str = tiny, protect=()):
        argv = ["generate", model, "-p", PROMPT, "--steps", "2", "-o", str(out or work / "gen-refused"), *extra]
        label = cmd(["generate", "<tiny>" if model == tiny else model, "-p", "...", *extra]) + label_extra
        cli(label, argv, expect, check, protect=protect)

    for seed in ("1e20", "-1", str(2**64), "0x10"):
        gen_case(["--seed", seed])
    gen_case(["--seed", str(2**63 - 1), "-n", "2"])
    gen_case(["--steps", "0"])
    gen_case(["--steps", "2.5"])
    gen_case(["--steps", "1000"])
    gen_case(["--guidance", "nan"])
    gen_case(["--guidance", "1e30"])
    gen_case(["--guidance", "-1"])
    gen_case(["--num-images", "0"])
    gen_case(["--num-images", "-3"])
    gen_case(["--height", "100"])
    gen_case(["--width", "0"])
    gen_case(["--scheduler", "ddmi"])
    gen_case(["--enhancement", "nope"])
    gen_case(["--negative-prompt", ""], expect="ok",
             check=lambda r: (image_problem(next((work / "gen-neg").glob("*.png"), work / "missing.png")), "1 PNG"),
             out=work / "gen-neg")
    cli(cmd(["generate", "<tiny>", "-p", "...", "-o", "<tmp>/work/a-file"]),
        ["generate", tiny, "-p", PROMPT, "--steps", "2", "-o", blocker], protect=[blocker])
    cli(cmd(["generate", "<tiny>", "-p", "...", "-o", "<tmp>/work/a-file/out"]),
        ["generate", tiny, "-p", PROMPT, "--steps", "2", "-o", blocker / "out"], protect=[blocker])
    cli(cmd(["generate", "<tmp>/work/no-model", "-p", "..."]),
        ["generate", work / "no-model", "-p", PROMPT, "--steps", "2", "-o", work / "gen-refused"])
    cli(cmd(["generate", "<tmp>/work/a-file", "-p", "..."]),
        ["generate", blocker, "-p", PROMPT, "--steps", "2", "-o", work / "gen-refused"])
    cli(cmd(["generate", "<tmp>/models/empty", "-p", "..."]),
        ["generate", models / "empty", "-p", PROMPT, "--steps", "2", "-o", work / "gen-refused"])
    cli(cmd(["generate", "<tiny>", "-p", '""']), ["generate", tiny, "-p", "", "--steps", "2", "-o", work / "gen-refused"])
    cli(cmd(["generate", "<tiny>"]) + " (no --prompt)", ["generate", tiny, "-o", work / "gen-refused"])

    def manifest(folder: Path) -> list[dict]:
        path = folder / "manifest.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    def generated_check(folder: Path, count: int, grid: bool = False):
        def check(result: CliRun):
            pngs = sorted(p for p in folder.glob("cxr_*.png"))
            if len(pngs) != count:
                return f"{len(pngs)} PNGs written for {count} requested", ""
            for png in pngs:
                problem = image_problem(png)
                if problem:
                    return problem, ""
            lines = manifest(folder)
            if sorted(r.get("file") for r in lines) != [p.name for p in pngs]:
                return f"manifest.jsonl lists {len(lines)} records for {len(pngs)} PNGs", ""
            if grid and image_problem(folder / "grid.png"):
                return image_problem(folder / "grid.png"), ""
            return None, f"{count} non-constant PNG(s), manifest.jsonl with one line each" + (", grid.png" if grid else "")

        return check

    out = work / "gen-ok"
    cli(cmd(["generate", "<tiny>", "-p", "...", "--steps", "2", "-n", "2", "--grid"]),
        ["generate", tiny, "-p", PROMPT, "--steps", "2", "-n", "2", "--grid", "-o", out], "ok", generated_check(out, 2, True))
    out = work / "gen-ddim"
    cli(cmd(["generate", "<tiny>", "-p", "...", "--steps", "2", "--scheduler", "DDIM", "--enhancement", "balanced"]),
        ["generate", tiny, "-p", PROMPT, "--steps", "2", "--scheduler", "DDIM", "--enhancement", "balanced", "-o", out],
        "ok", generated_check(out, 1))

    def twice_check(folder: Path, second_prompt: str, expected_prompts: dict[str, str] | None = None):
        from cxr_diffusers import read_provenance

        def check(result: CliRun):
            pngs = sorted(p.name for p in folder.glob("cxr_*.png"))
            lines = manifest(folder)
            files = [r.get("file") for r in lines]
            if sorted(files) != pngs or len(files) != len(set(files)):
                return f"manifest.jsonl has {len(lines)} lines ({len(set(files))} files) for {len(pngs)} PNGs", ""
            for record in lines:
                with Image.open(folder / record["file"]) as im:
                    im.load()
                    embedded = read_provenance(im).get("prompt")
                if record.get("prompt") != embedded:
                    return f"manifest prompt of {record['file']} is {record.get('prompt')!r}, the PNG says {embedded!r}", ""
                wanted = (expected_prompts or {}).get(record["file"], second_prompt)
                if record.get("prompt") != wanted:
                    return f"{record['file']} is listed with {record.get('prompt')!r}, expected {wanted!r}", ""
            return None, f"{len(pngs)} PNG(s), one manifest line each, prompts match the PNGs"

        return check

    twice = work / "gen-twice"
    run_cli(["generate", tiny, "-p", "first prompt: normal chest", "--steps", "2", "-n", "2", "-o", twice], work)
    cli(cmd(["generate", "<tiny>", "-p", "second ...", "-n", "2", "-o", "<same folder as a first run with -n 2>"]),
        ["generate", tiny, "-p", "second prompt: pneumonia", "--steps", "2", "-n", "2", "-o", twice], "ok",
        twice_check(twice, "second prompt: pneumonia"))
    fewer = work / "gen-twice-fewer"
    run_cli(["generate", tiny, "-p", "first prompt: normal chest", "--steps", "2", "-n", "2", "-o", fewer], work)
    cli(cmd(["generate", "<tiny>", "-p", "second ...", "-n", "1", "-o", "<same folder as a first run with -n 2>"]),
        ["generate", tiny, "-p", "second prompt: pneumonia", "--steps", "2", "-n", "1", "-o", fewer], "ok",
        twice_check(fewer, "second prompt: pneumonia",
                    {"cxr_00_001_seed1.png": "first prompt: normal chest"}))

    # ------------------------------------------------------------------ enhance
    xray = images["xray"]
    enh_out = work / "enh-refused"
    cli(cmd(["enhance", "<tmp>/work/missing.png"]), ["enhance", work / "missing.png", "-o", enh_out])
    cli(cmd(["enhance", "<text file renamed .png>"]), ["enhance", images["text_png"], "-o", enh_out])
    cli(cmd(["enhance", "<empty 0-byte .png>"]), ["enhance", images["empty_png"], "-o", enh_out])
    cli(cmd(["enhance", "<truncated PNG>"]), ["enhance", images["truncated_png"], "-o", enh_out])
    cli(cmd(["enhance", "<tmp>/work/images"]) + " (a directory)", ["enhance", images["xray"].parent, "-o", enh_out])
    cli(cmd(["enhance", "<xray>", "-o", "<tmp>/work/a-file"]), ["enhance", xray, "-o", blocker], protect=[blocker])
    cli(cmd(["enhance", "<xray>", "-o", "<tmp>/work/a-file/out"]), ["enhance", xray, "-o", blocker / "out"])
    cli(cmd(["enhance", "<xray>", "--preset", "nope"]), ["enhance", xray, "--preset", "nope", "-o", enh_out])
    cli(cmd(["enhance", "a/x.png", "b/x.png"]) + " (same stem)", ["enhance", images["same_a"], images["same_b"], "-o", enh_out])
    cli(cmd(["enhance", "<float32 TIFF (mode F)>"]), ["enhance", images["float_tiff"], "-o", enh_out])

    def enhanced_check(folder: Path, names: list[str]):
        def check(result: CliRun):
            for name in names:
                problem = image_problem(folder / name)
                if problem:
                    return problem, ""
            extra = sorted(p.name for p in folder.glob("*.png") if p.name not in names)
            if extra:
                return f"unexpected outputs {extra}", ""
            return None, f"{len(names)} non-constant PNG(s): {', '.join(names)}"[:140]

        return check

    stem = xray.stem
    out = work / "enh-ok"
    cli(cmd(["enhance", "<xray>"]), ["enhance", xray, "-o", out], "ok", enhanced_check(out, [f"{stem}_balanced.png"]))
    out = work / "enh-all"
    cli(cmd(["enhance", "<xray>", "--preset", "all", "--compare"]), ["enhance", xray, "--preset", "all", "--compare", "-o", out],
        "ok", enhanced_check(out, [f"{stem}_{p}.png" for p in ("balanced", "high_contrast", "sharp_detail",
                                                              "radiographic_film", "compare")]))
    out = work / "enh-twice"
    cli(cmd(["enhance", "<xray>", "<xray>"]) + " (same file twice)", ["enhance", xray, xray, "-o", out], "ok",
        enhanced_check(out, [f"{stem}_balanced.png"]))
    out = work / "enh-16"
    cli(cmd(["enhance", "<16-bit PNG>"]), ["enhance", images["png16"], "-o", out], "ok",
        enhanced_check(out, [f"{images['png16'].stem}_balanced.png"]))
    out = work / "enh-rgba"
    cli(cmd(["enhance", "<RGBA PNG>"]), ["enhance", images["rgba"], "-o", out], "ok",
        enhanced_check(out, [f"{images['rgba'].stem}_balanced.png"]))
    out = work / "enh-1px"

    def one_pixel():  # a 1x1 image: a clear refusal or a 1x1 output are both fine; a traceback is not
        result = run_cli(["enhance", images["one_pixel"], "-o", out], work)
        line = last_line(result.err)
        if result.exception is not None or "Traceback (most recent call last)" in result.err:
            return "TRACEBACK", describe_exception(result.exception) if result.exception else line
        if result.code == 2 and line.startswith("cxr-diffusers enhance") and ": error: " in line:
            return "clear error", line
        if result.code == 0 and (out / f"{images['one_pixel'].stem}_balanced.png").is_file():
            return "ok", "a 1x1 output PNG"
        return "SILENT", f"exit {result.code}: {line or last_line(result.out)}"

    probe.case("cli", cmd(["enhance", "<1x1 PNG>"]), one_pixel)

    # ------------------------------------------------------------------ classify
    def classified(expected_label: str | None = None, gradcam: Path | None = None):
        def check(result: CliRun):
            rows = [line.split("\t") for line in result.out.strip().splitlines() if "\t" in line]
            if not rows:
                return f"no result line printed ({last_line(result.out)!r})", ""
            label = rows[-1][1]
            if expected_label is not None and label != expected_label:
                return f"labelled {label} {rows[-1][2] if len(rows[-1]) > 2 else ''}, not {expected_label}", ""
            if expected_label is None and label not in ("NORMAL", "PNEUMONIA"):
                return f"labelled {label}", ""
            if gradcam is not None:
                problem = image_problem(gradcam)
                if problem:
                    return problem, ""
            if label == "NOT_A_RADIOGRAPH":
                return None, f"{label}; stderr: {last_line(result.err)}"
            return None, f"{label} {rows[-1][2]}" + (f", heat map {gradcam.name}" if gradcam else "")

        return check

    cli(cmd(["classify", "<tmp>/work/missing.png"]), ["classify", work / "missing.png"])
    cli(cmd(["classify", "<text file renamed .png>"]), ["classify", images["text_png"]])
    cli(cmd(["classify", "<tmp>/work/images"]) + " (a directory)", ["classify", images["xray"].parent])
    cli(cmd(["classify", "<10x10 PNG>"]), ["classify", images["small"]])
    for colour in ("white", "black", "grey"):
        cli(cmd(["classify", f"<blank {colour} 128x128 PNG>"]), ["classify", images[colour]], "ok",
            classified("NOT_A_RADIOGRAPH"))
    cli(cmd(["classify", "<two-level checkerboard PNG>"]), ["classify", images["checker"]], "ok",
        classified("NOT_A_RADIOGRAPH"))
    cli(cmd(["classify", "<xray>", "--batch-size", "0"]), ["classify", xray, "--batch-size", "0"])
    cli(cmd(["classify", "<xray>", "--batch-size", "-1"]), ["classify", xray, "--batch-size", "-1"])
    cli(cmd(["classify", "<xray>", "--gradcam", "-o", "<tmp>/work/a-file"]), ["classify", xray, "--gradcam", "-o", blocker],
        protect=[blocker])
    cli(cmd(["classify", "<xray>", "--gradcam", "-o", "<tmp>/work/a-file/maps"]),
        ["classify", xray, "--gradcam", "-o", blocker / "maps"])
    cli(cmd(["classify", "a/x.png", "b/x.png", "--gradcam"]) + " (same stem)",
        ["classify", images["same_a"], images["same_b"], "--gradcam", "-o", work / "cam-refused"])
    cli(cmd(["classify", "<xray>", "--model", "<tmp>/work/no-classifier"]), ["classify", xray, "--model", work / "no-classifier"])
    cli(cmd(["classify", "<xray>", "--model", "<tiny pipeline>"]) + " (not a classifier)", ["classify", xray, "--model", tiny])
    cli(cmd(["classify", "<xray>"]), ["classify", xray], "ok", classified())
    cam_dir = work / "cam-ok"
    cli(cmd(["classify", "<xray>", "--gradcam", "-o", "<tmp>/work/cam-ok"]), ["classify", xray, "--gradcam", "-o", cam_dir],
        "ok", classified(gradcam=cam_dir / f"{xray.stem}_gradcam.png"))

    # ------------------------------------------------------------------ info
    cli(cmd(["info", "<tmp>/work/no-model"]), ["info", work / "no-model"])
    cli(cmd(["info", "<tmp>/work/a-file"]), ["info", blocker])
    cli(cmd(["info", "<tmp>/models/empty"]) + " (empty folder)", ["info", models / "empty"])
    cli(cmd(["info", "<tiny>/vae"]) + " (a VAE, not a pipeline)", ["info", models / "tiny" / "vae"])
    cli(cmd(["info", "<tiny>"]), ["info", tiny], "ok",
        lambda r: (None if "total" in r.out else "no totals printed", "components and parameter counts printed"))
    cli(cmd(["info", "<tiny>", "--json"]), ["info", tiny, "--json"], "ok",
        lambda r: (None if json.loads(r.out).get("total_parameters", 0) > 0 else "no parameters", "JSON with parameter counts"))

    # ------------------------------------------------------------------ data build / info
    root = images["xray"].parent  # 6 fixture X-rays
    n_images = len([p for p in root.iterdir() if p.suffix.lower() in (".png", ".jpeg", ".jpg")])
    build = ["data", "build", "--source", "folder", "--root", root]
    cli(cmd(["data", "build", "--source", "folder", "--root", "<imgs>", "--out", "<out>", "--max-samples", "0"]),
        [*build, "--out", work / "ds-refused", "--max-samples", "0"])
    cli(cmd(["data", "build", "--source", "folder", "--root", "<imgs>", "--out", "<out>", "--resolution", "7"]),
        [*build, "--out", work / "ds-refused", "--resolution", "7"])
    cli(cmd(["data", "build", "--source", "folder", "--root", "<imgs>", "--out", "<out>", "--num-proc", "0"]),
        [*build, "--out", work / "ds-refused", "--num-proc", "0"])
    cli(cmd(["data", "build", "--source", "folder", "--root", "<tmp>/work/missing-root", "--out", "<out>"]),
        ["data", "build", "--source", "folder", "--root", work / "missing-root", "--out", work / "ds-refused"])
    cli(cmd(["data", "build", "--source", "folder", "--root", "<empty folder>", "--out", "<out>"]),
        ["data", "build", "--source", "folder", "--root", mkdir(work / "empty-root"), "--out", work / "ds-refused"])
    cli(cmd(["data", "build", "--source", "folder", "--source", "folder", "--root", "<imgs>", "--out", "<out>"]),
        ["data", "build", "--source", "folder", "--source", "folder", "--root", root, "--out", work / "ds-refused"])
    cli(cmd(["data", "build", "--source", "pneumonia", "--root", "<flat folder of images>", "--out", "<out>"]),
        ["data", "build", "--source", "pneumonia", "--root", root, "--out", work / "ds-refused"], protect=[root])
    cli(cmd(["data", "build", "--source", "pneumoniamnist", "--root", "<text file named .npz>", "--out", "<out>"]),
        ["data", "build", "--source", "pneumoniamnist", "--root", write(work / "fake.npz", "not numpy"),
         "--out", work / "ds-refused"])
    full = mkdir(work / "ds-existing")
    write(full / "precious.txt", "keep me\n")
    write(full / "sub" / "notes.md", "also keep me\n")
    cli(cmd(["data", "build", *build[2:4], "<imgs>", "--out", "<non-empty folder>"]), [*build, "--out", full], protect=[full])
    cli(cmd(["data", "build", *build[2:4], "<imgs>", "--out", "<tmp>/work/a-file"]), [*build, "--out", blocker],
        protect=[blocker])
    cli(cmd(["data", "build", *build[2:4], "<imgs>", "--out", "<tmp>/work/a-file/ds"]), [*build, "--out", blocker / "ds"])
    cli(cmd(["data", "build", *build[2:4], "<imgs>", "--out", "<imgs>", "--overwrite"]) + " (out == root)",
        [*build, "--out", root, "--overwrite"], protect=[root])
    cli(cmd(["data", "build", *build[2:4], "<imgs>", "--out", "<parent of imgs>", "--overwrite"]),
        [*build, "--out", root.parent, "--overwrite"], protect=[root.parent])
    ds = work / "ds-ok"

    def built(result: CliRun):
        match = re.search(r"saved (\d+) images", result.out)
        if not match:
            return f"no 'saved N images' line ({last_line(result.out)!r})", ""
        if int(match.group(1)) != n_images:
            return f"saved {match.group(1)} images from a folder of {n_images}", ""
        if not (ds / "dataset_dict.json").is_file():
            return "no dataset_dict.json written", ""
        return None, f"saved {n_images} images (all of them), dataset_dict.json written"

    cli(cmd(["data", "build", *build[2:4], "<imgs>", "--out", "<tmp>/work/ds-ok", "--resolution", "32"]),
        [*build, "--out", ds, "--resolution", "32"], "ok", built, protect=[root])
    cli(cmd(["data", "info", "<ds>", "--examples", "-1"]), ["data", "info", ds, "--examples", "-1"])
    cli(cmd(["data", "info", "<ds>", "--max-images", "-5"]), ["data", "info", ds, "--max-images", "-5"])
    cli(cmd(["data", "info", "<tmp>/work/missing-ds"]), ["data", "info", work / "missing-ds"])
    cli(cmd(["data", "info", "<folder of text files>"]) + " (not a dataset)", ["data", "info", full])
    cli(cmd(["data", "info", "<imgs>"]) + " (images, no --source)", ["data", "info", root])
    cli(cmd(["data", "info", "<tmp>/work/a-file"]), ["data", "info", blocker])
    cli(cmd(["data", "info", "<ds>"]), ["data", "info", ds], "ok",
        lambda r: (None if f"{n_images} images" in r.out else f"counts wrong: {r.out.splitlines()[:1]}",
                   f"{n_images} images described"))
    cli(cmd(["data", "info", "<imgs>", "--source", "folder"]), ["data", "info", root, "--source", "folder"], "ok",
        lambda r: (None if f"{n_images} images" in r.out else f"counts wrong: {r.out.splitlines()[:1]}",
                   f"{n_images} images described"))

    # ------------------------------------------------------------------ evaluate
    unreadable = mkdir(work / "unreadable-real")
    write(unreadable / "a.png", b"not a png")
    write(unreadable / "b.jpeg", b"\xff\xd8\xff garbage")
    ev = ["evaluate", tiny, "--real", ds, "--split", "train", "--steps", "2", "-n", "1", "--no-train", "--no-progress",
          "--classifier", "none", "--features", "vae"]
    ev_label = ["evaluate", "<tiny>", "--real", "<ds>", "--split", "train", "..."]
    cli(cmd(["evaluate", "<tiny>"]) + " (no --real)", ["evaluate", tiny, "-o", work / "ev-refused"])
    cli(cmd(["evaluate", "<tiny>", "--real", "<tmp>/work/missing-real"]),
        ["evaluate", tiny, "--real", work / "missing-real", "-o", work / "ev-refused"])
    cli(cmd(["evaluate", "<tiny>", "--real", "<folder of unreadable images>"]),
        ["evaluate", tiny, "--real", unreadable, "-n", "1", "--steps", "2", "-o", work / "ev-refused"])
    cli(cmd(["evaluate", "<tmp>/work/no-model", "--real", "<ds>"]),
        ["evaluate", work / "no-model", "--real", ds, "-o", work / "ev-refused"])
    for extra in (["--num-images", "0"], ["--seed", "-1"], ["--features", "foo"], ["--steps", "0"], ["--batch-size", "0"],
                  ["--guidance", "inf"], ["--size", "33"], ["--max-real", "0"], ["--split", "nope"]):
        cli(cmd([*ev_label, *extra]), [*ev, "-o", work / "ev-refused", *extra])
    cli(cmd([*ev_label, "-o", "<tmp>/work/a-file"]), [*ev, "-o", blocker], protect=[blocker])
    cli(cmd([*ev_label, "-o", "<tmp>/work/a-file/eval"]), [*ev, "-o", blocker / "eval"])
    ev_out = work / "ev-ok"

    def evaluated(result: CliRun):
        path = ev_out / "metrics.json"
        if not path.is_file():
            return "no metrics.json written", ""
        text = path.read_text()
        metrics = json.loads(text)
        bad = [m for m in re.findall(r'"([\w.]+)": (NaN|Infinity|-Infinity)', text)]
        if bad:
            return f"metrics.json holds non-finite values: {', '.join(f'{k}={v}' for k, v in bad[:4])}", ""
        counts = metrics.get("counts", {})
        if counts.get("generated") != 2:
            return f"{counts.get('generated')} images generated for 2 requested", ""
        return None, f"metrics.json: {counts.get('generated')} generated vs {counts.get('real')} real, all finite"

    cli(cmd([*ev_label[:-1], "-n", "1", "--steps", "2", "--features", "vae", "--classifier", "none", "--no-train"]),
        [*ev, "-o", ev_out], "ok", evaluated)


# ================================================================================================ 4. Training scripts
RUNNER_SOURCE = r'''
import json, os, runpy, sys, time, traceback
preload = json.loads(sys.argv[1])
channel = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # nothing but replies on the channel
for path in preload:
    sys.argv = [path]
    try:
        runpy.run_path(path, run_name="__probe_preload__")
    except BaseException:
        pass  # the case itself will meet the same error
for line in sys.stdin:
    request = json.loads(line)
    sys.stdout.flush(); sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(out, 1); os.dup2(err, 2)
            null = os.open(os.devnull, os.O_RDONLY); os.dup2(null, 0)
            os.chdir(request["cwd"])
            sys.argv = list(request["argv"])
            sys.path[0] = os.path.dirname(os.path.abspath(sys.argv[0]))
            try:
                runpy.run_path(sys.argv[0], run_name="__main__")
                code = 0
            except SystemExit as exit_info:
                if exit_info.code is None:
                    code = 0
                elif isinstance(exit_info.code, int):
                    code = exit_info.code
                else:
                    print(exit_info.code, file=sys.stderr); code = 1
            except BaseException:
                traceback.print_exc(); code = 1
        finally:
            try:
                sys.stdout.flush(); sys.stderr.flush()
            finally:
                os._exit(code & 0xFF)
    deadline = time.time() + request["timeout"]
    timed_out = False
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, 9); _, status = os.waitpid(pid, 0); timed_out = True
            break
        time.sleep(0.05)
    channel.write(json.dumps({"rc": os.waitstatus_to_exitcode(status), "timed_out": timed_out}) + "\n")
    channel.flush()
'''


@dataclass
class ScriptRun:
    code: int
    out: str
    err: str
    timed_out: bool


class ScriptRunner:
    """Runs `python <script> args...` cases: forked from a pre-imported runner, or (isolated) as fresh processes."""

    def __init__(self, scripts: list[Path], isolated: bool, logs: Path) -> None:
        self.isolated = isolated
        self.logs = mkdir(logs)
        self.count = 0
        self.process = None
        if not isolated:
            self.process = subprocess.Popen([sys.executable, "-c", RUNNER_SOURCE, json.dumps([str(s) for s in scripts])],
                                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=str(TMP),
                                            stderr=open(self.logs / "runner.stderr", "w"))

    def run(self, script: Path, args: list, cwd: Path, timeout: float = SCRIPT_TIMEOUT) -> ScriptRun:
        self.count += 1
        out, err = self.logs / f"{self.count:03d}.stdout", self.logs / f"{self.count:03d}.stderr"
        argv = [str(script), *map(str, args)]
        if self.isolated:
            try:
                done = subprocess.run([sys.executable, *argv], cwd=str(cwd), capture_output=True, text=True,
                                      timeout=timeout, stdin=subprocess.DEVNULL)
                return ScriptRun(done.returncode, done.stdout, done.stderr, False)
            except subprocess.TimeoutExpired as expired:
                text = expired.stderr.decode() if isinstance(expired.stderr, bytes) else (expired.stderr or "")
                return ScriptRun(-9, "", text, True)
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError("the script runner is not running (see its stderr in the probe's log folder)")
        request = {"argv": argv, "cwd": str(cwd), "timeout": timeout, "stdout": str(out), "stderr": str(err)}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        reply = self.process.stdout.readline()
        if not reply:
            raise RuntimeError("the script runner died")
        answer = json.loads(reply)
        return ScriptRun(answer["rc"], out.read_text(errors="replace"), err.read_text(errors="replace"),
                         answer["timed_out"])

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()  # our own child, by its handle
                self.process.wait()


def scripts_group(probe: Probe, runner: ScriptRunner, models: Path, data: Path) -> None:
    work = mkdir(TMP / "script-cwd")  # relative defaults (runs/..., outputs/...) land here, never in the repo
    runs = mkdir(TMP / "runs")
    blocker = write(TMP / "script-blocker", "a regular file\n")
    vae = models / "tiny" / "vae"
    counter = {"n": 0}

    def fresh(name: str) -> Path:
        counter["n"] += 1
        return runs / f"{name}-{counter['n']:02d}"

    def label_of(name: str, args: list) -> str:
        text = " ".join(str(a) for a in args)
        text = text.replace(str(TINY_CONFIG), "tiny.json").replace(str(data), "<data>").replace(str(runs), "<runs>")
        text = re.sub(r"<runs>/[\w-]+?-\d\d\b", "<out>", text)
        return f"{name}.py {text}"

    def case(name: str, args: list, expect: str = "error", check: Callable[[ScriptRun], tuple[str | None, str]] | None = None,
             protect=(), timeout: float = SCRIPT_TIMEOUT, label: str | None = None):
        script = REPO / "train_scripts" / f"{name}.py"

        def run():
            result = runner.run(script, args, work, timeout)
            lines = output_lines(result.err)
            last = lines[-1] if lines else ""
            message = error_line(result.err, f"{name}.py: error:")
            if result.timed_out:
                return "SILENT", f"no error: still running after {timeout:.0f} s (went past argument checking); last: {last}"
            if "Traceback (most recent call last)" in result.err:
                return "TRACEBACK", f"exit {result.code}: {last}"
            if expect == "error" or result.code != 0:
                return exit_outcome(result, expect, message, last)
            problem, description = check(result) if check else (None, last_line(result.out))
            return ("SILENT", f"exit 0 but {problem}") if problem else ("ok", description)

        probe.case("scripts", label or label_of(name, args), run, protect=protect)

    def garbage_checkpoint(out: Path) -> Path:
        checkpoint = mkdir(out / "checkpoint-3")
        write(checkpoint / "junk.bin", os.urandom(256))
        write(checkpoint / "README.txt", "not a checkpoint\n")
        return checkpoint

    cfg = ["--config", TINY_CONFIG]
    # ------------------------------------------------------------------ train_vae, train_ddpm (same flags)
    for name in ("train_vae", "train_ddpm"):
        case(name, [*cfg, "--output_dir", fresh(name)], label=f"{name}.py --config tiny.json (no --train_data_dir)")
        case(name, [*cfg, "--train_data_dir", TMP / "missing-data", "--output_dir", fresh(name)])
        case(name, [*cfg, "--train_data_dir", blocker, "--output_dir", fresh(name)])
        case(name, [*cfg, "--train_data_dir", mkdir(TMP / "empty-data"), "--output_dir", fresh(name)])
        case(name, [*cfg, "--train_data_dir", data, "--output_dir", blocker / "out"], protect=[blocker])
        case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--pretrained_model_name_or_path",
                    TMP / "no" / "model"])
        case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--pretrained_model_name_or_path",
                    "someone/cxr-model"])
        case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--learning_rate", "-1"])
        case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--learning_rate", "nan"])
        if name == "train_vae":
            case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--crop_size", "36"])
            case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--resolution", "60"])
        else:
            case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--resolution", "33"])
        case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--resume_from_checkpoint",
                    TMP / "no-such-checkpoint"])
        out = mkdir(fresh(name))
        checkpoint = garbage_checkpoint(out)
        case(name, [*cfg, "--train_data_dir", data, "--output_dir", out, "--max_train_steps", "3",
                    "--resume_from_checkpoint", checkpoint], protect=[checkpoint],
             label=f"{name}.py --config tiny.json --train_data_dir <data> --output_dir <out> --max_train_steps 3 "
                   "--resume_from_checkpoint <out>/checkpoint-3 (junk files)")
        case(name, [*cfg, "--config", TMP / "missing.json", "--train_data_dir", data], label=f"{name}.py --config <tmp>/missing.json")

    # ------------------------------------------------------------------ train_ldm
    name = "train_ldm"
    with_vae = ["--pretrained_vae_model_name_or_path", vae]
    case(name, [*cfg, *with_vae, "--output_dir", fresh(name)],
         label="train_ldm.py --config tiny.json --pretrained_vae_model_name_or_path <vae> (no --train_data_dir)")
    case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name)],
         label="train_ldm.py --config tiny.json --train_data_dir <data> (no VAE, no pipeline)")
    for extra in (["--train_data_dir", TMP / "missing-data"], ["--train_data_dir", blocker]):
        case(name, [*cfg, *with_vae, *extra, "--output_dir", fresh(name)])
    case(name, [*cfg, *with_vae, "--train_data_dir", data, "--output_dir", blocker / "out"], protect=[blocker])
    for extra in (["--pretrained_vae_model_name_or_path", TMP / "no" / "vae"],
                  ["--pretrained_vae_model_name_or_path", "someone/cxr-vae"],
                  ["--pretrained_vae_model_name_or_path", models / "tiny"],
                  ["--pretrained_model_name_or_path", TMP / "no" / "pipeline"],
                  ["--pretrained_model_name_or_path", "someone/cxr-pipeline"]):
        case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), *extra])
    case(name, [*cfg, *with_vae, "--train_data_dir", data, "--output_dir", fresh(name), "--learning_rate", "-1"])
    case(name, [*cfg, *with_vae, "--train_data_dir", data, "--output_dir", fresh(name), "--prompt_dropout", "1.5"])
    case(name, [*cfg, *with_vae, "--train_data_dir", data, "--output_dir", fresh(name), "--resume_from_checkpoint",
                TMP / "no-such-checkpoint"])
    out = mkdir(fresh(name))
    checkpoint = garbage_checkpoint(out)
    case(name, [*cfg, *with_vae, "--train_data_dir", data, "--output_dir", out, "--max_train_steps", "3",
                "--resume_from_checkpoint", checkpoint], protect=[checkpoint],
         label="train_ldm.py --config tiny.json --pretrained_vae_model_name_or_path <vae> --train_data_dir <data> "
               "--output_dir <out> --max_train_steps 3 --resume_from_checkpoint <out>/checkpoint-3 (junk files)")
    case(name, [*cfg, *with_vae, "--train_data_dir", data, "--output_dir", fresh(name), "--resolution", "40",
                "--max_train_steps", "1", "--validation_steps", "100"],
         label="train_ldm.py --config tiny.json --pretrained_vae_model_name_or_path <vae> --train_data_dir <data> "
               "--resolution 40 (not a multiple of 16) --max_train_steps 1")

    # ------------------------------------------------------------------ train_classifier
    name = "train_classifier"
    case(name, [*cfg, "--output_dir", fresh(name)], label="train_classifier.py --config tiny.json (no --train_data_dir)")
    for extra in (["--train_data_dir", TMP / "missing-data"], ["--train_data_dir", blocker]):
        case(name, [*cfg, *extra, "--output_dir", fresh(name)])
    case(name, [*cfg, "--train_data_dir", data, "--output_dir", blocker / "out"], protect=[blocker])
    case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--pretrained_model_name_or_path",
                TMP / "no" / "classifier"])
    case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--pretrained_model_name_or_path",
                "someone/cxr-classifier"])
    case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--learning_rate", "-1"])
    case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--resume_from_checkpoint",
                TMP / "no-such-checkpoint"])
    out = mkdir(fresh(name))
    checkpoint = garbage_checkpoint(out)
    case(name, [*cfg, "--train_data_dir", data, "--output_dir", out, "--max_train_steps", "3",
                "--resume_from_checkpoint", checkpoint], protect=[checkpoint],
         label="train_classifier.py --config tiny.json --train_data_dir <data> --output_dir <out> --max_train_steps 3 "
               "--resume_from_checkpoint <out>/checkpoint-3 (junk files)")
    final = mkdir(TMP / "shipped-classifier")
    write(final / "config.json", '{"precious": true}\n')
    write(final / "model.safetensors", os.urandom(1024))
    case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--final_model_dir", final],
         protect=[final], label="train_classifier.py --config tiny.json --train_data_dir <data> --output_dir <out> "
                                "--final_model_dir <non-empty folder> (no --overwrite)")
    case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--final_model_dir", data, "--overwrite"],
         protect=[data], label="train_classifier.py --config tiny.json --train_data_dir <data> --output_dir <out> "
                               "--final_model_dir <data> --overwrite")
    case(name, [*cfg, "--train_data_dir", data, "--output_dir", fresh(name), "--final_model_dir", blocker / "model"],
         protect=[blocker])

    # ------------------------------------------------------------------ export_pipeline
    name = "export_pipeline"
    source_parent = mkdir(TMP / "export")
    source = source_parent / "pipeline"
    shutil.copytree(models / "tiny", source)
    write(source / "README.md", "# my trained pipeline\n")
    occupied = mkdir(TMP / "export-occupied")
    write(occupied / "keep.txt", "keep me\n")

    def lbl(*parts) -> str:
        return "export_pipeline.py " + " ".join(parts)

    case(name, ["--pipeline", TMP / "no-pipeline", "--output_dir", fresh(name)],
         label=lbl("--pipeline <tmp>/no-pipeline --output_dir <out>"))
    case(name, ["--pipeline", "someone/cxr-pipeline", "--output_dir", fresh(name)],
         label=lbl("--pipeline someone/cxr-pipeline --output_dir <out>"))
    case(name, ["--pipeline", blocker, "--output_dir", fresh(name)], label=lbl("--pipeline <a file> --output_dir <out>"))
    case(name, ["--pipeline", vae, "--output_dir", fresh(name)], label=lbl("--pipeline <a VAE folder> --output_dir <out>"))
    case(name, ["--pipeline", source, "--output_dir", source], protect=[source],
         label=lbl("--pipeline <p> --output_dir <p>"))
    case(name, ["--pipeline", source, "--output_dir", source, "--overwrite"], protect=[source],
         label=lbl("--pipeline <p> --output_dir <p> --overwrite"))
    case(name, ["--pipeline", f"{source}/", "--output_dir", f"{source_parent}/./pipeline", "--overwrite"], protect=[source],
         label=lbl("--pipeline <p>/ --output_dir <parent>/./pipeline --overwrite (same folder, spelled differently)"))
    case(name, ["--pipeline", source, "--output_dir", source_parent, "--overwrite"], protect=[source_parent],
         label=lbl("--pipeline <parent>/pipeline --output_dir <parent> --overwrite"))
    case(name, ["--pipeline", source, "--output_dir", occupied], protect=[occupied],
         label=lbl("--pipeline <p> --output_dir <non-empty folder> (no --overwrite)"))
    case(name, ["--pipeline", source, "--output_dir", blocker / "out"], protect=[blocker],
         label=lbl("--pipeline <p> --output_dir <a file>/out"))
    case(name, ["--pipeline", source, "--output_dir", blocker], protect=[blocker],
         label=lbl("--pipeline <p> --output_dir <a file>"))
    case(name, ["--pipeline", source, "--vae", TMP / "no-vae", "--output_dir", fresh(name)],
         label=lbl("--pipeline <p> --vae <tmp>/no-vae --output_dir <out>"))
    case(name, ["--pipeline", source, "--vae", source / "vae", "--output_dir", source / "vae", "--overwrite"],
         protect=[source], label=lbl("--pipeline <p> --vae <p>/vae --output_dir <p>/vae --overwrite"))
    case(name, ["--pipeline", source, "--output_dir", fresh(name), "--dtype", "fp8"],
         label=lbl("--pipeline <p> --output_dir <out> --dtype fp8"))
    case(name, ["--pipeline", source], label=lbl("--pipeline <p> (no --output_dir)"))
    exported = fresh(name)

    def export_ok(result: ScriptRun):
        from cxr_diffusers import CXRPipeline

        if not (exported / "model_index.json").is_file():
            return "no model_index.json in the export", ""
        if not list(exported.rglob("*.safetensors")):
            return "no safetensors in the export", ""
        if list(exported.rglob("*.bin")):
            return "pickled .bin files in the export", ""
        if not (exported / "README.md").is_file():
            return "README.md not copied", ""
        CXRPipeline.from_pretrained(exported)
        return None, "exported fp16 safetensors + README.md; loads with from_pretrained"

    case(name, ["--pipeline", source, "--output_dir", exported], "ok", export_ok, protect=[source],
         label=lbl("--pipeline <p> --output_dir <new folder>"))

    # ------------------------------------------------------------------ evaluate_vae
    name = "evaluate_vae"

    def lbv(*parts) -> str:
        return "evaluate_vae.py " + " ".join(parts)

    case(name, ["--vae", TMP / "no-vae", "--train_data_dir", data, "--output_dir", fresh(name)],
         label=lbv("--vae <tmp>/no-vae --train_data_dir <data>"))
    case(name, ["--vae", "someone/cxr-vae", "--train_data_dir", data, "--output_dir", fresh(name)],
         label=lbv("--vae someone/cxr-vae --train_data_dir <data>"))
    case(name, ["--vae", blocker, "--train_data_dir", data, "--output_dir", fresh(name)],
         label=lbv("--vae <a file> --train_data_dir <data>"))
    case(name, ["--vae", vae, "--output_dir", fresh(name)], label=lbv("--vae <vae> (no --train_data_dir)"))
    case(name, ["--vae", vae, "--train_data_dir", TMP / "missing-data", "--output_dir", fresh(name)],
         label=lbv("--vae <vae> --train_data_dir <tmp>/missing-data"))
    case(name, ["--vae", vae, "--train_data_dir", blocker, "--output_dir", fresh(name)],
         label=lbv("--vae <vae> --train_data_dir <a file>"))
    case(name, ["--vae", vae, "--train_data_dir", data, "--split", "validation", "--num_images", "2",
                "--output_dir", blocker / "out"], protect=[blocker],
         label=lbv("--vae <vae> --train_data_dir <data> --split validation --output_dir <a file>/out"))
    case(name, ["--vae", vae, "--train_data_dir", data, "--num_images", "0", "--output_dir", fresh(name)],
         label=lbv("--vae <vae> --train_data_dir <data> --num_images 0"))
    case(name, ["--vae", vae, "--train_data_dir", data, "--split", "nope", "--output_dir", fresh(name)],
         label=lbv("--vae <vae> --train_data_dir <data> --split nope"))
    case(name, ["--vae", vae, "--train_data_dir", data, "--split", "validation", "--resolution", "30",
                "--num_images", "2", "--output_dir", fresh(name)],
         label=lbv("--vae <vae> --train_data_dir <data> --split validation --resolution 30 (not a multiple of 8)"))
    case(name, ["--vae", vae, "--train_data_dir", data, "--split", "validation", "--resolution", "-64",
                "--num_images", "2", "--output_dir", fresh(name)],
         label=lbv("--vae <vae> --train_data_dir <data> --split validation --resolution -64"))
    vae_out = fresh(name)

    def vae_ok(result: ScriptRun):
        path = vae_out / "vae_metrics.json"
        if not path.is_file():
            return "no vae_metrics.json", ""
        metrics = json.loads(path.read_text())
        values = [metrics.get("psnr"), metrics.get("ssim")]
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            return f"non-finite metrics {values}", ""
        if image_problem(vae_out / "reconstructions.png"):
            return image_problem(vae_out / "reconstructions.png"), ""
        return None, f"vae_metrics.json (finite PSNR/SSIM on {metrics.get('num_images')} images), reconstructions.png"

    case(name, ["--vae", models / "tiny", "--train_data_dir", data, "--split", "validation", "--num_images", "2",
                "--resolution", "64", "--output_dir", vae_out], "ok", vae_ok,
         label=lbv("--vae <pipeline folder> --train_data_dir <data> --split validation --num_images 2 --resolution 64"))


# ================================================================================================ fixtures
def make_images(folder: Path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    xrays = mkdir(folder / "xrays")
    for path in sorted((FIXTURES / "kermany").rglob("*.jpeg")) + sorted((FIXTURES / "nih").glob("*.png")):
        shutil.copy(path, xrays / path.name)
    first = sorted(xrays.iterdir())[0]
    other = mkdir(folder / "odd")
    images = {"xray": first}
    images["text_png"] = write(other / "notes.png", "these are my notes, not an image\n")
    images["empty_png"] = write(other / "empty.png", b"")
    png = io.BytesIO()
    with Image.open(first) as im:
        im.convert("L").save(png, format="PNG")
    images["truncated_png"] = write(other / "truncated.png", png.getvalue()[: len(png.getvalue()) // 2])
    images["same_a"] = write(mkdir(folder / "a") / "x.png", png.getvalue())
    images["same_b"] = write(mkdir(folder / "b") / "x.png", png.getvalue())
    ramp = (np.linspace(0, 65535, 128 * 128).reshape(128, 128)).astype(np.uint16)
    images["png16"] = other / "sixteen.png"
    Image.fromarray(ramp).save(images["png16"])
    with Image.open(first) as im:
        im.convert("RGBA").save(other / "rgba.png")
    images["rgba"] = other / "rgba.png"
    images["float_tiff"] = other / "float.tiff"
    Image.fromarray(np.random.default_rng(0).random((64, 64), dtype=np.float32)).save(images["float_tiff"])
    images["one_pixel"] = other / "one.png"
    Image.new("L", (1, 1), 128).save(images["one_pixel"])
    images["small"] = other / "small.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 10), dtype=np.uint8)).save(images["small"])
    for colour, value in (("white", 255), ("black", 0), ("grey", 128)):
        images[colour] = other / f"{colour}.png"
        Image.new("L", (128, 128), value).save(images[colour])
    images["checker"] = other / "checker.png"
    Image.fromarray((np.indices((128, 128)).sum(0) % 2 * 255).astype(np.uint8)).save(images["checker"])
    return images


def make_training_data(folder: Path) -> Path:
    """A saved DatasetDict of the shipped fixture X-rays (train 8 / validation 4 / test 4), like the tests build."""
    import datasets

    files = sorted(str(p) for p in (FIXTURES / "kermany").rglob("*.jpeg"))

    def split(n: int):
        chosen = (files * n)[:n]
        rows = {"image": chosen,
                "prompt": ["Pediatric chest radiograph. Findings: pneumonia." if "PNEUMONIA" in f else
                           "Pediatric chest radiograph. No acute cardiopulmonary abnormality." for f in chosen],
                "labels": [["pneumonia"] if "PNEUMONIA" in f else [] for f in chosen],
                "source": ["kermany"] * n,
                "patient_id": [f"p{i}" for i in range(n)]}
        return datasets.Dataset.from_dict(rows).cast_column("image", datasets.Image(mode="L"))

    datasets.disable_progress_bars()
    datasets.DatasetDict({"train": split(8), "validation": split(4), "test": split(4)}).save_to_disk(str(folder))
    return folder


# ================================================================================================ main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", default="api,loading,cli,scripts",
                        help="comma-separated subset of api, loading, cli, scripts (default: all)")
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="report path (default docs/reliability.md)")
    parser.add_argument("--isolated", action="store_true",
                        help="start a fresh interpreter for every training-script case (slower, ~9 s each)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (printed at the end)")
    args = parser.parse_args(argv)
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = sorted(set(groups) - {"api", "loading", "cli", "scripts"})
    if unknown:
        parser.error(f"unknown groups {unknown}")
    output = Path(args.output)
    if set(groups) != {"api", "loading", "cli", "scripts"} and output.resolve() == DEFAULT_OUTPUT.resolve():
        parser.error("a subset of --groups needs --output elsewhere (docs/reliability.md is the full report)")

    start = time.time()
    probe = Probe()
    runner = None
    print(f"probe folder: {TMP}", flush=True)
    try:
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        import torch

        import cxr_diffusers
        from cxr_diffusers import CXRPipeline

        torch.manual_seed(0)
        pipe = CXRPipeline(**cxr_diffusers.create_components("tiny"))
        pipe.set_progress_bar_config(disable=True)
        models = mkdir(TMP / "models")
        pipe.save_pretrained(models / "tiny", safe_serialization=True)
        work = mkdir(TMP / "work")
        images = make_images(work / "images")
        data = make_training_data(TMP / "data" / "xrays")

        if "scripts" in groups:  # start the runner first: its imports overlap with the in-process groups
            scripts = [REPO / "train_scripts" / f"{n}.py" for n in
                       ("train_vae", "train_ldm", "train_ddpm", "train_classifier", "export_pipeline", "evaluate_vae")]
            runner = ScriptRunner(scripts, args.isolated, TMP / "script-logs")
        if "api" in groups:
            api_group(probe, pipe)
        if "loading" in groups:
            loading_group(probe, pipe, models)
        if "cli" in groups:
            cli_group(probe, work, models, images)
        if "scripts" in groups:
            scripts_group(probe, runner, models, data)
    finally:
        if runner is not None:
            runner.close()
    elapsed = time.time() - start
    mode = ("one fresh `[sys.executable, script, ...]` process per case (`--isolated`)" if args.isolated else
            "each case is a child process forked from one interpreter that has imported the six scripts once, with "
            "the case's own argv, cwd, exit code and stderr (`--isolated` starts a fresh interpreter per case instead)")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(probe.markdown(elapsed, mode) + "\n")

    counts = probe.counts()
    print(f"\n{len(probe.results)} inputs in {elapsed:.0f} s: " + ", ".join(f"{counts[o]} {o}" for o in OUTCOMES))
    bad = [r for r in probe.results if r.outcome in ("TRACEBACK", "SILENT", "DATA LOSS")]
    if bad:
        print("\nTRACEBACK / SILENT / DATA LOSS:")
        for r in bad:
            print(f"- [{r.group}] {r.outcome}: {r.input}\n    {r.detail}")
    print(f"\nwrote {output}")
    if args.keep:
        print(f"kept {TMP}")
    else:
        shutil.rmtree(TMP, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
