"""``imclass studio``: the local web studio (a thin face over :func:`imclass.studio.run_studio`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..studio.settings import StudioSettings
from .options import EXIT_OK, EXIT_USAGE, command


def register(app: typer.Typer) -> None:
    command(app, example="imclass studio --data-dir ~/imclass-studio   (then open http://127.0.0.1:8100)")(studio)


def studio(
    data_dir: Annotated[Optional[Path], typer.Option(
        "--data-dir", help="Folder for the studio's database, uploads and runs (default: ~/imclass-studio or "
                           "$IMCLASS_STUDIO_DIR).")] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to bind (loopback by default; any other address "
                                                      "requires a key, generated and printed when not given).")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535, help="0: a free port (printed).")] = 8100,
    api_key: Annotated[Optional[str], typer.Option("--api-key", envvar="IMCLASS_API_KEY",
                                                   help="Require this key (browsers log in once).")] = None,
    allow_dir: Annotated[Optional[list[Path]], typer.Option(
        "--allow-dir", help="Folders of this machine the studio may import from (repeat; required to import "
                            "folders when the studio is exposed beyond this machine).")] = None,
    retrain_every: Annotated[int, typer.Option(
        "--retrain-every", help="Label changes between background retrains of the suggestion model.")]
    = StudioSettings.retrain_every,
    min_per_class: Annotated[int, typer.Option(
        "--min-per-class", help="Labels each class needs before the project's own model suggests (until then: "
                                "the ImageNet model's hints).")] = StudioSettings.min_per_class,
    log_level: Annotated[str, typer.Option("--log-level", help="critical | error | warning | info | debug")] = "info",
) -> int:
    """Open the web studio: projects, imports, labelling with hotkeys and the model's suggestions, training and
    review. Everything stays on this machine (no CDN, no account); the pages use the JSON API at /api/v1 (/docs)."""
    from ..studio.server import run_studio
    from ..studio.settings import default_data_dir

    settings = StudioSettings(data_dir=data_dir or default_data_dir(), api_key=api_key or None,
                              allow_dirs=tuple(allow_dir) if allow_dir else None, retrain_every=retrain_every,
                              min_per_class=min_per_class)
    return EXIT_OK if run_studio(settings, host=host, port=port, log_level=log_level) else EXIT_USAGE
