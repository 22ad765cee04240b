"""What a training mode hands back to :func:`imclass.train`: the network and its held-out logits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..models.spec import ModelSpec
from ..preprocess import Preprocess


@dataclass
class Trained:
    model: Any  # torch module: backbone + head, eval mode, on CPU
    architecture: dict[str, Any]
    preprocess: Preprocess
    base: ModelSpec | None  # the backbone's spec (provenance); None when trained from scratch
    val_logits: np.ndarray
    val_index: np.ndarray  # rows of the dataset table the val logits belong to
    test_logits: np.ndarray
    test_index: np.ndarray
    # extra held-out logits for calibration and thresholds (probe: out-of-fold on train when val is small)
    calib_logits: np.ndarray | None = None
    calib_index: np.ndarray | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    images: int = 0
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
