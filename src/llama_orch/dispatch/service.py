"""TaskService: the one interface the HTTP server and the CLI use to reach dispatch.

Every method takes and returns plain values (wire models from ``contracts.api``, frozen
dataclasses defined here, the task's ``TaskStream`` to read); the dispatcher, its lanes,
registry and session store stay private to this package. A test keeps it so.

Unknown ids raise ``NotFound`` and refusals raise the typed ``OrchError`` of the refusal, so a
caller only renders errors, never decides them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from llama_orch.config import Config, PoolSseConfig, SseConfig
from llama_orch.contracts.api import SessionInfo, StreamOptions, TaskRequest
from llama_orch.contracts.engine import ChatMessage
from llama_orch.contracts.frames import Frame, started_frame
from llama_orch.core.budgets import TASK_FIELDS, FieldNames
from llama_orch.core.model import AffinityOutcome
from llama_orch.dispatch.admission import Admission, Admitted
from llama_orch.dispatch.board import Board, PoolQueueView, read_board
from llama_orch.dispatch.dispatcher import Dispatcher
from llama_orch.dispatch.endings import SERVER_STOPS
from llama_orch.dispatch.streams import TaskStream
from llama_orch.dispatch.tasks import TERMINAL_STATES, RegistryStats, Task, TaskState
from llama_orch.errors import Conflict, NotFound, OrchError
from llama_orch.observability.narration import narrate
from llama_orch.vocab import Priority

__all__ = [
    "SERVER_STOPS",
    "Admitted",
    "Board",
    "PoolQueueView",
    "PoolStatus",
    "RegistryStats",
    "StreamEnd",
    "StreamSettings",
    "StreamView",
    "TaskService",
    "TaskState",
    "TaskStatus",
]

#: How a subscriber's stream ended (the server's ``Outcome`` values).
StreamEnd = Literal["complete", "disconnect", "stall", "aborted"]


@dataclass(frozen=True, slots=True)
class StreamSettings:
    """One subscriber's SSE settings: ``server.sse``, then the pool's, then the request's."""

    channel_cap: int = 32
    microbatch: bool = False
    max_delay_s: float = 0.010
    max_tokens: int = 32
    #: Seconds of silence before a ``: keep-alive`` comment; 0 turns heartbeats off.
    heartbeat_s: float = 0.0
    #: A writer that cannot hand a chunk over for this long ends the stream (None: never).
    stall_limit_s: float | None = None


@dataclass(frozen=True, slots=True)
class StreamView:
    """What the server needs to write one task's stream to one subscriber."""

    task_id: str
    pool_id: str
    state: TaskState
    #: The transcript to follow (read-only for the caller).
    stream: TaskStream
    #: ``started`` as of now: queue position and prediction as they stand.
    started: Frame
    settings: StreamSettings
    #: The session's enabled remaining budgets (``X-Budget-*`` headers).
    budgets: dict[str, int | float]


@dataclass(frozen=True, slots=True)
class TaskStatus:
    """A snapshot of one task (for status pages, a console, tests)."""

    task_id: str
    session_id: str
    pool_id: str
    engine: str
    model: str
    priority: Priority
    state: TaskState
    queue_position: int
    replica_id: str | None
    engine_version: str | None
    #: How session affinity went at the latest placement (None before dispatch).
    affinity: AffinityOutcome | None
    kv_warm: bool
    tokens_in: int
    tokens_out: int
    subscribed: bool
    admitted_at: float
    deadline_at: float
    started_at: float | None
    finished_at: float | None
    #: Why it was canceled, once it was (``Task.cancel_reason``).
    cancel_reason: str | None = None

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """One pool's queue as dispatch sees it."""

    pool_id: str
    queue_depth: int
    depth_by_priority: dict[str, int]
    running: int


class TaskService:
    def __init__(self, config: Config, dispatcher: Dispatcher, admission: Admission) -> None:
        self._config = config
        self._dispatcher = dispatcher
        self._admission = admission

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self._dispatcher.start()

    def shutdown(self) -> None:
        """End every live task with its terminal frame, so every open stream can close."""
        self._dispatcher.shutdown()

    async def stop(self, grace_s: float = 5.0) -> None:
        await self._dispatcher.stop(grace_s)

    # -- tasks -----------------------------------------------------------------------------------

    def admit(
        self,
        request: TaskRequest,
        *,
        correlation_id: str | None = None,
        identity: str | None = None,
        messages: tuple[ChatMessage, ...] | None = None,
        names: FieldNames = TASK_FIELDS,
        fit_to_budget: bool = False,
    ) -> Admitted:
        """Queue a task or raise the typed refusal; ``messages`` is a chat for the engine,
        ``names`` what the caller calls the task's length and session; with ``fit_to_budget``
        (the caller set no length, or only a most) ``max_tokens`` is cut to what the session's
        budget affords on the pool the task lands on (``Admitted.max_tokens``)."""
        return self._admission.admit(
            request,
            correlation_id=correlation_id,
            identity=identity,
            messages=messages,
            names=names,
            fit_to_budget=fit_to_budget,
        )

    def open_stream(self, task_id: str, options: StreamOptions | None = None) -> StreamView:
        """Claim the task's one live subscription; ``close_stream`` gives it back."""
        dispatcher = self._dispatcher
        task = self._streamable(task_id)
        if not task.stream.subscribe():
            raise _watched(task)
        lane = dispatcher.lanes[task.pool_id]
        narrate(
            "server",
            "stream-start",
            task.pool_id,
            f"Opens the stream of task {task.id[:8]} ({task.state.value}).",
            **task.log_fields(),
            queue_position=dispatcher.queue_position(task),
        )
        return StreamView(
            task_id=task.id,
            pool_id=task.pool_id,
            state=task.state,
            stream=task.stream,
            started=self._started_frame(task),
            settings=stream_settings(self._config.server.sse, lane.pool.config.sse, options),
            budgets=dispatcher.budget_fields(task.session_id),
        )

    def peek_stream(self, task_id: str) -> dict[str, int | float]:
        """What ``open_stream`` would answer, without subscribing (a HEAD): the session's
        remaining budgets, or the same refusal."""
        task = self._streamable(task_id)
        if task.stream.subscribed:
            raise _watched(task)
        return self._dispatcher.budget_fields(task.session_id)

    def _streamable(self, task_id: str) -> Task:
        dispatcher = self._dispatcher
        # Retention is enforced on lookup too, not only when another task ends.
        dispatcher.tasks.evict_expired(dispatcher.now())
        return self._task(task_id)

    def close_stream(self, view: StreamView, how: StreamEnd) -> None:
        """The subscriber is gone; a stall, or a disconnect where configured, cancels the task,
        unless the request that admitted it is answering it (its own client decides)."""
        task = self._dispatcher.tasks.get(view.task_id)
        view.stream.unsubscribe()
        if task is None or task.terminal or task.answered_in_place:
            return
        if how == "stall":
            self._dispatcher.cancel(task.id, reason="stall")
        elif how == "disconnect" and self._config.server.sse.cancel_on_disconnect:
            self._dispatcher.cancel(task.id, reason="disconnect")

    def cancel(self, task_id: str, *, reason: str = "client") -> TaskStatus:
        """Cancel a task (idempotent: an ended task stays as it ended)."""
        task = self._task(task_id)
        self._dispatcher.cancel(task.id, reason=reason)
        return self._status(task)

    def task_status(self, task_id: str) -> TaskStatus:
        return self._status(self._task(task_id))

    def list_tasks(self) -> list[TaskStatus]:
        """Every task still tracked (live, and finished ones kept for replay)."""
        return [self._status(t) for t in self._dispatcher.tasks.all_tasks()]

    def follow(self, task_id: str) -> TaskStream:
        """The task's live transcript, to read (not to write) without claiming its one
        subscription: a front door answering the request that admitted the task follows it so,
        and cancels it itself when its client goes away."""
        task = self._task(task_id)
        task.answered_in_place = True
        return task.stream

    def transcript(self, task_id: str) -> list[Frame]:
        """The task's frames so far, one per token."""
        return self._task(task_id).stream.frames()

    def registry_stats(self) -> RegistryStats:
        return self._dispatcher.tasks.stats()

    def board(self, *, queued_limit: int, finished_limit: int) -> Board:
        """Every pool's first ``queued_limit`` queued tasks with predictions, the running
        tasks, and the last ``finished_limit`` endings."""
        dispatcher = self._dispatcher
        return read_board(
            dispatcher.lanes,
            dispatcher.pools,
            dispatcher.tasks,
            dispatcher.now(),
            queued_limit=queued_limit,
            finished_limit=finished_limit,
        )

    # -- sessions --------------------------------------------------------------------------------

    def session_info(self, session_id: str) -> SessionInfo:
        dispatcher = self._dispatcher
        now = dispatcher.now()
        session = dispatcher.sessions.get(session_id, now)
        if session is None:
            raise NotFound(f"session {session_id} is unknown or expired")
        left = session.remaining()
        return SessionInfo(
            ttl_ms_remaining=dispatcher.sessions.ttl_remaining_ms(session, now),
            turns=session.turns,
            kv_bytes=session.kv_bytes,
            kv_warmth=session.kv_warmth,
            tokens_budget_remaining=left.tokens,
            time_budget_remaining_ms=left.time_ms,
            cost_budget_remaining=left.cost,
        )

    def evict_session(self, session_id: str) -> bool:
        """Forget the session and its KV warmth; False when there was none."""
        return self._dispatcher.sessions.evict(session_id)

    def budgets(self, session_id: str) -> dict[str, int | float]:
        return self._dispatcher.budget_fields(session_id)

    # -- pools -----------------------------------------------------------------------------------

    def pool_status(self, pool_id: str) -> PoolStatus:
        lane = self._dispatcher.lanes.get(pool_id)
        if lane is None:
            raise NotFound(f"pool {pool_id!r} is not configured; see GET /v1/capabilities")
        return PoolStatus(
            pool_id=pool_id,
            queue_depth=len(lane.queue),
            depth_by_priority={p.value: lane.queue.depth(p) for p in Priority},
            running=len(lane.running),
        )

    def end_queued(self, pool_id: str, error: OrchError) -> int:
        """End every task queued on the pool with ``error`` (a drain); how many ended."""
        return self._dispatcher.end_queued(pool_id, error)

    def stop_running(self, pool_id: str, replica_ids: set[str], *, reason: str) -> int:
        """Cancel the pool's tasks running on ``replica_ids``; how many were stopped."""
        dispatcher = self._dispatcher
        running = [
            t
            for t in dispatcher.tasks.live_tasks()
            if t.pool_id == pool_id and t.state is TaskState.RUNNING and t.replica_id in replica_ids
        ]
        for task in running:
            dispatcher.cancel(task.id, reason=reason)
        return len(running)

    # -- helpers ---------------------------------------------------------------------------------

    def _task(self, task_id: str) -> Task:
        task = self._dispatcher.tasks.get(task_id)
        if task is None:
            raise NotFound(f"task {task_id} is unknown, or its transcript has expired")
        return task

    def _status(self, task: Task) -> TaskStatus:
        return TaskStatus(
            task_id=task.id,
            session_id=task.session_id,
            pool_id=task.pool_id,
            engine=task.engine.value,
            model=task.model,
            priority=task.priority,
            state=task.state,
            queue_position=self._dispatcher.queue_position(task),
            replica_id=task.replica_id,
            engine_version=task.engine_version,
            affinity=task.decision.affinity
            if task.started_at is not None and task.decision
            else None,
            kv_warm=task.kv_warm,
            tokens_in=task.tokens_in,
            tokens_out=task.tokens_out,
            subscribed=task.stream.subscribed,
            admitted_at=task.admitted_at,
            deadline_at=task.deadline_at,
            started_at=task.started_at,
            finished_at=task.finished_at,
            cancel_reason=task.cancel_reason,
        )

    def _started_frame(self, task: Task) -> Frame:
        dispatcher = self._dispatcher
        lane = dispatcher.lanes[task.pool_id]
        position = dispatcher.queue_position(task)
        queued = task.state is TaskState.QUEUED
        return started_frame(
            task_id=task.id,
            pool_id=task.pool_id,
            queue_position=position,
            predicted_start_ms=(
                dispatcher.predicted_start_ms(lane, position, task.expected_tokens) if queued else 0
            ),
            correlation_id=task.correlation_id,
            engine_version=task.engine_version,
            simulated=lane.pool.simulated,
        )


def stream_settings(
    sse: SseConfig,
    pool: PoolSseConfig | None = None,
    request: StreamOptions | None = None,
) -> StreamSettings:
    """The server's SSE settings with the pool's, then the request's micro-batch overrides."""
    microbatch, delay_ms, max_tokens = (
        sse.microbatch,
        sse.microbatch_max_delay_ms,
        sse.microbatch_max_tokens,
    )
    for layer in (pool, request):
        if layer is None:
            continue
        microbatch = microbatch if layer.microbatch is None else layer.microbatch
        delay_ms = layer.microbatch_max_delay_ms or delay_ms
        max_tokens = layer.microbatch_max_tokens or max_tokens
    return StreamSettings(
        channel_cap=sse.channel_cap,
        microbatch=microbatch,
        max_delay_s=delay_ms / 1000,
        max_tokens=max_tokens,
        heartbeat_s=sse.heartbeat_ms / 1000,
        stall_limit_s=sse.stall_limit_ms / 1000,
    )


def _watched(task: Task) -> Conflict:
    return Conflict(f"task {task.id} already has a live subscriber; one stream per task at a time")
