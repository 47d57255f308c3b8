"""Is this image a radiograph at all? The check that runs before the pneumonia classifier's answer is believed.

A ResNet returns a confident probability for any input: a blank grey, white or black image comes out PNEUMONIA with
p = 1.0, which would make a collapsed generator look perfectly conditioned. `radiograph_problem` rejects inputs with
no image content (uniform, or a handful of grey levels); everything it passes is left to the classifier.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The label given to rejected inputs by the classify command and the evaluation's conditioning check.
NOT_A_RADIOGRAPH = "NOT_A_RADIOGRAPH"

#: Intensity standard deviation (on [0, 1]) below which an image is uniform. Real radiographs: 0.15-0.30.
MIN_INTENSITY_STD = 0.02
#: Distinct grey levels (of 256) below which an image is a test pattern or a mask, not a radiograph.
MIN_GREY_LEVELS = 16


def radiograph_problem(image: Any) -> str | None:
    """Why `image` (PIL image, array or tensor of one image) cannot be a radiograph, or None when it may be one."""
    from ..evaluation.image_quality import _unit

    if hasattr(image, "detach"):  # a torch tensor (1, H, W) or (H, W) in [0, 1]
        image = image.detach().float().cpu().numpy()
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[0] == 1:
        image = image[0]
    unit = _unit(image)
    std = float(unit.std())
    if std < MIN_INTENSITY_STD:
        return f"the image is blank or uniform (intensity std {std:.3f}, radiographs have 0.15-0.30)"
    levels = int(np.unique(np.round(unit * 255)).size)
    if levels < MIN_GREY_LEVELS:
        return f"the image has only {levels} grey levels (radiographs have hundreds)"
    return None
