"""`cxr-diffusers enhance`: apply radiological post-processing presets to X-ray image files.

    cxr-diffusers enhance a.png b.jpeg --preset balanced --output-dir out/     # out/a_balanced.png, out/b_balanced.png
    cxr-diffusers enhance a.png --preset all -o out/                          # one PNG per preset
    cxr-diffusers enhance a.png --compare -o out/                             # out/a_compare.png: original + presets

Outputs are PNGs with the input's bit depth (8 or 16 bit); colour inputs are converted to grayscale. The pipeline
that made each file is stored as JSON in its PNG text chunk ``cxr_diffusers.enhancement``. An input with a
provenance record (a synthetic X-ray) gives outputs whose record is derived from it (``operation`` "enhance" or
"enhance_compare", ``derived_from`` = the input's record, the enhancement parameters); a real input stays untagged.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from ..errors import CXRInputError

# Kept here so that `--help` does not import OpenCV; tests check it matches `enhancement.PRESETS`.
PRESET_NAMES = ("balanced", "high_contrast", "sharp_detail", "radiographic_film")

_PANEL_MIN, _PANEL_MAX, _LABEL_H, _GAP = 256, 512, 24, 4


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "enhance",
        help="apply enhancement presets (CLAHE, windowing, sharpening, ...) to X-ray images",
        description="Apply radiological post-processing presets to X-ray images and write PNGs. "
        "Colour images are converted to grayscale; 16-bit inputs give 16-bit outputs.",
    )
    parser.add_argument("files", nargs="+", metavar="FILE", help="input images (PNG, JPEG, ...)")
    parser.add_argument(
        "--preset",
        default=None,
        help=f"preset to apply: {', '.join(PRESET_NAMES)} or 'all'; writes <stem>_<preset>.png "
        "(default: balanced, unless --compare is given alone)",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also write <stem>_compare.png: the original and every preset side by side, labelled",
    )
    parser.add_argument(
        "-o", "--output-dir", default="enhanced", help="folder for the outputs, created if needed (default: enhanced)"
    )
    parser.set_defaults(func=run)


def _load(path: Path):
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise CXRInputError(f"Input file '{path}' does not exist.")
    if not path.is_file():
        raise CXRInputError(f"Input '{path}' is not a file.")
    try:
        with Image.open(path) as opened:
            im = opened.copy()  # decodes the whole file, so truncated data fails here
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise CXRInputError(
            f"Cannot read '{path}' as an image ({type(err).__name__}); give a PNG or JPEG X-ray."
        ) from err
    if im.mode in ("L", "I;16", "I"):
        return im
    if im.mode.startswith("I;16"):
        return im.convert("I")
    if im.mode == "F":
        raise CXRInputError(f"'{path}' holds floating-point pixels (mode F); save it as an 8- or 16-bit image first.")
    return im.convert("L")  # RGB(A), P, LA, 1, ...: grayscale content is the norm for X-rays


def _save(image, path: Path, text: dict[str, str]) -> None:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    image.save(path, format="PNG", pnginfo=info)


def _display_panel(image, label: str):
    """8-bit panel of a readable size with a label bar on top."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    from ..enhancement import to_grayscale_array

    a = to_grayscale_array(image)
    if a.dtype != np.uint8:
        a = np.rint(a / 257.0).astype(np.uint8)
    panel = Image.fromarray(a)
    h = panel.height
    if h < _PANEL_MIN:
        f = math.ceil(_PANEL_MIN / h)
        panel = panel.resize((panel.width * f, h * f), Image.Resampling.NEAREST)
    elif h > _PANEL_MAX:
        panel = panel.resize((max(1, round(panel.width * _PANEL_MAX / h)), _PANEL_MAX), Image.Resampling.LANCZOS)
    out = Image.new("L", (panel.width, panel.height + _LABEL_H), 0)
    out.paste(panel, (0, _LABEL_H))
    draw = ImageDraw.Draw(out)
    try:
        font = ImageFont.load_default(size=15)
    except (TypeError, ImportError, OSError):  # Pillow built without FreeType
        font = ImageFont.load_default()
    width = draw.textlength(label, font=font)
    draw.text(((panel.width - width) / 2, 4), label, fill=255, font=font)
    return out


def _compare_grid(original, enhanced: dict[str, Any]):
    from PIL import Image

    panels = [_display_panel(original, "original")] + [_display_panel(im, name) for name, im in enhanced.items()]
    width = sum(p.width for p in panels) + _GAP * (len(panels) - 1)
    grid = Image.new("L", (width, max(p.height for p in panels)), 0)
    x = 0
    for p in panels:
        grid.paste(p, (x, 0))
        x += p.width + _GAP
    return grid


def run(args: argparse.Namespace) -> int:
    from ..enhancement import PRESETS, get_preset
    from ..provenance import derive_provenance
    from ..utils.output_dir import check_writable_dir

    if args.preset is None:
        presets = [] if args.compare else ["balanced"]
    elif args.preset.strip().lower() == "all":
        presets = list(PRESETS)
    else:
        presets = [get_preset(args.preset).name]  # clear error, with a suggestion, on a typo

    paths = [Path(f) for f in args.files]
    stems: dict[str, Path] = {}
    for p in paths:
        if p.stem in stems and stems[p.stem] != p:
            raise CXRInputError(f"Inputs '{stems[p.stem]}' and '{p}' share the name '{p.stem}'; outputs would collide.")
        stems[p.stem] = p
    images = [(p, _load(p)) for p in dict.fromkeys(paths)]  # read everything before writing anything

    out_dir = check_writable_dir(args.output_dir, "--output-dir")
    out_dir.mkdir(parents=True, exist_ok=True)

    pipelines = {name: get_preset(name) for name in dict.fromkeys(presets + (list(PRESETS) if args.compare else []))}
    for path, image in images:
        results = {name: pipe(image) for name, pipe in pipelines.items()}
        for name in presets:
            target = out_dir / f"{path.stem}_{name}.png"
            config = pipelines[name].to_dict()
            derive_provenance(results[name], image, "enhance", enhancement=config, source=path.name)
            _save(
                results[name],
                target,
                {
                    "Software": "cxr-diffusers enhance",
                    "Source": path.name,
                    "cxr_diffusers.enhancement": json.dumps(config),
                },
            )
            print(target)
        if args.compare:
            target = out_dir / f"{path.stem}_compare.png"
            grid = _compare_grid(image, {name: results[name] for name in PRESETS})
            derive_provenance(
                grid, image, "enhance_compare", panels=["original", *PRESETS],
                enhancements={name: pipelines[name].to_dict() for name in PRESETS}, source=path.name,
            )
            _save(
                grid,
                target,
                {
                    "Software": "cxr-diffusers enhance --compare",
                    "Source": path.name,
                    "Panels": ", ".join(["original", *PRESETS]),
                },
            )
            print(target)
    return 0
