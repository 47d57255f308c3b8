"""Feature extractors for the distribution metrics, and the image -> tensor preparation they share.

A feature extractor is anything with a `name` and a `__call__(images) -> np.ndarray` of shape (N, D) (see
`FeatureExtractor`). Shipped extractors, none of which ever downloads weights:

- `ClassifierFeatureExtractor`: the penultimate (pooled) layer of any `transformers` image-classification model folder,
  e.g. the project's pneumonia classifier (a `ResNetForImageClassification`), and its predictions.
- `VAEFeatureExtractor`: pooled statistics of the posterior mean of the pipeline's own `CXRAutoencoderKL`.
- `InceptionFeatureExtractor` / `XRVFeatureExtractor`: torchvision Inception-v3 pool3 and torchxrayvision DenseNet
  features, only where their weights are already on disk.

Images are PIL images, 2-D arrays (uint8/uint16, or float in [0, 1]), or a tensor (N, 1, H, W) in [0, 1]
(`images_to_tensor`). The maths on the features is in `distribution`.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import CXRInputError, ModelLoadingError

__all__ = [
    "XRV_WEIGHTS",
    "ClassifierFeatureExtractor",
    "FeatureExtractor",
    "InceptionFeatureExtractor",
    "VAEFeatureExtractor",
    "XRVFeatureExtractor",
    "available_extractors",
    "find_inception_weights",
    "find_xrv_weights",
    "images_to_tensor",
]


# ------------------------------------------------------------------------------------------------------ images
def images_to_tensor(images: Any, size: int | tuple[int, int] | None = None):
    """Images -> float32 tensor (N, 1, H, W) in [0, 1], resized to `size` (int or (height, width)) when given.

    PIL images are fitted with `resize_and_pad` (aspect ratio kept); arrays and tensors are resized with antialiased
    bilinear interpolation.
    """
    import torch
    import torch.nn.functional as F
    from PIL import Image

    hw = None if size is None else ((size, size) if isinstance(size, int) else (int(size[0]), int(size[1])))
    if isinstance(images, torch.Tensor):
        x = images.detach().float().cpu()
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != 1:
            raise CXRInputError(f"Image tensors must have shape (N, 1, H, W), got {tuple(images.shape)}.")
    elif isinstance(images, np.ndarray) and images.ndim in (3, 4):  # a batch (N, H, W) or (N, H, W, 1)
        if images.ndim == 4 and images.shape[-1] != 1:
            raise CXRInputError(f"Image arrays must have shape (N, H, W) or (N, H, W, 1), got {images.shape}.")
        a = images[..., 0] if images.ndim == 4 else images
        x = torch.from_numpy(np.stack([_unit_array(i) for i in a]))[:, None]
    else:
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        images = list(images)
        if not images:
            raise CXRInputError("No images were given.")
        arrays = []
        for image in images:
            if isinstance(image, Image.Image) and hw is not None and image.size != (hw[1], hw[0]):
                from ..data.transforms import resize_and_pad

                image = resize_and_pad(image, hw)
            arrays.append(_unit_array(image))
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1 and hw is None:
            raise CXRInputError(f"The images have different sizes {sorted(shapes)}; pass a size to resize them to.")
        if len(shapes) > 1:
            arrays = [a if a.shape == hw else _resize_array(a, hw) for a in arrays]
        x = torch.from_numpy(np.stack(arrays))[:, None]
    if len(x) == 0:
        raise CXRInputError("No images were given.")
    if hw is not None and tuple(x.shape[-2:]) != hw:
        x = F.interpolate(x, size=hw, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
    return x.contiguous()


def _unit_array(image: Any) -> np.ndarray:
    """One image -> 2-D float32 in [0, 1] (the scaling of `image_quality`)."""
    from .image_quality import _unit

    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    return _unit(image).astype(np.float32)


def _resize_array(a: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    return cv2.resize(a, (hw[1], hw[0]), interpolation=cv2.INTER_AREA).astype(np.float32)


def _batches(x, batch_size: int):
    for start in range(0, len(x), batch_size):
        yield x[start : start + batch_size]


def _default_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ------------------------------------------------------------------------------------------------ extractors
@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps images to an (N, D) float array. `name` identifies the features in reports (e.g. "vae", "classifier")."""

    name: str

    def __call__(self, images: Any) -> np.ndarray: ...


def require_posterior_vae(vae, what: str) -> None:
    """`what` needs the posterior of a `CXRAutoencoderKL`; a tiny decoder (`AutoencoderTiny`, fast mode) has none."""
    if not hasattr(vae, "downsample_factor") or not hasattr(vae, "encode"):
        raise CXRInputError(
            f"{what} needs the model's VAE (CXRAutoencoderKL) and got a {type(vae).__name__}: a tiny decoder swapped "
            "in for fast mode has no posterior; evaluate with the base pipeline's VAE."
        )


class VAEFeatureExtractor:
    """Pooled statistics of the posterior mean of a `CXRAutoencoderKL` encoder.

    For latents (C, h, w) the features are, per channel, the spatial mean and standard deviation plus a `grid` x `grid`
    average pooling: `C * (2 + grid**2)` numbers (64 for the 8-channel VAE with the default `grid=2`).

    Args:
        vae: the autoencoder (e.g. `pipe.vae`).
        image_size: images are resized to this before encoding (default: the VAE's `sample_size`).
        grid: spatial pooling grid (0 for channel statistics only).
        device: where to encode (the VAE is moved there); default: where the VAE already is.
    """

    name = "vae"

    def __init__(self, vae, image_size: int | None = None, grid: int = 2, batch_size: int = 16, device=None):
        require_posterior_vae(vae, "VAE features")
        self.vae = vae.eval() if device is None else vae.eval().to(device)
        self.image_size = int(image_size or vae.config.sample_size)
        if self.image_size % vae.downsample_factor:
            raise CXRInputError(
                f"VAEFeatureExtractor: image_size {self.image_size} must be a multiple of {vae.downsample_factor}."
            )
        self.grid = int(grid)
        self.batch_size = int(batch_size)
        self.device = device or next(vae.parameters()).device

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> VAEFeatureExtractor:
        """From a pipeline folder (its `vae/` subfolder) or a VAE folder."""
        from ..models import CXRAutoencoderKL

        folder = Path(path)
        sub = "vae" if (folder / "vae" / "config.json").is_file() else None
        try:
            vae = CXRAutoencoderKL.from_pretrained(str(folder), subfolder=sub)
        except (OSError, ValueError) as err:
            raise ModelLoadingError(f"Could not load a CXRAutoencoderKL from {str(path)!r}: {err}") from err
        return cls(vae, **kwargs)

    def __call__(self, images: Any) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        x = images_to_tensor(images, self.image_size)
        dtype = next(self.vae.parameters()).dtype
        out = []
        with torch.no_grad():
            for batch in _batches(x, self.batch_size):
                z = self.vae.encode((batch * 2 - 1).to(self.device, dtype)).latent_dist.mean.float()
                parts = [z.mean(dim=(2, 3)), z.flatten(2).std(dim=2)]
                if self.grid:
                    parts.append(F.adaptive_avg_pool2d(z, self.grid).flatten(1))
                out.append(torch.cat(parts, dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)


def _processor_settings(folder: Path) -> dict[str, Any]:
    """size / mean / std from a saved image processor (`preprocessor_config.json`), if there is one."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    out: dict[str, Any] = {}
    size = config.get("size")
    if isinstance(size, int):
        out["image_size"] = size
    elif isinstance(size, dict):
        if "height" in size and "width" in size:
            out["image_size"] = (int(size["height"]), int(size["width"]))
        elif "shortest_edge" in size:
            out["image_size"] = int(size["shortest_edge"])
    if config.get("do_normalize", True) and config.get("image_mean") is not None:
        out["image_mean"] = config["image_mean"]
        out["image_std"] = config.get("image_std", [1.0] * len(config["image_mean"]))
    elif not config.get("do_normalize", True):
        out["image_mean"], out["image_std"] = [0.0], [1.0]
    return out


class ClassifierFeatureExtractor:
    """Penultimate-layer features (and predictions) of a `transformers` image-classification model.

    The features are the base model's `pooler_output` (for `ResNetForImageClassification`, the globally pooled last
    stage: `model.resnet(x).pooler_output`), or the mean of the last hidden state where a model has no pooler.
    Grayscale images are resized to `image_size`, repeated to the model's `num_channels` and normalised with
    `image_mean` / `image_std` (read from the folder's `preprocessor_config.json` by `from_pretrained`; default 0.5 / 0.5,
    i.e. [-1, 1]).
    """

    name = "classifier"

    def __init__(
        self,
        model,
        image_size: int | tuple[int, int] = 224,
        image_mean: Sequence[float] = (0.5,),
        image_std: Sequence[float] = (0.5,),
        batch_size: int = 32,
        device=None,
    ):
        import torch

        self.model = model.eval() if device is None else model.eval().to(device)
        self.image_size = image_size
        channels = int(getattr(model.config, "num_channels", 3))
        self.num_channels = channels
        mean = list(image_mean) * (channels if len(image_mean) == 1 else 1)
        std = list(image_std) * (channels if len(image_std) == 1 else 1)
        self.mean = torch.tensor(mean[:channels], dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std[:channels], dtype=torch.float32).view(1, -1, 1, 1)
        self.batch_size = int(batch_size)
        self.device = device or next(model.parameters()).device
        id2label = getattr(model.config, "id2label", None) or {}
        self.labels = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(model.config.num_labels)]

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **kwargs) -> ClassifierFeatureExtractor:
        """Load any `AutoModelForImageClassification` folder; its image processor settings are used when saved."""
        from transformers import AutoModelForImageClassification

        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ModelLoadingError(f"{str(path)!r} is not an image-classification model folder (no config.json).")
        try:
            model = AutoModelForImageClassification.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError) as err:
            raise ModelLoadingError(f"Could not load an image classifier from {str(path)!r}: {err}") from err
        settings = _processor_settings(folder)
        settings.update(kwargs)
        return cls(model, **settings)

    def preprocess(self, images: Any):
        x = images_to_tensor(images, self.image_size)
        x = x.expand(-1, self.num_channels, -1, -1)
        return (x - self.mean) / self.std

    def _pooled_features(self, pixel_values):
        import torch

        dtype = next(self.model.parameters()).dtype
        with torch.no_grad():
            pixel_values = pixel_values.to(self.device, dtype)
            base = getattr(self.model, getattr(self.model, "base_model_prefix", ""), None)
            if base is not None and base is not self.model:
                out = base(pixel_values)
                pooled = getattr(out, "pooler_output", None)
                if pooled is None:
                    hidden = out.last_hidden_state
                    pooled = hidden.mean(dim=(2, 3)) if hidden.ndim == 4 else hidden.mean(dim=1)
                features = pooled.flatten(1)
            else:
                hidden = self.model(pixel_values, output_hidden_states=True).hidden_states[-1]
                features = hidden.mean(dim=(2, 3)) if hidden.ndim == 4 else hidden.mean(dim=1)
        return features.float().cpu()

    def __call__(self, images: Any) -> np.ndarray:
        x = self.preprocess(images)
        return np.concatenate([self._pooled_features(b).numpy() for b in _batches(x, self.batch_size)]).astype(np.float64)

    def predict_proba(self, images: Any) -> np.ndarray:
        """Class probabilities (N, num_labels), columns in `self.labels` order (`classification.class_probabilities`
        on this extractor's preprocessing)."""
        from ..classification.model import class_probabilities

        x = self.preprocess(images)
        return np.concatenate([class_probabilities(self.model, b).cpu().numpy() for b in _batches(x, self.batch_size)])

    def predict(self, images: Any) -> list[str]:
        """Predicted label names (`config.id2label`); `NOT_A_RADIOGRAPH` for blank or uniform inputs, which the
        classifier would otherwise call PNEUMONIA with p = 1.0."""
        from ..classification.input_check import NOT_A_RADIOGRAPH, radiograph_problem

        x = images_to_tensor(images, self.image_size)
        labels = [self.labels[i] for i in self.predict_proba(x).argmax(axis=1)]
        return [NOT_A_RADIOGRAPH if radiograph_problem(image) else label for image, label in zip(x, labels)]


def _torch_hub_checkpoints() -> list[str]:
    import torch

    return [os.path.join(torch.hub.get_dir(), "checkpoints")]


def find_inception_weights(path: str | os.PathLike | None = None) -> str | None:
    """A torchvision Inception-v3 state dict already on disk (`path`, $CXR_INCEPTION_WEIGHTS, or the torch hub cache)."""
    candidates = [path, os.environ.get("CXR_INCEPTION_WEIGHTS")]
    for folder in _torch_hub_checkpoints():
        candidates += sorted(glob.glob(os.path.join(folder, "inception_v3_google-*.pth")))
    for candidate in candidates:
        if candidate and os.path.isfile(candidate):
            return str(candidate)
    return None


class InceptionFeatureExtractor:
    """torchvision Inception-v3 pool3 features (2048-D), the features of FID, from weights already on disk.

    Never downloads: raises `ModelLoadingError` when no weights file is found (see `find_inception_weights`). Note
    that torchvision's ImageNet weights are not the TF-FID weights, so values are "FID-like", not comparable to
    published FIDs.
    """

    name = "inception"

    def __init__(self, weights_path: str | os.PathLike | None = None, batch_size: int = 32, device=None):
        import torch
        import torchvision

        found = find_inception_weights(weights_path)
        if found is None:
            raise ModelLoadingError(
                "Inception-v3 weights are not on disk (give a path or set CXR_INCEPTION_WEIGHTS); they are never downloaded."
            )
        model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
        model.load_state_dict(torch.load(found, map_location="cpu", weights_only=True))
        model.fc = torch.nn.Identity()
        self.device = device or _default_device()
        self.model = model.eval().to(self.device)
        self.batch_size = batch_size
        self.mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        self.std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def __call__(self, images: Any) -> np.ndarray:
        import torch

        x = images_to_tensor(images, 299).expand(-1, 3, -1, -1)
        x = (x - self.mean) / self.std
        with torch.no_grad():
            return np.concatenate(
                [self.model(b.to(self.device)).float().cpu().numpy() for b in _batches(x, self.batch_size)]
            ).astype(np.float64)


XRV_WEIGHTS = "densenet121-res224-all"


def find_xrv_weights(weights: str = XRV_WEIGHTS) -> str | None:
    """The torchxrayvision weights file, if the package is installed and the file is already in its cache."""
    if importlib.util.find_spec("torchxrayvision") is None:
        return None
    folder = os.path.join(os.path.expanduser("~"), ".torchxrayvision", "models_data")
    hits = sorted(glob.glob(os.path.join(folder, f"*{weights}*")))
    return hits[0] if hits else None


class XRVFeatureExtractor:
    """torchxrayvision DenseNet-121 (`densenet121-res224-all`) pooled features (1024-D), only from cached weights."""

    name = "xrv"

    def __init__(self, weights: str = XRV_WEIGHTS, batch_size: int = 32, device=None):
        if find_xrv_weights(weights) is None:
            raise ModelLoadingError(
                f"torchxrayvision or its {weights} weights are not on disk; they are never downloaded."
            )
        import torchxrayvision as xrv

        self.device = device or _default_device()
        self.model = xrv.models.DenseNet(weights=weights).eval().to(self.device)
        self.batch_size = batch_size

    def __call__(self, images: Any) -> np.ndarray:
        import torch

        x = images_to_tensor(images, 224) * 2048.0 - 1024.0  # torchxrayvision's [-1024, 1024] range
        with torch.no_grad():
            return np.concatenate(
                [self.model.features2(b.to(self.device)).float().cpu().numpy() for b in _batches(x, self.batch_size)]
            ).astype(np.float64)


def available_extractors(classifier_path: str | os.PathLike | None = None) -> dict[str, bool]:
    """Which extractors can be built here without any download."""
    return {
        "vae": True,
        "classifier": bool(classifier_path) and (Path(classifier_path) / "config.json").is_file(),
        "inception": importlib.util.find_spec("torchvision") is not None and find_inception_weights() is not None,
        "xrv": find_xrv_weights() is not None,
    }
