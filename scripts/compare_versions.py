#!/usr/bin/env python
"""Real test images beside model versions, same prompts and seeds, with 2x zoomed lung crops and histograms.

    # from two protocol runs (`cxr-diffusers evaluate ... --prompt-groups -o DIR` saves DIR/generated/*.png)
    python scripts/compare_versions.py --version v1=runs/eval/v1 --version v2=runs/eval/v2 \
        --real data/cxr-all-256 --per-group 2 -o docs/results/v2-protocol
    # or straight from pipelines, at any size the pipeline makes (768 px: 256 px base + super-resolution)
    python scripts/compare_versions.py --version generated=pretrained/cxr-ldm-small --size 768 \
        --real data/cxr-highres --groups "adult normal" "adult pneumonia" --per-group 1 -o docs/results/sr-v1

Each image of group g (the order of `GROUP_PROMPTS`) and index i has seed `seed + g * protocol_n + i`, the
convention of `cxr-diffusers evaluate --prompt-groups -n protocol_n`, so a pipeline version shows the very images its
protocol run scored. Real images of a group are drawn (seeded) from the split's images of that group
(`fidelity.example_group`), fitted into the size (aspect kept, black padding).

Writes `versions_<size>.png` (a row per image: real, then each version; beside each image its lung field magnified
2x with nearest-neighbour pixels, so sharpness can be judged) and, when the versions have several images per group,
`versions_histograms.png` (8-bit intensity histograms per group, real against each version). Figures with generated
tiles carry the provenance record (SYNTHETIC, NOT FOR CLINICAL USE).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

#: The region magnified in the figure: (left, top, right, bottom) as fractions of the side; half the side, so the
#: 2x crop has the size of the image. It covers the right lung field (the viewer's left).
LUNG_BOX = (0.06, 0.16, 0.56, 0.66)
_FILE = re.compile(r"^\d+_(?P<group>[a-z]+)_seed(?P<seed>\d+)\.png$")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="append", required=True, metavar="NAME=PATH",
                        help="a protocol run folder (with generated/) or a pipeline folder; repeat, in column order")
    parser.add_argument("--real", required=True, help="dataset saved by `cxr-diffusers data build`")
    parser.add_argument("--split", default="test")
    parser.add_argument("--groups", nargs="+", default=None, help="prompt groups to show (default: all four)")
    parser.add_argument("--per-group", type=int, default=2, help="images per group in the figure")
    parser.add_argument("--size", type=int, default=256, help="image side (pipeline versions are sampled at it)")
    parser.add_argument("--seed", type=int, default=0, help="first seed (as `evaluate --seed`)")
    parser.add_argument("--protocol-n", type=int, default=40, help="images per group of the protocol run")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("-o", "--output-dir", required=True)
    return parser.parse_args(argv)


def _squash(group: str) -> str:
    return group.replace(" ", "")


def read_run(folder: Path, groups) -> dict[str, list]:
    """`{group: [(seed, PIL image), ...]}` (seed order) from a protocol run's `generated/` PNGs."""
    found: dict[str, list] = {g: [] for g in groups}
    names = {_squash(g): g for g in groups}
    for path in sorted((folder / "generated").glob("*.png")):
        match = _FILE.match(path.name)
        if match and match["group"] in names:
            found[names[match["group"]]].append((int(match["seed"]), path))
    return {group: [(s, _tagged(p, group, s)) for s, p in sorted(items)] for group, items in found.items()}


def first_images(run: dict[str, list], folder: Path, per_group: int, seed0: int, protocol_n: int) -> dict[str, list]:
    """The first `per_group` images of each group, which must carry the protocol's seeds."""
    out = {}
    for group, items in run.items():
        wanted = [seed0 + _group_index(group) * protocol_n + i for i in range(per_group)]
        found = [s for s, _ in items[:per_group]]
        if found != wanted:
            raise SystemExit(f"error: {folder} has no images of {group!r} with seeds {wanted} (found {found}); "
                             f"was it run with --prompt-groups -n {protocol_n} --seed {seed0}?")
        out[group] = items[:per_group]
    return out


def _tagged(path: Path, group: str, seed: int) -> Image.Image:
    """A generated PNG as mode L with its provenance record (a minimal one if the file lost its own)."""
    from cxr_diffusers.evaluation.conditioning import GROUP_PROMPTS
    from cxr_diffusers.provenance import attach_provenance, make_record, read_provenance

    with Image.open(path) as image:
        record = read_provenance(image) or make_record(prompt=GROUP_PROMPTS[group], seed=seed, file=str(path))
        return attach_provenance(image.convert("L"), record)


def _group_index(group: str) -> int:
    from cxr_diffusers.evaluation.conditioning import GROUP_PROMPTS

    return list(GROUP_PROMPTS).index(group)


def sample_pipeline(path: str, groups, per_group: int, args) -> dict[str, list]:
    import torch

    from cxr_diffusers import CXRPipeline
    from cxr_diffusers.evaluation.conditioning import GROUP_PROMPTS

    pipe = CXRPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    out = {}
    for group in groups:
        seeds = [args.seed + _group_index(group) * args.protocol_n + i for i in range(per_group)]
        images = pipe([GROUP_PROMPTS[group]] * len(seeds), height=args.size, width=args.size,
                      num_inference_steps=args.steps, guidance_scale=args.guidance,
                      generator=[torch.Generator().manual_seed(s) for s in seeds]).images
        out[group] = list(zip(seeds, images))
    return out


def real_images(data: str, split: str, groups, size: int) -> dict[str, list]:
    """Every real image of the split per prompt group (`fidelity.example_group`), fitted into `size`."""
    from cxr_diffusers.data import load_saved
    from cxr_diffusers.data.transforms import resize_and_pad
    from cxr_diffusers.evaluation.fidelity import example_group

    ds = load_saved(data)[split]
    by_group: dict[str, list[int]] = {g: [] for g in groups}
    for index, row in enumerate(ds.remove_columns("image")):
        group = example_group(row.get("source"), row.get("labels"), row.get("age"))
        if group in by_group:
            by_group[group].append(index)
    empty = [g for g, indices in by_group.items() if not indices]
    if empty:
        raise SystemExit(f"error: the {split} split of {data} has no {empty[0]!r} images")
    return {group: [resize_and_pad(ds[i]["image"], size) for i in indices] for group, indices in by_group.items()}


def pick(real: dict[str, list], per_group: int, seed: int) -> dict[str, list]:
    """A seeded choice of `per_group` real images of each group, in dataset order."""
    rng = np.random.default_rng(seed)
    return {group: [images[i] for i in sorted(rng.choice(len(images), size=min(per_group, len(images)),
                                                         replace=False).tolist())]
            for group, images in real.items()}


def zoom(image: Image.Image) -> Image.Image:
    w, h = image.size
    box = tuple(round(f * s) for f, s in zip(LUNG_BOX, (w, h, w, h)))
    return image.crop(box).resize((w, h), Image.Resampling.NEAREST)


def write_figure(real, versions: dict[str, dict], groups, size: int, path: Path) -> None:
    from cxr_diffusers.provenance import derive_provenance
    from cxr_diffusers.utils.image_grid import make_grid

    tiles, labels = [], []
    for group in groups:
        for k, real_image in enumerate(real[group]):
            row = [("real test image", real_image)]
            for name, images in versions.items():
                seed, image = images[group][k]
                row.append((f"{name} seed {seed}", image))
            for label, image in row:
                tiles += [image, zoom(image)]
                labels += [f"{group}: {label}", "2x lung crop"]
    grid = make_grid(tiles, cols=2 * (1 + len(versions)), labels=labels)
    figure = Image.new("L", (grid.width, grid.height + 16), color=0)
    figure.paste(grid, (0, 0))
    ImageDraw.Draw(figure).text((4, grid.height + 2), "Generated tiles are SYNTHETIC: NOT FOR CLINICAL USE", fill=255)
    derive_provenance(figure, [grid], "figure", caption="real test images beside model versions").save(path)


def write_histograms(real_all, versions_all: dict[str, dict], groups, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cxr_diffusers.evaluation.fidelity import histogram_w1, intensity_histogram

    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.4), squeeze=False)
    for ax, group in zip(axes[0], groups):
        real = real_all[group]  # PIL lists: the fidelity measures convert them (features.images_to_tensor)
        ax.plot(intensity_histogram(real), color="black", lw=2, label=f"real ({len(real)})")
        for name, images in versions_all.items():
            generated = [im for _, im in images[group]]
            ax.plot(intensity_histogram(generated), lw=1.3,
                    label=f"{name} ({len(generated)}), W1 {histogram_w1(generated, real):.1f}")
        ax.set_title(group)
        ax.set_xlabel("grey level")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("fraction of pixels")
    fig.suptitle("8-bit intensity histograms; generated images are SYNTHETIC, NOT FOR CLINICAL USE", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    from cxr_diffusers.evaluation.conditioning import GROUP_PROMPTS

    args = parse_args(argv)
    groups = args.groups or list(GROUP_PROMPTS)
    unknown = [g for g in groups if g not in GROUP_PROMPTS]
    if unknown:
        raise SystemExit(f"error: unknown prompt group(s) {unknown}; use {list(GROUP_PROMPTS)}")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    shown, everything = {}, {}
    for spec in args.version:
        name, _, path = spec.partition("=")
        folder = Path(path)
        if (folder / "generated").is_dir():
            everything[name] = read_run(folder, groups)
            shown[name] = first_images(everything[name], folder, args.per_group, args.seed, args.protocol_n)
        elif (folder / "model_index.json").is_file():
            shown[name] = sample_pipeline(path, groups, args.per_group, args)
        else:
            raise SystemExit(f"error: {path} is neither a protocol run (generated/) nor a pipeline (model_index.json)")
    real = real_images(args.real, args.split, groups, args.size)
    figure = out / f"versions_{args.size}.png"
    write_figure(pick(real, args.per_group, args.seed), shown, groups, args.size, figure)
    print(f"wrote {figure}")
    if everything:
        histograms = out / "versions_histograms.png"
        write_histograms(real, everything, groups, histograms)
        print(f"wrote {histograms}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
