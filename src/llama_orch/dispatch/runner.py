"""Runner: drives one task's engine stream under the watchdog (OC-CORE-1022).

The watchdog has two clocks: ``timeouts.wall_ms`` bounds the whole run from dispatch, and
``timeouts.idle_ms`` bounds every silence (before the first token and between tokens). Either
one ending the run fails the task with ``DECODE_TIMEOUT``. Whatever ends the run, the ``finally``
closes the engine stream and releases the lease (the dispatcher releases it too when a runner
is canceled before it ever ran), so a slot is never leaked.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Sequence

from llama_orch.adapters.host import AdapterHost, Prestarted
from llama_orch.config import TimeoutsConfig
from llama_orch.contracts.engine import EngineEvent, GenerateRequest, TokenSink
from llama_orch.contracts.frames import Frame
from llama_orch.core.clock import Clock, Timer
from llama_orch.dispatch.endings import Endings
from llama_orch.dispatch.lanes import PoolLane
from llama_orch.dispatch.sessions import SessionStore
from llama_orch.dispatch.tasks import Task
from llama_orch.errors import DecodeTimeout, WorkerError, WorkerReset
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.manager import PoolManager, Replica

MetricsFrame = Callable[[Task, PoolLane], Frame]


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
        clock: Clock,
        metrics_frame: MetricsFrame,
        metrics_interval_s: float,
    ) -> None:
        self._host = host
        self._pools = pools
        self._sessions = sessions
        self._endings = endings
        self._metrics = metrics
        self._clock = clock
        self._metrics_frame = metrics_frame
        self._metrics_interval_s = metrics_interval_s

    def prestart(self, task: Task, replica: Replica, request: GenerateRequest) -> Prestarted | None:
        """Send the engine request in the placing step when the engine's client can (see
        ``AdapterHost.prestart``); ``run`` takes it, ``release`` discards it if unused."""
        return self._host.prestart(task.pool_id, replica.replica_id, request)

    async def run(
        self,
        task: Task,
        lane: PoolLane,
        replica: Replica,
        request: GenerateRequest,
        prestarted: Prestarted | None = None,
    ) -> None:
        clock = self._clock
        timeouts = lane.pool.config.timeouts
        started = clock.now()
        wall_at = started + timeouts.wall_ms / 1000
        idle_s = timeouts.idle_ms / 1000
        stream = self._host.submit(task.pool_id, replica.replica_id, request, prestarted)
        # The watchdog is one timer that re-arms itself: each event only records the time of
        # progress (``progress.last``), and the timer, when it comes due, either expires the run
        # (idle or wall limit passed) or moves on to the next moment either limit could pass.
        progress = _Progress(started)
        check: _Watchdog | None = None
        try:
            async with asyncio.timeout(None) as timeout:
                check = _Watchdog(clock, timeout, progress, wall_at, idle_s)
                check.arm(min(wall_at, started + idle_s))
                await self._follow(stream, task, lane, replica, progress)
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
                self._timed_out(task, replica, wall=clock.now() >= wall_at, timeouts=timeouts)
        finally:
            if check is not None:
                check.cancel()
            try:
                await stream.aclose()
            finally:
                self.release(task, lane, replica)

    async def _follow(
        self,
        stream: AsyncGenerator[EngineEvent, TokenSink | None],
        task: Task,
        lane: PoolLane,
        replica: Replica,
        progress: _Progress,
    ) -> None:
        """Apply the stream's events until it ends or the task does; right after ``started``
        the adapter is offered a ``TokenSink`` (tokens without a task step each)."""
        now = self._clock.now
        on_tokens = self._on_tokens

        def sink(texts: list[str], _index: int) -> bool:
            if task.terminal:
                return False
            progress.last = now()
            on_tokens(task, lane, replica, texts, progress.last)
            return not task.terminal

        sent: TokenSink | None = None
        while True:
            try:
                event = await stream.asend(sent)
            except StopAsyncIteration:
                return
            if task.terminal:
                return
            progress.last = now()
            self._on_event(task, lane, replica, event, progress.last)
            if task.terminal:
                return
            sent = sink if event.kind == "started" else None

    def _timed_out(
        self, task: Task, replica: Replica, *, wall: bool, timeouts: TimeoutsConfig
    ) -> None:
        which = "wall" if wall else "idle"
        limit = timeouts.wall_ms if wall else timeouts.idle_ms
        self._metrics.tasks_canceled_total.labels(*replica_labels(task, replica), "watchdog").inc()
        self._endings.fail(
            task,
            DecodeTimeout(
                f"the engine exceeded the {which} timeout of {limit} ms; its slot is freed",
                engine=task.engine.value,
                pool_id=task.pool_id,
            ),
        )

    def release(self, task: Task, lane: PoolLane, replica: Replica) -> None:
        """Give the task's slot back, once. The dispatcher also calls this when the runner is
        done, however it ended: a runner canceled before its first step never runs its own
        ``finally``."""
        if lane.running.pop(task.id, None) is not None:
            self._pools.release_lease(task.pool_id, replica.replica_id)

    def _on_event(
        self, task: Task, lane: PoolLane, replica: Replica, event: EngineEvent, now: float
    ) -> None:
        kind = event.kind
        if kind == "tokens":
            self._on_tokens(task, lane, replica, event.texts, now)
        elif kind == "started":
            version = event.data.get("engine_version")
            task.engine_started(
                int(event.data.get("tokens_in", 0)), version if isinstance(version, str) else None
            )
        elif kind == "end":
            task.engine_read(event.data.get("tokens_in"))
            self._endings.done(task, replica)
        elif kind == "error":
            raise event.error or WorkerReset("the engine reported an error without details")

    def _on_tokens(
        self, task: Task, lane: PoolLane, replica: Replica, texts: Sequence[str], now: float
    ) -> None:
        if task.record_tokens(texts, now):
            self._first_token(task, replica, now)
        if now >= task.next_metrics_at:
            # Tokens arriving prove the engine alive: the replica's heartbeat, once per
            # metrics interval of a stream.
            task.metrics_sent(now, self._metrics_interval_s)
            task.stream.publish_frame(self._metrics_frame(task, lane))
            self._pools.stream_progress(replica)

    def _first_token(self, task: Task, replica: Replica, now: float) -> None:
        # The session the task was admitted under, not a lookup by id: after a DELETE the same
        # id names a new session, whose KV this replica does not hold.
        session = task.session
        if session is not None:
            self._sessions.mark_warm(session, (task.pool_id, replica.replica_id), now)


class _Watchdog:
    """The run's one timer. It re-arms itself at the next moment the idle or the wall limit
    could pass, and expires the run's timeout once one has. A method rather than a closure that
    re-arms itself: such a closure refers to itself, and that cycle would keep the whole run
    alive until the garbage collector ran."""

    __slots__ = ("_clock", "_idle_s", "_progress", "_timeout", "_timer", "_wall_at")

    def __init__(
        self,
        clock: Clock,
        timeout: asyncio.Timeout,
        progress: _Progress,
        wall_at: float,
        idle_s: float,
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._progress = progress
        self._wall_at = wall_at
        self._idle_s = idle_s
        self._timer: Timer | None = None

    def arm(self, at: float) -> None:
        self._timer = self._clock.call_at(at, self._due)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _due(self) -> None:
        self._timer = None
        deadline = min(self._wall_at, self._progress.last + self._idle_s)
        if self._clock.now() >= deadline:
            self._timeout.reschedule(asyncio.get_running_loop().time())  # expires now
        else:
            self.arm(deadline)


class _Progress:
    """When the run last made progress (an event or tokens): the watchdog's idle clock."""

    __slots__ = ("last",)

    def __init__(self, last: float) -> None:
        self.last = last
