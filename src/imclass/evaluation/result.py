"""What an evaluation produced (:class:`EvalResult`) and the files it writes (metrics JSON, predictions CSV)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import fileio
from .metrics import headline


@dataclass
class EvalResult:
    """What :func:`evaluate` measured.

    ``table``: one row per image (``path``, ``true``, ``predicted``, ``confidence``, ``correct``, ``error``,
    ``loss``; single-label also ``rejected``). ``probabilities``: ``(N, classes)`` in dataset class order,
    NaN rows for unreadable images. ``files``: what was written (``report``, ``metrics``, ``predictions``).
    """

    metrics: dict[str, Any]
    table: pd.DataFrame
    probabilities: np.ndarray
    targets: np.ndarray
    classes: list[str]
    task: str
    model: str
    files: dict[str, str] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return int(self.metrics.get("n_errors", 0))

    def headline(self) -> dict[str, float | None]:
        return headline(self.metrics)


def write_json(metrics: dict[str, Any], path: str | os.PathLike) -> Path:
    """``metrics.json`` (atomic; NumPy values as plain numbers)."""
    return fileio.write_json(path, metrics)


def write_predictions(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """``path,true,predicted,confidence,correct,error`` (multi-label label sets ``;``-joined)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    table[["path", "true", "predicted", "confidence", "correct", "error"]].to_csv(out, index=False)
    return out
