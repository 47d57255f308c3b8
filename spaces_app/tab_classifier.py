"""Classifier tab: an uploaded or generated X-ray -> NORMAL / PNEUMONIA probabilities and a Grad-CAM overlay.

Images that are not chest radiographs (blank or uniform, a handful of grey levels, pixel noise, or, where the classifier
folder holds `ood_statistics.safetensors`, features far from real radiographs: `cxr_diffusers.classification.ood`) are
refused with the reason, never given a probability.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import gradio as gr
from state import AppState
from ui import XrayImage, require_image, save_png, xray_image

TARGETS = ["predicted class", "PNEUMONIA", "NORMAL"]


@dataclass
class ClassifierTab:
    image: XrayImage
    classify: gr.Button


def make_fn(state: AppState):
    lock = threading.Lock()  # Grad-CAM hooks the shared model: one call at a time
    statistics: dict = {}  # classifier path -> its OOD feature statistics (None: structural check only)

    def ood_statistics():
        path = str(state.config.classifier)
        if path not in statistics:
            from cxr_diffusers.classification.ood import load_ood_statistics
            from cxr_diffusers.errors import ModelLoadingError

            try:
                statistics[path] = load_ood_statistics(path)
            except ModelLoadingError as err:
                raise gr.Error(str(err)) from None
        return statistics[path]

    def classify(image, target):
        """NORMAL / PNEUMONIA probabilities of a chest X-ray and a Grad-CAM overlay of the chosen class."""
        image = require_image(image)
        if target not in TARGETS:
            raise gr.Error(f"Grad-CAM class must be one of {', '.join(TARGETS)}, got {target!r}.")
        model, processor = state.get_classifier()
        try:
            from cxr_diffusers.classification import (
                LABEL2ID,
                grad_cam,
                overlay_heatmap,
                prepare_pixel_values,
            )
            from cxr_diffusers.classification.ood import classify_images
        except ImportError as err:
            raise gr.Error(f"The classification module is not complete in this version ({err}).") from None
        stats = ood_statistics()
        with lock:
            result = classify_images(model, processor, [image], statistics=stats)[0]
            if result.problem:  # a confident probability for a non-radiograph would be a wrong answer
                raise gr.Error(f"Not classified: {result.problem}. Upload a chest radiograph (PNG or JPEG).")
            p, label = float(result.p_pneumonia), result.label
            pixel_values = prepare_pixel_values(processor, image)  # the map's input, as the answer's
            cam_class = label if target == "predicted class" else target
            cam = grad_cam(model, pixel_values, target=LABEL2ID[cam_class])
        overlay = save_png(overlay_heatmap(image, cam), state.new_output_dir(), f"gradcam_{cam_class.lower()}")
        note = (f"**{label}** (P(pneumonia) = {p:.3f}). The heat map shows where the evidence for **{cam_class}** "
                "lies (Grad-CAM on the last ResNet stage). Research tool, not for clinical use.")
        return {"PNEUMONIA": p, "NORMAL": 1.0 - p}, overlay, note

    return classify


def build(state: AppState) -> ClassifierTab:
    available = state.classifier_available()
    if not available:
        gr.Markdown(f"**No classifier yet** at `{state.config.classifier}`: train one with "
                    "`train_scripts/train_classifier.py` or start the app with `--classifier PATH`. "
                    "Classifying will say so.", elem_classes=["cxr-warning"])
    with gr.Row(equal_height=False):
        with gr.Column():
            image = xray_image(label="X-ray (upload, paste, or send one from Generate)",
                               sources=["upload", "clipboard"],
                              height=380, elem_id="classifier-input")
            target = gr.Radio(TARGETS, value=TARGETS[0], label="Grad-CAM class")
            classify = gr.Button("Classify", variant="primary", elem_id="classify-button")
        with gr.Column():
            probabilities = gr.Label(label="Probabilities", num_top_classes=2, elem_id="classifier-label")
            overlay = gr.Image(label="Grad-CAM overlay", format="png", type="filepath", interactive=False, height=380,
                               elem_id="classifier-overlay")
            note = gr.Markdown()
    classify.click(make_fn(state), [image, target], [probabilities, overlay, note], api_name="classify",
                   concurrency_id="classifier", concurrency_limit=1)
    return ClassifierTab(image, classify)
