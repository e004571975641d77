"""Control plane: capabilities, pool health, metrics and the served OpenAPI documents."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.contracts.api import (
    API_VERSION,
    Capabilities,
    EngineCapability,
    PoolCapability,
    PoolHealth,
)
from llama_orch.contracts.openapi import render_openapi
from llama_orch.errors import NotFound
from llama_orch.observability.metrics import CONTENT_TYPE
from llama_orch.pool.manager import UNKNOWN_CTX, PoolRuntime, ReplicaState
from llama_orch.server.deps import AppDeps, deps_of
from llama_orch.vocab import Engine


def _ctx(pool: PoolRuntime) -> int:
    ctx = pool.ctx_max
    return ctx if ctx != UNKNOWN_CTX else 0


def capabilities_of(deps: AppDeps) -> Capabilities:
    pools = list(deps.pools.pools.values())
    engines: dict[Engine, list[PoolRuntime]] = {}
    for pool in pools:
        engines.setdefault(pool.config.engine, []).append(pool)
    engine_caps = []
    for engine, members in sorted(engines.items(), key=lambda kv: kv[0].value):
        rate_limits = {
            f"{p.id}.{klass.name.value}": klass.rate_limit_rps
            for p in members
            for klass in p.config.admission.priorities
            if klass.rate_limit_rps
        }
        engine_caps.append(
            EngineCapability(
                engine=engine,
                ctx_max=max(_ctx(p) for p in members),
                concurrency=sum(p.slots_total for p in members),
                engine_versions=sorted({p.engine_version for p in members if p.engine_version}),
                rate_limits=rate_limits,
                features={
                    "streaming": True,
                    "simulated": any(p.simulated for p in members),
                    "placement_overrides": deps.config.server.allow_placement_overrides,
                    # An external API's GPUs are not visible here: the operator vouches for them.
                    **({"gpu_backing": "operator-claimed"} if engine is Engine.OPENAI else {}),
                },
            )
        )
    return Capabilities(
        api_version=API_VERSION,
        engines=engine_caps,
        pools=[
            PoolCapability(
                pool_id=p.id,
                engine=p.config.engine,
                engine_version=p.engine_version,
                model_id=p.config.model,
                ctx_max=_ctx(p),
                slots_total=p.slots_total,
                ready=p.ready,
                draining=p.draining,
                device_mask=list(p.devices),
                simulated=p.simulated,
            )
            for p in pools
        ],
        simulated=any(p.simulated for p in pools),
    )


async def capabilities(request: Request) -> Response:
    body = capabilities_of(deps_of(request)).model_dump_json().encode()
    return Response(body, media_type="application/json")


async def pool_health(request: Request) -> Response:
    deps = deps_of(request)
    pool_id = request.path_params["pool_id"]
    pool = deps.pools.pools.get(pool_id)
    if pool is None:
        raise NotFound(f"pool {pool_id!r} is not configured; see GET /v1/capabilities")
    lane = deps.dispatcher.lanes[pool_id]
    health = PoolHealth(
        live=any(r.state is not ReplicaState.STARTING for r in pool.replicas),
        ready=pool.ready,
        draining=pool.draining,
        metrics={
            "queue_depth": len(lane.queue),
            "replicas": [
                {
                    "replica_id": r.replica_id,
                    "state": r.state.value,
                    "active": r.active,
                    "slots_total": r.slots_total,
                    "gates": {
                        "model_present": r.gates.model_present,
                        "engine_ensured": r.gates.engine_ensured,
                        "healthy": r.gates.healthy,
                    },
                    "last_error": r.last_error,
                }
                for r in pool.replicas
            ],
        },
        last_error=pool.last_error,
        engine_version=pool.engine_version,
        model_id=pool.config.model,
        slots_total=pool.slots_total,
        slots_free=pool.slots_total - pool.active_leases,
        active_leases=pool.active_leases,
        simulated=pool.simulated,
    )
    return Response(health.model_dump_json().encode(), media_type="application/json")


async def metrics(request: Request) -> Response:
    return Response(deps_of(request).metrics.render(), media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    plane = request.path_params["plane"]
    if plane not in ("data", "control"):
        raise NotFound(f"no OpenAPI document {plane!r}; try data.yaml or control.yaml")
    return Response(render_openapi(plane), media_type="application/yaml")


routes = [
    Route("/v1/capabilities", capabilities, methods=["GET"]),
    Route("/v1/pools/{pool_id}/health", pool_health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi/{plane}.yaml", openapi, methods=["GET"]),
]
