"""The HTTP face: :func:`create_app`, a FastAPI app over one :class:`~imclass.classifier.Classifier` and a
micro-batcher.

Endpoints: ``POST /v1/predict``, ``GET /v1/model``, ``GET /healthz``, ``GET /readyz``, ``/docs``. Each route
is a few lines over its pieces: :mod:`.schemas` (what every answer looks like, and ``STATUS_CODES``),
:mod:`.uploads` (a request's images), :mod:`.auth` (the API key), :mod:`.middleware` (request ids and the
access log) and :mod:`.batcher` (the model calls).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..version import __version__
from .auth import api_key_dependency
from .batcher import MicroBatcher, Overloaded, ShuttingDown
from .middleware import RequestLogMiddleware, note_images, request_id
from .schemas import (
    STATUS_CODES,
    ErrorResponse,
    Health,
    ImageResult,
    ModelInfo,
    PredictResponse,
    Readiness,
    ServingInfo,
)
from .settings import DEFAULTS, ServeSettings
from .uploads import REQUEST_BODY, ImageReader, Upload

if TYPE_CHECKING:
    from ..classifier import Classifier
    from ..prediction import Prediction

__all__ = ["DEFAULT_MAX_BODY_BYTES", "DEFAULT_MAX_FILES", "STATUS_CODES", "create_app"]

DEFAULT_MAX_BODY_BYTES = DEFAULTS.max_body_bytes
DEFAULT_MAX_FILES = DEFAULTS.max_files

log = logging.getLogger("imclass.serve")

_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text} for code, text in STATUS_CODES.items() if code != 200
}


def create_app(
    classifier: Classifier,
    settings: ServeSettings | None = None,
    *,
    title: str = "imclass",
    **overrides: Any,
) -> FastAPI:
    """A FastAPI app serving ``classifier``; mount it or run it with any ASGI server.

    ``settings`` (:class:`~imclass.serve.settings.ServeSettings`; its defaults when omitted) say how requests
    are batched, limited and authenticated; keyword ``overrides`` change single settings
    (``create_app(clf, max_batch=8, api_key="...")``).

    The batcher starts with the app's lifespan (or on first use when the app is mounted somewhere that
    does not run sub-app lifespans) and is drained on shutdown.
    """
    settings = (settings or DEFAULTS).replace(**overrides)
    spec = classifier.spec
    batcher = MicroBatcher(classifier, max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                           max_pending=settings.pending_limit, decode_workers=settings.decode_workers)
    serving = ServingInfo(max_batch=settings.max_batch, max_wait_ms=settings.max_wait_ms,
                          max_body_bytes=settings.max_body_bytes, max_files=settings.max_files,
                          max_pending=batcher.max_pending, decode_workers=batcher.decode_workers,
                          auth=settings.api_key is not None)
    read_images = ImageReader(settings.max_body_bytes, settings.max_files)
    auth = [Depends(api_key_dependency(settings.api_key))] if settings.api_key is not None else []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        log.info("serving %s (%d labels, task=%s)", spec.model_id, spec.num_classes, spec.task)
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)  # uvicorn has already waited for in-flight requests
            log.info("batcher drained: %s", json.dumps(batcher.stats()))

    app = FastAPI(title=title, version=__version__, description=_description(spec, serving), lifespan=lifespan)
    app.state.batcher = batcher
    app.state.classifier = classifier
    app.state.settings = settings
    app.add_middleware(RequestLogMiddleware)
    app.add_exception_handler(StarletteHTTPException, _http_error)

    @app.post("/v1/predict", response_model=PredictResponse, dependencies=auth, responses=_ERROR_RESPONSES,
              openapi_extra={"requestBody": REQUEST_BODY}, summary="Classify one or more images")
    async def predict(
        request: Request,
        response: Response,
        top_k: int = Query(settings.default_top_k, ge=1, le=10_000, description="classes per image in `topk`"),
    ) -> PredictResponse:
        """Multipart files (`files` or `file`, several allowed) or one raw `image/*` body.

        Each image gets `label`, `score`, `topk` or an `error`. If every image failed, the response has
        the failure's status (415/422); otherwise 200 with per-image `error` and `status` fields.
        """
        images = await read_images(request)  # here, not a dependency: the key and top_k are checked first
        note_images(request, len(images))
        predictions = await _classify(batcher, images, top_k)
        results = [ImageResult.from_prediction(image.filename, p) for image, p in zip(images, predictions)]
        response.status_code, body = PredictResponse.from_results(spec.model_id, request_id(request), results)
        return body

    @app.get("/v1/model", response_model=ModelInfo, dependencies=auth, summary="What the served model is")
    async def model_info() -> ModelInfo:
        return ModelInfo.from_spec(spec, device=batcher.device, serving=serving)

    @app.get("/healthz", response_model=Health, summary="Liveness: the process answers")
    async def healthz() -> Health:
        return Health(**batcher.stats())

    @app.get("/readyz", response_model=Readiness, summary="Readiness: model loaded and warmed up",
             responses={503: {"model": Readiness, "description": "starting, stopping or failed"}})
    async def readyz(response: Response) -> Readiness:
        readiness = _readiness(batcher, spec.model_id)
        if readiness.status != "ready":
            response.status_code = 503
        return readiness

    return app


async def _classify(batcher: MicroBatcher, images: Sequence[Upload], top_k: int) -> list[Prediction]:
    """The images' predictions, in order; 503 (``Retry-After``) when the batcher is full or closing."""
    if batcher.error is not None:
        raise HTTPException(503, f"model unavailable: {batcher.error}")
    try:
        if not batcher.started:
            batcher.start()  # mounted where sub-app lifespans do not run
        batcher.admit(len(images))
    except (Overloaded, ShuttingDown) as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
    try:
        return await batcher.predict([(u.filename or f"<image {i}>", u.data) for i, u in enumerate(images)],
                                     top_k=top_k)
    except ShuttingDown as e:
        raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
    finally:
        batcher.release(len(images))


def _readiness(batcher: MicroBatcher, model_id: str) -> Readiness:
    if not batcher.started and not batcher.closing:
        batcher.start()  # mounted where sub-app lifespans do not run: start warming up now
    if batcher.ready:
        return Readiness(status="ready", model=model_id)
    if batcher.error:
        return Readiness(status="failed", detail=batcher.error)
    return Readiness(status="stopping" if batcher.closing else "starting")


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Every HTTP error as :class:`ErrorResponse`: ``{"detail": ..., "request_id": ...}``."""
    body = ErrorResponse(detail=exc.detail, request_id=request_id(request))
    return JSONResponse(body.model_dump(mode="json"), status_code=exc.status_code, headers=exc.headers)


def _description(spec, serving: ServingInfo) -> str:
    rows = "\n".join(f"| {code} | {text} |" for code, text in STATUS_CODES.items())
    return (f"Image classification with **{spec.provenance.get('name') or spec.model_id}** "
            f"({spec.num_classes} labels, {spec.task}).\n\n"
            "`POST /v1/predict` takes multipart files (`files`) or one raw `image/*` body. "
            f"Limits: {serving.max_body_bytes} bytes per request, {serving.max_files} files.\n\n"
            f"| status | meaning |\n|---|---|\n{rows}\n")
