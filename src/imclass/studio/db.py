"""The studio's database: one SQLite file in the data folder (WAL), with a versioned schema.

Migrations are a list of SQL scripts; ``migrate()`` applies the ones above ``PRAGMA user_version``, each in
one transaction, so a data folder written by any earlier release opens (and is upgraded) in this one.
A connection per thread; every write is a short ``BEGIN IMMEDIATE`` transaction.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: Schema scripts; entry i upgrades user_version i to i + 1. Never edit a released entry: append.
MIGRATIONS: list[str] = [
    # 1: projects, classes, images and their labels, imports, suggestions, jobs
    """
    CREATE TABLE projects (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE COLLATE NOCASE,
        task TEXT NOT NULL CHECK (task IN ('single_label', 'multi_label')),
        created REAL NOT NULL,
        updated REAL NOT NULL
    );
    CREATE TABLE classes (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        position INTEGER NOT NULL,
        UNIQUE (project_id, name)
    );
    CREATE TABLE images (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        sha256 TEXT NOT NULL,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        stored INTEGER NOT NULL,
        width INTEGER, height INTEGER, bytes INTEGER,
        split TEXT NOT NULL DEFAULT '',
        version INTEGER NOT NULL DEFAULT 0,
        labelled REAL,
        added REAL NOT NULL,
        import_id INTEGER,
        UNIQUE (project_id, sha256)
    );
    CREATE INDEX images_project ON images (project_id, id);
    CREATE TABLE image_labels (
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        class_id INTEGER NOT NULL REFERENCES classes(id) ON DELETE CASCADE,
        PRIMARY KEY (image_id, class_id)
    ) WITHOUT ROWID;
    CREATE INDEX image_labels_class ON image_labels (class_id, image_id);
    CREATE TABLE label_events (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL,
        image_id INTEGER NOT NULL,
        before TEXT NOT NULL,
        after TEXT NOT NULL,
        source TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX label_events_project ON label_events (project_id, id);
    CREATE TABLE imports (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        source TEXT NOT NULL,
        status TEXT NOT NULL,
        total INTEGER, added INTEGER NOT NULL DEFAULT 0, duplicates INTEGER NOT NULL DEFAULT 0,
        rejected INTEGER NOT NULL DEFAULT 0,
        created REAL NOT NULL, finished REAL, error TEXT
    );
    CREATE TABLE rejects (
        import_id INTEGER NOT NULL REFERENCES imports(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        error TEXT NOT NULL
    );
    CREATE TABLE suggestions (
        image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
        project_id INTEGER NOT NULL,
        label TEXT,
        score REAL,
        margin REAL,
        source TEXT NOT NULL,
        topk TEXT NOT NULL,
        model INTEGER
    );
    CREATE INDEX suggestions_project ON suggestions (project_id, margin);
    CREATE TABLE probes (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        created REAL NOT NULL,
        labels INTEGER NOT NULL,
        classes TEXT NOT NULL,
        accuracy REAL
    );
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        project_id INTEGER,
        queue TEXT NOT NULL,
        kind TEXT NOT NULL,
        params TEXT NOT NULL,
        status TEXT NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        total INTEGER,
        result TEXT,
        error TEXT,
        created REAL NOT NULL, started REAL, finished REAL,
        pid INTEGER
    );
    CREATE INDEX jobs_queue ON jobs (queue, status, id);
    """,
    # 2: review flags from the data checks (the "likely label errors" and "duplicates" queues)
    """
    CREATE TABLE flags (
        image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
        project_id INTEGER NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        rank REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (image_id, kind)
    );
    CREATE INDEX flags_project ON flags (project_id, kind, rank);
    """,
    # 3: training runs, their live events, and their predictions on the validation images
    """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        project_id INTEGER NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
        status TEXT NOT NULL,
        mode TEXT NOT NULL,
        params TEXT NOT NULL,
        created REAL NOT NULL, started REAL, finished REAL,
        stage TEXT, done INTEGER, total INTEGER,
        epoch INTEGER NOT NULL DEFAULT 0,
        epochs INTEGER,
        metrics TEXT,
        error TEXT,
        out TEXT,
        cancel INTEGER NOT NULL DEFAULT 0,
        parent INTEGER
    );
    CREATE INDEX runs_project ON runs (project_id, id);
    CREATE TABLE run_events (
        id INTEGER PRIMARY KEY,
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        at REAL NOT NULL
    );
    CREATE INDEX run_events_run ON run_events (run_id, id);
    CREATE TABLE run_predictions (
        run_id INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        image_id INTEGER NOT NULL,
        true_label TEXT NOT NULL,
        predicted TEXT,
        confidence REAL,
        correct INTEGER,
        loss REAL,
        PRIMARY KEY (run_id, image_id)
    ) WITHOUT ROWID;
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        run_id INTEGER REFERENCES runs(id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        params TEXT NOT NULL,
        status TEXT NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        total INTEGER,
        result TEXT,
        error TEXT,
        created REAL NOT NULL, finished REAL
    );
    """,
    # 4: the image a duplicate or conflict flag pairs with (what "not a duplicate" marks)
    """
    ALTER TABLE flags ADD COLUMN other INTEGER
    """,
    # 5: the score "unknown" is decided on (a model's known_score; older runs: NULL, their confidence is it)
    """
    ALTER TABLE run_predictions ADD COLUMN known REAL
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


class Database:
    """The studio's SQLite file; ``migrate()`` once at start-up, then queries from any thread."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()

    def connection(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            con.row_factory = sqlite3.Row
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=NORMAL")
            con.execute("PRAGMA foreign_keys=ON")
            con.execute("PRAGMA busy_timeout=30000")
            self._local.con = con
        return con

    def close(self) -> None:
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    # ---- schema ------------------------------------------------------------------------------------
    def version(self) -> int:
        return int(self.connection().execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> int:
        """Apply the missing migrations; returns the version reached. A newer file is refused."""
        con = self.connection()
        current = self.version()
        if current > SCHEMA_VERSION:
            from ..errors import ImclassError

            raise ImclassError(f"{self.path} was written by a newer imclass (schema {current}, this one knows "
                               f"{SCHEMA_VERSION}); upgrade imclass")
        for v in range(current, SCHEMA_VERSION):
            con.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(MIGRATIONS[v]):
                    con.execute(statement)
                con.execute(f"PRAGMA user_version={v + 1}")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return self.version()

    # ---- queries -----------------------------------------------------------------------------------
    def one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        return self.connection().execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self.connection().execute(sql, params).fetchall()

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        row = self.connection().execute(sql, params).fetchone()
        return None if row is None else row[0]

    @contextlib.contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``): committed when the block ends, rolled back on error."""
        con = self.connection()
        con.execute("BEGIN IMMEDIATE")
        try:
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise


def _statements(script: str) -> list[str]:
    """Split a migration script into statements (they contain no semicolons in strings)."""
    return [s.strip() for s in script.split(";") if s.strip()]
