"""AdmissionQueue: one pool's bounded FIFO per priority class (OC-CORE-1001..1005, D-CORE-01..03).

Enqueue, dequeue and cancel are O(1): each class is an ``OrderedDict`` keyed by task id, so a
cancel unlinks its entry instead of leaving a tombstone that dequeue would have to skip.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

from llama_orch.vocab import FullPolicy, Priority

#: Dispatch order: the first class with work wins (strict priority, OC-CORE-1004).
PRIORITY_ORDER: tuple[Priority, ...] = (Priority.INTERACTIVE, Priority.BATCH)

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

    __slots__ = ("_capacity", "_class_capacity", "_classes", "_index", "_policy")

    def __init__(
        self,
        capacity: int,
        policy: FullPolicy = FullPolicy.REJECT,
        class_capacity: Mapping[Priority, int] | None = None,
    ) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
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
            victim = self._victim(priority, same_class_only=class_full and not total_full)
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
        ahead = 0
        for p in PRIORITY_ORDER:
            if p is priority:
                return ahead + len(self._classes[p]) - 1
            ahead += len(self._classes[p])
        raise AssertionError(priority)

    def dequeue(self) -> str | None:
        """Pop the oldest task of the highest non-empty class, or None when empty."""
        for p in PRIORITY_ORDER:
            klass = self._classes[p]
            if klass:
                task_id, _ = klass.popitem(last=False)
                del self._index[task_id]
                return task_id
        return None

    def dequeue_class(self, priority: Priority) -> str | None:
        """Pop the oldest task of one class (used by anti-starvation aging)."""
        klass = self._classes[priority]
        if not klass:
            return None
        task_id, _ = klass.popitem(last=False)
        del self._index[task_id]
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
        ahead = 0
        for p in PRIORITY_ORDER:
            if p is priority:
                for i, queued in enumerate(self._classes[p]):
                    if queued == task_id:
                        return ahead + i
            ahead += len(self._classes[p])
        raise AssertionError(task_id)

    def __iter__(self) -> Iterator[str]:
        """Task ids in dispatch order."""
        for p in PRIORITY_ORDER:
            yield from self._classes[p]
