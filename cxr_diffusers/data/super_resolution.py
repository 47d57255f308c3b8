"""Training pairs of the super-resolution stage: a real high-resolution radiograph and its low-resolution version.

The one definition of the low-resolution input, shared by `train_scripts/train_super_resolution.py` and any evaluation
of `CXRSuperResolutionModel`: the high-resolution image HR is the radiograph fitted into a `base_resolution * scale`
square (`resize_and_pad`, aspect ratio kept, black padding, mode L), and the low-resolution image LR is HR resized to
`base_resolution` x `base_resolution` with Pillow's (antialiased) bicubic filter. LR pixel (i, j) covers HR pixels
`[i * scale, (i + 1) * scale)`, so a crop of LR at (top, left) matches the crop of HR at (top * scale, left * scale).

Only images whose longest side is at least `base_resolution * scale` give real high-resolution detail
(`has_detail_for`); smaller ones would teach the model to upscale an upscaled image.

`blur_low_resolution` is the optional training degradation: generated 256 px images are softer than downsampled
real ones, and a model trained only on the clean LR learns to keep that softness.
"""

from __future__ import annotations

import math

import PIL.Image
import torch
import torch.nn.functional as F

from ..errors import CXRInputError
from .transforms import resize_and_pad

__all__ = [
    "blur_low_resolution",
    "has_detail_for",
    "high_resolution_pair",
    "lanczos_upscale",
    "make_low_resolution",
    "target_resolution",
]


def _check(base_resolution: int, scale: int) -> None:
    for name, value, least in (("base_resolution", base_resolution, 1), ("scale", scale, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise CXRInputError(f"{name} must be an integer >= {least}, got {value!r}.")


def target_resolution(base_resolution: int, scale: int) -> int:
    """The side of the high-resolution image: `base_resolution * scale` (256 x 2 = 512, 256 x 3 = 768)."""
    _check(base_resolution, scale)
    return base_resolution * scale


def has_detail_for(size: tuple[int, int], base_resolution: int, scale: int) -> bool:
    """Whether an image of `size` (width, height) holds real detail at `base_resolution * scale`: its longest side
    is at least that (it is resized down, or kept, to fit the square, never up)."""
    return max(size) >= target_resolution(base_resolution, scale)


def make_low_resolution(hr_image: PIL.Image.Image, base_resolution: int) -> PIL.Image.Image:
    """The low-resolution input of a high-resolution square image: `hr_image` (mode L) resized to
    `base_resolution` x `base_resolution` with `PIL.Image.BICUBIC` (Pillow's filter is antialiased when it shrinks)."""
    if hr_image.width != hr_image.height:
        raise CXRInputError(f"The high-resolution image must be square, got {hr_image.width}x{hr_image.height}.")
    if hr_image.width % base_resolution:
        raise CXRInputError(f"The high-resolution image ({hr_image.width} px) is not a whole multiple of "
                            f"base_resolution {base_resolution}.")
    return hr_image.convert("L").resize((base_resolution, base_resolution), resample=PIL.Image.Resampling.BICUBIC)


def high_resolution_pair(image: PIL.Image.Image, base_resolution: int, scale: int
                         ) -> tuple[PIL.Image.Image, PIL.Image.Image]:
    """`(hr, lr)`: `image` fitted into a `base_resolution * scale` square (`resize_and_pad`, mode L) and its
    `make_low_resolution` version of `base_resolution` px."""
    hr = resize_and_pad(image.convert("L"), target_resolution(base_resolution, scale))
    return hr, make_low_resolution(hr, base_resolution)


def lanczos_upscale(lr_image: PIL.Image.Image, scale: int) -> PIL.Image.Image:
    """The classical baseline: `lr_image` upscaled `scale` times with `PIL.Image.LANCZOS`."""
    _check(1, scale)
    return lr_image.convert("L").resize((lr_image.width * scale, lr_image.height * scale),
                                        resample=PIL.Image.Resampling.LANCZOS)


def blur_low_resolution(low_resolution: torch.Tensor, generator: torch.Generator, probability: float,
                        sigma_range: tuple[float, float]) -> tuple[torch.Tensor, list[float]]:
    """Blur each LR image of a batch (N, 1, h, w) with probability `probability` by a Gaussian of standard deviation
    drawn uniformly from `sigma_range` (in LR pixels; reflect padding), as the blind super-resolution degradations do.

    Draws from `generator` only (so a resumed run blurs the same images). Returns the batch and each image's sigma
    (0 for untouched images)."""
    low, high = (float(v) for v in sigma_range)
    if not 0.0 <= probability <= 1.0 or not 0.0 < low <= high:
        raise CXRInputError(f"Blur needs a probability in [0, 1] and 0 < sigma_min <= sigma_max, got {probability} "
                            f"and {sigma_range}.")
    draws = torch.rand(len(low_resolution), 2, generator=generator).tolist()
    out, sigmas = [], []
    for image, (chance, where) in zip(low_resolution, draws):
        sigma = low + (high - low) * where if chance < probability else 0.0
        sigmas.append(sigma)
        if sigma == 0.0:
            out.append(image)
            continue
        radius = min(max(1, math.ceil(3 * sigma)), (min(image.shape[-2:]) - 1))
        taps = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
        kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
        kernel = kernel / kernel.sum()
        x = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
        x = F.conv2d(x, kernel.view(1, 1, 1, -1))
        x = F.conv2d(x, kernel.view(1, 1, -1, 1))
        out.append(x[0])
    return torch.stack(out), sigmas
