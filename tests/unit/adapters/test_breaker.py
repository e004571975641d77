"""The per-replica circuit breaker, driven by a hand-moved clock."""

from __future__ import annotations

from llama_orch.adapters._breaker import BreakerPolicy, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def breaker(clock: Clock, changes: list[tuple[str, str]] | None = None) -> CircuitBreaker:
    def on_change(old: str, new: str, _why: str) -> None:
        if changes is not None:
            changes.append((old, new))

    return CircuitBreaker(BreakerPolicy(failures=3, window_s=10, cooldown_s=30), clock, on_change)


class TestCircuitBreaker:
    def test_opens_after_failures_within_the_window(self) -> None:
        """Three failures within ten seconds open the breaker; calls are refused."""
        clock = Clock()
        b = breaker(clock)
        for _ in range(3):
            assert b.allow()
            b.record_failure("boom")
            clock.now += 1
        assert ("open", False) == (b.state, b.allow())

    def test_old_failures_fall_out_of_the_window(self) -> None:
        """Failures further apart than the window never add up to a trip."""
        clock = Clock()
        b = breaker(clock)
        for _ in range(5):
            b.record_failure("boom")
            clock.now += 6
        assert "closed" == b.state

    def test_half_opens_after_cooldown_and_closes_on_success(self) -> None:
        """After the cool-down one trial is allowed; its success closes the breaker."""
        clock = Clock()
        changes: list[tuple[str, str]] = []
        b = breaker(clock, changes)
        for _ in range(3):
            b.record_failure("boom")
        clock.now += 29
        assert (False, 1.0) == (b.allow(), b.retry_after_s)
        clock.now += 1
        assert ("half_open", True) == (b.state, b.allow())
        b.record_success()
        assert [("closed", "open"), ("open", "half_open"), ("half_open", "closed")] == changes

    def test_failed_trial_reopens(self) -> None:
        """A failing trial opens the breaker again for a full cool-down."""
        clock = Clock()
        b = breaker(clock)
        for _ in range(3):
            b.record_failure("boom")
        clock.now += 30
        b.record_failure("still down")
        assert ("open", 30.0, "still down") == (b.state, b.retry_after_s, b.last_reason)

    def test_success_clears_the_count(self) -> None:
        """A success between failures starts the count again."""
        b = breaker(Clock())
        b.record_failure("a")
        b.record_failure("b")
        b.record_success()
        b.record_failure("c")
        assert "closed" == b.state
