#!/usr/bin/env python
"""Dataset throughput of `cxr-diffusers synthesize`: processes x threads on this CPU, same dataset each time.

Each configuration PxT makes the same balanced normal/pneumonia spec (N images, same seed) in a fresh folder: P = 1
runs `python -m cxr_diffusers.cli synthesize ... --threads T`; P > 1 runs it under
`accelerate launch --multi_gpu --num_processes P` (torchrun with gloo: on a machine without GPUs every process is a
CPU process) with `--threads T`. Reported: images/s of the sampling (what the run itself measures, after the model
has loaded, all processes together; `.synthesis/runs.jsonl`), the wall time of the whole command (start-up
included), and whether the configurations made the same images (pixel for pixel; a different thread count may change
a pixel by one grey level through float round-off).

    python benchmarks/bench_synthesize.py                                   # bundled model, 256 px, 1x2 vs 2x1
    python benchmarks/bench_synthesize.py --configs 1x1 1x2 2x1 --num-images 32
    python benchmarks/bench_synthesize.py --model tiny --size 64 --num-images 4 --steps 2 --configs 1x1 2x1

Writes benchmarks/results/bench_synthesize.json (see --output).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxr_diffusers.evaluation.timing import environment_info, write_benchmark_result

DEFAULT_MODEL = ROOT / "pretrained" / "cxr-ldm-small"
SPEC = {"findings": {"normal": 0.5, "pneumonia": 0.5}, "population": {"pediatric": 1.0}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(DEFAULT_MODEL),
                   help="pipeline folder, or tiny/small/base for random-init components (default: the bundled model)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--num-images", type=int, default=16, help="images per configuration (default 16)")
    p.add_argument("--steps", type=int, default=25, help="denoising steps (default 25, the CLI default)")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--batch-size", type=int, default=8, help="images per pipeline call (default 8)")
    p.add_argument("--configs", nargs="+", default=["1x2", "2x1"],
                   help="PROCESSESxTHREADS per configuration (default: 1x2 2x1)")
    p.add_argument("--work-dir", default=None, help="where the datasets go (default: a temporary folder, removed)")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per configuration")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "bench_synthesize.json"))
    return p.parse_args(argv)


def _config(text: str) -> tuple[int, int]:
    try:
        processes, threads = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--configs: {text!r} is not PROCESSESxTHREADS (e.g. 2x1)") from None
    if processes < 1 or threads < 1:
        raise SystemExit(f"--configs: {text!r} needs at least 1 process and 1 thread")
    return processes, threads


def _model_folder(model: str, work: Path) -> tuple[str, str]:
    """(folder, description): a pipeline folder as given, or random-init components saved once."""
    if model not in ("tiny", "small", "base"):
        return model, model
    import torch

    from cxr_diffusers import CXRPipeline, create_components

    folder = work / f"random-{model}"
    if not (folder / "model_index.json").is_file():
        torch.manual_seed(0)
        CXRPipeline(**create_components(model)).save_pretrained(folder)
    return str(folder), f"random-init {model} (create_components)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_config(model: str, spec: Path, out: Path, processes: int, threads: int, args) -> dict:
    synth = ["-m", "cxr_diffusers.cli", "synthesize", model, "--spec", str(spec), "-o", str(out),
             "-n", str(args.num_images), "--steps", str(args.steps), "--guidance", str(args.guidance),
             "--batch-size", str(args.batch_size), "--height", str(args.size), "--width", str(args.size),
             "--threads", str(threads), "--cpu"]
    if processes == 1:
        command = [sys.executable, *synth]
    else:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                   str(processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(_free_port()), *synth]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=args.timeout, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{processes}x{threads} failed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    launch = json.loads((out / ".synthesis" / "runs.jsonl").read_text().splitlines()[-1])
    return {"config": f"{processes}x{threads}", "processes": processes, "threads": threads,
            "images": launch["images"], "seconds": launch["seconds"], "images_per_s": launch["images_per_s"],
            "seconds_per_image": launch["seconds"] / launch["images"], "wall_seconds": round(wall, 3)}


def _pixels(folder: Path) -> list[np.ndarray]:
    from PIL import Image

    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    return [np.asarray(Image.open(folder / row["file_name"]), dtype=np.int16) for row in rows]


def main(argv=None) -> dict:
    args = parse_args(argv)
    configs = [_config(c) for c in args.configs]
    temporary = args.work_dir is None
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="bench-synthesize-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        model, model_name = _model_folder(args.model, work)
        spec = work / "spec.json"
        spec.write_text(json.dumps(SPEC))
        result: dict = {
            "benchmark": "bench_synthesize", "model": model_name, "size": args.size, "steps": args.steps,
            "guidance": args.guidance, "batch_size": args.batch_size, "num_images": args.num_images, "spec": SPEC,
            "environment": environment_info(), "rows": [],
        }
        header = f"{'config':>8} {'images':>6} {'sampling s':>10} {'images/s':>9} {'s/image':>8} {'wall s':>8}"
        print(f"model: {model_name}; {args.size} px, {args.steps} steps, batch {args.batch_size}, "
              f"{args.num_images} images per configuration")
        print(header)
        print("-" * len(header))
        outputs = []
        for processes, threads in configs:
            out = work / f"out-{processes}x{threads}"
            if out.exists():
                shutil.rmtree(out)  # our own scratch folder of an earlier benchmark run
            row = run_config(model, spec, out, processes, threads, args)
            result["rows"].append(row)
            outputs.append(_pixels(out))
            print(f"{row['config']:>8} {row['images']:>6} {row['seconds']:>10.2f} {row['images_per_s']:>9.3f} "
                  f"{row['seconds_per_image']:>8.2f} {row['wall_seconds']:>8.1f}")
        differences = [max(int(np.abs(a - b).max()) for a, b in zip(outputs[0], other)) for other in outputs[1:]]
        result["identical_datasets"] = all(d == 0 for d in differences)
        result["max_pixel_difference"] = max(differences, default=0)
        base = result["rows"][0]
        for row in result["rows"][1:]:
            row["speedup_vs_" + base["config"]] = row["images_per_s"] / base["images_per_s"]
            print(f"{row['config']} vs {base['config']}: {row['speedup_vs_' + base['config']]:.2f}x images/s")
        print(f"same images in every configuration: {result['identical_datasets']} "
              f"(largest pixel difference {result['max_pixel_difference']} grey levels)")
        write_benchmark_result(result, args.output)
        return result
    finally:
        if temporary:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
