"""The studio's background worker: suggestions (embeddings, ImageNet hints, probe retrains) and, later, training
runs, in a process of its own so the web server stays responsive (``python -m imclass.studio.worker DIR``).

The server starts it and stops it; its pid is kept in ``DIR/worker.pid``, so a studio that was killed leaves
no orphan: the next start stops any worker left from before (and a worker whose server died stops by itself).
``worker="thread"`` runs the same loop in a thread (tests); ``"none"`` runs nothing.

The worker process leaves the server a core: it runs at a lower priority (nice 10), with one BLAS/OpenMP thread
and one inference thread, and does its work in small pieces (see :func:`imclass.studio.assist.step`), checking
``stop`` between them.

While it runs, a worker writes a heartbeat every :data:`HEARTBEAT_SECONDS` to ``DIR/worker.heartbeat.json`` (its
pid, the time, and what it is doing: :data:`imclass.studio.assist.activity`); :func:`status` reads it, so the
pages can say when suggestions are paused because no worker runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from . import processes

log = logging.getLogger("imclass.studio.worker")
PID_FILE = "worker.pid"
HEARTBEAT_FILE = "worker.heartbeat.json"
HEARTBEAT_SECONDS = 2.0
#: A heartbeat older than this means no worker runs (stopped, killed, or the machine slept).
HEARTBEAT_STALE = 20.0
IDLE_SECONDS = 1.0
#: A project whose step failed is left alone this long (no retry storm, the other projects go on).
BACKOFF_SECONDS = 30.0
NICE = 10
#: Environment of the worker process: one thread for BLAS/OpenMP (the server keeps the other core).
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Loop:
    """One pass at a time over the projects: whatever background work is due."""

    def __init__(self, data_dir: str | Path, settings=None):
        from .db import Database
        from .settings import StudioSettings

        self.settings = settings or StudioSettings(data_dir=Path(data_dir), worker="none")
        self.db = Database(self.settings.db_path)
        self.db.migrate()
        self.failed: dict[int, float] = {}  # project id -> when its last step failed

    def run(self, stop: threading.Event) -> None:
        from . import assist

        beating = threading.Thread(target=self._beat, args=(stop,), daemon=True, name="imclass-studio-heartbeat")
        beating.start()
        try:
            while not stop.is_set():
                busy = False
                try:
                    busy = self.step(stop)
                except Exception:  # one failing pass must not end the worker
                    log.exception("background work failed")
                if not busy:
                    assist.activity.update(doing="idle", project=None)
                    stop.wait(IDLE_SECONDS)
        finally:
            stop.set()
            beating.join(timeout=5)
            clear_heartbeat(self.settings.data_dir)

    def _beat(self, stop: threading.Event) -> None:
        from . import assist

        started = time.time()
        path = Path(self.settings.data_dir) / HEARTBEAT_FILE
        while not stop.is_set():
            beat = {"pid": os.getpid(), "at": time.time(), "started": started, **assist.activity}
            try:
                tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
                tmp.write_text(json.dumps(beat))
                os.replace(tmp, path)
            except OSError as e:  # a full disk must not stop the work
                log.warning("cannot write the heartbeat %s: %s", path, e)
            stop.wait(HEARTBEAT_SECONDS)

    def step(self, stop: threading.Event) -> bool:
        """Do the next piece of background work; True when there was some."""
        from . import assist

        for row in self.db.all("SELECT id FROM projects ORDER BY updated DESC"):
            if stop.is_set():
                return False
            pid = row["id"]
            if time.monotonic() - self.failed.get(pid, -BACKOFF_SECONDS) < BACKOFF_SECONDS:
                continue
            try:
                if assist.step(self.db, pid, self.settings, stop):
                    return True
            except Exception:  # one project's failure must not stop the others
                log.exception("background work on project %d failed; retrying in %.0fs", pid, BACKOFF_SECONDS)
                self.failed[pid] = time.monotonic()
        return False


class ThreadWorker:
    def __init__(self, studio):
        self.stop_event = threading.Event()
        self.loop = Loop(studio.settings.data_dir, studio.settings.replace(worker="none"))
        self.thread = threading.Thread(target=self.loop.run, args=(self.stop_event,), daemon=True,
                                       name="imclass-studio-worker")
        self.thread.start()

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)


class ProcessWorker:
    def __init__(self, studio):
        self.pid_file = studio.settings.data_dir / PID_FILE
        stop_orphan(self.pid_file)
        with contextlib.suppress(OSError):  # a killed studio's worker left its last heartbeat
            (studio.settings.data_dir / HEARTBEAT_FILE).unlink()
        settings = studio.settings
        env = {**os.environ, **THREAD_ENV, "IMCLASS_STUDIO_WORKER": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "imclass.studio.worker", str(settings.data_dir),
                                      "--retrain-every", str(settings.retrain_every),
                                      "--min-per-class", str(settings.min_per_class)],
                                     env=env, stdin=subprocess.DEVNULL)
        self.pid_file.write_text(str(self.proc.pid))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            self.pid_file.unlink()


def stop_orphan(pid_file: Path) -> None:
    """Stop a worker a killed studio left running (its pid is in the data folder) and remove the pid file (also
    when the pid now names another process: then that process is left alone)."""
    processes.stop_orphan(pid_file, "imclass.studio.worker")


def clear_heartbeat(data_dir: str | Path) -> None:
    """Remove the heartbeat of this process's worker (a stopped worker is not running at once)."""
    path = Path(data_dir) / HEARTBEAT_FILE
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads(path.read_text())["pid"] == os.getpid():
            path.unlink()


def status(data_dir: str | Path, handle: Any = None, mode: str = "process") -> dict[str, Any]:
    """Whether a worker runs for the data folder (a fresh heartbeat, and ``handle``, the studio's worker, alive)
    and what it does; ``problem`` says why not when it does not."""
    try:
        beat = json.loads((Path(data_dir) / HEARTBEAT_FILE).read_text())
        age = max(0.0, time.time() - float(beat["at"]))
    except (OSError, ValueError, KeyError, TypeError):
        beat, age = None, None
    problem = None
    if handle is not None and not handle.alive():
        problem = "the background worker has stopped (restart the studio)"
    elif beat is None:
        problem = ("the studio runs without a background worker" if mode == "none" and handle is None
                   else "the background worker has not started yet")
    elif age > HEARTBEAT_STALE:
        problem = f"no sign of the background worker for {age:.0f} s"
    beat = beat or {}
    return {"running": problem is None, "problem": problem,
            "heartbeat_age_s": None if age is None else round(age, 1),
            "doing": beat.get("doing") if problem is None else None, "project": beat.get("project"),
            "embedded": int(beat.get("embedded", 0)), "retrains": int(beat.get("retrains", 0)),
            "checks": int(beat.get("checks", 0))}


def start_worker(studio):
    mode = studio.settings.worker
    if mode == "none":
        return None
    return ThreadWorker(studio) if mode == "thread" else ProcessWorker(studio)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m imclass.studio.worker",
                                 description="The studio's background worker (started by the studio).")
    ap.add_argument("data_dir")
    ap.add_argument("--retrain-every", type=int, default=None)
    ap.add_argument("--min-per-class", type=int, default=None)
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=os.environ.get("IMCLASS_WORKER_LOG", "INFO"),  # DEBUG: a line per chunk embedded
                        format="%(asctime)s worker %(levelname)s %(message)s")
    from .settings import StudioSettings

    changes = {k: v for k, v in (("retrain_every", args.retrain_every), ("min_per_class", args.min_per_class))
               if v is not None}
    settings = StudioSettings(data_dir=Path(args.data_dir), worker="none", **changes)
    with contextlib.suppress(OSError, AttributeError):
        os.nice(NICE)  # the web server answers first
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parent = os.getppid()

    def watch_parent() -> None:  # the server died without stopping us (kill -9): stop too
        while not stop.is_set():
            if os.getppid() != parent:
                stop.set()
            time.sleep(1.0)

    threading.Thread(target=watch_parent, daemon=True).start()
    from . import assist

    threading.Thread(target=assist.warm_up, daemon=True, name="imclass-studio-warm-up").start()
    Loop(settings.data_dir, settings).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
