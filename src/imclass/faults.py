"""Deterministic crash points for the tests that check "nothing is lost after kill -9".

A test sets ``IMCLASS_KILL_AT=<point>:<n>`` in a child process's environment; the n-th time the code passes
:func:`checkpoint` with that point name, the process sends itself SIGKILL (exactly what ``kill -9`` does: no
cleanup, no flush). Without the variable a call costs one dictionary lookup. Points: ``label.batch`` (after a
labelling batch is written), ``finetune.step`` (after an optimiser step), ``finetune.epoch`` (after an epoch's
checkpoint is saved), ``ray.batch`` (after a Ray actor labelled or embedded one batch).

For runs of several processes: ``<point>@<rank>:<n>`` fires only in the process whose ``RANK`` environment
variable (set by ``torchrun`` and by ``imclass train --devices``) is ``<rank>``; with ``IMCLASS_KILL_ONCE=<file>``
only the first process to reach the point dies (it creates ``<file>`` first), so a restarted worker lives on.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "IMCLASS_KILL_AT"
ONCE_ENV = "IMCLASS_KILL_ONCE"
_counts: dict[str, int] = {}
_lock = threading.Lock()


def checkpoint(point: str) -> None:
    """Count a pass through ``point``; die by SIGKILL when ``$IMCLASS_KILL_AT`` names this pass."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, nth = spec.rpartition(":")
    name, _, rank = name.partition("@")
    if name != point or (rank and os.environ.get("RANK", "0") != rank):
        return
    with _lock:
        _counts[point] = _counts.get(point, 0) + 1
        hit = _counts[point] == int(nth)
    if hit and _first_to_die():
        os.kill(os.getpid(), signal.SIGKILL)


def _first_to_die() -> bool:
    marker = os.environ.get(ONCE_ENV)
    if not marker:
        return True
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    return True
