"""Clock: the one way the orchestrator reads time and sets timers.

Everything that measures durations or arms a deadline takes a ``Clock`` from the composition
root: ``llama_orch.clock.SystemClock`` when serving (monotonic time, event-loop timers), and
``ManualClock`` in tests, where time moves only when the test says so and timers fire in order
of their due time as it moves.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale; only differences mean anything."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once ``now()`` reaches ``when`` (at once if it already has)."""
        ...


class _ManualTimer:
    __slots__ = ("callback", "canceled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.canceled = False

    def cancel(self) -> None:
        self.canceled = True


class ManualClock:
    """A clock moved by hand: ``advance`` fires every timer that comes due, in due order."""

    def __init__(self, start: float = 0.0) -> None:
        self._now = start
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> _ManualTimer:
        timer = _ManualTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._seq), timer))
        return timer

    @property
    def pending(self) -> int:
        return sum(1 for _, _, t in self._timers if not t.canceled)

    def advance(self, seconds: float) -> None:
        target = self._now + seconds
        while self._timers and self._timers[0][0] <= target:
            when, _, timer = heapq.heappop(self._timers)
            self._now = max(self._now, when)
            if not timer.canceled:
                timer.callback()
        self._now = target
