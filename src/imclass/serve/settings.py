"""The server's settings and their defaults, in one place (the CLI, :func:`create_app`, the batcher and
:func:`run_server` all read them from here). Importing this module does not import FastAPI."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import ParameterError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass(frozen=True)
class ServeSettings:
    """How one server process answers requests.

    - ``max_batch`` / ``max_wait_ms``: micro-batching (most images per model call; how long the first image of
      a batch waits for others);
    - ``max_body_mb``: request body limit (413); ``max_files``: images per request (413);
    - ``api_key``: when set, ``/v1/*`` needs ``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` (401);
    - ``decode_workers``: decode threads (default: as for ``Classifier.predict``); ``max_pending``: images in
      progress at once before new requests get 503 (default ``max(4 * max_batch, 2 * max_files, 256)``);
    - ``default_top_k``: classes per image when a request does not say.
    """

    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_body_mb: float = 20.0
    max_files: int = 64
    api_key: str | None = None
    decode_workers: int | None = None
    max_pending: int | None = None
    default_top_k: int = 5

    def __post_init__(self) -> None:
        checks = [
            ("max_batch", self.max_batch >= 1, "must be >= 1"),
            ("max_wait_ms", self.max_wait_ms >= 0, "must be >= 0"),
            ("max_body_mb", self.max_body_mb > 0, "must be > 0"),
            ("max_files", self.max_files >= 1, "must be >= 1"),
            ("api_key", self.api_key is None or bool(self.api_key), "must be a non-empty string or None"),
            ("decode_workers", self.decode_workers is None or self.decode_workers >= 1, "must be >= 1"),
            ("max_pending", self.max_pending is None or self.max_pending >= 1, "must be >= 1"),
            ("default_top_k", self.default_top_k >= 1, "must be >= 1"),
        ]
        for name, ok, problem in checks:
            if not ok:
                raise ParameterError(name, problem)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def pending_limit(self) -> int:
        """Images admitted at once (never fewer than one full request)."""
        limit = self.max_pending if self.max_pending is not None else max(4 * self.max_batch, 2 * self.max_files, 256)
        return max(limit, self.max_files)

    def replace(self, **changes) -> ServeSettings:
        return dataclasses.replace(self, **changes)


DEFAULTS = ServeSettings()
