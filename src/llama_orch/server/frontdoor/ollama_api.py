"""Ollama-compatible front door: ``/api/generate``, ``/api/chat``, ``/api/tags``, ``/api/ps``,
``/api/show`` and ``/api/version``, onto the same queues and pools as the task API.

Answers stream as NDJSON by default (one object per line, ``done: true`` last) and are one JSON
object with ``stream: false``. Errors are ``{"error": "..."}``; once output has started, an error
is a final ``{"error": ...}`` line. Models stay loaded as their pools say, so ``keep_alive`` is
accepted and changes nothing; runner options (``num_ctx``, ``num_gpu``, ...) are pool-managed
the same way. Sampling options this server cannot honour are refused by name.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.contracts.api import INT32_MAX, INT64_MAX
from llama_orch.contracts.engine import ChatMessage
from llama_orch.errors import ErrorKind, OrchError, PayloadTooLarge
from llama_orch.observability.narration import narrate
from llama_orch.server.deps import AppDeps, deps_of
from llama_orch.server.errors import KEPT_HEADERS, STATUS, render_error
from llama_orch.server.frontdoor import _fields as f
from llama_orch.server.frontdoor import _tasks
from llama_orch.server.frontdoor._chat import DEFAULT_TEMPLATE
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
from llama_orch.server.sse import Outcome, SseResponse
from llama_orch.vocab import Engine, Workload

JSON = "application/json"
NDJSON = "application/x-ndjson"
#: The Ollama API release whose routes and shapes this front door follows.
OLLAMA_API_VERSION = "0.12.0"
#: ``num_predict`` when the request sets none, 0 or -1 (Ollama's "no limit"); -2, "until the
#: context is full", is what the context leaves after the prompt.
DEFAULT_NUM_PREDICT = 1024
_STARTED = datetime.now(UTC)

# Options that shape sampling but that no adapter takes: refused rather than dropped, except at
# the value that switches them off on every engine. min_p and repeat_last_n have none (llama.cpp's
# defaults, 0.05 and 64, differ from other engines'), and mirostat's tau and eta count only
# while mirostat is on, so their defaults change nothing.
_NEUTRAL_OPTIONS: dict[str, tuple[Any, ...]] = {
    "min_p": (None,),
    "typical_p": (None, 1),
    "repeat_last_n": (None,),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "penalize_newline": (None, False),
    "mirostat": (None, 0),
    "mirostat_tau": (None, 5),
    "mirostat_eta": (None, 0.1),
    "tfs_z": (None, 1),
}
# Options taken as they are (sampling and length) or that are the pool's to set (runner options,
# num_keep): every other key Ollama's clients know. A key outside all of these is ignored with a
# warning, as Ollama does with an option it does not know.
_MAPPED_OPTIONS = frozenset(
    {"temperature", "top_p", "top_k", "seed", "num_predict", "stop", "repeat_penalty"}
)
_RUNNER_OPTIONS = frozenset(
    {
        "num_ctx",
        "num_batch",
        "num_gpu",
        "main_gpu",
        "use_mmap",
        "use_mlock",
        "num_thread",
        "num_keep",
        "numa",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "embedding_only",
        "num_gqa",
        "rope_frequency_base",
        "rope_frequency_scale",
    }
)
_KNOWN_OPTIONS = _MAPPED_OPTIONS | _RUNNER_OPTIONS | set(_NEUTRAL_OPTIONS)

# Neutral-valued top-level fields; others are refused by name.
_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "format": (None, ""),
    "images": (None, []),
    "suffix": (None, ""),
    "template": (None, ""),
    "context": (None, []),
    "tools": (None, []),
    "think": (None, False),
    "logprobs": (None, False),
    "top_logprobs": (None, 0),
}
_COMMON = frozenset({"model", "stream", "options", "keep_alive", "truncate", "shift"})
_GENERATE_KNOWN = _COMMON | set(_NEUTRAL) | {"prompt", "system", "raw"}
_CHAT_KNOWN = _COMMON | set(_NEUTRAL) | {"messages"}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


#: Refusals Ollama answers with 503 "server busy" (a full queue), where the task API says 429;
#: a rate limit or a spent budget stays 429, which is Ollama's rate limit.
_BUSY = frozenset({"reject", "drop-lru", "server-capacity"})


def _status(kind: ErrorKind, policy_label: str | None = None) -> int:
    if kind is ErrorKind.QUEUE_FULL_DROP_LRU or (
        kind is ErrorKind.ADMISSION_REJECT and policy_label in _BUSY
    ):
        return 503
    return STATUS.get(kind, 500)


def ollama_error(exc: OrchError, *, status: int | None = None) -> Response:
    """The task API's status and headers (retry advice, ``WWW-Authenticate``), with Ollama's
    ``{"error": ...}`` body; ``status`` as ``render_error`` takes it (a full queue: 503)."""
    if status is None and not isinstance(exc, PayloadTooLarge):
        status = _status(exc.kind, exc.policy_label)
    rendered = render_error(exc, status=status)
    status = rendered.status
    headers = {k: v for k, v in rendered.headers.items() if k.lower() in KEPT_HEADERS}
    body = orjson.dumps({"error": peer_message(exc)})
    return Response(body, status, headers, media_type=JSON)


def _not_found(name: str) -> UnknownModel:
    return UnknownModel(f"model '{name}' not found")


@dataclass(frozen=True, slots=True)
class _Call:
    model: str
    chat: bool
    stream: bool
    submission: _tasks.Submission | None
    keep_alive_zero: bool
    #: ``num_predict`` -2: as many tokens as the context leaves, not the default.
    fill_context: bool = False


def _parse(request: Request, deps: AppDeps, body: dict[str, Any], *, chat: bool) -> _Call:
    f.refuse_unknown(body, _CHAT_KNOWN if chat else _GENERATE_KNOWN)
    f.refuse_unless_default(body, _NEUTRAL)
    name = f.string(body, "model", required=True) or ""
    model = _tasks.find_model(deps, name)
    if model is None:
        raise _not_found(name)
    stream = f.boolean(body, "stream", True)
    keep_alive_zero = f.keep_alive_is_zero(body)
    # Only null means "no options": [] or "" is a client mistake, not an empty object.
    options = body.get("options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise BadField("options must be an object", param="options")
    f.refuse_unless_default(options, _NEUTRAL_OPTIONS, prefix="options.")
    unknown = [name[:64] for name in sorted(set(options) - _KNOWN_OPTIONS)[:8]]
    if unknown:
        narrate(
            "server",
            "ignore-options",
            model.pool_id,
            f"Ignores Ollama options it does not know: {', '.join(unknown)}.",
            level="warning",
            options=unknown,
        )
    messages: tuple[ChatMessage, ...] | None
    prompt: str | None = None
    if chat:
        raw_messages = body.get("messages")
        if raw_messages in (None, []):
            return _Call(model.name, chat, stream, None, keep_alive_zero)
        messages = f.messages(body)
    else:
        prompt = f.string(body, "prompt") or ""
        if not prompt:
            return _Call(model.name, chat, stream, None, keep_alive_zero)
        system = f.string(body, "system")
        if f.boolean(body, "raw", False):
            if system:
                raise BadField("raw cannot be combined with system", param="system")
            messages = None
        else:
            # Ollama applies the model's template to a generate prompt too: one user turn.
            turns = [ChatMessage("system", system)] if system else []
            messages = (*turns, ChatMessage("user", prompt))
    num_predict = f.integer(options, "num_predict", low=-2, high=INT32_MAX, prefix="options.")
    submission = _tasks.Submission(
        model=model,
        prompt=prompt,
        messages=messages,
        max_tokens=num_predict if num_predict is not None and num_predict > 0 else None,
        priority=priority_of(request),
        session_id=session_of(request),
        deadline_ms=deadline_of(request),
        seed=f.integer(options, "seed", low=-(2**63), high=INT64_MAX, prefix="options."),
        temperature=f.number(options, "temperature", low=0, high=10, prefix="options."),
        top_p=f.number(options, "top_p", low=0, high=1, low_open=True, prefix="options."),
        top_k=f.integer(options, "top_k", low=0, prefix="options."),
        repeat_penalty=f.number(
            options, "repeat_penalty", low=0, high=None, low_open=True, prefix="options."
        ),
        stop=f.stops(options, "stop", most=16, prefix="options."),
        length_field="options.num_predict",
        at_most=True,
    )
    return _Call(model.name, chat, stream, submission, keep_alive_zero, num_predict == -2)


async def generate(request: Request) -> Response | SseResponse | BufferedAnswer:
    return await _answer(request, chat=False)


async def chat(request: Request) -> Response | SseResponse | BufferedAnswer:
    return await _answer(request, chat=True)


async def _answer(request: Request, *, chat: bool) -> Response | SseResponse | BufferedAnswer:
    deps = deps_of(request)
    started = time.perf_counter_ns()
    try:
        call = _parse(request, deps, await read_json(request, deps), chat=chat)
        if call.submission is None:
            return _load_reply(request, call)
        ticket = _tasks.admit(
            deps,
            call.submission,
            # Admission cuts a default to what the context (and the session's budget) leaves.
            default_max_tokens=INT32_MAX if call.fill_context else DEFAULT_NUM_PREDICT,
            correlation_id=correlation_of(request),
            identity=identity_of(request),
        )
    except OrchError as exc:
        return ollama_error(exc)
    reply = _Reply(call, ticket, call.submission.model.name, started)
    headers = ticket_headers(ticket)
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

        return SseResponse(
            reply.lines(deps),
            media_type=NDJSON,
            headers={**headers, "Cache-Control": "no-cache"},
            on_end=on_end,
            stall_limit_s=deps.config.server.sse.stall_limit_ms / 1000,
        )

    async def produce() -> Response:
        return await reply.whole(deps, headers)

    return BufferedAnswer(produce, on_disconnect, deps=deps, session_id=ticket.session_id)


def _load_reply(request: Request, call: _Call) -> Response:
    """An empty prompt or message list only loads the model; pools keep theirs loaded."""
    body: dict[str, Any] = {
        "model": call.model,
        "created_at": _now(),
        "done": True,
        "done_reason": "unload" if call.keep_alive_zero else "load",
    }
    if call.chat:
        body["message"] = {"role": "assistant", "content": ""}
    else:
        body["response"] = ""
    media = NDJSON if call.stream else JSON
    return Response(orjson.dumps(body) + (b"\n" if call.stream else b""), media_type=media)


class _Reply:
    def __init__(self, call: _Call, ticket: _tasks.Ticket, model: str, started_ns: int) -> None:
        self.call = call
        self.ticket = ticket
        self.model = model
        self.started_ns = started_ns
        self.first_ns: int | None = None
        self._head = b'{"model":%b,"created_at":"' % orjson.dumps(model)
        if call.chat:
            self._open = b'","message":{"role":"assistant","content":%b},"done":false}\n'
        else:
            self._open = b'","response":%b,"done":false}\n'

    def _final(self, end: _tasks.Finished, text: str | None) -> dict[str, Any]:
        now = time.perf_counter_ns()
        body: dict[str, Any] = {"model": self.model, "created_at": _now()}
        content = "" if text is None else text
        if self.call.chat:
            body["message"] = {"role": "assistant", "content": content}
        else:
            body["response"] = content
        body["done"] = True
        body["done_reason"] = end.finish_reason
        body["total_duration"] = now - self.started_ns
        # Metrics are omitempty in Ollama: zeros are left out.
        counts = {
            "prompt_eval_count": end.tokens_in,
            "eval_count": end.tokens_out,
            "eval_duration": now - self.first_ns if self.first_ns is not None else 0,
        }
        body.update({k: v for k, v in counts.items() if v})
        return body

    async def lines(self, deps: AppDeps) -> AsyncGenerator[bytes, None]:
        async for event in _tasks.follow(deps, self.ticket):
            if type(event) is list:
                if self.first_ns is None:
                    self.first_ns = time.perf_counter_ns()
                text = event[0] if len(event) == 1 else "".join(event)
                yield self._head + _now().encode() + self._open % orjson.dumps(text)
            elif isinstance(event, _tasks.Finished):
                if event.canceled:
                    yield orjson.dumps({"error": "the task was canceled"}) + b"\n"
                    return
                yield orjson.dumps(self._final(event, None)) + b"\n"
            elif isinstance(event, _tasks.Failed):
                yield orjson.dumps({"error": event.message}) + b"\n"

    async def whole(self, deps: AppDeps, headers: dict[str, str]) -> Response:
        texts: list[str] = []
        async for event in _tasks.follow(deps, self.ticket):
            if type(event) is list:
                if self.first_ns is None:
                    self.first_ns = time.perf_counter_ns()
                texts.extend(event)
            elif isinstance(event, _tasks.Finished):
                if event.canceled:
                    body = orjson.dumps({"error": "the task was canceled"})
                    return Response(body, 499, headers, media_type=JSON)
                body = orjson.dumps(self._final(event, "".join(texts)))
                return Response(body, 200, headers, media_type=JSON)
            elif isinstance(event, _tasks.Failed):
                status = _status(event.kind)
                failed = dict(headers)
                if event.retry_after_ms is not None and status in (429, 503):
                    failed["Retry-After"] = str(max(1, math.ceil(event.retry_after_ms / 1000)))
                body = orjson.dumps({"error": event.message})
                return Response(body, status, failed, media_type=JSON)
        raise AssertionError("a task transcript always ends with a terminal frame")


def _tagged(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _details(model: _tasks.ServedModel, quant: str | None) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf" if model.engine is Engine.LLAMACPP else model.engine.value,
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": quant or "",
    }


def _quant(deps: AppDeps, model: _tasks.ServedModel) -> str | None:
    return deps.pools.pools[model.pool_id].config.quant


async def tags(request: Request) -> Response:
    deps = deps_of(request)
    models = [
        {
            "name": _tagged(m.name),
            "model": _tagged(m.name),
            "modified_at": _STARTED.isoformat(),
            "size": 0,
            "digest": "",
            "details": _details(m, _quant(deps, m)),
        }
        for m in _tasks.listed_models(deps)
    ]
    return Response(orjson.dumps({"models": models}), media_type=JSON)


async def ps(request: Request) -> Response:
    deps = deps_of(request)
    # Pools keep their models loaded until an operator drains them: no expiry to report.
    expires = (datetime.now(UTC) + timedelta(days=365)).isoformat()
    models = [
        {
            "name": _tagged(m.name),
            "model": _tagged(m.name),
            "size": 0,
            "digest": "",
            "details": _details(m, _quant(deps, m)),
            "expires_at": expires,
            "size_vram": 0,
            "context_length": m.ctx,
        }
        for m in _tasks.listed_models(deps)
        if m.ready
    ]
    return Response(orjson.dumps({"models": models}), media_type=JSON)


async def show(request: Request) -> Response:
    deps = deps_of(request)
    try:
        body = await read_json(request, deps)
        name = f.string(body, "model") or f.string(body, "name")
        if not name:
            raise BadField("model is required", param="model")
        model = _tasks.find_model(deps, name)
        if model is None:
            raise _not_found(name)
    except OrchError as exc:
        return ollama_error(exc)
    arch = model.engine.value
    answer = {
        "modelfile": "",
        "parameters": "",
        "template": model.chat_template or DEFAULT_TEMPLATE,
        "details": _details(model, _quant(deps, model)),
        "model_info": {"general.architecture": arch, f"{arch}.context_length": model.ctx},
        "capabilities": _capabilities(deps, model.name),
        "modified_at": _STARTED.isoformat(),
    }
    return Response(orjson.dumps(answer), media_type=JSON)


#: Ollama's capability for each workload it has one for (rerank has none).
_CAPABILITIES = ((Workload.COMPLETION, "completion"), (Workload.EMBEDDING, "embedding"))


def _capabilities(deps: AppDeps, name: str) -> list[str]:
    """What the pools serving the model ``name`` take, in Ollama's words."""
    served = {
        workload
        for model in _tasks.served_models(deps)
        if model.name == name
        for workload in deps.pools.pools[model.pool_id].config.supported_workloads
    }
    return [capability for workload, capability in _CAPABILITIES if workload in served]


async def version(_request: Request) -> Response:
    return Response(orjson.dumps({"version": OLLAMA_API_VERSION}), media_type=JSON)


routes = [
    Route("/api/generate", generate, methods=["POST"]),
    Route("/api/chat", chat, methods=["POST"]),
    Route("/api/tags", tags, methods=["GET", "HEAD"]),
    Route("/api/ps", ps, methods=["GET"]),
    Route("/api/show", show, methods=["POST"]),
    Route("/api/version", version, methods=["GET", "HEAD"]),
]
