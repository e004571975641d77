"""Shared pieces of the front-door tests: a chat, and what the mock engine answers to it."""

from __future__ import annotations

from typing import Any

from llama_orch.adapters.mock import mock_tokens
from llama_orch.contracts.engine import ChatMessage, GenerateRequest
from llama_orch.server.frontdoor._chat import render_chat

MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Name a river."},
]


def mock_text(prompt: str, max_tokens: int, seed: int | None = 7, **sampling: Any) -> str:
    """What the mock engine answers for this prompt and sampling."""
    request = GenerateRequest(
        task_id="expected", prompt=prompt, max_tokens=max_tokens, model="m0", seed=seed, **sampling
    )
    return "".join(mock_tokens(request))


def chat_prompt(messages: list[dict[str, str]]) -> str:
    return render_chat([ChatMessage(m["role"], m["content"]) for m in messages])
