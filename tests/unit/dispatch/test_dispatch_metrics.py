"""Dispatcher metrics: queue_depth bound once per pool and engine_version, placement counted."""

from __future__ import annotations

from llama_orch.adapters.host import AdapterHost
from llama_orch.adapters.registry import build_adapter
from llama_orch.contracts.engine import GenerateRequest
from llama_orch.core.clock import ManualClock
from llama_orch.core.model import JobSpec
from llama_orch.dispatch.dispatcher import Dispatcher
from llama_orch.dispatch.tasks import Task
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.gpus import simulated_inventory
from llama_orch.pool.manager import PoolManager
from llama_orch.vocab import Engine, Priority
from tests.support.server import config_of


def dispatcher_for() -> tuple[Dispatcher, PoolManager, Metrics]:
    config = config_of()
    host, metrics = AdapterHost(), Metrics()
    inventory = simulated_inventory(config.gpus.simulated or [])
    pools = PoolManager(config.pools, inventory, host, build_adapter, metrics, probe_interval_s=60)
    return Dispatcher(config, pools, host, metrics, clock=ManualClock()), pools, metrics


def queued_task(task_id: str) -> Task:
    job = JobSpec(Priority.BATCH, Engine.MOCK, "m0", 512)
    return Task(
        id=task_id,
        session_id="s",
        pool_id="p0",
        engine=Engine.MOCK,
        model="m0",
        priority=Priority.BATCH,
        request=GenerateRequest(task_id=task_id, prompt="hi", max_tokens=4, model="m0"),
        admitted_at=0.0,
        deadline_at=60.0,
        expected_tokens=4,
        job=job,
    )


def depth_series(metrics: Metrics) -> dict[tuple[str, str], float]:
    return {
        (s.labels["engine_version"], s.labels["priority"]): s.value
        for family in metrics.registry.collect()
        if family.name == "queue_depth"
        for s in family.samples
    }


class TestQueueDepth:
    def test_enqueue_sets_the_pool_children(self) -> None:
        """An enqueued task shows in its class's depth; the other class reads 0."""
        dispatcher, _, metrics = dispatcher_for()
        dispatcher.enqueue(queued_task("t1"))
        expected = {("unknown", "batch"): 1.0, ("unknown", "interactive"): 0.0}
        assert expected == depth_series(metrics)

    async def test_a_new_engine_version_rebinds_and_drops_the_old_series(self) -> None:
        """After the pool's engine_version changes, only the new version's series remain."""
        dispatcher, pools, metrics = dispatcher_for()
        dispatcher.enqueue(queued_task("t1"))
        await pools.start()
        try:
            dispatcher.enqueue(queued_task("t2"))
            versions = {version for version, _ in depth_series(metrics)}
        finally:
            await pools.stop()
        assert {"mock-1.0"} == versions


class TestPlacementCounted:
    async def test_dispatch_decisions_are_counted(self) -> None:
        """A dispatch-stage decide is counted with its outcome and candidate count."""
        dispatcher, pools, metrics = dispatcher_for()
        await pools.start()
        try:
            task = queued_task("t1")
            dispatcher.enqueue(task)
            dispatcher._dispatch_ready(dispatcher.lanes["p0"])
            labels = {"outcome": "assigned", "pinned": "false", "fallback": "false"}
            assigned = metrics.registry.get_sample_value("placement_decisions_total", labels)
            version = task.decision.snapshot_version if task.decision else None
        finally:
            await dispatcher.stop()
            await pools.stop()
        assert (1.0, pools.snapshot_version) == (assigned, version)
