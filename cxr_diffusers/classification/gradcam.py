"""Grad-CAM (Selvaraju et al., 2017) on the last ResNet stage, and a heat-map overlay for display."""

from __future__ import annotations

import numpy as np
import PIL.Image

__all__ = ["grad_cam", "overlay_heatmap"]


def grad_cam(model, pixel_values, target: int | None = None) -> np.ndarray:
    """Heat map in [0, 1] of shape (H, W) of `pixel_values` (1, 3, H, W) for class `target` (default: predicted).

    Channel weights are the spatially averaged gradients of the target logit w.r.t. the last stage's activations.
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    stage = model.resnet.encoder.stages[-1]
    captured = {}
    handle = stage.register_forward_hook(lambda module, inputs, output: captured.__setitem__("a", output))
    try:
        with torch.enable_grad():
            logits = model(pixel_values=pixel_values.float()).logits
            index = int(logits[0].argmax()) if target is None else int(target)
            activations = captured["a"]
            (gradients,) = torch.autograd.grad(logits[0, index], activations)
    finally:
        handle.remove()
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
    cam = cam.detach().cpu().numpy()
    return cam / cam.max() if cam.max() > 0 else cam


def overlay_heatmap(image: PIL.Image.Image, cam: np.ndarray, alpha: float = 0.4, colormap: str = "jet") -> PIL.Image.Image:
    """RGB image: the grayscale X-ray with the heat map (resized to the image) blended on top."""
    import matplotlib

    heat = PIL.Image.fromarray(np.uint8(np.clip(cam, 0, 1) * 255)).resize(image.size, PIL.Image.Resampling.BILINEAR)
    colored = matplotlib.colormaps[colormap](np.asarray(heat) / 255.0)[..., :3]
    base = np.asarray(image.convert("L").convert("RGB"), dtype=np.float64) / 255.0
    blended = (1 - alpha) * base + alpha * colored
    return PIL.Image.fromarray(np.uint8(np.clip(blended, 0, 1) * 255), mode="RGB")
