"""Admission passes pools that serve another engine or model as identity snapshots; the
decision and its log must be exactly what full snapshots give."""

from __future__ import annotations

from dataclasses import replace

import pytest

from llama_orch.adapters.host import AdapterHost
from llama_orch.adapters.registry import build_adapter
from llama_orch.core.clock import ManualClock
from llama_orch.core.model import JobSpec, PlacementInput, Stage
from llama_orch.core.placement import decide
from llama_orch.dispatch.dispatcher import Dispatcher
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.gpus import simulated_inventory
from llama_orch.pool.manager import PoolManager, ReplicaState
from llama_orch.vocab import Engine, Priority
from tests.support.server import config_of, mock_pool

POOLS = [
    mock_pool("a", "m0", slots=2),
    mock_pool("b", "m0", replicas=2),
    mock_pool("c", "m1"),
    mock_pool("d", "m2", ctx=1024),
]


@pytest.mark.parametrize("model", ["m0", "m1", "m2", "unknown"])
@pytest.mark.parametrize("unready", [(), ("a",), ("a", "b"), ("c", "d")])
async def test_identity_snapshots_decide_the_same(model: str, unready: tuple[str, ...]) -> None:
    config = config_of(*POOLS)
    host, metrics = AdapterHost(), Metrics()
    inventory = simulated_inventory(config.gpus.simulated or [])
    pools = PoolManager(config.pools, inventory, host, build_adapter, metrics, probe_interval_s=60)
    dispatcher = Dispatcher(config, pools, host, metrics, clock=ManualClock())
    await pools.start()
    try:
        # Build every identity snapshot while all pools are Ready and idle...
        job = JobSpec(Priority.INTERACTIVE, Engine.MOCK, "none-of-them", required_ctx=2048)
        dispatcher.snapshots(job)
        # ...then change the live state they no longer reflect.
        for pool_id in unready:
            for replica in pools.pools[pool_id].replicas:
                replica.state = ReplicaState.UNREADY
        pools.allocate_lease("b", "r1")
        job = replace(job, model_id=model)
        quick = dispatcher.placement_input(job, 0.0)
        full = PlacementInput(
            dispatcher.snapshots(), job, 0.0, Stage.ADMISSION, quick.snapshot_version
        )
        assert [p.id for p in full.pools] == [p.id for p in quick.pools]
        assert decide(full) == decide(quick)
        served = [p for p in quick.pools if p.model_id == model]
        assert all(p == f for p, f in zip(quick.pools, full.pools, strict=True) if p in served)
    finally:
        await pools.stop()
