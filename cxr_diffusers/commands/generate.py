"""`cxr-diffusers generate`: prompts -> PNGs with provenance, a manifest.jsonl and optionally a grid."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="generate synthetic chest X-rays from text",
        description="Generate synthetic chest X-rays from text prompts. Output images are NOT FOR CLINICAL USE.",
    )
    parser.add_argument("model", help="model folder or Hub id (e.g. pretrained/cxr-ldm-small)")
    parser.add_argument("--prompt", "-p", action="append", required=True, help="prompt (repeat for several)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt applied to every prompt")
    parser.add_argument("--num-images", "-n", type=int, default=1, help="images per prompt (default 1)")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed; image i uses seed+i (default 0)")
    parser.add_argument("--height", type=int, default=None, help="image height (default: the model's size)")
    parser.add_argument("--width", type=int, default=None, help="image width (default: the model's size)")
    parser.add_argument("--scheduler", default=None, help="dpm++ (default), ddim, ddpm, euler or unipc")
    parser.add_argument("--enhancement", default=None, help="enhancement preset applied to the outputs")
    parser.add_argument("--output-dir", "-o", default="outputs/generated", help="where to write PNGs")
    parser.add_argument("--grid", action="store_true", help="also write grid.png with all images")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import CXRInputError
    from ..pipelines import CXRPipeline
    from ..schedulers import scheduler_from_name
    from ..utils.image_grid import make_grid

    if args.num_images < 1:
        raise CXRInputError(f"--num-images must be at least 1, got {args.num_images}.")
    pipe = CXRPipeline.from_pretrained(args.model)
    if args.scheduler:
        pipe.scheduler = scheduler_from_name(args.scheduler, pipe.scheduler.config)
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    images, records, seconds = [], [], []
    for p_index, prompt in enumerate(args.prompt):
        for i in range(args.num_images):
            seed = args.seed + p_index * args.num_images + i
            start = time.perf_counter()
            image = pipe(
                prompt,
                negative_prompt=args.negative_prompt,
                height=args.height,
                width=args.width,
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                generator=torch.Generator().manual_seed(seed),
                enhancement=args.enhancement,
            ).images[0]
            seconds.append(time.perf_counter() - start)
            path = out_dir / f"cxr_{p_index:02d}_{i:03d}_seed{seed}.png"
            image.save(path)
            images.append(image)
            records.append({"file": path.name, "prompt": prompt, "seed": seed, "seconds": round(seconds[-1], 3),
                            "steps": args.steps, "guidance": args.guidance, "model": args.model,
                            "scheduler": type(pipe.scheduler).__name__, "enhancement": args.enhancement,
                            "synthetic": True, "not_for_clinical_use": True})
    with open(out_dir / "manifest.jsonl", "a", encoding="utf-8") as manifest:
        for record in records:
            manifest.write(json.dumps(record) + "\n")
    if args.grid:
        make_grid(images, cols=min(len(images), 4)).save(out_dir / "grid.png")
    per_image = sorted(seconds)[len(seconds) // 2]
    print(f"Wrote {len(images)} image(s) to {out_dir}/ (manifest.jsonl{', grid.png' if args.grid else ''}); "
          f"median {per_image:.2f} s per image. Synthetic images: not for clinical use.")
    return 0
