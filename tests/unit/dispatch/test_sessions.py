from __future__ import annotations

from llama_orch.config import SessionsConfig
from llama_orch.dispatch.sessions import SessionStore


class TestSessionStore:
    def test_unknown_session_is_created(self) -> None:
        """get_or_create makes a session that get then finds."""
        store = SessionStore(SessionsConfig())
        created = store.get_or_create("s1", now=0.0)
        assert created is store.get("s1", now=1.0)

    def test_expired_session_is_pruned_on_access(self) -> None:
        """A session idle past its TTL is gone on the next access (D-SES-01)."""
        store = SessionStore(SessionsConfig(ttl_ms=1000))
        store.get_or_create("s1", now=0.0)
        assert store.get("s1", now=0.999) is not None
        assert store.get("s1", now=2.0) is None
        assert 0 == len(store)

    def test_ttl_remaining(self) -> None:
        """Remaining TTL counts down from the last use."""
        store = SessionStore(SessionsConfig(ttl_ms=10_000))
        session = store.get_or_create("s1", now=5.0)
        assert 7000 == store.ttl_remaining_ms(session, now=8.0)

    def test_evict_and_prune(self) -> None:
        """evict forgets one session; prune drops every expired one."""
        store = SessionStore(SessionsConfig(ttl_ms=1000))
        store.get_or_create("a", now=0.0)
        store.get_or_create("b", now=5.0)
        assert (True, False) == (store.evict("a"), store.evict("a"))
        store.get_or_create("c", now=0.0)
        assert 1 == store.prune(now=5.5)
        assert ["b"] == [s for s in ("a", "b", "c") if store.get(s, now=5.5)]
