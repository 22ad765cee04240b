"""Everything a request handler needs: settings, the database, the file store, and the background runners."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .db import Database
from .settings import StudioSettings
from .store import Store


@dataclass
class Studio:
    settings: StudioSettings
    db: Database
    store: Store
    imports: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="imclass-studio-import"))
    running: dict[int, Future] = field(default_factory=dict)  # import id -> its future
    stop: threading.Event = field(default_factory=threading.Event)
    commit_lock: threading.Lock = field(default_factory=threading.Lock)
    worker: Any = None  # the suggestion worker (process or thread), see worker.py
    runner: Any = None  # the training-run process (or thread), see runner.py
    models: dict[int, Any] = field(default_factory=dict)  # run id -> loaded Classifier ("Try it")

    @classmethod
    def open(cls, settings: StudioSettings) -> Studio:
        from . import runs, tasks
        from .imports import interrupt_running

        settings.data_dir.mkdir(parents=True, exist_ok=True)
        db = Database(settings.db_path)
        db.migrate()
        interrupt_running(db)
        runs.interrupt_running(db)
        tasks.interrupt_running(db)
        store = Store(settings.data_dir / "files")
        for leftover in (store.root / "tmp").iterdir():  # parts of uploads cut short by a crash
            leftover.unlink(missing_ok=True)
        return cls(settings, db, store)

    def close(self) -> None:
        self.stop.set()
        self.imports.shutdown(wait=True, cancel_futures=True)
        for background in (self.worker, self.runner):
            if background is not None:
                background.stop()
        self.db.close()
