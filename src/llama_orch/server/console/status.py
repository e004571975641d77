"""The console's read model: one ``Status`` snapshot built from the pool manager, the GPU
sampler and the dispatcher.

This is the only module of the console that reads application state, so moving the reads
behind another facade touches this file alone. Nothing here writes: the console's buttons call
the public endpoints like any other client.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import islice

import orjson

from llama_orch.contracts.api import API_VERSION
from llama_orch.contracts.console import (
    ConsoleFeatures,
    FinishedTask,
    GpuEvent,
    GpuStatus,
    MetaEvent,
    Outcome,
    PoolEvent,
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
from llama_orch.dispatch.lanes import NEVER_MS, PoolLane
from llama_orch.dispatch.predict import EXACT_LIMIT, on_time_probability, predicted_start_s
from llama_orch.dispatch.tasks import Task, TaskState
from llama_orch.pool.gpu_sampler import GpuSampler
from llama_orch.pool.manager import PoolRuntime, ReplicaState
from llama_orch.server.deps import AppDeps
from llama_orch.vocab import Priority

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
        dispatcher = self.deps.dispatcher
        now = dispatcher.now()
        lanes = dispatcher.lanes
        rates = {
            task.id: _tokens_per_s(task, now) for lane in lanes.values() for task in _running(lane)
        }
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
            pool=PoolEvent(pools=[_pool(lane, rates) for lane in lanes.values()]),
            queue=QueueEvent(queues=[self._queue(lane, now) for lane in lanes.values()]),
            task=TaskEvent(
                running=[
                    _running_task(task, rates[task.id], now)
                    for lane in lanes.values()
                    for task in _running(lane)
                ],
                finished=[
                    _finished_task(task, now)
                    for task in dispatcher.tasks.recently_finished(FINISHED_SHOWN)
                ],
            ),
        )

    def _gpus(self) -> list[GpuStatus]:
        on_gpu: dict[int, list[str]] = {}
        for pool in self.deps.pools.pools.values():
            for replica in pool.replicas:
                for device in replica.devices:
                    on_gpu.setdefault(device, []).append(f"{pool.id}/{replica.replica_id}")
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
                replicas=on_gpu.get(gpu.index, []),
            )
            for gpu in self.sampler.latest.gpus
        ]

    def _queue(self, lane: PoolLane, now: float) -> QueueStatus:
        """The first queued tasks with their predictions (docs/predictions.md).

        This is what ``Dispatcher.predicted_start_ms`` and ``on_time_probability`` compute per
        task, with the slot states read once for the whole list instead of once per task (they
        are most of the cost: one walk over every running task).
        """
        dispatcher = self.deps.dispatcher
        slots = lane.slot_states(self.deps.pools, now)
        slots_total = max(1, lane.pool.slots_total)
        cv = sum(p.cv for p in lane.perf.values()) / max(1, len(lane.perf))
        queued = len(lane.queue)
        mean_tokens = lane.queued_tokens / queued if queued else 0.0
        ahead: list[int] = []
        shown = []
        for position, task_id in enumerate(islice(lane.queue, QUEUED_SHOWN)):
            task = dispatcher.tasks.get(task_id)
            rest = max(0, position - EXACT_LIMIT)
            wait_s = predicted_start_s(slots, ahead[:EXACT_LIMIT], rest, rest * mean_tokens)
            ahead.append(task.expected_tokens if task is not None else 0)
            if task is None or task.state is not TaskState.QUEUED:
                continue
            on_time = on_time_probability(
                wait_s, task.deadline_at - now, cv=cv, releases=position // slots_total + 1
            )
            shown.append(
                QueuedTask(
                    task_id=task.id,
                    pool_id=task.pool_id,
                    priority=task.priority,
                    position=position,
                    predicted_start_ms=NEVER_MS
                    if math.isinf(wait_s)
                    else min(NEVER_MS, int(wait_s * 1000)),
                    on_time_probability=round(on_time, 4),
                    waited_ms=_ms(now - task.admitted_at),
                )
            )
        return QueueStatus(pool_id=lane.id, depth=queued, tasks=shown)


def _running(lane: PoolLane) -> Iterable[Task]:
    return (t for t in lane.running.values() if t.state is TaskState.RUNNING)


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def _tokens_per_s(task: Task, now: float) -> float:
    if task.first_token_at is None or task.tokens_out == 0:
        return 0.0
    elapsed = now - task.first_token_at
    return round(task.tokens_out / elapsed, 1) if elapsed > 0 else 0.0


def pool_state(pool: PoolRuntime) -> PoolState:
    if pool.draining:
        return "Draining"
    if pool.ready:
        return "Ready"
    if all(r.state is ReplicaState.STARTING for r in pool.replicas):
        return "Starting"
    return "Unready"


def _pool(lane: PoolLane, rates: dict[str, float]) -> PoolStatus:
    pool = lane.pool
    cfg = pool.config
    return PoolStatus(
        pool_id=pool.id,
        state=pool_state(pool),
        last_error=pool.last_error,
        engine=cfg.engine,
        engine_version=pool.engine_version,
        model=cfg.model,
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
            )
            for r in pool.replicas
        ],
        slots_busy=pool.active_leases,
        slots_total=pool.slots_total,
        queue_capacity=lane.queue.capacity(),
        queue_depth={p: lane.queue.depth(p) for p in Priority},
        tokens_per_s=round(sum(rates[t.id] for t in _running(lane)), 1),
    )


def _running_task(task: Task, rate: float, now: float) -> RunningTask:
    return RunningTask(
        task_id=task.id,
        pool_id=task.pool_id,
        replica_id=task.replica_id,
        priority=task.priority,
        model=task.model,
        tokens_out=task.tokens_out,
        tokens_per_s=rate,
        running_ms=_ms(now - (task.started_at or now)),
    )


def _finished_task(task: Task, now: float) -> FinishedTask:
    outcome, code = _outcome(task)
    ended = task.finished_at if task.finished_at is not None else now
    return FinishedTask(
        task_id=task.id,
        pool_id=task.pool_id,
        priority=task.priority,
        model=task.model,
        outcome=outcome,
        error_code=code,
        tokens_out=task.tokens_out,
        duration_ms=_ms(ended - task.admitted_at),
        ago_ms=_ms(now - ended),
    )


def _outcome(task: Task) -> tuple[Outcome, str | None]:
    if task.state is TaskState.CANCELED:
        return "canceled", None
    if task.state is not TaskState.FAILED:
        return "end", None
    # The code lives only in the terminal frame the task published.
    entries = task.stream.entries
    last = entries[-1] if entries else None
    if isinstance(last, tuple) and last[0] == "error":
        code = orjson.loads(last[1]).get("code")
        return "error", code if isinstance(code, str) else None
    return "error", None
