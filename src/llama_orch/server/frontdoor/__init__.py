"""Front doors for clients that speak another API: OpenAI-compatible and Ollama-compatible.

Both parse the peer API, admit the request as a task through ``_tasks`` (the one port into the
task system) and translate the task's transcript and errors back; they decide nothing.
"""

from __future__ import annotations

from starlette.routing import BaseRoute

from llama_orch.server.frontdoor import (
    ollama_api,
    ollama_embed,
    openai_api,
    openai_embeddings,
)

routes: list[BaseRoute] = [
    *openai_api.routes,
    *openai_embeddings.routes,
    *ollama_api.routes,
    *ollama_embed.routes,
]

__all__ = ["routes"]
