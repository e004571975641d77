"""A server whose pool runs on a cluster host: the host is lost mid-stream, the client sees one
retriable error, the queued task waits and is served by the replica re-placed on the other host;
health and capabilities say where each replica runs (simulated GPUs, fake llama-server)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from llama_orch.config import Config
from tests.support.cluster import HOSTS, LocalCluster, engines_running
from tests.support.launched import (
    LaunchedSetup,
    launched_setup,
    llama_task,
    process_of,
    wait_health,
)
from tests.support.server import running_server, sse_events

# The first test of the package also waits for the cluster to start (about 10-30 s).
pytestmark = [pytest.mark.cluster, pytest.mark.timeout(180)]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[LaunchedSetup]:
    with launched_setup(tmp_path) as s:
        yield s


def _cluster_config(setup: LaunchedSetup, cluster: LocalCluster, pool: dict[str, Any]) -> Config:
    base = setup.config().model_dump(mode="json", exclude_unset=True)
    base["pools"] = [pool]
    base["cluster"] = {"address": cluster.address, "placement_timeout_ms": 20_000}
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
            rest = await server.stream(second["task_id"])
            assert "end" == rest[-1][0]
            health = await wait_health(server, "lp", _on("gpu-b"))
            process = process_of(health)
            assert "node_lost" == process["exit_kind"]
            assert "node_lost (status -9) on host gpu-a" in process["last_exit"]
            assert 1 == health["restart_count"]
            metrics = (await server.client.get("/metrics")).text
            assert 'pool_restarts_total{pool_id="lp",reason="node_lost"} 1.0' in metrics
        assert [] == engines_running(tmp_path / "engines")
