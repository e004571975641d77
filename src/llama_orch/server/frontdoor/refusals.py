"""Refusals made before a front door's handler runs (a missing or wrong token, no such route, a
method the route does not serve), in the error shape of the API the path belongs to.

An OpenAI client reads ``{"error": {"message", "type", "param", "code"}}`` into its exception's
fields, and an Ollama client shows ``{"error": "..."}`` as the message; handed the task API's
envelope instead, both show the raw JSON. Status and headers (``WWW-Authenticate``, ``Allow``)
are the task API's either way.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from llama_orch.errors import OrchError
from llama_orch.server.errors import handle_http_exception, http_refusal
from llama_orch.server.frontdoor.ollama_api import ollama_error
from llama_orch.server.frontdoor.openai_api import openai_error

#: The OpenAI-compatible routes this server serves (``/v1`` is shared with the task API).
_OPENAI = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/embeddings",
        "/v1/rerank",
        "/rerank",
    }
)


def peer_refusal(path: str, error: OrchError, status: int | None = None) -> Response | None:
    """``error`` as the front door at ``path`` answers it; None: the path is the task API's."""
    if path.startswith("/api/"):
        return ollama_error(error, status=status)
    if path in _OPENAI or path.startswith("/v1/models/"):
        return openai_error(error, status=status)
    return None


async def handle_http_refusal(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route, wrong method), in the shape of the path's API."""
    assert isinstance(exc, HTTPException)
    error, status, headers = http_refusal(request, exc)
    response = peer_refusal(request.url.path, error, status)
    if response is None:
        return await handle_http_exception(request, exc)
    response.headers.update(headers)
    return response
