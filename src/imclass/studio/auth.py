"""Who may use the studio, and cross-site request forgery.

- Without a key (a studio on loopback): anyone on this machine; browsers' state-changing requests must
  come from the studio's own pages (below).
- With a key: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` (scripts, as for ``imclass serve``), or the
  session cookie a browser gets by logging in with the key once (``/login``).
- Cross-site requests: a state-changing request (POST, PUT, PATCH, DELETE) that relies on the cookie, or on
  no credential at all, is refused unless the browser says it comes from the studio's own origin (the
  ``Sec-Fetch-Site`` and ``Origin`` headers every current browser sends, and a page of another site cannot
  forge). Requests that carry the key in a header are scripts, not browsers, and are not blocked.
"""

from __future__ import annotations

import hashlib
import hmac

COOKIE = "imclass_studio"
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def session_token(key: str) -> str:
    """The cookie value for a key (a keyed hash: the cookie reveals nothing about the key)."""
    return hmac.new(key.encode(), b"imclass studio session", hashlib.sha256).hexdigest()


def header_key(headers) -> str | None:
    given = headers.get("x-api-key")
    if given:
        return given
    auth = headers.get("authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


def key_ok(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def authenticated(headers, cookies, expected: str | None) -> tuple[bool, bool]:
    """``(allowed, by_header)``: whether the request may proceed, and whether it presented the key itself."""
    given = header_key(headers)
    if expected is None:
        return True, given is not None
    if given is not None:
        return key_ok(given, expected), True
    cookie = cookies.get(COOKIE)
    return cookie is not None and hmac.compare_digest(cookie, session_token(expected)), False


def same_origin(method: str, headers, by_header: bool) -> bool:
    """False for a browser's cross-site state-changing request (see the module docstring)."""
    if method.upper() in SAFE_METHODS or by_header:
        return True
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin is not None and origin != "null":
        host = headers.get("host", "")
        if origin.split("://", 1)[-1].rstrip("/") != host:
            return False
    elif origin == "null":
        return False
    return True
