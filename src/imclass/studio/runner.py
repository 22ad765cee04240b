"""The process that executes training runs, one at a time (``python -m imclass.studio.runner DATA_DIR``),
beside the suggestion worker, so a long fine-tune never delays suggestions nor the web server.

The server starts and stops it; its pid is kept in ``DATA_DIR/runner.pid`` and a runner left by a killed
studio is stopped at the next start (no orphan keeps writing); runs it left ``running`` are marked
``interrupted`` (a fine-tune can then be resumed from its last checkpoint). The runner also stops when its
parent dies. ``worker="thread"`` runs the same loop in a thread (tests).
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

from .processes import stop_orphan

log = logging.getLogger("imclass.studio.runner")
PID_FILE = "runner.pid"
IDLE_SECONDS = 1.0


def loop(data_dir: Path, stop: threading.Event) -> None:
    from . import runs, tasks
    from .db import Database

    db = Database(Path(data_dir) / "studio.sqlite3")
    db.migrate()
    while not stop.is_set():
        rid = runs.claim(db)
        if rid is None:
            tid = tasks.claim(db)
            if tid is not None:
                try:
                    tasks.execute(db, Path(data_dir), tid)
                except Exception as e:  # a bug in one task (export, folder labelling) must not end the runner
                    log.exception("task %d failed", tid)
                    with db.tx() as con:
                        con.execute("UPDATE tasks SET status = 'failed', error = ? WHERE id = ? AND status = 'running'",
                                    (f"{type(e).__name__}: {e}"[:1000], tid))
                continue
            stop.wait(IDLE_SECONDS)
            continue
        try:
            runs.execute(db, Path(data_dir), rid, stop)
        except Exception as e:  # a bug in one run must not end the runner
            log.exception("run %d failed", rid)
            with db.tx() as con:
                con.execute("UPDATE runs SET status = 'failed', error = ? WHERE id = ? AND status = 'running'",
                            (f"{type(e).__name__}: {e}"[:1000], rid))


class ThreadRunner:
    def __init__(self, studio):
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=loop, args=(studio.settings.data_dir, self.stop_event), daemon=True,
                                       name="imclass-studio-runner")
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(timeout=120)


class ProcessRunner:
    def __init__(self, studio):
        self.pid_file = studio.settings.data_dir / PID_FILE
        stop_orphan(self.pid_file, "imclass.studio.runner")
        self.proc = subprocess.Popen([sys.executable, "-m", "imclass.studio.runner", str(studio.settings.data_dir)],
                                     stdin=subprocess.DEVNULL)
        self.pid_file.write_text(str(self.proc.pid))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            self.pid_file.unlink()


def start_runner(studio):
    mode = studio.settings.worker
    if mode == "none":
        return None
    return ThreadRunner(studio) if mode == "thread" else ProcessRunner(studio)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m imclass.studio.runner DATA_DIR", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.INFO, format="%(asctime)s runner %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    parent = os.getppid()

    def watch_parent() -> None:  # the studio died without stopping us (kill -9): stop at once, write nothing more
        while not stop.is_set():
            if os.getppid() != parent:
                os._exit(1)
            time.sleep(0.5)

    threading.Thread(target=watch_parent, daemon=True).start()
    loop(Path(args[0]), stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
