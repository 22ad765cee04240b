"""What a fine-tuning run does besides optimiser steps, as :class:`~imclass.training.loop.Callback` s.

They run in this order (``order``), for every hook:

====  ==================  ===================================================================================
   0  FreezeBackbone      the first epoch(s): only the head trains, BatchNorm in eval; ``frozen_backbone``
   5  (DDP)               data-parallel runs: the model wrapper, ``train_loss`` over every process
   8  EMA                 a moving average of the weights, updated after every step (``ema`` on)
  10  Validation          scores the validation set after each epoch (``val_loss``, ``val_accuracy`` / F1)
  20  TrackBest           ``improved`` and the best monitored score so far (``run.best``)
  30  Checkpoints         resume (before the fit), ``best`` / ``last`` after each epoch, best weights at the end
  35  (DDP)               data-parallel runs: the resumed state of process 0 sent to the others
  40  EarlyStopping       stops after ``patience`` epochs without improvement; a resumed run keeps counting
  50  Progress, OnEpoch   ``progress(stage, done, total)`` per step, ``on_epoch(record)`` per epoch
  90  FaultPoints         ``imclass.faults`` crash points: after every step, after every epoch's checkpoint
====  ==================  ===================================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import faults
from ..errors import ImclassError, ParameterError
from . import checkpoint
from .loop import Callback, Run


class FreezeBackbone(Callback):
    """For the first ``epochs`` epochs only the parameters in ``trainable`` (ids: the new head) train and the
    model stays in eval mode, so BatchNorm statistics stay as pretrained; then everything trains."""

    order = 0

    def __init__(self, trainable: set[int], epochs: int):
        self.trainable, self.epochs, self.frozen = trainable, epochs, False

    def before_epoch(self, run: Run) -> None:
        self.frozen = run.epoch < self.epochs
        for p in run.model.parameters():
            p.requires_grad_(not self.frozen or id(p) in self.trainable)
        if self.frozen:
            run.model.train(False)
            run.phase = "head only"

    def after_epoch(self, run: Run) -> None:
        run.record["frozen_backbone"] = self.frozen


class EMA(Callback):
    """Updates ``ema`` (``timm.utils.ModelEmaV3`` of the run's model) after every optimiser step, with the global
    step for its warm-up, so a resumed run continues the same average. ``train_network`` validates ``ema.module``
    and hands it to :class:`Checkpoints` (``evaluated``, and ``modules`` so that a resume restores it)."""

    order = 8

    def __init__(self, ema: Any):
        self.ema = ema

    def after_step(self, run: Run) -> None:
        self.ema.update(run.model, step=run.global_step + 1)


class Validation(Callback):
    """Adds ``score(run)`` (a dict: validation loss and metric) to each epoch's record; ``None``: no validation."""

    order = 10

    def __init__(self, score: Callable[[Run], dict[str, Any]] | None):
        self.score = score

    def after_epoch(self, run: Run) -> None:
        if self.score is not None:
            run.record.update(self.score(run))


class TrackBest(Callback):
    """Marks each record ``improved`` when ``monitor(record)`` (higher is better) beats ``run.best``."""

    order = 20

    def __init__(self, monitor: Callable[[dict[str, Any]], float], min_delta: float = 1e-9):
        self.monitor, self.min_delta = monitor, min_delta

    def after_epoch(self, run: Run) -> None:
        score = self.monitor(run.record)
        improved = run.best is None or score > run.best + self.min_delta
        run.record["improved"] = improved
        if improved:
            run.best = score


class Checkpoints(Callback):
    """``best`` (weights, when the epoch improved) and ``last`` (weights, optimiser, ``{epoch, history, best,
    identity}``) in ``folder`` after every epoch. ``resume``: continue from ``last`` when it exists and its
    ``identity`` matches (or one of ``accepted``: the same run as an earlier release recorded it); without
    ``resume`` an existing run is an error. At the end the best weights are loaded.
    ``write=False`` (the other processes of a data-parallel run): nothing is read or written. ``modules``: more
    state saved in ``last`` and restored on resume, by name (``{"ema": ...}``); ``evaluated``: the module whose
    weights are validated, kept as ``best`` and loaded into the model at the end (default: the model itself)."""

    order = 30

    def __init__(self, folder: Path, identity: dict[str, Any], resume: bool, write: bool = True,
                 modules: dict[str, Any] | None = None, evaluated: Any = None,
                 accepted: list[dict[str, Any]] | None = None):
        self.folder, self.identity, self.resume, self.write = folder, identity, resume, write
        self.accepted = [identity, *(accepted or [])]  # identities of the same run (e.g. as earlier releases wrote)
        self.modules, self.evaluated = modules or {}, evaluated

    def before_fit(self, run: Run) -> None:
        if not self.write:
            return
        state = checkpoint.load_state(self.folder) if self.resume else None
        if state is not None:
            if state.get("identity") not in self.accepted:
                raise ImclassError(f"{self.folder}: the checkpoint is from a different configuration or dataset; "
                                   "use another --out, or the same options as the interrupted run")
            checkpoint.restore(self.folder, checkpoint.LAST, run.model, run.optimizer, self.modules)
            run.start_epoch, run.history, run.best = state["epoch"] + 1, state["history"], state.get("best")
        elif not self.resume and checkpoint.load_state(self.folder) is not None:
            raise ParameterError("out", f"{self.folder} holds a previous run: pass {{resume}} to continue it, "
                                        "or choose another {out}")

    def after_epoch(self, run: Run) -> None:
        if not self.write:
            return
        if run.record.get("improved"):
            checkpoint.save(self.folder, checkpoint.BEST, run.model if self.evaluated is None else self.evaluated)
        checkpoint.save(self.folder, checkpoint.LAST, run.model, run.optimizer,
                        {"epoch": run.epoch, "history": run.history, "best": run.best, "identity": self.identity},
                        self.modules)

    def after_fit(self, run: Run) -> None:
        if self.write and checkpoint.load_state(self.folder, checkpoint.BEST) is not None:
            checkpoint.restore(self.folder, checkpoint.BEST, run.model)


class EarlyStopping(Callback):
    """Stops after ``patience`` epochs in a row without ``improved``; a resumed run counts its history too."""

    order = 40

    def __init__(self, patience: int):
        self.patience, self.stale = patience, 0

    def before_fit(self, run: Run) -> None:
        self.stale = 0
        for record in reversed(run.history):  # epochs since the last improvement
            if record.get("improved"):
                break
            self.stale += 1
        if run.history and self.stale >= self.patience:
            run.stop = True

    def after_epoch(self, run: Run) -> None:
        self.stale = 0 if run.record.get("improved") else self.stale + 1
        if self.stale >= self.patience:
            run.stop = True


class Progress(Callback):
    """``progress(stage, done, total)`` after every step: ``"epoch 2/15"``, ``"epoch 1/15 (head only)"``."""

    order = 50

    def __init__(self, progress: Callable[[str, int, int], Any]):
        self.progress = progress

    def after_step(self, run: Run) -> None:
        stage = f"epoch {run.epoch + 1}/{run.epochs}" + (f" ({run.phase})" if run.phase else "")
        self.progress(stage, run.step + 1, run.steps_per_epoch)


class OnEpoch(Callback):
    """``hook(record)`` after every epoch, once the record is complete and checkpointed."""

    order = 50

    def __init__(self, hook: Callable[[dict[str, Any]], Any]):
        self.hook = hook

    def after_epoch(self, run: Run) -> None:
        self.hook(run.record)


class FaultPoints(Callback):
    """The crash points of :mod:`imclass.faults`: ``<prefix>.step`` after every optimiser step and
    ``<prefix>.epoch`` after every epoch (its ``last`` checkpoint saved). Runs after every other callback."""

    order = 90

    def __init__(self, prefix: str = "finetune"):
        self.step_point, self.epoch_point = f"{prefix}.step", f"{prefix}.epoch"

    def after_step(self, run: Run) -> None:
        faults.checkpoint(self.step_point)

    def after_epoch(self, run: Run) -> None:
        faults.checkpoint(self.epoch_point)
