"""Label a whole library: sources -> engine -> output file (+ optional sorting). Used by every face."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .. import faults
from ..classifier import Classifier
from ..engine.sources import count_image_paths, iter_image_paths, validate_sources
from ..errors import ImclassError, ParameterError
from ..prediction import Prediction
from .sinks import PartsSink, Sink, open_sink
from .sorting import Sorter


@dataclass
class LabelSummary:
    """What a labelling run did. ``errors`` counts error rows in the whole output (resumed ones too)."""

    processed: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0  # labelling, from the first image to the last (the model already loaded)
    load_seconds: float = 0.0  # opening the output and loading the model
    output: str | None = None
    model: str = ""
    backend: str = ""  # the runtime that ran the model (torch | onnx | openvino) and its precision
    precision: str = ""
    label_counts: Counter = field(default_factory=Counter)

    @property
    def images_per_second(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def check_options(sources, *, top_k: int, batch_size: int | None = None, streams: int | None = None,
                  threads: int | None = None, resume: bool = False, output=None, sort_into=None,
                  paths: bool = True) -> None:
    """The argument checks of :func:`label_library` (also :func:`imclass.distributed.predict`'s); ``paths=False``
    when ``sources`` is not a list of paths (a Ray Dataset)."""
    if paths:
        if not sources:
            raise ImclassError("no sources given: pass image files or folders")
        missing = validate_sources(sources)
        if missing:
            raise ImclassError(f"no such file or folder: {', '.join(missing[:5])}")
    if top_k < 1:
        raise ParameterError("top_k", "must be >= 1")
    for name, value in (("batch_size", batch_size), ("streams", streams), ("threads", threads)):
        if value is not None and value < 1:
            raise ParameterError(name, "must be >= 1")
    if resume and output is None:
        raise ParameterError("resume", "needs {output} (the file to continue)")
    if sort_into is not None and paths:
        check_sort_target(sources, sort_into)


def label_library(
    sources: Sequence[str | os.PathLike],
    *,
    model: str | Classifier = "default",
    device: str = "auto",
    backend: str = "auto",
    threads: int | None = None,
    streams: int | None = None,
    precision: str = "auto",
    tta: bool = False,
    output: str | os.PathLike | None = None,
    top_k: int = 5,
    batch_size: int | None = None,
    workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    sort_into: str | os.PathLike | None = None,
    sort_mode: str = "copy",
    reject_unknown: bool = True,
    ids: bool = False,
    on_start: Callable[[], None] | None = None,
    on_total: Callable[[int, int], None] | None = None,
    on_batch: Callable[[list[Prediction]], None] | None = None,
) -> LabelSummary:
    """Classify every image under ``sources`` and stream rows to ``output`` (csv/jsonl/json/parquet).

    ``on_start()`` is called when labelling starts (the model loaded: ``summary.seconds`` counts from
    here); ``on_total(total, already_done)`` from a helper thread once the library is counted;
    ``on_batch`` after every written batch. Interrupted runs continue with ``resume=True``: every
    image appears exactly once in the output. ``ids``: rows also carry ``class_index`` (the label's index in
    the model's label list; a list for multi-label rows) and ``wnid`` (its WordNet id, for ImageNet models).
    ``backend`` / ``precision``: what runs the model (:meth:`Classifier.load`); the summary records what did.
    ``tta``: each image also runs mirrored and the two outputs are averaged (twice the work).
    """
    check_options(sources, top_k=top_k, batch_size=batch_size, streams=streams, resume=resume, output=output,
                  sort_into=sort_into)

    t_load = time.perf_counter()
    extra = output_columns(model, ids)
    sink: Sink | None = (open_sink(output, top_k=top_k, resume=resume, overwrite=overwrite,
                                   extra_columns=extra) if output else None)
    if isinstance(model, Classifier):
        clf = model.with_tta() if tta and not model.tta else model
    else:
        clf = Classifier.load(model, device=device, backend=backend, threads=threads, streams=streams,
                              precision=precision, tta=tta)
    runtime = clf.runtime  # build the runtime now (an ONNX export on first use): loading, not labelling time
    if isinstance(sink, PartsSink):  # continuing a folder of parts (written by a distributed run)
        sink.multi_label = clf.spec.task == "multi_label"
    sorter = Sorter(sort_into, sort_mode) if sort_into is not None else None
    add_ids = label_ids(clf.labels) if ids else None
    done = sink.done if sink else set()
    summary = LabelSummary(skipped=len(done), errors=sink.errors_before if sink else 0,
                           output=os.fspath(output) if output else None,
                           model=clf.spec.source or clf.spec.model_id, backend=runtime["backend"],
                           precision=runtime["precision"])

    if on_total is not None:
        threading.Thread(target=lambda: on_total(count_image_paths(sources), len(done)),
                         daemon=True, name="imclass-count").start()

    todo = (p for p in iter_image_paths(sources) if p not in done)
    t0 = time.perf_counter()
    summary.load_seconds = t0 - t_load
    if on_start is not None:
        on_start()
    try:
        for preds in clf.predict_batches(todo, top_k=top_k, batch_size=batch_size, workers=workers,
                                         reject_unknown=reject_unknown):
            if add_ids is not None:
                for p in preds:
                    add_ids(p)
            if sorter is not None:
                for p in preds:
                    sorter.place(p)
            if sink is not None:
                sink.write(preds)
            faults.checkpoint("label.batch")
            summary.processed += len(preds)
            for p in preds:
                if p.error:
                    summary.errors += 1
                else:
                    summary.label_counts[p.label] += 1
            if on_batch is not None:
                on_batch(preds)
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    finally:
        summary.seconds = time.perf_counter() - t0
    if sink is not None:
        sink.close()
    return summary


ID_COLUMNS = ("class_index", "wnid")
KNOWN_COLUMNS = ("known_score",)  # models that can say "unknown": how familiar each image looks
HIERARCHY_COLUMNS = ("label_path",)  # hierarchy models: the chosen node and its ancestors ("sports>dance")


def output_columns(model, ids: bool = False) -> tuple[str, ...]:
    """The columns rows of ``model`` carry besides the standard ones: ``--ids``' columns, ``known_score`` (models
    that can say unknown), ``label_path`` (hierarchy models). Read from the manifest, before the model is built."""
    return (*(ID_COLUMNS if ids else ()), *(KNOWN_COLUMNS if _can_say_unknown(model) else ()),
            *(HIERARCHY_COLUMNS if _is_hierarchy(model) else ()))


def _is_hierarchy(model) -> bool:
    from ..engine.onnx_cache import light_spec

    spec = model.spec if isinstance(model, Classifier) else light_spec(model)
    return spec is not None and spec.hierarchy


def _can_say_unknown(model) -> bool:
    """Whether rows will carry ``known_score`` (read from the manifest, before the model is built)."""
    from ..engine.onnx_cache import light_spec

    spec = model.spec if isinstance(model, Classifier) else light_spec(model)
    return spec is not None and (bool(spec.open_set) or
                                 (spec.unknown_threshold is not None and spec.task == "single_label"))


def label_ids(labels: list[str]) -> Callable[[Prediction], None]:
    """A function that adds ``class_index`` and ``wnid`` to a prediction's ``extra`` (None where unknown)."""
    from ..models.default import wordnet_ids

    index = {lab: i for i, lab in enumerate(labels)}
    wnids = wordnet_ids(labels)

    def add(p: Prediction) -> None:
        if p.error is not None:
            return
        if p.labels is not None:  # multi-label: every chosen label
            idx = [index[lab] for lab in p.labels]
            p.extra["class_index"] = idx
            p.extra["wnid"] = [wnids[i] for i in idx] if wnids else None
        else:
            i = index.get(p.label)  # None for "unknown"
            p.extra["class_index"] = i
            p.extra["wnid"] = wnids[i] if wnids and i is not None else None

    return add


def check_sort_target(sources: Sequence[str | os.PathLike], target: str | os.PathLike) -> None:
    t = Path(target).resolve()
    for s in sources:
        s = Path(s).resolve()
        if s.is_dir() and (t == s or s in t.parents):
            raise ImclassError(
                f"--sort-into {target} lies inside the source folder {s}: sorted copies would be "
                "labelled again; choose a folder outside the sources")
