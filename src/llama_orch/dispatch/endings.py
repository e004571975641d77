"""How tasks end: ``done``, ``cancel``, ``fail`` (an error frame) and ``expire`` (the deadline
passed while queued). Each one applies the task's own transition (which publishes the one
terminal frame), takes a queued task out of its queue, settles the session's budget
reservation, counts what the task used, and records the task as finished.

When stream traces are kept, the transcript is stored as it ends and the terminal frame the
client receives (and the task's log line) carries the trace's id.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import orjson

from llama_orch.contracts.frames import Frame
from llama_orch.dispatch.lanes import PoolLane
from llama_orch.dispatch.sessions import SessionStore
from llama_orch.dispatch.tasks import Task, TaskRegistry, TaskState
from llama_orch.errors import DeadlineUnmet, OrchError
from llama_orch.observability.metrics import Metrics
from llama_orch.observability.narration import narrate
from llama_orch.pool.manager import Replica
from llama_orch.vocab import Priority, Workload

#: Cancel reasons that are the server's own stop (a drain's deadline, a reload or a retired
#: model, which stop tasks as a drain does, and shutdown), each with why, as a client is told:
#: such a task costs its session no turn, and the front doors fail it retriably.
SERVER_STOPS: Mapping[str, str] = MappingProxyType(
    {"drain": "its pool was drained", "shutdown": "the server is shutting down"}
)

#: Stores a finished stream's transcript and returns its artifact id (or None when disabled):
#: called with the task's log fields, its transcript so far as SSE bytes, and its terminal
#: (event, payload).
TraceSink = Callable[[Mapping[str, Any], bytes, tuple[str, Any]], str | None]


class _Stamp:
    """Stores the transcript ending with the terminal frame and puts the trace's id on that
    frame (the stored copy has none: an id cannot hash itself)."""

    __slots__ = ("_sink", "_task", "trace_id")

    def __init__(self, sink: TraceSink, task: Task) -> None:
        self._sink = sink
        self._task = task
        self.trace_id: str | None = None

    def __call__(self, frame: Frame) -> Frame:
        event, data = frame
        payload = orjson.loads(data)
        task = self._task
        self.trace_id = self._sink(task.log_fields(), task.stream.sse(), (event, dict(payload)))
        if self.trace_id is None:
            return frame
        payload["trace_id"] = self.trace_id
        return event, orjson.dumps(payload)


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

    def _stamp(self, task: Task) -> _Stamp | None:
        return None if self.trace is None else _Stamp(self.trace, task)

    def done(self, task: Task, replica: Replica) -> None:
        """The engine finished the task: ``end``, and the replica's perf learns from it."""
        now = self._clock()
        stamp = self._stamp(task)
        task.finish(now, stamp=stamp)
        decode_ms = task.decode_ms(now)
        self._settle(task, now, decode_ms, served=True)
        self._count(task, replica, decode_ms)
        # The estimate predicts token streams; an embedding batch's time and the tokens it read
        # say nothing about how fast the replica decodes, and would skew chat predictions.
        if task.started_at is not None and task.workload is Workload.COMPLETION:
            self._lanes[task.pool_id].perf_of(replica.replica_id).observe(
                first_token_s=(task.first_token_at - task.started_at)
                if task.first_token_at
                else None,
                tokens=task.tokens_out,
                decode_s=decode_ms / 1000,
                expected=task.expected_tokens,
            )
        self._finished(task, now, "stream-end", f"Ends task {task.id[:8]}", stamp)

    def cancel(self, task: Task, replica: Replica | None = None) -> None:
        """``end`` with ``canceled: true``; a queued task leaves its queue."""
        now = self._clock()
        queued = task.state is TaskState.QUEUED
        stamp = self._stamp(task)
        task.cancel(now, stamp=stamp)
        if queued:
            self._lanes[task.pool_id].drop(task)
        decode_ms = task.decode_ms(now)
        self._settle(
            task, now, decode_ms, served=False, refund_turn=task.cancel_reason in SERVER_STOPS
        )
        if replica is not None:
            self._count(task, replica, decode_ms)
        self._finished(task, now, "cancel", f"Ends task {task.id[:8]} on cancel", stamp)

    def _finished(
        self, task: Task, now: float, action: str, human: str, stamp: _Stamp | None
    ) -> None:
        self._tasks.finished(task, now)
        narrate(
            "dispatcher",
            action,
            task.pool_id,
            f"{human} after {task.tokens_out} tokens.",
            **task.log_fields(),
            tokens_in=task.tokens_in,
            tokens_out=task.tokens_out,
            decode_time_ms=task.decode_ms(now),
            trace_id=stamp.trace_id if stamp is not None else None,
        )

    def fail(self, task: Task, error: OrchError, *, server_stop: bool = False) -> None:
        """``error``; ``server_stop``: the server ended the task (a queued task of a pool that
        drains, reloads or retires its model), which costs its session no turn."""
        now = self._clock()
        queued = task.state is TaskState.QUEUED
        stamp = self._stamp(task)
        task.fail(now, error, stamp=stamp)
        if queued:
            self._lanes[task.pool_id].drop(task)
        self._settle(task, now, task.decode_ms(now), served=False, refund_turn=server_stop)
        self._tasks.finished(task, now)
        narrate(
            "dispatcher",
            "stream-error",
            task.pool_id,
            f"Ends task {task.id[:8]} with {error.kind.value}: {error.message}",
            level="warning",
            **task.log_fields(),
            error_kind=error.kind.value,
            tokens_out=task.tokens_out,
            retry_after_ms=error.retry_after_ms,
            trace_id=stamp.trace_id if stamp is not None else None,
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

    def _settle(
        self, task: Task, now: float, decode_ms: int, *, served: bool, refund_turn: bool = False
    ) -> None:
        """Release the budget reservation and charge what was used, once per task."""
        # The session that holds the reservation, not a lookup by id: one evicted meanwhile
        # (DELETE) is charged nothing visible, and a new session of the same id nothing at all.
        session, task.session = task.session, None
        if session is None:
            return
        self._sessions.release(session, now, refund_turn=refund_turn)
        session.usage.settle(
            reserved=task.reserved_tokens,
            price=task.price_per_token,
            tokens_out=task.charged_tokens,
            decode_ms=decode_ms,
        )
        task.reserved_tokens = 0
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
        # latency_first_token_ms and latency_decode_ms time token streams; an embedding or
        # rerank task's first answered batch is no first token, and the contract has no
        # workload label to tell the two apart.
        if task.first_token_at is not None and task.workload is Workload.COMPLETION:
            (m.first_token_interactive if interactive else m.first_token_batch).observe(
                (task.first_token_at - task.admitted_at) * 1000
            )
            (m.decode_interactive if interactive else m.decode_batch).observe(decode_ms)
