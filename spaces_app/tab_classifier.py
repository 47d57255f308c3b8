"""Classifier tab: an uploaded or generated X-ray -> NORMAL / PNEUMONIA probabilities and a Grad-CAM overlay."""

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
                pneumonia_probabilities,
                prepare_pixel_values,
            )
        except ImportError as err:
            raise gr.Error(f"The classification module is not complete in this version ({err}).") from None
        with lock:
            pixel_values = prepare_pixel_values(processor, image)  # one preprocessing for the answer and the map
            p = float(pneumonia_probabilities(model, pixel_values)[0])
            label = "PNEUMONIA" if p >= 0.5 else "NORMAL"
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
