"""`cxr-diffusers data build | info`: build a training set from the original datasets, and describe one.

Examples::

    cxr-diffusers data build --source pneumonia --root chest_xray --out data/kermany256 --resolution 256
    cxr-diffusers data build --source nih --root nih --source pneumonia --root chest_xray --out data/mix
    cxr-diffusers data info data/kermany256
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
import warnings

from ._args import non_negative_int, positive_int

SOURCES = ("nih", "nih_subset", "nih_cxr8", "jsrt", "indiana", "pneumonia", "pneumoniamnist", "covid", "folder")
#: Smaller images hold no usable anatomy (and are not what any model here trains on).
MIN_RESOLUTION = 32


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "data",
        help="build and inspect chest X-ray datasets",
        description="Build a Hugging Face dataset of chest X-rays from the original layouts, or describe one.",
    )
    commands = parser.add_subparsers(dest="data_command", metavar="{build,info}")

    build = commands.add_parser(
        "build",
        help="load one or more sources and save them (with a dataset card)",
        description="Load sources in their original layouts, concatenate them, optionally resize and pad to a "
        "square resolution, and save with save_to_disk plus a README.md dataset card.",
    )
    build.add_argument("--source", action="append", required=True, choices=SOURCES,
                       help="dataset kind; repeat together with --root to combine several sources")  # fmt: skip
    build.add_argument("--root", action="append", required=True,
                       help="dataset folder (the .npz file for pneumoniamnist); one per --source, same order")  # fmt: skip
    build.add_argument("--splits-from", action="append", default=[], metavar="SOURCE=ROOT",
                       help="load this source only to decide the split of the patients it shares with the saved "
                       "sources, without saving its images (e.g. nih_subset=ROOT gives nih_cxr8 the patient splits "
                       "of a dataset built with nih_subset too); repeatable")  # fmt: skip
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--resolution", type=positive_int, default=None,
                       help="resize and pad images to RESOLUTIONxRESOLUTION while saving (aspect ratio kept)")  # fmt: skip
    build.add_argument("--labels-dir", default=None, help="nih: folder with Data_Entry_2017.csv and the split lists")
    build.add_argument("--frontal-only", action="store_true", help="indiana: keep frontal projections only")
    build.add_argument("--label-from-folder", action="store_true", help="folder: labels from parent folder names")
    build.add_argument("--columns", choices=("common", "all"), default=None,
                       help="columns kept when combining sources (default: all for one source, common for several)")  # fmt: skip
    build.add_argument("--seed", type=int, default=0, help="seed of the carved splits (default 0)")
    build.add_argument("--num-proc", type=positive_int, default=1, help="processes for image checks, resizing and saving")
    build.add_argument("--max-samples", type=positive_int, default=None, help="at most this many images per split")
    build.add_argument("--check-images", choices=("none", "exists", "header", "full"), default="header",
                       help="how to check image files before use (default header)")  # fmt: skip
    build.add_argument("--strict", action="store_true", help="fail on missing or unreadable images")
    build.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --out")
    build.add_argument("--name", default=None, help="pretty name for the dataset card")
    build.set_defaults(func=run_build)

    info = commands.add_parser(
        "info",
        help="counts per split and label, image sizes, prompt examples",
        description="Describe a dataset saved by `data build` (or, with --source, a dataset in its original layout).",
    )
    info.add_argument("path", help="a folder written by `data build`, or a raw dataset root with --source")
    info.add_argument("--source", choices=SOURCES, default=None, help="read PATH as this source's original layout")
    info.add_argument("--examples", type=non_negative_int, default=5, help="prompt examples to show (default 5)")
    info.add_argument("--max-images", type=non_negative_int, default=2000,
                      help="images per split whose size is read for the histogram (default 2000; 0 = all)")  # fmt: skip
    info.add_argument("--seed", type=int, default=0)
    info.set_defaults(func=run_info)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _load(source: str, root: str, args, patient_splits: dict[str, str] | None = None) -> object:
    from cxr_diffusers.data import LOADERS

    loader = LOADERS[source]
    options = {
        "seed": getattr(args, "seed", 0),
        "num_proc": getattr(args, "num_proc", 1),
        "max_samples": getattr(args, "max_samples", None),
        "check_images": getattr(args, "check_images", "header"),
        "strict": getattr(args, "strict", False),
        "labels_dir": getattr(args, "labels_dir", None),
        "frontal_only": getattr(args, "frontal_only", False),
        "label_from_folder": getattr(args, "label_from_folder", False),
        "patient_splits": patient_splits or None,
    }
    accepted = inspect.signature(loader).parameters
    kwargs = {k: v for k, v in options.items() if k in accepted and v not in (None, False)}
    return loader(root, **kwargs)


def _remember_splits(dsd, patient_splits: dict[str, str]) -> None:
    """Record the split of each patient of `dsd` not seen before (later sources give them the same split)."""
    for split, ds in dsd.items():
        for patient in ds["patient_id"]:
            if patient:
                patient_splits.setdefault(patient, split)


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    _log(f"warning: {message}")


def run_build(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _build(args)


def _build(args: argparse.Namespace) -> int:
    from cxr_diffusers.errors import DataError

    if len(args.source) != len(args.root):
        raise DataError(f"Give one --root per --source ({len(args.source)} sources, {len(args.root)} roots).")
    if args.resolution is not None and args.resolution < MIN_RESOLUTION:
        raise DataError(f"--resolution must be at least {MIN_RESOLUTION} pixels, not {args.resolution}.")
    from cxr_diffusers.utils.output_dir import check_output_dir

    split_sources = []
    for spec in args.splits_from:
        source, _, root = spec.partition("=")
        if source not in SOURCES or not root:
            raise DataError(f"--splits-from takes SOURCE=ROOT with SOURCE one of {', '.join(SOURCES)}, not {spec!r}.")
        split_sources.append((source, root))
    check_output_dir(args.out, overwrite=args.overwrite, protected=[*args.root, *(r for _, r in split_sources)],
                     flag="--out")
    start = time.perf_counter()
    from cxr_diffusers.data import concatenate_sources, save_dataset

    loaded = []
    patient_splits: dict[str, str] = {}  # patients seen in earlier sources keep their split in later ones
    for source, root in split_sources:
        _log(f"loading {source} from {root} for its patient splits only ...")
        _remember_splits(_load(source, root, args, patient_splits), patient_splits)
    for source, root in zip(args.source, args.root):
        _log(f"loading {source} from {root} ...")
        dsd = _load(source, root, args, patient_splits)
        _remember_splits(dsd, patient_splits)
        counts = ", ".join(f"{split} {len(ds)}" for split, ds in dsd.items())
        _log(f"  {source}: {counts}")
        loaded.append(dsd)
    columns = args.columns or ("all" if len(loaded) == 1 else "common")
    combined = concatenate_sources(loaded, columns=columns)
    _log(f"saving to {args.out}" + (f" at {args.resolution}x{args.resolution}" if args.resolution else ""))
    path = save_dataset(
        combined,
        args.out,
        resolution=args.resolution,
        num_proc=args.num_proc,
        overwrite=args.overwrite,
        pretty_name=args.name,
        notes=[f"built by `cxr-diffusers data build` from {', '.join(args.source)} (seed {args.seed})"
               + (f"; patient splits shared with {', '.join(s for s, _ in split_sources)}" if split_sources else "")],
    )
    elapsed = time.perf_counter() - start
    total = sum(len(ds) for ds in combined.values())
    print(f"saved {total} images ({', '.join(f'{s} {len(d)}' for s, d in combined.items())}) to {path} "
          f"in {elapsed:.1f} s")  # fmt: skip
    return 0


def _image_size(item) -> tuple[int, int] | None:
    import io

    import PIL.Image

    try:
        if item.get("bytes"):
            with PIL.Image.open(io.BytesIO(item["bytes"])) as image:
                return image.size
        if item.get("path"):
            with PIL.Image.open(item["path"]) as image:
                return image.size
    except (OSError, ValueError):
        return None
    return None


def describe(dsd, *, examples: int = 5, max_images: int = 2000, seed: int = 0) -> str:
    """The text printed by `data info`."""
    import random
    from collections import Counter

    import datasets
    from tqdm.auto import tqdm

    lines = []
    total = sum(len(ds) for ds in dsd.values())
    lines.append(f"{total} images in {len(dsd)} splits")
    for split, ds in dsd.items():
        lines.append(f"\n[{split}] {len(ds)} images")
        columns = ds.column_names
        if "source" in columns:
            lines.append("  sources: " + ", ".join(f"{k} {v}" for k, v in sorted(Counter(ds["source"]).items())))
        if "patient_id" in columns:
            lines.append(f"  patients: {len({p for p in ds['patient_id'] if p})}")
        if "labels" in columns:
            labels = Counter()
            for row in ds["labels"]:
                labels.update(row or ["(no finding)"])
            lines.append("  labels: " + ", ".join(f"{k} {v}" for k, v in labels.most_common()))
        for column in ("view", "sex"):
            if column in columns:
                counts = Counter(v or "(unknown)" for v in ds[column])
                lines.append(f"  {column}: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
        if "image" in columns:
            raw = ds.cast_column("image", datasets.Image(decode=False))
            indices = list(range(len(raw)))
            if max_images and len(indices) > max_images:
                indices = sorted(random.Random(seed).sample(indices, max_images))
            sizes = Counter()
            for i in tqdm(indices, desc=f"image sizes ({split})", leave=False, disable=len(indices) < 200):
                size = _image_size(raw[i]["image"])
                sizes[f"{size[0]}x{size[1]}" if size else "unreadable"] += 1
            sampled = "" if len(indices) == len(raw) else f" (sample of {len(indices)})"
            lines.append(f"  image sizes{sampled}: " + ", ".join(f"{k} {v}" for k, v in sizes.most_common(8)))
            if len(sizes) > 8:
                lines.append(f"    ... {len(sizes) - 8} more sizes")
        if "prompt" in columns and examples:
            rng = random.Random(seed)
            picks = sorted(rng.sample(range(len(ds)), min(examples, len(ds))))
            lines.append("  prompt examples:")
            for i in picks:
                prompt = ds[i]["prompt"] if "image" not in columns else ds.select_columns(["prompt"])[i]["prompt"]
                lines.append(f"    - {prompt[:300]}{'...' if len(prompt) > 300 else ''}")
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _info(args)


def _info(args: argparse.Namespace) -> int:
    if args.source:
        dsd = _load(args.source, args.path, args)
    else:
        from cxr_diffusers.data import load_saved

        dsd = load_saved(args.path)
    print(describe(dsd, examples=args.examples, max_images=args.max_images, seed=args.seed))
    return 0
