"""How tasks end: ``end`` (done or canceled), ``fail`` (an error frame) and ``expire`` (the
deadline passed while queued). Every ending publishes exactly one terminal frame, settles the
session's budget reservation, and records the task as finished.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from llama_orch.dispatch.lanes import PoolLane
from llama_orch.dispatch.sessions import SessionStore
from llama_orch.dispatch.tasks import Task, TaskRegistry, TaskState
from llama_orch.errors import DeadlineUnmet, OrchError
from llama_orch.observability.metrics import Metrics
from llama_orch.observability.narration import narrate
from llama_orch.pool.manager import Replica
from llama_orch.vocab import Priority

#: Stores a finished stream's transcript and returns its artifact id (or None when disabled):
#: called with the task's log fields, its frames so far, and its terminal (event, payload).
TraceSink = Callable[[Mapping[str, Any], Sequence[tuple[str, bytes]], tuple[str, Any]], str | None]


class Endings:
    def __init__(
        self,
        *,
        tasks: TaskRegistry,
        sessions: SessionStore,
        lanes: Mapping[str, PoolLane],
        metrics: Metrics,
        clock: Callable[[], float],
    ) -> None:
        self._tasks = tasks
        self._sessions = sessions
        self._lanes = lanes
        self._metrics = metrics
        self._clock = clock
        #: Set by the application when stream traces are stored (server.trace_retention).
        self.trace: TraceSink | None = None

    def _traced(self, task: Task, event: str, payload: dict[str, Any]) -> str | None:
        """Store the transcript ending with ``payload``; the id then rides on the frame."""
        if self.trace is None:
            return None
        trace_id = self.trace(task.log_fields(), task.stream.frames(), (event, payload))
        if trace_id is not None:
            payload["trace_id"] = trace_id
        return trace_id

    def end(
        self,
        task: Task,
        state: TaskState,
        *,
        replica: Replica | None = None,
        canceled: bool = False,
    ) -> None:
        now = self._clock()
        decode_ms = int((now - task.first_token_at) * 1000) if task.first_token_at else 0
        payload: dict[str, Any] = {
            "tokens_out": task.tokens_out,
            "decode_time_ms": decode_ms,
            "decode_ms": decode_ms,
            "tokens_in": task.tokens_in,
        }
        if canceled:
            payload["canceled"] = True
        if task.state is TaskState.QUEUED:
            self._lanes[task.pool_id].drop(task)
        task.state = state
        trace_id = self._traced(task, "end", payload)
        task.stream.publish("end", payload)
        self._settle(task, now, decode_ms, served=state is TaskState.DONE)
        if replica is not None:
            self._count(task, replica, decode_ms)
            if state is TaskState.DONE and task.started_at is not None:
                self._lanes[task.pool_id].perf_of(replica.replica_id).observe(
                    first_token_s=(task.first_token_at - task.started_at)
                    if task.first_token_at
                    else None,
                    tokens=task.tokens_out,
                    decode_s=decode_ms / 1000,
                    expected=task.expected_tokens,
                )
        self._tasks.finished(task, now)
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
            trace_id=trace_id,
        )

    def fail(self, task: Task, error: OrchError) -> None:
        now = self._clock()
        if task.state is TaskState.QUEUED:
            self._lanes[task.pool_id].drop(task)
        task.state = TaskState.FAILED
        payload = error.envelope()
        payload.setdefault("engine", task.engine.value)
        trace_id = self._traced(task, "error", payload)
        task.stream.publish("error", payload)
        decode_ms = int((now - task.first_token_at) * 1000) if task.first_token_at else 0
        self._settle(task, now, decode_ms, served=False)
        self._tasks.finished(task, now)
        narrate(
            "dispatcher",
            "stream-error",
            task.pool_id,
            f"Ends task {task.id[:8]} with {error.kind.value}: {error.message}"[:160],
            level="warning",
            **task.log_fields(),
            error_kind=error.kind.value,
            tokens_out=task.tokens_out,
            trace_id=trace_id,
            retry_after_ms=error.retry_after_ms,
        )

    def expire(self, task: Task) -> None:
        """The task's start deadline passed while it waited (DEADLINE_UNMET)."""
        self._metrics.tasks_canceled_total.labels(
            task.engine.value, "unknown", task.pool_id, "none", "deadline"
        ).inc()
        self.fail(
            task,
            DeadlineUnmet(
                "the task's deadline passed before a slot freed up; resubmit with a longer "
                "deadline_ms or at a quieter time",
                pool_id=task.pool_id,
                engine=task.engine.value,
            ),
        )

    def _settle(self, task: Task, now: float, decode_ms: int, *, served: bool) -> None:
        """Release the budget reservation and charge what was used, once per task."""
        session = self._sessions.get(task.session_id, now)
        if session is None:
            return
        session.usage.settle(
            reserved=task.reserved_tokens,
            price=task.price_per_token,
            tokens_out=task.tokens_out,
            decode_ms=decode_ms,
        )
        task.reserved_tokens = 0
        session.last_used_at = now
        if served and task.replica_id is not None:
            self._sessions.served(session, (task.pool_id, task.replica_id), now)

    def _count(self, task: Task, replica: Replica, decode_ms: int) -> None:
        """Count tokens and latencies once per task, never per token."""
        m = replica.metrics
        if m is None:
            return
        m.tokens_out.inc(task.tokens_out)
        m.tokens_in.inc(task.tokens_in)
        interactive = task.priority is Priority.INTERACTIVE
        if task.first_token_at is not None:
            (m.first_token_interactive if interactive else m.first_token_batch).observe(
                (task.first_token_at - task.admitted_at) * 1000
            )
            (m.decode_interactive if interactive else m.decode_batch).observe(decode_ms)
