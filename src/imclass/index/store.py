"""The index on disk: one folder, no pickle.

```
IDX/manifest.json     what the vectors are: model name, embedding key (weights + architecture +
                      preprocessing), preprocessing, dimension, metric; the index kind and its settings
IDX/files.sqlite3     one row per indexed file: id, path, sha256, mtime_ns, size, label (folder name),
                      perceptual hashes (as is and mirrored: copy candidates), gen (the change that wrote it);
                      removed ids; meta (generation)
IDX/vectors.f16       the unit-length embeddings, float16, row = id (memory-mapped for re-ranking, the map,
                      the duplicate search and rebuilding the faiss structure without embedding anything)
IDX/index.faiss       the faiss index (faiss's own binary format) over those rows, ids = row ids
IDX/index.faiss.json  the generation it reflects, its size and sha256
```

The SQLite rows and the vectors are the truth; ``index.faiss`` is derived from them. Every change is written
vectors first, then one SQLite transaction that bumps the generation, so a kill -9 at any moment leaves a
consistent store; a faiss file older than the rows is brought up to date on open by replaying the rows and
removals of later generations (``index.faiss`` is written atomically, so it is never half-written; one that
does not match its checksum is rebuilt from the vectors).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImclassError

log = logging.getLogger("imclass")

FORMAT = "imclass-index"
VERSION = 1
MANIFEST, DB, VECTORS, FAISS, FAISS_META, LOCK = (
    "manifest.json", "files.sqlite3", "vectors.f16", "index.faiss", "index.faiss.json", ".lock")
VECTOR_DTYPE = np.dtype("<f2")

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT,
    mtime_ns INTEGER,
    size INTEGER,
    label TEXT,
    phash INTEGER,
    phash_mirror INTEGER,
    gen INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_sha ON files (sha256);
CREATE INDEX IF NOT EXISTS files_gen ON files (gen);
CREATE TABLE IF NOT EXISTS removed (id INTEGER NOT NULL, gen INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS removed_gen ON removed (gen);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""


class IndexStoreError(ImclassError):
    """An index folder is missing, damaged or of another kind. The message says what to do."""


def _rebuild_hint(folder: Path) -> str:
    return f"rebuild it: imclass index build SOURCES... --out {folder} --rebuild"


class Store:
    """The files of one index folder: manifest, rows (SQLite), vectors (float16 rows by id)."""

    def __init__(self, folder: str | os.PathLike, manifest: dict[str, Any], con: sqlite3.Connection):
        self.folder = Path(folder)
        self.manifest = manifest
        self.con = con

    # ---- opening -------------------------------------------------------------------------------------
    @classmethod
    def create(cls, folder: str | os.PathLike, manifest: dict[str, Any]) -> Store:
        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise IndexStoreError(f"{folder} is a file; an index is a folder (give a new folder name)")
        if folder.is_dir() and any(folder.iterdir()) and not (folder / MANIFEST).exists():
            raise IndexStoreError(f"{folder} is a folder that is not an index and is not empty: give a new one")
        folder.mkdir(parents=True, exist_ok=True)
        manifest = {"format": FORMAT, "version": VERSION, **manifest}
        con = _connect(folder / DB, create=True)
        (folder / VECTORS).touch()
        store = cls(folder, manifest, con)
        store.write_manifest()
        return store

    @classmethod
    def open(cls, folder: str | os.PathLike) -> Store:
        folder = Path(folder)
        if not folder.is_dir():
            raise IndexStoreError(f"no index at {folder}: build one with imclass index build SOURCES... "
                                  f"--out {folder}")
        path = folder / MANIFEST
        if not path.is_file():
            raise IndexStoreError(f"{folder} is not an imclass index (no {MANIFEST}); {_rebuild_hint(folder)}")
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise IndexStoreError(f"{path} is damaged ({e}); {_rebuild_hint(folder)}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise IndexStoreError(f"{path} is not an imclass index manifest; {_rebuild_hint(folder)}")
        if int(manifest.get("version", 0)) > VERSION:
            raise IndexStoreError(f"{folder} was written by a newer imclass (index format "
                                  f"{manifest.get('version')}); upgrade imclass or {_rebuild_hint(folder)}")
        for key in ("backbone", "dim", "model"):
            if key not in manifest:
                raise IndexStoreError(f"{path} lacks {key!r}; {_rebuild_hint(folder)}")
        if not (folder / DB).is_file():
            raise IndexStoreError(f"{folder / DB} is missing; {_rebuild_hint(folder)}")
        con = _connect(folder / DB, create=False)
        store = cls(folder, manifest, con)
        store.check()
        return store

    def check(self) -> None:
        """The rows and the vectors file agree (a damaged or truncated file is an error, never a crash)."""
        try:
            max_id = self.con.execute("SELECT MAX(id) FROM files").fetchone()[0]
            self.con.execute("SELECT key, value FROM meta").fetchall()
        except sqlite3.DatabaseError as e:
            raise IndexStoreError(f"{self.folder / DB} is damaged ({e}); {_rebuild_hint(self.folder)}") from None
        vec = self.folder / VECTORS
        if not vec.is_file():
            raise IndexStoreError(f"{vec} is missing; {_rebuild_hint(self.folder)}")
        dim = self.dim
        if max_id is not None and (dim is None or vec.stat().st_size < (max_id + 1) * dim * VECTOR_DTYPE.itemsize):
            raise IndexStoreError(f"{vec} is shorter than the index needs (truncated or damaged); "
                                  f"{_rebuild_hint(self.folder)}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.con.close()

    # ---- manifest ------------------------------------------------------------------------------------
    @property
    def dim(self) -> int | None:
        d = self.manifest.get("dim")
        return None if d is None else int(d)

    def write_manifest(self) -> None:
        from ..fileio import write_json

        write_json(self.folder / MANIFEST, self.manifest)

    # ---- rows ----------------------------------------------------------------------------------------
    @property
    def generation(self) -> int:
        row = self.con.execute("SELECT value FROM meta WHERE key='generation'").fetchone()
        return int(row[0]) if row else 0

    def count(self) -> int:
        return int(self.con.execute("SELECT COUNT(*) FROM files").fetchone()[0])

    def rows(self, columns: str = "id, path, sha256, mtime_ns, size, label") -> list[tuple]:
        return self.con.execute(f"SELECT {columns} FROM files ORDER BY id").fetchall()

    def ids(self) -> np.ndarray:
        return np.array([r[0] for r in self.con.execute("SELECT id FROM files ORDER BY id")], dtype=np.int64)

    def by_path(self, paths: Sequence[str]) -> dict[str, tuple]:
        """``path -> (id, sha256, mtime_ns, size)`` for the given (absolute) paths that are indexed."""
        out = {}
        for i in range(0, len(paths), 500):
            chunk = list(paths[i:i + 500])
            q = f"SELECT path, id, sha256, mtime_ns, size FROM files WHERE path IN ({','.join('?' * len(chunk))})"
            for path, *rest in self.con.execute(q, chunk):
                out[path] = tuple(rest)
        return out

    def ids_under(self, paths: Sequence[str]) -> list[int]:
        """Ids of the rows at ``paths`` or under them (folders), through the path index (no scan of all rows)."""
        out: set[int] = set()
        for p in dict.fromkeys(paths):
            prefix = p.rstrip(os.sep) + os.sep
            upper = prefix[:-1] + chr(ord(os.sep) + 1)  # every string that starts with prefix sorts below this
            out.update(r[0] for r in self.con.execute(
                "SELECT id FROM files WHERE path = ? OR (path >= ? AND path < ?)", (p, prefix, upper)))
        return sorted(out)

    def by_sha(self, shas: Sequence[str]) -> dict[str, int]:
        """``sha256 -> id`` of one indexed row with that content, for the given hashes."""
        out: dict[str, int] = {}
        wanted = list(dict.fromkeys(s for s in shas if s))
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            q = f"SELECT sha256, MIN(id) FROM files WHERE sha256 IN ({','.join('?' * len(chunk))}) GROUP BY sha256"
            out.update({sha: int(i_) for sha, i_ in self.con.execute(q, chunk)})
        return out

    def paths_of(self, ids: Sequence[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        wanted = [int(i) for i in dict.fromkeys(ids) if i >= 0]
        for i in range(0, len(wanted), 500):
            chunk = wanted[i:i + 500]
            q = f"SELECT id, path FROM files WHERE id IN ({','.join('?' * len(chunk))})"
            out.update(dict(self.con.execute(q, chunk).fetchall()))
        return out

    def free_slots(self, n: int) -> np.ndarray:
        """``n`` row ids for new vectors: slots freed by earlier changes first, then new ones at the end."""
        used = self.ids()
        slots = self.slots()
        free = np.setdiff1d(np.arange(slots, dtype=np.int64), used, assume_unique=True)[:n]
        return np.concatenate([free, np.arange(slots, slots + n - len(free), dtype=np.int64)])

    def slots(self) -> int:
        dim = self.dim
        if not dim:
            return 0
        return (self.folder / VECTORS).stat().st_size // (dim * VECTOR_DTYPE.itemsize)

    def commit(self, rows: Sequence[tuple], remove_ids: Sequence[int] = (), touch: Sequence[tuple] = ()) -> int:
        """One transaction: ``rows`` ``(id, path, sha256, mtime_ns, size, label, phash, phash_mirror)`` written
        (64-bit hashes as unsigned ints or None; their vectors must be
        written already), ``remove_ids`` dropped, ``touch`` ``(mtime_ns, size, id)`` updated in place (same
        content). Returns the new generation."""
        con = self.con
        con.execute("BEGIN IMMEDIATE")
        try:
            gen = self.generation + 1
            if remove_ids:
                con.executemany("DELETE FROM files WHERE id=?", [(int(i),) for i in remove_ids])
                con.executemany("INSERT INTO removed VALUES (?, ?)", [(int(i), gen) for i in remove_ids])
            if rows:
                con.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                [(int(r[0]), *r[1:6], _signed(r[6]), _signed(r[7]), gen) for r in rows])
            if touch:
                con.executemany("UPDATE files SET mtime_ns=?, size=? WHERE id=?", touch)
            con.execute("INSERT OR REPLACE INTO meta VALUES ('generation', ?)", (str(gen),))
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return gen

    def hashes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, phash, phash_mirror)`` (uint64) of the rows that have perceptual hashes."""
        rows = self.con.execute("SELECT id, phash, phash_mirror FROM files WHERE phash IS NOT NULL ORDER BY id"
                                ).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        h = np.array([r[1] for r in rows], dtype=np.int64).view(np.uint64)
        m = np.array([r[2] if r[2] is not None else r[1] for r in rows], dtype=np.int64).view(np.uint64)
        return ids, h, m

    def changes_since(self, gen: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids written after gen, ids removed after gen)``: what a faiss index of generation ``gen`` lacks."""
        added = np.array([r[0] for r in self.con.execute("SELECT id FROM files WHERE gen > ?", (gen,))], np.int64)
        removed = np.array([r[0] for r in self.con.execute("SELECT id FROM removed WHERE gen > ?", (gen,))],
                           np.int64)
        return added, removed

    def forget_removed(self, upto: int) -> None:
        """Removals a saved faiss index already reflects are no longer needed."""
        self.con.execute("DELETE FROM removed WHERE gen <= ?", (upto,))

    # ---- vectors -------------------------------------------------------------------------------------
    def write_vectors(self, ids: np.ndarray, unit: np.ndarray) -> None:
        """Write unit rows at their ids (the file grows as needed); flushed before the rows are committed."""
        dim = unit.shape[1]
        if self.dim is None:
            self.manifest["dim"] = int(dim)
            self.write_manifest()
        elif dim != self.dim:
            raise IndexStoreError(f"vectors of dimension {dim} cannot join an index of dimension {self.dim}")
        data = np.ascontiguousarray(unit, dtype=VECTOR_DTYPE)
        row = dim * VECTOR_DTYPE.itemsize
        order = np.argsort(ids, kind="stable")
        with open(self.folder / VECTORS, "r+b") as f:
            start = 0
            ids_sorted = np.asarray(ids)[order]
            while start < len(order):  # runs of consecutive ids are written at once
                stop = start + 1
                while stop < len(order) and ids_sorted[stop] == ids_sorted[stop - 1] + 1:
                    stop += 1
                f.seek(int(ids_sorted[start]) * row)
                f.write(data[order[start:stop]].tobytes())
                start = stop
            f.flush()
            os.fsync(f.fileno())

    def vectors(self) -> np.ndarray:
        """All vector slots, memory-mapped read-only ``(slots, dim)`` float16 (empty when there are none)."""
        dim, slots = self.dim, self.slots()
        if not dim or not slots:
            return np.zeros((0, dim or 0), dtype=VECTOR_DTYPE)
        return np.memmap(self.folder / VECTORS, dtype=VECTOR_DTYPE, mode="r", shape=(slots, dim))

    def read(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """float32 rows for ``ids``. The file is mapped for this call only, so the pages it touched do not stay in
        this process's memory (reading a whole large index in chunks keeps the resident size flat)."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return np.zeros((0, self.dim or 0), np.float32)
        lo, hi = int(ids.min()), int(ids.max()) + 1
        dim = self.dim or 0
        mapped = np.memmap(self.folder / VECTORS, dtype=VECTOR_DTYPE, mode="r", offset=lo * dim * VECTOR_DTYPE.itemsize,
                           shape=(hi - lo, dim))
        try:
            return np.asarray(mapped[ids - lo], dtype=np.float32)
        finally:
            del mapped

    # ---- the faiss file ------------------------------------------------------------------------------
    def read_faiss(self) -> tuple[Any, int, dict[str, Any]] | None:
        """``(faiss index, generation, settings)`` as saved, or None when there is none or it fails its
        checksum."""
        import faiss

        path, meta_path = self.folder / FAISS, self.folder / FAISS_META
        if not path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            if path.stat().st_size != meta["bytes"] or _sha256(path) != meta["sha256"]:
                raise ValueError("checksum mismatch")
            settings = meta["settings"]
            if not isinstance(settings, dict) or settings.get("kind") not in ("flat", "ivf-sq8", "ivf-pq"):
                raise ValueError("no settings")
            return faiss.read_index(str(path)), int(meta["generation"]), settings
        except (OSError, ValueError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as e:
            log.warning("%s is damaged (%s); rebuilding it from the stored vectors", path, e)
            return None

    def write_faiss(self, index: Any, generation: int, settings: dict[str, Any]) -> None:
        import faiss

        from ..fileio import atomic_path, write_json

        path = self.folder / FAISS
        with atomic_path(path) as tmp:
            faiss.write_index(index, str(tmp))
            info = {"generation": generation, "bytes": tmp.stat().st_size, "sha256": _sha256(tmp),
                    "ntotal": int(index.ntotal), "settings": settings}
        write_json(self.folder / FAISS_META, info)

    # ---- one writer at a time ------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """An exclusive lock on the folder while it is changed (a second writer stops with a message)."""
        import fcntl

        with open(self.folder / LOCK, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise IndexStoreError(f"{self.folder} is being changed by another process; wait for it to "
                                      "finish") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _signed(h: int | None) -> int | None:
    """A 64-bit unsigned hash as SQLite's signed INTEGER."""
    if h is None:
        return None
    h = int(h)
    return h - (1 << 64) if h >= 1 << 63 else h


def _connect(path: Path, create: bool) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(path, timeout=60.0, isolation_level=None, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=NORMAL")
        if create:
            con.executescript(SCHEMA)
        else:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if not {"files", "removed", "meta"} <= tables:
                raise sqlite3.DatabaseError("tables missing")
    except sqlite3.DatabaseError as e:
        raise IndexStoreError(f"{path} is damaged ({e}); {_rebuild_hint(path.parent)}") from None
    return con


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
