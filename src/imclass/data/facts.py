"""What audit, split and clean need to know about every row: a decode scan and (optionally) embeddings."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .dataset import Dataset
from .importers import inspect_files
from .scan import ScanFacts, scan_dataset

#: ``progress(stage, done, total)``: stages ``decode``, ``embed``, ``neighbours``, ``labels``.
Progress = Callable[[str, int, int], None]


@dataclass
class RowFacts:
    scan: list[ScanFacts]
    vectors: np.ndarray | None  # (N, D) float32, NaN rows where embedding failed; None when not computed
    backbone: str | None = None  # cache key of the backbone the vectors came from
    embedded: int = 0  # vectors computed now (the rest came from the cache)


def inspected(ds: Dataset, workers: int = 2) -> Dataset:
    """``ds``, with content hashes and header facts filled in for rows imported without them."""
    t = ds.table
    missing = [i for i, (sha, err) in enumerate(zip(t["sha256"], t["error"]))
               if not isinstance(sha, str) and not isinstance(err, str)]
    if not missing:
        return ds
    table = t.copy()
    facts = inspect_files([t["path"].iat[i] for i in missing], workers=workers)
    for col in ("sha256", "width", "height", "mode", "format", "bytes", "error"):
        values = table[col].astype(object).tolist()
        for i, f in zip(missing, facts):
            values[i] = f[col]
        table[col] = values
    return ds.with_table(table)


def collect(ds: Dataset, *, embeddings: Any = True, backbone: Any = "default", workers: int = 2,
            cache: bool = True, progress: Progress | None = None) -> RowFacts:
    """Decode-scan every row and, unless ``embeddings`` is False, embed it.

    ``embeddings`` may also be precomputed: an :class:`~imclass.features.Embeddings` or an ``(N, D)`` array.
    """
    table = ds.table
    shas = [s if isinstance(s, str) else None for s in table["sha256"]]
    errors = [e if isinstance(e, str) else None for e in table["error"]]
    scan = scan_dataset(ds.paths, shas, errors, workers=workers, cache=cache,
                        progress=(lambda d, t: progress("decode", d, t)) if progress else None)
    if embeddings is False or embeddings is None:
        return RowFacts(scan, None)
    if embeddings is not True:
        vectors = np.asarray(getattr(embeddings, "vectors", embeddings), dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(ds):
            raise ValueError(f"embeddings must be ({len(ds)}, D); got {vectors.shape}")
        return RowFacts(scan, vectors, getattr(embeddings, "backbone", None))
    from ..features import embed_dataset

    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress("embed", done, len(ds))

    if progress is not None:
        progress("embed", 0, len(ds))
    kwargs: dict[str, Any] = {} if cache else {"cache": False}
    emb = embed_dataset(ds, backbone, progress=tick, **kwargs)
    vectors = emb.vectors.copy()
    for i, facts in enumerate(scan):  # a file the scan could not decode has no trustworthy vector either
        if facts.error is not None:
            vectors[i] = np.nan
    if vectors.shape[1] == 0:
        return RowFacts(scan, None, emb.backbone, emb.computed)
    return RowFacts(scan, vectors, emb.backbone, emb.computed)
