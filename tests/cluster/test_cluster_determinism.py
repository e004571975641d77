"""The determinism corpus on a pool whose two replicas run on two cluster hosts: every case,
sent to both replicas at once, streams the same bytes on gpu-a as on gpu-b (the fake
llama-server launched through the Ray launcher on each host, simulated GPUs)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.test_cluster_server import _cluster_config
from tests.determinism.test_replay import CORPUS
from tests.support.cluster import LocalCluster, engines_running
from tests.support.launched import LaunchedSetup, launched_setup, llama_task, wait_health
from tests.support.server import RunningServer, running_server, sse_events

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(300)]

#: Tries per case to have its two copies placed on different replicas (each takes the one
#: free slot of a replica; a copy may find the first one already finished).
TRIES = 5


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[LaunchedSetup]:
    with launched_setup(tmp_path) as s:
        yield s


def _task(setup: LaunchedSetup, case: dict[str, Any]) -> dict[str, Any]:
    task = llama_task(
        setup.model,
        prompt=case["prompt"],
        seed=case["seed"],
        max_tokens=case["max_tokens"],
        determinism="strict",
    )
    if "sampling" in case:
        task["sampling"] = case["sampling"]
    return task


async def _text(server: RunningServer, task_id: str) -> str:
    texts = []
    async for event, data in sse_events(server.client, task_id):
        assert event != "error", data
        if event == "token":
            texts.append(data["t"])
    return "".join(texts)


async def _on_both(
    server: RunningServer, setup: LaunchedSetup, case: dict[str, Any]
) -> dict[str, str]:
    """replica id -> the case's text there, from two copies sent at once."""
    for _ in range(TRIES):
        tasks = [_task(setup, case), _task(setup, case)]
        for task in tasks:
            assert 202 == (await server.submit(task)).status_code
        texts = await asyncio.gather(*(_text(server, t["task_id"]) for t in tasks))
        replicas = [getattr(server.task(t["task_id"]), "replica_id", None) for t in tasks]
        if len(set(replicas)) == 2:
            return {str(r): text for r, text in zip(replicas, texts, strict=True)}
    raise AssertionError(f"seed {case['seed']}: both copies ran on one replica {TRIES} times")


class TestDeterminismAcrossHosts:
    async def test_the_corpus_streams_the_same_bytes_on_two_hosts(
        self, cluster: LocalCluster, setup: LaunchedSetup, tmp_path: Path
    ) -> None:
        pool = setup.pool(
            slots=1,
            replicas=2,
            devices=[1],
            hosts=["gpu-a", "gpu-b"],
            env={"FAKE_ENGINE_TOKENS_PER_S": "400"},
        )
        async with running_server(_cluster_config(setup, cluster, pool)) as server:

            def on_two_hosts(health: dict[str, Any]) -> bool:
                replicas = health["metrics"]["replicas"]
                hosts = [(r["process"] or {}).get("host") for r in replicas]
                return all(r["state"] == "ready" for r in replicas) and hosts == ["gpu-a", "gpu-b"]

            await wait_health(server, "lp", on_two_hosts, timeout_s=90)
            differences = []
            for case in CORPUS:
                texts = await _on_both(server, setup, case)
                assert texts["r0"], f"seed {case['seed']} streamed nothing"
                if texts["r0"] != texts["r1"]:
                    differences.append(f"seed {case['seed']}: {texts['r0']!r} != {texts['r1']!r}")
            assert [] == differences, "\n".join(differences[:10])
        assert [] == engines_running(tmp_path / "models")
