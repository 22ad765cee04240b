"""Run the studio under uvicorn: :func:`run_studio` is what ``imclass studio`` calls."""

from __future__ import annotations

import logging
import secrets
import signal
import threading
from pathlib import Path

from ..errors import ParameterError
from ..network import is_loopback
from .settings import DEFAULT_PORT, StudioSettings

log = logging.getLogger("imclass.studio")


def run_studio(settings: StudioSettings, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
               log_level: str = "info", on_ready=None) -> bool:
    """Serve the studio until interrupted; True after a clean shutdown.

    On any address but loopback a key is required: when ``settings.api_key`` is None one is generated and
    printed, and folder imports are limited to ``settings.allow_dirs`` (none when not given). ``on_ready(url,
    key)`` is called once the server listens (with the port the OS chose for ``port=0``).
    """
    from .app import create_app, require_deps

    require_deps()
    if not 0 <= port <= 65535:
        raise ParameterError("port", "must be between 0 and 65535")
    if not is_loopback(host):
        if settings.api_key is None:
            settings = settings.replace(api_key=secrets.token_urlsafe(24))
            print(f"imclass studio on {host}: key {settings.api_key} (log in with it; scripts send "
                  "'Authorization: Bearer KEY')", flush=True)
        if settings.allow_dirs is None:
            settings = settings.replace(allow_dirs=())
    import uvicorn

    app = create_app(settings)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level.lower(),
                                           access_log=False, server_header=False, timeout_graceful_shutdown=10))
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_stop) if main_thread else None

    def announce() -> None:
        import time

        while not server.should_exit:
            if server.started:
                ports = [sock.getsockname()[1] for srv in getattr(server, "servers", []) for sock in srv.sockets]
                shown = f"[{host}]" if ":" in host else host
                url = f"http://{shown}:{ports[0] if ports else port}"
                print(f"imclass studio: {url}  (data: {Path(settings.data_dir).resolve()})", flush=True)
                if on_ready is not None:
                    on_ready(url, settings.api_key)
                return
            time.sleep(0.01)

    threading.Thread(target=announce, daemon=True, name="imclass-studio-announce").start()
    try:
        server.run()
    except (KeyboardInterrupt, _Stop):
        pass
    except SystemExit as e:
        return e.code in (0, None)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    return bool(server.started)


class _Stop(Exception):
    pass


def _raise_stop(signum, frame) -> None:
    raise _Stop
