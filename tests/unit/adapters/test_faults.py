"""Every fault of a fake engine maps to the right WorkerError, with the engine named."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llama_orch.contracts.engine import EngineEvent
from llama_orch.errors import (
    DecodeTimeout,
    WorkerError,
    WorkerInternal,
    WorkerInvalidParams,
    WorkerReset,
    WorkerUnavailable,
)
from llama_orch.testing.fake_engines import Behaviour, start_fake
from tests.unit.adapters.engine_support import (
    KINDS,
    Tok,
    adapter_for,
    collect,
    fake_and_adapter,
    per_token,
    request,
)

FAULTS: list[tuple[str, dict[str, Any], type[WorkerError], str]] = [
    ("http 500", {"fail_status": 500}, WorkerInternal, "INTERNAL"),
    ("http 503", {"fail_status": 503}, WorkerUnavailable, "POOL_UNAVAILABLE"),
    ("http 400", {"fail_status": 400}, WorkerInvalidParams, "INVALID_PARAMS"),
    ("hang before first token", {"hang_before_first_token": True}, DecodeTimeout, "DECODE_TIMEOUT"),
    ("stall mid-stream", {"stall_after": 2}, DecodeTimeout, "DECODE_TIMEOUT"),
    ("close mid-stream", {"close_after": 2}, WorkerReset, "WORKER_RESET"),
    ("malformed frame", {"malformed_after": 2}, WorkerInternal, "INTERNAL"),
    ("in-stream error event", {"error_after": 2}, WorkerInternal, "INTERNAL"),
]


async def run_until_error(kind: str, behaviour: Behaviour) -> tuple[list[EngineEvent], WorkerError]:
    events: list[EngineEvent] = []
    async with fake_and_adapter(kind, behaviour, read_timeout_ms=150) as (_, adapter):
        with pytest.raises(WorkerError) as info:
            async for event in adapter.submit(request(max_tokens=10)):
                events.append(event)
    return events, info.value


@pytest.mark.parametrize("kind", KINDS)
class TestFaultMapping:
    @pytest.mark.parametrize(
        ("fault", "behaviour", "error", "code"), FAULTS, ids=[f[0] for f in FAULTS]
    )
    async def test_fault(
        self,
        kind: str,
        fault: str,
        behaviour: dict[str, Any],
        error: type[WorkerError],
        code: str,
    ) -> None:
        """The fault surfaces as its WorkerError, whose envelope carries code and engine."""
        events, exc = await run_until_error(kind, Behaviour(**behaviour))
        assert error is type(exc)
        assert (code, kind) == (exc.envelope()["code"], exc.envelope()["engine"])
        streamed = [e for e in per_token(events) if e.kind == "token"]
        if "after" in next(iter(behaviour)):
            assert 2 == len(streamed)  # tokens before the fault still arrived, in order

    async def test_refused_connection(self, kind: str) -> None:
        """An engine that refuses connections is unavailable for probes and submissions."""
        async with start_fake(kind, listening=False) as fake:
            adapter = adapter_for(kind, fake.url, fake.model)
            try:
                with pytest.raises(WorkerUnavailable) as probe:
                    await adapter.health()
                with pytest.raises(WorkerUnavailable):
                    await collect(adapter, request())
            finally:
                await adapter.aclose()
        assert "cannot connect" in probe.value.message


class TestEngineSpecificFaults:
    async def test_llamacpp_loading_is_live_not_ready(self) -> None:
        """llama.cpp's 503 "Loading model" reads as live but not ready, with the reason."""
        async with fake_and_adapter("llamacpp") as (fake, adapter):
            fake.behaviour.loading = True
            health = await adapter.health()
        assert (True, False, "Loading model") == (health.live, health.ready, health.detail)

    async def test_llamacpp_slot_wait_hits_the_first_byte_timeout(self) -> None:
        """With its only slot busy, llama.cpp holds headers back; establishment times out."""
        slow = Behaviour(tokens_per_s=20)
        async with fake_and_adapter("llamacpp", slow, first_byte_timeout_ms=150) as (_, adapter):
            busy = adapter.submit(request(task_id="t-busy", max_tokens=500))
            await anext(busy)  # type: ignore[arg-type]
            with pytest.raises(DecodeTimeout) as info:
                await collect(adapter, request(task_id="t-2"))
            await busy.aclose()  # type: ignore[attr-defined]
        assert "first_byte_timeout_ms (150 ms)" in info.value.message

    async def test_mid_stream_silence_is_the_read_timeout_never_earlier(self) -> None:
        """A stream that stalls fails as DECODE_TIMEOUT, once read_timeout_ms of silence has
        passed since its last token, not before; the stream was read through the lean
        HTTP/1.1 client, whose own timer watches the silence."""
        stall = Behaviour(stall_after=2)
        async with fake_and_adapter("vllm", stall, read_timeout_ms=200) as (_, adapter):
            assert "h1" == adapter.upstream.streams_via
            last_read = 0.0
            with pytest.raises(DecodeTimeout) as info:
                async for _event in adapter.submit(request(max_tokens=10)):
                    last_read = asyncio.get_running_loop().time()
            silent_for = asyncio.get_running_loop().time() - last_read
        assert silent_for >= 0.2
        assert "went silent past the read timeout" in info.value.message

    async def test_llamacpp_context_overflow_is_invalid_params(self) -> None:
        """A prompt over the context is the engine's 400, so INVALID_PARAMS for the client."""
        async with fake_and_adapter("llamacpp") as (_, adapter):
            with pytest.raises(WorkerInvalidParams) as info:
                await collect(adapter, request(prompt="x" * 20_000))
        assert "exceeds the available context size" in info.value.message

    async def test_llamacpp_seed_out_of_range_is_refused(self) -> None:
        """A seed llama.cpp cannot represent is refused rather than silently changed."""
        async with fake_and_adapter("llamacpp") as (fake, adapter):
            with pytest.raises(WorkerInvalidParams):
                await collect(adapter, request(seed=2**40))
            assert [] == [r for r in fake.requests if r.path == "/completion"]

    async def test_tgi_validation_event_is_invalid_params(self) -> None:
        """TGI reports validation in a 200 stream; it still maps to INVALID_PARAMS."""
        async with fake_and_adapter("tgi") as (_, adapter):
            with pytest.raises(WorkerInvalidParams) as info:
                await collect(adapter, request(max_tokens=100_000))
        assert "validation" in info.value.message

    async def test_tgi_special_end_token_is_not_text(self) -> None:
        """TGI's final </s> event ends the stream without adding text."""
        async with fake_and_adapter("tgi", Behaviour(eos_at=3)) as (_, adapter):
            events = await collect(adapter, request())
        assert ["token"] * 3 == [e.kind for e in events if isinstance(e, Tok)]
        assert ("eos", 3) == (events[-1].data["finish_reason"], events[-1].data["tokens_out"])

    async def test_llamacpp_empty_content_is_skipped(self) -> None:
        """llama.cpp's held-back empty-content partials never become empty tokens."""
        async with fake_and_adapter("llamacpp", Behaviour(eos_at=4)) as (_, adapter):
            events = await collect(adapter, request())
        tokens = [e.text for e in events if isinstance(e, Tok)]
        assert (4, "eos") == (len(tokens), events[-1].data["finish_reason"])
        assert all(tokens)

    async def test_vllm_unknown_model_is_not_retriable(self) -> None:
        """A model the engine does not serve is POOL_UNAVAILABLE and not worth retrying."""
        async with start_fake("vllm") as fake:
            adapter = adapter_for("vllm", fake.url, "other-model")
            try:
                with pytest.raises(WorkerUnavailable) as info:
                    await collect(adapter, request())
            finally:
                await adapter.aclose()
        assert (False, "vllm") == (info.value.retriable, info.value.engine)

    async def test_openai_rejected_key(self) -> None:
        """A key the upstream refuses makes health not ready and submissions unavailable."""
        async with start_fake("openai", api_key="sk-the-right-key-000000") as fake:
            adapter = adapter_for("openai", fake.url, fake.model, key="sk-wrong-key-1111111")
            try:
                health = await adapter.health()
                with pytest.raises(WorkerUnavailable) as info:
                    await collect(adapter, request())
            finally:
                await adapter.aclose()
        assert (True, False) == (health.live, health.ready)
        assert (False, "401") == (info.value.retriable, info.value.message.split("HTTP ")[1][:3])

    async def test_triton_truncation_without_finish_is_reset(self) -> None:
        """Triton has no [DONE]; with finish reasons on, EOF before the last one is a reset."""
        async with fake_and_adapter("triton", Behaviour(close_after=3)) as (_, adapter):
            with pytest.raises(WorkerReset):
                await collect(adapter, request())

    async def test_nothing_after_the_terminal_event_counts(self) -> None:
        """Bytes after the terminal event are drained, not turned into tokens or errors."""
        async with fake_and_adapter("vllm") as (fake, adapter):
            first = await collect(adapter, request())
            second = await asyncio.wait_for(collect(adapter, request()), 5)
        assert [getattr(e, "text", e.kind) for e in first] == [
            getattr(e, "text", e.kind) for e in second
        ]
        assert 2 == len(fake.requests)
