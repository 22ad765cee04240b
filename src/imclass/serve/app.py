"""The HTTP face: a FastAPI app over one :class:`~imclass.classifier.Classifier` and a micro-batcher.

Endpoints: ``POST /v1/predict``, ``GET /v1/model``, ``GET /healthz``, ``GET /readyz``, ``/docs``.
See :func:`create_app` for the options and ``STATUS_CODES`` for how failures map to HTTP statuses.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Optional

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from .batcher import MicroBatcher, Overloaded, ShuttingDown

if TYPE_CHECKING:
    from ..classifier import Classifier
    from ..prediction import Prediction

DEFAULT_MAX_BODY_BYTES = 20 * 1024 * 1024
DEFAULT_MAX_FILES = 64
FILE_FIELDS = ("files", "file")
RAW_TYPES = ("application/octet-stream",)  # besides image/*

access_log = logging.getLogger("imclass.serve.access")
log = logging.getLogger("imclass.serve")

#: How each failure is answered (documented in the OpenAPI description too).
STATUS_CODES: dict[int, str] = {
    200: "at least one image was classified (the others carry `error` and their own `status`)",
    400: "malformed multipart body or Content-Length",
    401: "API key required and missing or wrong (`X-API-Key` or `Authorization: Bearer`)",
    413: "request body over the size limit, or more files than allowed in one request",
    415: "not an image / unsupported format, or a Content-Type that is neither multipart/form-data, "
         "image/* nor application/octet-stream",
    422: "empty request or empty file, corrupt or truncated image, image over the pixel limit "
         "(decompression-bomb guard), bad `top_k`, or a file under an unknown form field. When images were "
         "read (415 too), the body is the usual response with each image's `error` and `status`",
    503: "overloaded (too many images in progress) or shutting down; retry after `Retry-After` seconds. "
         "Requests that arrive while the model warms up wait instead",
}


# ---- response models (for /docs; responses are built as plain dicts) ----------------------------------

class TopK(BaseModel):
    label: str
    score: float


class ImageResult(BaseModel):
    filename: Optional[str] = Field(None, description="the uploaded file's name (null for a raw body)")
    label: Optional[str] = Field(None, description="top class, `unknown`, or `;`-joined labels (multi-label)")
    score: Optional[float] = None
    topk: list[TopK] = []
    labels: Optional[list[str]] = Field(None, description="multi-label models: every label above its threshold")
    error: Optional[str] = Field(None, description="why this image could not be classified")
    status: int = Field(200, description="HTTP status this image alone would get")


class PredictResponse(BaseModel):
    model: str
    request_id: str
    predictions: list[ImageResult]
    detail: Optional[str] = Field(None, description="set when no image could be classified")


class ErrorResponse(BaseModel):
    detail: Any
    request_id: str = ""


_PREDICT_BODY = {
    "required": True,
    "description": "One or more images as multipart files (field `files`, or `file`), or one raw image body.",
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                "required": ["files"],
            }
        },
        "image/*": {"schema": {"type": "string", "format": "binary"}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


def status_for_reason(reason: str) -> int:
    """The HTTP status for one image's :class:`ImageLoadError` reason (see ``STATUS_CODES``)."""
    r = reason.lower()
    if r.startswith("not an image") or r.startswith("unsupported"):
        return 415
    return 422  # empty file, corrupt/truncated, too large (bomb guard), invalid dimensions, ...


class PayloadTooLarge(Exception):
    pass


# ---- the app ---------------------------------------------------------------------------------------------

def create_app(
    classifier: Classifier,
    *,
    max_batch: int = 32,
    max_wait_ms: float = 5,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
    api_key: str | None = None,
    decode_workers: int | None = None,
    max_pending: int | None = None,
    default_top_k: int = 5,
    title: str = "imclass",
) -> FastAPI:
    """A FastAPI app serving ``classifier``; mount it or run it with any ASGI server.

    - ``max_batch`` / ``max_wait_ms``: micro-batching (most images per model call; how long the first
      image of a batch waits for others);
    - ``max_body_bytes``: request body limit (413); ``max_files``: images per request (413);
    - ``api_key``: when set, ``/v1/*`` needs ``X-API-Key: KEY`` or ``Authorization: Bearer KEY`` (401);
      ``/healthz``, ``/readyz`` and ``/docs`` stay open for probes;
    - ``decode_workers``: decode threads; ``max_pending``: images in progress at once before new requests
      get 503 (default ``max(4 * max_batch, 2 * max_files, 256)``).

    The batcher starts with the app's lifespan (or on first use when the app is mounted somewhere that
    does not run sub-app lifespans) and is drained on shutdown.
    """
    if max_body_bytes < 1:
        raise ValueError("max_body_bytes must be >= 1")
    if max_files < 1:
        raise ValueError("max_files must be >= 1")
    if default_top_k < 1:
        raise ValueError("default_top_k must be >= 1")
    if api_key is not None and not api_key:
        raise ValueError("api_key must be a non-empty string or None")
    if max_pending is None:
        max_pending = max(4 * max_batch, 2 * max_files, 256)
    spec = classifier.spec
    batcher = MicroBatcher(classifier, max_batch=max_batch, max_wait_ms=max_wait_ms,
                           max_pending=max(max_pending, max_files), decode_workers=decode_workers)
    settings = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_body_bytes": max_body_bytes,
                "max_files": max_files, "max_pending": batcher.max_pending,
                "decode_workers": batcher.decode_workers, "auth": api_key is not None}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        log.info("serving %s (%d labels, task=%s)", spec.model_id, spec.num_classes, spec.task)
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)  # uvicorn has already waited for in-flight requests
            log.info("batcher drained: %s", json.dumps(batcher.stats()))

    from .. import __version__

    app = FastAPI(
        title=title,
        version=__version__,
        description=_description(spec, settings),
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.classifier = classifier
    app.state.settings = settings
    app.add_middleware(RequestLogMiddleware)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, "request_id": _request_id(request)},
                            status_code=exc.status_code, headers=exc.headers)

    auth = [Depends(_api_key_dependency(api_key))] if api_key is not None else []
    error_responses: dict[int | str, dict[str, Any]] = {
        code: {"model": ErrorResponse, "description": text} for code, text in STATUS_CODES.items() if code != 200
    }

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=auth, responses=error_responses,
              openapi_extra={"requestBody": _PREDICT_BODY}, summary="Classify one or more images")
    async def predict(
        request: Request,
        top_k: int = Query(default_top_k, ge=1, le=10_000, description="classes per image in `topk`"),
    ) -> JSONResponse:
        """Multipart files (`files` or `file`, several allowed) or one raw `image/*` body.

        Each image gets `label`, `score`, `topk` or an `error`. If every image failed, the response has
        the failure's status (415/422); otherwise 200 with per-image `error` and `status` fields.
        """
        items = await _read_images(request, max_body_bytes, max_files)
        info = request.scope.get("imclass")
        if info is not None:
            info["n_images"] = len(items)
        if not items:
            raise HTTPException(422, "empty request: send images as multipart field 'files' "
                                     "or as a raw image/* body")
        if not batcher.started:
            batcher.start()
        if batcher.error is not None:
            raise HTTPException(503, f"model unavailable: {batcher.error}")
        try:
            batcher.admit(len(items))
        except (Overloaded, ShuttingDown) as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
        try:
            preds = await batcher.predict([(name or f"<image {i}>", data) for i, (name, data) in enumerate(items)],
                                          top_k=top_k)
        except ShuttingDown as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
        finally:
            batcher.release(len(items))
        results = [_result(name, p) for (name, _), p in zip(items, preds)]
        status, detail = _overall_status(results)
        body: dict[str, Any] = {"model": spec.model_id, "request_id": _request_id(request), "predictions": results}
        if detail:
            body["detail"] = detail
        return JSONResponse(body, status_code=status)

    @app.get("/v1/model", dependencies=auth, summary="What the served model is")
    async def model_info() -> JSONResponse:
        return JSONResponse(jsonable_encoder(_model_info(classifier, settings)))

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> JSONResponse:
        return JSONResponse({"status": "ok", **batcher.stats()})

    @app.get("/readyz", summary="Readiness: model loaded and warmed up", responses={503: {"model": ErrorResponse}})
    async def readyz() -> JSONResponse:
        if not batcher.started and not batcher.closing:
            batcher.start()
        if batcher.ready:
            return JSONResponse({"status": "ready", "model": spec.model_id})
        if batcher.error:
            return JSONResponse({"status": "failed", "detail": batcher.error}, status_code=503)
        state = "stopping" if batcher.closing else "starting"
        return JSONResponse({"status": state}, status_code=503)

    return app


# ---- request reading ---------------------------------------------------------------------------------

async def _read_images(request: Request, max_body: int, max_files: int) -> list[tuple[str | None, bytes]]:
    """The request's images as ``(filename, bytes)``; raises HTTPException for request-level problems."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError:
            raise HTTPException(400, "invalid Content-Length header") from None
        if n > max_body:
            raise HTTPException(413, _too_large(max_body))
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    try:
        if media == "multipart/form-data":
            return await _read_multipart(request, max_body, max_files)
        if media.startswith("image/") or media in RAW_TYPES:
            body = await _read_body(request, max_body)
            return [(None, body)] if body else []
        body = await _read_body(request, max_body)
    except PayloadTooLarge:
        raise HTTPException(413, _too_large(max_body)) from None
    except ClientDisconnect:
        raise HTTPException(400, "client disconnected while sending the body") from None
    if not body and not media:
        return []
    raise HTTPException(415, f"unsupported Content-Type {media or '(none)'!r}: send multipart/form-data "
                             "(field 'files'), image/* or application/octet-stream")


async def _limited_stream(request: Request, max_body: int) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > max_body:
            raise PayloadTooLarge
        yield chunk


async def _read_body(request: Request, max_body: int) -> bytes:
    parts = [chunk async for chunk in _limited_stream(request, max_body)]
    return b"".join(parts)


async def _read_multipart(request: Request, max_body: int, max_files: int) -> list[tuple[str | None, bytes]]:
    parser = MultiPartParser(request.headers, _limited_stream(request, max_body), max_files=max_files,
                             max_fields=32, max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        if e.message.lower().startswith("too many files"):
            raise HTTPException(413, f"too many files: at most {max_files} images per request") from None
        raise HTTPException(400, f"malformed multipart body: {e.message}") from None
    try:
        items: list[tuple[str | None, bytes]] = []
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                if key not in FILE_FIELDS:
                    raise HTTPException(422, f"unexpected file field {key!r}: send images as 'files' (or 'file')")
                items.append((value.filename, await value.read()))
            elif key in FILE_FIELDS:
                raise HTTPException(422, f"field {key!r} must be a file upload, not a text value")
        if len(items) > max_files:
            raise HTTPException(413, f"too many files: at most {max_files} images per request")
        return items
    finally:
        await form.close()


def _too_large(max_body: int) -> str:
    return f"request body too large: the limit is {max_body} bytes ({max_body / 2**20:.1f} MiB)"


# ---- responses ----------------------------------------------------------------------------------------

def _result(filename: str | None, p: Prediction) -> dict[str, Any]:
    d = p.to_dict()
    del d["path"]
    d = {"filename": filename, **d, "status": 200 if p.error is None else status_for_reason(p.error)}
    if p.error is not None:
        d["topk"] = []
    return d


def _overall_status(results: list[dict[str, Any]]) -> tuple[int, str | None]:
    if any(r["error"] is None for r in results):
        return 200, None
    codes = {r["status"] for r in results}
    status = codes.pop() if len(codes) == 1 else 422
    if len(results) == 1:
        return status, results[0]["error"]
    return status, f"none of the {len(results)} images could be classified"


def _model_info(classifier: Classifier, settings: dict[str, Any]) -> dict[str, Any]:
    spec = classifier.spec
    arch = spec.architecture
    arch_summary = {"family": arch.get("family")}
    if arch.get("family") == "timm":
        arch_summary["name"] = arch.get("name")
    elif arch.get("family") == "hf":
        cfg = arch.get("config") or {}
        arch_summary["model_type"] = cfg.get("model_type")
        arch_summary["architectures"] = cfg.get("architectures")
    pre = spec.preprocess
    backend = classifier._backend  # only report the device once the model has been placed
    return {
        "model_id": spec.model_id,
        "name": spec.provenance.get("name") or spec.model_id,
        "source": spec.source,
        "task": spec.task,
        "architecture": arch_summary,
        "num_classes": spec.num_classes,
        "labels": list(spec.labels),
        "input_size": list(pre.input_size),
        "preprocess": {"interpolation": pre.interpolation, "crop_pct": pre.crop_pct, "crop_mode": pre.crop_mode},
        "temperature": spec.temperature,
        "unknown_threshold": spec.unknown_threshold,
        "label_thresholds": spec.label_thresholds,
        "provenance": spec.provenance,
        "training": _summary(spec.training),
        "metrics": _summary(spec.metrics),
        "device": backend.device if backend is not None else classifier.device,
        "serving": settings,
    }


def _summary(d: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """Scalars, and scalars of nested objects one level down (no confusion matrices or per-item lists)."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        if v is None or isinstance(v, (bool, int, float, str)):
            out[k] = v
        elif isinstance(v, dict) and depth == 0:
            sub = _summary(v, 1)
            if sub:
                out[k] = sub
    return out


def _description(spec, settings: dict[str, Any]) -> str:
    rows = "\n".join(f"| {code} | {text} |" for code, text in STATUS_CODES.items())
    return (f"Image classification with **{spec.provenance.get('name') or spec.model_id}** "
            f"({spec.num_classes} labels, {spec.task}).\n\n"
            "`POST /v1/predict` takes multipart files (`files`) or one raw `image/*` body. "
            f"Limits: {settings['max_body_bytes']} bytes per request, {settings['max_files']} files.\n\n"
            f"| status | meaning |\n|---|---|\n{rows}\n")


# ---- auth ------------------------------------------------------------------------------------------------

def _api_key_dependency(expected: str):
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's API key")
    bearer = HTTPBearer(auto_error=False, description="the server's API key as a bearer token")
    want = expected.encode()

    async def check_api_key(key: Optional[str] = Security(header),
                            cred: Optional[HTTPAuthorizationCredentials] = Security(bearer)) -> None:
        given = key if key is not None else (cred.credentials if cred is not None else None)
        if given is None or not hmac.compare_digest(given.encode(), want):
            raise HTTPException(401, "missing or invalid API key (X-API-Key or Authorization: Bearer)",
                                headers={"WWW-Authenticate": "Bearer"})

    return check_api_key


# ---- request ids and access logs -----------------------------------------------------------------------

_REQUEST_ID_OK = re.compile(r"^[A-Za-z0-9._:+=/-]{1,128}$")


def _request_id(request: Request) -> str:
    info = request.scope.get("imclass")
    return info["request_id"] if info else ""


class RequestLogMiddleware:
    """Request ids (``X-Request-ID`` echoed or generated) and one JSON access-log line per request.

    A pure ASGI middleware (no response buffering). An unhandled exception becomes a JSON 500 that
    still carries the request id, and its traceback is logged with that id.
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        rid = given if given and _REQUEST_ID_OK.match(given) else uuid.uuid4().hex
        info = {"request_id": rid, "n_images": 0}
        scope["imclass"] = info
        status = 0
        t0 = time.perf_counter()

        async def send_with_id(message):
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
            response = JSONResponse({"detail": "internal server error", "request_id": rid}, status_code=500)
            await response(scope, receive, send_with_id)
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


def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers") or ():
        if k == name:
            return v.decode("latin-1")
    return None
