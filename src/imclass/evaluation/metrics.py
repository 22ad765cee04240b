"""Evaluation metrics as pure functions: (targets, probabilities, class names, task) -> a plain, JSON-able dict.

Rows whose probabilities are not finite (unreadable images) are left out and counted in ``n_errors``.

Keys common to both tasks: ``task``, ``classes``, ``n_images`` (rows given), ``n_evaluated``, ``n_errors``.

Single-label (``task="single_label"``):

- ``accuracy``, ``balanced_accuracy``, ``per_class`` ({class: precision, recall, f1, support}),
  ``macro_avg`` / ``weighted_avg`` (precision, recall, f1, support), ``confusion_matrix`` (``labels``,
  ``counts``, ``normalized``: rows sum to 1) and ``most_confused`` ([{true, predicted, count, rate}]) are
  computed on the *accepted* images: with an ``unknown_threshold``, images whose top probability is below
  it are rejected and left out of them.
- ``top_k_accuracy`` ({"1": ..., "3": ..., "5": ...}; k only when k < number of classes, plus k=1),
  ``confidence`` (mean top probability: ``mean``, ``correct``, ``wrong``), ``log_loss`` and ``calibration``
  (``ece``, ``n_bins``, ``bins``: [{lower, upper, count, confidence, accuracy}], the reliability diagram)
  use every evaluated image and the model's top class, threshold ignored.
- ``rejection``: ``None`` without a threshold, else ``threshold``, ``rejected``, ``rejected_rate``,
  ``coverage`` (accepted fraction), ``accuracy_on_accepted`` (= ``accuracy``), ``accuracy_without_rejection``
  and ``rejected_per_class`` ({true class: count}).

Multi-label (``task="multi_label"``), decisions ``probability >= threshold`` per label:

- ``thresholds`` (one per label), ``hamming_loss``, ``subset_accuracy``, ``per_class`` ({label: precision,
  recall, f1, support, average_precision, roc_auc}), ``micro_avg`` / ``macro_avg`` (precision, recall, f1),
  ``micro_f1``, ``macro_f1``, ``mAP`` (macro average precision over labels with a positive example),
  ``roc_auc_macro`` (over labels with both classes present; ``None`` when there is none),
  ``roc_auc_skipped`` (labels left out of it), ``bce`` (mean binary cross-entropy) and ``label_cardinality``
  (mean labels per image, ``true`` and ``predicted``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import scores

SINGLE_LABEL, MULTI_LABEL = "single_label", "multi_label"
TOP_K = (1, 3, 5)
ECE_BINS = 15
MOST_CONFUSED = 10
_EPS = 1e-12


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str], task: str = SINGLE_LABEL, *,
                    unknown_threshold: float | None = None,
                    thresholds: float | list[float] | np.ndarray | None = None,
                    known: np.ndarray | None = None) -> dict[str, Any]:
    """Every metric for ``task``; see the module docstring for the keys. ``known``: the model's
    ``known_score`` per image, compared with ``unknown_threshold`` (default: the top probability)."""
    if task == SINGLE_LABEL:
        return single_label_metrics(y_true, probs, classes, unknown_threshold=unknown_threshold, known=known)
    if task == MULTI_LABEL:
        out = multi_label_metrics(y_true, probs, classes, thresholds=thresholds)
        if known is not None and unknown_threshold is not None:
            out["rejection"] = _multi_label_rejection(probs, known, unknown_threshold, thresholds, len(classes))
        return out
    raise ValueError(f"unknown task {task!r}; use {SINGLE_LABEL!r} or {MULTI_LABEL!r}")


def valid_rows(probs: np.ndarray) -> np.ndarray:
    """Boolean mask of rows with finite probabilities (unreadable images are NaN rows)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2:
        raise ValueError(f"probabilities must be 2-D (images, classes), got shape {probs.shape}")
    return np.isfinite(probs).all(axis=1)


def _check(y_true: np.ndarray, probs: np.ndarray, classes: list[str], multi: bool):
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    ok = valid_rows(p)
    if p.shape[1] != len(classes):
        raise ValueError(f"{p.shape[1]} probability columns for {len(classes)} classes")
    if len(y) != len(p):
        raise ValueError(f"{len(y)} targets for {len(p)} probability rows")
    if multi and (y.ndim != 2 or y.shape[1] != len(classes)):
        raise ValueError(f"multi-label targets must be (images, {len(classes)}), got {y.shape}")
    if not multi and y.ndim != 1:
        raise ValueError(f"single-label targets must be class indices (images,), got {y.shape}")
    base = {"task": MULTI_LABEL if multi else SINGLE_LABEL, "classes": list(classes), "n_images": len(p),
            "n_evaluated": int(ok.sum()), "n_errors": int((~ok).sum())}
    return y[ok].astype(np.int64), p[ok], base


def level_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> list[dict[str, Any]]:
    """Hierarchical labels (paths such as ``sports/dance/ballet``): the accuracy at each depth, the true and the
    top-scoring class both cut to that many levels (a shorter label counts as itself)."""
    y, p, _ = _check(y_true, probs, classes, False)
    depth = max((c.count("/") + 1 for c in classes), default=1)
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, dtype=np.int64)
    out = []
    for d in range(1, depth + 1):
        cut = np.array(["/".join(c.split("/")[:d]) for c in classes], dtype=object)
        correct = cut[y] == cut[pred]
        out.append({"level": d, "accuracy": _mean(correct.astype(np.float64)), "n": int(len(correct))})
    return out


# ---- single-label ------------------------------------------------------------------------------------

def single_label_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str], *,
                         unknown_threshold: float | None = None, n_bins: int = ECE_BINS,
                         known: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics for one label per image; ``y_true``: class indices ``(N,)``, ``probs``: ``(N, C)``.
    ``known``: the model's ``known_score`` per image (rejection compares it with ``unknown_threshold``;
    default: the top probability)."""
    if known is not None:
        known = np.asarray(known, dtype=np.float64)[valid_rows(probs)]
    y, p, out = _check(y_true, probs, classes, multi=False)
    n_cls = len(classes)
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, dtype=np.int64)
    conf = p.max(axis=1) if len(p) else np.zeros(0)
    correct = pred == y
    accepted = (np.ones(len(p), dtype=bool) if unknown_threshold is None
                else (conf if known is None else known) >= unknown_threshold)

    out.update(_class_metrics(y[accepted], pred[accepted], n_cls, classes))
    top_k: dict[str, float | None] = {}
    for k in TOP_K:
        if k == 1:
            top_k["1"] = _f(np.mean(y == pred)) if len(y) else None
        elif k < n_cls:
            top_k[str(k)] = _f(scores.top_k_accuracy(y, p, k)) if len(y) else None
    out["top_k_accuracy"] = top_k
    out["confidence"] = {"mean": _mean(conf), "correct": _mean(conf[correct]), "wrong": _mean(conf[~correct])}
    if len(y):
        norm = p / np.clip(p.sum(axis=1, keepdims=True), _EPS, None)
        out["log_loss"] = _f(scores.log_loss(y, norm))
    else:
        out["log_loss"] = None
    out["calibration"] = calibration(conf, correct, n_bins)
    if unknown_threshold is None:
        out["rejection"] = None
    else:
        rejected = ~accepted
        out["rejection"] = {
            "threshold": float(unknown_threshold),
            "score": "top probability" if known is None else "known_score",
            "rejected": int(rejected.sum()),
            "rejected_rate": _ratio(rejected.sum(), len(y)),
            "coverage": _ratio(accepted.sum(), len(y)),
            "accuracy_on_accepted": out["accuracy"],
            "accuracy_without_rejection": top_k["1"],
            "rejected_per_class": {classes[c]: int(n) for c, n in
                                   zip(*np.unique(y[rejected], return_counts=True))},
        }
    return out


def _multi_label_rejection(probs: np.ndarray, known: np.ndarray, threshold: float,
                           thresholds: float | list[float] | np.ndarray | None, n_labels: int) -> dict[str, Any]:
    """Multi-label: ``unknown`` (the known score is below the threshold) and ``no label`` (no label above
    its threshold) are told apart and both counted."""
    ok = valid_rows(probs)
    p, k = np.asarray(probs, dtype=np.float64)[ok], np.asarray(known, dtype=np.float64)[ok]
    thr = np.broadcast_to(np.asarray(0.5 if thresholds is None else thresholds, dtype=np.float64), (n_labels,))
    unknown = k < threshold
    none = ~unknown & ~(p >= thr).any(axis=1)
    return {"threshold": float(threshold), "score": "known_score", "unknown": int(unknown.sum()),
            "no_label": int(none.sum()), "coverage": _ratio((~unknown).sum(), len(p))}


def _class_metrics(y: np.ndarray, pred: np.ndarray, n_cls: int, classes: list[str]) -> dict[str, Any]:
    cm = scores.confusion_matrix(y, pred, n_cls)
    out: dict[str, Any] = {}
    if len(y):
        out["accuracy"] = _f(np.mean(y == pred))
        out["balanced_accuracy"] = _f(scores.balanced_accuracy(cm))
    else:
        out["accuracy"] = out["balanced_accuracy"] = None
    prec, rec, f1, sup = scores.per_class(cm)  # nothing accepted (or nothing readable): zeros, zero support
    out["per_class"] = {c: {"precision": _f(prec[i]), "recall": _f(rec[i]), "f1": _f(f1[i]), "support": int(sup[i])}
                        for i, c in enumerate(classes)}
    for avg in ("macro", "weighted"):
        p_, r_, f_ = scores.averaged(prec, rec, f1, sup, avg) if len(y) else (None, None, None)
        out[f"{avg}_avg"] = {"precision": _f(p_), "recall": _f(r_), "f1": _f(f_), "support": len(y)}
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    out["confusion_matrix"] = {"labels": list(classes), "counts": cm.astype(int).tolist(),
                               "normalized": np.round(norm, 6).tolist()}
    out["most_confused"] = most_confused(cm, classes)
    return out


def most_confused(cm: np.ndarray, classes: list[str], limit: int = MOST_CONFUSED) -> list[dict[str, Any]]:
    """Off-diagonal cells of a confusion matrix, largest first: ``[{true, predicted, count, rate}]``."""
    cm = np.asarray(cm)
    rows = cm.sum(axis=1)
    cells = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    cells.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [{"true": classes[i], "predicted": classes[j], "count": n, "rate": _ratio(n, rows[i])}
            for n, i, j in cells[:limit]]


def calibration(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """Expected calibration error over ``n_bins`` equal-width confidence bins, with the reliability diagram.

    Bin ``b`` holds confidences in ``(lower, upper]`` (the first bin includes 0).
    """
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for b in range(n_bins):
        m = idx == b
        n = int(m.sum())
        c = float(conf[m].mean()) if n else None
        a = float(hit[m].mean()) if n else None
        if n:
            ece += n / len(conf) * abs(a - c)
        bins.append({"lower": _f(edges[b]), "upper": _f(edges[b + 1]), "count": n,
                     "confidence": _f(c), "accuracy": _f(a)})
    return {"ece": _f(ece) if len(conf) else None, "n_bins": n_bins, "bins": bins}


# ---- multi-label -------------------------------------------------------------------------------------

def label_thresholds(thresholds: float | list[float] | np.ndarray | None, n: int) -> np.ndarray:
    """One decision threshold per label (default 0.5)."""
    if thresholds is None:
        return np.full(n, 0.5)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.ndim == 0:
        return np.full(n, float(t))
    if t.shape != (n,):
        raise ValueError(f"{t.size} thresholds for {n} labels")
    return t


def multi_label_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str], *,
                        thresholds: float | list[float] | np.ndarray | None = None) -> dict[str, Any]:
    """Metrics for any number of labels per image; ``y_true``: 0/1 ``(N, C)``, ``probs``: ``(N, C)``."""
    y, p, out = _check(y_true, probs, classes, multi=True)
    thr = label_thresholds(thresholds, len(classes))
    pred = (p >= thr).astype(np.int64)
    out["thresholds"] = [_f(t) for t in thr]
    n = len(y)
    out["hamming_loss"] = _f(np.mean(y != pred)) if n else None
    out["subset_accuracy"] = _f(np.mean((y == pred).all(axis=1))) if n else None
    tp, predicted, sup = scores.binary_counts(y, pred)
    prec, rec, f1 = scores.prf(tp, predicted, sup)
    per: dict[str, dict[str, Any]] = {}
    aps, aucs, skipped = [], [], []
    for i, c in enumerate(classes):
        pos = int(y[:, i].sum())
        ap = _f(scores.average_precision(y[:, i], p[:, i])) if pos > 0 else None
        auc = _f(scores.roc_auc(y[:, i], p[:, i])) if 0 < pos < n else None
        if ap is not None:
            aps.append(ap)
        if auc is None:
            skipped.append(c)
        else:
            aucs.append(auc)
        per[c] = {"precision": _f(prec[i]), "recall": _f(rec[i]), "f1": _f(f1[i]), "support": int(sup[i]),
                  "average_precision": ap, "roc_auc": auc}
    out["per_class"] = per
    for avg in ("micro", "macro"):
        if not n:
            p_ = r_ = f_ = None
        elif avg == "micro":
            p_, r_, f_ = (float(v) for v in scores.prf(tp.sum(), predicted.sum(), sup.sum()))
        else:
            p_, r_, f_ = float(np.mean(prec)), float(np.mean(rec)), float(np.mean(f1))
        out[f"{avg}_avg"] = {"precision": _f(p_), "recall": _f(r_), "f1": _f(f_)}
    out["micro_f1"] = out["micro_avg"]["f1"]
    out["macro_f1"] = out["macro_avg"]["f1"]
    out["mAP"] = _f(np.mean(aps)) if aps else None
    out["roc_auc_macro"] = _f(np.mean(aucs)) if aucs else None
    out["roc_auc_skipped"] = skipped
    out["bce"] = _f(bce(y, p).mean()) if n else None
    out["label_cardinality"] = {"true": _mean(y.sum(axis=1)), "predicted": _mean(pred.sum(axis=1))}
    return out


def bce(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Binary cross-entropy per image, summed over labels ``(N,)``."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(y_true, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log1p(-p)).sum(axis=1)


# ---- per image ---------------------------------------------------------------------------------------

def per_image_loss(y_true: np.ndarray, probs: np.ndarray, task: str = SINGLE_LABEL) -> np.ndarray:
    """Loss of each image: cross-entropy (single-label) or summed BCE (multi-label); NaN for error rows."""
    p = np.asarray(probs, dtype=np.float64)
    ok = valid_rows(p)
    loss = np.full(len(p), np.nan)
    if not ok.any():
        return loss
    y = np.asarray(y_true)[ok]
    if task == MULTI_LABEL:
        loss[ok] = bce(y, p[ok])
    else:
        q = p[ok] / np.clip(p[ok].sum(axis=1, keepdims=True), _EPS, None)
        loss[ok] = -np.log(np.clip(q[np.arange(len(y)), y.astype(np.int64)], 1e-15, None))
    return loss


def top_losses(y_true: np.ndarray, probs: np.ndarray, task: str = SINGLE_LABEL, k: int | None = 16, *,
               thresholds: float | list[float] | np.ndarray | None = None, only_wrong: bool = True) -> np.ndarray:
    """Indices of the most confidently wrong images, highest loss first.

    Single-label: cross-entropy of the true class; multi-label: BCE summed over labels. With ``only_wrong``
    an image counts only when its decision is wrong (top class differs; predicted label set differs).
    Error rows (NaN) are never returned.
    """
    p = np.asarray(probs, dtype=np.float64)
    loss = per_image_loss(y_true, p, task)
    keep = np.isfinite(loss)
    if only_wrong and keep.any():
        y = np.asarray(y_true)
        wrong = np.zeros(len(p), dtype=bool)
        if task == MULTI_LABEL:
            thr = label_thresholds(thresholds, p.shape[1])
            wrong[keep] = ((p[keep] >= thr).astype(np.int64) != y[keep]).any(axis=1)
        else:
            wrong[keep] = p[keep].argmax(axis=1) != y[keep]
        keep &= wrong
    idx = np.flatnonzero(keep)
    order = idx[np.argsort(-loss[idx], kind="stable")]
    return order if k is None else order[:k]


# ---- helpers -----------------------------------------------------------------------------------------

def _f(x) -> float | None:
    return None if x is None else round(float(x), 6)


def _mean(x: np.ndarray) -> float | None:
    return _f(np.mean(x)) if len(x) else None


def _ratio(a, b) -> float | None:
    return _f(a / b) if b else None


def headline(metrics: dict[str, Any]) -> dict[str, float | None]:
    """The few numbers shown on cards and in comparisons (flat ``{name: value}``)."""
    m = metrics
    if m.get("task") == MULTI_LABEL:
        return {"subset_accuracy": m.get("subset_accuracy"), "hamming_loss": m.get("hamming_loss"),
                "micro_f1": m.get("micro_f1"), "macro_f1": m.get("macro_f1"), "mAP": m.get("mAP"),
                "roc_auc_macro": m.get("roc_auc_macro"), "n_evaluated": m.get("n_evaluated"),
                "n_errors": m.get("n_errors")}
    out = {"accuracy": m.get("accuracy")}
    if m.get("rejection"):  # accuracy is on the accepted images: show how many, and the figure on all of them
        out["coverage"] = m["rejection"]["coverage"]
        out["accuracy_all_images"] = m["rejection"]["accuracy_without_rejection"]
    out.update({"balanced_accuracy": m.get("balanced_accuracy"), "macro_f1": (m.get("macro_avg") or {}).get("f1")})
    for k, v in (m.get("top_k_accuracy") or {}).items():
        if k != "1":
            out[f"top{k}_accuracy"] = v
    out["log_loss"] = m.get("log_loss")
    out["ece"] = (m.get("calibration") or {}).get("ece")
    out["n_evaluated"] = m.get("n_evaluated")
    out["n_errors"] = m.get("n_errors")
    return out
