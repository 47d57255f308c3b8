"""Image transforms for training and for building datasets: aspect-preserving resize + pad, crops, tensors.

All functions work on one-channel PIL images and are applied lazily with `Dataset.with_transform` /
`set_transform`, so the data are never copied::

    ds = load_pneumonia(root)["train"]
    ds256 = with_resolution(ds, 256)                      # PIL images, 256x256, aspect ratio kept (padded)
    train = ds.with_transform(make_train_transform(256))  # {"pixel_values": (1,256,256) in [-1,1], "prompt": str}

torch is imported only by the functions that return tensors.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable

import PIL.Image

__all__ = [
    "center_crop",
    "encode_png",
    "make_train_transform",
    "random_crop",
    "resize_and_pad",
    "to_tensor",
    "with_resolution",
]


def _size(resolution: int | tuple[int, int]) -> tuple[int, int]:
    """(width, height) from an int or (height, width) tuple."""
    if isinstance(resolution, int):
        if resolution <= 0:
            raise ValueError(f"resolution must be positive, not {resolution}")
        return resolution, resolution
    height, width = resolution
    return int(width), int(height)


def resize_and_pad(
    image: PIL.Image.Image,
    resolution: int | tuple[int, int],
    *,
    fill: int = 0,
    resample: int = PIL.Image.Resampling.BICUBIC,
) -> PIL.Image.Image:
    """Fit `image` into `resolution` (an int or (height, width)) keeping its aspect ratio, then pad with `fill`.

    The image is scaled so that it just fits, centred, and the border is filled with black (0) by default, as on a
    radiograph. The result is mode L. An image already of the target size is returned converted but not resampled.
    """
    if image.mode != "L":
        image = image.convert("L")
    target_w, target_h = _size(resolution)
    w, h = image.size
    if (w, h) == (target_w, target_h):
        return image
    scale = min(target_w / w, target_h / h)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    resized = image.resize((new_w, new_h), resample=resample, reducing_gap=3.0 if scale < 0.5 else None)
    if (new_w, new_h) == (target_w, target_h):
        return resized
    canvas = PIL.Image.new("L", (target_w, target_h), color=fill)
    canvas.paste(resized, ((target_w - new_w) // 2, (target_h - new_h) // 2))
    return canvas


def center_crop(image: PIL.Image.Image, size: int | tuple[int, int]) -> PIL.Image.Image:
    """The centred `size` crop (int or (height, width))."""
    crop_w, crop_h = _size(size)
    w, h = image.size
    left, top = max(0, (w - crop_w) // 2), max(0, (h - crop_h) // 2)
    return image.crop((left, top, left + crop_w, top + crop_h))


def random_crop(image: PIL.Image.Image, size: int | tuple[int, int], rng: random.Random) -> PIL.Image.Image:
    """A random `size` crop drawn with `rng` (for VAE training on patches)."""
    crop_w, crop_h = _size(size)
    w, h = image.size
    if crop_w > w or crop_h > h:
        raise ValueError(f"crop {crop_w}x{crop_h} is larger than the image {w}x{h}")
    left, top = rng.randint(0, w - crop_w), rng.randint(0, h - crop_h)
    return image.crop((left, top, left + crop_w, top + crop_h))


def to_tensor(image: PIL.Image.Image):
    """A float32 torch tensor of shape (1, H, W) scaled to [-1, 1]."""
    import numpy as np
    import torch

    if image.mode != "L":
        image = image.convert("L")
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array / 127.5 - 1.0).unsqueeze(0)


def encode_png(image: PIL.Image.Image, compress_level: int = 6) -> bytes:
    """PNG bytes of an image (what `datasets.Image` stores)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def with_resolution(dataset, resolution: int | tuple[int, int], *, image_column: str = "image", fill: int = 0):
    """`dataset` with images resized and padded on access (`with_transform`, no copy of the data).

    Works on a `Dataset` or a `DatasetDict`; other columns pass through unchanged.
    """

    def transform(batch: dict) -> dict:
        batch = dict(batch)
        batch[image_column] = [resize_and_pad(im, resolution, fill=fill) for im in batch[image_column]]
        return batch

    return dataset.with_transform(transform)


def make_train_transform(
    resolution: int | tuple[int, int],
    *,
    crop_size: int | tuple[int, int] | None = None,
    center: bool = False,
    prompt_builder: Callable[[dict], str] | None = None,
    image_column: str = "image",
    prompt_column: str = "prompt",
    seed: int | None = 0,
    keep_columns: tuple[str, ...] = ("labels", "source"),
) -> Callable[[dict], dict]:
    """A `with_transform` function producing training tensors.

    Each image is resized and padded to `resolution` (aspect ratio kept), optionally cropped to `crop_size` (random,
    seeded; centred with `center=True`) for VAE training on patches, and returned as `pixel_values`: a (1, H, W)
    float tensor in [-1, 1]. The prompt is the `prompt` column, or `prompt_builder(example)` (e.g.
    `PromptBuilder(training=True, seed=...)`) when given. Horizontal flips are deliberately not offered: they move
    the heart to the right.

    Returns a function for `dataset.with_transform(...)`; its output has `pixel_values`, `prompt` and the
    `keep_columns` present in the batch.
    """
    rng = random.Random(seed)

    def transform(batch: dict) -> dict:
        images = batch[image_column]
        pixel_values = []
        for image in images:
            image = resize_and_pad(image, resolution)
            if crop_size is not None:
                image = center_crop(image, crop_size) if center else random_crop(image, crop_size, rng)
            pixel_values.append(to_tensor(image))
        out = {"pixel_values": pixel_values}
        if prompt_builder is not None:
            keys = list(batch)
            rows = [{k: batch[k][i] for k in keys if k != image_column} for i in range(len(images))]
            out["prompt"] = [prompt_builder(row) for row in rows]
        elif prompt_column in batch:
            out["prompt"] = list(batch[prompt_column])
        for column in keep_columns:
            if column in batch:
                out[column] = list(batch[column])
        return out

    return transform


def resize_batch_to_png(batch: dict, resolution: int | tuple[int, int], image_column: str = "image") -> dict:
    """`Dataset.map(batched=True)` function: images -> resized, padded PNG bytes (used when saving a dataset)."""
    return {
        image_column: [
            {"bytes": encode_png(resize_and_pad(im, resolution), compress_level=3), "path": None}
            for im in batch[image_column]
        ]
    }
