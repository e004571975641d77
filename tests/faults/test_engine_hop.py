"""The engine hop under load: an engine slow to accept connections is waited for, within the
stream's deadline; an engine that refuses them fails at once."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from llama_orch.adapters._http import build_upstream, map_transport_errors
from llama_orch.config import HttpConfig
from llama_orch.errors import EngineUnreachable, WorkerUnavailable
from llama_orch.observability.redaction import Redactor

_ANSWER = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}"


@contextlib.contextmanager
def _backlogged_listener() -> Iterator[tuple[int, threading.Event]]:
    """A listener whose accept queue is full, so new connections wait in SYN_SENT (as when an
    engine's backlog overflows under a burst), until the event is set and it starts serving."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    # Fill the accept queue (one entry with a backlog of 0); the kernel then drops further
    # SYNs until the server accepts.
    fillers = [socket.create_connection(("127.0.0.1", port), timeout=5)]
    serve = threading.Event()

    def run() -> None:
        serve.wait()
        with contextlib.suppress(OSError):
            listener.settimeout(10)
            while True:
                conn, _ = listener.accept()
                threading.Thread(target=answer, args=(conn,), daemon=True).start()

    def answer(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            conn.sendall(_ANSWER)
            conn.recv(1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield port, serve
    finally:
        serve.set()
        listener.close()
        for filler in fillers:
            filler.close()


async def test_a_slow_to_accept_engine_is_waited_for_within_the_deadline() -> None:
    http = HttpConfig(connect_timeout_ms=100)
    with _backlogged_listener() as (port, serve):
        upstream = build_upstream(http, base_url=f"http://127.0.0.1:{port}", max_connections=4)
        loop = asyncio.get_running_loop()
        opening = asyncio.create_task(
            upstream.open_stream("/completion", b"{}", {}, deadline=loop.time() + 30)
        )
        # Event-driven: the engine starts accepting once the client has timed out connecting.
        for _ in range(3000):
            if upstream.connect_retries >= 1 or opening.done():
                break
            await asyncio.sleep(0.01)
        serve.set()
        response = await opening
        assert 200 == response.status
        assert upstream.connect_retries >= 1
        await response.close()
        await upstream.aclose()


async def test_a_refusing_engine_fails_at_once_without_retries() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    upstream = build_upstream(HttpConfig(), base_url=f"http://127.0.0.1:{port}", max_connections=4)
    loop = asyncio.get_running_loop()
    with pytest.raises(EngineUnreachable), map_transport_errors("llamacpp", "POST", Redactor()):
        await upstream.open_stream("/completion", b"{}", {}, deadline=loop.time() + 30)
    assert 0 == upstream.connect_retries
    await upstream.aclose()


async def test_an_engine_that_never_accepts_times_out_at_the_deadline() -> None:
    """Connect timeouts are tried again until the deadline, then surface as connecting timed
    out (the pool is unavailable, not the engine gone)."""
    http = HttpConfig(connect_timeout_ms=50)
    with _backlogged_listener() as (port, _):
        upstream = build_upstream(http, base_url=f"http://127.0.0.1:{port}", max_connections=4)
        loop = asyncio.get_running_loop()
        mapping = map_transport_errors("llamacpp", "POST", Redactor())
        with pytest.raises(WorkerUnavailable, match="connecting timed out") as info, mapping:
            await upstream.open_stream("/completion", b"{}", {}, deadline=loop.time() + 0.5)
        assert upstream.connect_retries >= 1
        assert 0 == upstream.in_flight
        await upstream.aclose()
    assert not isinstance(info.value, EngineUnreachable)
