"""Pneumonia classifier (NORMAL / PNEUMONIA): a transformers ResNet, its data pipeline, metrics, plots and Grad-CAM.

- `model`: `build_classifier`, `save_classifier`, `load_classifier` (folders work with
  `transformers.pipeline("image-classification", model=folder)`) and inference: `predict_proba` (P(PNEUMONIA) of
  images), `pneumonia_probabilities` / `class_probabilities` (of a batch of `pixel_values`), `prepare_pixel_values`.
- `data`: `load_xray`, `build_transforms`, `load_splits`, `records_from_dataset`, `read_synthetic_manifest`,
  `mix_records`, `XrayClassificationDataset`, `make_dataloader`.
- `ood`: the input check of the public callers (`cxr-diffusers classify`, the app, `predict_proba(...,
  check_inputs=True)`): `classify_images` answers NOT_A_RADIOGRAPH with a reason for blank, uniform or noise images
  and, with `FeatureStatistics` stored beside the weights (`load_ood_statistics`), for images whose penultimate
  features are far (Mahalanobis) from real radiographs.
- `card`: `save_classifier_card`, the README.md of a trained model.
- `metrics`: `evaluate_predictions` (accuracy, precision, recall, F1, AUROC, sensitivity, specificity with bootstrap
  95% CIs), `summarize_seeds`.
- `plots`: training curves, confusion matrix, ROC. `gradcam`: `grad_cam`, `overlay_heatmap`.

Trained with `train_scripts/train_classifier.py`; used by `cxr-diffusers classify`. Not for clinical use.
"""

from .card import save_classifier_card
from .data import (
    MIN_IMAGE_SIZE,
    Record,
    XrayClassificationDataset,
    build_transforms,
    class_weights,
    label_from_prompt,
    load_splits,
    load_xray,
    make_dataloader,
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
    resampled_metrics,
    roc_auc,
    summarize_seeds,
)
from .model import (
    ARCHITECTURES,
    ID2LABEL,
    LABEL2ID,
    build_classifier,
    class_probabilities,
    load_classifier,
    make_image_processor,
    pneumonia_probabilities,
    predict_proba,
    prepare_pixel_values,
    resolve_architecture,
    save_classifier,
)
from .ood import (
    OOD_STATISTICS_FILE,
    ClassifiedImage,
    FeatureStatistics,
    classify_images,
    load_ood_statistics,
    structure_problem,
)
from .plots import plot_confusion_matrix, plot_roc, plot_training_curves

__all__ = [
    "ARCHITECTURES",
    "ID2LABEL",
    "LABEL2ID",
    "METRICS",
    "MIN_IMAGE_SIZE",
    "OOD_STATISTICS_FILE",
    "ClassifiedImage",
    "FeatureStatistics",
    "Record",
    "XrayClassificationDataset",
    "binary_metrics",
    "bootstrap_metrics",
    "build_classifier",
    "build_transforms",
    "class_probabilities",
    "class_weights",
    "classify_images",
    "evaluate_predictions",
    "grad_cam",
    "label_from_prompt",
    "load_classifier",
    "load_ood_statistics",
    "load_splits",
    "load_xray",
    "make_dataloader",
    "make_image_processor",
    "mix_records",
    "overlay_heatmap",
    "plot_confusion_matrix",
    "plot_roc",
    "plot_training_curves",
    "pneumonia_probabilities",
    "predict_proba",
    "prepare_pixel_values",
    "read_synthetic_manifest",
    "records_from_dataset",
    "resampled_metrics",
    "resolve_architecture",
    "roc_auc",
    "save_classifier",
    "save_classifier_card",
    "stratified_subset",
    "structure_problem",
    "summarize_seeds",
]
