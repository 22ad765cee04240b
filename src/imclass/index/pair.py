"""How similar are two images? A number (the cosine similarity of their embeddings) and words, decided the
way the audit decides near-duplicates (:mod:`imclass.data.verify`: keypoints, then pixels once aligned), not
by an embedding threshold alone.

- ``same photo``: identical files, or identical pixels once decoded;
- ``near-duplicate``: the audit's verdict "duplicate" (the same photo re-encoded, resized, cropped a little,
  mirrored or lightly edited);
- ``possible near-duplicate``: its verdict "possible" (weak evidence: tiny or low-detail images, or two
  images that overlap only in part);
- ``similar``: not the same photo, but embeddings at least :data:`SIMILAR` alike (same kind of scene or
  object);
- ``different``: neither.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ImageLoadError

if TYPE_CHECKING:
    from .results import Match

#: Cosine similarity of raw embeddings (default model) at or above which two photos that are not the same photo
#: are "similar". Measured on 200,000 random pairs of the 8,617 real photos of ../shared/datasets: pairs from
#: different classes 0.20 median, 0.57 at the 95th and 0.69 at the 99th percentile (~3% reach 0.6); pairs from
#: one class 0.45 median, 0.57 at the 75th percentile.
SIMILAR = 0.6
RELATIONS = ("same photo", "near-duplicate", "possible near-duplicate", "similar", "different")


@dataclass
class PairResult:
    a: str
    b: str
    score: float  # cosine similarity of the embeddings
    relation: str  # one of RELATIONS
    verdict: dict[str, Any] | None = None  # the pair verification's evidence (imclass.data.verify.Verdict)

    @property
    def words(self) -> str:
        return {"same photo": "the same photo (identical pixels)",
                "near-duplicate": "near-duplicates: the same photo, re-encoded, resized, cropped or mirrored",
                "possible near-duplicate": "possibly the same photo (weak evidence: small or plain images, or "
                                           "they overlap only in part)",
                "similar": "similar, but not the same photo",
                "different": "different"}[self.relation]

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "score": round(float(self.score), 6), "relation": self.relation,
                "words": self.words, "verdict": self.verdict}


def _bytes_sha(item: Any) -> str | None:
    if isinstance(item, (str, os.PathLike)):
        with open(item, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    if isinstance(item, (bytes, bytearray)):
        return hashlib.sha256(item).hexdigest()
    return None


def working(item: Any) -> np.ndarray | None:
    """The grey working image of the pair verification (None when it cannot be read)."""
    from ..data.verify import WORK_SIDE, working_image
    from ..images import load_image

    try:
        return working_image(load_image(item, draft_size=(WORK_SIDE, WORK_SIDE)))
    except ImageLoadError:
        return None


def compare(a: Any, b: Any, *, model: Any = "default") -> PairResult:
    """Compare two images (paths, PIL images or bytes) with ``model``'s embeddings and the audit's pair check."""
    from ..data.verify import PairVerifier, working_image
    from ..features import Embedder
    from ..images import load_image

    names = [os.fspath(x) if isinstance(x, (str, os.PathLike)) else f"<image {i}>" for i, x in enumerate((a, b))]
    try:
        shas = [_bytes_sha(a), _bytes_sha(b)]
    except OSError as e:
        raise ImageLoadError(getattr(e, "filename", None) or "?", f"cannot read: {e.strerror or e}") from None
    imgs = [load_image(a), load_image(b)]  # raises ImageLoadError with the reason
    emb = Embedder(model).embed([x if isinstance(x, (str, os.PathLike)) else imgs[i] for i, x in enumerate((a, b))],
                                shas)
    for err in emb.errors:
        if err is not None:
            raise ImageLoadError(names[emb.errors.index(err)], err)
    u = emb.vectors / np.maximum(np.linalg.norm(emb.vectors, axis=1, keepdims=True), 1e-12)
    score = float(u[0] @ u[1])
    if (shas[0] is not None and shas[0] == shas[1]) or _same_pixels(imgs[0], imgs[1]):
        return PairResult(names[0], names[1], 1.0 if shas[0] == shas[1] else score, "same photo")
    grey = [working_image(img) for img in imgs]
    verdict = PairVerifier(lambda i: grey[i]).verify(0, 1)
    relation = {"duplicate": "near-duplicate", "possible": "possible near-duplicate"}.get(verdict.decision)
    if relation is None:
        relation = "similar" if score >= SIMILAR else "different"
    return PairResult(names[0], names[1], score, relation, verdict.to_dict())


def _same_pixels(x, y) -> bool:
    if x.size != y.size:
        return False
    return x.convert("RGB").tobytes() == y.convert("RGB").tobytes()


def verify_matches(matches: list[Match], queries: list[Any], workers: int = 2) -> None:
    """Decide each query-neighbour pair with the audit's verification; duplicates first, then possible ones,
    each group by score."""
    from ..data.verify import PairVerifier

    images: dict[Any, np.ndarray | None] = {}

    def key_of(m_index: int, n_index: int | None):
        return ("q", m_index) if n_index is None else ("n", matches[m_index].neighbours[n_index].path)

    def load(key):
        if key not in images:
            kind, val = key
            images[key] = working(queries[val] if kind == "q" else val)
        return images[key]

    keys: list[Any] = []
    slot: dict[Any, int] = {}
    pairs = []
    for mi, m in enumerate(matches):
        if m.error is not None:
            continue
        for ni in range(len(m.neighbours)):
            if m.neighbours[ni].match is not None:  # decided already (a verified copy)
                continue
            for key in (key_of(mi, None), key_of(mi, ni)):
                if key not in slot:
                    slot[key] = len(keys)
                    keys.append(key)
            pairs.append((mi, ni, slot[key_of(mi, None)], slot[key_of(mi, ni)]))
    verifier = PairVerifier(lambda row: load(keys[row]))
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="imclass-verify") as pool:
        verdicts = list(pool.map(lambda p: verifier.verify(p[2], p[3]), pairs))
    for (mi, ni, _, _), v in zip(pairs, verdicts):
        matches[mi].neighbours[ni].match = v.decision
    rank = {"duplicate": 0, "possible": 1, "different": 2}
    for m in matches:
        m.neighbours.sort(key=lambda n: (rank.get(n.match or "different", 2), -n.score))


__all__ = ["RELATIONS", "SIMILAR", "PairResult", "compare", "verify_matches"]
