"""Session rules and budget limits from the config (the rules themselves live in
``core.sessions``)."""

from __future__ import annotations

from typing import TypeVar

from llama_orch.config import BudgetsConfig, SessionsConfig, Unlimited
from llama_orch.core.budgets import BudgetLimits
from llama_orch.core.sessions import Session, SessionRules, SessionStore

__all__ = ["Session", "SessionStore", "budget_limits", "session_rules"]


def session_rules(config: SessionsConfig) -> SessionRules:
    return SessionRules(
        ttl_s=config.ttl_ms / 1000,
        affinity_ttl_s=config.affinity_ttl_ms / 1000,
        max_turns=config.max_turns,
    )


def budget_limits(server: BudgetsConfig, pool: BudgetsConfig | None) -> BudgetLimits:
    """A pool's ``budgets:`` overrides the server's key by key; null keys inherit, and
    ``unlimited`` switches a budget off."""
    own = pool or BudgetsConfig()
    price = own.cost_per_token if own.cost_per_token is not None else server.cost_per_token
    return BudgetLimits(
        tokens=_limit(own.tokens, server.tokens),
        time_ms=_limit(own.time_ms, server.time_ms),
        cost=_limit(own.cost, server.cost),
        cost_per_token=price or 0.0,
    )


_N = TypeVar("_N", int, float)


def _limit(own: _N | Unlimited | None, server: _N | Unlimited | None) -> _N | None:
    value = server if own is None else own
    return None if isinstance(value, str) else value
