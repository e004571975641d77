"""Explicit registry: engine -> adapter factory. The only list of concrete adapters.

A factory gets the pool's config, the replica's index and an ``AdapterContext`` with what the
composition root resolved for it (upstream API keys, and in tests an httpx transport). External
replicas of one pool share the pool's ``endpoint`` (for example a balancer in front of engines).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import httpx

from llama_orch.adapters._base import HttpAdapter
from llama_orch.adapters._http import build_upstream
from llama_orch.adapters.llamacpp import LlamaCppAdapter
from llama_orch.adapters.mock import MockEngine
from llama_orch.adapters.openai import OpenAIAdapter
from llama_orch.adapters.tgi import TgiAdapter
from llama_orch.adapters.triton import TritonAdapter
from llama_orch.adapters.vllm import VllmAdapter
from llama_orch.config import MockEngineConfig, PoolConfig
from llama_orch.contracts.engine import EngineAdapter
from llama_orch.vocab import Engine


@dataclass(frozen=True, slots=True)
class AdapterContext:
    #: pool id -> upstream API key (sent as a bearer token; never logged).
    api_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: Replaces the network for every client built (tests pass ``httpx.MockTransport``).
    transport: httpx.AsyncBaseTransport | None = None


AdapterBuilder = Callable[[PoolConfig, int, AdapterContext], EngineAdapter]


def _mock(pool: PoolConfig, _replica_index: int, _context: AdapterContext) -> EngineAdapter:
    return MockEngine(pool.mock or MockEngineConfig(), slots=pool.slots, model=pool.model)


def _http(cls: type[HttpAdapter]) -> AdapterBuilder:
    def build(pool: PoolConfig, _replica_index: int, context: AdapterContext) -> EngineAdapter:
        if pool.endpoint is None:
            raise LookupError(
                f"pool {pool.id!r}: engine {pool.engine.value} needs endpoint "
                "(provisioning.mode: external)"
            )
        key = context.api_keys.get(pool.id)
        headers = {"authorization": f"Bearer {key}"} if key else None
        client = build_upstream(
            pool.http,
            base_url=pool.endpoint,
            max_connections=pool.max_connections,
            headers=headers,
            transport=context.transport,
        )
        return cls(pool, client, api_key=key)

    return build


FACTORIES: dict[Engine, AdapterBuilder] = {
    Engine.MOCK: _mock,
    Engine.LLAMACPP: _http(LlamaCppAdapter),
    Engine.VLLM: _http(VllmAdapter),
    Engine.TGI: _http(TgiAdapter),
    Engine.TRITON: _http(TritonAdapter),
    Engine.OPENAI: _http(OpenAIAdapter),
}


def build_adapter(
    pool: PoolConfig, replica_index: int, context: AdapterContext | None = None
) -> EngineAdapter:
    try:
        factory = FACTORIES[pool.engine]
    except KeyError:
        raise LookupError(f"no adapter is available for engine {pool.engine.value}") from None
    return factory(pool, replica_index, context or AdapterContext())


def adapter_factory(context: AdapterContext) -> Callable[[PoolConfig, int], EngineAdapter]:
    """The ``(pool, replica_index) -> adapter`` callable the pool manager takes."""

    def build(pool: PoolConfig, replica_index: int) -> EngineAdapter:
        return build_adapter(pool, replica_index, context)

    return build
