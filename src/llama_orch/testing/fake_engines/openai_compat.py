"""Simulated OpenAI-compatible servers: vLLM's (ENGINE_PROTOCOLS.md §2) and OpenAI's (§5).

Both stream ``/v1/completions`` and ``/v1/chat/completions`` as ``data: {json}`` chunks ending
with ``data: [DONE]``. The vLLM flavour adds ``/health`` (empty 200), ``/version``,
``max_model_len`` in ``/v1/models`` and ``vllm:*`` metrics; the OpenAI flavour checks the bearer
key (401 otherwise) and has no health or version route. Versions and owners say "simulated".
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from llama_orch.testing.fake_engines._embed import openai_list, rerank_list, serve
from llama_orch.testing.fake_engines._server import (
    Behaviour,
    EventStream,
    FakeEngine,
    RequestRecord,
    token_frames,
)
from llama_orch.testing.fake_engines._tokens import generate, prompt_tokens

VLLM_VERSION = "0.33.0+simulated"
_DONE = b"data: [DONE]\n\n"


def _data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


class _OpenAICompatible(FakeEngine):
    owned_by = "simulated"
    #: vLLM uses class names as error types, OpenAI its own vocabulary.
    error_types = {400: "BadRequestError", 404: "NotFoundError", 500: "InternalServerError"}

    def __init__(
        self,
        *,
        max_model_len: int = 4096,
        model: str = "tiny",
        behaviour: Behaviour | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        listening: bool = True,
    ) -> None:
        super().__init__(
            model=model, behaviour=behaviour, host=host, port=port, listening=listening
        )
        self.max_model_len = max_model_len
        self.counters = {"prompt_tokens_total": 0, "generation_tokens_total": 0}

    def error(self, status: int, message: str, param: str | None = None) -> Response:
        body = {
            "error": {
                "message": message,
                "type": self.error_types.get(status, "InternalServerError"),
                "param": param,
                "code": status,
            }
        }
        return Response(orjson.dumps(body), status, media_type="application/json")

    def auth_failure(self, request: Request) -> Response | None:
        return None

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/v1/models", self.models),
            Route("/v1/completions", self.completions, methods=["POST"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/v1/embeddings", self.embed, methods=["POST"]),
        ]

    async def embed(self, request: Request) -> Response:
        refused = self.auth_failure(request)
        if refused is not None:
            return refused
        model = self.model
        return await serve(
            self, request, lambda body: openai_list(model, body, dimensions=True), self.error
        )

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model, "object": "model", "created": 0, "owned_by": self.owned_by}

    async def models(self, request: Request) -> Response:
        denied = self.auth_failure(request)
        if denied is not None:
            return denied
        return JSONResponse({"object": "list", "data": [self.model_card()]})

    async def completions(self, request: Request) -> Response | EventStream:
        return await self._generate(request, chat=False)

    async def chat(self, request: Request) -> Response | EventStream:
        return await self._generate(request, chat=True)

    def _validate(self, body: dict[str, Any], chat: bool) -> tuple[str, int] | Response:
        if body.get("model") != self.model:
            return self.error(404, f"The model `{body.get('model')}` does not exist.", "model")
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return self.error(400, "messages must be a non-empty list", "messages")
            prompt = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
            default_max = self.max_model_len - prompt_tokens(prompt)
            max_tokens = body.get("max_completion_tokens", body.get("max_tokens", default_max))
        else:
            raw = body.get("prompt")
            if not isinstance(raw, str) or not raw:
                return self.error(400, "prompt must be a non-empty string", "prompt")
            prompt = raw
            max_tokens = body.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return self.error(400, "max_tokens must be at least 1", "max_tokens")
        temperature = body.get("temperature")
        if temperature is not None and not 0 <= temperature <= 2:
            return self.error(400, "temperature must be in [0, 2]", "temperature")
        top_p = body.get("top_p")
        if top_p is not None and not 0 < top_p <= 1:
            return self.error(400, "top_p must be in (0, 1]", "top_p")
        if prompt_tokens(prompt) + max_tokens > self.max_model_len:
            return self.error(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens.",
                "max_tokens",
            )
        return prompt, max_tokens

    async def _generate(self, request: Request, *, chat: bool) -> Response | EventStream:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            body = None
        record = self.record("POST", request.url.path, dict(request.headers), body)
        denied = self.auth_failure(request)
        if denied is not None:
            return denied
        if not isinstance(body, dict):
            return self.error(400, "invalid JSON body")
        b = self.behaviour
        if b.fail_status is not None:
            return self.error(b.fail_status, "simulated failure")
        checked = self._validate(body, chat)
        if isinstance(checked, Response):
            return checked
        prompt, max_tokens = checked
        stop = body.get("stop") or []
        gen = generate(
            prompt,
            body.get("seed"),
            max_tokens,
            temperature=body.get("temperature"),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            eos_at=b.eos_at,
        )
        n_prompt = prompt_tokens(prompt)
        self.counters["prompt_tokens_total"] += n_prompt
        finish = "length" if gen.finish == "length" else "stop"
        usage = {
            "prompt_tokens": n_prompt,
            "completion_tokens": len(gen.tokens),
            "total_tokens": n_prompt + len(gen.tokens),
        }
        if not body.get("stream"):
            await self.pace_first()
            text = "".join(gen.tokens)
            choice: dict[str, Any] = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text}
            )
            choice["finish_reason"] = finish
            return JSONResponse({"id": "x", "choices": [choice], "usage": usage})
        return self._stream(record, gen, chat, body, finish, usage)

    def _stream(
        self,
        record: RequestRecord,
        gen: Any,
        chat: bool,
        body: dict[str, Any],
        finish: str,
        usage: dict[str, int],
    ) -> EventStream:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        created = int(time.time())
        base: dict[str, Any] = {
            "id": ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(16),
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": created,
            "model": self.model,
        }
        if chat:
            base["system_fingerprint"] = "fp_simulated"
        if include_usage:
            base["usage"] = None
        last = len(gen.tokens) - 1
        stop_reason = gen.stopping_word or None

        def choice(text: str | None, finish_reason: str | None) -> dict[str, Any]:
            if chat:
                delta = {} if text is None else {"content": text}
                return {
                    "index": 0,
                    "delta": delta,
                    "logprobs": None,
                    "finish_reason": finish_reason,
                }
            return {
                "index": 0,
                "text": text or "",
                "logprobs": None,
                "finish_reason": finish_reason,
                "stop_reason": stop_reason if finish_reason else None,
            }

        def frame(i: int) -> bytes:
            text = gen.tokens[i]
            prefix = b""
            if chat and i == 0:
                role = {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None}
                prefix = _data({**base, "choices": [{**role, "finish_reason": None}]})
            closing = not chat and i == last
            chunk = {**base, "choices": [choice(text, finish if closing else None)]}
            return prefix + _data(chunk)

        def final() -> list[bytes]:
            frames = []
            if chat or last < 0:
                if chat and last < 0:
                    role = {"index": 0, "delta": {"role": "assistant", "content": ""}}
                    frames.append(_data({**base, "choices": [{**role, "finish_reason": None}]}))
                frames.append(_data({**base, "choices": [choice(None, finish)]}))
            if include_usage:
                frames.append(_data({**base, "choices": [], "usage": usage}))
            frames.append(_DONE)
            self.counters["generation_tokens_total"] += len(gen.tokens)
            return frames

        def error_frame() -> bytes:
            error = {"message": "simulated engine failure", "type": "InternalServerError"}
            return _data({"error": {**error, "param": None, "code": 500}}) + _DONE

        frames = token_frames(
            self, record, len(gen.tokens), frame, error_frame=error_frame, final=final
        )
        return EventStream(self, record, frames)


class FakeVllm(_OpenAICompatible):
    """A simulated vLLM OpenAI-compatible server (``/version`` says ``+simulated``)."""

    kind = "vllm"
    owned_by = "vllm"

    def routes(self) -> Sequence[BaseRoute]:
        return [
            *super().routes(),
            Route("/health", self.health),
            Route("/version", self.version),
            Route("/metrics", self.metrics),
            Route("/rerank", self.rerank, methods=["POST"]),
            Route("/v1/rerank", self.rerank, methods=["POST"]),
        ]

    def model_card(self) -> dict[str, Any]:
        return {**super().model_card(), "root": self.model, "max_model_len": self.max_model_len}

    async def rerank(self, request: Request) -> Response:
        model = self.model

        def answer(body: dict[str, Any]) -> dict[str, Any]:
            return {
                "id": f"rerank-{len(self.requests)}",
                **rerank_list(model, body, documents_echo=True),
            }

        return await serve(self, request, answer, self.error)

    async def health(self, request: Request) -> Response:
        status = self.behaviour.health_status
        return Response(b"", 200 if status is None else status)

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": self.behaviour.version or VLLM_VERSION})

    def kv_cache_usage(self) -> float:
        """Simulated KV use: a quarter of the cache per running request, capped at all of it."""
        return min(1.0, self.active / 4)

    async def metrics(self, request: Request) -> Response:
        labels = f'engine="0",model_name="{self.model}"'
        lines = [
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{{{labels}}} {self.active}",
            "# TYPE vllm:kv_cache_usage_perc gauge",
            f"vllm:kv_cache_usage_perc{{{labels}}} {self.kv_cache_usage()}",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{{{labels}}} 0",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{{{labels}}} {self.counters['prompt_tokens_total']}",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{{{labels}}} {self.counters['generation_tokens_total']}",
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{{labels},finished_reason="length"}} 0',
            "# TYPE vllm:time_to_first_token_seconds histogram",
            f'vllm:time_to_first_token_seconds_bucket{{{labels},le="+Inf"}} 0',
            f"vllm:time_to_first_token_seconds_count{{{labels}}} 0",
            f"vllm:time_to_first_token_seconds_sum{{{labels}}} 0.0",
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")


class FakeOpenAI(_OpenAICompatible):
    """A simulated OpenAI API: bearer key required; models are ``owned_by: simulated``."""

    kind = "openai"
    error_types = {
        400: "invalid_request_error",
        401: "invalid_request_error",
        404: "invalid_request_error",
        429: "rate_limit_exceeded",
        500: "server_error",
        503: "server_error",
    }

    def __init__(self, *, api_key: str = "sk-simulated-key-0000", **kw: Any) -> None:
        super().__init__(**kw)
        self.api_key = api_key

    def auth_failure(self, request: Request) -> Response | None:
        presented = request.headers.get("authorization", "")
        if presented == f"Bearer {self.api_key}":
            return None
        # Echoes what was presented, as careless upstreams do: adapters must redact it.
        return self.error(401, f"Incorrect API key provided: {presented.removeprefix('Bearer ')}")
