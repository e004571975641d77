"""Control plane: capabilities (``server.capabilities``), pool health, metrics and the served
OpenAPI documents."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.contracts.api import PoolHealth
from llama_orch.contracts.openapi import PLANES, render_openapi
from llama_orch.errors import NotFound
from llama_orch.observability.metrics import CONTENT_TYPE
from llama_orch.pool.manager import ReplicaState
from llama_orch.server.capabilities import capabilities_of
from llama_orch.server.deps import deps_of
from llama_orch.server.pools_api import launched_health


async def capabilities(request: Request) -> Response:
    deps = deps_of(request)
    caps = capabilities_of(
        deps.pools,
        deps.host,
        placement_overrides=deps.config.server.allow_placement_overrides,
    )
    body = caps.model_dump_json().encode()
    return Response(body, media_type="application/json")


async def pool_health(request: Request) -> Response:
    deps = deps_of(request)
    pool_id = request.path_params["pool_id"]
    pool = deps.pools.pools.get(pool_id)
    if pool is None:
        raise NotFound(f"pool {pool_id!r} is not configured; see GET /v1/capabilities")
    status = deps.service.pool_status(pool_id)
    snapshot = deps.pools.snapshot(pool_id)
    health = PoolHealth(
        live=any(r.state is not ReplicaState.STARTING for r in pool.replicas),
        ready=pool.ready,
        draining=pool.draining,
        metrics={
            "queue_depth": status.queue_depth,
            "device_mask": list(pool.devices),
            "vram_total_bytes": snapshot.vram_total_bytes,
            "vram_free_bytes": snapshot.vram_free_bytes,
            "replicas": [
                {
                    "replica_id": r.replica_id,
                    "host": r.process.host if r.process else None,
                    "state": r.state.value,
                    "active": r.active,
                    "slots_total": r.slots_total,
                    "gates": {
                        "model_present": r.gates.model_present,
                        "engine_ensured": r.gates.engine_ensured,
                        "healthy": r.gates.healthy,
                    },
                    "last_error": r.last_error,
                    "stale": r.state is ReplicaState.READY and not deps.pools.fresh(r),
                    "process": r.process.as_dict() if r.process else None,
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
        snapshot_version=deps.pools.snapshot_version,
        **launched_health(deps.pools, pool_id),
    )
    return Response(health.model_dump_json().encode(), media_type="application/json")


async def metrics(request: Request) -> Response:
    return Response(deps_of(request).metrics.render(), media_type=CONTENT_TYPE)


async def openapi(request: Request) -> Response:
    plane = request.path_params["plane"]
    if plane not in PLANES:
        raise NotFound(f"no OpenAPI document {plane!r}; try data.yaml, control.yaml or openai.yaml")
    return Response(render_openapi(plane), media_type="application/yaml")


routes = [
    Route("/v1/capabilities", capabilities, methods=["GET"]),
    Route("/v1/pools/{pool_id}/health", pool_health, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
    Route("/openapi/{plane}.yaml", openapi, methods=["GET"]),
]
