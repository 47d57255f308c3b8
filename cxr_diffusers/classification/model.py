"""The pneumonia classifier: a `transformers.ResNetForImageClassification` (NORMAL / PNEUMONIA) + image processor.

The folder written by `save_classifier` is a plain transformers model repository, so the stock pipeline works on it::

    from transformers import pipeline
    pipe = pipeline("image-classification", model="pretrained/pneumonia-classifier")
    pipe("chest.png")   # [{'label': 'PNEUMONIA', 'score': 0.97}, {'label': 'NORMAL', 'score': 0.03}]

Architectures: `resnet-50` (default, 23.5M parameters) and `resnet-18` (11.2M, the light option). `build_classifier`
starts from the ImageNet checkpoint `microsoft/resnet-50` / `microsoft/resnet-18` where the Hub (or its local cache) is
reachable and otherwise trains from scratch; the returned `init` string says which, for the model card.

The image processor is a `ViTImageProcessor`: a plain resize to `resolution` x `resolution` (the Kermany images are
themselves squashed to a square, so no crop or padding), rescale to [0, 1], ImageNet mean/std. Grayscale X-rays are fed
as three identical channels (the pipeline converts every image to RGB).

fp16 folders: `save_classifier(..., dtype="fp16")` stores fp16 safetensors but writes `"dtype": "float32"` into
config.json, so that `from_pretrained` / `pipeline(...)` (whose default dtype is "auto", read from the config) upcast the
weights to float32 on load: CPUs here have no fast fp16 kernels.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from ..errors import CXRInputError, ModelLoadingError

__all__ = [
    "ARCHITECTURES",
    "HUB_CHECKPOINTS",
    "ID2LABEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LABEL2ID",
    "build_classifier",
    "class_probabilities",
    "load_classifier",
    "make_image_processor",
    "pneumonia_index",
    "pneumonia_probabilities",
    "predict_proba",
    "prepare_pixel_values",
    "resolve_architecture",
    "save_classifier",
]

ID2LABEL = {0: "NORMAL", 1: "PNEUMONIA"}
LABEL2ID = {v: k for k, v in ID2LABEL.items()}
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

#: transformers `ResNetConfig` arguments of the two supported architectures (as in microsoft/resnet-18 / -50).
ARCHITECTURES = {
    "resnet-18": {"embedding_size": 64, "hidden_sizes": [64, 128, 256, 512], "depths": [2, 2, 2, 2],
                  "layer_type": "basic"},
    "resnet-50": {"embedding_size": 64, "hidden_sizes": [256, 512, 1024, 2048], "depths": [3, 4, 6, 3],
                  "layer_type": "bottleneck"},
}
HUB_CHECKPOINTS = {"resnet-18": "microsoft/resnet-18", "resnet-50": "microsoft/resnet-50"}
#: spellings of the architecture names
_SPELLINGS = {"resnet18": "resnet-18", "resnet50": "resnet-50"}


def resolve_architecture(name: str) -> str:
    """`resnet-18` / `resnet-50` from an architecture name or a named model size of `cxr_diffusers.configs`
    (tiny, small, base: its `classifier` entry)."""
    from ..configs import MODEL_CONFIGS

    key = str(name).strip().lower()
    if key in MODEL_CONFIGS:
        key = MODEL_CONFIGS[key]["classifier"]["architecture"]
    key = _SPELLINGS.get(key, key)
    if key not in ARCHITECTURES:
        raise CXRInputError(
            f"Unknown classifier architecture {name!r}; use one of {', '.join(ARCHITECTURES)} "
            f"(or a model size: {', '.join(MODEL_CONFIGS)})."
        )
    return key


def make_image_processor(resolution: int = 224):
    """The processor saved with the model: resize to `resolution` (bilinear), rescale, ImageNet normalisation."""
    from PIL import Image
    from transformers import ViTImageProcessor

    if int(resolution) < 16:
        raise CXRInputError(f"The classifier resolution must be at least 16 pixels, got {resolution}.")
    return ViTImageProcessor(
        do_resize=True, size={"height": int(resolution), "width": int(resolution)},
        resample=Image.Resampling.BILINEAR, do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
    )


def _label_kwargs() -> dict:
    return {"num_labels": 2, "id2label": dict(ID2LABEL), "label2id": dict(LABEL2ID)}


def build_classifier(architecture: str = "resnet-50", pretrained: str | None = "auto", resolution: int = 224):
    """A NORMAL/PNEUMONIA `ResNetForImageClassification`, its image processor and where its weights came from.

    Args:
        architecture: `resnet-50`, `resnet-18` (or the config names tiny/small -> resnet-18, base -> resnet-50).
        pretrained: `"auto"` tries the ImageNet checkpoint on the Hub (`microsoft/resnet-*`) and falls back to random
            initialisation when it cannot be reached; `"scratch"` / `"none"` / None always start from scratch; any
            other value is a folder or Hub id to start from (for example an earlier classifier), which must load.
        resolution: input size written into the image processor.

    Returns:
        `(model, processor, init)` with `init` a sentence for the model card, e.g. "random initialisation (trained
        from scratch; microsoft/resnet-50 was not reachable)".
    """
    from transformers import ResNetConfig, ResNetForImageClassification

    arch = resolve_architecture(architecture)
    processor = make_image_processor(resolution)
    choice = "scratch" if pretrained is None else str(pretrained).strip()
    if choice.lower() in ("scratch", "none", "random", ""):
        model = ResNetForImageClassification(ResNetConfig(**ARCHITECTURES[arch], **_label_kwargs()))
        return model, processor, "random initialisation (trained from scratch)"
    source = HUB_CHECKPOINTS[arch] if choice.lower() == "auto" else choice
    try:
        try:  # the local Hub cache first, then the Hub itself when a connection opens within seconds
            model = ResNetForImageClassification.from_pretrained(source, ignore_mismatched_sizes=True,
                                                                 local_files_only=True, **_label_kwargs())
        except Exception:
            if Path(source).exists() or not _hub_reachable():
                raise
            model = ResNetForImageClassification.from_pretrained(source, ignore_mismatched_sizes=True,
                                                                 **_label_kwargs())
    except Exception as err:  # offline, missing, not a ResNet: requests / OSError / ValueError / EnvironmentError
        if choice.lower() != "auto":
            from ..hub import load_failure

            raise load_failure(source, err, "ResNet classifier") from err
        model = ResNetForImageClassification(ResNetConfig(**ARCHITECTURES[arch], **_label_kwargs()))
        return model, processor, f"random initialisation (trained from scratch; {source} was not reachable)"
    note = "ImageNet-1k" if source in HUB_CHECKPOINTS.values() else "an earlier checkpoint"
    return model, processor, f"initialised from {source} ({note}), classification head re-initialised"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the Hub endpoint accepts no TCP connection within `timeout` seconds."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout):
            return True
    except OSError:
        return False


def save_classifier(model, processor, folder: str | os.PathLike, dtype: str = "fp32") -> Path:
    """`save_pretrained` the model (safetensors) and processor into `folder`; `dtype="fp16"` halves the file.

    The model passed in is not modified. fp16 folders keep `"dtype": "float32"` in config.json so that loading upcasts.
    """
    if dtype not in ("fp32", "fp16"):
        raise CXRInputError(f"dtype must be 'fp32' or 'fp16', not {dtype!r}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    to_save = copy.deepcopy(model).cpu().float()
    if dtype == "fp16":
        to_save = to_save.half()
    to_save.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["dtype"] = "float32"  # load (upcast) in fp32 by default, whatever the stored precision
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return folder


def load_classifier(path: str | os.PathLike, device: str = "cpu"):
    """`(model, processor)` from a classifier folder or Hub id, in float32 and eval mode."""
    import torch
    from transformers import AutoImageProcessor, ResNetForImageClassification

    from ..hub import check_model_location, load_failure

    local = Path(check_model_location(path, "classifier"))
    if local.exists() and not (local / "config.json").is_file():
        raise ModelLoadingError(f"{local} is not a classifier folder (no config.json); train one with "
                                "train_scripts/train_classifier.py or pass --model.")
    try:
        model = ResNetForImageClassification.from_pretrained(str(path), dtype=torch.float32, use_safetensors=True)
        processor = AutoImageProcessor.from_pretrained(str(path))
    except Exception as err:
        raise load_failure(path, err, "classifier") from err
    if model.config.num_labels != 2:
        raise ModelLoadingError(f"{path} has {model.config.num_labels} labels; a NORMAL/PNEUMONIA classifier has 2.")
    return model.to(device).eval(), processor


def pneumonia_index(model) -> int:
    """Index of the PNEUMONIA logit in `model.config.id2label`."""
    for index, label in model.config.id2label.items():
        if str(label).upper() == "PNEUMONIA":
            return int(index)
    raise ModelLoadingError("The classifier has no PNEUMONIA label in its id2label.")


def prepare_pixel_values(processor, images):
    """The classifier's `pixel_values` (N, 3, H, W) of X-rays, made by its image processor.

    `images`: a PIL image (any mode; converted to RGB, as the transformers pipeline does), a 2-D array (uint8, uint16,
    or float in [0, 1]), a tensor (N, 1, H, W) in [0, 1], or a list of PIL images / 2-D arrays. Arrays and tensors are
    turned into 8-bit grayscale images first, so an image gives the same pixel values as its PNG file.
    """
    import numpy as np
    import PIL.Image

    if isinstance(images, PIL.Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 2):
        images = [images]
    if not isinstance(images, (list, tuple)):  # a tensor or an array batch
        images = _to_8bit_images(images)
    rgb = [(im if isinstance(im, PIL.Image.Image) else _to_8bit_images(im)[0]).convert("RGB") for im in images]
    if not rgb:
        raise CXRInputError("No images were given.")
    return processor(images=rgb, return_tensors="pt")["pixel_values"]


def _to_8bit_images(images) -> list:
    """Images in any form `images_to_tensor` reads -> 8-bit grayscale PIL images (values rounded)."""
    import numpy as np
    import PIL.Image

    from ..evaluation.features import images_to_tensor

    x = images_to_tensor(images)[:, 0].numpy()
    return [PIL.Image.fromarray(np.rint(a * 255).astype(np.uint8), mode="L") for a in x]


def class_probabilities(model, pixel_values, return_logits: bool = False, return_features: bool = False):
    """Softmax probabilities (N, num_labels) of one batch of prepared `pixel_values`, without gradients.

    The one forward pass behind every prediction of the classifier: `pneumonia_probabilities`, `predict_proba`,
    `classify_images` (with the input check), `ClassifierFeatureExtractor.predict_proba` and the validation and test of
    `train_classifier.py`. `pixel_values` (from `prepare_pixel_values` or `build_transforms`) are moved to the model's
    device and dtype; logits and probabilities are float32, on the model's device. The model's train/eval mode is left
    as it is. `return_logits=True` returns `(probabilities, logits)`, e.g. for a validation loss;
    `return_features=True` adds the pooled penultimate features (N, hidden) as the last element (the ResNet body and
    its classifier head run separately then, the same computation as `model(pixel_values)`; the input check's
    Mahalanobis distance is measured on them).
    """
    import torch

    parameter = next(model.parameters())
    pixel_values = pixel_values.to(parameter.device, parameter.dtype)
    features = None
    with torch.no_grad():
        if return_features:
            body, head = _body_and_head(model)
            pooled = body(pixel_values).pooler_output
            logits = head(pooled).float()
            features = pooled.flatten(1).float()
        else:
            logits = model(pixel_values=pixel_values).logits.float()
    probabilities = torch.softmax(logits, dim=-1)
    out = (probabilities,) + ((logits,) if return_logits else ()) + ((features,) if return_features else ())
    return out if len(out) > 1 else probabilities


def _body_and_head(model):
    """The ResNet body (`.resnet`, whose `pooler_output` feeds the head) and the head (`.classifier`) of a model,
    through an Accelerate / DataParallel wrapper."""
    inner = getattr(model, "module", model)
    if not (hasattr(inner, "resnet") and hasattr(inner, "classifier")):
        raise ModelLoadingError(f"{type(inner).__name__} is not a transformers ResNetForImageClassification; "
                                "its penultimate features cannot be read.")
    return inner.resnet, inner.classifier


def pneumonia_probabilities(model, pixel_values):
    """P(PNEUMONIA) (N,) of one batch of prepared `pixel_values`: the PNEUMONIA column of `class_probabilities`."""
    return class_probabilities(model, pixel_values)[:, pneumonia_index(model)]


def predict_proba(model, processor, images, batch_size: int = 32, check_inputs: bool = False,
                  ood_statistics=None):
    """P(PNEUMONIA) of X-rays (PIL images, 2-D arrays or a tensor (N, 1, H, W) in [0, 1]; see
    `prepare_pixel_values`) as a float32 numpy array (N,). Sets the model to eval mode.

    With `check_inputs=True`, images that are not chest radiographs (`classification.ood.input_problem`: blank or
    uniform, a handful of grey levels, noise, or penultimate features far from `ood_statistics` when given) raise
    `CXRInputError` naming the first of them instead of getting a probability.
    """
    import numpy as np
    import PIL.Image

    if isinstance(images, PIL.Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 2):
        images = [images]
    if check_inputs:
        from .ood import classify_images

        results = classify_images(model, processor, images, batch_size=batch_size, statistics=ood_statistics)
        for index, result in enumerate(results):
            if result.problem:
                raise CXRInputError(f"Image {index} is not classified: {result.problem}.")
        return np.array([r.p_pneumonia for r in results], dtype=np.float32)
    model.eval()
    out = [pneumonia_probabilities(model, prepare_pixel_values(processor, images[start : start + batch_size])).cpu()
           for start in range(0, len(images), batch_size)]
    return np.concatenate([p.numpy() for p in out]) if out else np.zeros(0, dtype=np.float32)
