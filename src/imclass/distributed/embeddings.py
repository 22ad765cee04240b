"""Embeddings on a Ray cluster, merged into the one embedding cache.

The probe, the audit and the similarity index read embeddings from the cache (:mod:`imclass.features.cache`,
keyed by content hash and backbone) and compute only what is missing. :func:`embed` computes what is missing
on the cluster first, through the same path as ``imclass predict --ray`` (files read as bytes by Ray Data, one
model per actor, decoded by the imclass loader), and stores every vector in the cache as its batch comes back;
the workflow that runs next finds them all there. The cache stays the single source: nothing else is kept.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ImclassError
from ..features import Embedder, EmbeddingCache
from .actors import EmbedActor, actor_class
from .cluster import connect, plan_actors, require_ray
from .files import absolute, read_library
from .label import map_actors

#: Below this many files to compute, :func:`embed` computes locally (starting actors would take longer).
MIN_REMOTE = 64


@dataclass
class EmbedSummary:
    """What :func:`embed` did. ``errors``: path -> why it has no embedding (the loader's reason)."""

    total: int = 0
    cached: int = 0  # already in the cache (nothing read)
    computed: int = 0  # embedded now and stored in the cache
    errors: dict[str, str] = field(default_factory=dict)
    backbone: str = ""  # the cache key of the backbone
    seconds: float = 0.0
    startup_seconds: float = 0.0  # starting or joining Ray
    cluster: str = ""
    plan: str = ""


def embed(items: Sequence[str | os.PathLike], shas: Sequence[str | None] | None = None, *,
          model: Any = "default", cache: EmbeddingCache | None = None, address: str | None = None,
          actors: int | None = None, gpus_per_actor: float = 0.0, cpus_per_actor: float | None = None,
          device: str = "auto", backend: str = "auto", threads: int | None = None, batch_size: int | None = None,
          workers: int | None = None, object_store_memory: int | None = None, local_below: int = MIN_REMOTE,
          progress: Callable[[int], None] | None = None) -> EmbedSummary:
    """Put the embeddings of the image files ``items`` from ``model``'s backbone into the cache, computed on Ray.

    With ``shas`` (the files' content hashes, e.g. ``Dataset.table["sha256"]``) cached files are not even read;
    without, every file is read on the cluster and hashed there, and only those whose hash is not cached are
    embedded. ``progress(n)`` is called with each batch's size. Then ``imclass.train`` (probe), ``imclass.audit``
    and ``imclass.Index`` find every embedding in the cache. Fewer than ``local_below`` files to compute are
    computed in this process (starting actors would take longer). Needs ``pip install 'imclass[ray]'``.
    """
    t0 = time.perf_counter()
    paths = [os.fspath(p) for p in items]
    if shas is not None and len(shas) != len(paths):
        raise ImclassError(f"{len(shas)} hashes for {len(paths)} files")
    cache = cache if cache is not None else EmbeddingCache()
    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        embedder = Embedder(name, device="cpu", cache=cache)
    else:  # a Classifier: its bundle or name, which every actor can load
        name = model.spec.source or model.spec.model_id
        embedder = Embedder(model, device="cpu", cache=cache)
    key = embedder.key
    summary = EmbedSummary(total=len(paths), backbone=key)
    todo = list(range(len(paths)))
    if shas is not None:
        known = cache.get(key, [s for s in shas if s])
        todo = [i for i in todo if not (shas[i] and shas[i] in known)]
        summary.cached = len(paths) - len(todo)
        if progress is not None and summary.cached:
            progress(summary.cached)
    todo = _dedupe(todo, paths, shas)
    if not todo:
        summary.seconds = time.perf_counter() - t0
        return summary
    if len(todo) < local_below:  # a handful: here, through the same cache
        emb = embedder.embed([paths[i] for i in todo], None if shas is None else [shas[i] for i in todo],
                             progress=progress)
        summary.computed += emb.computed
        summary.errors.update({paths[i]: e for i, e in zip(todo, emb.errors) if e})
        summary.seconds = time.perf_counter() - t0
        return summary

    require_ray()
    with connect(address, object_store_memory=object_store_memory) as cluster:
        summary.startup_seconds, summary.cluster = cluster.seconds, cluster.address
        plan = plan_actors(cluster, actors=actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor,
                           device=device, threads=threads, workers=workers)
        summary.plan = plan.describe()
        _run(summary, paths, todo, name, key, cache, plan, backend, batch_size, progress, shas is None)
    summary.seconds = time.perf_counter() - t0
    return summary


def _run(summary: EmbedSummary, paths: list[str], todo: list[int], name: str, key: str, cache: EmbeddingCache,
         plan, backend: str, batch_size: int | None, progress, hash_first: bool) -> None:
    import ray

    cached_ref = None
    if hash_first:  # the actors hash every file and embed only contents the cache lacks
        cached_ref = ray.put(sorted(cache.hashes(key)))
    settings = dict(model=name, device=plan.device, backend=backend, threads=plan.threads, workers=plan.workers,
                    batch_size=batch_size, cached=cached_ref)
    position = {absolute(paths[i]): i for i in todo}
    got: set[int] = set()
    try:
        dataset = read_library(list(position), blocks=max(1, min(len(todo), max(4 * plan.actors, len(todo) // 256))))
    except ValueError:
        dataset = None
    if dataset is not None:
        for table in map_actors(dataset, actor_class(EmbedActor, **settings), plan).iter_batches(
                batch_size=None, batch_format="pyarrow"):
            rows = []
            for row in table.to_pylist():
                i = position.get(row["path"])
                if i is None or i in got:
                    continue
                got.add(i)
                if row["error"] is not None:
                    summary.errors[paths[i]] = row["error"]
                elif row["vector"] is None:
                    summary.cached += 1  # its content was in the cache already
                else:
                    rows.append((row["sha256"], np.asarray(row["vector"], dtype=np.float32)))
            if rows:
                cache.put(key, rows)  # one transaction per batch: an interrupted run keeps what came back
                summary.computed += len(rows)
            if progress is not None:
                progress(table.num_rows)
    from ..images import open_error

    left = [i for i in todo if i not in got]  # vanished before the read was planned: the loader says why
    readable = []
    for i in left:
        reason = open_error(paths[i])
        if reason is None:
            readable.append(i)
        else:
            summary.errors[paths[i]] = reason
    if readable:
        emb = Embedder(name, device="cpu", backend=backend, cache=cache).embed(
            [paths[i] for i in readable], [_sha(paths[i]) for i in readable])
        summary.computed += emb.computed
        summary.errors.update({paths[i]: e for i, e in zip(readable, emb.errors) if e})
        if progress is not None:
            progress(len(readable))


def _dedupe(todo: list[int], paths: list[str], shas: Sequence[str | None] | None) -> list[int]:
    """One file per content (when hashes are known) and per path."""
    seen: set[str] = set()
    out = []
    for i in todo:
        key = (shas[i] if shas is not None and shas[i] else None) or "path:" + absolute(paths[i])
        if key not in seen:
            seen.add(key)
            out.append(i)
    return out


def _sha(path: str) -> str | None:
    import hashlib

    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None
