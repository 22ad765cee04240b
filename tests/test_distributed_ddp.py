"""Data-parallel fine-tuning (``--devices N``, torchrun): 2 gloo processes on CPU.

- one optimisation step on 2 processes equals one single-process step on the same global batch (to 1e-5),
  each process seeing its own half of the batch, and the reported training loss is the global one;
- kill -9 of one process mid-epoch stops the run with a message; ``--resume`` (here through ``torchrun``)
  ends with the epoch count of an uninterrupted run.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli

torch = pytest.importorskip("torch")

from imclass.distributed.ddp import DDP  # noqa: E402
from imclass.training.loop import fit  # noqa: E402
from imclass.training.strategy import SINGLE  # noqa: E402

GLOBAL_BATCH = 8


def tiny_net():
    """A small CNN without BatchNorm or dropout: one step is a pure function of the batch's gradient."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                               torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))


class Rows(torch.utils.data.Dataset):
    """Eight 12x12 images with targets, returned as ``(x, y, index)`` like the fine-tuning rows."""

    def __init__(self):
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(GLOBAL_BATCH, 3, 12, 12, generator=g)
        self.y = torch.arange(GLOBAL_BATCH) % 3

    def __len__(self) -> int:
        return GLOBAL_BATCH

    def __getitem__(self, i: int):
        return self.x[i], self.y[i], i


def one_step(strategy, batch_size: int):
    """One epoch of one step through the real loop and the strategy's sampler, wrapper and reductions."""
    model = tiny_net()
    device = strategy.device("cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    seen: list[int] = []

    def batches(epoch: int):
        for batch in strategy.loader(Rows(), batch_size, seed=7, workers=0):
            seen.extend(batch[2].tolist())
            yield batch

    run = fit(model, optimizer, torch.nn.CrossEntropyLoss(), batches, epochs=1, steps_per_epoch=1, device=device,
              callbacks=strategy.callbacks())
    strategy.finish()
    params = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    return seen, params, run.history[0]["train_loss"]


def _rank(rank: int, world: int, port: int, queue) -> None:
    torch.set_num_threads(1)
    seen, params, loss = one_step(DDP(rank, world, master_port=port), GLOBAL_BATCH // world)
    queue.put((rank, seen, params, loss))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_one_ddp_step_equals_one_single_process_step():
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = sorted(queue.get(timeout=240) for _ in procs)
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    seen, params, loss = one_step(SINGLE, GLOBAL_BATCH)
    (_, seen0, params0, loss0), (_, seen1, params1, loss1) = results
    assert len(seen0) == len(seen1) == GLOBAL_BATCH // 2  # each process: half the global batch
    assert sorted(seen0 + seen1) == sorted(seen) == list(range(GLOBAL_BATCH))  # together: all of it, once
    for name, value in params.items():
        moved = np.abs(value - tiny_net().state_dict()[name].numpy()).max()
        assert moved > 1e-4, f"{name} did not change: the test would prove nothing"
        assert np.abs(params0[name] - value).max() < 1e-5, name
        assert np.abs(params1[name] - value).max() < 1e-5, name  # replicas stay identical
    assert loss0 == loss1 == pytest.approx(loss, abs=1e-5)  # train_loss: the mean over both processes


def test_ddp_reads_torchrun_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    assert DDP.from_env() is None
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.5")
    monkeypatch.setenv("MASTER_PORT", "29511")
    s = DDP.from_env()
    assert (s.rank, s.world, s.local_rank, s.local_world, s.master_addr, s.master_port) == (3, 4, 1, 2, "10.0.0.5",
                                                                                           29511)
    assert not s.main
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert DDP.from_env() is None  # one process: nothing to share


def test_devices_checks():
    import imclass

    with pytest.raises(imclass.ParameterError, match="finetune and scratch"):
        imclass.train("unused", mode="probe", devices=2)
    with pytest.raises(imclass.ParameterError, match="multiple"):
        imclass.train("unused", mode="scratch", devices=3, batch_size=8)


def make_dataset(root: Path, per_class: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(np.array(colour) + rng.normal(0, 40, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root


@pytest.mark.slow
def test_kill_one_process_then_resume_with_torchrun(tmp_path):
    data, run = make_dataset(tmp_path / "data"), tmp_path / "run"
    args = ["train", str(data), "--mode", "scratch", "--epochs", "3", "--image-size", "32", "--batch-size", "8",
            "--augment", "none", "--loader-workers", "0", "--no-unknown", "-o", str(run)]
    # 48 images, 38 for training: 5 steps per epoch; process 1 dies at its 8th step (epoch 2)
    r = run_cli(*args, "--devices", "2", env_extra={"IMCLASS_KILL_AT": "finetune.step@1:8"}, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "process 1 of 2 stopped" in r.stderr and "--resume" in r.stderr, r.stderr[-3000:]
    state = json.loads((run / "checkpoints" / "last.json").read_text())
    assert state["epoch"] == 0 and len(state["history"]) == 1  # epoch 1 complete, epoch 2 lost
    assert not (run / "imclass.json").exists()
    # the same run continued by torchrun (its environment: RANK, WORLD_SIZE, MASTER_ADDR, ...)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                str(_free_port()), "-m", "imclass"]
    import subprocess

    r = subprocess.run([*torchrun, *args, "--resume", "--json"], capture_output=True, text=True, timeout=600,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert history[0] == state["history"][0]  # the epoch done before the kill is kept, not redone
    assert (run / "imclass.json").exists() and json.loads(r.stdout)["mode"] == "scratch"
