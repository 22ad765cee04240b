"""Off-domain images: far from every other image in embedding space.

Score: mean cosine distance (1 - cosine similarity of the raw embeddings) to the ``k`` nearest *distinct*
contents (exact copies count once, so a planted placeholder repeated a few times is still an outlier).
Flagged when the score exceeds ``Q3 + factor * IQR`` of all scores (factor 2 by default: between Tukey's
outer fence, 3, and inner fence, 1.5; on the real sets it flags a planted "image not found" picture and
at most ~2% of real photos).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .neighbours import knn_cosine, unit_rows

K = 10
FACTOR = 2.0


@dataclass
class OutlierScores:
    scores: np.ndarray  # (N,) NaN where no embedding
    threshold: float  # NaN when too few images to judge
    flagged: list[int]  # rows over the threshold, most distant first
    k: int


def outlier_scores(vectors: np.ndarray, shas: list[str | None], *, k: int = K, factor: float = FACTOR) -> OutlierScores:
    """kNN-distance outlier scores per row (rows with one content share a score)."""
    n = len(vectors)
    scores = np.full(n, np.nan)
    ok = np.isfinite(vectors).all(axis=1) if n else np.zeros(0, bool)
    rep_of: dict[str, int] = {}
    reps: list[int] = []
    for i in np.flatnonzero(ok):
        key = shas[i] or f"row{i}"
        if key not in rep_of:
            rep_of[key] = len(reps)
            reps.append(int(i))
    k = min(k, len(reps) - 1)
    if k < 1 or len(reps) < 5:
        return OutlierScores(scores, float("nan"), [], max(k, 0))
    sims, _, _ = knn_cosine(unit_rows(vectors[reps], centre=False), k)
    rep_scores = 1.0 - sims.mean(axis=1)
    for i in np.flatnonzero(ok):
        scores[i] = rep_scores[rep_of[shas[i] or f"row{i}"]]
    q1, q3 = np.percentile(rep_scores, [25, 75])
    threshold = float(q3 + factor * (q3 - q1))
    flagged = [int(i) for i in np.flatnonzero(ok & (scores > threshold))]
    flagged.sort(key=lambda i: -scores[i])
    return OutlierScores(scores, threshold, flagged, k)
