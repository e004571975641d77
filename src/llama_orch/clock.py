"""SystemClock: monotonic time and event-loop timers (the ``core.clock.Clock`` used to serve)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class SystemClock:
    __slots__ = ()

    #: ``time.monotonic`` itself: ``now()`` is read per token batch, so no Python frame.
    now = staticmethod(time.monotonic)

    def call_at(self, when: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        # The loop's own clock may differ from time.monotonic; a delay carries over exactly.
        loop = asyncio.get_running_loop()
        return loop.call_later(max(0.0, when - time.monotonic()), callback)
