"""PoolLane: one pool's queue, throttles, running tasks and measured perf, and the views built
from them for ``core.decide`` and for start-time predictions.
"""

from __future__ import annotations

import asyncio

from llama_orch.config import PoolConfig
from llama_orch.core.model import PoolSnapshot
from llama_orch.core.prediction import (
    EXACT_LIMIT,
    ReplicaPerf,
    SlotState,
    predicted_start_s,
    remaining_s,
)
from llama_orch.core.queue import AdmissionQueue, Enqueued, Rejected, burst_from_weights
from llama_orch.core.ratelimit import TokenBucket
from llama_orch.dispatch.tasks import Task
from llama_orch.pool.manager import PoolManager, PoolRuntime, Replica
from llama_orch.vocab import Engine, Priority

#: What ``predicted_start_ms`` reports when no slot is Ready to ever start the task.
NEVER_MS = 2**31 - 1


def _interactive_burst(cfg: PoolConfig) -> int | None:
    weights = {p.name: p.weight for p in cfg.admission.priorities}
    return burst_from_weights(weights.get(Priority.INTERACTIVE), weights.get(Priority.BATCH))


class PoolLane:
    """One pool's queue, perf model, throttles and wake-up signal."""

    __slots__ = (
        "_identity",
        "perf",
        "pool",
        "queue",
        "queued_tokens",
        "rate_limits",
        "ready_replicas",
        "running",
        "wake",
    )

    def __init__(self, pool: PoolRuntime, now: float = 0.0) -> None:
        cfg = pool.config
        class_caps = {
            p.name: p.queue_capacity for p in cfg.admission.priorities if p.queue_capacity
        }
        self.pool = pool
        self._identity: PoolSnapshot | None = None
        self.queue = AdmissionQueue(
            cfg.queue.capacity,
            cfg.queue.full_policy,
            class_caps,
            interactive_burst=_interactive_burst(cfg),
        )
        self.rate_limits: dict[Priority, TokenBucket] = {
            p.name: TokenBucket(p.rate_limit_rps, now=now)
            for p in cfg.admission.priorities
            if p.rate_limit_rps
        }
        #: Measured perf per replica id (docs/predictions.md).
        self.perf: dict[str, ReplicaPerf] = {r.replica_id: ReplicaPerf() for r in pool.replicas}
        #: Expected tokens of every queued task, summed, for the fluid part of predictions.
        self.queued_tokens = 0
        self.running: dict[str, Task] = {}
        #: Replica ids that were Ready when the pool last reported a change.
        self.ready_replicas: set[str] = set()
        self.wake = asyncio.Event()

    @property
    def id(self) -> str:
        return self.pool.id

    def replica(self, replica_id: str | None) -> Replica | None:
        return next((r for r in self.pool.replicas if r.replica_id == replica_id), None)

    def perf_of(self, replica_id: str) -> ReplicaPerf:
        perf = self.perf.get(replica_id)
        if perf is None:
            perf = self.perf[replica_id] = ReplicaPerf()
        if perf.samples == 0:
            # Until something was measured, follow the engine's latest perf hints.
            replica = self.replica(replica_id)
            if replica is not None:
                perf.seed(replica.perf_tokens_per_s, replica.first_token_ms)
        return perf

    # -- queue bookkeeping (keeps ``queued_tokens`` in step with the queue) ------------------

    def push(self, task: Task) -> Enqueued | Rejected:
        outcome = self.queue.enqueue(task.id, task.priority)
        if isinstance(outcome, Enqueued):
            self.queued_tokens += task.expected_tokens
        return outcome

    def popped(self, task: Task) -> None:
        """``task`` left the queue through ``dequeue`` or an eviction."""
        self.queued_tokens = max(0, self.queued_tokens - task.expected_tokens)

    def drop(self, task: Task) -> bool:
        """Take a queued task out of the queue (cancel, failure, deadline)."""
        if self.queue.cancel(task.id):
            self.popped(task)
            return True
        return False

    # -- views for decide --------------------------------------------------------------------

    def serves(self, engine: Engine, model_id: str) -> bool:
        """Whether this pool passes ``decide``'s match filters (engine, then model)."""
        config = self.pool.config
        return config.engine is engine and config.model == model_id

    def identity_snapshot(self, pools: PoolManager) -> PoolSnapshot:
        """A snapshot for a job this pool does not serve: only engine and model are read."""
        # A reload changes the model a pool serves.
        if self._identity is None or self._identity.model_id != self.pool.config.model:
            self._identity = self.snapshot(pools)
        return self._identity

    def snapshot(self, pools: PoolManager) -> PoolSnapshot:
        """The pool and its replica set as core sees them, with measured perf."""
        views = tuple(pools.replica_views(self.id, perf=self._perf_fields))
        return pools.snapshot(
            self.id, queued=len(self.queue), replicas=views, quant=self.pool.config.quant
        )

    def _perf_fields(self, replica_id: str) -> tuple[float | None, float | None]:
        perf = self.perf_of(replica_id)
        return perf.tokens_per_s, perf.first_token_s * 1000

    # -- predictions ---------------------------------------------------------------------------

    def slot_states(self, pools: PoolManager, now: float) -> list[SlotState]:
        slots: list[SlotState] = []
        by_replica: dict[str, list[Task]] = {}
        for task in self.running.values():
            if task.replica_id is not None:
                by_replica.setdefault(task.replica_id, []).append(task)
        if self.pool.draining:
            return slots
        for view in pools.replica_views(self.id):
            if not view.ready:
                continue
            perf = self.perf_of(view.replica_id)
            busy = [
                remaining_s(
                    perf,
                    elapsed_s=now - (t.started_at or now),
                    expected=t.expected_tokens,
                    tokens_out=t.tokens_out,
                )
                for t in by_replica.get(view.replica_id, ())
            ]
            busy.sort()
            for slot in range(view.slots_total):
                free_in = busy[slot] if slot < len(busy) else 0.0
                slots.append(SlotState(free_in, perf))
        return slots

    def _free_slots(self, pools: PoolManager) -> int:
        """Slots of ready replicas that no running task holds (what ``slot_states`` would
        list with ``free_in`` 0)."""
        if self.pool.draining:
            return 0
        running: dict[str | None, int] = {}
        for task in self.running.values():
            running[task.replica_id] = running.get(task.replica_id, 0) + 1
        return sum(
            max(0, view.slots_total - running.get(view.replica_id, 0))
            for view in pools.replica_views(self.id)
            if view.ready
        )

    def predicted_start_s(
        self, pools: PoolManager, now: float, position: int, ahead: list[int]
    ) -> float:
        """Seconds until the task at ``position`` starts; ``ahead`` holds the expected tokens of
        the first tasks before it in dispatch order (at most ``EXACT_LIMIT``)."""
        if position <= EXACT_LIMIT and position < self._free_slots(pools):
            # A free slot for every task ahead and one more: the full estimate says 0 as well
            # (each task ahead takes a free slot, and a busy slot's remaining time is never
            # below one token), without building every slot's state.
            return 0.0
        slots = self.slot_states(pools, now)
        rest = max(0, position - len(ahead))
        queued = len(self.queue)
        mean_tokens = self.queued_tokens / queued if queued else 0.0
        return predicted_start_s(slots, ahead[:EXACT_LIMIT], rest, rest * mean_tokens)
