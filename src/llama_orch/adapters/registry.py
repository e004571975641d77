"""Explicit registry: engine -> adapter factory. The only list of concrete adapters."""

from __future__ import annotations

from collections.abc import Callable

from llama_orch.adapters.mock import MockEngine
from llama_orch.config import MockEngineConfig, PoolConfig
from llama_orch.contracts.engine import EngineAdapter
from llama_orch.vocab import Engine

AdapterBuilder = Callable[[PoolConfig, int], EngineAdapter]


def _mock(pool: PoolConfig, _replica_index: int) -> EngineAdapter:
    return MockEngine(pool.mock or MockEngineConfig(), slots=pool.slots, model=pool.model)


FACTORIES: dict[Engine, AdapterBuilder] = {
    Engine.MOCK: _mock,
}


def build_adapter(pool: PoolConfig, replica_index: int) -> EngineAdapter:
    try:
        factory = FACTORIES[pool.engine]
    except KeyError:
        raise LookupError(f"no adapter is available for engine {pool.engine.value}") from None
    return factory(pool, replica_index)
