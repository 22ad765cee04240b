"""On-disk embedding cache keyed by (file content sha256, backbone key), shared by audit, training and search.

One SQLite file (``<cache dir>/embeddings.sqlite3``) in WAL mode: many processes may read and write at
once; every batch is written in its own transaction, so an interrupted run keeps what it finished and a
later run computes only the rest. Vectors are stored as little-endian float32 bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..sqlite_store import SqliteStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS embeddings (
    sha256 TEXT NOT NULL,
    backbone TEXT NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (sha256, backbone)
) WITHOUT ROWID;
"""


def default_path() -> Path:
    from ..paths import cache_dir

    return cache_dir() / "embeddings.sqlite3"


class EmbeddingCache(SqliteStore):
    """``get``/``put`` float32 vectors by ``(sha256, backbone key)``. Thread- and process-safe."""

    def __init__(self, path: str | os.PathLike | None = None):
        super().__init__(path if path is not None else default_path(), SCHEMA)

    def get(self, backbone: str, shas: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors for those of ``shas`` that have one."""
        found: dict[str, np.ndarray] = {}
        for sha, dim, blob in self.select_in(
                "SELECT sha256, dim, vector FROM embeddings WHERE backbone=? AND sha256 IN ({marks})",
                (backbone,), shas):
            vec = np.frombuffer(blob, dtype="<f4")
            if vec.size == dim:  # a torn row cannot exist in SQLite, but never trust sizes blindly
                found[sha] = vec
        return found

    def put(self, backbone: str, items: Iterable[tuple[str, np.ndarray]]) -> int:
        """Store vectors (one transaction); returns how many were written."""
        return self.write("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)",
                          [(sha, backbone, int(v.size), np.ascontiguousarray(v, dtype="<f4").tobytes())
                           for sha, v in items if sha])

    def hashes(self, backbone: str) -> set[str]:
        """The content hashes that have a vector for ``backbone``."""
        con = self.connection()
        return {row[0] for row in con.execute("SELECT sha256 FROM embeddings WHERE backbone=?", (backbone,))}

    def count(self, backbone: str | None = None) -> int:
        con = self.connection()
        if backbone is None:
            return con.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        return con.execute("SELECT COUNT(*) FROM embeddings WHERE backbone=?", (backbone,)).fetchone()[0]
