"""Embedding and rerank answers in the engines' shapes, read into the common ``EmbedResult``.

- OpenAI list (``/v1/embeddings`` of llama.cpp, vLLM, OpenAI, TEI): ``data[{index, embedding}]``
  and ``usage.prompt_tokens``; vectors are put in ``index`` order.
- Jina/Cohere rerank (``/v1/rerank`` of llama.cpp and vLLM): ``results[{index,
  relevance_score}]``, possibly sorted and cut; scores are put back by ``index``.
- TEI native: ``/embed`` answers bare ``[[f32...]]``; ``/rerank`` bare ``[{index, score}]``.

A malformed answer raises ``KeyError``/``TypeError``/``ValueError``, which the adapter maps to
``INTERNAL`` with the route named.
"""

from __future__ import annotations

from array import array
from typing import Any, ClassVar, Final

from llama_orch.contracts.engine import EmbedRequest, EmbedResult
from llama_orch.core.embedding import estimate_tokens
from llama_orch.vocab import Workload

#: The largest finite float32.
FLOAT32_MAX: Final = 3.4028234663852886e38


def openai_embeddings_body(request: EmbedRequest, *, dimensions: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": request.model,
        "input": list(request.texts),
        "encoding_format": "float",
    }
    if dimensions and request.dimensions is not None:
        body["dimensions"] = request.dimensions
    return body


def rerank_body(request: EmbedRequest) -> dict[str, Any]:
    return {
        "model": request.model,
        "query": request.query,
        "documents": list(request.texts),
        "top_n": len(request.texts),
    }


def _by_index(items: list[Any], count: int, value: str) -> list[Any]:
    out: list[Any] = [None] * count
    for item in items:
        index = item["index"]
        if type(index) is not int or not 0 <= index < count or out[index] is not None:
            raise ValueError(f"bad or repeated index {index!r}")
        out[index] = item[value]
    if any(v is None for v in out):
        raise ValueError("an input got no result")
    return out


def _vector(raw: Any) -> list[float]:
    """The engine's list as floats. ``array`` reads every value in C, so a string or a null
    anywhere in it is refused (it would otherwise reach the client, or break base64) at a
    small cost per dimension."""
    if type(raw) is not list or not raw:
        raise TypeError("an embedding is not a non-empty list of numbers")
    try:
        values = array("d", raw)
    except (TypeError, OverflowError) as exc:
        raise TypeError("an embedding holds a value that is not a number") from exc
    # Embeddings are float32: a larger value is no vector, and cannot be sent as base64.
    if max(values) > FLOAT32_MAX or min(values) < -FLOAT32_MAX:
        raise ValueError("an embedding holds a value beyond the float32 range")
    return values.tolist()


def _scores(raw: list[Any]) -> tuple[float, ...]:
    """JSON numbers only: ``float()`` would also take ``"NaN"`` or ``true``, and a NaN score
    sorts anywhere and goes out as null."""
    if any(type(s) is not float and type(s) is not int for s in raw):
        raise TypeError("a relevance score is not a number")
    return tuple(float(s) for s in raw)


def _same_length(vectors: list[list[float]]) -> list[list[float]]:
    sizes = sorted({len(v) for v in vectors})
    if len(sizes) > 1:
        raise ValueError(f"embeddings of {sizes[0]} and {sizes[-1]} values in one answer")
    return vectors


def _tokens(answer: Any, request: EmbedRequest) -> int:
    usage = answer.get("usage") if isinstance(answer, dict) else None
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    if isinstance(tokens, int) and tokens >= 0:
        return tokens
    return estimated_tokens(request)


def estimated_tokens(request: EmbedRequest) -> int:
    query = estimate_tokens(request.query) if request.query is not None else 0
    return sum(estimate_tokens(t) for t in request.texts) + query


def openai_embeddings(request: EmbedRequest, answer: Any) -> EmbedResult:
    rows = _by_index(answer["data"], len(request.texts), "embedding")
    vectors = _same_length([_vector(r) for r in rows])
    return EmbedResult(vectors=vectors, tokens_in=_tokens(answer, request))


def rerank_results(request: EmbedRequest, answer: Any) -> EmbedResult:
    scores = _by_index(answer["results"], len(request.texts), "relevance_score")
    return EmbedResult(scores=_scores(scores), tokens_in=_tokens(answer, request))


def tei_embed(request: EmbedRequest, answer: Any) -> EmbedResult:
    if not isinstance(answer, list):
        raise TypeError("/embed answered no list")
    vectors = _same_length([_vector(r) for r in answer])
    return EmbedResult(vectors=vectors, tokens_in=estimated_tokens(request))


def tei_rerank(request: EmbedRequest, answer: Any) -> EmbedResult:
    if not isinstance(answer, list):
        raise TypeError("/rerank answered no list")
    scores = _by_index(answer, len(request.texts), "score")
    return EmbedResult(scores=_scores(scores), tokens_in=estimated_tokens(request))


class OpenAIEmbedRoutes:
    """``embed_call``/``embed_result`` for engines serving ``/v1/embeddings`` and ``/v1/rerank``
    (llama.cpp, vLLM); mixed in before ``HttpAdapter``."""

    #: Whether the engine honours ``dimensions`` (llama.cpp ignores it; the runner shortens).
    embed_dimensions: ClassVar[bool] = False

    def embed_call(self, request: EmbedRequest) -> tuple[str, dict[str, Any]]:
        if request.workload is Workload.RERANK:
            return "/v1/rerank", rerank_body(request)
        return "/v1/embeddings", openai_embeddings_body(request, dimensions=self.embed_dimensions)

    def embed_result(self, request: EmbedRequest, answer: Any) -> EmbedResult:
        if request.workload is Workload.RERANK:
            return rerank_results(request, answer)
        return openai_embeddings(request, answer)
