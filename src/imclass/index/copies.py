"""Copies of a query among the indexed images: the same photo re-encoded, resized, cropped or mirrored.

Embeddings alone rank such copies poorly when the copy is small and heavily compressed (a half-size JPEG at
quality 40 of a 128 px photo: the original was the top embedding hit for only 36 of 50 copies, bench/index.py).
So, as the audit does, perceptual hashes (as is and mirrored) propose candidates: the :data:`K` indexed images
nearest to the query's hash within :data:`~imclass.data.duplicates.PHASH_CANDIDATE` bits (a linear scan of
the stored 64-bit hashes: ~5 ms per 1,000,000 images); the audit's thumbnail pre-screen drops most, and the
audit's pair verification (keypoints, then pixels) decides the rest. Verified duplicates are listed first,
then possible ones (weaker evidence, e.g. a copy too small for keypoints).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ImageLoadError

#: Hash neighbours per query that become candidates (a copy's original was within the nearest 6 for 50 of 50).
K = 8


def query_facts(queries: Sequence[Any], shas: Sequence[str | None], errors: Sequence[str | None], workers: int):
    """Decode-scan facts (perceptual hashes, thumbnail) of each query (None where it cannot be read)."""
    from ..data.scan import scan_dataset, scan_file

    out: list[Any] = [None] * len(queries)
    paths = [i for i, q in enumerate(queries) if isinstance(q, (str, os.PathLike)) and errors[i] is None
             and shas[i] is not None]
    if paths:
        facts = scan_dataset([os.fspath(queries[i]) for i in paths], [shas[i] for i in paths], [None] * len(paths),
                             workers=workers)
        for i, f in zip(paths, facts):
            out[i] = f
    for i, q in enumerate(queries):
        if out[i] is None and errors[i] is None and not isinstance(q, (str, os.PathLike)):
            out[i] = scan_file(q.copy() if hasattr(q, "copy") else q)  # a PIL image or bytes; never raises
    return [f if f is not None and f.error is None and f.phash is not None else None for f in out]


def nearest_by_hash(ids: np.ndarray, h: np.ndarray, m: np.ndarray, code: int, exclude: set[int],
                    k: int = K) -> list[int]:
    """Ids of the ``k`` stored hashes nearest to ``code`` (as is or mirrored) within the audit's distance."""
    from ..data.duplicates import PHASH_CANDIDATE

    if not len(ids):
        return []
    q = np.uint64(code)
    d = np.minimum(np.bitwise_count(h ^ q), np.bitwise_count(m ^ q)).astype(np.int16)
    take = min(len(d), k + len(exclude))
    near = np.argpartition(d, take - 1)[:take]
    near = near[np.argsort(d[near], kind="stable")]
    return [int(ids[j]) for j in near if d[j] <= PHASH_CANDIDATE and int(ids[j]) not in exclude][:k]


def verified_copies(index: Any, queries: Sequence[Any], shas: Sequence[str | None], errors: Sequence[str | None],
                    own: Sequence[set[int]], workers: int = 2) -> dict[int, dict[int, str]]:
    """Per query, the indexed ids the audit's decision calls ``duplicate`` or ``possible`` (id -> decision)."""
    from ..data.duplicates import prescreen
    from ..data.scan import ScanCache, scan_dataset
    from ..data.verify import PairVerifier
    from .pair import working

    ids, h, m = index.hashes()
    if not len(ids):
        return {}
    facts = query_facts(queries, shas, errors, workers)
    cands = {qi: nearest_by_hash(ids, h, m, f.phash, own[qi]) for qi, f in enumerate(facts) if f is not None}
    wanted = sorted({c for cs in cands.values() for c in cs})
    if not wanted:
        return {}
    rows = {r[0]: r for r in index.store.con.execute(
        f"SELECT id, path, sha256 FROM files WHERE id IN ({','.join('?' * len(wanted))})", wanted)}
    known = ScanCache().get([rows[c][2] for c in wanted if c in rows and rows[c][2]])
    missing = [c for c in wanted if c in rows and rows[c][2] and rows[c][2] not in known]
    if missing:
        for c, f in zip(missing, scan_dataset([rows[c][1] for c in missing], [rows[c][2] for c in missing],
                                              [None] * len(missing), workers=workers)):
            known[rows[c][2]] = f
    pairs = []
    for qi, cs in cands.items():
        tq = facts[qi].thumbnail()
        for c in cs:
            f = known.get(rows[c][2]) if c in rows else None
            if f is not None and f.error is None and prescreen(tq, f.thumbnail()):
                pairs.append((qi, c))
    if not pairs:
        return {}
    slots: dict[Any, int] = {}
    items: list[Any] = []
    for qi, c in pairs:
        for key, item in ((("q", qi), queries[qi]), (("i", c), rows[c][1])):
            if key not in slots:
                slots[key] = len(items)
                items.append(item)

    def load(slot: int):
        try:
            return working(items[slot])
        except ImageLoadError:
            return None

    verifier = PairVerifier(load)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="imclass-verify") as pool:
        verdicts = list(pool.map(lambda p: verifier.verify(slots[("q", p[0])], slots[("i", p[1])]), pairs))
    out: dict[int, dict[int, str]] = {}
    for (qi, c), v in zip(pairs, verdicts):
        if v.decision != "different":
            out.setdefault(qi, {})[c] = v.decision
    return out
