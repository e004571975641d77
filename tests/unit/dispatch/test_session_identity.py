"""A session id reused after DELETE names a new session: what a task of the old one does later
(its first token, its end) belongs to the old session, never to the new one."""

from __future__ import annotations

from tests.support.dispatch_harness import harness

SESSION = "0b7f3c52-6a1e-4f0e-9d3c-2a5b8c7d1e4f"


class TestWarmth:
    async def test_an_evicted_sessions_task_does_not_warm_the_new_session(self) -> None:
        """A task of a deleted session streams its first token after the same id started a new
        session: the replica is not warm for the new session, so the new session's task that
        runs there next starts cold."""
        async with harness(slots=1) as h:
            old = h.admit(session_id=SESSION)
            await h.settle()
            assert "running" == h.service.task_status(old).state.value
            assert h.service.evict_session(SESSION)
            new = h.admit(session_id=SESSION)
            h.engine.tokens(old, 1)
            await h.settle()
            h.engine.end(old)
            await h.settle()
            assert "running" == h.service.task_status(new).state.value
            assert not h.service.task_status(new).kv_warm
            h.engine.tokens(new, 1)
            h.engine.end(new)
            await h.settle()
            assert h.service.session_info(SESSION).kv_warmth
