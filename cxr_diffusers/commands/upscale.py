"""`cxr-diffusers upscale`: X-ray image files -> 2x or 3x larger PNGs through the super-resolution stage.

    cxr-diffusers upscale a.png b.jpeg -o big/                 # big/a_x2.png, big/b_x2.png (the model's smallest scale)
    cxr-diffusers upscale a.png --scale 3 -o big/              # the image as it is, 3x larger: big/a_x3.png
    cxr-diffusers upscale a.png --size 768 -o big/             # fitted (aspect kept, padded) into 256 px, then 3x: big/a_768.png
    cxr-diffusers upscale a.png --model runs/super-resolution -o big/

The model is a pipeline folder with `super_resolution/` or a super-resolution model folder itself (default: the
bundled pretrained/cxr-ldm-small). The upscaling is `cxr_diffusers.pipelines.pipeline_cxr.upscale_images`, the code
`CXRPipeline` runs for 512 and 768 px. Outputs are 8-bit grayscale PNGs (16-bit inputs are scaled to 8 bits, colour
ones converted to grey) that carry a provenance record: for a synthetic input one derived from its record
(``operation`` "upscale"), for a real one a new record, since the detail the model adds is synthetic. NOT FOR
CLINICAL USE. Existing outputs are replaced only with `--overwrite`, and an input file never.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..errors import CXRInputError
from ._args import positive_int

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "pretrained" / "cxr-ldm-small"
#: `--size N` fits the input into N / s px first, with s = N / NATIVE_SIZE (the UNet's native 256 px).
NATIVE_SIZE = 256
MIN_INPUT_SIDE = 16
MAX_OUTPUT_SIDE = 4096


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "upscale",
        help="upscale X-ray images 2x or 3x with the super-resolution stage (512 / 768 px from 256 px)",
        description="Upscale X-ray images with the learned super-resolution stage (bicubic + a learned residual) and "
        "write grayscale PNGs with provenance. The added detail is synthetic: NOT FOR CLINICAL USE.",
    )
    parser.add_argument("files", nargs="+", metavar="IN", help="input images (PNG, JPEG, ...)")
    parser.add_argument("-o", "--output-dir", required=True, help="folder for the outputs, created if needed")
    parser.add_argument("--model", "-m", default=None,
                        help="pipeline folder with super_resolution/, or a super-resolution model folder "
                             f"(default: {DEFAULT_MODEL.parent.name}/{DEFAULT_MODEL.name})")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--scale", type=positive_int, default=None,
                      help="upscale the image as it is by this factor, one the model has (2 or 3); writes "
                           "<stem>_x<scale>.png (default: the model's smallest scale)")
    size.add_argument("--size", type=positive_int, default=None,
                      help=f"output side N (512 or 768): the image is first fitted into N / s px (aspect kept, padded "
                           f"black) with s = N / {NATIVE_SIZE}, then upscaled s times; writes <stem>_<N>.png")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def _read(path: Path):
    """The image at `path` as mode L (8 bit), with one-sentence errors for unreadable files."""
    import numpy as np
    from PIL import Image

    from .enhance import _load

    image = _load(path)  # missing, not a file, not an image, float pixels: one sentence each
    if image.mode != "L":  # 16-bit (mode I): scaled to 8 bits, as the pipeline's outputs are
        array = np.asarray(image, dtype=np.float64)
        array = array / 257.0 if array.max() > 255 else array
        info = image.info
        image = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8), mode="L")
        image.info.update(info)  # a provenance record stays with it
    if min(image.size) < MIN_INPUT_SIDE:
        raise CXRInputError(f"'{path}' is {image.width}x{image.height} px; upscale images of at least "
                            f"{MIN_INPUT_SIDE} px a side.")
    return image


def _scale_and_base(args: argparse.Namespace, scales: tuple[int, ...]) -> tuple[int, int | None]:
    """`(scale, base side or None)` from `--scale` / `--size`, checked against the model's `scales`."""
    listed = " or ".join(str(s) for s in scales)
    if args.size is not None:
        sizes = [NATIVE_SIZE * s for s in scales]
        scale, remainder = divmod(args.size, NATIVE_SIZE)
        if remainder or scale not in scales:
            raise CXRInputError(f"--size {args.size} cannot be made: this super-resolution model makes "
                                f"{' or '.join(map(str, sizes))} px from {NATIVE_SIZE} px (scales {listed}).")
        return scale, args.size // scale
    scale = min(scales) if args.scale is None else args.scale
    if scale not in scales:
        raise CXRInputError(f"--scale {scale} is not one this super-resolution model has; use {listed}.")
    return scale, None


def run(args: argparse.Namespace) -> int:
    from diffusers.image_processor import VaeImageProcessor
    from tqdm.auto import tqdm

    from ..data.transforms import resize_and_pad, to_tensor
    from ..pipelines.pipeline_cxr import load_super_resolution, upscale_images
    from ..provenance import attach_provenance, derive_provenance, make_record, read_provenance
    from ..utils.output_dir import check_writable_dir

    if args.scale is not None and args.scale < 2:
        raise CXRInputError(f"--scale must be 2 or more, got {args.scale}.")
    paths = list(dict.fromkeys(Path(f) for f in args.files))
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems:
            raise CXRInputError(f"Inputs '{stems[p.stem]}' and '{p}' share the name '{p.stem}'; outputs would collide.")
        stems[p.stem] = p
    images = [(p, _read(p)) for p in paths]  # read everything before loading the model or writing anything
    out_dir = check_writable_dir(args.output_dir, "--output-dir")

    model_path = args.model or DEFAULT_MODEL
    model = load_super_resolution(model_path)
    scale, base = _scale_and_base(args, model.scale_factors)
    suffix = f"_{args.size}" if args.size is not None else f"_x{scale}"
    targets = [out_dir / f"{p.stem}{suffix}.png" for p, _ in images]
    inputs = {os.path.realpath(p) for p in paths}
    for (path, image), target in zip(images, targets):
        side = base * scale if base else max(image.size) * scale
        if side > MAX_OUTPUT_SIDE:
            raise CXRInputError(f"'{path}' ({image.width}x{image.height} px) would become {image.width * scale}x"
                                f"{image.height * scale} px, above the {MAX_OUTPUT_SIDE} px limit; use --size instead.")
        if os.path.realpath(target) in inputs:
            raise CXRInputError(f"The output {target} would replace the input of the same name; choose another "
                                "--output-dir.")
        if target.exists() and not args.overwrite:
            raise CXRInputError(f"{target} already exists; pass --overwrite to replace it, or choose another "
                                "--output-dir.")

    out_dir.mkdir(parents=True, exist_ok=True)
    postprocess = VaeImageProcessor(do_normalize=True, do_convert_grayscale=True).postprocess  # as CXRPipeline
    model_name = str(getattr(model.config, "_name_or_path", None) or model_path)
    for (path, image), target in tqdm(list(zip(images, targets)), desc="upscaling", unit="image",
                                      disable=args.no_progress or len(images) < 2):
        source = resize_and_pad(image, base) if base else image
        result = postprocess(upscale_images(model, to_tensor(source)[None], scale), output_type="pil")[0]
        details = {"scale": scale, "input_width": image.width, "input_height": image.height,
                   **({"fitted_to": [base, base]} if base else {}), "output_width": result.width,
                   "output_height": result.height, "super_resolution_model": model_name, "source": path.name}
        if read_provenance(image) is not None:
            derive_provenance(result, image, "upscale", **details)
        else:  # a real radiograph: the detail the model adds is synthetic, so the output says what it is
            attach_provenance(result, make_record(
                operation="upscale", operations=["upscale"], derived_from=None,
                note="a real image upscaled by a learned super-resolution model: the added detail is synthetic",
                **details,
            ))
        partial = target.with_name(f".{target.name}.partial")
        result.save(partial, format="PNG")
        os.replace(partial, target)
        print(target)
    return 0
