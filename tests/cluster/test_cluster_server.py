"""A server whose pool runs on a cluster host: the host is lost mid-stream, the client sees one
retriable error, the queued task waits and is served by the replica re-placed on the other host;
health and capabilities say where each replica runs (simulated GPUs, fake llama-server)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from llama_orch.config import Config
from llama_orch.pool.launch.ray import AGENT_PREFIX, NAMESPACE
from tests.support.cluster import HOSTS, LocalCluster, engine_actors, engines_running
from tests.support.launched import (
    LaunchedSetup,
    launched_setup,
    llama_task,
    process_of,
    wait_health,
)
from tests.support.serve_process import serve_process
from tests.support.server import running_server, sse_events

# The first test of the package also waits for the cluster to start (about 10-30 s).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[LaunchedSetup]:
    with launched_setup(tmp_path) as s:
        yield s


def _cluster_config(
    setup: LaunchedSetup, cluster: LocalCluster, *pools: dict[str, Any], **options: Any
) -> Config:
    base = setup.config().model_dump(mode="json", exclude_unset=True)
    base["pools"] = list(pools)
    # A generous inventory deadline: a loaded test machine must not make a host stale.
    base["cluster"] = {
        "address": cluster.address,
        "placement_timeout_ms": 20_000,
        "inventory_deadline_ms": 10_000,
        **options,
    }
    base["hosts"] = [
        {"name": h.name, "gpus": list(h.gpus), "simulated_vram_bytes": h.simulated_vram}
        for h in HOSTS
    ]
    return Config.model_validate(base)


def _on(host: str) -> Any:
    def check(health: dict[str, Any]) -> bool:
        return bool(health["ready"]) and process_of(health)["host"] == host

    return check


class TestClusterServer:
    async def test_a_lost_host_costs_one_retriable_error_and_the_queue_survives(
        self, cluster: LocalCluster, setup: LaunchedSetup, tmp_path: Path
    ) -> None:
        pool = setup.pool(
            slots=1, devices=[1], host="gpu-a", env={"FAKE_ENGINE_TOKENS_PER_S": "20"}
        )
        async with running_server(_cluster_config(setup, cluster, pool)) as server:
            health = await wait_health(server, "lp", _on("gpu-a"))
            caps = (await server.client.get("/v1/capabilities")).json()
            replicas = next(p for p in caps["pools"] if p["pool_id"] == "lp")["replicas"]
            assert ["gpu-a"] == [r["host"] for r in replicas]
            first = llama_task(setup.model, max_tokens=400)
            second = llama_task(setup.model, max_tokens=3)
            assert 202 == (await server.submit(first)).status_code
            assert 202 == (await server.submit(second)).status_code
            frames: list[tuple[str, dict[str, Any]]] = []
            async for event, data in sse_events(server.client, first["task_id"]):
                frames.append((event, data))
                if event == "token" and "gpu-a" in cluster.nodes:
                    cluster.remove("gpu-a")
            assert "error" == frames[-1][0] and frames[-1][1]["retriable"] is True
            assert 1 == sum(1 for event, _ in frames if event == "error")
            # The queued task waits for the replica's relaunch on gpu-b: a new Ray worker and
            # engine, which on a loaded two-core machine took more than the client's 10 s once.
            rest = await server.stream(second["task_id"], timeout=60.0)
            assert "end" == rest[-1][0]
            health = await wait_health(server, "lp", _on("gpu-b"))
            process = process_of(health)
            assert "node_lost" == process["exit_kind"]
            assert "node_lost (status -9) on host gpu-a" in process["last_exit"]
            assert 1 == health["restart_count"]
            metrics = (await server.client.get("/metrics")).text
            assert 'pool_restarts_total{pool_id="lp",reason="node_lost"} 1.0' in metrics
        assert [] == engines_running(tmp_path / "models")


@contextlib.contextmanager
def _agent_frozen(host: str) -> Iterator[None]:
    """The host's inventory agent stops answering (its process stopped) while the host, its
    engines and Ray's own health checks carry on: a hung agent, as a wedged NVML call makes."""
    agent = ray.get_actor(AGENT_PREFIX + host, namespace=NAMESPACE)
    pid = int(ray.get(agent.inventory.remote(), timeout=30)["pid"])
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def _host_reported(client: httpx.AsyncClient, host: str, timeout_s: float = 40.0) -> None:
    """Until the capabilities list ``host`` with the GPUs its agent read."""
    hosts: dict[str, Any] = {}
    for _ in range(int(timeout_s / 0.05)):
        hosts = {h["name"]: h for h in (await client.get("/v1/capabilities")).json()["hosts"]}
        if host in hosts and hosts[host]["gpus"]:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"host {host} never reported its GPUs: {hosts}")


def _stale(value: bool) -> Any:
    def check(health: dict[str, Any]) -> bool:
        replica = health["metrics"]["replicas"][0]
        return bool(health["ready"]) and replica["stale"] is value

    return check


class TestHostInventory:
    async def test_a_host_whose_agent_stops_answering_takes_no_new_work(
        self, cluster: LocalCluster, setup: LaunchedSetup, tmp_path: Path
    ) -> None:
        """gpu-a's agent misses its deadline: its replica turns stale (health and the
        ``cluster_host_stale`` gauge name the host) and, as its pool's only replica, the pool
        refuses tasks retriably; once the agent answers again, the replica is placeable and a
        task runs."""
        pool = setup.pool(slots=1, devices=[1], host="gpu-a")
        # A stopped agent misses any deadline; a few seconds keep a loaded machine from
        # missing it while the agent runs.
        config = _cluster_config(
            setup, cluster, pool, inventory_interval_ms=200, inventory_deadline_ms=3_000
        )
        async with running_server(config) as server:
            await wait_health(server, "lp", _on("gpu-a"))
            await wait_health(server, "lp", _stale(False))
            # A host that has not answered yet is not stale either: freeze the agent only once
            # its first reading is in, so there is a last reading to show.
            await _host_reported(server.client, "gpu-a")
            task = llama_task(setup.model, max_tokens=3)
            with _agent_frozen("gpu-a"):
                health = await wait_health(server, "lp", _stale(True))
                assert "gpu-a" == health["metrics"]["replicas"][0]["host"]
                metrics = (await server.client.get("/metrics")).text
                assert 'cluster_host_stale{host="gpu-a"} 1.0' in metrics
                caps = (await server.client.get("/v1/capabilities")).json()
                hosts = {h["name"]: h for h in caps["hosts"]}
                assert (True, False) == (hosts["gpu-a"]["stale"], hosts["gpu-b"]["stale"])
                assert [0, 1] == [g["index"] for g in hosts["gpu-a"]["gpus"]]
                status = (await server.client.get("/v1/status")).json()
                gpus = {(g["host"], g["index"]): g for g in status["gpu"]["gpus"]}
                assert (["lp/r0"], True) == (
                    gpus[("gpu-a", 1)]["replicas"],
                    gpus[("gpu-a", 1)]["stale"],
                )
                assert [] == gpus[("gpu-b", 1)]["replicas"]
                [replica] = status["pool"]["pools"][0]["replicas"]
                assert "gpu-a" == replica["host"]
                refused = await server.submit(task)
                assert 503 == refused.status_code
                assert "POOL_UNREADY" == refused.json()["code"] and refused.json()["retriable"]
            await wait_health(server, "lp", _stale(False))
            assert 202 == (await server.submit(task)).status_code
            frames = await server.stream(task["task_id"])
            assert "end" == frames[-1][0]
            metrics = (await server.client.get("/metrics")).text
            assert 'cluster_host_stale{host="gpu-a"} 0.0' in metrics
        assert [] == engines_running(tmp_path / "models")


async def _health_of(url: str, predicate: Any, timeout_s: float = 60.0) -> dict[str, Any]:
    health: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as client:
        for _ in range(int(timeout_s / 0.1)):
            health = (await client.get("/v1/pools/lp/health")).json()
            if predicate(health):
                return health
            await asyncio.sleep(0.1)
    raise AssertionError(f"pool lp health never matched: {health}")


class TestRestart:
    async def test_a_restarted_server_takes_over_the_engine_its_predecessor_left(
        self, cluster: LocalCluster, setup: LaunchedSetup, tmp_path: Path
    ) -> None:
        """``llorch serve`` is killed (SIGKILL) while its replica runs on gpu-a; the next
        ``llorch serve`` on the same config adopts that engine (same pid, no second process)
        and serves with it; stopping the server then stops the engine and its actor."""
        pool = setup.pool(slots=1, devices=[1], host="gpu-a")
        config = _cluster_config(setup, cluster, pool).model_dump(mode="json", exclude_unset=True)
        engines = tmp_path / "models"
        for run in ("first", "second"):
            (tmp_path / run).mkdir()
        with serve_process(config, tmp_path / "first", start_timeout_s=90) as first:
            pid = process_of(await _health_of(first.url, _on("gpu-a")))["pid"]
            first.process.kill()
            first.process.wait()
        assert [pid] == engines_running(engines)
        with serve_process(config, tmp_path / "second", start_timeout_s=90) as second:
            health = await _health_of(second.url, _on("gpu-a"))
            assert (pid, [pid]) == (process_of(health)["pid"], engines_running(engines))
            async with httpx.AsyncClient(base_url=second.url, timeout=30.0) as client:
                task = llama_task(setup.model, max_tokens=3)
                assert 202 == (await client.post("/v1/tasks", json=task)).status_code
                frames = [event async for event, _ in sse_events(client, task["task_id"])]
                metrics = (await client.get("/metrics")).text
            assert "end" == frames[-1]
        log = (tmp_path / "second" / "serve.log").read_text()
        assert "left running by a previous run" in log and "after it was taken over" in log
        # The engine loaded its model under the first server: no second preload is counted.
        assert 'pool_preload_total{outcome="success",pool_id="lp"} 0.0' in metrics
        assert [] == engines_running(engines)
        assert [] == engine_actors()
