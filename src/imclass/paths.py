"""Where imclass keeps its caches (ONNX exports, embeddings, scan facts)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$IMCLASS_CACHE_DIR``, else ``$XDG_CACHE_HOME/imclass``, else ``~/.cache/imclass``."""
    if os.environ.get("IMCLASS_CACHE_DIR"):
        return Path(os.environ["IMCLASS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "imclass"
