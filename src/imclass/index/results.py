"""What a search returns: per query, its neighbours with their similarity scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Neighbour:
    path: str
    score: float  # cosine similarity of the two embeddings (1.0: same content)
    id: int = -1
    match: str | None = None  # with verify: "duplicate" | "possible" | "different" (the audit's pair decision)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"path": self.path, "score": round(float(self.score), 6)}
        if self.match is not None:
            d["match"] = self.match
        return d


@dataclass
class Match:
    """One query's nearest neighbours, most similar first (``error`` set when the query could not be read)."""

    query: str
    neighbours: list[Neighbour] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"query": self.query, "neighbours": [n.to_dict() for n in self.neighbours]}
        if self.error is not None:
            d["error"] = self.error
        return d


def unit(vectors: np.ndarray) -> np.ndarray:
    x = np.asarray(vectors, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.maximum(norms, 1e-12), dtype=np.float32)
