"""Reading a request body: bounded, and a client that stops mid-body is a client mistake.

A client that closes its connection before the body's end, or sends a malformed chunk size,
ends the body early; the server answers 400 INVALID_PARAMS (which reaches a client that still
reads), and the request is logged once, at info, like any other answer. A body past its
route's limit is 413, with the same code.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from starlette.requests import ClientDisconnect, Request

from llama_orch.errors import InvalidParams, PayloadTooLarge

#: How much a JSON encoder can grow text: a control character escaped as ``\u001f`` is six
#: bytes for one; an emoji escaped as a surrogate pair is twelve for four.
JSON_ESCAPE_FACTOR = 6
#: Room for the fields around the prompt.
JSON_OVERHEAD_BYTES = 65_536


def json_body_limit(max_text_bytes: int) -> int:
    """Bytes of a JSON body whose text fields, decoded, may hold ``max_text_bytes``."""
    return max_text_bytes * JSON_ESCAPE_FACTOR + JSON_OVERHEAD_BYTES


_ENDED_EARLY = "the request body ended early: the connection closed or a chunk was malformed"


def _declared_length(request: Request) -> int | None:
    """The body's length when HTTP/1.1 framing fixes it (``Content-Length``, no chunking)."""
    if request.scope.get("http_version") not in ("1.1", "1.0"):
        return None
    headers = request.headers
    length = headers.get("content-length")
    if length is None or "transfer-encoding" in headers or not length.isdigit():
        return None
    return int(length)


async def body_chunks(request: Request) -> AsyncIterator[bytes]:
    """The body's chunks, as ``request.stream()`` gives them, ending as soon as an HTTP/1.1
    body with a ``Content-Length`` is complete.

    The server's own end-of-body message comes through its thread and the event loop a turn
    later: waiting for it added one loop iteration (milliseconds with 64 streams running) to
    every request with a body, before admission even starts. Whoever reads the connection
    next (a stream's disconnect listener) receives that message and moves past it.
    """
    expected = _declared_length(request)
    seen = 0
    stream = request.stream()
    try:
        async for chunk in stream:
            yield chunk
            seen += len(chunk)
            if expected is not None and seen >= expected:
                return
    finally:
        await stream.aclose()


async def read_body(request: Request, limit: int, *, why: str = "") -> bytes:
    """The whole body; raises PayloadTooLarge (413) past ``limit`` bytes (saying ``why``), or
    InvalidParams when it ends early."""
    body = bytearray()
    try:
        async for chunk in body_chunks(request):
            body += chunk
            if len(body) > limit:
                raise PayloadTooLarge(f"request body exceeds {limit} bytes{why}")
    except ClientDisconnect:
        raise InvalidParams(_ENDED_EARLY) from None
    return bytes(body)


async def drain_body(request: Request, limit: int) -> None:
    """Read and drop a body the endpoint ignores, stopping after ``limit`` bytes.

    Read to its end before answering: an HTTP/2 server that answers first resets the client's
    half-open stream, which clients (httpx among them) report as an error for a request that
    was in fact served.
    """
    seen = 0
    try:
        async for chunk in body_chunks(request):
            seen += len(chunk)
            if seen > limit:
                return
    except ClientDisconnect:
        raise InvalidParams(_ENDED_EARLY) from None
