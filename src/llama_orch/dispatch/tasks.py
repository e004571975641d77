"""Task records and the TaskRegistry (task id -> state, stream, runner).

Finished tasks stay retrievable for ``transcript_retention_s`` and within
``transcript_max_bytes``; the oldest finished transcripts go first (D-TASK-01, rec.).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from llama_orch.contracts.engine import GenerateRequest
from llama_orch.core.model import DecisionLog, JobSpec
from llama_orch.dispatch.streams import TaskStream
from llama_orch.vocab import Engine, Priority


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


@dataclass(slots=True, eq=False)
class Task:
    id: str
    session_id: str
    pool_id: str
    engine: Engine
    model: str
    priority: Priority
    request: GenerateRequest
    admitted_at: float
    deadline_at: float
    expected_tokens: int
    correlation_id: str | None = None
    identity: str | None = None
    predicted_start_ms: int = 0
    state: TaskState = TaskState.QUEUED
    stream: TaskStream = field(default_factory=TaskStream)
    replica_id: str | None = None
    engine_version: str | None = None
    runner: asyncio.Task[None] | None = None
    started_at: float | None = None
    first_token_at: float | None = None
    finished_at: float | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    next_metrics_at: float = 0.0
    subscribed: bool = False
    kv_warm: bool = False
    #: What placement needs to know; ``decide`` sees it at admission and again at dispatch.
    job: JobSpec | None = None
    #: The latest placement decision (admission's, then dispatch's).
    decision: DecisionLog | None = None
    #: Tokens of the session budget held for this task until it ends (its ``max_tokens``).
    reserved_tokens: int = 0
    price_per_token: float = 0.0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def log_fields(self) -> dict[str, Any]:
        """The narration taxonomy's identifiers for this task (ORCH-3304, OC-CORE-1040)."""
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

    def finished(self, task: Task, now: float) -> None:
        """Record that a task ended; its transcript is kept within the retention bounds."""
        task.finished_at = now
        size = task.stream.nbytes
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
