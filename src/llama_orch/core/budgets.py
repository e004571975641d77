"""Per-session budgets: tokens, decode time and cost (OC-CORE-1023, ORCH-3099, D-SES-02).

Admission reserves a task's worst case (``max_tokens`` tokens and their cost) before it is
queued, so concurrent tasks of one session can never overspend; when the task ends, the
reservation is released and what it really used (``tokens_out``, ``decode_time_ms``) is
charged. Time has no worst case to reserve: a session whose time budget is spent is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldNames:
    """What a refusal calls a task's length, texts and session: the task API's fields, or what a
    front door's client sent instead (``options.num_predict``, ``input``, ``documents``, the
    ``X-Session-Id`` header)."""

    length: str = "max_tokens"
    session: str = "session_id"
    #: The texts of an embedding or rerank task, and a rerank task's query.
    inputs: str = "inputs"
    query: str = "query"


TASK_FIELDS = FieldNames()


@dataclass(frozen=True, slots=True)
class BudgetLimits:
    """``None`` disables a budget; ``cost_per_token`` prices every generated token."""

    tokens: int | None = None
    time_ms: int | None = None
    cost: float | None = None
    cost_per_token: float = 0.0

    @property
    def enabled(self) -> bool:
        return self.tokens is not None or self.time_ms is not None or self.cost is not None


@dataclass(slots=True)
class BudgetUsage:
    tokens_used: int = 0
    time_used_ms: int = 0
    cost_used: float = 0.0
    tokens_reserved: int = 0
    cost_reserved: float = 0.0

    def reserve(self, tokens: int, price: float) -> None:
        self.tokens_reserved += tokens
        self.cost_reserved += tokens * price

    def settle(self, *, reserved: int, price: float, tokens_out: int, decode_ms: int) -> None:
        """Release a reservation and charge what the task really used."""
        self.tokens_reserved = max(0, self.tokens_reserved - reserved)
        self.cost_reserved = max(0.0, self.cost_reserved - reserved * price)
        self.tokens_used += tokens_out
        self.time_used_ms += decode_ms
        self.cost_used += tokens_out * price


@dataclass(frozen=True, slots=True)
class BudgetRemaining:
    tokens: int | None
    time_ms: int | None
    cost: float | None


def remaining(limits: BudgetLimits, usage: BudgetUsage) -> BudgetRemaining:
    """What is left after charges and in-flight reservations, never below zero."""
    return BudgetRemaining(
        tokens=None
        if limits.tokens is None
        else max(0, limits.tokens - usage.tokens_used - usage.tokens_reserved),
        time_ms=None if limits.time_ms is None else max(0, limits.time_ms - usage.time_used_ms),
        cost=None
        if limits.cost is None
        else max(0.0, round(limits.cost - usage.cost_used - usage.cost_reserved, 9)),
    )


def affordable_tokens(limits: BudgetLimits, usage: BudgetUsage, price: float) -> int | None:
    """The largest ``max_tokens`` that ``check_budget`` lets through now; None when neither a
    token nor a cost budget bounds it (a spent time budget refuses any size)."""
    left = remaining(limits, usage)
    most = left.tokens
    if left.cost is not None and price > 0:
        by_cost = math.floor(left.cost / price)
        # The division may land one off either way: settle on check_budget's own test.
        if (by_cost + 1) * price <= left.cost + 1e-12:
            by_cost += 1
        elif by_cost * price > left.cost + 1e-12:
            by_cost -= 1
        most = max(0, by_cost) if most is None else min(most, max(0, by_cost))
    return most


def check_budget(
    limits: BudgetLimits,
    usage: BudgetUsage,
    *,
    max_tokens: int,
    price: float,
    names: FieldNames = TASK_FIELDS,
    sized_by: str | None = None,
) -> str | None:
    """None when the task fits what is left; otherwise what is exhausted and what to do.

    ``names.length`` is the field that set ``max_tokens``; ``sized_by`` names what it counts
    when it is no length (an embedding task: its inputs' tokens, named as the client sent
    them)."""
    left = remaining(limits, usage)
    length = names.length
    if left.tokens == 0:
        # No size fits: advice to lower the length (at least 1) could not be followed.
        if usage.tokens_reserved:
            return (
                f"session token budget is held by its queued or running tasks "
                f"({usage.tokens_reserved} tokens reserved until they end, when what they did "
                "not use is freed); retry once they end or start a new session"
            )
        return "session token budget is spent; start a new session or wait for this one to expire"
    if left.tokens is not None and max_tokens > left.tokens and sized_by is not None:
        return (
            f"session token budget has {left.tokens} tokens left but the texts in {sized_by} "
            f"are about {max_tokens} tokens; send fewer or shorter texts or start a new session"
        )
    if left.tokens is not None and max_tokens > left.tokens:
        return (
            f"session token budget has {left.tokens} tokens left but {length} is "
            f"{max_tokens}; lower {length} to at most {left.tokens} or start a new session"
        )
    if left.time_ms is not None and left.time_ms <= 0:
        return "session time budget is spent; start a new session"
    if left.cost is not None and price > left.cost + 1e-12:
        if usage.cost_reserved > 1e-12:
            return (
                f"session cost budget is held by its queued or running tasks "
                f"({usage.cost_reserved:g} reserved until they end, when what they did not "
                "use is freed); retry once they end or start a new session"
            )
        return (
            f"session cost budget is spent ({left.cost:g} left, less than one token's price "
            f"{price:g}); start a new session or wait for this one to expire"
        )
    if left.cost is not None and max_tokens * price > left.cost + 1e-12:
        return (
            f"session cost budget has {left.cost:g} left but {length} {max_tokens} may cost "
            f"{max_tokens * price:g}; lower {length} or start a new session"
        )
    return None
