"""Pneumonia classifier (NORMAL / PNEUMONIA): a transformers ResNet, its data pipeline, metrics, plots and Grad-CAM.

- `model`: `build_classifier`, `save_classifier`, `load_classifier`, `predict_proba` (folders work with
  `transformers.pipeline("image-classification", model=folder)`).
- `data`: `load_xray`, `build_transforms`, `records_from_dataset`, `read_synthetic_manifest`, `mix_records`,
  `XrayClassificationDataset`.
- `metrics`: `evaluate_predictions` (accuracy, precision, recall, F1, AUROC, sensitivity, specificity with bootstrap
  95% CIs), `summarize_seeds`.
- `plots`: training curves, confusion matrix, ROC. `gradcam`: `grad_cam`, `overlay_heatmap`.

Trained with `train_scripts/train_classifier.py`; used by `cxr-diffusers classify`. Not for clinical use.
"""

from .data import (
    MIN_IMAGE_SIZE,
    Record,
    XrayClassificationDataset,
    build_transforms,
    class_weights,
    label_from_prompt,
    load_xray,
    mix_records,
    read_synthetic_manifest,
    records_from_dataset,
    stratified_subset,
)
from .gradcam import grad_cam, overlay_heatmap
from .metrics import (
    METRICS,
    binary_metrics,
    bootstrap_metrics,
    evaluate_predictions,
    roc_auc,
    summarize_seeds,
)
from .model import (
    ARCHITECTURES,
    ID2LABEL,
    LABEL2ID,
    build_classifier,
    load_classifier,
    make_image_processor,
    predict_proba,
    resolve_architecture,
    save_classifier,
)
from .plots import plot_confusion_matrix, plot_roc, plot_training_curves

__all__ = [
    "ARCHITECTURES",
    "ID2LABEL",
    "LABEL2ID",
    "METRICS",
    "MIN_IMAGE_SIZE",
    "Record",
    "XrayClassificationDataset",
    "binary_metrics",
    "bootstrap_metrics",
    "build_classifier",
    "build_transforms",
    "class_weights",
    "evaluate_predictions",
    "grad_cam",
    "label_from_prompt",
    "load_classifier",
    "load_xray",
    "make_image_processor",
    "mix_records",
    "overlay_heatmap",
    "plot_confusion_matrix",
    "plot_roc",
    "plot_training_curves",
    "predict_proba",
    "read_synthetic_manifest",
    "records_from_dataset",
    "resolve_architecture",
    "roc_auc",
    "save_classifier",
    "stratified_subset",
    "summarize_seeds",
]
