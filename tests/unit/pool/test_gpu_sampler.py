"""GPU sampling: NVML off the event loop, gauges per replica and device, simulated flagged."""

from __future__ import annotations

import asyncio
import threading

from llama_orch.adapters.host import AdapterHost
from llama_orch.adapters.registry import build_adapter
from llama_orch.bootstrap import build_deps
from llama_orch.config import PoolConfig, load_settings
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.gpu_sampler import GpuSampler
from llama_orch.pool.gpus import Gpu, GpuInventory
from llama_orch.pool.manager import PoolManager
from llama_orch.server.capabilities import hosts_of
from llama_orch.server.deps import AppDeps
from tests.support.narration import NarrationLog
from tests.support.server import config_of, mock_pool

GIB = 2**30


def deps_for_two_pools() -> AppDeps:
    pools = (mock_pool("a", devices=[0]), mock_pool("b", "m1", devices=[1], replicas=2))
    return build_deps(load_settings({}, config=config_of(*pools)))


def inventory(used_gib: int = 3, util: float = 42.0) -> GpuInventory:
    return GpuInventory(
        (
            Gpu(0, "gpu0", 24 * GIB, used_gib * GIB, util, simulated=False),
            Gpu(1, "gpu1", 12 * GIB, 1 * GIB, 7.0, simulated=False),
        ),
        simulated=False,
    )


def sample(deps: AppDeps, name: str, pool: str, replica: str, device: str) -> float | None:
    labels = {
        "engine": "mock",
        "engine_version": deps.pools.pools[pool].replicas[int(replica[1:])].engine_version,
        "pool_id": pool,
        "replica_id": replica,
        "device": device,
    }
    return deps.metrics.registry.get_sample_value(name, labels)


class TestPublish:
    def test_every_replica_device_pair(self) -> None:
        """Each replica reports the utilization and VRAM of each device it runs on."""
        deps = deps_for_two_pools()
        GpuSampler(deps.pools, deps.metrics, inventory, simulated=False).publish(inventory())
        assert (42.0, 3 * GIB, 7.0, GIB, GIB) == (
            sample(deps, "gpu_utilization", "a", "r0", "0"),
            sample(deps, "vram_used_bytes", "a", "r0", "0"),
            sample(deps, "gpu_utilization", "b", "r1", "1"),
            sample(deps, "vram_used_bytes", "b", "r0", "1"),
            sample(deps, "vram_used_bytes", "b", "r1", "1"),
        )

    def test_engine_version_change_replaces_the_series(self) -> None:
        """A new engine version re-labels the series instead of leaving a frozen one behind."""
        deps = deps_for_two_pools()
        sampler = GpuSampler(deps.pools, deps.metrics, inventory, simulated=False)
        sampler.publish(inventory())
        replica = deps.pools.pools["a"].replicas[0]
        old_version, replica.engine_version = replica.engine_version, "mock-2.0"
        sampler.publish(inventory(used_gib=5))
        stale = {
            "engine": "mock",
            "engine_version": old_version,
            "pool_id": "a",
            "replica_id": "r0",
            "device": "0",
        }
        assert (None, 5 * GIB) == (
            deps.metrics.registry.get_sample_value("vram_used_bytes", stale),
            sample(deps, "vram_used_bytes", "a", "r0", "0"),
        )


class TestSampling:
    async def test_reads_off_the_event_loop(self) -> None:
        """The blocking reader (NVML) runs in a worker thread, never on the loop's thread."""
        deps = deps_for_two_pools()
        threads: list[int] = []

        def read() -> GpuInventory:
            threads.append(threading.get_ident())
            return inventory()

        await GpuSampler(deps.pools, deps.metrics, read, simulated=False).sample_once()
        assert [threading.get_ident()] != threads and 1 == len(threads)

    async def test_failure_narrates_once_and_keeps_values(self, narration: NarrationLog) -> None:
        """An unreadable GPU is reported once; the last published values stay."""
        deps = deps_for_two_pools()
        readings = [inventory(), GpuInventory((), False, "driver gone"), GpuInventory((), False)]
        sampler = GpuSampler(deps.pools, deps.metrics, lambda: readings.pop(0), simulated=False)
        for _ in range(3):
            await sampler.sample_once()
        assert 1 == len(narration.events("sample", log_level="warning"))
        assert 3 * GIB == sample(deps, "vram_used_bytes", "a", "r0", "0")

    async def test_simulated_inventory_is_flagged(self) -> None:
        """The simulated inventory publishes at start and sets gpu_inventory_simulated to 1."""
        deps = deps_for_two_pools()
        sampler = GpuSampler.for_pools(deps.pools, deps.metrics, interval_s=60)
        await sampler.start()
        await sampler.stop()
        assert (1.0, 0.0) == (
            deps.metrics.registry.get_sample_value("gpu_inventory_simulated"),
            sample(deps, "vram_used_bytes", "b", "r1", "1"),
        )


class TestFreeVramRefresh:
    async def test_sample_refreshes_the_pool_managers_free_vram(self) -> None:
        """A sample replaces the start-up reading, so placement sees current free VRAM."""
        deps = deps_for_two_pools()
        before = deps.pools.snapshot("a").vram_free_bytes
        await GpuSampler(deps.pools, deps.metrics, inventory, simulated=False).sample_once()
        assert 24 * GIB == before
        assert 21 * GIB == deps.pools.snapshot("a").vram_free_bytes
        assert {0: 21 * GIB} == deps.pools.free_per_gpu(deps.pools.pools["a"])


class ScriptedHosts:
    """A cluster whose hosts' answers the test sets (a host set to None misses the deadline);
    with ``hang`` the whole poll never returns, as a cluster whose head stopped answering."""

    def __init__(self, **answers: GpuInventory | None) -> None:
        self.answers = answers
        self.hang = False
        self.deadlines: list[float] = []

    async def host_inventories(self, deadline_s: float) -> dict[str, GpuInventory | None]:
        self.deadlines.append(deadline_s)
        if self.hang:
            await asyncio.Event().wait()
        return dict(self.answers)


def host_pools(metrics: Metrics) -> PoolManager:
    """A mock pool on host gpu-a and one on this machine (mock engines: Ready at once)."""
    pools = [
        PoolConfig.model_validate({**mock_pool("remote", devices=[1]), "host": "gpu-a"}),
        PoolConfig.model_validate(mock_pool("local", "m1", devices=[0])),
    ]
    inventory = GpuInventory((Gpu(0, "gpu0", 24 * GIB, 0, 0.0, simulated=True),), simulated=True)
    return PoolManager(pools, inventory, AdapterHost(), build_adapter, metrics, probe_interval_s=60)


def ready(manager: PoolManager, pool: str) -> bool:
    return manager.replica_views(pool)[0].ready


class TestHosts:
    async def test_a_host_that_misses_its_deadline_is_stale_until_it_answers(
        self, narration: NarrationLog
    ) -> None:
        """Its replicas leave placement (and only its), the gauge and the narration name the
        host, and its next answer makes them placeable again."""
        metrics = Metrics()
        manager = host_pools(metrics)
        hosts = ScriptedHosts(**{"gpu-a": inventory()})
        sampler = GpuSampler(
            manager, metrics, inventory, simulated=True, hosts=hosts, host_deadline_s=0.5
        )
        await manager.start()
        try:
            await sampler.poll_hosts_once()
            assert (True, True, [0.5]) == (
                ready(manager, "remote"),
                ready(manager, "local"),
                hosts.deadlines,
            )
            # Device 1 exists on gpu-a only: its free VRAM is the host agent's reading.
            assert 11 * GIB == manager.snapshot("remote").vram_free_bytes
            version = manager.snapshot_version
            hosts.answers["gpu-a"] = None
            await sampler.poll_hosts_once()
            assert (False, True) == (ready(manager, "remote"), ready(manager, "local"))
            assert "gpu-a" == manager.replica_views("remote")[0].host
            assert version < manager.snapshot_version
            gauge = metrics.registry.get_sample_value
            assert 1.0 == gauge("cluster_host_stale", {"host": "gpu-a"})
            [event] = narration.events("host-stale")
            assert "gpu-a" == event["host"]
            await manager.probe_all()  # a probe that passes does not outvote the host
            [skip] = narration.events("stale")
            assert "host gpu-a missed its inventory deadline" in skip["human"]
            assert not ready(manager, "remote")
            [host] = hosts_of(manager)
            # The last reading stays on show, flagged stale.
            assert ("gpu-a", True, [0, 1]) == (host.name, host.stale, [g.index for g in host.gpus])
            hosts.answers["gpu-a"] = inventory()
            await sampler.poll_hosts_once()
            assert not hosts_of(manager)[0].stale
            assert (True, 0.0) == (
                ready(manager, "remote"),
                gauge("cluster_host_stale", {"host": "gpu-a"}),
            )
        finally:
            await manager.stop()

    async def test_a_cluster_that_hangs_makes_every_host_stale(self) -> None:
        """A poll that never returns is cut at twice the deadline; every host is stale."""
        manager = host_pools(Metrics())
        hosts = ScriptedHosts(**{"gpu-a": inventory()})
        sampler = GpuSampler(
            manager, Metrics(), inventory, simulated=True, hosts=hosts, host_deadline_s=0.05
        )
        await manager.start()
        try:
            hosts.hang = True
            await sampler.poll_hosts_once()
            assert ({"gpu-a"}, False) == (manager.stale_hosts, ready(manager, "remote"))
        finally:
            await manager.stop()

    async def test_a_cluster_that_hangs_from_the_start_makes_a_spread_pools_hosts_stale(
        self,
    ) -> None:
        """Before any answer, the hosts a pool spreads over (`hosts:`) are known from the
        config as well as a pool's `host:`: none of their replicas takes work unvouched."""
        spread = PoolConfig.model_validate(
            {**mock_pool("spread", devices=[0]), "hosts": ["gpu-a", "gpu-b"], "replicas": 2}
        )
        local = GpuInventory((Gpu(0, "gpu0", 24 * GIB, 0, 0.0, simulated=True),), simulated=True)
        manager = PoolManager(
            [spread], local, AdapterHost(), build_adapter, Metrics(), probe_interval_s=60
        )
        hosts = ScriptedHosts()
        hosts.hang = True
        sampler = GpuSampler(
            manager, Metrics(), inventory, simulated=True, hosts=hosts, host_deadline_s=0.05
        )
        await manager.start()
        try:
            await sampler.poll_hosts_once()
            assert {"gpu-a", "gpu-b"} == manager.stale_hosts
            assert not any(v.ready for v in manager.replica_views("spread"))
        finally:
            await manager.stop()

    def test_a_spread_pool_weighs_each_replica_by_its_own_host(self) -> None:
        """Replicas on gpu-a and gpu-b: each replica's free VRAM is its host's; the pool's
        filter sees the host with the most free; the model's fit is checked where least is."""
        spread = PoolConfig.model_validate(
            {**mock_pool("spread", devices=[0]), "hosts": ["gpu-a", "gpu-b"], "replicas": 2}
        )
        local = GpuInventory((Gpu(0, "gpu0", 24 * GIB, 0, 0.0, simulated=True),), simulated=True)
        manager = PoolManager(
            [spread], local, AdapterHost(), build_adapter, Metrics(), probe_interval_s=60
        )
        manager.refresh_hosts({"gpu-a": inventory(used_gib=4), "gpu-b": inventory(used_gib=18)})
        views = {v.replica_id: (v.host, v.free_vram) for v in manager.replica_views("spread")}
        assert {"r0": ("gpu-a", 20 * GIB), "r1": ("gpu-b", 6 * GIB)} == views
        assert 20 * GIB == manager.snapshot("spread").vram_free_bytes
        assert {0: 6 * GIB} == manager.free_per_gpu(manager.pools["spread"])
