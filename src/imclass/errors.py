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


class ParameterError(ImclassError, ValueError):
    """An argument of an API function is invalid: ``param`` names it, ``problem`` says what is wrong.

    ``problem`` may name other parameters in braces (``"needs {output}"``); :meth:`render` spells every
    name the way a face shows them (the CLI: ``--top-k``), ``str()`` keeps the Python names.
    """

    def __init__(self, param: str, problem: str):
        self.param = param
        self.problem = problem
        super().__init__(self.render(lambda name: name))

    def render(self, spell) -> str:
        """The message with each parameter name passed through ``spell(name) -> str``."""
        import re

        text = re.sub(r"\{(\w+)\}", lambda m: spell(m.group(1)), self.problem)
        return f"{spell(self.param)} {text}"
