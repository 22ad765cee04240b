"""Typed prediction results and the logits -> labels step shared by every backend."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .models.spec import UNKNOWN_LABEL, ModelSpec
from .numerics import sigmoid, softmax


@dataclass
class Prediction:
    """One image's result. ``error`` is set (and ``label`` is None) when the image could not be read.

    ``label`` is the top class, ``unknown`` when the model rejects the image, or, for multi-label
    models, the labels above their thresholds joined by ``;`` (possibly empty).
    """

    path: str
    label: str | None = None
    score: float | None = None
    topk: list[tuple[str, float]] = field(default_factory=list)
    labels: list[str] | None = None  # multi-label: every label above its threshold
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # more columns for the outputs, e.g. class_index, wnid

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "path": self.path,
            "label": self.label,
            "score": None if self.score is None else round(float(self.score), 6),
            "error": self.error,
            "topk": [{"label": lab, "score": round(float(s), 6)} for lab, s in self.topk],
        }
        if self.labels is not None:
            d["labels"] = self.labels
        d.update(self.extra)
        return d


def calibrated(logits: np.ndarray, temperature: float | None, multi_label: bool) -> np.ndarray:
    """Temperature scaling, then softmax (single-label) or sigmoid (multi-label)."""
    z = logits.astype(np.float64)
    if temperature:
        z = z / temperature
    return sigmoid(z) if multi_label else softmax(z)


def probabilities(logits: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Calibrated probabilities of a model: its temperature and task."""
    return calibrated(logits, spec.temperature, spec.task == "multi_label")


def decide(probs: np.ndarray, paths: list[str], spec: ModelSpec, top_k: int,
           reject_unknown: bool = True) -> list[Prediction]:
    """Turn a probability matrix into :class:`Prediction` rows."""
    k = max(1, min(top_k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    out = []
    labels = spec.labels
    for i, path in enumerate(paths):
        row = probs[i]
        top = [(labels[j], float(row[j])) for j in order[i]]
        if spec.task == "multi_label":
            thr = np.asarray(spec.label_thresholds or [0.5] * len(labels))
            chosen = [labels[j] for j in np.argsort(-row, kind="stable") if row[j] >= thr[j]]
            score = float(max((row[labels.index(c)] for c in chosen), default=top[0][1]))
            out.append(Prediction(path, ";".join(chosen), score, top, labels=chosen))
        else:
            label, score = top[0]
            if reject_unknown and spec.unknown_threshold is not None and score < spec.unknown_threshold:
                label = UNKNOWN_LABEL
            out.append(Prediction(path, label, score, top))
    return out
