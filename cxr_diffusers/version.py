"""The package version, in a module of its own so that code shipped with an exported pipeline can read it."""

__version__ = "0.1.0"
