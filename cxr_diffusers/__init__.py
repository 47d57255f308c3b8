"""cxr-diffusers: synthetic chest X-rays with Hugging Face diffusers. Not for clinical use.

The public names below are imported lazily (on first use), so that `import cxr_diffusers.data` or the CLI's `--help`
do not pay for importing torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

_EXPORTS = {
    "CXRAutoencoderKL": "models",
    "CXRPatchDiscriminator": "models",
    "CXRSuperResolutionModel": "models",
    "CXRTextEncoder": "models",
    "CXRUNet2DConditionModel": "models",
    "CXRPipeline": "pipelines",
    "CXRPipelineOutput": "pipelines",
    "MODEL_CONFIGS": "configs",
    "TINY_AUTOENCODER_CONFIG": "configs",
    "create_components": "configs",
    "get_model_config": "configs",
    "CXRInputError": "errors",
    "DataError": "errors",
    "ModelLoadingError": "errors",
    "SamplingError": "errors",
    "load_fast_pipeline": "fast",
    "NOT_FOR_CLINICAL_USE": "provenance",
    "read_provenance": "provenance",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cxr_diffusers' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover
    from .configs import MODEL_CONFIGS, TINY_AUTOENCODER_CONFIG, create_components, get_model_config
    from .errors import CXRInputError, DataError, ModelLoadingError, SamplingError
    from .fast import load_fast_pipeline
    from .models import (
        CXRAutoencoderKL,
        CXRPatchDiscriminator,
        CXRSuperResolutionModel,
        CXRTextEncoder,
        CXRUNet2DConditionModel,
    )
    from .pipelines import CXRPipeline, CXRPipelineOutput
    from .provenance import NOT_FOR_CLINICAL_USE, read_provenance
