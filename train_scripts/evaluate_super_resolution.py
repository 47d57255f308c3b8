#!/usr/bin/env python
"""Quality of the super-resolution stage on held-out real images (and, with --generated, on generated ones).

    python train_scripts/evaluate_super_resolution.py --model outputs/sr --data ~/cxr-runs/data/hr-native \
        --split test --output_dir ~/cxr-runs/eval/sr-v1
    python train_scripts/evaluate_super_resolution.py --baseline-only --data ~/cxr-runs/data/hr-native \
        --output_dir ~/cxr-runs/eval/sr-baselines
    python train_scripts/evaluate_super_resolution.py --model outputs/sr --data ~/cxr-runs/data/hr-native \
        --generated --pipeline pretrained/cxr-ldm-small -n 12 --output_dir ~/cxr-runs/eval/sr-v1-generated

Real images: each image of the split whose longest side is at least base x scale is fitted into a base x scale
square (HR), shrunk to base px (LR, `cxr_diffusers.data.super_resolution.high_resolution_pair`), upscaled back by
the model, Lanczos and bicubic, and compared with HR: PSNR, SSIM, sharpness ratio, overall and per source, and the
gate (model >= Lanczos + 1 dB PSNR and + 0.02 SSIM, sharpness ratio in [0.8, 1.2]), see
`cxr_diffusers.evaluation.super_resolution`. --baseline-only measures Lanczos and bicubic alone.

--generated: the pipeline's images of the four prompt groups at 256, 512 and 768 px (same prompts and seeds),
each size against the real test images and against 256 px (best 64x64 SSIM to a real image, histogram W1,
sharpness ratio, the classifier's prompt agreement).

Writes `super_resolution_metrics.json`, prints a table, and writes figures: `comparison_<size>_<n>_<source>.png`
(Lanczos | model | original at full size), `lung_crops_<size>.png` (the same images, a lung field magnified 2x) and,
with --generated, `generated_sizes.png`. Figures that show model output carry the project's provenance record
(SYNTHETIC detail, NOT FOR CLINICAL USE, `cxr_diffusers.provenance`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from cxr_diffusers import CXRInputError
from cxr_diffusers.training_utils import load_training_dataset, run_script
from cxr_diffusers.utils.output_dir import check_writable_dir

#: The lung field shown magnified in `lung_crops_<size>.png`: (left, top, right, bottom) as fractions of the side
#: (the patient's right lung of a centred PA film).
LUNG_BOX = (0.14, 0.24, 0.46, 0.56)
METRICS_FILE = "super_resolution_metrics.json"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None,
                        help="super-resolution model folder, or a pipeline folder with super_resolution/")
    parser.add_argument("--baseline-only", "--baseline_only", dest="baseline_only", action="store_true",
                        help="measure Lanczos and bicubic upsampling only (no model)")
    parser.add_argument("--data", required=True, help="dataset saved by `cxr-diffusers data build` (real images)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_images", type=int, default=None, help="at most this many real images (default: all)")
    parser.add_argument("--scales", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--base_resolution", type=int, default=256, help="side of the low-resolution input")
    parser.add_argument("--batch_size", type=int, default=4, help="images per model forward / pipeline call")
    parser.add_argument("--figure_images", type=int, default=3, help="test images in the comparison figures")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--skip_real", action="store_true", help="with --generated: skip the real-image part")
    generated = parser.add_argument_group("generated images")
    generated.add_argument("--generated", action="store_true", help="also evaluate the pipeline's generated images")
    generated.add_argument("--pipeline", default=None, help="pipeline folder (its super_resolution/ unless --model)")
    generated.add_argument("-n", "--num_images_per_group", dest="n", type=int, default=12, help="images per prompt group")
    generated.add_argument("--seed", type=int, default=0)
    generated.add_argument("--steps", type=int, default=25, help="sampling steps")
    generated.add_argument("--guidance", type=float, default=4.0, help="guidance scale")
    generated.add_argument("--sizes", type=int, nargs="+", default=None,
                           help="image sides, the first is the base (default: 256 and the stage's sizes)")
    generated.add_argument("--classifier", default="auto",
                           help="classifier folder for the prompt agreement (default: the bundled one; 'none' skips)")
    generated.add_argument("--reuse_base", action="store_true",
                           help="sample 256 px once and upscale it with the pipeline's stage (same images, faster)")
    generated.add_argument("--max_real", type=int, default=None, help="at most this many real images for --generated")
    parser.add_argument("--output_dir", default="outputs/sr-eval")
    args = parser.parse_args(argv)
    if args.baseline_only and args.model:
        parser.error("--baseline-only measures the baselines without a model; drop --model")
    if args.generated and not args.pipeline:
        parser.error("--generated needs --pipeline")
    if args.skip_real and not args.generated:
        parser.error("--skip_real only goes with --generated")
    if not args.baseline_only and not args.model and not args.pipeline:
        parser.error("give --model (or --pipeline with a super_resolution/ component), or --baseline-only")
    for name in ("num_images", "batch_size", "n", "max_real"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    if args.figure_images < 0:
        parser.error("--figure_images must be at least 0")
    if args.base_resolution < 8:
        parser.error("--base_resolution must be at least 8")
    if any(s < 2 for s in args.scales):
        parser.error("--scales must be integers >= 2")
    try:
        check_writable_dir(args.output_dir, "--output_dir")
    except CXRInputError as error:
        parser.error(str(error))
    return args


def _device(name: str | None):
    import torch

    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


# ------------------------------------------------------------------------------------------------------ figures
def _model_tile(array: np.ndarray, model_name: str, scale: int, base: int) -> Image.Image:
    """A model output as a PIL image tagged as synthetic detail (its grid inherits the record)."""
    from cxr_diffusers.provenance import attach_provenance, make_record

    record = make_record(operation="super_resolution", model=model_name, scale=scale, base_resolution=base,
                         source_image="real held-out radiograph (downsampled, then upscaled)")
    return attach_provenance(Image.fromarray(array), record)


def _crop(image: Image.Image, zoom: int = 2) -> Image.Image:
    w, h = image.size
    box = tuple(round(f * s) for f, s in zip(LUNG_BOX, (w, h, w, h)))
    part = image.crop(box)
    return part.resize((part.width * zoom, part.height * zoom), Image.Resampling.NEAREST)


def write_figures(examples, out: Path, model_name: str | None, base: int) -> list[Path]:
    from cxr_diffusers.utils.image_grid import make_grid

    paths: list[Path] = []
    if not examples:
        return paths
    size = examples[0]["original"].shape[0]
    middle = "model" if model_name else "bicubic"
    labels = ["Lanczos", "super-resolution model: SYNTHETIC detail, NOT FOR CLINICAL USE" if model_name
              else "bicubic", "original"]
    rows = []
    for number, example in enumerate(examples):
        scale = example["scale"]
        tiles = [Image.fromarray(example["lanczos"]),
                 _model_tile(example["model"], model_name, scale, base) if model_name
                 else Image.fromarray(example[middle]),
                 Image.fromarray(example["original"])]
        path = out / f"comparison_{size}_{number}_{example['source']}.png"
        make_grid(tiles, cols=3, labels=labels).save(path)
        paths.append(path)
        rows.append(tiles)
    crop_labels = [f"{label.split(':')[0]} (2x crop)" for label in labels]
    crops = [_crop(tile) for tiles in rows for tile in tiles]
    path = out / f"lung_crops_{size}.png"
    make_grid(crops, cols=3, labels=crop_labels * len(rows)).save(path)
    paths.append(path)
    return paths


def write_generated_figure(images_by_size, prompts, seeds, out: Path, n: int = 4, display: int = 512) -> Path:
    """Row per image: the same prompt and seed at each size, shown at `display` px, tagged as synthetic."""
    from cxr_diffusers.provenance import attach_provenance, make_record
    from cxr_diffusers.utils.image_grid import make_grid

    sizes = sorted(images_by_size)
    picks = np.linspace(0, len(prompts) - 1, min(n, len(prompts))).round().astype(int)
    tiles, labels = [], []
    for i in picks:
        for size in sizes:
            array = (images_by_size[size][i, 0].numpy() * 255).round().astype(np.uint8)
            tile = Image.fromarray(array).resize((display, display), Image.Resampling.LANCZOS)
            tiles.append(attach_provenance(tile, make_record(prompt=prompts[i], seed=int(seeds[i]), size=size)))
            labels.append(f"{size} px, seed {int(seeds[i])}")
    path = out / "generated_sizes.png"
    make_grid(tiles, cols=len(sizes), labels=labels).save(path)
    return path


# ------------------------------------------------------------------------------------------------------ table
def format_real_table(real: dict) -> str:
    lines = [f"real images, base {real['base_resolution']} px",
             f"{'size':>5} {'source':<10} {'n':>4} {'method':<8} {'PSNR':>7} {'SSIM':>7} {'sharp.ratio':>11}"]
    for entry in real["scales"].values():
        parts = [("all", entry["overall"])] + sorted(entry["per_source"].items())
        for source, summary in parts:
            if summary is None:
                lines.append(f"{entry['size']:>5} {source:<10} {0:>4} (no image large enough; "
                             f"{entry['skipped_too_small']} skipped)")
                continue
            for method in real["methods"]:
                m = summary[method]
                lines.append(f"{entry['size']:>5} {source:<10} {summary['n']:>4} {method:<8} {m['psnr']:7.2f} "
                             f"{m['ssim']:7.4f} {m['sharpness_ratio']:11.3f}")
        gates = entry["gates"]
        if gates is not None:
            lines.append(f"{entry['size']:>5} gate: PSNR {gates['psnr_gain_db']:+.2f} dB vs Lanczos "
                         f"({'ok' if gates['psnr'] else 'FAIL'}), SSIM {gates['ssim_gain']:+.4f} "
                         f"({'ok' if gates['ssim'] else 'FAIL'}), sharpness ratio {gates['sharpness_ratio']:.3f} "
                         f"({'ok' if gates['sharpness'] else 'FAIL'}) -> {'PASS' if gates['passed'] else 'FAIL'}")
        lines.append(f"{entry['size']:>5} skipped (smaller than {entry['size']} px): {entry['skipped_too_small']}")
    if real["passed"] is not None:
        lines.append(f"real-image gate: {'PASS' if real['passed'] else 'FAIL'}")
    return "\n".join(lines)


def format_generated_table(generated: dict) -> str:
    lines = [(f"generated images ({generated['n_per_group']} per group, seed {generated['seed']}, "
              f"{generated['steps']} steps, guidance {generated['guidance']:g})"),
             f"{'size':>5} {'mode':<30} {'bestSSIM64':>10} {'W1':>7} {'W1 rvr':>7} {'sharp':>7} {'agree':>6}"]
    for size, entry in generated["sizes"].items():
        fid = (entry["fidelity"] or {}).get("all") or {}
        floor = fid.get("real_vs_real") or {}
        agreement = entry["prompt_agreement"]

        def fmt(value, spec):
            return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0]))

        lines.append(f"{size:>5} {entry['mode']:<30} {entry['best_ssim_64']['mean']:10.4f} "
                     f"{fmt(fid.get('histogram_w1'), '7.2f')} {fmt(floor.get('histogram_w1'), '7.2f')} "
                     f"{fmt(fid.get('sharpness_ratio'), '7.3f')} {fmt(agreement, '6.3f')}")
    lines.append(f"real vs real best SSIM64: {generated['real_vs_real_best_ssim_64']['mean']:.4f}")
    for size, gates in generated["gates"].items():
        if gates is None:
            lines.append(f"{size:>5} gate: not measured")
            continue
        parts = ", ".join(f"{k} {'ok' if v['passed'] else ('-' if v['passed'] is None else 'FAIL')}"
                          for k, v in gates.items() if isinstance(v, dict))
        lines.append(f"{size:>5} gate: {parts} -> {'PASS' if gates['passed'] else 'FAIL'}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    args = parse_args(argv)
    from cxr_diffusers.evaluation.report import write_metrics_json
    from cxr_diffusers.evaluation.super_resolution import (
        comparison_examples,
        evaluate_super_resolution_generated,
        evaluate_super_resolution_real,
    )
    from cxr_diffusers.pipelines.pipeline_cxr import load_super_resolution

    device = _device(args.device)
    model = load_super_resolution(args.model).to(device) if args.model else None
    pipe = None
    if args.pipeline:
        from cxr_diffusers import CXRPipeline

        extra = {"super_resolution": model} if model is not None else {}
        pipe = CXRPipeline.from_pretrained(args.pipeline, **extra).to(device)
        if model is None and not args.baseline_only:
            model = getattr(pipe, "super_resolution", None)
            if model is None:
                raise CXRInputError(f"The pipeline {args.pipeline} has no super_resolution/ component; give --model "
                                    "or --baseline-only.")
    model_name = None if model is None else str(args.model or Path(args.pipeline) / "super_resolution")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics: dict = {"model": model_name, "data": str(args.data), "split": args.split, "args": vars(args)}
    figures: list[Path] = []
    split = load_training_dataset(args.data, None, args.split)
    if not args.skip_real:
        real = evaluate_super_resolution_real(model, split, scales=args.scales, base_resolution=args.base_resolution,
                                              num_images=args.num_images, batch_size=args.batch_size)
        metrics["real"] = real
        print(format_real_table(real))
        if args.figure_images:
            examples = comparison_examples(model, split, scale=max(args.scales), base_resolution=args.base_resolution,
                                           n=args.figure_images)
            figures += write_figures(examples, out, model_name, args.base_resolution)
    if args.generated:
        classifier = None if str(args.classifier).lower() == "none" else args.classifier
        generated, images, prompts, seeds = evaluate_super_resolution_generated(
            pipe, split, n=args.n, seed=args.seed, steps=args.steps, guidance=args.guidance, sizes=args.sizes,
            classifier=classifier, batch_size=args.batch_size, reuse_base=args.reuse_base, max_real=args.max_real,
            return_images=True)
        metrics["generated"] = generated
        print(format_generated_table(generated))
        figures.append(write_generated_figure(images, prompts, seeds, out))
    metrics["files"] = sorted(p.name for p in figures) + [METRICS_FILE]
    write_metrics_json(metrics, out / METRICS_FILE)
    print(f"wrote {out / METRICS_FILE} and {len(figures)} figure(s)")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
