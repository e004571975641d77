"""Session rules and budget limits from the config (the rules themselves live in
``core.sessions``)."""

from __future__ import annotations

from llama_orch.config import BudgetsConfig, SessionsConfig
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
    """A pool's ``budgets:`` overrides the server's key by key; null keys inherit."""
    own = pool or BudgetsConfig()
    price = own.cost_per_token if own.cost_per_token is not None else server.cost_per_token
    return BudgetLimits(
        tokens=own.tokens if own.tokens is not None else server.tokens,
        time_ms=own.time_ms if own.time_ms is not None else server.time_ms,
        cost=own.cost if own.cost is not None else server.cost,
        cost_per_token=price or 0.0,
    )
