"""Task records, their lifecycle, and the TaskRegistry (task id -> task).

A task's lifecycle fields (state, replica, timings, token counts) have one writer: the
transition methods on ``Task`` (``start``, ``engine_started``, ``record_tokens``, ``finish``,
``cancel``, ``fail``). Each transition checks the state it leaves and raises
``IllegalTransition`` otherwise, and each one that publishes does so into the task's stream in
the same step, so the token count and the transcript cannot disagree and nothing follows the
terminal frame::

    QUEUED --start--> RUNNING --finish--> DONE
       |                 |----cancel--> CANCELED
       |----cancel-------|----fail----> FAILED
       '----fail---------'

When a task ends it lets go of everything a replay does not need (the prompt and the request
sent to the engine, the placement job, the runner), so a finished task costs its transcript
plus a small fixed record. Finished tasks stay retrievable for
``transcript_retention_s`` and within ``transcript_max_bytes`` counted over that whole cost;
the oldest go first.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from llama_orch.contracts.engine import EmbedRequest, GenerateRequest
from llama_orch.contracts.frames import Frame, end_frame, error_frame
from llama_orch.core.model import DecisionLog, JobSpec
from llama_orch.core.sessions import Session
from llama_orch.dispatch.streams import TaskStream
from llama_orch.errors import OrchError
from llama_orch.vocab import Engine, Priority, Workload

#: Rewrites a terminal frame just before it is published (stream traces put their id on it).
Stamp = Callable[[Frame], Frame]


class TaskState(Enum):
    #: Admitted and waiting in its pool's queue.
    QUEUED = "queued"
    #: Holding a slot on a replica; tokens may flow.
    RUNNING = "running"
    #: Ended with ``end`` after the engine finished.
    DONE = "done"
    #: Ended with ``end`` ``canceled: true`` (client cancel or disconnect).
    CANCELED = "canceled"
    #: Ended with an ``error`` frame.
    FAILED = "failed"


TERMINAL_STATES = frozenset({TaskState.DONE, TaskState.CANCELED, TaskState.FAILED})

#: What a finished task's record costs besides its transcript (object, ids, timings), as
#: counted against ``transcript_max_bytes``.
FINISHED_RECORD_BYTES = 1024


class IllegalTransition(RuntimeError):
    """A lifecycle step the task's state does not allow (a bug in the caller)."""


@dataclass(slots=True, eq=False)
class Task:
    id: str
    session_id: str
    pool_id: str
    engine: Engine
    model: str
    priority: Priority
    #: What is sent to the engine; None once the task has ended.
    request: GenerateRequest | None
    admitted_at: float
    deadline_at: float
    expected_tokens: int
    correlation_id: str | None = None
    identity: str | None = None
    predicted_start_ms: int = 0
    #: What placement needs to know; ``decide`` sees it at admission and again at dispatch.
    job: JobSpec | None = None
    #: The latest placement decision (admission's, then dispatch's).
    decision: DecisionLog | None = None
    #: Tokens of the session budget held for this task until it ends (its ``max_tokens``).
    reserved_tokens: int = 0
    #: The session holding that reservation, until the task ends and settles it.
    session: Session | None = None
    price_per_token: float = 0.0
    stream: TaskStream = field(default_factory=TaskStream)
    #: The request that admitted the task answers it in the same response (a front door,
    #: ``Prefer: wait``): that request's client owns it, not a reader of its task stream.
    answered_in_place: bool = False
    runner: asyncio.Task[None] | None = None
    # -- lifecycle: written only by the transitions below ----------------------------------------
    state: TaskState = TaskState.QUEUED
    replica_id: str | None = None
    engine_version: str | None = None
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    kv_warm: bool = False
    next_metrics_at: float = 0.0
    # -- embedding and rerank tasks ---------------------------------------------------------------
    #: The whole input of an embedding or rerank task (None for completions and once ended);
    #: the runner sends it in engine-sized batches.
    work: EmbedRequest | None = None
    workload: Workload = Workload.COMPLETION
    #: ``base64`` or ``float``: how an embedding task's vectors are written in ``end.result``.
    encoding: str = "float"
    #: The answer ``end`` carries (set by the runner just before ``finish``).
    result: dict[str, Any] | None = None
    #: Why a canceled task was canceled (``tasks_canceled_total``'s reason: ``client``,
    #: ``disconnect``, ``stall``, ``drain``, ``shutdown``).
    cancel_reason: str | None = None

    @property
    def terminal(self) -> bool:
        # Identity checks, not set membership: an Enum's hash is a Python call, and this is
        # read twice per upstream read.
        state = self.state
        return state is not TaskState.QUEUED and state is not TaskState.RUNNING

    def decode_ms(self, now: float) -> int:
        return int((now - self.first_token_at) * 1000) if self.first_token_at else 0

    # -- transitions ---------------------------------------------------------------------------

    def _require(self, action: str, *allowed: TaskState) -> None:
        if self.state not in allowed:
            raise IllegalTransition(f"task {self.id}: cannot {action} a {self.state.value} task")

    def start(
        self,
        now: float,
        *,
        replica_id: str,
        engine_version: str | None,
        kv_warm: bool,
        decision: DecisionLog,
    ) -> None:
        """QUEUED -> RUNNING: the task holds a slot on ``replica_id``."""
        self._require("start", TaskState.QUEUED)
        self.state = TaskState.RUNNING
        self.replica_id = replica_id
        self.engine_version = engine_version
        self.started_at = now
        self.kv_warm = kv_warm
        self.decision = decision

    def engine_started(self, tokens_in: int, engine_version: str | None) -> None:
        """The engine accepted the request and said what it read and what it runs."""
        self._require("record the engine start of", TaskState.RUNNING)
        self.tokens_in = tokens_in
        if engine_version is not None:
            self.engine_version = engine_version

    def engine_read(self, tokens_in: object) -> None:
        """The engine's own count of the prompt it read, which most engines report only in
        their final event; a count given at start is kept when the end brings none."""
        self._require("record the prompt count of", TaskState.RUNNING)
        if type(tokens_in) is int and tokens_in > 0:
            self.tokens_in = tokens_in

    def record_tokens(self, texts: Sequence[str], now: float) -> bool:
        """Publish consecutive tokens; True when they are the task's first ones."""
        if self.state is not TaskState.RUNNING:  # inline: this runs per upstream read
            self._require("record tokens of", TaskState.RUNNING)
        self.stream.publish_tokens(texts)
        self.tokens_out += len(texts)
        if self.first_token_at is None and texts:
            self.first_token_at = now
            return True
        return False

    def batch_answered(self, now: float) -> None:
        """An embedding or rerank task's engine call came back; the first one times the task's
        first result (as a first token does for a completion)."""
        self._require("record a batch of", TaskState.RUNNING)
        if self.first_token_at is None:
            self.first_token_at = now

    def metrics_sent(self, now: float, interval_s: float) -> None:
        """A ``metrics`` frame went out (``next_metrics_at`` had passed); the next is due
        ``interval_s`` later."""
        self.next_metrics_at = now + interval_s

    def finish(self, now: float, *, stamp: Stamp | None = None) -> None:
        """RUNNING -> DONE: the engine finished; the ``end`` frame closes the stream."""
        self._require("finish", TaskState.RUNNING)
        self._end(TaskState.DONE, now, self._end_frame(now, canceled=False), stamp)

    def cancel(self, now: float, *, stamp: Stamp | None = None) -> None:
        """QUEUED|RUNNING -> CANCELED: ``end`` with ``canceled: true`` closes the stream."""
        self._require("cancel", TaskState.QUEUED, TaskState.RUNNING)
        self._end(TaskState.CANCELED, now, self._end_frame(now, canceled=True), stamp)

    def fail(self, now: float, error: OrchError, *, stamp: Stamp | None = None) -> None:
        """QUEUED|RUNNING -> FAILED: the ``error`` frame closes the stream."""
        self._require("fail", TaskState.QUEUED, TaskState.RUNNING)
        self._end(TaskState.FAILED, now, error_frame(error, engine=self.engine.value), stamp)

    def _end_frame(self, now: float, *, canceled: bool) -> Frame:
        return end_frame(
            tokens_out=self.tokens_out,
            tokens_in=self.tokens_in,
            decode_ms=self.decode_ms(now),
            canceled=canceled,
            result=None if canceled else self.result,
        )

    def _end(self, state: TaskState, now: float, frame: Frame, stamp: Stamp | None) -> None:
        if stamp is not None:
            # Sees the transcript before the terminal frame joins it.
            frame = stamp(frame)
        self.state = state
        self.finished_at = now
        self.stream.publish_frame(frame)
        # A replay needs the transcript and the ids; the rest can go now.
        self.request = None
        self.job = None
        self.runner = None
        self.work = None
        self.result = None

    @property
    def charged_tokens(self) -> int:
        """What the session budget is charged: tokens generated, or tokens read for an
        embedding or rerank task."""
        return self.tokens_out if self.workload is Workload.COMPLETION else self.tokens_in

    @property
    def retained_bytes(self) -> int:
        """What keeping this finished task costs, as counted against the retention bound."""
        return self.stream.nbytes + FINISHED_RECORD_BYTES

    def log_fields(self) -> dict[str, Any]:
        """The identifiers every narration line about this task carries."""
        return {
            "task_id": self.id,
            "job_id": self.id,
            "session_id": self.session_id,
            "pool_id": self.pool_id,
            "replica_id": self.replica_id,
            "engine": self.engine.value,
            "engine_version": self.engine_version,
            "correlation_id": self.correlation_id,
            "identity": self.identity,
        }


@dataclass(frozen=True, slots=True)
class RegistryStats:
    #: Tasks queued or running.
    live: int
    #: Finished tasks kept for replay.
    finished: int
    #: Bytes those finished tasks hold (transcripts plus records), at most ``max_bytes``.
    finished_bytes: int
    max_bytes: int


class TaskRegistry:
    def __init__(self, *, retention_s: float, max_bytes: int, max_tasks: int) -> None:
        self._tasks: dict[str, Task] = {}
        self._finished: OrderedDict[str, int] = OrderedDict()
        self._finished_bytes = 0
        self._retention_s = retention_s
        self._max_bytes = max_bytes
        self._max_tasks = max_tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def has_room(self, now: float) -> bool:
        self.evict_expired(now)
        return len(self._tasks) < self._max_tasks

    def add(self, task: Task) -> None:
        self._tasks[task.id] = task

    def live_tasks(self) -> list[Task]:
        return [t for t in self._tasks.values() if not t.terminal]

    def all_tasks(self) -> list[Task]:
        return list(self._tasks.values())

    def stats(self) -> RegistryStats:
        finished = len(self._finished)
        return RegistryStats(
            live=len(self._tasks) - finished,
            finished=finished,
            finished_bytes=self._finished_bytes,
            max_bytes=self._max_bytes,
        )

    def finished(self, task: Task, now: float) -> None:
        """Record that a task ended; it is kept within the retention bounds."""
        size = task.retained_bytes
        self._finished[task.id] = size
        self._finished_bytes += size
        self.evict_expired(now)

    def evict_expired(self, now: float) -> None:
        while self._finished:
            task_id, size = next(iter(self._finished.items()))
            task = self._tasks.get(task_id)
            expired = task is None or (
                task.finished_at is not None and now - task.finished_at >= self._retention_s
            )
            if not expired and self._finished_bytes <= self._max_bytes:
                return
            self._finished.popitem(last=False)
            self._finished_bytes -= size
            self._tasks.pop(task_id, None)

    def recently_finished(self, limit: int) -> list[Task]:
        """The last ``limit`` tasks that ended and are still retained, most recent first."""
        recent: list[Task] = []
        for task_id in reversed(self._finished):
            task = self._tasks.get(task_id)
            if task is not None:
                recent.append(task)
                if len(recent) >= limit:
                    break
        return recent
