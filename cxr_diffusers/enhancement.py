"""Radiological post-processing for chest X-rays: windowing, CLAHE, median filtering, edge enhancement, histogram
equalisation, S-curve contrast and vignetting, plus presets and a serialisable `EnhancementPipeline`.

Every operation accepts a grayscale image as

- a PIL image of mode ``L`` (8 bit), ``I;16`` (16 bit) or ``I`` (32-bit integer holding 0..65535), or ``F`` with
  values in [0, 1];
- a numpy array of shape (H, W) or (H, W, 1) and dtype ``uint8`` or ``uint16``, or a float array with values in
  [0, 1] (processed at 16-bit precision and returned in the same float dtype). Other dtypes (``int64``, ``bool``,
  floats outside [0, 1] or with NaN) raise `CXRInputError`: cast them first, e.g. ``a.astype(np.uint8)``;

and returns the same kind: PIL in -> PIL out in the same mode, array in -> array out with the same dtype and shape.
Colour input (RGB/RGBA/P/LA PIL images, (H, W, 3) or (H, W, 4) RGB(A) arrays) is converted to luminance with a
`GrayscaleConversionWarning` and comes back grayscale (mode ``L`` / shape (H, W)). All pixel work is done by
OpenCV, scikit-image/scipy or vectorised numpy; intensities never leave the input's range.

A PIL image with a provenance record (a synthetic X-ray) gives a result whose record is derived from it (operation
``"enhance"``, the pipeline as ``enhancement``; see `cxr_diffusers.provenance.derive_provenance`), so that a saved
result stays tagged. Untagged (real) images give untagged results.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from PIL import Image

from .errors import CXRInputError
from .provenance import derive_provenance

__all__ = [
    "PRESETS",
    "STEPS",
    "EnhancementPipeline",
    "GrayscaleConversionWarning",
    "ImageLike",
    "clahe",
    "edge_enhance",
    "enhance",
    "resolve_enhancement",
    "get_preset",
    "histogram_equalization",
    "median_filter",
    "s_curve",
    "to_grayscale_array",
    "vignette",
    "window",
]

ImageLike = np.ndarray | Image.Image

_FLOAT_SCALE = 65535.0  # float images in [0, 1] are processed as uint16
_VIGNETTE_START = 0.5  # normalised radius (0 = centre, 1 = corners) where darkening begins


class GrayscaleConversionWarning(UserWarning):
    """A colour image was converted to grayscale (luminance) before processing."""


# --------------------------------------------------------------------------------------------------------------------
# Image conversion
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class _Gray:
    """A validated 2-D uint8/uint16 array and how to turn a result back into the caller's kind of image."""

    array: np.ndarray
    restore: Callable[[np.ndarray], ImageLike]
    scale: float  # caller's intensity units -> array units (1 for integer images, 65535 for float images)


def _warn_colour(what: str, func: str) -> None:
    # Point the warning at the first caller outside this module.
    frame, level = inspect.currentframe(), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(
        f"{func}: converted {what} to grayscale (luminance); the result is grayscale. "
        "Pass a mode L / I;16 image or an (H, W) array to avoid this.",
        GrayscaleConversionWarning,
        stacklevel=level,
    )


def _check_float(a: np.ndarray, func: str) -> np.ndarray:
    if a.size and not np.all(np.isfinite(a)):
        raise CXRInputError(f"{func}: the float image contains NaN or infinite values; clean it before enhancement.")
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo < 0.0 or hi > 1.0:
        raise CXRInputError(
            f"{func}: float images must hold values in [0, 1] (got min {lo:.4g}, max {hi:.4g}); rescale them or "
            "convert to uint8/uint16 first."
        )
    return np.rint(a.astype(np.float64) * _FLOAT_SCALE).astype(np.uint16)


def _prepare_pil(image: Image.Image, func: str) -> _Gray:
    mode = image.mode
    if mode == "L":
        return _Gray(np.array(image), Image.fromarray, 1.0)
    if mode.startswith("I;16"):
        return _Gray(np.array(image).astype(np.uint16), Image.fromarray, 1.0)
    if mode == "I":
        a = np.array(image)
        if a.size and (a.min() < 0 or a.max() > 65535):
            raise CXRInputError(
                f"{func}: mode I image values must lie in 0..65535 (got {a.min()}..{a.max()}); rescale it to 16 bit."
            )
        return _Gray(a.astype(np.uint16), lambda out: Image.fromarray(out.astype(np.int32)), 1.0)
    if mode == "F":
        a = _check_float(np.array(image), func)
        return _Gray(a, lambda out: Image.fromarray((out / _FLOAT_SCALE).astype(np.float32)), _FLOAT_SCALE)
    try:
        gray = image.convert("L")
    except (ValueError, OSError) as err:
        raise CXRInputError(f"{func}: cannot convert a mode {mode} image to grayscale ({err}).") from err
    _warn_colour(f"a mode {mode} image", func)
    return _Gray(np.array(gray), Image.fromarray, 1.0)


def _prepare_array(a: np.ndarray, func: str) -> _Gray:
    shape, dtype = a.shape, a.dtype
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3, 4)):
        hint = ""
        if a.ndim == 3 and a.shape[0] in (1, 3, 4):
            hint = " (channel-first? use np.moveaxis(image, 0, -1))"
        raise CXRInputError(
            f"{func}: expected a grayscale (H, W) array or an (H, W, 1|3|4) array, got shape {shape}{hint}."
        )
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise CXRInputError(f"{func}: the image is empty (shape {shape}).")
    if dtype.kind == "u" and dtype.itemsize in (1, 2):
        u = a if dtype.isnative else a.astype(dtype.newbyteorder("="))
        scale = 1.0

        def back(out: np.ndarray) -> np.ndarray:
            return out

    elif np.issubdtype(dtype, np.floating):
        u = _check_float(a, func)
        scale = _FLOAT_SCALE

        def back(out: np.ndarray) -> np.ndarray:
            return (out / _FLOAT_SCALE).astype(dtype)

    else:
        raise CXRInputError(
            f"{func}: unsupported array dtype {dtype}; pass uint8 or uint16 (e.g. image.astype(np.uint8)) or a float "
            "array with values in [0, 1]."
        )
    if u.ndim == 3 and u.shape[2] == 1:
        return _Gray(np.ascontiguousarray(u[:, :, 0]), lambda out: back(out)[:, :, None], scale)
    if u.ndim == 3:
        code = cv2.COLOR_RGB2GRAY if u.shape[2] == 3 else cv2.COLOR_RGBA2GRAY
        _warn_colour(f"an {shape} {'RGB' if u.shape[2] == 3 else 'RGBA'} array", func)
        u = cv2.cvtColor(np.ascontiguousarray(u), code)
    return _Gray(np.ascontiguousarray(u), back, scale)


def _prepare(image: Any, func: str) -> _Gray:
    if isinstance(image, Image.Image):
        return _prepare_pil(image, func)
    if isinstance(image, np.ndarray):
        return _prepare_array(image, func)
    raise CXRInputError(f"{func}: expected a PIL image or a numpy array, got {type(image).__name__}.")


def to_grayscale_array(image: ImageLike) -> np.ndarray:
    """Return `image` as a new 2-D uint8 or uint16 array (floats in [0, 1] become uint16), validating it like the
    enhancement operations do (colour input is converted with a warning)."""
    return _prepare(image, "to_grayscale_array").array.copy()


# --------------------------------------------------------------------------------------------------------------------
# Parameter checks (each returns the normalised parameters, with defaults, as a dict)
# --------------------------------------------------------------------------------------------------------------------


def _number(
    step: str,
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    strict: bool = False,
    maximum: float | None = None,
) -> float:
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    ok = ok and math.isfinite(float(value))
    if ok and minimum is not None:
        ok = float(value) > minimum if strict else float(value) >= minimum
    if ok and maximum is not None:
        ok = float(value) <= maximum
    if not ok:
        rng = []
        if minimum is not None:
            rng.append(f"{'>' if strict else '>='} {minimum:g}")
        if maximum is not None:
            rng.append(f"<= {maximum:g}")
        bounds = f" {' and '.join(rng)}" if rng else ""
        raise CXRInputError(f"{step}: {name} must be a finite number{bounds}, got {value!r}.")
    return float(value)


def _check_window(center: float, width: float) -> dict[str, Any]:
    c = _number("window", "center", center)
    w = _number("window", "width", width, minimum=0, strict=True)
    return {"center": c, "width": w}


def _check_clahe(clip_limit: float = 2.0, tile_grid_size: tuple[int, int] = (8, 8)) -> dict[str, Any]:
    clip = _number("clahe", "clip_limit", clip_limit, minimum=0, strict=True)
    tiles = tile_grid_size
    if isinstance(tiles, (int, np.integer)) and not isinstance(tiles, bool):
        tiles = (tiles, tiles)
    if (
        not isinstance(tiles, (tuple, list))
        or len(tiles) != 2
        or not all(isinstance(t, (int, np.integer)) and not isinstance(t, bool) and 1 <= t <= 256 for t in tiles)
    ):
        raise CXRInputError(
            f"clahe: tile_grid_size must be two integers between 1 and 256 such as (8, 8), got {tile_grid_size!r}."
        )
    return {"clip_limit": clip, "tile_grid_size": (int(tiles[0]), int(tiles[1]))}


def _check_median_filter(kernel_size: int = 3) -> dict[str, Any]:
    k = kernel_size
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 3 or k % 2 == 0 or k > 255:
        raise CXRInputError(
            f"median_filter: kernel_size must be an odd integer between 3 and 255 (3, 5, 7, ...), got {kernel_size!r}."
        )
    return {"kernel_size": int(k)}


def _check_edge_enhance(amount: float = 1.0, radius: float = 1.0) -> dict[str, Any]:
    return {
        "amount": _number("edge_enhance", "amount", amount, minimum=0),
        "radius": _number("edge_enhance", "radius", radius, minimum=0, strict=True, maximum=100),
    }


def _check_histogram_equalization() -> dict[str, Any]:
    return {}


def _check_s_curve(strength: float = 5.0, midpoint: float = 0.5) -> dict[str, Any]:
    s = _number("s_curve", "strength", strength, minimum=0, maximum=50)
    m = _number("s_curve", "midpoint", midpoint, minimum=0, strict=True, maximum=1)
    if m >= 1.0:
        raise CXRInputError(f"s_curve: midpoint must lie strictly between 0 and 1, got {midpoint!r}.")
    return {"strength": s, "midpoint": m}


def _check_vignette(amount: float = 0.3) -> dict[str, Any]:
    return {"amount": _number("vignette", "amount", amount, minimum=0, maximum=1)}


# --------------------------------------------------------------------------------------------------------------------
# Array kernels: 2-D uint8/uint16 in, same dtype out
# --------------------------------------------------------------------------------------------------------------------


def _max(a: np.ndarray) -> int:
    return int(np.iinfo(a.dtype).max)


def _to_dtype(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, _max(like)).astype(like.dtype)


def _lut(a: np.ndarray, table: np.ndarray) -> np.ndarray:
    table = table.astype(a.dtype)
    return cv2.LUT(a, table) if a.dtype == np.uint8 else table[a]


def _window_array(a: np.ndarray, scale: float, center: float, width: float) -> np.ndarray:
    c, w = center * scale, width * scale
    out = (a.astype(np.float64) - (c - w / 2.0)) * (_max(a) / w)
    return _to_dtype(out, a)


def _clahe_array(a: np.ndarray, scale: float, clip_limit: float, tile_grid_size: tuple[int, int]) -> np.ndarray:
    if a.dtype == np.uint8:
        return cv2.createCLAHE(clipLimit=clip_limit, tileGridSize=tuple(tile_grid_size)).apply(a)
    return _clahe_uint16(a, clip_limit, tile_grid_size)


def _clahe_uint16(a: np.ndarray, clip_limit: float, tile_grid_size: tuple[int, int]) -> np.ndarray:
    """OpenCV's CLAHE algorithm with 256 histogram bins, applied to 16-bit data at full precision.

    `cv2.createCLAHE` on uint16 uses 65536 bins, so its per-bin clip count ``clip_limit * tile_area / 65536`` is
    below 1 for any practical tile and every bin is clipped to one count: the result is near-total equalisation
    whatever `clip_limit` says, and differs from the 8-bit result by 15-25 grey levels on the fixtures. Here tile
    histograms, clipping and redistribution are OpenCV's 8-bit ones (same padding, same residual spreading); the
    tile mappings are evaluated piecewise-linearly between 8-bit levels and blended bilinearly between tile centres
    like OpenCV does. On 8-bit content (x257) it matches `cv2.createCLAHE` on uint8 to within one grey level.
    """
    tiles_x, tiles_y = tile_grid_size  # OpenCV order: (columns, rows)
    h, w = a.shape
    v8 = a.astype(np.float64) / 257.0  # position on the 8-bit scale
    q = np.rint(v8).astype(np.uint8)
    if h % tiles_y or w % tiles_x:  # OpenCV pads exactly like this before computing the tile histograms
        q = cv2.copyMakeBorder(q, 0, tiles_y - h % tiles_y, 0, tiles_x - w % tiles_x, cv2.BORDER_REFLECT_101)
    th, tw = q.shape[0] // tiles_y, q.shape[1] // tiles_x
    area = th * tw
    n_tiles = tiles_y * tiles_x
    blocks = q[: th * tiles_y, : tw * tiles_x].reshape(tiles_y, th, tiles_x, tw).transpose(0, 2, 1, 3)
    tile_index = np.arange(n_tiles).reshape(tiles_y, tiles_x, 1, 1)
    hist = np.bincount((tile_index * 256 + blocks).ravel(), minlength=n_tiles * 256).reshape(n_tiles, 256)
    limit = max(int(clip_limit * area / 256), 1)
    excess = np.clip(hist - limit, 0, None).sum(axis=1)
    hist = np.minimum(hist, limit) + (excess // 256)[:, None]
    residual = excess % 256  # spread one count every `step` bins from bin 0, as OpenCV does
    step = np.maximum(256 // np.maximum(residual, 1), 1)
    bins = np.arange(256)[None, :]
    hist += (residual[:, None] > 0) & (bins % step[:, None] == 0) & (bins // step[:, None] < residual[:, None])
    lut = np.cumsum(hist, axis=1) * (65535.0 / area)  # (tiles, 256) in 16-bit units

    k0 = np.floor(v8).astype(np.intp)
    k1 = np.minimum(k0 + 1, 255)
    frac = v8 - k0

    def tile_axis(n: int, size: int, tiles: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.arange(n) / size - 0.5
        t1 = np.floor(pos).astype(np.intp)
        return np.maximum(t1, 0), np.minimum(t1 + 1, tiles - 1), pos - t1

    ty1, ty2, ya = tile_axis(h, th, tiles_y)
    tx1, tx2, xa = tile_axis(w, tw, tiles_x)
    ya = ya[:, None]

    def mapped(ty: np.ndarray, tx: np.ndarray) -> np.ndarray:
        t = ty[:, None] * tiles_x + tx[None, :]
        return lut[t, k0] * (1.0 - frac) + lut[t, k1] * frac

    top = mapped(ty1, tx1) * (1.0 - xa) + mapped(ty1, tx2) * xa
    bottom = mapped(ty2, tx1) * (1.0 - xa) + mapped(ty2, tx2) * xa
    return _to_dtype(top * (1.0 - ya) + bottom * ya, a)


def _median_filter_array(a: np.ndarray, scale: float, kernel_size: int) -> np.ndarray:
    if a.dtype == np.uint8 or kernel_size <= 5:
        return cv2.medianBlur(a, kernel_size)
    # OpenCV's medianBlur supports uint16 only for ksize 3 and 5; scipy's "nearest" mode is the same replicated border.
    from scipy import ndimage

    return ndimage.median_filter(a, size=kernel_size, mode="nearest")


def _edge_enhance_array(a: np.ndarray, scale: float, amount: float, radius: float) -> np.ndarray:
    f = a.astype(np.float32)
    blurred = cv2.GaussianBlur(f, (0, 0), sigmaX=radius, sigmaY=radius)
    return _to_dtype(cv2.addWeighted(f, 1.0 + amount, blurred, -amount, 0.0), a)


def _histogram_equalization_array(a: np.ndarray, scale: float) -> np.ndarray:
    if a.dtype == np.uint8:
        return cv2.equalizeHist(a)
    # cv2.equalizeHist is 8-bit only: the same LUT (cv2's formula) over 65536 levels.
    hist = np.bincount(a.ravel(), minlength=65536)
    cdf = np.cumsum(hist)
    cdf_min = int(hist[np.flatnonzero(hist)[0]])
    if cdf_min == a.size:
        return a.copy()
    return _lut(a, np.rint((cdf - cdf_min) * (65535.0 / (a.size - cdf_min))))


def _s_curve_array(a: np.ndarray, scale: float, strength: float, midpoint: float) -> np.ndarray:
    if strength < 1e-6:
        return a.copy()
    x = np.linspace(0.0, 1.0, _max(a) + 1)

    def logistic(v: np.ndarray | float) -> np.ndarray | float:
        return 1.0 / (1.0 + np.exp(-strength * (v - midpoint)))

    y = (logistic(x) - logistic(0.0)) / (logistic(1.0) - logistic(0.0))
    return _lut(a, np.rint(y * _max(a)))


def _vignette_mask(shape: tuple[int, int], amount: float) -> np.ndarray:
    h, w = shape
    ys = (np.arange(h) - (h - 1) / 2.0) / max((h - 1) / 2.0, 1.0)
    xs = (np.arange(w) - (w - 1) / 2.0) / max((w - 1) / 2.0, 1.0)
    r = np.sqrt(ys[:, None] ** 2 + xs[None, :] ** 2) / math.sqrt(2.0)  # 0 at the centre, 1 in the corners
    t = np.clip((r - _VIGNETTE_START) / (1.0 - _VIGNETTE_START), 0.0, 1.0)
    return 1.0 - amount * t * t * (3.0 - 2.0 * t)  # smoothstep falloff: exactly 1 in the central disc


def _vignette_array(a: np.ndarray, scale: float, amount: float) -> np.ndarray:
    return _to_dtype(a * _vignette_mask(a.shape, amount), a)


@dataclass(frozen=True)
class _Op:
    check: Callable[..., dict[str, Any]]
    apply: Callable[..., np.ndarray]


_OPS: dict[str, _Op] = {
    "window": _Op(_check_window, _window_array),
    "clahe": _Op(_check_clahe, _clahe_array),
    "median_filter": _Op(_check_median_filter, _median_filter_array),
    "edge_enhance": _Op(_check_edge_enhance, _edge_enhance_array),
    "histogram_equalization": _Op(_check_histogram_equalization, _histogram_equalization_array),
    "s_curve": _Op(_check_s_curve, _s_curve_array),
    "vignette": _Op(_check_vignette, _vignette_array),
}

#: Names of the operations an `EnhancementPipeline` step may use.
STEPS: tuple[str, ...] = tuple(_OPS)


def _unknown(kind: str, name: Any, valid: Iterable[str]) -> CXRInputError:
    valid = sorted(valid)
    close = difflib.get_close_matches(str(name), valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return CXRInputError(f"Unknown enhancement {kind} {name!r}{hint}; valid {kind}s: {', '.join(valid)}.")


def _check_step(name: Any, params: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(name, str) or name not in _OPS:
        raise _unknown("step", name, _OPS)
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise CXRInputError(
            f"Enhancement step '{name}' needs its parameters as a dict such as {{'amount': 0.5}}, "
            f"got {type(params).__name__}."
        )
    check = _OPS[name].check
    sig = inspect.signature(check)
    unknown = [k for k in params if k not in sig.parameters]
    if unknown:
        raise CXRInputError(
            f"Unknown parameter(s) {', '.join(map(repr, unknown))} for enhancement step '{name}'; valid parameters: "
            f"{', '.join(sig.parameters) or 'none'}."
        )
    missing = [k for k, p in sig.parameters.items() if p.default is inspect.Parameter.empty and k not in params]
    if missing:
        raise CXRInputError(f"Enhancement step '{name}' needs parameter(s) {', '.join(missing)}.")
    return name, check(**params)


def _run(name: str, image: ImageLike, **params: Any) -> ImageLike:
    name, params = _check_step(name, params)
    gray = _prepare(image, name)
    return gray.restore(_OPS[name].apply(gray.array, gray.scale, **params))


# --------------------------------------------------------------------------------------------------------------------
# Public operations
# --------------------------------------------------------------------------------------------------------------------


def window(image: ImageLike, center: float, width: float) -> ImageLike:
    """Window/level: map [center - width/2, center + width/2] linearly onto the full range; values below clip to 0
    and values above to the maximum. `center` and `width` are in the image's own units (0..255 for uint8, 0..65535
    for uint16, 0..1 for float images)."""
    return _run("window", image, center=center, width=width)


def clahe(image: ImageLike, clip_limit: float = 2.0, tile_grid_size: tuple[int, int] = (8, 8)) -> ImageLike:
    """Contrast-limited adaptive histogram equalisation. `clip_limit` and `tile_grid_size` (columns, rows) mean what
    they mean in `cv2.createCLAHE`, which does uint8; uint16 uses the same algorithm with 256 histogram bins at full
    16-bit precision, so both bit depths give the same result (OpenCV's own 16-bit CLAHE ignores the clip limit in
    practice, see `_clahe_uint16`)."""
    return _run("clahe", image, clip_limit=clip_limit, tile_grid_size=tile_grid_size)


def median_filter(image: ImageLike, kernel_size: int = 3) -> ImageLike:
    """Median filter with an odd square kernel (3..255) and replicated borders; removes salt-and-pepper noise.
    `cv2.medianBlur` for uint8 and for uint16 with kernel 3 or 5, `scipy.ndimage.median_filter` for larger uint16."""
    return _run("median_filter", image, kernel_size=kernel_size)


def edge_enhance(image: ImageLike, amount: float = 1.0, radius: float = 1.0) -> ImageLike:
    """Unsharp mask: ``image + amount * (image - gaussian_blur(image, sigma=radius))``, clipped to the range.
    `amount` >= 0 (0 is a no-op), `radius` is the Gaussian sigma in pixels (> 0)."""
    return _run("edge_enhance", image, amount=amount, radius=radius)


def histogram_equalization(image: ImageLike) -> ImageLike:
    """Global histogram equalisation (`cv2.equalizeHist` for uint8, the same LUT over 65536 levels for uint16)."""
    return _run("histogram_equalization", image)


def s_curve(image: ImageLike, strength: float = 5.0, midpoint: float = 0.5) -> ImageLike:
    """Film-like sigmoid tone curve, normalised so black stays black and white stays white. `strength` (0..50) is
    the logistic gain (0 is a no-op, about 5 is mild); `midpoint` (0..1, relative to the range) is its centre."""
    return _run("s_curve", image, strength=strength, midpoint=midpoint)


def vignette(image: ImageLike, amount: float = 0.3) -> ImageLike:
    """Darken towards the corners with a smooth (smoothstep) radial falloff; the central disc (half the
    half-diagonal) is left unchanged and the corners are scaled by ``1 - amount`` (0 <= amount <= 1)."""
    return _run("vignette", image, amount=amount)


# --------------------------------------------------------------------------------------------------------------------
# Pipeline and presets
# --------------------------------------------------------------------------------------------------------------------

#: Preset name -> ordered list of (step, parameters). Parameters are relative to the dtype's range, so every preset
#: works on uint8, uint16 and float images alike.
PRESETS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    # Moderate local contrast and a light unsharp mask: a safe default for generated images.
    "balanced": [
        ("clahe", {"clip_limit": 2.0, "tile_grid_size": (8, 8)}),
        ("edge_enhance", {"amount": 0.5, "radius": 1.0}),
    ],
    # Strong local contrast, then a tone curve that deepens blacks and brightens bone.
    "high_contrast": [
        ("clahe", {"clip_limit": 4.0, "tile_grid_size": (8, 8)}),
        ("s_curve", {"strength": 6.0, "midpoint": 0.5}),
    ],
    # Denoise first so that sharpening brings out structure (vessels, rib edges) rather than noise.
    "sharp_detail": [
        ("median_filter", {"kernel_size": 3}),
        ("clahe", {"clip_limit": 1.5, "tile_grid_size": (8, 8)}),
        ("edge_enhance", {"amount": 1.5, "radius": 1.5}),
    ],
    # Analogue film look: mild S-curve, soft wide-radius edge enhancement, slight vignette; no grain added.
    "radiographic_film": [
        ("s_curve", {"strength": 5.0, "midpoint": 0.5}),
        ("edge_enhance", {"amount": 0.3, "radius": 3.0}),
        ("vignette", {"amount": 0.15}),
    ],
}


def _json_value(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_json_value(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class EnhancementPipeline:
    """An ordered list of enhancement steps, applied to an image or a list of images.

    >>> pipe = EnhancementPipeline([("clahe", {"clip_limit": 2.0}), ("edge_enhance", {"amount": 0.5})])
    >>> enhanced = pipe(image)                                   # or pipe([image1, image2])
    >>> EnhancementPipeline.from_dict(pipe.to_dict()) == pipe     # JSON-serialisable, for provenance
    True

    Steps may be given as ``(name, params)`` pairs, bare names (default parameters), ``{"name": ..., "params": ...}``
    dicts, or as one ``{name: params}`` mapping. Parameters are validated (and completed with defaults) at
    construction, so a bad configuration fails before any image is touched. An empty pipeline is the identity.
    """

    def __init__(self, steps: Iterable[Any] | Mapping[str, Any] = (), name: str | None = None) -> None:
        if isinstance(steps, Mapping):
            steps = list(steps.items())
        elif isinstance(steps, (str, bytes)) or not isinstance(steps, Iterable):
            raise CXRInputError(
                "EnhancementPipeline needs a list of (step, params) pairs such as [('clahe', {'clip_limit': 2.0})], "
                f"got {type(steps).__name__}."
            )
        self._steps: list[tuple[str, dict[str, Any]]] = [self._parse_step(s) for s in steps]
        self.name = name

    @staticmethod
    def _parse_step(step: Any) -> tuple[str, dict[str, Any]]:
        if isinstance(step, str):
            return _check_step(step, {})
        if isinstance(step, Mapping) and "name" in step:
            return _check_step(step["name"], step.get("params", {}))
        if isinstance(step, (tuple, list)) and len(step) in (1, 2):
            return _check_step(step[0], step[1] if len(step) == 2 else {})
        raise CXRInputError(
            f"Cannot read enhancement step {step!r}; give a (name, params) pair such as ('clahe', {{'clip_limit': 2.0}})."
        )

    @property
    def steps(self) -> list[tuple[str, dict[str, Any]]]:
        """The normalised steps (copies): ``[(name, params), ...]``."""
        return copy.deepcopy(self._steps)

    def __len__(self) -> int:
        return len(self._steps)

    def __iter__(self):
        return iter(self.steps)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EnhancementPipeline):
            return NotImplemented
        return self._steps == other._steps

    def __repr__(self) -> str:
        name = f", name={self.name!r}" if self.name else ""
        return f"{type(self).__name__}({self._steps!r}{name})"

    def __call__(self, images: ImageLike | list[ImageLike] | tuple[ImageLike, ...]) -> ImageLike | list[ImageLike]:
        """Apply every step in order. A list or tuple of images gives a list of results."""
        if isinstance(images, (list, tuple)):
            return [self._apply_one(image) for image in images]
        return self._apply_one(images)

    def _apply_one(self, image: ImageLike) -> ImageLike:
        if not self._steps:
            if isinstance(image, (Image.Image, np.ndarray)):
                return image.copy()
            raise CXRInputError(
                f"EnhancementPipeline: expected a PIL image or a numpy array, got {type(image).__name__}."
            )
        gray = _prepare(image, f"enhance ({self.name})" if self.name else "enhance")
        a = gray.array
        for name, params in self._steps:
            a = _OPS[name].apply(a, gray.scale, **params)
        result = gray.restore(a)
        if isinstance(image, Image.Image) and isinstance(result, Image.Image):
            derive_provenance(result, image, "enhance", enhancement=self.to_dict())
        return result

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description: ``{"name": ..., "steps": [{"name": ..., "params": {...}}, ...]}``."""
        return {
            "name": self.name,
            "steps": [{"name": n, "params": {k: _json_value(v) for k, v in p.items()}} for n, p in self._steps],
        }

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> EnhancementPipeline:
        """Inverse of `to_dict`; also accepts a plain ordered ``{step: params}`` mapping."""
        if not isinstance(config, Mapping):
            raise CXRInputError(f"Enhancement configuration must be a dict, got {type(config).__name__}.")
        if "steps" in config:
            return cls(config["steps"] or (), name=config.get("name"))
        return cls(config)

    @classmethod
    def from_preset(cls, name: str) -> EnhancementPipeline:
        """The pipeline of a preset in `PRESETS` (see `get_preset`)."""
        return get_preset(name)


def get_preset(name: str) -> EnhancementPipeline:
    """A fresh `EnhancementPipeline` for preset `name` (case-insensitive, '-' or ' ' may replace '_')."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_") if isinstance(name, str) else name
    if key not in PRESETS:
        raise _unknown("preset", name, PRESETS)
    return EnhancementPipeline(copy.deepcopy(PRESETS[key]), name=key)


def resolve_enhancement(enhancement: Any) -> EnhancementPipeline | None:
    """The one reading of an enhancement specification (used by `enhance`, `CXRPipeline` and the CLI).

    None, "" or "none" give None (no enhancement); otherwise a preset name, an `EnhancementPipeline`, a
    ``{step: params}`` dict or a `to_dict()` dict, or a list of ``(step, params)`` pairs give an `EnhancementPipeline`.
    """
    if enhancement is None or (isinstance(enhancement, str) and enhancement.strip().lower() in ("", "none")):
        return None
    if isinstance(enhancement, EnhancementPipeline):
        return enhancement
    if isinstance(enhancement, str):
        return get_preset(enhancement)
    if isinstance(enhancement, Mapping):
        return EnhancementPipeline.from_dict(enhancement)
    if isinstance(enhancement, (list, tuple)):
        return EnhancementPipeline(enhancement)
    raise CXRInputError(
        "enhancement must be None, a preset name "
        f"({', '.join(PRESETS)}), a dict of step parameters or an EnhancementPipeline, "
        f"got {type(enhancement).__name__}."
    )


def enhance(image: ImageLike | list[ImageLike], enhancement: Any = None) -> ImageLike | list[ImageLike]:
    """Apply `enhancement` (any specification `resolve_enhancement` reads) to an image or a list of images, returning
    the same kind; no enhancement returns the input as is."""
    pipeline = resolve_enhancement(enhancement)
    return image if pipeline is None else pipeline(image)
