"""Minimal streaming apps for ``bench/binding.py``: the same paced SSE body behind the ASGI and
RSGI interfaces, so the server binding's own cost per frame can be read apart from the app's."""

from __future__ import annotations

import asyncio
from typing import Any

_FRAME = b'event: token\ndata: {"t":"tok","i":0}\n\n'
_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]


def _params(query: bytes | str) -> tuple[int, float]:
    text = query.decode() if isinstance(query, bytes) else query
    fields = dict(part.split("=", 1) for part in text.split("&") if "=" in part)
    return int(fields.get("n", "128")), float(fields.get("ms", "5")) / 1000


async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    count, pause = _params(scope.get("query_string", b""))
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    for _ in range(count):
        if pause:
            await asyncio.sleep(pause)
        await send({"type": "http.response.body", "body": _FRAME, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def rsgi(scope: Any, proto: Any) -> None:
    count, pause = _params(scope.query_string)
    transport = proto.response_stream(
        200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")]
    )
    for _ in range(count):
        if pause:
            await asyncio.sleep(pause)
        await transport.send_bytes(_FRAME)
