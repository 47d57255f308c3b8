"""Plots and files of an evaluation run: metrics.json, intensity histograms, metric bars and image grids.

Image grids that show generated images carry a provenance record (see `cxr_diffusers.provenance`); the plots of
statistics (histograms, bars) show no images and carry none.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..provenance import PROVENANCE_KEY, attach_provenance, make_record, read_provenance
from .features import images_to_tensor

__all__ = [
    "plot_intensity_histograms",
    "plot_metric_bars",
    "save_real_vs_generated_grid",
    "to_jsonable",
    "write_metrics_json",
]


def to_jsonable(value: Any) -> Any:
    """numpy scalars/arrays -> Python; NaN and inf -> None (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_metrics_json(metrics: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(metrics), indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_intensity_histograms(sets: dict[str, Any], path: str | Path, bins: int = 64) -> Path:
    """Pixel-intensity histograms (density over [0, 1]) of several image sets, overlaid: e.g. {"real": ..., "generated:
    normal": ...}."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, images in sets.items():
        values = images_to_tensor(images).flatten().numpy()
        ax.hist(values, bins=bins, range=(0, 1), density=True, histtype="step", linewidth=1.5, label=f"{name} ({len(images)})")
    ax.set_xlabel("intensity")
    ax.set_ylabel("density")
    ax.set_title("Pixel intensities")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metric_bars(groups: dict[str, dict[str, float]], path: str | Path, title: str = "") -> Path:
    """One panel per metric, one bar per group: e.g. {"generated vs real (vae)": {...}, "real vs real (vae)": {...}}.
    Values may be numbers or (mean, std) pairs (drawn with error bars)."""
    plt = _pyplot()
    metrics = sorted({m for values in groups.values() for m in values})
    if not metrics:
        metrics = ["(none)"]
    cols = min(4, len(metrics))
    rows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
    names = list(groups)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes.flat, metrics):
        heights, errors = [], []
        for name in names:
            v = groups[name].get(metric)
            if isinstance(v, (list, tuple)):
                heights.append(float(v[0]) if v[0] is not None else 0.0)
                errors.append(float(v[1]) if v[1] is not None else 0.0)
            else:
                heights.append(float(v) if v is not None and math.isfinite(float(v)) else 0.0)
                errors.append(0.0)
        ax.bar(range(len(names)), heights, yerr=errors, color=[colours[i % len(colours)] for i in range(len(names))])
        ax.set_title(metric, fontsize=9)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([str(i + 1) for i in range(len(names))], fontsize=8)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    legend = "  ".join(f"{i + 1}: {n}" for i, n in enumerate(names))
    fig.suptitle((title + "\n" if title else "") + legend, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _pil_tiles(images: Any, n: int, tile: int, records: list[dict[str, Any] | None] | None = None):
    """Up to `n` 8-bit tiles of `images`, each with the provenance record of its source: `records[i]`, else that of
    a tagged PIL source image."""
    from PIL import Image

    x = images_to_tensor(images if not isinstance(images, list) else images[:n], tile)[:n]
    tiles = [Image.fromarray((a[0].numpy() * 255).round().astype(np.uint8), mode="L") for a in x]
    for i, tile_image in enumerate(tiles):
        record = records[i] if records is not None and i < len(records) else None
        if record is None and isinstance(images, list) and isinstance(images[i], Image.Image):
            record = read_provenance(images[i])
        if record is not None:
            attach_provenance(tile_image, record)
    return tiles


def save_real_vs_generated_grid(
    real: Any,
    generated: dict[str, Any],
    path: str | Path,
    n: int = 8,
    tile: int = 128,
    records: dict[str, list[dict[str, Any]]] | None = None,
) -> Path:
    """Rows of `n` images: the first row real, then one row per generated set (e.g. per prompt class).

    The grid carries a provenance record (operation "grid", one source record per tile, None for real tiles) as it
    shows synthetic images: a generated tile's record is `records[set][i]`, else that of a tagged PIL image, else a
    minimal one naming its set.
    """
    from PIL import Image

    from ..utils.image_grid import make_grid

    records = records or {}
    rows = [("real", _pil_tiles(real, n, tile))]
    for name, images in generated.items():
        tiles = _pil_tiles(images, n, tile, records.get(name))
        for tile_image in tiles:
            if PROVENANCE_KEY not in tile_image.info:
                attach_provenance(tile_image, make_record(generated_set=name))
        rows.append((name, tiles))
    cols = max(len(tiles) for _, tiles in rows)
    tiles, labels = [], []
    for name, row in rows:
        for i in range(cols):
            tiles.append(row[i] if i < len(row) else Image.new("L", (tile, tile)))
            labels.append(name if i < len(row) else "")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    make_grid(tiles, cols=cols, labels=labels).save(path)
    return path
