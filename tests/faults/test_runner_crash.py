"""A runner that fails with an unexpected exception (a defect, not an engine fault) still ends
its task: the client gets a typed error frame instead of waiting forever, and the slot frees."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from llama_orch.dispatch.runner import Runner
from tests.support.server import config_of, mock_pool, running_server, sse_events, task_body


async def test_a_crashed_runner_ends_its_task_with_internal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[str] = []
    follow = Runner._follow

    async def crash_once(self: Runner, stream: Any, task: Any, *args: Any) -> None:
        calls.append(task.id)
        if len(calls) == 1:
            raise RuntimeError("a defect while following the engine's stream")
        await follow(self, stream, task, *args)

    monkeypatch.setattr(Runner, "_follow", crash_once)
    config = config_of(mock_pool(slots=1, mock={"ttft_ms": 0, "tokens_per_s": 1000}))
    async with running_server(config) as srv:
        first, second = task_body(max_tokens=4), task_body(max_tokens=4)
        for body in (first, second):
            assert 202 == (await srv.submit(body)).status_code

        async def frames(task_id: str) -> list[tuple[str, dict[str, Any]]]:
            return [frame async for frame in sse_events(srv.client, task_id)]

        crashed = await asyncio.wait_for(frames(first["task_id"]), 30)
        after = await asyncio.wait_for(frames(second["task_id"]), 30)
    event, error = crashed[-1]
    assert ("error", "INTERNAL") == (event, error["code"]), crashed
    assert "logged with this task's id" in error["message"]
    # The one slot was given back: the next task ran to its end.
    assert "end" == after[-1][0], after
