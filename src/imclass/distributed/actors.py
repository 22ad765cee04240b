"""The Ray Data callable classes: one model per actor, loaded through :func:`imclass.load` (or an
:class:`~imclass.features.Embedder`), every image decoded by the one imclass loader from the bytes it was sent.

Each run makes a subclass holding its settings as class attributes (:func:`actor_class`), so Ray ships them
with the class and the actors take no constructor arguments.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np

from .. import faults
from ..errors import ImageLoadError

#: Rows per actor call: several model batches, so a call's overhead is shared and a retried call is cheap.
ROWS_PER_CALL = 64


def actor_class(base: type, **settings: Any) -> type:
    """A subclass of ``base`` carrying ``settings`` (what :meth:`__init__` reads)."""
    return type(base.__name__, (base,), {"settings": settings, "__module__": base.__module__})


def _columns(batch) -> tuple[list[str], list[bytes | None], list[str | None]]:
    paths = batch.column("path").to_pylist()
    data = batch.column("bytes").to_pylist()
    errors = (batch.column("read_error").to_pylist() if "read_error" in batch.column_names
              else [None] * len(paths))
    return paths, data, errors


class Labeller:
    """Labels ``path``/``bytes`` rows: the output schema of ``imclass predict`` (:func:`prediction_schema`)."""

    settings: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        from ..classifier import Classifier
        from ..labelling import label_ids

        s = self.settings
        self.clf = Classifier.load(s["model"], device=s["device"], backend=s["backend"], threads=s["threads"],
                                   streams=s["streams"])
        _ = self.clf.backend  # the runtime now: an actor is ready when its model is
        self.multi = self.clf.spec.task == "multi_label"
        self.extra = tuple(s["extra"])
        self.add_ids = label_ids(self.clf.labels) if self.extra else None
        self.skip = _skip_set(s.get("skip"))
        self.schema = self._schema()

    def _label(self, batch: np.ndarray, names: list[str]):
        preds = self.clf.decide_batch(batch, names, self.settings["top_k"], self.settings["reject_unknown"])
        if self.add_ids is not None:
            for p in preds:
                self.add_ids(p)
        return preds

    def _schema(self):
        """The output columns: those of ``imclass predict``'s Parquet output for this model (``labels`` for
        multi-label models, ``--ids`` columns), and any other column its rows carry, found by labelling one blank
        image, so that every batch (one of unreadable files too) has the same columns."""
        import pyarrow as pa

        from ..labelling.sinks import EXTRA_TYPES, parquet_schema

        h, w = self.clf.spec.preprocess.input_size
        row = self._label(np.zeros((1, h, w, 3), np.uint8), ["blank"])[0].to_dict()
        schema = parquet_schema(self.multi, tuple(dict.fromkeys([*self.extra, *(k for k in row if k in EXTRA_TYPES)])))
        for key, value in row.items():
            if key not in schema.names:
                schema = schema.append(pa.field(key, pa.array([value]).type))
        return schema

    def __call__(self, batch):
        import pyarrow as pa

        from ..engine.pipeline import run_batches

        paths, data, errors = _columns(batch)
        items = [it for it in zip(paths, data, errors) if it[0] not in self.skip]
        s, clf = self.settings, self.clf
        rows: list[dict[str, Any]] = []
        for preds in run_batches(items, decode=lambda it: clf.decode(_bytes(it)), infer=self._label,
                                 name_of=lambda it: it[0], batch_size=s["batch_size"], workers=s["workers"],
                                 infer_workers=clf.backend.streams):
            rows.extend(p.to_dict() for p in preds)
        faults.checkpoint("ray.batch")
        return pa.Table.from_pylist(rows, schema=self.schema)


class EmbedActor:
    """Embeds ``path``/``bytes`` rows: ``path``, ``sha256`` (of the bytes), ``vector`` (float32) and ``error``.
    Rows whose content hash is in ``settings["cached"]`` (an object reference to a set) are hashed, not embedded."""

    settings: ClassVar[dict[str, Any]] = {}

    def __init__(self) -> None:
        from ..features import Embedder

        s = self.settings
        self.embedder = Embedder(s["model"], device=s["device"], backend=s["backend"], threads=s["threads"],
                                 cache=False)
        self.embedder.prepare()  # the runtime now: an actor is ready when its model is
        self.cached = _skip_set(s.get("cached"))

    def __call__(self, batch):
        import pyarrow as pa

        paths, data, errors = _columns(batch)
        shas = [None if d is None else hashlib.sha256(d).hexdigest() for d in data]
        todo = [i for i in range(len(paths)) if errors[i] is None and data[i] is not None
                and shas[i] not in self.cached]
        out_err: list[str | None] = list(errors)
        vectors: list[Any] = [None] * len(paths)
        if todo:
            s = self.settings
            emb = self.embedder.embed([data[i] for i in todo], batch_size=s["batch_size"], workers=s["workers"])
            for j, i in enumerate(todo):
                if emb.errors[j] is None:
                    vectors[i] = np.asarray(emb.vectors[j], dtype=np.float32)
                else:
                    out_err[i] = emb.errors[j]
        faults.checkpoint("ray.batch")
        return pa.table({"path": pa.array(paths, pa.string()), "sha256": pa.array(shas, pa.string()),
                         "vector": pa.array(vectors, pa.list_(pa.float32())),
                         "error": pa.array(out_err, pa.string())})


def _bytes(item: tuple[str, bytes | None, str | None]) -> bytes:
    path, data, error = item
    if error is not None:
        raise ImageLoadError(path, error)
    if data is None:
        raise ImageLoadError(path, "no bytes were read")
    return data


def _skip_set(ref) -> frozenset[str]:
    """Paths (or hashes) to leave out: an object reference the driver put in the object store, or nothing."""
    if ref is None:
        return frozenset()
    import ray

    return frozenset(ray.get(ref))
