"""Run one whole process and measure it: shared by the benchmarks (``predict.py``, ``audit.py``, ``train.py``)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Measured:
    wall: float  # seconds from spawn to exit
    rss_mib: float  # this child's own peak RSS
    code: int  # exit code
    first: tuple[float, int] | None = None  # (seconds after spawn, rows) when ``watch`` first had rows


def imclass_cmd() -> list[str]:
    """The ``imclass`` command of this interpreter's environment (``python -m imclass`` without its script)."""
    exe = Path(sys.executable).parent / "imclass"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "imclass"]


def measure(cmd: list[str], log: Path, *, env: dict[str, str] | None = None, timeout: float = 3600,
            watch: Path | None = None, ok: tuple[int, ...] = (0,), stdout: Path | None = None) -> Measured:
    """Run ``cmd`` to completion with stdout+stderr in ``log`` (stdout in ``stdout`` when given); exit the
    benchmark when its exit code is not in ``ok``.

    ``os.wait4`` reports the rusage of exactly the process it reaps (plus descendants it waited for), unlike
    ``getrusage(RUSAGE_CHILDREN)``, whose ``ru_maxrss`` is the max over every child so far. ``watch``: an
    output CSV the child appends to batch by batch (it must not exist beforehand).
    """
    first = None
    with open(log, "wb") as f, open(stdout or os.devnull, "wb") as out:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=out if stdout else f, stderr=f if stdout else subprocess.STDOUT,
                             env={**os.environ, **(env or {})})
        while True:
            pid, status, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            if watch is not None and first is None:
                first = _rows_so_far(watch, t0)
            if time.perf_counter() - t0 > timeout:
                p.kill()
                pid, status, ru = os.wait4(p.pid, 0)
                break
            time.sleep(0.02)
        wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in ok:
        tail = log.read_text(errors="replace")[-2000:]
        sys.exit(f"{Path(sys.argv[0]).name}: {shlex.join(cmd)} exited with {code}:\n{tail}")
    return Measured(wall, ru.ru_maxrss / 1024, code, first)


def _rows_so_far(path: Path, t0: float) -> tuple[float, int] | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    rows = data.count(b"\n") - 1  # minus the header
    return (time.perf_counter() - t0, rows) if rows > 0 else None
