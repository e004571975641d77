"""Deadlines, the watchdog, session TTL and retention on a manual clock: no sleeps, exact
times."""

from __future__ import annotations

import pytest

from llama_orch.errors import AdmissionRejected, NotFound
from tests.support.dispatch_harness import harness


class TestQueueDeadline:
    async def test_a_queued_task_fails_when_its_deadline_passes(self) -> None:
        """The deadline timer fires at deadline_ms, not before, and ends the task with
        DEADLINE_UNMET; the timer is gone afterwards."""
        async with harness(slots=1) as h:
            running = h.admit()
            await h.settle()
            waiting = h.admit(deadline_ms=2000)
            h.clock.advance(1.999)
            await h.settle()
            assert "queued" == h.service.task_status(waiting).state.value
            h.clock.advance(0.002)
            await h.settle()
            frames = h.service.transcript(waiting)
            assert "failed" == h.service.task_status(waiting).state.value
            assert b"DEADLINE_UNMET" in frames[-1][1]
            assert "running" == h.service.task_status(running).state.value
            h.engine.end(running)
            await h.settle()
            assert 0 == h.clock.pending

    async def test_a_started_task_disarms_its_deadline(self) -> None:
        """Once dispatched, a task's start deadline no longer applies."""
        async with harness(slots=1) as h:
            task_id = h.admit(deadline_ms=500)
            await h.settle()
            assert 1 == h.clock.pending  # the watchdog's, not the deadline's
            h.clock.advance(10)
            await h.settle()
            assert "running" == h.service.task_status(task_id).state.value

    async def test_a_task_evicted_from_a_full_queue_disarms_its_deadline(self) -> None:
        """Under drop-lru the evicted task has ended: its deadline timer goes with it rather
        than staying armed (for as long as the client's deadline_ms) after every eviction."""
        queue = {"capacity": 1, "full_policy": "drop-lru"}
        async with harness(slots=1, queue=queue) as h:
            h.admit()
            await h.settle()
            armed = h.clock.pending  # the running task's watchdog
            victim = h.admit(priority="batch", deadline_ms=3_600_000)
            assert armed + 1 == h.clock.pending
            h.admit(priority="interactive", deadline_ms=3_600_000)
            await h.settle()
            assert "failed" == h.service.task_status(victim).state.value
            assert armed + 1 == h.clock.pending  # the newcomer's deadline only


class TestRetention:
    async def test_a_finished_task_expires_after_the_retention(self) -> None:
        """A finished task is readable until transcript_retention_s has passed, then 404s."""
        async with harness() as h:
            retention = h.config.server.transcript_retention_s
            task_id = h.admit()
            h.service.cancel(task_id)
            h.clock.advance(retention - 0.001)
            assert [task_id] == [s.task_id for s in h.service.list_tasks()]
            h.clock.advance(0.002)
            with pytest.raises(NotFound):
                h.service.open_stream(task_id)


class TestWatchdog:
    async def test_an_idle_engine_is_cut_after_idle_ms(self) -> None:
        """No progress for idle_ms fails the task with DECODE_TIMEOUT (idle) and frees the slot."""
        async with harness(slots=1, timeouts={"idle_ms": 1000, "wall_ms": 60_000}) as h:
            task_id = h.admit()
            await h.settle()
            h.engine.tokens(task_id, 2)
            await h.settle()
            h.clock.advance(0.999)
            await h.settle()
            assert "running" == h.service.task_status(task_id).state.value
            h.clock.advance(0.002)
            await h.settle()
            frames = h.service.transcript(task_id)
            assert b"idle timeout of 1000 ms" in frames[-1][1]
            assert (0, 0) == (h.pools.get_active_leases("p0"), h.clock.pending)
            assert task_id in h.engine.closed_early

    async def test_progress_re_arms_the_idle_clock(self) -> None:
        """Tokens every half idle period keep a stream alive far past idle_ms."""
        async with harness(slots=1, timeouts={"idle_ms": 1000, "wall_ms": 60_000}) as h:
            task_id = h.admit()
            await h.settle()
            for _ in range(10):
                h.engine.tokens(task_id, 1)
                await h.settle()
                h.clock.advance(0.5)
                await h.settle()
            h.engine.end(task_id)
            await h.settle()
            assert ("done", 10) == (
                h.service.task_status(task_id).state.value,
                h.service.task_status(task_id).tokens_out,
            )

    async def test_the_wall_limit_holds_even_with_progress(self) -> None:
        """A stream that keeps making progress still ends at wall_ms."""
        async with harness(slots=1, timeouts={"idle_ms": 1000, "wall_ms": 3000}) as h:
            task_id = h.admit()
            await h.settle()
            for _ in range(7):
                h.engine.tokens(task_id, 1)
                await h.settle()
                h.clock.advance(0.5)
                await h.settle()
            frames = h.service.transcript(task_id)
            assert b"wall timeout of 3000 ms" in frames[-1][1]
            assert 6 == h.service.task_status(task_id).tokens_out


class TestSessionTtl:
    async def test_turns_then_ttl(self) -> None:
        """Past max_turns a session is refused with its remaining TTL as the backoff; once the
        TTL has run out the same id starts a fresh session."""
        sessions = {"ttl_ms": 10_000, "max_turns": 1}
        async with harness(top={"sessions": sessions}) as h:
            session = "5d4f5c0e-8d5e-4c4f-9f0e-6c1f1f1f1f1f"
            first = h.admit(session_id=session)
            h.service.cancel(first)
            h.clock.advance(4)
            with pytest.raises(AdmissionRejected) as info:
                h.admit(session_id=session)
            assert (6000, "session-budget") == (
                info.value.retry_after_ms,
                info.value.policy_label,
            )
            h.clock.advance(10)
            with pytest.raises(NotFound):
                h.service.session_info(session)
            h.admit(session_id=session)
            assert 1 == h.service.session_info(session).turns
