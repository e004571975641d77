"""``POST /v1/tasks`` with ``Prefer: wait``: admit, wait for the task's end, answer its outcome.

Without the preference the task API answers ``202`` at once (the default never changes). With
it, the response is ``200`` once the task ended: the ``end`` frame's fields, the task's ids and
admission values, the generated ``text`` of a completion and the ``result`` of an embedding or
rerank task; a task that failed answers its error envelope with the error's status. A
disconnect while waiting cancels the task, as leaving a stream does.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from llama_orch.dispatch.service import Admitted
from llama_orch.errors import ErrorKind
from llama_orch.server.deps import AppDeps
from llama_orch.server.errors import STATUS
from llama_orch.server.frontdoor._http import BufferedAnswer

JSON = "application/json"


def wants_wait(request: Request) -> bool:
    """``Prefer: wait`` (RFC 7240 style; a ``wait=<seconds>`` value is read the same way)."""
    prefer = request.headers.get("prefer", "")
    return any(
        part.strip().lower().split("=", 1)[0].strip() == "wait"
        for item in prefer.split(",")
        for part in item.split(";")[:1]
    )


def admitted_wait(deps: AppDeps, admitted: Admitted, headers: dict[str, str]) -> BufferedAnswer:
    stream = deps.service.follow(admitted.task_id)
    headers = {
        **headers,
        "X-Task-Id": admitted.task_id,
        "X-Queue-Position": str(admitted.queue_position),
        "X-Predicted-Start-Ms": str(admitted.predicted_start_ms),
        "Preference-Applied": "wait",
    }

    def on_disconnect() -> None:
        if deps.config.server.sse.cancel_on_disconnect and not stream.closed:
            deps.service.cancel(admitted.task_id, reason="disconnect")

    async def produce() -> Response:
        entries = stream.entries
        index = 0
        texts: list[str] = []
        while True:
            await stream.wait(index)
            end = len(entries)
            while index < end:
                entry = entries[index]
                index += 1
                if type(entry) is str:
                    texts.append(entry)
                    continue
                event, data = entry  # type: ignore[str-unpack]
                if event == "end":
                    return _done(admitted, orjson.loads(data), texts, headers)
                if event == "error":
                    return _failed(orjson.loads(data), headers)

    return BufferedAnswer(produce, on_disconnect, deps=deps, session_id=admitted.session_id)


def _done(
    admitted: Admitted, end: dict[str, Any], texts: list[str], headers: dict[str, str]
) -> Response:
    body: dict[str, Any] = {
        "task_id": admitted.task_id,
        "pool_id": admitted.pool_id,
        "queue_position": admitted.queue_position,
        "predicted_start_ms": admitted.predicted_start_ms,
        "state": "canceled" if end.get("canceled") else "done",
        **end,
    }
    if "result" not in body:
        body["text"] = "".join(texts)
    return Response(orjson.dumps(body), 200, headers, media_type=JSON)


def _failed(envelope: dict[str, Any], headers: dict[str, str]) -> Response:
    try:
        status = STATUS.get(ErrorKind(str(envelope.get("code"))), 500)
    except ValueError:
        status = 500
    failed = dict(headers)
    retry_ms = envelope.get("retry_after_ms")
    if isinstance(retry_ms, int) and status in (429, 503):
        failed["Retry-After"] = str(max(1, -(-retry_ms // 1000)))
    return Response(orjson.dumps(envelope), status, failed, media_type=JSON)
