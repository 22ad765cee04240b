"""Which runtime ``--backend auto`` (and ``--backend openvino --precision auto``) runs on this CPU.

The candidates are ONNX Runtime fp32 (today's default), OpenVINO f32, OpenVINO bf16 (where the CPU has it) and,
for a bundle with a static INT8 file, ONNX Runtime / OpenVINO INT8. :func:`verify` measures each of them on real
photos labelled for the model and caches the result per CPU model and model hash (``<cache>/runtimes/``, next
to the export cache); :func:`recorded_choice` reads it back. Without a record, ``auto`` stays ONNX Runtime fp32.

The rule (:func:`passes`, :func:`choose`): a runtime other than ONNX Runtime fp32 becomes the default only when

- its top-1 agreement with ONNX Runtime fp32 on those photos is >= :data:`MIN_AGREEMENT` (99.5%), and its top-1
  accuracy there is within :data:`MAX_ACCURACY_DROP` (0.3 points) of fp32's, and
- it is the fastest such runtime, and at least :data:`MIN_SPEEDUP` (1.25x) as fast as ONNX Runtime fp32 in the
  same model-only measurement. Measured speeds on a shared machine move a lot: OpenVINO f32 measured 1.02x and
  1.16x ONNX Runtime fp32 in two runs of ``bench/openvino_speed.py`` ten minutes apart on the same 2 busy cores,
  and 1.03-1.05x for whole ``imclass predict`` runs (decoding takes its share). A gain that small is not worth
  changing the runtime people get; bf16 (2.0-2.3x) and INT8 (2.1-2.7x) clear the bar by far, when their parity
  does, and
- it is usable now (``openvino`` installed; bf16 still supported, ``IMCLASS_OPENVINO_NO_BF16`` not set).

Otherwise the lower precisions stay opt-in (``--backend openvino --precision bf16``, ``onnx-int8``), with the
parity shown by ``imclass export`` and recorded here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import atomic_write_text
from ..paths import cache_dir

MIN_AGREEMENT = 0.995
MAX_ACCURACY_DROP = 0.003
MIN_SPEEDUP = 1.25
REFERENCE = "onnx-fp32"
RULE = (f"top-1 agreement with ONNX Runtime fp32 >= {MIN_AGREEMENT:.1%} and top-1 accuracy within "
        f"{MAX_ACCURACY_DROP * 100:.1f} points on photos labelled for the model, and >= {MIN_SPEEDUP:.2f}x "
        "ONNX Runtime fp32's measured speed on this CPU")


def model_hash(onnx_path: str | os.PathLike) -> str:
    """sha256 of the fp32 ONNX file (20 hex digits): the model, whatever its name or folder."""
    h = hashlib.sha256()
    with open(onnx_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:20]


def record_path(onnx_path: str | os.PathLike) -> Path:
    from .openvino_backend import cpu_name

    cpu = re.sub(r"[^A-Za-z0-9]+", "_", cpu_name()).strip("_")[:60] or "cpu"
    return cache_dir() / "runtimes" / f"{cpu}-{model_hash(onnx_path)}.json"


def read_record(onnx_path: str | os.PathLike) -> dict[str, Any] | None:
    """The cached measurement for this model on this CPU, or None."""
    folder = cache_dir() / "runtimes"
    if not folder.is_dir():  # nothing was ever measured: no need to hash the model
        return None
    try:
        return json.loads(record_path(onnx_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def passes(entry: dict[str, Any], reference: dict[str, Any]) -> bool:
    """The parity half of the rule."""
    try:
        return (entry["top1_agreement"] >= MIN_AGREEMENT
                and reference["accuracy"] - entry["accuracy"] <= MAX_ACCURACY_DROP + 1e-12)
    except (KeyError, TypeError):
        return False


def usable(key: str) -> bool:
    """Whether runtime ``key`` (``backend-precision``) can run here now."""
    backend, _, precision = key.rpartition("-")
    if backend == "onnx":
        return True
    from . import openvino_backend

    if not openvino_backend.available():
        return False
    return precision != "bf16" or openvino_backend.bf16_supported()


def choose(record: dict[str, Any], backend: str | None = None, precision: str | None = None) -> str:
    """The runtime key the rule picks from ``record`` (``backend``: among that backend's precisions only, with
    ``openvino-fp32`` as the fallback; ``precision``: among runtimes of that precision only)."""
    runtimes = record.get("runtimes") or {}
    if precision is not None:
        runtimes = {k: v for k, v in runtimes.items() if k == REFERENCE or k.endswith("-" + precision)}
    ref = runtimes.get(REFERENCE)
    fallback = REFERENCE if backend in (None, "onnx") else f"{backend}-fp32"
    if not ref or not ref.get("img_per_s"):
        return fallback
    best, best_speed = fallback, (ref["img_per_s"] * MIN_SPEEDUP if backend in (None, "onnx") else 0.0)
    for key, entry in runtimes.items():
        if key == REFERENCE or (backend is not None and not key.startswith(backend + "-")):
            continue
        if passes(entry, ref) and usable(key) and (entry.get("img_per_s") or 0.0) >= best_speed:
            best, best_speed = key, entry["img_per_s"]
    return best


def recorded_choice(onnx_path: str | os.PathLike, backend: str | None = None,
                    precision: str | None = None) -> tuple[str, str] | None:
    """``(backend, precision)`` the cached record picks for this model on this CPU; None without a record."""
    record = read_record(onnx_path)
    if record is None:
        return None
    backend_name, _, picked = choose(record, backend, precision).rpartition("-")
    return backend_name, picked


def verify(onnx_path: str | os.PathLike, preprocess, batches: Sequence[np.ndarray], labels: Sequence[int], *,
           int8_path: str | os.PathLike | None = None, threads: int | None = None, streams: int | None = None,
           rounds: int = 3, seconds: float = 2.0, save: bool = True,
           log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure every candidate runtime and write the record :func:`recorded_choice` reads.

    ``batches``: ``uint8`` NHWC batches of photos labelled for the model, ``labels``: the true class index of each
    row (-1 where the model has no such class: left out of the accuracy). Agreement and accuracy use every photo;
    speed is model-only, one 16-image round at a time split over ``streams`` concurrent calls as labelling runs
    them, interleaved over ``rounds`` so that drifting machine load spreads over all runtimes (median kept).
    """
    from .backends import default_threads
    from .onnx_backend import OnnxBackend, default_streams
    from .openvino_backend import OpenVinoBackend, available, bf16_supported, cpu_name

    threads = threads or default_threads()
    streams = streams or default_streams("cpu", threads)
    makers: dict[str, Callable[[], Any]] = {
        REFERENCE: lambda: OnnxBackend(onnx_path, preprocess, threads=threads, streams=streams)}
    if available():
        makers["openvino-fp32"] = lambda: OpenVinoBackend(onnx_path, preprocess, "fp32", threads, streams)
        if bf16_supported():
            makers["openvino-bf16"] = lambda: OpenVinoBackend(onnx_path, preprocess, "bf16", threads, streams)
    if int8_path is not None:
        makers["onnx-int8"] = lambda: OnnxBackend(int8_path, preprocess, threads=threads, streams=streams)
        if available():
            makers["openvino-int8"] = lambda: OpenVinoBackend(int8_path, preprocess, "int8", threads, streams)
    truth = np.asarray(labels)
    known = truth >= 0
    runners = {k: make() for k, make in makers.items()}
    outputs = {k: np.concatenate([np.asarray(fn(b)) for b in batches]) for k, fn in runners.items()}
    ref_top = outputs[REFERENCE].argmax(1)
    round_batch = np.concatenate(batches)[:16]
    speeds: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(rounds):
        for k in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            speeds[k].append(_throughput(runners[k], round_batch, streams, seconds))
    runtimes = {}
    for k, out in outputs.items():
        top = out.argmax(1)
        runtimes[k] = {"top1_agreement": float((top == ref_top).mean()),
                       "accuracy": float((top[known] == truth[known]).mean()) if known.any() else float("nan"),
                       "img_per_s": statistics.median(speeds[k]), "rounds": speeds[k]}
        if log is not None:
            log(f"{k}: top-1 agreement {runtimes[k]['top1_agreement']:.2%}, accuracy {runtimes[k]['accuracy']:.2%}, "
                f"{runtimes[k]['img_per_s']:.1f} img/s")
    for k, entry in runtimes.items():
        entry["passes_rule"] = k == REFERENCE or passes(entry, runtimes[REFERENCE])
    record = {"cpu": cpu_name(), "bf16": bf16_supported(), "model": model_hash(onnx_path), "images": len(truth),
              "labelled_images": int(known.sum()), "threads": threads, "streams": streams, "rule": RULE,
              "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runtimes": runtimes}
    record["choice"] = choose(record)
    if save:
        atomic_write_text(record_path(onnx_path), json.dumps(record, indent=1))
    return record


def _throughput(fn, batch: np.ndarray, streams: int, seconds: float) -> float:
    parts = np.array_split(batch, streams) if streams > 1 else [batch]
    with ThreadPoolExecutor(streams) as pool:
        list(pool.map(fn, parts))  # warm-up
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            list(pool.map(fn, parts))
            n += len(batch)
    return n / (time.perf_counter() - t0)
