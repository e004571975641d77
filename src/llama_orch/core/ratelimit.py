"""Per-class admission throttles (ORCH-3006): a token bucket with the time passed in.

A class with ``rate_limit_rps: r`` admits ``r`` tasks per second on average and at most ``r``
in a burst (one second's worth). A refused task learns how long until the next token, which
becomes its ``Retry-After``.
"""

from __future__ import annotations


class TokenBucket:
    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate_per_s: float, *, burst: float | None = None, now: float = 0.0) -> None:
        if rate_per_s <= 0:
            raise ValueError("rate must be positive")
        self._rate = rate_per_s
        self._burst = max(1.0, burst if burst is not None else rate_per_s)
        self._tokens = self._burst
        self._last = now

    def _refill(self, now: float) -> None:
        if now > self._last:
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now

    def wait_s(self, now: float) -> float:
        """Seconds until one token is available; 0 when one is available now."""
        self._refill(now)
        return 0.0 if self._tokens >= 1.0 else (1.0 - self._tokens) / self._rate

    def take(self, now: float) -> bool:
        """Spend one token if one is available."""
        self._refill(now)
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
