#!/usr/bin/env python
"""Assemble a trained `CXRPipeline` for shipping: optionally swap in a (decoder-fine-tuned) VAE, cast the weights
to fp16 safetensors, and write it in Hub repo layout.

    python train_scripts/export_pipeline.py --pipeline runs/ldm-small/pipeline --vae runs/vae-small-dec/vae \
        --output_dir pretrained/cxr-ldm-small --dtype fp16

fp16 halves the download; `CXRPipeline.from_pretrained` loads it back in fp32 on the CPU (pass `torch_dtype` to
keep fp16 on a GPU). The export also ships the pipeline's code (`pipeline.py` and the package modules it needs, see
`cxr_diffusers.remote_code`) and names it in model_index.json (`"_class_name": ["pipeline", "CXRPipeline"]`, diffusers'
custom pipeline), so that diffusers alone loads it where cxr-diffusers is not installed:
`DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`; `--no-remote_code` leaves it out (and keeps
`"_class_name": "CXRPipeline"`). `CXRPipeline.from_pretrained` never runs that code.

`--super_resolution FOLDER` adds the second stage (a `CXRSuperResolutionModel` folder, or a pipeline folder with
`super_resolution/`) as the pipeline's `super_resolution` component: the export then makes 512 and 768 px by
upscaling its 256 px images, and ships the model's code with the rest.

A non-empty `--output_dir` is replaced only with `--overwrite`, never when it is (or contains) the pipeline or VAE being
exported, and only once the new folder is complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

from cxr_diffusers import CXRAutoencoderKL, CXRInputError, CXRPipeline
from cxr_diffusers.hub import load_pretrained
from cxr_diffusers.pipelines.pipeline_cxr import load_super_resolution
from cxr_diffusers.remote_code import write_remote_code
from cxr_diffusers.schedulers import LATENT_SCHEDULER_DEFAULTS
from cxr_diffusers.training_utils import run_script
from cxr_diffusers.utils.output_dir import check_output_dir, staged_output_dir

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pipeline", required=True, help="trained pipeline folder (train_ldm.py output)")
    parser.add_argument("--vae", default=None, help="replace the VAE (must share the encoder's latent space)")
    parser.add_argument("--super_resolution", default=None, metavar="FOLDER",
                        help="add (or replace) the super-resolution stage: a CXRSuperResolutionModel folder "
                             "(train_super_resolution.py output) or a pipeline folder with super_resolution/")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output_dir")
    parser.add_argument("--dtype", default="fp16", choices=sorted(DTYPES))
    parser.add_argument("--copy", nargs="*", default=["README.md", "samples.png", "training_summary.json"],
                        help="files of the pipeline folder copied alongside the weights")
    parser.add_argument("--remote_code", action=argparse.BooleanOptionalAction, default=True,
                        help="ship pipeline.py and the modules it needs, for diffusers without cxr-diffusers "
                        "(trust_remote_code=True); default on")
    args = parser.parse_args(argv)
    try:
        out = check_output_dir(args.output_dir, overwrite=args.overwrite,
                               protected=(args.pipeline, args.vae, args.super_resolution))
        pipe = CXRPipeline.from_pretrained(args.pipeline)
        vae = load_pretrained(CXRAutoencoderKL, args.vae, "VAE") if args.vae else None
        super_resolution = load_super_resolution(args.super_resolution) if args.super_resolution else None
    except CXRInputError as error:
        parser.error(str(error))
    if vae is not None:
        if vae.config.scaling_factor != pipe.vae.config.scaling_factor:
            parser.error(f"--vae has scaling_factor {vae.config.scaling_factor}, the pipeline "
                         f"{pipe.vae.config.scaling_factor}: it is not the same latent space")
        pipe.vae = vae
        pipe.register_modules(vae=vae)
    if super_resolution is not None:
        pipe.register_modules(super_resolution=super_resolution)
    # pipelines trained before the setting existed: store clip_sample=False so DDIMScheduler.from_config inherits it
    scheduler = type(pipe.scheduler).from_config({**pipe.scheduler.config, **LATENT_SCHEDULER_DEFAULTS})
    pipe.scheduler = scheduler
    pipe.register_modules(scheduler=scheduler)
    for module in (pipe.vae, pipe.unet, pipe.text_encoder, pipe.super_resolution):
        if module is not None:
            module.to(DTYPES[args.dtype])
    with staged_output_dir(out) as staging:
        pipe.save_pretrained(staging, safe_serialization=True)
        if args.remote_code:
            write_remote_code(staging)
        for name in args.copy:
            source = Path(args.pipeline) / name
            if source.is_file():
                shutil.copy(source, staging / name)
    sizes = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    total = sum(sizes.values()) / 2**20
    print(json.dumps({"output_dir": str(out), "total_mb": round(total, 1),
                      "weights_mb": {k: round(v / 2**20, 1) for k, v in sizes.items() if k.endswith(".safetensors")}},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
