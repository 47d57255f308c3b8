"""Enhancement comparison tab: one X-ray raw and with every preset side by side, a custom preset built with sliders
for every operation, and the per-image quality metrics of each version.

A synthetic input (one sent from the Generate tab, or an uploaded tagged PNG) keeps its provenance record through
`ui.open_xray`; every version offered for download carries a record derived from it (operation "enhance", and
"resize" when a large image is compared smaller), written into the PNG by `ui.save_png`. Real inputs stay untagged.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr
import pandas as pd
from PIL import Image
from state import AppState
from ui import CheckedSlider, XrayImage, fmt, require_image, save_png, xray_image

from cxr_diffusers.provenance import derive_provenance

#: Images larger than this (longer side) are compared at this size, so that 6 versions stay quick on a CPU.
COMPARE_SIDE = 1024
METRIC_COLUMNS = ["contrast_ratio", "rms_contrast", "local_contrast", "entropy", "sharpness", "psnr", "ssim"]
HEADERS = ["contrast ratio", "RMS contrast", "local contrast", "entropy", "sharpness", "PSNR vs raw (dB)",
           "SSIM vs raw"]

# The custom preset's operations, in the order they are applied, with their sliders:
# (step, enabled by default, [(parameter, label, minimum, maximum, step, default), ...])
CUSTOM_STEPS = [
    ("window", False, [("center", "center", 0, 255, 1, 128), ("width", "width", 1, 255, 1, 200)]),
    ("median_filter", False, [("kernel_size", "kernel size", 3, 15, 2, 3)]),
    ("clahe", True, [("clip_limit", "clip limit", 0.5, 10.0, 0.1, 2.0), ("tile_grid_size", "tiles", 2, 16, 1, 8)]),
    ("histogram_equalization", False, []),
    ("edge_enhance", True, [("amount", "amount", 0.0, 3.0, 0.05, 0.5), ("radius", "radius (px)", 0.5, 5.0, 0.1, 1.0)]),
    ("s_curve", False, [("strength", "strength", 0.0, 15.0, 0.5, 5.0),
                        ("midpoint", "midpoint", 0.05, 0.95, 0.01, 0.5)]),
    ("vignette", False, [("amount", "amount", 0.0, 1.0, 0.01, 0.15)]),
]
STEP_TITLES = {
    "window": "Window / level",
    "median_filter": "Median filter",
    "clahe": "CLAHE",
    "histogram_equalization": "Histogram equalisation",
    "edge_enhance": "Edge enhancement (unsharp mask)",
    "s_curve": "S-curve (film tone)",
    "vignette": "Vignette",
}


@dataclass
class EnhanceTab:
    image: XrayImage
    compare: gr.Button


def custom_pipeline(values: list):
    """The `EnhancementPipeline` described by the custom controls' values (flat, in `CUSTOM_STEPS` order)."""
    from cxr_diffusers import CXRInputError
    from cxr_diffusers.enhancement import EnhancementPipeline

    steps, i = [], 0
    for name, _, params in CUSTOM_STEPS:
        enabled = values[i]
        i += 1
        kwargs = {}
        for key, *_ in params:
            kwargs[key] = values[i]
            i += 1
        if enabled:
            if name == "clahe":
                kwargs["tile_grid_size"] = (int(kwargs["tile_grid_size"]), int(kwargs["tile_grid_size"]))
            if name == "median_filter":
                kwargs["kernel_size"] = int(kwargs["kernel_size"])
            steps.append((name, kwargs))
    try:
        return EnhancementPipeline(steps, name="custom")
    except CXRInputError as err:
        raise gr.Error(str(err)) from None


def _prepare(image: Image.Image | None) -> Image.Image:
    image = require_image(image)
    if max(image.size) > COMPARE_SIDE:
        gr.Info(f"The {image.size[0]}x{image.size[1]} image is compared at {COMPARE_SIDE} pixels on its longer side.")
        source = image
        image = image.copy()
        image.thumbnail((COMPARE_SIDE, COMPARE_SIDE), Image.Resampling.LANCZOS)
        derive_provenance(image, source, "resize", size=list(image.size), resample="lanczos")
    return image


def metrics_rows(versions: list[tuple[str, Image.Image]], raw: Image.Image) -> pd.DataFrame:
    from cxr_diffusers.evaluation.image_quality import quality_metrics

    rows = []
    for name, image in versions:
        values = quality_metrics(image, reference=raw)
        row = {"version": name, **{k: fmt(values.get(k)) for k in METRIC_COLUMNS}}
        if name == "raw":
            row["psnr"], row["ssim"] = None, None  # against itself
        rows.append(row)
    frame = pd.DataFrame(rows, columns=["version", *METRIC_COLUMNS])
    return frame.rename(columns=dict(zip(METRIC_COLUMNS, HEADERS)))


def make_fns(state: AppState):
    def compare(image, *custom):
        """The X-ray raw, with every preset and with the custom preset, the quality metrics of each version, and the
        custom preset's image, metrics and JSON."""
        from cxr_diffusers import CXRInputError
        from cxr_diffusers.enhancement import PRESETS, get_preset

        raw = _prepare(image)
        pipeline = custom_pipeline(list(custom))
        try:
            versions = [("raw", raw)] + [(name, get_preset(name)(raw)) for name in PRESETS]
            versions.append(("custom", pipeline(raw)))
        except CXRInputError as err:
            raise gr.Error(str(err)) from None
        folder = state.new_output_dir()
        gallery = [(save_png(img, folder, f"{i}_{name}"), name) for i, (name, img) in enumerate(versions)]
        table = metrics_rows(versions, raw)
        custom_table = table.iloc[[0, len(table) - 1]].reset_index(drop=True)
        return gallery, table, gallery[-1][0], custom_table, pipeline.to_dict()

    def custom(image, *values):
        """The X-ray with the custom preset only, its metrics and the preset as JSON."""
        from cxr_diffusers import CXRInputError

        raw = _prepare(image)
        pipeline = custom_pipeline(list(values))
        try:
            enhanced = pipeline(raw)
        except CXRInputError as err:
            raise gr.Error(str(err)) from None
        path = save_png(enhanced, state.new_output_dir(), "custom")
        return path, metrics_rows([("raw", raw), ("custom", enhanced)], raw), pipeline.to_dict()

    return compare, custom


def build(state: AppState) -> EnhanceTab:
    controls: list = []
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=320):
            image = xray_image(label="X-ray (upload, paste, or send one from Generate)",
                               sources=["upload", "clipboard"],
                               height=360, elem_id="enhance-input")
            compare = gr.Button("Compare all presets", variant="primary", elem_id="compare-button")
            gr.Markdown("Shows the image raw, with each preset (`balanced`, `high_contrast`, `sharp_detail`, "
                        "`radiographic_film`) and with the custom preset below, and the metrics of every version. "
                        f"Images above {COMPARE_SIDE} px are compared at {COMPARE_SIDE} px.")
        with gr.Column(scale=3, min_width=360):
            gallery = gr.Gallery(label="Raw, the 4 presets and the custom preset", format="png", columns=3,
                                 height=520, object_fit="contain", preview=False, elem_id="enhance-gallery",
                                 buttons=["download", "fullscreen"])
    table = gr.Dataframe(headers=["version", *HEADERS], label="Per-image metrics (PSNR and SSIM against the raw image)",
                         interactive=False, elem_id="enhance-metrics")
    gr.Markdown("### Custom preset\nTick the operations to apply (in this order) and set their parameters; the "
                "result updates when a slider is released.")
    with gr.Row(equal_height=False):
        with gr.Column(scale=3, min_width=420):
            for name, enabled, params in CUSTOM_STEPS:
                with gr.Group():
                    with gr.Row(equal_height=True):
                        controls.append(gr.Checkbox(enabled, label=STEP_TITLES[name], min_width=150, scale=1))
                        for key, label, low, high, step, default in params:
                            controls.append(CheckedSlider(low, high, value=default, step=step,
                                                          label=f"{STEP_TITLES[name].split(' (')[0]} {label}",
                                                          min_width=120, scale=1))
            apply = gr.Button("Apply custom preset")
        with gr.Column(scale=2, min_width=320):
            custom_image = gr.Image(label="Custom preset", format="png", image_mode="L", type="filepath", height=360,
                                    interactive=False, elem_id="enhance-custom")
            custom_table = gr.Dataframe(headers=["version", *HEADERS], label="Custom preset metrics",
                                        interactive=False)
            with gr.Accordion("Custom preset as JSON", open=False):
                custom_json = gr.JSON(label="EnhancementPipeline.to_dict()")
    compare_fn, custom_fn = make_fns(state)
    compare.click(compare_fn, [image, *controls], [gallery, table, custom_image, custom_table, custom_json],
                  api_name="enhance_compare",
                  concurrency_id="cpu_light")
    apply.click(custom_fn, [image, *controls], [custom_image, custom_table, custom_json], api_name="enhance_custom",
                concurrency_id="cpu_light")

    def custom_live(image, *values):  # slider moves update the custom preset once an image is there
        if image is None:
            return gr.skip(), gr.skip(), gr.skip()
        return custom_fn(image, *values)

    gr.on([c.release if isinstance(c, gr.Slider) else c.input for c in controls], custom_live,
          [image, *controls], [custom_image, custom_table, custom_json], api_visibility="private",
          concurrency_id="cpu_light", trigger_mode="always_last", show_progress="minimal")
    return EnhanceTab(image, compare)
