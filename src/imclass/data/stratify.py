"""Iterative stratification (Sechidis, Tsoumakas & Vlahavas, 2011) over groups of rows.

Works for single-label (one-hot) and multi-label targets alike; a unit is a group of rows that must stay
together (e.g. duplicates), described by its per-class label counts and its size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def iterative_stratification(
    counts: np.ndarray,
    sizes: np.ndarray,
    fractions: Sequence[float],
    *,
    rng: np.random.Generator,
    need_labels: np.ndarray | None = None,
    need_sizes: np.ndarray | None = None,
) -> np.ndarray:
    """Assign each unit to one of ``len(fractions)`` parts so that every class is spread as ``fractions`` says.

    ``counts`` ``(U, C)``: label counts per unit; ``sizes`` ``(U,)``: rows per unit. ``need_labels``
    ``(S, C)`` and ``need_sizes`` ``(S,)`` override the targets (default: ``fractions`` of the totals), e.g.
    to top up parts that already hold rows. Returns the part index per unit.

    The rarest class (fewest unassigned examples) is handled first; each of its units goes to the part that
    most needs that class, ties broken by overall need, then at random (reproducible through ``rng``).
    """
    counts = np.asarray(counts, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    frac = np.asarray(fractions, dtype=np.float64)
    n_units, _ = counts.shape
    need_l = frac[:, None] * counts.sum(axis=0)[None, :] if need_labels is None else need_labels.astype(np.float64)
    need_t = frac * sizes.sum() if need_sizes is None else need_sizes.astype(np.float64)
    need_l, need_t = need_l.copy(), need_t.copy()
    part = np.full(n_units, -1, dtype=np.int64)
    order = rng.permutation(n_units)
    left = np.ones(n_units, dtype=bool)
    allowed = frac > 0

    def choose(scores: np.ndarray) -> int:
        cand = np.flatnonzero(allowed & (scores == scores[allowed].max()))
        if len(cand) > 1:
            overall = need_t[cand]
            cand = cand[overall == overall.max()]
        return int(cand[0] if len(cand) == 1 else rng.choice(cand))

    def assign(u: int, s: int) -> None:
        part[u] = s
        left[u] = False
        need_l[s] -= counts[u]
        need_t[s] -= sizes[u]

    while left.any():
        remaining = counts[left].sum(axis=0)
        present = np.flatnonzero(remaining > 0)
        if len(present) == 0:  # units without labels: by overall need only
            for u in order[left[order]]:
                assign(int(u), choose(need_t))
            break
        rarest = present[remaining[present] == remaining[present].min()]
        label = int(rarest[0] if len(rarest) == 1 else rng.choice(rarest))
        for u in order:
            if left[u] and counts[u, label] > 0:
                assign(int(u), choose(need_l[:, label]))
    return part


def stratified_folds(targets: np.ndarray, groups: np.ndarray, k: int, *, seed: int = 0
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, test) index pairs: groups never straddle folds; classes (multi-hot too) spread evenly."""
    y = np.asarray(targets)
    if y.ndim == 1:
        y = np.eye(int(y.max()) + 1, dtype=np.int64)[y]
    _, unit = np.unique(groups, return_inverse=True)
    n_units = int(unit.max()) + 1 if len(unit) else 0
    counts = np.zeros((n_units, y.shape[1]))
    np.add.at(counts, unit, y)
    sizes = np.bincount(unit, minlength=n_units)
    fold_of_unit = iterative_stratification(counts, sizes, [1.0 / k] * k, rng=np.random.default_rng(seed))
    fold = fold_of_unit[unit]
    idx = np.arange(len(y))
    return [(idx[fold != f], idx[fold == f]) for f in range(k) if (fold == f).any()]
