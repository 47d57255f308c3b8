"""The model-v2 gates (issue 14) read from an evaluation: which pass, by how much, against which floor.

    python scripts/protocol_gates.py outputs/eval/metrics.json [--vae-metrics outputs/vae-eval/vae_metrics.json]
        [--json gates.json]

`metrics.json` comes from the fixed protocol, `cxr-diffusers evaluate MODEL --real DATA --split test --prompt-groups
-n 40 --seed 0 --features classifier --real-vs-real`; `vae_metrics.json` from `train_scripts/evaluate_vae.py --split
test --num_images 200`. Prints one row per gate and prompt group, and exits 0 (it reports, it does not judge).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GROUPS = ("pediatric normal", "pediatric pneumonia", "adult normal", "adult pneumonia")

# The gates of issue 14 ("Done means"): one home for their thresholds.
VAE_GATES = {"psnr": 30.0, "ssim": 0.85, "sharpness_ratio": 0.7}
HISTOGRAM_W1_TIMES_FLOOR = 2.0
SHARPNESS_RATIO_MIN = 0.6
CLASSIFIER_FD_MAX = 40.0
PROMPT_AGREEMENT_MIN = 0.95
DIVERSITY_GAP_MAX = 0.05


def _get(tree, *keys):
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _row(gate: str, group: str, value, target: str, passed, floor=None, needs_floor: bool = False) -> dict:
    """A gate's row; "pass" is None (not measured) when the value, or a floor the gate is relative to, is missing."""
    unknown = value is None or (needs_floor and floor is None)
    return {"gate": gate, "group": group, "value": value, "floor": floor, "target": target,
            "pass": None if unknown else bool(passed)}


def generation_gates(metrics: dict) -> list[dict]:
    """One row per gate and group from an evaluation's metrics.json (value None where the evaluation lacks it)."""
    from cxr_diffusers.evaluation.conditioning import GROUP_PROMPTS  # the prompt of each group

    rows = []
    for group in GROUPS:
        fidelity = _get(metrics, "fidelity", group) or {}
        w1, w1_floor = fidelity.get("histogram_w1"), _get(fidelity, "real_vs_real", "histogram_w1")
        rows.append(_row("histogram W1", group, w1, f"<= {HISTOGRAM_W1_TIMES_FLOOR:g} x floor",
                         w1 is not None and w1_floor is not None and w1 <= HISTOGRAM_W1_TIMES_FLOOR * w1_floor,
                         w1_floor, needs_floor=True))
        sharp = fidelity.get("sharpness_ratio")
        rows.append(_row("sharpness ratio", group, sharp, f">= {SHARPNESS_RATIO_MIN:g}",
                         sharp is not None and sharp >= SHARPNESS_RATIO_MIN, _get(fidelity, "real_vs_real",
                                                                                   "sharpness_ratio")))
        fd_entry = _get(metrics, "distribution", "classifier", f"group: {group}") or {}
        fd, fd_floor = _get(fd_entry, "generated_vs_real", "fd"), _get(fd_entry, "real_vs_real", "fd")
        rows.append(_row("classifier FD", group, fd, f"<= {CLASSIFIER_FD_MAX:g}",
                         fd is not None and fd <= CLASSIFIER_FD_MAX, fd_floor))
        agreement = _get(metrics, "conditioning", "per_prompt", GROUP_PROMPTS[group], "agreement")
        rows.append(_row("prompt agreement", group, agreement, f">= {PROMPT_AGREEMENT_MIN:g}",
                         agreement is not None and agreement >= PROMPT_AGREEMENT_MIN))
        generated = _get(metrics, "diversity_ms_ssim", f"generated: {group}", "mean")
        real = _get(metrics, "diversity_ms_ssim", f"real: {group}", "mean")
        rows.append(_row("MS-SSIM diversity", group, generated, f"within {DIVERSITY_GAP_MAX:g} of real",
                         generated is not None and real is not None and abs(generated - real) <= DIVERSITY_GAP_MAX,
                         real, needs_floor=True))
    copies = _get(metrics, "memorization", "generated_vs_train", "near_copies")
    rows.append(_row("near copies", "all", copies, "0", copies == 0))
    return rows


def vae_gates(vae_metrics: dict) -> list[dict]:
    """PSNR / SSIM / sharpness-ratio rows, overall and per source, from evaluate_vae.py's vae_metrics.json."""
    rows = []
    scopes = {"all": vae_metrics, **(vae_metrics.get("per_source") or {})}
    for scope, entry in scopes.items():
        for name, threshold in VAE_GATES.items():
            value = entry.get(name)
            rows.append(_row(f"VAE {name}", scope, value, f">= {threshold:g}", value is not None and value >= threshold))
    return rows


def format_table(rows: list[dict]) -> str:
    def show(v):
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [f"{'gate':<20} {'group':<20} {'value':>8} {'floor':>8}  {'target':<22} pass",
             "-" * 88]
    for r in rows:
        verdict = "n/a" if r["pass"] is None else "yes" if r["pass"] else "NO"
        lines.append(f"{r['gate']:<20} {r['group']:<20} {show(r['value']):>8} {show(r['floor']):>8}  "
                     f"{r['target']:<22} {verdict}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("metrics", help="metrics.json of `cxr-diffusers evaluate --prompt-groups`")
    parser.add_argument("--vae-metrics", default=None, help="vae_metrics.json of train_scripts/evaluate_vae.py")
    parser.add_argument("--json", default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    paths = [Path(args.metrics)] + ([Path(args.vae_metrics)] if args.vae_metrics else [])
    for path in paths:
        if not path.is_file():
            parser.error(f"{path} does not exist")
    try:
        rows = generation_gates(json.loads(paths[0].read_text()))
        if args.vae_metrics:
            rows = vae_gates(json.loads(paths[1].read_text())) + rows
    except json.JSONDecodeError as error:
        parser.error(f"not a JSON file: {error}")
    print(format_table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
