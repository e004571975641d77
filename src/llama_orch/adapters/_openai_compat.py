"""What vLLM and OpenAI adapters share: the OpenAI-compatible request body and stream parsers.

Streams are ``data: {json}`` chunks ending with ``data: [DONE]``; the finish reason rides on the
last choice chunk, usage on an extra chunk with ``choices: []``. An ``error`` event may arrive at
any point (vLLM follows it with ``[DONE]``); it is raised at once.
"""

from __future__ import annotations

from typing import Any

from llama_orch.adapters._base import DONE, HttpAdapter, ParserBase, first_error, in_stream_error
from llama_orch.contracts.engine import GenerateRequest
from llama_orch.observability.redaction import Redactor


def listed_models(answer: Any) -> tuple[list[dict[str, Any]], tuple[str, ...] | None]:
    """The model cards of a ``GET /v1/models`` answer, and the ids they name; None for the
    ids when the answer is not a list of models (the engine cannot say what it serves)."""
    cards = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(cards, list):
        return [], None
    kept = [c for c in cards if isinstance(c, dict)]
    return kept, tuple(c["id"] for c in kept if isinstance(c.get("id"), str))


class OpenAIStreamParser(ParserBase):
    """One parser for completions (``choices[0].text``) and chat (``choices[0].delta.content``)."""

    __slots__ = ("chat",)

    def __init__(self, engine: str, pool_id: str, redactor: Redactor, *, chat: bool) -> None:
        super().__init__(engine, pool_id, redactor)
        self.chat = chat

    def feed(self, obj: Any) -> str:
        if obj is DONE:
            if "finish_reason" not in self.summary:
                return self._truncated()
            self.done = True
            return ""
        if type(obj) is not dict:
            return ""
        if "error" in obj:
            found = first_error(obj)
            if found is not None:
                raise in_stream_error(self.engine, self.pool_id, *found, self.redactor)
        choices = obj.get("choices")
        if obj.get("usage") or "system_fingerprint" not in self.summary:
            self._extras(obj)
        if not choices:
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            self.summary["finish_reason"] = choice["finish_reason"]
            if choice.get("stop_reason") is not None:
                self.summary["stop_reason"] = choice["stop_reason"]
        if self.chat:
            delta = choice.get("delta")
            text = delta.get("content") if delta else None
        else:
            text = choice.get("text")
        return text if type(text) is str else ""

    def _extras(self, obj: dict[str, Any]) -> None:
        usage = obj.get("usage")
        if isinstance(usage, dict):
            self.summary["tokens_in"] = usage.get("prompt_tokens")
            self.summary["engine_tokens_out"] = usage.get("completion_tokens")
        self.summary["system_fingerprint"] = obj.get("system_fingerprint")

    def _truncated(self) -> str:
        # [DONE] without a finish reason: the server gave up without saying why.
        self.done = True
        self.summary["finish_reason"] = "unknown"
        return ""


def openai_body(
    adapter: HttpAdapter,
    request: GenerateRequest,
    *,
    chat: bool,
    top_k: bool,
    repetition_penalty: bool,
    model: str,
) -> dict[str, Any]:
    """The request body; ``top_k`` / ``repetition_penalty`` only where the upstream takes them."""
    body: dict[str, Any] = {"model": model, "stream": True}
    if chat:
        body["messages"] = (
            [{"role": m.role, "content": m.content} for m in request.messages]
            if request.messages
            else [{"role": "user", "content": request.prompt}]
        )
        body["max_completion_tokens"] = request.max_tokens
    else:
        body["prompt"] = request.prompt
        body["max_tokens"] = request.max_tokens
    body["stream_options"] = {"include_usage": True}
    for key, value in (
        ("seed", request.seed),
        ("temperature", request.temperature),
        ("top_p", request.top_p),
    ):
        if value is not None:
            body[key] = value
    if top_k and request.top_k is not None:
        body["top_k"] = request.top_k
    if repetition_penalty and request.repeat_penalty is not None:
        body["repetition_penalty"] = request.repeat_penalty
    if request.stop:
        body["stop"] = list(request.stop)
    return body
