"""A pool whose replicas disagree on versions refuses to become Ready (OC-CORE-1031)."""

from __future__ import annotations

from llama_orch.adapters.host import AdapterHost
from llama_orch.adapters.mock import MockEngine
from llama_orch.config import MockEngineConfig, PoolConfig
from llama_orch.contracts.engine import EngineAdapter
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.gpus import simulated_inventory
from llama_orch.pool.manager import PoolManager, ReplicaState
from tests.support.server import config_of, mock_pool


def versions_by_index(*versions: str):  # type: ignore[no-untyped-def]
    def factory(pool: PoolConfig, index: int) -> EngineAdapter:
        config = MockEngineConfig(engine_version=versions[index])
        return MockEngine(config, slots=pool.slots, model=pool.model)

    return factory


async def started(*versions: str) -> PoolManager:
    config = config_of(mock_pool(replicas=len(versions)))
    manager = PoolManager(
        config.pools,
        simulated_inventory(config.gpus.simulated or []),
        AdapterHost(),
        versions_by_index(*versions),
        Metrics(),
        probe_interval_s=60,
    )
    await manager.start()
    return manager


class TestReplicaSetReadiness:
    async def test_mixed_engine_versions_keep_the_pool_unready(self) -> None:
        """Each replica passes its gates, but the pool is not Ready and says why."""
        manager = await started("mock-1.0", "mock-2.0")
        try:
            pool = manager.pools["p0"]
            assert [ReplicaState.READY, ReplicaState.READY] == [r.state for r in pool.replicas]
            assert not pool.ready
            assert pool.last_error is not None
            assert "engine_version (mock-1.0: r0; mock-2.0: r1)" in pool.last_error
            assert not manager.snapshot("p0").ready
        finally:
            await manager.stop()

    async def test_agreeing_versions_are_ready(self) -> None:
        """Replicas on one version form one set, and the pool is Ready."""
        manager = await started("mock-1.0", "mock-1.0")
        try:
            assert manager.pools["p0"].ready
            assert None is manager.pools["p0"].last_error
        finally:
            await manager.stop()
