"""``imclass predict --ray``: label a library on a Ray cluster, written exactly as one process writes it.

The driver (this process) lists the sources in the same deterministic order as ``imclass predict`` and opens the
same output; Ray Data reads the files as bytes (:mod:`.files`) and a pool of actors labels them (:mod:`.actors`),
each with the model loaded once. Results stream back to the driver, which writes them:

- CSV, JSONL, JSON and one-file Parquet: in input order (a small reorder buffer), through the sinks of
  :mod:`imclass.labelling.sinks`, one write per batch, so ``--resume`` works exactly as for one process;
- large Parquet (more than ``part_rows`` images): a folder of parts, part *i* holding input partition *i*
  (images ``i * part_rows`` to ``(i + 1) * part_rows - 1`` of the listing), each written atomically when its
  last image is back.

Every image is written exactly once: a row is accepted only for a listed image not yet written (an actor that
dies mid-batch has that batch retried on a restarted actor; a duplicate is dropped), and images the cluster did
not return (files that vanished before the read was planned) are asked about on the driver with the loader
(``broken symlink``, ``file not found``) or, if they are readable after all, labelled there.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import faults
from ..engine.sources import iter_image_paths
from ..errors import ImclassError, ParameterError
from ..images import open_error
from ..labelling import ID_COLUMNS, LabelSummary, check_options, label_ids, output_columns
from ..labelling.sinks import PartsSink, Sink, open_sink
from ..labelling.sorting import Sorter
from ..prediction import Prediction
from .actors import ROWS_PER_CALL, Labeller, actor_class
from .cluster import READ_CPUS, Cluster, Plan, connect, plan_actors, require_ray
from .files import absolute, read_library

#: Images per Parquet part (and the size above which ``.parquet`` output is a folder of parts).
PART_ROWS = 10_000


@dataclass
class DistributedSummary(LabelSummary):
    """A :class:`~imclass.labelling.LabelSummary` with the cluster's share of the time.

    ``seconds`` runs from the start of execution (Ray up, library listed, output open) to the last row written;
    ``startup_seconds`` is starting or joining Ray; ``warmup_seconds`` the part of ``seconds`` before the first
    labelled batch came back (actors starting and loading the model); ``steady_images_per_second`` the rate after.
    """

    startup_seconds: float = 0.0
    warmup_seconds: float = 0.0
    steady_images: int = 0
    steady_seconds: float = 0.0
    cluster: str = ""
    plan: str = ""
    driver_labelled: int = 0  # images the cluster did not return that the driver labelled itself
    parts: int = 0  # Parquet parts written by this run

    @property
    def steady_images_per_second(self) -> float:
        return self.steady_images / self.steady_seconds if self.steady_seconds > 0 else 0.0


def predict(
    sources: Sequence[str | os.PathLike] | Any,
    *,
    model: str = "default",
    output: str | os.PathLike | None = None,
    top_k: int = 5,
    resume: bool = False,
    overwrite: bool = False,
    ids: bool = False,
    reject_unknown: bool = True,
    sort_into: str | os.PathLike | None = None,
    sort_mode: str = "copy",
    address: str | None = None,
    actors: int | None = None,
    gpus_per_actor: float = 0.0,
    cpus_per_actor: float | None = None,
    device: str = "auto",
    backend: str = "auto",
    threads: int | None = None,
    streams: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    part_rows: int = PART_ROWS,
    object_store_memory: int | None = None,
    on_start: Callable[[], None] | None = None,
    on_total: Callable[[int, int], None] | None = None,
    on_batch: Callable[[list[Prediction]], None] | None = None,
) -> DistributedSummary:
    """Label every image under ``sources`` on Ray and write ``output`` as :func:`imclass.label_library` does.

    ``sources``: files and folders (on storage every node sees at the same path), or a Ray Dataset of
    ``path``/``bytes`` rows (``ray.data.read_binary_files(..., include_paths=True)``, e.g. from object storage).
    ``address``: the cluster (``auto``, ``HOST:PORT``, ``ray://...``; default ``$RAY_ADDRESS``, else a local
    instance started for the run). ``actors``: model replicas (default: one per CPU core, or GPUs /
    ``gpus_per_actor``); ``threads``/``streams``/``batch_size``/``workers`` apply inside each actor. The output,
    ``resume``, ``ids``, ``sort_into`` and the callbacks are those of :func:`imclass.label_library`; a ``.parquet``
    output of more than ``part_rows`` images is a folder of parts. Needs ``pip install 'imclass[ray]'``.
    """
    dataset_input = _is_dataset(sources)
    check_options(sources, top_k=top_k, batch_size=batch_size, streams=streams, threads=threads, resume=resume,
                  output=output, sort_into=sort_into, paths=not dataset_input)
    if part_rows < 1:
        raise ParameterError("part_rows", "must be >= 1")
    if not isinstance(model, (str, os.PathLike)):
        raise ParameterError("model", "must be a name or a bundle folder with Ray (each actor loads it)")
    model = os.fspath(model)
    require_ray()

    with connect(address, object_store_memory=object_store_memory) as cluster:
        plan = plan_actors(cluster, actors=actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor,
                           device=device, threads=threads, workers=workers, streams=streams,
                           upstream_cpus=1.0 if dataset_input else READ_CPUS)
        t_load = time.perf_counter()
        listing = None if dataset_input else list(iter_image_paths([os.fspath(s) for s in sources]))
        extra = output_columns(model, ids)
        sink = (open_sink(output, top_k=top_k, resume=resume, overwrite=overwrite, extra_columns=extra,
                          parts=dataset_input or len(listing) > part_rows, part_rows=part_rows)
                if output is not None else None)
        done = sink.done if sink is not None else set()
        summary = DistributedSummary(skipped=len(done), errors=sink.errors_before if sink else 0,
                                     output=os.fspath(output) if output is not None else None, model=model,
                                     startup_seconds=cluster.seconds, cluster=cluster.address, plan=plan.describe())
        if cluster.started and plan.device == "cpu":
            _warm_export(model, backend)  # one ONNX export on this machine, not one per actor
        summary.load_seconds = time.perf_counter() - t_load
        sorter = Sorter(sort_into, sort_mode) if sort_into is not None else None
        settings = dict(model=model, device=plan.device, backend=backend, threads=plan.threads,
                        streams=plan.streams, top_k=top_k, reject_unknown=reject_unknown,
                        extra=ID_COLUMNS if ids else (), batch_size=batch_size, workers=plan.workers)
        run = _Run(summary, sink, sorter, on_batch)
        try:
            if listing is not None:
                todo = [i for i, p in enumerate(listing) if p not in done]
                if on_total is not None:
                    threading.Thread(target=on_total, args=(len(listing), len(done)), daemon=True).start()
                if on_start is not None:
                    on_start()
                run.start()
                _label_listing(run, listing, todo, plan, settings, part_rows)
            else:
                if on_start is not None:
                    on_start()
                run.start()
                _label_dataset(run, sources, plan, settings, done)
        except BaseException:
            if sink is not None:
                sink.abort()
            raise
        finally:
            run.stop()
        if sink is not None:
            sink.close()
            summary.parts = sink.written if isinstance(sink, PartsSink) else 0
    return summary


def predictions(dataset, *, model: str = "default", top_k: int = 5, ids: bool = False, reject_unknown: bool = True,
                actors: int | None = None, gpus_per_actor: float = 0.0, cpus_per_actor: float | None = None,
                device: str = "auto", backend: str = "auto", threads: int | None = None,
                streams: int | None = None, batch_size: int | None = None, workers: int | None = None):
    """A lazy Ray Dataset of predictions for ``dataset`` (``path``/``bytes`` rows, as
    ``ray.data.read_binary_files(..., include_paths=True)`` gives): the columns of ``imclass predict``'s Parquet
    output (``path, label, score, error, topk`` [, ``labels``] [, ``class_index, wnid``]). Ray must be initialised
    (``ray.init`` or :func:`imclass.distributed.connect`); write it with any Ray Data writer."""
    ray = require_ray()
    if not ray.is_initialized():
        raise ImclassError("Ray is not initialised: call ray.init() (or use imclass.distributed.predict)")
    res = ray.cluster_resources()
    cluster = Cluster("existing", float(res.get("CPU", 0)), float(res.get("GPU", 0)), False, 0.0)
    plan = plan_actors(cluster, actors=actors, gpus_per_actor=gpus_per_actor, cpus_per_actor=cpus_per_actor,
                       device=device, threads=threads, workers=workers, streams=streams, upstream_cpus=1.0)
    settings = dict(model=os.fspath(model), device=plan.device, backend=backend, threads=plan.threads,
                    streams=plan.streams, top_k=top_k, reject_unknown=reject_unknown,
                    extra=ID_COLUMNS if ids else (), batch_size=batch_size, workers=plan.workers)
    return map_actors(dataset, actor_class(Labeller, **settings), plan)


def map_actors(dataset, cls: type, plan: Plan):
    """``dataset`` through a pool of ``plan.actors`` actors of ``cls``. Ray Data starts pool actors with
    ``max_restarts=-1`` and ``max_task_retries=-1``: an actor that dies is restarted and its unfinished batches
    are retried (the driver drops any row it already has)."""
    import ray.data

    return dataset.map_batches(cls, batch_size=ROWS_PER_CALL, batch_format="pyarrow",
                               compute=ray.data.ActorPoolStrategy(size=plan.actors), num_cpus=plan.cpus,
                               num_gpus=plan.gpus or None)


# ---- the driver's side ------------------------------------------------------------------------------------
class _Run:
    """Accepted rows: sorting, the caller's ``on_batch``, counts and the steady-state clock."""

    def __init__(self, summary: DistributedSummary, sink: Sink | None, sorter: Sorter | None,
                 on_batch: Callable[[list[Prediction]], None] | None):
        self.summary, self.sink, self.sorter, self.on_batch = summary, sink, sorter, on_batch
        self.t0 = self.t_first = 0.0

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def accepted(self, preds: list[Prediction], from_cluster: bool = True) -> None:
        if not preds:
            return
        now = time.perf_counter()
        s = self.summary
        if from_cluster:
            if not self.t_first:
                self.t_first = now
                s.warmup_seconds = now - self.t0
            else:
                s.steady_images += len(preds)
                s.steady_seconds = now - self.t_first
        for p in preds:
            if self.sorter is not None:
                self.sorter.place(p)
            s.processed += 1
            if p.error:
                s.errors += 1
            else:
                s.label_counts[p.label] += 1
        if self.on_batch is not None:
            self.on_batch(preds)

    def stop(self) -> None:
        if self.t0:
            self.summary.seconds = time.perf_counter() - self.t0


def _label_listing(run: _Run, listing: list[str], todo: list[int], plan: Plan, settings: dict[str, Any],
                   part_rows: int) -> None:
    """Label ``listing[i]`` for ``i`` in ``todo`` on the cluster, then whatever it did not return."""
    if not todo:
        return
    writer: _Writer = (_PartsWriter(run.sink, todo, part_rows) if isinstance(run.sink, PartsSink)
                       else _OrderedWriter(run.sink, len(todo)))
    position = {absolute(listing[i]): k for k, i in enumerate(todo)}
    try:
        dataset = read_library(list(position), blocks=_read_blocks(len(todo), plan))
    except ValueError:  # Ray found none of the files (all vanished): every one is asked about below
        dataset = None
    if dataset is not None:
        for table in map_actors(dataset, actor_class(Labeller, **settings), plan).iter_batches(
                batch_size=None, batch_format="pyarrow"):
            _describe(run.sink, table)
            pairs = []
            for p in _predictions(table):
                k = position.get(p.path)
                if k is not None:  # a row for a path never asked about is not ours (never written)
                    p.path = listing[todo[k]]
                    pairs.append((k, p))
            run.accepted(writer.add(pairs))
    missing = writer.missing()
    if missing:
        pairs = _leftovers([(k, listing[todo[k]]) for k in missing], settings)
        run.summary.driver_labelled += sum(1 for _, p in pairs if p.error is None)
        run.accepted(writer.add(pairs), from_cluster=False)
    if writer.missing():  # pragma: no cover - every position was filled above
        raise ImclassError(f"{len(writer.missing())} images were not labelled")


def _label_dataset(run: _Run, dataset, plan: Plan, settings: dict[str, Any], done: set[str]) -> None:
    """Label a Ray Dataset of ``path``/``bytes`` rows: written in arrival order, each path once."""
    import ray

    missing_columns = {"path", "bytes"} - set(dataset.columns() or ())
    if missing_columns:
        raise ImclassError(f"the Ray Dataset needs 'path' and 'bytes' columns (read_binary_files(..., "
                           f"include_paths=True)); it lacks {', '.join(sorted(missing_columns))}")
    skip = ray.put(sorted(done)) if done else None
    seen = set(done)
    for table in map_actors(dataset, actor_class(Labeller, skip=skip, **settings), plan).iter_batches(
            batch_size=None, batch_format="pyarrow"):
        _describe(run.sink, table)
        fresh = []
        for p in _predictions(table):
            if p.path not in seen:
                seen.add(p.path)
                fresh.append(p)
        if fresh and run.sink is not None:
            run.sink.write(fresh)
            faults.checkpoint("label.batch")
        run.accepted(fresh)


class _Writer(ABC):
    """Rows by their position in the list of images to label (``0..n-1``): each position accepted once."""

    def __init__(self, n: int):
        self.got = bytearray(n)

    def _fresh(self, pairs: list[tuple[int, Prediction]]) -> list[tuple[int, Prediction]]:
        fresh = []
        for k, p in pairs:
            if not self.got[k]:
                self.got[k] = 1
                fresh.append((k, p))
        return fresh

    @abstractmethod
    def add(self, pairs: list[tuple[int, Prediction]]) -> list[Prediction]:
        """Write the fresh rows of ``pairs``; returns them as written."""

    def missing(self) -> list[int]:
        return [k for k, g in enumerate(self.got) if not g]


class _OrderedWriter(_Writer):
    """Row sinks: rows written in input order as soon as the rows before them are in (one write per batch)."""

    def __init__(self, sink: Sink | None, n: int):
        super().__init__(n)
        self.sink, self.ready, self.next = sink, {}, 0

    def add(self, pairs: list[tuple[int, Prediction]]) -> list[Prediction]:
        fresh = self._fresh(pairs)
        self.ready.update(fresh)
        out = []
        while self.next in self.ready:
            out.append(self.ready.pop(self.next))
            self.next += 1
        if out and self.sink is not None:
            self.sink.write(out)
            faults.checkpoint("label.batch")
        return [p for _, p in fresh]


class _PartsWriter(_Writer):
    """A folder of parts: part *i* is input partition *i*, written (atomically) once all its images are back."""

    def __init__(self, sink: PartsSink, todo: list[int], part_rows: int):
        super().__init__(len(todo))
        self.sink = sink
        self.part_of = [i // part_rows for i in todo]
        self.remaining = Counter(self.part_of)
        self.buffers: dict[int, dict[int, Prediction]] = defaultdict(dict)

    def add(self, pairs: list[tuple[int, Prediction]]) -> list[Prediction]:
        fresh = self._fresh(pairs)
        for k, p in fresh:
            part = self.part_of[k]
            self.buffers[part][k] = p
            self.remaining[part] -= 1
            if self.remaining[part] == 0:
                rows = self.buffers.pop(part)
                self.sink.write_part(part, [rows[j] for j in sorted(rows)])
                faults.checkpoint("label.batch")
        return [p for _, p in fresh]


#: The columns every prediction row has; any other column of the actors' output is ``Prediction.extra``.
BASE_COLUMNS = ("path", "label", "score", "error", "topk", "labels")


def _predictions(table) -> list[Prediction]:
    """Rows of the actors' output schema as :class:`Prediction` objects (the sinks' input)."""
    extra = [c for c in table.column_names if c not in BASE_COLUMNS]
    out = []
    for row in table.to_pylist():
        topk = [(t["label"], t["score"]) for t in (row["topk"] or [])]
        out.append(Prediction(row["path"], row["label"], row["score"], topk, labels=row.get("labels"),
                              error=row["error"], extra={c: row[c] for c in extra} if row["error"] is None else {}))
    return out


def _describe(sink: Sink | None, table) -> None:
    """A new folder of parts takes the actors' columns (every part then has them, one of error rows too)."""
    if isinstance(sink, PartsSink) and sink.schema is None:
        sink.schema = table.schema
        sink.multi_label = "labels" in table.column_names


def _leftovers(items: list[tuple[int, str]], settings: dict[str, Any]) -> list[tuple[int, Prediction]]:
    """Images the cluster did not return: the loader's reason when it cannot open them; labelled here when it can
    (a file that appeared, or a name Ray could not read by)."""
    out, readable = [], []
    for k, path in items:
        reason = open_error(path)
        if reason is not None:
            out.append((k, Prediction(path, error=reason)))
        else:
            readable.append((k, path))
    if readable:
        from ..classifier import Classifier

        clf = Classifier.load(settings["model"], device="cpu", backend=settings["backend"])
        add = label_ids(clf.labels) if settings["extra"] else None
        preds = clf.predict([p for _, p in readable], top_k=settings["top_k"],
                            reject_unknown=settings["reject_unknown"])
        for (k, _), p in zip(readable, preds):
            if add is not None:
                add(p)
            out.append((k, p))
    return out


def _read_blocks(n: int, plan: Plan) -> int:
    """Read tasks: a few per actor so reads overlap labelling, at most ~256 files each, at least 1 file each."""
    return max(1, min(n, max(4 * plan.actors, -(-n // 256))))


def _warm_export(model: str, backend: str) -> None:
    """On a local instance, make (or find) the model's ONNX export once here: the actors then start from it."""
    if backend not in ("auto", "onnx"):
        return
    from ..classifier import Classifier

    try:
        _ = Classifier.load(model, device="cpu", backend=backend).backend
    except ImclassError:
        raise
    except Exception:  # the actors will meet (and report) the same problem
        return


def _is_dataset(obj: Any) -> bool:
    return type(obj).__name__ in ("Dataset", "MaterializedDataset") and hasattr(obj, "map_batches")
