"""Every SSE frame a real server emits validates against the published event schemas."""

from __future__ import annotations

from typing import Any

from llama_orch.contracts.events import PAYLOADS
from tests.support.server import config_of, mock_pool, running_server, sse_events, task_body


def check(event: str, payload: dict[str, Any]) -> None:
    """The payload parses with its event's model and carries no undeclared field."""
    model = PAYLOADS[event]
    model.model_validate(payload)
    assert set() == set(payload) - set(model.model_fields), (event, payload)


class TestPublishedSchemas:
    async def test_every_emitted_frame_is_declared(self) -> None:
        """started, token (single and micro-batched), metrics (with budgets), end (done and
        canceled) and error frames all match their published schema."""
        pools = [
            mock_pool(mock={"ttft_ms": 0, "tokens_per_s": 2000}, slots=4, ctx=8192),
            mock_pool("bad", "m-bad", mock={"fail_at_token": 2}),
        ]
        config = config_of(
            *pools,
            budgets={"tokens": 100_000, "cost": 100.0, "cost_per_token": 0.001, "time_ms": 10**7},
            server={"sse": {"metrics_frame_interval_ms": 1}},
        )
        seen: dict[str, int] = {}
        async with running_server(config) as srv:
            streams = []
            plain = task_body(max_tokens=40)
            batched = task_body(max_tokens=40)
            failing = task_body(model="m-bad", max_tokens=10)
            # Submitted once the others were read, with 4 s of tokens: the cancel at its first
            # token always lands before it ends, however slowly the streams above were read.
            canceled = task_body(max_tokens=8000, ctx=8192)
            headers = {"X-Correlation-Id": "frames-test"}
            for body in (plain, batched, failing):
                assert 202 == (await srv.submit(body, headers=headers)).status_code
            streams.append(await srv.stream(plain["task_id"]))
            streams.append(await srv.stream(batched["task_id"], params={"microbatch": "true"}))
            streams.append(await srv.stream(failing["task_id"]))
            assert 202 == (await srv.submit(canceled, headers=headers)).status_code
            frames: list[tuple[str, dict[str, Any]]] = []
            async for event, data in sse_events(srv.client, canceled["task_id"]):
                frames.append((event, data))
                if event == "token":
                    await srv.client.post(f"/v1/tasks/{canceled['task_id']}/cancel")
            streams.append(frames)
        for frames in streams:
            for event, payload in frames:
                check(event, payload)
                seen[event] = seen.get(event, 0) + 1
        assert {"started", "token", "metrics", "end", "error"} == set(seen)
        assert any("n" in p for f in streams for e, p in f if e == "token")
        assert any(p.get("canceled") for f in streams for e, p in f if e == "end")
        assert any("tokens_budget_remaining" in p for f in streams for e, p in f if e == "metrics")
