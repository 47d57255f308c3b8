"""Research dashboard tab: a real X-ray next to one generated from its prompt, SSIM / PSNR and intensity histograms,
and the nearest training image of a generated X-ray (memorisation check)."""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass

import gradio as gr
import numpy as np
import pandas as pd
from state import AppState
from tab_data import source_choices
from ui import (
    CheckedNumber,
    CheckedSlider,
    XrayImage,
    figure,
    fmt,
    require_image,
    save_png,
    xray_image,
)

NEAREST_SIZE = 64  # SSIM of the nearest-neighbour search is computed at 64x64, as in the memorisation audit
MAX_TRAIN_IMAGES = 2000


@dataclass
class ResearchTab:
    generated: XrayImage


def histogram_figure(real, generated):
    fig = figure(5.6, 3.0)
    ax = fig.add_subplot()
    bins = np.linspace(0, 255, 65)
    for image, name, color in ((real, "real", "#4f6d8f"), (generated, "generated", "#d08c3a")):
        if image is None:
            continue
        values = np.asarray(image.convert("L"), dtype=np.float64).ravel()
        ax.hist(values, bins=bins, density=True, alpha=0.55, label=name, color=color)
    ax.set_xlabel("intensity (8-bit)")
    ax.set_ylabel("density")
    ax.set_title("Intensity histograms", fontsize=11)
    ax.legend(frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def make_fns(state: AppState):
    cache: dict = {}
    cache_lock = threading.Lock()

    def real_row(source, split, index):
        ds = state.split(source, split)
        if len(ds) == 0:
            raise gr.Error(f"The {split} split is empty.")
        if index is None or int(index) < 0 or int(index) >= len(ds):
            raise gr.Error(f"Image index must be between 0 and {len(ds) - 1}, got {index!r}.")
        return ds[int(index)]

    def pick(source, split, index):
        """A real image of a dataset split, its prompt and its labels."""
        row = real_row(source, split, index)
        labels = ", ".join(row.get("labels") or []) or "no finding"
        info = (f"**{split} #{int(index)}**: {labels}; view {row.get('view') or 'unknown'}; "
                f"source {row.get('source', '')}.")
        return save_png(row["image"].convert("L"), state.new_output_dir(), "real"), row.get("prompt") or "", info

    def random_pick(source, split):
        """A random real image of a dataset split, its prompt and its labels."""
        ds = state.split(source, split)
        if len(ds) == 0:
            raise gr.Error(f"The {split} split is empty.")
        index = random.randrange(len(ds))
        return (index, *pick(source, split, index))

    def open_source(source):
        dsd = state.dataset(source)
        splits = list(dsd)
        split = "test" if "test" in splits else splits[0]
        return (gr.Dropdown(choices=splits, value=split), 0, *pick(source, split, 0))

    def compare(source, split, index, prompt, steps, seed, progress=gr.Progress()):
        """Generate an X-ray from the real image's prompt and compare the two: SSIM, PSNR, intensity histograms."""
        from cxr_diffusers.data.transforms import resize_and_pad
        from cxr_diffusers.evaluation.image_quality import psnr, quality_metrics, ssim

        if not isinstance(prompt, str) or not prompt.strip():
            raise gr.Error("The prompt is empty; pick a real image (its prompt fills in) or type one.")
        row = real_row(source, split, index)
        state.require_pipeline()
        size = state.default_size

        def on_step(step, total):
            progress((step, total), desc="Denoising", unit="steps")

        images, seconds = state.generate(prompt.strip(), negative_prompt=None, size=size, steps=int(steps),
                                         guidance=4.0, scheduler=state.default_scheduler, seeds=[int(seed)],
                                         on_step=on_step)
        generated = images[0]
        path = state.new_output_dir() / f"synthetic_cxr_seed{int(seed)}.png"
        generated.save(path)
        real = resize_and_pad(row["image"].convert("L"), size)
        q_real, q_generated = quality_metrics(real), quality_metrics(generated)
        table = pd.DataFrame([[k, fmt(q_real[k]), fmt(q_generated[k])] for k in q_real],
                             columns=["metric", "real", "generated"])
        pair = (f"**SSIM {ssim(real, generated):.3f}, PSNR {psnr(real, generated):.2f} dB** between the real image "
                f"(fitted to {size}x{size}) and the generated one ({seconds:.2f} s). A generated image should look "
                "like the class, not like this particular patient: low pixel similarity is expected.")
        return str(path), pair, table, histogram_figure(real, generated)

    def nearest(generated, source, limit):
        """The training image closest (SSIM at 64x64) to a generated X-ray, with its score and labels."""
        try:
            from cxr_diffusers.evaluation.features import images_to_tensor
            from cxr_diffusers.evaluation.memorization import (
                DEFAULT_SSIM_THRESHOLD,
                nearest_by_ssim,
            )
        except ImportError as err:
            raise gr.Error(f"The memorisation audit is not available in this version ({err}).") from None
        image = require_image(generated, "a generated X-ray")
        limit = int(limit)
        key = (source, limit)
        with cache_lock:
            if key not in cache:
                split, indices, images = state.training_images(source, limit)
                cache.clear()
                cache[key] = (split, indices, images_to_tensor(images, NEAREST_SIZE))
            split, indices, train = cache[key]
        best, index = nearest_by_ssim([image], train, size=NEAREST_SIZE)
        row = state.split(source, split)[int(indices[int(index[0])])]
        score = float(best[0])
        labels = ", ".join(row.get("labels") or []) or "no finding"
        verdict = ("**above the near-copy threshold**: inspect it" if score >= DEFAULT_SSIM_THRESHOLD
                   else "below the near-copy threshold")
        text = (f"Nearest of {len(indices)} {split} images: **#{indices[int(index[0])]}** ({labels}), "
                f"SSIM {score:.3f} at {NEAREST_SIZE}x{NEAREST_SIZE}, {verdict} ({DEFAULT_SSIM_THRESHOLD}).")
        return save_png(row["image"].convert("L"), state.new_output_dir(), "nearest"), text

    return pick, random_pick, open_source, compare, nearest


def build(state: AppState) -> ResearchTab:
    pick, random_pick, open_source, compare, nearest = make_fns(state)
    with gr.Row(equal_height=True):
        source = gr.Dropdown(source_choices(state), value=None, label="Dataset", allow_custom_value=True, scale=3,
                             elem_id="research-source")
        split = gr.Dropdown([], label="Split", allow_custom_value=True, scale=1)
        index = CheckedNumber(0, label="Image index", precision=0, minimum=0, maximum=10**7, scale=1)
        random_btn = gr.Button("Random image", size="md", scale=0, min_width=130)
    with gr.Row(equal_height=False):
        with gr.Column():
            real = gr.Image(label="Real X-ray", format="png", image_mode="L", type="filepath", interactive=False,
                            height=340,
                            elem_id="research-real")
            real_info = gr.Markdown()
        with gr.Column():
            generated = xray_image(label="Generated from its prompt (or upload a generated X-ray)", height=340,
                                  sources=["upload", "clipboard"], elem_id="research-generated")
            pair = gr.Markdown()
        with gr.Column():
            hist = gr.Plot(label="Intensity histograms", format="png", show_label=False)
            table = gr.Dataframe(headers=["metric", "real", "generated"], label="Per-image metrics",
                                 interactive=False)
    prompt = gr.Textbox(label="Prompt of the real image (editable)", lines=2)
    with gr.Row(equal_height=True):
        steps = CheckedSlider(1, state.config.max_steps, value=25, step=1, label="Steps")
        seed = CheckedNumber(0, label="Seed", precision=0, minimum=0, maximum=2**32 - 1)
        generate = gr.Button("Generate from its prompt", variant="primary", elem_id="research-generate")
    gr.Markdown("### Nearest training image (memorisation check)")
    with gr.Row(equal_height=False):
        with gr.Column(scale=1):
            limit = CheckedSlider(16, MAX_TRAIN_IMAGES, value=min(state.config.research_train_images, MAX_TRAIN_IMAGES),
                                  step=16, label="Training images searched")
            nearest_btn = gr.Button("Find the nearest training image", elem_id="research-nearest")
            nearest_info = gr.Markdown()
        with gr.Column(scale=1):
            nearest_image = gr.Image(label="Nearest training image", format="png", image_mode="L", type="filepath",
                                     interactive=False, height=300, elem_id="research-nearest-image")

    gr.on([source.input], open_source, source, [split, index, real, prompt, real_info], api_name="research_open",
          concurrency_id="cpu_light", trigger_mode="always_last")
    gr.on([index.submit, split.input], pick, [source, split, index], [real, prompt, real_info],
          api_name="research_pick", concurrency_id="cpu_light", trigger_mode="always_last")
    random_btn.click(random_pick, [source, split], [index, real, prompt, real_info], api_name="research_random",
                     concurrency_id="cpu_light")
    generate.click(compare, [source, split, index, prompt, steps, seed], [generated, pair, table, hist],
                   api_name="research_generate", concurrency_id="pipeline",
                   concurrency_limit=state.config.concurrency)
    nearest_btn.click(nearest, [generated, source, limit], [nearest_image, nearest_info], api_name="research_nearest",
                      concurrency_id="cpu_light")
    return ResearchTab(generated)
