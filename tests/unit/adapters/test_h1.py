"""The token streams' HTTP/1.1 client (``H1Pool``) against a loopback server whose answers each
test scripts byte for byte: bodies, keep-alive, closing, breaks, silence, limits."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest

from llama_orch.adapters._base import HttpAdapter
from llama_orch.adapters._h1 import H1Pool, H1Response
from llama_orch.adapters._http import build_upstream, map_transport_errors
from llama_orch.config import HttpConfig
from llama_orch.errors import DecodeTimeout, WorkerError, WorkerInternal, WorkerReset
from llama_orch.observability.redaction import Redactor
from tests.unit.adapters.engine_support import adapter_for, request


@dataclass
class Request:
    connection: int
    head: bytes
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.decode("latin-1").split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name:
                return value.strip()
        return None


#: Answers one request; returns whether the server keeps the connection for another.
Answer = Callable[[Request, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class RawEngine:
    """A real HTTP/1.1 listener on a loopback port; ``answer`` writes each response."""

    answer: Answer
    requests: list[Request] = field(default_factory=list)
    #: One event per accepted connection, set once the client closed it (or the server did).
    gone: list[asyncio.Event] = field(default_factory=list)
    port: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = len(self.gone)
        self.gone.append(asyncio.Event())
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                request = Request(number, head, b"")
                request.body = await reader.readexactly(int(request.header("content-length") or 0))
                self.requests.append(request)
                if not await self.answer(request, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            return  # the client went away: nothing more to answer
        finally:
            self.gone[number].set()
            writer.close()

    @property
    def connections(self) -> int:
        return len(self.gone)

    async def disconnected(self, number: int) -> None:
        async with asyncio.timeout(10):
            await self.gone[number].wait()


@contextlib.asynccontextmanager
async def raw_engine(answer: Answer) -> AsyncIterator[RawEngine]:
    engine = RawEngine(answer)
    server = await asyncio.start_server(engine.serve, "127.0.0.1", 0)
    engine.port = server.sockets[0].getsockname()[1]
    async with server:
        yield engine


def pool_for(engine: RawEngine, **options: float) -> H1Pool:
    settings: dict[str, float] = {
        "max_connections": 4,
        "connect_timeout_s": 5.0,
        "keepalive_expiry_s": 30.0,
    }
    settings.update(options)
    return H1Pool(
        host="127.0.0.1",
        port=engine.port,
        ssl_context=None,
        max_connections=int(settings["max_connections"]),
        connects_at_once=2,
        connect_timeout_s=settings["connect_timeout_s"],
        read_timeout_s=settings.get("read_timeout_s"),
        keepalive_expiry_s=settings["keepalive_expiry_s"],
        headers={"authorization": "Bearer k"},
    )


def chunked(*pieces: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


HEAD_CHUNKED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)


def fixed(body: bytes, status: str = "200 OK", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 %s\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status.encode(),
        len(body),
        extra,
        body,
    )


def replies(data: bytes, *, keep: bool = True) -> Answer:
    async def answer(_: Request, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        return keep

    return answer


def gated(first: bytes, gate: asyncio.Event, rest: bytes) -> Answer:
    """Write ``first``, wait for ``gate``, then write ``rest`` (each one write) and keep the
    connection."""

    async def answer(_: Request, __: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        if first:
            writer.write(first)
            await writer.drain()
        await gate.wait()
        writer.write(rest)
        await writer.drain()
        return True

    return answer


def resets_after(chunks: bytes) -> Answer:
    """Send a chunked head and ``chunks``, then reset the connection."""

    async def reset(_: Request, __: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
        w.write(HEAD_CHUNKED + chunks)
        await w.drain()
        sock = w.get_extra_info("socket")
        # Linger 0: close() sends RST, as a crashed engine's kernel does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()
        return False

    return reset


async def body_of(response: H1Response) -> bytes:
    try:
        return b"".join([piece async for piece in response])
    finally:
        await response.close()


class TestBodies:
    async def test_chunked_body_split_anywhere(self) -> None:
        """A chunked body written a byte at a time (head included) arrives whole and in order."""
        payload = [b'data: {"t": "h\xc3\xa9"}\n\n', b"data: [DONE]\n\n", b"x" * 300]
        wire = HEAD_CHUNKED + chunked(*payload)

        async def trickle(_: Request, __: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
            for i in range(len(wire)):
                w.write(wire[i : i + 1])
                await w.drain()
                await asyncio.sleep(0)
            return True

        async with raw_engine(trickle) as engine:
            pool = pool_for(engine)
            response = await pool.post(
                "/v1/completions", b'{"a": 1}', {"accept": "text/event-stream"}
            )
            assert (200, "text/event-stream") == (response.status, response.headers["Content-Type"])
            assert b"".join(payload) == await body_of(response)
            await pool.aclose()

    async def test_content_length_body_and_request_head(self) -> None:
        """A Content-Length body is read to its length; the request carries Host, the pool's
        default headers, the caller's, and the body's length."""
        async with raw_engine(replies(fixed(b"0123456789"))) as engine:
            pool = pool_for(engine)
            response = await pool.post("/completion", b"{}", {"content-type": "application/json"})
            assert b"0123456789" == await body_of(response)
            await pool.aclose()
        sent = engine.requests[0]
        assert sent.head.startswith(b"POST /completion HTTP/1.1\r\n")
        assert (f"127.0.0.1:{engine.port}", "Bearer k", "application/json", "2", b"{}") == (
            sent.header("host"),
            sent.header("authorization"),
            sent.header("content-type"),
            sent.header("content-length"),
            sent.body,
        )

    async def test_a_body_delimited_by_the_connection_end(self) -> None:
        """A body with neither length nor chunks ends with the connection, complete."""
        async with raw_engine(replies(b"HTTP/1.0 200 OK\r\n\r\nall of it", keep=False)) as engine:
            pool = pool_for(engine)
            assert b"all of it" == await body_of(await pool.post("/x", b"", {}))
            await pool.aclose()

    async def test_error_status_with_its_body(self) -> None:
        """An error status comes with its headers (any case) and its whole body via read()."""
        answer = fixed(b'{"error": "busy"}', "503 Service Unavailable", b"Retry-After: 3\r\n")
        async with raw_engine(replies(answer)) as engine:
            pool = pool_for(engine)
            response = await pool.post("/x", b"", {})
            assert (503, "3") == (response.status, response.headers.get("retry-after"))
            assert b'{"error": "busy"}' == await response.read()
            await response.close()
            await pool.aclose()


class TestConnections:
    async def test_streams_read_to_their_end_reuse_one_connection(self) -> None:
        answer = HEAD_CHUNKED + chunked(b"data: 1\n\n")
        async with raw_engine(replies(answer)) as engine:
            pool = pool_for(engine)
            for _ in range(3):
                assert b"data: 1\n\n" == await body_of(await pool.post("/x", b"", {}))
            assert (1, 3) == (engine.connections, len(engine.requests))
            await pool.aclose()
            await engine.disconnected(0)  # aclose closes idle connections too

    async def test_closing_before_the_end_closes_the_connection(self) -> None:
        """The engine sees the disconnect (its cancel signal); the next stream connects anew."""
        saw_close = asyncio.Event()

        async def endless(_: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
            w.write(HEAD_CHUNKED + b"9\r\ndata: 1\n\n\r\n")
            await w.drain()
            if not await r.read(1):
                saw_close.set()
            return False

        async with raw_engine(endless) as engine:
            pool = pool_for(engine)
            response = await pool.post("/x", b"", {})
            assert b"data: 1\n\n" == await anext(response)
            await response.close()
            async with asyncio.timeout(10):
                await saw_close.wait()
            await pool.aclose()

    @pytest.mark.parametrize("side", ["engine", "client"])
    async def test_connection_close_is_honoured(self, side: str) -> None:
        """``Connection: close`` from either side: every stream gets a connection of its own."""
        extra = b"connection: close\r\n" if side == "engine" else b""
        headers = {"Connection": "close"} if side == "client" else {}
        async with raw_engine(replies(fixed(b"ok", extra=extra))) as engine:
            pool = pool_for(engine)
            for _ in range(2):
                assert b"ok" == await body_of(await pool.post("/x", b"", headers))
            await engine.disconnected(0)
            assert (2, 0) == (engine.connections, pool.idle_connections)
            await pool.aclose()

    async def test_an_expired_idle_connection_is_not_reused(self) -> None:
        """Idle past the expiry, a connection is closed (the engine sees it) and not reused."""
        async with raw_engine(replies(fixed(b"ok"))) as engine:
            pool = pool_for(engine, keepalive_expiry_s=0.05)
            assert b"ok" == await body_of(await pool.post("/x", b"", {}))
            await engine.disconnected(0)
            assert b"ok" == await body_of(await pool.post("/x", b"", {}))
            assert [0, 1] == [r.connection for r in engine.requests]
            await pool.aclose()

    async def test_waiting_for_a_free_connection_is_bounded_by_the_caller(self) -> None:
        """At max_connections, another stream waits for a free one: as long as the caller lets
        it, then on the connection the first stream gave back."""
        release = asyncio.Event()
        held = gated(HEAD_CHUNKED + b"2\r\nok\r\n", release, b"0\r\n\r\n")
        async with raw_engine(held) as engine:
            pool = pool_for(engine, max_connections=1)
            first = await pool.post("/x", b"", {})
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await pool.post("/x", b"", {})
            release.set()
            assert b"ok" == await body_of(first)
            second = await pool.post("/x", b"", {})
            assert b"ok" == await body_of(second)
            assert (1, 2) == (engine.connections, len(engine.requests))
            await pool.aclose()


async def mapped(response: H1Response) -> WorkerError:
    with pytest.raises(WorkerError) as info, map_transport_errors("vllm", "POST /x", Redactor()):
        await body_of(response)
    return info.value


class TestFailures:
    async def test_a_reset_mid_body_is_worker_reset(self) -> None:
        """The engine resets the connection after a token: the token arrives, then the break,
        which the adapters map to WORKER_RESET."""

        async with raw_engine(resets_after(b"9\r\ndata: 1\n\n\r\n")) as engine:
            pool = pool_for(engine)
            response = await pool.post("/x", b"", {})
            assert b"data: 1\n\n" == await anext(response)
            error = await mapped(response)
            await pool.aclose()
        assert isinstance(error, WorkerReset)
        assert "connection broke" in error.message

    async def test_a_malformed_response_is_worker_reset(self) -> None:
        answer = HEAD_CHUNKED + b"zz\r\nnot a chunk\r\n"
        async with raw_engine(replies(answer)) as engine:
            pool = pool_for(engine)
            error = await mapped(await pool.post("/x", b"", {}))
            await pool.aclose()
        assert isinstance(error, WorkerReset)

    async def test_silence_past_the_read_timeout_is_decode_timeout(self) -> None:
        """A body that goes silent fails once read_timeout_s has passed since its last bytes."""

        async def stall(_: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
            w.write(HEAD_CHUNKED + b"9\r\ndata: 1\n\n\r\n")
            await w.drain()
            await r.read(1)  # until the client gives up
            return False

        async with raw_engine(stall) as engine:
            pool = pool_for(engine, read_timeout_s=0.2)
            response = await pool.post("/x", b"", {})
            loop = asyncio.get_running_loop()
            assert b"data: 1\n\n" == await anext(response)
            last = loop.time()
            error = await mapped(response)
            silent_for = loop.time() - last
            await engine.disconnected(0)
            await pool.aclose()
        assert isinstance(error, DecodeTimeout)
        assert silent_for >= 0.2


class TestHeadLimits:
    """A head that never ends, or has endless fields, fails instead of filling memory."""

    @staticmethod
    def endless(line: bytes) -> Answer:
        async def answer(_: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
            w.write(b"HTTP/1.1 200 OK\r\n")
            with contextlib.suppress(ConnectionError):
                for _ in range((8 << 20) // len(line)):  # 8 MiB, unless cut off first
                    w.write(line)
                    await w.drain()
            await r.read(1)
            return False

        return answer

    @pytest.mark.parametrize(
        "line",
        [b"x-pad: " + b"z" * 4000 + b"\r\n", b"x-pad: " + b"z" * 4000, b"a: b\r\n"],
        ids=["long-fields", "one-endless-field", "many-short-fields"],
    )
    async def test_an_endless_head_is_worker_reset(self, line: bytes) -> None:
        async with raw_engine(self.endless(line)) as engine:
            pool = pool_for(engine)
            with (
                pytest.raises(WorkerReset, match="connection broke"),
                map_transport_errors("vllm", "POST /x", Redactor()),
            ):
                await pool.post("/x", b"", {})
            await engine.disconnected(0)
            await pool.aclose()

    async def test_a_head_of_many_ordinary_fields_is_read(self) -> None:
        extra = b"".join(b"x-field-%d: %s\r\n" % (n, b"v" * 100) for n in range(200))
        async with raw_engine(replies(fixed(b"ok", extra=extra))) as engine:
            pool = pool_for(engine)
            response = await pool.post("/x", b"", {})
            assert b"ok" == await body_of(response)
            assert "v" * 100 == response.headers["X-Field-199"]
            await pool.aclose()


class TestUpstreamAccounting:
    async def test_in_flight_counts_open_streams(self) -> None:
        """A stream counts from its request until it is closed, through the upstream."""
        async with raw_engine(replies(fixed(b"ok"))) as engine:
            upstream = build_upstream(
                HttpConfig(), base_url=f"http://127.0.0.1:{engine.port}/v1", max_connections=2
            )
            assert "h1" == upstream.streams_via
            response = await upstream.open_stream("/completions", b"{}", {})
            assert 1 == upstream.in_flight
            assert b"ok" == await response.read()
            await response.close()
            assert 0 == upstream.in_flight
            await upstream.aclose()
        assert engine.requests[0].head.startswith(b"POST /v1/completions HTTP/1.1\r\n")


class TestThroughTheAdapter:
    async def test_a_reset_after_two_tokens_ends_the_task_with_worker_reset(self) -> None:
        """A vLLM stream reset by the engine's kernel after two tokens: both tokens reach the
        task, in order, then WORKER_RESET."""
        frames = vllm_frames(b"a", b"b")

        async with raw_engine(resets_after(b"%x\r\n%s\r\n" % (len(frames), frames))) as engine:
            adapter = adapter_for("vllm", f"http://127.0.0.1:{engine.port}", "m")
            tokens: list[str] = []
            try:
                with pytest.raises(WorkerReset) as info:
                    async for event in adapter.submit(request(max_tokens=8)):
                        tokens += event.texts if event.kind == "tokens" else []
            finally:
                await adapter.aclose()
        assert ["a", "b"] == tokens
        assert ("vllm", True) == (info.value.engine, "connection broke" in info.value.message)

    @pytest.mark.parametrize(
        "frame",
        [b'{"choices":"nope"}', b'{"choices":[5]}', b'{"choices":[null]}'],
        ids=["choices-string", "choice-number", "choice-null"],
    )
    async def test_a_frame_of_an_unexpected_shape_is_a_malformed_frame(self, frame: bytes) -> None:
        """JSON that is not the shape the engine's protocol has fails the stream as a malformed
        frame naming the engine, after the tokens before it."""
        body = vllm_frames(b"a") + b"data: " + frame + b"\n\n"
        async with raw_engine(replies(fixed(body, extra=b"connection: close\r\n"))) as engine:
            adapter = adapter_for("vllm", f"http://127.0.0.1:{engine.port}", "m")
            tokens: list[str] = []
            try:
                with pytest.raises(WorkerInternal, match="vllm: malformed stream frame") as info:
                    async for event in adapter.submit(request(max_tokens=8)):
                        tokens += event.texts if event.kind == "tokens" else []
            finally:
                await adapter.aclose()
        assert ["a"] == tokens
        assert "unexpected shape" in info.value.message


class TestSentAtOnce:
    """``try_post`` / ``try_open`` / ``prestart``: a request written in the caller's own step."""

    async def test_try_post_writes_on_an_idle_connection_without_waiting(self) -> None:
        async with raw_engine(replies(fixed(b"ok"))) as engine:
            pool = pool_for(engine)
            assert pool.try_post("/x", b"", {}) is None  # nothing kept alive yet: post connects
            assert b"ok" == await body_of(await pool.post("/x", b"{}", {}))
            response = pool.try_post("/x", b"{}", {})
            assert response is not None and not response.head.done()
            await response.head
            assert b"ok" == await body_of(response)
            assert (1, 2) == (engine.connections, len(engine.requests))
            await pool.aclose()

    async def test_try_post_never_passes_a_waiting_post_nor_the_limit(self) -> None:
        release = asyncio.Event()
        async with raw_engine(gated(b"", release, fixed(b"ok"))) as engine:
            pool = pool_for(engine, max_connections=1)
            release.set()
            assert b"ok" == await body_of(await pool.post("/x", b"", {}))
            release.clear()
            first = pool.try_post("/x", b"", {})
            assert first is not None
            assert pool.try_post("/x", b"", {}) is None  # at max_connections
            waiting = asyncio.ensure_future(pool.post("/x", b"", {}))
            await asyncio.sleep(0)
            release.set()
            await first.head
            assert b"ok" == await body_of(first)
            assert pool.try_post("/x", b"", {}) is None  # the freed slot is the waiting post's
            assert b"ok" == await body_of(await waiting)
            await pool.aclose()

    async def test_a_discarded_request_closes_its_connection_and_counts_no_more(self) -> None:
        """A task canceled before its runner took the request: the engine sees the close (its
        cancel), the stream stops counting as in flight, and the next request connects anew."""
        second = asyncio.Event()

        async def answer(req: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
            if req is engine.requests[0]:
                w.write(fixed(b"ok"))
                await w.drain()
                return True
            second.set()  # the second request is never answered
            return not await r.read(1)  # the client closing ends this connection

        async with raw_engine(answer) as engine:
            upstream = build_upstream(
                HttpConfig(), base_url=f"http://127.0.0.1:{engine.port}", max_connections=2
            )
            first = await upstream.open_stream("/completion", b"{}", {})
            assert b"ok" == await first.read()
            await first.close()
            pending = upstream.try_open("/completion", b"{}", {})
            assert pending is not None and 1 == upstream.in_flight
            async with asyncio.timeout(10):
                await second.wait()
            pending.discard()
            pending.discard()  # once is enough
            await engine.disconnected(0)
            assert 0 == upstream.in_flight
            await upstream.aclose()

    async def test_a_prestarted_stream_is_read_through_the_adapter(self) -> None:
        frames = b"".join(
            b'data: {"choices": [{"index": 0, "text": "%s", "finish_reason": %s}]}\n\n' % (t, f)
            for t, f in ((b"a", b"null"), (b"b", b'"length"'))
        )
        answer = HEAD_CHUNKED + chunked(frames, b"data: [DONE]\n\n")
        async with raw_engine(replies(answer)) as engine:
            adapter = adapter_for("vllm", f"http://127.0.0.1:{engine.port}", "m")
            assert isinstance(adapter, HttpAdapter)
            try:
                runs: list[list[str]] = []
                for _ in range(2):  # the first connects; the second is sent at once
                    prestarted = adapter.prestart(request(max_tokens=2))
                    tokens: list[str] = []
                    async for event in adapter.submit(request(max_tokens=2), prestarted):
                        tokens += event.texts if event.kind == "tokens" else []
                    runs.append(tokens)
            finally:
                await adapter.aclose()
        assert [["a", "b"], ["a", "b"]] == runs
        assert (1, 2) == (engine.connections, len(engine.requests))
        assert engine.requests[0].body == engine.requests[1].body


def vllm_frames(*texts: bytes) -> bytes:
    return b"".join(
        b'data: {"choices": [{"index": 0, "text": "%s", "finish_reason": null}]}\n\n' % t
        for t in texts
    )


async def pushed(
    adapter: HttpAdapter, sink: Callable[[list[str], int], bool]
) -> list[tuple[str, object]]:
    """Run ``submit`` offering ``sink`` after ``started``, as the runner does; the events."""
    stream = adapter.submit(request(max_tokens=8))
    events: list[tuple[str, object]] = []
    sent = None
    try:
        while True:
            try:
                event = await stream.asend(sent)
            except StopAsyncIteration:
                return events
            events.append((event.kind, event.data.get("tokens_out")))
            sent = sink if event.kind == "started" else None
    finally:
        await stream.aclose()


class TestPushed:
    """A ``TokenSink`` sent in after ``started``: tokens from the connection's callback."""

    async def test_consume_hands_buffered_then_arriving_chunks_in_order(self) -> None:
        gate = asyncio.Event()
        two_parts = gated(HEAD_CHUNKED + b"1\r\na\r\n1\r\nb\r\n", gate, b"1\r\nc\r\n0\r\n\r\n")
        async with raw_engine(two_parts) as engine:
            pool = pool_for(engine)
            response = await pool.post("/x", b"", {})
            while response.received < 2:  # both early chunks buffered before consume
                await asyncio.sleep(0.01)
            seen: list[bytes] = []
            done = response.consume(lambda chunk: seen.append(chunk) is None)
            gate.set()
            await asyncio.wait_for(done, 10)
            assert [b"a", b"b", b"c"] == seen
            await response.close()
            assert 1 == pool.idle_connections  # read to its end: kept alive
            await pool.aclose()

    async def test_one_socket_read_reaches_the_consumer_as_one_piece(self) -> None:
        """Several HTTP chunks that arrive together (an engine faster than its reader) are
        handed over once, joined: one hand-over per read, not one per chunk."""
        gate = asyncio.Event()
        burst = gated(HEAD_CHUNKED, gate, b"1\r\na\r\n1\r\nb\r\n1\r\nc\r\n0\r\n\r\n")
        async with raw_engine(burst) as engine:
            pool = pool_for(engine)
            response = await pool.post("/x", b"", {})
            seen: list[bytes] = []
            done = response.consume(lambda chunk: seen.append(chunk) is None)
            gate.set()
            await asyncio.wait_for(done, 10)
            await response.close()
            await pool.aclose()
        assert b"abc" == b"".join(seen)
        assert len(seen) < 3  # on loopback one write is one read: [b"abc"]

    async def test_tokens_reach_the_sink_and_the_end_counts_them(self) -> None:
        body = chunked(vllm_frames(b"a"), vllm_frames(b"b", b"c"), b"data: [DONE]\n\n")
        got: list[tuple[list[str], int]] = []
        async with raw_engine(replies(HEAD_CHUNKED + body)) as engine:
            adapter = adapter_for("vllm", f"http://127.0.0.1:{engine.port}", "m")
            assert isinstance(adapter, HttpAdapter)
            try:
                events = await pushed(
                    adapter, lambda texts, index: got.append((texts, index)) is None
                )
            finally:
                await adapter.aclose()
        assert [(["a"], 0), (["b", "c"], 1)] == got
        assert [("started", None), ("end", 3)] == events  # no tokens events

    async def test_a_sink_that_wants_no_more_ends_the_stream_and_the_connection(self) -> None:
        closed = asyncio.Event()

        async def endless(_: Request, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> bool:
            frames = vllm_frames(b"a")
            w.write(HEAD_CHUNKED + b"%x\r\n%s\r\n" % (len(frames), frames))
            await w.drain()
            if not await r.read(1):
                closed.set()
            return False

        async with raw_engine(endless) as engine:
            adapter = adapter_for("vllm", f"http://127.0.0.1:{engine.port}", "m")
            assert isinstance(adapter, HttpAdapter)
            try:
                events = await pushed(adapter, lambda texts, index: False)
                async with asyncio.timeout(10):
                    await closed.wait()  # the engine's cancel signal
            finally:
                await adapter.aclose()
        assert [("started", None)] == events

    async def test_a_reset_after_two_tokens_still_hands_both_then_fails(self) -> None:
        frames = vllm_frames(b"a", b"b")
        got: list[str] = []
        async with raw_engine(resets_after(b"%x\r\n%s\r\n" % (len(frames), frames))) as engine:
            adapter = adapter_for("vllm", f"http://127.0.0.1:{engine.port}", "m")
            assert isinstance(adapter, HttpAdapter)
            try:
                with pytest.raises(WorkerReset):
                    await pushed(adapter, lambda texts, index: got.extend(texts) is None)
            finally:
                await adapter.aclose()
        assert ["a", "b"] == got
