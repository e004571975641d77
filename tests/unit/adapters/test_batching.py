"""Batched token events: one ``tokens`` event per upstream read, same order and indices."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from llama_orch.adapters._base import HttpAdapter
from llama_orch.adapters.host import AdapterHost
from llama_orch.contracts.engine import EngineEvent
from llama_orch.errors import WorkerError
from tests.unit.adapters.engine_support import adapter_for, request


def frame(text: str) -> bytes:
    return b'data: {"content":"%s","stop":false}\n\n' % text.encode()


STOP = b'data: {"content":"","stop":true,"stop_type":"eos"}\n\n'
ERROR = b'data: {"error":{"code":500,"message":"boom"}}\n\n'


class Chunks(httpx.AsyncByteStream):
    """The response body as the given reads, one ``aiter_bytes`` chunk each."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk


def llamacpp(chunks: list[bytes]) -> HttpAdapter:
    def handler(_request: httpx.Request) -> httpx.Response:
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, headers=headers, stream=Chunks(chunks))

    adapter = adapter_for("llamacpp", "http://e", "m", transport=httpx.MockTransport(handler))
    assert isinstance(adapter, HttpAdapter)
    return adapter


READS = [
    frame("a") + frame("b") + frame("c"),
    frame("d"),
    frame("e") + frame("f") + STOP,
]


class TestBatches:
    async def test_one_tokens_event_per_read_with_running_indices(self) -> None:
        """Each read's tokens arrive as one event; ``index`` is its first token's index."""
        events = [e async for e in llamacpp(READS).submit(request())]
        batches = [(e.index, list(e.texts)) for e in events if e.kind == "tokens"]
        assert [(0, ["a", "b", "c"]), (3, ["d"]), (4, ["e", "f"])] == batches
        assert ["started", "tokens", "tokens", "tokens", "end"] == [e.kind for e in events]

    async def test_tokens_before_an_error_frame_still_count(self) -> None:
        """An error frame mid-read ends the stream after the tokens read before it."""
        seen: list[EngineEvent] = []
        with pytest.raises(WorkerError):
            async for event in llamacpp([frame("a") + frame("b") + ERROR]).submit(request()):
                seen.append(event)
        assert [(0, ["a", "b"])] == [(e.index, list(e.texts)) for e in seen if e.texts]

    async def test_the_host_relays_batches(self) -> None:
        """The adapter host passes the batched events on unchanged."""
        host = AdapterHost()
        host.bind("p", "r0", llamacpp(READS))
        texts: list[str] = []
        async for event in host.submit("p", "r0", request()):
            texts += event.texts
        assert list("abcdef") == texts

    async def test_the_lease_ends_with_the_stream(self) -> None:
        """A stream counts as in flight while open, and stops counting when closed early."""
        adapter = llamacpp(READS)
        stream = adapter.submit(request())
        await anext(stream)
        assert 1 == adapter.upstream.in_flight
        await stream.aclose()
        assert 0 == adapter.upstream.in_flight
