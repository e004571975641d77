"""A lean HTTP/1.1 client for engine token streams: one ``asyncio.Protocol`` per connection,
``httptools.HttpResponseParser`` (llhttp, in C) for the responses, a keep-alive pool per upstream.

Engines write one HTTP chunk per token, so what a client does per chunk is the relay's cost per
token. Here it is one C parser callback that appends the bytes to a deque and wakes the reader;
the reader (``H1Response``, an async iterator) hands over everything buffered per step, joined.

The pool (``H1Pool``) keeps the rules the token streams have always had:

- at most ``max_connections`` streams at once; waiting for a free one is bounded only by the
  caller (its first-byte deadline);
- at most ``connects_at_once`` connections being established at once, each attempt timed by
  ``connect_timeout_s`` alone (a timeout raises ``UpstreamConnectTimeout``: nothing was sent, the
  caller may try again); a refused connection or a TLS failure raises ``UpstreamUnreachable``;
- a response read to its end returns its connection to the pool, unless either side asked for
  ``Connection: close`` (or the engine spoke HTTP/1.0 without keep-alive); a response closed
  before its end closes its connection, which is how engines learn of a cancel;
- idle connections are dropped after ``keepalive_expiry_s``, before engines' own idle timeouts;
- a connection lost (or a response malformed) before its end raises ``UpstreamBroken``;
- a response head over ``_HEAD_BYTES`` or ``_HEAD_FIELDS`` fields fails with ``UpstreamBroken``
  (an engine that never ends its head must not fill memory; llhttp itself sets no limit);
- a body silent for ``read_timeout_s`` fails with ``UpstreamSilent``, seen by one periodic timer
  per response that checks every eighth of the limit whether anything arrived (no timer per
  chunk): it fires no earlier than the limit and at most a quarter of it later.

TLS: an https upstream is connected with the shared SSL context (ALPN offers HTTP/1.1 only when
HTTP/2 is off; upstreams that may negotiate HTTP/2 stream through httpx instead). Proxies are
not spoken here: an upstream behind a configured proxy streams through aiohttp.

Requests carry ``Host``, the pool's default headers (API key, Basic auth from the endpoint's
credentials), the caller's headers, ``Accept-Encoding: identity`` (token streams gain nothing
from compression, and nothing here decodes it) and ``Content-Length``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Final, cast

import httptools

from llama_orch.adapters._errors import (
    UpstreamBroken,
    UpstreamConnectTimeout,
    UpstreamSilent,
    UpstreamUnreachable,
)

#: Buffered body bytes above which the socket stops being read until the reader catches up.
_HIGH_WATER: Final = 1 << 18
#: The most bytes a response head may take (h11 allows 100 KiB; engines send well under 1 KiB).
_HEAD_BYTES: Final = 64 << 10
#: The most header fields a head may have (repeated ones are joined, which must stay cheap).
_HEAD_FIELDS: Final = 256
#: Header sets remembered per pool as encoded request heads (one per route and header set).
_HEADS: Final = 32


class Headers(Mapping[str, str]):
    """A response's headers, looked up case-insensitively; repeated ones joined with ``, ``."""

    __slots__ = ("_items",)

    def __init__(self, items: dict[str, str]) -> None:
        self._items = items  # lower-cased names

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


class _Connection(asyncio.Protocol):
    """One socket to the upstream; it feeds the current response's parser."""

    __slots__ = ("closed", "idle_since", "parser", "response", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self.response: H1Response | None = None
        self.closed = False
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio's classes, but have their methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:
            self.close()  # bytes nobody asked for: the connection cannot be trusted again
            return
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # An upgrade (101) is no error to llhttp, but no engine protocol has one.
            self.close()
            if self.response is not None:
                self.response.flush()
                why = (
                    "the engine switched protocols (HTTP 101)"
                    if isinstance(exc, httptools.HttpParserUpgrade)
                    else f"malformed response: {exc}"
                )
                self.response.fail(UpstreamBroken(why))
            return
        response = self.response
        if response is not None:
            if response.batch:
                response.flush()
            elif not response.head.done():
                response.heading(len(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.response is not None:
            self.response.lost(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class H1Response:
    """One response: status and headers once its head arrived, then its body as an async
    iterator of bytes (everything buffered per step). ``close()`` is required."""

    __slots__ = (
        "_buffer",
        "_conn",
        "_consumed",
        "_consumer",
        "_error",
        "_fields",
        "_head_size",
        "_headers",
        "_loop",
        "_paused",
        "_pool",
        "_reuse",
        "_size",
        "_waiter",
        "_watch",
        "_watch_limit",
        "_watch_seen",
        "_watch_since",
        "batch",
        "complete",
        "head",
        "headers",
        "received",
        "status",
    )

    def __init__(self, pool: H1Pool, conn: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._pool: H1Pool | None = pool
        self._conn = conn
        self._loop = loop
        self._buffer: deque[bytes] = deque()
        self._size = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: Exception | None = None
        self._headers: dict[str, str] = {}
        self._head_size = self._fields = 0
        self._reuse = True
        self._watch: asyncio.TimerHandle | None = None
        self._watch_limit = 0.0
        self._watch_since = 0.0
        self._watch_seen = 0
        #: Push mode (``consume``): who takes the body, and the future ending it.
        self._consumer: Callable[[bytes], bool] | None = None
        #: Push mode: the body pieces of the socket read being parsed, handed over as one.
        self.batch: list[bytes] = []
        self._consumed: asyncio.Future[None] | None = None
        self.head: asyncio.Future[None] = loop.create_future()
        self.status = 0
        self.headers = Headers(self._headers)
        self.complete = False
        #: Body pieces received so far (the silence watch looks at it).
        self.received = 0

    # -- the parser's callbacks ------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._fields += 1
        if self._fields > _HEAD_FIELDS:
            error = UpstreamBroken(f"the response head has over {_HEAD_FIELDS} header fields")
            self.fail(error)
            raise error  # stops the parser; the connection closes (``data_received``)
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        seen = self._headers.get(key)
        self._headers[key] = text if seen is None else f"{seen}, {text}"

    def on_headers_complete(self) -> None:
        parser = self._conn.parser
        assert parser is not None
        self.status = parser.get_status_code()
        if self.status < 200:
            self._headers.clear()  # an interim response: the real one follows
            self._fields = 0
            return
        self._reuse = self._reuse and parser.should_keep_alive()
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        # Once per HTTP chunk, so once per token: kept to a few attribute operations.
        self.received += 1
        if self._consumer is not None:
            # The consumer gets the whole read at once (``flush``): an engine that writes a
            # chunk per token still costs one hand-over per socket read, not one per token.
            self.batch.append(body)
            return
        self._buffer.append(body)
        self._size += len(body)
        if self._size > _HIGH_WATER and not self._paused and self._conn.transport is not None:
            self._paused = True
            self._conn.transport.pause_reading()
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def on_message_complete(self) -> None:
        if self.status < 200:
            return
        self.flush()
        self.complete = True
        self._wake()

    def flush(self) -> None:
        """Hand the consumer what this socket read brought (the connection calls it)."""
        batch = self.batch
        if not batch:
            return
        body = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        consumer = self._consumer
        if consumer is not None and not consumer(body):
            self._stop_consuming()

    # -- the connection's events -----------------------------------------------------------

    def heading(self, size: int) -> None:
        """``size`` more bytes arrived while the head is incomplete: fail past the limit."""
        self._head_size += size
        if self._head_size > _HEAD_BYTES:
            self._conn.close()
            self.fail(UpstreamBroken(f"the response head passed {_HEAD_BYTES >> 10} KiB unended"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        if self._consumed is not None:
            self._stop_consuming()

    def _stop_consuming(self) -> None:
        self._consumer = None
        done, self._consumed = self._consumed, None
        if done is not None and not done.done():
            if self._error is not None:
                done.set_exception(self._error)
            else:
                done.set_result(None)

    def fail(self, error: Exception) -> None:
        if self.complete or self._error is not None:
            return
        self._error = error
        if not self.head.done():
            self.head.set_exception(error)
        self._wake()

    def lost(self, exc: Exception | None) -> None:
        if self.complete:
            return
        if self.head.done() and self.head.exception() is None and self._until_eof():
            self.complete = True  # a body without length or chunks ends with the connection
            self._reuse = False
            self._wake()
            return
        reason = f": {exc}" if exc is not None else ""
        self.fail(UpstreamBroken(f"the engine closed the connection mid-response{reason}"))

    def _until_eof(self) -> bool:
        items = self._headers
        return "content-length" not in items and "transfer-encoding" not in items

    # -- the reader ------------------------------------------------------------------------

    def __aiter__(self) -> H1Response:
        return self

    async def __anext__(self) -> bytes:
        buffer = self._buffer
        while not buffer:
            if self._error is not None:
                raise self._error
            if self.complete:
                raise StopAsyncIteration
            waiter = self._waiter = self._loop.create_future()
            await waiter
        data = buffer[0] if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        self._size = 0
        self._resume()
        return data

    def _resume(self) -> None:
        """Read the socket again once the buffer drained (it pauses above ``_HIGH_WATER``)."""
        if self._paused:
            self._paused = False
            if self._conn.transport is not None:
                self._conn.transport.resume_reading()

    def consume(self, consumer: Callable[[bytes], bool]) -> asyncio.Future[None]:
        """Hand each body chunk to ``consumer`` as it arrives, from the connection's own
        callback (no task step per chunk), the chunks already buffered first.

        The result completes at the body's end or once ``consumer`` returns False (what is left
        can still be read as usual), and fails with the body's error (a broken connection,
        silence). ``close`` ends it too."""
        done: asyncio.Future[None] = self._loop.create_future()
        self._consumed = done
        buffer = self._buffer
        while buffer:
            chunk = buffer.popleft()
            self._size -= len(chunk)
            if not consumer(chunk):
                self._stop_consuming()
                return done
        self._resume()
        if self.complete or self._error is not None:
            self._stop_consuming()
        else:
            self._consumer = consumer
        return done

    async def read(self) -> bytes:
        """The whole (remaining) body."""
        return b"".join([piece async for piece in self])

    def watch(self, limit_s: float) -> None:
        """Fail the body once nothing arrived for ``limit_s``."""
        self._watch_limit = limit_s
        self._watch_since, self._watch_seen = self._loop.time(), self.received
        self._watch = self._loop.call_later(max(0.005, limit_s / 8), self._check_silence)

    def _check_silence(self) -> None:
        # A method, not a closure that re-arms itself: such a closure refers to itself, and
        # that cycle would keep the whole response alive until the garbage collector ran.
        self._watch = None
        if self.complete or self._error is not None:
            return
        now, limit = self._loop.time(), self._watch_limit
        if self.received != self._watch_seen:
            self._watch_since, self._watch_seen = now, self.received
        elif now - self._watch_since >= limit:
            self.fail(UpstreamSilent(f"nothing received for {limit:g} s"))
            return
        self._watch = self._loop.call_later(max(0.005, limit / 8), self._check_silence)

    async def close(self) -> None:
        """Return the connection to the pool if the body was read to its end, else close it."""
        self.close_now()

    def close_now(self) -> None:
        """``close`` for callers outside a coroutine (nothing in it waits)."""
        self._consumer = None
        if self._consumed is not None and not self._consumed.done():
            self._consumed.cancel()
        self._consumed = None
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        pool, self._pool = self._pool, None
        if pool is None:
            return
        conn = self._conn
        conn.parser = None
        conn.response = None
        pool.release(conn, reuse=self.complete and self._reuse and self._error is None)


class H1Pool:
    """Keep-alive HTTP/1.1 connections to one upstream (see the module docstring)."""

    __slots__ = (
        "_connect_timeout_s",
        "_connecting",
        "_expiry_s",
        "_heads",
        "_host",
        "_idle",
        "_loop",
        "_open",
        "_port",
        "_prefix",
        "_read_timeout_s",
        "_server_hostname",
        "_slot_waiters",
        "_slots",
        "_ssl",
        "_sweep",
    )

    def __init__(
        self,
        *,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        max_connections: int,
        connects_at_once: int,
        connect_timeout_s: float,
        read_timeout_s: float | None,
        keepalive_expiry_s: float,
        headers: Mapping[str, str],
    ) -> None:
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._server_hostname = host if ssl_context is not None else None
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._expiry_s = keepalive_expiry_s
        #: Streams that may still start, and the posts waiting for one to end (oldest first).
        self._slots = max_connections
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._connecting = asyncio.Semaphore(connects_at_once)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        authority = host if ":" not in host else f"[{host}]"
        default_port = 443 if ssl_context is not None else 80
        if port != default_port:
            authority = f"{authority}:{port}"
        self._prefix = _encode({"host": authority, **headers})
        #: (path, headers object) -> (the headers object, the encoded head up to the length).
        self._heads: dict[tuple[str, int], tuple[Mapping[str, str], bytes, bool]] = {}

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> H1Response:
        """Send ``POST path`` and return once the response's head arrived."""
        loop = self._loop = asyncio.get_running_loop()
        await self._take_slot(loop)
        conn: _Connection | None = None
        try:
            head = self._head_for(path, headers)
            conn = self._take_idle(loop) or await self._connect(loop)
            response = self._send(conn, head, body, loop)
            await response.head
        except BaseException:
            if conn is not None:
                conn.response = conn.parser = None
                self._discard(conn)
            self._give_slot()
            raise
        if self._read_timeout_s is not None:
            response.watch(self._read_timeout_s)
        return response

    def try_post(self, path: str, body: bytes, headers: Mapping[str, str]) -> H1Response | None:
        """Send ``POST path`` now, on an idle connection, if a stream may start without waiting;
        else None (``post`` waits for a turn or connects). The response's head is ``head``.

        Called from the step that decided to run the request, it writes the request without
        waiting for a task of its own to start: the engine starts working one loop iteration
        sooner."""
        if self._slots <= 0 or self._slot_waiters or not self._idle:
            return None
        head = self._head_for(path, headers)  # refuses bad headers before taking anything
        loop = self._loop = asyncio.get_running_loop()
        conn = self._take_idle(loop)
        if conn is None:
            return None
        self._slots -= 1
        response = self._send(conn, head, body, loop)
        if self._read_timeout_s is not None:
            response.watch(self._read_timeout_s)
        return response

    def _send(
        self,
        conn: _Connection,
        head: tuple[bytes, bool],
        body: bytes,
        loop: asyncio.AbstractEventLoop,
    ) -> H1Response:
        response = H1Response(self, conn, loop)
        start, close = head
        if close:
            response._reuse = False
        conn.response = response
        conn.parser = httptools.HttpResponseParser(response)
        assert conn.transport is not None
        conn.transport.write(b"%s%d\r\n\r\n%s" % (start, len(body), body))
        return response

    async def _take_slot(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._slots > 0 and not self._slot_waiters:
            self._slots -= 1
            return
        waiter = loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give_slot()  # handed a slot while being canceled: pass it on
            raise

    def _give_slot(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot goes to the oldest waiting post
                return
        self._slots += 1

    def _head_for(self, path: str, headers: Mapping[str, str]) -> tuple[bytes, bool]:
        key = (path, id(headers))
        known = self._heads.get(key)
        if known is None or known[0] is not headers:
            if len(self._heads) >= _HEADS:
                self._heads.clear()
            start = f"POST {path} HTTP/1.1\r\n".encode("latin-1")
            close = any(
                k.lower() == "connection" and v.lower() == "close" for k, v in headers.items()
            )
            head = start + self._prefix + _encode(headers) + b"accept-encoding: identity\r\n"
            known = self._heads[key] = (headers, head + b"content-length: ", close)
        return known[1], known[2]

    def _take_idle(self, loop: asyncio.AbstractEventLoop) -> _Connection | None:
        idle = self._idle
        now = loop.time()
        while idle:
            conn = idle.pop()
            if not conn.closed and now - conn.idle_since < self._expiry_s:
                return conn
            self._discard(conn)
        return None

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> _Connection:
        # The wait for a turn is not timed: only the handshake is connecting.
        async with self._connecting:
            try:
                async with asyncio.timeout(self._connect_timeout_s):
                    _, conn = await loop.create_connection(
                        _Connection,
                        self._host,
                        self._port,
                        ssl=self._ssl,
                        server_hostname=self._server_hostname,
                    )
            except TimeoutError as exc:
                raise UpstreamConnectTimeout(
                    f"connecting took over {self._connect_timeout_s * 1000:g} ms"
                ) from exc
            except OSError as exc:  # refused, unreachable, TLS refused (ssl.SSLError)
                raise UpstreamUnreachable(str(exc) or type(exc).__name__) from exc
        self._open.add(conn)
        return conn

    def release(self, conn: _Connection, *, reuse: bool) -> None:
        """A response is done with ``conn``: keep it for the next one, or close it."""
        if reuse and not conn.closed and self._loop is not None:
            conn.idle_since = self._loop.time()
            self._idle.append(conn)
            if self._sweep is None:
                self._sweep = self._loop.call_later(self._expiry_s, self._expire)
        else:
            self._discard(conn)
        self._give_slot()

    def _discard(self, conn: _Connection) -> None:
        self._open.discard(conn)
        conn.close()

    def _expire(self) -> None:
        """Close idle connections past their expiry; look again while some are left."""
        self._sweep = None
        if self._loop is None:
            return
        limit = self._loop.time() - self._expiry_s
        keep = []
        for conn in self._idle:
            if conn.closed or conn.idle_since <= limit:
                self._discard(conn)
            else:
                keep.append(conn)
        self._idle[:] = keep
        if keep:
            self._sweep = self._loop.call_later(self._expiry_s / 2, self._expire)

    async def aclose(self) -> None:
        """Close every connection, idle or in use."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self._idle.clear()
        for conn in list(self._open):
            self._discard(conn)


def _encode(headers: Mapping[str, str]) -> bytes:
    lines = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n\0") or ":" in name:
            raise ValueError(f"header {name!r} cannot be sent: it contains a line break")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")
