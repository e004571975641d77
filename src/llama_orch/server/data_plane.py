"""Data plane (SPEC §6.2): tasks, their SSE streams, cancel, sessions."""

from __future__ import annotations

import uuid

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.config import PoolSseConfig, SseConfig
from llama_orch.contracts.api import AdmissionResponse, SessionInfo, StreamOptions, TaskRequest
from llama_orch.dispatch.tasks import Task, TaskState
from llama_orch.errors import Conflict, InvalidParams, NotFound
from llama_orch.observability.narration import narrate
from llama_orch.server.body import drain_body, json_body_limit, read_body
from llama_orch.server.deps import AppDeps, deps_of
from llama_orch.server.emitter import Emitter, EmitterSettings
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


async def create_task(request: Request) -> Response | SseResponse:
    deps = deps_of(request)
    task_request = await _read_task_request(request, deps)
    admitted = deps.admission.admit(
        task_request,
        correlation_id=correlation_id_of(request.scope),
        identity=request.scope.get("state", {}).get("identity"),
    )
    body = AdmissionResponse(
        task_id=task_request.task_id,
        queue_position=admitted.queue_position,
        predicted_start_ms=admitted.predicted_start_ms,
        backoff_ms=admitted.backoff_ms,
        pool_id=admitted.task.pool_id,
    )
    headers = {
        "Location": f"/v1/tasks/{task_request.task_id}/stream",
        **admitted.budget_headers,
    }
    # Imported here: the one-hop stream builds on this module's stream settings.
    from llama_orch.server.frontdoor import task_sse

    if task_sse.wants_event_stream(request):
        return task_sse.admitted_stream(deps, admitted, headers)
    return json_response(body.model_dump_json().encode(), 202, headers)


def _task(request: Request, deps: AppDeps) -> Task:
    task_id = _uuid_param(request, "task_id")
    task = deps.dispatcher.tasks.get(task_id)
    if task is None:
        raise NotFound(f"task {task_id} is unknown, or its transcript has expired")
    return task


async def stream_task(request: Request) -> SseResponse:
    deps = deps_of(request)
    # Retention is enforced on lookup too, not only when another task ends (D-TASK-01).
    deps.dispatcher.tasks.evict_expired(deps.dispatcher.now())
    task = _task(request, deps)
    options = _stream_options(request)
    if task.subscribed:
        raise Conflict(
            f"task {task.id} already has a live subscriber; one stream per task at a time"
        )
    sse = deps.config.server.sse
    headers = {
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
        **deps.dispatcher.budget_headers(task.session_id),
    }
    drops = deps.metrics.sse_backpressure_drops_total.labels(task.pool_id)
    emitter = Emitter(
        task.stream,
        _started_frame(task, deps),
        emitter_settings(sse, deps.dispatcher.lanes[task.pool_id].pool.config.sse, options),
        on_drop=drops.inc,
    )

    async def on_end(outcome: Outcome) -> None:
        task.subscribed = False
        if task.terminal:
            return
        if outcome is Outcome.STALL:
            deps.dispatcher.cancel(task.id, reason="stall")
        elif outcome is Outcome.DISCONNECT and sse.cancel_on_disconnect:
            deps.dispatcher.cancel(task.id, reason="disconnect")

    task.subscribed = True
    narrate(
        "server",
        "stream-start",
        task.pool_id,
        f"Opens the stream of task {task.id[:8]} ({task.state.value}).",
        **task.log_fields(),
        queue_position=deps.dispatcher.queue_position(task),
    )
    return SseResponse(
        emitter.chunks(),
        headers=headers,
        on_end=on_end,
        stall_limit_s=sse.stall_limit_ms / 1000,
    )


def _stream_options(request: Request) -> StreamOptions:
    try:
        return StreamOptions.model_validate(dict(request.query_params))
    except ValidationError as exc:
        allowed = ", ".join(StreamOptions.model_fields)
        raise InvalidParams(
            f"invalid stream query: {_validation_message(exc)} (allowed: {allowed})"
        ) from None


def emitter_settings(
    sse: SseConfig,
    pool: PoolSseConfig | None = None,
    request: StreamOptions | None = None,
) -> EmitterSettings:
    """The server's SSE settings with the pool's, then the request's micro-batch overrides."""
    microbatch, delay_ms, max_tokens = (
        sse.microbatch,
        sse.microbatch_max_delay_ms,
        sse.microbatch_max_tokens,
    )
    for layer in (pool, request):
        if layer is None:
            continue
        microbatch = microbatch if layer.microbatch is None else layer.microbatch
        delay_ms = layer.microbatch_max_delay_ms or delay_ms
        max_tokens = layer.microbatch_max_tokens or max_tokens
    return EmitterSettings(
        channel_cap=sse.channel_cap,
        microbatch=microbatch,
        max_delay_s=delay_ms / 1000,
        max_tokens=max_tokens,
        heartbeat_s=sse.heartbeat_ms / 1000,
    )


def _started_frame(task: Task, deps: AppDeps) -> bytes:
    """``started`` as the stream opens: the queue position and prediction as they stand now."""
    dispatcher = deps.dispatcher
    lane = dispatcher.lanes[task.pool_id]
    position = dispatcher.queue_position(task)
    queued = task.state is TaskState.QUEUED
    started: dict[str, object] = {
        "queue_position": position,
        "predicted_start_ms": (
            dispatcher.predicted_start_ms(lane, position, task.expected_tokens) if queued else 0
        ),
        "task_id": task.id,
        "pool_id": task.pool_id,
    }
    if task.correlation_id:
        started["correlation_id"] = task.correlation_id
    if task.engine_version:
        started["engine_version"] = task.engine_version
    if lane.pool.simulated:
        started["simulated"] = True
    return encode_frame("started", orjson.dumps(started))


#: A cancel has no body; at most this much of one is read (and ignored).
_CANCEL_BODY_LIMIT = 65_536


async def cancel_task(request: Request) -> Response:
    deps = deps_of(request)
    task = _task(request, deps)
    # The body first: a request that fails there is answered 400 and cancels nothing.
    await drain_body(request, _CANCEL_BODY_LIMIT)
    deps.dispatcher.cancel(task.id, reason="client")
    return Response(status_code=204)


async def get_session(request: Request) -> Response:
    deps = deps_of(request)
    session_id = _uuid_param(request, "session_id")
    dispatcher = deps.dispatcher
    now = dispatcher.now()
    session = dispatcher.sessions.get(session_id, now)
    if session is None:
        raise NotFound(f"session {session_id} is unknown or expired")
    left = session.remaining()
    info = SessionInfo(
        ttl_ms_remaining=dispatcher.sessions.ttl_remaining_ms(session, now),
        turns=session.turns,
        kv_bytes=session.kv_bytes,
        kv_warmth=session.kv_warmth,
        tokens_budget_remaining=left.tokens,
        time_budget_remaining_ms=left.time_ms,
        cost_budget_remaining=left.cost,
    )
    return json_response(info.model_dump_json(exclude_none=True).encode())


async def delete_session(request: Request) -> Response:
    deps = deps_of(request)
    deps.dispatcher.sessions.evict(_uuid_param(request, "session_id"))
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
