"""A small SQLite store shared by the caches keyed by file content (embeddings, decode facts).

WAL mode and a busy timeout make it safe for many threads (one connection each) and processes at once;
every write is one transaction, so an interrupted run keeps what it finished.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

CHUNK = 500  # keys per "IN (...)" query (SQLite's default limit on parameters is 999)


class SqliteStore:
    def __init__(self, path: str | os.PathLike, schema: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self.connection().executescript(schema)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA busy_timeout=60000")
            self._local.con = con
        return con

    def select_in(self, query: str, params: Sequence[Any], keys: Sequence[str]) -> Iterator[tuple]:
        """Rows of ``query`` (ending in ``IN ({marks})``) for the distinct ``keys``, ``params`` first."""
        unique = list(dict.fromkeys(k for k in keys if k))
        for i in range(0, len(unique), CHUNK):
            chunk = unique[i:i + CHUNK]
            yield from self.connection().execute(query.format(marks=",".join("?" * len(chunk))), (*params, *chunk))

    def write(self, sql: str, rows: Sequence[tuple]) -> int:
        """``executemany`` in one transaction; returns the number of rows."""
        if not rows:
            return 0
        con = self.connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            con.executemany(sql, rows)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return len(rows)

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None
