"""OpenAI-compatible front door: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Each request is admitted as a task (same queues, placement, budgets and watchdog as
``POST /v1/tasks``) and its transcript is written back in OpenAI's shapes in the same response.
Errors use OpenAI's body (``{"error": {message, type, param, code}}``) and statuses, so the
official SDK raises its usual exceptions; a full queue is a 429 with ``Retry-After`` and
``retry-after-ms``, which the SDK's retry loop honours.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.contracts.api import INT32_MAX, INT64_MAX
from llama_orch.errors import ErrorKind, OrchError
from llama_orch.server.deps import AppDeps, deps_of
from llama_orch.server.errors import KEPT_HEADERS, STATUS, render_error
from llama_orch.server.frontdoor import _fields as f
from llama_orch.server.frontdoor import _tasks
from llama_orch.server.frontdoor._http import (
    BadField,
    BufferedAnswer,
    UnknownModel,
    correlation_of,
    deadline_of,
    identity_of,
    peer_message,
    priority_of,
    read_json,
    session_of,
    ticket_headers,
)
from llama_orch.server.pushing import TranscriptPusher
from llama_orch.server.sse import Outcome, SseResponse

JSON = "application/json"
#: ``max_tokens`` when the request sets none: chat answers, and the legacy route's own default.
DEFAULT_CHAT_MAX_TOKENS = 1024
DEFAULT_COMPLETION_MAX_TOKENS = 16
#: Seconds between ``: queue-position`` comments while a streamed request waits.
QUEUE_COMMENT_EVERY_S = 1.0
_CREATED = int(time.time())

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    429: "rate_limit_error",
    499: "canceled",
}

# Known fields that change nothing at these values; any other value is refused by name.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (1, None),
    "presence_penalty": (0, 0.0, None),
    "frequency_penalty": (0, 0.0, None),
    "logit_bias": (None, {}),
    "tools": (None, []),
    "tool_choice": (None, "none", "auto"),
    "functions": (None, []),
    "function_call": (None, "none", "auto"),
    "response_format": (None, {"type": "text"}),
    "modalities": (None, ["text"]),
    "audio": (None,),
    "prediction": (None,),
    "web_search_options": (None,),
    "reasoning_effort": (None,),
    "verbosity": (None,),
}
_CHAT_NEUTRAL = {**_NEUTRAL, "logprobs": (False, None), "top_logprobs": (None, 0)}
_COMPLETION_NEUTRAL = {
    **_NEUTRAL,
    "logprobs": (None, 0),
    "echo": (False, None),
    "suffix": (None, ""),
    "best_of": (1, None),
}
# Accepted and ignored: they do not change the output.
_IGNORED = frozenset(
    {
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "parallel_tool_calls",
    }
)
_SAMPLING = frozenset(
    {"model", "stream", "stream_options", "max_tokens", "seed", "stop", "temperature", "top_p"}
)
_CHAT_KNOWN = _SAMPLING | _IGNORED | set(_CHAT_NEUTRAL) | {"messages", "max_completion_tokens"}
_COMPLETION_KNOWN = _SAMPLING | _IGNORED | set(_COMPLETION_NEUTRAL) | {"prompt"}
# Engine extras clients pass with ``extra_body``; mapped where the engines take them. The
# repetition penalty goes by vLLM's and TGI's name and by llama.cpp's.
_EXTRAS = frozenset({"top_k", "repetition_penalty", "repeat_penalty"})


def error_body(message: str, kind: str, param: str | None, code: str | None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": param, "code": code}})


def openai_error(exc: OrchError, *, status: int | None = None) -> Response:
    """The task API's status and headers (retry advice, ``WWW-Authenticate``), with OpenAI's
    error body; ``status`` as ``render_error`` takes it."""
    rendered = render_error(exc, status=status)
    status = rendered.status
    kept = {k: v for k, v in rendered.headers.items() if k.lower() in KEPT_HEADERS}
    if exc.retry_after_ms is not None and status in (429, 503):
        kept["retry-after-ms"] = str(exc.retry_after_ms)
    if status == 429 and not exc.retriable:
        # A spent session budget does not come back by retrying soon.
        kept["x-should-retry"] = "false"
    param = getattr(exc, "param", None)
    code = "model_not_found" if isinstance(exc, UnknownModel) else exc.kind.value.lower()
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    message = peer_message(exc)
    return Response(error_body(message, kind, param, code), status, kept, media_type=JSON)


@dataclass(frozen=True, slots=True)
class _Call:
    chat: bool
    stream: bool
    include_usage: bool
    submission: _tasks.Submission


def _parse(request: Request, deps: AppDeps, body: dict[str, Any], *, chat: bool) -> _Call:
    f.refuse_unknown(body, (_CHAT_KNOWN if chat else _COMPLETION_KNOWN) | _EXTRAS)
    f.refuse_unless_default(body, _CHAT_NEUTRAL if chat else _COMPLETION_NEUTRAL)
    name = f.string(body, "model", required=True) or ""
    model = _tasks.find_model(deps, name)
    if model is None:
        raise UnknownModel(
            f"the model {name!r} does not exist on this server; GET /v1/models lists "
            "the served ones"
        )
    stream = f.boolean(body, "stream", False)
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise BadField("stream_options must be an object", param="stream_options")
    if options is not None and not stream:
        raise BadField("stream_options is only allowed with stream: true", param="stream_options")
    include_usage = f.boolean(options or {}, "include_usage", False, prefix="stream_options.")
    messages = f.messages(body) if chat else None
    prompt = None if chat else _prompt(body)
    most = INT32_MAX
    # Both are checked; max_completion_tokens, the newer name, wins when both are sent.
    legacy = f.integer(body, "max_tokens", low=1, high=most)
    max_tokens = f.integer(body, "max_completion_tokens", low=1, high=most) if chat else None
    length_field = "max_completion_tokens"
    if max_tokens is None:
        max_tokens, length_field = legacy, "max_tokens"
    submission = _tasks.Submission(
        model=model,
        prompt=prompt,
        messages=messages,
        max_tokens=max_tokens,
        priority=priority_of(request),
        session_id=session_of(request),
        deadline_ms=deadline_of(request),
        seed=f.integer(body, "seed", low=-(2**63), high=INT64_MAX),
        temperature=f.number(body, "temperature", low=0, high=2),
        top_p=f.number(body, "top_p", low=0, high=1, low_open=True),
        top_k=f.integer(body, "top_k", low=0),
        repeat_penalty=_repeat_penalty(body),
        stop=f.stops(body, "stop", most=4),
        length_field=length_field,
    )
    return _Call(chat, stream, include_usage, submission)


def _repeat_penalty(body: dict[str, Any]) -> float | None:
    """``repetition_penalty`` or ``repeat_penalty``, the same setting under two engines' names;
    both at different values is a contradiction to refuse, not to settle."""
    found = {
        name: f.number(body, name, low=0, high=None, low_open=True)
        for name in ("repetition_penalty", "repeat_penalty")
    }
    values = {value for value in found.values() if value is not None}
    if len(values) > 1:
        raise BadField(
            "repetition_penalty and repeat_penalty are the same setting and differ; send one",
            param="repeat_penalty",
        )
    return values.pop() if values else None


def _prompt(body: dict[str, Any]) -> str:
    value = body.get("prompt")
    if value == []:
        raise BadField("prompt is an empty list; send one prompt string", param="prompt")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        value = value[0]
    if isinstance(value, list) and all(isinstance(p, str) for p in value):
        raise BadField(
            "prompt lists with more than one prompt are not supported; send one per request",
            param="prompt",
        )
    if not isinstance(value, str):
        raise BadField(
            "prompt must be a string (token-id prompts are not supported)", param="prompt"
        )
    return value


async def chat_completions(request: Request) -> Response | SseResponse | BufferedAnswer:
    return await _complete(request, chat=True)


async def completions(request: Request) -> Response | SseResponse | BufferedAnswer:
    return await _complete(request, chat=False)


async def _complete(request: Request, *, chat: bool) -> Response | SseResponse | BufferedAnswer:
    deps = deps_of(request)
    try:
        call = _parse(request, deps, await read_json(request, deps), chat=chat)
        ticket = _tasks.admit(
            deps,
            call.submission,
            default_max_tokens=DEFAULT_CHAT_MAX_TOKENS if chat else DEFAULT_COMPLETION_MAX_TOKENS,
            correlation_id=correlation_of(request),
            identity=identity_of(request),
        )
    except OrchError as exc:
        return openai_error(exc)
    headers = ticket_headers(ticket)
    correlation = correlation_of(request)
    if correlation:
        headers["X-Request-Id"] = correlation
    reply = _Reply(call, ticket, call.submission.model.name)
    cancel_on_disconnect = deps.config.server.sse.cancel_on_disconnect

    def on_disconnect() -> None:
        if cancel_on_disconnect:
            _tasks.cancel(deps, ticket, reason="disconnect")

    if call.stream:

        def on_end(outcome: Outcome) -> None:
            if outcome is Outcome.STALL:
                _tasks.cancel(deps, ticket, reason="stall")
            elif outcome is not Outcome.COMPLETE:
                on_disconnect()

        headers["Cache-Control"] = "no-cache"
        headers["X-Accel-Buffering"] = "no"
        return SseResponse(
            reply.chunks(deps),
            headers=headers,
            on_end=on_end,
            stall_limit_s=deps.config.server.sse.stall_limit_ms / 1000,
            pusher=reply,
        )

    async def produce() -> Response:
        return await reply.whole(deps, headers)

    return BufferedAnswer(produce, on_disconnect, deps=deps, session_id=ticket.session_id)


class _Reply(TranscriptPusher):
    """One answer's ids and framing; chunks are %-formatted templates on the hot path. Tokens
    published while its writer is caught up are pushed (``server.pushing``)."""

    def __init__(self, call: _Call, ticket: _tasks.Ticket, model: str) -> None:
        super().__init__(ticket.stream)
        self.place = _tasks.Place()
        self.call = call
        self.ticket = ticket
        self.model = model
        chat = call.chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + ticket.task_id.replace("-", "")
        self.created = int(time.time())
        kind = b"chat.completion.chunk" if chat else b"text_completion"
        self._head = b'data: {"id":"%b","object":"%b","created":%d,"model":%b,"choices":[' % (
            self.id.encode(),
            kind,
            self.created,
            orjson.dumps(model),
        )
        self._tail = b'],"usage":null}\n\n' if call.include_usage else b"]}\n\n"

    def _choice(self, text: str | None, finish: str | None) -> bytes:
        reason = b"null" if finish is None else b'"%b"' % finish.encode()
        if self.call.chat:
            delta = b"{}" if text is None else b'{"content":%b}' % orjson.dumps(text)
            body = b'{"index":0,"delta":%b,"logprobs":null,"finish_reason":%b}' % (delta, reason)
        else:
            body = b'{"index":0,"text":%b,"logprobs":null,"finish_reason":%b}' % (
                orjson.dumps(text or ""),
                reason,
            )
        return self._head + body + self._tail

    def _usage(self, end: _tasks.Finished) -> dict[str, int]:
        return {
            "prompt_tokens": end.tokens_in,
            "completion_tokens": end.tokens_out,
            "total_tokens": end.tokens_in + end.tokens_out,
        }

    async def chunks(self, deps: AppDeps) -> AsyncGenerator[bytes, None]:
        ticket = self.ticket
        if ticket.queue_position > 0 or ticket.predicted_start_ms > 0:
            # It waits for a slot: say where it stands (clients skip SSE comments).
            yield b": queue-position %d\n\n" % ticket.queue_position
        if self.call.chat:
            yield (
                self._head
                + b'{"index":0,"delta":{"role":"assistant","content":""},'
                + b'"logprobs":null,"finish_reason":null}'
                + self._tail
            )
        events = _tasks.follow(
            deps, self.ticket, waiting_every_s=QUEUE_COMMENT_EVERY_S, pusher=self, place=self.place
        )
        async for event in events:
            if type(event) is list:
                # An empty batch is the writer's turn to finish a pushed send.
                yield (
                    self._choice(event[0] if len(event) == 1 else "".join(event), None)
                    if event
                    else b""
                )
            elif isinstance(event, _tasks.Waiting):
                yield b": queue-position %d\n\n" % event.position
            elif isinstance(event, _tasks.Finished):
                if event.canceled:
                    yield _stream_error("the task was canceled", "canceled", "canceled")
                    return
                out = self._choice(None, event.finish_reason)
                if self.call.include_usage:
                    usage = orjson.dumps(
                        {
                            "id": self.id,
                            "object": "chat.completion.chunk"
                            if self.call.chat
                            else "text_completion",
                            "created": self.created,
                            "model": self.model,
                            "choices": [],
                            "usage": self._usage(event),
                        }
                    )
                    out += b"data: " + usage + b"\n\n"
                yield out + b"data: [DONE]\n\n"
            elif isinstance(event, _tasks.Failed):
                yield _stream_error(event.message, failed_type(event.kind), event.kind.lower())

    def render(self) -> bytes | None:
        entries = self._stream.entries
        end = len(entries)
        texts = [entry for entry in entries[self.place.index : end] if type(entry) is str]
        self.place.index = end
        if not texts:
            return None
        return self._choice(texts[0] if len(texts) == 1 else "".join(texts), None)

    async def whole(self, deps: AppDeps, headers: dict[str, str]) -> Response:
        texts: list[str] = []
        async for event in _tasks.follow(deps, self.ticket):
            if type(event) is list:
                texts.extend(event)
            elif isinstance(event, _tasks.Finished):
                if event.canceled:
                    return Response(
                        error_body("the task was canceled", "canceled", None, "canceled"),
                        499,
                        {**headers, "x-should-retry": "false"},
                        media_type=JSON,
                    )
                return Response(self._body("".join(texts), event), 200, headers, media_type=JSON)
            elif isinstance(event, _tasks.Failed):
                status = STATUS.get(event.kind, 500)
                failed = dict(headers)
                if event.retry_after_ms is not None and status in (429, 503):
                    failed["Retry-After"] = str(max(1, math.ceil(event.retry_after_ms / 1000)))
                    failed["retry-after-ms"] = str(event.retry_after_ms)
                body = error_body(event.message, failed_type(event.kind), None, event.kind.lower())
                return Response(body, status, failed, media_type=JSON)
        raise AssertionError("a task transcript always ends with a terminal frame")

    def _body(self, text: str, end: _tasks.Finished) -> bytes:
        if self.call.chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": end.finish_reason,
            }
        else:
            choice = {
                "index": 0,
                "text": text,
                "logprobs": None,
                "finish_reason": end.finish_reason,
            }
        return orjson.dumps(
            {
                "id": self.id,
                "object": "chat.completion" if self.call.chat else "text_completion",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                "usage": self._usage(end),
            }
        )


def failed_type(kind: ErrorKind) -> str:
    status = STATUS.get(kind, 500)
    return _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")


def _stream_error(message: str, kind: str, code: str) -> bytes:
    return b"data: " + error_body(message, kind, None, code) + b"\n\n"


def _model_card(model: _tasks.ServedModel) -> dict[str, Any]:
    return {
        "id": model.name,
        "object": "model",
        "created": _CREATED,
        "owned_by": "llama-orch",
        "pool_id": model.pool_id,
        "engine": model.engine.value,
        "max_model_len": model.ctx,
        "ready": model.ready,
        "simulated": model.simulated,
    }


async def list_models(request: Request) -> Response:
    models = _tasks.listed_models(deps_of(request))
    data = [_model_card(m) for m in models]
    return Response(orjson.dumps({"object": "list", "data": data}), media_type=JSON)


async def get_model(request: Request) -> Response:
    name = request.path_params["model_id"]
    model = _tasks.find_model(deps_of(request), name)
    if model is None:
        return openai_error(UnknownModel(f"the model {name!r} does not exist on this server"))
    return Response(orjson.dumps(_model_card(model)), media_type=JSON)


routes = [
    Route("/v1/chat/completions", chat_completions, methods=["POST"]),
    Route("/v1/completions", completions, methods=["POST"]),
    Route("/v1/models", list_models, methods=["GET"]),
    Route("/v1/models/{model_id:path}", get_model, methods=["GET"]),
]
