"""external mode: the engine is already running at ``endpoint``; nothing to prepare."""

from __future__ import annotations

from llama_orch.config import PoolConfig
from llama_orch.provisioners.engine._context import ProvisionContext
from llama_orch.provisioners.engine._types import Plan, PlanStep, PreparedEngine


class ExternalProvider:
    mode = "external"

    def __init__(self, ctx: ProvisionContext, engine: str) -> None:
        self.ctx = ctx
        self.engine = engine

    def plan(self, pool: PoolConfig) -> Plan:
        step = PlanStep("attach", f"to the running engine at {pool.endpoint}")
        return Plan(pool.id, self.engine, self.mode, (step,))

    async def ensure(self, pool: PoolConfig) -> PreparedEngine:
        return PreparedEngine(
            engine=self.engine,
            engine_version=pool.engine_version or "external",
            provisioning_mode=self.mode,
            simulated=self.ctx.simulated,
        )
