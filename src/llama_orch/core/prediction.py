"""Start-time predictions from measured per-replica service times (docs/predictions.md).

Each replica keeps exponentially weighted averages (EWMA) of its decode throughput and its
first-token latency, seeded from the engine's perf hints until the first measurement. A task
with ``n`` expected tokens costs ``first_token_s + n / tokens_per_s`` on that replica.

To predict when the task at queue position ``p`` starts, every Ready slot gets the time until
it is free (0 when idle; the estimated remaining work of the task holding it otherwise), and the
``p`` tasks ahead are handed out in dispatch order, each to the slot that frees first (list
scheduling, exactly what the dispatcher does). The start is when the earliest slot frees after
that. Past ``EXACT_LIMIT`` tasks ahead the rest is treated as fluid work spread over all slots,
which keeps the cost bounded and the prediction monotone in ``p``.

``on_time_probability`` treats the wait as normally distributed around the prediction, with a
spread from the measured variation of service times shrinking with the number of slot
releases waited for.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

#: Weight of the newest observation in the moving averages.
ALPHA = 0.2
#: Seeds when an engine reports no perf hints at all.
DEFAULT_TOKENS_PER_S = 20.0
DEFAULT_FIRST_TOKEN_S = 0.2
#: Coefficient of variation of a service time before anything was measured.
DEFAULT_CV = 0.5
#: Tasks ahead that are simulated one by one; the rest is fluid work.
EXACT_LIMIT = 256
#: Floor of the wait's standard deviation, so a tiny prediction is not taken as certain.
MIN_SIGMA_S = 0.005


@dataclass(slots=True)
class ReplicaPerf:
    """Measured throughput, first-token latency and service-time variation of one replica."""

    tokens_per_s: float = DEFAULT_TOKENS_PER_S
    first_token_s: float = DEFAULT_FIRST_TOKEN_S
    #: EWMA of the squared relative error of the service-time estimate.
    rel_var: float = DEFAULT_CV**2
    samples: int = 0

    def seed(self, tokens_per_s: float | None, first_token_ms: float | None) -> None:
        """Take the engine's perf hints, until real measurements exist."""
        if self.samples == 0:
            if tokens_per_s:
                self.tokens_per_s = tokens_per_s
            if first_token_ms is not None:
                self.first_token_s = first_token_ms / 1000

    def service_s(self, tokens: int) -> float:
        return self.first_token_s + tokens / self.tokens_per_s

    def observe(
        self, *, first_token_s: float | None, tokens: int, decode_s: float, expected: int
    ) -> None:
        """Fold one finished task into the averages."""
        if first_token_s is not None:
            actual = first_token_s + decode_s
            estimate = self.service_s(expected)
            if estimate > 0:
                err = (actual - estimate) / estimate
                self.rel_var = _ewma(self.rel_var, err * err, 1)
            self.first_token_s = _ewma(self.first_token_s, first_token_s, self.samples)
        if tokens > 1 and decode_s > 0:
            # The first token is timed by first_token_s; the rest by the decode rate.
            self.tokens_per_s = _ewma(self.tokens_per_s, (tokens - 1) / decode_s, self.samples)
        self.samples += 1

    @property
    def cv(self) -> float:
        return math.sqrt(self.rel_var)


def _ewma(current: float, sample: float, samples: int) -> float:
    return sample if samples == 0 else (1 - ALPHA) * current + ALPHA * sample


@dataclass(frozen=True, slots=True)
class SlotState:
    """One Ready slot: seconds until it frees (0 when idle) and its replica's perf."""

    free_in_s: float
    perf: ReplicaPerf


def remaining_s(perf: ReplicaPerf, *, elapsed_s: float, expected: int, tokens_out: int) -> float:
    """Estimated time left for a running task; an overrunning task needs at least one token."""
    floor = 1 / perf.tokens_per_s
    if tokens_out == 0:
        return max(floor, perf.service_s(expected) - elapsed_s)
    return max(floor, (expected - tokens_out) / perf.tokens_per_s)


def predicted_start_s(
    slots: Sequence[SlotState], ahead: Iterable[int], rest_count: int = 0, rest_tokens: float = 0.0
) -> float:
    """Seconds until a task starts, given the expected tokens of the tasks ahead of it.

    ``ahead`` lists (up to ``EXACT_LIMIT``) tasks in dispatch order; ``rest_count`` tasks with
    ``rest_tokens`` expected tokens in all come after those and are treated as fluid work.
    """
    if not slots:
        return math.inf
    heap = [(slot.free_in_s, i) for i, slot in enumerate(slots)]
    heapq.heapify(heap)
    for tokens in ahead:
        free_at, i = heapq.heappop(heap)
        heapq.heappush(heap, (free_at + slots[i].perf.service_s(tokens), i))
    if rest_count <= 0:
        return heap[0][0]
    mean_tps = sum(s.perf.tokens_per_s for s in slots) / len(slots)
    mean_ttft = sum(s.perf.first_token_s for s in slots) / len(slots)
    work = rest_count * mean_ttft + rest_tokens / mean_tps
    return max(heap[0][0], (sum(t for t, _ in heap) + work) / len(slots))


def on_time_probability(wait_s: float, deadline_s: float, *, cv: float, releases: int) -> float:
    """P(start before the deadline) with the wait ~ Normal(wait, (wait * cv / sqrt(k))^2)."""
    if deadline_s <= 0:
        return 0.0
    if wait_s <= 0:
        return 1.0
    if math.isinf(wait_s):
        return 0.0
    sigma = max(MIN_SIGMA_S, wait_s * cv / math.sqrt(max(1, releases)))
    z = (deadline_s - wait_s) / sigma
    return 0.5 * math.erfc(-z / math.sqrt(2))
