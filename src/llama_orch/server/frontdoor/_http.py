"""What both front doors share on the HTTP side: reading the body, the scheduling headers,
the response headers of an admitted request, and the two response shapes (streamed, buffered),
each racing the client's disconnect so a client that goes away cancels its task (streamed
answers are ``SseResponse``s of the answer's media type)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from llama_orch.contracts.api import INT64_MAX
from llama_orch.errors import InvalidParams, NotFound, OrchError
from llama_orch.server.body import json_body_limit, read_body
from llama_orch.server.data_plane import BUDGET_HEADER_NAMES, budget_headers
from llama_orch.server.deps import AppDeps
from llama_orch.server.frontdoor import _tasks
from llama_orch.server.frontdoor._tasks import Ticket
from llama_orch.server.middleware import correlation_id_of
from llama_orch.vocab import Priority

#: Milliseconds a request may wait in the queue before it fails, unless ``X-Deadline-Ms`` says.
DEFAULT_DEADLINE_MS = _tasks.DEFAULT_DEADLINE_MS


class BadField(InvalidParams):
    """A request field the front door refuses; ``param`` names it for the peer's error shape."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnknownModel(NotFound):
    param = "model"


async def read_json(request: Request, deps: AppDeps) -> dict[str, Any]:
    """The body as a JSON object, bounded as a task's is: any JSON escaping of a prompt within
    the prompt limit fits."""
    prompt_limit = deps.config.server.max_prompt_bytes
    body = await read_body(
        request,
        json_body_limit(prompt_limit),
        why=f"; prompts are limited to {prompt_limit} bytes (server.max_prompt_bytes)",
    )
    if not body:
        raise BadField("request body is empty; send a JSON object")
    try:
        parsed = orjson.loads(bytes(body))
    except orjson.JSONDecodeError as exc:
        raise BadField(f"request body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise BadField("request body must be a JSON object")
    return parsed


def peer_message(exc: OrchError) -> str:
    """An admission error's message for a front-door caller (``_tasks.for_peer``)."""
    return _tasks.for_peer(exc.kind, exc.message)


def priority_of(request: Request) -> Priority:
    raw = request.headers.get("x-priority", Priority.INTERACTIVE.value).strip().lower()
    try:
        return Priority(raw)
    except ValueError:
        allowed = ", ".join(p.value for p in Priority)
        raise BadField(
            f"X-Priority must be one of {allowed}, got {raw[:32]!r}", param="X-Priority"
        ) from None


def session_of(request: Request) -> uuid.UUID:
    """``X-Session-Id`` (a UUID), else a new session.

    OpenAI's ``user`` does not name one: applications tag every request of an end user with
    it, so a session built on it would gather them all and its turn limit would refuse them.
    """
    header = _tasks.SESSION_HEADER
    raw = request.headers.get(header)
    if raw is not None:
        try:
            return uuid.UUID(raw)
        except ValueError:
            raise BadField(f"{header} must be a UUID, got {raw[:64]!r}", param=header) from None
    return uuid.uuid4()


def deadline_of(request: Request) -> int:
    raw = request.headers.get("x-deadline-ms")
    if raw is None:
        return DEFAULT_DEADLINE_MS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 0 < value <= INT64_MAX:
        raise BadField(
            f"X-Deadline-Ms must be an integer from 1 to {INT64_MAX}, got {raw[:32]!r}",
            param="X-Deadline-Ms",
        )
    return value


def identity_of(request: Request) -> str | None:
    identity = request.scope.get("state", {}).get("identity")
    return identity if isinstance(identity, str) else None


def correlation_of(request: Request) -> str | None:
    return correlation_id_of(request.scope) or None


def ticket_headers(ticket: Ticket) -> dict[str, str]:
    return {
        "X-Task-Id": ticket.task_id,
        "X-Queue-Position": str(ticket.queue_position),
        "X-Predicted-Start-Ms": str(ticket.predicted_start_ms),
        "X-Pool-Id": ticket.pool_id,
        **ticket.budget_headers,
    }


class BufferedAnswer:
    """Wait for ``produce`` while listening for the client: a disconnect cancels both.

    The answer goes out after its task ended, so its ``X-Budget-*`` headers are read then: the
    task charged what it used, not the length admission reserved for it."""

    def __init__(
        self,
        produce: Callable[[], Awaitable[Response]],
        on_disconnect: Callable[[], None],
        *,
        deps: AppDeps,
        session_id: str,
    ) -> None:
        self._produce = produce
        self._on_disconnect = on_disconnect
        self._deps = deps
        self._session_id = session_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        producer = asyncio.ensure_future(self._produce())
        listener = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait({producer, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            listener.cancel()
            if not producer.done():
                producer.cancel()
                self._on_disconnect()
            await asyncio.wait({producer, listener})
        if producer.cancelled():
            return
        response = producer.result()
        headers = response.headers
        for name in BUDGET_HEADER_NAMES:
            if name in headers:
                del headers[name]
        headers.update(budget_headers(self._deps.service.budgets(self._session_id)))
        await response(scope, receive, send)


def answer_at_end(
    deps: AppDeps,
    ticket: Ticket,
    render: Callable[[_tasks.Finished | _tasks.Failed], Response],
) -> BufferedAnswer:
    """Answer with ``render`` of the task's end; a client that leaves first cancels the task
    (when ``server.sse.cancel_on_disconnect``)."""

    def on_disconnect() -> None:
        if deps.config.server.sse.cancel_on_disconnect:
            _tasks.cancel(deps, ticket, reason="disconnect")

    async def produce() -> Response:
        return render(await _tasks.outcome(deps, ticket))

    return BufferedAnswer(produce, on_disconnect, deps=deps, session_id=ticket.session_id)


def retry_headers(headers: dict[str, str], failed: _tasks.Failed, status: int) -> dict[str, str]:
    """``headers`` plus ``Retry-After`` (and OpenAI's ``retry-after-ms``) of a retriable end."""
    out = dict(headers)
    if failed.retry_after_ms is not None and status in (429, 503):
        out["Retry-After"] = str(max(1, -(-failed.retry_after_ms // 1000)))
        out["retry-after-ms"] = str(failed.retry_after_ms)
    return out


async def _disconnected(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
