"""GPU sampling: NVML off the event loop, gauges per replica and device, simulated flagged."""

from __future__ import annotations

import threading

from llama_orch.bootstrap import build_deps
from llama_orch.config import load_settings
from llama_orch.pool.gpu_sampler import GpuSampler
from llama_orch.pool.gpus import Gpu, GpuInventory
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
        assert {0: 21 * GIB} == deps.pools.free_per_gpu((0,))
