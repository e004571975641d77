"""A simulated llama.cpp ``llama-server`` (ENGINE_PROTOCOLS.md §1), labelled simulated.

Speaks the native API: ``/health``, ``/props``, ``/slots``, ``/v1/models``, ``/metrics`` and
``/completion`` (alias ``/completions``) with ``data: {json}`` frames, no ``[DONE]``, and a final
``"stop": true`` event. While ``behaviour.loading`` is set every path answers 503 "Loading model".
With N slots, the N+1st stream's headers wait until a slot frees, as in the real server. After a
streamed ``/completion`` the connection closes, although the response headers allowed keep-alive.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from llama_orch.testing.fake_engines._embed import openai_list, rerank_list, serve
from llama_orch.testing.fake_engines._server import (
    Behaviour,
    EventStream,
    FakeEngine,
    token_frames,
)
from llama_orch.testing.fake_engines._tokens import generate, prompt_tokens

BUILD_INFO = "b0-simulated"
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


def error_response(status: int, message: str, **extra: Any) -> Response:
    kind = _ERROR_TYPES.get(status, "server_error")
    body = {"error": {"code": status, "message": message, "type": kind, **extra}}
    return Response(orjson.dumps(body), status, media_type="application/json; charset=utf-8")


class FakeLlamaCpp(FakeEngine):
    kind = "llamacpp"

    def __init__(
        self,
        *,
        slots: int = 1,
        n_ctx: int = 4096,
        metrics: bool = True,
        model: str = "tiny",
        behaviour: Behaviour | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        listening: bool = True,
        chat_template: str = "",
        embeddings: bool = False,
        reranking: bool = False,
    ) -> None:
        super().__init__(
            model=model, behaviour=behaviour, host=host, port=port, listening=listening
        )
        #: What /props reports as the GGUF's tokenizer.chat_template ("" when it has none).
        self.chat_template = chat_template
        #: Started with ``--embeddings`` / ``--reranking`` (which turns embedding mode on too).
        self.embeddings = embeddings or reranking
        self.reranking = reranking
        self.slots = slots
        self.n_ctx = n_ctx
        self.metrics_enabled = metrics
        self._free = asyncio.Semaphore(slots)
        self._busy: set[int] = set()
        self.deferred = 0
        self.counters = {"prompt_tokens_total": 0, "tokens_predicted_total": 0, "n_decode_total": 0}
        inner = self.app
        self.app = self._loading_gate(inner)  # type: ignore[assignment]

    def _loading_gate(self, inner: ASGIApp) -> ASGIApp:
        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] == "http" and self.behaviour.loading:
                await error_response(503, "Loading model")(scope, receive, send)
                return
            await inner(scope, receive, send)

        return app

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/health", self.health),
            Route("/v1/health", self.health),
            Route("/props", self.props),
            Route("/slots", self.slots_view),
            Route("/v1/models", self.models),
            Route("/metrics", self.metrics),
            Route("/completion", self.completion, methods=["POST"]),
            Route("/completions", self.completion, methods=["POST"]),
            Route("/v1/embeddings", self.embed, methods=["POST"]),
            *(
                Route(path, self.rerank, methods=["POST"])
                for path in ("/rerank", "/reranking", "/v1/rerank", "/v1/reranking")
            ),
        ]

    async def embed(self, request: Request) -> Response:
        if not self.embeddings:
            return error_response(
                501, "This server does not support embeddings. Start it with `--embeddings`"
            )
        model = self.model
        return await serve(
            self,
            request,
            lambda body: openai_list(model, body, dimensions=False, item_format=True),
            error_response,
        )

    async def rerank(self, request: Request) -> Response:
        if not self.reranking:
            return error_response(
                501, "This server does not support reranking. Start it with `--reranking`"
            )
        model = self.model
        return await serve(
            self,
            request,
            lambda body: rerank_list(model, body, documents_echo=False),
            error_response,
        )

    def _params(self) -> dict[str, Any]:
        return {"seed": 4294967295, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "n_predict": -1}

    async def health(self, request: Request) -> Response:
        status = self.behaviour.health_status
        if status is not None and status != 200:
            return error_response(status, "simulated unhealthy engine")
        return JSONResponse({"status": "ok"})

    async def props(self, request: Request) -> Response:
        return JSONResponse(
            {
                "default_generation_settings": {"n_ctx": self.n_ctx, "params": self._params()},
                "total_slots": self.slots,
                "model_alias": self.model,
                "model_path": f"/simulated/{self.model}.gguf",
                "model_ftype": "Q4_K_M",
                "modalities": {"vision": False, "video": False, "audio": False},
                "endpoint_slots": True,
                "endpoint_props": False,
                "endpoint_metrics": self.metrics_enabled,
                "chat_template": self.chat_template,
                "bos_token": "<s>",
                "eos_token": "</s>",
                "build_info": BUILD_INFO,
                "is_sleeping": False,
            }
        )

    async def slots_view(self, request: Request) -> Response:
        if request.query_params.get("fail_on_no_slot") == "1" and len(self._busy) >= self.slots:
            return error_response(503, "no slot available")
        return JSONResponse(
            [
                {
                    "id": i,
                    "n_ctx": self.n_ctx,
                    "speculative": False,
                    "is_processing": i in self._busy,
                    "params": self._params(),
                    "next_token": [
                        {"has_next_token": i in self._busy, "has_new_line": False, "n_remain": -1}
                    ],
                }
                for i in range(self.slots)
            ]
        )

    async def models(self, request: Request) -> Response:
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {
                        "id": self.model,
                        "object": "model",
                        "created": int(self.started_at),
                        "owned_by": "llamacpp",
                        "meta": None,
                    }
                ],
            }
        )

    async def metrics(self, request: Request) -> Response:
        if not self.metrics_enabled:
            return error_response(501, "This server does not support metrics endpoint.")
        lines = []
        values = {
            **{k: (v, "counter") for k, v in self.counters.items()},
            "requests_processing": (len(self._busy), "gauge"),
            "requests_deferred": (self.deferred, "gauge"),
        }
        for name, (value, kind) in values.items():
            lines += [
                f"# HELP llamacpp:{name} simulated",
                f"# TYPE llamacpp:{name} {kind}",
                f"llamacpp:{name} {value}",
            ]
        return Response(
            "\n".join(lines) + "\n",
            media_type="text/plain; version=0.0.4",
            headers={"Process-Start-Time-Unix": str(int(self.started_at))},
        )

    async def completion(  # noqa: C901 - mirrors the engine route: one branch per fault
        self, request: Request
    ) -> Response | EventStream:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return error_response(400, "Failed to parse JSON")
        record = self.record("POST", request.url.path, dict(request.headers), body)
        b = self.behaviour
        if b.fail_status is not None:
            return error_response(b.fail_status, "simulated failure")
        prompt = body.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            return error_response(400, '"prompt" must be provided')
        n_prompt = prompt_tokens(prompt)
        if n_prompt >= self.n_ctx:
            return error_response(
                400,
                f"request ({n_prompt} tokens) exceeds the available context size "
                f"({self.n_ctx} tokens), try increasing it",
                n_prompt_tokens=n_prompt,
                n_ctx=self.n_ctx,
            )
        n_predict = body.get("n_predict", body.get("max_tokens", -1))
        if not isinstance(n_predict, int) or n_predict < 0:
            n_predict = self.n_ctx - n_prompt
        seed = body.get("seed", -1)
        stop = body.get("stop") or []
        gen = generate(
            prompt,
            None if seed in (-1, 4294967295) else seed,
            min(n_predict, self.n_ctx - n_prompt),
            temperature=body.get("temperature"),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            eos_at=b.eos_at,
        )
        slot = {"id": -1}

        def final_event() -> dict[str, Any]:
            stop_type = {"length": "limit", "stop": "word", "eos": "eos"}[gen.finish]
            return {
                "index": 0,
                "content": "",
                "tokens": [],
                "id_slot": slot["id"],
                "stop": True,
                "model": self.model,
                "tokens_predicted": len(gen.tokens),
                "tokens_evaluated": n_prompt,
                "generation_settings": {**self._params(), "simulated": True},
                "prompt": prompt,
                "has_new_line": False,
                "truncated": False,
                "stop_type": stop_type,
                "stopping_word": gen.stopping_word,
                "tokens_cached": n_prompt + len(gen.tokens),
                "timings": {"prompt_n": n_prompt, "predicted_n": len(gen.tokens)},
            }

        if not body.get("stream"):
            await self.pace_first()
            return JSONResponse({**final_event(), "content": "".join(gen.tokens)})

        def frame(i: int) -> bytes:
            event = {
                "index": 0,
                "content": gen.tokens[i],
                "tokens": [gen.ids[i]],
                "stop": False,
                "id_slot": slot["id"],
                "tokens_predicted": i + 1,
                "tokens_evaluated": n_prompt,
            }
            return b"data: " + orjson.dumps(event) + b"\n\n"

        def final() -> list[bytes]:
            frames = []
            if gen.finish == "eos":
                eos = {
                    "index": 0,
                    "content": "",
                    "tokens": [2],
                    "stop": False,
                    "id_slot": slot["id"],
                }
                frames.append(b"data: " + orjson.dumps(eos) + b"\n\n")
            frames.append(b"data: " + orjson.dumps(final_event()) + b"\n\n")
            self.counters["tokens_predicted_total"] += len(gen.tokens)
            return frames

        def error_frame() -> bytes:
            error = {"code": 500, "message": "simulated engine failure", "type": "server_error"}
            return b"data: " + orjson.dumps({"error": error}) + b"\n\n"

        async def take_slot() -> None:
            # Headers go out only when a slot starts the task (ENGINE_PROTOCOLS.md §1.5).
            self.deferred += 1
            try:
                await self._free.acquire()
            finally:
                self.deferred -= 1
            slot["id"] = min(set(range(self.slots)) - self._busy)
            self._busy.add(slot["id"])
            self.counters["prompt_tokens_total"] += n_prompt
            self.counters["n_decode_total"] += 1

        def free_slot() -> None:
            if slot["id"] in self._busy:
                self._busy.discard(slot["id"])
                self._free.release()

        frames = token_frames(
            self, record, len(gen.tokens), frame, error_frame=error_frame, final=final
        )
        # llama-server ends the connection after every stream although its headers say
        # keep-alive; a client that reuses it for the next request fails.
        return EventStream(
            self,
            record,
            frames,
            before_headers=take_slot,
            on_done=free_slot,
            close_connection=True,
        )
