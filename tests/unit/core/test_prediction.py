"""Start-time predictions: learned from measurements, monotone, and close on a simulated load."""

from __future__ import annotations

import heapq
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_orch.core.prediction import (
    EXACT_LIMIT,
    ReplicaPerf,
    SlotState,
    on_time_probability,
    predicted_start_s,
    remaining_s,
)

#: The error this model promises on the simulated workload below (docs/predictions.md).
STATED_MEDIAN_ERROR = 0.10
STATED_P90_ERROR = 0.25


class TestReplicaPerf:
    def test_learns_from_measurements(self) -> None:
        """After a few observations the EWMAs sit near the measured values, not the seed."""
        perf = ReplicaPerf()
        perf.seed(100.0, 50.0)
        for _ in range(20):
            perf.observe(first_token_s=0.3, tokens=101, decode_s=2.0, expected=100)
        assert 50.0 == pytest.approx(perf.tokens_per_s, rel=0.01)
        assert 0.3 == pytest.approx(perf.first_token_s, rel=0.01)
        assert perf.cv < 0.1

    def test_seed_only_before_measurements(self) -> None:
        """Engine hints seed the model but never override a measurement."""
        perf = ReplicaPerf()
        perf.observe(first_token_s=0.1, tokens=11, decode_s=1.0, expected=10)
        perf.seed(999.0, 1.0)
        assert 10.0 == pytest.approx(perf.tokens_per_s)

    def test_remaining_of_running_task(self) -> None:
        """A running task needs its remaining tokens' time, at least one token's time."""
        perf = ReplicaPerf(tokens_per_s=10.0, first_token_s=0.5)
        assert 1.0 == pytest.approx(remaining_s(perf, elapsed_s=0.0, expected=20, tokens_out=10))
        assert 0.1 == pytest.approx(remaining_s(perf, elapsed_s=99, expected=20, tokens_out=30))
        assert 2.0 == pytest.approx(remaining_s(perf, elapsed_s=0.5, expected=20, tokens_out=0))


class TestPredictedStart:
    @settings(max_examples=100, deadline=None)
    @given(
        st.lists(st.floats(0, 5), min_size=1, max_size=6),
        st.lists(st.integers(1, 500), max_size=300),
    )
    def test_monotone_in_queue_position(self, busy: list[float], tokens: list[int]) -> None:
        """A task further back in the queue is never predicted to start earlier."""
        perf = ReplicaPerf(tokens_per_s=40.0, first_token_s=0.2)
        slots = [SlotState(b, perf) for b in busy]
        predictions = [
            predicted_start_s(
                slots,
                tokens[: min(p, EXACT_LIMIT)],
                max(0, p - EXACT_LIMIT),
                sum(tokens[EXACT_LIMIT:p]),
            )
            for p in range(len(tokens) + 1)
        ]
        assert predictions == sorted(predictions)

    def test_free_slot_means_now(self) -> None:
        """With a free slot and nobody ahead, the task starts at once; with no slot, never."""
        perf = ReplicaPerf()
        assert 0.0 == predicted_start_s([SlotState(0.0, perf)], [])
        assert float("inf") == predicted_start_s([], [])

    def test_within_stated_error_on_simulated_workload(self) -> None:
        """On a two-replica pool with 3 slots and noisy token counts, the prediction of each
        queued task's start, from learned perf and expected tokens, has a median relative error
        under 10% and a 90th percentile under 25%."""
        rng = random.Random(7)
        replicas = [(40.0, 0.15), (25.0, 0.30)]  # (tokens/s, first-token seconds)
        slot_replica = [0, 0, 1]
        perfs = [ReplicaPerf() for _ in replicas]
        # Warm-up: the model learns each replica's speed from finished tasks.
        for perf, (tps, ttft) in zip(perfs, replicas, strict=True):
            for _ in range(30):
                expected = rng.randint(50, 300)
                actual = max(2, round(expected * rng.uniform(0.8, 1.2)))
                perf.observe(
                    first_token_s=ttft,
                    tokens=actual,
                    decode_s=(actual - 1) / tps,
                    expected=expected,
                )
        errors = []
        for _trial in range(20):
            expected = [rng.randint(50, 300) for _ in range(40)]
            actual = [max(2, round(e * rng.uniform(0.8, 1.2))) for e in expected]
            # Real start times need the real service times on whichever slot frees first.
            heap = [(0.0, s) for s in range(len(slot_replica))]
            real = []
            for tokens in actual:
                free_at, s = heapq.heappop(heap)
                real.append(free_at)
                tps, ttft = replicas[slot_replica[s]]
                heapq.heappush(heap, (free_at + ttft + (tokens - 1) / tps, s))
            slots = [SlotState(0.0, perfs[r]) for r in slot_replica]
            for position in range(len(slot_replica), len(expected)):
                predicted = predicted_start_s(slots, expected[:position])
                errors.append(abs(predicted - real[position]) / real[position])
        errors.sort()
        assert statistics.median(errors) < STATED_MEDIAN_ERROR
        assert errors[int(len(errors) * 0.9)] < STATED_P90_ERROR


class TestOnTimeProbability:
    def test_shape(self) -> None:
        """Certain when starting now, 0.5 at the prediction, rising with slack."""
        assert 1.0 == on_time_probability(0.0, 1.0, cv=0.5, releases=1)
        assert 0.0 == on_time_probability(1.0, 0.0, cv=0.5, releases=1)
        assert 0.5 == pytest.approx(on_time_probability(2.0, 2.0, cv=0.5, releases=1))
        values = [on_time_probability(2.0, d, cv=0.5, releases=4) for d in (1.0, 2.0, 3.0, 4.0)]
        assert values == sorted(values) and values[-1] > 0.99
