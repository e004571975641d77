"""Each adapter maps seed, max_tokens, sampling and stop onto its engine's own field names."""

from __future__ import annotations

import email.utils
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from llama_orch.adapters._base import quote
from llama_orch.adapters._errors import RETRY_AFTER_MAX_S, retry_after_ms
from llama_orch.observability.redaction import Redactor
from llama_orch.testing.fake_engines import start_fake
from llama_orch.vocab import DeterminismLevel
from tests.unit.adapters.engine_support import adapter_for, collect, fake_and_adapter, request

SAMPLED = {
    "seed": 11,
    "max_tokens": 5,
    "temperature": 0.7,
    "top_p": 0.9,
    "top_k": 40,
    "repeat_penalty": 1.1,
    "stop": ("\n\n",),
}

EXPECTED: dict[str, dict[str, Any]] = {
    "llamacpp": {
        "n_predict": 5,
        "seed": 11,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "repeat_penalty": 1.1,
        "stop": ["\n\n"],
        "stream": True,
    },
    "vllm": {
        "max_tokens": 5,
        "seed": 11,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "stop": ["\n\n"],
        "stream": True,
        "model": "tiny",
    },
    "tgi": {
        "max_new_tokens": 5,
        "seed": 11,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "stop": ["\n\n"],
        "do_sample": True,
        "details": True,
    },
    "triton": {
        "max_tokens": 5,
        "seed": 11,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 40,
        "repetition_penalty": 1.1,
        "stop": ["\n\n"],
        "stream": True,
        "exclude_input_in_output": True,
        "return_finish_reason": True,
    },
    "openai": {
        "max_completion_tokens": 5,
        "seed": 11,
        "temperature": 0.7,
        "top_p": 0.9,
        "stop": ["\n\n"],
        "stream": True,
        "model": "tiny",
    },
}


def sent_params(kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """The generation parameters wherever the engine expects them."""
    if kind == "tgi":
        return dict(body["parameters"])
    if kind == "triton":
        return dict(body["parameters"])
    return {k: v for k, v in body.items() if k not in ("prompt", "messages", "stream_options")}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
class TestParameterMapping:
    async def test_sampled_request(self, kind: str) -> None:
        """Every parameter the engine takes is sent under its name, nothing silently dropped."""
        async with fake_and_adapter(kind) as (fake, adapter):
            events = await collect(adapter, request(**SAMPLED))
        assert EXPECTED[kind] == sent_params(kind, fake.requests[-1].body)
        if kind == "openai":  # what OpenAI cannot take is reported, not silently dropped
            assert ["top_k", "repeat_penalty"] == events[0].data["unsupported_params"]

    async def test_greedy_request(self, kind: str) -> None:
        """temperature 0 is greedy everywhere; TGI gets no sampling fields at all."""
        async with fake_and_adapter(kind) as (fake, adapter):
            await collect(adapter, request(temperature=0.0, top_p=1.0, top_k=0))
        params = sent_params(kind, fake.requests[-1].body)
        if kind == "tgi":
            assert ({"max_new_tokens", "seed", "do_sample", "details"}, False) == (
                set(params),
                params["do_sample"],
            )
        else:
            assert 0.0 == params["temperature"]

    async def test_strict_determinism_is_noted(self, kind: str) -> None:
        """A strict task says which engine settings strict determinism needs (or, for OpenAI,
        carries no promise)."""
        options = {"slots": 2} if kind == "llamacpp" else None
        async with fake_and_adapter(kind, fake_options=options) as (fake, adapter):
            events = await collect(adapter, request(determinism=DeterminismLevel.STRICT))
        started = events[0].data
        if kind == "openai":
            assert "determinism" not in started
        else:
            assert "strict" == started["determinism"]
        if kind == "llamacpp":
            assert False is fake.requests[-1].body["cache_prompt"]
            assert "runs 2 slots" in started["determinism_note"]
            assert "--parallel 1 --no-cont-batching" in started["determinism_note"]


class TestRoutes:
    async def test_llamacpp_tasks_back_to_back_all_stream(self) -> None:
        """llama-server (and its fake) closes the connection after a streamed /completion
        although its headers say keep-alive; the adapter asks for that close, so each of a run
        of back-to-back tasks, with probes beside them, gets a fresh connection and streams."""
        async with fake_and_adapter("llamacpp") as (fake, adapter):
            for _ in range(20):
                events = await collect(adapter, request(max_tokens=2))
                assert "end" == events[-1].kind
                await adapter.health()
        generations = [r for r in fake.requests if r.path == "/completion"]
        assert 20 * [("close", True)] == [
            (r.headers.get("connection"), r.completed) for r in generations
        ]

    async def test_vllm_chat_route(self) -> None:
        """upstream_api: chat sends the prompt as one user message to chat completions."""

        async with start_fake("vllm") as fake:
            adapter = adapter_for("vllm", fake.url, fake.model, upstream_api="chat")
            try:
                events = await collect(adapter, request(max_tokens=4))
            finally:
                await adapter.aclose()
        record = fake.requests[-1]
        assert ("/v1/chat/completions", [{"role": "user", "content": "hello wörld"}]) == (
            record.path,
            record.body["messages"],
        )
        assert 4 == events[-1].data["tokens_out"]


class TestRetryAfter:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("7", 7000),
            (" 30 ", 30_000),
            ("9" * 5000, RETRY_AFTER_MAX_S * 1000),
            ("4000000000", RETRY_AFTER_MAX_S * 1000),
            ("-5", None),
            ("²", None),
            ("soon", None),
            ("Wed, 21 Oct 2015 07:28:00 GMT", 0),
        ],
    )
    def test_engine_retry_after(self, value: str, expected: int | None) -> None:
        assert expected == retry_after_ms({"retry-after": value})

    def test_an_http_date_counts_from_now(self) -> None:
        when = email.utils.format_datetime(datetime.now(UTC) + timedelta(seconds=90), True)
        ms = retry_after_ms({"retry-after": when})
        assert ms is not None and 80_000 < ms <= 90_000


class TestQuote:
    def test_an_engines_long_text_is_cut_and_marked(self) -> None:
        quoted = quote("busy " + "x" * 100_000, Redactor())
        assert quoted.startswith("busy xxx") and quoted.endswith(" [cut]")
        assert len(quoted) < 400

    def test_a_secret_across_the_cut_is_redacted_whole(self) -> None:
        secret = "sk-" + "s" * 60
        quoted = quote("y" * 280 + secret + "z" * 2000, Redactor().with_secret(secret))
        assert "sss" not in quoted

    def test_short_text_is_only_redacted(self) -> None:
        assert "model loading" == quote("model loading", Redactor())
