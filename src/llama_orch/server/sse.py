"""SSE framing and the streaming response: the only place ``data:`` framing exists.

``SseResponse`` writes frames as they come and races the writer against the client's
disconnect (as Starlette's ``StreamingResponse`` does for older ASGI servers), so a client that
goes away is noticed even while its task waits in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.types import Receive, Scope, Send

KEEPALIVE = b": keep-alive\n\n"

_PREFIXES: dict[str, bytes] = {}


def encode_frame(event: str, data: bytes) -> bytes:
    """``event: <name>\\ndata: <json>\\n\\n``; the JSON is already one line."""
    prefix = _PREFIXES.get(event)
    if prefix is None:
        prefix = _PREFIXES[event] = b"event: " + event.encode() + b"\ndata: "
    return prefix + data + b"\n\n"


class SseResponse:
    """ASGI response streaming ``frames``; ``on_disconnect`` runs if the client leaves early."""

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        *,
        headers: Mapping[str, str],
        on_disconnect: Callable[[], Awaitable[None] | None] | None = None,
    ) -> None:
        self._frames = frames
        self._headers = [(b"content-type", b"text/event-stream; charset=utf-8")] + [
            (k.lower().encode(), v.encode()) for k, v in headers.items()
        ]
        self._on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("http_version") == "1.1":
            self._headers.append((b"connection", b"keep-alive"))
        writer = asyncio.create_task(self._write(send))
        listener = asyncio.create_task(self._listen(receive))
        try:
            done, _ = await asyncio.wait({writer, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (writer, listener):
                task.cancel()
            for task in (writer, listener):
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
        disconnected = listener in done or (
            writer in done and not writer.cancelled() and writer.exception() is not None
        )
        if disconnected and self._on_disconnect is not None:
            result = self._on_disconnect()
            if result is not None:
                await result

    async def _write(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        async for chunk in self._frames:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _listen(receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
