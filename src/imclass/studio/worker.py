"""The studio's background worker: suggestions (embeddings, ImageNet hints, probe retrains) and, later, training
runs, in a process of its own so the web server stays responsive (``python -m imclass.studio.worker DIR``).

The server starts it and stops it; its pid is kept in ``DIR/worker.pid``, so a studio that was killed leaves
no orphan: the next start stops any worker left from before. ``worker="thread"`` runs the same loop in a thread
(tests); ``"none"`` runs nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("imclass.studio.worker")
PID_FILE = "worker.pid"
IDLE_SECONDS = 1.0


class Loop:
    """One pass at a time over the projects: whatever background work is due."""

    def __init__(self, data_dir: str | Path, settings=None):
        from .db import Database
        from .settings import StudioSettings

        self.settings = settings or StudioSettings(data_dir=Path(data_dir), worker="none")
        self.db = Database(self.settings.db_path)
        self.db.migrate()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            busy = False
            try:
                busy = self.step(stop)
            except Exception:  # one failing pass must not end the worker
                log.exception("background work failed")
            if not busy:
                stop.wait(IDLE_SECONDS)

    def step(self, stop: threading.Event) -> bool:
        """Do the next piece of background work; True when there was some."""
        from . import assist

        for row in self.db.all("SELECT id FROM projects ORDER BY updated DESC"):
            if stop.is_set():
                return False
            if assist.step(self.db, row["id"], self.settings, stop):
                return True
        return False


class ThreadWorker:
    def __init__(self, studio):
        self.stop_event = threading.Event()
        self.loop = Loop(studio.settings.data_dir, studio.settings.replace(worker="none"))
        self.thread = threading.Thread(target=self.loop.run, args=(self.stop_event,), daemon=True,
                                       name="imclass-studio-worker")
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=60)


class ProcessWorker:
    def __init__(self, studio):
        self.pid_file = studio.settings.data_dir / PID_FILE
        stop_orphan(self.pid_file)
        env = {**os.environ, "IMCLASS_STUDIO_WORKER": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "imclass.studio.worker", str(studio.settings.data_dir)],
                                     env=env, stdin=subprocess.DEVNULL)
        self.pid_file.write_text(str(self.proc.pid))

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
    """Stop a worker a killed studio left running (its pid is in the data folder)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        cmdline = []
    if cmdline and b"imclass.studio.worker" not in b" ".join(cmdline):
        return  # the pid was reused by something else
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
        log.warning("stopped worker %d left from an earlier studio", pid)
    with contextlib.suppress(OSError):
        pid_file.unlink()


def start_worker(studio):
    mode = studio.settings.worker
    if mode == "none":
        return None
    return ThreadWorker(studio) if mode == "thread" else ProcessWorker(studio)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m imclass.studio.worker DATA_DIR", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s worker %(levelname)s %(message)s")
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
    Loop(args[0]).run(stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
