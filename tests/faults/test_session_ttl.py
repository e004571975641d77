"""A session's TTL is idle time: a task that outlives it keeps its session (turns, budgets)
against ``llorch serve``; once nothing of the session is queued or running, the TTL runs from
the end of its last task."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.faults._raw import serve_config
from tests.support.serve_process import ServeProcess, serve_process
from tests.support.server import mock_pool, task_body

TTL_MS = 300
#: A session idle this long has certainly expired (a slow machine only waits longer).
PAST_TTL_S = 3 * TTL_MS / 1000


@pytest.fixture
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    # One slot and an engine that hangs after its first token: tasks run until canceled.
    pool = mock_pool(slots=1, mock={"hang_after_token": 1})
    config: dict[str, Any] = serve_config(pool, sse={"cancel_on_disconnect": False})
    config["sessions"] = {"ttl_ms": TTL_MS, "max_turns": 2}
    config["budgets"] = {"tokens": 100}
    with serve_process(config, tmp_path_factory.mktemp("session-ttl")) as served:
        yield served


def _wait_running(client: httpx.Client, task_id: str) -> None:
    """Reads the task's stream until its first token: it is running then (leaving the stream
    does not cancel it: cancel_on_disconnect is off)."""
    with client.stream("GET", f"/v1/tasks/{task_id}/stream") as response:
        for line in response.iter_lines():
            if line == "event: token":
                return
    raise AssertionError(f"task {task_id} ended without a token")


def test_a_running_task_keeps_its_session_past_the_ttl(server: ServeProcess) -> None:
    """A task running longer than the TTL does not expire its session: the next tasks count
    the same turns and budget, and the session expires only once it is idle."""
    session = str(uuid.uuid4())
    with httpx.Client(base_url=server.url, timeout=30) as client:
        first = task_body(session_id=session, max_tokens=60)
        assert 202 == client.post("/v1/tasks", json=first).status_code
        _wait_running(client, first["task_id"])
        time.sleep(PAST_TTL_S)
        info = client.get(f"/v1/sessions/{session}")
        assert 200 == info.status_code, info.text
        assert (1, TTL_MS) == (info.json()["turns"], info.json()["ttl_ms_remaining"])
        # The budget still holds the running task's 60 tokens: 50 more do not fit.
        over = client.post("/v1/tasks", json=task_body(session_id=session, max_tokens=50))
        assert (429, "session-budget") == (over.status_code, over.json()["policy_label"])
        second = task_body(session_id=session, max_tokens=10)
        admitted = client.post("/v1/tasks", json=second)
        assert 202 == admitted.status_code, admitted.text
        assert "30" == admitted.headers["x-budget-tokens-remaining"]
        # Two turns used: a third is refused while the first task still runs.
        third = client.post("/v1/tasks", json=task_body(session_id=session, max_tokens=1))
        assert (429, "session-budget") == (third.status_code, third.json()["policy_label"])
        for body in (first, second):
            assert 204 == client.post(f"/v1/tasks/{body['task_id']}/cancel").status_code
        time.sleep(PAST_TTL_S)
        # Idle past its TTL, the session is gone and the id starts a fresh one.
        assert 404 == client.get(f"/v1/sessions/{session}").status_code
        fresh = client.post("/v1/tasks", json=task_body(session_id=session, max_tokens=10))
        assert 202 == fresh.status_code, fresh.text
        assert "90" == fresh.headers["x-budget-tokens-remaining"]
        client.post(f"/v1/tasks/{fresh.json()['task_id']}/cancel")
