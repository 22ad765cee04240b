"""Small file helpers shared by every writer: atomic write-then-replace, JSON that understands NumPy."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str = "") -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends normally,
    deleted when it raises, so ``path`` is never half-written (a kill -9 leaves at most a stray ``.tmp``).

    The name is unique per process and thread (concurrent writers of one file are safe: the last rename
    wins); ``suffix`` ends it, for writers that look at the extension.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{threading.get_ident()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def to_jsonable(o: Any) -> Any:
    """``json.dumps(default=...)`` hook: NumPy scalars and arrays, paths; anything else as its ``str``."""
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """``data`` as indented UTF-8 JSON, written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=to_jsonable) + "\n")
