"""Serving a verified open file (:class:`mmsearch.sources.files.IndexedFile`) over HTTP,
with single-range requests (``Range: bytes=…``) so that a video can be played from a time.

The bytes come from the descriptor that passed the check, never from the path again: a
file swapped between the check and the read cannot leak.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from anyio import to_thread
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..sources.files import IndexedFile

#: Bytes sent per chunk.
CHUNK = 256 * 1024
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | str:
    """The inclusive (first, last) byte a ``Range`` header asks for; None to send the
    whole file (no header, several ranges, or a unit other than bytes: a server may
    ignore those); ``"unsatisfiable"`` for a range past the end (416)."""
    if not header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if not first and not last:
        return None
    if not first:  # the last N bytes
        n = int(last)
        if n == 0:
            return "unsatisfiable"
        return max(0, size - n), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return "unsatisfiable"
    return start, end


class IndexedFileResponse(Response):
    """The bytes of a verified open file (whole, or the one range asked for); the file is
    closed when the response is sent (or the client goes)."""

    def __init__(
        self,
        source: IndexedFile,
        media_type: str,
        request_headers: Mapping[str, str],
        filename: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code=200, media_type=media_type, headers=dict(headers or {}))
        self.source = source
        size = source.size
        wanted = parse_range(request_headers.get("range"), size)
        self.raw_headers = [h for h in self.raw_headers if h[0] != b"content-length"]
        self.start, self.end = 0, size - 1
        if wanted == "unsatisfiable":
            self.status_code = 416
            self.start, self.end = 0, -1
            self.headers["content-range"] = f"bytes */{size}"
        elif isinstance(wanted, tuple):
            self.status_code = 206
            self.start, self.end = wanted
            self.headers["content-range"] = f"bytes {self.start}-{self.end}/{size}"
        self.headers["accept-ranges"] = "bytes"
        self.headers["content-length"] = str(self.end - self.start + 1)
        self.headers["x-content-type-options"] = "nosniff"
        if filename:
            self.headers["content-disposition"] = _inline(filename)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await send(
                {"type": "http.response.start", "status": self.status_code,
                 "headers": self.raw_headers}
            )  # fmt: skip
            if scope.get("method") == "HEAD" or self.end < self.start:
                await send({"type": "http.response.body", "body": b""})
                return
            offset = self.start
            while offset <= self.end:
                n = min(CHUNK, self.end - offset + 1)
                chunk = await to_thread.run_sync(self.source.read, offset, n)
                if not chunk:  # truncated since it was checked: stop short, never pad
                    break
                offset += len(chunk)
                more = offset <= self.end
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
            if offset <= self.end:
                await send({"type": "http.response.body", "body": b""})
        finally:
            self.source.close()


def _inline(filename: str) -> str:
    """``inline`` with the name, ASCII-safe (RFC 6266's ``filename*`` for the rest)."""
    from urllib.parse import quote

    ascii_name = filename.encode("ascii", "replace").decode().replace('"', "_")
    return f"inline; filename=\"{ascii_name}\"; filename*=utf-8''{quote(filename)}"
