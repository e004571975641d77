"""A simulated Hugging Face TGI router (ENGINE_PROTOCOLS.md §3), labelled simulated.

``/generate_stream`` writes ``data:{json}`` with **no space**, token ``index`` from 1, a final
token event carrying ``generated_text`` (and ``details`` when asked), and no ``[DONE]``.
Validation and overload errors arrive as a 200 stream with one ``{"error","error_type"}`` event.
``/v1/chat/completions`` streams TGI's OpenAI-style chunks (§3.6): ``id`` empty, every delta
repeats the role, the last token's chunk carries ``finish_reason``, ``data:[DONE]`` ends it; the
messages' contents joined by newlines stand in for the model's chat template.
``/info`` reports ``version: ...+simulated`` and ``docker_label: "simulated"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from llama_orch.testing.fake_engines._embed import BadInput, scores, serve, texts_of, vectors
from llama_orch.testing.fake_engines._server import (
    Behaviour,
    EventStream,
    FakeEngine,
    token_frames,
)
from llama_orch.testing.fake_engines._tokens import generate, prompt_tokens

TGI_VERSION = "3.3.6+simulated"
_FINISH = {"length": "length", "stop": "stop_sequence", "eos": "eos_token"}


def _data(obj: Any) -> bytes:
    return b"data:" + orjson.dumps(obj) + b"\n\n"


async def _single(frame: bytes) -> Any:
    yield frame


class FakeTgi(FakeEngine):
    kind = "tgi"

    def __init__(
        self,
        *,
        max_input_tokens: int = 3072,
        max_total_tokens: int = 4096,
        max_concurrent_requests: int = 128,
        max_client_batch_size: int = 32,
        model: str = "tiny",
        behaviour: Behaviour | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        listening: bool = True,
    ) -> None:
        super().__init__(
            model=model, behaviour=behaviour, host=host, port=port, listening=listening
        )
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.max_concurrent_requests = max_concurrent_requests
        #: text-embeddings-inference's ``--max-client-batch-size``: more inputs are a 422.
        self.max_client_batch_size = max_client_batch_size
        self.failures = {"validation": 0, "overloaded": 0, "generation": 0, "dropped": 0}

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/health", self.health),
            Route("/ping", self.health),
            Route("/info", self.info),
            Route("/v1/models", self.models),
            Route("/metrics", self.metrics),
            Route("/generate_stream", self.generate_stream, methods=["POST"]),
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/embed", self.embed, methods=["POST"]),
            Route("/rerank", self.rerank, methods=["POST"]),
        ]

    # -- text-embeddings-inference (the family's embedding server) ----------------------------

    def tei_error(self, status: int, message: str) -> Response:
        kinds = {400: "Empty", 422: "Validation", 424: "Backend", 429: "Overloaded"}
        body = {"error": message, "error_type": kinds.get(status, "Backend")}
        return JSONResponse(body, status)

    def _batch(self, texts: list[str]) -> None:
        if len(texts) > self.max_client_batch_size:
            raise BadInput(
                f"batch size {len(texts)} > maximum allowed batch size {self.max_client_batch_size}"
            )

    async def embed(self, request: Request) -> Response:
        model = self.model

        def answer(body: dict[str, Any]) -> list[list[float]]:
            texts = texts_of(body.get("inputs"), "inputs")
            self._batch(texts)
            dims = body.get("dimensions")
            return vectors(model, texts, dims if isinstance(dims, int) else None)

        return await serve(self, request, answer, self.tei_error, bad_status=422)

    async def rerank(self, request: Request) -> Response:
        model = self.model

        def answer(body: dict[str, Any]) -> list[dict[str, Any]]:
            query = body.get("query")
            if not isinstance(query, str) or not query:
                raise BadInput("`query` must be a non-empty string")
            texts = texts_of(body.get("texts"), "texts")
            self._batch(texts)
            ranked = sorted(enumerate(scores(model, query, texts)), key=lambda p: -p[1])
            return [{"index": i, "score": s} for i, s in ranked]

        return await serve(self, request, answer, self.tei_error, bad_status=422)

    async def health(self, request: Request) -> Response:
        status = self.behaviour.health_status
        if status is not None and status != 200:
            body = {"error": "unhealthy", "error_type": "healthcheck"}
            return JSONResponse(body, status)
        return Response(b"", 200)

    async def info(self, request: Request) -> Response:
        return JSONResponse(
            {
                "model_id": self.model,
                "model_sha": None,
                "model_pipeline_tag": "text-generation",
                "max_concurrent_requests": self.max_concurrent_requests,
                "max_best_of": 2,
                "max_stop_sequences": 4,
                "max_input_tokens": self.max_input_tokens,
                "max_total_tokens": self.max_total_tokens,
                "validation_workers": 2,
                "max_client_batch_size": 4,
                "router": "text-generation-router",
                "version": TGI_VERSION,
                "sha": "simulated",
                "docker_label": "simulated",
            }
        )

    async def models(self, request: Request) -> Response:
        card = {"id": self.model, "object": "model", "created": 0, "owned_by": self.model}
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics(self, request: Request) -> Response:
        lines = ["# TYPE tgi_request_failure counter"]
        lines += [f'tgi_request_failure{{err="{k}"}} {v}' for k, v in self.failures.items()]
        lines += ["# TYPE tgi_queue_size gauge", "tgi_queue_size 0"]
        lines += ["# TYPE tgi_batch_current_size gauge", f"tgi_batch_current_size {self.active}"]
        return Response("\n".join(lines) + "\n", media_type="text/plain")

    def _stream_error(self, record: Any, message: str, kind: str) -> EventStream:
        self.failures[kind] = self.failures.get(kind, 0) + 1
        frame = _data({"error": message, "error_type": kind})
        return EventStream(self, record, _single(frame))

    def _validate(self, inputs: Any, params: dict[str, Any]) -> str | None:
        if not isinstance(inputs, str) or not inputs:
            return "Input validation error: `inputs` cannot be empty"
        temperature = params.get("temperature")
        if temperature is not None and temperature <= 0:
            return "Input validation error: `temperature` must be strictly positive"
        top_p = params.get("top_p")
        if top_p is not None and not 0 < top_p < 1:
            return "Input validation error: `top_p` must be > 0.0 and < 1.0"
        top_k = params.get("top_k")
        if top_k is not None and top_k <= 0:
            return "Input validation error: `top_k` must be strictly positive"
        max_new = params.get("max_new_tokens")
        if max_new is not None and max_new <= 0:
            return "Input validation error: `max_new_tokens` must be strictly positive"
        if len(params.get("stop") or []) > 4:
            return "Input validation error: `stop` supports up to 4 stop sequences"
        n_in = prompt_tokens(inputs)
        if n_in > self.max_input_tokens:
            limit = self.max_input_tokens
            return f"Input validation error: `inputs` must have less than {limit} tokens"
        if max_new is not None and n_in + max_new > self.max_total_tokens:
            return (
                f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                f"{self.max_total_tokens}"
            )
        return None

    async def generate_stream(  # noqa: C901 - mirrors the engine route: one branch per fault
        self, request: Request
    ) -> Response | EventStream:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            # axum rejects malformed JSON before the handler, in plain text.
            return Response(b"Failed to parse the request body as JSON", 400)
        record = self.record("POST", request.url.path, dict(request.headers), body)
        b = self.behaviour
        if b.fail_status is not None:
            return JSONResponse(
                {"error": "simulated failure", "error_type": "generation"}, b.fail_status
            )
        raw_params = body.get("parameters")
        params = raw_params if isinstance(raw_params, dict) else {}
        inputs = body.get("inputs")
        problem = self._validate(inputs, params)
        if problem is not None:
            return self._stream_error(record, problem, "validation")
        if self.active >= self.max_concurrent_requests:
            return self._stream_error(record, "Model is overloaded", "overloaded")
        n_in = prompt_tokens(inputs)
        # Without a parameters object at all, TGI samples by default (ENGINE_PROTOCOLS.md §3.4).
        sampling = params.get("do_sample", raw_params is None) or any(
            params.get(k) is not None for k in ("temperature", "top_k", "top_p", "typical_p")
        )
        gen = generate(
            inputs,
            params.get("seed") if sampling else None,
            params.get("max_new_tokens") or self.max_total_tokens - n_in,
            temperature=None if sampling else 0.0,
            stop=tuple(params.get("stop") or ()),
            eos_at=b.eos_at,
        )
        with_details = bool(params.get("details"))
        n = len(gen.tokens)

        def event(i: int, text: str, token_id: int, special: bool, last: bool) -> bytes:
            token = {"id": token_id, "text": text, "logprob": -0.5, "special": special}
            payload: dict[str, Any] = {
                "index": i + 1,
                "token": token,
                "generated_text": None,
                "details": None,
            }
            if last:
                payload["generated_text"] = "".join(gen.tokens)
                if with_details:
                    payload["details"] = {
                        "finish_reason": _FINISH[gen.finish],
                        "generated_tokens": n + (1 if gen.finish == "eos" else 0),
                        "seed": params.get("seed") if sampling else None,
                        "input_length": n_in,
                    }
            return _data(payload)

        def frame(i: int) -> bytes:
            last = i == n - 1 and gen.finish != "eos"
            return event(i, gen.tokens[i], gen.ids[i], False, last)

        def final() -> list[bytes]:
            if gen.finish == "eos" or n == 0:
                return [event(n, "</s>", 2, True, True)]
            return []

        def error_frame() -> bytes:
            self.failures["generation"] += 1
            return _data({"error": "simulated engine failure", "error_type": "generation"})

        frames = token_frames(self, record, n, frame, error_frame=error_frame, final=final)

        def count_drop() -> None:
            if record.closed_early:
                self.failures["dropped"] += 1

        return EventStream(
            self,
            record,
            frames,
            on_done=count_drop,
            extra_headers=[(b"x-accel-buffering", b"no"), (b"x-compute-type", b"simulated")],
        )

    async def chat(self, request: Request) -> Response | EventStream:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return Response(b"Failed to parse the request body as JSON", 400)
        record = self.record("POST", request.url.path, dict(request.headers), body)
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages or not body.get("stream"):
            body_error = {"error": "simulated: streamed chats only", "error_type": "validation"}
            return JSONResponse(body_error, 422)
        prompt = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        temperature = body.get("temperature")
        greedy = temperature is not None and temperature <= 0
        n_in = prompt_tokens(prompt)
        gen = generate(
            prompt,
            None if greedy else body.get("seed"),
            body.get("max_tokens") or self.max_total_tokens - n_in,
            temperature=0.0 if greedy else temperature,
            stop=tuple(body.get("stop") or ()),
            eos_at=self.behaviour.eos_at,
        )
        n = len(gen.tokens)
        finish = "stop" if gen.finish == "eos" else _FINISH[gen.finish]
        head = {"object": "chat.completion.chunk", "id": "", "created": 0, "model": self.model}
        fingerprint = f"{TGI_VERSION}-simulated"

        def chunk(text: str, reason: str | None) -> bytes:
            delta = {"role": "assistant", "content": text}
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            payload = {**head, "system_fingerprint": fingerprint, "choices": [choice]}
            return _data({**payload, "usage": None})

        def frame(i: int) -> bytes:
            return chunk(gen.tokens[i], finish if i == n - 1 and gen.finish != "eos" else None)

        def final() -> list[bytes]:
            frames = [chunk("", finish)] if gen.finish == "eos" or n == 0 else []
            if (body.get("stream_options") or {}).get("include_usage"):
                usage = {"prompt_tokens": n_in, "completion_tokens": n, "total_tokens": n_in + n}
                frames.append(_data({**head, "choices": [], "usage": usage}))
            return [*frames, b"data:[DONE]\n\n"]

        def error_frame() -> bytes:
            self.failures["generation"] += 1
            return _data({"error": "simulated engine failure", "error_type": "generation"})

        frames = token_frames(self, record, n, frame, error_frame=error_frame, final=final)
        return EventStream(self, record, frames)
