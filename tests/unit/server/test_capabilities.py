"""/v1/capabilities from the adapter host's capability cache (ORCH-3603, ORCH-3095)."""

from __future__ import annotations

from dataclasses import replace

from llama_orch.adapters.host import AdapterHost
from llama_orch.adapters.mock import MockEngine
from llama_orch.config import Config, MockEngineConfig, PoolConfig
from llama_orch.contracts.engine import EngineAdapter, WorkerProps
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.gpus import simulated_inventory
from llama_orch.pool.manager import PoolManager
from llama_orch.server.capabilities import capabilities_of
from tests.support.server import config_of, mock_pool


class ReportingMock(MockEngine):
    """A mock reporting engine-side facts that config does not know."""

    async def props(self) -> WorkerProps:
        base = await super().props()
        return replace(base, ctx_max=2048, model_digest="sha256:abc", features={"mmproj": True})


def reporting(pool: PoolConfig, _index: int) -> EngineAdapter:
    return ReportingMock(MockEngineConfig(engine_version="m-7"), slots=3, model="served-name")


def manager_for(config: Config, host: AdapterHost) -> PoolManager:
    inventory = simulated_inventory(config.gpus.simulated or [])
    return PoolManager(config.pools, inventory, host, reporting, Metrics(), probe_interval_s=60)


class TestCapabilitiesFromCache:
    async def test_pool_entries_show_what_the_engine_reported(self) -> None:
        """Version, ctx, slots, model, digest and features come from the cached snapshots."""
        host = AdapterHost()
        manager = manager_for(config_of(mock_pool(replicas=2)), host)
        await manager.start()
        try:
            caps = capabilities_of(manager, host, placement_overrides=False)
        finally:
            await manager.stop()
        pool = caps.pools[0]
        assert ("m-7", 2048, 2, 6, "served-name", "sha256:abc", {"mmproj": True}) == (
            pool.engine_version,
            pool.ctx_max,
            pool.slots_total,
            pool.engine_slots_total,
            pool.engine_model_id,
            pool.model_digest,
            pool.features,
        )
        assert [(True, "m-7", True)] * 2 == [
            (r.cached, r.engine_version, r.simulated) for r in pool.replicas
        ]
        assert (["m-7"], manager.snapshot_version) == (
            caps.engines[0].engine_versions,
            caps.snapshot_version,
        )

    async def test_unprobed_replicas_contribute_nothing(self) -> None:
        """Before any probe the cache is empty: no version, ctx only from config, cached false."""
        host = AdapterHost()
        manager = manager_for(config_of(), host)
        caps = capabilities_of(manager, host, placement_overrides=True)
        pool = caps.pools[0]
        assert (None, 4096, None, [False]) == (
            pool.engine_version,
            pool.ctx_max,
            pool.engine_slots_total,
            [r.cached for r in pool.replicas],
        )
        assert (True, True) == (pool.simulated, caps.engines[0].features["placement_overrides"])
