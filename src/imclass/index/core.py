"""``Index``: find similar images in a library. Embeddings through the one engine and the embedding cache,
stored with a faiss index in a folder (:mod:`imclass.index.store`), kept up to date incrementally.

>>> idx = imclass.Index.build(["photos/"], "photos.idx")      # embeds what is new or changed
>>> [(n.path, n.score) for n in idx.search(["query.jpg"], k=5)[0].neighbours]
>>> idx.add(["more/"]); idx.remove(["photos/old.jpg"]); idx.save()
>>> imclass.Index.compare("a.jpg", "b.jpg").relation          # "near-duplicate", "similar", ...
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ImclassError, ParameterError
from . import kinds
from .build import BuildResult, Progress, label_of, sha256_file, update
from .results import Match, Neighbour, unit
from .store import IndexStoreError, Store

#: Rows read from the vectors file at once when (re)building the faiss structure.
CHUNK = 65_536


class Index:
    """An image similarity index in a folder. Create with :meth:`build` (or :meth:`create`), open with
    :meth:`load`; :meth:`add`, :meth:`remove`, :meth:`search`; :meth:`save` writes the faiss structure (rows and
    vectors are committed as they are added)."""

    def __init__(self, store: Store):
        self.store = store
        self._faiss: Any = None
        self._faiss_gen = -1
        self._saved_gen = -1
        self._embedder = None
        self._hashes: tuple[int, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self.last_build: BuildResult | None = None  # what the last build/add did

    # ---- opening ---------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, *, model: Any = "default", kind: str = "auto") -> Index:
        """A new, empty index at ``path`` for embeddings of ``model`` (``kind``: auto | flat | ivf-sq8 | ivf-pq)."""
        from ..features import Embedder

        if kind != "auto" and kind not in kinds.KINDS:
            raise ParameterError("kind", f"must be auto or one of {', '.join(kinds.KINDS)}")
        embedder = Embedder(model)
        name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else (
            getattr(model.spec, "source", None) or model.spec.model_id)
        spec = embedder.spec
        import faiss

        from ..version import __version__

        manifest = {"model": name, "backbone": embedder.key, "preprocess": spec.preprocess.to_dict(),
                    "architecture": spec.architecture, "dim": None, "metric": "cosine (inner product of unit "
                    "vectors)", "kind_policy": kind, "index": {"kind": "flat"}, "sources": [],
                    "created": _now(), "imclass": __version__, "faiss": faiss.__version__}
        index = cls(Store.create(path, manifest))
        index._embedder = embedder
        return index

    @classmethod
    def load(cls, path: str | os.PathLike) -> Index:
        """Open the index at ``path`` (errors that say what to do when it is missing or damaged)."""
        return cls(Store.open(path))

    @classmethod
    def build(cls, sources: Sequence[str | os.PathLike] | str | os.PathLike, path: str | os.PathLike, *,
              model: Any = None, kind: str | None = None, rebuild: bool = False, prune: bool = True,
              workers: int | None = None, progress: Progress | None = None) -> Index:
        """Index the images under ``sources`` into ``path``, creating it, or updating it incrementally (new and
        changed files embedded, deleted ones dropped; ``prune``: also files missing outside ``sources``).
        ``rebuild`` starts afresh (embeddings still come from the cache). The result is in ``index.last_build``."""
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        from ..engine.sources import validate_sources

        missing = validate_sources(sources)
        if missing:
            raise ParameterError("sources", f"names no such file or folder: {', '.join(missing[:3])}")
        folder = Path(path)
        if rebuild and (folder / "manifest.json").is_file():
            import shutil

            shutil.rmtree(folder)
        if (folder / "manifest.json").exists():
            index = cls.load(folder)
            if model is not None:
                index.check_model(model)
            if kind is not None and kind != index.store.manifest.get("kind_policy"):
                if kind != "auto" and kind not in kinds.KINDS:
                    raise ParameterError("kind", f"must be auto or one of {', '.join(kinds.KINDS)}")
                index.store.manifest["kind_policy"] = kind
        else:
            index = cls.create(folder, model=model or "default", kind=kind or "auto")
        index.add(sources, prune=prune, workers=workers, progress=progress)
        return index

    # ---- identity --------------------------------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self.store.folder

    @property
    def manifest(self) -> dict[str, Any]:
        return self.store.manifest

    @property
    def model(self) -> str:
        return str(self.manifest["model"])

    @property
    def kind(self) -> str:
        return str(self.manifest.get("index", {}).get("kind", "flat"))

    def __len__(self) -> int:
        return self.store.count()

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, {len(self)} images, model={self.model!r}, kind={self.kind!r})"

    def info(self) -> dict[str, Any]:
        m = self.manifest
        return {"index": str(self.path), "images": len(self), "model": m["model"], "backbone": m["backbone"],
                "dim": m.get("dim"), "kind": self.kind, "settings": m.get("index", {}),
                "preprocess": m.get("preprocess"), "sources": m.get("sources", [])}

    def embedder(self):
        if self._embedder is None:
            from ..features import Embedder

            self._embedder = Embedder(self.model)
        return self._embedder

    def check_backbone(self, key: str | None, what: str = "these vectors") -> None:
        """Refuse vectors embedded by another backbone or preprocessing than the index's."""
        if key is not None and key != self.manifest["backbone"]:
            raise ImclassError(
                f"{what} were embedded differently (embedding key {key}) from this index (model "
                f"{self.model!r}, key {self.manifest['backbone']}: weights, architecture and preprocessing): "
                f"their similarities would mean nothing. Query with the index's model, or build an index with "
                f"this model (imclass index build SOURCES... --model M --out NEW)")

    def check_model(self, model: Any) -> None:
        """Refuse a model whose embeddings differ from the index's (another backbone or preprocessing)."""
        from ..features import Embedder

        embedder = Embedder(model)
        if embedder.key != self.manifest["backbone"]:
            name = os.fspath(model) if isinstance(model, (str, os.PathLike)) else "this model"
            raise ParameterError(
                "model", f"{name!r} embeds images differently from the model this index was built with "
                f"({self.model!r}: another backbone or preprocessing, embedding key {embedder.key} != "
                f"{self.manifest['backbone']}): its similarities would mean nothing; leave out {{model}} to use "
                f"the index's, or build a new index with it")
        self._embedder = embedder

    # ---- changing --------------------------------------------------------------------------------------
    def add(self, sources: Sequence[str | os.PathLike] | str | os.PathLike, *, prune: bool = False,
            workers: int | None = None, progress: Progress | None = None) -> BuildResult:
        """Index new and changed images under ``sources`` (files or folders), drop indexed ones that are gone
        from them (``prune``: also those missing anywhere), and save. Resumable after any interruption."""
        if isinstance(sources, (str, os.PathLike)):
            sources = [sources]
        t0 = time.perf_counter()
        with self.store.writing():
            res = update(self, sources, prune=prune, workers=workers, progress=progress)
            known = list(self.manifest.get("sources", []))
            for s in sources:
                a = os.path.abspath(os.fspath(s))
                if a not in known:
                    known.append(a)
            self.manifest["sources"] = known
            t1 = time.perf_counter()
            self._save()
        res.count, res.kind = len(self), self.kind
        res.seconds["index"] = round(time.perf_counter() - t1, 2)
        res.seconds["total"] = round(time.perf_counter() - t0, 2)
        self.last_build = res
        return res

    def add_vectors(self, paths: Sequence[str], vectors: np.ndarray, *, shas: Sequence[str | None] | None = None,
                    labels: Sequence[str] | None = None, states: Sequence[tuple[int, int]] | None = None,
                    replace_ids: Sequence[int] = (), backbone: str | None = None,
                    phashes: Sequence[tuple[int | None, int | None]] | None = None) -> np.ndarray:
        """Add precomputed embeddings (of this index's model) for ``paths``; returns their ids. A path already
        indexed is replaced. ``backbone``: the vectors' embedding key, checked when given; ``phashes``: the
        files' perceptual hashes ``(as is, mirrored)`` (copy candidates). The faiss structure follows on the
        next search or :meth:`save`."""
        self.check_backbone(backbone)
        paths = [os.path.abspath(os.fspath(p)) for p in paths]
        x = unit(vectors)
        if len(x) != len(paths):
            raise ParameterError("vectors", f"has {len(x)} rows for {len(paths)} paths")
        if not np.isfinite(x).all():
            raise ParameterError("vectors", "has NaN or infinite values (images that could not be embedded?)")
        old = self.store.by_path(paths)
        replace = sorted({*map(int, replace_ids), *(v[0] for v in old.values())})
        ids = self.store.free_slots(len(paths))
        self.store.write_vectors(ids, x)
        rows = []
        for i, p in enumerate(paths):
            mtime, size = states[i] if states is not None else (None, None)
            ph, pm = phashes[i] if phashes is not None else (None, None)
            rows.append((int(ids[i]), p, shas[i] if shas is not None else None, mtime, size,
                         labels[i] if labels is not None else label_of(p), ph, pm))
        self.store.commit(rows, remove_ids=replace)
        return ids

    def remove(self, paths: Sequence[str | os.PathLike] | str | os.PathLike) -> int:
        """Drop ``paths`` (files or folders: everything indexed under them) from the index and save; returns how
        many were dropped."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        ids = self.store.ids_under([os.path.abspath(os.fspath(p)) for p in paths])
        with self.store.writing():
            if ids:
                self.store.commit([], remove_ids=ids)
            self._save()
        return len(ids)

    def prune(self) -> int:
        """Drop indexed files that no longer exist; returns how many."""
        gone = [p for _id, p in self.store.rows("id, path") if not os.path.exists(p)]
        return self.remove(gone) if gone else 0

    def save(self) -> None:
        """Bring the faiss structure up to date with the rows and write it (atomically)."""
        with self.store.writing():
            self._save()

    def _save(self) -> None:
        self.store.manifest["updated"] = _now()
        index = self._ensure()
        gen = self.store.generation
        if index is not None and (self._saved_gen != gen or not (self.path / "index.faiss").is_file()):
            self.store.write_faiss(index, self._faiss_gen, self.manifest["index"])
            self.store.forget_removed(self._faiss_gen)
            self._saved_gen = self._faiss_gen
        self.store.write_manifest()

    # ---- the faiss structure ---------------------------------------------------------------------------
    def _ensure(self):
        """The faiss index, in step with the rows: loaded, replayed from its generation, or (re)built."""
        store = self.store
        gen = store.generation
        if self._faiss is not None and gen == self._faiss_gen:
            return self._faiss
        if store.dim is None:
            return None
        n = store.count()
        if self._faiss is None:
            saved = store.read_faiss()
            if saved is not None:
                self._faiss, self._faiss_gen, settings = saved
                self._saved_gen = self._faiss_gen
                self.manifest["index"] = settings  # the structure's own settings (the manifest may lag a crash)
                if self._faiss.d != store.dim or self._faiss_gen > gen:
                    self._faiss, self._faiss_gen = None, -1
        settings = self.manifest.get("index", {})
        target = kinds.needs_rebuild(settings, n, self.manifest.get("kind_policy", "auto"))
        if self._faiss is None or target is not None:
            self._rebuild(target or settings.get("kind", "flat"))
        elif self._faiss_gen != gen:
            self._replay(self._faiss_gen)
        kinds.set_search_params(self._faiss, self.manifest["index"])
        return self._faiss

    def _rebuild(self, kind: str) -> None:
        store = self.store
        ids = store.ids()
        gen = store.generation
        sample = None
        if kind != "flat":
            rng = np.random.default_rng(0)
            want = min(len(ids), max(kinds.TRAIN_PER_LIST * kinds.nlist_for(len(ids)), 10_000), kinds.TRAIN_MAX)
            sample = store.read(np.sort(rng.choice(ids, size=want, replace=False)))
        t0 = time.perf_counter()
        index, settings = kinds.make(kind, store.dim, sample, n=len(ids))
        t1 = time.perf_counter()
        self._faiss, self._faiss_gen = index, gen
        self._add_rows(ids)
        settings["built_seconds"] = {"train": round(t1 - t0, 2), "add": round(time.perf_counter() - t1, 2)}
        self.manifest["index"] = settings
        self._saved_gen = -1

    def _replay(self, since: int) -> None:
        import faiss

        added, removed = self.store.changes_since(since)
        drop = np.unique(np.concatenate([added, removed]))
        if len(drop):
            self._faiss.remove_ids(faiss.IDSelectorBatch(drop))
        self._add_rows(added)
        self._faiss_gen = self.store.generation

    def _add_rows(self, ids: np.ndarray) -> None:
        ids = np.sort(np.asarray(ids, dtype=np.int64))
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start:start + CHUNK]
            self._faiss.add_with_ids(self.store.read(chunk), chunk)

    # ---- searching -------------------------------------------------------------------------------------
    def search_vectors(self, vectors: np.ndarray, k: int = 10, *, exclude: Sequence[set[int]] | None = None
                       ) -> list[list[tuple[int, float]]]:
        """The ``k`` nearest indexed rows ``(id, cosine)`` of each query vector (any length; normalised here),
        best first; ``exclude[i]``: ids never returned for query ``i``. Exact for the flat kind; the IVF kinds
        re-rank their candidates exactly from the stored vectors."""
        if k < 1:
            raise ParameterError("k", "must be >= 1")
        q = unit(vectors)
        index = self._ensure()
        n = 0 if index is None else int(index.ntotal)
        if n == 0:
            return [[] for _ in range(len(q))]
        if q.shape[1] != self.store.dim:
            raise ImclassError(f"query vectors have {q.shape[1]} dimensions; this index has {self.store.dim}")
        extra = max((len(e) for e in exclude), default=0) if exclude else 0
        settings = self.manifest["index"]
        flat = settings.get("kind") == "flat"
        want = min(n, k + extra) if flat else min(n, max(int(settings.get("rerank", kinds.RERANK)), k + extra))
        out = []
        for start in range(0, len(q), 256):
            block = q[start:start + 256]
            scores, ids = index.search(block, want)
            for r in range(len(block)):
                keep = ids[r] >= 0
                cand, s = ids[r][keep], scores[r][keep]
                if exclude:
                    bad = exclude[start + r]
                    if bad:
                        mask = np.array([int(c) not in bad for c in cand], dtype=bool)
                        cand, s = cand[mask], s[mask]
                if not flat and len(cand):
                    s = self.store.read(cand) @ block[r]
                    order = np.argsort(-s, kind="stable")
                    cand, s = cand[order], s[order]
                out.append([(int(c), float(v)) for c, v in zip(cand[:k], s[:k])])
        return out

    def hashes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, phash, mirrored phash)`` of the indexed files (kept in memory until the index changes)."""
        gen = self.store.generation
        if self._hashes is None or self._hashes[0] != gen:
            self._hashes = (gen, self.store.hashes())
        return self._hashes[1]

    def search(self, queries: Sequence[Any] | str | os.PathLike, k: int = 10, *, model: Any = None,
               verify: bool = False, copies: bool = True, exclude_self: bool = True,
               workers: int | None = None) -> list[Match]:
        """The ``k`` most similar indexed images of each query (paths, PIL images or bytes), by embedding cosine.

        ``copies``: also look for copies of the query (re-encoded, resized, cropped, mirrored) the way the audit
        does (perceptual-hash candidates, thumbnail pre-screen, keypoint + pixel verification) and list the
        verified ones first (``match="duplicate"``, then ``"possible"``: weaker evidence), whatever their
        embedding score. ``verify``: decide every
        neighbour that way (slower: ~30 ms a pair) and list duplicates first. An indexed path, or a file whose
        content is indexed, is not embedded again; a query's own path is left out (``exclude_self``).
        ``model``: refused unless it embeds exactly like the index's."""
        if isinstance(queries, (str, os.PathLike)):
            queries = [queries]
        queries = list(queries)
        if model is not None:
            self.check_model(model)
        names = [os.fspath(q) if isinstance(q, (str, os.PathLike)) else f"<image {i}>" for i, q in enumerate(queries)]
        vectors, errors, own, shas = self.query_vectors(queries, workers=workers)
        if not exclude_self:
            own = [set() for _ in own]
        ok = [i for i, e in enumerate(errors) if e is None]
        found = self.search_vectors(vectors[ok], k, exclude=[own[i] for i in ok]) if ok else []
        hits_of = dict(zip(ok, found))
        matched: dict[int, dict[int, str]] = {}
        if copies and ok:
            from .copies import verified_copies

            matched = verified_copies(self, queries, shas, errors, own, workers=workers or 2)
        paths = self.store.paths_of([i for hits in found for i, _ in hits] + [c for m in matched.values() for c in m])
        matches = [Match(names[i], error=errors[i]) for i in range(len(queries))]
        for i in ok:
            hits = hits_of[i]
            decided = matched.get(i, {})
            score = dict(hits)
            extra = [c for c in decided if c not in score]
            if extra:
                score.update(zip(extra, (self.store.read(extra) @ vectors[i]).tolist()))
            rank = {"duplicate": 0, "possible": 1}
            first = sorted(decided, key=lambda c: (rank.get(decided[c], 2), -score[c]))
            rest = [h for h, _ in hits if h not in set(first)]
            order = (first + rest)[:k]
            matches[i].neighbours = [Neighbour(paths[h], score[h], h, decided.get(h)) for h in order if h in paths]
        if verify:
            from .pair import verify_matches

            verify_matches(matches, queries, workers=workers or 2)
        return matches

    def query_vectors(self, queries: Sequence[Any], workers: int | None = None
                      ) -> tuple[np.ndarray, list[str | None], list[set[int]], list[str | None]]:
        """Unit vectors of the queries ``(Q, D)``, their errors, for each the ids of its own path, and the
        content hashes of the files among them."""
        n = len(queries)
        errors: list[str | None] = [None] * n
        own: list[set[int]] = [set() for _ in range(n)]
        stored: dict[int, int] = {}
        shas: list[str | None] = [None] * n
        paths = {i: os.path.abspath(os.fspath(q)) for i, q in enumerate(queries) if isinstance(q, (str, os.PathLike))}
        by_path = self.store.by_path(list(paths.values()))
        for i, p in paths.items():
            if p in by_path:
                own[i].add(int(by_path[p][0]))
            try:
                shas[i] = sha256_file(p)
            except OSError as e:
                errors[i] = f"cannot read: {e.strerror or e}"
        by_sha = self.store.by_sha([s for s in shas if s])
        for i, sha in enumerate(shas):
            if sha in by_sha:
                stored[i] = by_sha[sha]
        dim = self.store.dim or 0
        vectors = np.zeros((n, dim), np.float32)
        if stored:
            rows = list(stored)
            vectors[rows] = self.store.read([stored[i] for i in rows])
        todo = [i for i in range(n) if i not in stored and errors[i] is None]
        if todo:
            emb = self.embedder().embed([queries[i] for i in todo], [shas[i] for i in todo], workers=workers)
            self.check_backbone(emb.backbone, "the queries")
            if dim == 0 and emb.vectors.shape[1]:
                vectors = np.zeros((n, emb.vectors.shape[1]), np.float32)
            for j, i in enumerate(todo):
                if emb.errors[j] is None:
                    vectors[i] = emb.vectors[j]
                else:
                    errors[i] = emb.errors[j]
        return (unit(vectors) if n else vectors), errors, own, shas

    # ---- library-wide ----------------------------------------------------------------------------------
    def duplicates(self, **kwargs):
        """Groups of near-duplicates across the whole index (see :func:`imclass.index.duplicates.find`)."""
        from .duplicates import find

        return find(self, **kwargs)

    def map(self, out: str | os.PathLike, **kwargs):
        """A 2-D map of the embeddings as one HTML file (see :func:`imclass.index.mapping.write_map`)."""
        from .mapping import write_map

        return write_map(self, out, **kwargs)

    @staticmethod
    def compare(a: Any, b: Any, *, model: Any = "default"):
        """How similar two images are, as a number and in words (see :func:`imclass.index.pair.compare`)."""
        from .pair import compare

        return compare(a, b, model=model)

    def close(self) -> None:
        self.store.close()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


__all__ = ["Index", "IndexStoreError", "Match", "Neighbour", "unit"]
