"""cxr-diffusers: synthetic chest X-rays with Hugging Face diffusers. Not for clinical use."""

__version__ = "0.1.0"

from .configs import MODEL_CONFIGS, create_components, get_model_config
from .errors import CXRInputError, DataError, ModelLoadingError
from .models import CXRAutoencoderKL, CXRTextEncoder, CXRUNet2DConditionModel
from .pipelines import CXRPipeline, CXRPipelineOutput
from .provenance import NOT_FOR_CLINICAL_USE, read_provenance

__all__ = [
    "CXRAutoencoderKL",
    "CXRInputError",
    "CXRPipeline",
    "CXRPipelineOutput",
    "CXRTextEncoder",
    "CXRUNet2DConditionModel",
    "DataError",
    "MODEL_CONFIGS",
    "ModelLoadingError",
    "NOT_FOR_CLINICAL_USE",
    "create_components",
    "get_model_config",
    "read_provenance",
]
