"""Training: linear probe on cached embeddings, fine-tuning, or a small CNN from scratch.

``train`` is imported on first use, so that reading :mod:`imclass.training.config` (the CLI does, for its
choices) does not pull in pandas and scikit-learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import TrainConfig, TrainResult

if TYPE_CHECKING:
    from .api import find_lr, train

__all__ = ["TrainConfig", "TrainResult", "find_lr", "train"]


def __getattr__(name: str):
    if name in ("train", "find_lr"):
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'imclass.training' has no attribute {name!r}")
