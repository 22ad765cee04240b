"""Exact duplicates (same content hash) and near-duplicates: the same photo re-encoded, resized, cropped a
little, mirrored or lightly edited; never merely the same scene or the same kind of object.

Near-duplicates are found in three steps, cheap first:

1. **Candidates**: for each distinct content, its nearest neighbours by perceptual hash (as is and mirrored)
   and by embedding (mean-centred and raw cosine). Never all pairs.
2. **Pre-screen**: the tiny grey thumbnails of the scan are compared after a small search over mirror, crop
   and shift; a copy scores >= 0.71 (measured), most unrelated photos far less.
3. **Verification** (:mod:`imclass.data.verify`): keypoints + RANSAC, then a cell-by-cell pixel comparison
   after alignment; decides ``duplicate``, ``possible`` (weak evidence: tiny or low-detail images) or
   ``different``. Verdicts are cached by the two contents' hashes.

Groups are never transitive chains: each group is one representative and the rows verified against it
(a star), so two different vehicles that each resemble a third are not grouped. Pairs a person marked
"not a duplicate" (:mod:`imclass.data.marks`) are never joined. Every row gets a ``group_id``: rows sharing
one (exact or near) group stay together in a split and in cross-validation folds.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .neighbours import knn_cosine, unit_rows
from .verify import VERSION, PairVerifier, Verdict

#: Neighbours per content that become candidates: by centred embedding, raw embedding, perceptual hash.
K_CENTRED, K_RAW, K_PHASH = 4, 2, 3
#: Candidates by perceptual hash only within this Hamming distance (of 64 bits).
PHASH_CANDIDATE = 22
#: Pre-screen: best normalised correlation of the thumbnails after mirror/crop/shift search. Copies of real
#: photos scored >= 0.71 (5th percentile 0.90); unrelated photos' median 0.25, 95th percentile 0.55-0.68.
PRESCREEN = 0.5
#: Kept for callers of the earlier release (audit/split parameters); candidates no longer use a threshold.
PHASH_DISTANCE = 6
COSINE = 0.95


@dataclass
class DuplicateGroups:
    """Row indices grouped by identical and by near-identical content."""

    exact: list[list[int]] = field(default_factory=list)  # same sha256, >= 2 rows each
    # {"rows", "certainty": "duplicate" | "possible", "pairs": [(row a, row b, Verdict)]}
    near: list[dict[str, Any]] = field(default_factory=list)
    group_id: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # (N,) per row
    stats: dict[str, Any] = field(default_factory=dict)  # candidates, screened, verified, cached, seconds


def find_duplicates(
    shas: Sequence[str | None],
    phashes: Sequence[int | None] | None = None,
    vectors: np.ndarray | None = None,
    *,
    mirror_phashes: Sequence[int | None] | None = None,
    thumbs: Sequence[np.ndarray | None] | None = None,
    load: Callable[[int], np.ndarray | None] | None = None,
    not_duplicates: set[frozenset[str]] | None = None,
    cache=None,
    workers: int = 2,
    phash_distance: int | None = None,
    cosine: float | None = None,
) -> DuplicateGroups:
    """Group rows by content hash, then find verified near-duplicates among the distinct contents.

    ``phashes``/``mirror_phashes``/``vectors``/``thumbs`` are per row (None / NaN rows where unknown) and
    propose candidates (any may be left out; with none of them there are only exact duplicates).
    ``load(row)`` gives a row's grey working image for verification; without it no near-duplicates are
    decided. ``not_duplicates``: pairs of sha256 a person marked as different. ``cache``: a
    :class:`PairCache` (verdicts by content). ``phash_distance``/``cosine`` are accepted for callers of the
    earlier release and ignored.
    """
    import time

    t0 = time.perf_counter()
    n = len(shas)
    by_sha: dict[str, list[int]] = {}
    for i, sha in enumerate(shas):
        if sha:
            by_sha.setdefault(sha, []).append(i)
    exact = [rows for rows in by_sha.values() if len(rows) > 1]
    reps = [rows[0] for rows in by_sha.values()]  # one row per distinct content
    members = list(by_sha.values())
    stats: dict[str, Any] = {"contents": len(reps)}

    cands = candidate_pairs(reps, phashes, mirror_phashes, vectors)
    stats["candidates"] = len(cands)
    marked = not_duplicates or set()
    cands = [(a, b) for a, b in cands if frozenset((shas[reps[a]], shas[reps[b]])) not in marked]
    verdicts = _decide(cands, reps, shas, thumbs, load, cache, workers, stats) if load is not None else {}
    near = _stars(verdicts, reps, members)
    stats["seconds"] = round(time.perf_counter() - t0, 2)

    group_id = np.arange(n, dtype=np.int64)
    comp_of = {r: gi for gi, g in enumerate(near) for r in g.pop("reps")}
    for r, rows in enumerate(members):
        group_id[rows] = n + (comp_of[r] if r in comp_of else len(near) + r)
    _, group_id = np.unique(group_id, return_inverse=True)
    return DuplicateGroups(exact=exact, near=near, group_id=group_id.astype(np.int64), stats=stats)


def duplicate_rules() -> dict[str, Any]:
    """The decision's settings, as data (the audit records them)."""
    from . import verify

    return {"candidates": {"embedding_neighbours_centred": K_CENTRED, "embedding_neighbours_raw": K_RAW,
                           "phash_neighbours": K_PHASH, "phash_max_distance": PHASH_CANDIDATE},
            "prescreen_min_correlation": PRESCREEN,
            "verify": {"version": verify.VERSION, "min_inliers": verify.MIN_INLIERS,
                       "max_cell_difference": verify.CELL_MAX, "max_cell_difference_pixels_only":
                       verify.CELL_MAX_FALLBACK, "min_cell_correlation": verify.MIN_CELL_CORRELATION,
                       "change_level": verify.CHANGE_LEVEL, "max_changed_share": verify.MAX_CHANGED,
                       "overlap_for_duplicate": verify.FULL_OVERLAP, "min_overlap": verify.MIN_OVERLAP,
                       "min_side_for_duplicate": verify.MIN_SIDE_CONFIDENT, "grid": verify.GRID},
            "grouping": "a representative and the images verified against it (no chains)"}


# ---- candidates --------------------------------------------------------------------------------------

def candidate_pairs(reps: list[int], phashes, mirror_phashes, vectors) -> list[tuple[int, int]]:
    """Pairs ``(a, b)``, ``a < b``, of indices into ``reps``: each content's nearest neighbours."""
    pairs: set[tuple[int, int]] = set()

    def add(i: int, j: int) -> None:
        if i != j:
            pairs.add((min(i, j), max(i, j)))

    if vectors is not None and len(reps) > 1:
        v = np.asarray(vectors)[reps]
        for centre, k in ((True, K_CENTRED), (False, K_RAW)):
            unit = unit_rows(v, centre=centre)
            valid = np.abs(unit).sum(axis=1) > 0
            _, idx, _ = knn_cosine(unit, k)
            for i in np.flatnonzero(valid):
                for j in idx[i]:
                    if valid[j]:
                        add(int(i), int(j))
    if phashes is not None and len(reps) > 1:
        for i, j in _phash_neighbours([phashes[r] for r in reps],
                                      None if mirror_phashes is None else [mirror_phashes[r] for r in reps]):
            add(i, j)
    return sorted(pairs)


def _phash_neighbours(hashes: list[int | None], mirrors: list[int | None] | None) -> list[tuple[int, int]]:
    """Each hash's :data:`K_PHASH` nearest others within :data:`PHASH_CANDIDATE` bits (mirror-aware)."""
    have = [i for i, h in enumerate(hashes) if h is not None]
    if len(have) < 2:
        return []
    codes = np.array([hashes[i] for i in have], dtype=np.uint64)
    mirror = None
    if mirrors is not None:
        mirror = np.array([mirrors[i] if mirrors[i] is not None else hashes[i] for i in have], dtype=np.uint64)
    out = []
    block = 1024
    k = min(K_PHASH, len(have) - 1)
    for start in range(0, len(codes), block):
        stop = min(len(codes), start + block)
        dist = np.bitwise_count(codes[start:stop, None] ^ codes[None, :]).astype(np.int16)
        if mirror is not None:
            dist = np.minimum(dist, np.bitwise_count(codes[start:stop, None] ^ mirror[None, :]).astype(np.int16))
        dist[np.arange(stop - start), np.arange(start, stop)] = 999
        near = np.argpartition(dist, k - 1, axis=1)[:, :k]
        for r, cols in enumerate(near):
            for c in cols:
                if dist[r, c] <= PHASH_CANDIDATE:
                    out.append((have[start + r], have[int(c)]))
    return out


def prescreen(ta: np.ndarray | None, tb: np.ndarray | None) -> bool:
    """Could these thumbnails be one photo? (Unknown thumbnails pass: verification decides.)"""
    if ta is None or tb is None:
        return True
    return thumb_similarity(ta, tb) >= PRESCREEN


def thumb_similarity(ta: np.ndarray, tb: np.ndarray) -> float:
    """Best normalised correlation of two small grey images over mirror, crop (80-100%, either image may be
    the cropped one) and shift."""
    import cv2

    best = -1.0
    for big, small in ((ta, tb), (tb, ta)):
        big32 = big.astype(np.float32)
        for mirrored in (False, True):
            s = np.ascontiguousarray(small[:, ::-1] if mirrored else small)
            for crop in (1.0, 0.92, 0.86, 0.8):
                f = crop * big.shape[1] / s.shape[1]
                tw, th = max(4, round(s.shape[1] * f)), max(4, round(s.shape[0] * f))
                if tw > big.shape[1] or th > big.shape[0]:
                    continue
                t = cv2.resize(s, (tw, th), interpolation=cv2.INTER_AREA).astype(np.float32)
                if t.std() < 1e-3 and big32.std() < 1e-3:
                    return 1.0  # two flat images: leave it to verification
                best = max(best, float(cv2.minMaxLoc(cv2.matchTemplate(big32, t, cv2.TM_CCOEFF_NORMED))[1]))
    return best


# ---- verification -----------------------------------------------------------------------------------

def _decide(cands, reps, shas, thumbs, load, cache, workers, stats) -> dict[tuple[int, int], Verdict]:
    """Verdicts for the candidate pairs: from the cache, else pre-screened on thumbnails, then verified.
    Pairs the pre-screen rejects are cached too, so a second audit does neither step again."""
    keys = {(a, b): _key(shas[reps[a]], shas[reps[b]]) for a, b in cands}
    known = cache.get(list(keys.values())) if cache is not None else {}
    verdicts = {p: known[k] for p, k in keys.items() if k in known}
    todo = [p for p in cands if keys[p] not in known]
    stats["cached"] = len(verdicts)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="imclass-verify") as pool:
        if thumbs is not None and todo:
            scores = list(pool.map(lambda p: _thumb_score(thumbs[reps[p[0]]], thumbs[reps[p[1]]]), todo))
            for p, score in zip(todo, scores):
                if score is not None and score < PRESCREEN:
                    verdicts[p] = Verdict("different", "thumbnails", prescreen=round(score, 4))
            todo = [p for p in todo if p not in verdicts]
        stats["screened_out"] = len(cands) - stats["cached"] - len(todo)
        stats["verified"] = len(todo)
        if todo:
            uses: dict[int, int] = {}
            for a, b in todo:
                uses[a] = uses.get(a, 0) + 1
                uses[b] = uses.get(b, 0) + 1
            verifier = PairVerifier(lambda rep: load(reps[rep]), uses)
            todo.sort()  # by first row: a row's features are dropped soon after its last pair
            for p, v in zip(todo, pool.map(lambda q: verifier.verify(*q), todo)):
                verdicts[p] = v
    if cache is not None:
        cache.put([(*keys[p], verdicts[p]) for p in cands if keys[p] not in known])
    return verdicts


def _thumb_score(ta: np.ndarray | None, tb: np.ndarray | None) -> float | None:
    return None if ta is None or tb is None else thumb_similarity(ta, tb)


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def _stars(verdicts: dict[tuple[int, int], Verdict], reps: list[int], members: list[list[int]]
           ) -> list[dict[str, Any]]:
    """Groups without chaining: a representative and the contents verified against it.

    Duplicate edges first: the content with the most of them founds a group with its neighbours; repeat on
    what is left; then the same with "possible" edges among contents in no group yet.
    """
    groups = []
    assigned: set[int] = set()
    for certainty in ("duplicate", "possible"):
        edges: dict[int, dict[int, Verdict]] = {}
        for (a, b), v in verdicts.items():
            if v.decision == certainty and a not in assigned and b not in assigned:
                edges.setdefault(a, {})[b] = v
                edges.setdefault(b, {})[a] = v
        while edges:
            rep = max(edges, key=lambda r: (len(edges[r]), -r))
            group = [rep, *sorted(edges[rep])]
            assigned.update(group)
            pairs = [(reps[min(a, b)], reps[max(a, b)], v) for (a, b), v in verdicts.items()
                     if a in group and b in group and v.decision != "different"]
            rows = sorted(i for r in group for i in members[r])
            groups.append({"rows": rows, "certainty": certainty, "pairs": pairs, "reps": group,
                           "representative": reps[rep]})
            for r in group:
                for other in edges.pop(r, {}):
                    if other in edges:
                        edges[other].pop(r, None)
                        if not edges[other]:
                            del edges[other]
    return groups


class PairCache:
    """Verdicts by the two contents' sha256 (order-free), in the scan cache's SQLite file."""

    def __init__(self, path=None):
        from ..sqlite_store import SqliteStore

        if path is None:
            from ..paths import cache_dir

            path = cache_dir() / "scan.sqlite3"
        self.store = SqliteStore(path, "CREATE TABLE IF NOT EXISTS pairs (a TEXT, b TEXT, version TEXT, "
                                       "verdict TEXT, PRIMARY KEY (a, b, version)) WITHOUT ROWID;")

    def get(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], Verdict]:
        out: dict[tuple[str, str], Verdict] = {}
        wanted = {_key(a, b) for a, b in keys}
        firsts = sorted({a for a, _ in wanted})
        for a, b, text in self.store.select_in("SELECT a, b, verdict FROM pairs WHERE version=? AND a IN ({marks})",
                                               (VERSION,), firsts):
            if (a, b) in wanted:
                out[(a, b)] = Verdict.from_dict(json.loads(text))
        return out

    def put(self, items: Sequence[tuple[str, str, Verdict]]) -> None:
        rows = []
        for a, b, v in items:
            ka, kb = _key(a, b)
            rows.append((ka, kb, VERSION, json.dumps(v.to_dict())))
        self.store.write("INSERT OR REPLACE INTO pairs VALUES (?, ?, ?, ?)", rows)
