"""`cxr-diffusers` command line: generate | synthesize | enhance | upscale | info | data | evaluate | classify | app.

Each sub-command lives in `cxr_diffusers/commands/<name>.py` and exposes `register(subparsers)`, which adds its
parser and sets `func` to a callable taking the parsed arguments and returning an exit code. Heavy imports (torch,
diffusers, datasets) happen inside those callables so that `cxr-diffusers --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import CXRInputError

# Sub-command modules, in the order they are listed by `--help`.
COMMANDS = ("generate", "synthesize", "enhance", "upscale", "info", "data", "evaluate", "classify", "app")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cxr-diffusers",
        description="Synthetic chest X-rays with Hugging Face diffusers. Not for clinical use.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"cxr_diffusers.commands.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"cxr_diffusers.commands.{name}":
                continue  # command not available in this version
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except CXRInputError as err:
        # Bad input from the user: one clear sentence, no traceback.
        print(f"cxr-diffusers {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
