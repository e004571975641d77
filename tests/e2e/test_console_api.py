"""The console's data endpoints and static assets over HTTP, on a real in-process server; their
payloads are checked against the committed OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import yaml

from llama_orch.contracts.console import EVENT_NAMES
from llama_orch.server.console.routes import ASSETS
from tests.support.serve_process import serve_process
from tests.support.server import RunningServer, config_of, mock_pool, running_server, task_body

ROOT = Path(__file__).resolve().parents[2]
LLORCH = [sys.executable, "-m", "llama_orch"]
CONTROL = yaml.safe_load((ROOT / "contracts/openapi/control.yaml").read_text())


def check(payload: Any, schema_name: str) -> None:
    """Validate ``payload`` against a component schema of the committed control-plane OpenAPI."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": CONTROL["components"]}
    jsonschema.Draft202012Validator(schema).validate(payload)


def slow_pool(**overrides: Any) -> dict[str, Any]:
    """One slot at 20 tokens/s: a second task waits in the queue for a while."""
    return mock_pool("p0", "m0", mock={"tokens_per_s": 20.0}, **overrides)


async def events(client: httpx.AsyncClient) -> AsyncIterator[tuple[str, Any]]:
    async with client.stream("GET", "/v1/events") as response:
        assert 200 == response.status_code
        assert response.headers["content-type"].startswith("text/event-stream")
        event = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                yield event, json.loads(line[6:])


def srv_app_feed(srv: RunningServer) -> Any:
    assert srv.app is not None
    return srv.app.state.console_feed


async def wait_for(srv: RunningServer, predicate: Any) -> dict[str, Any]:
    for _ in range(500):
        status: dict[str, Any] = (await srv.client.get("/v1/status")).json()
        if predicate(status):
            return status
        await asyncio.sleep(0.02)
    raise AssertionError("the status never matched")


class TestStatus:
    async def test_snapshot_lists_queue_running_and_finished(self) -> None:
        """Queued tasks carry positions and predictions, running ones their tokens, and
        finished ones their outcome; the payload matches the published schema."""
        async with running_server(config_of(slow_pool())) as srv:
            first = task_body(max_tokens=200)
            waiting = [task_body(max_tokens=20, priority="batch") for _ in range(2)]
            for body in [first, *waiting]:
                assert 202 == (await srv.submit(body)).status_code
            status = await wait_for(
                srv, lambda s: s["task"]["running"] and s["task"]["running"][0]["tokens_out"] > 0
            )
            check(status, "Status")
            (queue,) = status["queue"]["queues"]
            assert (2, [0, 1]) == (queue["depth"], [t["position"] for t in queue["tasks"]])
            assert [b["task_id"] for b in waiting] == [t["task_id"] for t in queue["tasks"]]
            assert all(t["predicted_start_ms"] > 0 for t in queue["tasks"])
            assert all(0 <= t["on_time_probability"] <= 1 for t in queue["tasks"])
            (running,) = status["task"]["running"]
            assert (first["task_id"], "r0") == (running["task_id"], running["replica_id"])
            (pool,) = status["pool"]["pools"]
            assert ("Ready", 1, {"interactive": 0, "batch": 2}) == (
                pool["state"],
                pool["slots_busy"],
                pool["queue_depth"],
            )
            assert ["p0/r0"] == status["gpu"]["gpus"][0]["replicas"]
            assert all(g["simulated"] for g in status["gpu"]["gpus"])
            await srv.client.post(f"/v1/tasks/{waiting[0]['task_id']}/cancel")
            await srv.client.post(f"/v1/tasks/{first['task_id']}/cancel")
            status = await wait_for(srv, lambda s: len(s["task"]["finished"]) == 2)
            outcomes = {t["task_id"]: t["outcome"] for t in status["task"]["finished"]}
            assert {waiting[0]["task_id"]: "canceled", first["task_id"]: "canceled"} == outcomes

    async def test_predictions_are_the_dispatchers(self) -> None:
        """Each listed queued task has the start prediction its own stream's ``started`` frame
        gives (read at the same instant), and an on-time probability."""
        async with running_server(config_of(slow_pool(slots=2))) as srv:
            bodies = [task_body(max_tokens=100 + 10 * i) for i in range(8)]
            for body in bodies:
                await srv.submit(body)
            await wait_for(srv, lambda s: len(s["task"]["running"]) == 2)
            service = srv.deps.service
            status = srv_app_feed(srv).read()
            actual = status.queue.queues[0].tasks
            expected = []
            for task in actual:
                view = service.open_stream(task.task_id)
                started = orjson.loads(view.started[1])
                service.close_stream(view, "complete")
                expected.append((started["queue_position"], started["predicted_start_ms"]))
        assert list(range(6)) == [t.position for t in actual]
        for (position, start_ms), task in zip(expected, actual, strict=True):
            assert position == task.position
            assert abs(start_ms - task.predicted_start_ms) <= 1
            assert 0.0 <= task.on_time_probability <= 1.0

    async def test_draining_pool(self) -> None:
        """A pool that drains is listed as Draining."""
        async with running_server(config_of()) as srv:
            srv.deps.pools.set_draining("p0", True)
            status = (await srv.client.get("/v1/status")).json()
        assert "Draining" == status["pool"]["pools"][0]["state"]

    async def test_error_ending_carries_its_code(self) -> None:
        """A task that ends with an error frame is listed with that frame's code."""
        pool = mock_pool(mock={"fail_at_token": 2, "fail_kind": "internal"})
        async with running_server(config_of(pool)) as srv:
            body = task_body()
            await srv.submit(body)
            await srv.stream(body["task_id"])
            status = (await srv.client.get("/v1/status")).json()
        (finished,) = status["task"]["finished"]
        assert ("error", "INTERNAL") == (finished["outcome"], finished["error_code"])
        check(status, "Status")

    async def test_status_needs_the_token(self, tmp_path: Path) -> None:
        """The data endpoints answer 401 without the token; the page itself does not."""
        async with running_server(config_of(), {"AUTH_TOKEN": "t" * 32}) as srv:
            assert 401 == (await srv.client.get("/v1/status")).status_code
            assert 401 == (await srv.client.get("/v1/events")).status_code
            assert 200 == (await srv.client.get("/")).status_code
            assert 200 == (await srv.client.get("/ui/app.js")).status_code
            assert 401 == (await srv.client.post("/ui/app.js")).status_code
            bearer = {"Authorization": "Bearer " + "t" * 32}
            assert 200 == (await srv.client.get("/v1/status", headers=bearer)).status_code


class TestEvents:
    async def test_full_snapshot_then_changes(self) -> None:
        """A subscriber gets every section first, each matching its schema, then the sections
        that change when a task arrives."""
        async with running_server(config_of(slow_pool())) as srv:
            feed = events(srv.client)
            first = [await anext(feed) for _ in EVENT_NAMES]
            assert list(EVENT_NAMES) == [name for name, _ in first]
            ok = CONTROL["paths"]["/v1/events"]["get"]["responses"]["200"]
            schemas = ok["content"]["text/event-stream"]["x-events"]
            for name, data in first:
                check(data, schemas[name]["$ref"].rsplit("/", 1)[1])
            body = task_body(max_tokens=100)
            await srv.submit(body)
            seen: set[str] = set()
            async for name, data in feed:
                seen.add(name)
                if name == "task" and data["running"]:
                    break
            assert {"meta", "gpu"}.isdisjoint(seen) and {"pool", "task"} <= seen
            await feed.aclose()


class TestAssets:
    async def test_page_and_assets_are_cacheable(self) -> None:
        """The page and scripts carry an ETag, revalidate to 304, and a same-origin CSP that
        keeps the page out of other sites' frames."""
        async with running_server(config_of()) as srv:
            page = await srv.client.get("/")
            assert page.headers["content-type"].startswith("text/html")
            policy = page.headers["content-security-policy"]
            assert {"default-src 'none'", "frame-ancestors 'none'"} <= set(policy.split("; "))
            again = await srv.client.get("/", headers={"If-None-Match": page.headers["etag"]})
            assert (304, b"") == (again.status_code, again.content)
            scripts = re.findall(r"/ui/([\w.]+)", page.text)
            assert scripts, "the page names no scripts under /ui/"
            for name in scripts:
                asset = await srv.client.get(f"/ui/{name}")
                assert 200 == asset.status_code
                tag = {"If-None-Match": asset.headers["etag"]}
                again = await srv.client.get(f"/ui/{name}", headers=tag)
                assert (304, b"") == (again.status_code, again.content), name
            missing = await srv.client.get("/ui/nope.js")
            assert (404, "NOT_FOUND") == (missing.status_code, missing.json()["code"])

    def test_page_weight_and_no_external_hosts(self) -> None:
        """All assets together stay under 150 KB and name no host but their own."""
        assert sum(len(a.body) for a in ASSETS.values()) <= 150_000
        for name, asset in ASSETS.items():
            assert not re.search(rb"https?://", asset.body), name


class TestStatusCommand:
    async def test_prints_tables(self) -> None:
        """`llorch status` prints the GPUs, pools, queue and running tasks."""
        async with running_server(config_of(slow_pool())) as srv:
            # The first task would run for 100 s (the server's stop ends it): however long the
            # command takes to start on a busy machine, it finds one task running, one queued.
            bodies = [
                task_body(max_tokens=2000),
                task_body(max_tokens=20, priority="batch", deadline_ms=600_000),
            ]
            for body in bodies:
                assert 202 == (await srv.submit(body)).status_code
            await wait_for(srv, lambda s: s["task"]["running"])
            proc = await asyncio.create_subprocess_exec(
                *LLORCH,
                "status",
                env={**os.environ, "LLORCH_URL": srv.url},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await asyncio.wait_for(proc.communicate(), 30)
        text = out.decode()
        assert 0 == proc.returncode, err.decode()
        assert ["GPUs", "Pools", "Queue", "Running"] == re.findall(r"^(\w+)$", text, re.M)
        assert "RTX 3090 (simulated) [simulated]" in text
        assert re.search(r"^  p0\s+Ready\s+mock@mock-1.0\s+m0\s+1/1\s+0/1", text, re.M)
        assert re.search(rf"^  p0\s+0\s+{bodies[1]['task_id']}\s+batch", text, re.M)
        assert bodies[0]["task_id"] in text

    async def test_watch_refreshes_until_interrupted(self) -> None:
        """`llorch status --watch` prints the tables again and again until it is stopped."""
        async with running_server(config_of()) as srv:
            proc = await asyncio.create_subprocess_exec(
                *LLORCH,
                "status",
                "--watch",
                "--interval",
                "0.1",
                env={**os.environ, "LLORCH_URL": srv.url},
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            assert proc.stdout is not None
            seen = 0
            while seen < 2:
                line = await asyncio.wait_for(proc.stdout.readline(), 30)
                assert line, "llorch status --watch ended on its own"
                seen += line.startswith(b"Pools")
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.communicate(), 30)
        assert 0 == proc.returncode

    async def test_a_bad_interval_is_a_usage_error(self) -> None:
        """A negative --interval is refused by name (exit 2), not a traceback mid-watch."""
        proc = await asyncio.create_subprocess_exec(
            *LLORCH,
            "status",
            "--watch",
            "--interval",
            "-1",
            "--url",
            "http://127.0.0.1:9",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert 2 == proc.returncode
        assert "--interval" in err.decode() and "Traceback" not in err.decode()

    async def test_unreachable_server(self) -> None:
        """Without a server, `llorch status` says so and exits 3."""
        proc = await asyncio.create_subprocess_exec(
            *LLORCH,
            "status",
            "--url",
            "http://127.0.0.1:9",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), 30)
        assert 3 == proc.returncode
        assert "cannot reach" in err.decode()


class TestShutdown:
    def test_server_stops_with_a_console_connected(self, tmp_path: Path) -> None:
        """SIGTERM ends the console feed, so the server exits instead of waiting on it."""
        config = yaml.safe_load((ROOT / "examples/demo.yaml").read_text())
        with serve_process(config, tmp_path) as server, httpx.Client(base_url=server.url) as http:
            with http.stream("GET", "/v1/events") as response:
                chunks = response.iter_bytes()
                assert b"event: meta" in next(chunks)
                server.process.terminate()
                # The feed ends: the body closes instead of hanging until the server is killed.
                for _ in chunks:
                    pass
            assert 0 == server.process.wait(timeout=20)
