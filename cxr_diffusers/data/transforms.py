"""Image transforms for building datasets and for training: aspect-preserving resize + pad, and tensors.

All functions work on one-channel PIL images and can be applied lazily with `Dataset.with_transform` /
`set_transform`, so the data are never copied::

    ds = load_pneumonia(root)["train"]
    ds256 = with_resolution(ds, 256)        # PIL images, 256x256, aspect ratio kept (padded)
    x = to_tensor(ds256[0]["image"])        # (1, 256, 256) float32 in [-1, 1], what the VAE takes

The training scripts build their batches with `cxr_diffusers.training_utils.image_to_tensor` (these two functions)
and crop tensors there. torch is imported only by the functions that return tensors.
"""

from __future__ import annotations

import io

import PIL.Image

__all__ = [
    "encode_png",
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


def resize_batch_to_png(batch: dict, resolution: int | tuple[int, int], image_column: str = "image") -> dict:
    """`Dataset.map(batched=True)` function: images -> resized, padded PNG bytes (used when saving a dataset)."""
    return {
        image_column: [
            {"bytes": encode_png(resize_and_pad(im, resolution), compress_level=3), "path": None}
            for im in batch[image_column]
        ]
    }
