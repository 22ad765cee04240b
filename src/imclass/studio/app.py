"""``create_app(settings)``: the studio's FastAPI app (JSON API, pages, static files), its authentication, and
the one mapping from errors to HTTP statuses (a bad input never gives a 500)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ImclassError, ParameterError
from . import auth
from .context import Studio
from .projects import Conflict, NotFound
from .settings import StudioSettings
from .uploads import UploadError

log = logging.getLogger("imclass.studio")
STATIC = Path(__file__).parent / "static"
OPEN_PATHS = ("/login", "/static/", "/healthz")


def create_app(settings: StudioSettings | None = None, studio: Studio | None = None) -> FastAPI:
    """The studio app for ``settings`` (its data folder is created and migrated on start-up)."""
    from ..version import __version__

    settings = settings or StudioSettings()
    s = studio or Studio.open(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from .runner import start_runner
        from .worker import start_worker

        s.worker = start_worker(s)
        s.runner = start_runner(s)
        try:
            yield
        finally:
            s.close()

    app = FastAPI(title="imclass studio", version=__version__, lifespan=lifespan,
                  description="Projects, imports and labels of the imclass studio; the pages use this API.")
    app.state.studio = s

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        if path.startswith(OPEN_PATHS):
            return await call_next(request)
        allowed, by_header = auth.authenticated(request.headers, request.cookies, settings.api_key)
        if not allowed:
            if path.startswith("/api/") or request.method != "GET":
                return JSONResponse({"detail": "missing or invalid API key (Authorization: Bearer KEY, "
                                               "X-API-Key: KEY, or log in at /login)"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
            target = path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='/')}", status_code=303)
        if not auth.same_origin(request.method, request.headers, by_header):
            return JSONResponse({"detail": "cross-site request refused: use the studio's own pages, or send the "
                                           "API key in a header"}, status_code=403)
        return await call_next(request)

    def error(status: int, detail, **extra) -> JSONResponse:
        return JSONResponse({"detail": detail, **extra}, status_code=status)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound):
        return error(404, str(exc))

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict):
        return error(409, str(exc), current=exc.current)

    @app.exception_handler(ParameterError)
    async def bad_parameter(request: Request, exc: ParameterError):
        return error(422, str(exc), param=exc.param)

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError):
        return error(exc.status, str(exc))

    @app.exception_handler(ImclassError)
    async def imclass_error(request: Request, exc: ImclassError):
        return error(422, str(exc))

    @app.exception_handler(OverflowError)
    async def out_of_range(request: Request, exc: OverflowError):  # an id beyond SQLite's 64-bit integers
        return error(422, "a number in the request is out of range")

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return error(422, [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in exc.errors()])

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return error(exc.status_code, exc.detail)

    @app.get("/healthz", include_in_schema=False)
    def healthz():
        return {"status": "ok"}

    from . import api, assist_api, pages, run_pages, runs_api

    app.include_router(api.router)
    app.include_router(runs_api.router)
    app.include_router(assist_api.router)
    app.include_router(run_pages.router)  # Studio II pages: train, runs, compare, review
    app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def require_deps() -> None:
    """Fail with an install hint (exit 1 in the CLI) when the studio extra is missing."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart", "jinja2") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImclassError(f"the studio needs {', '.join(missing)}: pip install 'imclass[studio]'")


__all__ = ["ParameterError", "create_app", "require_deps"]
