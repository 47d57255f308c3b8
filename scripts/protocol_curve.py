"""The model-v2 gates (issue 14) against training hours: a table, a plot and the projected hours to each gate.

    python scripts/protocol_curve.py --point 0=runs/eval/v1/metrics.json --point 0.5=runs/eval/v2-1200/metrics.json \
        --point 1.2=runs/eval/v2-2900/metrics.json -o docs/results/v2-protocol/curve

Each `--point HOURS=METRICS` is one evaluation (`cxr-diffusers evaluate --prompt-groups`, as for
`protocol_gates.py`) of the model after HOURS CPU-hours of training. For every gate and prompt group the script
prints the values in hour order, and projects the hours at which the gate would be met by a straight line through the
last two points (`None` with the reason when the metric moves away from its target or stays flat). Gates relative to
a floor use the last point's floor. Writes `curve.json` and `curve.png` to the output folder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol_gates

#: Gate name -> (direction, threshold from the row): +1 means "at least the target", -1 "at most".
_DIRECTIONS = {"histogram W1": -1, "sharpness ratio": +1, "classifier FD": -1, "prompt agreement": +1}


def target_value(row: dict) -> float | None:
    """The number a row's value must reach (None for gates without one: diversity, near copies)."""
    gate = row["gate"]
    if gate == "histogram W1":
        return None if row["floor"] is None else protocol_gates.HISTOGRAM_W1_TIMES_FLOOR * row["floor"]
    return {"sharpness ratio": protocol_gates.SHARPNESS_RATIO_MIN, "classifier FD": protocol_gates.CLASSIFIER_FD_MAX,
            "prompt agreement": protocol_gates.PROMPT_AGREEMENT_MIN}.get(gate)


def project(points: list[tuple[float, float]], target: float, direction: int) -> tuple[float | None, str]:
    """Hours at which a straight line through the last two (hours, value) points reaches `target`."""
    hours, value = points[-1]
    if direction * (value - target) >= 0:
        return hours, "met"
    if len(points) < 2:
        return None, "one point: no trend"
    (h0, v0), (h1, v1) = points[-2], points[-1]
    if h1 <= h0:
        return None, "two points at the same hour"
    slope = (v1 - v0) / (h1 - h0)
    if direction * slope <= 0:
        return None, "moving away from the target or flat"
    return h1 + (target - v1) / slope, "linear projection of the last two points"


def curves(points: list[tuple[float, dict]]) -> list[dict]:
    """One entry per gate and group: the values at each hour, the target and the projection."""
    points = sorted(points, key=lambda p: p[0])
    rows_per_point = [(hours, protocol_gates.generation_gates(metrics)) for hours, metrics in points]
    out = []
    for index, last in enumerate(rows_per_point[-1][1]):
        series = [(hours, rows[index]["value"]) for hours, rows in rows_per_point if rows[index]["value"] is not None]
        entry = {"gate": last["gate"], "group": last["group"], "target": last["target"], "values": series,
                 "pass_now": last["pass"]}
        direction, goal = _DIRECTIONS.get(last["gate"]), target_value(last)
        if direction is not None and goal is not None and series:
            entry["target_value"] = goal
            entry["projected_hours"], entry["projection"] = project(series, goal, direction)
        out.append(entry)
    return out


def plot(entries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gates = [g for g in _DIRECTIONS if any(e["gate"] == g for e in entries)]
    fig, axes = plt.subplots(1, len(gates), figsize=(4.2 * len(gates), 3.4), squeeze=False)
    for ax, gate in zip(axes[0], gates):
        for entry in (e for e in entries if e["gate"] == gate):
            hours = [h for h, _ in entry["values"]]
            line, = ax.plot(hours, [v for _, v in entry["values"]], marker="o", label=entry["group"])
            if "target_value" in entry:
                ax.axhline(entry["target_value"], color=line.get_color(), ls=":", lw=1)
        ax.set_title(f"{gate} (dotted: gate)")
        ax.set_xlabel("training CPU-hours")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--point", action="append", required=True, metavar="HOURS=METRICS",
                        help="CPU-hours of training and the metrics.json of that model's protocol run; repeat")
    parser.add_argument("-o", "--output-dir", required=True)
    args = parser.parse_args(argv)
    points = []
    for spec in args.point:
        hours, _, path = spec.partition("=")
        try:
            points.append((float(hours), json.loads(Path(path).read_text())))
        except ValueError:
            parser.error(f"--point takes HOURS=METRICS with a number of hours and a metrics.json, not {spec!r}")
        except OSError as error:
            parser.error(f"cannot read {path}: {error.strerror}")
    entries = curves(points)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "curve.json").write_text(json.dumps(entries, indent=2) + "\n")
    plot(entries, out / "curve.png")
    for entry in entries:
        values = ", ".join(f"{h:g} h: {v:.3f}" for h, v in entry["values"])
        projection = ""
        if "projection" in entry:
            hours = entry["projected_hours"]
            projection = f" -> {entry['projection']}" + (f" ({hours:.1f} h)" if hours is not None else "")
        print(f"{entry['gate']:<18} {entry['group']:<20} {values}  [{entry['target']}]{projection}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
