"""Data plane: tasks, their SSE streams, cancel, sessions; every handler calls ``TaskService``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.contracts.api import AdmissionResponse, StreamOptions, TaskRequest
from llama_orch.errors import InvalidParams
from llama_orch.server.deps import AppDeps, deps_of
from llama_orch.server.emitter import Emitter
from llama_orch.server.middleware import correlation_id_of
from llama_orch.server.sse import Outcome, SseResponse, encode_frame

JSON = "application/json"


def json_response(
    body: bytes, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(body, status, headers, media_type=JSON)


def _uuid_param(request: Request, name: str) -> str:
    raw = request.path_params[name]
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise InvalidParams(f"{name} must be a UUID, got {raw[:64]!r}") from None


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False)[:5]:
        where = ".".join(str(p) for p in err["loc"]) or "body"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        parts.append(f"{where}: {message}")
    more = len(exc.errors()) - 5
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


async def _read_task_request(request: Request, deps: AppDeps) -> TaskRequest:
    limit = deps.config.server.max_prompt_bytes * 2 + 65_536
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise InvalidParams(
                f"request body exceeds {limit} bytes; prompts are limited to "
                f"{deps.config.server.max_prompt_bytes} bytes"
            )
    if not body:
        raise InvalidParams("request body is empty; send a JSON TaskRequest")
    try:
        return TaskRequest.model_validate_json(bytes(body), strict=True)
    except ValidationError as exc:
        raise InvalidParams(f"invalid TaskRequest: {_validation_message(exc)}") from None


async def create_task(request: Request) -> Response:
    deps = deps_of(request)
    task_request = await _read_task_request(request, deps)
    admitted = deps.service.admit(
        task_request,
        correlation_id=correlation_id_of(request.scope),
        identity=request.scope.get("state", {}).get("identity"),
    )
    body = AdmissionResponse(
        task_id=task_request.task_id,
        queue_position=admitted.queue_position,
        predicted_start_ms=admitted.predicted_start_ms,
        backoff_ms=0,
        pool_id=admitted.pool_id,
    )
    headers = {
        "Location": f"/v1/tasks/{task_request.task_id}/stream",
        **budget_headers(admitted.budgets),
    }
    return json_response(body.model_dump_json().encode(), 202, headers)


def budget_headers(budgets: Mapping[str, int | float]) -> dict[str, str]:
    """``X-Budget-*`` response headers for the session's enabled budgets."""
    # Floats are rounded to nano-units so the header never carries binary noise.
    return {
        _BUDGET_HEADERS[k]: str(round(v, 9)) if isinstance(v, float) else str(v)
        for k, v in budgets.items()
    }


_BUDGET_HEADERS = {
    "tokens_budget_remaining": "X-Budget-Tokens-Remaining",
    "time_budget_remaining_ms": "X-Budget-Time-Remaining-Ms",
    "cost_budget_remaining": "X-Budget-Cost-Remaining",
}


async def stream_task(request: Request) -> SseResponse:
    deps = deps_of(request)
    task_id = _uuid_param(request, "task_id")
    options = _stream_options(request)
    service = deps.service
    view = service.open_stream(task_id, options)
    headers = {
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        **budget_headers(view.budgets),
    }
    drops = deps.metrics.sse_backpressure_drops_total.labels(view.pool_id)
    emitter = Emitter(view.stream, encode_frame(*view.started), view.settings, on_drop=drops.inc)

    def on_end(outcome: Outcome) -> None:
        service.close_stream(view, outcome.value)

    return SseResponse(
        emitter.chunks(),
        headers=headers,
        on_end=on_end,
        stall_limit_s=view.settings.stall_limit_s,
    )


def _stream_options(request: Request) -> StreamOptions:
    try:
        return StreamOptions.model_validate(dict(request.query_params))
    except ValidationError as exc:
        allowed = ", ".join(StreamOptions.model_fields)
        raise InvalidParams(
            f"invalid stream query: {_validation_message(exc)} (allowed: {allowed})"
        ) from None


#: A cancel has no body; at most this much of one is read (and ignored).
_CANCEL_BODY_LIMIT = 65_536


async def cancel_task(request: Request) -> Response:
    deps = deps_of(request)
    deps.service.cancel(_uuid_param(request, "task_id"))
    # Read the request to its end before answering: an HTTP/2 server that answers first resets
    # the client's half-open stream, which clients (httpx among them) report as an error for a
    # cancel that was in fact served.
    seen = 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > _CANCEL_BODY_LIMIT:
            break
    return Response(status_code=204)


async def get_session(request: Request) -> Response:
    info = deps_of(request).service.session_info(_uuid_param(request, "session_id"))
    return json_response(info.model_dump_json(exclude_none=True).encode())


async def delete_session(request: Request) -> Response:
    deps_of(request).service.evict_session(_uuid_param(request, "session_id"))
    return Response(status_code=204)


routes = [
    Route("/v1/tasks", create_task, methods=["POST"]),
    Route("/v1/tasks/{task_id}/stream", stream_task, methods=["GET"]),
    Route("/v1/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
    Route("/v1/sessions/{session_id}", get_session, methods=["GET"]),
    Route("/v1/sessions/{session_id}", delete_session, methods=["DELETE"]),
]
