"""``POST /v1/tasks`` with ``Accept: text/event-stream``: admit and stream in one response.

The admitted task's SSE frames follow at once on the same connection (one hop instead of
``202`` then ``GET /v1/tasks/{id}/stream``). The ``started`` frame carries the fields of the
``202`` body, and the same values travel as headers. A disconnect cancels the task, as it does
on the task stream.
"""

from __future__ import annotations

import orjson
from starlette.requests import Request

from llama_orch.dispatch.admission import Admitted
from llama_orch.server.data_plane import emitter_settings
from llama_orch.server.deps import AppDeps
from llama_orch.server.emitter import Emitter
from llama_orch.server.sse import Outcome, SseResponse, encode_frame


def wants_event_stream(request: Request) -> bool:
    return "text/event-stream" in request.headers.get("accept", "")


def admitted_stream(deps: AppDeps, admitted: Admitted, headers: dict[str, str]) -> SseResponse:
    task = admitted.task
    lane = deps.dispatcher.lanes[task.pool_id]
    started: dict[str, object] = {
        "queue_position": admitted.queue_position,
        "predicted_start_ms": admitted.predicted_start_ms,
        "backoff_ms": admitted.backoff_ms,
        "task_id": task.id,
        "pool_id": task.pool_id,
    }
    if task.correlation_id:
        started["correlation_id"] = task.correlation_id
    if lane.pool.simulated:
        started["simulated"] = True
    sse = deps.config.server.sse
    emitter = Emitter(
        task.stream,
        encode_frame("started", orjson.dumps(started)),
        emitter_settings(sse, lane.pool.config.sse),
        on_drop=deps.metrics.sse_backpressure_drops_total.labels(task.pool_id).inc,
    )

    def on_end(outcome: Outcome) -> None:
        task.subscribed = False
        if task.terminal:
            return
        if outcome is Outcome.STALL:
            deps.dispatcher.cancel(task.id, reason="stall")
        elif outcome is Outcome.DISCONNECT and sse.cancel_on_disconnect:
            deps.dispatcher.cancel(task.id, reason="disconnect")

    task.subscribed = True
    return SseResponse(
        emitter.chunks(),
        headers={
            **headers,
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            "X-Task-Id": task.id,
            "X-Queue-Position": str(admitted.queue_position),
            "X-Predicted-Start-Ms": str(admitted.predicted_start_ms),
        },
        on_end=on_end,
        stall_limit_s=sse.stall_limit_ms / 1000,
    )
