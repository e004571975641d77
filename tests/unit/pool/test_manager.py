from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from llama_orch.adapters.host import AdapterHost
from llama_orch.adapters.mock import MockEngine
from llama_orch.adapters.registry import build_adapter
from llama_orch.config import Config, MockEngineConfig, PoolConfig
from llama_orch.contracts.engine import EngineAdapter, WorkerHealth, WorkerProps
from llama_orch.core.model import JobSpec, PlacementInput
from llama_orch.core.placement import decide
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.gpus import simulated_inventory
from llama_orch.pool.manager import AdapterFactory, PoolManager, ReplicaState, unserved_model
from llama_orch.vocab import Engine, Priority
from tests.support.narration import NarrationLog
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


class ListingMock(MockEngine):
    """A mock engine that lists the models it serves, as an OpenAI-compatible one does."""

    def __init__(self, pool: PoolConfig, served: tuple[str, ...] | None) -> None:
        super().__init__(MockEngineConfig(), slots=pool.slots, model=pool.model)
        self.served = served

    async def props(self) -> WorkerProps:
        return replace(await super().props(), served_models=self.served)


class TestModelGate:
    async def test_an_engine_listing_other_models_fails_the_model_gate(self) -> None:
        """The engine lists its models without the pool's: Unready, and the error names both;
        once it lists the pool's model, the next probe turns the replica Ready."""
        engine: list[ListingMock] = []

        def factory(pool: PoolConfig, _index: int) -> EngineAdapter:
            engine.append(ListingMock(pool, ("other-model",)))
            return engine[-1]

        manager = manager_for(config_of(mock_pool(model="m0")), factory)
        await manager.start()
        try:
            replica = manager.pools["p0"].replicas[0]
            assert (ReplicaState.UNREADY, False, True) == (
                replica.state,
                replica.gates.model_present,
                replica.gates.healthy,
            )
            assert "'m0'" in (replica.last_error or "")
            assert "'other-model'" in (replica.last_error or "")
            engine[0].served = ("other-model", "m0")
            await manager.probe_all()
            assert (ReplicaState.READY, None) == (replica.state, replica.last_error)
        finally:
            await manager.stop()

    async def test_an_engine_that_cannot_say_is_not_blocked(self) -> None:
        """No list of models (None): the model gate is not held against the engine."""
        manager = manager_for(config_of(mock_pool()), lambda pool, _index: ListingMock(pool, None))
        await manager.start()
        try:
            assert ReplicaState.READY == manager.pools["p0"].replicas[0].state
        finally:
            await manager.stop()

    def test_the_error_caps_and_escapes_the_engine_names(self) -> None:
        served = ("evil\x1b[2J\nforged log line", "x" * 500, *(f"m{i}" for i in range(20)))
        error = unserved_model("wanted", served) or ""
        assert "\x1b" not in error and "\n" not in error
        assert "'wanted'" in error and "and 17 more" in error
        assert "x" * 80 in error and "x" * 81 not in error
        assert "no model" in (unserved_model("wanted", ()) or "")
        assert unserved_model("wanted", ("wanted",)) is None


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class VersionedMock(MockEngine):
    """A mock engine whose reported version a test can change between probes."""

    version = "v1"

    async def engine_version(self) -> str:
        return self.version


def clocked_manager(
    config: Config, clock: FakeClock, factory: AdapterFactory = build_adapter
) -> tuple[PoolManager, Metrics]:
    metrics = Metrics()
    inventory = simulated_inventory(config.gpus.simulated or [])
    manager = PoolManager(
        config.pools, inventory, AdapterHost(), factory, metrics, probe_interval_s=60, clock=clock
    )
    # The window is the larger of 5 s and two probe intervals; tests drive it by hand.
    manager.stale_after_s = 5.0
    return manager, metrics


class TestSnapshotVersion:
    async def test_bind_and_readiness_bump_the_version(self) -> None:
        """Binding, the first engine_version and the Ready flip each bump it (ORCH-3410)."""
        manager, _ = clocked_manager(config_of(), FakeClock())
        before = manager.snapshot_version
        await manager.start()
        try:
            assert (0, 3) == (before, manager.snapshot_version)
        finally:
            await manager.stop()

    async def test_steady_probes_leave_the_version_alone(self) -> None:
        """Probes that change nothing keep the version, so it only moves with the topology."""
        manager, _ = clocked_manager(config_of(), FakeClock())
        await manager.start()
        try:
            version = manager.snapshot_version
            await manager.probe_all()
            assert version == manager.snapshot_version
        finally:
            await manager.stop()

    async def test_drain_flag_changes_bump_the_version(self) -> None:
        """Setting and clearing the drain flag bump it once each; a repeat is a no-op."""
        manager, _ = clocked_manager(config_of(), FakeClock())
        await manager.start()
        try:
            version = manager.snapshot_version
            manager.set_draining("p0", True)
            manager.set_draining("p0", True)
            draining = (manager.snapshot_version, manager.pools["p0"].ready)
            manager.set_draining("p0", False)
            assert ((version + 1, False), version + 2) == (draining, manager.snapshot_version)
        finally:
            await manager.stop()

    async def test_engine_version_change_bumps_the_version(self) -> None:
        """A new engine_version from the engine bumps the version and rebinds its series."""
        engine = VersionedMock(MockEngineConfig(), slots=1, model="m")
        manager, metrics = clocked_manager(config_of(), FakeClock(), lambda _p, _i: engine)
        await manager.start()
        try:
            version = manager.snapshot_version
            engine.version = "v2"
            await manager.probe_all()
            replica = manager.pools["p0"].replicas[0]
            assert (version + 1, "v2") == (manager.snapshot_version, replica.engine_version)
        finally:
            await manager.stop()
        versions = {
            s.labels["engine_version"]
            for family in metrics.registry.collect()
            if family.name == "kv_cache_usage_ratio"
            for s in family.samples
        }
        assert {"v2"} == versions

    async def test_decisions_record_the_version(self) -> None:
        """The placement input and its decision log carry the version (ORCH-3410)."""
        manager, _ = clocked_manager(config_of(), FakeClock())
        await manager.start()
        try:
            views = tuple(manager.replica_views("p0"))
            snapshot = replace(manager.snapshot("p0"), replicas=views)
            job = JobSpec(Priority.INTERACTIVE, Engine.MOCK, "m", 512)
            placement = PlacementInput((snapshot,), job, snapshot_version=manager.snapshot_version)
            decision = decide(placement)
        finally:
            await manager.stop()
        assert manager.snapshot_version == decision.log.snapshot_version


class TestFreshness:
    async def test_a_lapsed_heartbeat_hides_the_replica(self, narration: NarrationLog) -> None:
        """5 s without a successful probe: placement sees the replica as not Ready (ORCH-3971),
        and the log says so once."""
        clock = FakeClock()
        manager, _ = clocked_manager(config_of(), clock)
        await manager.start()
        try:
            fresh = manager.replica_views("p0")[0].ready
            version = manager.snapshot_version
            clock.now += 5.5
            stale = manager.replica_views("p0")[0].ready
            manager.replica_views("p0")
            assert (True, False, version + 1) == (fresh, stale, manager.snapshot_version)
        finally:
            await manager.stop()
        event = narration.one("stale")
        assert ("p0", "r0", 5000) == (
            event["pool_id"],
            event["replica_id"],
            event["stale_after_ms"],
        )
        assert "last heartbeat 5.5 s ago" in event["human"]

    async def test_stream_progress_counts_as_a_heartbeat(self) -> None:
        """Tokens arriving from a replica keep it placeable while its probes are slow, and
        bring a stale one back; they never make an Unready replica Ready."""
        clock = FakeClock()
        manager, _ = clocked_manager(config_of(), clock)
        woken: list[str] = []
        manager.on_capacity_change(woken.append)
        await manager.start()
        try:
            replica = manager.pools["p0"].replicas[0]
            clock.now += 4
            manager.stream_progress(replica)
            clock.now += 3  # 7 s after the last probe, 3 s after the last tokens
            assert manager.replica_views("p0")[0].ready
            clock.now += 6
            assert not manager.replica_views("p0")[0].ready
            version = manager.snapshot_version
            manager.stream_progress(replica)
            assert (True, False) == (manager.replica_views("p0")[0].ready, replica.stale)
            assert (version + 1, ["p0"]) == (manager.snapshot_version, woken[-1:])
            replica.state = ReplicaState.UNREADY
            before = replica.last_heartbeat
            clock.now += 1
            manager.stream_progress(replica)
            assert before == replica.last_heartbeat
        finally:
            await manager.stop()

    async def test_a_hung_engine_does_not_stale_other_replicas(self) -> None:
        """Each replica has its own probe loop: one engine whose health call never returns
        stops only its own heartbeat, and the other pool's keeps beating."""
        config = config_of(mock_pool("p0", "m0"), mock_pool("p1", "m1"))
        engines: dict[str, HangingMock] = {}

        def factory(pool: PoolConfig, _index: int) -> EngineAdapter:
            engines[pool.id] = HangingMock(MockEngineConfig(), slots=pool.slots, model=pool.model)
            return engines[pool.id]

        inventory = simulated_inventory(config.gpus.simulated or [])
        manager = PoolManager(
            config.pools, inventory, AdapterHost(), factory, Metrics(), probe_interval_s=0.01
        )
        await manager.start()
        try:
            engines["p0"].hang.set()
            hung, beating = manager.pools["p0"].replicas[0], manager.pools["p1"].replicas[0]
            # Once p0's loop is inside the hung health call, its last probe has finished: no
            # heartbeat of p0's can land after this (a fixed sleep could end before that).
            async with asyncio.timeout(30):
                await engines["p0"].stuck.wait()
            first = (hung.last_heartbeat, beating.last_heartbeat)
            for _ in range(500):
                await asyncio.sleep(0.01)
                if beating.last_heartbeat != first[1]:
                    break
            assert hung.last_heartbeat == first[0]
            assert beating.last_heartbeat != first[1]
        finally:
            await manager.stop()

    async def test_a_probe_restores_a_stale_replica(self) -> None:
        """The next successful probe makes it placeable again, bumps and wakes listeners."""
        clock = FakeClock()
        manager, _ = clocked_manager(config_of(), clock)
        woken: list[str] = []
        manager.on_capacity_change(woken.append)
        await manager.start()
        try:
            clock.now += 6
            manager.replica_views("p0")
            version = manager.snapshot_version
            await manager.probe_all()
            ready = manager.replica_views("p0")[0].ready
            assert (True, version + 1, ["p0"]) == (ready, manager.snapshot_version, woken[-1:])
        finally:
            await manager.stop()

    def test_the_window_follows_a_slow_probe_cadence(self) -> None:
        """A probe interval longer than 2.5 s widens the window to two intervals."""
        config = config_of()
        inventory = simulated_inventory(config.gpus.simulated or [])
        windows = [
            PoolManager(
                config.pools,
                inventory,
                AdapterHost(),
                build_adapter,
                Metrics(),
                probe_interval_s=interval,
            ).stale_after_s
            for interval in (2.0, 10.0)
        ]
        assert [5.0, 20.0] == windows


class TestKvCacheUsage:
    async def test_probes_publish_the_engine_ratio(self) -> None:
        """The mock's simulated ratio lands in kv_cache_usage_ratio for its replica."""
        manager, metrics = clocked_manager(config_of(), FakeClock())
        await manager.start()
        try:
            manager.allocate_lease("p0", "r0")
            value = metrics.registry.get_sample_value(
                "kv_cache_usage_ratio",
                {
                    "engine": "mock",
                    "engine_version": "mock-1.0",
                    "pool_id": "p0",
                    "replica_id": "r0",
                },
            )
        finally:
            await manager.stop()
        assert 0.0 == value

    async def test_engines_without_a_ratio_leave_it_unset(self) -> None:
        """A replica whose engine reports no ratio has no kv_cache_usage_ratio series at all."""
        manager, metrics = clocked_manager(
            config_of(external_pool("external")), FakeClock(), mock_for_unreporting_engine
        )
        await manager.start()
        try:
            families = {f.name: f.samples for f in metrics.registry.collect()}
        finally:
            await manager.stop()
        assert [] == families["kv_cache_usage_ratio"]


class HangingMock(MockEngine):
    """A mock whose health call never returns once ``hang`` is set."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hang = asyncio.Event()
        self.stuck = asyncio.Event()

    async def health(self) -> WorkerHealth:
        if self.hang.is_set():
            self.stuck.set()
            await asyncio.Event().wait()
        return await super().health()


class UnreportingMock(MockEngine):
    """A mock standing in for an engine with no KV cache figure."""

    async def props(self) -> WorkerProps:
        return replace(await super().props(), kv_cache_usage_ratio=None)


def mock_for_unreporting_engine(pool: PoolConfig, _index: int) -> EngineAdapter:
    return UnreportingMock(MockEngineConfig(), slots=pool.slots, model=pool.model)
