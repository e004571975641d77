"""Queue deadlines and retention on a manual clock: no sleeps, exact times."""

from __future__ import annotations

import pytest

from llama_orch.errors import NotFound
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
            assert 0 == h.clock.pending
            h.clock.advance(10)
            await h.settle()
            assert "running" == h.service.task_status(task_id).state.value


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
