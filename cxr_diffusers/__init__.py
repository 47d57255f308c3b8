"""cxr-diffusers."""
