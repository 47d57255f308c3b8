#!/usr/bin/env python
"""Sampling speed and quality, side by side in one run: the seed's recipe, our default, and the distilled model.

Recipes (same weights, one process, run alternately: seed, default, lcm_1, ..., seed, default, ...):

- `seed_ddim50` (`--seed-steps`): the seed's recipe: DDIM, classifier-free guidance as two separate UNet calls per
  step, fp32, classic (non-SDPA) attention, eager; an explicit loop over separate UNet/VAE copies (`seed_recipe`).
- `default`: `CXRPipeline` as users run it: its own scheduler and default step count (read from the pipeline:
  `CXRPipeline.__call__`'s `num_inference_steps` default; `--scheduler`, `--steps`, `--guidance-interval` change
  them), both guidance branches in one batched UNet call, SDPA attention.
- with `--distilled FOLDER` (a fast folder: `unet/` with `time_cond_proj_dim`, `scheduler/` LCMScheduler):
  `lcm_1`, `lcm_2`, `lcm_4`, `lcm_8` (`--lcm-steps`), one UNet call per step, the base VAE's decoder; with a tiny
  decoder (`--tiny-decoder FOLDER`, default the fast folder's `vae_tiny/` when it has one) also `lcm_<n>_tiny`.

Reported per size and batch size (default 1 and 8): ms per image, denoising steps/s, peak RSS (sampled every 5 ms),
the speedup over the seed recipe (seed ms / recipe ms); the time shares of the text encoder, all UNet calls and the
decoder (forward hooks on the text encoder and UNet and a wrapper of `vae.decode` during the timed calls, so the timed
path is the users' one; "other" is the rest: tokenizer, scheduler steps, post-processing); the achieved FLOP/s of the
UNet and of the decoder in those calls (FLOPs of one forward per image from `torch.utils.flop_counter`, times the
images processed, over the measured component time) against the best FLOP/s of an n^3 fp32 matmul. A per-operator
profile of one UNet forward and one decode (`profile`) says where the time goes (convolutions, matmuls, attention,
normalisation, the rest) when they run below the matmul peak.

Quality (`--quality-n` images per prompt group, the `evaluate --prompt-groups` prompts, paired seeds in every recipe,
at 256 px or the first size): FD between each recipe and the default on the bundled classifier's features and mean
paired PSNR; with `--real DIR` also FD against real images, intensity-histogram W1 and sharpness ratio, beside the
real-vs-real floor at the same n (`cxr_diffusers.evaluation.sampling_sweep.RealScorer`). A recipe is "within noise"
of the default when its FD to the default is no larger than the FD between two size-matched real sets (`fd_pair`)
and each real-image score is within the spread of its real-vs-real floor of the default's.

Super-resolution (`super_resolution` in the JSON, its own table): the default recipe at 512 and 768 px through the
pipeline's second stage (`--super-resolution`: the model's own `super_resolution/`, a folder, or an untrained
`CXRSuperResolutionModel` of the default configuration where the model has none: the same cost as a trained one),
timed alternately with the default recipe at the native 256 px in the same run, per batch size: ms per image, the ratio
to native, the stage's share of the time and its FLOP/s.

`goals` evaluates the gates with the measured numbers: default at 256 px <= 1.0 s/image at batch 8 on 2 threads with
scores within noise of the 25-step result (`--reference-steps`); distilled 4 steps <= 0.35 s/image at batch 8, >= 20x
faster than the seed recipe, FD within 15% of the default's; UNet and decoder >= 70% of the matmul peak; 512 px
through the super-resolution stage within 2.5x and 768 px within 5x of the native 256 px time (CPU, 2 threads).

    python benchmarks/bench_sampling.py --threads 2 --real /root/cxr-runs/data/cxr-all-256 \\
        --distilled pretrained/cxr-ldm-small-lcm
    python benchmarks/bench_sampling.py --model tiny --sizes 64 --batch-sizes 2 --seed-steps 3 --steps 2 --repeats 1

`--model tiny|small|base` benchmarks random-init components (timings are right, quality says little). Writes
benchmarks/results/bench_sampling.json (see --output).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # no "gpuGetDeviceCount failed" line from the CPU profiler
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxr_diffusers import CXRPipeline, CXRSuperResolutionModel, create_components
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
from cxr_diffusers.fast import (
    TINY_DECODER_FOLDER,
    has_tiny_decoder,
    load_distilled_unet,
    load_tiny_decoder,
)

DEFAULT_MODEL = ROOT / "pretrained" / "cxr-ldm-small"
PROMPT = "Pediatric chest radiograph. Findings: pneumonia."
GATE_SIZE, GATE_BATCH = 256, 8
#: Time of a size made through the super-resolution stage / time of the native size, at most (by scale factor).
SUPER_RESOLUTION_GATES = {2: 2.5, 3: 5.0}


def pipeline_defaults() -> dict:
    """The defaults users get from `CXRPipeline.__call__` (steps, guidance scale)."""
    params = inspect.signature(CXRPipeline.__call__).parameters
    return {"steps": int(params["num_inference_steps"].default), "guidance": float(params["guidance_scale"].default)}


def parse_args(argv=None):
    defaults = pipeline_defaults()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None,
                   help="pipeline folder, or tiny/small/base for random-init components "
                        "(default: pretrained/cxr-ldm-small if present, else random-init small)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    p.add_argument("--seed-steps", type=int, nargs="+", default=[50], help="DDIM steps of the seed recipe (default 50)")
    p.add_argument("--scheduler", default=None,
                   help="scheduler of the default recipe (a cxr_diffusers.schedulers name; default: the pipeline's own)")
    p.add_argument("--steps", type=int, default=defaults["steps"],
                   help=f"steps of the default recipe (default: the pipeline's, {defaults['steps']})")
    p.add_argument("--guidance", type=float, default=defaults["guidance"],
                   help=f"classifier-free guidance scale (default: the pipeline's, {defaults['guidance']:g})")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="guidance interval of the default recipe, in sigma units (default: guidance at every step)")
    p.add_argument("--reference-steps", type=int, default=25,
                   help="steps of the quality reference of the default gate (the default's scheduler; default 25)")
    p.add_argument("--distilled", default=None, metavar="FOLDER",
                   help="fast folder of a distilled model (unet/ with time_cond_proj_dim, scheduler/ LCMScheduler)")
    p.add_argument("--tiny-decoder", default=None, metavar="FOLDER",
                   help="AutoencoderTiny folder for the lcm_<n>_tiny recipes (default: <distilled>/vae_tiny when "
                        "present; 'none' for no tiny decoder)")
    p.add_argument("--lcm-steps", type=int, nargs="+", default=[1, 2, 4, 8], help="steps of the distilled recipes")
    p.add_argument("--lcm-guidance", type=float, default=None,
                   help="guidance scale given to the distilled model's guidance embedding (default --guidance)")
    p.add_argument("--super-resolution", default=None, metavar="FOLDER",
                   help="the super-resolution stage of the 512/768 px rows: a CXRSuperResolutionModel folder or a "
                        "pipeline folder with super_resolution/, 'untrained' (random-init default configuration: right "
                        "timings), or 'none' (no rows); default: the model's own stage, else untrained")
    p.add_argument("--sr-sizes", type=int, nargs="+", default=None,
                   help="output sizes through the stage (default: every size it makes, 512 and 768 px from 256 px)")
    p.add_argument("--repeats", type=int, default=3, help="timed calls per recipe, size and batch size")
    p.add_argument("--compile", choices=["auto", "on", "off"], default="off",
                   help="torch.compile the default recipe's UNet (auto: kept only when faster; default off: the "
                        "pipeline as users run it)")
    p.add_argument("--channels-last", choices=["auto", "on", "off"], default="off",
                   help="channels_last for the default recipe's UNet and VAE (auto: kept only when faster)")
    p.add_argument("--bf16", choices=["auto", "on", "off"], default="off",
                   help="bf16 autocast for the default and distilled recipes (auto: where the hardware runs it "
                        "natively, CUDA or AVX512-BF16/AMX; default off: fp32, the pipeline as users run it)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--matmul-size", type=int, default=2048, help="n of the n x n x n matmul peak probe")
    p.add_argument("--profile", choices=["on", "off"], default="on",
                   help="per-operator profile of one UNet forward and one decode (default on)")
    p.add_argument("--real", default=None,
                   help="real images for the quality scores (a dataset saved by `cxr-diffusers data build`, a Kermany "
                        "folder or an image folder)")
    p.add_argument("--split", default="test", help="split of --real (default test)")
    p.add_argument("--max-real", type=int, default=1000, help="at most this many real images (default 1000)")
    p.add_argument("--quality-n", type=int, default=25,
                   help="images per prompt group and recipe for the quality scores (default 25; 0: no quality pass)")
    p.add_argument("--classifier", default=None,
                   help="image-classification folder for the FD features (default: pretrained/*classif*; 'none')")
    p.add_argument("--floor-draws", type=int, default=10, help="random real splits for the floors (default 10)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "bench_sampling.json"))
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = p.parse_args(argv)
    if args.quality_n == 1:
        p.error("--quality-n must be 0 (no quality pass) or at least 2 (FD needs two images per set)")
    if args.lcm_guidance is None:
        args.lcm_guidance = args.guidance
    return args


# ------------------------------------------------------------------------------------------------ components
def load_components(model: str | None, device):
    if model in ("tiny", "small", "base"):
        name = f"random-init {model} (create_components, torch seed 0)"
        torch.manual_seed(0)
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


def tiny_decoder_folder(args) -> str | None:
    if args.tiny_decoder is not None:
        return None if args.tiny_decoder.lower() == "none" else args.tiny_decoder
    if args.distilled and has_tiny_decoder(Path(args.distilled) / TINY_DECODER_FOLDER):
        return str(Path(args.distilled) / TINY_DECODER_FOLDER)
    return None


def set_attention(module: torch.nn.Module, classic: bool) -> None:
    """Classic matmul-softmax attention (the seed's) or SDPA (AttnProcessor2_0) in every diffusers Attention layer."""
    from diffusers.models.attention_processor import (
        Attention,
        AttnProcessor,
        AttnProcessor2_0,
    )

    for m in module.modules():
        if isinstance(m, Attention):
            m.set_processor(AttnProcessor() if classic else AttnProcessor2_0())


# --------------------------------------------------------------------------------------------------- recipes
@torch.no_grad()
def seed_recipe(pipe: CXRPipeline, prompts: list[str], seeds: list[int], size: int, steps: int,
                guidance: float) -> torch.Tensor:
    """The seed's loop: DDIM, conditional and unconditional UNet calls one after the other, fp32."""
    device = pipe.device
    cond, cond_mask, uncond, uncond_mask = pipe.encode_prompt(prompts, device, 1, True)
    pipe.scheduler.set_timesteps(steps, device=device)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    latents = pipe.prepare_latents(len(seeds), size, size, cond.dtype, device, generators)
    for t in pipe.scheduler.timesteps:
        eps_uncond = pipe.unet(latents, t, encoder_hidden_states=uncond, encoder_attention_mask=uncond_mask).sample
        eps_cond = pipe.unet(latents, t, encoder_hidden_states=cond, encoder_attention_mask=cond_mask).sample
        eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        latents = pipe.scheduler.step(eps, t, latents).prev_sample
    return pipe.decode_latents(latents).float().cpu()


def pipeline_recipe(pipe: CXRPipeline, prompts: list[str], seeds: list[int], size: int, steps: int, guidance: float,
                    bf16: bool, guidance_interval=None) -> torch.Tensor:
    """What users run: `CXRPipeline.__call__` (a pipeline without the super-resolution stage samples any size
    directly, which it is asked to say: no warning per call)."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    extra = {"guidance_interval": tuple(guidance_interval)} if guidance_interval else {}
    if pipe.super_resolution is None:
        extra["super_resolution"] = False
    with torch.autocast(pipe.device.type, dtype=torch.bfloat16, enabled=bf16):
        images = pipe(prompts, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
                      num_images_per_prompt=1, generator=generators, output_type="pt", **extra).images
    return images.float().cpu()


@dataclass
class Recipe:
    name: str
    pipe: CXRPipeline
    kind: str  # "seed" or "pipeline"
    steps: int
    guidance: float
    bf16: bool = False
    guidance_interval: tuple | None = None
    info: dict = field(default_factory=dict)

    def __call__(self, prompts: list[str], seeds: list[int], size: int) -> torch.Tensor:
        if self.kind == "seed":
            return seed_recipe(self.pipe, prompts, seeds, size, self.steps, self.guidance)
        return pipeline_recipe(self.pipe, prompts, seeds, size, self.steps, self.guidance, self.bf16,
                               self.guidance_interval)


def scheduler_name(scheduler) -> str:
    from cxr_diffusers.schedulers import SCHEDULERS

    return next((k for k, cls in SCHEDULERS.items() if type(scheduler) is cls), type(scheduler).__name__)


def build_recipes(pipe: CXRPipeline, args, device, bf16: bool) -> tuple[dict[str, Recipe], Recipe | None, dict]:
    """The timed recipes (seed, default, distilled), the 25-step quality reference of the default (None when the
    default is that recipe) and the loading record."""
    from diffusers import DDIMScheduler

    from cxr_diffusers.schedulers import scheduler_from_name

    seed_unet, seed_vae = copy.deepcopy(pipe.unet), copy.deepcopy(pipe.vae)
    set_attention(seed_unet, classic=True)
    set_attention(seed_vae, classic=True)
    seed_pipe = CXRPipeline(vae=seed_vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=seed_unet,
                            scheduler=DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False))
    set_attention(pipe.unet, classic=False)
    set_attention(pipe.vae, classic=False)
    default_scheduler = (scheduler_from_name(args.scheduler, pipe.scheduler.config) if args.scheduler
                         else copy.deepcopy(pipe.scheduler))
    default_pipe = CXRPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=pipe.unet,
                               scheduler=default_scheduler)
    recipes: dict[str, Recipe] = {}
    seed_info = {"scheduler": "DDIMScheduler", "guidance": "two UNet calls per step (uncond, cond)", "dtype": "fp32",
                 "attention": "AttnProcessor (classic)", "decoder": type(seed_vae).__name__}
    for s in args.seed_steps:
        recipes[f"seed_ddim{s}"] = Recipe(f"seed_ddim{s}", seed_pipe, "seed", s, args.guidance,
                                          info={**seed_info, "steps": s})
    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    recipes["default"] = Recipe(
        "default", default_pipe, "pipeline", args.steps, args.guidance, bf16, interval,
        info={"scheduler": type(default_scheduler).__name__, "scheduler_name": scheduler_name(default_scheduler),
              "steps": args.steps, "guidance_interval": None if interval is None else list(interval),
              "guidance": "one batched UNet call of both branches per step"
                          + (" (the conditional one alone outside the interval)" if interval else ""),
              "dtype": "bf16 autocast" if bf16 else "fp32", "attention": "AttnProcessor2_0 (SDPA)",
              "decoder": type(pipe.vae).__name__})
    reference = None
    if args.quality_n and (args.steps != args.reference_steps or interval is not None):
        reference = Recipe(f"reference_{scheduler_name(default_scheduler)}_{args.reference_steps}", default_pipe, "pipeline", args.reference_steps,
                           args.guidance, bf16, info={"scheduler": type(default_scheduler).__name__,
                                                      "steps": args.reference_steps, "role": "quality reference"})
    loaded = {"distilled": args.distilled, "tiny_decoder": None}
    if args.distilled:
        unet, lcm_scheduler = load_distilled_unet(args.distilled)  # cxr_diffusers.fast
        unet = unet.to(device).eval()
        set_attention(unet, classic=False)
        lcm_pipe = CXRPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=unet,
                               scheduler=lcm_scheduler)
        decoders = [("", lcm_pipe)]
        tiny_folder = tiny_decoder_folder(args)
        if tiny_folder:
            tiny = load_tiny_decoder(tiny_folder).to(device).eval()
            tiny_pipe = CXRPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, unet=unet,
                                    scheduler=copy.deepcopy(lcm_scheduler))
            tiny_pipe._check_vae(tiny, unet)
            tiny_pipe.vae = tiny
            decoders.append(("_tiny", tiny_pipe))
            loaded["tiny_decoder"] = tiny_folder
        for suffix, p in decoders:
            for n in args.lcm_steps:
                recipes[f"lcm_{n}{suffix}"] = Recipe(
                    f"lcm_{n}{suffix}", p, "pipeline", n, args.lcm_guidance, bf16,
                    info={"scheduler": "LCMScheduler", "steps": n, "guidance": "guidance embedding, one UNet call per step",
                          "dtype": "bf16 autocast" if bf16 else "fp32", "attention": "AttnProcessor2_0 (SDPA)",
                          "decoder": type(p.vae).__name__})
    for r in [*recipes.values(), *([reference] if reference else [])]:
        r.pipe.set_progress_bar_config(disable=True)
    return recipes, reference, loaded


def tune(recipe: Recipe, args, size: int) -> dict:
    """Try channels_last and torch.compile on the default recipe at batch 1; keep what is faster (or what was forced)."""
    decisions: dict = {"tried_at": f"{size}px batch 1, {recipe.steps} steps"}
    if args.channels_last == "off" and args.compile == "off":
        return {"channels_last": False, "compile": False, "note": "not tried (--channels-last off --compile off)"}
    run = lambda: recipe([PROMPT], [0], size)
    base = statistics.median(time_call(run, repeats=2, warmup=1))
    decisions["eager_s"] = base
    unet, vae = recipe.pipe.unet, recipe.pipe.vae
    decisions["channels_last"] = False
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
    decisions["compile"] = False
    if args.compile != "off":
        start = time.perf_counter()
        try:
            unet.compile(dynamic=False)  # static shapes: one graph per (size, batch)
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
        if keep:
            decisions["note"] = "compiled UNet: the forward hooks of the component timing run outside the graph"
    return decisions


# ------------------------------------------------------------------------------------------- component timing
class ComponentTimer:
    """Seconds in the text encoder, the UNet and the decoder during the calls made inside `with timer:`, and the
    images each processed: forward hooks on the text encoder and the UNet, and an instance-level wrapper of
    `vae.decode` (removed on exit), so the timed path is the pipeline's own."""

    def __init__(self, pipe: CXRPipeline):
        self.pipe = pipe
        self.cuda = pipe.device.type == "cuda"
        self.seconds = {"text": 0.0, "unet": 0.0, "decoder": 0.0}
        self.samples = {"text": 0, "unet": 0, "decoder": 0}
        if getattr(pipe, "super_resolution", None) is not None:
            self.seconds["super_resolution"], self.samples["super_resolution"] = 0.0, 0
        self._handles, self._start = [], {}

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _hooks(self, module, key):
        def pre(_module, args, kwargs):
            self._start[key] = self._now()
            x = args[0] if args else next(iter(kwargs.values()))
            self.samples[key] += int(x.shape[0])

        def post(_module, _args, _kwargs, _output):
            self.seconds[key] += self._now() - self._start.pop(key)

        self._handles += [module.register_forward_pre_hook(pre, with_kwargs=True),
                          module.register_forward_hook(post, with_kwargs=True)]

    def __enter__(self):
        self._hooks(self.pipe.text_encoder, "text")
        self._hooks(self.pipe.unet, "unet")
        if "super_resolution" in self.seconds:
            self._hooks(self.pipe.super_resolution, "super_resolution")
        vae, decode = self.pipe.vae, self.pipe.vae.decode

        def timed_decode(z, *args, **kwargs):
            start = self._now()
            out = decode(z, *args, **kwargs)
            self.seconds["decoder"] += self._now() - start
            self.samples["decoder"] += int(z.shape[0])
            return out

        vae.decode = timed_decode
        self._vae = vae
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        del self._vae.decode  # the class's method again


def unet_flops_per_sample(pipe: CXRPipeline, size: int) -> int:
    """FLOPs of one UNet forward for one latent (eager module; FLOPs are linear in the batch)."""
    device = pipe.device
    latent = size // pipe.vae_scale_factor
    x = torch.randn(1, pipe.unet.config.in_channels, latent, latent, device=device)
    with torch.no_grad():
        states, mask, _, _ = pipe.encode_prompt([PROMPT], device, 1, False)
    kwargs = {"encoder_hidden_states": states, "encoder_attention_mask": mask}
    if pipe.guidance_embedded:
        kwargs["timestep_cond"] = torch.zeros(1, pipe.unet.config.time_cond_proj_dim, device=device)
    compiled = getattr(pipe.unet, "_compiled_call_impl", None)
    pipe.unet._compiled_call_impl = None
    try:
        with torch.no_grad():
            return count_flops(lambda: pipe.unet(x, torch.tensor(500, device=device), **kwargs))
    finally:
        pipe.unet._compiled_call_impl = compiled


def super_resolution_flops_per_image(pipe: CXRPipeline, size: int) -> int:
    """FLOPs of the super-resolution stage for one `size` x `size` output (its forward on the base image)."""
    scale = pipe.super_resolution_plan(size, size)
    base = size // scale
    x = torch.zeros(1, 1, base, base, device=pipe.device)
    with torch.no_grad():
        return count_flops(lambda: pipe.super_resolution(x, scale))


def decoder_flops_per_image(pipe: CXRPipeline, size: int) -> int:
    latent = size // pipe.vae_scale_factor
    z = torch.randn(1, pipe.unet.config.in_channels, latent, latent, device=pipe.device)
    with torch.no_grad():
        return count_flops(lambda: pipe.vae.decode(z))


# ---------------------------------------------------------------------------------------------------- profile
def _category(name: str) -> str:
    n = name.lower()
    if "conv" in n:
        return "convolution"
    if "attention" in n or "softmax" in n:
        return "attention"
    if any(k in n for k in ("::mm", ".mm", "addmm", "bmm", "matmul", "linear")):
        return "matmul"
    if "norm" in n:
        return "normalization"
    return "other (elementwise, copies, upsampling)"


def op_profile(fn, peak: float, device) -> dict:
    """Where one call of `fn` spends its operator time, by category, with the FLOP/s of each category's FLOPs."""
    from torch.profiler import ProfilerActivity, profile
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad():
        fn()  # warm-up
        with FlopCounterMode(display=False) as counter:
            fn()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            fn()
    flops = defaultdict(float)
    for op, value in counter.get_flop_counts().get("Global", {}).items():
        flops[_category(str(op))] += value
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    times = defaultdict(float)
    top = []
    for event in prof.key_averages():
        us = float(getattr(event, attr, 0.0) or 0.0)
        times[_category(event.key)] += us
        top.append((us, event.key))
    total_us = sum(times.values()) or 1.0
    categories = {}
    for cat in sorted(times, key=times.get, reverse=True):
        seconds = times[cat] / 1e6
        entry = {"ms": seconds * 1e3, "share_of_op_time": times[cat] / total_us, "gflop": flops.get(cat, 0.0) / 1e9}
        if flops.get(cat) and seconds > 0:
            entry["fraction_of_matmul_peak"] = flops[cat] / seconds / peak
        categories[cat] = entry
    top.sort(reverse=True)
    return {"op_ms_total": total_us / 1e3, "categories": categories,
            "top_ops": [{"op": name, "ms": us / 1e3, "share": us / total_us} for us, name in top[:8]],
            "note": "profiler self times (profiling adds overhead to small ops)"}


def holding_back(name: str, fraction: float | None, profile_entry: dict | None) -> str | None:
    """A sentence from the measured profile: where the time goes when `name` runs below 70% of the matmul peak."""
    if fraction is None or profile_entry is None:
        return None
    if fraction >= 0.7:
        return f"{name} runs at {fraction:.0%} of the matmul peak"
    parts = []
    for cat, e in profile_entry["categories"].items():
        if e["share_of_op_time"] < 0.03:
            continue
        text = f"{cat} {e['share_of_op_time']:.0%} of the op time"
        if "fraction_of_matmul_peak" in e:
            text += f" at {e['fraction_of_matmul_peak']:.0%} of peak"
        else:
            text += " (no counted FLOPs)"
        parts.append(text)
    return f"{name} at {fraction:.0%} of the matmul peak: " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------------- quality
def quality_pass(recipes: dict[str, Recipe], reference: Recipe | None, args, size: int, batch: int) -> dict:
    """Images of every recipe for the prompt-group protocol (paired seeds), scored against each other and, with
    --real, against real images with their floors."""
    from tqdm.auto import tqdm

    from cxr_diffusers.evaluation.conditioning import GROUP_PROMPTS
    from cxr_diffusers.evaluation.features import (
        ClassifierFeatureExtractor,
        images_to_tensor,
    )
    from cxr_diffusers.evaluation.fidelity import prompt_group
    from cxr_diffusers.evaluation.runner import find_classifier, load_reference
    from cxr_diffusers.evaluation.sampling_sweep import (
        RealScorer,
        fd,
        paired_psnr,
        within_noise,
    )

    n = args.quality_n
    prompts = [p for p in GROUP_PROMPTS.values() for _ in range(n)]
    seeds = [50_000 + i for i in range(len(prompts))]  # paired across recipes
    groups = [prompt_group(p) for p in prompts]
    classifier_path = None if (args.classifier or "").lower() == "none" else (args.classifier or find_classifier())
    extractor = ClassifierFeatureExtractor.from_pretrained(classifier_path) if classifier_path else None
    notes = [] if extractor is not None else ["no classifier: FD scores skipped"]
    scorer = None
    if args.real:
        real_ref = load_reference(args.real, args.split, max_images=args.max_real, seed=0)
        scorer = RealScorer(images_to_tensor(real_ref.images, size), real_ref.groups, extractor, groups,
                            draws=args.floor_draws, seed=0)
        notes += scorer.notes
    all_recipes = {**recipes, **({reference.name: reference} if reference else {})}
    images, features, seconds = {}, {}, {}
    with tqdm(total=len(all_recipes) * len(prompts), desc="quality images", unit="img",
              disable=args.no_progress) as bar:
        for name, recipe in all_recipes.items():
            chunks, start = [], time.perf_counter()
            for first in range(0, len(prompts), batch):
                chunks.append(recipe(prompts[first:first + batch], seeds[first:first + batch], size))
                bar.update(len(chunks[-1]))
            seconds[name] = (time.perf_counter() - start) / len(prompts)
            images[name] = torch.cat(chunks)
            features[name] = extractor(images[name]) if extractor is not None else None
    out = {"size": size, "n_per_group": n, "prompts": dict(GROUP_PROMPTS), "first_seed": seeds[0],
           "classifier": None if classifier_path is None else str(classifier_path),
           "real": None if scorer is None else {"source": real_ref.source, **scorer.describe()},
           "recipes": {}, "notes": notes}
    pair_floor = None
    if scorer is not None and scorer.floors["all"].get("fd_pair"):
        pair_floor = scorer.floors["all"]["fd_pair"]["mean"]
    out["fd_pair_floor"] = pair_floor
    scores = {name: (scorer.score(images[name], groups, features[name]) if scorer is not None else None)
              for name in all_recipes}

    def versus(name: str, other: str) -> dict:
        entry = {"fd": fd(features[other], features[name]) if extractor is not None else None,
                 "psnr_paired": paired_psnr(images[other], images[name])}
        checks = {}
        if entry["fd"] is not None and pair_floor is not None:
            checks["fd_vs_real_pair_floor"] = {"value": entry["fd"], "floor": pair_floor,
                                               "within": entry["fd"] <= pair_floor}
        if scorer is not None:
            for metric in ("fd_classifier", "histogram_w1", "sharpness_log_error"):
                value, base = scores[name]["all"][metric], scores[other]["all"][metric]
                tol = scorer.tolerance(metric)
                checks[metric] = {"value": value, "other": base, "tolerance": tol,
                                  "within": within_noise(value, base, tol)}
        verdicts = [c["within"] for c in checks.values()]
        entry["checks"] = checks
        entry["within_noise"] = (None if not verdicts or any(v is None for v in verdicts) else all(verdicts))
        return entry

    for name in all_recipes:
        out["recipes"][name] = {
            "seconds_per_image_untimed_pass": seconds[name],
            "vs_real": scores[name],
            "vs_default": versus(name, "default") if name != "default" else None,
        }
    if reference is not None:
        out["default_vs_reference"] = {"reference": reference.name, **versus("default", reference.name)}
    return out


# ------------------------------------------------------------------------------------------- super-resolution
def super_resolution_recipe(pipe: CXRPipeline, default: Recipe, args, device) -> tuple[Recipe | None, dict]:
    """The default recipe with the second stage (`--super-resolution`), or None with 'none', and its record."""
    from cxr_diffusers.pipelines.pipeline_cxr import load_super_resolution

    choice = args.super_resolution
    if choice is not None and choice.lower() == "none":
        return None, {"model": None, "note": "--super-resolution none"}
    if choice is None and pipe.super_resolution is not None:
        model, name = pipe.super_resolution, str(pipe.super_resolution.config.get("_name_or_path") or "the model's own")
    elif choice is None or choice.lower() == "untrained":
        torch.manual_seed(0)
        model, name = CXRSuperResolutionModel(), "untrained (random-init default configuration, torch seed 0)"
    else:
        model, name = load_super_resolution(choice), choice
    model = model.to(device).eval()
    sr_pipe = CXRPipeline(**{**default.pipe.components, "scheduler": copy.deepcopy(default.pipe.scheduler),
                             "super_resolution": model})
    sr_pipe.set_progress_bar_config(disable=True)
    recipe = Recipe("super_resolution", sr_pipe, "pipeline", default.steps, default.guidance, default.bf16,
                    default.guidance_interval, info={**default.info, "super_resolution": name,
                                                     "scale_factors": list(model.scale_factors)})
    sizes = args.sr_sizes or list(sr_pipe.super_resolution_sizes)
    for size in sizes:
        if size not in sr_pipe.super_resolution_sizes:
            raise SystemExit(f"--sr-sizes: {size} is not made by the super-resolution stage "
                             f"({', '.join(map(str, sr_pipe.super_resolution_sizes))} px from {sr_pipe.default_size})")
    return recipe, {"model": name, "config": {k: v for k, v in dict(model.config).items() if not k.startswith("_")},
                    "sizes": sizes, "native_size": sr_pipe.default_size}


def time_super_resolution(default: Recipe, recipe: Recipe, sizes: list[int], args, device, peak: float) -> list[dict]:
    """Rows of the stage's sizes, each timed alternately with the default recipe at the native size (same run)."""
    native = recipe.pipe.default_size
    rows = []
    print(f"super-resolution stage: {recipe.info['super_resolution']}")
    header = (f"{'size':>5} {'batch':>5} {'route':<22} {'ms/img':>9} {'x native':>8} {'peak MB':>8} {'unet':>5} "
              f"{'dec':>5} {'SR':>5} {'SR GF/s':>8}")
    print(header)
    print("-" * len(header))
    calls = [("native", default, native)] + [(f"sr_{size}", recipe, size) for size in sizes]
    sr_flops = {size: super_resolution_flops_per_image(recipe.pipe, size) for size in sizes}
    for batch in args.batch_sizes:
        prompts = [PROMPT] * batch
        for _, r, size in calls:  # warm-up
            r(prompts, list(range(batch)), size)
        walls = {key: [] for key, _, _ in calls}
        comp = {key: defaultdict(float) for key, _, _ in calls}
        samples = {key: defaultdict(int) for key, _, _ in calls}
        peaks = {key: 0.0 for key, _, _ in calls}
        for rep in range(args.repeats):
            seeds = [20_000 * batch + rep * batch + i for i in range(batch)]
            for key, r, size in calls:
                with RSSMonitor() as rss, ComponentTimer(r.pipe) as timer:
                    start = time.perf_counter()
                    r(prompts, seeds, size)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    walls[key].append(time.perf_counter() - start)
                peaks[key] = max(peaks[key], rss.peak_mb)
                for k in timer.seconds:
                    comp[key][k] += timer.seconds[k]
                    samples[key][k] += timer.samples[k]
        native_ms = statistics.median(walls["native"]) / batch * 1e3
        for key, r, size in calls:
            total = sum(walls[key])
            parts = {k: comp[key][k] for k in ("text", "unet", "decoder", "super_resolution") if k in comp[key]}
            parts["other"] = max(total - sum(parts.values()), 0.0)
            ms = statistics.median(walls[key]) / batch * 1e3
            scale = None if key == "native" else size // native
            sr_s = parts.get("super_resolution", 0.0)
            sr_gflops = (sr_flops[size] * samples[key]["super_resolution"] / sr_s / 1e9
                         if scale and sr_s > 0 else None)
            row = {"size": size, "batch": batch, "route": "native" if scale is None else "super_resolution",
                   "scale": scale, "base_size": native, "steps": r.steps, "ms_per_image": ms,
                   "ratio_to_native": ms / native_ms, "native_ms_per_image": native_ms, "peak_rss_mb": peaks[key],
                   "times_s": walls[key],
                   "components": {"seconds": parts, "shares": {k: v / total for k, v in parts.items()}},
                   "flops": {"super_resolution_gflop_per_image": sr_flops[size] / 1e9 if scale else None,
                             "super_resolution_gflops": sr_gflops,
                             "super_resolution_fraction_of_peak": None if sr_gflops is None else sr_gflops * 1e9 / peak}}
            rows.append(row)
            sh = row["components"]["shares"]
            route = "native" if scale is None else f"{native} px + SR {scale}x"
            print(f"{size:>5} {batch:>5} {route:<22} {ms:>9.1f} {row['ratio_to_native']:>8.2f} {row['peak_rss_mb']:>8.0f} "
                  f"{sh['unet']:>5.0%} {sh['decoder']:>5.0%} {sh.get('super_resolution', 0):>5.0%} "
                  f"{sr_gflops or 0:>8.1f}")
    return rows


def super_resolution_goals(section: dict | None, args, device) -> dict:
    """512 px (2x) within 2.5x and 768 px (3x) within 5x of the native time, at the gate batch, 2 CPU threads."""
    if not section or not section.get("rows"):
        return {"pass": None, "note": "no super-resolution rows (--super-resolution none)"}
    threads = torch.get_num_threads()
    batch = GATE_BATCH if GATE_BATCH in args.batch_sizes else max(args.batch_sizes)
    goals: dict = {"batch": batch, "threads": threads, "device": str(device),
                   "at_gate_conditions": device.type == "cpu" and threads == 2 and batch == GATE_BATCH
                   and section["native_size"] == GATE_SIZE,
                   "note": "the gates are defined on the CPU with 2 threads, 256 px native, batch 8"}
    verdicts = []
    for row in section["rows"]:
        if row["batch"] != batch or row["scale"] is None:
            continue
        limit = SUPER_RESOLUTION_GATES.get(row["scale"])
        within = None if limit is None else row["ratio_to_native"] <= limit
        goals[str(row["size"])] = {"scale": row["scale"], "s_per_image": row["ms_per_image"] / 1e3,
                                   "ratio_to_native": row["ratio_to_native"], "at_most": limit, "within": within}
        verdicts.append(within)
    goals["pass"] = None if not verdicts or None in verdicts else all(verdicts)
    return goals


# ---------------------------------------------------------------------------------------------------- goals
def _row(result: dict, recipe: str, size: int, batch: int) -> dict | None:
    return next((r for r in result["rows"] if r["recipe"] == recipe and r["size"] == size and r["batch"] == batch),
                None)


def evaluate_goals(result: dict, args, recipes: dict[str, Recipe], seed_name: str) -> dict:
    size = GATE_SIZE if GATE_SIZE in args.sizes else args.sizes[0]
    batch = GATE_BATCH if GATE_BATCH in args.batch_sizes else max(args.batch_sizes)
    threads = torch.get_num_threads()
    quality = result.get("quality") or {}
    q_ok = quality.get("size") == size
    goals: dict = {"size": size, "batch": batch, "threads": threads,
                   "at_gate_conditions": size == GATE_SIZE and batch == GATE_BATCH and threads == 2,
                   "note": "the gates are defined at 256 px, batch 8, 2 threads"}
    seed_row = _row(result, seed_name, size, batch)

    # default
    d = _row(result, "default", size, batch)
    info = recipes["default"].info
    is_reference = args.steps == args.reference_steps and not args.guidance_interval
    if is_reference:
        within, why = True, f"the default is the {args.reference_steps}-step recipe itself"
    elif q_ok and quality.get("default_vs_reference"):
        within, why = quality["default_vs_reference"]["within_noise"], "quality.default_vs_reference.checks"
    else:
        within, why = None, "no quality pass at this size"
    goals["default"] = {
        "recipe": f"{info['scheduler']} {info['steps']} steps" + (
            f", guidance interval {info['guidance_interval']}" if info.get("guidance_interval") else ""),
        "s_per_image": d["ms_per_image"] / 1e3,
        "at_most_1_s_per_image": d["ms_per_image"] <= 1000,
        "within_noise_of_reference_steps": within,
        "within_noise_basis": why,
        "pass": (d["ms_per_image"] <= 1000 and within) if within is not None else None,
    }

    # distilled at 4 steps
    variants = {}
    for name in ("lcm_4", "lcm_4_tiny"):
        row = _row(result, name, size, batch)
        if row is None:
            continue
        speedup = seed_row["ms_per_image"] / row["ms_per_image"]
        fd_ratio = None
        if q_ok and quality["recipes"].get(name, {}).get("vs_real"):
            fd_r = quality["recipes"][name]["vs_real"]["all"]["fd_classifier"]
            fd_d = quality["recipes"]["default"]["vs_real"]["all"]["fd_classifier"]
            fd_ratio = fd_r / fd_d if fd_r is not None and fd_d else None
        checks = {"at_most_0.35_s_per_image": row["ms_per_image"] <= 350, "at_least_20x_seed": speedup >= 20,
                  "fd_within_15pct_of_default": None if fd_ratio is None else fd_ratio <= 1.15}
        variants[name] = {"s_per_image": row["ms_per_image"] / 1e3, "speedup_vs_seed": speedup,
                          "fd_classifier_ratio_to_default": fd_ratio, **checks,
                          "pass": None if None in checks.values() else all(checks.values())}
    if variants:
        verdicts = [v["pass"] for v in variants.values()]
        goals["distilled_4"] = {**variants, "pass": True if True in verdicts else (None if None in verdicts else False)}
    else:
        goals["distilled_4"] = {"pass": None, "note": "no distilled model (--distilled) or no 4-step recipe"}

    # matmul peak
    peak = result["flops"]["matmul_peak_gflops"]
    mm: dict = {"matmul_peak_gflops": peak}
    profiles = result["flops"].get("profile", {})
    for key, recipe, component in (("unet", "default", "unet"), ("decoder", "default", "decoder"),
                                   ("distilled_unet", "lcm_4", "unet"), ("tiny_decoder", "lcm_4_tiny", "decoder")):
        row = _row(result, recipe, size, batch)
        if row is None:
            continue
        fraction = row["flops"][f"{component}_fraction_of_peak"]
        mm[key] = {"recipe": recipe, "achieved_gflops": row["flops"][f"{component}_gflops"],
                   "fraction_of_matmul_peak": fraction,
                   "at_least_70pct": None if fraction is None else fraction >= 0.7,
                   "holding_back": holding_back(key, fraction, profiles.get(key))}
    mm["pass"] = (None if mm.get("unet", {}).get("at_least_70pct") is None or mm.get("decoder", {}).get("at_least_70pct") is None
                  else mm["unet"]["at_least_70pct"] and mm["decoder"]["at_least_70pct"])
    goals["matmul_peak"] = mm
    goals["super_resolution"] = super_resolution_goals(result.get("super_resolution"), args, recipes["default"].pipe.device)
    return goals


# ---------------------------------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe, model_name = load_components(args.model, device)
    for size in args.sizes:
        if size % pipe.size_multiple:
            raise SystemExit(f"--sizes: {size} is not a multiple of {pipe.size_multiple}")
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and bf16_supported(device))
    recipes, reference, loaded = build_recipes(pipe, args, device, bf16)
    seed_name = f"seed_ddim{50 if 50 in args.seed_steps else args.seed_steps[0]}"

    result: dict = {
        "benchmark": "bench_sampling",
        "model": model_name,
        **loaded,
        "device": str(device),
        "environment": environment_info(),
        "prompt": PROMPT,
        "guidance_scale": args.guidance,
        "lcm_guidance_scale": args.lcm_guidance if args.distilled else None,
        "pipeline_defaults": pipeline_defaults(),
        "seed_recipe": seed_name,
        "recipes": {name: r.info for name, r in recipes.items()},
        "rows": [],
        "flops": {},
    }
    print(f"model: {model_name}; device {device}; threads {torch.get_num_threads()}; bf16 {bf16}; "
          f"recipes: {', '.join(recipes)}")
    result["recipes"]["default"]["tuning"] = tune(recipes["default"], args, args.sizes[0])

    # the matmul peak of the recipes' dtype (bf16 when they autocast to it)
    peak_dtype = torch.bfloat16 if bf16 else torch.float32
    peak_start = matmul_peak_flops(n=args.matmul_size, dtype=peak_dtype, device=device)
    flops_cache: dict = {}

    def flops_of(recipe: Recipe, size: int) -> tuple[int, int]:
        key = (id(recipe.pipe.unet), id(recipe.pipe.vae), size)
        if key not in flops_cache:
            flops_cache[key] = (unet_flops_per_sample(recipe.pipe, size), decoder_flops_per_image(recipe.pipe, size))
        return flops_cache[key]

    header = (f"{'size':>5} {'batch':>5} {'recipe':<13} {'steps':>5} {'ms/img':>9} {'steps/s':>8} {'peak MB':>8} "
              f"{'speedup':>7} {'text':>5} {'unet':>5} {'dec':>5} {'UNet GF/s':>9} {'dec GF/s':>8}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        for batch in args.batch_sizes:
            prompts = [PROMPT] * batch
            for recipe in recipes.values():  # warm-up (one-time costs) outside the timings
                recipe(prompts, list(range(batch)), size)
            walls = {n: [] for n in recipes}
            comp = {n: defaultdict(float) for n in recipes}
            samples = {n: defaultdict(int) for n in recipes}
            peaks = {n: 0.0 for n in recipes}
            for rep in range(args.repeats):
                seeds = [10_000 * batch + rep * batch + i for i in range(batch)]
                for name, recipe in recipes.items():  # alternate the recipes
                    with RSSMonitor() as rss, ComponentTimer(recipe.pipe) as timer:
                        start = time.perf_counter()
                        recipe(prompts, seeds, size)
                        if device.type == "cuda":
                            torch.cuda.synchronize()
                        walls[name].append(time.perf_counter() - start)
                    peaks[name] = max(peaks[name], rss.peak_mb)
                    for k in timer.seconds:
                        comp[name][k] += timer.seconds[k]
                        samples[name][k] += timer.samples[k]
            for name, recipe in recipes.items():
                seconds = statistics.median(walls[name])
                total = sum(walls[name])
                parts = {k: comp[name][k] for k in ("text", "unet", "decoder")}
                parts["other"] = max(total - sum(parts.values()), 0.0)
                unet_f, dec_f = flops_of(recipe, size)
                unet_gflops = unet_f * samples[name]["unet"] / parts["unet"] / 1e9 if parts["unet"] > 0 else None
                dec_gflops = dec_f * samples[name]["decoder"] / parts["decoder"] / 1e9 if parts["decoder"] > 0 else None
                row = {
                    "size": size, "batch": batch, "recipe": name, "steps": recipe.steps,
                    "ms_per_image": seconds / batch * 1e3, "steps_per_s": recipe.steps / seconds,
                    "peak_rss_mb": peaks[name], "times_s": walls[name],
                    "components": {
                        "seconds": parts,
                        "shares": {k: v / total for k, v in parts.items()},
                        "unet_evals_per_image": samples[name]["unet"] / (batch * args.repeats),
                    },
                    "flops": {"unet_gflop_per_eval": unet_f / 1e9, "decoder_gflop_per_image": dec_f / 1e9,
                              "unet_gflops": unet_gflops, "decoder_gflops": dec_gflops},
                }
                result["rows"].append(row)
            for row in result["rows"][-len(recipes):]:
                seed_ms = next(r["ms_per_image"] for r in result["rows"][-len(recipes):] if r["recipe"] == seed_name)
                row["speedup_vs_seed"] = seed_ms / row["ms_per_image"]
                sh = row["components"]["shares"]
                print(f"{size:>5} {batch:>5} {row['recipe']:<13} {row['steps']:>5} {row['ms_per_image']:>9.1f} "
                      f"{row['steps_per_s']:>8.2f} {row['peak_rss_mb']:>8.0f} {row['speedup_vs_seed']:>7.2f} "
                      f"{sh['text']:>5.0%} {sh['unet']:>5.0%} {sh['decoder']:>5.0%} "
                      f"{row['flops']['unet_gflops'] or 0:>9.1f} {row['flops']['decoder_gflops'] or 0:>8.1f}")

    # FLOP/s against the matmul peak (the better of a probe before and after the timings)
    peak = max(peak_start, matmul_peak_flops(n=args.matmul_size, dtype=peak_dtype, device=device))
    result["flops"]["matmul_peak_gflops"] = peak / 1e9
    result["flops"]["matmul_dtype"] = str(peak_dtype).replace("torch.", "")
    result["flops"]["matmul_size"] = args.matmul_size
    if bf16:
        result["flops"]["note_dtype"] = ("the seed recipe runs in fp32: its fractions are against the bf16 peak too; "
                                         "compare its achieved GFLOP/s instead")
    result["flops"]["note"] = ("achieved FLOP/s = FLOPs per UNet evaluation (or per decoded image) x evaluations "
                               "(images) in the timed calls / the component's measured seconds; FLOPs from "
                               "torch.utils.flop_counter (convolutions and matmuls; the CPU flash-attention kernel "
                               "is not counted, so attention layers add time but no FLOPs)")
    for row in result["rows"]:
        f = row["flops"]
        f["unet_fraction_of_peak"] = None if f["unet_gflops"] is None else f["unet_gflops"] * 1e9 / peak
        f["decoder_fraction_of_peak"] = None if f["decoder_gflops"] is None else f["decoder_gflops"] * 1e9 / peak

    sr_recipe, sr_record = super_resolution_recipe(pipe, recipes["default"], args, device)
    result["super_resolution"] = sr_record
    if sr_recipe is not None:
        result["super_resolution"]["recipe"] = sr_recipe.info
        result["super_resolution"]["rows"] = time_super_resolution(recipes["default"], sr_recipe, sr_record["sizes"],
                                                                   args, device, peak)

    if args.profile == "on":
        size = GATE_SIZE if GATE_SIZE in args.sizes else args.sizes[0]
        batch = GATE_BATCH if GATE_BATCH in args.batch_sizes else max(args.batch_sizes)
        profiles = {}
        targets = [("unet", recipes["default"], 2), ("decoder", recipes["default"], 1)]
        if "lcm_4" in recipes:
            targets.append(("distilled_unet", recipes["lcm_4"], 1))
        if "lcm_4_tiny" in recipes:
            targets.append(("tiny_decoder", recipes["lcm_4_tiny"], 1))
        for key, recipe, factor in targets:
            p = recipe.pipe
            latent = size // p.vae_scale_factor
            if key.endswith("unet"):
                n = batch * factor
                x = torch.randn(n, p.unet.config.in_channels, latent, latent, device=device)
                with torch.no_grad():
                    states, mask, _, _ = p.encode_prompt([PROMPT], device, n, False)
                kw = {"encoder_hidden_states": states, "encoder_attention_mask": mask}
                if p.guidance_embedded:
                    kw["timestep_cond"] = torch.zeros(n, p.unet.config.time_cond_proj_dim, device=device)
                fn = lambda p=p, x=x, kw=kw: p.unet(x, torch.tensor(500, device=device), **kw)
            else:
                z = torch.randn(batch, p.unet.config.in_channels, latent, latent, device=device)
                fn = lambda p=p, z=z: p.vae.decode(z)
            profiles[key] = {"size": size, "batch": batch * factor, **op_profile(fn, peak, device)}
        result["flops"]["profile"] = profiles

    result["quality"] = None
    if args.quality_n:
        q_size = GATE_SIZE if GATE_SIZE in args.sizes else args.sizes[0]
        result["quality"] = quality_pass(recipes, reference, args, q_size, max(args.batch_sizes))
        print(f"quality at {q_size}px ({args.quality_n} images per group and recipe):")
        for name, q in result["quality"]["recipes"].items():
            real = (q["vs_real"] or {}).get("all", {})
            vs = q["vs_default"] or {}
            print(f"  {name:<24} FD real {real.get('fd_classifier')}, W1 {real.get('histogram_w1')}, "
                  f"sharpness {real.get('sharpness_ratio')}, FD vs default {vs.get('fd')}, "
                  f"within noise {vs.get('within_noise')}")

    result["goals"] = evaluate_goals(result, args, recipes, seed_name)
    print("goals: " + json.dumps({k: v.get("pass") for k, v in result["goals"].items() if isinstance(v, dict)}))
    result["process_peak_rss_mb"] = peak_rss_mb()
    from cxr_diffusers.evaluation.sampling_sweep import jsonable

    write_benchmark_result(jsonable(result), args.output)
    return result


if __name__ == "__main__":
    main()
