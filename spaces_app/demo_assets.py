"""Small stand-in assets for tests and screenshots: a tiny random pipeline, a tiny random classifier, a saved dataset
of the real fixture X-rays (tests/fixtures) and a runs folder with a training run, an evaluation and a benchmark.

    python spaces_app/demo_assets.py /tmp/cxr-app-assets      # prints the app arguments that use them
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

APP_DIR = Path(__file__).resolve().parent
REPO_ROOT = APP_DIR.parent
FIXTURES = REPO_ROOT / "tests" / "fixtures"


def tiny_pipeline(folder: Path) -> Path:
    """A random-init `tiny` CXRPipeline (64x64) saved to `folder`."""
    import torch

    from cxr_diffusers import CXRPipeline, create_components

    torch.manual_seed(0)
    CXRPipeline(**create_components("tiny")).save_pretrained(folder)
    return folder


def tiny_classifier(folder: Path, resolution: int = 64) -> Path:
    """A random-init, very small NORMAL/PNEUMONIA ResNet with the project's image processor."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    from cxr_diffusers.classification.model import (
        ID2LABEL,
        LABEL2ID,
        make_image_processor,
        save_classifier,
    )

    torch.manual_seed(0)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 32], depths=[1, 1, 1, 1], layer_type="basic",
                          num_labels=2, id2label=dict(ID2LABEL), label2id=dict(LABEL2ID))
    save_classifier(ResNetForImageClassification(config).eval(), make_image_processor(resolution), folder)
    return folder


def fixture_dataset(folder: Path) -> Path:
    """The real fixture X-rays (Kermany + NIH samples) as a saved DatasetDict in the common schema."""
    import datasets

    from cxr_diffusers.data.schema import common_features

    rows = []
    for path in sorted((FIXTURES / "kermany").rglob("*.jpeg")):
        pneumonia = path.parent.name == "PNEUMONIA"
        rows.append({"image": str(path), "labels": ["pneumonia"] if pneumonia else [], "view": "AP", "sex": "",
                     "age": None, "patient_id": path.stem.split("_")[0], "source": "kermany",
                     "prompt": "AP chest radiograph of a child. " + ("Findings: pneumonia." if pneumonia else
                                                                      "No acute cardiopulmonary abnormality.")})
    for path in sorted((FIXTURES / "nih").glob("*.png")):
        pneumonia = path.name.startswith("Pn")
        rows.append({"image": str(path), "labels": ["pneumonia"] if pneumonia else [], "view": "PA", "sex": "",
                     "age": None, "patient_id": path.stem.split("_")[1], "source": "nih_subset",
                     "prompt": "PA chest radiograph of an adult. " + ("Findings: pneumonia." if pneumonia else
                                                                       "No acute cardiopulmonary abnormality.")})
    if len(rows) < 3:
        raise FileNotFoundError(f"The fixture X-rays are missing under {FIXTURES}.")
    features = common_features()
    columns = {name: [r[name] for r in rows] for name in features}
    full = datasets.Dataset.from_dict(columns, features=features)
    test = [0, len(rows) - 1]
    dsd = datasets.DatasetDict({
        "train": full.select([i for i in range(len(rows)) if i not in test]),
        "test": full.select(test),
    })
    dsd.save_to_disk(str(folder))
    return folder


def runs_folder(folder: Path) -> Path:
    """A training run (metrics.jsonl, loss.png, samples/), an evaluation (metrics.json + plots) and a benchmark."""
    from matplotlib.figure import Figure
    from PIL import Image

    train = folder / "ldm-tiny"
    (train / "samples").mkdir(parents=True, exist_ok=True)
    lines = []
    for step in range(10, 410, 10):
        loss = 0.05 + 0.9 * math.exp(-step / 80) + 0.01 * math.sin(step)
        lines.append(json.dumps({"step": step, "loss": loss, "mse": loss * 0.9, "lr": 1e-4 * min(1, step / 100)}))
    (train / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    for name, title in (("loss.png", "loss"), ):
        fig = Figure(figsize=(5, 3))
        ax = fig.add_subplot()
        ax.plot(range(40), [math.exp(-i / 8) for i in range(40)])
        ax.set_title(title)
        fig.savefig(train / name)
    for i, path in enumerate(sorted((FIXTURES / "nih").glob("*.png"))[:2]):
        Image.open(path).convert("L").resize((128, 128)).save(train / "samples" / f"step_{(i + 1) * 200:06d}.png")

    evaluation = folder / "eval-tiny"
    evaluation.mkdir(parents=True, exist_ok=True)
    metrics = {
        "model": "tiny", "num_generated": 16, "num_real": 16,
        "distribution": {"vae": {"frechet_distance": 12.5, "kid_mean": 0.031, "kid_std": 0.004, "precision": 0.62,
                                 "recall": 0.48}},
        "diversity": {"ms_ssim_mean": 0.21},
        "memorization": {"ssim": {"max": 0.41, "mean": 0.22, "near_copies": 0}},
        "image_quality": {"generated": {"entropy": 6.9, "sharpness": 0.002}, "real": {"entropy": 7.2}},
    }
    (evaluation / "metrics.json").write_text(json.dumps(metrics, indent=2))
    for name in ("intensity_histogram.png", "nearest_neighbours.png"):
        fig = Figure(figsize=(4, 3))
        ax = fig.add_subplot()
        ax.hist([i % 17 for i in range(300)], bins=17)
        ax.set_title(name[:-4].replace("_", " "))
        fig.savefig(evaluation / name)

    bench = folder / "benchmarks" / "results"
    bench.mkdir(parents=True, exist_ok=True)
    (bench / "bench_sampling.json").write_text(json.dumps({
        "benchmark": "bench_sampling", "device": "cpu", "rows": [
            {"recipe": "default", "size": 64, "batch": 8, "steps": 25, "ms_per_image": 400.0, "speedup_vs_seed": 5.2},
            {"recipe": "seed_ddim50", "size": 64, "batch": 8, "steps": 50, "ms_per_image": 2100.0,
             "speedup_vs_seed": 1.0},
        ], "goals": {"default": {"s_per_image": 0.4, "pass": True}}, "process_peak_rss_mb": 812.5}))
    return folder


def build_all(root: Path) -> dict[str, Path]:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    return {
        "model": tiny_pipeline(root / "tiny-model"),
        "classifier": tiny_classifier(root / "tiny-classifier"),
        "data": fixture_dataset(root / "data" / "fixture-xrays").parent,
        "runs": runs_folder(root / "runs"),
    }


def app_args(assets: dict[str, Path], shared_data: str | Path | None = None) -> list[str]:
    """Command-line arguments of `app.py` that use the assets (no shared data unless given)."""
    return ["--model", str(assets["model"]), "--classifier", str(assets["classifier"]),
            "--data-dir", str(assets["data"]), "--runs-dir", str(assets["runs"]),
            "--shared-data", str(shared_data or Path(assets["runs"]).parent / "no-shared-data")]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningApp:
    """An app served in this process (tests, screenshots): `url`, `demo`, `state`, `args`, `assets`."""

    def __init__(self, demo, state, args, assets, url, startup_seconds):
        self.demo, self.state, self.args, self.assets, self.url = demo, state, args, assets, url
        self.startup_seconds = startup_seconds

    def close(self) -> None:
        self.demo.close()


_RUNNING: dict[str, RunningApp] = {}


def start_app(argv: list[str], assets: dict | None = None) -> RunningApp:
    """Build and serve the app on a free local port without blocking (`demo.launch(prevent_thread_lock=True)`)."""
    import time

    if str(APP_DIR) not in sys.path:
        sys.path.insert(0, str(APP_DIR))
    import app

    start = time.perf_counter()
    port = free_port()
    demo, state, args = app.create_app([*argv, "--port", str(port)])
    app.launch(demo, state, args, prevent_thread_lock=True, quiet=True)
    return RunningApp(demo, state, args, assets or {}, f"http://127.0.0.1:{port}", time.perf_counter() - start)


def shared_test_app(root: str | Path) -> RunningApp:
    """One app with the tiny assets per process, shared by the test modules (closed at exit)."""
    import atexit

    key = str(Path(root).resolve())
    if key not in _RUNNING:
        assets = build_all(Path(root))
        running = start_app(app_args(assets), assets)
        atexit.register(running.close)
        _RUNNING[key] = running
    return _RUNNING[key]


if __name__ == "__main__":
    sys.path.insert(0, str(APP_DIR))
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(1, str(REPO_ROOT))
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/cxr-app-assets")
    print(" ".join(app_args(build_all(target))))
