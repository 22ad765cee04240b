"""A request's images: multipart files (parsed by python-multipart through Starlette's ``Request.form``) or
one raw ``image/*`` / ``application/octet-stream`` body.

``await ImageReader(max_body_bytes, max_files)(request)`` reads them (it works as a FastAPI dependency
too). The body limit is enforced while the body streams in (a chunked upload cannot get past it), and
every problem with the request itself becomes its own status (``STATUS_CODES``): 400 malformed multipart
or Content-Length, 413 too large or too many files, 415 unsupported Content-Type, 422 empty request or a
file under an unknown field. The images' content is not looked at here (the batcher's decoder does that).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

FILE_FIELDS = ("files", "file")
RAW_TYPES = ("application/octet-stream",)  # besides image/*
MAX_TEXT_FIELDS = 32  # text fields a form may carry besides its files (they are ignored)
MAX_TEXT_FIELD_BYTES = 64 * 1024

EMPTY_REQUEST = "empty request: send images as multipart field 'files' or as a raw image/* body"

#: The OpenAPI request body of ``POST /v1/predict`` (the route reads it itself, so FastAPI cannot infer it).
REQUEST_BODY = {
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


@dataclass(frozen=True)
class Upload:
    """One image as sent: its file name (None for a raw body) and bytes."""

    filename: str | None
    data: bytes


class PayloadTooLarge(Exception):
    pass


class ImageReader:
    """A request's images: at least one, or an :class:`~fastapi.HTTPException` with the request's status."""

    def __init__(self, max_body_bytes: int, max_files: int):
        self.max_body = max_body_bytes
        self.max_files = max_files

    async def __call__(self, request: Request) -> list[Upload]:
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise HTTPException(400, "invalid Content-Length header") from None
            if size > self.max_body:
                raise HTTPException(413, self._too_large())  # refused before reading a byte
        media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        limited = Request(request.scope, _limited(request.receive, self.max_body))
        try:
            if media == "multipart/form-data":
                images = await self._read_form(limited)
            else:
                body = await limited.body()
                if not (media.startswith("image/") or media in RAW_TYPES) and (body or media):
                    raise HTTPException(415, f"unsupported Content-Type {media or '(none)'!r}: send "
                                             "multipart/form-data (field 'files'), image/* or application/octet-stream")
                images = [Upload(None, body)] if body else []
        except PayloadTooLarge:
            raise HTTPException(413, self._too_large()) from None
        except ClientDisconnect:
            raise HTTPException(400, "client disconnected while sending the body") from None
        if not images:
            raise HTTPException(422, EMPTY_REQUEST)
        return images

    async def _read_form(self, request: Request) -> list[Upload]:
        try:
            form = await request.form(max_files=self.max_files, max_fields=MAX_TEXT_FIELDS,
                                      max_part_size=MAX_TEXT_FIELD_BYTES)
        except MultiPartException as e:  # python-multipart's verdict (outside an app)
            raise self._form_error(e.message) from None
        except StarletteHTTPException as e:  # the same, as Starlette reports it inside an app
            if e.status_code != 400:
                raise
            raise self._form_error(str(e.detail)) from None
        try:
            images: list[Upload] = []
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    if key not in FILE_FIELDS:
                        raise HTTPException(422, f"unexpected file field {key!r}: send images as 'files' (or 'file')")
                    images.append(Upload(value.filename, await value.read()))
                elif key in FILE_FIELDS:
                    raise HTTPException(422, f"field {key!r} must be a file upload, not a text value")
            if len(images) > self.max_files:
                raise HTTPException(413, self._too_many())
            return images
        finally:
            await form.close()

    def _form_error(self, message: str) -> HTTPException:
        if message.lower().startswith("too many files"):
            return HTTPException(413, self._too_many())
        return HTTPException(400, f"malformed multipart body: {message}")

    def _too_large(self) -> str:
        return f"request body too large: the limit is {self.max_body} bytes ({self.max_body / 2**20:.1f} MiB)"

    def _too_many(self) -> str:
        return f"too many files: at most {self.max_files} images per request"


def _limited(receive: Receive, max_body: int) -> Callable[[], Awaitable[Message]]:
    """``receive`` that raises :class:`PayloadTooLarge` once more than ``max_body`` body bytes came in."""
    total = 0

    async def receive_limited() -> Message:
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > max_body:
                raise PayloadTooLarge
        return message

    return receive_limited
