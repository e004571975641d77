"""OpenAI-compatible ``POST /v1/embeddings`` and the common ``POST /v1/rerank`` (Jina/Cohere
shape; also at ``/rerank``, where Jina- and Cohere-style clients post), admitted as embedding and
rerank tasks on the same queues as everything else.

The answer comes when the task ends; errors use OpenAI's body and statuses (a full queue is a
429 with ``retry-after-ms``), as on the chat routes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llama_orch.errors import OrchError
from llama_orch.server.deps import AppDeps, deps_of
from llama_orch.server.errors import STATUS
from llama_orch.server.frontdoor import _fields as f
from llama_orch.server.frontdoor import _tasks
from llama_orch.server.frontdoor._http import (
    BadField,
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
from llama_orch.server.frontdoor.openai_api import error_body, failed_type, openai_error

JSON = "application/json"
#: Builds the answer from the task's ``end.result``, its ``end`` and its id.
BodyOf = Callable[[dict[str, Any], _tasks.Finished, str], dict[str, Any]]
_EMBED_KNOWN = frozenset({"model", "input", "encoding_format", "dimensions", "user"})
_RERANK_KNOWN = frozenset({"model", "query", "documents", "top_n", "return_documents", "user"})


def _model(deps: AppDeps, body: dict[str, Any]) -> _tasks.ServedModel:
    name = f.string(body, "model", required=True) or ""
    model = _tasks.find_model(deps, name)
    if model is None:
        raise UnknownModel(
            f"the model {name!r} does not exist on this server; GET /v1/models lists "
            "the served ones"
        )
    return model


def _encoding(body: dict[str, Any]) -> Literal["float", "base64"]:
    value = body.get("encoding_format")
    if value is None or value == "float":
        return "float"
    if value == "base64":
        return "base64"
    raise BadField(
        f"encoding_format must be float or base64, got {value!r}", param="encoding_format"
    )


async def embeddings(request: Request) -> Response | BufferedAnswer:
    deps = deps_of(request)
    try:
        body = await read_json(request, deps)
        f.refuse_unknown(body, _EMBED_KNOWN)
        if "input" not in body:
            raise BadField("input is required", param="input")
        submission = _tasks.EmbedSubmission(
            model=_model(deps, body),
            inputs=f.text_list(body["input"], "input", allow_string=True),
            priority=priority_of(request),
            session_id=session_of(request),
            deadline_ms=deadline_of(request),
            encoding_format=_encoding(body),
            dimensions=f.integer(body, "dimensions", low=1, high=65536),
        )
    except OrchError as exc:
        return openai_error(exc)

    def body_of(result: dict[str, Any], end: _tasks.Finished, task_id: str) -> dict[str, Any]:
        data = [
            {"object": "embedding", "index": i, "embedding": vector}
            for i, vector in enumerate(result["embeddings"])
        ]
        usage = {"prompt_tokens": end.tokens_in, "total_tokens": end.tokens_in}
        return {"object": "list", "model": submission.model.name, "data": data, "usage": usage}

    return _answer(request, deps, submission, body_of)


async def rerank(request: Request) -> Response | BufferedAnswer:
    deps = deps_of(request)
    try:
        body = await read_json(request, deps)
        f.refuse_unknown(body, _RERANK_KNOWN)
        query = f.string(body, "query", required=True) or ""
        if not query:
            raise BadField("query is empty; send the text to rank the documents against")
        if "documents" not in body:
            raise BadField("documents is required", param="documents")
        documents = f.text_list(body["documents"], "documents", allow_string=False)
        top_n = f.integer(body, "top_n", low=0)
        return_documents = f.boolean(body, "return_documents", True)
        submission = _tasks.EmbedSubmission(
            model=_model(deps, body),
            inputs=documents,
            query=query,
            inputs_field="documents",
            priority=priority_of(request),
            session_id=session_of(request),
            deadline_ms=deadline_of(request),
        )
    except OrchError as exc:
        return openai_error(exc)

    def body_of(result: dict[str, Any], end: _tasks.Finished, task_id: str) -> dict[str, Any]:
        ranked = result["results"]
        if top_n:  # 0 or absent: all of them
            ranked = ranked[:top_n]
        results = []
        for item in ranked:
            entry: dict[str, Any] = {"index": item["index"], "relevance_score": item["score"]}
            if return_documents:
                entry["document"] = {"text": documents[item["index"]]}
            results.append(entry)
        return {
            "id": f"rerank-{task_id}",
            "model": submission.model.name,
            "usage": {"prompt_tokens": end.tokens_in, "total_tokens": end.tokens_in},
            "results": results,
        }

    return _answer(request, deps, submission, body_of)


def _answer(
    request: Request,
    deps: AppDeps,
    submission: _tasks.EmbedSubmission,
    body_of: BodyOf,
) -> Response | BufferedAnswer:
    try:
        ticket = _tasks.admit_embed(
            deps,
            submission,
            correlation_id=correlation_of(request),
            identity=identity_of(request),
        )
    except OrchError as exc:
        return openai_error(exc)
    headers = ticket_headers(ticket)
    correlation = correlation_of(request)
    if correlation:
        headers["X-Request-Id"] = correlation

    def render(end: _tasks.Finished | _tasks.Failed) -> Response:
        if isinstance(end, _tasks.Failed):
            status = STATUS.get(end.kind, 500)
            body = error_body(end.message, failed_type(end.kind), None, end.kind.lower())
            return Response(body, status, retry_headers(headers, end, status), media_type=JSON)
        if end.canceled or end.result is None:
            body = error_body("the task was canceled", "canceled", None, "canceled")
            return Response(body, 499, {**headers, "x-should-retry": "false"}, media_type=JSON)
        answer = orjson.dumps(body_of(end.result, end, ticket.task_id))
        return Response(answer, 200, headers, media_type=JSON)

    return answer_at_end(deps, ticket, render)


routes = [
    Route("/v1/embeddings", embeddings, methods=["POST"]),
    Route("/v1/rerank", rerank, methods=["POST"]),
    Route("/rerank", rerank, methods=["POST"]),
]
