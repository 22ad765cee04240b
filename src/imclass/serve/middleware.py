"""Request ids and access logs: a pure ASGI middleware (no response buffering).

Every response carries ``X-Request-ID`` (the client's, when it is a sane token, else a new one); every
request gives one JSON line on the ``imclass.serve.access`` logger; an unhandled exception becomes a
JSON 500 that still carries the request id, and its traceback is logged with that id.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .schemas import ErrorResponse

access_log = logging.getLogger("imclass.serve.access")
log = logging.getLogger("imclass.serve")

_SCOPE_KEY = "imclass"
_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:+=/-]{1,128}$")


def request_id(conn: HTTPConnection) -> str:
    """This request's id ("" when the app runs without :class:`RequestLogMiddleware`)."""
    info = conn.scope.get(_SCOPE_KEY)
    return info["request_id"] if info else ""


def note_images(conn: HTTPConnection, n: int) -> None:
    """Record how many images the request carried (the access log's ``n_images``)."""
    info = conn.scope.get(_SCOPE_KEY)
    if info is not None:
        info["n_images"] = n


class RequestLogMiddleware:
    """Request ids (``X-Request-ID`` echoed or generated) and one JSON access-log line per request."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _REQUEST_ID_OK.match(given) else uuid.uuid4().hex
        info: dict[str, Any] = {"request_id": rid, "n_images": 0}
        scope[_SCOPE_KEY] = info
        status = 0
        t0 = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            log.exception("unhandled error in request %s %s %s", rid, scope.get("method"), scope.get("path"))
            if status:  # the response had started: nothing more can be sent
                raise
            body = ErrorResponse(detail="internal server error", request_id=rid)
            await JSONResponse(body.model_dump(), status_code=500)(scope, receive, send_with_id)
        finally:
            if access_log.isEnabledFor(logging.INFO):
                client = scope.get("client")
                access_log.info(json.dumps({
                    "ts": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    "request_id": rid,
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status or 500,
                    "duration_ms": round((time.perf_counter() - t0) * 1000, 2),
                    "n_images": info["n_images"],
                    "client": client[0] if client else None,
                }))


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v.decode("latin-1")
    return None
