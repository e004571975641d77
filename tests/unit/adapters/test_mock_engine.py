from __future__ import annotations

import asyncio

import pytest

from llama_orch.adapters.mock import MockEngine, mock_tokens
from llama_orch.config import MockEngineConfig
from llama_orch.contracts.engine import EngineAdapter, EngineEvent, GenerateRequest
from llama_orch.errors import WorkerInternal, WorkerReset


def request(**kw: object) -> GenerateRequest:
    base: dict[str, object] = {
        "task_id": "t1",
        "prompt": "hi",
        "max_tokens": 8,
        "model": "m",
        "seed": 1,
    }
    base.update(kw)
    return GenerateRequest(**base)  # type: ignore[arg-type]


def engine(**kw: object) -> MockEngine:
    cfg = MockEngineConfig.model_validate({"ttft_ms": 0, "tokens_per_s": 10_000, **kw})
    return MockEngine(cfg, slots=2, model="m")


async def collect(eng: MockEngine, req: GenerateRequest) -> list[EngineEvent]:
    return [event async for event in eng.submit(req)]


class TestMockEngine:
    def test_implements_the_adapter_interface(self) -> None:
        """The mock sits behind the same interface as real engines."""
        assert isinstance(engine(), EngineAdapter)

    def test_output_is_deterministic_per_key(self) -> None:
        """Same prompt, seed and parameters give the same tokens; another seed differs."""
        assert mock_tokens(request()) == mock_tokens(request())
        assert mock_tokens(request()) != mock_tokens(request(seed=2))
        assert mock_tokens(request()) != mock_tokens(request(temperature=0.5))

    def test_stop_sequence_ends_early(self) -> None:
        """A stop sequence ends generation before the text that contains it."""
        full = mock_tokens(request(max_tokens=30))
        stop = full[3].strip()
        tokens = mock_tokens(request(max_tokens=30, stop=(stop,)))
        assert stop not in "".join(tokens)

    async def test_stream_order(self) -> None:
        """started, then tokens indexed 0..n-1, then end with the count."""
        events = await collect(engine(), request(max_tokens=4))
        assert ["started", "tokens", "tokens", "tokens", "tokens", "end"] == [
            e.kind for e in events
        ]
        assert [0, 1, 2, 3] == [
            i for e in events if e.kind == "tokens" for i in range(e.index, e.index + len(e.texts))
        ]
        assert 4 == events[-1].data["tokens_out"]
        assert events[0].data["simulated"] is True

    async def test_fail_at_token(self) -> None:
        """fail_at_token emits that many tokens, then raises the chosen WorkerError."""
        eng = engine(fail_at_token=2)
        seen: list[EngineEvent] = []
        with pytest.raises(WorkerInternal):
            async for event in eng.submit(request()):
                seen.append(event)
        assert 2 == sum(len(e.texts) for e in seen)

    async def test_reset_at_token(self) -> None:
        """reset_at_token raises WorkerReset mid-stream."""
        with pytest.raises(WorkerReset):
            await collect(engine(reset_at_token=1), request())

    async def test_hang_until_closed(self) -> None:
        """hang_after_token stalls until the consumer gives up, and the close is recorded."""
        eng = engine(hang_after_token=1)
        stream = eng.submit(request())
        kinds = [(await anext(stream)).kind, (await anext(stream)).kind]
        assert ["started", "tokens"] == kinds
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await anext(stream)
        await stream.aclose()
        assert ["t1"] == eng.canceled

    async def test_health_and_props_are_labelled_simulated(self) -> None:
        """Props say simulated and report the configured capacity."""
        eng = engine(ready=False)
        health = await eng.health()
        props = await eng.props()
        assert (True, False) == (health.live, health.ready)
        assert (True, 2, 8192) == (props.simulated, props.slots_total, props.ctx_max)
