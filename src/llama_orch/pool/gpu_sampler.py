"""Periodic GPU sampling into ``gpu_utilization`` and ``vram_used_bytes`` (ORCH-3028).

NVML calls block, so each sample runs in a worker thread; the event loop only publishes the
result. A simulated inventory is published as declared and flagged by
``gpu_inventory_simulated 1``, so no dashboard mistakes it for a real reading.

With cluster hosts, a second loop asks every host's agent for its inventory at once, each poll
bounded by a deadline: a host that misses it is stale (its replicas take no new work) until it
answers again (``PoolManager.refresh_hosts``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import Gauge

from llama_orch.observability.metrics import Metrics
from llama_orch.observability.narration import narrate
from llama_orch.pool.gpus import GpuInventory, nvml_inventory
from llama_orch.pool.launch import HostInventories
from llama_orch.pool.manager import PoolManager
from llama_orch.supervisor import Supervisor

Reader = Callable[[], GpuInventory]

#: (pool_id, replica_id, device) -> the label values its children are bound with.
_Key = tuple[str, str, int]
_Labels = tuple[str, str, str, str, str]


class GpuSampler:
    """One supervised loop; ``start`` publishes a first sample before returning."""

    LOOP = "gpu-sampler"
    HOSTS_LOOP = "host-inventory"

    def __init__(
        self,
        pools: PoolManager,
        metrics: Metrics,
        read: Reader,
        *,
        simulated: bool,
        interval_s: float = 5.0,
        supervisor: Supervisor | None = None,
        hosts: HostInventories | None = None,
        host_interval_s: float = 2.0,
        host_deadline_s: float = 2.0,
    ) -> None:
        self._pools = pools
        self._supervisor = supervisor or Supervisor(metrics)
        self._metrics = metrics
        self._read = read
        self._simulated = simulated
        self._interval_s = interval_s
        self._bound: dict[_Key, tuple[_Labels, Gauge, Gauge]] = {}
        self._failing = False
        self._hosts = hosts
        self._host_interval_s = host_interval_s
        self._host_deadline_s = host_deadline_s
        #: The last inventory read (the declared one until the first sample).
        self.latest: GpuInventory = pools.inventory
        pools.on_forget(self._forget)

    @classmethod
    def for_pools(
        cls,
        pools: PoolManager,
        metrics: Metrics,
        *,
        interval_s: float = 5.0,
        supervisor: Supervisor | None = None,
        host_interval_s: float = 2.0,
        host_deadline_s: float = 2.0,
    ) -> GpuSampler:
        """Sample NVML on a real machine; republish the declared inventory when simulated.
        Cluster hosts, where pools name them, are asked through their agents."""
        inventory = pools.inventory
        return cls(
            pools,
            metrics,
            (lambda: inventory) if inventory.simulated else nvml_inventory,
            simulated=inventory.simulated,
            interval_s=interval_s,
            supervisor=supervisor,
            hosts=pools.host_source,
            host_interval_s=host_interval_s,
            host_deadline_s=host_deadline_s,
        )

    async def start(self) -> None:
        self._metrics.gpu_inventory_simulated.set(1 if self._simulated else 0)
        await self.sample_once()
        self._supervisor.loop(self.LOOP, self._loop)
        if self._hosts is not None:
            # Not awaited here: a new agent's first answer must not hold up start-up.
            self._supervisor.loop(self.HOSTS_LOOP, self._hosts_loop)

    async def stop(self) -> None:
        await self._supervisor.cancel_loops([self.LOOP, self.HOSTS_LOOP])

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self._interval_s)
            await self.sample_once()

    async def _hosts_loop(self) -> None:
        while True:
            await self.poll_hosts_once()
            await asyncio.sleep(self._host_interval_s)

    async def poll_hosts_once(self) -> None:
        """Ask every host at once; a host that misses the deadline turns stale."""
        assert self._hosts is not None
        deadline = self._host_deadline_s
        try:
            # The source keeps its own deadline; this one covers a cluster that hangs outright.
            async with asyncio.timeout(2 * deadline):
                readings = await self._hosts.host_inventories(deadline)
        except TimeoutError:
            known = {*self._pools.host_inventories, *self._pools.stale_hosts}
            known |= {h for p in self._pools.pools.values() for h in p.config.cluster_hosts}
            readings = dict.fromkeys(known)
        self._pools.refresh_hosts(readings)

    async def sample_once(self) -> None:
        inventory = await asyncio.to_thread(self._read)
        if not inventory.gpus:
            if not self._failing:
                narrate(
                    "gpu-sampler",
                    "sample",
                    "gpus",
                    "Cannot read GPU utilization and VRAM; keeps the last values.",
                    level="warning",
                    error_kind=inventory.problem or "no GPU reported",
                )
            self._failing = True
            return
        self._failing = False
        self.latest = inventory
        self._pools.refresh_inventory(inventory)
        self.publish(inventory)

    def publish(self, inventory: GpuInventory) -> None:
        """Set the gauges of every (replica, device) pair; children are bound once per label set."""
        for pool in self._pools.pools.values():
            engine = pool.config.engine.value
            for replica in pool.replicas:
                for device in replica.devices:
                    gpu = inventory.by_index(device)
                    if gpu is None:
                        continue
                    util, vram = self._children(
                        (pool.id, replica.replica_id, device),
                        (engine, replica.engine_version, pool.id, replica.replica_id, str(device)),
                    )
                    util.set(gpu.utilization_pct)
                    vram.set(gpu.vram_used_bytes)

    def _forget(self, pool_id: str, replica_id: str) -> None:
        """A reload dropped the replica: its series go, rather than stay at their last values."""
        for key in [k for k in self._bound if k[:2] == (pool_id, replica_id)]:
            labels = self._bound.pop(key)[0]
            self._metrics.gpu_utilization.remove(*labels)
            self._metrics.vram_used_bytes.remove(*labels)

    def _children(self, key: _Key, labels: _Labels) -> tuple[Gauge, Gauge]:
        bound = self._bound.get(key)
        if bound is not None and bound[0] == labels:
            return bound[1], bound[2]
        if bound is not None:
            # The engine version changed: drop the stale series instead of leaving it frozen.
            self._metrics.gpu_utilization.remove(*bound[0])
            self._metrics.vram_used_bytes.remove(*bound[0])
        util = self._metrics.gpu_utilization.labels(*labels)
        vram = self._metrics.vram_used_bytes.labels(*labels)
        self._bound[key] = (labels, util, vram)
        return util, vram
