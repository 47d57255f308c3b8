#!/usr/bin/env python
"""Training throughput: samples/s of one VAE and one UNet optimisation step for the tiny / small / base configs.

The steps are those of train_scripts/train_vae.py and train_ldm.py without the data pipeline: the VAE step encodes,
samples, decodes and takes MSE + KL (+ Sobel edge loss where the config sets it) on random crops of the config's
`crop_size`; the UNet step runs the text encoder (frozen body, trainable projection) on token ids of prompt length,
noises cached-latent-sized tensors with the DDPM schedule, and takes the (min-SNR weighted) epsilon loss. Both use
AdamW and gradient clipping, fp32 on CPU.

    python benchmarks/bench_training.py                              # tiny, small, base; batch 8; 5 timed steps
    python benchmarks/bench_training.py --configs tiny --steps 2 --output /tmp/bench_training.json

Writes benchmarks/results/bench_training.json (see --output).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxr_diffusers import CXRAutoencoderKL, CXRTextEncoder, CXRUNet2DConditionModel, get_model_config
from cxr_diffusers.evaluation.timing import RSSMonitor, environment_info, write_benchmark_result
from cxr_diffusers.schedulers import TRAINING_SCHEDULE

PROMPT_TOKENS = 24  # a typical prompt ("PA chest radiograph of a 58 year old female. Findings: ...") in WordPiece tokens


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["tiny", "small", "base"], choices=["tiny", "small", "base"])
    p.add_argument("--models", nargs="+", default=["vae", "unet"], choices=["vae", "unet"])
    p.add_argument("--batch-size", type=int, default=8, help="samples per step (the same for every config)")
    p.add_argument("--crop-size", type=int, default=None, help="VAE crop size (default: the config file's crop_size)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "bench_training.json"))
    return p.parse_args(argv)


def _script_config(name: str) -> dict:
    path = ROOT / "train_scripts" / "configs" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def sobel_edges(images: torch.Tensor) -> torch.Tensor:
    kernel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], device=images.device) / 4
    kernels = torch.stack([kernel, kernel.T])[:, None].to(images.dtype)
    return F.conv2d(images, kernels, padding=1)


def vae_step_fn(name: str, batch: int, crop: int | None, device):
    cfg = get_model_config(name)["vae"]
    script = _script_config(name)
    vae_section = {**script.get("common", {}), **script.get("vae", {})}
    crop = crop or vae_section.get("crop_size", 128)
    edge_weight = vae_section.get("edge_loss_weight", 0.0)
    vae = CXRAutoencoderKL(**cfg).to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-4)
    x = torch.rand(batch, 1, crop, crop, device=device) * 2 - 1

    def step():
        posterior = vae.encode(x).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(reconstruction, x) + 1e-4 * posterior.kl().mean() / posterior.mean[0].numel()
        if edge_weight:
            loss = loss + edge_weight * F.l1_loss(sobel_edges(reconstruction), sobel_edges(x))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    info = {"input": f"{crop}x{crop} crops", "edge_loss": bool(edge_weight),
            "parameters_m": sum(p.numel() for p in vae.parameters()) / 1e6}
    return step, info


def unet_step_fn(name: str, batch: int, device):
    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    cfg = get_model_config(name)
    script = _script_config(name)
    ldm = {**script.get("common", {}), **script.get("ldm", {})}
    snr_gamma = ldm.get("snr_gamma")
    unet = CXRUNet2DConditionModel(**cfg["unet"]).to(device).train()
    text_encoder = CXRTextEncoder(**cfg["text_encoder"]).to(device)
    text_encoder.freeze_body(True)
    text_encoder.train()
    trainable = [p for p in list(unet.parameters()) + list(text_encoder.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    scheduler = DDPMScheduler(**TRAINING_SCHEDULE)
    size = cfg["unet"]["sample_size"]
    latents = torch.randn(batch, cfg["unet"]["in_channels"], size, size, device=device)
    vocab = text_encoder.bert.config.vocab_size
    input_ids = torch.randint(1000, vocab, (batch, PROMPT_TOKENS), device=device)
    mask = torch.ones_like(input_ids)

    def step():
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=device)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        text = text_encoder(input_ids, attention_mask=mask)
        prediction = unet(noisy, timesteps, text.last_hidden_state, encoder_attention_mask=text.attention_mask).sample
        if snr_gamma is None:
            loss = F.mse_loss(prediction, noise)
        else:
            snr = compute_snr(scheduler, timesteps)
            weights = torch.minimum(snr, torch.full_like(snr, snr_gamma)) / snr
            loss = (F.mse_loss(prediction, noise, reduction="none").mean(dim=(1, 2, 3)) * weights).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    info = {"input": f"latents {cfg['unet']['in_channels']}x{size}x{size}, {PROMPT_TOKENS} text tokens",
            "min_snr_gamma": snr_gamma, "parameters_m": sum(p.numel() for p in unet.parameters()) / 1e6,
            "text_encoder_parameters_m": sum(p.numel() for p in text_encoder.parameters()) / 1e6,
            "trainable_parameters_m": sum(p.numel() for p in trainable) / 1e6}
    return step, info


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    result = {"benchmark": "bench_training", "device": str(device), "environment": environment_info(),
              "batch_size": args.batch_size, "dtype": "fp32", "rows": []}
    header = f"{'config':<6} {'model':<5} {'params M':>8} {'s/step':>8} {'samples/s':>10} {'peak MB':>8}  input"
    print(header)
    print("-" * (len(header) + 20))
    for name in args.configs:
        for model in args.models:
            step, info = (vae_step_fn(name, args.batch_size, args.crop_size, device) if model == "vae"
                          else unet_step_fn(name, args.batch_size, device))
            step()  # warm-up: allocator, oneDNN primitives
            times = []
            with RSSMonitor() as rss:
                for _ in range(args.steps):
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    step()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - start)
            seconds = statistics.median(times)
            row = {"config": name, "model": model, **info, "seconds_per_step": seconds,
                   "samples_per_s": args.batch_size / seconds, "peak_rss_mb": rss.peak_mb, "times_s": times}
            result["rows"].append(row)
            print(f"{name:<6} {model:<5} {info['parameters_m']:>8.2f} {seconds:>8.3f} {row['samples_per_s']:>10.2f} "
                  f"{rss.peak_mb:>8.0f}  {info['input']}")
            del step
    write_benchmark_result(result, args.output)
    return result


if __name__ == "__main__":
    main()
