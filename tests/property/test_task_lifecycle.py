"""Random event sequences against real dispatch (scripted engine, manual clock).

Whatever order admissions, engine tokens, engine ends and failures, cancels, deadlines and
subscriber disconnects come in, every task ends with exactly one terminal frame, nothing
follows it, its token count equals the tokens in its transcript, and once everything has
ended no slot, lease, queue entry or deadline timer is left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import hypothesis
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llama_orch.dispatch.service import TaskService
from llama_orch.errors import OrchError
from tests.support.dispatch_harness import Harness, harness

task_ref = st.integers(min_value=0, max_value=7)
events = st.one_of(
    st.tuples(st.just("admit"), st.sampled_from(["interactive", "batch"])),
    st.tuples(st.just("tokens"), task_ref, st.integers(min_value=1, max_value=4)),
    st.tuples(st.just("end"), task_ref),
    st.tuples(st.just("fail"), task_ref),
    st.tuples(st.just("cancel"), task_ref),
    st.tuples(st.just("deadline"), st.sampled_from([0.3, 1.2])),
    st.tuples(st.just("disconnect"), task_ref),
)


async def apply(h: Harness, ids: list[str], event: tuple[Any, ...]) -> None:
    kind = event[0]
    if kind == "admit":
        if len(h.dispatcher.tasks) < 8:
            with contextlib.suppress(OrchError):  # a refusal (predicted late) is an outcome too
                ids.append(h.admit(priority=event[1], deadline_ms=1000, max_tokens=4))
        return
    if kind == "deadline":
        h.clock.advance(event[1])
        return
    if not ids:
        return
    task_id = ids[event[1] % len(ids)]
    if kind == "tokens":
        h.engine.tokens(task_id, event[2])
    elif kind == "end":
        h.engine.end(task_id)
    elif kind == "fail":
        h.engine.fail(task_id)
    elif kind == "cancel":
        h.service.cancel(task_id)
    elif kind == "disconnect" and not h.service.task_status(task_id).subscribed:
        view = h.service.open_stream(task_id)
        h.service.close_stream(view, "disconnect")


def check_transcript(service: TaskService, task_id: str) -> None:
    frames = service.transcript(task_id)
    kinds = [event for event, _ in frames]
    terminals = [i for i, k in enumerate(kinds) if k in ("end", "error")]
    assert [len(kinds) - 1] == terminals, kinds
    delivered = kinds.count("token")
    status = service.task_status(task_id)
    assert delivered == status.tokens_out
    indices = [orjson.loads(data)["i"] for event, data in frames if event == "token"]
    assert list(range(delivered)) == indices
    if kinds[-1] == "end":
        assert delivered == orjson.loads(frames[-1][1])["tokens_out"]


async def scenario(sequence: list[tuple[Any, ...]]) -> None:
    async with harness(slots=2) as h:
        ids: list[str] = []
        for event in sequence:
            await apply(h, ids, event)
            await h.settle()
        h.service.shutdown()
        await h.settle()
        for task_id in ids:
            check_transcript(h.service, task_id)
            hypothesis.event(f"a task ended {h.service.task_status(task_id).state.value}")
        status = h.service.pool_status("p0")
        assert (0, 0) == (status.queue_depth, status.running)
        assert 0 == h.pools.get_active_leases("p0")
        assert 0 == h.clock.pending
        assert 0 == h.supervisor.failed_jobs


class TestTaskLifecycle:
    @settings(
        max_examples=100,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(st.lists(events, max_size=40))
    def test_invariants_hold_for_any_event_order(self, sequence: list[tuple[Any, ...]]) -> None:
        """One terminal frame per task, none followed, tokens_out equals the tokens sent, and
        no leaked slot, lease, queue entry or timer."""
        asyncio.run(scenario(sequence))
