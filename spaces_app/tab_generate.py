"""Generate tab: prompt -> synthetic chest X-rays (lossless grayscale PNGs with provenance), live progress, timing."""

from __future__ import annotations

import json
import random
import zipfile
from dataclasses import dataclass

import gradio as gr
from state import AppState
from ui import CheckedNumber, CheckedSlider, check_choice, check_number

EXAMPLE_PROMPTS = [
    "PA chest radiograph of an adult. No acute cardiopulmonary abnormality.",
    "PA chest radiograph of a 58 year old female. Findings: cardiomegaly, pleural effusion.",
    "AP chest radiograph of a 5 year old child. Findings: bacterial pneumonia.",
    "AP chest radiograph of a 3 year old child. No acute cardiopulmonary abnormality.",
    "PA chest radiograph of a 45 year old male. Findings: right lower lobe pneumonia.",
    "AP chest radiograph of a 70 year old male. Findings: covid-19, bilateral opacities.",
]
STANDARD_MODE = "standard"
FAST_MODE = "fast (distilled, 4 steps)"
FAST_STEPS = 4
MAX_SEED = 2**32 - 1
MAX_GUIDANCE = 20.0
MAX_PROMPT_CHARS = 1000


@dataclass
class GenerateTab:
    prompt: gr.Textbox
    gallery: gr.Gallery
    paths: gr.State
    selected: gr.State
    send_to_enhance: gr.Button
    send_to_classifier: gr.Button
    generate: gr.Button


def preset_choices() -> list[str]:
    from cxr_diffusers.enhancement import PRESETS

    return ["none", *PRESETS]


def scheduler_choices() -> list[str]:
    from cxr_diffusers.schedulers import SCHEDULERS

    return list(SCHEDULERS)


def mode_choices(state: AppState) -> list[str]:
    """The generator's modes: the fast one only where the model has a distilled fast folder beside it."""
    return [STANDARD_MODE, FAST_MODE] if state.fast_available else [STANDARD_MODE]


def resolution_info(state: AppState) -> str:
    """How the sizes above the model's native one are made (the route of each request is in the timing line)."""
    pipe = state.pipe
    if pipe is None:
        return ""
    native = int(pipe.default_size)
    staged = pipe.super_resolution_sizes
    if staged:
        return (f"{' and '.join(map(str, staged))} px: {native} px images upscaled by the super-resolution stage; "
                "other sizes are sampled directly")
    return (f"above {native} px the UNet samples the larger canvas directly and tiles its layout (this model has no "
            "super-resolution stage)")


def make_generate_fn(state: AppState):
    def generate(prompt, negative_prompt, resolution, steps, guidance, scheduler, seed, random_seed, num_images,
                 enhancement, mode=STANDARD_MODE, progress=gr.Progress()):
        """Generate synthetic chest X-rays from a radiology prompt (lossless grayscale PNGs with provenance); mode
        "fast (distilled, 4 steps)" uses the distilled few-step model and its tiny decoder where they exist."""
        from cxr_diffusers import read_provenance

        if not isinstance(prompt, str) or not prompt.strip():
            raise gr.Error(
                "The prompt is empty; describe the radiograph, e.g. 'PA chest radiograph. Findings: pneumonia.'"
            )
        if len(prompt) > MAX_PROMPT_CHARS:
            raise gr.Error(f"The prompt has {len(prompt)} characters; keep it under {MAX_PROMPT_CHARS}.")
        if negative_prompt is not None and not isinstance(negative_prompt, str):
            raise gr.Error("The negative prompt must be text.")
        pipe = state.require_pipeline()
        size = check_number("Resolution", resolution, integer=True)
        check_choice("Resolution", size, state.size_choices)
        steps = check_number("Steps", steps, 1, state.config.max_steps, integer=True)
        guidance = check_number("Guidance", guidance, 0, MAX_GUIDANCE)
        check_choice("Scheduler", scheduler, scheduler_choices())
        count = check_number("Number of images", num_images, 1, state.config.max_images, integer=True)
        check_choice("Enhancement preset", enhancement, preset_choices())
        check_choice("Mode", mode, mode_choices(state))
        fast = mode == FAST_MODE
        if random_seed or seed is None:
            seed = random.SystemRandom().randrange(MAX_SEED - count)
        seed = check_number("Seed", seed, 0, MAX_SEED - count + 1, integer=True)
        seeds = [seed + i for i in range(count)]

        progress(0, desc="Encoding the prompt")

        def on_step(step, total):
            progress((step, total), desc="Denoising", unit="steps")

        images, seconds = state.generate(
            prompt.strip(), negative_prompt=(negative_prompt or "").strip() or None, size=size, steps=steps,
            guidance=guidance, scheduler=scheduler, seeds=seeds,
            enhancement=None if enhancement == "none" else enhancement, on_step=on_step, fast=fast,
        )
        progress(1.0, desc="Saving PNGs")
        folder = state.new_output_dir()
        paths, records = [], []
        for image, s in zip(images, seeds):
            path = folder / f"synthetic_cxr_seed{s}.png"
            image.save(path)  # PNG text chunks carry the provenance record
            paths.append(str(path))
            records.append(read_provenance(path))
        if len(paths) == 1:
            download = paths[0]
        else:
            download = str(folder / f"synthetic_cxr_seeds{seeds[0]}-{seeds[-1]}.zip")
            with zipfile.ZipFile(download, "w") as archive:
                for path in paths:
                    archive.write(path, arcname=path.rsplit("/", 1)[-1])
                archive.writestr("provenance.json", json.dumps(records, indent=2))
        per_step = seconds / steps
        sampler = "the distilled model" if fast else scheduler
        _, route = state.resolution_route(size)
        timing = (
            f"**{count} image{'s' if count > 1 else ''} of {size}x{size} in {seconds:.2f} s** "
            f"({steps} steps of {sampler}, {per_step * 1000:.0f} ms per step; seed{'s' if count > 1 else ''} "
            f"{', '.join(map(str, seeds))}; device {pipe.device.type}). {route}"
        )
        gallery = [(p, f"seed {s}") for p, s in zip(paths, seeds)]
        label = "Download PNG" if len(paths) == 1 else f"Download {len(paths)} PNGs (zip)"
        return gallery, timing, gr.DownloadButton(label=label, value=download, visible=True), records, paths, 0

    return generate


def build(state: AppState) -> GenerateTab:
    sizes = state.size_choices
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=340):
            prompt = gr.Textbox(
                label="Prompt", lines=3, max_lines=6, elem_id="prompt",
                placeholder="e.g. PA chest radiograph of a 58 year old female. Findings: cardiomegaly.",
            )
            gr.Examples(examples=[[p] for p in EXAMPLE_PROMPTS], inputs=[prompt], label="Example prompts (click one)",
                        examples_per_page=6)
            negative = gr.Textbox(label="Negative prompt", lines=1, placeholder="optional, e.g. lateral view")
            with gr.Row():
                resolution = gr.Radio(sizes, value=state.default_size if state.default_size in sizes else sizes[0],
                                      label="Resolution (pixels)", info=resolution_info(state))
                scheduler = gr.Dropdown(scheduler_choices(), value=state.default_scheduler, label="Scheduler")
            with gr.Row():
                steps = CheckedSlider(1, state.config.max_steps, value=25, step=1, label="Steps")
                guidance = CheckedSlider(0, MAX_GUIDANCE, value=4.0, step=0.5, label="Guidance")
            with gr.Row():
                seed = CheckedNumber(0, label="Seed", precision=0, minimum=0, maximum=MAX_SEED, min_width=120)
                random_seed = gr.Checkbox(False, label="Random seed", min_width=120)
                count = CheckedSlider(1, state.config.max_images, value=1, step=1, label="Number of images")
            enhancement = gr.Dropdown(preset_choices(), value="none", label="Enhancement preset")
            modes = mode_choices(state)
            mode = gr.Radio(modes, value=STANDARD_MODE, label="Mode", visible=len(modes) > 1, elem_id="generate-mode",
                            info="fast: the distilled few-step UNet (one call per step, no negative prompt) and the "
                                 "tiny decoder where there is one")
            generate = gr.Button("Generate", variant="primary", elem_id="generate-button")
            if state.pipe is None:
                gr.Markdown(f"**Model not available.** {state.pipe_error}", elem_classes=["cxr-warning"])
        with gr.Column(scale=3, min_width=360):
            gallery = gr.Gallery(label="Generated X-rays (grayscale PNG)", format="png", columns=2, height="auto",
                                 object_fit="contain", preview=False, elem_id="generated-gallery",
                                 buttons=["download", "fullscreen"])
            timing = gr.Markdown("Generation time appears here.", elem_id="generation-time")
            with gr.Row():
                download = gr.DownloadButton("Download PNG", visible=False, size="md")
                send_to_enhance = gr.Button("Send to Enhancement", size="md")
                send_to_classifier = gr.Button("Send to Classifier", size="md")
            with gr.Accordion("Provenance (stored in every PNG)", open=False):
                provenance = gr.JSON(label="Provenance records")
    paths = gr.State([])
    selected = gr.State(0)

    generate_fn = make_generate_fn(state)
    inputs = [prompt, negative, resolution, steps, guidance, scheduler, seed, random_seed, count, enhancement, mode]
    outputs = [gallery, timing, download, provenance, paths, selected]
    gr.on([generate.click, prompt.submit], generate_fn, inputs, outputs, api_name="generate",
          concurrency_id="pipeline", concurrency_limit=state.config.concurrency, show_progress_on=[gallery])

    def switch_mode(value):
        """Fast mode samples in 4 LCM steps; the standard mode goes back to the model's own scheduler."""
        if value == FAST_MODE:
            return gr.update(value=FAST_STEPS), gr.update(value="lcm", interactive=False)
        return gr.update(value=25), gr.update(value=state.default_scheduler, interactive=True)

    mode.change(switch_mode, mode, [steps, scheduler], api_visibility="private", queue=False)

    def select(evt: gr.SelectData):
        return evt.index

    gallery.select(select, None, selected, api_visibility="private", queue=False)
    return GenerateTab(prompt, gallery, paths, selected, send_to_enhance, send_to_classifier, generate)
