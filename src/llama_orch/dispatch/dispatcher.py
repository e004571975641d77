"""Dispatcher: pool queues -> ``core.decide`` -> replica slots -> adapter host -> task streams.

Cancel is race-free because everything that touches a task runs on the event loop thread:
``cancel`` moves the task to a terminal state and publishes the terminal frame in the same
step, and a task's transitions refuse tokens once it is terminal. The runner is then canceled,
which closes the adapter stream and so the upstream request.

Placement has one entry point: the replica a task runs on is chosen by ``core.decide`` at the
dispatch stage, over the snapshot of the pool whose queue held the task.

A queued task's start deadline is a timer on the clock, armed at enqueue: nothing polls.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import replace
from itertools import islice
from typing import Any

from prometheus_client import Gauge

from llama_orch.adapters.host import AdapterHost
from llama_orch.clock import SystemClock
from llama_orch.config import Config
from llama_orch.contracts import frames
from llama_orch.contracts.frames import Frame
from llama_orch.core.clock import Clock, Timer
from llama_orch.core.model import (
    AffinityOutcome,
    Assigned,
    JobSpec,
    PlacementDecision,
    PlacementInput,
    PoolSnapshot,
    Stage,
)
from llama_orch.core.placement import decide
from llama_orch.core.prediction import EXACT_LIMIT, on_time_probability
from llama_orch.core.queue import Rejected
from llama_orch.dispatch.embed_runner import EmbedRunner
from llama_orch.dispatch.endings import Endings
from llama_orch.dispatch.lanes import NEVER_MS, PoolLane
from llama_orch.dispatch.runner import Runner, replica_labels
from llama_orch.dispatch.sessions import SessionStore, session_rules
from llama_orch.dispatch.tasks import Task, TaskRegistry, TaskState
from llama_orch.errors import (
    AdmissionRejected,
    OrchError,
    PoolUnready,
    QueueFullDropLru,
    WorkerInternal,
)
from llama_orch.observability.metrics import Metrics, PlacementMetrics
from llama_orch.observability.narration import narrate
from llama_orch.pool.manager import PoolManager, Replica, ReplicaState
from llama_orch.supervisor import Supervisor
from llama_orch.vocab import Priority

#: Retry advice for queued tasks a restart storm ends: about what a reload of the pool takes.
STRANDED_RETRY_AFTER_MS = 5000
#: Bounds of the retry advice for a full queue: no sooner than a quarter second, and no later
#: than a minute (a prediction is no promise, and the pool may not be Ready to make one: a
#: client asking again then gets fresh advice).
RETRY_FLOOR_MS, RETRY_CEILING_MS = 250, 60_000


class Dispatcher:
    def __init__(
        self,
        config: Config,
        pools: PoolManager,
        host: AdapterHost,
        metrics: Metrics,
        *,
        clock: Clock | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self._config = config
        self._pools = pools
        self._host = host
        self._metrics = metrics
        #: Placement series bound once; admission records its decisions here too (ORCH-3962).
        self.placement_metrics: PlacementMetrics = metrics.bind_placement()
        #: ``queue_depth`` children per pool, with the engine_version they were bound for.
        self._depth_gauges: dict[str, tuple[str, dict[str, Gauge]]] = {}
        self._clock: Clock = clock or SystemClock()
        self._supervisor = supervisor or Supervisor(metrics)
        server = config.server
        self.tasks = TaskRegistry(
            retention_s=server.transcript_retention_s,
            max_bytes=server.transcript_max_bytes,
            max_tasks=server.max_tracked_tasks,
        )
        #: Set by ``shutdown``: the server is stopping and admits nothing more.
        self.stopping = False
        self.sessions = SessionStore(session_rules(config.sessions))
        self.lanes = {pool_id: PoolLane(pool) for pool_id, pool in pools.pools.items()}
        #: The start-deadline timer of every queued task.
        self._deadlines: dict[str, Timer] = {}
        self.endings = Endings(
            tasks=self.tasks,
            sessions=self.sessions,
            lanes=self.lanes,
            metrics=metrics,
            clock=self.now,
        )
        self._runner = Runner(
            host=host,
            pools=pools,
            sessions=self.sessions,
            endings=self.endings,
            metrics=metrics,
            clock=self._clock,
            metrics_frame=self.metrics_frame,
            metrics_interval_s=server.sse.metrics_frame_interval_ms / 1000,
        )
        self._embed_runner = EmbedRunner(
            host=host, endings=self.endings, clock=self._clock, release=self._runner.release
        )
        pools.on_capacity_change(self._wake)
        metrics.tasks_retained_bytes.set_function(lambda: self.tasks.stats().finished_bytes)

    @property
    def pools(self) -> PoolManager:
        return self._pools

    def now(self) -> float:
        return self._clock.now()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        for pool_id, lane in self.lanes.items():
            self._supervisor.loop(f"dispatch-{pool_id}", _loop_of(self._pool_loop, lane))

    def shutdown(self) -> None:
        """End every live task (``end`` with ``canceled: true``), so every stream closes; from
        now on admission refuses new tasks (one admitted later would hold the exit)."""
        self.stopping = True
        for task in self.tasks.live_tasks():
            self.cancel(task.id, reason="shutdown")

    async def stop(self, grace_s: float = 5.0) -> None:
        self.shutdown()
        for timer in self._deadlines.values():
            timer.cancel()
        self._deadlines.clear()
        await self._supervisor.cancel_loops(f"dispatch-{pool_id}" for pool_id in self.lanes)
        await self._supervisor.drain_jobs(grace_s)

    def _wake(self, pool_id: str) -> None:
        lane = self.lanes.get(pool_id)
        if lane is None:
            return
        ready_now = {r.replica_id for r in lane.pool.replicas if r.state is ReplicaState.READY}
        # A replica that dropped out of Ready (restart, failure) lost every session's KV cache.
        for lost in lane.ready_replicas - ready_now:
            self.sessions.forget_replica((pool_id, lost))
        lane.ready_replicas = ready_now
        lane.wake.set()

    # -- admission side ------------------------------------------------------------------------

    def snapshots(self, job: JobSpec | None = None) -> tuple[PoolSnapshot, ...]:
        """Every pool as ``decide`` sees it at admission.

        With ``job``, a pool that serves another engine or model is passed as its identity
        snapshot (built once): ``decide`` drops it at the first filters (engine, model), reading
        nothing else of it, so the decision and its log are the same and admission skips
        building live views it would never look at.
        """
        pools = self._pools
        if job is None:
            return tuple(lane.snapshot(pools) for lane in self.lanes.values())
        return tuple(
            lane.snapshot(pools)
            if lane.serves(job.engine, job.model_id)
            else lane.identity_snapshot(pools)
            for lane in self.lanes.values()
        )

    def placement_input(self, job: JobSpec, now: float) -> PlacementInput:
        """The admission-stage input: every pool, stamped with the topology version."""
        pools = self.snapshots(job)
        # Read after the snapshots: taking them may mark a stale replica and bump the version.
        version = self._pools.snapshot_version
        return PlacementInput(pools, job, now, Stage.ADMISSION, snapshot_version=version)

    def decide(self, placement: PlacementInput) -> PlacementDecision:
        """``core.decide`` plus its metrics; every placement goes through here (ORCH-3962)."""
        decision = decide(placement)
        self.placement_metrics.record(decision)
        return decision

    def _ahead(self, lane: PoolLane, position: int) -> list[int]:
        """Expected tokens of the first tasks ahead of ``position``, in dispatch order."""
        tokens = []
        for task_id in islice(lane.queue, min(position, EXACT_LIMIT)):
            task = self.tasks.get(task_id)
            tokens.append(task.expected_tokens if task is not None else 0)
        return tokens

    def predicted_start_ms(self, lane: PoolLane, position: int, tokens: int = 0) -> int:
        """Milliseconds until the task at queue ``position`` starts (docs/predictions.md)."""
        wait = lane.predicted_start_s(
            self._pools, self.now(), position, self._ahead(lane, position)
        )
        return NEVER_MS if wait == float("inf") else min(NEVER_MS, int(wait * 1000))

    def predict_new(self, lane: PoolLane, priority: Priority) -> tuple[int, int]:
        """(position, predicted_start_ms) a task of this class would get if enqueued now."""
        position = lane.queue.position_if_enqueued(priority)
        return position, self.predicted_start_ms(lane, position)

    def enqueue(self, task: Task) -> int:
        """Queue an admitted task; returns its position. Raises on a full queue.

        Nothing starts here: the caller calls ``dispatch`` once the task is recorded."""
        lane = self.lanes[task.pool_id]
        outcome = lane.push(task)
        engine = task.engine.value
        if isinstance(outcome, Rejected):
            policy = lane.queue.policy.value
            self._metrics.admission_backpressure_events_total.labels(engine, policy).inc()
            # A class at its own queue_capacity frees a place when its own head starts.
            head = lane.queue.peek(task.priority) if outcome.reason == "class_full" else None
            position = (lane.queue.position(head) or 0) if head is not None else 0
            retry_ms = self._retry_after_ms(lane, position)
            message = (
                f"pool {task.pool_id} queue is full ({lane.queue.capacity()} tasks, "
                f"policy {policy}); retry in about {retry_ms} ms"
            )
            if lane.queue.policy.value == "drop-lru":
                raise QueueFullDropLru(
                    message + "; a batch task never evicts an interactive one",
                    retry_after_ms=retry_ms,
                    policy_label=policy,
                    pool_id=task.pool_id,
                    engine=engine,
                )
            raise AdmissionRejected(
                message,
                retry_after_ms=retry_ms,
                policy_label=policy,
                pool_id=task.pool_id,
                engine=engine,
            )
        self.tasks.add(task)
        self._deadlines[task.id] = self._clock.call_at(
            task.deadline_at, lambda: self._deadline_passed(task.id)
        )
        if outcome.evicted is not None:
            self._metrics.admission_backpressure_events_total.labels(engine, "drop-lru").inc()
            self._evict(outcome.evicted, by=task)
        self._refresh_depth(lane)
        return outcome.position

    def _retry_after_ms(self, lane: PoolLane, head: int = 0) -> int:
        """When the full queue should have a place again: when the task at position ``head``
        (its head, or its full class's) starts. The refused task's own size has no bearing on
        that; a retry before then is refused again."""
        head_ms = self.predicted_start_ms(lane, head)
        return max(RETRY_FLOOR_MS, min(head_ms, RETRY_CEILING_MS))

    def _evict(self, victim_id: str, *, by: Task) -> None:
        victim = self.tasks.get(victim_id)
        if victim is None or victim.terminal:
            return
        lane = self.lanes[victim.pool_id]
        # The queue already unlinked the victim, so ``fail`` finds nothing left to drop.
        lane.popped(victim)
        self._disarm_deadline(victim.id)
        self._metrics.rejected(victim.engine.value, "QUEUE_FULL_DROP_LRU").inc()
        self.endings.fail(
            victim,
            QueueFullDropLru(
                f"evicted from the full queue of pool {victim.pool_id} to admit a newer "
                f"{by.priority.value} task; resubmit later",
                retry_after_ms=self._retry_after_ms(lane),
                policy_label="drop-lru",
                pool_id=victim.pool_id,
                engine=victim.engine.value,
            ),
        )

    def _refresh_depth(self, lane: PoolLane) -> None:
        pool = lane.pool
        version = pool.engine_version or "unknown"
        bound = self._depth_gauges.get(pool.id)
        if bound is None or bound[0] != version:
            if bound is not None:
                # The old version's series would stay frozen at its last depth.
                for priority in bound[1]:
                    self._metrics.queue_depth.remove(
                        pool.config.engine.value, bound[0], pool.id, priority
                    )
            gauges = self._metrics.bind_queue_depth(pool.config.engine.value, version, pool.id)
            bound = self._depth_gauges[pool.id] = (version, gauges)
        gauges = bound[1]
        for priority in Priority:
            gauges[priority.value].set(lane.queue.depth(priority))

    def queue_position(self, task: Task) -> int:
        if task.state is not TaskState.QUEUED:
            return 0
        return self.lanes[task.pool_id].queue.position(task.id) or 0

    # -- dispatch side -------------------------------------------------------------------------

    def dispatch(self, pool_id: str) -> None:
        """Start what the pool can start now, on the caller's step (admission's).

        The queue's order decides, from its head, exactly as in the pool loop; running it here
        saves the loop's wake-up, one event-loop iteration before a free slot is taken, which
        under load is milliseconds of every task's first token. The pool loop still starts
        queued tasks on every capacity change.
        """
        lane = self.lanes[pool_id]
        try:
            self._dispatch_ready(lane)
        except Exception:
            # The task is queued whatever went wrong: the pool loop tries again, and logs the
            # failure and restarts with backoff if it fails there too.
            lane.wake.set()

    async def _pool_loop(self, lane: PoolLane) -> None:
        while True:
            await lane.wake.wait()
            lane.wake.clear()
            if lane.pool.stopped:
                self._end_stranded(lane)
            self._dispatch_ready(lane)

    def _end_stranded(self, lane: PoolLane) -> None:
        """Every replica of the pool stopped restarting (a restart storm): no queued task can
        start before the pool is reloaded, so each ends now, as a new one is refused."""
        if not len(lane.queue):
            return
        pool = lane.pool
        self.end_queued(
            pool.id,
            PoolUnready(
                f"pool {pool.id} stopped restarting its engine ({pool.last_error}); the task "
                "was not started: resubmit it once the pool is reloaded, or to another pool",
                retry_after_ms=STRANDED_RETRY_AFTER_MS,
                pool_id=pool.id,
                engine=pool.config.engine.value,
            ),
        )

    def _dispatch_ready(self, lane: PoolLane) -> None:
        """Start queued tasks while ``decide`` finds a replica with a free slot."""
        while True:
            task_id = lane.queue.peek_next()
            if task_id is None:
                break
            task = self.tasks.get(task_id)
            now = self.now()
            if task is None or task.terminal:
                lane.queue.dequeue()
                continue
            if now > task.deadline_at:
                self._disarm_deadline(task.id)
                self.endings.expire(task)
                continue
            job = self._job_at_dispatch(task)
            snapshot = lane.snapshot(self._pools)
            decision = self.decide(
                PlacementInput(
                    (snapshot,),
                    job,
                    now,
                    Stage.DISPATCH,
                    snapshot_version=self._pools.snapshot_version,
                )
            )
            if not isinstance(decision, Assigned):
                break
            lane.queue.dequeue()
            lane.popped(task)
            replica = self._pools.allocate_lease(lane.id, decision.replica_id)
            self._start(task, lane, replica, decision)
        self._refresh_depth(lane)

    def _job_at_dispatch(self, task: Task) -> JobSpec:
        """The admission-time job with the session's affinity as it stands now."""
        assert task.job is not None
        # The session the task was admitted under: after a DELETE its id may name a new one.
        return replace(task.job, affinity=self.sessions.affinity_of(task.session))

    def _start(self, task: Task, lane: PoolLane, replica: Replica, decision: Assigned) -> None:
        now = self.now()
        # Warm for the session the task was admitted under (a new session of the same id, after
        # a DELETE, is another conversation).
        session = task.session
        warm_here = session is not None and (task.pool_id, replica.replica_id) in session.warm
        request, work = task.request, task.work
        assert request is not None or work is not None  # a queued task holds what it will send
        # A failover always starts cold: KV is never migrated.
        task.start(
            now,
            replica_id=replica.replica_id,
            engine_version=replica.engine_version,
            kv_warm=warm_here and decision.log.affinity is not AffinityOutcome.FAILOVER,
            decision=decision.log,
        )
        self._disarm_deadline(task.id)
        lane.running[task.id] = task
        if replica.metrics is not None:
            started = (
                replica.metrics.started_interactive
                if task.priority is Priority.INTERACTIVE
                else replica.metrics.started_batch
            )
            started.inc()
        queue_ms = int((now - task.admitted_at) * 1000)
        narrate(
            "dispatcher",
            "place",
            task.pool_id,
            f"Places task {task.id[:8]} on {task.pool_id}/{replica.replica_id} after "
            f"{queue_ms} ms in queue ({_why(decision)}).",
            **task.log_fields(),
            queue_time_ms=queue_ms,
            **{**decision.log.fields(), "kv_warmth": task.kv_warm},
        )
        prestarted = None
        if work is not None:
            run = self._embed_runner.run(task, lane, replica, work)
        else:
            assert request is not None
            prestarted = self._runner.prestart(task, replica, request)
            run = self._runner.run(task, lane, replica, request, prestarted)
        runner = self._supervisor.job(run, name=f"task-{task.id}")

        def ran(done: asyncio.Task[None]) -> None:
            self._runner.release(task, lane, replica)
            if prestarted is not None:
                prestarted.discard()  # a runner canceled before its first step never took it
            if not task.terminal and not done.cancelled() and done.exception() is not None:
                # A runner that crashed (its trace is logged by the supervisor) still ends its
                # task, or the task's client would wait for a terminal frame forever.
                self.endings.fail(
                    task,
                    WorkerInternal(
                        "the server failed while running the task; it is logged with this "
                        "task's id",
                        engine=task.engine.value,
                        pool_id=task.pool_id,
                    ),
                )

        runner.add_done_callback(ran)
        task.runner = runner

    def on_time_probability(self, task: Task, lane: PoolLane) -> float:
        now = self.now()
        if task.started_at is not None:
            return 1.0 if task.started_at <= task.deadline_at else 0.0
        position = self.queue_position(task)
        wait = self.predicted_start_ms(lane, position) / 1000
        slots = max(1, lane.pool.slots_total)
        cv = sum(p.cv for p in lane.perf.values()) / max(1, len(lane.perf))
        return on_time_probability(
            wait, task.deadline_at - now, cv=cv, releases=position // slots + 1
        )

    def metrics_frame(self, task: Task, lane: PoolLane) -> Frame:
        failover = task.decision is not None and task.decision.affinity is AffinityOutcome.FAILOVER
        return frames.metrics_frame(
            queue_depth=len(lane.queue),
            on_time_probability=self.on_time_probability(task, lane),
            kv_warmth=task.kv_warm,
            kv_migrated=False if failover else None,
            budgets=self.budget_fields(task.session_id),
        )

    def budget_fields(self, session_id: str) -> dict[str, int | float]:
        """The session's remaining budgets as SSE ``metrics`` fields (only enabled ones)."""
        session = self.sessions.get(session_id, self.now())
        if session is None:
            return {}
        left = session.remaining()
        fields: dict[str, int | float] = {}
        if left.tokens is not None:
            fields["tokens_budget_remaining"] = left.tokens
        if left.time_ms is not None:
            fields["time_budget_remaining_ms"] = left.time_ms
        if left.cost is not None:
            fields["cost_budget_remaining"] = left.cost
        return fields

    def _deadline_passed(self, task_id: str) -> None:
        self._deadlines.pop(task_id, None)
        task = self.tasks.get(task_id)
        if task is not None and task.state is TaskState.QUEUED:
            self.endings.expire(task)
            self._refresh_depth(self.lanes[task.pool_id])

    def _disarm_deadline(self, task_id: str) -> None:
        timer = self._deadlines.pop(task_id, None)
        if timer is not None:
            timer.cancel()

    def end_queued(self, pool_id: str, error: OrchError) -> int:
        """End every task still queued on the pool with ``error`` (a drain, a reload's switch,
        a retired model, a restart storm: each drains the pool); how many.

        Each counts as canceled for the drain, as the running tasks a drain stops do: a task
        that left the queue without starting is counted in one place or another."""
        queued = [
            t
            for t in self.tasks.live_tasks()
            if t.pool_id == pool_id and t.state is TaskState.QUEUED
        ]
        for task in queued:
            self._disarm_deadline(task.id)
            self._metrics.tasks_canceled_total.labels(
                task.engine.value, "unknown", pool_id, "none", "drain"
            ).inc()
            self.endings.fail(task, error, server_stop=True)
        self._refresh_depth(self.lanes[pool_id])
        return len(queued)

    def cancel(self, task_id: str, *, reason: str = "client") -> Task | None:
        """Cancel a task; idempotent. Returns None for an unknown task."""
        task = self.tasks.get(task_id)
        if task is None or task.terminal:
            return task
        lane = self.lanes[task.pool_id]
        replica_id = task.replica_id
        task.cancel_reason = reason
        if task.state is TaskState.QUEUED:
            self._disarm_deadline(task.id)
            self.endings.cancel(task)
            self._refresh_depth(lane)
            labels: tuple[str, ...] = (task.engine.value, "unknown", task.pool_id, "none")
        else:
            replica = lane.replica(replica_id)
            runner = task.runner
            self.endings.cancel(task, replica)
            labels = replica_labels(task, replica) if replica is not None else ()
            if runner is not None:
                runner.cancel()
            if replica_id is not None:
                self._supervisor.job(
                    self._host.cancel(task.pool_id, replica_id, task.id),
                    name=f"engine-cancel-{task.id}",
                )
        if labels:
            self._metrics.tasks_canceled_total.labels(*labels, reason).inc()
        return task


def _loop_of(
    loop: Callable[[PoolLane], Coroutine[Any, Any, None]], lane: PoolLane
) -> Callable[[], Coroutine[Any, Any, None]]:
    return lambda: loop(lane)


def _why(decision: Assigned) -> str:
    log = decision.log
    if log.affinity is AffinityOutcome.KEPT:
        return "session affinity, KV warm"
    parts = []
    if log.affinity is AffinityOutcome.FAILOVER:
        parts.append("affinity failover, KV cold")
    if log.tie_breakers_applied:
        parts.append("by " + ", ".join(log.tie_breakers_applied))
    else:
        parts.append("only candidate")
    return "; ".join(parts)
