from __future__ import annotations

from llama_orch.adapters.host import AdapterHost
from llama_orch.adapters.mock import MockEngine
from llama_orch.adapters.registry import build_adapter
from llama_orch.config import Config, MockEngineConfig, PoolConfig
from llama_orch.contracts.engine import EngineAdapter
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.gpus import simulated_inventory
from llama_orch.pool.manager import AdapterFactory, PoolManager, ReplicaState
from tests.support.server import config_of, mock_pool


def mock_for_any_engine(pool: PoolConfig, _index: int) -> EngineAdapter:
    """Stands in for an engine whose adapter is not under test here."""
    return MockEngine(MockEngineConfig(), slots=pool.slots, model=pool.model)


def manager_for(config: Config, factory: AdapterFactory = build_adapter) -> PoolManager:
    inventory = simulated_inventory(config.gpus.simulated or [])
    return PoolManager(
        config.pools, inventory, AdapterHost(), factory, Metrics(), probe_interval_s=60
    )


def external_pool(mode: str) -> PoolConfig:
    raw = {
        "id": "ext",
        "engine": "llamacpp",
        "model": "hf:org/repo",
        "devices": [0],
        "endpoint": "http://127.0.0.1:9",
        "provisioning": {"mode": mode},
    }
    if mode == "source":
        raw["provisioning"] = {"mode": "source", "source": {"repo": "r", "ref": "main"}}
    return PoolConfig.model_validate(raw)


class TestLeases:
    async def test_leases_never_go_negative(self) -> None:
        """Releasing more leases than were allocated saturates at zero (ORCH-3502)."""
        manager = manager_for(config_of())
        await manager.start()
        try:
            manager.allocate_lease("p0", "r0")
            manager.release_lease("p0", "r0")
            manager.release_lease("p0", "r0")
            assert 0 == manager.get_active_leases("p0")
            assert 0 == manager.get_active_leases("unknown-pool")
        finally:
            await manager.stop()

    async def test_capacity_change_is_announced(self) -> None:
        """Releasing a lease wakes whoever listens for capacity."""
        manager = manager_for(config_of())
        woken: list[str] = []
        manager.on_capacity_change(woken.append)
        await manager.start()
        try:
            manager.allocate_lease("p0", "r0")
            manager.release_lease("p0", "r0")
        finally:
            await manager.stop()
        assert "p0" in woken


class TestReadinessGates:
    async def test_healthy_mock_turns_ready(self) -> None:
        """All three gates pass for a healthy mock replica."""
        manager = manager_for(config_of())
        await manager.start()
        try:
            replica = manager.pools["p0"].replicas[0]
            assert (ReplicaState.READY, True) == (replica.state, replica.gates.all_pass)
            assert manager.pools["p0"].ready
        finally:
            await manager.stop()

    async def test_unhealthy_engine_keeps_pool_unready(self) -> None:
        """A failing health check keeps the replica Unready with the cause recorded."""
        manager = manager_for(config_of(mock_pool(mock={"healthy": False})))
        await manager.start()
        try:
            replica = manager.pools["p0"].replicas[0]
            assert ReplicaState.UNREADY == replica.state
            assert (True, True, False) == (
                replica.gates.model_present,
                replica.gates.engine_ensured,
                replica.gates.healthy,
            )
            assert "live=False" in (replica.last_error or "")
            assert not manager.pools["p0"].ready
        finally:
            await manager.stop()

    async def test_unsupported_provisioning_fails_the_engine_gate(self) -> None:
        """A mode this build cannot provision fails the engine gate with the way out."""
        config = config_of(external_pool("source"))
        manager = manager_for(config, mock_for_any_engine)
        await manager.start()
        try:
            replica = manager.pools["ext"].replicas[0]
            assert (ReplicaState.UNREADY, False) == (replica.state, replica.gates.engine_ensured)
            assert "provisioning.mode: external" in (replica.last_error or "")
        finally:
            await manager.stop()

    async def test_snapshot_reports_mask_and_vram(self) -> None:
        """Snapshots carry the device mask and the VRAM of exactly those devices."""
        config = config_of(mock_pool(devices=[1]))
        manager = manager_for(config)
        await manager.start()
        try:
            snapshot = manager.snapshot("p0")
        finally:
            await manager.stop()
        assert ((1,), 12288 * 2**20) == (snapshot.device_mask, snapshot.vram_total_bytes)
