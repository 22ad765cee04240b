"""Multipart uploads received file by file: each part is streamed to a temporary file in the store (within
the limits) and committed as soon as it is complete, so a dropped connection loses nothing already received.

The body is parsed with python-multipart's push parser (the parser Starlette itself uses), fed chunk by chunk
from the request stream; a part is a file (field ``files``; its filename may carry a relative path such as
``photos/cats/a.jpg``: the folder becomes the label), a zip archive (extracted safely, entry by entry) or a
text field ``label`` (a class for every file of the request).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from python_multipart.multipart import MultipartParser, parse_options_header

from .store import Store

FILE_FIELD = "files"
TEXT_FIELDS = ("label",)


class UploadError(Exception):
    """A request-level problem: ``status`` (400, 413, 415, 422) and a message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Part:
    field: str
    filename: str | None
    path: Path | None = None  # a file part: where its bytes are
    text: bytearray = field(default_factory=bytearray)  # a text part
    size: int = 0


class Receiver:
    """Feeds the parser and hands each complete file part to ``on_file(part, fields)`` (awaited in order)."""

    def __init__(self, store: Store, *, max_bytes: int, max_files: int, max_file_bytes: int,
                 on_file: Callable[[Part, dict[str, str]], Awaitable[None]]):
        self.store, self.max_bytes, self.max_files, self.max_file_bytes = store, max_bytes, max_files, max_file_bytes
        self.on_file = on_file
        self.fields: dict[str, str] = {}
        self.files = 0
        self._done: list[Part] = []
        self._part: Part | None = None
        self._fh = None
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}

    async def receive(self, content_type: str, stream) -> None:
        media, params = parse_options_header(content_type)
        if media != b"multipart/form-data" or b"boundary" not in params:
            raise UploadError(415, "send images as multipart/form-data (field 'files')")
        parser = MultipartParser(params[b"boundary"], {
            "on_part_begin": self._part_begin, "on_part_data": self._part_data, "on_part_end": self._part_end,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end, "on_headers_finished": self._headers_finished,
        })
        total = 0
        try:
            async for chunk in stream:
                total += len(chunk)
                if total > self.max_bytes:
                    raise UploadError(413, f"request body too large: the limit is {self.max_bytes} bytes; files "
                                           "received before the limit were kept")
                try:
                    parser.write(chunk)
                except UploadError:
                    await self._flush()  # the parts completed before the limit are kept
                    raise
                except Exception as e:
                    await self._flush()
                    raise UploadError(400, f"malformed multipart body: {e}") from None
                await self._flush()
            try:
                parser.finalize()
            except Exception as e:
                raise UploadError(400, f"malformed multipart body: {e}") from None
            await self._flush()
        finally:
            self._abort_part()

    async def _flush(self) -> None:
        while self._done:
            part = self._done.pop(0)
            await self.on_file(part, dict(self.fields))

    # ---- parser callbacks --------------------------------------------------------------------------------
    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[bytes(self._header_field).lower().decode("latin-1")] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _disposition, options = parse_options_header(self._headers.get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        part = Part(name, None if filename is None else filename.decode("utf-8", "replace"))
        if part.filename is not None:
            if name != FILE_FIELD:
                raise UploadError(422, f"unexpected file field {name!r}: send images as 'files'")
            self.files += 1
            if self.files > self.max_files:
                raise UploadError(413, f"too many files: at most {self.max_files} per request; files before the "
                                       "limit were kept")
            part.path = self.store.temp_path(f"up-{uuid.uuid4().hex}")
            self._fh = open(part.path, "wb")  # noqa: SIM115 (closed at the part's end or on abort)
        elif name not in TEXT_FIELDS:
            raise UploadError(422, f"unexpected field {name!r}")
        self._part = part

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if part is None:
            return
        part.size += end - start
        if part.path is not None:
            if part.size > self.max_file_bytes:
                raise UploadError(413, f"{part.filename}: file larger than {self.max_file_bytes} bytes")
            self._fh.write(data[start:end])
        else:
            if part.size > 1000:
                raise UploadError(422, f"field {part.field!r} too long")
            part.text.extend(data[start:end])

    def _part_end(self) -> None:
        part, self._part = self._part, None
        if part is None:
            return
        if part.path is not None:
            self._fh.close()
            self._fh = None
            self._done.append(part)
        else:
            self.fields[part.field] = part.text.decode("utf-8", "replace").strip()

    def _abort_part(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._part is not None and self._part.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._part.path)
        for part in self._done:  # parsed but not committed (an error later in the same chunk)
            if part.path is not None and part.path.exists():
                os.unlink(part.path)
        self._done.clear()


def relative_parts(filename: str) -> tuple[str, ...]:
    """The safe parts of an uploaded file's name (a browser sends ``folder/sub/a.jpg`` for folder uploads)."""
    parts = [p for p in PurePosixPath(filename.replace("\\", "/")).parts if p not in ("", ".", "..", "/")]
    return tuple(parts) or ("upload",)


async def to_thread(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)
