"""Data plane: tasks, their SSE streams, cancel, sessions; every handler calls ``TaskService``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.contracts.api import AdmissionResponse, StreamOptions, TaskRequest
from llama_orch.dispatch.service import StreamView
from llama_orch.errors import InvalidParams
from llama_orch.server.body import drain_body, json_body_limit, read_body
from llama_orch.server.deps import AppDeps, deps_of
from llama_orch.server.emitter import Emitter

if TYPE_CHECKING:
    from llama_orch.server.frontdoor._http import BufferedAnswer
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
    # The prompt's own limit applies to it decoded, in admission; the body may carry it escaped.
    prompt_limit = deps.config.server.max_prompt_bytes
    body = await read_body(
        request,
        json_body_limit(prompt_limit),
        why=f"; prompts are limited to {prompt_limit} bytes",
    )
    if not body:
        raise InvalidParams("request body is empty; send a JSON TaskRequest")
    try:
        return TaskRequest.model_validate_json(body, strict=True)
    except ValidationError as exc:
        raise InvalidParams(f"invalid TaskRequest: {_validation_message(exc)}") from None


async def create_task(request: Request) -> Response | SseResponse | BufferedAnswer:
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
    # Imported here: the one-hop stream builds on this module's stream settings.
    from llama_orch.server.frontdoor import task_sse, task_wait

    if task_sse.wants_event_stream(request):
        return task_sse.admitted_stream(deps, admitted, headers)
    if task_wait.wants_wait(request):
        return task_wait.admitted_wait(deps, admitted, headers)
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
BUDGET_HEADER_NAMES = tuple(_BUDGET_HEADERS.values())


async def stream_task(request: Request) -> SseResponse | Response:
    deps = deps_of(request)
    task_id = _uuid_param(request, "task_id")
    options = _stream_options(request)
    if request.method == "HEAD":
        # A HEAD answer has no body: subscribing would end at once, which reads as the client
        # leaving and cancels the task. Say what a GET would get without subscribing.
        budgets = deps.service.peek_stream(task_id)
        headers = {**_SSE_HEADERS, **budget_headers(budgets)}
        return Response(headers=headers, media_type="text/event-stream")
    view = deps.service.open_stream(task_id, options)
    return view_response(deps, view)


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def view_response(
    deps: AppDeps, view: StreamView, headers: Mapping[str, str] | None = None
) -> SseResponse:
    """The SSE response for one subscriber of a task; ``started`` may carry extra fields."""
    service = deps.service
    drops = deps.metrics.sse_backpressure_drops_total.labels(view.pool_id)
    emitter = Emitter(view.stream, encode_frame(*view.started), view.settings, on_drop=drops.inc)

    def on_end(outcome: Outcome) -> None:
        service.close_stream(view, outcome.value)

    return SseResponse(
        emitter.chunks(),
        headers={**(headers or {}), **_SSE_HEADERS, **budget_headers(view.budgets)},
        on_end=on_end,
        stall_limit_s=view.settings.stall_limit_s,
        pusher=emitter,
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
    task_id = _uuid_param(request, "task_id")
    # The body first: a request that fails there is answered 400 and cancels nothing. Reading
    # it to its end also keeps HTTP/2 clients happy: a server that answers first resets the
    # client's half-open stream, which clients report as an error for a served cancel.
    await drain_body(request, _CANCEL_BODY_LIMIT)
    deps.service.cancel(task_id)
    return Response(status_code=204)


async def get_session(request: Request) -> Response:
    info = deps_of(request).service.session_info(_uuid_param(request, "session_id"))
    return json_response(info.model_dump_json(exclude_none=True).encode())


async def delete_session(request: Request) -> Response:
    deps_of(request).service.evict_session(_uuid_param(request, "session_id"))
    return Response(status_code=204)


async def session(request: Request) -> Response:
    """One route for both methods, so a 405 lists both in ``Allow``."""
    if request.method == "DELETE":
        return await delete_session(request)
    return await get_session(request)


routes = [
    Route("/v1/tasks", create_task, methods=["POST"]),
    Route("/v1/tasks/{task_id}/stream", stream_task, methods=["GET"]),
    Route("/v1/tasks/{task_id}/cancel", cancel_task, methods=["POST"]),
    Route("/v1/sessions/{session_id}", session, methods=["GET", "DELETE"]),
]
