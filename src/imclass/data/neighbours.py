"""Nearest neighbours in embedding space (cosine) and in perceptual-hash space (Hamming), in bounded memory."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

BLOCK = 1024  # rows compared at once: memory stays O(BLOCK x N)


def unit_rows(vectors: np.ndarray, centre: bool = True) -> np.ndarray:
    """L2-normalised rows, first centred by the mean row unless ``centre=False``; rows with NaN become zero
    vectors (similar to nothing).

    Centring separates near-copies from merely similar images in homogeneous sets (post-ReLU features of
    e.g. steel textures have raw cosine similarity > 0.95 for most pairs); raw directions are better at
    telling off-domain images (blank, text, placeholders) from everything else.
    """
    x = np.asarray(vectors, dtype=np.float32)
    ok = np.isfinite(x).all(axis=1)
    out = np.zeros_like(x)
    if ok.any():
        centred = x[ok] - x[ok].mean(axis=0, keepdims=True) if centre else x[ok]
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        out[ok] = centred / np.maximum(norms, 1e-12)
    return out


def knn_cosine(unit: np.ndarray, k: int, threshold: float | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int, float]]]:
    """The ``k`` most similar other rows of each row, and every pair with similarity >= ``threshold``.

    Returns ``(sims (M, k) descending, idx (M, k), pairs [(i, j, sim)] with i < j)``. Zero rows (missing
    vectors) get similarity 0 to everything and are never paired.
    """
    m = len(unit)
    k = max(0, min(k, m - 1))
    sims = np.zeros((m, k), dtype=np.float32)
    idx = np.zeros((m, k), dtype=np.int64)
    pairs: list[tuple[int, int, float]] = []
    valid = np.abs(unit).sum(axis=1) > 0
    for start in range(0, m, BLOCK):
        stop = min(m, start + BLOCK)
        block = unit[start:stop] @ unit.T
        block[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # not its own neighbour
        if k:
            part = np.argpartition(-block, k - 1, axis=1)[:, :k]
            vals = np.take_along_axis(block, part, axis=1)
            order = np.argsort(-vals, axis=1)
            idx[start:stop] = np.take_along_axis(part, order, axis=1)
            sims[start:stop] = np.take_along_axis(vals, order, axis=1)
        if threshold is not None:
            rows, cols = np.nonzero(block >= threshold)
            for r, c in zip(rows.tolist(), cols.tolist()):
                i = start + r
                if i < c and valid[i] and valid[c]:
                    pairs.append((i, c, float(block[r, c])))
    return sims, idx, pairs


def phash_pairs(hashes: Sequence[int | None], max_distance: int) -> list[tuple[int, int, int]]:
    """Pairs ``(i, j, hamming)`` with i < j whose 64-bit hashes differ in at most ``max_distance`` bits."""
    have = [i for i, h in enumerate(hashes) if h is not None]
    if len(have) < 2:
        return []
    codes = np.array([hashes[i] for i in have], dtype=np.uint64)
    pairs: list[tuple[int, int, int]] = []
    for start in range(0, len(codes), BLOCK):
        stop = min(len(codes), start + BLOCK)
        dist = np.bitwise_count(codes[start:stop, None] ^ codes[None, :])
        rows, cols = np.nonzero(dist <= max_distance)
        for r, c in zip(rows.tolist(), cols.tolist()):
            a = start + r
            if a < c:
                pairs.append((have[a], have[c], int(dist[r, c])))
    return pairs


class UnionFind:
    """Disjoint sets over ``0..n-1``."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def components(self) -> list[list[int]]:
        groups: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            groups.setdefault(self.find(i), []).append(i)
        return list(groups.values())
