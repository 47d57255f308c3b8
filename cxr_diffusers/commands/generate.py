"""`cxr-diffusers generate`: prompts -> PNGs with provenance, a manifest.jsonl and optionally a grid.

Fast mode (see `cxr_diffusers.fast`): `--distilled FOLDER` swaps in a distilled few-step UNet and its LCMScheduler
(4 steps unless `--steps` says otherwise), `--tiny-decoder [FOLDER]` a small distilled decoder (default
`<distilled>/vae_tiny`), and `--fast` both from the model's sibling folder `<model>-lcm`:

    cxr-diffusers generate pretrained/cxr-ldm-small --fast -p "PA chest radiograph. Findings: pneumonia."

512 and 768 px (`--height/--width`) come from the pipeline's super-resolution stage where MODEL has one
(`super_resolution/`) or `--super-resolution FOLDER` adds it: 256 px sampled, then upscaled 2x or 3x;
`--no-super-resolution` samples the large canvas directly (the UNet then tiles its 256 px layout).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

from ._args import finite_float, positive_int, seed as seed_type


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
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="denoising steps (default 25; 4 with --distilled or --fast)")
    parser.add_argument("--guidance", type=finite_float, default=4.0, help="classifier-free guidance scale (default 4)")
    parser.add_argument("--guidance-interval", type=noise_level, nargs=2, metavar=("LO", "HI"), default=None,
                        help="apply guidance only at steps whose noise level sigma = sqrt((1 - alpha_bar) / alpha_bar) "
                             "is in [LO, HI] (HI may be inf); the other steps run the conditional branch alone "
                             "(default: guidance at every step)")
    parser.add_argument("--seed", type=seed_type, default=0, help="seed in [0, 2**63 - 1]; image i uses seed+i (default 0)")
    parser.add_argument("--height", type=int, default=None, help="image height (default: the model's size)")
    parser.add_argument("--width", type=int, default=None, help="image width (default: the model's size)")
    stage = parser.add_mutually_exclusive_group()
    stage.add_argument("--super-resolution", default=None, metavar="FOLDER",
                       help="add a super-resolution stage (a CXRSuperResolutionModel folder, or a pipeline folder with "
                            "super_resolution/) for sizes above the model's (512 and 768 px from 256 px)")
    stage.add_argument("--no-super-resolution", action="store_true",
                       help="sample sizes above the model's directly even where MODEL has a super-resolution stage "
                            "(the UNet tiles its layout on a larger canvas)")
    parser.add_argument("--scheduler", default=None,
                        help="dpm++ (default), ddim, ddpm, euler, unipc, or lcm (a few-step model from train_lcm_distill.py)")
    parser.add_argument("--enhancement", default=None, help="enhancement preset applied to the outputs")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "auto"], default="float32",
                        help="weights and compute dtype: float32 (default), bfloat16 (about 2.5x faster on CPUs with "
                             "AMX/AVX512-BF16, images within a few grey levels), or auto (bfloat16 where the CPU runs "
                             "it natively)")
    fast = parser.add_argument_group("fast mode (a distilled model beside MODEL)")
    fast.add_argument("--distilled", default=None, metavar="FOLDER",
                      help="a distilled few-step model's folder (train_lcm_distill.py's <output_dir>/fast: unet/ and "
                           "scheduler/): its UNet and LCMScheduler replace MODEL's; 4 steps by default")
    fast.add_argument("--tiny-decoder", nargs="?", const=True, default=None, metavar="FOLDER",
                      help="decode with a small distilled decoder (an AutoencoderTiny for MODEL's VAE latents): FOLDER, "
                           "or without FOLDER the distilled model's vae_tiny/ (put the flag after MODEL)")
    fast.add_argument("--fast", action="store_true",
                      help="--distilled <MODEL>-lcm --tiny-decoder: the fast folder shipped beside MODEL "
                           "(pretrained/cxr-ldm-small-lcm beside pretrained/cxr-ldm-small)")
    parser.add_argument("--output-dir", "-o", default="outputs/generated", help="where to write PNGs")
    parser.add_argument("--grid", action="store_true", help="also write grid.png with all images")
    parser.set_defaults(func=run)


def noise_level(text: str) -> float:
    """A bound of --guidance-interval: a number, `inf` allowed (the pipeline checks 0 <= LO <= HI)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number (or inf), got {text!r}") from None
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"must be a number (or inf), got {text}")
    return value


def resolve_dtype(name: str):
    """`--dtype`: float32, bfloat16, or auto = bfloat16 where the CPU (or GPU) runs it natively, else float32."""
    import torch

    from ..evaluation.timing import bf16_supported

    if name == "auto":
        return torch.bfloat16 if bf16_supported("cuda" if torch.cuda.is_available() else "cpu") else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


def fast_mode_folders(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """`(distilled, tiny_decoder)` folders of `--distilled` / `--tiny-decoder` / `--fast` (None where unused), with
    one-sentence errors for a combination or folder that cannot work."""
    from ..errors import CXRInputError, ModelLoadingError
    from ..fast import TINY_DECODER_FOLDER, default_fast_folder, has_tiny_decoder

    distilled, tiny = args.distilled, args.tiny_decoder
    if args.fast:
        if distilled:
            raise CXRInputError("--fast loads the distilled model beside MODEL (<MODEL>-lcm); give --fast or "
                                "--distilled FOLDER, not both.")
        if not os.path.isdir(args.model):
            raise CXRInputError(f"--fast needs MODEL to be a local folder (it loads <MODEL>-lcm beside it); {args.model!r} "
                                "is not one, so give --distilled FOLDER.")
        distilled = default_fast_folder(args.model)
        if not os.path.isdir(distilled):
            raise ModelLoadingError(f"--fast: there is no distilled model folder {distilled!r} beside {args.model!r}; "
                                    "give --distilled FOLDER (train_lcm_distill.py writes one as <output_dir>/fast).")
        if tiny is None:
            tiny = True
    if tiny is True:
        if not distilled:
            raise CXRInputError("--tiny-decoder without FOLDER uses the distilled model's vae_tiny/; give --distilled "
                                "FOLDER (or --fast), or --tiny-decoder FOLDER.")
        tiny = os.path.join(distilled, TINY_DECODER_FOLDER)
        if not has_tiny_decoder(tiny):
            raise ModelLoadingError(f"The distilled model folder {distilled!r} has no {TINY_DECODER_FOLDER}/ (the tiny "
                                    "decoder); give --tiny-decoder FOLDER, or drop it to decode with MODEL's VAE.")
    return distilled, tiny


def run(args: argparse.Namespace) -> int:
    import torch

    from ..errors import CXRInputError
    from ..fast import FAST_STEPS, load_distilled_unet, load_tiny_decoder
    from ..pipelines import CXRPipeline
    from ..pipelines.pipeline_cxr import load_super_resolution
    from ..provenance import read_provenance
    from ..schedulers import scheduler_from_name
    from ..utils.image_grid import make_grid
    from ..utils.output_dir import check_writable_dir
    from ._args import MAX_SEED

    if args.num_images < 1:
        raise CXRInputError(f"--num-images must be at least 1, got {args.num_images}.")
    last_seed = args.seed + len(args.prompt) * args.num_images - 1
    if last_seed > MAX_SEED:
        raise CXRInputError(f"--seed {args.seed} leaves no room for {len(args.prompt) * args.num_images} seeds below 2**63.")
    out_dir = check_writable_dir(args.output_dir, "--output-dir")  # before the model loads
    distilled, tiny = fast_mode_folders(args)
    steps = args.steps or (FAST_STEPS if distilled else 25)
    overrides = dict(zip(("unet", "scheduler"), load_distilled_unet(distilled))) if distilled else {}
    tiny_vae = load_tiny_decoder(tiny) if tiny else None
    if args.super_resolution:
        overrides["super_resolution"] = load_super_resolution(args.super_resolution)
    pipe = CXRPipeline.from_pretrained(args.model, **overrides)
    if tiny_vae is not None:
        pipe._check_vae(tiny_vae, pipe.unet)
        pipe.vae = tiny_vae
    if args.scheduler:
        pipe.scheduler = scheduler_from_name(args.scheduler, pipe.scheduler.config)
    dtype = resolve_dtype(args.dtype)
    if dtype is not torch.float32:
        pipe.to(dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    interval = tuple(args.guidance_interval) if args.guidance_interval else None
    interval_record = {"guidance_interval": [v if math.isfinite(v) else str(v) for v in interval]} if interval else {}
    fast_record = {**({"distilled": distilled} if distilled else {}), **({"tiny_decoder": tiny} if tiny else {})}

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
                num_inference_steps=steps,
                guidance_scale=args.guidance,
                generator=torch.Generator().manual_seed(seed),
                enhancement=args.enhancement,
                guidance_interval=interval,
                super_resolution=False if args.no_super_resolution else None,
            ).images[0]
            seconds.append(time.perf_counter() - start)
            path = out_dir / f"cxr_{p_index:02d}_{i:03d}_seed{seed}.png"
            partial = path.with_name(f".{path.name}.partial")
            image.save(partial, format="PNG")
            os.replace(partial, path)
            images.append(image)
            provenance = read_provenance(image)
            record_seen = provenance.get("prompt_seen_by_model")
            stage = provenance.get("super_resolution")
            records.append({"file": path.name, "prompt": prompt,
                            **({"prompt_seen_by_model": record_seen} if record_seen else {}),
                            "seed": seed, "seconds": round(seconds[-1], 3),
                            "steps": steps, "guidance": args.guidance, **interval_record, "model": args.model,
                            **fast_record, **({"super_resolution": stage} if stage else {}),
                            "scheduler": type(pipe.scheduler).__name__, "enhancement": args.enhancement,
                            "dtype": str(dtype).removeprefix("torch."), "synthetic": True, "not_for_clinical_use": True})
            write_manifest(out_dir / "manifest.jsonl", records[-1:])  # after every image: true even if interrupted
    if args.grid:
        make_grid(images, cols=min(len(images), 4)).save(out_dir / "grid.png")
    per_image = sorted(seconds)[len(seconds) // 2]
    mode = (f" in fast mode ({'distilled UNet, ' if distilled else ''}{steps} steps"
            f"{', tiny decoder' if tiny else ''})") if fast_record else ""
    stage = records[-1].get("super_resolution")
    if stage:
        mode += (f" through the super-resolution stage ({stage['base_width']}x{stage['base_height']} px sampled, "
                 f"upscaled {stage['scale']}x)")
    print(f"Wrote {len(images)} image(s) to {out_dir}/ (manifest.jsonl{', grid.png' if args.grid else ''}){mode}; "
          f"median {per_image:.2f} s per image. Synthetic images: not for clinical use.")
    return 0


def write_manifest(path: Path, records: list[dict]) -> None:
    """
    Merge `records` into the manifest at `path`: one line per image file, always the record of the image now on
    disk (a file written again replaces its old line instead of adding a contradictory second one). Written to a
    temporary file and renamed, so an interrupted run never leaves a half-written manifest.
    """
    from ..errors import DataError

    merged: dict[str, dict] = {}
    if path.is_file():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path} line {number} is not valid JSON; fix or remove it before adding images.") from None
            if isinstance(entry, dict) and entry.get("file"):
                merged[entry["file"]] = entry
    for record in records:
        merged.pop(record["file"], None)  # re-inserted last: the manifest lists files in the order they were written
        merged[record["file"]] = record
    staging = path.with_name(f".{path.name}.partial")
    staging.write_text("".join(json.dumps(r) + "\n" for r in merged.values()), encoding="utf-8")
    os.replace(staging, path)
