"""vLLM over its OpenAI-compatible server (OC-ADAPT-5020..5030, ENGINE_PROTOCOLS.md §2).

Probes: ``/health`` (empty 200), ``/version``, ``/v1/models`` (``max_model_len``), ``/metrics``
(``vllm:*``). Generation: ``/v1/completions`` by default, ``/v1/chat/completions`` with
``upstream_api: chat`` (the prompt becomes one user message). A task that came in as a chat
goes to ``/v1/chat/completions`` with its messages, so vLLM applies the model's own template.
vLLM takes ``top_k`` and ``repetition_penalty`` as extra sampling fields. Cancel is closing the
stream.
"""

from __future__ import annotations

from typing import Any

from llama_orch.adapters._base import HttpAdapter, StreamParser, version_text
from llama_orch.adapters._embed import OpenAIEmbedRoutes
from llama_orch.adapters._openai_compat import OpenAIStreamParser, listed_models, openai_body
from llama_orch.adapters._prom import gauge_value
from llama_orch.contracts.engine import (
    GenerateRequest,
    WorkerHealth,
    WorkerProps,
)
from llama_orch.errors import WorkerError
from llama_orch.vocab import DeterminismLevel, Engine

#: What strict determinism needs on the server side (§2.9); an external server is launched so.
STRICT_LAUNCH_FLAGS = ("--max-num-seqs", "1", "--no-enable-prefix-caching")


class VllmAdapter(OpenAIEmbedRoutes, HttpAdapter):
    embed_dimensions = True
    engine_kind = Engine.VLLM

    @property
    def chat(self) -> bool:
        return self._pool.upstream_api == "chat"

    async def health(self) -> WorkerHealth:
        response = await self.get("/health")
        if response.status_code == 200:
            return WorkerHealth(live=True, ready=True)
        if response.status_code >= 500:
            # A dead engine core answers 503 with an empty body (§2.2).
            return WorkerHealth(live=True, ready=False, detail=f"HTTP {response.status_code}")
        raise self.status_error(response, "GET /health")

    async def engine_version(self) -> str:
        if self._version is None:
            version = version_text((await self.get_json("/version")).get("version"))
            self._version = version if version is not None else "unknown"
        return self._version

    async def props(self) -> WorkerProps:
        cards, served = listed_models(await self.get_json("/v1/models"))
        card = next((c for c in cards if c.get("id") == self._pool.model), None)
        ctx = card.get("max_model_len") if card else None
        return WorkerProps(
            ctx_max=ctx if isinstance(ctx, int) else None,
            kv_cache_usage_ratio=await self._kv_usage(),
            model_id=card.get("id") if card else None,
            served_models=served,
            # vLLM has no sampler-profile version of its own; the engine version stands for it.
            sampler_profile_version=self._pool.sampler_profile_version or self._version,
            features={
                "streaming": True,
                "api": "chat" if self.chat else "completions",
                "model_served": card is not None,
                "served_models": [c.get("id") for c in cards],
            },
        )

    async def _kv_usage(self) -> float | None:
        """The KV cache fraction in use (``vllm:kv_cache_usage_perc`` is 0..1 despite its name;
        older releases call it ``vllm:gpu_cache_usage_perc``)."""
        try:
            text = await self.metrics_text()
        except WorkerError:
            return None  # unreachable metrics: unknown, not fatal
        return gauge_value(text, "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")

    async def metrics_text(self) -> str:
        response = await self.get("/metrics")
        if response.status_code >= 400:
            raise self.status_error(response, "GET /metrics")
        return response.text

    def _chat_for(self, request: GenerateRequest) -> bool:
        return self.chat or request.messages is not None

    def generate_call(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        chat = self._chat_for(request)
        body = openai_body(
            self,
            request,
            chat=chat,
            top_k=True,
            repetition_penalty=True,
            model=self._pool.model,
        )
        return ("/v1/chat/completions" if chat else "/v1/completions"), body

    def started_data(self, request: GenerateRequest) -> dict[str, Any]:
        data = super().started_data(request)
        if request.determinism is DeterminismLevel.STRICT:
            data["determinism"] = "strict"
            data["determinism_note"] = (
                "vLLM batches concurrent requests; strict determinism needs the server launched "
                f"with {' '.join(STRICT_LAUNCH_FLAGS)}"
            )
        return data

    def new_parser(self, request: GenerateRequest) -> StreamParser:
        return OpenAIStreamParser(
            self.engine.value, self.pool_id, self._redactor, chat=self._chat_for(request)
        )
