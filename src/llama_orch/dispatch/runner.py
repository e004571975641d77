"""Runner: drives one task's engine stream under the watchdog (OC-CORE-1022).

The watchdog has two clocks: ``timeouts.wall_ms`` bounds the whole run from dispatch, and
``timeouts.idle_ms`` bounds every silence (before the first token and between tokens). Either
one ending the run fails the task with ``DECODE_TIMEOUT``. Whatever ends the run, the ``finally``
closes the engine stream and releases the lease, so a slot is never leaked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from llama_orch.adapters.host import AdapterHost
from llama_orch.contracts.engine import EngineEvent
from llama_orch.dispatch.endings import Endings
from llama_orch.dispatch.lanes import PoolLane
from llama_orch.dispatch.sessions import SessionStore
from llama_orch.dispatch.tasks import Task, TaskState
from llama_orch.errors import DecodeTimeout, WorkerError, WorkerReset
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.manager import PoolManager, Replica

MetricsPayload = Callable[[Task, PoolLane], dict[str, Any]]


def replica_labels(task: Task, replica: Replica) -> tuple[str, str, str, str]:
    if replica.metrics is not None:
        return replica.metrics.labels
    return (task.engine.value, replica.engine_version, task.pool_id, replica.replica_id)


class Runner:
    def __init__(
        self,
        *,
        host: AdapterHost,
        pools: PoolManager,
        sessions: SessionStore,
        endings: Endings,
        metrics: Metrics,
        clock: Callable[[], float],
        metrics_payload: MetricsPayload,
        metrics_interval_s: float,
    ) -> None:
        self._host = host
        self._pools = pools
        self._sessions = sessions
        self._endings = endings
        self._metrics = metrics
        self._clock = clock
        self._metrics_payload = metrics_payload
        self._metrics_interval_s = metrics_interval_s

    async def run(self, task: Task, lane: PoolLane, replica: Replica) -> None:
        loop = asyncio.get_running_loop()
        timeouts = lane.pool.config.timeouts
        started = loop.time()
        wall_at = started + timeouts.wall_ms / 1000
        idle_s = timeouts.idle_ms / 1000
        stream = self._host.submit(task.pool_id, replica.replica_id, task.request)
        # The watchdog is one timer that re-arms itself: each event only records the time of
        # progress (``last``), and the timer, when it comes due, either expires the run (idle
        # or wall limit passed) or moves on to the next moment either limit could pass.
        last = started
        check: asyncio.TimerHandle | None = None
        try:
            async with asyncio.timeout(None) as watchdog:

                def due() -> None:
                    nonlocal check
                    deadline = min(wall_at, last + idle_s)
                    if loop.time() >= deadline:
                        watchdog.reschedule(deadline)  # in the past: expires now
                    else:
                        check = loop.call_at(deadline, due)

                check = loop.call_at(min(wall_at, started + idle_s), due)
                async for event in stream:
                    if task.terminal:
                        break
                    last = loop.time()
                    self._on_event(task, lane, replica, event)
                    if task.terminal:
                        break
            if not task.terminal:
                raise WorkerReset(
                    "the engine stream ended without a final frame",
                    engine=task.engine.value,
                    pool_id=task.pool_id,
                )
        except WorkerError as exc:
            if not task.terminal:
                self._endings.fail(task, exc)
        except TimeoutError:
            if not task.terminal:
                which = "wall" if loop.time() >= wall_at else "idle"
                limit = timeouts.wall_ms if which == "wall" else timeouts.idle_ms
                self._metrics.tasks_canceled_total.labels(
                    *replica_labels(task, replica), "watchdog"
                ).inc()
                self._endings.fail(
                    task,
                    DecodeTimeout(
                        f"the engine exceeded the {which} timeout of {limit} ms; its slot is freed",
                        engine=task.engine.value,
                        pool_id=task.pool_id,
                    ),
                )
        finally:
            if check is not None:
                check.cancel()
            lane.running.pop(task.id, None)
            try:
                await stream.aclose()  # type: ignore[attr-defined]
            finally:
                self._pools.release_lease(task.pool_id, replica.replica_id)

    def _on_event(self, task: Task, lane: PoolLane, replica: Replica, event: EngineEvent) -> None:
        kind = event.kind
        if kind == "tokens":
            texts = event.texts
            if task.first_token_at is None:
                self._first_token(task, replica)
            task.stream.publish_tokens(texts)
            task.tokens_out += len(texts)
            now = self._clock()
            if now >= task.next_metrics_at:
                self._tick(task, lane, replica, now)
        elif kind == "token":
            if task.first_token_at is None:
                self._first_token(task, replica)
            task.stream.publish_token(event.text)
            task.tokens_out += 1
            now = self._clock()
            if now >= task.next_metrics_at:
                self._tick(task, lane, replica, now)
        elif kind == "started":
            task.tokens_in = int(event.data.get("tokens_in", 0))
            version = event.data.get("engine_version")
            if isinstance(version, str):
                task.engine_version = version
        elif kind == "end":
            self._endings.end(task, TaskState.DONE, replica=replica)
        elif kind == "error":
            raise event.error or WorkerReset("the engine reported an error without details")

    def _tick(self, task: Task, lane: PoolLane, replica: Replica, now: float) -> None:
        """Once per metrics interval of a stream: a ``metrics`` frame, and the replica's
        heartbeat (tokens arriving prove the engine alive)."""
        task.next_metrics_at = now + self._metrics_interval_s
        task.stream.publish("metrics", self._metrics_payload(task, lane))
        self._pools.stream_progress(replica)

    def _first_token(self, task: Task, replica: Replica) -> None:
        now = self._clock()
        task.first_token_at = now
        session = self._sessions.get(task.session_id, now)
        if session is not None:
            self._sessions.mark_warm(session, (task.pool_id, replica.replica_id), now)
