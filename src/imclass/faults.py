"""Deterministic crash points for the tests that check "nothing is lost after kill -9".

A test sets ``IMCLASS_KILL_AT=<point>:<n>`` in a child process's environment; the n-th time the code passes
:func:`checkpoint` with that point name, the process sends itself SIGKILL (exactly what ``kill -9`` does: no
cleanup, no flush). Without the variable a call costs one dictionary lookup. Points: ``label.batch`` (after a
labelling batch is written), ``finetune.step`` (after an optimiser step), ``finetune.epoch`` (after an epoch's
checkpoint is saved).
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "IMCLASS_KILL_AT"
_counts: dict[str, int] = {}
_lock = threading.Lock()


def checkpoint(point: str) -> None:
    """Count a pass through ``point``; die by SIGKILL when ``$IMCLASS_KILL_AT`` names this pass."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, nth = spec.rpartition(":")
    if name != point:
        return
    with _lock:
        _counts[point] = _counts.get(point, 0) + 1
        hit = _counts[point] == int(nth)
    if hit:
        os.kill(os.getpid(), signal.SIGKILL)
