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


def split_outputs(raw: np.ndarray, spec: ModelSpec) -> tuple[np.ndarray, np.ndarray | None]:
    """A network's output -> ``(logits, known_score)``: models with an open-set score
    (:mod:`imclass.models.open_set`) carry it as their last column; others have none (None)."""
    raw = np.asarray(raw)
    if spec.open_set and raw.ndim == 2 and raw.shape[1] == spec.num_classes + 1:
        return raw[:, :-1], raw[:, -1].astype(np.float64)
    return raw, None


def known_scores(probs: np.ndarray, known: np.ndarray | None, spec: ModelSpec) -> np.ndarray | None:
    """What ``unknown_threshold`` is compared with: the open-set score, or (single-label models without one)
    the top calibrated probability; None for multi-label models without one."""
    if known is not None:
        return known
    if spec.task == "multi_label" or probs.shape[0] == 0:
        return None if spec.task == "multi_label" else np.zeros(0)
    return probs.max(axis=1)


def probabilities(logits: np.ndarray, spec: ModelSpec) -> np.ndarray:
    """Calibrated probabilities of a model: its temperature and task."""
    return calibrated(logits, spec.temperature, spec.task == "multi_label")


def decide(probs: np.ndarray, paths: list[str], spec: ModelSpec, top_k: int,
           reject_unknown: bool = True, known: np.ndarray | None = None) -> list[Prediction]:
    """Turn a probability matrix (and the open-set ``known`` scores, when the model has them) into
    :class:`Prediction` rows. Rows carry ``known_score`` in ``extra`` when the model can say ``unknown``."""
    k = max(1, min(top_k, probs.shape[1]))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    out = []
    labels = spec.labels
    ks = known_scores(probs, known, spec)
    threshold = spec.unknown_threshold
    carry = ks is not None and (known is not None or threshold is not None)
    for i, path in enumerate(paths):
        row = probs[i]
        top = [(labels[j], float(row[j])) for j in order[i]]
        rejected = reject_unknown and threshold is not None and ks is not None and ks[i] < threshold
        if spec.task == "multi_label":
            thr = np.asarray(spec.label_thresholds or [0.5] * len(labels))
            chosen = [labels[j] for j in np.argsort(-row, kind="stable") if row[j] >= thr[j]]
            score = float(max((row[labels.index(c)] for c in chosen), default=top[0][1]))
            pred = (Prediction(path, UNKNOWN_LABEL, score, top, labels=[]) if rejected
                    else Prediction(path, ";".join(chosen), score, top, labels=chosen))
        else:
            label, score = top[0]
            pred = Prediction(path, UNKNOWN_LABEL if rejected else label, score, top)
        if carry:
            pred.extra["known_score"] = round(float(ks[i]), 6)
        out.append(pred)
    return out
