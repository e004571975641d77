"""The SSE streaming response (framing itself lives in ``contracts.frames``).

``SseResponse`` writes chunks as they come and races the writer against the client's
disconnect (as Starlette's ``StreamingResponse`` does), so a client that goes away is noticed
even while its task waits in the queue. A writer that cannot hand a chunk to the server for
longer than the stall limit (the client stopped reading and every buffer on the way is full)
ends the response and reports a stall.

A chunk source may also be a ``Pusher``: once the response has started, it is given ``push``,
which hands a chunk to the server from the producer's own step instead of the writer's. With
an ASGI server whose ``send`` completes without suspending (granian's does while its buffer has
room), that is a direct call; a send that would wait is finished by the writer, in order,
before anything else is sent.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncGenerator, Awaitable, Callable, Generator, Iterator, Mapping
from typing import Any, Protocol

from starlette.types import Receive, Scope, Send

from llama_orch.contracts.frames import encode_frame, encode_token, encode_tokens

__all__ = [
    "KEEPALIVE",
    "Outcome",
    "Push",
    "Pusher",
    "SseResponse",
    "encode_frame",
    "encode_token",
    "encode_tokens",
]

KEEPALIVE = b": keep-alive\n\n"


class Outcome(enum.Enum):
    #: Every chunk was written and the body closed.
    COMPLETE = "complete"
    #: The client went away (disconnect message, or a failed send).
    DISCONNECT = "disconnect"
    #: The writer could not hand a chunk over for longer than the stall limit.
    STALL = "stall"
    #: The server canceled the response (shutdown).
    ABORTED = "aborted"


#: Sends ``chunk`` now. True: it is with the server. False: it is still in flight or failed;
#: the writer must run (it finishes the send, or ends the response) before the next push.
Push = Callable[[bytes], bool]


class Pusher(Protocol):
    """A chunk source that can also push chunks as they are produced."""

    def attach(self, push: Push) -> None: ...


class _Held:
    """A pushed send that did not complete on the spot: what it waits for, or how it failed."""

    __slots__ = ("error", "steps", "waiting")

    def __init__(self, steps: Iterator[Any] | None, waiting: Any, error: BaseException | None):
        self.steps = steps
        self.waiting = waiting
        self.error = error

    def __await__(self) -> Generator[Any, None, None]:
        """Finish the send inside the writer's task: its awaitable's remaining steps."""
        if self.error is not None:
            raise self.error
        steps, waiting = self.steps, self.waiting
        assert steps is not None
        while True:
            try:
                yield waiting
            except BaseException as exc:
                throw = getattr(steps, "throw", None)
                if throw is None:
                    raise
                try:
                    waiting = throw(exc)
                except StopIteration:
                    return
                continue
            try:
                waiting = next(steps)
            except StopIteration:
                return


def _asks_to_close(scope: Scope) -> bool:
    return any(
        key == b"connection" and b"close" in (token.strip() for token in value.lower().split(b","))
        for key, value in scope.get("headers", ())
    )


class SseResponse:
    """ASGI response streaming ``chunks``; ``on_end`` learns how the response ended.

    ``media_type`` lets other streamed formats (NDJSON) share the disconnect and stall races.
    """

    def __init__(
        self,
        chunks: AsyncGenerator[bytes, None],
        *,
        headers: Mapping[str, str],
        on_end: Callable[[Outcome], Awaitable[None] | None] | None = None,
        stall_limit_s: float | None = None,
        media_type: str = "text/event-stream; charset=utf-8",
        pusher: Pusher | None = None,
    ) -> None:
        self._chunks = chunks
        self._pusher = pusher
        self._send: Send | None = None
        self._held: _Held | None = None
        self._headers = [(b"content-type", media_type.encode())] + [
            (k.lower().encode(), v.encode()) for k, v in headers.items()
        ]
        self._on_end = on_end
        self._stall_limit_s = stall_limit_s
        # Loop time at which the current send began; None while the writer is not sending.
        self._sending_since: float | None = None
        self._stalled = False
        self._ended = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = list(self._headers)
        if scope.get("http_version") == "1.1" and not _asks_to_close(scope):
            # Connection-specific headers are forbidden on HTTP/2 (RFC 9113 §8.2.2); a request
            # that asked to close gets the server's own "connection: close" alone.
            headers.append((b"connection", b"keep-alive"))
        loop = asyncio.get_running_loop()
        writer = asyncio.create_task(self._write(send, headers))
        listener = asyncio.create_task(self._listen(receive))
        watchdog: _StallWatch | None = None
        if self._stall_limit_s is not None:
            watchdog = self._arm(loop, writer)
        outcome = Outcome.ABORTED
        try:
            done, _ = await asyncio.wait({writer, listener}, return_when=asyncio.FIRST_COMPLETED)
            if self._stalled:
                outcome = Outcome.STALL
            elif writer in done and not writer.cancelled() and writer.exception() is None:
                outcome = Outcome.COMPLETE
            else:
                outcome = Outcome.DISCONNECT
        finally:
            if watchdog is not None:
                watchdog.cancel()
            for task in (writer, listener):
                task.cancel()
            # wait() never raises a child's error; our own cancellation still propagates.
            await asyncio.wait({writer, listener})
            for task in (writer, listener):
                if not task.cancelled():
                    task.exception()
            await self._chunks.aclose()
            # The pusher holds our push and we hold it: a cycle that would keep the whole
            # response alive until the garbage collector ran.
            self._pusher = self._send = None
            await self._end(outcome)

    async def _end(self, outcome: Outcome) -> None:
        if self._ended:
            return
        self._ended = True
        if self._on_end is not None:
            result = self._on_end(outcome)
            if result is not None:
                await result

    def _arm(self, loop: asyncio.AbstractEventLoop, writer: asyncio.Task[None]) -> _StallWatch:
        watch = _StallWatch(loop, self._stall_limit_s or 0.0, self, writer)
        watch.start()
        return watch

    async def _write(self, send: Send, headers: list[tuple[bytes, bytes]]) -> None:
        loop = asyncio.get_running_loop()
        self._sending_since = loop.time()
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        self._sending_since = None
        if self._pusher is not None:
            self._send = send
            self._pusher.attach(self._push)
        async for chunk in self._chunks:
            if self._held is not None:
                await self._finish_held()
            if not chunk:  # a pusher's turn back to the writer, with nothing of its own
                continue
            self._sending_since = loop.time()
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            self._sending_since = None
        if self._held is not None:
            await self._finish_held()
        # Every chunk is out: the end is known before the body's end goes, so what it releases
        # (a task's one subscription) is free by the time the client sees the response end.
        await self._end(Outcome.COMPLETE)
        self._sending_since = loop.time()
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._sending_since = None

    def _push(self, chunk: bytes) -> bool:
        send = self._send
        assert send is not None
        try:
            sending = send({"type": "http.response.body", "body": chunk, "more_body": True})
            # Driven by hand: a send that completes without suspending ends at its first step.
            steps: Iterator[Any] = sending.__await__()
            waiting = next(steps)
        except StopIteration:
            return True
        except BaseException as exc:  # raised again in the writer's own task
            self._held = _Held(None, None, exc)
            return False
        self._held = _Held(steps, waiting, None)
        self._sending_since = asyncio.get_running_loop().time()
        return False

    async def _finish_held(self) -> None:
        held, self._held = self._held, None
        assert held is not None
        await held
        self._sending_since = None

    @staticmethod
    async def _listen(receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return


class _StallWatch:
    """Checks the writer a few times per stall limit: no timer per chunk on the hot path."""

    __slots__ = ("_handle", "_limit", "_loop", "_period", "_response", "_writer")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        limit_s: float,
        response: SseResponse,
        writer: asyncio.Task[None],
    ) -> None:
        self._loop = loop
        self._limit = limit_s
        self._period = max(0.005, limit_s / 4)
        self._response = response
        self._writer = writer
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = self._loop.call_later(self._period, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        since = self._response._sending_since
        if since is not None and self._loop.time() - since >= self._limit:
            self._response._stalled = True
            self._writer.cancel()
            self._handle = None
            return
        self.start()
