#!/usr/bin/env python
"""Sampling defaults by measurement: a scheduler x step-count sweep (and guidance intervals) scored against real
images and a 100-step reference, each score beside its noise floor, and the fewest steps that stay within noise.

Every configuration generates the same images: the evaluation's prompt-group protocol (`GROUP_PROMPTS`, the prompts
of `cxr-diffusers evaluate --prompt-groups`), `-n` images per group, image i of prompt p seeded with
`seed + p * n + i` (`evaluation.runner.generate_images`). Each is scored

- against real images (`--real DIR --split test`): FD on the bundled pneumonia classifier's features, intensity
  histogram W1 and sharpness ratio, overall and per prompt group, beside the real-vs-real floor of as many held-out real
  images with the same group mix (`cxr_diffusers.evaluation.sampling_sweep.RealScorer`, over `--floor-draws` splits);
- against the reference (`--reference`, default DDIM 100 steps): FD between the configuration's images and the
  reference's images of a *second* seed set (`--noise-seed`; unpaired, so that sharing seeds does not hide a change of
  distribution), FD and mean PSNR against the reference's images of the same seeds (paired; reported only).

Noise. The reference runs with both seed sets; the difference of its scores between the two sets is the seed noise,
the spread of the real-vs-real floor over the splits is the real-vs-real noise. The tolerance of each score is the
larger of the two; that of "fd_vs_reference" is the larger of the spread of FD between two random (per-prompt) halves
of the reference's pooled seed sets and the spread of FD between two size-matched real sets.

Decision rule (`sampling_sweep.recommend`): for every score the best over all configurations is found; a
configuration is within noise when score - best <= tolerance on every score; the recommended default is the cheapest
configuration within noise (fewest UNet evaluations per image, then measured seconds). The guidance-interval variants
(`--guidance-intervals`, sigma ranges) run after the sweep, with the recommended scheduler (or `--gi-scheduler`) at the
recommended step count and the next larger one (or `--gi-steps`), and the rule is applied again to everything.

    python benchmarks/sweep_sampling.py --real /root/cxr-runs/data/cxr-all-256 --split test --threads 2
    python benchmarks/sweep_sampling.py --model tiny --size 32 -n 2 --schedulers ddim --steps 2 --reference ddim:4

Writes benchmarks/results/sweep_sampling.json (`--output`) and a plot of every score against the step count per
scheduler, with the band within noise of the best shaded, beside it (same name, .png).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_sampling import load_components

from cxr_diffusers.evaluation.conditioning import GROUP_PROMPTS
from cxr_diffusers.evaluation.features import (
    ClassifierFeatureExtractor,
    images_to_tensor,
)
from cxr_diffusers.evaluation.fidelity import prompt_group
from cxr_diffusers.evaluation.runner import (
    evaluation_pipeline,
    find_classifier,
    generate_images,
    load_reference,
)
from cxr_diffusers.evaluation.sampling_sweep import (
    SCORE_NAMES,
    RealScorer,
    fd,
    floor_summary,
    jsonable,
    paired_psnr,
    recommend,
)
from cxr_diffusers.evaluation.timing import (
    environment_info,
    peak_rss_mb,
    write_benchmark_result,
)
from cxr_diffusers.schedulers import SCHEDULERS

RULE_SCORES = (*SCORE_NAMES, "fd_vs_reference")
DEFAULT_INTERVALS = ["0.28,5.42", "0.28,inf", "0,5.42"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None,
                   help="pipeline folder, or tiny/small/base for random-init components "
                        "(default: pretrained/cxr-ldm-small if present, else random-init small)")
    p.add_argument("--schedulers", nargs="+", default=["dpm++", "unipc", "ddim", "euler"],
                   help="scheduler names of cxr_diffusers.schedulers (default dpm++ unipc ddim euler)")
    p.add_argument("--steps", type=int, nargs="+", default=[4, 6, 8, 10, 15, 25, 50], help="step counts")
    p.add_argument("--reference", default="ddim:100", help="SCHEDULER:STEPS of the reference (default ddim:100)")
    p.add_argument("--guidance-intervals", nargs="*", default=DEFAULT_INTERVALS, metavar="LO,HI",
                   help="guidance intervals in sigma units, 'inf' allowed (default 0.28,5.42 0.28,inf 0,5.42; "
                        "none given: no guidance-interval variants)")
    p.add_argument("--gi-scheduler", default=None,
                   help="scheduler of the guidance-interval variants (default: the recommended one)")
    p.add_argument("--gi-steps", type=int, nargs="+", default=None,
                   help="step counts of the guidance-interval variants (default: the recommended one and the next "
                        "larger of --steps)")
    p.add_argument("-n", "--num-images", type=int, default=25, help="images per prompt group (default 25)")
    p.add_argument("--batch-size", type=int, default=8, help="images per pipeline call (default 8)")
    p.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (default 4)")
    p.add_argument("--size", type=int, default=None, help="image size (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="first seed of the main seed set (default 0)")
    p.add_argument("--noise-seed", type=int, default=None,
                   help="first seed of the second seed set, for the seed noise (default --seed + 1000000)")
    p.add_argument("--real", default=None,
                   help="real images: a dataset saved by `cxr-diffusers data build`, a Kermany folder or an image "
                        "folder (without it only the reference scores are measured)")
    p.add_argument("--split", default="test", help="split of --real (default test)")
    p.add_argument("--max-real", type=int, default=1000, help="at most this many real images (default 1000)")
    p.add_argument("--classifier", default=None,
                   help="image-classification folder for the FD features (default: pretrained/*classif*)")
    p.add_argument("--floor-draws", type=int, default=10, help="random real splits for the floors (default 10)")
    p.add_argument("--rule-scope", choices=["all", "groups"], default="all",
                   help="scores the decision rule tests: 'all' (the whole generated set; default) or 'groups' (also "
                        "each prompt group's real-image scores, each with its group's floor and seed noise)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "sweep_sampling.json"))
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    unknown = [s for s in args.schedulers if s.lower() not in SCHEDULERS]
    if unknown:
        p.error(f"--schedulers: unknown {unknown}; choose from {', '.join(SCHEDULERS)}")
    try:
        name, steps = args.reference.split(":")
        args.reference = (name.lower(), int(steps))
    except ValueError:
        p.error(f"--reference must be SCHEDULER:STEPS, e.g. ddim:100, got {args.reference!r}")
    if args.reference[0] not in SCHEDULERS:
        p.error(f"--reference: unknown scheduler {args.reference[0]!r}")
    intervals = []
    for text in args.guidance_intervals:
        try:
            lo, hi = (float(v) for v in text.split(","))
        except ValueError:
            p.error(f"--guidance-intervals: {text!r} is not LO,HI")
        if not 0 <= lo <= hi:
            p.error(f"--guidance-intervals: {text!r} needs 0 <= LO <= HI")
        intervals.append((lo, hi))
    args.guidance_intervals = intervals
    if args.num_images < 2 or args.batch_size < 1 or args.floor_draws < 1:
        p.error("-n must be at least 2 (FD needs two images), --batch-size and --floor-draws at least 1")
    if args.noise_seed is None:
        args.noise_seed = args.seed + 1_000_000
    return args


# ----------------------------------------------------------------------------------------------- configurations
@dataclass
class Config:
    name: str
    role: str  # "sweep", "reference", "reference_noise" or "guidance_interval"
    scheduler: str
    steps: int
    guidance_interval: tuple[float, float] | None = None
    seed_set: str = "main"


def interval_text(interval) -> str:
    return ",".join("inf" if math.isinf(v) else f"{v:g}" for v in interval)


def config_name(scheduler: str, steps: int, interval=None, seed_set: str = "main") -> str:
    name = f"{scheduler}_{steps}"
    if interval is not None:
        name += f"_gi[{interval_text(interval)}]"
    if seed_set != "main":
        name += f"_{seed_set}"
    return name


class _WithGuidanceInterval:
    """A pipeline whose calls apply classifier-free guidance only inside `interval` (what `generate_images` calls)."""

    def __init__(self, pipe, interval):
        self.pipe, self.interval = pipe, tuple(interval)

    def set_progress_bar_config(self, **kwargs):
        self.pipe.set_progress_bar_config(**kwargs)

    def __call__(self, *args, **kwargs):
        return self.pipe(*args, guidance_interval=self.interval, **kwargs)


def unet_evals_per_image(pipe, steps: int, guidance: float, interval) -> int:
    """UNet evaluations per image: two per guided step (both branches), one per unguided step."""
    if guidance <= 1.0 or pipe.guidance_embedded:
        return steps
    if interval is None:
        return 2 * steps
    pipe.scheduler.set_timesteps(steps)
    sigmas = pipe.noise_levels(pipe.scheduler.timesteps)
    lo, hi = interval
    return steps + int(sum(lo <= s <= hi for s in sigmas))


# ------------------------------------------------------------------------------------------------------- run
class Sweep:
    """Generates and scores configurations; keeps the reference's images and features for the comparisons."""

    def __init__(self, pipe, args, prompts, extractor, scorer):
        self.pipe, self.args, self.prompts = pipe, args, prompts
        self.extractor, self.scorer = extractor, scorer
        self.groups = None
        self.ref_images = {}  # seed set -> images
        self.ref_features = {}  # seed set -> features
        self.results: list[dict] = []

    def generate(self, config: Config):
        pipe = evaluation_pipeline(self.pipe, config.scheduler)
        runner = pipe if config.guidance_interval is None else _WithGuidanceInterval(pipe, config.guidance_interval)
        seed = self.args.seed if config.seed_set == "main" else self.args.noise_seed
        images, image_prompts, seeds, seconds = generate_images(
            runner, self.prompts, self.args.num_images, seed=seed, batch_size=self.args.batch_size,
            num_inference_steps=config.steps, guidance_scale=self.args.guidance, size=self.args.size, progress=False)
        evals = unet_evals_per_image(pipe, config.steps, self.args.guidance, config.guidance_interval)
        return images, image_prompts, seeds, seconds, evals

    def run(self, config: Config) -> dict:
        images, image_prompts, seeds, seconds, evals = self.generate(config)
        self.groups = [prompt_group(p) for p in image_prompts]
        features = self.extractor(images) if self.extractor is not None else None
        entry = {"name": config.name, "role": config.role, "scheduler": config.scheduler, "steps": config.steps,
                 "guidance_interval": None if config.guidance_interval is None else list(config.guidance_interval),
                 "seed_set": config.seed_set, "first_seed": seeds[0], "n_images": len(images),
                 "unet_evals_per_image": evals, "seconds_per_image": seconds}
        if config.role in ("reference", "reference_noise"):
            self.ref_images[config.seed_set] = images
            self.ref_features[config.seed_set] = features
        entry["vs_real"] = self.scorer.score(images, self.groups, features) if self.scorer is not None else None
        ref_a, ref_b = self.ref_features.get("main"), self.ref_features.get("noise")
        vs_ref = {
            "fd_unpaired": (fd(ref_b, features) if features is not None and ref_b is not None
                            and config.role != "reference_noise" else None),
            "fd_paired": (fd(ref_a, features) if features is not None and ref_a is not None
                          and config.role in ("sweep", "guidance_interval") else None),
            "psnr_paired": (paired_psnr(self.ref_images["main"], images)
                            if "main" in self.ref_images and config.role != "reference" and config.seed_set == "main"
                            else None),
        }
        entry["vs_reference"] = vs_ref
        all_scores = (entry["vs_real"] or {}).get("all", {})
        entry["scores"] = {**{k: all_scores.get(k) for k in SCORE_NAMES}, "fd_vs_reference": vs_ref["fd_unpaired"]}
        if self.args.rule_scope == "groups" and entry["vs_real"] is not None:
            for scope, group_scores in entry["vs_real"].items():
                if scope != "all":
                    entry["scores"].update({f"{k}@{scope}": group_scores.get(k) for k in SCORE_NAMES})
        entry["sharpness_ratio"] = all_scores.get("sharpness_ratio")
        self.results.append(entry)
        return entry


def seed_noise(sweep: Sweep, args) -> dict:
    """The reference's scores with the two seed sets: their differences, the FD between the sets, and the spread of
    that FD over random per-prompt re-splits of the pooled sets."""
    by_set = {e["seed_set"]: e for e in sweep.results if e["role"] in ("reference", "reference_noise")}
    a, b = by_set["main"], by_set["noise"]
    deltas = {k: (abs(a["scores"][k] - b["scores"][k]) if a["scores"][k] is not None and b["scores"][k] is not None
                  else None) for k in a["scores"] if k != "fd_vs_reference"}
    out = {"reference": a["name"], "deltas": deltas, "fd_a_vs_b": None, "fd_resplit": None}
    fa, fb = sweep.ref_features.get("main"), sweep.ref_features.get("noise")
    if fa is not None and fb is not None:
        out["fd_a_vs_b"] = fd(fa, fb)
        n, prompts = args.num_images, len(sweep.prompts)
        rng = np.random.default_rng(args.seed)
        pooled = np.concatenate([fa, fb])
        values = []
        for _ in range(args.floor_draws):
            first, second = [], []
            for p in range(prompts):  # per prompt: its n + n images of the two sets, halved at random
                rows = rng.permutation(np.r_[np.arange(p * n, (p + 1) * n), len(fa) + np.arange(p * n, (p + 1) * n)])
                first += rows[:n].tolist()
                second += rows[n:].tolist()
            values.append(fd(pooled[first], pooled[second]))
        out["fd_resplit"] = floor_summary(values)
    return out


def tolerances(sweep: Sweep, noise: dict) -> tuple[dict, dict]:
    """Per rule score: the tolerance and where it comes from."""
    tol, sources = {}, {}
    for k in noise["deltas"]:  # the real-image scores (with --rule-scope groups also "<score>@<group>")
        score, _, scope = k.partition("@")
        rr = sweep.scorer.tolerance(score, scope or "all") if sweep.scorer is not None else None
        seed = noise["deltas"].get(k)
        parts = [v for v in (rr, seed) if v is not None]
        tol[k] = max(parts) if parts else None
        sources[k] = {"real_vs_real_std": rr, "seed_delta": seed, "tolerance": tol[k]}
    resplit = noise["fd_resplit"]["std"] if noise.get("fd_resplit") and noise["fd_resplit"]["std"] is not None else None
    pair = None
    if sweep.scorer is not None:
        summary = sweep.scorer.floors["all"].get("fd_pair")
        pair = summary["std"] if summary else None
    parts = [v for v in (resplit, pair) if v is not None]
    tol["fd_vs_reference"] = max(parts) if parts else None
    sources["fd_vs_reference"] = {"seed_resplit_std": resplit, "real_pair_std": pair,
                                  "tolerance": tol["fd_vs_reference"]}
    return tol, sources


def candidates(sweep: Sweep) -> list[dict]:
    """Every configuration bar the reference's second seed set; guidance-interval variants sample a different
    distribution on purpose, so the full-guidance reference does not judge them (only the real images do)."""
    return [{**e, "exempt_scores": ("fd_vs_reference",)} if e["role"] == "guidance_interval" else e
            for e in sweep.results if e["role"] != "reference_noise"]


def summary_of(entry: dict | None) -> dict | None:
    if entry is None:
        return None
    return {k: entry[k] for k in ("name", "scheduler", "steps", "guidance_interval", "unet_evals_per_image",
                                  "seconds_per_image")}


# ------------------------------------------------------------------------------------------------------ output
def _fmt(value, spec=".3g") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: list[dict], decision: dict) -> None:
    qualifying = set(decision["qualifying"])
    header = (f"{'configuration':<28} {'evals':>5} {'s/img':>7} {'FD cls':>8} {'hist W1':>8} {'sharp':>6} "
              f"{'FD ref':>8} {'PSNR':>6} {'within':>6}")
    print(header)
    print("-" * len(header))
    for e in results:
        s = e["scores"]
        mark = "yes" if e["name"] in qualifying else ("" if e["role"] == "reference_noise" else "no")
        if e["name"] == decision["recommended"]:
            mark = "BEST"
        print(f"{e['name']:<28} {e['unet_evals_per_image']:>5} {e['seconds_per_image']:>7.3f} "
              f"{_fmt(s['fd_classifier']):>8} {_fmt(s['histogram_w1']):>8} {_fmt(e['sharpness_ratio'], '.2f'):>6} "
              f"{_fmt(s['fd_vs_reference']):>8} {_fmt(e['vs_reference']['psnr_paired'], '.1f'):>6} {mark:>6}")


def write_plot(results: list[dict], decision: dict, floors: dict | None, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [m for m in RULE_SCORES if any(e["scores"].get(m) is not None for e in results)]
    if not metrics:
        return None
    labels = {"fd_classifier": "FD, classifier features (vs real)", "histogram_w1": "histogram W1, grey levels",
              "sharpness_log_error": "|ln sharpness ratio|", "fd_vs_reference": "FD vs reference (other seeds)"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for scheduler in dict.fromkeys(e["scheduler"] for e in results if e["role"] == "sweep"):
            rows = sorted((e["steps"], e["scores"][metric]) for e in results
                          if e["role"] == "sweep" and e["scheduler"] == scheduler and e["scores"][metric] is not None)
            if rows:
                ax.plot(*zip(*rows), marker="o", label=scheduler)
        for e in results:
            value = e["scores"][metric]
            if value is None:
                continue
            if e["role"] == "reference":
                ax.plot(e["steps"], value, marker="*", markersize=12, color="black", linestyle="none",
                        label=f"reference {e['name']}")
            elif e["role"] == "guidance_interval":
                ax.plot(e["steps"], value, marker="s", linestyle="none", alpha=0.8,
                        label=f"{e['scheduler']} gi[{interval_text(e['guidance_interval'])}]")
        best, tol = decision["best"].get(metric), decision["tolerances"].get(metric)
        if best is not None and tol is not None:
            ax.axhspan(best, best + tol, color="tab:green", alpha=0.18, label="within noise of the best")
        floor = (floors or {}).get("all", {}).get("sharpness_log_ratio" if metric == "sharpness_log_error" else metric)
        if floor is not None and metric != "sharpness_log_error":
            ax.axhline(floor["mean"], color="grey", linestyle="--", label="real-vs-real floor")
        ax.set_xscale("log")
        ticks = sorted({e["steps"] for e in results})
        ax.set_xticks(ticks)
        ax.set_xticks([], minor=True)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.set_xlabel("steps")
        ax.set_title(labels[metric], fontsize=10)
    handles, names = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:]:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="lower center", ncol=min(6, len(names)), fontsize=8)
    recommended = decision.get("recommended")
    fig.suptitle(f"sampling sweep: recommended {recommended}" if recommended else "sampling sweep")
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -------------------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    from tqdm.auto import tqdm

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe, model_name = load_components(args.model, device)
    pipe.set_progress_bar_config(disable=True)
    args.size = args.size or pipe.default_size
    if args.size % pipe.size_multiple:
        raise SystemExit(f"--size: {args.size} is not a multiple of {pipe.size_multiple}")
    notes = []
    classifier_path = None if (args.classifier or "").lower() == "none" else (args.classifier or find_classifier())
    extractor = ClassifierFeatureExtractor.from_pretrained(classifier_path) if classifier_path else None
    if extractor is None:
        notes.append("no classifier: FD scores skipped")
    prompts = list(GROUP_PROMPTS.values())
    generated_groups = [prompt_group(p) for p in prompts for _ in range(args.num_images)]

    real_info, scorer = None, None
    if args.real:
        reference = load_reference(args.real, args.split, max_images=args.max_real, seed=args.seed)
        real = images_to_tensor(reference.images, args.size)
        scorer = RealScorer(real, reference.groups, extractor, generated_groups, draws=args.floor_draws, seed=args.seed)
        real_info = {"source": reference.source, "skipped_unreadable": len(reference.skipped), **scorer.describe()}
        notes += scorer.notes
    else:
        notes.append("no --real: only the scores against the reference are measured")

    print(f"model: {model_name}; device {device}; threads {torch.get_num_threads()}; {args.size}px; "
          f"{args.num_images} images x {len(prompts)} prompt groups per configuration")
    sweep = Sweep(pipe, args, prompts, extractor, scorer)
    # warm-up (one-time costs outside the timings)
    pipe(prompts[0], height=args.size, width=args.size, num_inference_steps=2, guidance_scale=args.guidance,
         output_type="pt", generator=torch.Generator().manual_seed(0))

    ref_sched, ref_steps = args.reference
    # the reference's second seed set first, so that every configuration (the reference too) is compared with it
    configs = [Config(config_name(ref_sched, ref_steps, seed_set="noise"), "reference_noise", ref_sched, ref_steps,
                      seed_set="noise"),
               Config(config_name(ref_sched, ref_steps), "reference", ref_sched, ref_steps)]
    configs += [Config(config_name(s, n), "sweep", s, n) for s in args.schedulers for n in sorted(args.steps)
                if (s, n) != (ref_sched, ref_steps)]
    start = time.perf_counter()
    bar = tqdm(total=len(configs), desc="configurations", unit="cfg", disable=args.no_progress)
    for config in configs:
        bar.set_postfix_str(config.name)
        sweep.run(config)
        bar.update()

    noise = seed_noise(sweep, args)
    tol, tol_sources = tolerances(sweep, noise)
    first = recommend(candidates(sweep), tol)

    # guidance-interval variants: the recommended scheduler (or --gi-scheduler) at the recommended steps and the next
    gi_configs = []
    if args.guidance_intervals and args.guidance > 1.0 and not pipe.guidance_embedded:
        chosen = next((e for e in sweep.results if e["name"] == first["recommended"]), None)
        gi_scheduler = (args.gi_scheduler or (chosen["scheduler"] if chosen else args.schedulers[0])).lower()
        if args.gi_steps:
            gi_steps = sorted(args.gi_steps)
        else:
            base = chosen["steps"] if chosen else sorted(args.steps)[len(args.steps) // 2]
            larger = [n for n in sorted(args.steps) if n > base]
            gi_steps = [base] + larger[:1]
        gi_configs = [Config(config_name(gi_scheduler, n, iv), "guidance_interval", gi_scheduler, n, iv)
                      for n in gi_steps for iv in args.guidance_intervals]
        bar.total += len(gi_configs)
        bar.refresh()
        for config in gi_configs:
            bar.set_postfix_str(config.name)
            sweep.run(config)
            bar.update()
    bar.close()
    final = recommend(candidates(sweep), tol)
    chosen = next((e for e in sweep.results if e["name"] == final["recommended"]), None)

    print_table(sweep.results, final)
    print("tolerances: " + ", ".join(f"{k} {_fmt(v)}" for k, v in tol.items()))
    if chosen:
        print(f"recommended default: {chosen['scheduler']} {chosen['steps']} steps"
              + (f", guidance interval {interval_text(chosen['guidance_interval'])}" if chosen["guidance_interval"]
                 else "") + f" ({chosen['seconds_per_image']:.3f} s/image here)")
    else:
        print(f"no recommendation: {final['note']}")

    output = Path(args.output)
    plot = write_plot(sweep.results, final, scorer.floors if scorer is not None else None, output.with_suffix(".png"))
    result = {
        "benchmark": "sweep_sampling",
        "model": model_name,
        "device": str(device),
        "environment": environment_info(),
        "size": args.size,
        "guidance_scale": args.guidance,
        "batch_size": args.batch_size,
        "prompts": dict(GROUP_PROMPTS),
        "n_per_group": args.num_images,
        "seeds": {"main": args.seed, "noise": args.noise_seed,
                  "convention": "image i of prompt p: seed + p * n + i (evaluation.runner.generate_images)"},
        "classifier": None if classifier_path is None else str(classifier_path),
        "real": real_info,
        "reference": {"scheduler": ref_sched, "steps": ref_steps},
        "configs": sweep.results,
        "seed_noise": noise,
        "tolerances": tol_sources,
        "decision": {
            "rule": final["rule"],
            "scores": list(tol),
            "rule_scope": args.rule_scope,
            "recommended": summary_of(chosen),
            "before_guidance_intervals": {"recommended": first["recommended"], "qualifying": first["qualifying"]},
            "final": final,
        },
        "plot": None if plot is None else str(plot),
        "wall_seconds": time.perf_counter() - start,
        "process_peak_rss_mb": peak_rss_mb(),
        "notes": notes,
    }
    from cxr_diffusers.evaluation import sampling_sweep

    if sampling_sweep.regularised_fd_calls:
        notes.append(f"{sampling_sweep.regularised_fd_calls} FD value(s) needed regularised covariances (far fewer "
                     "images than feature dimensions): see sampling_sweep.fd")
    result = jsonable(result)
    write_benchmark_result(result, output)
    return result


if __name__ == "__main__":
    main()
