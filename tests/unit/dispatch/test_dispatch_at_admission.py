"""A task admitted while its pool has a free slot starts in admission's own step."""

from __future__ import annotations

from llama_orch.contracts.api import TaskRequest
from tests.support.dispatch_harness import harness
from tests.support.server import task_body


class TestDispatchAtAdmission:
    async def test_a_free_slot_is_taken_before_admit_returns(self) -> None:
        """No event-loop turn between admission and placement; the answer still reports the
        position the task was admitted at."""
        async with harness(slots=1) as h:
            admitted = h.service.admit(TaskRequest.model_validate(task_body()))
            state = h.service.task_status(admitted.task_id).state.value
            assert (0, "running") == (admitted.queue_position, state)
            h.engine.end(admitted.task_id)
            await h.settle()

    async def test_a_full_pool_keeps_the_queue_order(self) -> None:
        """Admission starts nothing when no slot is free; the freed slot goes to the head."""
        async with harness(slots=1) as h:
            running = h.admit()
            first, second = h.admit(), h.admit()
            states = [h.service.task_status(t).state.value for t in (running, first, second)]
            assert ["running", "queued", "queued"] == states
            h.engine.end(running)
            await h.settle()
            states = [h.service.task_status(t).state.value for t in (first, second)]
            assert ["running", "queued"] == states
            h.engine.end(first)
            await h.settle()
            assert "running" == h.service.task_status(second).state.value
            h.engine.end(second)
            await h.settle()
