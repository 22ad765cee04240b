"""Ray for imclass: join a cluster or start a local instance, and size the actor pool to it.

Without an address a local Ray instance is started for the run (all usable cores, a small object store, no
dashboard) and shut down afterwards; with one (``auto``, ``HOST:PORT``, ``ray://...``, or ``$RAY_ADDRESS``) the run
joins that cluster and leaves it running. A process that already called ``ray.init`` keeps its connection.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import ImclassError, ParameterError

#: CPUs a file-reading task asks for: reading is I/O, the cores belong to the actors that decode and infer.
READ_CPUS = 0.1
#: Object store of a local instance (bytes of images waiting for an actor; Ray spills beyond it).
LOCAL_OBJECT_STORE = 512 * 1024 * 1024
INSTALL_HINT = "pip install 'imclass[ray]'"


def require_ray():
    """``ray`` with Ray Data, or an error that says how to install it."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise ImclassError(f"--ray needs Ray Data, which is not installed: {INSTALL_HINT}") from None
    return ray


@dataclass
class Cluster:
    """The Ray cluster a run uses: where it is, what it has, and how long joining or starting it took."""

    address: str  # "local" for an instance started by this run
    cpus: float
    gpus: float
    started: bool  # this run started it (and shuts it down)
    seconds: float  # ray.init (start-up of a local instance, or joining)


@contextlib.contextmanager
def connect(address: str | None = None, *, num_cpus: int | None = None,
            object_store_memory: int | None = None) -> Iterator[Cluster]:
    """Use Ray for the block: the cluster at ``address`` (or ``$RAY_ADDRESS``), else a local instance of
    ``num_cpus`` (default: the usable cores) with ``object_store_memory`` bytes of object store."""
    ray = require_ray()
    _quiet_logs()
    # Ray's own C++ log lines (e.g. a note that Ray Data's pool actors restart) are for Ray's developers; its
    # failures still arrive as Python exceptions. RAY_BACKEND_LOG_LEVEL=info shows them again.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    t0 = time.perf_counter()
    started = False
    if ray.is_initialized():
        where = "existing"
    else:
        address = address or os.environ.get("RAY_ADDRESS") or None
        try:
            if address and address != "local":
                ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
                where = address
            else:
                from ..engine.backends import default_threads

                store = object_store_memory or _local_store()
                ray.init(num_cpus=num_cpus or default_threads(), object_store_memory=store,
                         include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
                where, started = "local", True
        except ConnectionError as e:
            raise ImclassError(f"cannot reach the Ray cluster at {address}: {e} (start one with `ray start --head`, "
                               "or leave out the address to run on a local instance)") from None
    _configure_data()
    res = ray.cluster_resources()
    cluster = Cluster(address=where, cpus=float(res.get("CPU", 0)), gpus=float(res.get("GPU", 0)), started=started,
                      seconds=time.perf_counter() - t0)
    try:
        yield cluster
    finally:
        if started:
            ray.shutdown()


def _local_store() -> int:
    """:data:`LOCAL_OBJECT_STORE`, or less on a small machine (a tenth of the memory, Ray's minimum 80 MB)."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        return LOCAL_OBJECT_STORE
    return max(80 * 1024 * 1024, min(LOCAL_OBJECT_STORE, memory // 10))


def _quiet_logs() -> None:
    """Ray's start-up banners and Ray Data's execution plans are not for the user of a CLI."""
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _configure_data() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # imclass shows its own
    ctx.print_on_execution_start = False
    _quiet_logs()


@dataclass
class Plan:
    """The actor pool: how many, what each reserves, and the threads inside each."""

    actors: int
    cpus: float  # logical CPUs reserved per actor
    gpus: float  # GPUs per actor (0: CPU actors)
    device: str  # "cpu" or "cuda"
    threads: int  # model threads per actor
    workers: int  # decode threads per actor (0: decode inline, between model calls)
    streams: int | None  # model calls at once per actor (None: the backend's default)

    def describe(self) -> str:
        each = f"{self.cpus:g} CPU" + (f" + {self.gpus:g} GPU" if self.gpus else "")
        return f"{self.actors} actors ({each} each, {self.device})"


def plan_actors(cluster: Cluster, *, actors: int | None = None, gpus_per_actor: float = 0.0,
                cpus_per_actor: float | None = None, device: str = "auto", threads: int | None = None,
                workers: int | None = None, streams: int | None = None, upstream_cpus: float = READ_CPUS) -> Plan:
    """Size the pool to the cluster. CPU actors: one per core, each reserving its share of the CPUs left after a
    small reserve for the file-reading tasks, one model thread each. GPU actors: GPUs / ``gpus_per_actor``, each
    with its share of the CPUs for decoding. ``upstream_cpus``: what one task feeding the actors asks for (imclass's
    readers: :data:`READ_CPUS`; a Ray Dataset made elsewhere: Ray's default, 1), kept free so it can run."""
    if actors is not None and actors < 1:
        raise ParameterError("actors", "must be >= 1")
    if gpus_per_actor < 0:
        raise ParameterError("gpus_per_actor", "must be >= 0")
    if cpus_per_actor is not None and cpus_per_actor <= 0:
        raise ParameterError("cpus_per_actor", "must be > 0")
    dev = device.split(":")[0]
    if dev not in ("auto", "cpu", "cuda"):
        raise ParameterError("device", f"must be auto, cpu or cuda with Ray, not {device!r}")
    if dev == "cuda" and gpus_per_actor == 0:
        raise ParameterError("device", "cuda on Ray actors needs {gpus_per_actor} (e.g. 1)")
    if dev == "cpu" and gpus_per_actor > 0:
        raise ParameterError("gpus_per_actor", "asks for GPUs but {device} is cpu")
    reserve = max(2 * upstream_cpus, min(0.05 * cluster.cpus, 8.0))
    if reserve >= cluster.cpus:
        reserve = upstream_cpus
    usable = max(cluster.cpus - reserve, READ_CPUS)
    if gpus_per_actor > 0:
        if cluster.gpus < gpus_per_actor:
            raise ImclassError(f"{gpus_per_actor:g} GPUs per actor, but the Ray cluster has {cluster.gpus:g} GPUs")
        n = actors or max(1, math.floor(cluster.gpus / gpus_per_actor + 1e-9))
        if n * gpus_per_actor > cluster.gpus + 1e-9:
            raise ImclassError(f"{n} actors x {gpus_per_actor:g} GPUs, but the Ray cluster has {cluster.gpus:g} GPUs")
        cpus = cpus_per_actor or max(READ_CPUS, usable / n)
        device_used = "cuda"
    else:
        n = actors or max(1, math.floor(cluster.cpus + 1e-9))
        cpus = cpus_per_actor or usable / n
        device_used = "cpu"
    if n * cpus > usable + 1e-9:
        raise ImclassError(f"{n} actors x {cpus:g} CPUs do not fit the Ray cluster's {cluster.cpus:g} CPUs (with "
                           f"{reserve:g} kept for reading files); ask for fewer --actors")
    cpus = math.floor(cpus * 100) / 100  # two decimals: a share that sums within the cluster
    model_threads = threads or max(1, round(cpus))
    decode = workers if workers is not None else (0 if model_threads == 1 and device_used == "cpu"
                                                  else max(1, round(cpus)))
    return Plan(actors=n, cpus=cpus, gpus=gpus_per_actor, device=device_used, threads=model_threads,
                workers=decode, streams=streams)
