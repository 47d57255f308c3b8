"""Shared UI pieces: checked input components, image decoding with clear messages, plots and small helpers.

Every input that a user (or an API client) can get wrong is checked here and fails with a `gr.Error` of one sentence
that names the input, so that the app answers with a clear message and keeps running:

- `XrayImage` (a `gr.Image`): non-image files, corrupt or oversize images fail; 16-bit, colour, transparent, palette
  and multi-frame images are converted to 8-bit grayscale and the conversion is reported with `gr.Warning`.
- `CheckedSlider` / `CheckedNumber`: out-of-range, non-numeric or non-finite values fail with the input's label.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cxr_diffusers.provenance import (
    attach_provenance,
    derive_provenance,
    read_provenance,
)

#: Largest accepted side of an uploaded image, in pixels (the pipeline works at 256-768).
MAX_IMAGE_SIDE = int(os.environ.get("CXR_APP_MAX_IMAGE_SIDE", "4096"))
#: Smallest accepted side of an uploaded image (PneumoniaMNIST is 28 px).
MIN_IMAGE_SIDE = 16
NOTE_KEY = "cxr_app_note"


# ----------------------------------------------------------------------------------------------------------- checks
def _label(component: gr.components.Component, fallback: str) -> str:
    label = getattr(component, "label", None)
    return str(label) if label else fallback


def check_number(name: str, value: Any, minimum: float | None = None, maximum: float | None = None,
                 integer: bool = False) -> float | int:
    """`value` as a finite number (an int if `integer`) within [minimum, maximum], or a one-sentence `gr.Error`."""
    if isinstance(value, bool) or value is None:
        raise gr.Error(f"{name} must be a number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise gr.Error(f"{name} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise gr.Error(f"{name} must be a finite number, got {value!r}.")
    if integer and number != int(number):
        raise gr.Error(f"{name} must be a whole number, got {value!r}.")
    low = f"{minimum:g}" if minimum is not None else None
    high = f"{maximum:g}" if maximum is not None else None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        if low is not None and high is not None:
            raise gr.Error(f"{name} must be between {low} and {high}, got {value!r}.")
        raise gr.Error(f"{name} must be {'at least ' + low if low is not None else 'at most ' + high}, got {value!r}.")
    return int(number) if integer else number


def check_choice(name: str, value: Any, choices) -> Any:
    choices = list(choices)
    if value not in choices:
        shown = ", ".join(str(c) for c in choices[:12])
        raise gr.Error(f"{name} must be one of {shown}, got {value!r}.")
    return value


@contextlib.contextmanager
def _no_stub_files():
    """gradio writes a `.pyi` stub next to the module of every component subclass (a custom-component development
    aid); these subclasses only change server-side checks, so skip that while they are defined."""
    from gradio import component_meta

    original = getattr(component_meta, "create_or_modify_pyi", None)
    component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        if original is not None:
            component_meta.create_or_modify_pyi = original


# ----------------------------------------------------------------------------------------------------------- images
def to_grayscale_8bit(image: Image.Image) -> tuple[Image.Image, str | None]:
    """Mode L copy of any PIL image and a sentence describing the conversion (None when it was already L)."""
    if image.mode == "L":
        return image, None
    if image.mode == "1":
        return image.convert("L"), "The 1-bit image was converted to 8-bit grayscale."
    if image.mode in ("I", "F") or image.mode.startswith("I;"):
        array = np.asarray(image, dtype=np.float64)
        if array.ndim == 3:
            array = array.mean(axis=-1)
        finite = np.isfinite(array)
        if not finite.any():
            raise gr.Error("The image holds no finite pixel values; upload a normal chest X-ray.")
        low, high = float(array[finite].min()), float(array[finite].max())
        scaled = (np.where(finite, array, low) - low) / (high - low) * 255.0 if high > low else np.zeros_like(array)
        depth = "16-bit" if image.mode.startswith("I;16") else ("floating-point" if image.mode == "F" else "32-bit")
        converted = Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), mode="L")
        return converted, f"The {depth} image was scaled to 8-bit grayscale (its own minimum to maximum)."
    note = f"The {image.mode} colour image was converted to grayscale."
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))  # transparent -> black, as outside the film
        image = Image.alpha_composite(background, rgba)
        note = "The image with transparency was flattened onto black and converted to grayscale."
    elif image.mode == "P":
        note = "The palette image was converted to grayscale."
    return image.convert("L"), note


def _provenance_of(image: Image.Image) -> dict | None:
    """The provenance record of a decoded upload, or None (also for an unreadable record: nothing is invented)."""
    try:
        return read_provenance(image)
    except ValueError:
        return None


def open_xray(path: str | os.PathLike, name: str | None = None, max_side: int = MAX_IMAGE_SIDE) -> Image.Image:
    """Decode an uploaded file into an 8-bit grayscale PIL image (conversion note in `image.info[NOTE_KEY]`).

    A synthetic image keeps its provenance record (the same record, or one derived from it when the image was
    converted), so that what the app makes from it stays tagged. Raises `gr.Error` with one sentence for a missing,
    non-image, corrupt, too small or too large file.
    """
    label = name or Path(path).name
    if not Path(path).is_file():
        raise gr.Error(f"The uploaded file {label!r} was not found; upload it again.")
    try:
        with Image.open(path) as opened:
            frames = getattr(opened, "n_frames", 1)
            width, height = opened.size
            if max(width, height) > max_side:
                raise gr.Error(
                    f"The image is {width}x{height} pixels; upload one at most {max_side} pixels on a side."
                )
            opened.load()
            record = _provenance_of(opened)
            image = ImageOps.exif_transpose(opened) or opened.copy()
            image = image.copy()
    except gr.Error:
        raise
    except Image.DecompressionBombError:
        raise gr.Error(
            f"{label!r} is too large to decode safely; upload an image of at most {max_side} pixels a side."
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise gr.Error(f"{label!r} is not a readable image; upload a PNG or JPEG chest X-ray.") from None
    if min(image.size) < MIN_IMAGE_SIDE:
        raise gr.Error(
            f"The image is only {image.size[0]}x{image.size[1]} pixels; upload one at least {MIN_IMAGE_SIDE} "
            "pixels a side."
        )
    gray, note = to_grayscale_8bit(image)
    if frames > 1:
        note = ((note + " ") if note else "") + f"Only the first of its {frames} frames is used."
    gray = gray.copy()
    gray.info = {NOTE_KEY: note} if note else {}
    if record is not None and note:
        derive_provenance(gray, record, "convert_to_grayscale", note=note)
    elif record is not None:
        attach_provenance(gray, record)
    return gray


# ----------------------------------------------------------------------------------------------------------- inputs
with _no_stub_files():

    class CheckedSlider(gr.Slider):
        """A `gr.Slider` whose server-side check names the slider: "Steps must be between 1 and 100, got 1000."."""

        def get_block_name(self) -> str:  # use the stock slider in the browser
            return "slider"

        def preprocess(self, payload: Any) -> float | int:
            integer = self.step is not None and float(self.step).is_integer() and float(self.minimum).is_integer()
            value = check_number(_label(self, "value"), payload, self.minimum, self.maximum, integer=integer)
            return int(value) if integer else float(value)


    class CheckedNumber(gr.Number):
        """A `gr.Number` with the same one-sentence checks as `CheckedSlider`."""

        def get_block_name(self) -> str:
            return "number"

        def preprocess(self, payload: Any) -> float | int | None:
            if payload is None:
                return None
            integer = self.precision == 0
            value = check_number(_label(self, "value"), payload, self.minimum, self.maximum, integer=integer)
            return int(value) if self.precision == 0 else float(value)


    class XrayImage(gr.Image):
        """A `gr.Image` that hands the function an 8-bit grayscale PIL image decoded by `open_xray`.

        The browser shows the stock image component; the server decodes the original upload itself (gradio's own
        conversion clips 16-bit images and fails on non-images without a useful message).
        """

        def get_block_name(self) -> str:
            return "image"

        def preprocess(self, payload) -> Image.Image | None:
            if payload is None:
                return None
            path = getattr(payload, "path", None)
            url = getattr(payload, "url", None) or ""
            if path is None and url.startswith("data:"):  # pasted / webcam images arrive as base64
                import base64
                import hashlib

                try:
                    data = base64.b64decode(url.split(",", 1)[1])
                except (ValueError, IndexError):
                    raise gr.Error("The pasted image could not be decoded; upload a PNG or JPEG chest X-ray.") from None
                folder = Path(self.GRADIO_CACHE) / "pasted"
                folder.mkdir(parents=True, exist_ok=True)
                path = str(folder / hashlib.sha256(data).hexdigest()[:24])
                Path(path).write_bytes(data)
            if path is None:
                raise gr.Error("The image upload is empty; upload a PNG or JPEG chest X-ray.")
            return open_xray(path, name=getattr(payload, "orig_name", None) or Path(path).name)


def xray_image(**kwargs) -> XrayImage:
    """An `XrayImage` input: PNG in the browser, no conversion by gradio (the original file reaches `preprocess`).

    (gradio reads a component's properties from its constructor's signature, so the subclass keeps `gr.Image`'s.)
    """
    kwargs.setdefault("type", "filepath")
    kwargs.setdefault("format", "png")
    kwargs.setdefault("image_mode", None)
    return XrayImage(**kwargs)


def report_conversion(image: Image.Image | None) -> None:
    """Show the conversion note of an `XrayImage` input (if any) as a `gr.Warning`."""
    if image is not None and image.info.get(NOTE_KEY):
        gr.Warning(image.info[NOTE_KEY])


def require_image(image: Image.Image | None, what: str = "an X-ray") -> Image.Image:
    if image is None:
        raise gr.Error(f"Upload {what} first (PNG or JPEG), or send a generated one from the Generate tab.")
    report_conversion(image)
    return image


def save_png(image: Image.Image, folder: Path, name: str) -> str:
    """Write `image` as `folder/name.png` and return the path.

    Image outputs are returned as files written once under a fresh folder per request: gradio copies a file into its
    cache atomically, whereas a PIL image is re-encoded into a content-addressed path that is rewritten in place when
    two outputs are identical, which a browser fetching it at that moment sees as a truncated file. An image with a
    provenance record is written with it (the save hook of `cxr_diffusers.provenance`, imported by this module).
    """
    path = Path(folder) / f"{name}.png"
    image.save(path, format="PNG")
    return str(path)


def thumbnail(image: Image.Image, side: int = 512) -> Image.Image:
    """A copy no larger than `side` pixels on its longer side (for galleries)."""
    if max(image.size) <= side:
        return image
    copy = image.copy()
    copy.thumbnail((side, side), Image.Resampling.LANCZOS)
    return copy


# ----------------------------------------------------------------------------------------------------------- plots
def figure(width: float = 6.0, height: float = 3.2):
    """A matplotlib `Figure` (no pyplot: thread-safe under gradio's worker threads) and its axes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    return fig


def message_figure(text: str, width: float = 6.0, height: float = 2.0):
    """A plot that just says `text` (used where there is nothing to plot yet)."""
    fig = figure(width, height)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, color="#555", fontsize=11)
    return fig


def bar_figure(names: list[str], values: list[float], title: str, ylabel: str, log: bool = False,
               width: float = 6.0, height: float = 3.2, color: str = "#4f6d8f"):
    fig = figure(width, height)
    ax = fig.add_subplot()
    bars = ax.bar(range(len(values)), values, color=color)
    ax.set_xticks(range(len(names)), names, rotation=20 if max((len(n) for n in names), default=0) > 8 else 0,
                  ha="right" if max((len(n) for n in names), default=0) > 8 else "center")
    ax.set_title(title, fontsize=11)
    ax.set_ylabel(ylabel)
    if log and all(v > 0 for v in values):
        ax.set_yscale("log")
    for bar, value in zip(bars, values):
        ax.annotate(human(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    ax.spines[["top", "right"]].set_visible(False)
    ax.margins(y=0.15)
    return fig


def human(value: float) -> str:
    """1234567 -> '1.23M'."""
    value = float(value)
    for limit, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.3g}" if not value.is_integer() else f"{int(value)}"


def fmt(value: Any, digits: int = 4) -> Any:
    """Round floats for tables; keep everything else."""
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        if math.isnan(value):
            return "nan"
        return round(value, digits)
    return value


def jsonable(value: Any) -> Any:
    """A JSON-safe copy (string keys, no numpy / tuples / non-finite floats) for `gr.JSON`."""
    import json

    def default(obj):
        if hasattr(obj, "item"):
            return obj.item()
        if hasattr(obj, "tolist"):
            return obj.tolist()
        return str(obj)

    text = json.dumps(value, default=default, allow_nan=True)
    return json.loads(text.replace("NaN", "null").replace("-Infinity", '"-inf"').replace("Infinity", '"inf"'))


NOT_FOR_CLINICAL_USE_MD = (
    "**Synthetic images, not for clinical use.** Every generated PNG carries the label *SYNTHETIC ... NOT FOR "
    "CLINICAL USE* and its generation parameters in its metadata."
)
