"""The faiss structures an index can use, chosen by size (measured with ``bench/index.py``, bench/RESULTS.md).

=========  ==============================================  ===================  ==========================
kind       faiss                                           bytes per vector     used for
=========  ==============================================  ===================  ==========================
flat       ``IndexIDMap2(IndexFlatIP)``: exact              4 x dim (+ 8 id)     up to :data:`FLAT_MAX`
ivf-sq8    ``IVF<nlist>,SQ8``: 8-bit scalar codes           dim (+ 8 id)         up to :data:`SQ8_MAX`
ivf-pq     ``IVF<nlist>,PQ<m>np``: product-quantised codes  m = dim / 10 (+ 8)   beyond
=========  ==============================================  ===================  ==========================

Vectors are unit length, so inner product is cosine similarity. The IVF kinds search ``rerank`` candidates
in their compressed codes and re-rank them exactly from the full vectors kept on disk (memory-mapped
float16), so the scores they report are the exact cosine similarities, like the flat kind's. All three
support removal by id (faiss's HNSW does not, which is why it is not among them).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Largest index searched exhaustively: a single query over 20,000 x 1280 float32 vectors takes ~2-5 ms here.
FLAT_MAX = 20_000
#: Largest index kept as 8-bit scalar codes (1.3 GB of RAM for 1,000,000 vectors of 1280 dimensions); beyond,
#: product-quantised codes (10x smaller, a little less recall before re-ranking).
SQ8_MAX = 2_000_000
KINDS = ("flat", "ivf-sq8", "ivf-pq")
#: Candidates an IVF search re-ranks exactly (recall@10 0.989 against exact search at 1,000,000 vectors, 8-bit
#: codes); product-quantised codes are coarser: 100 gave 0.945 at 200,000, 200 about 0.98.
RERANK, RERANK_PQ = 100, 200
#: The IVF structure is retrained once the index has grown this many times past the size it was trained at.
RETRAIN_GROWTH = 8
#: Training sample: this many vectors per list (faiss's k-means warns below 39; 32 measured as good), at most
#: TRAIN_MAX (k-means on 65,536 x 1280 into 2,048 lists: ~35 s on 2 busy cores).
TRAIN_PER_LIST, TRAIN_MAX = 32, 131_072
#: Fewest vectors an IVF kind is trained on (8 lists); a smaller index stays flat whatever was asked.
MIN_TRAIN = 8 * TRAIN_PER_LIST


def choose_kind(n: int) -> str:
    return "flat" if n <= FLAT_MAX else "ivf-sq8" if n <= SQ8_MAX else "ivf-pq"


def nlist_for(n: int) -> int:
    """Inverted lists for ``n`` vectors: ~2 sqrt(n) (2,048 for 1,000,000), a power of two, each list trainable."""
    target = 2 * math.sqrt(max(n, 1))
    nlist = 2 ** max(3, round(math.log2(target)))
    while nlist > 8 and nlist * TRAIN_PER_LIST > n:
        nlist //= 2
    return int(min(nlist, 65_536))


def nprobe_for(nlist: int) -> int:
    """Lists visited per query: 32 of 2,048 gave recall@10 0.986 against exact search on 1,000,000 synthetic
    1280-d vectors shaped like real embeddings, 16 only 0.947 (bench/index.py); more lists, proportionally more."""
    return int(min(nlist, max(32, nlist // 64)))


def pq_m(dim: int) -> int:
    """Sub-quantisers of the PQ kind: about one per 10 dimensions, dividing ``dim``."""
    for m in range(max(1, dim // 10), 0, -1):
        if dim % m == 0:
            return m
    return 1


def bytes_per_vector(kind: str, dim: int) -> int:
    """RAM of one vector in the faiss structure (codes + id), the lists' own overhead left out."""
    return {"flat": 4 * dim, "ivf-sq8": dim, "ivf-pq": pq_m(dim)}[kind] + 8


def make(kind: str, dim: int, sample: np.ndarray | None = None, n: int = 0) -> tuple[Any, dict[str, Any]]:
    """An empty (trained) faiss index of ``kind`` and its settings for the manifest. ``sample``: unit vectors
    to train an IVF kind on; ``n``: the number of vectors it is built for (sets the number of lists)."""
    import faiss

    if kind == "flat":
        return faiss.IndexIDMap2(faiss.IndexFlatIP(dim)), {"kind": kind}
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}")
    if sample is None or len(sample) < MIN_TRAIN:
        raise ValueError(f"an {kind} index needs at least {MIN_TRAIN} vectors to train on")
    nlist = nlist_for(max(n, len(sample)))
    nlist = min(nlist, max(8, 2 ** int(math.log2(len(sample) // TRAIN_PER_LIST))))
    code = "SQ8" if kind == "ivf-sq8" else f"PQ{pq_m(dim)}np"
    index = faiss.index_factory(dim, f"IVF{nlist},{code}", faiss.METRIC_INNER_PRODUCT)
    faiss.extract_index_ivf(index).cp.min_points_per_centroid = TRAIN_PER_LIST  # the sample is sized on purpose
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index, {"kind": kind, "nlist": nlist, "nprobe": nprobe_for(nlist), "trained_on": int(max(n, len(sample))),
                   "factory": f"IVF{nlist},{code}", "rerank": RERANK if kind == "ivf-sq8" else RERANK_PQ}


def needs_rebuild(settings: dict[str, Any], n: int, policy: str) -> str | None:
    """The kind to rebuild to for ``n`` vectors (None: keep the current structure)."""
    current = settings.get("kind")
    want = choose_kind(n) if policy == "auto" else policy
    if want != "flat" and n < MIN_TRAIN:
        want = "flat"  # too few vectors to train lists on
    if current != want:
        return want
    if want != "flat" and n > RETRAIN_GROWTH * int(settings.get("trained_on") or 1):
        return want
    return None


def set_search_params(index: Any, settings: dict[str, Any]) -> None:
    if settings.get("kind", "flat") != "flat":
        import faiss

        faiss.extract_index_ivf(index).nprobe = int(settings.get("nprobe") or 16)
