"""Hugging Face TGI over its native API (OC-ADAPT-5040..5050, ENGINE_PROTOCOLS.md §3).

Probes: ``/health`` (empty 200; 503 with ``{"error","error_type"}``), ``/info`` (version, sha,
limits, model). Generation: ``POST /generate_stream``; frames are ``data:{json}`` (no space), the
final token event carries ``generated_text``, there is no ``[DONE]``. Errors, validation included,
arrive as a 200 stream with one ``{"error","error_type"}`` event. Cancel is closing the stream.

A task that came in as a chat goes to TGI's ``/v1/chat/completions`` (§3.6) with its messages,
so TGI applies the model's own chat template; that stream is OpenAI-shaped (``data:[DONE]``).

Parameter mapping follows TGI's validation: ``temperature <= 0`` means greedy, so the sampling
fields are left out (TGI rejects 0); ``top_p >= 1`` and ``top_k <= 0`` mean "disabled" and are
left out (TGI rejects them); ``do_sample`` is sent explicitly so an empty ``parameters`` object
cannot flip TGI into sampling.
"""

from __future__ import annotations

from typing import Any

from llama_orch.adapters._base import HttpAdapter, ParserBase, StreamParser, quote, version_text
from llama_orch.adapters._embed import tei_embed, tei_rerank
from llama_orch.adapters._openai_compat import OpenAIStreamParser
from llama_orch.contracts.engine import (
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    WorkerHealth,
    WorkerProps,
)
from llama_orch.errors import (
    WorkerError,
    WorkerInternal,
    WorkerInvalidParams,
    WorkerReset,
    WorkerUnavailable,
)
from llama_orch.vocab import DeterminismLevel, Engine, Workload

UINT64_MAX = 2**64 - 1
_FINISH = {"eos_token": "eos", "stop_sequence": "stop", "length": "length"}
_ERRORS: dict[str, type[WorkerError]] = {
    "validation": WorkerInvalidParams,
    "overloaded": WorkerUnavailable,
    "incomplete_generation": WorkerReset,
    "incomplete_generation_stream": WorkerReset,
    "generation": WorkerInternal,
}


class _Parser(ParserBase):
    __slots__ = ()

    def feed(self, obj: Any) -> str:
        if not isinstance(obj, dict):
            return ""
        error = obj.get("error")
        if error:
            kind = str(obj.get("error_type", ""))
            cls = _ERRORS.get(kind, WorkerInternal)
            message = error.get("message", error) if isinstance(error, dict) else error
            raise cls(
                f"{self.engine}: {kind or 'error'}: {quote(str(message), self.redactor)}",
                engine=self.engine,
                pool_id=self.pool_id,
            )
        token = obj.get("token") or {}
        if obj.get("generated_text") is not None:
            self.done = True
            details = obj.get("details") or {}
            reason = details.get("finish_reason")
            if reason:
                self.summary["finish_reason"] = _FINISH.get(reason, reason)
            if details.get("input_length") is not None:
                self.summary["tokens_in"] = details["input_length"]
            if details.get("seed") is not None:
                self.summary["seed"] = details["seed"]
        if token.get("special"):
            return ""  # </s> and friends are not text
        text = token.get("text")
        return text if isinstance(text, str) else ""


class TgiAdapter(HttpAdapter):
    engine_kind = Engine.TGI

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._max_stop: int | None = None

    async def health(self) -> WorkerHealth:
        response = await self.get("/health")
        if response.status_code == 200:
            return WorkerHealth(live=True, ready=True)
        if response.status_code == 503:
            return WorkerHealth(live=True, ready=False, detail="TGI reports unhealthy")
        raise self.status_error(response, "GET /health")

    async def _info(self) -> dict[str, Any]:
        info = await self.get_json("/info")
        if not isinstance(info, dict):
            raise WorkerInternal(self._error("/info is not an object"), engine=self.engine.value)
        version = version_text(info.get("version"))
        if version is not None:
            self._version = version
        stops = info.get("max_stop_sequences")
        self._max_stop = stops if isinstance(stops, int) else None
        return info

    async def engine_version(self) -> str:
        if self._version is None:
            await self._info()
        return self._version or "unknown"

    async def props(self) -> WorkerProps:
        info = await self._info()
        # text-embeddings-inference reports max_input_length instead of max_total_tokens.
        total = info.get("max_total_tokens", info.get("max_input_length"))
        return WorkerProps(
            slots_total=info.get("max_concurrent_requests"),
            ctx_max=total if isinstance(total, int) else None,
            model_id=info.get("model_id"),
            model_digest=info.get("model_sha"),
            sampler_profile_version=self._pool.sampler_profile_version,
            features={
                "streaming": True,
                "max_input_tokens": info.get("max_input_tokens", info.get("max_input_length")),
                "max_stop_sequences": self._max_stop,
                "sha": info.get("sha"),
                "docker_label": info.get("docker_label"),
            },
        )

    @staticmethod
    def _chat_for(request: GenerateRequest) -> bool:
        # TGI's chat route takes no top_k or repetition_penalty; such chats keep the native
        # route with the prompt the front door rendered.
        return (
            request.messages is not None
            and request.top_k is None
            and request.repeat_penalty is None
        )

    def _chat_call(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        assert request.messages is not None
        body: dict[str, Any] = {
            "model": "tgi",
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.temperature is not None:
            body["temperature"] = request.temperature  # 0 is greedy on this route
        if request.top_p is not None and request.top_p < 1:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = list(request.stop)
        return "/v1/chat/completions", body

    def generate_call(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        if request.seed is not None and not 0 <= request.seed <= UINT64_MAX:
            raise self._invalid(f"TGI takes seeds 0..{UINT64_MAX}; got {request.seed}")
        if self._chat_for(request):
            path, body = self._chat_call(request)
            if request.seed is not None:
                body["seed"] = request.seed
            return path, body
        params: dict[str, Any] = {"max_new_tokens": request.max_tokens, "details": True}
        greedy = request.temperature is not None and request.temperature <= 0
        sampling = False
        if not greedy:
            if request.temperature is not None:
                params["temperature"] = request.temperature
                sampling = True
            if request.top_p is not None and request.top_p < 1:
                params["top_p"] = request.top_p
                sampling = True
            if request.top_k is not None and request.top_k > 0:
                params["top_k"] = request.top_k
                sampling = True
        params["do_sample"] = sampling
        if request.seed is not None:
            params["seed"] = request.seed
        if request.repeat_penalty is not None:
            params["repetition_penalty"] = request.repeat_penalty
        if request.stop:
            limit = self._max_stop
            if limit is not None and len(request.stop) > limit:
                raise self._invalid(f"TGI takes at most {limit} stop sequences")
            params["stop"] = list(request.stop)
        return "/generate_stream", {"inputs": request.prompt, "parameters": params}

    def _invalid(self, message: str) -> WorkerInvalidParams:
        return WorkerInvalidParams(message, engine=self.engine.value, pool_id=self.pool_id)

    def embed_call(self, request: EmbedRequest) -> tuple[str, dict[str, Any]]:
        """The TGI family's embedding server (text-embeddings-inference) native routes."""
        if request.workload is Workload.RERANK:
            body: dict[str, Any] = {
                "query": request.query,
                "texts": list(request.texts),
                "raw_scores": False,
                "truncate": False,
            }
            return "/rerank", body
        body = {"inputs": list(request.texts), "normalize": True, "truncate": False}
        if request.dimensions is not None:
            body["dimensions"] = request.dimensions
        return "/embed", body

    def embed_result(self, request: EmbedRequest, answer: Any) -> EmbedResult:
        if request.workload is Workload.RERANK:
            return tei_rerank(request, answer)
        return tei_embed(request, answer)

    def started_data(self, request: GenerateRequest) -> dict[str, Any]:
        data = super().started_data(request)
        if request.determinism is DeterminismLevel.STRICT:
            data["determinism"] = "strict"
            data["determinism_note"] = (
                "TGI batches concurrent requests; strict determinism needs the router launched "
                "with --max-concurrent-requests 1"
            )
        return data

    def new_parser(self, request: GenerateRequest) -> StreamParser:
        if self._chat_for(request):
            return OpenAIStreamParser(self.engine.value, self.pool_id, self._redactor, chat=True)
        return _Parser(self.engine.value, self.pool_id, self._redactor)
