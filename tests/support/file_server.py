"""A file server with HTTP Range support and scripted faults, for download tests.

Faults are consumed in order, one per GET: ``"500"`` answers 500, ``"truncate"`` sends half
of the requested bytes then drops the connection, ``"hold"`` sends the first half and then
waits until ``release`` is set. Every request's Range header is recorded. The ETag is the
content's hash, and a Range whose If-Range names another ETag gets the whole file (200), as
RFC 9110 servers answer a client resuming bytes of an older revision.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio.to_thread
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

CHUNK = 64 * 1024


@dataclass
class FileServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    ranges: list[str | None] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    holding: threading.Event = field(default_factory=threading.Event)
    gets: int = 0


def file_server(state: FileServerState) -> Starlette:
    async def serve(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in state.files:
            return Response(b"no such file", 404)
        data = state.files[name]
        state.gets += 1
        header = request.headers.get("range")
        state.ranges.append(header)
        fault = state.faults.pop(0) if state.faults else None
        if fault == "500":
            return Response(b"try later", 500)
        etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
        if header and request.headers.get("if-range", etag) != etag:
            header = None  # the client's bytes are of another revision: send it all
        start = int(header.removeprefix("bytes=").split("-")[0]) if header else 0
        if start >= len(data) > 0:
            # RFC 9110 §15.5.17: a range starting at or past the end cannot be satisfied.
            return Response(b"", 416, {"Content-Range": f"bytes */{len(data)}"})
        body = data[start:]
        headers = {"Content-Length": str(len(body)), "ETag": etag}
        status = 200
        if header:
            status = 206
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"

        async def chunks() -> AsyncIterator[bytes]:
            if fault == "truncate":
                yield body[: len(body) // 2]
                raise ConnectionResetError("simulated drop mid-body")
            if fault == "hold":
                yield body[: len(body) // 2]
                state.holding.set()
                await anyio.to_thread.run_sync(state.release.wait)
                yield body[len(body) // 2 :]
                return
            for offset in range(0, len(body), CHUNK):
                yield body[offset : offset + CHUNK]

        return StreamingResponse(chunks(), status, headers)

    return Starlette(routes=[Route("/files/{name}", serve, methods=["GET"])])
