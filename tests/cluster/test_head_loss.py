"""The Ray head is lost under a running ``llorch serve`` (its own ``ray start --head``, which is
also the cluster host ``gpu-a``): the server outlives Ray's limit for an unreachable head (set to
a few seconds through ``cluster.head_exit_timeout_ms``), its local pool serves on while the
cluster host is stale and its replica down, and a head started again on the same address is
found: the cluster replica is placed again by the supervisor (simulated GPUs, fake
llama-server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from llama_orch.pool.launch.ray import JoinRefused, head_state, node_resources
from tests.support.cluster import OBJECT_STORE_BYTES, engines_running
from tests.support.launched import LaunchedSetup, launched_setup, llama_task
from tests.support.serve_process import free_port, serve_process
from tests.support.server import sse_events

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

#: Ray's limit for this server's unreachable head (its default is 60 s).
HEAD_EXIT_S = 10.0
HOST = "gpu-a"


class Head:
    """``ray start --head --block`` on ``port``, carrying host ``gpu-a``'s resources; killed
    at once (SIGKILL to its process group: GCS, raylet and workers), as a crashed machine."""

    def __init__(self, port: int, logs: Path) -> None:
        self.port = port
        self.logs = logs
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        resources = json.dumps(node_resources(HOST, 1), separators=(",", ":"))
        argv = [
            ray, "start", "--head", "--block", f"--port={self.port}", "--disable-usage-stats",
            "--include-dashboard=false", "--num-cpus=1", "--num-gpus=0",
            f"--object-store-memory={OBJECT_STORE_BYTES}", f"--resources={resources}",
            # Ports Ray would otherwise fix: another head on this machine may hold them.
            f"--dashboard-agent-listen-port={free_port()}",
        ]  # fmt: skip
        with (self.logs / f"head-{time.monotonic_ns()}.log").open("wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    async def up(self, timeout_s: float = 90.0) -> None:
        """Until the head answers with host ``gpu-a`` alive in it."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, "ray start failed"
            with contextlib.suppress(JoinRefused):
                if HOST in (await asyncio.to_thread(head_state, self.address, None, 2.0)).hosts:
                    return
            await asyncio.sleep(0.2)
        raise AssertionError(f"the Ray head on {self.address} did not come up")

    def kill(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None


@contextlib.contextmanager
def head_on(port: int, logs: Path) -> Iterator[Head]:
    head = Head(port, logs)
    try:
        yield head
    finally:
        head.kill()


def _config(setup: LaunchedSetup, address: str) -> dict[str, Any]:
    # Paced, so a long task is still streaming when it is canceled.
    local = setup.pool("local", slots=1, env={"FAKE_ENGINE_TOKENS_PER_S": "50"})
    remote = setup.pool("remote", slots=1, host=HOST)
    config = setup.config().model_dump(mode="json", exclude_unset=True)
    config["pools"] = [local, remote]
    config["cluster"] = {
        "address": address,
        "placement_timeout_ms": 20_000,
        "inventory_interval_ms": 200,
        "inventory_deadline_ms": 2_000,
        "head_exit_timeout_ms": int(HEAD_EXIT_S * 1000),
        # Below Ray's limit; a killed head is lost at once (nothing accepts connections).
        "head_lost_after_ms": 3_000,
    }
    config["hosts"] = [{"name": HOST, "gpus": [0], "simulated_vram_bytes": 8 * 2**30}]
    return config


async def _health(
    client: httpx.AsyncClient, pool_id: str, predicate: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    health: dict[str, Any] = {}
    for _ in range(1200):
        health = (await client.get(f"/v1/pools/{pool_id}/health")).json()
        if predicate(health):
            return health
        await asyncio.sleep(0.1)
    raise AssertionError(f"pool {pool_id} health never matched: {health}")


def _ready_on(host: str | None) -> Callable[[dict[str, Any]], bool]:
    def check(health: dict[str, Any]) -> bool:
        process = health["metrics"]["replicas"][0]["process"]
        return bool(health["ready"]) and process["host"] == host

    return check


async def _logged(log: Path, text: str, times: int = 1) -> None:
    found = ""
    for _ in range(1200):
        found = await asyncio.to_thread(log.read_text)
        if found.count(text) >= times:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the server never logged {text!r}: {found[-3000:]}")


async def _served(client: httpx.AsyncClient, setup: LaunchedSetup) -> None:
    """One task admitted and streamed to its end."""
    task = llama_task(setup.model, max_tokens=3)
    admitted = await client.post("/v1/tasks", json=task)
    assert 202 == admitted.status_code, admitted.text
    frames = [event async for event, _ in sse_events(client, task["task_id"])]
    assert "end" == frames[-1], frames


async def _canceled(client: httpx.AsyncClient, setup: LaunchedSetup) -> None:
    """A long task canceled while it streams ends canceled."""
    task = llama_task(setup.model, max_tokens=400)
    assert 202 == (await client.post("/v1/tasks", json=task)).status_code
    frames: list[tuple[str, dict[str, Any]]] = []
    async for event, data in sse_events(client, task["task_id"]):
        frames.append((event, data))
        if event == "token" and sum(1 for e, _ in frames if e == "token") == 1:
            cancel = await client.post(f"/v1/tasks/{task['task_id']}/cancel")
            assert cancel.status_code < 300, cancel.text
    assert ("end", True) == (frames[-1][0], frames[-1][1].get("canceled")), frames[-1]


async def _stale(client: httpx.AsyncClient) -> bool:
    hosts = (await client.get("/v1/capabilities")).json()["hosts"]
    return bool({h["name"]: h["stale"] for h in hosts}.get(HOST))


async def _until(check: Callable[[], Awaitable[bool]], want: bool) -> None:
    """Poll ``check`` until it answers ``want`` (bounded: a loaded machine is slow)."""
    for _ in range(600):
        if await check() == want:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"never became {want}")


class TestHeadLoss:
    async def test_the_server_outlives_its_head_and_finds_the_next_one(
        self, tmp_path: Path
    ) -> None:
        with launched_setup(tmp_path) as setup, head_on(free_port(), tmp_path) as head:
            head.start()
            await head.up()
            work = tmp_path / "serve"
            work.mkdir()
            config = _config(setup, head.address)
            with serve_process(config, work, start_timeout_s=90) as server:
                async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
                    await _health(client, "remote", _ready_on(HOST))
                    await _health(client, "local", _ready_on(None))
                    head.kill()
                    lost_at = time.monotonic()
                    await _logged(server.log_path, '"action":"head-lost","target":"cluster"')
                    await _health(client, "remote", lambda h: not h["ready"])
                    assert await _stale(client)
                    await _served(client, setup)
                    await _canceled(client, setup)
                    # Past Ray's limit for this server: without letting go of the lost head,
                    # Ray would have ended the process by now.
                    await asyncio.sleep(max(0.0, lost_at + HEAD_EXIT_S + 3 - time.monotonic()))
                    assert server.process.poll() is None
                    await _served(client, setup)
                    head.start()
                    await _logged(server.log_path, '"action":"head-back","target":"cluster"')
                    health = await _health(client, "remote", _ready_on(HOST))
                    assert "head_lost" in health["metrics"]["replicas"][0]["process"]["last_exit"]
                    # The replica can be Ready before the next inventory poll (every 2 s)
                    # vouches for its host again.
                    await _until(lambda: _stale(client), False)
                    await _served(client, setup)
            log = server.log_path.read_text()
        assert 1 == log.count('"action":"head-lost","target":"cluster"') and 1 == log.count(
            '"action":"head-back","target":"cluster"'
        )
        # The server stopped on SIGTERM as it does without a cluster (not Ray's handler).
        assert "SIGTERM received" not in log
        assert "Traceback" not in log
        assert [] == engines_running(tmp_path / "models")

    async def test_a_server_whose_head_is_not_there_starts_and_serves_locally(
        self, tmp_path: Path
    ) -> None:
        """Nothing listens at the head's address: the server starts at once (Ray would wait
        minutes for a head), says the head is lost, and serves its local pool."""
        with launched_setup(tmp_path) as setup:
            work = tmp_path / "serve"
            work.mkdir()
            config = _config(setup, f"127.0.0.1:{free_port()}")
            with serve_process(config, work, start_timeout_s=60) as server:
                async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as client:
                    await _logged(server.log_path, '"action":"head-lost","target":"cluster"')
                    await _health(client, "local", _ready_on(None))
                    await _served(client, setup)
                    assert await _stale(client)
                    remote = (await client.get("/v1/pools/remote/health")).json()
                    assert not remote["ready"]
            log = server.log_path.read_text()
        assert "nothing accepts connections there" in log
        assert 1 == log.count('"action":"head-lost","target":"cluster"')
        assert "Traceback" not in log
