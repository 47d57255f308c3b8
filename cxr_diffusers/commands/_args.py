"""argparse types shared by the sub-commands: each rejects a bad value with one sentence (exit code 2)."""

from __future__ import annotations

import argparse
import math

#: Seeds are stored in provenance and manifests as given, so they must fit torch.Generator.manual_seed unchanged.
MAX_SEED = 2**63 - 1


def _integer(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be a whole number, got {text!r}") from None


def seed(text: str) -> int:
    """A seed in [0, 2**63 - 1] ('1e20' and negative seeds are refused, not wrapped)."""
    value = _integer(text, "the seed")
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"the seed must be between 0 and 2**63 - 1, got {text}")
    return value


def positive_int(text: str) -> int:
    value = _integer(text, "the value")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text, "the value")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value
