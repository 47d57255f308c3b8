#!/usr/bin/env python
"""Reconstruction quality of a `CXRAutoencoderKL` (or a pipeline's VAE) on held-out images.

    python train_scripts/evaluate_vae.py --vae pretrained/cxr-ldm-small --train_data_dir data/cxr-train-256 \
        --split test --num_images 200 --output_dir outputs/vae-eval

Writes `vae_metrics.json` (mean PSNR/SSIM on uint8 images at `--resolution`, and the sharpness ratio: variance of
the Laplacian of reconstructions / originals, overall and per source) and `reconstructions.png`
(real | reconstruction pairs).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from PIL import Image

from cxr_diffusers import CXRAutoencoderKL, CXRInputError
from cxr_diffusers.hub import load_pretrained
from cxr_diffusers.training_utils import load_training_dataset, run_script, vae_reconstruction_metrics
from cxr_diffusers.utils.image_grid import make_grid
from cxr_diffusers.utils.output_dir import check_writable_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vae", required=True, help="VAE folder, or a pipeline folder (its vae/ is used)")
    parser.add_argument("--train_data_dir", default=None, help="dataset built by `cxr-diffusers data build`")
    parser.add_argument("--dataset_name", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--num_images", type=int, default=200)
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--output_dir", default="outputs/vae-eval")
    args = parser.parse_args(argv)
    if args.num_images < 1:
        parser.error("--num_images must be at least 1")
    if args.resolution < 8 or args.resolution % 8:
        parser.error(f"--resolution must be a positive multiple of 8, got {args.resolution}")
    try:
        check_writable_dir(args.output_dir, "--output_dir")
    except CXRInputError as error:
        parser.error(str(error))

    folder = Path(args.vae)
    vae = load_pretrained(CXRAutoencoderKL, folder / "vae" if (folder / "model_index.json").is_file() else folder, "VAE")
    dataset = load_training_dataset(args.train_data_dir, args.dataset_name, args.split)
    dataset = dataset.shuffle(seed=0)  # a fixed, source-mixed sample of the split
    metrics, pairs = vae_reconstruction_metrics(vae, dataset, args.resolution, args.num_images)
    metrics.update(split=args.split, resolution=args.resolution, vae=str(folder))
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vae_metrics.json").write_text(json.dumps(metrics, indent=2))
    make_grid([Image.fromarray(a) for pair in pairs for a in pair], cols=4).save(out / "reconstructions.png")
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_script(main))
