"""The supervisor's start-up probe of a launched engine's health endpoint against engines that
answer it in hostile ways (a real loopback server speaking raw HTTP/1.1)."""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from llama_orch.pool.engine_process import _loaded

Answer = Callable[[asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            try:
                await answer(writer)
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/health"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


async def _endless(writer: asyncio.StreamWriter) -> None:
    """200, then a body that never ends, as fast as the reader takes it."""
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    while True:
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()


async def _drip(writer: asyncio.StreamWriter) -> None:
    """503, then one byte of body every 0.2 s: each read is quick, the answer never ends."""
    writer.write(b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n")
    while True:
        writer.write(b"1\r\nx\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)


async def test_an_endless_healthy_answer_is_not_read(
    serve: Callable[[Answer], Awaitable[str]],
) -> None:
    """Its status says enough: the body is not read, so it costs no memory."""
    url = await serve(_endless)
    async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
        tracemalloc.start()
        try:
            async with asyncio.timeout(30):  # a guard: the probe returns long before
                assert await _loaded(client, url)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert peak < 4_000_000


async def test_a_dripping_answer_does_not_hold_the_probe(
    serve: Callable[[Answer], Awaitable[str]],
) -> None:
    """An engine that never finishes its answer must not stall its supervision (the start-up
    timeout is checked between probes)."""
    url = await serve(_drip)
    async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
        async with asyncio.timeout(30):  # a guard: the probe returns long before
            assert not await _loaded(client, url)


async def _drip_headers(writer: asyncio.StreamWriter) -> None:
    """A status line, then one header byte every 0.2 s: the answer never gets to its end."""
    writer.write(b"HTTP/1.1 200 OK\r\n")
    while True:
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.2)


async def test_dripping_headers_do_not_hold_the_probe(
    serve: Callable[[Answer], Awaitable[str]],
) -> None:
    url = await serve(_drip_headers)
    async with httpx.AsyncClient(timeout=1.0, trust_env=False) as client:
        async with asyncio.timeout(30):  # a guard: the probe gives up long before
            assert not await _loaded(client, url)
