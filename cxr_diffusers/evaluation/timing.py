"""Measurement helpers shared by `cxr-diffusers evaluate` and `benchmarks/`: wall time, peak memory, FLOPs, and the
machine's matmul peak. Speed claims belong in `benchmarks/`, never in tests.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "RSSMonitor",
    "bf16_supported",
    "count_flops",
    "environment_info",
    "matmul_peak_flops",
    "peak_rss_mb",
    "rss_mb",
    "time_call",
    "write_benchmark_result",
]


def rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float:
    """Peak resident memory of this process since it started, in MiB (`getrusage`)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RSSMonitor:
    """Samples the process RSS in a thread while the `with` block runs; `peak_mb` is the largest value seen."""

    def __init__(self, interval: float = 0.005):
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, rss_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> RSSMonitor:
        self.peak_mb = rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, rss_mb())


def _sync(device: Any = None) -> None:
    import torch

    if torch.cuda.is_available() and (device is None or str(device).startswith("cuda")):
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any], repeats: int = 3, warmup: int = 1, device: Any = None) -> list[float]:
    """Seconds of `repeats` calls of `fn` after `warmup` untimed calls (CUDA is synchronised around each)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def count_flops(fn: Callable[[], Any]) -> int:
    """Floating-point operations of one call of `fn` (`torch.utils.flop_counter`: matmuls and convolutions, a
    multiply-add counted as 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_peak_flops(n: int = 2048, dtype=None, device: Any = "cpu", repeats: int = 5) -> float:
    """The machine's practical peak: the best FLOP/s of an n x n x n `torch.matmul` over `repeats` runs."""
    import torch

    dtype = dtype or torch.float32
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    times = time_call(lambda: torch.matmul(a, b), repeats=repeats, warmup=1, device=device)
    return 2.0 * n**3 / min(times)


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_supported(device: Any = "cpu") -> bool:
    """Whether bf16 runs natively: CUDA `is_bf16_supported()`, or a CPU with AVX512-BF16 / AMX-BF16."""
    import torch

    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & _cpu_flags())


def environment_info() -> dict[str, Any]:
    """Versions, CPU and thread count, for benchmark JSON files."""
    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover
        pass
    return info


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def write_benchmark_result(result: dict[str, Any], output: str | os.PathLike) -> None:
    """Write a benchmark's result as indented JSON (creating the folder) and say where."""
    import json
    from pathlib import Path

    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
