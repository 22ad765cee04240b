"""The studio's settings (one place for every default; importing this module imports no web framework)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import ParameterError

DEFAULT_PORT = 8100


def default_data_dir() -> Path:
    """``$IMCLASS_STUDIO_DIR``, else ``~/imclass-studio`` (a folder a person finds and backs up)."""
    return Path(os.environ.get("IMCLASS_STUDIO_DIR") or Path.home() / "imclass-studio")


@dataclass(frozen=True)
class StudioSettings:
    """- ``data_dir``: the database, stored uploads, thumbnails and runs;
    - ``api_key``: when set, every request needs it (``Authorization: Bearer``, ``X-API-Key``, or the cookie a
      browser gets by logging in with it);
    - ``allow_dirs``: when set, imports of folders of the machine are limited to these roots (an exposed studio
      sets them; a local one reads any folder its user can);
    - ``max_request_mb`` / ``max_files``: upload limits per request (413 beyond);
    - ``retrain_every``: new labels between background retrains of the suggestion probe;
    - ``min_per_class``: labels each class needs before the probe's suggestions replace the ImageNet hints;
    - ``worker``: ``process`` (background work in a worker process: the default), ``thread`` (tests) or ``none``.
    """

    data_dir: Path = dataclasses.field(default_factory=default_data_dir)
    api_key: str | None = None
    allow_dirs: tuple[Path, ...] | None = None
    max_request_mb: float = 512.0
    max_files: int = 2000
    retrain_every: int = 24
    min_per_class: int = 3
    worker: str = "process"

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        checks = [
            ("api_key", self.api_key is None or len(self.api_key) >= 8, "must be at least 8 characters"),
            ("max_request_mb", self.max_request_mb > 0, "must be > 0"),
            ("max_files", self.max_files >= 1, "must be >= 1"),
            ("retrain_every", self.retrain_every >= 1, "must be >= 1"),
            ("min_per_class", self.min_per_class >= 1, "must be >= 1"),
            ("worker", self.worker in ("process", "thread", "none"), "must be process, thread or none"),
        ]
        for name, ok, problem in checks:
            if not ok:
                raise ParameterError(name, problem)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "studio.sqlite3"

    def replace(self, **changes) -> StudioSettings:
        return dataclasses.replace(self, **changes)
