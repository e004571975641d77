"""Dispatch wired as the composition root wires it, on a manual clock and a scripted engine."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from llama_orch.adapters.host import AdapterHost
from llama_orch.config import Config
from llama_orch.contracts.api import TaskRequest
from llama_orch.core.clock import ManualClock
from llama_orch.dispatch.admission import Admission
from llama_orch.dispatch.dispatcher import Dispatcher
from llama_orch.dispatch.service import TaskService
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.gpus import simulated_inventory
from llama_orch.pool.manager import PoolManager
from llama_orch.supervisor import Supervisor
from tests.support.scripted_engine import ScriptedEngine
from tests.support.server import config_of, mock_pool, task_body


@dataclass
class Harness:
    config: Config
    clock: ManualClock
    engine: ScriptedEngine
    pools: PoolManager
    dispatcher: Dispatcher
    service: TaskService
    supervisor: Supervisor
    metrics: Metrics

    def admit(self, **body: Any) -> str:
        request = TaskRequest.model_validate(task_body(**body))
        return self.service.admit(request).task_id

    async def settle(self, rounds: int = 8) -> None:
        """Let every runner and loop take the steps already due (no time passes)."""
        for _ in range(rounds):
            await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def harness(
    slots: int = 2, top: dict[str, Any] | None = None, **pool: Any
) -> AsyncIterator[Harness]:
    """``pool`` merges into the mock pool's config, ``top`` into the whole config's."""
    config = config_of(mock_pool(slots=slots, **pool), **(top or {}))
    clock = ManualClock(1000.0)
    metrics = Metrics()
    supervisor = Supervisor(metrics)
    host = AdapterHost(metrics=metrics)
    engine = ScriptedEngine(slots)
    pools = PoolManager(
        config.pools,
        simulated_inventory(config.gpus.simulated or []),
        host,
        lambda _cfg, _index: engine,
        metrics,
        probe_interval_s=3600,
        clock=clock.now,
        supervisor=supervisor,
    )
    dispatcher = Dispatcher(config, pools, host, metrics, clock=clock, supervisor=supervisor)
    service = TaskService(config, dispatcher, Admission(config, pools, dispatcher, metrics))
    await pools.start()
    await service.start()
    try:
        yield Harness(config, clock, engine, pools, dispatcher, service, supervisor, metrics)
    finally:
        await service.stop(1.0)
        await pools.stop()
        await supervisor.stop(1.0)
