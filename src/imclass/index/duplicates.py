"""Near-duplicates across a whole library, through the index: the audit's decision at library scale.

Candidates come from the index (each distinct content's :data:`K` nearest neighbours, never all pairs) and,
up to :data:`PHASH_MAX` distinct contents, from the stored perceptual hashes as in the audit (each content's
nearest hashes, mirror-aware: this pass compares all pairs of 64-bit hashes, in blocks); then
exactly the audit's steps (:mod:`imclass.data.duplicates`): the thumbnail pre-screen (thumbnails from the
decode-scan cache, computed only for files in a candidate pair), keypoint + pixel verification (verdicts
cached by content, shared with the audit), and star groups (a representative and the images verified
against it: no chains). Identical files are grouped by content hash. Pairs marked "not a duplicate" beside a
source folder (``not-duplicates.csv``) are never joined.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ImageLoadError

#: Neighbours per distinct content that become candidates (the audit takes 4 + 2 by embedding, 3 by hash).
K = 6
#: Largest number of distinct contents whose perceptual hashes are compared all against all (~10 s at 200,000);
#: beyond, candidates come from the embedding index alone.
PHASH_MAX = 200_000


@dataclass
class DuplicateReport:
    """Groups of identical files and of verified near-duplicates, with each pair's evidence."""

    index: str
    exact: list[dict[str, Any]] = field(default_factory=list)  # {"sha256", "paths"}
    near: list[dict[str, Any]] = field(default_factory=list)  # {"certainty", "representative", "paths", "evidence"}
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def duplicates(self) -> list[dict[str, Any]]:
        return [g for g in self.near if g["certainty"] == "duplicate"]

    @property
    def possible(self) -> list[dict[str, Any]]:
        return [g for g in self.near if g["certainty"] != "duplicate"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find(index: Any, *, k: int = K, min_score: float = 0.0, workers: int = 2, cache: bool = True,
         progress=None) -> DuplicateReport:
    """Exact and near-duplicate groups of everything in ``index`` (an :class:`~imclass.index.core.Index`).
    ``min_score``: candidates need at least this cosine similarity (0: every one of the ``k`` neighbours is a
    candidate, as in the audit)."""
    from ..data.duplicates import PairCache, _decide, _stars
    from ..data.marks import read_marks
    from ..data.scan import scan_dataset
    from ..data.verify import WORK_SIDE, working_image
    from ..images import load_image

    t0 = time.perf_counter()
    rows = index.store.rows("id, path, sha256")
    report = DuplicateReport(index=str(index.path))
    by_sha: dict[str, list[int]] = {}
    for pos, (_id, _path, sha) in enumerate(rows):
        by_sha.setdefault(sha or f"id:{_id}", []).append(pos)
    report.exact = [{"sha256": sha, "paths": [rows[p][1] for p in members]}
                    for sha, members in by_sha.items() if len(members) > 1 and not sha.startswith("id:")]
    members = list(by_sha.values())
    reps = [m[0] for m in members]  # positions in rows: one per distinct content
    rep_of_id = {rows[p][0]: r for r, m in enumerate(members) for p in m}
    stats: dict[str, Any] = {"images": len(rows), "contents": len(reps), "k": k, "min_score": min_score}

    # 1. candidates: each content's nearest neighbours in the index
    cands: set[tuple[int, int]] = set()
    rep_ids = np.array([rows[p][0] for p in reps], dtype=np.int64)
    for start in range(0, len(rep_ids), 4096):
        chunk = rep_ids[start:start + 4096]
        own = [{int(rows[p][0]) for p in members[start + j]} for j in range(len(chunk))]
        hits = index.search_vectors(index.store.read(chunk), k, exclude=own)
        for j, found in enumerate(hits):
            a = start + j
            for other, score in found:
                b = rep_of_id.get(other)
                if b is not None and b != a and score >= min_score:
                    cands.add((min(a, b), max(a, b)))
        if progress is not None:
            progress("neighbours", min(start + 4096, len(rep_ids)), len(rep_ids))
    stats["embedding_candidates"] = len(cands)
    if len(reps) <= PHASH_MAX:
        from ..data.duplicates import candidate_pairs

        ids, h, m = index.hashes()
        code = dict(zip(ids.tolist(), zip(h.tolist(), m.tolist())))
        hashes = [code.get(int(rows[p][0]), (None, None)) for p in reps]
        before = len(cands)
        cands.update(candidate_pairs(list(range(len(reps))), [x[0] for x in hashes], [x[1] for x in hashes], None))
        stats["hash_candidates_added"] = len(cands) - before
    cand_list = sorted(cands)
    marked: set[frozenset[str]] = set()
    for source in index.manifest.get("sources", []):
        marked |= read_marks(source)
    shas = [rows[p][2] or f"id:{rows[p][0]}" for p in reps]
    cand_list = [(a, b) for a, b in cand_list if frozenset((shas[a], shas[b])) not in marked]
    stats["candidates"] = len(cand_list)

    # 2. thumbnails of the files in a candidate pair (decode-scan cache), then the audit's decision
    involved = sorted({r for pair in cand_list for r in pair})
    scan = scan_dataset([rows[reps[r]][1] for r in involved], [shas[r] for r in involved], [None] * len(involved),
                        workers=workers, cache=cache,
                        progress=(lambda d, t: progress("decode", d, t)) if progress is not None else None)
    thumbs: dict[int, np.ndarray | None] = {r: f.thumbnail() for r, f in zip(involved, scan)}

    def load(r: int):
        try:
            return working_image(load_image(rows[reps[r]][1], draft_size=(WORK_SIDE, WORK_SIDE)))
        except ImageLoadError:
            return None

    local = list(range(len(reps)))  # _decide/_stars index contents through reps: here they are their own reps
    if progress is not None:
        progress("verify", 0, 1)
    verdicts = _decide(cand_list, local, shas, _Lookup(thumbs), load, PairCache() if cache else None, workers,
                       stats)
    groups = _stars(verdicts, local, members)
    if progress is not None:
        progress("verify", 1, 1)
    for g in groups:
        paths = [rows[p][1] for p in g["rows"]]
        report.near.append({
            "certainty": g["certainty"], "representative": rows[reps[g["representative"]]][1], "paths": paths,
            "evidence": [{"a": rows[reps[a]][1], "b": rows[reps[b]][1], **v.to_dict()} for a, b, v in g["pairs"]]})
    stats["seconds"] = round(time.perf_counter() - t0, 2)
    report.stats = stats
    return report


class _Lookup:
    """``thumbs[r]`` for the contents that have one (None for the rest)."""

    def __init__(self, data: dict[int, np.ndarray | None]):
        self.data = data

    def __getitem__(self, r: int):
        return self.data.get(r)
