"""The console's read model: one ``Status`` snapshot built from the pool manager, the GPU
sampler and the task service's board.

This is the only module of the console that reads application state, so moving the reads
behind another facade touches this file alone. Nothing here writes: the console's buttons call
the public endpoints like any other client.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llama_orch.contracts.api import API_VERSION
from llama_orch.contracts.console import (
    ConsoleFeatures,
    FinishedTask,
    GpuEvent,
    GpuStatus,
    MetaEvent,
    PoolEvent,
    PoolOperation,
    PoolState,
    PoolStatus,
    QueuedTask,
    QueueEvent,
    QueueStatus,
    ReplicaStatus,
    RunningTask,
    Status,
    TaskEvent,
)
from llama_orch.dispatch.service import PoolQueueView
from llama_orch.pool.gpu_sampler import GpuSampler
from llama_orch.pool.gpus import Gpu
from llama_orch.pool.lifecycle import Operation
from llama_orch.pool.manager import PoolRuntime, Replica, ReplicaState
from llama_orch.server.deps import AppDeps

#: Queued tasks listed per pool (in dispatch order); the depth counts every one. Each listed
#: task costs one start-time prediction per snapshot, so this bounds the console's CPU.
QUEUED_SHOWN = 25
#: Finished tasks listed, most recent first.
FINISHED_SHOWN = 20


@dataclass(frozen=True, slots=True)
class StatusReader:
    deps: AppDeps
    sampler: GpuSampler
    #: Read on every snapshot: endpoints mounted after start-up light up too.
    features: Callable[[], ConsoleFeatures]
    interval_ms: int

    def read(self) -> Status:
        board = self.deps.service.board(queued_limit=QUEUED_SHOWN, finished_limit=FINISHED_SHOWN)
        rates: dict[str, float] = {}
        for running in board.running:
            rates[running.pool_id] = rates.get(running.pool_id, 0.0) + running.tokens_per_s
        queues = {q.pool_id: q for q in board.queues}
        pools = self.deps.pools
        return Status(
            meta=MetaEvent(
                api_version=API_VERSION,
                simulated=pools.inventory.simulated
                or any(p.simulated for p in pools.pools.values()),
                features=self.features(),
                interval_ms=self.interval_ms,
                snapshot_version=pools.snapshot_version,
            ),
            gpu=GpuEvent(gpus=self._gpus()),
            pool=PoolEvent(
                pools=[
                    _pool(
                        pool,
                        self._model_ref(pool),
                        queues[pool.id],
                        rates.get(pool.id, 0.0),
                        pools.lifecycle.latest.get(pool.id),
                        pools.host_of,
                    )
                    for pool in pools.pools.values()
                ]
            ),
            queue=QueueEvent(
                queues=[
                    QueueStatus(
                        pool_id=q.pool_id,
                        depth=q.depth,
                        tasks=[QueuedTask(**_fields(t)) for t in q.tasks],
                    )
                    for q in board.queues
                ]
            ),
            task=TaskEvent(
                running=[RunningTask(**_fields(t)) for t in board.running],
                finished=[FinishedTask(**_fields(t)) for t in board.finished],
            ),
        )

    def _model_ref(self, pool: PoolRuntime) -> str:
        models = self.deps.pools.models
        known = models.by_pool.get(pool.id) if models is not None else None
        return known.public if known is not None else pool.config.model

    def _gpus(self) -> list[GpuStatus]:
        """This machine's GPUs, then each cluster host's as its agent last reported them."""
        pools = self.deps.pools
        on_gpu: dict[tuple[str | None, int], list[str]] = {}
        for pool in pools.pools.values():
            for replica in pool.replicas:
                for device in replica.devices:
                    key = (pools.host_of(replica), device)
                    on_gpu.setdefault(key, []).append(f"{pool.id}/{replica.replica_id}")
        found: list[tuple[str | None, Gpu]] = [(None, gpu) for gpu in self.sampler.latest.gpus]
        for host in sorted(pools.host_inventories):
            found += [(host, gpu) for gpu in pools.host_inventories[host].gpus]
        return [
            GpuStatus(
                index=gpu.index,
                name=gpu.name,
                vram_total_bytes=gpu.vram_total_bytes,
                vram_used_bytes=gpu.vram_used_bytes,
                # A simulated GPU has no load to report; 0 would read as a real idle board.
                utilization_pct=None if gpu.simulated else gpu.utilization_pct,
                temperature_c=gpu.temperature_c,
                simulated=gpu.simulated,
                replicas=on_gpu.get((host, gpu.index), []),
                host=host,
                stale=host in pools.stale_hosts,
            )
            for host, gpu in found
        ]


def _fields(view: Any) -> dict[str, Any]:
    """A board view's fields, which the console's wire models share by name."""
    return {name: getattr(view, name) for name in view.__slots__}


def pool_state(pool: PoolRuntime) -> PoolState:
    if pool.draining:
        return "Draining"
    if pool.ready:
        return "Ready"
    if all(r.state is ReplicaState.STARTING for r in pool.replicas):
        return "Starting"
    return "Unready"


def _pool(
    pool: PoolRuntime,
    model_ref: str,
    queue: PoolQueueView,
    tokens_per_s: float,
    operation: Operation | None,
    host_of: Callable[[Replica], str | None],
) -> PoolStatus:
    cfg = pool.config
    return PoolStatus(
        pool_id=pool.id,
        state=pool_state(pool),
        last_error=pool.last_error,
        engine=cfg.engine,
        engine_version=pool.engine_version,
        model=cfg.model,
        model_ref=model_ref,
        ctx_max=pool.ctx_max,
        devices=list(pool.devices),
        simulated=pool.simulated,
        replicas=[
            ReplicaStatus(
                replica_id=r.replica_id,
                state=r.state.value,
                slots_busy=r.active,
                slots_total=r.slots_total,
                engine_version=r.engine_version,
                last_error=r.last_error,
                host=host_of(r),
            )
            for r in pool.replicas
        ],
        slots_busy=pool.active_leases,
        slots_total=pool.slots_total,
        queue_capacity=queue.capacity,
        queue_depth=queue.depth_by_priority,
        tokens_per_s=round(tokens_per_s, 1),
        **_supervised(pool, operation),
    )


def _supervised(pool: PoolRuntime, operation: Operation | None) -> dict[str, Any]:
    """Restarts and the last exit of launched engines, and the latest drain or reload."""
    fields: dict[str, Any] = {}
    processes = [r.process for r in pool.replicas if r.process is not None]
    if processes:
        fields["restart_count"] = sum(p.restarts for p in processes)
        fields["last_exit"] = next((p.last_exit for p in processes if p.last_exit), None)
    if operation is not None:
        fields["last_operation"] = PoolOperation(
            kind=operation.kind, state=operation.state, error=operation.error
        )
    return fields
