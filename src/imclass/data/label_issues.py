"""Likely label errors: out-of-fold probabilities from a linear probe on embeddings, ranked by cleanlab.

The probe is the training probe's head (:mod:`imclass.features.head`: standardised features, scikit-learn
``LogisticRegression``, one per label for multi-label data), evaluated out of fold with stratified, group-aware
K-fold (duplicate groups never straddle folds, so a copy cannot vouch for its own label).
K = min(5, smallest class size), at least 2.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from ..features.head import out_of_fold_logits
from ..prediction import calibrated
from .stratify import stratified_folds

MAX_FOLDS = 5
#: Inverse L2 strength times the feature dimension: C = PROBE_C_PER_DIM / D (0.002 for 1280 standardised
#: features, the best of 0.002-1 for out-of-fold accuracy and log-loss on flowers5); keeps the logit scale
#: independent of the backbone's width.
PROBE_C_PER_DIM = 2.5


@dataclass
class LabelCheck:
    """Per-row results of the label check (NaN / empty where a row was not checked)."""

    pred_probs: np.ndarray  # (N, C) out-of-fold probabilities
    quality: np.ndarray  # (N,) cleanlab label quality in [0, 1]; low = likely wrong
    issues: list[int] = field(default_factory=list)  # rows cleanlab flags, worst first
    folds: int = 0
    checked: int = 0
    accuracy: float | None = None  # out-of-fold probe accuracy (multi-label: exact-match ratio)
    c: float | None = None  # the probe's C
    notes: list[str] = field(default_factory=list)


def check_labels(vectors: np.ndarray, targets: np.ndarray, groups: np.ndarray, *, multi_label: bool,
                 n_classes: int, folds: int | None = None, seed: int = 0, c: float | None = None) -> LabelCheck:
    """Find likely label errors. ``targets``: class indices ``(N,)`` or a 0/1 matrix ``(N, C)``.

    ``c``: the probe's inverse regularisation strength (default ``PROBE_C_PER_DIM / D``).
    """
    n = len(vectors)
    res = LabelCheck(np.full((n, n_classes), np.nan), np.full(n, np.nan))
    usable = np.isfinite(vectors).all(axis=1) if n else np.zeros(0, bool)
    y = np.asarray(targets)
    if multi_label:
        per_class = y[usable].sum(axis=0)
        smallest = int(per_class[per_class > 0].min()) if (per_class > 0).any() else 0
    else:
        per_class = np.bincount(y[usable], minlength=n_classes)
        rare = np.flatnonzero((per_class > 0) & (per_class < 2))
        if len(rare):
            usable &= ~np.isin(y, rare)
            res.notes.append(f"{len(rare)} classes with a single image were not checked")
        present = per_class[per_class >= 2]
        smallest = int(present.min()) if len(present) else 0
        if len(present) < 2:
            res.notes.append("label check needs at least two classes with two or more images each")
            return res
    if smallest < 2 or usable.sum() < 4:
        res.notes.append("too few images per class for the label check")
        return res
    k = int(folds or min(MAX_FOLDS, smallest))
    k = max(2, min(k, smallest))
    rows = np.flatnonzero(usable)
    x, yy = vectors[rows], y[rows]
    if not multi_label:  # contiguous class indices for the classes present
        present_cls, yy = np.unique(yy, return_inverse=True)
    cv = stratified_folds(yy, groups[rows], k, seed=seed)
    if len(cv) < 2:
        res.notes.append("duplicate groups leave too few folds for the label check")
        return res
    res.c = float(c if c is not None else PROBE_C_PER_DIM / x.shape[1])
    logits = out_of_fold_logits(x, yy, cv, num_classes=yy.shape[1] if multi_label else len(present_cls),
                                multi_label=multi_label, c=res.c, seed=seed)
    probs = calibrated(logits, None, multi_label)
    res.folds, res.checked = len(cv), len(rows)
    if multi_label:
        from cleanlab.multilabel_classification import filter as ml_filter
        from cleanlab.multilabel_classification import rank as ml_rank

        given = [list(np.flatnonzero(r)) for r in yy]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranked = ml_filter.find_label_issues(labels=given, pred_probs=probs, n_jobs=1,
                                                 return_indices_ranked_by="self_confidence")
            quality = ml_rank.get_label_quality_scores(given, probs)
        res.pred_probs[rows] = probs
        res.accuracy = float(((probs >= 0.5) == (yy == 1)).all(axis=1).mean())
    else:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ranked = find_label_issues(labels=yy, pred_probs=probs, n_jobs=1,
                                       return_indices_ranked_by="self_confidence")
            quality = get_label_quality_scores(yy, probs)
        full = np.zeros((len(rows), n_classes))
        full[:, present_cls] = probs
        res.pred_probs[rows] = full
        res.accuracy = float((probs.argmax(axis=1) == yy).mean())
    res.quality[rows] = quality
    res.issues = [int(rows[i]) for i in ranked]
    return res
