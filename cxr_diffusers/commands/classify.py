"""`cxr-diffusers classify`: NORMAL / PNEUMONIA for chest X-ray files, with optional Grad-CAM heat maps.

    cxr-diffusers classify a.png b.jpeg                        # a.png<TAB>PNEUMONIA<TAB>0.9731 (probability of the label)
    cxr-diffusers classify a.png --gradcam -o heatmaps/        # also heatmaps/a_gradcam.png
    cxr-diffusers classify a.png --model runs/classifier/model --json

The default model is the bundled `pretrained/pneumonia-classifier`. Colour (RGB/RGBA/palette) images are converted to
grayscale and 16-bit images are scaled to 8 bits from their min-max range; non-images and images smaller than 28x28
pixels are refused with a clear message. Inputs that are not chest radiographs (blank or uniform, a handful of grey
levels, pixel noise, and, where the classifier folder holds `ood_statistics.safetensors`, images whose features are far
from real radiographs: `cxr_diffusers.classification.ood`) get the label NOT_A_RADIOGRAPH and a reason instead of a
probability. Research tool: not for clinical use.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import CXRInputError

DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "pretrained" / "pneumonia-classifier"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="classify chest X-rays as NORMAL or PNEUMONIA (optionally with Grad-CAM heat maps)",
        description="Classify chest X-ray images as NORMAL or PNEUMONIA with a trained ResNet classifier and print "
        "each file's label and its probability. Not for clinical use.",
    )
    parser.add_argument("files", nargs="+", metavar="IMAGE", help="X-ray images (PNG, JPEG, ...)")
    parser.add_argument("--model", "-m", default=None,
                        help=f"classifier folder or Hub id (default: {DEFAULT_MODEL.parent.name}/{DEFAULT_MODEL.name})")
    parser.add_argument("--gradcam", action="store_true",
                        help="save a Grad-CAM heat-map overlay of the predicted class as <output-dir>/<stem>_gradcam.png")
    parser.add_argument("--output-dir", "-o", default="gradcam", help="folder for --gradcam images (default: gradcam)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image instead of text")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..classification import load_classifier, load_xray
    from ..classification.input_check import NOT_A_RADIOGRAPH
    from ..classification.ood import classify_images, load_ood_statistics
    from ..utils.output_dir import check_writable_dir

    if args.batch_size < 1:
        raise CXRInputError(f"--batch-size must be at least 1, got {args.batch_size}.")
    model_path = args.model or DEFAULT_MODEL
    if args.model is None and not (DEFAULT_MODEL / "config.json").is_file():
        raise CXRInputError(f"No bundled classifier at {DEFAULT_MODEL}; pass --model FOLDER (train one with "
                            "train_scripts/train_classifier.py).")
    paths = [Path(f) for f in args.files]
    images = [load_xray(p, str(p)) for p in paths]  # read everything before writing anything
    if args.gradcam:
        stems: dict[str, Path] = {}
        for p in paths:
            if p.stem in stems and stems[p.stem] != p:
                raise CXRInputError(f"Inputs '{stems[p.stem]}' and '{p}' share the name '{p.stem}'; heat maps "
                                    "would collide.")
            stems[p.stem] = p
        check_writable_dir(args.output_dir, "--output-dir")
    model, processor = load_classifier(model_path)
    statistics = load_ood_statistics(model_path)  # None: the structural check only
    results = classify_images(model, processor, images, batch_size=args.batch_size, statistics=statistics)
    for path, image, result in zip(paths, images, results):
        if result.problem:  # a confident answer on a non-radiograph would be a wrong answer
            record = {"file": str(path), "label": NOT_A_RADIOGRAPH, "probability": None, "p_pneumonia": None,
                      "reason": result.problem}
            if result.ood_distance is not None:
                record["ood_distance"] = result.ood_distance
            print(f"warning: {path}: not classified: {result.problem}.", file=sys.stderr)
            if args.json:
                print(json.dumps(record))
            else:
                print(f"{path}\t{NOT_A_RADIOGRAPH}\t-")
            continue
        label, p = result.label, result.p_pneumonia
        record = {"file": str(path), "label": label, "probability": round(float(max(p, 1 - p)), 4),
                  "p_pneumonia": round(float(p), 4)}
        if result.ood_distance is not None:
            record["ood_distance"] = result.ood_distance
        if args.gradcam:
            record["gradcam"] = str(save_gradcam(model, processor, image, path, Path(args.output_dir), label))
        if args.json:
            print(json.dumps(record))
        else:
            line = f"{path}\t{label}\t{record['probability']:.4f}"
            print(line + (f"\t{record['gradcam']}" if args.gradcam else ""))
    return 0


def save_gradcam(model, processor, image, path: Path, out_dir: Path, label: str) -> Path:
    from PIL import PngImagePlugin

    from ..classification import LABEL2ID, grad_cam, overlay_heatmap, prepare_pixel_values

    pixel_values = prepare_pixel_values(processor, image)
    cam = grad_cam(model, pixel_values, target=LABEL2ID[label])
    overlay = overlay_heatmap(image, cam)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{path.stem}_gradcam.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "cxr-diffusers classify --gradcam")
    info.add_text("Source", path.name)
    info.add_text("Class", label)
    overlay.save(target, format="PNG", pnginfo=info)
    return target
