from __future__ import annotations

from llama_orch.config import BudgetsConfig, SessionsConfig
from llama_orch.core.budgets import BudgetLimits
from llama_orch.dispatch.sessions import SessionStore, budget_limits, session_rules


class TestSessionStore:
    def test_unknown_session_is_created(self) -> None:
        """get_or_create makes a session that get then finds."""
        store = SessionStore(session_rules(SessionsConfig()))
        created = store.get_or_create("s1", now=0.0)
        assert created is store.get("s1", now=1.0)

    def test_expired_session_is_pruned_on_access(self) -> None:
        """A session idle past its TTL is gone on the next access (D-SES-01)."""
        store = SessionStore(session_rules(SessionsConfig(ttl_ms=1000)))
        store.get_or_create("s1", now=0.0)
        assert store.get("s1", now=0.999) is not None
        assert store.get("s1", now=2.0) is None
        assert 0 == len(store)

    def test_ttl_remaining(self) -> None:
        """Remaining TTL counts down from the last use."""
        store = SessionStore(session_rules(SessionsConfig(ttl_ms=10_000)))
        session = store.get_or_create("s1", now=5.0)
        assert 7000 == store.ttl_remaining_ms(session, now=8.0)

    def test_a_held_session_does_not_expire(self) -> None:
        """While a task of the session is queued or running the TTL does not run; it starts
        again when the last one ends."""
        store = SessionStore(session_rules(SessionsConfig(ttl_ms=1000)))
        session = store.get_or_create("s1", now=0.0)
        store.hold(session, now=0.0, limits=BudgetLimits())
        store.hold(session, now=0.5, limits=BudgetLimits())
        assert (session, 1000) == (store.get("s1", now=9.0), store.ttl_remaining_ms(session, 9.0))
        assert 0 == store.prune(now=9.0)
        store.release(session, now=10.0)
        assert store.get("s1", now=12.0) is session
        store.release(session, now=12.0)
        assert (2, 500) == (session.turns, store.ttl_remaining_ms(session, now=12.5))
        assert store.get("s1", now=13.0) is None

    def test_evict_and_prune(self) -> None:
        """evict forgets one session; prune drops every expired one."""
        store = SessionStore(session_rules(SessionsConfig(ttl_ms=1000)))
        store.get_or_create("a", now=0.0)
        store.get_or_create("b", now=5.0)
        assert (True, False) == (store.evict("a"), store.evict("a"))
        store.get_or_create("c", now=0.0)
        assert 1 == store.prune(now=5.5)
        assert ["b"] == [s for s in ("a", "b", "c") if store.get(s, now=5.5)]

    def test_sessions_never_looked_up_again_do_not_pile_up(self) -> None:
        """A new session per task is the common case (the front doors make one per request):
        such sessions are never accessed again, so lazy pruning alone would keep every one.
        Creating sessions sweeps the expired ones often enough to bound the store."""
        store = SessionStore(session_rules(SessionsConfig(ttl_ms=1000)))
        per_ttl = 3000
        largest = 0
        for n in range(20 * per_ttl):
            store.get_or_create(f"s{n}", now=n / per_ttl)
            largest = max(largest, len(store))
        assert largest <= 2 * per_ttl + 2


class TestAffinityAndWarmth:
    def test_affinity_lasts_for_the_soft_ttl(self) -> None:
        """After a task is served, affinity points at its replica until the soft TTL ends."""
        store = SessionStore(session_rules(SessionsConfig(affinity_ttl_ms=2000)))
        session = store.get_or_create("s1", now=0.0)
        assert None is store.affinity("s1", now=0.0)
        store.served(session, ("p0", "r1"), now=1.0)
        affinity = store.affinity("s1", now=1.5)
        assert affinity is not None
        assert ("p0", "r1", 3.0) == (affinity.pool_id, affinity.replica_id, affinity.expires_at)

    def test_warmth_is_per_replica(self) -> None:
        """kv_warmth is true only when the last replica holds the session's KV."""
        store = SessionStore(session_rules(SessionsConfig()))
        session = store.get_or_create("s1", now=0.0)
        store.mark_warm(session, ("p0", "r0"), now=0.0)
        store.served(session, ("p0", "r1"), now=1.0)
        assert not session.kv_warmth
        store.mark_warm(session, ("p0", "r1"), now=1.0)
        assert session.kv_warmth
        store.forget_replica(("p0", "r1"))
        assert not session.kv_warmth


class TestBudgetLimits:
    def test_pool_overrides_server_key_by_key(self) -> None:
        """A pool's budgets override the server's per key; null keys inherit."""
        server = BudgetsConfig(tokens=1000, cost=5.0, cost_per_token=0.01)
        pool = BudgetsConfig(tokens=100)
        assert BudgetLimits(100, None, 5.0, 0.01) == budget_limits(server, pool)
        assert BudgetLimits(1000, None, 5.0, 0.01) == budget_limits(server, None)
        assert 0.0 == budget_limits(BudgetsConfig(), None).cost_per_token

    def test_unlimited_switches_a_server_budget_off(self) -> None:
        """``unlimited`` in a pool disables the server's budget where null would inherit it;
        at the server it is the same as null."""
        server = BudgetsConfig(tokens=1000, time_ms=60_000, cost=5.0)
        pool = BudgetsConfig(tokens="unlimited", cost="unlimited")
        assert BudgetLimits(None, 60_000, None, 0.0) == budget_limits(server, pool)
        assert BudgetLimits(None, None, None, 0.0) == budget_limits(
            BudgetsConfig(tokens="unlimited"), BudgetsConfig()
        )
