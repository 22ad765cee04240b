"""Incremental indexing: new and changed files are embedded (through the one engine and the embedding cache),
deleted ones dropped, unchanged ones not even read.

A file is unchanged when its path, size and modification time match its row; otherwise its content hash
decides (a touched file keeps its vector; a file whose content is already indexed elsewhere reuses that
vector). New contents are also decode-scanned (the audit's scan, cached by content): their perceptual hashes
(as is and mirrored) are stored for finding copies, and a file the scan cannot decode is not indexed.

Work is committed in batches (vectors, then one SQLite transaction), and embeddings land in the
shared cache as they are computed, so a run killed at any point (kill -9 included) resumes where it stopped:
finished batches are not redone, and the embeddings of the interrupted batch come back from the cache.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..faults import checkpoint

#: Files embedded and committed together (a kill -9 loses at most this many files' commit, not their embeddings).
BATCH = 256
#: ``progress(stage, done, total)``: stages ``scan``, ``hash``, ``embed``.
Progress = Callable[[str, int, int], None]


@dataclass
class BuildResult:
    """What one ``build``/``add`` did."""

    index: str
    added: int = 0  # new files
    updated: int = 0  # files whose content changed
    removed: int = 0  # files gone (deleted, or no longer under their source)
    unchanged: int = 0
    embedded: int = 0  # vectors computed now (the rest came from the cache or from identical indexed files)
    errors: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"}: not indexed
    count: int = 0  # files in the index afterwards
    kind: str = ""
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def label_of(path: str) -> str:
    """The folder an image is in: the label the embedding map colours it by."""
    return os.path.basename(os.path.dirname(path))


def file_state(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def update(index: Any, sources: Sequence[str | os.PathLike], *, prune: bool = False, workers: int | None = None,
           batch: int = BATCH, progress: Progress | None = None) -> BuildResult:
    """Bring ``index`` (an :class:`~imclass.index.core.Index`) up to date with the images under ``sources``
    (files or folders); with ``prune``, also drop indexed files that no longer exist anywhere."""
    from ..engine.sources import iter_image_paths

    store = index.store
    batch = int(os.environ.get("IMCLASS_INDEX_BATCH") or batch)  # tests make batches small to interrupt one
    res = BuildResult(index=str(store.folder))
    t0 = time.perf_counter()
    tick = progress or (lambda *_: None)

    # 1. what is there now
    found: dict[str, tuple[int, int]] = {}
    roots = [os.path.abspath(os.fspath(s)) for s in sources]
    tick("scan", 0, None)
    for p in iter_image_paths([os.fspath(s) for s in sources]):
        ap = os.path.abspath(p)
        state = file_state(ap)
        if state is None:
            res.errors.append({"path": p, "error": "no such file"})
            continue
        found[ap] = state
        if len(found) % 5000 == 0:
            tick("scan", len(found), None)
    tick("scan", len(found), len(found))
    rows = store.rows("id, path, sha256, mtime_ns, size")
    known = {r[1]: r for r in rows}

    # 2. what is gone: under the sources and not found; with prune, missing anywhere
    gone = []
    for _id, path, *_ in rows:
        if path in found:
            continue
        under = any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)
        if under or (prune and file_state(path) is None):
            gone.append(_id)
    if gone:
        store.commit([], remove_ids=gone)
    res.removed = len(gone)
    t1 = time.perf_counter()

    # 3. what changed: size/mtime differ from the row (or no row) -> content hash decides
    todo = [p for p, st in found.items() if p not in known or (known[p][3], known[p][4]) != st]
    res.unchanged = len(found) - len(todo)
    shas: dict[str, str | None] = {}
    n_threads = max(1, min(4, workers or 2))
    tick("hash", 0, len(todo))
    with ThreadPoolExecutor(max_workers=n_threads, thread_name_prefix="imclass-hash") as pool:
        for i, (p, sha) in enumerate(zip(todo, pool.map(_try_sha, todo))):
            shas[p] = sha
            if (i + 1) % 256 == 0:
                tick("hash", i + 1, len(todo))
    tick("hash", len(todo), len(todo))
    touch, new = [], []
    for p in todo:
        sha = shas[p]
        if sha is None:
            res.errors.append({"path": p, "error": "cannot read the file"})
            continue
        row = known.get(p)
        if row is not None and row[2] == sha:
            touch.append((*found[p], row[0]))  # same content: only the file's time or size changed
        else:
            new.append(p)
    if touch:
        store.commit([], touch=touch)
    res.unchanged += len(touch)
    t2 = time.perf_counter()

    # 4. vectors for the new contents: reuse identical indexed content, else embed (cache first), in batches;
    #    perceptual hashes from the decode scan (cached by content, shared with the audit)
    from ..data.scan import scan_dataset

    tick("embed", 0, len(new))
    done = 0
    embedder = None
    for start in range(0, len(new), batch):
        chunk = new[start:start + batch]
        chunk_shas = [shas[p] for p in chunk]
        facts = scan_dataset(chunk, chunk_shas, [None] * len(chunk), workers=workers or 2)
        have = store.by_sha(chunk_shas)
        vectors = np.zeros((len(chunk), store.dim or 0), np.float32) if store.dim else None
        errors: list[str | None] = [f.error for f in facts]
        need = [i for i, s in enumerate(chunk_shas) if s not in have and errors[i] is None]
        reuse = [i for i in range(len(chunk)) if chunk_shas[i] in have and errors[i] is None]
        if reuse and vectors is not None:
            vectors[reuse] = store.read([have[chunk_shas[i]] for i in reuse])
        if need:
            if embedder is None:
                embedder = index.embedder()
            emb = embedder.embed([chunk[i] for i in need], [chunk_shas[i] for i in need], workers=workers)
            index.check_backbone(emb.backbone)
            if vectors is None:
                vectors = np.zeros((len(chunk), emb.vectors.shape[1]), np.float32)
            res.embedded += emb.computed
            for j, i in enumerate(need):
                if emb.errors[j] is None:
                    vectors[i] = emb.vectors[j]
                else:
                    errors[i] = emb.errors[j]
        ok = [i for i in range(len(chunk)) if errors[i] is None]
        for i in range(len(chunk)):
            if errors[i] is not None:
                res.errors.append({"path": chunk[i], "error": errors[i]})
        broken = [known[chunk[i]][0] for i in range(len(chunk)) if errors[i] is not None and chunk[i] in known]
        if broken:  # a file that changed into something unreadable: its old vector no longer describes it
            store.commit([], remove_ids=broken)
            res.removed += len(broken)
        replaced = [known[chunk[i]][0] for i in ok if chunk[i] in known]
        res.updated += len(replaced)
        res.added += len(ok) - len(replaced)
        if ok:
            index.add_vectors([chunk[i] for i in ok], vectors[ok], shas=[chunk_shas[i] for i in ok],
                              states=[found[chunk[i]] for i in ok], replace_ids=replaced,
                              phashes=[(facts[i].phash, facts[i].phash_mirror) for i in ok])
        done += len(chunk)
        tick("embed", done, len(new))
        checkpoint("index.batch")
    t3 = time.perf_counter()
    res.seconds = {"scan": round(t1 - t0, 2), "hash": round(t2 - t1, 2), "embed": round(t3 - t2, 2)}
    return res


def _try_sha(path: str) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None
