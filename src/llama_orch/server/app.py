"""create_app(deps) -> Starlette. The lifespan starts and stops the pool manager, the task service
and the GPU sampler, then the supervisor that owns their loops; every request passes the
correlation, redaction and auth middleware."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from llama_orch.auth.policy import AuthPolicy
from llama_orch.config import Settings
from llama_orch.errors import OrchError
from llama_orch.observability.redaction import Redactor, secret_values
from llama_orch.pool.gpu_sampler import GpuSampler
from llama_orch.server import (
    artifacts_api,
    catalog_api,
    console,
    control_plane,
    data_plane,
    frontdoor,
    pools_api,
)
from llama_orch.server.deps import AppDeps
from llama_orch.server.errors import handle_orch_error
from llama_orch.server.frontdoor.refusals import handle_http_refusal, peer_refusal
from llama_orch.server.guards import RequestGuards
from llama_orch.server.middleware import AuthMiddleware, CorrelationMiddleware


def auth_policy_of(settings: Settings) -> AuthPolicy:
    return AuthPolicy(
        token=settings.auth_token,
        optional=settings.auth_optional,
        trust_proxy=settings.trust_proxy_auth,
    )


def redactor_of(settings: Settings) -> Redactor:
    """Redacts the configured secrets by value, and every secret-shaped string by pattern.

    Configured secrets include every config value under a secret-looking name, the entries
    of pools' ``provisioning.env`` among them: an engine that prints one (a log line quoted in
    a pool's last exit, its log) must not show it through health, status or the console."""
    upstream: dict[str, str] = dict(getattr(settings, "upstream_api_keys", {}))
    hf_token = settings.catalog_env.get("HF_TOKEN", "")
    return Redactor(
        (
            settings.auth_token or "",
            hf_token,
            *upstream.values(),
            *secret_values(settings.config.model_dump(mode="json")),
            *secret_values(dict(settings.catalog_env)),
        )
    )


#: Request headers a page on an allowed origin may send, and response headers it may read.
_CORS_REQUEST_HEADERS = (
    "Authorization",
    "Content-Type",
    "Accept",
    "Prefer",
    "If-None-Match",
    "Last-Event-ID",
    "X-Correlation-Id",
    "X-Priority",
    "X-Session-Id",
    "X-Deadline-Ms",
)
_CORS_RESPONSE_HEADERS = (
    "X-Correlation-Id",
    "X-Request-Id",
    "X-Task-Id",
    "X-Queue-Position",
    "X-Predicted-Start-Ms",
    "X-Pool-Id",
    "X-Budget-Tokens-Remaining",
    "X-Budget-Time-Remaining-Ms",
    "X-Budget-Cost-Remaining",
    "X-Backoff-Ms",
    "X-Should-Retry",
    "Retry-After",
    "Retry-After-Ms",
    "Preference-Applied",
    "Location",
    "ETag",
)


def cors_middleware(allowed_origins: list[str]) -> list[Middleware]:
    """CORS for the origins ``server.allowed_origins`` lists (none without them): a browser asks
    with a preflight before it sends JSON across origins, and reads an answer only when it
    names the origin. Inside the request guards (a foreign origin is refused before this) and
    outside auth (a preflight carries no token)."""
    if not allowed_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=[origin.rstrip("/").lower() for origin in allowed_origins],
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=_CORS_REQUEST_HEADERS,
            expose_headers=_CORS_RESPONSE_HEADERS,
        )
    ]


def create_app(
    deps: AppDeps,
    *,
    extra_middleware: list[Middleware] | None = None,
    gpu_sample_interval_s: float = 5.0,
    console_interval_s: float = 0.5,
    shutdown_timeout_s: float = 5.0,
) -> Starlette:
    cluster = deps.config.cluster
    sampler = GpuSampler.for_pools(
        deps.pools,
        deps.metrics,
        interval_s=gpu_sample_interval_s,
        supervisor=deps.supervisor,
        host_interval_s=cluster.inventory_interval_ms / 1000,
        host_deadline_s=cluster.inventory_deadline_ms / 1000,
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await deps.pools.start()
        await deps.service.start()
        await sampler.start()
        try:
            yield
        finally:
            await feed.aclose()
            await sampler.stop()
            await deps.service.stop(shutdown_timeout_s)
            await deps.pools.stop()
            await deps.supervisor.stop(shutdown_timeout_s)
            deps.artifacts.close()

    routes = [
        *data_plane.routes,
        *control_plane.routes,
        *catalog_api.routes,
        *artifacts_api.routes,
        *pools_api.routes,
        *frontdoor.routes,
        *console.routes,
    ]
    server = deps.settings.config.server
    redactor = redactor_of(deps.settings)
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(CorrelationMiddleware, redactor=redactor),
            Middleware(
                RequestGuards,
                loopback_bind=deps.settings.loopback_bind,
                allowed_hosts=server.allowed_hosts,
                allowed_origins=server.allowed_origins,
                body_timeout_s=server.connections.body_timeout_ms / 1000,
                routes=routes,
                peer_refusal=peer_refusal,
            ),
            *cors_middleware(server.allowed_origins),
            Middleware(
                AuthMiddleware, policy=auth_policy_of(deps.settings), peer_refusal=peer_refusal
            ),
            *(extra_middleware or []),
        ],
        exception_handlers={OrchError: handle_orch_error, HTTPException: handle_http_refusal},
        lifespan=lifespan,
    )
    # RequestGuards redirects trailing slashes itself, without repeating the Host header.
    app.router.redirect_slashes = False
    app.state.deps = deps
    feed = console.attach(app, deps, sampler, interval_s=console_interval_s, redactor=redactor)
    return app
