"""A regularised logistic-regression head on frozen embeddings (NumPy + SciPy's L-BFGS, scikit-learn's objective),
folded into one linear layer.

The feature standardisation is folded into the weights, so the head is a plain ``Linear(D, K)`` that
replaces the backbone's classifier: the trained model is a normal network, exportable and servable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import ParameterError

#: Inverse regularisation strengths tried; the one with the lowest validation log loss wins.
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass
class Head:
    """``logits = X @ weight.T + bias``; ``C`` the chosen regularisation; ``curve`` val loss per C."""

    weight: np.ndarray  # (K, D)
    bias: np.ndarray  # (K,)
    C: float
    curve: list[dict[str, float]] = field(default_factory=list)

    def logits(self, x: np.ndarray) -> np.ndarray:
        return x @ self.weight.T + self.bias


def fit_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None, y_val: np.ndarray | None, *,
             num_classes: int, multi_label: bool = False, balanced: bool = False,
             grid: tuple[float, ...] = C_GRID, seed: int = 0, scale: str = "feature") -> Head:
    """Fit the head, choosing ``C`` on the validation set (log loss); without one, ``C=0.1`` (or the only
    value of ``grid``).

    ``y`` are class indices (single-label) or a 0/1 matrix (multi-label). ``balanced`` weights classes
    inversely to their frequency (single-label) or positives vs negatives per label (multi-label).
    ``scale``: the features are centred, then divided by their standard deviation per dimension (``feature``)
    or by one overall deviation (``global``: better with a few labels per class, where per-dimension
    deviations are noise that the standardisation amplifies). ``seed`` is accepted for callers of earlier
    releases: the solver is deterministic.
    """
    if scale not in ("feature", "global"):
        raise ParameterError("scale", f"must be 'feature' or 'global', not {scale!r}")
    mean = x_train.mean(axis=0)
    if scale == "global":
        overall = float(np.sqrt(np.mean((x_train - mean) ** 2))) if len(x_train) else 0.0
        scale_v = np.full(x_train.shape[1], overall if overall > 1e-6 else 1.0)
    else:
        scale_v = x_train.std(axis=0)
        scale_v[scale_v < 1e-6] = 1.0
    xt = (x_train - mean) / scale_v
    xv = None if x_val is None or len(x_val) == 0 else (x_val - mean) / scale_v
    candidates = grid if xv is not None else ((grid[0],) if len(grid) == 1 else (0.1,))
    best: tuple[float, float, np.ndarray, np.ndarray] | None = None
    curve = []
    models: dict = {}  # warm starts: each C starts from the previous (smaller) C's solution
    for c in sorted(candidates):
        # One BLAS thread: these products are small and memory-bound; two threads on two busy cores were
        # 2-8x slower (neu_steel, 1,770 x 1,280: 0.75 s vs 1.3-5.9 s for the whole grid).
        with threadpool_limits(1):
            w, b = (_fit_multi if multi_label else _fit_single)(xt, y_train, c, num_classes, balanced, models)
        if xv is None:
            best = (0.0, c, w, b)
            break
        loss = logit_nll(xv @ w.T + b, y_val, multi_label)
        curve.append({"C": c, "val_log_loss": loss})
        if best is None or loss < best[0] - 1e-9:
            best = (loss, c, w, b)
    assert best is not None
    _, c, w, b = best
    # fold the standardisation in: w (x - m) / s + b == (w / s) x + (b - w . m / s)
    weight = w / scale_v
    bias = b - weight @ mean
    return Head(weight.astype(np.float32), bias.astype(np.float32), float(c), curve)


def out_of_fold_logits(x: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]], *,
                       num_classes: int, multi_label: bool, c: float, balanced: bool = False,
                       seed: int = 0) -> np.ndarray:
    """Logits for every row of ``x`` from heads (regularisation ``c``) fitted without that row's fold.

    ``folds``: ``(fit rows, held-out rows)`` pairs, e.g. from :func:`imclass.data.stratify.stratified_folds`
    (stratified, duplicate groups kept in one fold). Rows in no held-out part stay zero.
    """
    out = np.zeros((len(x), num_classes), dtype=np.float32)
    for fit_idx, held in folds:
        head = fit_head(x[fit_idx], y[fit_idx], None, None, num_classes=num_classes, multi_label=multi_label,
                        balanced=balanced, grid=(c,), seed=seed)
        out[held] = head.logits(x[held])
    return out


def _fit_single(x: np.ndarray, y: np.ndarray, c: float, k: int, balanced: bool, models: dict):
    present = np.unique(y)
    w = np.zeros((k, x.shape[1]))
    b = np.full(k, -30.0)  # classes absent from training can never win
    if len(present) == 1:
        b[present[0]] = 0.0
        return w, b
    if len(present) == 2:  # one row, p(second) = sigmoid(z); softmax([0, z]) == that (scikit-learn's binary model)
        coef = logistic_regression(x, (y == present[1]).astype(np.float64), c, _weights(y, balanced),
                                   warm=models.get("all"))
        models["all"] = coef
        w[present[1]], b[present[1]] = coef[0, :-1], coef[0, -1]
        b[present[0]] = 0.0
    else:
        onehot = (y[:, None] == present[None, :]).astype(np.float64)
        coef = logistic_regression(x, onehot, c, _weights(y, balanced), warm=models.get("all"))
        models["all"] = coef
        w[present], b[present] = coef[:, :-1], coef[:, -1]
    return w, b


def _fit_multi(x: np.ndarray, y: np.ndarray, c: float, k: int, balanced: bool, models: dict):
    w = np.zeros((k, x.shape[1]))
    b = np.zeros(k)
    for j in range(k):
        col = y[:, j]
        pos = col.mean()
        if pos in (0.0, 1.0):  # the label is always or never on in training: a constant head
            b[j] = 30.0 if pos == 1.0 else -30.0
            continue
        coef = logistic_regression(x, col.astype(np.float64), c, _weights(col, balanced), warm=models.get(j))
        models[j] = coef
        w[j], b[j] = coef[0, :-1], coef[0, -1]
    return w, b


def _weights(y: np.ndarray, balanced: bool) -> np.ndarray | None:
    """scikit-learn's ``class_weight="balanced"`` as sample weights: ``n / (classes * count of the class)``."""
    if not balanced:
        return None
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    return (len(y) / (len(classes) * counts.astype(np.float64)))[inverse]


def logistic_regression(x: np.ndarray, target: np.ndarray, c: float, sample_weight: np.ndarray | None = None, *,
                        warm: np.ndarray | None = None, tol: float = 1e-3, max_iter: int = 2000) -> np.ndarray:
    """L2-regularised logistic regression by SciPy's L-BFGS-B; returns ``(K, D + 1)`` (weights, then intercept).

    ``target``: ``(N,)`` 0/1 (binary: one row, sigmoid) or ``(N, K)`` one-hot (multinomial: softmax over K rows).
    The objective, its scaling and the solver's settings are scikit-learn's ``LogisticRegression(C=c,
    solver="lbfgs", tol=tol)``: ``sum_i s_i loss_i / sum(s) + ||W||^2 / (2 c sum(s))``, the intercept not
    penalised, starting from zeros (or ``warm``, the previous solution, as its ``warm_start``), so the solutions
    agree (``tests/test_probe.py``) without importing scikit-learn (whose import, SciPy's statistics included,
    was a third of a probe retrain's whole process).
    """
    from scipy.optimize import minimize

    binary = target.ndim == 1
    n, d = x.shape
    k = 1 if binary else target.shape[1]
    sw = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    total = float(sw.sum())
    l2 = 1.0 / (c * total)
    scale = sw / total

    def loss_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        coef = flat.reshape(k, d + 1)
        z = x @ coef[:, :-1].T + coef[:, -1]
        if binary:
            z = z[:, 0]
            loss = float(scale @ (np.logaddexp(0.0, z) - target * z))
            err = (scale * (0.5 * (1.0 + np.tanh(0.5 * z)) - target))[:, None]  # sigmoid, overflow-free
        else:
            z = z - z.max(axis=1, keepdims=True)
            logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
            loss = float(-(scale @ (target * logp).sum(axis=1)))
            err = scale[:, None] * (np.exp(logp) - target)
        grad = np.empty((k, d + 1))
        grad[:, :-1] = err.T @ x + l2 * coef[:, :-1]
        grad[:, -1] = err.sum(axis=0)
        return loss + 0.5 * l2 * float((coef[:, :-1] ** 2).sum()), grad.ravel()

    w0 = np.zeros(k * (d + 1)) if warm is None or warm.size != k * (d + 1) else warm.ravel()
    res = minimize(loss_grad, w0, method="L-BFGS-B", jac=True,
                   options={"maxiter": max_iter, "maxls": 50, "gtol": tol, "ftol": 64 * np.finfo(float).eps})
    return res.x.reshape(k, d + 1)


def logit_nll(logits: np.ndarray, y: np.ndarray, multi_label: bool) -> float:
    """Mean negative log-likelihood straight from logits: cross-entropy (``y`` class indices) or binary
    cross-entropy over labels and images (``y`` 0/1 matrix); numerically stable."""
    z = logits.astype(np.float64)
    if multi_label:
        return float(np.mean(np.logaddexp(0, z) - y * z))
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean())
