"""Model classes of cxr-diffusers, one architecture per file."""

from .autoencoder_cxr import CXRAutoencoderKL, CXRAutoencoderKLOutput
from .discriminator_cxr import CXRPatchDiscriminator
from .super_resolution_cxr import CXRSuperResolutionModel, CXRSuperResolutionOutput
from .text_encoder_cxr import BIOBERT_ID, CXRTextEncoder, CXRTextEncoderOutput, offline_bert_path
from .unet_cxr import CXRUNet2DConditionModel

__all__ = [
    "BIOBERT_ID",
    "CXRAutoencoderKL",
    "CXRAutoencoderKLOutput",
    "CXRPatchDiscriminator",
    "CXRSuperResolutionModel",
    "CXRSuperResolutionOutput",
    "CXRTextEncoder",
    "CXRTextEncoderOutput",
    "CXRUNet2DConditionModel",
    "offline_bert_path",
]
