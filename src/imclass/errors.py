"""Exceptions raised by imclass. Each carries a message that says what to do."""

from __future__ import annotations


class ImclassError(Exception):
    """Base class: a problem the user can fix (bad argument, missing model, ...)."""


class ModelNotFoundError(ImclassError):
    """A model name or path could not be resolved or reached."""


class BundleError(ImclassError):
    """A model bundle is malformed, from a newer format, or does not match its weights."""


class ImageLoadError(ImclassError):
    """One image could not be read. Batch code turns it into an error row."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class OutputError(ImclassError):
    """The output file cannot be written or resumed."""
