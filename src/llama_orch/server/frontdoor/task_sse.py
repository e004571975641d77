"""``POST /v1/tasks`` with ``Accept: text/event-stream``: admit and stream in one response.

The admitted task's SSE frames follow at once on the same connection (one hop instead of
``202`` then ``GET /v1/tasks/{id}/stream``). The ``started`` frame carries the fields of the
``202`` body, and the same values travel as headers. A disconnect cancels the task, as it does
on the task stream.
"""

from __future__ import annotations

import dataclasses

import orjson
from starlette.requests import Request

from llama_orch.dispatch.service import Admitted
from llama_orch.server.deps import AppDeps
from llama_orch.server.sse import SseResponse


def wants_event_stream(request: Request) -> bool:
    """``Accept`` names ``text/event-stream`` (any case) without refusing it with ``q=0``."""
    for media_range in request.headers.get("accept", "").split(","):
        media_type, *params = (part.strip().lower() for part in media_range.split(";"))
        if media_type == "text/event-stream":
            return not any(_is_zero_q(param) for param in params)
    return False


def _is_zero_q(param: str) -> bool:
    name, _, value = param.partition("=")
    if name.strip() != "q":
        return False
    try:
        return float(value) == 0
    except ValueError:
        return False


def admitted_stream(deps: AppDeps, admitted: Admitted, headers: dict[str, str]) -> SseResponse:
    from llama_orch.server.data_plane import view_response

    view = deps.service.open_stream(admitted.task_id)
    event, data = view.started
    started = orjson.loads(data)
    # The 202 body's fields, as admission gave them (the stream opened in the same instant).
    started.update(
        queue_position=admitted.queue_position,
        predicted_start_ms=admitted.predicted_start_ms,
        backoff_ms=0,
    )
    view = dataclasses.replace(view, started=(event, orjson.dumps(started)))
    return view_response(
        deps,
        view,
        {
            **headers,
            "X-Task-Id": admitted.task_id,
            "X-Queue-Position": str(admitted.queue_position),
            "X-Predicted-Start-Ms": str(admitted.predicted_start_ms),
        },
    )
