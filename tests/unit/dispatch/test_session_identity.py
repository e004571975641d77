"""A session id reused after DELETE names a new session: what a task of the old one does later
(its first token, its end) belongs to the old session, never to the new one."""

from __future__ import annotations

import pytest

from llama_orch.errors import AdmissionRejected, PoolUnavailable
from tests.support.dispatch_harness import harness

SESSION = "0b7f3c52-6a1e-4f0e-9d3c-2a5b8c7d1e4f"
OTHER = "7c2d1e0f-3b4a-4c5d-8e9f-0a1b2c3d4e5f"


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


class TestTurns:
    async def test_a_task_the_server_stopped_gives_its_turn_back(self) -> None:
        """A task stopped by a drain (or a reload, a retired model, shutdown: the same stop) and
        one ended in its queue by the server cost the session no turn: with max_turns 1 the
        client can send the task again. One the client canceled still used its turn."""
        sessions = {"max_turns": 1}
        async with harness(slots=1, top={"sessions": sessions}) as h:
            running = h.admit(session_id=SESSION)
            h.admit(session_id=OTHER)
            await h.settle()
            replica = h.service.task_status(running).replica_id
            assert replica is not None
            h.engine.tokens(running, 2)
            await h.settle()
            error = PoolUnavailable("pool p0 is draining", pool_id="p0")
            assert 1 == h.service.end_queued("p0", error)
            assert 0 == h.service.session_info(OTHER).turns
            assert 1 == h.service.stop_running("p0", {replica}, reason="drain")
            await h.settle()
            assert 0 == h.service.session_info(SESSION).turns
            # Tokens it streamed are still charged: only the turn is given back.
            session = h.dispatcher.sessions.get(SESSION, h.clock.now())
            assert session is not None and 2 == session.tokens_used
            again = h.admit(session_id=SESSION)
            await h.settle()
            h.service.cancel(again)
            await h.settle()
            assert 1 == h.service.session_info(SESSION).turns
            with pytest.raises(AdmissionRejected):
                h.admit(session_id=SESSION)


class TestAffinity:
    async def test_an_evicted_sessions_queued_task_keeps_its_own_affinity(self) -> None:
        """The old session was served on one replica, the new session of the same id on the
        other; the old session's queued task, dispatched with both replicas free, goes back
        to its own session's replica, not to the new session's."""
        async with harness(slots=1, replicas=2) as h:
            first = h.admit(session_id=SESSION)
            blocker = h.admit(session_id=OTHER)
            await h.settle()
            home = h.service.task_status(first).replica_id
            away = h.service.task_status(blocker).replica_id
            assert {home, away} == {"r0", "r1"}
            h.engine.end(first)
            await h.settle()
            holder = h.admit(session_id=OTHER)  # takes home again, so the next task waits
            await h.settle()
            assert home == h.service.task_status(holder).replica_id
            queued = h.admit(session_id=SESSION, priority="batch")
            assert h.service.evict_session(SESSION)
            # The new session runs on the other replica, ahead of the batch task.
            h.engine.end(blocker)
            new = h.admit(session_id=SESSION)
            await h.settle()
            assert away == h.service.task_status(new).replica_id
            assert "queued" == h.service.task_status(queued).state.value
            h.engine.end(new)
            h.engine.end(holder)
            await h.settle()
            assert home == h.service.task_status(queued).replica_id
