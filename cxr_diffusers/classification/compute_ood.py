"""`python -m cxr_diffusers.classification.compute_ood MODEL --data DIR ...`: fit the input check's feature
statistics of a pneumonia classifier and save them beside its weights (`ood_statistics.safetensors`; see
`cxr_diffusers.classification.ood`). A module of its own, so that running it does not re-import `ood`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..errors import CXRInputError, DataError, ModelLoadingError
from .ood import DEFAULT_QUANTILE, OOD_STATISTICS_FILE, compute_ood_statistics


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cxr_diffusers.classification.compute_ood",
        description="Compute the input check's feature statistics of a pneumonia classifier and save them beside its "
                    f"weights ({OOD_STATISTICS_FILE}).")
    parser.add_argument("model", help="classifier folder")
    parser.add_argument("--data", action="append", required=True,
                        help="real radiographs: a Kermany root, a saved DatasetDict or an image folder (repeatable)")
    parser.add_argument("--max-images", type=int, default=2000, help="fit images per --data (default 2000; 0: all)")
    parser.add_argument("--quantile", type=float, default=DEFAULT_QUANTILE,
                        help="share of held-out real images to accept (default 0.995)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="folder for the file (default: the classifier folder)")
    args = parser.parse_args(argv)
    try:
        stats = compute_ood_statistics(args.model, args.data, args.max_images or None, args.quantile,
                                       args.batch_size, args.seed, args.output)
    except (CXRInputError, DataError, ModelLoadingError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"threshold": stats.threshold, **stats.info}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
