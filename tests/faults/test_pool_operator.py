"""An operator reloading pools while tasks run and wait: what the waiting tasks, health and
metrics see across the switch (launched fake llama.cpp engines, simulated GPU inventory)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_pool_drain_reload import _state
from tests.support.engines import tiny_gguf
from tests.support.launched import LaunchedSetup, launched_setup, llama_task, wait_health
from tests.support.server import running_server


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[LaunchedSetup]:
    with launched_setup(tmp_path) as s:
        yield s


def _serves(model: Path) -> Any:
    return lambda health: health["model_id"] == str(model) and health["ready"]


class TestReloadWithQueuedTasks:
    async def test_tasks_queued_for_the_old_model_end_at_the_switch(
        self, setup: LaunchedSetup
    ) -> None:
        """A task still queued when the pool switches to the new model can never run there: it
        ends with a retriable POOL_UNAVAILABLE, and does not hold up the new model's tasks
        queued behind it."""
        new_model = tiny_gguf(setup.tmp / "models2", "tiny-next")
        pool = setup.pool(slots=1, env={"FAKE_ENGINE_TOKENS_PER_S": "20"})
        async with running_server(setup.config(pool)) as server:
            await wait_health(server, "lp", lambda h: h["ready"])
            running = llama_task(setup.model, max_tokens=400)
            queued = llama_task(setup.model, max_tokens=4)
            assert 202 == (await server.submit(running)).status_code
            await _state(server, running["task_id"], "running")
            assert 202 == (await server.submit(queued)).status_code
            await _state(server, queued["task_id"], "queued")
            response = await server.client.post(
                "/v1/pools/lp/reload", json={"new_model_ref": str(new_model)}
            )
            assert 202 == response.status_code
            await wait_health(server, "lp", _serves(new_model))
            frames = await asyncio.wait_for(server.stream(queued["task_id"]), 10)
            assert ("error", "POOL_UNAVAILABLE", True) == (
                frames[-1][0],
                frames[-1][1]["code"],
                frames[-1][1]["retriable"],
            )
            assert str(new_model) in frames[-1][1]["message"]
            after = llama_task(new_model, max_tokens=3)
            assert 202 == (await server.submit(after)).status_code
            frames = await asyncio.wait_for(server.stream(after["task_id"]), 10)
            assert "end" == frames[-1][0]
