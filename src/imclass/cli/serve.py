"""``imclass serve``: the HTTP server (a thin face over :func:`imclass.serve.run_server`)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ..serve.settings import DEFAULTS
from .options import EXIT_OK, EXIT_USAGE, Device, ModelOpt, command, deprecated, prefer


def register(app: typer.Typer) -> None:
    command(app, example="imclass serve --model runs/flowers --port 8000 --api-key $KEY")(serve)


def serve(
    model: ModelOpt = None,
    host: Annotated[str, typer.Option("--host", help="Interface to bind (loopback by default; any other "
                                                      "address wants --api-key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="0: a free port (logged).")] = 8000,
    processes: Annotated[Optional[int], typer.Option(
        "--processes", min=1, help="Server processes, each with its own copy of the model (default 1).")] = None,
    decode_workers: Annotated[Optional[int], typer.Option("--decode-workers", min=1, help="Decode threads.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="Inference threads.")] = None,
    streams: Annotated[Optional[int], typer.Option(
        "--streams", min=1, help="Model calls at once (default: 2 for ONNX Runtime on CPU, else 1).")] = None,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, help="Images per model call.")] = DEFAULTS.max_batch,
    max_wait_ms: Annotated[float, typer.Option("--max-wait-ms", min=0, help="Wait to fill a batch.")] = (
        DEFAULTS.max_wait_ms),
    max_body_mb: Annotated[float, typer.Option("--max-body-mb", min=0.001, help="Request size limit.")] = (
        DEFAULTS.max_body_mb),
    max_files: Annotated[int, typer.Option("--max-files", min=1, help="Images per request.")] = DEFAULTS.max_files,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="IMCLASS_API_KEY",
                                                   help="Require this key (X-API-Key or Bearer).")] = None,
    device: Device = "auto",
    log_level: Annotated[str, typer.Option("--log-level", help="critical | error | warning | info | debug")] = "info",
    graceful_timeout: Annotated[float, typer.Option(
        "--graceful-timeout", min=0, help="Seconds to finish in-flight requests on SIGTERM.")] = 30.0,
    model_arg: Annotated[Optional[str], typer.Argument(hidden=True, show_default=False)] = None,
    workers_old: Annotated[Optional[int], typer.Option("--workers", "-w", hidden=True)] = None,
) -> int:
    """Serve a model over HTTP: POST /v1/predict, GET /v1/model, /healthz, /readyz, /docs.

    Requests from many clients are micro-batched into the same path as `imclass predict`. SIGTERM finishes
    the requests in flight, then exits 0.
    """
    from ..serve.server import run_server
    from ..serve.settings import ServeSettings

    if model_arg is not None:
        model = prefer(model, model_arg, "the positional MODEL", "--model MODEL")
    if workers_old is not None:
        if processes is not None:
            raise typer.BadParameter("give --processes only (--workers is its deprecated old name)")
        deprecated("--workers (server processes)", "--processes; --workers will mean decode threads")
        processes = workers_old
    settings = ServeSettings(max_batch=max_batch, max_wait_ms=max_wait_ms, max_body_mb=max_body_mb,
                             max_files=max_files, api_key=api_key or None, decode_workers=decode_workers)
    ok = run_server(model or "default", host=host, port=port, processes=processes or 1, device=device,
                    threads=threads, streams=streams, settings=settings, log_level=log_level,
                    graceful_timeout=graceful_timeout)
    return EXIT_OK if ok else EXIT_USAGE
