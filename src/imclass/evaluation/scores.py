"""The classification scores imclass reports, in NumPy.

Each function computes what the scikit-learn function named in its docstring computes, with the same
definitions, tie handling and zero-division conventions (``tests/test_evaluate_metrics.py`` compares them on
random cases, ties and empty classes included). They exist because importing ``sklearn.metrics`` (SciPy's
statistics come with it) took 0.7-1.3 s: a third of a whole probe retrain from cached embeddings.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """``sklearn.metrics.confusion_matrix(y, pred, labels=range(k))``: rows true, columns predicted."""
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    return np.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def per_class(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 and support per class from a confusion matrix: ``precision_recall_fscore_support(
    ..., average=None, zero_division=0)``."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1)
    return (_divide(tp, predicted), _divide(tp, support.astype(np.float64)),
            _divide(2 * tp, predicted + support), support)


def binary_counts(y: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multi-label 0/1 matrices ``(N, L)`` -> true positives, predicted positives, true positives per label."""
    y = np.asarray(y).astype(bool)
    pred = np.asarray(pred).astype(bool)
    return ((y & pred).sum(axis=0).astype(np.float64), pred.sum(axis=0).astype(np.float64),
            y.sum(axis=0).astype(np.float64))


def prf(tp: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision, recall, F1 from counts (any shape), 0 where undefined (``zero_division=0``)."""
    tp, predicted, actual = (np.asarray(a, dtype=np.float64) for a in (tp, predicted, actual))
    return _divide(tp, predicted), _divide(tp, actual), _divide(2 * tp, predicted + actual)


def averaged(precision: np.ndarray, recall: np.ndarray, f1: np.ndarray, support: np.ndarray,
             average: str) -> tuple[float, float, float]:
    """``average="macro"`` (plain mean over classes) or ``"weighted"`` (by support; 0 without any)."""
    if average == "macro":
        return float(np.mean(precision)), float(np.mean(recall)), float(np.mean(f1))
    if average != "weighted":
        raise ValueError(f"average must be 'macro' or 'weighted', not {average!r}")
    total = float(np.sum(support))
    if total == 0:
        return 0.0, 0.0, 0.0
    w = np.asarray(support, dtype=np.float64) / total
    return float(w @ precision), float(w @ recall), float(w @ f1)


def balanced_accuracy(cm: np.ndarray) -> float:
    """``balanced_accuracy_score``: the mean recall over the classes that occur among the true labels."""
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else 0.0


def top_k_accuracy(y: np.ndarray, probs: np.ndarray, k: int) -> float:
    """``top_k_accuracy_score(y, probs, k=k, labels=range(C))`` (ties broken as scikit-learn breaks them)."""
    ranked = np.argsort(probs, axis=1, kind="mergesort")[:, ::-1][:, :k]
    return float((ranked == np.asarray(y)[:, None]).any(axis=1).mean())


def log_loss(y: np.ndarray, probs: np.ndarray) -> float:
    """``log_loss(y, probs, labels=range(C))``: probabilities clipped to ``[eps, 1 - eps]`` of their dtype."""
    p = np.asarray(probs)
    eps = np.finfo(p.dtype if np.issubdtype(p.dtype, np.floating) else np.float64).eps
    p = np.clip(p.astype(np.float64, copy=False), eps, 1 - eps)
    return float(-np.mean(np.log(p[np.arange(len(p)), np.asarray(y, dtype=np.int64)])))


def _ranked_counts(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True and false positives above each distinct score, highest score first (scikit-learn's
    ``_binary_clf_curve``)."""
    order = np.argsort(score, kind="mergesort")[::-1]
    s, t = np.asarray(score)[order], np.asarray(y, dtype=np.float64)[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), len(t) - 1]
    tps = np.cumsum(t)[ends]
    return tps, 1 + ends - tps


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """``average_precision_score`` for one binary label: the sum over thresholds of the recall gained times
    the precision there (no interpolation)."""
    tps, fps = _ranked_counts(y, score)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return float(max(0.0, np.sum(np.diff(np.r_[0.0, recall]) * precision)))


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """``roc_auc_score`` for one binary label with both classes present: the trapezoidal area under the ROC
    curve."""
    tps, fps = _ranked_counts(y, score)
    tpr = np.r_[0.0, tps] / tps[-1]
    fpr = np.r_[0.0, fps] / fps[-1]
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros(np.broadcast(a, b).shape, dtype=np.float64), where=b > 0)
