"""Dispatcher: pool queues -> replica slots -> adapter host -> task streams.

Cancel is race-free because everything that touches a task runs on the event loop thread:
``cancel`` flips the task to a terminal state and publishes the terminal frame synchronously,
and every token is published only after checking that the task is not terminal. The runner is
then canceled, which closes the adapter stream and so the upstream request.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
from collections.abc import Callable
from typing import Any

from llama_orch.adapters.host import AdapterHost
from llama_orch.config import Config
from llama_orch.contracts.engine import EngineEvent
from llama_orch.core.placement import pick_replica
from llama_orch.core.queue import AdmissionQueue, Rejected
from llama_orch.dispatch.predict import PoolPerf, on_time_probability, predicted_wait_s
from llama_orch.dispatch.sessions import SessionStore
from llama_orch.dispatch.tasks import Task, TaskRegistry, TaskState
from llama_orch.errors import (
    AdmissionRejected,
    DeadlineUnmet,
    DecodeTimeout,
    OrchError,
    QueueFullDropLru,
    WorkerError,
    WorkerReset,
)
from llama_orch.observability.metrics import Metrics
from llama_orch.observability.narration import narrate
from llama_orch.pool.manager import PoolManager, PoolRuntime, Replica
from llama_orch.vocab import Priority

Clock = Callable[[], float]


class PoolLane:
    """One pool's queue, perf model and wake-up signal."""

    __slots__ = ("perf", "pool", "queue", "wake")

    def __init__(self, pool: PoolRuntime) -> None:
        cfg = pool.config
        class_caps = {
            p.name: p.queue_capacity for p in cfg.admission.priorities if p.queue_capacity
        }
        self.pool = pool
        self.queue = AdmissionQueue(cfg.queue.capacity, cfg.queue.full_policy, class_caps)
        self.perf = PoolPerf()
        self.wake = asyncio.Event()


class Dispatcher:
    def __init__(
        self,
        config: Config,
        pools: PoolManager,
        host: AdapterHost,
        metrics: Metrics,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._config = config
        self._pools = pools
        self._host = host
        self._metrics = metrics
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        server = config.server
        self.tasks = TaskRegistry(
            retention_s=server.transcript_retention_s,
            max_bytes=server.transcript_max_bytes,
            max_tasks=server.max_tracked_tasks,
        )
        self.sessions = SessionStore(config.sessions)
        self.lanes = {pool_id: PoolLane(pool) for pool_id, pool in pools.pools.items()}
        self._metrics_interval_s = server.sse.metrics_frame_interval_ms / 1000
        self._deadlines: list[tuple[float, str]] = []
        self._background: set[asyncio.Task[Any]] = set()
        pools.on_capacity_change(self._wake)

    def now(self) -> float:
        return self._clock()

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        for pool_id, lane in self.lanes.items():
            self._spawn(self._pool_loop(lane), name=f"dispatch-{pool_id}")
        self._spawn(self._deadline_loop(), name="deadline-sweeper")

    async def stop(self) -> None:
        for task in self.tasks.live_tasks():
            if task.state is TaskState.RUNNING:
                self.cancel(task.id, reason="shutdown")
        tasks = list(self._background)
        for bg in tasks:
            bg.cancel()
        for bg in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await bg

    def _spawn(self, coro: Any, *, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    def _wake(self, pool_id: str) -> None:
        lane = self.lanes.get(pool_id)
        if lane is not None:
            lane.wake.set()

    # -- admission side ------------------------------------------------------------------------

    def predicted_start_ms(self, lane: PoolLane, position: int, tokens: int) -> int:
        pool = lane.pool
        wait = predicted_wait_s(
            position,
            pool.slots_total if pool.ready else 0,
            pool.slots_total - pool.active_leases,
            lane.perf.service_s(tokens),
        )
        return int(wait * 1000) if wait != float("inf") else 2**31 - 1

    def enqueue(self, task: Task) -> int:
        """Queue an admitted task; returns its position. Raises on a full queue."""
        lane = self.lanes[task.pool_id]
        outcome = lane.queue.enqueue(task.id, task.priority)
        engine = task.engine.value
        if isinstance(outcome, Rejected):
            policy = lane.queue.policy.value
            self._metrics.admission_backpressure_events_total.labels(engine, policy).inc()
            retry_ms = self._retry_after_ms(lane, task.expected_tokens)
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
        heapq.heappush(self._deadlines, (task.deadline_at, task.id))
        if outcome.evicted is not None:
            self._metrics.admission_backpressure_events_total.labels(engine, "drop-lru").inc()
            self._evict(outcome.evicted, by=task)
        self._refresh_depth(lane)
        lane.wake.set()
        return outcome.position

    def _retry_after_ms(self, lane: PoolLane, tokens: int) -> int:
        slots = max(1, lane.pool.slots_total)
        return max(250, int(lane.perf.service_s(tokens) * 1000 / slots))

    def _evict(self, victim_id: str, *, by: Task) -> None:
        victim = self.tasks.get(victim_id)
        if victim is None or victim.terminal:
            return
        self._metrics.tasks_rejected_total.labels(victim.engine.value, "QUEUE_FULL_DROP_LRU").inc()
        lane = self.lanes[victim.pool_id]
        self._fail(
            victim,
            QueueFullDropLru(
                f"evicted from the full queue of pool {victim.pool_id} to admit a newer "
                f"{by.priority.value} task; resubmit later",
                retry_after_ms=self._retry_after_ms(lane, victim.expected_tokens),
                policy_label="drop-lru",
                pool_id=victim.pool_id,
                engine=victim.engine.value,
            ),
        )

    def _refresh_depth(self, lane: PoolLane) -> None:
        pool = lane.pool
        version = pool.engine_version or "unknown"
        for priority in Priority:
            self._metrics.queue_depth.labels(
                pool.config.engine.value, version, pool.id, priority.value
            ).set(lane.queue.depth(priority))

    def queue_position(self, task: Task) -> int:
        if task.state is not TaskState.QUEUED:
            return 0
        return self.lanes[task.pool_id].queue.position(task.id) or 0

    # -- dispatch side -------------------------------------------------------------------------

    async def _pool_loop(self, lane: PoolLane) -> None:
        while True:
            await lane.wake.wait()
            lane.wake.clear()
            while len(lane.queue):
                replica_view = pick_replica(self._pools.replica_views(lane.pool.id))
                if replica_view is None:
                    break
                task_id = lane.queue.dequeue()
                if task_id is None:
                    break
                task = self.tasks.get(task_id)
                if task is None or task.terminal:
                    continue
                if self.now() > task.deadline_at:
                    self._expire(task)
                    continue
                replica = self._pools.allocate_lease(lane.pool.id, replica_view.replica_id)
                self._start(task, lane, replica)
            self._refresh_depth(lane)

    def _start(self, task: Task, lane: PoolLane, replica: Replica) -> None:
        task.state = TaskState.RUNNING
        task.replica_id = replica.replica_id
        task.engine_version = replica.engine_version
        task.started_at = self.now()
        if replica.metrics is not None:
            started = (
                replica.metrics.started_interactive
                if task.priority is Priority.INTERACTIVE
                else replica.metrics.started_batch
            )
            started.inc()
        session = self.sessions.get(task.session_id, task.started_at)
        task.kv_warm = session is not None and session.last_replica == (
            task.pool_id,
            replica.replica_id,
        )
        narrate(
            "dispatcher",
            "place",
            task.pool_id,
            f"Places task {task.id[:8]} on {task.pool_id}/{replica.replica_id} after "
            f"{int((task.started_at - task.admitted_at) * 1000)} ms in queue.",
            **task.log_fields(),
            queue_time_ms=int((task.started_at - task.admitted_at) * 1000),
            kv_warmth=task.kv_warm,
        )
        task.runner = self._spawn(self._run(task, lane, replica), name=f"task-{task.id}")

    async def _run(self, task: Task, lane: PoolLane, replica: Replica) -> None:
        loop = asyncio.get_running_loop()
        timeouts = lane.pool.config.timeouts
        wall_at = loop.time() + timeouts.wall_ms / 1000
        idle_s = timeouts.idle_ms / 1000
        stream = self._host.submit(task.pool_id, replica.replica_id, task.request)
        try:
            async with asyncio.timeout(min(wall_at, loop.time() + idle_s)) as watchdog:
                async for event in stream:
                    if task.terminal:
                        break
                    self._on_event(task, lane, replica, event)
                    if task.terminal:
                        break
                    watchdog.reschedule(min(wall_at, loop.time() + idle_s))
            if not task.terminal:
                raise WorkerReset(
                    "the engine stream ended without a final frame",
                    engine=task.engine.value,
                    pool_id=task.pool_id,
                )
        except WorkerError as exc:
            if not task.terminal:
                self._fail(task, exc)
        except TimeoutError:
            if not task.terminal:
                which = "wall" if loop.time() >= wall_at else "idle"
                limit = timeouts.wall_ms if which == "wall" else timeouts.idle_ms
                self._metrics.tasks_canceled_total.labels(
                    *self._replica_labels(task, replica), "watchdog"
                ).inc()
                self._fail(
                    task,
                    DecodeTimeout(
                        f"the engine exceeded the {which} timeout of {limit} ms; its slot is freed",
                        engine=task.engine.value,
                        pool_id=task.pool_id,
                    ),
                )
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            self._pools.release_lease(task.pool_id, replica.replica_id)

    def _replica_labels(self, task: Task, replica: Replica) -> tuple[str, str, str, str]:
        if replica.metrics is not None:
            return replica.metrics.labels
        return (task.engine.value, replica.engine_version, task.pool_id, replica.replica_id)

    def _on_event(self, task: Task, lane: PoolLane, replica: Replica, event: EngineEvent) -> None:
        kind = event.kind
        if kind == "token":
            now = self.now()
            if task.first_token_at is None:
                task.first_token_at = now
                session = self.sessions.get(task.session_id, now)
                if session is not None:
                    session.kv_warmth = True
                    session.last_replica = (task.pool_id, replica.replica_id)
            task.stream.publish_token(event.text)
            task.tokens_out += 1
            if now >= task.next_metrics_at:
                task.next_metrics_at = now + self._metrics_interval_s
                task.stream.publish("metrics", self.metrics_payload(task, lane))
        elif kind == "started":
            task.tokens_in = int(event.data.get("tokens_in", 0))
            version = event.data.get("engine_version")
            if isinstance(version, str):
                task.engine_version = version
        elif kind == "end":
            self._end(task, TaskState.DONE, lane=lane, replica=replica)
        elif kind == "error":
            raise event.error or WorkerReset("the engine reported an error without details")

    def metrics_payload(self, task: Task, lane: PoolLane) -> dict[str, Any]:
        wait = 0.0
        if task.state is TaskState.QUEUED:
            wait = (
                self.predicted_start_ms(lane, self.queue_position(task), task.expected_tokens)
                / 1000
            )
        remaining = task.deadline_at - (task.started_at or self.now())
        probability = (
            1.0
            if task.started_at is not None and remaining >= 0
            else (on_time_probability(wait, remaining))
        )
        return {
            "queue_depth": len(lane.queue),
            "on_time_probability": round(probability, 4),
            "kv_warmth": task.kv_warm,
        }

    # -- endings -------------------------------------------------------------------------------

    def _end(
        self,
        task: Task,
        state: TaskState,
        *,
        lane: PoolLane | None = None,
        replica: Replica | None = None,
        canceled: bool = False,
    ) -> None:
        now = self.now()
        decode_ms = int((now - task.first_token_at) * 1000) if task.first_token_at else 0
        payload: dict[str, Any] = {
            "tokens_out": task.tokens_out,
            "decode_time_ms": decode_ms,
            "decode_ms": decode_ms,
            "tokens_in": task.tokens_in,
        }
        if canceled:
            payload["canceled"] = True
        task.state = state
        task.stream.publish("end", payload)
        self._account(task, now, decode_ms, replica)
        if lane is not None and state is TaskState.DONE and task.started_at is not None:
            lane.perf.observe(
                first_token_s=(task.first_token_at - task.started_at)
                if task.first_token_at
                else None,
                tokens=task.tokens_out,
                decode_s=decode_ms / 1000,
            )
        self.tasks.finished(task, now)
        narrate(
            "dispatcher",
            "cancel" if canceled else "stream-end",
            task.pool_id,
            f"Ends task {task.id[:8]}"
            + (" on cancel" if canceled else "")
            + f" after {task.tokens_out} tokens.",
            **task.log_fields(),
            tokens_in=task.tokens_in,
            tokens_out=task.tokens_out,
            decode_time_ms=decode_ms,
        )

    def _account(self, task: Task, now: float, decode_ms: int, replica: Replica | None) -> None:
        """Charge the session and count tokens once per task, never per token."""
        session = self.sessions.get(task.session_id, now)
        if session is not None:
            session.tokens_used += task.tokens_out
            session.time_used_ms += decode_ms
            session.last_used_at = now
        if replica is not None and replica.metrics is not None:
            m = replica.metrics
            m.tokens_out.inc(task.tokens_out)
            m.tokens_in.inc(task.tokens_in)
            interactive = task.priority is Priority.INTERACTIVE
            if task.first_token_at is not None:
                (m.first_token_interactive if interactive else m.first_token_batch).observe(
                    (task.first_token_at - task.admitted_at) * 1000
                )
                (m.decode_interactive if interactive else m.decode_batch).observe(decode_ms)

    def _fail(self, task: Task, error: OrchError) -> None:
        if task.state is TaskState.QUEUED:
            self.lanes[task.pool_id].queue.cancel(task.id)
        task.state = TaskState.FAILED
        payload = error.envelope()
        payload.setdefault("engine", task.engine.value)
        task.stream.publish("error", payload)
        self.tasks.finished(task, self.now())
        narrate(
            "dispatcher",
            "stream-error",
            task.pool_id,
            f"Ends task {task.id[:8]} with {error.kind.value}: {error.message}"[:160],
            level="warning",
            **task.log_fields(),
            error_kind=error.kind.value,
            tokens_out=task.tokens_out,
            retry_after_ms=error.retry_after_ms,
        )

    def _expire(self, task: Task) -> None:
        self._metrics.tasks_canceled_total.labels(
            task.engine.value, "unknown", task.pool_id, "none", "deadline"
        ).inc()
        self._fail(
            task,
            DeadlineUnmet(
                "the task's deadline passed before a slot freed up; resubmit with a longer "
                "deadline_ms or at a quieter time",
                pool_id=task.pool_id,
                engine=task.engine.value,
            ),
        )

    async def _deadline_loop(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = self.now()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, task_id = heapq.heappop(self._deadlines)
                task = self.tasks.get(task_id)
                if task is not None and task.state is TaskState.QUEUED:
                    self._expire(task)
                    self._refresh_depth(self.lanes[task.pool_id])

    def cancel(self, task_id: str, *, reason: str = "client") -> Task | None:
        """Cancel a task; idempotent. Returns None for an unknown task."""
        task = self.tasks.get(task_id)
        if task is None or task.terminal:
            return task
        lane = self.lanes[task.pool_id]
        replica_id = task.replica_id
        if task.state is TaskState.QUEUED:
            lane.queue.cancel(task.id)
            self._refresh_depth(lane)
            self._end(task, TaskState.CANCELED, canceled=True)
            labels: tuple[str, ...] = (task.engine.value, "unknown", task.pool_id, "none")
        else:
            replica = next(r for r in lane.pool.replicas if r.replica_id == replica_id)
            self._end(task, TaskState.CANCELED, replica=replica, canceled=True)
            labels = self._replica_labels(task, replica)
            if task.runner is not None:
                task.runner.cancel()
            if replica_id is not None:
                self._spawn(
                    self._host.cancel(task.pool_id, replica_id, task.id),
                    name=f"engine-cancel-{task.id}",
                )
        self._metrics.tasks_canceled_total.labels(*labels, reason).inc()
        return task
