"""The board: every pool's queue (with predictions), the running tasks and the recent endings,
as plain values for status pages (the web console, ``llorch status``).

Predictions are the ones admission and the ``started`` frame give (docs/predictions.md), with
each pool's slot states read once for its whole list instead of once per task: they are most
of the cost, one walk over every running task.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import Literal

import orjson

from llama_orch.core.prediction import EXACT_LIMIT, on_time_probability, predicted_start_s
from llama_orch.dispatch.lanes import NEVER_MS, PoolLane
from llama_orch.dispatch.tasks import Task, TaskRegistry, TaskState
from llama_orch.pool.manager import PoolManager
from llama_orch.vocab import Priority

Outcome = Literal["end", "canceled", "error"]


@dataclass(frozen=True, slots=True)
class QueuedView:
    task_id: str
    pool_id: str
    priority: Priority
    position: int
    predicted_start_ms: int
    on_time_probability: float
    waited_ms: int


@dataclass(frozen=True, slots=True)
class PoolQueueView:
    pool_id: str
    #: Every queued task; ``tasks`` lists only the first ones in dispatch order.
    depth: int
    capacity: int
    depth_by_priority: dict[Priority, int]
    tasks: list[QueuedView]


@dataclass(frozen=True, slots=True)
class RunningView:
    task_id: str
    pool_id: str
    replica_id: str | None
    priority: Priority
    model: str
    tokens_out: int
    tokens_per_s: float
    running_ms: int


@dataclass(frozen=True, slots=True)
class FinishedView:
    task_id: str
    pool_id: str
    priority: Priority
    model: str
    outcome: Outcome
    #: The error code of an ``error`` ending (e.g. ``DEADLINE_UNMET``).
    error_code: str | None
    tokens_out: int
    duration_ms: int
    #: How long ago it ended.
    ago_ms: int


@dataclass(frozen=True, slots=True)
class Board:
    queues: list[PoolQueueView]
    running: list[RunningView]
    finished: list[FinishedView]


def read_board(
    lanes: Mapping[str, PoolLane],
    pools: PoolManager,
    tasks: TaskRegistry,
    now: float,
    *,
    queued_limit: int,
    finished_limit: int,
) -> Board:
    return Board(
        queues=[_queue(lane, pools, tasks, now, queued_limit) for lane in lanes.values()],
        running=[_running_view(t, now) for lane in lanes.values() for t in _running(lane)],
        finished=[_finished_view(t, now) for t in tasks.recently_finished(finished_limit)],
    )


def _queue(
    lane: PoolLane, pools: PoolManager, tasks: TaskRegistry, now: float, limit: int
) -> PoolQueueView:
    slots = lane.slot_states(pools, now)
    slots_total = max(1, lane.pool.slots_total)
    cv = sum(p.cv for p in lane.perf.values()) / max(1, len(lane.perf))
    queued = len(lane.queue)
    mean_tokens = lane.queued_tokens / queued if queued else 0.0
    ahead: list[int] = []
    shown = []
    for position, task_id in enumerate(islice(lane.queue, limit)):
        task = tasks.get(task_id)
        rest = max(0, position - EXACT_LIMIT)
        wait_s = predicted_start_s(slots, ahead[:EXACT_LIMIT], rest, rest * mean_tokens)
        ahead.append(task.expected_tokens if task is not None else 0)
        if task is None or task.state is not TaskState.QUEUED:
            continue
        on_time = on_time_probability(
            wait_s, task.deadline_at - now, cv=cv, releases=position // slots_total + 1
        )
        shown.append(
            QueuedView(
                task_id=task.id,
                pool_id=task.pool_id,
                priority=task.priority,
                position=position,
                predicted_start_ms=NEVER_MS
                if math.isinf(wait_s)
                else min(NEVER_MS, int(wait_s * 1000)),
                on_time_probability=round(on_time, 4),
                waited_ms=_ms(now - task.admitted_at),
            )
        )
    return PoolQueueView(
        pool_id=lane.id,
        depth=queued,
        capacity=lane.queue.capacity(),
        depth_by_priority={p: lane.queue.depth(p) for p in Priority},
        tasks=shown,
    )


def _running(lane: PoolLane) -> Iterable[Task]:
    return (t for t in lane.running.values() if t.state is TaskState.RUNNING)


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def _tokens_per_s(task: Task, now: float) -> float:
    if task.first_token_at is None or task.tokens_out == 0:
        return 0.0
    elapsed = now - task.first_token_at
    return round(task.tokens_out / elapsed, 1) if elapsed > 0 else 0.0


def _running_view(task: Task, now: float) -> RunningView:
    return RunningView(
        task_id=task.id,
        pool_id=task.pool_id,
        replica_id=task.replica_id,
        priority=task.priority,
        model=task.model,
        tokens_out=task.tokens_out,
        tokens_per_s=_tokens_per_s(task, now),
        running_ms=_ms(now - (task.started_at or now)),
    )


def _finished_view(task: Task, now: float) -> FinishedView:
    outcome, code = _outcome(task)
    ended = task.finished_at if task.finished_at is not None else now
    return FinishedView(
        task_id=task.id,
        pool_id=task.pool_id,
        priority=task.priority,
        model=task.model,
        outcome=outcome,
        error_code=code,
        tokens_out=task.tokens_out,
        duration_ms=_ms(ended - task.admitted_at),
        ago_ms=_ms(now - ended),
    )


def _outcome(task: Task) -> tuple[Outcome, str | None]:
    if task.state is TaskState.CANCELED:
        return "canceled", None
    if task.state is not TaskState.FAILED:
        return "end", None
    # The code lives only in the terminal frame the task published.
    entries = task.stream.entries
    last = entries[-1] if entries else None
    if isinstance(last, tuple) and last[0] == "error":
        code = orjson.loads(last[1]).get("code")
        return "error", code if isinstance(code, str) else None
    return "error", None
