"""Enhancement operations, presets and pipeline, measured on the real X-rays in tests/fixtures."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
from PIL import Image

from cxr_diffusers import enhancement as E
from cxr_diffusers.errors import CXRInputError
from cxr_diffusers.evaluation import (
    contrast_ratio,
    entropy,
    local_contrast,
    psnr,
    quality_metrics,
    rms_contrast,
    sharpness,
    ssim,
)

FIXTURE_GLOBS = ("kermany/*/*.jpeg", "nih/*.png", "nih1000_64/NIH1000/*/*/*.png")


def _load_l(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im.convert("L"))


@pytest.fixture(scope="module")
def xrays(fixtures_dir) -> dict[str, np.ndarray]:
    """All fixture X-rays as 2-D uint8 arrays, keyed by file name."""
    paths = sorted(p for g in FIXTURE_GLOBS for p in fixtures_dir.glob(g))
    assert len(paths) == 9
    return {p.name: _load_l(p) for p in paths}


@pytest.fixture(scope="module")
def xray(fixtures_dir) -> np.ndarray:
    """One adult NIH radiograph, 300x300 uint8."""
    return _load_l(fixtures_dir / "nih" / "No_1000_1980.png")


# ---------------------------------------------------------------------------------------------------- fixtures


def test_fixture_manifest_matches_files(fixtures_dir):
    with open(fixtures_dir / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    images = {str(p.relative_to(fixtures_dir)) for g in FIXTURE_GLOBS for p in fixtures_dir.glob(g)}
    assert {r["file"] for r in rows} == images and len(rows) == 9
    sizes = {"kermany_pneumonia_224": (224, 224), "nih_subset_300": (300, 300), "nih1000_64": (64, 64)}
    for row in rows:
        path = fixtures_dir / row["file"]
        assert path.name == row["original_name"].split("/")[-1]
        assert "covid" not in row["original_name"].lower()  # non-commercial images must not ship
        with Image.open(path) as im:
            assert im.size == sizes[row["source"]]
    total = sum(p.stat().st_size for p in fixtures_dir.rglob("*") if p.is_file())
    assert total < 400_000
    attribution = (fixtures_dir / "ATTRIBUTION.md").read_text()
    for needle in ("CC BY 4.0", "10.17632/rscbjbr9sj.2", "Wang", "CVPR", "NIH Clinical Center"):
        assert needle in attribution


# ---------------------------------------------------------------------------------------------------- operations


def test_clahe_raises_local_contrast_on_every_xray(xrays):
    for name, a in xrays.items():
        before, after = local_contrast(a), local_contrast(E.clahe(a))
        assert after > 1.2 * before, name
    # a stronger clip limit gives more local contrast
    a = next(iter(xrays.values()))
    assert local_contrast(E.clahe(a, clip_limit=4.0)) > local_contrast(E.clahe(a, clip_limit=1.0))


def test_clahe_16_bit_matches_opencv_8_bit(xrays):
    """uint16 CLAHE keeps OpenCV's clip-limit meaning (OpenCV's own 16-bit CLAHE clips every bin to one count)."""
    for name, a in list(xrays.items())[::3]:
        for clip, tiles in ((2.0, (8, 8)), (4.0, (7, 5))):
            out16 = E.clahe(a.astype(np.uint16) * 257, clip_limit=clip, tile_grid_size=tiles)
            diff = np.abs(out16 / 257.0 - E.clahe(a, clip_limit=clip, tile_grid_size=tiles))
            assert diff.max() <= 1.0 and diff.mean() < 0.5, name
    # and it uses the full 16-bit precision: a smooth 16-bit ramp stays smooth and strictly ordered
    ramp = np.tile(np.linspace(10000, 20000, 256).astype(np.uint16), (64, 1))
    out = E.clahe(ramp, tile_grid_size=(1, 1))
    assert (np.diff(out[0].astype(int)) > 0).all()


def test_vignette_darkens_corners_and_keeps_centre(xrays):
    checked = 0
    for name, a in xrays.items():
        out = E.vignette(a, amount=0.3)
        h, w = a.shape
        ch, cw = h // 4, w // 4
        centre = (slice(h // 2 - ch, h // 2 + ch), slice(w // 2 - cw, w // 2 + cw))  # central half of each axis
        assert np.abs(out[centre].astype(int) - a[centre]).max() <= 1, name
        k = max(3, h // 16)
        corners = np.concatenate([c.ravel() for c in (a[:k, :k], a[:k, -k:], a[-k:, :k], a[-k:, -k:])])
        corners_out = np.concatenate([c.ravel() for c in (out[:k, :k], out[:k, -k:], out[-k:, :k], out[-k:, -k:])])
        lit = corners >= 20  # some fixtures have black corners, where there is nothing to darken
        assert (corners_out[lit] <= 0.76 * corners[lit] + 0.5).all(), name
        checked += int(lit.sum() > 50)
        assert (out <= a).all()  # never brightens
    assert checked >= 5  # most fixtures have lit corners
    # exact profile on a flat image: corners scaled by 1 - amount, smooth monotone falloff, centre untouched
    flat = np.full((101, 101), 200, np.uint8)
    out = E.vignette(flat, amount=0.3)
    assert out[0, 0] == out[-1, -1] == 140 and out[50, 50] == 200
    diagonal = np.diagonal(out)[:51].astype(int)
    assert (np.diff(diagonal) >= 0).all() and np.abs(np.diff(diagonal)).max() <= 5
    assert E.vignette(flat, amount=0.6)[0, 0] < out[0, 0]
    np.testing.assert_array_equal(E.vignette(flat, amount=0.0), flat)


def _salt_and_pepper(a: np.ndarray, fraction: float = 0.06, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    noisy = a.copy()
    u = rng.random(a.shape)
    noisy[u < fraction / 2] = 0
    noisy[u > 1 - fraction / 2] = np.iinfo(a.dtype).max
    return noisy


def test_median_filter_removes_salt_and_pepper(xrays):
    for name, a in xrays.items():
        noisy = _salt_and_pepper(a)
        assert psnr(a, E.median_filter(noisy, 3)) > psnr(a, noisy) + 10, name
    # uint16: kernel 3/5 use OpenCV, larger kernels fall back to scipy; all must denoise
    a16 = next(iter(xrays.values())).astype(np.uint16) * 257
    noisy16 = _salt_and_pepper(a16)
    for k in (3, 5, 7):
        out = E.median_filter(noisy16, k)
        assert out.dtype == np.uint16
        assert psnr(a16, out) > psnr(a16, noisy16) + 8, k
    # the uint16 fallback agrees with OpenCV's uint8 median
    a8 = next(iter(xrays.values()))
    np.testing.assert_array_equal(E.median_filter(a8.astype(np.uint16), 7), E.median_filter(a8, 7))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_window_clips_outside_and_is_linear_inside(xray, dtype):
    top = np.iinfo(dtype).max
    a = xray.astype(dtype) * (257 if dtype == np.uint16 else 1)
    center, width = 0.5 * top, 0.4 * top
    lo, hi = center - width / 2, center + width / 2
    out = E.window(a, center, width)
    assert out.dtype == dtype
    assert (out[a <= lo] == 0).all() and (a <= lo).any()
    assert (out[a >= hi] == top).all() and (a >= hi).any()
    inside = (a > lo) & (a < hi)
    expected = (a[inside].astype(float) - lo) * top / width
    assert np.abs(out[inside] - expected).max() <= 0.5 + 1e-9
    assert rms_contrast(out) > rms_contrast(a)


def test_window_on_float_image_uses_unit_range(xray):
    f = xray.astype(np.float32) / 255
    out = E.window(f, center=0.5, width=0.2)
    assert out.dtype == np.float32
    assert (out[f <= 0.4] == 0).all() and (out[f >= 0.6] == 1).all()


def test_edge_enhance_raises_sharpness(xrays):
    for name, a in xrays.items():
        assert sharpness(E.edge_enhance(a, amount=1.0)) > 1.5 * sharpness(a), name
    a = next(iter(xrays.values()))
    assert sharpness(E.edge_enhance(a, amount=2.0)) > sharpness(E.edge_enhance(a, amount=0.5))
    np.testing.assert_array_equal(E.edge_enhance(a, amount=0.0), a)


def _cdf_distance_to_uniform(a: np.ndarray) -> float:
    cdf = np.cumsum(np.bincount(a.ravel(), minlength=256)) / a.size
    return float(np.abs(cdf - np.arange(1, 257) / 256).max())


def test_histogram_equalization_flattens_histogram(xrays):
    distances = []
    for name, a in xrays.items():
        out = E.histogram_equalization(a)
        before, after = _cdf_distance_to_uniform(a), _cdf_distance_to_uniform(out)
        assert after < before, name
        assert entropy(out, bins=32) > entropy(a, bins=32), name
        distances.append((before, after))
    # on average the CDF gets far closer to a straight line
    assert np.mean([d[1] for d in distances]) < 0.4 * np.mean([d[0] for d in distances])
    # the 16-bit implementation matches OpenCV's 8-bit one
    a = next(iter(xrays.values()))
    out16 = E.histogram_equalization(a.astype(np.uint16) * 257)
    assert np.abs(out16 / 257.0 - E.histogram_equalization(a)).max() <= 1.0


def test_s_curve_keeps_endpoints_and_raises_contrast(xray):
    out = E.s_curve(xray, strength=6.0)
    ramp = E.s_curve(np.arange(256, dtype=np.uint8)[None, :], strength=6.0)[0]
    assert ramp[0] == 0 and ramp[-1] == 255 and (np.diff(ramp.astype(int)) >= 0).all()
    assert rms_contrast(out) > rms_contrast(xray)
    np.testing.assert_array_equal(E.s_curve(xray, strength=0.0), xray)


# ---------------------------------------------------------------------------------------------------- types

OPS = [
    ("window", lambda im, top: E.window(im, 0.5 * top, 0.6 * top)),
    ("clahe", lambda im, top: E.clahe(im)),
    ("median_filter", lambda im, top: E.median_filter(im, 5)),
    ("edge_enhance", lambda im, top: E.edge_enhance(im)),
    ("histogram_equalization", lambda im, top: E.histogram_equalization(im)),
    ("s_curve", lambda im, top: E.s_curve(im)),
    ("vignette", lambda im, top: E.vignette(im)),
]


@pytest.mark.parametrize("name,op", OPS, ids=[n for n, _ in OPS])
def test_dtype_mode_and_shape_preserved(xray, name, op):
    a16 = xray.astype(np.uint16) * 257
    cases = [
        (xray, 255),
        (a16, 65535),
        (xray[:, :, None], 255),
        (xray.astype(np.float32) / 255, 1.0),
        (xray.astype(np.float64) / 255, 1.0),
    ]
    for image, top in cases:
        out = op(image, top)
        assert isinstance(out, np.ndarray) and out.dtype == image.dtype and out.shape == image.shape, (
            name,
            image.dtype,
        )
        assert not np.shares_memory(out, image)
    for image, top in [(Image.fromarray(xray), 255), (Image.fromarray(a16), 65535)]:
        out = op(image, top)
        assert isinstance(out, Image.Image) and out.mode == image.mode and out.size == image.size, (name, image.mode)
    pil_i = Image.fromarray(a16.astype(np.int32))  # mode I, as some 16-bit PNGs open
    assert op(pil_i, 65535).mode == "I"
    # 8-bit and 16-bit copies of the same image give the same result to within 8-bit rounding (median: exact)
    out8 = op(xray, 255).astype(float)
    out16 = op(a16, 65535).astype(float) / 257
    assert np.abs(out16 - out8).mean() < 1.5, name


def test_colour_input_converted_with_warning(fixtures_dir):
    with Image.open(fixtures_dir / "kermany" / "NORMAL" / "IM-0001-0001.jpeg") as im:
        rgb = im.copy()
    assert rgb.mode == "RGB"  # as stored upstream
    with pytest.warns(E.GrayscaleConversionWarning, match="grayscale"):
        out = E.clahe(rgb)
    assert out.mode == "L" and out.size == rgb.size
    np.testing.assert_array_equal(np.array(out), np.array(E.clahe(rgb.convert("L"))))
    arr = np.array(rgb)
    with pytest.warns(E.GrayscaleConversionWarning):
        out = E.edge_enhance(arr)
    assert out.shape == arr.shape[:2] and out.dtype == np.uint8
    with pytest.warns(E.GrayscaleConversionWarning):
        assert E.vignette(np.dstack([arr, np.full(arr.shape[:2], 255, np.uint8)])).shape == arr.shape[:2]
    with pytest.warns(E.GrayscaleConversionWarning):
        assert E.window(rgb.convert("RGBA"), 128, 100).mode == "L"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # grayscale input: no warning
        E.clahe(rgb.convert("L"))


@pytest.mark.parametrize(
    "image,needles",
    [
        (np.zeros((3, 32, 32), np.uint8), ["shape (3, 32, 32)", "moveaxis"]),
        (np.zeros(32, np.uint8), ["shape (32,)"]),
        (np.zeros((32, 32, 2), np.uint8), ["(H, W)"]),
        (np.zeros((0, 32), np.uint8), ["empty"]),
        (np.zeros((32, 32), np.int64), ["int64", "uint8 or uint16"]),
        (np.zeros((32, 32), bool), ["bool"]),
        (np.full((32, 32), 2.0), ["[0, 1]", "max 2"]),
        (np.full((32, 32), np.nan), ["NaN"]),
        ([[0, 1], [1, 0]], ["PIL image or a numpy array", "list"]),
    ],
)
def test_bad_images_raise_clear_errors(image, needles):
    with pytest.raises(CXRInputError) as info:
        E.clahe(image)
    message = str(info.value)
    for needle in needles:
        assert needle in message
    assert message.startswith("clahe:") or "PIL" in message


@pytest.mark.parametrize(
    "call,needles",
    [
        (lambda a: E.median_filter(a, 4), ["kernel_size", "odd", "4"]),
        (lambda a: E.median_filter(a, 1), ["kernel_size", "between 3 and 255"]),
        (lambda a: E.median_filter(a, 3.0), ["kernel_size", "integer"]),
        (lambda a: E.window(a, 128, 0), ["width", "> 0", "got 0"]),
        (lambda a: E.window(a, 128, -5), ["width", "> 0"]),
        (lambda a: E.window(a, float("nan"), 10), ["center", "finite"]),
        (lambda a: E.edge_enhance(a, amount=-1), ["edge_enhance", "amount", ">= 0", "-1"]),
        (lambda a: E.edge_enhance(a, radius=0), ["radius", "> 0"]),
        (lambda a: E.vignette(a, amount=-0.1), ["vignette", "amount", ">= 0 and <= 1"]),
        (lambda a: E.vignette(a, amount=1.5), ["amount", "<= 1"]),
        (lambda a: E.clahe(a, clip_limit=0), ["clip_limit", "> 0"]),
        (lambda a: E.clahe(a, tile_grid_size=(8, 0)), ["tile_grid_size", "(8, 8)"]),
        (lambda a: E.clahe(a, clip_limit="2"), ["clip_limit", "number", "'2'"]),
        (lambda a: E.s_curve(a, midpoint=1.0), ["midpoint", "between 0 and 1"]),
        (lambda a: E.vignette(a, amount=True), ["amount", "True"]),
    ],
)
def test_bad_parameters_raise_clear_errors(xray, call, needles):
    with pytest.raises(CXRInputError) as info:
        call(xray)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    assert message.endswith(".") and "\n" not in message


# ---------------------------------------------------------------------------------------------------- presets / pipeline


def test_presets_exist_and_each_changes_the_image(xrays):
    assert set(E.PRESETS) == {"balanced", "high_contrast", "sharp_detail", "radiographic_film"}
    for preset in E.PRESETS:
        pipe = E.get_preset(preset)
        assert pipe.name == preset and len(pipe) >= 2
        for name, a in xrays.items():
            out = pipe(a)
            assert out.dtype == np.uint8 and out.shape == a.shape
            assert np.abs(out.astype(int) - a).mean() > 2.0, (preset, name)
            assert ssim(a, out) > 0.5, (preset, name)  # still the same radiograph
        a16 = next(iter(xrays.values())).astype(np.uint16) * 257
        assert pipe(a16).dtype == np.uint16
        assert pipe(Image.fromarray(a16)).mode == "I;16"


def test_presets_do_what_their_names_say(xray):
    base = quality_metrics(xray)
    high = quality_metrics(E.enhance(xray, "high_contrast"))
    sharp = quality_metrics(E.enhance(xray, "sharp_detail"))
    balanced = quality_metrics(E.enhance(xray, "balanced"))
    film = E.enhance(xray, "radiographic_film")
    assert high["rms_contrast"] > base["rms_contrast"] and high["local_contrast"] > balanced["local_contrast"]
    assert sharp["sharpness"] > base["sharpness"] and balanced["local_contrast"] > base["local_contrast"]
    assert film[:8, :8].mean() < xray[:8, :8].mean() or xray[:8, :8].max() == 0  # vignetted corner
    assert rms_contrast(film) > rms_contrast(xray)  # S-curve


def test_get_preset_typo_suggests_closest():
    with pytest.raises(CXRInputError) as info:
        E.get_preset("balnced")
    message = str(info.value)
    assert "did you mean 'balanced'" in message
    for name in E.PRESETS:
        assert name in message
    assert E.get_preset("High-Contrast") == E.get_preset("high_contrast")
    assert E.EnhancementPipeline.from_preset("sharp_detail") == E.get_preset("sharp_detail")
    E.get_preset("balanced").steps[0][1]["clip_limit"] = 99  # copies: presets cannot be mutated through a pipeline
    assert E.PRESETS["balanced"][0][1]["clip_limit"] == 2.0


def test_pipeline_round_trip_and_application(xray):
    pipe = E.EnhancementPipeline(
        [("median_filter", {"kernel_size": 3}), ("clahe", {"clip_limit": 2.0}), ("edge_enhance", {"amount": 0.5})],
        name="custom",
    )
    config = json.loads(json.dumps(pipe.to_dict()))  # JSON-serialisable, for provenance
    assert config["name"] == "custom"
    assert [s["name"] for s in config["steps"]] == ["median_filter", "clahe", "edge_enhance"]
    assert config["steps"][1]["params"] == {"clip_limit": 2.0, "tile_grid_size": [8, 8]}  # defaults filled in
    again = E.EnhancementPipeline.from_dict(config)
    assert again == pipe and again.name == "custom"
    np.testing.assert_array_equal(again(xray), pipe(xray))
    # the pipeline equals the chain of the single operations
    np.testing.assert_array_equal(pipe(xray), E.edge_enhance(E.clahe(E.median_filter(xray, 3), 2.0), 0.5))
    # lists in, list out; other accepted forms of steps
    outs = pipe([xray, Image.fromarray(xray)])
    assert isinstance(outs, list) and isinstance(outs[1], Image.Image)
    assert E.EnhancementPipeline({"clahe": {}, "vignette": {"amount": 0.3}}) == E.EnhancementPipeline(
        ["clahe", ("vignette", {"amount": 0.3})]
    )
    text = repr(pipe)
    assert text.startswith("EnhancementPipeline([") and "'clahe'" in text and "name='custom'" in text
    empty = E.EnhancementPipeline([])
    np.testing.assert_array_equal(empty(xray), xray)


@pytest.mark.parametrize(
    "steps,needles",
    [
        ([("clahee", {})], ["'clahee'", "did you mean 'clahe'", "clahe, edge_enhance", "window"]),
        ([("clahe", {"clip": 2})], ["'clip'", "clip_limit, tile_grid_size"]),
        (["window"], ["window", "center, width"]),
        ([("clahe", 2.0)], ["dict"]),
        ([("edge_enhance", {"amount": -2})], ["amount", ">= 0"]),
        ("clahe", ["list of (step, params)"]),
        ([42], ["Cannot read enhancement step 42"]),
    ],
)
def test_pipeline_validates_at_construction(steps, needles):
    with pytest.raises(CXRInputError) as info:
        E.EnhancementPipeline(steps)
    for needle in needles:
        assert needle in str(info.value), str(info.value)


def test_enhance_accepts_every_form(xray):
    assert E.enhance(xray, None) is xray
    assert E.enhance(xray, "none") is xray
    expected = E.get_preset("balanced")(xray)
    for spec in (
        "balanced",
        E.get_preset("balanced"),
        E.get_preset("balanced").to_dict(),
        {"clahe": {"clip_limit": 2.0}, "edge_enhance": {"amount": 0.5, "radius": 1.0}},
        [("clahe", {"clip_limit": 2.0}), ("edge_enhance", {"amount": 0.5})],
    ):
        np.testing.assert_array_equal(E.enhance(xray, spec), expected)
    assert len(E.enhance([xray, xray], "high_contrast")) == 2
    with pytest.raises(CXRInputError, match="preset name"):
        E.enhance(xray, 3)
    assert E.resolve_enhancement(None) is None and E.resolve_enhancement(" None ") is None
    assert E.resolve_enhancement("High-Contrast") == E.get_preset("high_contrast")
    with pytest.raises(CXRInputError, match="did you mean 'sharp_detail'"):
        E.enhance(xray, "sharp_details")


# ---------------------------------------------------------------------------------------------------- metrics


def test_metrics_basic_properties(xray):
    a16 = xray.astype(np.uint16) * 257
    assert psnr(xray, xray) == float("inf") and ssim(xray, xray) == pytest.approx(1.0)
    for metric in (contrast_ratio, rms_contrast, local_contrast, entropy, sharpness):
        assert metric(a16) == pytest.approx(metric(xray), rel=1e-6), metric.__name__  # scale-free
        assert metric(np.full((16, 16), 100, np.uint8)) == pytest.approx(0.0, abs=1e-12), metric.__name__
    assert 0.0 <= contrast_ratio(xray) <= 1.0
    assert 0.0 < entropy(xray) <= 8.0
    noisy = _salt_and_pepper(xray, 0.02)
    assert ssim(xray, noisy) < 0.9 and 10 < psnr(xray, noisy) < 30
    with pytest.raises(CXRInputError, match="same size"):
        psnr(xray, xray[:100])
    with pytest.raises(CXRInputError, match="window_size"):
        local_contrast(xray, window_size=1)
    assert set(quality_metrics(xray, reference=xray)) == {
        "contrast_ratio",
        "rms_contrast",
        "local_contrast",
        "entropy",
        "sharpness",
        "psnr",
        "ssim",
    }
