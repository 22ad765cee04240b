"""The generic training loop (training/loop.py) and its callbacks, on a tiny model and random tensors."""

from __future__ import annotations

import json

import pytest
import torch

from imclass.training import callbacks as cbs
from imclass.training.loop import Callback, fit

N, BATCH, FEATURES, CLASSES = 20, 4, 6, 3
STEPS = N // BATCH


def data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(N, FEATURES, generator=g), torch.randint(0, CLASSES, (N,), generator=g)


def batches_of(x, y):
    def batches(epoch: int):
        return [(x[i:i + BATCH], y[i:i + BATCH], None) for i in range(0, N, BATCH)]

    return batches


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(FEATURES, 8), torch.nn.ReLU(), torch.nn.Linear(8, CLASSES))


class Recorder(Callback):
    def __init__(self, name: str, log: list, order: int = 0):
        self.name, self.log, self.order = name, log, order

    def before_fit(self, run):
        self.log.append((self.name, "before_fit"))

    def before_epoch(self, run):
        self.log.append((self.name, "before_epoch", run.epoch))

    def after_step(self, run):
        self.log.append((self.name, "after_step", run.epoch, run.step, run.global_step))

    def after_epoch(self, run):
        self.log.append((self.name, "after_epoch", run.epoch, run.record["epoch"]))

    def after_fit(self, run):
        self.log.append((self.name, "after_fit"))


def test_custom_loss_optimizer_and_schedule_are_used():
    x, y = data()
    model = tiny()
    losses, factors, lrs = [], [], []

    def loss_fn(logits, target):
        loss = torch.nn.functional.cross_entropy(logits, target)
        losses.append(float(loss.detach()))
        return loss

    def schedule(step, total):
        factors.append((step, total))
        return 1.0 / (step + 1)

    class SeeLr(Callback):
        def after_step(self, run):
            lrs.append(run.optimizer.param_groups[0]["lr"])

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # no initial_lr: the loop takes lr as it
    before = [p.detach().clone() for p in model.parameters()]
    run = fit(model, optimizer, loss_fn, batches_of(x, y), epochs=2, steps_per_epoch=STEPS, schedule=schedule,
              callbacks=[SeeLr()])
    assert factors == [(s, 2 * STEPS) for s in range(2 * STEPS)]
    assert lrs == pytest.approx([0.1 / (s + 1) for s in range(2 * STEPS)])
    assert len(losses) == 2 * STEPS and run.loss == pytest.approx(losses[-1])
    assert optimizer.param_groups[0]["initial_lr"] == 0.1
    assert run.history[-1]["lr"] == pytest.approx(0.1 / (2 * STEPS))
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters()))
    # the records: the mean training loss of each epoch, rounded as the history keeps it
    assert [h["epoch"] for h in run.history] == [1, 2]
    assert run.history[0]["train_loss"] == round(sum(losses[:STEPS]) / STEPS, 5)

    # another optimiser is really the one stepping: SGD and Adam from the same start end apart
    other = tiny()
    fit(other, torch.optim.Adam(other.parameters(), lr=0.1), loss_fn, batches_of(x, y), epochs=2,
        steps_per_epoch=STEPS, schedule=schedule)
    assert not torch.allclose(other[0].weight, model[0].weight)


def test_same_parts_same_result_and_a_zero_schedule_changes_nothing():
    x, y = data()

    def train(schedule):
        model = tiny()
        fit(model, torch.optim.AdamW(model.parameters(), lr=0.01), torch.nn.CrossEntropyLoss(), batches_of(x, y),
            epochs=2, steps_per_epoch=STEPS, schedule=schedule)
        return [p.detach().clone() for p in model.parameters()]

    a, b = train(lambda s, t: 1.0), train(lambda s, t: 1.0)
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    start = [p.detach() for p in tiny().parameters()]
    frozen = train(lambda s, t: 0.0)  # AdamW with lr 0: not even weight decay moves the weights
    assert all(torch.equal(p, q) for p, q in zip(frozen, start))


def test_callbacks_fire_in_order():
    x, y = data()
    log: list = []
    model = tiny()
    # given out of order: the loop sorts them by ``order`` (ties keep the given order)
    callbacks = [Recorder("late", log, order=5), Recorder("early", log, order=-1), Recorder("mid", log, order=0)]
    fit(model, torch.optim.SGD(model.parameters(), lr=0.01), torch.nn.CrossEntropyLoss(), batches_of(x, y),
        epochs=2, steps_per_epoch=STEPS, callbacks=callbacks)
    names = ("early", "mid", "late")
    want = [(n, "before_fit") for n in names]
    for epoch in range(2):
        want += [(n, "before_epoch", epoch) for n in names]
        for step in range(STEPS):
            want += [(n, "after_step", epoch, step, epoch * STEPS + step) for n in names]
        want += [(n, "after_epoch", epoch, epoch + 1) for n in names]
    want += [(n, "after_fit") for n in names]
    assert log == want


def test_a_callback_can_stop_training():
    x, y = data()
    log: list = []

    class StopAfterFirstEpoch(Callback):
        def after_epoch(self, run):
            run.stop = True

    class StopMidEpoch(Callback):
        def after_step(self, run):
            run.stop = run.step == 1

    model = tiny()
    run = fit(model, torch.optim.SGD(model.parameters(), lr=0.01), torch.nn.CrossEntropyLoss(), batches_of(x, y),
              epochs=5, steps_per_epoch=STEPS, callbacks=[StopAfterFirstEpoch(), Recorder("r", log)])
    assert [h["epoch"] for h in run.history] == [1]
    assert log[-1] == ("r", "after_fit") and sum(e[1] == "after_step" for e in log) == STEPS

    log.clear()
    run = fit(model, torch.optim.SGD(model.parameters(), lr=0.01), torch.nn.CrossEntropyLoss(), batches_of(x, y),
              epochs=5, steps_per_epoch=STEPS, callbacks=[StopMidEpoch(), Recorder("r", log)])
    # the epoch ends after its second step, is still recorded, and no other epoch starts
    assert [e[3] for e in log if e[1] == "after_step"] == [0, 1]
    assert [h["epoch"] for h in run.history] == [1]


def test_the_step_hook_sees_every_step_and_empty_batches_are_skipped():
    x, y = data()
    seen: list = []

    class Steps(Callback):
        def after_step(self, run):
            seen.append((run.epoch, run.step, run.batch_size, run.loss))

    def batches(epoch):
        full = batches_of(x, y)(epoch)
        return [full[0], None, *full[1:]]  # an all-unreadable batch: no step, no hook

    model = tiny()
    fit(model, torch.optim.SGD(model.parameters(), lr=0.01), torch.nn.CrossEntropyLoss(), batches,
        epochs=3, steps_per_epoch=STEPS + 1, callbacks=[Steps()])
    assert [(e, s) for e, s, _, _ in seen] == [(e, s) for e in range(3) for s in [0, *range(2, STEPS + 1)]]
    assert all(b == BATCH and loss > 0 for _, _, b, loss in seen)


def test_freeze_early_stopping_and_checkpoints_resume(tmp_path):
    """The fine-tuning callbacks on the tiny model: head-only first epoch, best/last checkpoints, early
    stopping, and a resumed run that keeps counting stale epochs."""
    x, y = data()
    model = tiny()
    head = {id(p) for p in model[2].parameters()}
    first = model[0].weight.detach().clone()
    scores = iter([0.5, 0.7, 0.6, 0.6, 0.9])  # epoch 2 is the best, then two stale epochs: stop (patience 2)
    identity = {"config": {"seed": 0}, "dataset": "x"}
    records: list = []
    progress: list = []

    def parts():
        return [cbs.FreezeBackbone(head, 1), cbs.Validation(lambda run: {"val_accuracy": next(scores)}),
                cbs.TrackBest(lambda rec: rec["val_accuracy"]), cbs.Checkpoints(tmp_path, identity, resume=True),
                cbs.EarlyStopping(2), cbs.OnEpoch(records.append), cbs.Progress(lambda *a: progress.append(a))]

    class CheckFrozen(Callback):
        def after_step(self, run):
            if run.epoch == 0:
                assert not run.model.training and torch.equal(run.model[0].weight, first)

    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    run = fit(model, optimizer, torch.nn.CrossEntropyLoss(), batches_of(x, y), epochs=10, steps_per_epoch=STEPS,
              callbacks=[*parts(), CheckFrozen()])
    assert [(h["epoch"], h["frozen_backbone"], h["improved"]) for h in run.history] == \
        [(1, True, True), (2, False, True), (3, False, False), (4, False, False)]
    assert records == run.history and run.best == 0.7
    assert progress[0] == ("epoch 1/10 (head only)", 1, STEPS) and progress[-1] == ("epoch 4/10", STEPS, STEPS)
    state = json.loads((tmp_path / "last.json").read_text())
    assert state["epoch"] == 3 and state["best"] == 0.7 and state["identity"] == identity
    assert list(state) == ["epoch", "history", "best", "identity", "optimizer"]
    assert list(state["history"][0]) == ["epoch", "train_loss", "lr", "frozen_backbone", "val_accuracy", "improved"]
    # the best epoch's weights are loaded at the end
    from safetensors.torch import load_file

    best = load_file(str(tmp_path / "best.safetensors"))
    assert torch.equal(model[0].weight, best["model.0.weight"])

    # resuming: the history comes back, the two stale epochs still count, nothing more trains
    records.clear()
    again = tiny(seed=1)
    run = fit(again, torch.optim.SGD(again.parameters(), lr=0.05), torch.nn.CrossEntropyLoss(), batches_of(x, y),
              epochs=10, steps_per_epoch=STEPS, callbacks=parts())
    assert run.start_epoch == 4 and len(run.history) == 4 and records == [] and run.best == 0.7
    assert torch.equal(again[0].weight, best["model.0.weight"])


def test_checkpoints_refuse_another_run_or_identity(tmp_path):
    from imclass.errors import ImclassError

    x, y = data()
    model = tiny()

    def go(identity, resume):
        fit(model, torch.optim.SGD(model.parameters(), lr=0.01), torch.nn.CrossEntropyLoss(), batches_of(x, y),
            epochs=1, steps_per_epoch=STEPS,
            callbacks=[cbs.TrackBest(lambda rec: -rec["train_loss"]), cbs.Checkpoints(tmp_path, identity, resume)])

    go({"a": 1}, resume=False)
    with pytest.raises(ImclassError, match="holds a previous run"):
        go({"a": 1}, resume=False)
    with pytest.raises(ImclassError, match="different configuration"):
        go({"a": 2}, resume=True)


def test_fault_points_follow_every_step_and_every_checkpointed_epoch(tmp_path, monkeypatch):
    """``finetune.step`` after every optimiser step, ``finetune.epoch`` after the epoch's ``last`` checkpoint,
    both after every other callback (the SIGKILL itself: tests/test_train.py, slow)."""
    from imclass import faults

    x, y = data()
    log: list = []
    monkeypatch.setattr(faults, "checkpoint", lambda point: log.append((point, (tmp_path / "last.json").is_file())))
    model = tiny()
    fit(model, torch.optim.SGD(model.parameters(), lr=0.01), torch.nn.CrossEntropyLoss(), batches_of(x, y),
        epochs=2, steps_per_epoch=STEPS,
        callbacks=[cbs.FaultPoints("finetune"), Recorder("r", log), cbs.TrackBest(lambda rec: 0.0),
                   cbs.Checkpoints(tmp_path, {}, resume=False)])
    steps = [e for e in log if e[0] == "finetune.step"]
    assert len(steps) == 2 * STEPS
    epochs = [i for i, e in enumerate(log) if e[0] == "finetune.epoch"]
    assert [log[i] for i in epochs] == [("finetune.epoch", True)] * 2
    assert [log[i - 1][:2] for i in epochs] == [("r", "after_epoch")] * 2
    assert all(log[i - 1][:2] == ("r", "after_step") for i, e in enumerate(log) if e[0] == "finetune.step")
