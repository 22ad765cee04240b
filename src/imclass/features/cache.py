"""On-disk embedding cache keyed by (file content sha256, backbone key), shared by audit, training and search.

One SQLite file (``<cache dir>/embeddings.sqlite3``) in WAL mode: many processes may read and write at
once; every batch is written in its own transaction, so an interrupted run keeps what it finished and a
later run computes only the rest. Vectors are stored as little-endian float32 bytes.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

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
    from ..export.cache import cache_dir

    return cache_dir() / "embeddings.sqlite3"


class EmbeddingCache:
    """``get``/``put`` float32 vectors by ``(sha256, backbone key)``. Thread- and process-safe."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as con:
            con.executescript(SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA busy_timeout=60000")
            self._local.con = con
        return con

    def get(self, backbone: str, shas: Sequence[str]) -> dict[str, np.ndarray]:
        """Cached vectors for those of ``shas`` that have one."""
        found: dict[str, np.ndarray] = {}
        con = self._conn()
        unique = list(dict.fromkeys(s for s in shas if s))
        for i in range(0, len(unique), 500):
            chunk = unique[i:i + 500]
            marks = ",".join("?" * len(chunk))
            for sha, dim, blob in con.execute(
                    f"SELECT sha256, dim, vector FROM embeddings WHERE backbone=? AND sha256 IN ({marks})",
                    (backbone, *chunk)):
                vec = np.frombuffer(blob, dtype="<f4")
                if vec.size == dim:  # a torn row cannot exist in SQLite, but never trust sizes blindly
                    found[sha] = vec
        return found

    def put(self, backbone: str, items: Iterable[tuple[str, np.ndarray]]) -> int:
        """Store vectors (one transaction); returns how many were written."""
        rows = [(sha, backbone, int(v.size), np.ascontiguousarray(v, dtype="<f4").tobytes())
                for sha, v in items if sha]
        if not rows:
            return 0
        con = self._conn()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany("INSERT OR REPLACE INTO embeddings VALUES (?, ?, ?, ?)", rows)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return len(rows)

    def count(self, backbone: str | None = None) -> int:
        con = self._conn()
        if backbone is None:
            return con.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
        return con.execute("SELECT COUNT(*) FROM embeddings WHERE backbone=?", (backbone,)).fetchone()[0]

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
