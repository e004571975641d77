"""A simulated Triton Inference Server with a vLLM-backend model (ENGINE_PROTOCOLS.md §4).

HTTP/REST only: ``/v2/health/{live,ready}`` (empty 200, or 400 when unhealthy), ``/v2`` (server
``name`` is ``triton-simulated``), ``/v2/models/{m}`` metadata, ``/ready``, ``/config``,
``/stats``, and the generate extension ``/v2/models/{m}/generate_stream`` with ``data: {json}``
frames carrying **delta** ``text_output`` and no ``[DONE]``. Errors before inference are plain
JSON ``{"error": "..."}``; later ones are an in-stream ``{"error": "..."}`` event.

Deviation: real Triton serves ``/metrics`` on a separate port (8002); this fake serves the
``nv_inference_*`` series on the main port.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from llama_orch.testing.fake_engines._server import (
    Behaviour,
    EventStream,
    FakeEngine,
    token_frames,
)
from llama_orch.testing.fake_engines._tokens import generate

TRITON_VERSION = "2.61.0"
SERVER_NAME = "triton-simulated"
_INPUTS = [
    {"name": "text_input", "datatype": "BYTES", "shape": [1]},
    {"name": "stream", "datatype": "BOOL", "shape": [1]},
    {"name": "sampling_parameters", "datatype": "BYTES", "shape": [1]},
    {"name": "exclude_input_in_output", "datatype": "BOOL", "shape": [1]},
    {"name": "return_finish_reason", "datatype": "BOOL", "shape": [1]},
]
_OUTPUTS = [
    {"name": "text_output", "datatype": "BYTES", "shape": [-1]},
    {"name": "finish_reason", "datatype": "BYTES", "shape": [-1]},
]


def _error(status: int, message: str) -> Response:
    return Response(orjson.dumps({"error": message}), status, media_type="application/json")


class FakeTriton(FakeEngine):
    kind = "triton"

    def __init__(
        self,
        *,
        model: str = "vllm_model",
        behaviour: Behaviour | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        listening: bool = True,
    ) -> None:
        super().__init__(
            model=model, behaviour=behaviour, host=host, port=port, listening=listening
        )
        self.success = 0
        self.failure = 0

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/v2", self.server_metadata),
            Route("/v2/health/live", self.health),
            Route("/v2/health/ready", self.health),
            Route("/v2/models/{model}", self.model_metadata),
            Route("/v2/models/{model}/ready", self.model_ready),
            Route("/v2/models/{model}/config", self.model_config),
            Route("/v2/models/{model}/stats", self.model_stats),
            Route("/v2/models/{model}/generate_stream", self.generate_stream, methods=["POST"]),
            Route("/metrics", self.metrics),
        ]

    def _unknown(self, request: Request) -> Response | None:
        name = request.path_params["model"]
        if name != self.model:
            return _error(400, f"Request for unknown model: '{name}' is not found")
        return None

    async def server_metadata(self, request: Request) -> Response:
        extensions = ["classification", "sequence", "model_repository", "statistics", "generate"]
        return JSONResponse(
            {"name": SERVER_NAME, "version": TRITON_VERSION, "extensions": extensions}
        )

    async def health(self, request: Request) -> Response:
        status = self.behaviour.health_status
        return Response(b"", 200 if status is None else status)

    async def model_metadata(self, request: Request) -> Response:
        return self._unknown(request) or JSONResponse(
            {
                "name": self.model,
                "versions": ["1"],
                "platform": "vllm",
                "inputs": _INPUTS,
                "outputs": _OUTPUTS,
            }
        )

    async def model_ready(self, request: Request) -> Response:
        if self.behaviour.health_status not in (None, 200):
            return _error(400, "Model version not ready")
        return self._unknown(request) or Response(b"", 200)

    async def model_config(self, request: Request) -> Response:
        return self._unknown(request) or JSONResponse(
            {
                "name": self.model,
                "backend": "vllm",
                "max_batch_size": 0,
                "model_transaction_policy": {"decoupled": True},
            }
        )

    async def model_stats(self, request: Request) -> Response:
        stats = {
            "name": self.model,
            "version": "1",
            "inference_count": self.success,
            "execution_count": self.success,
            "inference_stats": {
                "success": {"count": self.success, "ns": 0},
                "fail": {"count": self.failure, "ns": 0},
            },
        }
        return self._unknown(request) or JSONResponse({"model_stats": [stats]})

    async def metrics(self, request: Request) -> Response:
        labels = f'model="{self.model}",version="1"'
        lines = [
            "# TYPE nv_inference_request_success counter",
            f"nv_inference_request_success{{{labels}}} {self.success}",
            "# TYPE nv_inference_request_failure counter",
            f"nv_inference_request_failure{{{labels}}} {self.failure}",
            "# TYPE nv_inference_pending_request_count gauge",
            f"nv_inference_pending_request_count{{{labels}}} {self.active}",
        ]
        return Response("\n".join(lines) + "\n", media_type="text/plain")

    async def generate_stream(self, request: Request) -> Response | EventStream:
        unknown = self._unknown(request)
        if unknown is not None:
            return unknown
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError:
            return _error(400, "failed to parse the request JSON buffer")
        record = self.record("POST", request.url.path, dict(request.headers), body)
        b = self.behaviour
        if b.fail_status is not None:
            self.failure += 1
            return _error(b.fail_status, "simulated failure")
        params = {
            **body.get("parameters", {}),
            **{k: v for k, v in body.items() if k != "parameters"},
        }
        text_input = params.get("text_input")
        if not isinstance(text_input, str):
            return _error(400, "expected 'text_input' input")
        if params.get("stream") is not True:
            return _error(400, "Streaming is only supported with the 'stream' input set to true")
        max_tokens = params.get("max_tokens", 16)
        if not isinstance(max_tokens, int) or max_tokens < 1:
            return _error(400, "max_tokens must be at least 1, got " + repr(max_tokens))
        stop = params.get("stop") or []
        gen = generate(
            text_input,
            params.get("seed"),
            max_tokens,
            temperature=params.get("temperature"),
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            eos_at=b.eos_at,
        )
        base: dict[str, Any] = {"model_name": self.model, "model_version": "1"}
        if "id" in body:
            base["id"] = body["id"]
        want_finish = bool(params.get("return_finish_reason"))
        last = len(gen.tokens) - 1

        def frame(i: int) -> bytes:
            payload = {**base, "text_output": gen.tokens[i]}
            if want_finish:
                payload["finish_reason"] = gen.finish if i == last else None
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        def final() -> list[bytes]:
            self.success += 1
            return []

        def error_frame() -> bytes:
            self.failure += 1
            return b"data: " + orjson.dumps({"error": "simulated engine failure"}) + b"\n\n"

        frames = token_frames(
            self, record, len(gen.tokens), frame, error_frame=error_frame, final=final
        )
        return EventStream(self, record, frames, media_type="text/event-stream; charset=utf-8")
