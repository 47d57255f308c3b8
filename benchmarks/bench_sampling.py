#!/usr/bin/env python
"""Sampling speed: the seed's recipe against our defaults, with the same weights, in one run.

(a) seed recipe: DDIM with 50 and 100 steps, classifier-free guidance as two separate UNet calls per step, fp32,
    classic (non-SDPA) attention, no other optimisation; an explicit sampling loop over the pipeline's components.
(b) our defaults: `CXRPipeline` (DPM-Solver++ with fewer steps, both guidance branches in one batched UNet call, SDPA
    attention) plus channels_last and torch.compile where they pay (tried on the first size, kept only if faster), and
    bf16 autocast where the hardware runs it natively (not on AVX2-only CPUs).

The recipes run alternately (a50, a100, b, a50, ...) so that load changes hit them equally. Reported per size and batch
size: ms per image, denoising steps per second, peak RSS, the ratio (a)/(b); the Fréchet distance between the outputs
of each recipe (VAE features, paired seeds) to show that quality is kept; and the UNet forward's achieved FLOP/s
against the machine's measured matmul peak.

    python benchmarks/bench_sampling.py                          # pretrained/cxr-ldm-small, 256 and 512 px
    python benchmarks/bench_sampling.py --sizes 256 --repeats 5 --compile off
    python benchmarks/bench_sampling.py --model tiny --sizes 64 --batch-sizes 1 2 --seed-steps 4 8 --steps 3 --repeats 1

Writes benchmarks/results/bench_sampling.json (see --output).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxr_diffusers import CXRPipeline, create_components
from cxr_diffusers.evaluation.distribution import frechet_distance
from cxr_diffusers.evaluation.features import VAEFeatureExtractor
from cxr_diffusers.evaluation.image_quality import psnr
from cxr_diffusers.evaluation.timing import (
    RSSMonitor,
    bf16_supported,
    count_flops,
    environment_info,
    matmul_peak_flops,
    peak_rss_mb,
    time_call,
    write_benchmark_result,
)

DEFAULT_MODEL = ROOT / "pretrained" / "cxr-ldm-small"
PROMPT = "Pediatric chest radiograph. Findings: pneumonia."


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None,
                   help="pipeline folder, or tiny/small/base for random-init components "
                        "(default: pretrained/cxr-ldm-small if present, else random-init small)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seed-steps", type=int, nargs="+", default=[50, 100], help="DDIM steps of the seed recipe")
    p.add_argument("--steps", type=int, default=20, help="steps of our default (DPM-Solver++)")
    p.add_argument("--scheduler", default="dpm++", help="our scheduler (dpm++ or unipc)")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--repeats", type=int, default=3, help="timed calls per recipe, size and batch size")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                   help="torch.compile the UNet of (b): auto keeps it only when it is faster")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--flops-repeats", type=int, default=5, help="timed UNet forwards for the FLOP/s figure")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n x n matmul peak probe")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "bench_sampling.json"))
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ components
def load_components(model: str | None, device):
    if model in ("tiny", "small", "base"):
        name = f"random-init {model} (create_components)"
        pipe = CXRPipeline(**create_components(model))
    elif model:
        name = str(model)
        pipe = CXRPipeline.from_pretrained(model)
    elif (DEFAULT_MODEL / "model_index.json").is_file():
        name = str(DEFAULT_MODEL.relative_to(ROOT))
        pipe = CXRPipeline.from_pretrained(str(DEFAULT_MODEL))
    else:
        name = "random-init small (create_components; pretrained/cxr-ldm-small not found)"
        torch.manual_seed(0)
        pipe = CXRPipeline(**create_components("small"))
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.eval()
    return pipe.to(device), name


def set_attention(module: torch.nn.Module, classic: bool) -> None:
    """Classic matmul-softmax attention (the seed's) or SDPA (AttnProcessor2_0) in every diffusers Attention layer."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    for m in module.modules():
        if isinstance(m, Attention):
            m.set_processor(AttnProcessor() if classic else AttnProcessor2_0())


def build_recipes(pipe: CXRPipeline, args):
    """(seed_pipe, fast_pipe): separate UNet/VAE copies with identical weights, shared text encoder."""
    from diffusers import DDIMScheduler

    from cxr_diffusers.schedulers import scheduler_from_name

    seed_unet, seed_vae = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.vae)
    set_attention(seed_unet, classic=True)
    set_attention(seed_vae, classic=True)
    seed_pipe = CXRPipeline(vae=seed_vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=seed_unet,
                            scheduler=DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False))
    set_attention(pipe.unet, classic=False)
    set_attention(pipe.vae, classic=False)
    fast_pipe = CXRPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                            scheduler=scheduler_from_name(args.scheduler, pipe.scheduler.config))
    for p in (seed_pipe, fast_pipe):
        p.set_progress_bar_config(disable=True)
    return seed_pipe, fast_pipe


# ------------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def seed_recipe(pipe: CXRPipeline, seeds: list[int], size: int, steps: int, guidance: float) -> torch.Tensor:
    """The seed's loop: DDIM, conditional and unconditional UNet calls one after the other, fp32."""
    n, device = len(seeds), pipe.device
    cond, cond_mask, uncond, uncond_mask = pipe.encode_prompt([PROMPT], device, n, True)
    pipe.scheduler.set_timesteps(steps, device=device)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    latents = pipe.prepare_latents(n, size, size, cond.dtype, device, generators)
    for t in pipe.scheduler.timesteps:
        eps_uncond = pipe.unet(latents, t, encoder_hidden_states=uncond, encoder_attention_mask=uncond_mask).sample
        eps_cond = pipe.unet(latents, t, encoder_hidden_states=cond, encoder_attention_mask=cond_mask).sample
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        latents = pipe.scheduler.step(eps, t, latents).prev_sample
    return pipe.decode_latents(latents).float().cpu()


def our_recipe(pipe: CXRPipeline, seeds: list[int], size: int, steps: int, guidance: float, bf16: bool) -> torch.Tensor:
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    with torch.autocast(pipe.device.type, dtype=torch.bfloat16, enabled=bf16):
        images = pipe(PROMPT, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                      num_images_per_prompt=len(seeds), generator=generators, output_type="pt").images
    return images.float().cpu()


def tune(fast_pipe: CXRPipeline, args, size: int, bf16: bool) -> dict:
    """Try channels_last and torch.compile on (b) at batch 1; keep what is faster."""
    decisions: dict = {"tried_at": f"{size}px batch 1, {args.steps} steps"}
    run = lambda: our_recipe(fast_pipe, [0], size, args.steps, args.guidance, bf16)
    base = statistics.median(time_call(run, repeats=2, warmup=1))
    decisions["eager_s"] = base
    unet, vae = fast_pipe.unet, fast_pipe.vae
    if args.channels_last != "off":
        unet.to(memory_format=torch.channels_last)
        vae.to(memory_format=torch.channels_last)
        t = statistics.median(time_call(run, repeats=2, warmup=1))
        decisions["channels_last_s"] = t
        keep = args.channels_last == "on" or t < base
        if keep:
            base = t
        else:
            unet.to(memory_format=torch.contiguous_format)
            vae.to(memory_format=torch.contiguous_format)
        decisions["channels_last"] = keep
    else:
        decisions["channels_last"] = False
    if args.compile != "off":
        start = time.perf_counter()
        try:
            unet.compile(dynamic=False)  # static shapes: one graph per (size, batch), no dynamic-shape slowdown
            run()  # first call compiles
            decisions["compile_seconds"] = time.perf_counter() - start
            t = statistics.median(time_call(run, repeats=2, warmup=0))
            decisions["compiled_s"] = t
            keep = args.compile == "on" or t < base
        except Exception as err:  # noqa: BLE001 - no compiler toolchain, unsupported op, ...
            decisions["compile_error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            keep = False
        if not keep:
            unet._compiled_call_impl = None  # back to eager (nn.Module.compile stores the compiled call here)
        decisions["compile"] = keep
    else:
        decisions["compile"] = False
    return decisions


# -------------------------------------------------------------------------------------------------- FLOP/s
def unet_flops(pipe: CXRPipeline, size: int, batch: int, repeats: int) -> dict:
    """FLOPs of one UNet forward (counted on the eager module) and its achieved FLOP/s with the recipe's settings."""
    device = pipe.device
    latent = size // pipe.vae_scale_factor
    x = torch.randn(batch, pipe.unet.config.in_channels, latent, latent, device=device)
    with torch.no_grad():
        states, mask, _, _ = pipe.encode_prompt([PROMPT] * batch, device, 1, False)
    t = torch.tensor(500, device=device)
    if next(pipe.unet.parameters()).is_contiguous(memory_format=torch.channels_last) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    compiled = getattr(pipe.unet, "_compiled_call_impl", None)
    pipe.unet._compiled_call_impl = None
    with torch.no_grad():
        flops = count_flops(lambda: pipe.unet(x, t, encoder_hidden_states=states, encoder_attention_mask=mask))
    pipe.unet._compiled_call_impl = compiled
    with torch.no_grad():
        times = time_call(lambda: pipe.unet(x, t, encoder_hidden_states=states, encoder_attention_mask=mask),
                          repeats=repeats, warmup=1, device=device)
    seconds = statistics.median(times)
    return {"batch": batch, "gflop_per_forward": flops / 1e9, "ms_per_forward": seconds * 1e3,
            "achieved_gflops": flops / seconds / 1e9}


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe, model_name = load_components(args.model, device)
    seed_pipe, fast_pipe = build_recipes(pipe, args)
    bf16 = bf16_supported(device)
    multiple = pipe.size_multiple
    for size in args.sizes:
        if size % multiple:
            raise SystemExit(f"--sizes: {size} is not a multiple of {multiple}")

    result: dict = {
        "benchmark": "bench_sampling",
        "model": model_name,
        "device": str(device),
        "environment": environment_info(),
        "prompt": PROMPT,
        "guidance_scale": args.guidance,
        "recipes": {
            **{f"seed_ddim{s}": {"scheduler": "DDIMScheduler", "steps": s, "guidance": "two UNet calls per step",
                                 "dtype": "fp32", "attention": "AttnProcessor (classic)"} for s in args.seed_steps},
            "ours": {"scheduler": type(fast_pipe.scheduler).__name__, "steps": args.steps,
                     "guidance": "one batched UNet call per step", "dtype": "bf16 autocast" if bf16 else "fp32",
                     "attention": "AttnProcessor2_0 (SDPA)"},
        },
        "rows": [],
        "quality": {},
        "flops": {},
    }
    print(f"model: {model_name}; device {device}; threads {torch.get_num_threads()}; bf16 {bf16}")
    result["recipes"]["ours"]["tuning"] = tune(fast_pipe, args, args.sizes[0], bf16)
    print(f"tuning of (b): {json.dumps(result['recipes']['ours']['tuning'])}")

    recipes = {f"seed_ddim{s}": (lambda seeds, size, s=s: seed_recipe(seed_pipe, seeds, size, s, args.guidance))
               for s in args.seed_steps}
    recipes["ours"] = lambda seeds, size: our_recipe(fast_pipe, seeds, size, args.steps, args.guidance, bf16)
    steps_of = {**{f"seed_ddim{s}": s for s in args.seed_steps}, "ours": args.steps}

    header = f"{'size':>5} {'batch':>5} {'recipe':<12} {'steps':>5} {'ms/img':>10} {'steps/s':>8} {'peak MB':>8} {'(a)/(b)':>8}"
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        outputs = {name: [] for name in recipes}
        for batch in args.batch_sizes:
            for name, fn in recipes.items():  # warm-up (and one-time costs) outside the timings
                fn(list(range(batch)), size)
            times = {name: [] for name in recipes}
            peaks = {name: 0.0 for name in recipes}
            for rep in range(args.repeats):
                seeds = [10_000 * batch + rep * batch + i for i in range(batch)]
                for name, fn in recipes.items():  # alternate the recipes
                    with RSSMonitor() as rss:
                        start = time.perf_counter()
                        images = fn(seeds, size)
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        times[name].append(time.perf_counter() - start)
                    peaks[name] = max(peaks[name], rss.peak_mb)
                    outputs[name].append(images)
            ours_ms = statistics.median(times["ours"]) / batch * 1e3
            for name in recipes:
                seconds = statistics.median(times[name])
                row = {"size": size, "batch": batch, "recipe": name, "steps": steps_of[name],
                       "ms_per_image": seconds / batch * 1e3, "steps_per_s": steps_of[name] / seconds,
                       "peak_rss_mb": peaks[name], "times_s": times[name]}
                row["ratio_vs_ours"] = row["ms_per_image"] / ours_ms
                result["rows"].append(row)
                print(f"{size:>5} {batch:>5} {name:<12} {steps_of[name]:>5} {row['ms_per_image']:>10.1f} "
                      f"{row['steps_per_s']:>8.2f} {row['peak_rss_mb']:>8.0f} {row['ratio_vs_ours']:>8.2f}")

        # quality: FD between the recipes' outputs (same seeds), VAE features of this model
        images = {name: torch.cat(v) for name, v in outputs.items()}
        extractor = VAEFeatureExtractor(pipe.vae, image_size=size)
        feats = {name: extractor(x) for name, x in images.items()}
        reference = f"seed_ddim{max(args.seed_steps)}"
        quality = {"n_images": len(images[reference]), "reference": reference, "features": "vae"}
        enough = quality["n_images"] >= 2  # FD needs two images per set (a covariance); one batch-1 call gives one
        for name in recipes:
            if name != reference:
                quality[f"fd_{name}_vs_{reference}"] = (frechet_distance(feats[reference], feats[name])
                                                       if enough else None)
                quality[f"psnr_{name}_vs_{reference}"] = float(np.mean([
                    psnr(a[0].numpy().astype(np.float64), b[0].numpy().astype(np.float64))
                    for a, b in zip(images[reference], images[name])]))
        if not enough:
            quality["note"] = "FD needs at least 2 images per recipe: use --repeats 2 or a batch size above 1"
        result["quality"][str(size)] = quality
        print(f"quality at {size}px ({quality['n_images']} paired images, vs {reference}): "
              + ", ".join(f"{k} {v:.4g}" for k, v in quality.items()
                          if k.startswith(("fd_", "psnr_")) and v is not None))

    # FLOP/s of the UNet forward vs the machine's matmul peak
    peak = matmul_peak_flops(n=args.matmul_size, device=device)
    result["flops"]["matmul_peak_gflops"] = peak / 1e9
    for size in args.sizes:
        entry = {"seed_unet": unet_flops(seed_pipe, size, 1, args.flops_repeats),
                 "ours_unet": unet_flops(fast_pipe, size, 2, args.flops_repeats)}
        for e in entry.values():
            e["fraction_of_matmul_peak"] = e["achieved_gflops"] * 1e9 / peak
        result["flops"][str(size)] = entry
        print(f"UNet forward at {size}px: ours {entry['ours_unet']['achieved_gflops']:.1f} GFLOP/s "
              f"({entry['ours_unet']['fraction_of_matmul_peak']:.0%} of the {peak / 1e9:.1f} GFLOP/s matmul peak), "
              f"seed {entry['seed_unet']['achieved_gflops']:.1f} GFLOP/s")

    # goal (CPU): default 256 px with the small model in <= 1.5 s per image and >= 4x the seed recipe at equal FD
    if 256 in args.sizes:
        best = {}
        for row in result["rows"]:
            if row["size"] == 256:
                best[row["recipe"]] = min(best.get(row["recipe"], float("inf")), row["ms_per_image"])
        q = result["quality"]["256"]
        ref = q["reference"]
        others = [n for n in recipes if n not in ("ours", ref)]
        fd_floor = min((fd for n in others if (fd := q[f"fd_{n}_vs_{ref}"]) is not None), default=None)
        result["goal_256"] = {
            "ours_ms_per_image": best["ours"],
            "under_1500_ms": best["ours"] <= 1500,
            "speedup_vs_seed": {n: best[n] / best["ours"] for n in recipes if n != "ours"},
            "at_least_4x_vs_each_seed_recipe": all(best[n] / best["ours"] >= 4 for n in recipes if n != "ours"),
            "fd_ours_vs_reference": q[f"fd_ours_vs_{ref}"],
            "fd_seed_fewer_steps_vs_reference": fd_floor,
            "note": "equal FD: fd_ours_vs_reference should be no larger than the seed recipe's own step-count gap "
                    "(fd_seed_fewer_steps_vs_reference); the model above says whether the weights are trained",
        }
    result["process_peak_rss_mb"] = peak_rss_mb()
    write_benchmark_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
