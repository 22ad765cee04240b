"""Data-parallel fine-tuning with PyTorch DDP: ``imclass train ... --mode finetune --devices N``.

Each process holds a replica of the model and trains on its share of every global batch (``--batch-size`` stays
the global batch: each of N processes takes 1/N of it, from a ``DistributedSampler`` seeded per epoch, so a resumed
run replays the same shuffle); DDP averages the gradients, so a step equals a one-process step on the whole
batch (BatchNorm statistics aside: each process normalises its own share). gloo on CPU, NCCL on GPUs (one GPU
per process, ``LOCAL_RANK``). Process 0 alone writes checkpoints and the bundle, and reports progress; the
training loss and the validation metrics are computed over every process (validation images are split across
them and their logits gathered), so every process takes the same early-stopping decision.

Two ways to start it, the same code either way:

- ``imclass train ... --devices N`` on one machine: this process is rank 0 and starts N-1 more (``spawn``);
- ``torchrun --nnodes M --nproc-per-node N ... -m imclass train ...`` across machines: torchrun starts every
  process and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``, which
  :func:`from_env` reads. The run folder (``--out``) only needs to be on process 0's machine: on ``--resume``,
  process 0 reads the checkpoint and sends it to the others.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any

import numpy as np

from ..errors import ImclassError, ParameterError
from ..training.loop import Callback, Run
from ..training.strategy import Single

#: How long a collective waits for a process that went silent (a lost process fails a run sooner: its sockets close).
TIMEOUT = timedelta(minutes=10)
ENV_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class DDP(Single):
    """One process of a data-parallel run (rank ``rank`` of ``world``); :meth:`start` joins the process group."""

    def __init__(self, rank: int, world: int, *, local_rank: int = 0, local_world: int | None = None,
                 master_addr: str = "127.0.0.1", master_port: int = 29500):
        if not 0 <= rank < world:
            raise ParameterError("devices", f"rank {rank} is outside a run of {world} processes")
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.local_world = local_world or world
        self.master_addr, self.master_port = master_addr, master_port
        self.backend = "gloo"
        self._device = "cpu"
        self._group = False

    # ---- the process group ------------------------------------------------------------------------
    def device(self, requested: str) -> str:
        """``cpu`` (gloo) or this process's GPU, ``cuda:LOCAL_RANK`` (NCCL); joins the process group."""
        from ..engine.backends import resolve_device

        dev = resolve_device(requested)
        if dev.startswith("cuda"):
            import torch

            if self.local_rank >= torch.cuda.device_count():
                raise ImclassError(f"process {self.rank} needs GPU {self.local_rank}, but this machine has "
                                   f"{torch.cuda.device_count()}: start at most one process per GPU")
            torch.cuda.set_device(self.local_rank)
            self._device, self.backend = f"cuda:{self.local_rank}", "nccl"
        elif dev != "cpu":
            raise ParameterError("device", f"is {dev}: several processes train on cpu or cuda")
        self.start()
        return self._device

    def start(self) -> None:
        import torch.distributed as dist

        if self._group:
            return
        if not dist.is_available():  # pragma: no cover - every PyPI build of torch has it
            raise ImclassError("this build of PyTorch has no torch.distributed")
        dist.init_process_group(self.backend, init_method=f"tcp://{self.master_addr}:{self.master_port}",
                                rank=self.rank, world_size=self.world, timeout=TIMEOUT)
        self._group = True

    def finish(self) -> None:
        import torch.distributed as dist

        if self._group and dist.is_initialized():
            dist.destroy_process_group()
        self._group = False

    def threads(self) -> int:
        """The cores of this machine shared by the processes on it."""
        from ..engine.backends import default_threads

        return max(1, default_threads() // self.local_world)

    # ---- data -------------------------------------------------------------------------------------
    def loader(self, rows, batch_size: int, seed: int, workers: int) -> Iterable[Any]:
        """This process's share of the epoch: the same seeded shuffle everywhere, every ``world``-th sample."""
        from torch.utils.data.distributed import DistributedSampler

        from ..training.strategy import loader

        sampler = DistributedSampler(rows, num_replicas=self.world, rank=self.rank, shuffle=True, seed=seed,
                                     drop_last=False)
        # the generator seeds the loader workers' augmentation draws: different in every process
        return self._agreed(loader(rows, batch_size, False, seed + 7919 * self.rank, workers, sampler=sampler))

    def _agreed(self, batches: Iterable[Any]) -> Iterator[Any]:
        """Every process steps together: a batch that is empty on one process (all its images unreadable)
        is skipped by all, so no process waits in a gradient exchange the others never join."""
        import torch
        import torch.distributed as dist

        for batch in batches:
            flag = torch.tensor([0 if batch is None else 1], device=self._device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            yield batch if flag.item() else None

    def map_rows(self, items: Sequence[Any], fn: Callable[[list[Any]], np.ndarray]) -> np.ndarray:
        """``fn`` over every ``world``-th item here, the rows of all processes gathered back in order."""
        import torch.distributed as dist

        items = list(items)
        mine = np.asarray(fn(items[self.rank::self.world]))
        parts: list[Any] = [None] * self.world
        dist.all_gather_object(parts, mine)
        width = next((p.shape[1] for p in parts if p.ndim == 2), 0)
        out = np.full((len(items), width), np.nan, dtype=np.float32)
        for r, part in enumerate(parts):
            if len(part):
                out[r::self.world] = part
        return out

    def callbacks(self) -> list[Callback]:
        return [DataParallel(self), ResumeSync(self)]

    # ---- construction -----------------------------------------------------------------------------
    @classmethod
    def from_env(cls) -> DDP | None:
        """The process torchrun (or :func:`launch`) started, from its environment; None outside one."""
        env = os.environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        try:
            world = int(env["WORLD_SIZE"])
            rank = int(env["RANK"])
            local_rank = int(env.get("LOCAL_RANK", rank))
            local_world = int(env.get("LOCAL_WORLD_SIZE", world))
            port = int(env.get("MASTER_PORT", "29500"))
        except ValueError:
            raise ImclassError("RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE and MASTER_PORT must be integers "
                               f"({', '.join(f'{k}={env.get(k)}' for k in ENV_KEYS)})") from None
        if world < 2:
            return None
        return cls(rank, world, local_rank=local_rank, local_world=local_world,
                   master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=port)


class DataParallel(Callback):
    """The forward pass through ``DistributedDataParallel`` (rebuilt when the set of trained parameters changes,
    e.g. after the head-only epoch: DDP synchronises exactly the parameters that train), and ``train_loss`` as
    the mean over every process's samples."""

    order = 5

    def __init__(self, strategy: DDP):
        self.strategy = strategy
        self.trainable: tuple[bool, ...] | None = None

    def before_epoch(self, run: Run) -> None:
        from torch.nn.parallel import DistributedDataParallel

        trainable = tuple(p.requires_grad for p in run.model.parameters())
        if run.forward is None or trainable != self.trainable:
            local = self.strategy.local_rank
            run.forward = DistributedDataParallel(
                run.model, device_ids=[local] if self.strategy.backend == "nccl" else None,
                output_device=local if self.strategy.backend == "nccl" else None)
            self.trainable = trainable

    def after_epoch(self, run: Run) -> None:
        import torch
        import torch.distributed as dist

        total = torch.tensor([run.loss_sum, float(run.samples)], dtype=torch.float64,
                             device=self.strategy._device)
        dist.all_reduce(total)
        loss_sum, samples = total.tolist()
        run.record["train_loss"] = round(loss_sum / max(1.0, samples), 5)

    def after_fit(self, run: Run) -> None:
        run.forward = None


class ResumeSync(Callback):
    """After process 0 restored a checkpoint (``--resume``): the epoch to start from, the history and the best
    score, the weights and the optimiser state go to every process, which then start the same epoch."""

    order = 35

    def __init__(self, strategy: DDP):
        self.strategy = strategy

    def before_fit(self, run: Run) -> None:
        import torch.distributed as dist

        main = self.strategy.rank == 0
        state: list[Any] = [{"start_epoch": run.start_epoch, "history": run.history, "best": run.best}
                            if main else None]
        dist.broadcast_object_list(state, src=0)
        run.start_epoch, run.history, run.best = state[0]["start_epoch"], state[0]["history"], state[0]["best"]
        if run.start_epoch == 0:
            return
        tensors: list[Any] = [{"model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
                               "optimizer": _cpu(run.optimizer.state_dict())} if main else None]
        dist.broadcast_object_list(tensors, src=0)
        if not main:
            run.model.load_state_dict(tensors[0]["model"])
            run.optimizer.load_state_dict(tensors[0]["optimizer"])


def _cpu(obj: Any) -> Any:
    import torch

    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_cpu(v) for v in obj]
    return obj


# ---- starting the processes -------------------------------------------------------------------------------
def train(data: Any, out: str | os.PathLike | None = None, *, config: Any = None, resume: bool = False,
          progress: Callable | None = None, on_epoch: Callable | None = None, devices: int | None = None,
          **options: Any):
    """:func:`imclass.train` on several processes: under ``torchrun`` this process's share of the run; otherwise
    ``devices`` processes on this machine (this one is rank 0, the others are started here). Returns what
    :func:`imclass.train` returns on process 0, ``(None, TrainResult)`` on the others."""
    from ..training.api import train as train_one
    from ..training.config import TrainConfig

    if config is not None and options:
        raise ImclassError("pass either config= or keyword options, not both")
    cfg = config or TrainConfig(**options)
    if devices is not None:
        cfg.devices = devices
    env = DDP.from_env()
    if env is not None:  # torchrun started this process
        if cfg.devices not in (1, env.world):
            raise ParameterError("devices", f"is {cfg.devices}, but torchrun started {env.world} processes "
                                            "(leave {devices} out under torchrun)")
        cfg.devices = env.world
        _check(cfg)
        main = env.rank == 0
        return train_one(data, out, config=cfg, resume=resume, progress=progress if main else None,
                         on_epoch=on_epoch if main else None, strategy=env)
    if cfg.devices < 2:
        return train_one(data, out, config=cfg, resume=resume, progress=progress, on_epoch=on_epoch)
    _check(cfg)
    return launch(data, out, cfg, resume=resume, progress=progress, on_epoch=on_epoch)


def _check(cfg: Any) -> None:
    if cfg.mode == "probe":
        raise ParameterError("devices", "applies to finetune and scratch (the probe fits a head on cached "
                                        "embeddings; compute them on a cluster with --ray)")
    if cfg.batch_size % cfg.devices:
        raise ParameterError("batch_size", f"({cfg.batch_size}, the global batch) must be a multiple of "
                                           f"{{devices}} ({cfg.devices})")


def launch(data: Any, out: str | os.PathLike | None, cfg: Any, *, resume: bool = False,
           progress: Callable | None = None, on_epoch: Callable | None = None):
    """``cfg.devices`` processes on this machine: this one is rank 0 and returns the result; ranks 1.. are
    started with ``spawn`` and end when the fit does. A process that dies stops the run with a message;
    ``resume=True`` continues it from the last complete epoch."""
    from ..data import load_dataset
    from ..training.api import train as train_one

    world = cfg.devices
    ds = load_dataset(data, multi_label=cfg.multi_label)  # once, here: every process gets the same rows
    port = _free_port()
    ctx = multiprocessing.get_context("spawn")
    children = [ctx.Process(target=_child, args=(rank, world, port, ds, out, cfg, resume),
                            name=f"imclass-train-{rank}") for rank in range(1, world)]  # not daemons:
    for child in children:  # they start data-loader processes of their own
        child.start()
    strategy = DDP(0, world, local_rank=0, local_world=world, master_port=port)
    try:
        result = train_one(ds, out, config=cfg, resume=resume, progress=progress, on_epoch=on_epoch,
                           strategy=strategy)
    except BaseException as e:
        strategy.finish()
        died = [(c.name, c.exitcode) for c in children if c.exitcode not in (None, 0)]
        _end(children)
        if died and not isinstance(e, (KeyboardInterrupt, ImclassError)):
            name, code = died[0]
            raise ImclassError(f"training process {name.rsplit('-', 1)[-1]} of {world} stopped (exit code {code}); "
                               "the last complete epoch is checkpointed: continue with --resume") from e
        raise
    for child in children:
        child.join(timeout=120)
    _end(children)
    failed = [(c.name, c.exitcode) for c in children if c.exitcode != 0]
    if failed:
        raise ImclassError(f"training process {failed[0][0].rsplit('-', 1)[-1]} ended with exit code {failed[0][1]}")
    return result


def _child(rank: int, world: int, port: int, data: Any, out: Any, cfg: Any, resume: bool) -> None:
    """Rank ``rank`` of a run started by :func:`launch` (a fresh interpreter)."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from ..training.api import train as train_one

    try:
        train_one(data, out, config=cfg, resume=resume, strategy=DDP(rank, world, local_rank=rank,
                                                                     local_world=world, master_port=port))
    except Exception as e:  # process 0 reports the run's failure; here one line, no traceback
        print(f"imclass train: process {rank}: {e.__class__.__name__}: {e}", file=sys.stderr)
        sys.exit(1)


def _end(children: list) -> None:
    for child in children:
        if child.is_alive():
            child.terminate()
    for child in children:
        child.join(timeout=10)
        if child.is_alive():  # pragma: no cover - terminate is enough for a process blocked in a collective
            child.kill()
            child.join(timeout=10)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
