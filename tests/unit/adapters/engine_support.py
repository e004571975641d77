"""Shared helpers: an adapter of each kind pointed at a running fake engine."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any, NamedTuple

import httpx

from llama_orch.adapters.registry import AdapterContext, build_adapter
from llama_orch.config import PoolConfig
from llama_orch.contracts.engine import EngineAdapter, EngineEvent, GenerateRequest
from llama_orch.testing.fake_engines import Behaviour, FakeEngine, start_fake

KINDS = ["llamacpp", "vllm", "tgi", "triton", "openai"]
KEY = "sk-unit-test-key-00000000"


def pool_for(kind: str, url: str, model: str, **overrides: Any) -> PoolConfig:
    raw: dict[str, Any] = {
        "id": f"{kind}-pool",
        "engine": kind,
        "model": model,
        "endpoint": url,
        "provisioning": {"mode": "external"},
        "http": {"probe_timeout_ms": 2000},
    }
    raw.update(overrides)
    return PoolConfig.model_validate(raw)


def adapter_for(
    kind: str,
    url: str,
    model: str,
    *,
    key: str | None = KEY,
    transport: httpx.AsyncBaseTransport | None = None,
    **overrides: Any,
) -> EngineAdapter:
    pool = pool_for(kind, url, model, **overrides)
    keys = {pool.id: key} if key else {}
    return build_adapter(pool, 0, AdapterContext(api_keys=keys, transport=transport))


def request(**kw: Any) -> GenerateRequest:
    base: dict[str, Any] = {
        "task_id": "t-1",
        "prompt": "hello wörld",
        "max_tokens": 8,
        "model": "m",
        "seed": 7,
    }
    base.update(kw)
    return GenerateRequest(**base)


class Tok(NamedTuple):
    """One token of a ``tokens`` event, for tests that reason token by token."""

    kind: str
    text: str
    index: int


def per_token(events: list[EngineEvent]) -> list[EngineEvent | Tok]:
    """The events with every ``tokens`` batch spread into one ``Tok`` per token."""
    out: list[EngineEvent | Tok] = []
    for event in events:
        if event.kind == "tokens":
            out += [Tok("token", t, event.index + k) for k, t in enumerate(event.texts)]
        else:
            out.append(event)
    return out


async def collect(adapter: EngineAdapter, req: GenerateRequest) -> list[EngineEvent | Tok]:
    """The whole stream, token by token (batch boundaries depend on reads, not on engines)."""
    return per_token([event async for event in adapter.submit(req)])


@contextlib.asynccontextmanager
async def fake_and_adapter(
    kind: str,
    behaviour: Behaviour | None = None,
    fake_options: dict[str, Any] | None = None,
    **http: Any,
) -> AsyncIterator[tuple[FakeEngine, EngineAdapter]]:
    """A fake of ``kind`` and an adapter pointed at it; ``http`` overrides the pool's http."""
    options: dict[str, Any] = {"behaviour": behaviour, **(fake_options or {})}
    if kind == "openai":
        options["api_key"] = KEY
    async with start_fake(kind, **options) as fake:
        overrides: dict[str, Any] = {}
        if http:
            overrides["http"] = {"probe_timeout_ms": 2000, **http}
        adapter = adapter_for(kind, fake.url, fake.model, **overrides)
        try:
            await adapter.props()  # as the pool manager does before Ready
            yield fake, adapter
        finally:
            await adapter.aclose()
