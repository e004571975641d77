"""Budgets, throttles, replica sets and guardrails: the small pure parts of core."""

from __future__ import annotations

import pytest

from llama_orch.core.budgets import (
    BudgetLimits,
    BudgetUsage,
    affordable_tokens,
    check_budget,
    remaining,
)
from llama_orch.core.guardrails import check_context, check_overrides, estimate_prompt_tokens
from llama_orch.core.queue import AdmissionQueue, burst_from_weights
from llama_orch.core.ratelimit import TokenBucket
from llama_orch.core.replica_set import replica_set_conflict
from llama_orch.vocab import Priority


class TestBudgets:
    def test_reservation_counts_until_settled(self) -> None:
        """A reserved max_tokens is unavailable until the task ends and is charged its real use."""
        limits = BudgetLimits(tokens=100, cost=1.0, cost_per_token=0.01)
        usage = BudgetUsage()
        usage.reserve(60, 0.01)
        assert (40, 0.4) == (remaining(limits, usage).tokens, remaining(limits, usage).cost)
        usage.settle(reserved=60, price=0.01, tokens_out=10, decode_ms=50)
        left = remaining(limits, usage)
        assert (90, 0.9, None) == (left.tokens, left.cost, left.time_ms)

    def test_check_refuses_what_cannot_fit(self) -> None:
        """max_tokens over the tokens left, spent time, or a cost over what is left refuses."""
        usage = BudgetUsage(tokens_used=90, time_used_ms=1000)
        assert None is check_budget(BudgetLimits(tokens=100), usage, max_tokens=10, price=0)
        assert "at most 10" in str(
            check_budget(BudgetLimits(tokens=100), usage, max_tokens=11, price=0)
        )
        assert "time budget" in str(
            check_budget(BudgetLimits(time_ms=1000), usage, max_tokens=1, price=0)
        )
        assert "cost budget" in str(
            check_budget(BudgetLimits(cost=0.05), usage, max_tokens=10, price=0.01)
        )

    def test_a_spent_budget_is_called_spent(self) -> None:
        """With nothing left no max_tokens fits, so the refusal does not ask to lower it."""
        spent = BudgetUsage(tokens_used=100, cost_used=0.995)
        tokens = check_budget(BudgetLimits(tokens=100), spent, max_tokens=1, price=0)
        cost = check_budget(BudgetLimits(cost=1.0), spent, max_tokens=1, price=0.01)
        assert "token budget is spent" in str(tokens)
        assert "cost budget is spent" in str(cost)
        assert "lower max_tokens" not in f"{tokens} {cost}"

    def test_a_budget_held_by_running_tasks_is_not_called_spent(self) -> None:
        """What running tasks reserved comes back, partly, when they end: not spent for good."""
        held = BudgetUsage(tokens_used=60, tokens_reserved=40, cost_reserved=0.4)
        tokens = check_budget(BudgetLimits(tokens=100), held, max_tokens=1, price=0)
        cost = check_budget(BudgetLimits(cost=0.4), held, max_tokens=1, price=0.01)
        assert "40 tokens reserved" in str(tokens)
        assert "0.4 reserved" in str(cost)
        assert "spent" not in f"{tokens} {cost}"

    @pytest.mark.parametrize(
        ("limits", "usage", "price", "most"),
        [
            (BudgetLimits(), BudgetUsage(), 0.01, None),
            (BudgetLimits(tokens=100), BudgetUsage(tokens_used=70, tokens_reserved=10), 0, 20),
            (BudgetLimits(cost=0.3), BudgetUsage(), 0.1, 3),  # 0.3 / 0.1 is 2.999... in floats
            (BudgetLimits(cost=0.3), BudgetUsage(), 0.0, None),
            (BudgetLimits(tokens=100, cost=0.05), BudgetUsage(), 0.01, 5),
            (BudgetLimits(tokens=10), BudgetUsage(tokens_used=10), 0, 0),
        ],
    )
    def test_affordable_tokens_is_the_largest_size_the_check_admits(
        self, limits: BudgetLimits, usage: BudgetUsage, price: float, most: int | None
    ) -> None:
        assert most == affordable_tokens(limits, usage, price)
        if most:
            assert None is check_budget(limits, usage, max_tokens=most, price=price)
            assert None is not check_budget(limits, usage, max_tokens=most + 1, price=price)

    def test_disabled_budgets(self) -> None:
        """Without limits nothing is refused and nothing is reported."""
        assert not BudgetLimits().enabled
        left = remaining(BudgetLimits(), BudgetUsage(tokens_used=10**9))
        assert (None, None, None) == (left.tokens, left.time_ms, left.cost)


class TestTokenBucket:
    def test_burst_then_rate(self) -> None:
        """A 2 rps bucket admits 2 at once, then one more after half a second."""
        bucket = TokenBucket(2, now=0.0)
        assert [True, True, False] == [bucket.take(0.0) for _ in range(3)]
        assert 0.5 == pytest.approx(bucket.wait_s(0.0))
        assert bucket.take(0.5)

    def test_refill_is_capped(self) -> None:
        """A long idle period refills only up to the burst."""
        bucket = TokenBucket(1, now=0.0)
        assert [True, False] == [bucket.take(100.0), bucket.take(100.0)]


class TestReplicaSet:
    def test_agreeing_and_unknown_versions(self) -> None:
        """One version per set is fine; an unknown version never counts as a clash."""
        members = [("r0", "v1", "s1"), ("r1", "v1", "s1"), ("r2", "unknown", "s1")]
        assert None is replica_set_conflict("p", members)

    def test_mixed_versions_are_named(self) -> None:
        """A clash names the field, each version and which replicas run it."""
        message = replica_set_conflict("p", [("r0", "v1", "s1"), ("r1", "v2", "s2")])
        assert message is not None
        assert "engine_version (v1: r0; v2: r1)" in message
        assert "sampler_profile_version (s1: r0; s2: r1)" in message


class TestGuardrails:
    def test_context_checks(self) -> None:
        """ctx over the model limit, or prompt + max_tokens over ctx, is a violation."""
        assert (
            "ctx"
            == check_context(ctx=9000, model_ctx_max=8192, prompt_tokens=1, max_tokens=1).field
        )  # type: ignore[union-attr]
        assert (
            "max_tokens"
            == check_context(ctx=100, model_ctx_max=8192, prompt_tokens=50, max_tokens=51).field
        )  # type: ignore[union-attr]
        assert None is check_context(ctx=100, model_ctx_max=100, prompt_tokens=50, max_tokens=50)
        assert 2 == estimate_prompt_tokens(4)

    def test_overrides_name_known_pools(self) -> None:
        """Unknown pool ids and a pin that is also avoided are refused."""
        known = frozenset({"a", "b"})
        unknown = check_overrides(
            mode="prefer", pin_pool_id=None, prefer_pools=("z",), avoid_pools=(), known_pools=known
        )
        assert unknown is not None and "['z']" in unknown.message
        both = check_overrides(
            mode="pin", pin_pool_id="a", prefer_pools=(), avoid_pools=("a",), known_pools=known
        )
        assert both is not None
        assert None is check_overrides(
            mode="pin", pin_pool_id="a", prefer_pools=(), avoid_pools=("b",), known_pools=known
        )


class TestQueuePositions:
    def test_weights_give_the_burst(self) -> None:
        """No weights: strict priority (None); else the interactive:batch weight ratio (a
        missing interactive weight counts 8), at least 1."""
        assert (None, 3, 1, 1, 8) == (
            burst_from_weights(None, None),
            burst_from_weights(6, 2),
            burst_from_weights(1, 9),
            burst_from_weights(None, 100),
            burst_from_weights(8, None),
        )

    def test_strict_priority_by_default(self) -> None:
        """Without weights, a batch task waits while any interactive task is queued."""
        queue = AdmissionQueue(100)
        queue.enqueue("b0", Priority.BATCH)
        for n in range(20):
            queue.enqueue(f"i{n}", Priority.INTERACTIVE)
        assert (20, [f"i{n}" for n in range(20)] + ["b0"]) == (
            queue.position("b0"),
            list(queue),
        )
        assert [f"i{n}" for n in range(20)] + ["b0"] == [queue.dequeue() for _ in range(21)]

    def test_batch_position_counts_the_burst(self) -> None:
        """A batch task waits behind at most `burst` interactive tasks."""
        queue = AdmissionQueue(100, interactive_burst=2)
        for n in range(5):
            queue.enqueue(f"i{n}", Priority.INTERACTIVE)
        outcome = queue.enqueue("b0", Priority.BATCH)
        assert 2 == queue.position("b0") == getattr(outcome, "position", None)
        assert 3 == queue.position("i2")
        assert ["i0", "i1", "b0", "i2", "i3", "i4"] == list(queue)

    def test_peek_next_matches_dequeue(self) -> None:
        """peek_next names the task dequeue returns, without removing it."""
        queue = AdmissionQueue(10, interactive_burst=1)
        queue.enqueue("i0", Priority.INTERACTIVE)
        queue.enqueue("b0", Priority.BATCH)
        queue.enqueue("i1", Priority.INTERACTIVE)
        order = []
        while (peeked := queue.peek_next()) is not None:
            assert peeked == queue.dequeue()
            order.append(peeked)
        assert ["i0", "b0", "i1"] == order
