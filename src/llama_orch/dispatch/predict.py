"""Start-time predictions from measured service times (exponentially weighted).

Model: a pool with ``S`` slots of which ``F`` are free serves a task at queue position ``p``
(tasks ahead of it) immediately when ``p < F``; otherwise it waits for ``p - F + 1`` slot
releases. Slots free up at ``S / service_s`` per second on average, so the wait is about
``(p - F + 1) * service_s / S``. ``service_s`` is an EWMA of measured dispatch-to-end times,
seeded from the engine's perf hints (first-token latency + expected tokens / tokens per second)
until the first measurements arrive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Weight of the newest observation in the moving averages.
ALPHA = 0.2
#: Seed when an engine reports no perf hints at all.
DEFAULT_TOKENS_PER_S = 20.0
DEFAULT_FIRST_TOKEN_S = 0.2


@dataclass(slots=True)
class PoolPerf:
    """Measured per-pool throughput and first-token latency."""

    tokens_per_s: float = DEFAULT_TOKENS_PER_S
    first_token_s: float = DEFAULT_FIRST_TOKEN_S
    samples: int = 0

    def seed(self, tokens_per_s: float | None, first_token_ms: float | None) -> None:
        if self.samples == 0:
            if tokens_per_s:
                self.tokens_per_s = tokens_per_s
            if first_token_ms is not None:
                self.first_token_s = first_token_ms / 1000

    def observe(self, *, first_token_s: float | None, tokens: int, decode_s: float) -> None:
        if first_token_s is not None:
            self.first_token_s = _ewma(self.first_token_s, first_token_s, self.samples)
        if tokens > 1 and decode_s > 0:
            self.tokens_per_s = _ewma(self.tokens_per_s, tokens / decode_s, self.samples)
        self.samples += 1

    def service_s(self, tokens: int) -> float:
        return self.first_token_s + tokens / self.tokens_per_s


def _ewma(current: float, sample: float, samples: int) -> float:
    return sample if samples == 0 else (1 - ALPHA) * current + ALPHA * sample


def predicted_wait_s(position: int, slots_total: int, slots_free: int, service_s: float) -> float:
    if slots_total <= 0:
        return math.inf
    if position < slots_free:
        return 0.0
    return (position - slots_free + 1) * service_s / slots_total


def on_time_probability(predicted_wait_s: float, deadline_s: float) -> float:
    """Chance the task starts before its deadline, treating the wait as exponential."""
    if deadline_s <= 0:
        return 0.0
    if predicted_wait_s <= 0:
        return 1.0
    return max(0.0, min(1.0, 1.0 - math.exp(-deadline_s / predicted_wait_s)))
