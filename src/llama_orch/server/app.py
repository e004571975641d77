"""create_app(deps) -> Starlette. The lifespan starts and stops the pool manager and dispatcher."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from llama_orch.errors import ErrorKind, NotFound, OrchError
from llama_orch.server import control_plane, data_plane
from llama_orch.server.deps import AppDeps
from llama_orch.server.errors import error_response, handle_orch_error
from llama_orch.server.middleware import CorrelationMiddleware


async def _http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound("no such endpoint; see GET /openapi/data.yaml"))
    body = {"code": ErrorKind.INVALID_PARAMS.value, "message": str(exc.detail)}
    return Response(orjson.dumps(body), exc.status_code, exc.headers, media_type="application/json")


def create_app(deps: AppDeps, *, extra_middleware: list[Middleware] | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await deps.pools.start()
        await deps.dispatcher.start()
        try:
            yield
        finally:
            await deps.dispatcher.stop()
            await deps.pools.stop()

    app = Starlette(
        routes=[*data_plane.routes, *control_plane.routes],
        middleware=[Middleware(CorrelationMiddleware), *(extra_middleware or [])],
        exception_handlers={OrchError: handle_orch_error, HTTPException: _http_exception},
        lifespan=lifespan,
    )
    app.state.deps = deps
    return app
