"""The data plane end to end: a real server on an ephemeral loopback port, spoken to over HTTP."""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from typing import Any

import pytest

from tests.support.server import (
    RunningServer,
    config_of,
    mock_pool,
    running_server,
    sse_events,
    task_body,
)

HANG = {"hang_after_token": 0}


async def wait_terminal(srv: RunningServer, task_id: str) -> None:
    for _ in range(500):
        task = srv.task(task_id)
        if task is not None and task.terminal:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} did not finish")


async def wait_running(srv: RunningServer, task_id: str) -> None:
    for _ in range(500):
        task = srv.task(task_id)
        if task is not None and task.state.value == "running":
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} never started")


class TestAdmission:
    async def test_202_fields_and_stream(self) -> None:
        """202 carries task_id, position, prediction and backoff; the stream ends in order."""
        async with running_server(config_of()) as srv:
            body = task_body(max_tokens=6)
            response = await srv.submit(body)
            assert 202 == response.status_code
            admitted = response.json()
            assert {"task_id", "queue_position", "predicted_start_ms", "backoff_ms"} <= set(
                admitted
            )
            assert (body["task_id"], 0, 0) == (
                admitted["task_id"],
                admitted["queue_position"],
                admitted["backoff_ms"],
            )
            frames = await srv.stream(body["task_id"])
        kinds = [e for e, _ in frames]
        assert "started" == kinds[0] and "end" == kinds[-1]
        assert {"queue_position", "predicted_start_ms"} <= set(frames[0][1])
        assert "metrics" in kinds
        metrics = next(d for e, d in frames if e == "metrics")
        assert {"queue_depth", "on_time_probability", "kv_warmth"} <= set(metrics)
        assert kinds.index("metrics") > kinds.index("token")
        end = frames[-1][1]
        assert (6, end["decode_time_ms"]) == (end["tokens_out"], end["decode_ms"])

    async def test_stream_headers(self) -> None:
        """The stream is text/event-stream, uncached, unbuffered, with a correlation ID."""
        async with running_server(config_of()) as srv:
            body = task_body(max_tokens=2)
            await srv.submit(body)
            async with srv.client.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as r:
                await r.aread()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert ("no-cache", "no") == (r.headers["cache-control"], r.headers["x-accel-buffering"])
        assert r.headers["x-correlation-id"]

    async def test_same_seed_same_tokens(self) -> None:
        """Two tasks with the same determinism key stream identical tokens."""
        async with running_server(config_of()) as srv:
            texts = []
            for _ in range(2):
                body = task_body(seed=99, prompt="same")
                await srv.submit(body)
                frames = await srv.stream(body["task_id"])
                texts.append("".join(d["t"] for e, d in frames if e == "token"))
        assert texts[0] == texts[1]

    async def test_duplicate_task_id_is_a_conflict(self) -> None:
        """Submitting a task_id twice is 409 CONFLICT, and the first task is untouched."""
        async with running_server(config_of()) as srv:
            body = task_body()
            assert 202 == (await srv.submit(body)).status_code
            again = await srv.submit(body)
            assert (409, "CONFLICT") == (again.status_code, again.json()["code"])
            frames = await srv.stream(body["task_id"])
        assert "end" == frames[-1][0]

    async def test_unknown_model_is_pool_unavailable(self) -> None:
        """A model no pool serves is 503 POOL_UNAVAILABLE naming what is served."""
        async with running_server(config_of()) as srv:
            response = await srv.submit(task_body(model="nope"))
        body = response.json()
        assert (503, "POOL_UNAVAILABLE") == (response.status_code, body["code"])
        assert "no pool serves engine mock with model 'nope'" in body["message"]
        assert "mock:m0" in body["message"]
        # Not retriable: retrying cannot help until the config changes.
        assert (False, None) == (body["retriable"], body.get("retry_after_ms"))
        assert "retry-after" not in response.headers

    async def test_unready_pool_is_pool_unready(self) -> None:
        """A matching pool that is not Ready is 503 POOL_UNREADY with retry advice."""
        pool = mock_pool(mock={"ready": False})
        async with running_server(config_of(pool)) as srv:
            response = await srv.submit(task_body())
        body = response.json()
        assert (503, "POOL_UNREADY", True) == (
            response.status_code,
            body["code"],
            body["retriable"],
        )
        assert body["retry_after_ms"] > 0 and "Retry-After" in response.headers

    async def test_ctx_over_model_limit(self) -> None:
        """ctx above the model limit is refused before enqueue with INVALID_PARAMS."""
        async with running_server(config_of()) as srv:
            response = await srv.submit(task_body(ctx=100_000))
            tight = await srv.submit(task_body(ctx=64, max_tokens=60, prompt="x" * 300))
        assert (400, "INVALID_PARAMS") == (response.status_code, response.json()["code"])
        assert "4096" in response.json()["message"]
        assert (400, "INVALID_PARAMS") == (tight.status_code, tight.json()["code"])

    async def test_nonpositive_deadline(self) -> None:
        """deadline_ms <= 0 is DEADLINE_UNMET at admission."""
        async with running_server(config_of()) as srv:
            response = await srv.submit(task_body(deadline_ms=0))
        assert (400, "DEADLINE_UNMET") == (response.status_code, response.json()["code"])


class TestInvalidInput:
    async def test_fields_not_built_yet_are_refused(self) -> None:
        """A wire field nothing acts on yet is a 400 saying so, never silently ignored."""
        async with running_server(config_of()) as srv:
            response = await srv.submit(task_body(kv_hint="reuse"))
        body = response.json()
        assert (400, "INVALID_PARAMS") == (response.status_code, body["code"])
        assert "kv_hint is not available yet" in body["message"]

    async def test_another_workloads_fields_are_refused(self) -> None:
        """``inputs`` on a completion is a 400 naming the field, never silently ignored."""
        async with running_server(config_of()) as srv:
            response = await srv.submit(task_body(inputs=["a"]))
        body = response.json()
        assert (400, "INVALID_PARAMS") == (response.status_code, body["code"])
        assert "inputs is not used by workload completion" in body["message"]

    async def test_sampler_profile_version_must_match_the_pool(self) -> None:
        """A requested sampler profile is checked against the pool's: a mismatch is 400, the
        pool's own version is admitted."""
        pool = mock_pool(sampler_profile_version="sp-1")
        async with running_server(config_of(pool)) as srv:
            wrong = await srv.submit(task_body(sampler_profile_version="sp-2"))
            right = await srv.submit(task_body(sampler_profile_version="sp-1"))
        assert (400, 202) == (wrong.status_code, right.status_code)
        assert "does not match pool p0, which declares 'sp-1'" in wrong.json()["message"]

    @pytest.mark.parametrize(
        ("change", "fragment"),
        [
            ({"max_tokens": "16"}, "max_tokens"),
            ({"task_id": "not-a-uuid"}, "task_id"),
            ({"priority": "urgent"}, "priority"),
            ({"engine": "cuda"}, "engine"),
            ({"ctx": -1}, "ctx"),
            ({"bogus": 1}, "bogus: unknown field"),
            ({"prompt": None, "workload": "embedding"}, "workload"),
        ],
    )
    async def test_bad_fields_are_400(self, change: dict[str, Any], fragment: str) -> None:
        """Wrong types, bad enums and unknown fields get a 400 envelope naming the field."""
        async with running_server(config_of()) as srv:
            body = task_body()
            body.update(change)
            response = await srv.submit(body)
        envelope = response.json()
        assert (400, "INVALID_PARAMS") == (response.status_code, envelope["code"])
        assert fragment in envelope["message"]
        assert "Traceback" not in response.text

    async def test_missing_fields_and_garbage(self) -> None:
        """Missing fields, non-JSON and empty bodies are 400, never 500."""
        async with running_server(config_of()) as srv:
            body = task_body()
            del body["engine"]
            missing = await srv.submit(body)
            json_type = {"Content-Type": "application/json"}
            garbage = await srv.client.post("/v1/tasks", content=b"{not json", headers=json_type)
            empty = await srv.client.post("/v1/tasks", content=b"", headers=json_type)
        assert [400, 400, 400] == [r.status_code for r in (missing, garbage, empty)]
        assert "engine: Field required" in missing.json()["message"]

    async def test_non_finite_numbers_are_400(self) -> None:
        """1e999 and Infinity are not numbers an engine can take: refused, not forwarded."""
        json_type = {"Content-Type": "application/json"}
        async with running_server(config_of()) as srv:
            responses = []
            for value in (b"1e999", b"Infinity"):
                head = json.dumps(task_body()).encode()[:-1]
                body = head + b', "sampling": {"repeat_penalty": ' + value + b"}}"
                responses.append(
                    await srv.client.post("/v1/tasks", content=body, headers=json_type)
                )
        assert [400, 400] == [r.status_code for r in responses]
        assert all("sampling.repeat_penalty" in r.json()["message"] for r in responses)

    async def test_huge_prompt(self) -> None:
        """A prompt over the server limit is refused with the limit in the message."""
        config = config_of(server={"max_prompt_bytes": 1000})
        async with running_server(config) as srv:
            response = await srv.submit(task_body(prompt="x" * 1001, ctx=4096))
            huge = await srv.submit(task_body(prompt="x" * 10_000_000))
        assert (400, "INVALID_PARAMS") == (response.status_code, response.json()["code"])
        assert "at most 1000 bytes" in response.json()["message"]
        # A body past what any prompt within the limit needs is refused before it is read whole.
        assert (413, "INVALID_PARAMS") == (huge.status_code, huge.json()["code"])
        assert "request body exceeds" in huge.json()["message"]

    async def test_bad_uuid_in_path(self) -> None:
        """A malformed task or session id in a path is 400; an unknown one is 404."""
        async with running_server(config_of()) as srv:
            bad = await srv.client.get("/v1/tasks/xyz/stream")
            unknown = await srv.client.post(f"/v1/tasks/{uuid.uuid4()}/cancel")
            bad_session = await srv.client.get("/v1/sessions/123")
        assert (400, "INVALID_PARAMS") == (bad.status_code, bad.json()["code"])
        assert (404, "NOT_FOUND") == (unknown.status_code, unknown.json()["code"])
        assert 400 == bad_session.status_code

    async def test_unknown_route_and_method(self) -> None:
        """Unknown paths get a typed 404; /v1/replicasets is not served."""
        async with running_server(config_of()) as srv:
            missing = await srv.client.get("/v1/replicasets")
            method = await srv.client.get("/v1/tasks")
        assert (404, "NOT_FOUND") == (missing.status_code, missing.json()["code"])
        assert 405 == method.status_code and "code" in method.json()


class TestBackpressure:
    async def test_429_at_capacity(self) -> None:
        """A full reject-policy queue answers 429 with Retry-After, X-Backoff-Ms and the body."""
        pool = mock_pool(queue={"capacity": 2, "full_policy": "reject"}, mock=HANG)
        async with running_server(config_of(pool)) as srv:
            first = task_body()
            await srv.submit(first)
            await wait_running(srv, first["task_id"])
            assert [202, 202] == [(await srv.submit(task_body())).status_code for _ in range(2)]
            response = await srv.submit(task_body())
        body = response.json()
        assert 429 == response.status_code
        assert {"code", "message", "policy_label", "retriable", "retry_after_ms"} <= set(body)
        assert ("ADMISSION_REJECT", "reject", True) == (
            body["code"],
            body["policy_label"],
            body["retriable"],
        )
        assert str(body["retry_after_ms"]) == response.headers["x-backoff-ms"]
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-correlation-id"]

    async def test_drop_lru_evicts_oldest_batch(self) -> None:
        """Under drop-lru an interactive newcomer evicts the oldest batch task, whose stream
        ends with QUEUE_FULL_DROP_LRU."""
        pool = mock_pool(queue={"capacity": 2, "full_policy": "drop-lru"}, mock=HANG)
        async with running_server(config_of(pool)) as srv:
            running = task_body()
            await srv.submit(running)
            await wait_running(srv, running["task_id"])
            oldest, newer = task_body(priority="batch"), task_body(priority="batch")
            for body in (oldest, newer):
                assert 202 == (await srv.submit(body)).status_code
            assert 202 == (await srv.submit(task_body(priority="interactive"))).status_code
            frames = await srv.stream(oldest["task_id"])
            assert ("error", "QUEUE_FULL_DROP_LRU") == (frames[-1][0], frames[-1][1]["code"])
            assert [] == [e for e, _ in frames if e == "token"]
            newer_task = srv.task(newer["task_id"])
            assert newer_task is not None and not newer_task.terminal

    async def test_drop_lru_batch_never_evicts_interactive(self) -> None:
        """A batch newcomer facing a queue of interactive tasks gets 429 QUEUE_FULL_DROP_LRU."""
        pool = mock_pool(queue={"capacity": 1, "full_policy": "drop-lru"}, mock=HANG)
        async with running_server(config_of(pool)) as srv:
            running = task_body()
            await srv.submit(running)
            await wait_running(srv, running["task_id"])
            await srv.submit(task_body(priority="interactive"))
            response = await srv.submit(task_body(priority="batch"))
        body = response.json()
        assert (429, "QUEUE_FULL_DROP_LRU", "drop-lru") == (
            response.status_code,
            body["code"],
            body["policy_label"],
        )

    async def test_interactive_dispatched_before_batch(self) -> None:
        """With one slot, a queued interactive task starts before an older batch task."""
        # Every task hangs after its first token, so the slot frees only when the test says.
        async with running_server(config_of(mock_pool(mock=HANG))) as srv:
            blocker, batch, interactive = (
                task_body(max_tokens=2),
                task_body(priority="batch", max_tokens=2),
                task_body(priority="interactive", max_tokens=2),
            )
            await srv.submit(blocker)
            await wait_running(srv, blocker["task_id"])
            admitted = [(await srv.submit(b)).json() for b in (batch, interactive)]
            await srv.client.post(f"/v1/tasks/{blocker['task_id']}/cancel")
            await wait_running(srv, interactive["task_id"])
            batch_state = srv.task(batch["task_id"]).state.value  # type: ignore[union-attr]
            for body in (batch, interactive):
                await srv.client.post(f"/v1/tasks/{body['task_id']}/cancel")
        assert [0, 0] == [a["queue_position"] for a in admitted]
        assert "queued" == batch_state


class TestCancel:
    async def test_cancel_while_queued(self) -> None:
        """A queued task leaves the queue; its stream ends canceled with zero tokens."""
        pool = mock_pool(mock=HANG)
        async with running_server(config_of(pool)) as srv:
            running, queued = task_body(), task_body()
            await srv.submit(running)
            await wait_running(srv, running["task_id"])
            await srv.submit(queued)
            response = await srv.client.post(f"/v1/tasks/{queued['task_id']}/cancel")
            again = await srv.client.post(f"/v1/tasks/{queued['task_id']}/cancel")
            frames = await srv.stream(queued["task_id"])
            depth = srv.deps.service.pool_status("p0").queue_depth
        assert (204, 204) == (response.status_code, again.status_code)
        assert response.headers["x-correlation-id"]
        assert ["started", "end"] == [e for e, _ in frames]
        assert {"canceled": True, "tokens_out": 0} == {
            k: frames[-1][1][k] for k in ("canceled", "tokens_out")
        }
        assert 0 == depth

    async def test_cancel_while_streaming_never_leaks_tokens(self) -> None:
        """Across many cancels racing a fast stream, no token follows the acknowledgement and
        the end frame counts exactly the tokens sent."""
        pool = mock_pool(slots=4, ctx=8192, mock={"ttft_ms": 0, "tokens_per_s": 2000})
        rng = random.Random(1234)

        async def one(srv: RunningServer) -> tuple[int, dict[str, Any]]:
            # Long enough (~4 s of tokens) that a client stalled on a loaded machine still
            # cancels before the engine finishes; every task is canceled within its first 40
            # tokens, so the length costs nothing when the machine keeps up.
            body = task_body(max_tokens=8000, ctx=8192)
            submitted = await srv.submit(body)
            assert 202 == submitted.status_code, submitted.text
            cut = rng.randint(1, 40)
            tokens = 0
            async for event, data in sse_events(srv.client, body["task_id"]):
                if event == "token":
                    tokens += 1
                    if tokens == cut:
                        response = await srv.client.post(f"/v1/tasks/{body['task_id']}/cancel")
                        assert 204 == response.status_code
                elif event in ("end", "error"):
                    return tokens, {"event": event, **data}
            raise AssertionError("stream ended without a terminal frame")

        async with running_server(config_of(pool)) as srv:
            for _ in range(8):
                results = await asyncio.gather(*(one(srv) for _ in range(4)))
                for tokens, end in results:
                    assert ("end", True) == (end["event"], end.get("canceled"))
                    assert tokens == end["tokens_out"]
            engine = srv.deps.pools.pools["p0"]
            assert 0 == engine.active_leases

    async def test_cancel_after_end_changes_nothing(self) -> None:
        """Canceling a finished task is 204 and its transcript still ends normally."""
        async with running_server(config_of()) as srv:
            body = task_body(max_tokens=3)
            await srv.submit(body)
            await wait_terminal(srv, body["task_id"])
            response = await srv.client.post(f"/v1/tasks/{body['task_id']}/cancel")
            frames = await srv.stream(body["task_id"])
        assert 204 == response.status_code
        assert "canceled" not in frames[-1][1] and 3 == frames[-1][1]["tokens_out"]

    async def test_disconnect_cancels_the_task(self) -> None:
        """A client that goes away cancels its task and frees the slot."""
        pool = mock_pool(mock={"ttft_ms": 0, "tokens_per_s": 50})
        async with running_server(config_of(pool)) as srv:
            body = task_body(max_tokens=500)
            await srv.submit(body)
            async for event, _ in sse_events(srv.client, body["task_id"]):
                if event == "token":
                    break
            await wait_terminal(srv, body["task_id"])
            task = srv.task(body["task_id"])
            assert task is not None and "canceled" == task.state.value
            for _ in range(100):
                if srv.deps.pools.get_active_leases("p0") == 0:
                    break
                await asyncio.sleep(0.01)
            assert 0 == srv.deps.pools.get_active_leases("p0")


class TestStreams:
    async def test_client_connecting_late_gets_transcript(self) -> None:
        """A subscriber arriving after the end reads every frame from started to end."""
        async with running_server(config_of()) as srv:
            body = task_body(max_tokens=5)
            await srv.submit(body)
            await wait_terminal(srv, body["task_id"])
            frames = await srv.stream(body["task_id"])
        assert "started" == frames[0][0] and 0 == frames[0][1]["queue_position"]
        assert 5 == len([e for e, _ in frames if e == "token"]) and "end" == frames[-1][0]

    async def test_client_connecting_while_queued(self) -> None:
        """A subscriber of a queued task sees its position, then its tokens once it runs."""
        pool = mock_pool(mock={"ttft_ms": 50, "tokens_per_s": 1000})
        async with running_server(config_of(pool)) as srv:
            # The first task (4 s of tokens) holds the slot until the second's subscriber has
            # seen it queued, whatever the pace of a loaded machine; then it is canceled.
            first, second = task_body(max_tokens=4000, ctx=4096), task_body(max_tokens=3)
            assert 202 == (await srv.submit(first)).status_code
            await wait_running(srv, first["task_id"])
            assert 202 == (await srv.submit(second)).status_code
            frames: list[tuple[str, dict[str, Any]]] = []
            async for event, data in sse_events(srv.client, second["task_id"]):
                frames.append((event, data))
                if event == "started":
                    await srv.client.post(f"/v1/tasks/{first['task_id']}/cancel")
        assert 0 == frames[0][1]["queue_position"]
        assert frames[0][1]["predicted_start_ms"] > 0
        assert 3 == frames[-1][1]["tokens_out"]

    async def test_second_live_subscriber_is_a_conflict(self) -> None:
        """Only one live subscriber per task; a second gets 409."""
        pool = mock_pool(mock=HANG)
        async with running_server(config_of(pool)) as srv:
            body = task_body()
            await srv.submit(body)
            events = sse_events(srv.client, body["task_id"])
            assert "started" == (await anext(events))[0]
            second = await srv.client.get(f"/v1/tasks/{body['task_id']}/stream")
            await srv.client.post(f"/v1/tasks/{body['task_id']}/cancel")
            rest = [e async for e, _ in events]
        assert (409, "CONFLICT") == (second.status_code, second.json()["code"])
        assert ["end"] == [e for e in rest if e != "metrics"]

    @pytest.mark.parametrize(
        ("fault", "code"),
        [
            ({"fail_at_token": 2}, "INTERNAL"),
            ({"reset_at_token": 1}, "WORKER_RESET"),
            ({"fail_at_token": 0, "fail_kind": "unavailable"}, "POOL_UNAVAILABLE"),
        ],
    )
    async def test_engine_faults_end_with_error_frame(
        self, fault: dict[str, Any], code: str
    ) -> None:
        """An engine failure mid-stream ends the stream with one error frame and frees the slot."""
        async with running_server(config_of(mock_pool(mock=fault))) as srv:
            body = task_body()
            await srv.submit(body)
            frames = await srv.stream(body["task_id"])
            for _ in range(100):
                if srv.deps.pools.get_active_leases("p0") == 0:
                    break
                await asyncio.sleep(0.01)
            leases = srv.deps.pools.get_active_leases("p0")
        assert ("error", code, "mock") == (
            frames[-1][0],
            frames[-1][1]["code"],
            frames[-1][1]["engine"],
        )
        assert 1 == len([e for e, _ in frames if e in ("end", "error")])
        assert 0 == leases

    async def test_heartbeat_comments(self) -> None:
        """With a heartbeat configured, a waiting stream carries keep-alive comments."""
        config = config_of(mock_pool(mock={"ttft_ms": 150}), server={"sse": {"heartbeat_ms": 20}})
        async with running_server(config) as srv:
            body = task_body(max_tokens=1)
            await srv.submit(body)
            async with srv.client.stream("GET", f"/v1/tasks/{body['task_id']}/stream") as r:
                text = (await r.aread()).decode()
        assert ": keep-alive" in text and text.rstrip().endswith("}")


class TestCorrelation:
    async def test_echo_and_mint(self) -> None:
        """A sent X-Correlation-Id is echoed; otherwise a UUIDv4 is minted, errors included."""
        async with running_server(config_of()) as srv:
            echoed = await srv.submit(task_body(), headers={"X-Correlation-Id": "abc-123"})
            minted = await srv.client.get("/v1/capabilities")
            error = await srv.submit({"nope": 1})
            stream_body = task_body(max_tokens=1)
            await srv.submit(stream_body, headers={"X-Correlation-Id": "corr-9"})
            frames = await srv.stream(stream_body["task_id"])
        assert "abc-123" == echoed.headers["x-correlation-id"]
        assert 4 == uuid.UUID(minted.headers["x-correlation-id"]).version
        assert error.headers["x-correlation-id"]
        assert "corr-9" == frames[0][1]["correlation_id"]


class TestSessions:
    async def test_session_lifecycle(self) -> None:
        """A task creates its session; GET shows the turn; DELETE forgets it."""
        async with running_server(config_of()) as srv:
            body = task_body(max_tokens=2)
            await srv.submit(body)
            await srv.stream(body["task_id"])
            info = await srv.client.get(f"/v1/sessions/{body['session_id']}")
            deleted = await srv.client.delete(f"/v1/sessions/{body['session_id']}")
            gone = await srv.client.get(f"/v1/sessions/{body['session_id']}")
        data = info.json()
        assert (200, 1, True) == (info.status_code, data["turns"], data["kv_warmth"])
        assert 0 < data["ttl_ms_remaining"] <= 600_000
        assert (204, 404) == (deleted.status_code, gone.status_code)

    async def test_max_turns(self) -> None:
        """Past max_turns a session is refused with a non-retriable 429 session-budget."""
        async with running_server(config_of(sessions={"max_turns": 2})) as srv:
            session = str(uuid.uuid4())
            codes = [
                (await srv.submit(task_body(session_id=session, max_tokens=1))).status_code
                for _ in range(2)
            ]
            refused = await srv.submit(task_body(session_id=session, max_tokens=1))
        body = refused.json()
        assert [202, 202] == codes
        assert (429, "ADMISSION_REJECT", False, "session-budget") == (
            refused.status_code,
            body["code"],
            body["retriable"],
            body["policy_label"],
        )


class TestCapabilities:
    async def test_capabilities_and_health(self) -> None:
        """Capabilities carry api_version, engines and pools labelled simulated; health too."""
        async with running_server(config_of()) as srv:
            caps = (await srv.client.get("/v1/capabilities")).json()
            health = await srv.client.get("/v1/pools/p0/health")
            unknown = await srv.client.get("/v1/pools/zz/health")
            spec = await srv.client.get("/openapi/data.yaml")
        assert "1.0.0" == caps["api_version"]
        assert [("mock", 4096)] == [(e["engine"], e["ctx_max"]) for e in caps["engines"]]
        assert [("p0", True, True)] == [
            (p["pool_id"], p["ready"], p["simulated"]) for p in caps["pools"]
        ]
        assert (True, True) == (health.json()["ready"], health.json()["simulated"])
        assert 404 == unknown.status_code
        assert "OrchQueue v1" in spec.text

    async def test_capabilities_and_health_show_the_snapshot_version(self) -> None:
        """Both report the topology version, and capabilities list each replica's snapshot."""
        async with running_server(config_of()) as srv:
            caps = (await srv.client.get("/v1/capabilities")).json()
            health = (await srv.client.get("/v1/pools/p0/health")).json()
            version = srv.deps.pools.snapshot_version
        assert (version, version) == (caps["snapshot_version"], health["snapshot_version"])
        assert 0 < version
        assert [("r0", True)] == [
            (r["replica_id"], r["cached"]) for r in caps["pools"][0]["replicas"]
        ]
