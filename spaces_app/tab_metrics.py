"""Metrics dashboard tab: what `cxr-diffusers evaluate` (metrics.json + PNG plots) and the training runs
(metrics.jsonl, loss.png, samples/*.png) wrote, and the benchmark results (benchmarks/results/*.json), as plots and
tables. Folders are scanned under `--runs-dir` (default: runs/, outputs/, benchmarks/results/, pretrained/)."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd
from PIL import Image
from state import AppState
from ui import figure, fmt, message_figure, save_png, thumbnail

SKIP_DIRS = {".git", ".venv", "node_modules", "__pycache__", "logs", "samples", "vae", "unet", "text_encoder",
             "tokenizer", "scheduler", "vae_ema", "unet_ema"}
MAX_DEPTH = 4
MAX_PLOTS = 12
MAX_SAMPLES = 6
#: Validation scores (higher is better) get their own panel, apart from the losses.
QUALITY_KEYS = re.compile(r"psnr|ssim|acc|auroc|auc|f1|precision|recall|sensitivity|specificity|fid|kid|frechet")
NON_CURVE_KEYS = {"step", "epoch", "time", "elapsed", "seconds", "global_step"}


@dataclass
class RunIndex:
    evaluations: list[Path] = field(default_factory=list)  # folders with metrics.json
    trainings: list[Path] = field(default_factory=list)  # folders with metrics.jsonl
    benchmarks: list[Path] = field(default_factory=list)  # benchmark JSON files


@dataclass
class MetricsTab:
    eval_run: gr.Dropdown
    train_run: gr.Dropdown


def scan(roots: list[str]) -> RunIndex:
    index = RunIndex()
    seen: set[Path] = set()
    for root in roots:
        root_path = Path(root)
        if not root_path.is_dir():
            continue
        base_depth = len(root_path.resolve().parts)
        for folder, dirs, files in os.walk(root_path, followlinks=False):
            here = Path(folder).resolve()
            depth = len(here.parts) - base_depth
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith(("checkpoint-", "."))
                             and depth < MAX_DEPTH)
            if here in seen:
                continue
            seen.add(here)
            if "metrics.json" in files:
                index.evaluations.append(here)
            if "metrics.jsonl" in files:
                index.trainings.append(here)
            if here.name == "results" and (here.parent.name == "benchmarks" or here == root_path.resolve()):
                index.benchmarks += sorted(here / f for f in files if f.endswith(".json"))
    def key(path: Path) -> float:
        return path.stat().st_mtime if path.exists() else 0

    index.evaluations.sort(key=key, reverse=True)
    index.trainings.sort(key=key, reverse=True)
    return index


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def flatten(value, prefix: str = "") -> dict:
    """Nested dicts -> {"a.b": scalar}; short lists of scalars become text, longer lists their length."""
    out = {}
    if isinstance(value, dict):
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
    elif isinstance(value, list):
        if all(isinstance(v, (int, float, str, bool)) or v is None for v in value) and len(value) <= 8:
            out[prefix[:-1]] = ", ".join(str(fmt(v)) for v in value)
        else:
            out[f"{prefix}count"] = len(value)
    else:
        out[prefix[:-1]] = fmt(value) if not isinstance(value, bool) else value
    return out


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise gr.Error(f"{path.name} could not be read as JSON ({type(err).__name__}).") from None


def benchmark_table(files: list[Path]) -> pd.DataFrame:
    rows = []
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            rows.append({"file": path.name, "error": "unreadable JSON"})
            continue
        entries = None
        if isinstance(data, list):
            entries = data
        elif isinstance(data, dict):
            for key in ("results", "runs", "rows", "benchmarks"):
                if isinstance(data.get(key), list) and data[key] and isinstance(data[key][0], dict):
                    common = {k: v for k, v in data.items() if k != key and not isinstance(v, (dict, list))}
                    entries = [{**common, **e} for e in data[key]]
                    break
        for entry in entries if entries is not None else [data]:
            flat = flatten(entry) if isinstance(entry, dict) else {"value": str(entry)}
            rows.append({"file": path.name, **{k: v for k, v in flat.items() if not isinstance(v, (dict, list))}})
    frame = pd.DataFrame(rows)
    if len(frame.columns) > 24:
        frame = frame[list(frame.columns[:24])]
    return frame.astype(object).where(frame.notna(), None) if len(frame) else pd.DataFrame(columns=["file"])


def benchmark_summary(files: list[Path], limit: int = 400) -> pd.DataFrame:
    """Everything but the row lists of the benchmark files (goals, quality, FLOP/s, environment), one value a line."""
    rows = []
    for path in files:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict):
            continue
        rest = {k: v for k, v in data.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))}
        rows += [[path.name, key, str(value)] for key, value in flatten(rest).items()]
    return pd.DataFrame(rows[:limit], columns=["file", "key", "value"])


def _images(state: AppState, folder: Path, patterns=("*.png",), limit: int = MAX_PLOTS, newest: bool = False):
    files = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()},
                   key=(lambda p: p.stat().st_mtime) if newest else (lambda p: p.name), reverse=newest)
    out = []
    target = state.new_output_dir() if files else None
    for i, path in enumerate(files[:limit]):
        try:
            with Image.open(path) as image:
                image.load()
                copy = thumbnail(image.convert("RGB") if image.mode not in ("L", "RGB") else image.copy(), 900)
                out.append((save_png(copy, target, f"{i}_{path.stem}"), path.name))
        except (OSError, ValueError):
            continue
    return out


def read_jsonl(path: Path) -> pd.DataFrame:
    records = []
    try:
        with path.open() as handle:
            for line in handle:
                line = line.strip()
                if not line:
                    continue
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a line being written right now
                if isinstance(record, dict):
                    records.append(record)
    except OSError as err:
        raise gr.Error(f"{path} could not be read ({type(err).__name__}).") from None
    return pd.DataFrame(records)


def curves_figure(frame: pd.DataFrame, title: str):
    if frame.empty:
        return message_figure("metrics.jsonl is empty so far.")
    x_key = "step" if "step" in frame else None
    x = frame[x_key] if x_key else pd.Series(range(len(frame)))
    numeric = [c for c in frame.columns if c not in NON_CURVE_KEYS and pd.api.types.is_numeric_dtype(frame[c])]
    lr_keys = [c for c in numeric if c == "lr" or c.startswith("lr") or "learning_rate" in c]
    score_keys = [c for c in numeric if c not in lr_keys and "loss" not in c and QUALITY_KEYS.search(c)]
    curve_keys = [c for c in numeric if c not in lr_keys and c not in score_keys]
    panels = [k for k in (curve_keys, score_keys, lr_keys) if k]
    if not panels:
        return message_figure("No numeric series in metrics.jsonl.")
    fig = figure(7.0, 2.6 * len(panels) + 0.4)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, keys in zip(axes, panels):
        for key in keys:
            values = frame[key]
            mask = values.notna()
            if not mask.any():
                continue
            xs, ys = x[mask].to_numpy(), values[mask].to_numpy(dtype=float)
            window = max(1, len(ys) // 50)
            if window > 1:
                import numpy as np

                ys = np.convolve(ys, np.ones(window) / window, mode="valid")
                xs = xs[window - 1 :]
            ax.plot(xs, ys, label=key, linewidth=1.4, marker="o" if len(ys) < 25 else None, markersize=3)
        if keys is curve_keys and all((frame[k].dropna() > 0).all() for k in keys):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(frameon=False, fontsize=8, ncol=min(4, len(keys)))
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].set_title(title, fontsize=11)
    axes[-1].set_xlabel(x_key or "record")
    return fig


def make_fns(state: AppState):
    def runs() -> RunIndex:
        return scan(state.config.runs_dirs)

    def checked(run: str, candidates: list[Path], what: str) -> Path:
        if not run:
            raise gr.Error(f"Choose a {what} first.")
        path = Path(run).resolve()
        if path not in candidates:
            raise gr.Error(f"{run!r} is not a known {what}; press Refresh and choose one from the list.")
        return path

    def listing():
        index = runs()
        eval_choices = [(_display(p), str(p)) for p in index.evaluations]
        train_choices = [(_display(p), str(p)) for p in index.trainings]
        note = (f"Found {len(index.evaluations)} evaluation run(s), {len(index.trainings)} training run(s) and "
                f"{len(index.benchmarks)} benchmark file(s) under: "
                + ", ".join(f"`{d}`" for d in state.config.runs_dirs))
        return (eval_choices, train_choices, benchmark_table(index.benchmarks), benchmark_summary(index.benchmarks),
                note)

    def scan_runs():
        """The evaluation runs, training runs and benchmark results found under the run folders."""
        eval_choices, train_choices, bench, summary, note = listing()
        return (gr.Dropdown(choices=eval_choices, value=eval_choices[0][1] if eval_choices else None),
                gr.Dropdown(choices=train_choices, value=train_choices[0][1] if train_choices else None),
                bench, summary, note)

    def show_evaluation(run):
        """An evaluation run: its metrics.json as a table and its PNG plots."""
        folder = checked(run, runs().evaluations, "evaluation run")
        data = _read_json(folder / "metrics.json")
        flat = flatten(data) if isinstance(data, dict) else {"value": str(data)}
        table = pd.DataFrame([[k, v if not isinstance(v, float) or math.isfinite(v) else str(v)]
                              for k, v in flat.items()], columns=["metric", "value"])
        table["value"] = table["value"].astype(str)
        plots = _images(state, folder)
        note = f"`{_display(folder)}`: {len(flat)} values, {len(plots)} plot(s)."
        return table, plots, note

    def show_training(run):
        """A training run: loss and learning-rate curves from metrics.jsonl, its latest values, loss.png and samples."""
        folder = checked(run, runs().trainings, "training run")
        frame = read_jsonl(folder / "metrics.jsonl")
        plot = curves_figure(frame, folder.name)
        if frame.empty:
            latest = pd.DataFrame(columns=["metric", "value"])
        else:
            last = frame.ffill().iloc[-1]
            def show(v):
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    return str(int(v)) if float(v).is_integer() and abs(v) < 1e15 else str(fmt(float(v), 6))
                return str(v)

            latest = pd.DataFrame([[k, show(v)] for k, v in last.items()], columns=["metric", "value"])
        images = _images(state, folder, ("loss.png",)) + _images(state, folder / "samples", ("*.png",), MAX_SAMPLES,
                                                                  newest=True)
        steps = int(frame["step"].max()) if "step" in frame and not frame.empty else len(frame)
        note = f"`{_display(folder)}`: {len(frame)} records up to step {steps:,}."
        return plot, latest, images, note

    return listing, scan_runs, show_evaluation, show_training


def build(state: AppState) -> MetricsTab:
    listing, scan_runs, show_evaluation, show_training = make_fns(state)
    eval_choices, train_choices, bench, bench_summary, note_text = listing()
    with gr.Row(equal_height=True):
        note = gr.Markdown(note_text)
        refresh = gr.Button("Refresh", size="sm", scale=0, min_width=100)
    with gr.Tabs():
        with gr.Tab("Training runs"):
            train_run = gr.Dropdown(train_choices, value=None, label="Training run (metrics.jsonl)",
                                    allow_custom_value=True, elem_id="train-run")
            train_note = gr.Markdown()
            with gr.Row(equal_height=False):
                with gr.Column(scale=3):
                    curves = gr.Plot(label="Loss and learning-rate curves", format="png", show_label=False,
                                     elem_id="train-curves")
                with gr.Column(scale=2):
                    latest = gr.Dataframe(headers=["metric", "value"], label="Latest values", interactive=False,
                                          max_height=360)
            train_images = gr.Gallery(label="loss.png and the newest validation samples", format="png", columns=4,
                                      height="auto", object_fit="contain", preview=False)
        with gr.Tab("Evaluations"):
            eval_run = gr.Dropdown(eval_choices, value=None, label="Evaluation run (metrics.json)",
                                   allow_custom_value=True, elem_id="eval-run")
            eval_note = gr.Markdown(elem_id="eval-note")
            with gr.Row(equal_height=False):
                with gr.Column(scale=2):
                    eval_table = gr.Dataframe(headers=["metric", "value"], label="metrics.json", interactive=False,
                                              max_height=520, wrap=True, elem_id="eval-table")
                with gr.Column(scale=3):
                    eval_plots = gr.Gallery(label="Plots written by cxr-diffusers evaluate", format="png", columns=2,
                                            height="auto", object_fit="contain", preview=False)
        with gr.Tab("Benchmarks"):
            bench_table = gr.Dataframe(bench, label="benchmarks/results/*.json: measured rows", interactive=False,
                                       wrap=True)
            bench_summary_table = gr.Dataframe(bench_summary, label="Summaries (goals, quality, FLOP/s, environment)",
                                               interactive=False, wrap=True, max_height=420)
    refresh.click(scan_runs, None, [eval_run, train_run, bench_table, bench_summary_table, note],
                  api_name="metrics_scan",
                  concurrency_id="cpu_light")
    eval_run.input(show_evaluation, eval_run, [eval_table, eval_plots, eval_note], api_name="metrics_evaluation",
                   concurrency_id="cpu_light", trigger_mode="always_last")
    train_run.input(show_training, train_run, [curves, latest, train_images, train_note], api_name="metrics_training",
                    concurrency_id="cpu_light", trigger_mode="always_last")
    return MetricsTab(eval_run, train_run)
