"""Post-training decisions fitted on validation logits: temperature, label thresholds, "unknown" threshold."""

from __future__ import annotations

import numpy as np

from ..evaluation.metrics import calibration
from ..features.head import logit_nll
from ..prediction import calibrated

#: ``probs(logits, temperature, multi_label)``: the calibrated probabilities ``predict`` uses.
probs = calibrated


def fit_temperature(logits: np.ndarray, y: np.ndarray, multi_label: bool = False, prior_sigma: float = 0.5) -> float:
    """Temperature ``T`` minimising validation NLL of ``softmax(logits / T)`` (sigmoid for multi-label).

    A weak Gaussian prior on ``log T`` (``prior_sigma``, weighted by 1/n) keeps small or perfectly
    separated validation sets from driving ``T`` to an extreme (NLL -> 0 as T -> 0 when nothing is wrong);
    with hundreds of images it has no visible effect.
    """
    from scipy.optimize import minimize_scalar

    z = logits.astype(np.float64)
    if len(z) == 0:
        return 1.0
    weight = 1.0 / (2.0 * prior_sigma**2 * len(z))
    res = minimize_scalar(lambda t: logit_nll(z / np.exp(t), y, multi_label) + weight * t * t,
                          bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def ece(p: np.ndarray, y: np.ndarray, multi_label: bool = False) -> float:
    """Expected calibration error (15 bins, as ``imclass evaluate`` reports it): top-1 confidence vs accuracy;
    multi-label: every label's probability vs whether the label is present."""
    if multi_label:
        conf, correct = p.ravel(), y.ravel()
    else:
        conf, correct = p.max(axis=1), p.argmax(axis=1) == y
    value = calibration(conf, correct)["ece"]
    return float("nan") if value is None else value


def label_thresholds(p: np.ndarray, y: np.ndarray, default: float = 0.5) -> list[float]:
    """Per-label decision thresholds maximising validation F1 (``default`` where a label has no positives)."""
    out = []
    grid = np.linspace(0.05, 0.95, 91)
    for j in range(p.shape[1]):
        pos = y[:, j] == 1
        if not pos.any():
            out.append(default)
            continue
        best_t, best_f = default, -1.0
        for t in grid:
            pred = p[:, j] >= t
            tp = float((pred & pos).sum())
            f1 = 2 * tp / (pred.sum() + pos.sum()) if (pred.sum() + pos.sum()) else 0.0
            if f1 > best_f + 1e-12 or (abs(f1 - best_f) <= 1e-12 and abs(t - 0.5) < abs(best_t - 0.5)):
                best_t, best_f = float(t), f1
        out.append(round(best_t, 4))
    return out


def unknown_threshold(p: np.ndarray, coverage: float) -> float:
    """Top-1 confidence below which an image is called ``unknown`` so that ``coverage`` of validation images
    (all from known classes) are still accepted.

    The threshold lies halfway between the last rejected and the first accepted confidence, so that the
    tiny numeric differences between runtimes (torch vs ONNX Runtime) do not flip images sitting on it.
    """
    if not 0.0 < coverage <= 1.0:
        raise ValueError("coverage must be in (0, 1]")
    conf = np.sort(p.max(axis=1)) if len(p) else p
    reject = int(np.floor((1.0 - coverage) * len(conf) + 1e-9))
    if len(conf) == 0 or reject == 0:
        return 0.0
    return float((conf[reject - 1] + conf[reject]) / 2)
