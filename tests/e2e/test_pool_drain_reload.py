"""Drain and reload over HTTP: what clients, health and metrics see."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.engines import tiny_gguf
from tests.support.launched import (
    LaunchedSetup,
    launched_setup,
    llama_task,
    process_of,
    wait_health,
)
from tests.support.server import (
    RunningServer,
    config_of,
    mock_pool,
    running_server,
    task_body,
)

SLOW = {"ttft_ms": 5, "tokens_per_s": 20.0}


async def _state(server: RunningServer, task_id: str, state: str) -> None:
    for _ in range(400):
        task = server.task(task_id)
        if task is not None and task.state.value == state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"task {task_id} never reached {state}")


class TestDrain:
    async def test_drain_refuses_ends_queued_and_stops_at_deadline(self) -> None:
        """New tasks: 503 POOL_UNREADY; queued: a retriable POOL_UNAVAILABLE frame; the
        running one is stopped at the deadline; health and metrics record the drain."""
        config = config_of(mock_pool("p0", "m0", mock=SLOW))
        async with running_server(config) as server:
            running = task_body("m0", max_tokens=1000)
            queued = task_body("m0", max_tokens=4)
            assert 202 == (await server.submit(running)).status_code
            await _state(server, running["task_id"], "running")
            assert 202 == (await server.submit(queued)).status_code
            # The running task (50 s of tokens) is stopped at the deadline; until then the
            # drain is in progress, and a second one is refused. A deadline a loaded machine
            # cannot outrun between the two requests.
            response = await server.client.post("/v1/pools/p0/drain", json={"deadline_ms": 1500})
            assert 202 == response.status_code
            assert {"draining": True, "kind": "drain", "queued_ended": 1} == {
                k: response.json()[k] for k in ("draining", "kind", "queued_ended")
            }
            again = await server.client.post("/v1/pools/p0/drain", json={"deadline_ms": 1})
            assert 409 == again.status_code
            frames = await server.stream(queued["task_id"])
            assert ("error", "POOL_UNAVAILABLE", True) == (
                frames[-1][0],
                frames[-1][1]["code"],
                frames[-1][1]["retriable"],
            )
            refused = await server.submit(task_body("m0"))
            assert 503 == refused.status_code
            assert ("POOL_UNREADY", True) == (refused.json()["code"], refused.json()["retriable"])
            assert "draining" in refused.json()["message"]
            assert "5" == refused.headers["retry-after"]
            last = await server.stream(running["task_id"])
            assert last[-1][0] in ("end", "error")
            health = await _drained(server)
            assert health["draining"] is True
            assert 1 == health["last_operation"]["in_flight_stopped"]
            scrape = (await server.client.get("/metrics")).text
            assert 'drain_events_total{pool_id="p0",reason="drain"} 1.0' in scrape

    async def test_front_door_requests_stopped_by_a_drain_may_be_retried(self) -> None:
        """Chat requests a drain stops at its deadline answer a retriable 503
        ``pool_unavailable`` (streamed: an error event), not the final 499 of a client's cancel."""
        config = config_of(mock_pool("p0", "m0", mock=SLOW, slots=2))
        chat = {"model": "m0", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1000}
        async with running_server(config) as server:
            whole = asyncio.create_task(server.client.post("/v1/chat/completions", json=chat))

            async def streamed() -> bytes:
                body = {**chat, "stream": True}
                async with server.client.stream("POST", "/v1/chat/completions", json=body) as r:
                    return b"".join([chunk async for chunk in r.aiter_bytes()])

            stream = asyncio.create_task(streamed())
            for _ in range(400):
                if 2 == server.deps.pools.get_active_leases("p0"):
                    break
                await asyncio.sleep(0.02)
            drain = await server.client.post("/v1/pools/p0/drain", json={"deadline_ms": 100})
            assert 202 == drain.status_code
            answer, streamed_body = await whole, await stream
        assert 503 == answer.status_code
        assert "pool_unavailable" == answer.json()["error"]["code"]
        assert "drained" in answer.json()["error"]["message"]
        assert "1" == answer.headers["retry-after"]
        assert b'"code":"pool_unavailable"' in streamed_body
        assert b'"code":"canceled"' not in streamed_body

    async def test_each_door_refuses_new_work_for_a_draining_pool_as_not_ready(self) -> None:
        """A draining pool exists but is not Ready: the task API and both front doors answer
        a retriable 503 POOL_UNREADY in their own shapes, with Retry-After."""
        chat = {"model": "m0", "messages": [{"role": "user", "content": "hi"}]}
        async with running_server(config_of(mock_pool("p0", "m0"))) as server:
            drain = await server.client.post("/v1/pools/p0/drain", json={"deadline_ms": 1})
            assert 202 == drain.status_code
            task = await server.submit(task_body("m0"))
            openai = await server.client.post("/v1/chat/completions", json=chat)
            ollama = await server.client.post("/api/chat", json={**chat, "stream": False})
        assert (503, "POOL_UNREADY", True, 5000) == (
            task.status_code,
            task.json()["code"],
            task.json()["retriable"],
            task.json()["retry_after_ms"],
        )
        assert (503, "pool_unready") == (openai.status_code, openai.json()["error"]["code"])
        assert "draining" in openai.json()["error"]["message"]
        assert 503 == ollama.status_code
        assert "draining" in ollama.json()["error"]
        for answer in (task, openai, ollama):
            assert "5" == answer.headers["retry-after"]

    async def test_a_drained_mock_pool_serves_again_after_a_reload_of_its_model(self) -> None:
        """A pool llama-orch does not launch keeps its model: the reload probes it again and
        ends the drain once it passes, so the pool serves without a server restart."""
        async with running_server(config_of(mock_pool("p0", "m0"))) as server:
            drain = await server.client.post("/v1/pools/p0/drain", json={"deadline_ms": 1})
            assert 202 == drain.status_code
            await _drained(server)
            reload = await server.client.post("/v1/pools/p0/reload", json={"new_model_ref": "m0"})
            assert 202 == reload.status_code
            health = await _drained(server, kind="reload")
            assert (True, False) == (health["ready"], health["draining"]), health
            task = task_body("m0", max_tokens=2)
            assert 202 == (await server.submit(task)).status_code
            assert "end" == (await server.stream(task["task_id"]))[-1][0]

    async def test_bad_requests(self) -> None:
        """Unknown pool: 404; a body without deadline_ms: 400 INVALID_PARAMS."""
        async with running_server(config_of(mock_pool())) as server:
            missing = await server.client.post("/v1/pools/nope/drain", json={"deadline_ms": 1})
            assert 404 == missing.status_code
            bad = await server.client.post("/v1/pools/p0/drain", json={})
            assert (400, "INVALID_PARAMS") == (bad.status_code, bad.json()["code"])
            mock = await server.client.post("/v1/pools/p0/reload", json={"new_model_ref": "x"})
            assert 400 == mock.status_code
            assert "does not launch" in mock.json()["message"]
            # A mock pool has no engine for the operator to restart: the advice says what to do.
            assert "provisioning mode none" not in mock.json()["message"]
            assert "pools[].model" in mock.json()["message"]


async def _drained(server: RunningServer, kind: str = "drain") -> dict[str, Any]:
    for _ in range(400):
        health: dict[str, Any] = (await server.client.get("/v1/pools/p0/health")).json()
        op = health.get("last_operation") or {}
        if (op.get("kind"), op.get("state")) == (kind, "done"):
            return health
        await asyncio.sleep(0.02)
    raise AssertionError(f"the {kind} never finished")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[LaunchedSetup]:
    with launched_setup(tmp_path) as s:
        yield s


async def _reload_never_ready(server: RunningServer, setup: LaunchedSetup, model: Path) -> str:
    """Start a reload of the Ready pool lp to ``model`` whose new replica never turns Ready;
    the catalog id of ``model``."""
    await wait_health(server, "lp", lambda h: h["ready"])
    setup.faults.write_text("never_healthy")
    response = await server.client.post("/v1/pools/lp/reload", json={"new_model_ref": str(model)})
    assert 202 == response.status_code
    return f"file:{model}"


def _done(health: dict[str, Any]) -> bool:
    return (health.get("last_operation") or {}).get("state") in ("done", "rolled_back")


class TestReload:
    async def test_reload_switches_models_without_failing_tasks(self, setup: LaunchedSetup) -> None:
        """Streams running across the switch finish; then the pool serves the new model on
        new processes and the old process is gone."""
        new_model = tiny_gguf(setup.tmp / "models2", "tiny-next")
        pool = setup.pool(env={"FAKE_ENGINE_TOKENS_PER_S": "40"})
        async with running_server(setup.config(pool)) as server:
            health = await wait_health(server, "lp", lambda h: h["ready"])
            old_pid = process_of(health)["pid"]
            bodies = [llama_task(setup.model, max_tokens=30) for _ in range(2)]
            for body in bodies:
                assert 202 == (await server.submit(body)).status_code
            streams = [asyncio.create_task(server.stream(b["task_id"])) for b in bodies]
            response = await server.client.post(
                "/v1/pools/lp/reload", json={"new_model_ref": str(new_model)}
            )
            assert 202 == response.status_code
            health = await wait_health(server, "lp", _done)
            results = await asyncio.gather(*streams)
            assert ["end", "end"] == [frames[-1][0] for frames in results]
            assert "done" == health["last_operation"]["state"]
            assert str(new_model) == health["model_id"]
            assert ["r0-g1"] == [r["replica_id"] for r in health["metrics"]["replicas"]]
            assert process_of(health)["pid"] != old_pid
            with pytest.raises(ProcessLookupError):
                os.kill(old_pid, 0)
            body = llama_task(new_model, max_tokens=3)
            assert 202 == (await server.submit(body)).status_code
            assert "end" == (await server.stream(body["task_id"]))[-1][0]

    async def test_failed_reload_rolls_back(self, setup: LaunchedSetup) -> None:
        """A model the engine cannot load: the new replicas never turn Ready, the reload rolls
        back, and the old replica keeps serving the old model."""
        broken = setup.tmp / "broken.gguf"
        broken.write_bytes(b"GGUF\x09\x00\x00\x00")  # a GGUF version no engine reads
        config = setup.config(restart_storm={"failures": 2, "window_s": 60})
        async with running_server(config) as server:
            health = await wait_health(server, "lp", lambda h: h["ready"])
            old_pid = process_of(health)["pid"]
            response = await server.client.post(
                "/v1/pools/lp/reload", json={"new_model_ref": str(broken)}
            )
            assert 202 == response.status_code
            health = await wait_health(server, "lp", _done)
            assert "rolled_back" == health["last_operation"]["state"]
            assert health["ready"] is True
            assert str(setup.model) == health["model_id"]
            assert old_pid == process_of(health)["pid"]
            body = llama_task(setup.model, max_tokens=3)
            assert 202 == (await server.submit(body)).status_code
            assert "end" == (await server.stream(body["task_id"]))[-1][0]

    async def test_missing_model_is_refused_up_front(self, setup: LaunchedSetup) -> None:
        """A reload to a model that is not present is a 400 naming the file; nothing starts."""
        async with running_server(setup.config()) as server:
            await wait_health(server, "lp", lambda h: h["ready"])
            response = await server.client.post(
                "/v1/pools/lp/reload", json={"new_model_ref": str(setup.tmp / "nope.gguf")}
            )
            assert 400 == response.status_code
            assert "does not exist" in response.json()["message"]

    async def test_reload_rescues_a_pool_whose_model_was_retired(
        self, setup: LaunchedSetup
    ) -> None:
        """Retiring the served model makes the pool Unready; a reload to another model brings
        it back (the new replicas wait for their own model, not the retired one), and a
        reload to the retired model is refused up front."""
        new_model = tiny_gguf(setup.tmp / "models2", "tiny-next")
        async with running_server(setup.config(startup_timeout_ms=20000)) as server:
            await wait_health(server, "lp", lambda h: h["ready"])
            old_id = f"file:{setup.model}"
            retired = await server.client.post(
                f"/v1/catalog/models/{old_id}/state", json={"state": "Retired"}
            )
            assert 202 == retired.status_code
            await wait_health(server, "lp", lambda h: not h["ready"])
            again = await server.client.post(
                "/v1/pools/lp/reload", json={"new_model_ref": str(setup.model)}
            )
            assert (400, "MODEL_DEPRECATED") == (again.status_code, again.json()["code"])
            response = await server.client.post(
                "/v1/pools/lp/reload", json={"new_model_ref": str(new_model)}
            )
            assert 202 == response.status_code
            health = await wait_health(server, "lp", _done)
            assert "done" == health["last_operation"]["state"], health["last_operation"]
            health = await wait_health(server, "lp", lambda h: h["ready"])
            assert str(new_model) == health["model_id"]
            body = llama_task(new_model, max_tokens=3)
            assert 202 == (await server.submit(body)).status_code
            assert "end" == (await server.stream(body["task_id"]))[-1][0]

    async def test_a_served_model_is_not_deleted_until_the_pool_moves_off_it(
        self, setup: LaunchedSetup
    ) -> None:
        """DELETE of the model a pool serves is a 409 naming the pool (deleting it would leave
        the pool Unready, its engine restarted over and over); after a reload it goes."""
        new_model = tiny_gguf(setup.tmp / "models2", "tiny-next")
        async with running_server(setup.config()) as server:
            await wait_health(server, "lp", lambda h: h["ready"])
            old_id = f"file:{setup.model}"
            refused = await server.client.delete(f"/v1/catalog/models/{old_id}")
            assert (409, "CONFLICT") == (refused.status_code, refused.json()["code"])
            assert "pool lp" in refused.json()["message"]
            assert (await server.client.get("/v1/pools/lp/health")).json()["ready"] is True
            response = await server.client.post(
                "/v1/pools/lp/reload", json={"new_model_ref": str(new_model)}
            )
            assert 202 == response.status_code
            assert "done" == (await wait_health(server, "lp", _done))["last_operation"]["state"]
            assert 204 == (await server.client.delete(f"/v1/catalog/models/{old_id}")).status_code
            assert (await server.client.get("/v1/pools/lp/health")).json()["ready"] is True

    async def test_the_model_a_running_reload_moves_to_is_not_deleted(
        self, setup: LaunchedSetup
    ) -> None:
        """While a reload waits for its new replicas, DELETE of its new model is a 409 (the
        reload would otherwise wait out the start-up timeout); once it rolled back, it goes."""
        new_model = tiny_gguf(setup.tmp / "models2", "tiny-next")
        async with running_server(setup.config(startup_timeout_ms=8000)) as server:
            new_id = await _reload_never_ready(server, setup, new_model)
            refused = await server.client.delete(f"/v1/catalog/models/{new_id}")
            assert (409, "CONFLICT") == (refused.status_code, refused.json()["code"])
            assert "running reload" in refused.json()["message"]
            health = await wait_health(server, "lp", _done)
            assert "rolled_back" == health["last_operation"]["state"]
            assert 204 == (await server.client.delete(f"/v1/catalog/models/{new_id}")).status_code

    async def test_retiring_the_new_model_mid_reload_rolls_back_at_once(
        self, setup: LaunchedSetup
    ) -> None:
        """Retired while the new replicas start, the new model would keep them Unready until
        the start-up timeout; the reload rolls back instead, saying why."""
        new_model = tiny_gguf(setup.tmp / "models2", "tiny-next")
        async with running_server(setup.config(startup_timeout_ms=3_600_000)) as server:
            new_id = await _reload_never_ready(server, setup, new_model)
            for _ in range(1000):  # registered in the catalog before the new replicas start
                shown = await server.client.get(f"/v1/catalog/models/{new_id}")
                if shown.status_code == 200 and shown.json()["state"] == "Active":
                    break
                await asyncio.sleep(0.02)
            retired = await server.client.post(
                f"/v1/catalog/models/{new_id}/state", json={"state": "Retired"}
            )
            assert 202 == retired.status_code
            health = await wait_health(server, "lp", _done)
            assert "rolled_back" == health["last_operation"]["state"]
            assert "Retired" in health["last_operation"]["error"]
            assert str(setup.model) == health["model_id"]
