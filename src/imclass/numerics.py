"""Overflow-safe softmax, sigmoid and KL divergence over rows: the one implementation of each."""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax of a 2-D array (shifted by the row maximum, so large logits do not overflow)."""
    x = x - x.max(axis=1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Element-wise logistic function, ``1 / (1 + e^-x)`` without overflow warnings for large ``|x|``."""
    return np.exp(-np.logaddexp(0.0, -x))


def kl_divergence(p: np.ndarray, q: np.ndarray, *, bernoulli: bool = False) -> np.ndarray:
    """Per-row KL(p || q) of probability rows; ``bernoulli``: each column is its own two-outcome distribution."""
    eps = 1e-12
    p, q = np.clip(p, eps, 1.0), np.clip(q, eps, 1.0)
    kl = p * (np.log(p) - np.log(q))
    if bernoulli:
        p1, q1 = np.clip(1.0 - p, eps, 1.0), np.clip(1.0 - q, eps, 1.0)
        kl = kl + p1 * (np.log(p1) - np.log(q1))
    return kl.sum(axis=1)
