#!/usr/bin/env python
"""Evaluate a trained text-to-X-ray pipeline against real images (the script form of `cxr-diffusers evaluate`).

    python train_scripts/evaluate_generation.py --pretrained_model_name_or_path runs/ldm-small/pipeline \
        --real /path/to/kermany --num-images 50 --real-vs-real --output_dir runs/ldm-small/evaluation

Takes the diffusers-style names `--pretrained_model_name_or_path`, `--output_dir`, `--seed`, `--validation_prompts`
(alias of `--prompt`) and `--resolution` (alias of `--size`) besides every flag of `cxr-diffusers evaluate`.
"""

from __future__ import annotations

import argparse
import sys

from cxr_diffusers.commands.evaluate import _line, add_arguments, evaluate_from_args
from cxr_diffusers.errors import CXRInputError
from cxr_diffusers.training_utils import run_script


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pretrained_model_name_or_path", required=True, help="pipeline folder or Hub id")
    add_arguments(parser)
    # diffusers-examples spellings of --output-dir, --prompt and --size
    parser.add_argument("--output_dir", dest="output_dir", default=argparse.SUPPRESS, help="alias of --output-dir")
    parser.add_argument("--validation_prompts", dest="prompt", nargs="+", default=argparse.SUPPRESS,
                        help="alias of --prompt (several prompts after one flag)")
    parser.add_argument("--resolution", dest="size", type=int, default=argparse.SUPPRESS, help="alias of --size")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        metrics = evaluate_from_args(args, args.pretrained_model_name_or_path)
    except CXRInputError as err:
        print(f"evaluate_generation.py: error: {err}", file=sys.stderr)
        return 2
    print(f"{_line(metrics)}. Wrote {args.output_dir}/metrics.json")
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
