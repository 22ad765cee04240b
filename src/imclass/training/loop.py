"""A small, generic training loop in the fastai mid-level style: :func:`fit` runs epochs of optimiser steps;
everything else (freezing, validation, early stopping, checkpoints, progress) is a :class:`Callback`.

The loss function, the optimiser and the learning-rate schedule are plain objects handed to :func:`fit`, so
each can be swapped without touching the loop. A schedule is a callable ``factor(step, total_steps)``: before
every step each parameter group's ``lr`` is set to its ``initial_lr`` times the factor (groups without an
``initial_lr`` get their ``lr`` at the start of the fit).

One fit, in order::

    before_fit                         (a callback may restore a checkpoint: start_epoch, history, best)
    for each epoch from start_epoch, until run.stop:
        model.train(); before_epoch    (a callback may freeze layers, set run.phase)
        for each batch of batches(epoch) (None: skipped, no step):
            lr = initial_lr * schedule(global_step, total_steps); forward, loss, backward, optimiser step
            after_step                 (run.stop set here ends the epoch early)
        record = {epoch, train_loss, lr} appended to history; after_epoch (callbacks add keys to the record)
    after_fit

Callbacks run in ascending ``order`` (ties: the order they were given), the same order for every hook.
On CUDA the forward pass runs under float16 autocast with a ``GradScaler``; with ``precision="bf16"`` (a CPU
with native bf16, see :mod:`.precision`) under bfloat16 autocast; the loss, gradients and weights stay float32.
4-D inputs are channels-last.
The forward pass goes through ``run.forward`` when a callback sets it (a ``DistributedDataParallel`` wrapper of
the model); everything else (checkpoints, validation) keeps using ``run.model``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Schedule = Callable[[int, int], float]
HOOKS = ("before_fit", "before_epoch", "after_step", "after_epoch", "after_fit")


def constant(step: int, total: int) -> float:
    """The schedule that keeps every group at its initial learning rate."""
    return 1.0


class Callback:
    """Override any of the hooks; each gets the :class:`Run` and may read or change it."""

    order = 0  # lower runs first, for every hook

    def before_fit(self, run: Run) -> None:
        pass

    def before_epoch(self, run: Run) -> None:
        pass

    def after_step(self, run: Run) -> None:
        pass

    def after_epoch(self, run: Run) -> None:
        pass

    def after_fit(self, run: Run) -> None:
        pass


@dataclass(eq=False)
class Run:
    """Everything a fit uses and the state it is in; callbacks receive it at every hook."""

    model: Any
    optimizer: Any
    loss_fn: Callable[[Any, Any], Any]
    batches: Callable[[int], Iterable[Any]]  # epoch -> batches (x, target, ...) or None for an empty one
    epochs: int
    steps_per_epoch: int
    schedule: Schedule = constant
    device: str = "cpu"
    callbacks: list[Callback] = field(default_factory=list)
    amp: bool = False  # float16 autocast + GradScaler (CUDA only)
    precision: str = "fp32"  # the forward pass: fp32, fp16 (CUDA autocast + GradScaler) or bf16 (CPU autocast)
    # state
    start_epoch: int = 0  # a callback restoring a checkpoint moves it on
    epoch: int = 0
    step: int = 0  # index of the batch within the epoch
    phase: str = ""  # what this epoch does, for progress ("head only"); reset at each epoch
    loss: float = 0.0  # the last step's loss
    batch_size: int = 0  # the last step's batch
    forward: Any = None  # the module the forward pass goes through (None: model), e.g. a DDP wrapper
    samples: int = 0  # samples of this epoch so far (this process)
    loss_sum: float = 0.0  # their summed loss (train_loss = loss_sum / samples)
    record: dict[str, Any] = field(default_factory=dict)  # the last finished epoch's record
    history: list[dict[str, Any]] = field(default_factory=list)
    best: float | None = None  # best monitored score so far (see callbacks.TrackBest)
    stop: bool = False  # set by a callback: no further epochs (in after_step: not even the rest of this one)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs

    @property
    def global_step(self) -> int:
        return self.epoch * self.steps_per_epoch + self.step

    def call(self, hook: str) -> None:
        for cb in self.callbacks:
            getattr(cb, hook)(self)


def fit(model, optimizer, loss_fn, batches: Callable[[int], Iterable[Any]], *, epochs: int, steps_per_epoch: int,
        schedule: Schedule = constant, device: str = "cpu", callbacks: Sequence[Callback] = (),
        precision: str | None = None) -> Run:
    """Train ``model`` for ``epochs`` of ``batches(epoch)``; returns the finished :class:`Run`.
    ``precision``: the forward pass's (``fp32``, ``fp16``: CUDA autocast, ``bf16``: CPU autocast); None: fp16 on
    CUDA, fp32 elsewhere."""
    import torch

    if precision is None:
        precision = "fp16" if device.startswith("cuda") else "fp32"
    run = Run(model=model, optimizer=optimizer, loss_fn=loss_fn, batches=batches, epochs=epochs,
              steps_per_epoch=steps_per_epoch, schedule=schedule, device=device,
              callbacks=sorted(callbacks, key=lambda cb: cb.order), amp=precision == "fp16", precision=precision)
    autocast = {"fp16": ("cuda", torch.float16), "bf16": ("cpu", torch.bfloat16)}.get(precision)
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])
    scaler = torch.amp.GradScaler("cuda", enabled=run.amp)
    run.call("before_fit")
    for epoch in range(run.start_epoch, run.epochs):
        if run.stop:
            break
        run.epoch, run.step, run.phase = epoch, 0, ""
        model.train()
        run.call("before_epoch")
        run.samples, run.loss_sum = 0, 0.0
        for step, batch in enumerate(run.batches(epoch)):
            if batch is None:
                continue
            run.step = step
            x, target = batch[0], batch[1]
            factor = run.schedule(run.global_step, run.total_steps)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * factor
            x = x.to(device, non_blocking=True)
            if x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            target = target.to(device)
            with torch.autocast(device_type=autocast[0] if autocast else "cpu",
                                dtype=autocast[1] if autocast else torch.bfloat16, enabled=autocast is not None):
                logits = (run.forward or model)(x)
            loss = run.loss_fn(logits.float(), target)  # outside autocast: the loss in float32
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            run.loss, run.batch_size = loss.item(), len(x)
            run.samples += run.batch_size
            run.loss_sum += run.loss * run.batch_size
            run.call("after_step")
            if run.stop:
                break
        run.record = {"epoch": epoch + 1, "train_loss": round(run.loss_sum / max(1, run.samples), 5),
                      "lr": optimizer.param_groups[-1]["lr"]}
        run.history.append(run.record)  # the same dict: after_epoch callbacks add their keys to both
        run.call("after_epoch")
    run.call("after_fit")
    return run
