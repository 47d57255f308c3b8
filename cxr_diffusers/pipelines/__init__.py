"""Diffusion pipelines of cxr-diffusers."""

from .pipeline_cxr import CXRPipeline, CXRPipelineOutput

__all__ = ["CXRPipeline", "CXRPipelineOutput"]
