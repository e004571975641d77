"""Task lifecycle transitions and what a finished task keeps."""

from __future__ import annotations

import orjson
import pytest

from llama_orch.contracts.engine import GenerateRequest
from llama_orch.core.model import DecisionLog
from llama_orch.dispatch.tasks import (
    FINISHED_RECORD_BYTES,
    IllegalTransition,
    Task,
    TaskRegistry,
    TaskState,
)
from llama_orch.errors import WorkerReset
from llama_orch.vocab import Engine, Priority
from tests.support.dispatch_harness import harness


def new_task(task_id: str = "t1", prompt: str = "hello") -> Task:
    return Task(
        id=task_id,
        session_id="s",
        pool_id="p0",
        engine=Engine.MOCK,
        model="m0",
        priority=Priority.BATCH,
        request=GenerateRequest(task_id=task_id, prompt=prompt, max_tokens=4, model="m0"),
        admitted_at=0.0,
        deadline_at=60.0,
        expected_tokens=4,
    )


def started(task: Task) -> Task:
    task.start(
        1.0, replica_id="r0", engine_version="v1", kv_warm=False, decision=DecisionLog(1, (), ())
    )
    return task


class TestTransitions:
    def test_tokens_are_published_and_counted_together(self) -> None:
        """record_tokens appends to the transcript and counts in one step; the first is timed."""
        task = started(new_task())
        assert (True, False) == (task.record_tokens(["a"], 2.0), task.record_tokens(["b"], 3.0))
        assert (2, 2, 2.0) == (task.tokens_out, task.stream.tokens, task.first_token_at)

    def test_finish_publishes_the_counts(self) -> None:
        """finish closes the stream with an end frame carrying what was sent."""
        task = started(new_task())
        task.engine_started(7, None)
        task.record_tokens(["a", "b"], 2.0)
        task.finish(3.5)
        event, data = task.stream.entries[-1]  # type: ignore[misc]
        body = orjson.loads(data)
        assert ("end", 2, 7, 1500) == (
            event,
            body["tokens_out"],
            body["tokens_in"],
            body["decode_ms"],
        )
        assert (TaskState.DONE, True) == (task.state, task.stream.closed)

    @pytest.mark.parametrize(("at_end", "published"), [(31, 31), (None, 7), (0, 7), ("9", 7)])
    def test_the_engines_final_prompt_count_wins(self, at_end: object, published: int) -> None:
        """Engines that count the prompt only in their final event (llama.cpp, vLLM, TGI)
        still publish it in end; a missing or malformed count keeps the one from start."""
        task = started(new_task())
        task.engine_started(7, None)
        task.engine_read(at_end)
        task.finish(2.0)
        _, data = task.stream.entries[-1]  # type: ignore[misc]
        assert published == orjson.loads(data)["tokens_in"]

    @pytest.mark.parametrize(
        ("setup", "step"),
        [
            ("queued", lambda t: t.record_tokens(["x"], 1.0)),
            ("queued", lambda t: t.finish(1.0)),
            ("running", lambda t: started(t)),
            ("ended", lambda t: t.cancel(1.0)),
            ("ended", lambda t: t.fail(1.0, WorkerReset("x"))),
            ("ended", lambda t: t.record_tokens(["x"], 1.0)),
            ("ended", lambda t: t.engine_started(1, None)),
            ("ended", lambda t: t.engine_read(1)),
        ],
    )
    def test_illegal_transitions_raise(self, setup: str, step: object) -> None:
        """A transition from a state it does not leave raises and changes nothing."""
        task = new_task()
        if setup != "queued":
            started(task)
        if setup == "ended":
            task.cancel(2.0)
        before = (task.state, len(task.stream), task.tokens_out)
        with pytest.raises(IllegalTransition):
            step(task)  # type: ignore[operator]
        assert before == (task.state, len(task.stream), task.tokens_out)

    def test_a_queued_task_can_fail_or_cancel(self) -> None:
        """Cancel and fail both end a task that never started."""
        canceled, failed = new_task("a"), new_task("b")
        canceled.cancel(1.0)
        failed.fail(1.0, WorkerReset("gone"))
        assert (TaskState.CANCELED, TaskState.FAILED) == (canceled.state, failed.state)
        assert ["end", "error"] == [canceled.stream.entries[-1][0], failed.stream.entries[-1][0]]


class TestFinishedTaskMemory:
    def test_an_ended_task_lets_go_of_its_prompt(self) -> None:
        """The request (with the prompt) and the job are dropped once the task ends."""
        task = started(new_task(prompt="x" * 100_000))
        task.finish(2.0)
        assert (None, None, None) == (task.request, task.job, task.runner)
        assert task.retained_bytes < 2 * FINISHED_RECORD_BYTES

    def test_the_bound_counts_records_not_only_transcripts(self) -> None:
        """Tasks with empty transcripts still count against max_bytes, oldest evicted first."""
        registry = TaskRegistry(
            retention_s=3600, max_bytes=5 * FINISHED_RECORD_BYTES, max_tasks=100
        )
        for i in range(10):
            task = new_task(f"t{i}")
            registry.add(task)
            task.cancel(float(i))
            registry.finished(task, float(i))
        stats = registry.stats()
        assert stats.finished_bytes <= stats.max_bytes
        assert 0 < stats.finished < 10
        assert "t9" in registry and "t0" not in registry

    async def test_retained_bytes_are_reported(self) -> None:
        """The registry's figure is what the tasks_retained_bytes gauge reads."""
        async with harness() as h:
            task_id = h.admit()
            h.service.cancel(task_id)
            gauge = h.metrics.registry.get_sample_value("tasks_retained_bytes")
            assert h.service.registry_stats().finished_bytes == gauge > 0
