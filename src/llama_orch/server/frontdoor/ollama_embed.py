"""Ollama-compatible ``POST /api/embed`` and the older ``POST /api/embeddings``, admitted as
embedding tasks on the same queues as everything else.

``/api/embed`` answers L2-normalised vectors (shortened to ``dimensions`` and normalised again
when asked); ``/api/embeddings`` answers the one vector as the engine gave it, as Ollama does.
An empty input is an empty answer, as in Ollama; anything else invalid is a 400 ``{"error"}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.core.embedding import l2_normalize
from llama_orch.errors import OrchError
from llama_orch.server.deps import AppDeps, deps_of
from llama_orch.server.errors import STATUS
from llama_orch.server.frontdoor import _fields as f
from llama_orch.server.frontdoor import _tasks
from llama_orch.server.frontdoor._http import (
    BufferedAnswer,
    UnknownModel,
    answer_at_end,
    correlation_of,
    deadline_of,
    identity_of,
    priority_of,
    read_json,
    retry_headers,
    session_of,
    ticket_headers,
)
from llama_orch.server.frontdoor.ollama_api import ollama_error

JSON = "application/json"
# keep_alive and options are pool-managed (models stay loaded as their pools say).
_EMBED_KNOWN = frozenset({"model", "input", "truncate", "dimensions", "options", "keep_alive"})
_LEGACY_KNOWN = frozenset({"model", "prompt", "options", "keep_alive"})
BodyOf = Callable[[list[list[float]], _tasks.Finished], dict[str, Any]]


def _model(deps: AppDeps, body: dict[str, Any]) -> _tasks.ServedModel:
    name = f.string(body, "model", required=True) or ""
    model = _tasks.find_model(deps, name)
    if model is None:
        raise UnknownModel(f"model '{name}' not found")
    return model


def _empty(value: Any) -> bool:
    return bool(value == "" or value == [])


async def embed(request: Request) -> Response | BufferedAnswer:
    deps = deps_of(request)
    started = time.perf_counter_ns()
    try:
        body = await read_json(request, deps)
        f.refuse_unknown(body, _EMBED_KNOWN)
        f.keep_alive_is_zero(body)  # checked, then left to the pool
        model = _model(deps, body)
        # Over-long inputs are refused whatever ``truncate`` says: nothing is cut silently.
        f.boolean(body, "truncate", True)
        raw = body.get("input")
        if raw is None or _empty(raw):
            answer = {"model": body["model"], "embeddings": []}
            return Response(orjson.dumps(answer), media_type=JSON)
        submission = _tasks.EmbedSubmission(
            model=model,
            inputs=f.text_list(raw, "input", allow_string=True),
            priority=priority_of(request),
            session_id=session_of(request),
            deadline_ms=deadline_of(request),
            dimensions=f.integer(body, "dimensions", low=1, high=65536),
        )
    except OrchError as exc:
        return ollama_error(exc)

    def body_of(vectors: list[list[float]], end: _tasks.Finished) -> dict[str, Any]:
        return {
            "model": body["model"],
            "embeddings": [list(l2_normalize(v)) for v in vectors],
            "total_duration": time.perf_counter_ns() - started,
            "load_duration": 0,
            "prompt_eval_count": end.tokens_in,
        }

    return _answer(request, deps, submission, body_of)


async def embeddings(request: Request) -> Response | BufferedAnswer:
    deps = deps_of(request)
    try:
        body = await read_json(request, deps)
        f.refuse_unknown(body, _LEGACY_KNOWN)
        f.keep_alive_is_zero(body)  # checked, then left to the pool
        model = _model(deps, body)
        prompt = f.string(body, "prompt")
        if not prompt:
            return Response(orjson.dumps({"embedding": []}), media_type=JSON)
        submission = _tasks.EmbedSubmission(
            model=model,
            inputs=[prompt],
            inputs_field="prompt",
            priority=priority_of(request),
            session_id=session_of(request),
            deadline_ms=deadline_of(request),
        )
    except OrchError as exc:
        return ollama_error(exc)

    def body_of(vectors: list[list[float]], end: _tasks.Finished) -> dict[str, Any]:
        return {"embedding": vectors[0]}

    return _answer(request, deps, submission, body_of)


def _answer(
    request: Request, deps: AppDeps, submission: _tasks.EmbedSubmission, body_of: BodyOf
) -> Response | BufferedAnswer:
    try:
        ticket = _tasks.admit_embed(
            deps, submission, correlation_id=correlation_of(request), identity=identity_of(request)
        )
    except OrchError as exc:
        return ollama_error(exc)
    headers = ticket_headers(ticket)

    def render(end: _tasks.Finished | _tasks.Failed) -> Response:
        if isinstance(end, _tasks.Failed):
            status = STATUS.get(end.kind, 500)
            body = orjson.dumps({"error": end.message})
            return Response(body, status, retry_headers(headers, end, status), media_type=JSON)
        if end.canceled or end.result is None:
            body = orjson.dumps({"error": "the task was canceled"})
            return Response(body, 499, headers, media_type=JSON)
        answer = body_of(end.result["embeddings"], end)
        return Response(orjson.dumps(answer), 200, headers, media_type=JSON)

    return answer_at_end(deps, ticket, render)


routes = [
    Route("/api/embed", embed, methods=["POST"]),
    Route("/api/embeddings", embeddings, methods=["POST"]),
]
