"""Run the HTTP app under uvicorn: :func:`run_server` is what ``imclass serve`` calls.

Shutdown is graceful: on SIGTERM/SIGINT uvicorn stops accepting connections and waits (up to
``graceful_timeout`` seconds) for in-flight requests; then the app's lifespan drains the batcher.
The first log line after start-up says where it listens (``--port 0`` picks a free port and reports it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import logging.config
import os
import signal
import threading
from datetime import UTC, datetime
from typing import Any

from ..errors import ParameterError
from ..network import is_loopback
from .settings import DEFAULTS, LOG_LEVELS, ServeSettings

ENV_API_KEY = "IMCLASS_API_KEY"
_ENV_OPTIONS = "IMCLASS_SERVE_OPTIONS"  # parent -> uvicorn worker processes (processes > 1)

log = logging.getLogger("imclass.serve")


def run_server(
    model: str = "default",
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    processes: int = 1,
    device: str = "auto",
    threads: int | None = None,
    streams: int | None = None,
    settings: ServeSettings = DEFAULTS,
    log_level: str = "info",
    graceful_timeout: float = 30.0,
) -> bool:
    """Serve ``model`` over HTTP until interrupted. Returns True after a graceful shutdown, False when the
    server could not start (port taken, model failed to load in a worker).

    ``processes``: server processes (as uvicorn's/gunicorn's workers); each loads its own copy of the model
    and gets ``cores / processes`` inference threads; one is usually best, the micro-batcher already keeps
    every core busy. ``streams``: model calls at once, each with ``threads // streams`` threads (default: 2
    for ONNX Runtime on CPU, else 1). ``settings.api_key`` falls back to ``$IMCLASS_API_KEY``. Invalid
    arguments raise :class:`~imclass.errors.ParameterError`.
    """
    from . import _require_server_deps

    _require_server_deps()
    if settings.api_key is None and os.environ.get(ENV_API_KEY):
        settings = settings.replace(api_key=os.environ[ENV_API_KEY])
    _validate(port=port, processes=processes, threads=threads, streams=streams, log_level=log_level,
              graceful_timeout=graceful_timeout)
    cfg = log_config(log_level)
    logging.config.dictConfig(cfg)
    _quiet_pillow_bomb_warning()
    if settings.api_key is None and not is_loopback(host):
        log.warning("listening on %s without an API key: anyone who can reach this address can use the model "
                    "(pass --api-key or set %s)", host, ENV_API_KEY)

    import uvicorn

    options = {"model": model, "device": device, "threads": threads, "streams": streams,
               "settings": dataclasses.asdict(settings)}
    common: dict[str, Any] = {
        "host": host, "port": port, "log_config": cfg, "log_level": log_level.lower(), "access_log": False,
        "timeout_graceful_shutdown": graceful_timeout, "server_header": False,
    }
    if processes > 1:
        from ..classifier import Classifier
        from ..engine.backends import default_threads

        Classifier.load(model, device="cpu")  # fail fast (exit 1) instead of N crash-looping workers
        options["threads"] = threads or max(1, default_threads() // processes)
        os.environ[_ENV_OPTIONS] = json.dumps(options)
        log.info("starting %d server processes for %s on http://%s:%d", processes, model, _fmt_host(host), port)
        try:
            uvicorn.run("imclass.serve.server:app_from_env", factory=True, workers=processes, **common)
        except KeyboardInterrupt:
            pass
        except SystemExit as e:
            return e.code in (0, None)
        return True

    app = _build_app(options)
    server = uvicorn.Server(uvicorn.Config(app, **common))
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; make that a clean exit.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    watcher = threading.Thread(target=_announce, args=(server, host), daemon=True, name="imclass-announce")
    watcher.start()
    try:
        server.run()
    except (KeyboardInterrupt, _Terminated):
        pass
    except SystemExit as e:  # uvicorn exits 1 when it cannot bind or the app fails to start
        return e.code in (0, None)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return bool(server.started)


def _announce(server, host: str) -> None:
    """Log the address the server really listens on (the port the OS chose for ``--port 0``)."""
    import time

    while not server.should_exit:
        if server.started:
            ports = [sock.getsockname()[1] for srv in getattr(server, "servers", []) for sock in srv.sockets]
            port = ports[0] if ports else server.config.port
            log.info("listening on http://%s:%d (docs: /docs, readiness: /readyz)", _fmt_host(host), port)
            return
        time.sleep(0.01)


def app_from_env():
    """uvicorn factory for worker processes (``workers > 1``): options come from the parent's environment."""
    return _build_app(json.loads(os.environ[_ENV_OPTIONS]))


def _build_app(options: dict[str, Any]):
    from ..classifier import Classifier
    from .app import create_app

    _quiet_pillow_bomb_warning()  # again: worker processes (processes > 1) start from scratch
    log.info("loading model %s (device=%s)", options["model"], options["device"])
    clf = Classifier.load(options["model"], device=options["device"], threads=options["threads"],
                          streams=options.get("streams"))
    return create_app(clf, settings=ServeSettings(**options["settings"]))


def _quiet_pillow_bomb_warning() -> None:
    """Oversized images become 422 answers with the loader's own reason; Pillow's warning would only add noise."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def _validate(*, port: int, processes: int, threads: int | None, streams: int | None, log_level: str,
              graceful_timeout: float) -> None:
    checks = [
        ("port", 0 <= port <= 65535, "must be between 0 and 65535"),
        ("processes", processes >= 1, "must be >= 1"),
        ("threads", threads is None or threads >= 1, "must be >= 1"),
        ("streams", streams is None or streams >= 1, "must be >= 1"),
        ("log_level", log_level.lower() in LOG_LEVELS, f"must be one of {', '.join(LOG_LEVELS)}"),
        ("graceful_timeout", graceful_timeout >= 0, "must be >= 0"),
    ]
    for name, ok, problem in checks:
        if not ok:
            raise ParameterError(name, problem)


def _fmt_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# ---- logging: one JSON object per line on stderr --------------------------------------------------------

class JsonFormatter(logging.Formatter):
    """Access-log records are already JSON objects; other records become ``{ts, level, logger, msg}``."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.name == "imclass.serve.access" and msg.startswith("{"):
            return msg
        d: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        if record.exc_info:
            d["exc"] = self.formatException(record.exc_info)
        return json.dumps(d, ensure_ascii=False)


def log_config(level: str = "info") -> dict[str, Any]:
    """``logging.config`` dict for the server (also handed to uvicorn, so worker processes use it)."""
    level = level.upper()
    handler = {"handlers": ["stderr"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "imclass.serve.server.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": dict(handler),
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "imclass.serve": dict(handler),
            "imclass.serve.access": dict(handler),
        },
        # everything else that logs (python-multipart's parser warnings, ...) also as JSON lines
        "root": {"handlers": ["stderr"], "level": "WARNING"},
    }
