"""SseResponse against a fake ASGI server: completion, disconnect, failed sends and stalls."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from llama_orch.server.sse import Outcome, SseResponse, encode_token


class FakeServer:
    """An ASGI server stand-in: records sends; can block them, fail them or disconnect."""

    def __init__(self, *, block_after: int | None = None, fail: bool = False) -> None:
        self.messages: list[dict[str, Any]] = []
        self.block_after = block_after
        self.fail = fail
        self.gone = asyncio.Event()

    async def send(self, message: dict[str, Any]) -> None:
        if self.fail and message["type"] == "http.response.body":
            raise OSError("connection reset")
        if self.block_after is not None and len(self.messages) >= self.block_after:
            await asyncio.Event().wait()
        self.messages.append(message)

    async def receive(self) -> dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.messages)


async def frames(count: int, delay: float = 0.0) -> AsyncGenerator[bytes, None]:
    for i in range(count):
        if delay:
            await asyncio.sleep(delay)
        yield encode_token("x", i)


async def run(
    response_chunks: AsyncGenerator[bytes, None],
    server: FakeServer,
    *,
    http_version: str = "1.1",
    stall_limit_s: float | None = None,
) -> tuple[list[Outcome], float]:
    outcomes: list[Outcome] = []
    response = SseResponse(
        response_chunks,
        headers={"Cache-Control": "no-cache"},
        on_end=outcomes.append,
        stall_limit_s=stall_limit_s,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    scope = {"type": "http", "http_version": http_version}
    await asyncio.wait_for(response(scope, server.receive, server.send), 5.0)  # type: ignore[arg-type]
    return outcomes, loop.time() - started


class TestSseResponse:
    async def test_complete_stream(self) -> None:
        """Every chunk is sent, the body is closed, and the outcome is COMPLETE."""
        server = FakeServer()
        outcomes, _ = await run(frames(3), server)
        assert [Outcome.COMPLETE] == outcomes
        assert b"".join(encode_token("x", i) for i in range(3)) == server.body
        assert False is server.messages[-1]["more_body"]

    async def test_the_end_is_known_before_the_body_ends(self) -> None:
        """A client that read the whole stream may open it again at once: what the end
        releases (the task's one subscription) is released before the body's last message."""
        server = FakeServer()
        seen: list[int] = []
        response = SseResponse(
            frames(2),
            headers={},
            on_end=lambda outcome: seen.append(len(server.messages)),
        )
        scope = {"type": "http", "http_version": "1.1"}
        await asyncio.wait_for(response(scope, server.receive, server.send), 5.0)  # type: ignore[arg-type]
        # start + two chunks were sent when the end was reported; the closing message after.
        assert [3] == seen and 4 == len(server.messages)
        assert False is server.messages[-1]["more_body"]

    async def test_headers_per_protocol(self) -> None:
        """HTTP/1.1 gets Connection: keep-alive; HTTP/2 never carries it."""
        headers = {}
        for version in ("1.1", "2"):
            server = FakeServer()
            await run(frames(1), server, http_version=version)
            headers[version] = dict(server.messages[0]["headers"])
        assert b"keep-alive" == headers["1.1"][b"connection"]
        assert b"connection" not in headers["2"]
        assert headers["2"][b"content-type"].startswith(b"text/event-stream")

    async def test_disconnect_ends_the_response(self) -> None:
        """A disconnect message stops the writer and reports DISCONNECT."""
        server = FakeServer()
        asyncio.get_running_loop().call_later(0.02, server.gone.set)
        outcomes, _ = await run(frames(10_000, delay=0.001), server)
        assert [Outcome.DISCONNECT] == outcomes
        # Ended by the disconnect, not by the frames running out: however slowly the machine
        # ran, the writer stopped short of them.
        assert server.body.count(b"event: token") < 10_000

    async def test_failed_send_is_a_disconnect(self) -> None:
        """A send that raises counts as the client going away."""
        outcomes, _ = await run(frames(3), FakeServer(fail=True))
        assert [Outcome.DISCONNECT] == outcomes

    async def test_stalled_writer_is_ended(self) -> None:
        """A send blocked past the stall limit ends the response with STALL."""
        server = FakeServer(block_after=2)
        outcomes, elapsed = await run(frames(100), server, stall_limit_s=0.05)
        assert [Outcome.STALL] == outcomes
        assert 0.05 <= elapsed  # not before the limit; the blocked send never returns by itself

    async def test_slow_producer_is_not_a_stall(self) -> None:
        """Waiting for frames is not a stall; only a blocked send is."""
        outcomes, _ = await run(frames(4, delay=0.03), FakeServer(), stall_limit_s=0.02)
        assert [Outcome.COMPLETE] == outcomes

    async def test_generator_is_closed(self) -> None:
        """The chunk generator's cleanup runs however the response ends."""
        closed = asyncio.Event()

        async def chunks() -> AsyncGenerator[bytes, None]:
            try:
                while True:
                    yield b": x\n\n"
                    await asyncio.sleep(0.001)
            finally:
                closed.set()

        server = FakeServer()
        asyncio.get_running_loop().call_later(0.01, server.gone.set)
        await run(chunks(), server)
        assert closed.is_set()
