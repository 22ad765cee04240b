"""Decode in a small thread pool, infer in fixed-size batches, yield results in input order.

Pillow releases the GIL while decoding and resizing, so threads overlap decode with inference
without copying pixels between processes. With ``infer_workers > 1``, that many batches are inferred
at once (ONNX Runtime releases the GIL too): on few cores, two single-threaded model calls side by side
keep the cores busier than one two-threaded call, whose threads wait for each other at every operator
while decode threads take their cores. At most a few batches are decoded ahead, so memory stays flat
whatever the size of the library.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ..errors import ImageLoadError
from ..prediction import Prediction
from .backends import default_threads

#: Images per model call. On 2 cores batch size barely matters for EfficientNet-Lite0 (A/B, torch
#: backend, 1,000 photos: 16 -> 38.7 s, 8 -> 39.7 s, 32 -> 41.7 s; bench/ab.py, bench/RESULTS.md).
DEFAULT_BATCH_SIZE = 16


def default_batch_size(streams: int = 1) -> int:
    """Images per model call: :data:`DEFAULT_BATCH_SIZE` shared by the ``streams`` calls that run at once.

    Each concurrent ONNX Runtime call holds its own activations, so 2 streams of 16 took ~520 MiB where
    one took ~330; 2 streams of 8 keep ~340 MiB at the same speed (bench/ab.py, bench/RESULTS.md).
    """
    return max(1, DEFAULT_BATCH_SIZE // max(1, streams))


def default_workers() -> int:
    """Decode threads: as many as cores, 2 to 8 (inference threads release the GIL)."""
    return max(2, min(8, default_threads()))


Decoded = tuple[str, "np.ndarray | None", "str | None"]  # (name, uint8 HWC or None, error)


def run_batches(
    items: Iterable[Any],
    *,
    decode: Callable[[Any], np.ndarray],
    infer: Callable[[np.ndarray, list[str]], list[Prediction]],
    name_of: Callable[[Any], str],
    batch_size: int | None = None,
    workers: int | None = None,
    infer_workers: int = 1,
) -> Iterator[list[Prediction]]:
    """Yield one list of predictions per input chunk of ``batch_size`` items, in input order.

    ``decode`` raises :class:`ImageLoadError` (or any exception) for unreadable items; those become
    error rows and never stop the run. ``infer_workers``: batches given to ``infer`` at once, from that
    many threads (``infer`` must then be thread-safe; a backend's ``streams``). ``batch_size`` defaults to
    :func:`default_batch_size` of ``infer_workers``, ``workers`` (decode threads; 0: decode inline) to
    :func:`default_workers`.
    """
    batch_size = default_batch_size(infer_workers) if batch_size is None else batch_size
    workers = default_workers() if workers is None else workers
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if infer_workers < 1:
        raise ValueError("infer_workers must be >= 1")

    def job(item: Any) -> Decoded:
        name = name_of(item)
        try:
            return name, decode(item), None
        except ImageLoadError as e:
            return name, None, e.reason
        except Exception as e:
            return name, None, f"{e.__class__.__name__}: {e}"

    def chunks(results: Iterator[Decoded]) -> Iterator[list[Decoded]]:
        buf: list[Decoded] = []
        for r in results:
            buf.append(r)
            if len(buf) == batch_size:
                yield buf
                buf = []
        if buf:
            yield buf

    def infer_all(results: Iterator[Decoded]) -> Iterator[list[Prediction]]:
        if infer_workers == 1:
            for buf in chunks(results):
                yield _infer_chunk(buf, infer)
            return
        with ThreadPoolExecutor(max_workers=infer_workers, thread_name_prefix="imclass-infer") as pool:
            # one batch more than the workers, so they stay busy while the caller handles a result
            yield from _ordered(pool, lambda buf: _infer_chunk(buf, infer), chunks(results),
                                prefetch=infer_workers + 1)

    if workers <= 0:
        yield from infer_all(job(it) for it in items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imclass-decode") as pool:
        # decoded ahead: the batches queued for inference, the one being filled, and a little more
        yield from infer_all(_ordered(pool, job, items, prefetch=batch_size * (infer_workers + 2) + workers))


def _ordered(pool: ThreadPoolExecutor, fn: Callable, items: Iterable[Any], prefetch: int) -> Iterator:
    pending: deque[Future] = deque()
    it = iter(items)
    try:
        for item in it:
            pending.append(pool.submit(fn, item))
            if len(pending) >= prefetch:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for f in pending:
            f.cancel()


def _infer_chunk(buf: list[Decoded], infer) -> list[Prediction]:
    good = [(i, arr) for i, (_, arr, _) in enumerate(buf) if arr is not None]
    out: list[Prediction | None] = [None] * len(buf)
    if good:
        batch = np.stack([a for _, a in good])
        preds = infer(batch, [buf[i][0] for i, _ in good])
        for (i, _), p in zip(good, preds):
            out[i] = p
    for i, (name, arr, err) in enumerate(buf):
        if arr is None:
            out[i] = Prediction(name, error=err)
    return out  # type: ignore[return-value]


class ArrayRow(Prediction):
    """A result row carrying an array (probabilities, logits, features) instead of labels."""

    def __init__(self, path: str, array: np.ndarray):
        super().__init__(path)
        self.array = array


BatchHook = Callable[[list[int], np.ndarray, int], None]  # (item indices done, their rows, batch size)


def map_arrays(
    items: Sequence[Any],
    fn: Callable[[np.ndarray], np.ndarray],
    *,
    decode: Callable[[Any], np.ndarray],
    width: int | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    infer_workers: int = 1,
    on_batch: BatchHook | None = None,
) -> tuple[np.ndarray, list[str | None]]:
    """Run ``fn`` (``uint8`` NHWC batch -> one row per image) over ``items`` through :func:`run_batches`.

    Returns ``(rows, errors)``: ``rows`` has one row per item, in order (NaN where the item could not be
    decoded; ``width`` columns when nothing could), ``errors[i]`` says why. ``on_batch`` is called after
    every batch (in order, from the calling thread) with the indices that succeeded, their rows, and the
    batch size. ``batch_size``, ``workers``, ``infer_workers``: as for :func:`run_batches`.
    """
    found: list[np.ndarray | None] = [None] * len(items)
    errors: list[str | None] = [None] * len(items)

    def infer(batch: np.ndarray, names: list[str]) -> list[Prediction]:
        return [ArrayRow(name, row) for name, row in zip(names, np.asarray(fn(batch)))]

    for preds in run_batches(list(enumerate(items)), decode=lambda it: decode(it[1]), infer=infer,
                             name_of=lambda it: str(it[0]), batch_size=batch_size, workers=workers,
                             infer_workers=infer_workers):
        done = []
        for p in preds:
            i = int(p.path)
            if isinstance(p, ArrayRow):
                found[i] = p.array
                done.append(i)
            else:
                errors[i] = p.error
        if on_batch is not None:
            on_batch(done, np.stack([found[i] for i in done]) if done else np.zeros((0, width or 0)), len(preds))
    first = next((a for a in found if a is not None), None)
    dim = first.shape[0] if first is not None else (width or 0)
    rows = np.full((len(items), dim), np.nan, dtype=first.dtype if first is not None else np.float32)
    for i, a in enumerate(found):
        if a is not None:
            rows[i] = a
    return rows, errors
