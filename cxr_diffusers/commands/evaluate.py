"""`cxr-diffusers evaluate`: generate with fixed seeds and measure the images against real ones.

    cxr-diffusers evaluate pretrained/cxr-ldm-small --real /data/kermany --split test --train-split train \
        --num-images 50 --real-vs-real --output-dir outputs/evaluation
"""

from __future__ import annotations

import argparse

from ._args import finite_float, seed as seed_type


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation flags (shared with train_scripts/evaluate_generation.py)."""
    parser.add_argument("--real", required=True,
                        help="real reference: a dataset saved by `cxr-diffusers data build`, a Kermany folder, or a folder of images")
    parser.add_argument("--split", default="test", help="split of --real used as the reference (default test)")
    parser.add_argument("--train-data", default=None,
                        help="training images for the memorisation audit and --real-vs-real (default: --real itself)")
    parser.add_argument("--train-split", default="train", help="split of the training data (default train)")
    parser.add_argument("--no-train", action="store_true", help="skip the memorisation audit and real-vs-real baseline")
    parser.add_argument("--max-real", type=int, default=500, help="at most this many reference images (default 500)")
    parser.add_argument("--max-train", type=int, default=1000, help="at most this many training images (default 1000)")
    parser.add_argument("--prompt", "-p", action="append", default=None,
                        help="prompt (repeat for several; default: one 'normal' and one 'pneumonia' prompt)")
    parser.add_argument("--prompt-groups", action="store_true",
                        help="the fixed protocol: one prompt per group (pediatric/adult x normal/pneumonia)")
    parser.add_argument("--num-images", "-n", type=int, default=50, help="images per prompt (default 50)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per pipeline call (default 8)")
    parser.add_argument("--steps", type=int, default=25, help="denoising steps (default 25)")
    parser.add_argument("--guidance", type=finite_float, default=4.0, help="classifier-free guidance scale (default 4)")
    parser.add_argument("--guidance-rescale", type=finite_float, default=0.0,
                        help="rescale the guided prediction towards the conditional one's std, in [0, 1] (Lin et al. "
                             "2023; 0.7 for zero-terminal-SNR models; default 0 = off)")  # fmt: skip
    parser.add_argument("--scheduler", default=None, help="dpm++ (default), ddim, ddpm, euler or unipc")
    parser.add_argument("--size", type=int, default=None, help="image size (default: the model's)")
    parser.add_argument("--seed", type=seed_type, default=0, help="image i of prompt p uses seed + p * n + i (default 0)")
    parser.add_argument("--classifier", default=None,
                        help="transformers image-classification folder (NORMAL/PNEUMONIA) for features and the "
                             "conditioning check (default: pretrained/*classif* when present; 'none' for no classifier)")
    parser.add_argument("--features", default="vae,classifier",
                        help="comma-separated extractors: vae, classifier, inception, xrv (the last two only with "
                             "weights already on disk)")
    parser.add_argument("--feature-vae", default=None,
                        help="pipeline or VAE folder whose encoder gives the 'vae' features (default: the evaluated "
                             "pipeline's own VAE); fix it to compare pipelines with different VAEs")
    parser.add_argument("--real-vs-real", action="store_true",
                        help="also compare training vs reference images: the noise floor of every metric")
    parser.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    parser.add_argument("--memorization-size", type=int, default=64, help="image size for the SSIM audit (default 64)")
    parser.add_argument("--near-copy-ssim", type=float, default=None, help="near-copy SSIM threshold (default 0.9)")
    parser.add_argument("--near-copy-cosine", type=float, default=None, help="near-copy feature cosine threshold (default 0.99)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--output-dir", "-o", default="outputs/evaluation", help="where to write metrics.json and plots")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="evaluate a model: FD/KID/precision-recall, memorisation, conditioning, plots",
        description="Generate images with fixed seeds and compare them with real X-rays: per-image statistics, "
                    "distribution metrics on project features, memorisation audit, conditioning check; writes "
                    "metrics.json and plots.",
    )
    parser.add_argument("model", help="pipeline folder or Hub id (e.g. pretrained/cxr-ldm-small)")
    add_arguments(parser)
    parser.set_defaults(func=run)


def evaluate_from_args(args: argparse.Namespace, model: str) -> dict:
    import torch

    from ..errors import CXRInputError
    from ..evaluation.conditioning import DEFAULT_PROMPTS, GROUP_PROMPTS
    from ..evaluation.memorization import DEFAULT_COSINE_THRESHOLD, DEFAULT_SSIM_THRESHOLD
    from ..evaluation.runner import FEATURE_CHOICES, EvaluationConfig, find_classifier, load_reference, run_evaluation
    from ..pipelines import CXRPipeline
    from ..utils.output_dir import check_writable_dir

    for name in ("num_images", "batch_size", "steps", "max_real", "max_train", "kid_subsets"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CXRInputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    unknown = sorted(set(features) - set(FEATURE_CHOICES))
    if unknown:
        raise CXRInputError(f"Unknown --features {unknown}; choose from {', '.join(FEATURE_CHOICES)}.")
    if args.classifier is not None and args.classifier.lower() == "none":
        classifier = None
    else:
        classifier = args.classifier or find_classifier()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    check_writable_dir(args.output_dir, "--output-dir")  # before anything loads

    pipe = CXRPipeline.from_pretrained(model).to(device)
    real = load_reference(args.real, args.split, max_images=args.max_real, seed=args.seed)
    train = None
    if not args.no_train:
        train = load_reference(args.train_data or args.real, args.train_split, max_images=args.max_train, seed=args.seed)
    config = EvaluationConfig(
        prompts=args.prompt or list((GROUP_PROMPTS if args.prompt_groups else DEFAULT_PROMPTS).values()),
        num_images_per_prompt=args.num_images,
        seed=args.seed,
        batch_size=args.batch_size,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        guidance_rescale=args.guidance_rescale,
        scheduler=args.scheduler,
        size=args.size,
        features=features,
        feature_vae=args.feature_vae,
        real_vs_real=args.real_vs_real,
        memorization_size=args.memorization_size,
        ssim_threshold=DEFAULT_SSIM_THRESHOLD if args.near_copy_ssim is None else args.near_copy_ssim,
        cosine_threshold=DEFAULT_COSINE_THRESHOLD if args.near_copy_cosine is None else args.near_copy_cosine,
        kid_subsets=args.kid_subsets,
        progress=not args.no_progress,
    )
    extra = {"model": str(model), "real": real.source, "train": None if train is None else train.source,
             "skipped_unreadable": {"real": len(real.skipped), "train": 0 if train is None else len(train.skipped)},
             "classifier": None if classifier is None else str(classifier)}
    return run_evaluation(pipe, real.images, args.output_dir, config,
                          train_images=None if train is None else train.images,
                          real_classes=real.classes, real_groups=real.groups, classifier=classifier, extra=extra)


def _line(metrics: dict) -> str:
    parts = []
    for name, entry in metrics.get("distribution", {}).items():
        g = entry["generated_vs_real"]
        text = f"FD[{name}] {g['fd']:.4g}"
        if "real_vs_real" in entry:
            text += f" (real-vs-real {entry['real_vs_real']['fd']:.4g})"
        parts.append(text)
    if "conditioning" in metrics:
        parts.append(f"prompt agreement {metrics['conditioning']['agreement']:.0%}")
    if "memorization" in metrics:
        parts.append(f"near copies {metrics['memorization']['generated_vs_train']['near_copies']}")
    return "; ".join(parts)


def run(args: argparse.Namespace) -> int:
    metrics = evaluate_from_args(args, args.model)
    print(f"Evaluated {metrics['counts']['generated']} generated vs {metrics['counts']['real']} real images: "
          f"{_line(metrics)}. Wrote metrics.json and plots to {args.output_dir}/.")
    return 0
