"""Micro-batching: images from many concurrent requests, one model call per batch.

Each image is decoded in a thread pool with :meth:`Classifier.decode` (the one safe loader), then
queued for the inference threads, one per stream of the classifier's backend (2 for ONNX Runtime on
CPU, else 1; see ``Classifier.load(streams=)``). An inference thread takes the first queued image,
keeps collecting until it holds ``max_batch`` images or ``max_wait_ms`` have passed, and runs
:meth:`Classifier.logits` once for the whole batch, then :func:`~imclass.prediction.probabilities`
and :func:`~imclass.prediction.decide` -- the same steps as ``Classifier.predict`` and the CLI. Each
image's :class:`~imclass.prediction.Prediction` is routed back through its own future.

The batcher knows nothing about HTTP: ``predict`` is a coroutine usable from any asyncio app, and
:meth:`MicroBatcher.submit` a plain thread-safe call.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ImageLoadError
from ..prediction import Prediction, decide, probabilities
from .settings import DEFAULTS

if TYPE_CHECKING:
    from ..classifier import Classifier

log = logging.getLogger("imclass.serve")


class Overloaded(Exception):
    """Too many images are already waiting; the caller should retry later (HTTP 503)."""


class ShuttingDown(Exception):
    """The batcher is closing and takes no new work (HTTP 503)."""


@dataclass
class _Item:
    array: np.ndarray
    name: str
    top_k: int
    future: Future


_STOP = object()


class MicroBatcher:
    """Collects decoded images from concurrent callers into batches for the inference threads.

    - ``max_batch``: most images per model call;
    - ``max_wait_ms``: how long the first image of a batch may wait for company (0: take only what
      is already queued);
    - ``max_pending``: most images admitted at once (decoding, queued or in the model); beyond it
      :meth:`admit` raises :class:`Overloaded`, so memory stays bounded under overload;
    - ``decode_workers``: decode threads (default: as for ``Classifier.predict``).

    ``max_batch`` and ``max_wait_ms`` default to the server's (:data:`~imclass.serve.settings.DEFAULTS`).
    :attr:`device` and :attr:`streams` say where and how the model runs once the first inference thread
    has built it (before that: the requested device, one stream).

    The first inference thread warms the model up (one forward pass) and starts the others (as many as
    the backend has streams) before taking work; :attr:`ready` turns true after that. :meth:`close`
    finishes every admitted image before it returns.
    """

    def __init__(self, classifier: Classifier, *, max_batch: int = DEFAULTS.max_batch,
                 max_wait_ms: float = DEFAULTS.max_wait_ms,
                 max_pending: int = DEFAULTS.pending_limit, decode_workers: int | None = None, warmup: bool = True):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        if max_wait_ms < 0:
            raise ValueError("max_wait_ms must be >= 0")
        if max_pending < 1:
            raise ValueError("max_pending must be >= 1")
        if decode_workers is None:
            from ..engine.pipeline import default_workers

            decode_workers = default_workers()
        if decode_workers < 1:
            raise ValueError("decode_workers must be >= 1")
        self.classifier = classifier
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.max_pending = int(max_pending)
        self.decode_workers = int(decode_workers)
        self.warmup = warmup
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stats_lock = threading.Lock()
        self.streams = 1  # inference threads, known once the model is built
        self.device: str = classifier.device  # the requested device; where the model runs once it is built
        self._accepting = True
        self._closed = False
        self._pending = 0
        self.error: str | None = None  # set when the warm-up failed
        # counters, read by /healthz
        self.started_at = time.time()
        self.batches = 0
        self.images = 0
        self.largest_batch = 0
        self.infer_seconds = 0.0  # summed over the inference threads

    # ---- lifecycle --------------------------------------------------------------------------------
    def start(self) -> MicroBatcher:
        """Start the decode pool and the inference thread (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return self
            if self._closed:
                raise ShuttingDown("the batcher is closed")
            self._pool = ThreadPoolExecutor(max_workers=self.decode_workers,
                                            thread_name_prefix="imclass-serve-decode")
            # A daemon thread: an app embedded without lifespan events must not block interpreter exit.
            self._thread = threading.Thread(target=self._run, name="imclass-serve-batcher", daemon=True)
            self._thread.start()
        return self

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def ready(self) -> bool:
        """Warmed up and taking work."""
        return self._ready.is_set() and self.error is None and self._accepting

    @property
    def closing(self) -> bool:
        return not self._accepting

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout) and self.error is None

    def close(self, timeout: float | None = 60.0) -> None:
        """Stop taking work, finish everything admitted so far, stop the threads. Blocking."""
        with self._lock:
            if self._closed:
                return
            self._accepting = False
            pool, thread = self._pool, self._thread
        if pool is not None:
            pool.shutdown(wait=True)  # decodes in progress finish and enqueue their images
        with self._lock:
            self._closed = True
            self._queue.put(_STOP)  # FIFO: every image queued before it is still predicted
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("batcher did not finish within %.0f s", timeout or 0)
        self._fail_queued(ShuttingDown("server shutting down"))

    # ---- admission ----------------------------------------------------------------------------------
    def admit(self, n: int) -> None:
        """Reserve room for ``n`` images; pair with :meth:`release`. Raises Overloaded/ShuttingDown."""
        with self._lock:
            if not self._accepting:
                raise ShuttingDown("server shutting down")
            if self._pending and self._pending + n > self.max_pending:
                raise Overloaded(f"{self._pending} images already in progress (limit {self.max_pending})")
            self._pending += n

    def release(self, n: int) -> None:
        with self._lock:
            self._pending = max(0, self._pending - n)

    @property
    def pending(self) -> int:
        return self._pending

    # ---- work ---------------------------------------------------------------------------------------
    def submit(self, array: np.ndarray, name: str = "<image>", top_k: int = 5) -> Future:
        """Queue one decoded ``uint8`` HWC image; the future resolves to its :class:`Prediction`."""
        fut: Future = Future()
        self._enqueue(_Item(array, name, top_k, fut))
        return fut

    def submit_bytes(self, data: bytes, name: str = "<image>", top_k: int = 5) -> Future:
        """Decode ``data`` in the pool, then queue it. An unreadable image resolves to an error row."""
        if self._thread is None:
            self.start()
        fut: Future = Future()
        assert self._pool is not None
        try:
            self._pool.submit(self._decode_then_enqueue, data, name, top_k, fut)
        except RuntimeError:  # pool shut down between admit() and here
            raise ShuttingDown("server shutting down") from None
        return fut

    async def predict(self, items: Sequence[tuple[str, bytes]], top_k: int = 5) -> list[Prediction]:
        """Predict ``(name, image bytes)`` pairs, in order. Bad images give rows with ``error`` set."""
        futures = [asyncio.wrap_future(self.submit_bytes(data, name, top_k)) for name, data in items]
        return list(await asyncio.gather(*futures))

    def stats(self) -> dict[str, Any]:
        return {
            "uptime_s": round(time.time() - self.started_at, 3),
            "batches": self.batches,
            "images": self.images,
            "mean_batch": round(self.images / self.batches, 3) if self.batches else 0.0,
            "largest_batch": self.largest_batch,
            "infer_seconds": round(self.infer_seconds, 3),
            "inference_threads": self.streams,
            "pending": self._pending,
        }

    # ---- internals ------------------------------------------------------------------------------------
    def _decode_then_enqueue(self, data: bytes, name: str, top_k: int, fut: Future) -> None:
        if fut.cancelled():  # the client went away before its image was decoded
            return
        try:
            array = self.classifier.decode(data)
        except ImageLoadError as e:
            _resolve(fut, Prediction(name, error=e.reason))
            return
        except Exception as e:  # never let one odd file take the request (or the server) down
            log.warning("unexpected error decoding %s: %r", name, e, exc_info=True)
            _resolve(fut, Prediction(name, error=f"corrupt image: {e.__class__.__name__}: {e}"))
            return
        try:
            self._enqueue(_Item(array, name, top_k, fut))
        except ShuttingDown as e:
            if not fut.done():
                fut.set_exception(e)

    def _enqueue(self, item: _Item) -> None:
        with self._lock:
            if self._closed:
                raise ShuttingDown("server shutting down")
            self._queue.put(item)

    def _run(self) -> None:
        if self.warmup:
            self._warm_up()
        try:
            backend = self.classifier.backend
            self.streams, self.device = backend.streams, backend.device
        except Exception:  # the model cannot be built: the first batch reports why
            self.streams = 1
        helpers = [threading.Thread(target=self._serve, name=f"imclass-serve-batcher-{i}", daemon=True)
                   for i in range(1, self.streams)]
        for t in helpers:
            t.start()
        self._ready.set()
        self._serve()
        for t in helpers:
            t.join()

    def _serve(self) -> None:
        """One inference thread: collect a batch, run it, until the stop marker (passed on to the others)."""
        while True:
            first = self._queue.get()
            if first is _STOP:
                self._queue.put(_STOP)
                return
            batch = [first]
            stop = False
            deadline = time.monotonic() + self.max_wait
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._run_batch(batch)
            if stop:
                self._queue.put(_STOP)
                return

    def _warm_up(self) -> None:
        h, w = self.classifier.spec.preprocess.input_size
        t0 = time.perf_counter()
        try:
            for n in sorted({1, min(self.max_batch, 8)}):
                self.classifier.logits(np.zeros((n, h, w, 3), dtype=np.uint8))
        except Exception as e:
            self.error = f"model warm-up failed: {e.__class__.__name__}: {e}"
            log.exception("model warm-up failed")
            return
        log.info("model warmed up in %.2f s", time.perf_counter() - t0)

    def _run_batch(self, batch: list[_Item]) -> None:
        live = [it for it in batch if it.future.set_running_or_notify_cancel()]
        if not live:
            return
        if self.error is not None:
            for it in live:
                it.future.set_exception(RuntimeError(self.error))
            return
        spec = self.classifier.spec
        try:
            t0 = time.perf_counter()
            logits, known = self.classifier.outputs(np.stack([it.array for it in live]))
            probs = probabilities(logits, spec)
            seconds = time.perf_counter() - t0
            by_k: dict[int, list[int]] = {}
            for i, it in enumerate(live):
                by_k.setdefault(it.top_k, []).append(i)
            for k, idx in by_k.items():
                preds = decide(probs[idx], [live[i].name for i in idx], spec, k,
                               known=None if known is None else known[idx])
                for i, p in zip(idx, preds):
                    live[i].future.set_result(p)
        except Exception as e:
            log.exception("inference failed for a batch of %d images", len(live))
            for it in live:
                if not it.future.done():
                    it.future.set_exception(e)
            return
        with self._stats_lock:
            self.infer_seconds += seconds
            self.batches += 1
            self.images += len(live)
            self.largest_batch = max(self.largest_batch, len(live))

    def _fail_queued(self, exc: Exception) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not _STOP and item.future.set_running_or_notify_cancel():
                item.future.set_exception(exc)


def _resolve(fut: Future, pred: Prediction) -> None:
    if fut.set_running_or_notify_cancel():
        fut.set_result(pred)
