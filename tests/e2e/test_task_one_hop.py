"""``POST /v1/tasks`` with ``Accept: text/event-stream``: admission and stream in one response."""

from __future__ import annotations

import orjson
from httpx_sse import aconnect_sse

from llama_orch.adapters.mock import mock_tokens
from llama_orch.contracts.engine import GenerateRequest
from llama_orch.dispatch.tasks import TaskState
from tests.e2e.test_engines import wait_until
from tests.support.server import config_of, mock_pool, running_server, task_body

SSE = {"Accept": "text/event-stream"}


class TestOneHop:
    async def test_admit_and_stream_in_one_response(self) -> None:
        """The started frame carries the 202 fields; tokens and end follow; replay still works."""
        body = task_body(max_tokens=6)
        async with running_server(config_of(mock_pool())) as srv:
            async with aconnect_sse(srv.client, "POST", "/v1/tasks", json=body, headers=SSE) as es:
                headers = es.response.headers
                frames = [(e.event, orjson.loads(e.data)) async for e in es.aiter_sse()]
            replay = await srv.stream(body["task_id"])
        started = frames[0][1]
        assert "started" == frames[0][0]
        assert {"queue_position", "predicted_start_ms", "backoff_ms", "task_id"} <= set(started)
        assert body["task_id"] == started["task_id"] == headers["x-task-id"]
        assert {"x-queue-position", "x-predicted-start-ms", "location"} <= set(headers)
        expected = mock_tokens(
            GenerateRequest(task_id="x", prompt="hello", max_tokens=6, model="m0", seed=7)
        )
        assert expected == [d["t"] for e, d in frames if e == "token"]
        assert "end" == frames[-1][0]
        assert [e for e, _ in frames if e != "metrics"] == [e for e, _ in replay if e != "metrics"]

    async def test_refusal_is_the_usual_error(self) -> None:
        """A refused admission answers the task API's error, not a stream."""
        body = task_body(model="nope")
        async with running_server(config_of(mock_pool())) as srv:
            response = await srv.client.post("/v1/tasks", json=body, headers=SSE)
        assert 503 == response.status_code
        assert "POOL_UNAVAILABLE" == response.json()["code"]

    async def test_disconnect_cancels(self) -> None:
        """Leaving the one-hop stream cancels the task."""
        body = task_body(max_tokens=2000)
        async with running_server(config_of(mock_pool(mock={"tokens_per_s": 50.0}))) as srv:
            async with aconnect_sse(srv.client, "POST", "/v1/tasks", json=body, headers=SSE) as es:
                async for event in es.aiter_sse():
                    if event.event == "token":
                        break
            task = srv.task(body["task_id"])
            assert task is not None
            await wait_until(lambda: task.terminal, "cancel")
        assert TaskState.CANCELED == task.state
