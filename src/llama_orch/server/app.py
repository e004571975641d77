"""create_app(deps) -> Starlette. The lifespan starts and stops the pool manager, the dispatcher
and the GPU sampler; every request passes the correlation, redaction and auth middleware."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from llama_orch.auth.policy import AuthPolicy
from llama_orch.config import Settings
from llama_orch.errors import ErrorKind, NotFound, OrchError
from llama_orch.observability.redaction import Redactor
from llama_orch.pool.gpu_sampler import GpuSampler
from llama_orch.server import control_plane, data_plane, pools_api
from llama_orch.server.deps import AppDeps
from llama_orch.server.errors import error_response, handle_orch_error
from llama_orch.server.middleware import AuthMiddleware, CorrelationMiddleware


async def _http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound("no such endpoint; see GET /openapi/data.yaml"))
    body = {"code": ErrorKind.INVALID_PARAMS.value, "message": str(exc.detail)}
    return Response(orjson.dumps(body), exc.status_code, exc.headers, media_type="application/json")


def auth_policy_of(settings: Settings) -> AuthPolicy:
    return AuthPolicy(
        token=settings.auth_token,
        optional=settings.auth_optional,
        trust_proxy=settings.trust_proxy_auth,
    )


def redactor_of(settings: Settings) -> Redactor:
    """Redacts the configured secrets by value, and every secret-shaped string by pattern."""
    upstream: dict[str, str] = dict(getattr(settings, "upstream_api_keys", {}))
    return Redactor((settings.auth_token or "", *upstream.values()))


def create_app(
    deps: AppDeps,
    *,
    extra_middleware: list[Middleware] | None = None,
    gpu_sample_interval_s: float = 5.0,
) -> Starlette:
    sampler = GpuSampler.for_pools(deps.pools, deps.metrics, interval_s=gpu_sample_interval_s)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await deps.pools.start()
        await deps.dispatcher.start()
        await sampler.start()
        try:
            yield
        finally:
            await sampler.stop()
            await deps.dispatcher.stop()
            await deps.pools.stop()

    app = Starlette(
        routes=[*data_plane.routes, *control_plane.routes, *pools_api.routes],
        middleware=[
            Middleware(CorrelationMiddleware, redactor=redactor_of(deps.settings)),
            Middleware(AuthMiddleware, policy=auth_policy_of(deps.settings)),
            *(extra_middleware or []),
        ],
        exception_handlers={OrchError: handle_orch_error, HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.state.deps = deps
    return app
