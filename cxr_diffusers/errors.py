"""Errors raised for bad user input.

Every check on user input raises a subclass of `CXRInputError` with one sentence that says what was wrong and how
to fix it. They subclass `ValueError` so that code written for the standard library's conventions still catches them.
"""


class CXRInputError(ValueError):
    """Invalid input given by the user (argument, file, image, prompt, configuration)."""


class ModelLoadingError(CXRInputError):
    """A model folder or Hub id is missing, incomplete or corrupt."""


class DataError(CXRInputError):
    """A dataset root, CSV file, column or image is missing or unreadable."""


class SamplingError(CXRInputError):
    """Sampling diverged (non-finite latents), usually because of the settings it was asked for."""
