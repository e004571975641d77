"""KV warmth follows replica readiness: a replica that leaves Ready is warm for no session."""

from __future__ import annotations

from llama_orch.adapters.host import AdapterHost
from llama_orch.adapters.registry import build_adapter
from llama_orch.core.clock import ManualClock
from llama_orch.dispatch.dispatcher import Dispatcher
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.gpus import simulated_inventory
from llama_orch.pool.manager import PoolManager, ReplicaState
from tests.support.server import config_of, mock_pool


class TestWarmthFollowsReadiness:
    async def test_unready_replica_forgets_warm_sessions(self) -> None:
        """When a replica stops being Ready, sessions warm on it are cold again; others stay."""
        config = config_of(mock_pool(replicas=2))
        host = AdapterHost()
        metrics = Metrics()
        pools = PoolManager(
            config.pools,
            simulated_inventory(config.gpus.simulated or []),
            host,
            build_adapter,
            metrics,
            probe_interval_s=60,
        )
        dispatcher = Dispatcher(config, pools, host, metrics, clock=ManualClock())
        await pools.start()
        try:
            store = dispatcher.sessions
            on_r0, on_r1 = store.get_or_create("a", 0.0), store.get_or_create("b", 0.0)
            for session, replica in ((on_r0, "r0"), (on_r1, "r1")):
                store.mark_warm(session, ("p0", replica), 0.0)
                store.served(session, ("p0", replica), 0.0)
            pools.pools["p0"].replicas[0].state = ReplicaState.UNREADY
            pools.allocate_lease("p0", "r1")
            pools.release_lease("p0", "r1")  # any capacity change re-reads readiness
            assert (False, True) == (on_r0.kv_warmth, on_r1.kv_warmth)
        finally:
            await pools.stop()
