"""Small file helpers shared by every writer: atomic replace, JSON that understands NumPy."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to a temporary file beside ``path``, then rename it over ``path`` (never half-written)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, out)
    return out


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
