"""Model assistance for labelling: ImageNet hints, then suggestions from a probe that retrains itself.

``step(db, pid, settings, stop)`` does the next piece of due work for a project (called by the worker).
"""

from __future__ import annotations

import threading

from .db import Database


def step(db: Database, pid: int, settings, stop: threading.Event) -> bool:
    """The next piece of background work for project ``pid``; True when there was some."""
    return False
