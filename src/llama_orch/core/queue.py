"""AdmissionQueue: one pool's bounded FIFO per priority class (OC-CORE-1001..1005, D-CORE-01..03).

Enqueue, dequeue and cancel are O(1): each class is an ``OrderedDict`` keyed by task id, so a
cancel unlinks its entry instead of leaving a tombstone that dequeue would have to skip.

Dispatch order is strict priority by default: interactive first, FIFO within a class, and a
batch task waits as long as interactive work is queued. Aging of batch is opt-in: once a pool
gives its classes a ``weight`` (``admission.priorities[].weight``), at most ``interactive_burst``
interactive tasks (the interactive:batch weight ratio; a missing weight counts as 8 for
interactive and 1 for batch) are dispatched in a row while batch tasks wait, and the next
dispatch then takes the oldest batch task, so a batch task gets at least one dispatch in every
``burst + 1``. The rule counts dispatches, not time, so it stays pure and deterministic.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from llama_orch.vocab import FullPolicy, Priority

#: Dispatch order: the first class with work wins (OC-CORE-1004), bounded by the burst rule.
PRIORITY_ORDER: tuple[Priority, ...] = (Priority.INTERACTIVE, Priority.BATCH)

#: The interactive weight assumed when only the batch class has one.
DEFAULT_INTERACTIVE_BURST = 8
#: The burst of strict priority: never reached, so batch never jumps the interactive queue.
STRICT = 2**62


def burst_from_weights(interactive: int | None, batch: int | None) -> int | None:
    """``round(w_interactive / w_batch)``, at least 1 (defaults 8 and 1); None (strict
    priority) when neither class has a weight."""
    if interactive is None and batch is None:
        return None
    wi = interactive or DEFAULT_INTERACTIVE_BURST
    wb = batch or 1
    return max(1, round(wi / wb))


RejectReason = Literal["queue_full", "class_full", "no_lower_priority_victim"]


@dataclass(frozen=True, slots=True)
class Enqueued:
    """The task is queued with ``position`` tasks ahead of it; ``evicted`` made room for it."""

    position: int
    evicted: str | None = None


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    policy: FullPolicy


class AdmissionQueue:
    """Bounded per-priority FIFO with the ``reject`` or ``drop-lru`` full policy."""

    __slots__ = (
        "_burst",
        "_capacity",
        "_class_capacity",
        "_classes",
        "_index",
        "_policy",
        "_streak",
    )

    def __init__(
        self,
        capacity: int,
        policy: FullPolicy = FullPolicy.REJECT,
        class_capacity: Mapping[Priority, int] | None = None,
        *,
        interactive_burst: int | None = None,
    ) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        if interactive_burst is not None and interactive_burst <= 0:
            raise ValueError("interactive_burst must be positive")
        self._burst = STRICT if interactive_burst is None else interactive_burst
        #: Interactive dispatches in a row while batch tasks were waiting.
        self._streak = 0
        self._capacity = capacity
        self._policy = policy
        self._class_capacity = dict(class_capacity or {})
        self._classes: dict[Priority, OrderedDict[str, None]] = {
            p: OrderedDict() for p in PRIORITY_ORDER
        }
        self._index: dict[str, Priority] = {}

    @property
    def policy(self) -> FullPolicy:
        return self._policy

    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._index

    def depth(self, priority: Priority) -> int:
        return len(self._classes[priority])

    def view(self, priority: Priority) -> tuple[str, ...]:
        """Read-only snapshot of one class, oldest first."""
        return tuple(self._classes[priority])

    def enqueue(self, task_id: str, priority: Priority) -> Enqueued | Rejected:
        if task_id in self._index:
            raise ValueError(f"task {task_id} is already queued")
        evicted: str | None = None
        klass = self._classes[priority]
        class_cap = self._class_capacity.get(priority)
        class_full = class_cap is not None and len(klass) >= class_cap
        total_full = len(self._index) >= self._capacity
        if class_full or total_full:
            if self._policy is FullPolicy.REJECT:
                return Rejected("class_full" if class_full else "queue_full", self._policy)
            # A full class makes room only by losing one of its own: evicting from the other
            # class would leave this one over its queue_capacity.
            victim = self._victim(priority, same_class_only=class_full)
            if victim is None:
                return Rejected("no_lower_priority_victim", self._policy)
            self.cancel(victim)
            evicted = victim
        klass[task_id] = None
        self._index[task_id] = priority
        return Enqueued(self._ahead_of_tail(priority), evicted)

    def _victim(self, newcomer: Priority, *, same_class_only: bool) -> str | None:
        """Oldest batch task first; an interactive one only for an interactive newcomer."""
        if same_class_only:
            klass = self._classes[newcomer]
            return next(iter(klass), None)
        batch = self._classes[Priority.BATCH]
        if batch:
            return next(iter(batch))
        if newcomer is Priority.INTERACTIVE:
            return next(iter(self._classes[Priority.INTERACTIVE]), None)
        return None

    def _ahead_of_tail(self, priority: Priority) -> int:
        klass = self._classes[priority]
        return self._position_at(priority, len(klass) - 1)

    def position_if_enqueued(self, priority: Priority) -> int:
        """The position a task of this class would get if it were enqueued now."""
        return self._position_at(priority, len(self._classes[priority]))

    def _position_at(self, priority: Priority, index: int) -> int:
        """Dispatches before the ``index``-th task of a class, given the burst rule."""
        interactive = len(self._classes[Priority.INTERACTIVE])
        batch = len(self._classes[Priority.BATCH])
        burst = self._burst
        first_forced = max(0, burst - self._streak)
        if priority is Priority.BATCH:
            return index + min(interactive, first_forced + index * burst)
        if batch == 0 or index < first_forced:
            return index
        return index + min(batch, (index - first_forced) // burst + 1)

    def _next_class(self) -> Priority | None:
        interactive = self._classes[Priority.INTERACTIVE]
        batch = self._classes[Priority.BATCH]
        if batch and (not interactive or self._streak >= self._burst):
            return Priority.BATCH
        if interactive:
            return Priority.INTERACTIVE
        return None

    def peek_next(self) -> str | None:
        """The task ``dequeue`` would return, without removing it."""
        priority = self._next_class()
        return None if priority is None else next(iter(self._classes[priority]))

    def dequeue(self) -> str | None:
        """Pop the next task in dispatch order, or None when empty."""
        priority = self._next_class()
        if priority is None:
            return None
        task_id, _ = self._classes[priority].popitem(last=False)
        del self._index[task_id]
        if priority is Priority.BATCH or not self._classes[Priority.BATCH]:
            self._streak = 0
        else:
            self._streak += 1
        return task_id

    def peek(self, priority: Priority) -> str | None:
        return next(iter(self._classes[priority]), None)

    def cancel(self, task_id: str) -> bool:
        """Remove a queued task; False when it is not queued (already dispatched or unknown)."""
        priority = self._index.pop(task_id, None)
        if priority is None:
            return False
        del self._classes[priority][task_id]
        return True

    def position(self, task_id: str) -> int | None:
        """How many tasks will be dispatched before this one (O(n); not for hot paths)."""
        priority = self._index.get(task_id)
        if priority is None:
            return None
        for i, queued in enumerate(self._classes[priority]):
            if queued == task_id:
                return self._position_at(priority, i)
        raise AssertionError(task_id)

    def __iter__(self) -> Iterator[str]:
        """Task ids in dispatch order (the burst rule applied to the current contents)."""
        interactive = iter(self._classes[Priority.INTERACTIVE])
        batch = iter(self._classes[Priority.BATCH])
        left_i = len(self._classes[Priority.INTERACTIVE])
        left_b = len(self._classes[Priority.BATCH])
        streak = self._streak
        while left_i or left_b:
            if left_b and (not left_i or streak >= self._burst):
                yield next(batch)
                left_b -= 1
                streak = 0
            else:
                yield next(interactive)
                left_i -= 1
                streak = streak + 1 if left_b else 0
