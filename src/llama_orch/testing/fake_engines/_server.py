"""FakeEngine: a real HTTP server on a loopback port that plays one engine's wire protocol.

Subclasses supply the routes; this module owns the listener, the pace, the fault switches, the
request log and the streaming loop that notices a client closing the request early.

Faults (``Behaviour``) are read when a request arrives, so a test can flip them between requests:

- refuse connections: ``await fake.set_listening(False)`` keeps the port bound but not listening;
- ``fail_status``: answer generation with that HTTP status and the engine's error body;
- ``hang_before_first_token`` / ``stall_after``: go silent (until the client leaves);
- ``close_after``: drop the connection after N tokens, without the engine's final frame;
- ``malformed_after``: send a frame that is not valid JSON after N tokens;
- ``error_after``: send the engine's own in-stream error event after N tokens;
- ``split_frames``: write every frame in 1-3 byte pieces, splitting UTF-8 characters.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.routing import BaseRoute
from starlette.types import Receive, Scope, Send

#: Frames batched into one write when streaming as fast as possible (``Behaviour.batch``).
FAST_BATCH = 64
#: Yielded by a frame source to push batched frames out now (before a stall).
FLUSH = b""


@dataclass(slots=True)
class Behaviour:
    """Pace and faults; mutate freely between requests."""

    #: Delay before the first token, in ms.
    ttft_ms: float = 0.0
    #: Pace after the first token; 0 streams as fast as possible (frames batched per write).
    tokens_per_s: float = 0.0
    #: Frames per write when streaming as fast as possible. 1 is what real engines do (one
    #: HTTP chunk per token); larger batches spare the fake's CPU for many concurrent streams.
    batch: int = FAST_BATCH
    #: llama.cpp only: answer every path with 503 "Loading model".
    loading: bool = False
    #: Status for health probes (None: healthy); the body follows the engine's own shape.
    health_status: int | None = None
    fail_status: int | None = None
    hang_before_first_token: bool = False
    stall_after: int | None = None
    close_after: int | None = None
    malformed_after: int | None = None
    error_after: int | None = None
    split_frames: bool = False
    #: End with the engine's end-of-sequence token after this many tokens.
    eos_at: int | None = None
    #: vLLM only: the version ``/version`` reports instead of the simulated one.
    version: str | None = None


@dataclass(slots=True)
class RequestRecord:
    """One request as the fake saw it; ``closed_early`` is the cancel signal tests look for."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any = None
    tokens_sent: int = 0
    completed: bool = False
    closed_early: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)
    #: CLOCK_MONOTONIC (system-wide, so comparable with a client's clock): when the handler
    #: had the request, and when the first token's frame was handed to the server.
    received_ns: int = field(default_factory=time.monotonic_ns)
    first_sent_ns: int | None = None


class _AbortConnection(Exception):
    """Raised inside a stream to make the server drop the connection without a final chunk."""


class FakeEngine:
    """Base of the per-engine fakes; use as ``async with FakeLlamaCpp() as fake: fake.url``."""

    kind = "fake"

    def __init__(
        self,
        *,
        model: str = "tiny",
        behaviour: Behaviour | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        listening: bool = True,
    ) -> None:
        self.model = model
        self.behaviour = behaviour or Behaviour()
        self.requests: list[RequestRecord] = []
        #: (certfile, keyfile): serve HTTPS instead of HTTP; set before ``start``.
        self.tls: tuple[str, str] | None = None
        self._host = host
        self._port = port
        self._want_listening = listening
        self._sock: socket.socket | None = None
        self._server: uvicorn.Server | None = None
        self._closing = asyncio.Event()
        self.app = Starlette(routes=list(self.routes()))
        self.started_at = time.time()
        #: Streams in flight (for "processing" gauges and concurrency limits).
        self.active = 0
        #: Where each finished stream's timing goes, one JSON line (``--timings``): lets a
        #: benchmark split a client's time to first token into the engine's part and the rest.
        self.timings: TextIO | None = None

    # -- subclass surface ----------------------------------------------------------------------

    def routes(self) -> Sequence[BaseRoute]:
        raise NotImplementedError

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._sock is None:
            raise RuntimeError("the fake engine is not started")
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self._host}:{self.port}"

    async def start(self) -> FakeEngine:
        self._sock = self._bind(self._port)
        self._port = self.port
        if self._want_listening:
            await self._listen()
        return self

    async def stop(self) -> None:
        self._closing.set()
        await self._stop_server()
        if self._sock is not None:
            self._sock.close()

    async def __aenter__(self) -> FakeEngine:
        return await self.start()

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    async def set_listening(self, on: bool) -> None:
        """Off: the port stays bound but refuses connections, like an engine still loading."""
        if on and self._server is None:
            if self._sock is None or self._sock.fileno() < 0:
                self._sock = self._bind(self._port)
            await self._listen()
        elif not on and self._server is not None:
            await self._stop_server()
            self._sock = self._bind(self._port)

    def _bind(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self._host, port))
        sock.setblocking(False)
        return sock

    async def _listen(self) -> None:
        assert self._sock is not None
        self._sock.listen(1024)
        config = uvicorn.Config(
            self.app,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=1,
            backlog=1024,
            ssl_certfile=self.tls[0] if self.tls else None,
            ssl_keyfile=self.tls[1] if self.tls else None,
        )
        server = uvicorn.Server(config)
        self._server = server
        # startup() rather than serve(): a library server must neither take over the process's
        # signal handlers nor pay serve()'s 0.1 s polling on every stop.
        config.load()
        server.lifespan = config.lifespan_class(config)
        await server.startup(sockets=[self._sock])

    async def _stop_server(self) -> None:
        server = self._server
        self._server = None
        if server is None:
            return
        self._closing.set()  # hung and stalled streams end now
        for listener in server.servers:
            listener.close()
        for connection in list(server.server_state.connections):
            connection.shutdown()
        tasks = set(server.server_state.tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=1.0)
        for task in server.server_state.tasks:
            task.cancel()
        for listener in server.servers:
            await listener.wait_closed()
        if self._sock is not None:
            self._sock.close()
        self._closing = asyncio.Event()

    # -- helpers for subclasses ----------------------------------------------------------------

    def record(self, method: str, path: str, headers: dict[str, str], body: Any) -> RequestRecord:
        rec = RequestRecord(method, path, headers, body)
        self.requests.append(rec)
        return rec

    async def hang(self) -> None:
        """Wait until the fake shuts down (or the client leaves and the task is canceled)."""
        await self._closing.wait()
        raise _AbortConnection

    async def pace_first(self) -> None:
        b = self.behaviour
        if b.hang_before_first_token:
            await self.hang()
        if b.ttft_ms > 0:
            await asyncio.sleep(b.ttft_ms / 1000)

    def close_after_response(self, scope: Scope) -> None:
        """Close this request's connection once its response ends, whatever its headers said.

        Call it after the response headers went out: uvicorn's per-connection graceful shutdown
        then closes the socket after the last chunk instead of keeping it alive.
        """
        server = self._server
        if server is None:
            return
        for connection in list(server.server_state.connections):
            if getattr(connection, "client", None) == scope.get("client"):
                connection.shutdown()


FrameSource = Callable[[RequestRecord], AsyncIterator[bytes]]


class EventStream:
    """An ASGI response that streams frames, honours pace and faults, and records early closes.

    ``frames`` yields complete frames; the token count advances once per frame marked by the
    source calling ``record.tokens_sent += 1`` itself (so the source decides what a token is).
    """

    def __init__(
        self,
        fake: FakeEngine,
        record: RequestRecord,
        frames: AsyncIterator[bytes],
        *,
        status: int = 200,
        media_type: str = "text/event-stream",
        before_headers: Callable[[], Awaitable[None]] | None = None,
        on_done: Callable[[], None] | None = None,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
        close_connection: bool = False,
    ) -> None:
        self.on_done = on_done
        self.fake = fake
        self.record = record
        self.frames = frames
        self.status = status
        self.media_type = media_type
        self.before_headers = before_headers
        self.extra_headers = extra_headers
        #: End the TCP connection after the stream although the headers allow keep-alive.
        self.close_connection = close_connection

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        record = self.record
        producer = asyncio.ensure_future(self._produce(scope, send))
        listener = asyncio.ensure_future(self._listen(receive))
        self.fake.active += 1
        try:
            await asyncio.wait({producer, listener}, return_when=asyncio.FIRST_COMPLETED)
            if not producer.done():
                record.closed_early = True
                producer.cancel()
                with contextlib.suppress(asyncio.CancelledError, _AbortConnection):
                    await producer
            else:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
                producer.result()  # re-raises _AbortConnection: the server drops the socket
                record.completed = True
        finally:
            self.fake.active -= 1
            if self.on_done is not None:
                self.on_done()
            record.done.set()
            timings = self.fake.timings
            if timings is not None and record.first_sent_ns is not None:
                line = {
                    "received_ns": record.received_ns,
                    "first_ns": record.first_sent_ns,
                    "body": record.body,
                }
                timings.write(orjson.dumps(line).decode() + "\n")

    async def _listen(self, receive: Receive) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass

    async def _start(self, scope: Scope, send: Send) -> None:
        if self.before_headers is not None:
            await self.before_headers()
        headers = [(b"content-type", self.media_type.encode()), (b"cache-control", b"no-cache")]
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [*headers, *self.extra_headers],
            }
        )
        if self.close_connection:
            self.fake.close_after_response(scope)

    async def _produce(self, scope: Scope, send: Send) -> None:
        await self._start(scope, send)
        b = self.fake.behaviour
        fast = b.tokens_per_s <= 0 and not b.split_frames
        interval = 0.0 if b.tokens_per_s <= 0 else 1.0 / b.tokens_per_s
        batch: list[bytes] = []
        first = True
        try:
            async for frame in self.frames:
                if not frame:  # FLUSH
                    if batch:
                        await _send_body(send, b"".join(batch))
                        batch.clear()
                    continue
                if b.split_frames:
                    await _send_split(send, frame)
                elif fast:
                    batch.append(frame)
                    if len(batch) >= b.batch:
                        await _send_body(send, b"".join(batch))
                        batch.clear()
                        await asyncio.sleep(0)  # let other streams and the listener run
                else:
                    if not first and interval:
                        await asyncio.sleep(interval)
                    await _send_body(send, frame)
                if first:
                    self.record.first_sent_ns = time.monotonic_ns()
                first = False
        except _AbortConnection:
            if batch:  # what was "generated" before the drop still reaches the client
                await _send_body(send, b"".join(batch))
            raise
        if batch:
            await _send_body(send, b"".join(batch))
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _send_body(send: Send, body: bytes) -> None:
    await send({"type": "http.response.body", "body": body, "more_body": True})


async def _send_split(send: Send, frame: bytes) -> None:
    step = 1
    pos = 0
    while pos < len(frame):
        await _send_body(send, frame[pos : pos + step])
        pos += step
        step = step % 3 + 1


async def token_frames(
    fake: FakeEngine,
    record: RequestRecord,
    n_tokens: int,
    frame_of: Callable[[int], bytes],
    *,
    error_frame: Callable[[], bytes],
    final: Callable[[], Sequence[bytes]],
    malformed: bytes = b'data: {"content": "oops\n\n',
) -> AsyncIterator[bytes]:
    """The shared token loop: first-token pace, then per-token faults, then the final frames."""
    b = fake.behaviour
    await fake.pace_first()
    for i in range(n_tokens):
        if b.error_after is not None and i >= b.error_after:
            yield error_frame()
            return
        if b.malformed_after is not None and i >= b.malformed_after:
            yield malformed
            return
        if b.close_after is not None and i >= b.close_after:
            raise _AbortConnection
        if b.stall_after is not None and i >= b.stall_after:
            yield FLUSH  # what was generated before the stall reaches the client
            await fake.hang()
        yield frame_of(i)
        record.tokens_sent += 1
    for frame in final():
        yield frame
