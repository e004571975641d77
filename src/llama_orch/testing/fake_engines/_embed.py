"""Embedding and rerank routes of the fakes, simulated: vectors hashed from the model and the
text (``llama_orch.core.embedding.hashed_vector``, unit length, ``EMBED_DIMS`` long), scores the
cosine of query and document moved to 0..1. Same text, same bytes, on every fake and replica.

Shapes follow CLIENT_PROTOCOLS.md §3: the OpenAI list of ``/v1/embeddings`` (base64 is the raw
little-endian float32 buffer), the Jina/Cohere rerank list, TEI's bare ``/embed`` and ``/rerank``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from llama_orch.core.embedding import (
    encode_base64,
    estimate_tokens,
    hashed_vector,
    shorten,
    similarity_score,
)
from llama_orch.testing.fake_engines._server import FakeEngine

#: Length of every simulated vector.
EMBED_DIMS = 32


class BadInput(ValueError):
    """A request the engine refuses with 400 (or its own validation status)."""


def texts_of(value: Any, name: str) -> list[str]:
    """A string or a non-empty list of strings."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(t, str) for t in value):
        raise BadInput(f"'{name}' must be a non-empty string or list of strings")
    return value


def vectors(model: str, texts: list[str], dimensions: int | None = None) -> list[list[float]]:
    return [list(shorten(hashed_vector(model, t, EMBED_DIMS), dimensions)) for t in texts]


def scores(model: str, query: str, documents: list[str]) -> list[float]:
    q = hashed_vector(model, query, EMBED_DIMS)
    return [similarity_score(q, hashed_vector(model, d, EMBED_DIMS)) for d in documents]


def tokens(texts: list[str]) -> int:
    return sum(estimate_tokens(t) for t in texts)


def openai_list(
    model: str, body: dict[str, Any], *, dimensions: bool, item_format: bool = False
) -> dict[str, Any]:
    """``/v1/embeddings``: ``dimensions`` says whether the engine honours that field;
    ``item_format`` marks base64 items as llama.cpp does."""
    texts = texts_of(body.get("input"), "input")
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise BadInput("encoding_format must be float or base64")
    rows = vectors(model, texts, body.get("dimensions") if dimensions else None)
    data = []
    for i, row in enumerate(rows):
        item: dict[str, Any] = {"index": i, "object": "embedding"}
        if encoding == "base64":
            item["embedding"] = encode_base64(row)
            if item_format:
                item["encoding_format"] = "base64"
        else:
            item["embedding"] = row
        data.append(item)
    used = tokens(texts)
    return {
        "model": model,
        "object": "list",
        "usage": {"prompt_tokens": used, "total_tokens": used},
        "data": data,
    }


def rerank_list(model: str, body: dict[str, Any], *, documents_echo: bool) -> dict[str, Any]:
    """``/v1/rerank``: results sorted by score, highest first, cut to ``top_n`` (0: all)."""
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise BadInput("'query' must be a non-empty string")
    docs = body.get("documents")
    if not isinstance(docs, list) or not docs or not all(isinstance(d, str) for d in docs):
        raise BadInput("'documents' must be a non-empty list of strings")
    ranked = sorted(enumerate(scores(model, query, docs)), key=lambda p: -p[1])
    top_n = body.get("top_n")
    if isinstance(top_n, int) and top_n > 0:
        ranked = ranked[:top_n]
    results = []
    for index, score in ranked:
        item: dict[str, Any] = {"index": index, "relevance_score": score}
        if documents_echo:
            item["document"] = {"text": docs[index]}
        results.append(item)
    used = tokens([query, *docs])
    return {
        "model": model,
        "object": "list",
        "usage": {"prompt_tokens": used, "total_tokens": used},
        "results": results,
    }


async def serve(
    fake: FakeEngine,
    request: Request,
    answer: Callable[[dict[str, Any]], Any],
    error: Callable[[int, str], Response],
    *,
    bad_status: int = 400,
) -> Response:
    """One embedding or rerank call: recorded, paced by ``ttft_ms``, failed by ``fail_status``,
    bad input answered ``bad_status`` in the engine's error shape."""
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return error(400, "request body is not valid JSON")
    if not isinstance(body, dict):
        return error(400, "request body must be a JSON object")
    record = fake.record(request.method, request.url.path, dict(request.headers), body)
    fake.active += 1
    try:
        await fake.pace_first()
    finally:
        fake.active -= 1
    status = fake.behaviour.fail_status
    if status is not None:
        return error(status, "simulated engine failure")
    try:
        result = answer(body)
    except BadInput as exc:
        return error(bad_status, str(exc))
    record.completed = True
    record.done.set()
    return Response(orjson.dumps(result), media_type="application/json")
