"""Serve a classifier over HTTP: ``imclass serve`` and :func:`create_app` for embedding.

>>> import imclass
>>> from imclass.serve import create_app
>>> app = create_app(imclass.load("default"), max_batch=32, max_wait_ms=5)   # a FastAPI app
>>> # uvicorn.run(app, host="127.0.0.1", port=8000)  or  parent_app.mount("/classify", app)

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart). Requests are micro-batched into the
same decode -> logits -> probabilities -> decide path as ``Classifier.predict`` and the CLI, with one
inference thread per stream of the classifier (``imclass.load(..., streams=1)``: one call at a time with
every thread).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_FILES", "STATUS_CODES", "MicroBatcher", "create_app",
           "serve_command"]

_LAZY = {
    "create_app": ".app",
    "STATUS_CODES": ".app",
    "DEFAULT_MAX_BODY_BYTES": ".app",
    "DEFAULT_MAX_FILES": ".app",
    "MicroBatcher": ".batcher",
    "serve_command": ".cli",
}

if TYPE_CHECKING:
    from .app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_FILES, STATUS_CODES, create_app
    from .batcher import MicroBatcher
    from .cli import serve_command


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        if _LAZY[name] == ".app":
            _require_server_deps()
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'imclass.serve' has no attribute {name!r}")


def _require_server_deps() -> None:
    """Fail with an install hint (an ImclassError, so the CLI exits 1) when the extra is missing."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        from ..errors import ImclassError

        names = ", ".join("python-multipart" if m == "multipart" else m for m in missing)
        raise ImclassError(f"serving needs {names}: pip install 'imclass[serve]'")
