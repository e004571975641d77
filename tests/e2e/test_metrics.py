"""The metrics contract on a live server: a scrape after real traffic, against the lint file."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from tests.support.metrics_lint import lint as lint_scrape
from tests.support.metrics_lint import (
    load_contract,
    parse_scrape,
    promtool,
    promtool_problems,
    unwaived,
)
from tests.support.serve_process import serve_process
from tests.support.server import (
    SIMULATED_GPUS,
    RunningServer,
    config_of,
    mock_pool,
    running_server,
    task_body,
)

HANG = {"hang_after_token": 0}


async def wait_state(srv: RunningServer, task_id: str, state: str) -> None:
    for _ in range(500):
        task = srv.task(task_id)
        if task is not None and task.state.value == state:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"task {task_id} never reached {state}")


async def scrape_after_traffic() -> str:
    """Completes, queues, rejects and cancels tasks on two pools, then scrapes /metrics."""
    busy = mock_pool("busy", "m-busy", queue={"capacity": 1, "full_policy": "reject"}, mock=HANG)
    fast = mock_pool("fast", "m-fast", devices=[1])
    async with running_server(config_of(busy, fast)) as srv:
        for priority in ("interactive", "batch"):
            done = task_body("m-fast", max_tokens=4, priority=priority)
            assert 202 == (await srv.submit(done)).status_code
            await srv.stream(done["task_id"])
        running, queued = task_body("m-busy"), task_body("m-busy", priority="batch")
        assert 202 == (await srv.submit(running)).status_code
        await wait_state(srv, running["task_id"], "running")
        assert 202 == (await srv.submit(queued)).status_code
        assert 429 == (await srv.submit(task_body("m-busy"))).status_code
        for task in (queued, running):
            response = await srv.client.post(f"/v1/tasks/{task['task_id']}/cancel")
            assert 204 == response.status_code
        response = await srv.client.get("/metrics")
    assert 200 == response.status_code
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


@pytest.fixture(scope="module")
def scrape() -> str:
    return asyncio.run(scrape_after_traffic())


class TestMetricsContract:
    def test_scrape_matches_the_lint_file(self, scrape: str) -> None:
        """Every contract metric is present with its type, exact labels and budgets (7101/7102)."""
        assert [] == lint_scrape(load_contract(), scrape)

    def test_traffic_reached_the_counters(self, scrape: str) -> None:
        """The traffic shows up: completions, a rejection with its policy, and both cancels."""
        families = parse_scrape(scrape)
        rejected = {dict(s)["reason"] for s in families["tasks_rejected_total"].series}
        policies = {
            dict(s)["policy"] for s in families["admission_backpressure_events_total"].series
        }
        canceled = {dict(s)["reason"] for s in families["tasks_canceled_total"].series}
        priorities = {dict(s)["priority"] for s in families["latency_decode_ms"].series}
        assert ({"ADMISSION_REJECT"}, {"reject"}, {"client"}, {"interactive", "batch"}) == (
            rejected,
            policies,
            canceled,
            priorities,
        )

    def test_placement_and_adapter_series_are_emitted(self, scrape: str) -> None:
        """Admission and dispatch decisions are counted; adapter and KV series exist per pool."""
        families = parse_scrape(scrape)
        outcomes = {dict(s)["outcome"] for s in families["placement_decisions_total"].series}
        auto = 'placement_decisions_total{fallback="false",outcome="assigned",pinned="false"}'
        assigned = [
            line for line in scrape.splitlines() if line.startswith(auto) and line != f"{auto} 0.0"
        ]
        pools = {
            name: {dict(s)["pool_id"] for s in families[name].series}
            for name in ("adapter_retries_total", "adapter_breaker_trips_total")
        }
        kv_pools = {dict(s)["pool_id"] for s in families["kv_cache_usage_ratio"].series}
        assert {"assigned", "no_capacity"} == outcomes
        assert 1 == len(assigned)
        assert {"busy", "fast"} == pools["adapter_retries_total"] == kv_pools
        assert {"busy", "fast"} == pools["adapter_breaker_trips_total"]

    def test_gpu_gauges_are_labelled_simulated(self, scrape: str) -> None:
        """GPU gauges cover each replica's devices and the inventory is flagged simulated."""
        families = parse_scrape(scrape)
        devices = {
            (dict(s)["pool_id"], dict(s)["device"]) for s in families["vram_used_bytes"].series
        }
        assert {("busy", "0"), ("fast", "1")} == devices
        assert "gpu_inventory_simulated 1.0" in scrape.splitlines()

    def test_promtool_accepts_the_scrape(self, scrape: str) -> None:
        """promtool parses the scrape; its only lint findings are the waived contract names."""
        binary = promtool()
        if binary is None:
            pytest.skip(
                "PROMTOOL CHECK SKIPPED: promtool is not installed and apt-get is unavailable "
                "(install Debian's `prometheus` package, or run `make test` as root)"
            )
        code, problems = promtool_problems(binary, scrape)
        assert [] == unwaived(load_contract(), problems)
        assert code in (0, 3)  # 3: lint findings only, all of them waived above


class TestCatalogVerifications:
    def test_an_unverified_registration_stays_in_the_contract(self, tmp_path: Path) -> None:
        """A local file registered without a digest is counted as the catalog documents it,
        ``result="warn"``, and the scrape still passes the lint file."""
        model = tmp_path / "plain.gguf"
        model.write_bytes(b"GGUF" + bytes(64))
        config = {"gpus": SIMULATED_GPUS, "pools": [mock_pool()]}
        with (
            serve_process(config, tmp_path) as server,
            httpx.Client(base_url=server.url, timeout=10) as client,
        ):
            registered = client.post("/v1/catalog/models", json={"ref": f"file:{model}"})
            assert 201 == registered.status_code, registered.text
            assert "warn" == registered.json()["verification"]
            scrape = client.get("/metrics").text
        results = {
            dict(s)["result"] for s in parse_scrape(scrape)["catalog_verifications_total"].series
        }
        assert {"warn"} == results
        assert [] == lint_scrape(load_contract(), scrape, require_samples=False)
