"""Experiment tracking for training runs (``imclass train --track mlflow|tensorboard``, extra ``imclass[track]``).

:class:`TrainingLog` is the observer :func:`imclass.train` reports to; it does not touch the training loop:

- ``start(params)``: the configuration and the dataset's size, as parameters;
- ``epoch(record)``: each fine-tuning epoch's record (through ``on_epoch``): its numbers, at step ``epoch``;
- ``finish(...)``: the probe's C curve (``probe/C``, ``probe/val_log_loss`` per step) or the epochs not seen live
  (a resumed run), the final metrics (``final/val/accuracy`` ...), the validation confusion matrix (JSON and a
  PNG figure) and the bundle (MLflow: the ``bundle`` artifact, which ``mlflow:<run id>`` loads);
- ``fail(error)``: the run ends as FAILED (KILLED when interrupted).

MLflow writes to ``--track-uri``, else ``$MLFLOW_TRACKING_URI``, else ``./mlruns``; TensorBoard to
``<out>/tensorboard/`` (or ``--track-uri`` as a folder).
"""

from __future__ import annotations

import base64
import contextlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ParameterError
from .backends import MlflowTracker, TensorBoardTracker, Tracker

KINDS = ("none", "mlflow", "tensorboard")
BUNDLE_SKIP = ("checkpoints", "tensorboard")  # run-folder entries that are not part of the logged bundle

__all__ = ["KINDS", "MlflowTracker", "TensorBoardTracker", "Tracker", "TrainingLog", "open_log"]


def open_log(kind: str | None, uri: str | None = None, out: str | Path | None = None) -> TrainingLog | None:
    """A :class:`TrainingLog` for ``kind`` (None or ``none``: no tracking). Starts the run (MLflow) or opens the
    event folder (TensorBoard) now, so that a missing package or an unreachable store fails before training."""
    if kind is None or kind == "none":
        if uri is not None:
            raise ParameterError("track_uri", "applies with {track} mlflow or tensorboard")
        return None
    if kind not in KINDS:
        raise ParameterError("track", f"must be one of {', '.join(KINDS)}, not {kind!r}")
    if kind == "mlflow":
        tags = {"imclass.out": str(Path(out).resolve())} if out is not None else {}
        return TrainingLog(MlflowTracker(uri, run_name=Path(out).name if out is not None else None, tags=tags))
    if uri is None and out is None:
        raise ParameterError("track", "tensorboard writes to {out}/tensorboard: give {out} (or {track_uri}, a folder)")
    return TrainingLog(TensorBoardTracker(Path(uri) if uri is not None else Path(out) / "tensorboard"))


class TrainingLog:
    """Turns what a training run reports into tracked params, metrics, figures and artifacts."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self.steps: set[int] = set()  # epochs logged live

    @property
    def where(self) -> dict[str, str]:
        return dict(self.tracker.where)

    def start(self, params: dict[str, Any]) -> None:
        self.tracker.params(params)

    def epoch(self, record: dict[str, Any]) -> None:
        step = int(record.get("epoch", len(self.steps)))
        values = {k: v for k, v in numbers(record).items() if k != "epoch"}
        if values:
            self.tracker.metrics(values, step)
        self.steps.add(step)

    def finish(self, metrics: dict[str, Any], history: list[dict[str, Any]], mode: str, *,
               val: tuple[list[str], np.ndarray, np.ndarray] | None = None, bundle: Path | None = None) -> None:
        """Log the run's outcome and close it. ``val``: ``(classes, true class indices, probabilities)`` of the
        validation images (single-label), for the confusion matrix."""
        if mode == "probe":
            for i, point in enumerate(history):
                self.tracker.metrics({f"probe/{k}": v for k, v in numbers(point).items()}, i)
        else:
            for record in history:
                if int(record.get("epoch", -1)) not in self.steps:
                    self.epoch(record)
        last = max([*self.steps, len(history) - 1 if mode == "probe" else 0, 0])
        self.tracker.metrics({f"final/{k}": v for k, v in numbers(metrics).items()}, last)
        self.tracker.data("metrics", metrics)
        if val is not None and len(val[1]):
            cm = confusion(*val)
            self.tracker.data("confusion_matrix", {k: cm[k] for k in ("labels", "counts")})
            self.tracker.image("confusion_matrix", confusion_png(cm))
        if bundle is not None:
            self.tracker.folder(Path(bundle), "bundle", skip=BUNDLE_SKIP)
        self.tracker.close("FINISHED")

    def fail(self, error: BaseException) -> None:
        with contextlib.suppress(Exception):  # the training error is the one to report
            self.tracker.close("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")


def numbers(tree: Any, prefix: str = "") -> dict[str, float]:
    """The numeric leaves of nested dicts as ``{"a/b": value}`` (booleans, strings and lists left out)."""
    out: dict[str, float] = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            key = re.sub(r"[^\w\-. /:]", "_", str(k))
            out.update(numbers(v, f"{prefix}{key}/") if isinstance(v, dict) else
                       ({f"{prefix}{key}": float(v)} if _is_number(v) else {}))
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)


def confusion(classes: list[str], y: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """The confusion matrix of the top-1 predictions (``labels``, ``counts``, ``normalized``)."""
    from ..evaluation.metrics import compute_metrics

    return compute_metrics(np.asarray(y), np.asarray(probs), list(classes), "single_label")["confusion_matrix"]


def confusion_png(cm: dict[str, Any]) -> bytes:
    """The evaluation report's confusion-matrix figure, as PNG bytes."""
    from ..evaluation.charts import confusion_heatmap

    uri = confusion_heatmap(cm)
    return base64.b64decode(uri.split(",", 1)[1])
