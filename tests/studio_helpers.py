"""Helpers of the studio's browser tests: a live studio in a thread, real photo folders, screenshots."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path

STARTUP_S = 60
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 800}


class LiveStudio:
    """uvicorn serving ``create_app(settings)`` in a thread on 127.0.0.1, on a port the OS picks."""

    def __init__(self, settings):
        import uvicorn

        from imclass.studio import create_app

        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_config=None, log_level="warning",
                                access_log=False, lifespan="on", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True, name="live-studio")
        self.url = ""

    def __enter__(self) -> LiveStudio:
        self.thread.start()
        deadline = time.monotonic() + STARTUP_S
        while not self.server.started:  # uvicorn has no event for "listening": a readiness wait
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the studio did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def distinct_photos(folder: Path, n: int, skip: set[str] | None = None) -> list[Path]:
    """The first ``n`` files of a class folder (by name) whose content is not in ``skip`` (sha256s, updated):
    the real sets hold a few exact copies, which an import would count as duplicates."""
    skip = skip if skip is not None else set()
    out = []
    for p in sorted(folder.iterdir()):
        sha = hashlib.sha256(p.read_bytes()).hexdigest()
        if sha in skip:
            continue
        skip.add(sha)
        out.append(p)
        if len(out) == n:
            break
    return out


def copy_as(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return dest


class Screens:
    """Screenshots of the pages, in the test's tmp folder and, when ``IMCLASS_SCREENSHOTS`` is set, copied there."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.extra = Path(os.environ["IMCLASS_SCREENSHOTS"]) if os.environ.get("IMCLASS_SCREENSHOTS") else None
        self.taken: list[Path] = []

    def __call__(self, page, name: str, full_page: bool = False) -> Path:
        path = self.folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=full_page)
        if self.extra is not None:
            self.extra.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, self.extra / path.name)
        self.taken.append(path)
        return path


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)
