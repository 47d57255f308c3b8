"""`cxr-diffusers synthesize`: a synthetic dataset from a spec, on one or many processes, resumable, filtered.

    cxr-diffusers synthesize pretrained/cxr-ldm-small --spec balanced.yaml --output-dir outputs/synthetic -n 1000
    accelerate launch --multi_gpu --num_processes 2 -m cxr_diffusers.cli synthesize MODEL --spec SPEC -o DIR

The output folder is a Hugging Face imagefolder dataset (images + metadata.jsonl + README.md card): see
`cxr_diffusers.synthesis` and docs/synthesize.md. Output images are NOT FOR CLINICAL USE.
"""

from __future__ import annotations

import argparse
import os

from ._args import finite_float, positive_int
from ._args import seed as seed_type


def _probability(text: str) -> float:
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "synthesize",
        help="make a synthetic dataset (imagefolder + metadata.jsonl + card) from a spec; resumable, multi-process",
        description="Make a synthetic chest X-ray dataset from a spec (findings, ages, sex, view, or prompts), split "
                    "by image index over the processes of `accelerate launch`; a stopped run continues where it "
                    "stopped. The output loads with datasets.load_dataset('imagefolder', data_dir=DIR). Output "
                    "images are NOT FOR CLINICAL USE.",
    )
    parser.add_argument("model", help="model folder or Hub id (e.g. pretrained/cxr-ldm-small)")
    parser.add_argument("--spec", required=True, help="what to make: a .yaml/.json spec or a .csv of prompts")
    parser.add_argument("--output-dir", "-o", required=True,
                        help="the dataset folder (new, empty, or an unfinished run of the same arguments)")
    parser.add_argument("--num-images", "-n", type=positive_int, default=None,
                        help="number of images (default: the spec's counts or its num_images)")
    parser.add_argument("--batch-size", type=positive_int, default=8, help="images per pipeline call (default 8)")
    parser.add_argument("--seed", type=seed_type, default=0,
                        help="run seed in [0, 2**63 - 1]; image i gets image_seed(seed, i) (default 0)")
    parser.add_argument("--steps", type=positive_int, default=25, help="denoising steps (default 25)")
    parser.add_argument("--guidance", type=finite_float, default=4.0, help="classifier-free guidance scale (default 4)")
    parser.add_argument("--scheduler", default=None, help="dpm++ (default), ddim, ddpm, euler, unipc or lcm")
    parser.add_argument("--height", type=positive_int, default=None, help="image height (default: the model's size)")
    parser.add_argument("--width", type=positive_int, default=None, help="image width (default: the model's size)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt for every image")
    parser.add_argument("--enhancement", default=None, help="enhancement preset applied to every image")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of a Hub model id")
    filters = parser.add_argument_group("quality filter (rejected images are made again with their next seed)")
    filters.add_argument("--filter", action="append", default=None, metavar="CHECK",
                         help="classifier and/or memorization (repeat, or separate with commas)")
    filters.add_argument("--classifier", default=None,
                         help="classifier folder for --filter classifier (default: pretrained/*classif*)")
    filters.add_argument("--classifier-threshold", type=_probability, default=0.5,
                         help="least P(prompt's class) the classifier must give (default 0.5)")
    filters.add_argument("--training-data", default=None,
                         help="training images for --filter memorization: a saved dataset, Kermany folder or images")
    filters.add_argument("--training-split", default="train", help="split of --training-data (default train)")
    filters.add_argument("--max-training-images", type=positive_int, default=2000,
                         help="compare with at most this many training images (seeded subset; default 2000)")
    filters.add_argument("--ssim-threshold", type=_probability, default=0.9,
                         help="near-copy threshold: SSIM at 64 px to the nearest training image (default 0.9)")
    filters.add_argument("--max-attempts", type=positive_int, default=5,
                         help="tries per image; one that fails them all is kept with filter_passed false (default 5)")
    run_group = parser.add_argument_group("processes and upload")
    run_group.add_argument("--threads", type=positive_int, default=None, help="torch threads per process")
    run_group.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU is available")
    run_group.add_argument("--push_to_hub", "--push-to-hub", dest="push_to_hub", action="store_true",
                           help="upload the finished dataset to the Hub (a dataset repo)")
    run_group.add_argument("--hub_dataset_id", "--hub-dataset-id", dest="hub_dataset_id", default=None,
                           help="Hub dataset repo id (default: the output folder's name)")
    run_group.add_argument("--hub_token", "--hub-token", dest="hub_token", default=None,
                           help="Hub token (default: the saved login)")
    run_group.add_argument("--private", action="store_true", help="create the Hub dataset repo as private")
    parser.set_defaults(func=run)


def _checks(values: list[str] | None) -> list[str]:
    from ..errors import CXRInputError
    from ..synthesis import FILTERS

    checks: list[str] = []
    for value in values or []:
        for name in (part.strip().lower() for part in value.split(",")):
            name = {"memorisation": "memorization", "nearest": "memorization"}.get(name, name)
            if name not in FILTERS:
                raise CXRInputError(f"--filter {name!r} is not a check; use {' and/or '.join(FILTERS)}.")
            if name not in checks:
                checks.append(name)
    return checks


def build_filter(args: argparse.Namespace):
    """The `QualityFilter` of the arguments (one-sentence errors for missing pieces)."""
    from ..errors import CXRInputError
    from ..synthesis import QualityFilter

    checks = _checks(args.filter)
    classifier = None
    if "classifier" in checks:
        classifier = args.classifier
        if classifier is None:
            from ..evaluation.runner import find_classifier

            classifier = find_classifier()
        if classifier is None:
            raise CXRInputError("--filter classifier needs --classifier (a folder written by train_classifier.py); "
                                "none was found in pretrained/.")
    elif args.classifier is not None:
        raise CXRInputError("--classifier is only used with --filter classifier.")
    if "memorization" in checks and not args.training_data:
        raise CXRInputError("--filter memorization needs --training-data (the model's training images).")
    if args.training_data and "memorization" not in checks:
        raise CXRInputError("--training-data is only used with --filter memorization.")
    return QualityFilter(
        classifier_path=classifier, classifier_threshold=args.classifier_threshold,
        training_data=args.training_data if "memorization" in checks else None, training_split=args.training_split,
        max_training_images=args.max_training_images, ssim_threshold=args.ssim_threshold,
        max_attempts=args.max_attempts,
    )


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import CXRInputError
    from ..synthesis import SamplingConfig, load_spec, synthesize

    main_process = int(os.environ.get("RANK", "0") or 0) == 0
    try:
        spec = load_spec(args.spec)
        quality_filter = build_filter(args)
        sampling = SamplingConfig(steps=args.steps, guidance=args.guidance, scheduler=args.scheduler,
                                  height=args.height, width=args.width, negative_prompt=args.negative_prompt,
                                  enhancement=args.enhancement)
        repo = (args.hub_dataset_id or Path(args.output_dir).resolve().name) if args.push_to_hub else None
        synthesize(args.model, spec, args.output_dir, num_images=args.num_images, batch_size=args.batch_size,
                   seed=args.seed, sampling=sampling, quality_filter=quality_filter, revision=args.revision,
                   threads=args.threads, force_cpu=args.cpu, push_to_hub=repo, hub_token=args.hub_token,
                   private=args.private)
    except CXRInputError:
        if not main_process:
            return 2  # every process meets the same error; the main process says it once
        raise
    return 0
