"""Every engine adapter against its fake engine: the adapter interface, stream order, cancel."""

from __future__ import annotations

import asyncio

import pytest

from llama_orch.contracts.engine import EngineAdapter
from llama_orch.testing.fake_engines import Behaviour, generate
from tests.unit.adapters.engine_support import KINDS, Tok, collect, fake_and_adapter, request

VERSIONS = {
    "llamacpp": "b0-simulated",
    "vllm": "0.33.0+simulated",
    "tgi": "3.3.6+simulated",
    "triton": "2.61.0",
    "openai": "openai-compatible/tiny",
}
CTX = {"llamacpp": 4096, "vllm": 4096, "tgi": 4096, "triton": None, "openai": None}


@pytest.mark.parametrize("kind", KINDS)
class TestConformance:
    async def test_implements_the_interface(self, kind: str) -> None:
        """The adapter satisfies the EngineAdapter protocol and names its engine."""
        async with fake_and_adapter(kind) as (_, adapter):
            assert isinstance(adapter, EngineAdapter)
            assert kind == adapter.engine.value

    async def test_health_ready(self, kind: str) -> None:
        """A running engine is live and ready."""
        async with fake_and_adapter(kind) as (_, adapter):
            health = await adapter.health()
        assert (True, True) == (health.live, health.ready)

    async def test_version_and_props(self, kind: str) -> None:
        """The engine's own version and context limit come back from its endpoints."""
        async with fake_and_adapter(kind) as (_fake, adapter):
            version = await adapter.engine_version()
            props = await adapter.props()
        assert VERSIONS[kind] == version
        assert CTX[kind] == props.ctx_max
        assert props.features["streaming"]

    async def test_stream_order(self, kind: str) -> None:
        """started, then tokens indexed 0..n-1 with the engine's text, then end with the count."""
        async with fake_and_adapter(kind) as (_, adapter):
            events = await collect(adapter, request(max_tokens=9))
        kinds = [e.kind for e in events]
        assert ["started", *["token"] * 9, "end"] == kinds
        assert list(range(9)) == [e.index for e in events if isinstance(e, Tok)]
        greedy = 0.0 if kind == "tgi" else None  # TGI without sampling fields is greedy
        expected = generate("hello wörld", 7, 9, temperature=greedy).tokens
        assert list(expected) == [e.text for e in events if isinstance(e, Tok)]
        assert (9, "length") == (events[-1].data["tokens_out"], events[-1].data["finish_reason"])

    async def test_split_frames_decode_the_same(self, kind: str) -> None:
        """Frames written in 1-3 byte pieces (splitting UTF-8) give the same tokens."""
        async with fake_and_adapter(kind) as (fake, adapter):
            whole = await collect(adapter, request())
            fake.behaviour.split_frames = True
            split = await collect(adapter, request())
        assert [getattr(e, "text", e.kind) for e in whole] == [
            getattr(e, "text", e.kind) for e in split
        ]

    async def test_stop_sequence(self, kind: str) -> None:
        """A stop sequence is sent upstream and ends generation before its text."""
        full = "".join(generate("hello wörld", 7, 30).tokens)
        stop = full.split(" ")[3]
        async with fake_and_adapter(kind) as (_fake, adapter):
            events = await collect(adapter, request(max_tokens=30, temperature=0.7, stop=(stop,)))
        text = "".join(e.text for e in events if isinstance(e, Tok))
        assert stop not in text
        assert "stop" == events[-1].data["finish_reason"]

    async def test_closing_the_stream_cancels_upstream(self, kind: str) -> None:
        """Closing the submit iterator mid-stream closes the request; the fake sees it close."""
        async with fake_and_adapter(kind, Behaviour(tokens_per_s=100)) as (fake, adapter):
            stream = adapter.submit(request(max_tokens=1000))
            async for event in stream:
                if event.kind == "tokens":
                    break
            await stream.aclose()
            await adapter.cancel("t-1")  # best effort, harmless after the close
            record = fake.requests[-1]
            # The fake's 1000 tokens take 10 s: closed early, not completed, proves the close
            # reached it; the bound only limits how long a failure takes on a loaded machine.
            await asyncio.wait_for(record.done.wait(), 30)
        assert (True, False) == (record.closed_early, record.completed)
