"""``imclass serve``: load a classifier and run the HTTP app under uvicorn.

:func:`serve_command` is what the Typer command calls. ``python -m imclass.serve.cli MODEL ...`` runs
the same thing without the main CLI (handy for tests and process managers).

Shutdown is graceful: on SIGTERM/SIGINT uvicorn stops accepting connections and waits (up to
``graceful_timeout`` seconds) for in-flight requests; then the app's lifespan drains the batcher.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import logging.config
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from typing import Any

from ..errors import ImclassError

EXIT_OK, EXIT_USAGE = 0, 1
ENV_API_KEY = "IMCLASS_API_KEY"
_ENV_OPTIONS = "IMCLASS_SERVE_OPTIONS"  # parent -> uvicorn worker processes (workers > 1)

log = logging.getLogger("imclass.serve")


def serve_command(
    model: str = "default",
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    max_batch: int = 32,
    max_wait_ms: int = 5,
    api_key: str | None = None,
    device: str = "auto",
    *,
    max_body_mb: float = 20.0,
    max_files: int = 64,
    threads: int | None = None,
    decode_workers: int | None = None,
    log_level: str = "info",
    graceful_timeout: float = 30.0,
    streams: int | None = None,
) -> int:
    """Serve MODEL over HTTP until interrupted; returns the exit code (0 after a graceful shutdown).

    ``workers`` is the number of server *processes* (as for uvicorn/gunicorn); each loads its own copy
    of the model and gets ``cores / workers`` inference threads. One process is usually best: the
    micro-batcher already keeps every core busy. ``streams``: model calls at once, each with
    ``threads // streams`` threads (default: 2 for ONNX Runtime on CPU, else 1). ``api_key`` falls back
    to ``$IMCLASS_API_KEY``. Configuration errors raise :class:`ImclassError` (exit code 1 in the CLI).
    """
    from . import _require_server_deps

    _require_server_deps()
    api_key = api_key or os.environ.get(ENV_API_KEY) or None
    _validate(port=port, workers=workers, max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_mb=max_body_mb,
              max_files=max_files, threads=threads, decode_workers=decode_workers, log_level=log_level,
              graceful_timeout=graceful_timeout, streams=streams)
    cfg = log_config(log_level)
    logging.config.dictConfig(cfg)
    _quiet_pillow_bomb_warning()
    if api_key is None and not _is_loopback(host):
        log.warning("listening on %s without an API key: anyone who can reach this address can use the model "
                    "(pass --api-key or set %s)", host, ENV_API_KEY)

    import uvicorn

    options = {
        "model": model, "device": device, "threads": threads, "max_batch": max_batch, "max_wait_ms": max_wait_ms,
        "max_body_bytes": int(max_body_mb * 1024 * 1024), "max_files": max_files, "api_key": api_key,
        "decode_workers": decode_workers, "streams": streams,
    }
    common: dict[str, Any] = {
        "host": host, "port": port, "log_config": cfg, "log_level": log_level.lower(), "access_log": False,
        "timeout_graceful_shutdown": graceful_timeout, "server_header": False,
    }
    if workers > 1:
        from ..classifier import Classifier
        from ..engine.backends import default_threads

        Classifier.load(model, device="cpu")  # fail fast (exit 1) instead of N crash-looping workers
        options["threads"] = threads or max(1, default_threads() // workers)
        os.environ[_ENV_OPTIONS] = json.dumps(options)
        log.info("starting %d worker processes for %s on http://%s:%d", workers, model, _fmt_host(host), port)
        try:
            uvicorn.run("imclass.serve.cli:app_from_env", factory=True, workers=workers, **common)
        except KeyboardInterrupt:
            pass
        except SystemExit as e:
            return EXIT_OK if e.code in (0, None) else EXIT_USAGE
        return EXIT_OK

    app = _build_app(options)
    server = uvicorn.Server(uvicorn.Config(app, **common))
    log.info("starting server on http://%s:%d (docs: /docs, readiness: /readyz)", _fmt_host(host), port)
    # uvicorn re-raises the signal that stopped it once it has shut down gracefully; make that a clean exit.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
    try:
        server.run()
    except (KeyboardInterrupt, _Terminated):
        pass
    except SystemExit as e:  # uvicorn exits 1 when it cannot bind or the app fails to start
        return EXIT_OK if e.code in (0, None) else EXIT_USAGE
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return EXIT_OK if server.started else EXIT_USAGE


def app_from_env():
    """uvicorn factory for worker processes (``workers > 1``): options come from the parent's environment."""
    return _build_app(json.loads(os.environ[_ENV_OPTIONS]))


def _build_app(options: dict[str, Any]):
    from ..classifier import Classifier
    from .app import create_app

    _quiet_pillow_bomb_warning()  # again: worker processes (workers > 1) start from scratch
    log.info("loading model %s (device=%s)", options["model"], options["device"])
    clf = Classifier.load(options["model"], device=options["device"], threads=options["threads"],
                          streams=options.get("streams"))
    return create_app(clf, max_batch=options["max_batch"], max_wait_ms=options["max_wait_ms"],
                      max_body_bytes=options["max_body_bytes"], max_files=options["max_files"],
                      api_key=options["api_key"], decode_workers=options["decode_workers"])


def _quiet_pillow_bomb_warning() -> None:
    """Oversized images become 422 answers with the loader's own reason; Pillow's warning would only add noise."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class _Terminated(Exception):
    pass


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


def _validate(**kw: Any) -> None:
    checks = [
        (0 <= kw["port"] <= 65535, "--port must be between 0 and 65535"),
        (kw["workers"] >= 1, "--workers must be >= 1"),
        (kw["max_batch"] >= 1, "--max-batch must be >= 1"),
        (kw["max_wait_ms"] >= 0, "--max-wait-ms must be >= 0"),
        (kw["max_body_mb"] > 0, "--max-body-mb must be > 0"),
        (kw["max_files"] >= 1, "--max-files must be >= 1"),
        (kw["threads"] is None or kw["threads"] >= 1, "--threads must be >= 1"),
        (kw["decode_workers"] is None or kw["decode_workers"] >= 1, "--decode-workers must be >= 1"),
        (kw["streams"] is None or kw["streams"] >= 1, "--streams must be >= 1"),
        (kw["log_level"].lower() in ("critical", "error", "warning", "info", "debug"),
         "--log-level must be one of critical, error, warning, info, debug"),
        (kw["graceful_timeout"] >= 0, "--graceful-timeout must be >= 0"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ImclassError(msg)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


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
        "formatters": {"json": {"()": "imclass.serve.cli.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": dict(handler),
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "imclass.serve": dict(handler),
            "imclass.serve.access": dict(handler),
        },
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m imclass.serve.cli``: the same options as ``imclass serve``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m imclass.serve.cli", description="Serve an imclass model over HTTP.")
    p.add_argument("model", nargs="?", default="default")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=1, help="server processes")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=int, default=5)
    p.add_argument("--api-key", default=None, help=f"or set ${ENV_API_KEY}")
    p.add_argument("--device", default="auto")
    p.add_argument("--max-body-mb", type=float, default=20.0)
    p.add_argument("--max-files", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="inference threads")
    p.add_argument("--decode-workers", type=int, default=None, help="decode threads")
    p.add_argument("--streams", type=int, default=None, help="model calls at once (default: 2 for ONNX Runtime on CPU)")
    p.add_argument("--log-level", default="info")
    p.add_argument("--graceful-timeout", type=float, default=30.0)
    a = p.parse_args(argv)
    try:
        return serve_command(a.model, a.host, a.port, a.workers, a.max_batch, a.max_wait_ms, a.api_key, a.device,
                             max_body_mb=a.max_body_mb, max_files=a.max_files, threads=a.threads,
                             decode_workers=a.decode_workers, log_level=a.log_level,
                             graceful_timeout=a.graceful_timeout, streams=a.streams)
    except ImclassError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
