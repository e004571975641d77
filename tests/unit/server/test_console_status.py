"""How the console names a pool's state from its replicas and drain flag."""

from __future__ import annotations

from llama_orch.pool.manager import PoolRuntime, Replica, ReplicaState
from llama_orch.server.console.status import pool_state
from tests.support.server import config_of, mock_pool


def pool_of(*states: ReplicaState, draining: bool = False) -> PoolRuntime:
    config = config_of(mock_pool(replicas=len(states))).pools[0]
    replicas = [Replica(config.id, f"r{i}", (0,), 1, state=state) for i, state in enumerate(states)]
    return PoolRuntime(config, replicas, (0,), simulated=True, draining=draining)


class TestPoolState:
    def test_states(self) -> None:
        """Draining wins; then any Ready replica; all still starting; otherwise Unready."""
        ready, starting, unready = ReplicaState.READY, ReplicaState.STARTING, ReplicaState.UNREADY
        assert "Draining" == pool_state(pool_of(ready, draining=True))
        assert "Ready" == pool_state(pool_of(ready, unready))
        assert "Starting" == pool_state(pool_of(starting, starting))
        assert "Unready" == pool_state(pool_of(starting, unready))
