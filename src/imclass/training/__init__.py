"""Training: linear probe on cached embeddings, fine-tuning, or a small CNN from scratch."""

from .api import train
from .config import TrainConfig, TrainResult

__all__ = ["TrainConfig", "TrainResult", "train"]
