"""Background processes of the studio and their pid files (no orphan outlives a killed studio)."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from pathlib import Path

log = logging.getLogger("imclass.studio")


def stop_orphan(pid_file: Path, module: str) -> None:
    """Kill the process ``pid_file`` names if it still runs ``module`` (a killed studio's leftover)."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        cmdline = []
    if module.encode() in b" ".join(cmdline):  # else gone, or the pid was reused by something else
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            log.warning("stopped %s (pid %d) left by an earlier studio", module, pid)
    with contextlib.suppress(OSError):
        pid_file.unlink()
