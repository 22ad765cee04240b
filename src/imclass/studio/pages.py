"""The studio's pages (server-rendered with Jinja2; htmx and a little JavaScript, served locally)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from . import auth

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/", failed: bool = False):
    return templates.TemplateResponse(request, "login.html", {"next": _safe_next(next), "failed": failed})


@router.post("/login")
def login(request: Request, key: str = Form(...), next: str = Form("/")):
    expected = request.app.state.studio.settings.api_key
    if expected is None:
        return RedirectResponse(_safe_next(next), status_code=303)
    if not auth.key_ok(key, expected):
        return RedirectResponse(f"/login?failed=1&next={_safe_next(next)}", status_code=303)
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(auth.COOKIE, auth.session_token(expected), httponly=True, samesite="strict",
                        max_age=30 * 24 * 3600)
    return response


def _safe_next(target: str) -> str:
    """Only paths of this site (no scheme, no host): a login link cannot send people elsewhere."""
    return target if target.startswith("/") and not target.startswith("//") else "/"
