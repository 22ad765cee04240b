"""Serve a classifier over HTTP: ``imclass serve`` runs :func:`run_server`; :func:`create_app` is for embedding.

>>> import imclass
>>> from imclass.serve import ServeSettings, create_app
>>> app = create_app(imclass.load("default"), max_batch=32, max_wait_ms=5)   # a FastAPI app
>>> app = create_app(imclass.load("default"), ServeSettings(max_files=8, api_key="KEY"))  # the same, as settings
>>> # uvicorn.run(app, host="127.0.0.1", port=8000)  or  parent_app.mount("/classify", app)

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart). Requests are micro-batched into the
same decode -> logits -> probabilities -> decide path as ``Classifier.predict`` and the CLI, with one
inference thread per stream of the classifier: ``imclass.load(..., streams=1)`` gives one model call at a
time with every thread (lowest latency); the default is 2 streams for ONNX Runtime on CPU, else 1.

The pieces: :mod:`.settings` (every default), :mod:`.app` (the routes), :mod:`.schemas` (the answers),
:mod:`.uploads` (a request's images), :mod:`.auth`, :mod:`.middleware`, :mod:`.batcher`, :mod:`.server`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["DEFAULTS", "DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_FILES", "STATUS_CODES", "MicroBatcher",
           "ServeSettings", "create_app", "run_server"]

_LAZY = {
    "create_app": ".app",
    "DEFAULT_MAX_BODY_BYTES": ".app",
    "DEFAULT_MAX_FILES": ".app",
    "STATUS_CODES": ".schemas",
    "MicroBatcher": ".batcher",
    "DEFAULTS": ".settings",
    "ServeSettings": ".settings",
    "run_server": ".server",
}
_NEED_SERVER_DEPS = (".app", ".schemas")  # the others import without FastAPI (run_server checks when called)

if TYPE_CHECKING:
    from .app import DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_FILES, create_app
    from .batcher import MicroBatcher
    from .schemas import STATUS_CODES
    from .server import run_server
    from .settings import DEFAULTS, ServeSettings


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        if _LAZY[name] in _NEED_SERVER_DEPS:
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
