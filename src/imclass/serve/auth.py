"""The API key: ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Optional

from fastapi import HTTPException, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

MISSING_OR_WRONG = "missing or invalid API key (X-API-Key or Authorization: Bearer)"


def api_key_dependency(expected: str) -> Callable[..., Awaitable[None]]:
    """A FastAPI dependency that answers 401 (``WWW-Authenticate: Bearer``) unless the request carries
    ``expected``. Both schemes appear in ``/docs``, so "Authorize" there works with either."""
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's API key")
    bearer = HTTPBearer(auto_error=False, description="the server's API key as a bearer token")
    want = expected.encode()

    async def check_api_key(key: Optional[str] = Security(header),
                            cred: Optional[HTTPAuthorizationCredentials] = Security(bearer)) -> None:
        given = key if key is not None else (cred.credentials if cred is not None else None)
        if given is None or not hmac.compare_digest(given.encode(), want):
            raise HTTPException(401, MISSING_OR_WRONG, headers={"WWW-Authenticate": "Bearer"})

    return check_api_key
