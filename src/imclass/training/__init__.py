"""Training: linear probe on cached embeddings, fine-tuning, or a small CNN from scratch.

``train`` is imported on first use, so that reading :mod:`imclass.training.config` (the CLI does, for its
choices) does not pull in pandas and scikit-learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import TrainConfig, TrainResult

if TYPE_CHECKING:
    from .api import train

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str):
    if name == "train":
        from .api import train

        return train
    raise AttributeError(f"module 'imclass.training' has no attribute {name!r}")
