"""CircuitBreaker: one per replica, so a failing engine stops taking work (ORCH-3602).

closed ──(``failures`` failures within ``window_s``)──▶ open
open ──(``cooldown_s`` passed; the next call is the trial)──▶ half_open
half_open ──success──▶ closed      half_open ──failure──▶ open (cool-down starts again)

Time comes from an injected clock (seconds, monotonic), so tests drive it without sleeping.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from llama_orch.config import CircuitBreakerConfig
from llama_orch.contracts.engine import BreakerState

Clock = Callable[[], float]
Transition = Callable[[BreakerState, BreakerState, str], None]


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 5
    window_s: float = 300.0
    cooldown_s: float = 30.0

    @classmethod
    def from_config(cls, config: CircuitBreakerConfig) -> BreakerPolicy:
        return cls(config.failures, float(config.window_s), float(config.cooldown_s))


class CircuitBreaker:
    __slots__ = (
        "_clock",
        "_failures",
        "_on_change",
        "_opened_at",
        "_state",
        "last_reason",
        "policy",
    )

    def __init__(
        self, policy: BreakerPolicy, clock: Clock, on_change: Transition | None = None
    ) -> None:
        self.policy = policy
        self._clock = clock
        self._on_change = on_change
        self._state: BreakerState = "closed"
        self._failures: deque[float] = deque()
        self._opened_at = 0.0
        self.last_reason = ""

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker past its cool-down reads as half_open."""
        if self._state == "open" and self._clock() - self._opened_at >= self.policy.cooldown_s:
            self._move("half_open", "the cool-down has passed; the next call is a trial")
        return self._state

    def allow(self) -> bool:
        """May a call go to the engine now? (Half-open lets trials through.)"""
        return self.state != "open"

    @property
    def retry_after_s(self) -> float:
        if self._state != "open":
            return 0.0
        return max(0.0, self.policy.cooldown_s - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        self._failures.clear()
        if self._state != "closed":
            self._move("closed", "a call succeeded")

    def record_failure(self, reason: str) -> None:
        now = self._clock()
        self.last_reason = reason
        if self.state == "half_open":
            self._open(now, f"the trial call failed: {reason}")
            return
        failures = self._failures
        failures.append(now)
        while failures and now - failures[0] > self.policy.window_s:
            failures.popleft()
        if self._state == "closed" and len(failures) >= self.policy.failures:
            self._open(
                now,
                f"{len(failures)} failures within {self.policy.window_s:g} s; last: {reason}",
            )

    def _open(self, now: float, why: str) -> None:
        self._opened_at = now
        self._failures.clear()
        self._move("open", why)

    def _move(self, new: BreakerState, why: str) -> None:
        old, self._state = self._state, new
        if self._on_change is not None and old != new:
            self._on_change(old, new, why)
