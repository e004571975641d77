"""Any OpenAI-compatible upstream (OC-ADAPT-OAI-6000..6031, ENGINE_PROTOCOLS.md §5).

The API key comes from the variable named by the pool's ``api_key_env`` (resolved once into
``Settings``), travels only in the ``Authorization`` header of the pooled client, and is redacted
from every message this adapter builds. Chat completions by default (``upstream_api:
completions`` picks the legacy route). OpenAI has no ``top_k`` and no repetition penalty: they are
not sent, and the ``started`` event lists them under ``unsupported_params``. No health or version
endpoint exists: ``GET /v1/models`` is the probe; the version is ``openai-compatible/<model>``
and each stream's ``system_fingerprint`` is reported in its ``end`` summary. GPU backing is the
operator's claim (``features.gpu_backing``).
"""

from __future__ import annotations

from typing import Any

from llama_orch.adapters._base import HttpAdapter, StreamParser
from llama_orch.adapters._embed import openai_embeddings, openai_embeddings_body
from llama_orch.adapters._openai_compat import OpenAIStreamParser, listed_models, openai_body
from llama_orch.contracts.engine import (
    EmbedRequest,
    EmbedResult,
    GenerateRequest,
    WorkerHealth,
    WorkerProps,
)
from llama_orch.errors import WorkerInvalidParams
from llama_orch.vocab import Engine, Workload

MAX_STOP = 4


class OpenAIAdapter(HttpAdapter):
    engine_kind = Engine.OPENAI

    @property
    def chat(self) -> bool:
        return self._pool.upstream_api != "completions"

    async def health(self) -> WorkerHealth:
        response = await self.get("/v1/models")
        if response.status_code == 200:
            return WorkerHealth(live=True, ready=True)
        if response.status_code in (401, 403):
            return WorkerHealth(
                live=True,
                ready=False,
                detail=f"the upstream refused the API key (HTTP {response.status_code}); "
                "check the variable named by api_key_env",
            )
        if response.status_code in (429, 500, 502, 503, 504):
            return WorkerHealth(live=True, ready=False, detail=f"HTTP {response.status_code}")
        raise self.status_error(response, "GET /v1/models")

    async def engine_version(self) -> str:
        return self._version or f"openai-compatible/{self._pool.model}"

    async def props(self) -> WorkerProps:
        _cards, served = listed_models(await self.get_json("/v1/models"))
        ids = served or ()
        return WorkerProps(
            served_models=served,
            model_id=self._pool.model if self._pool.model in ids else None,
            model_digest=None,
            sampler_profile_version=self._pool.sampler_profile_version,
            features={
                "streaming": True,
                "api": "chat" if self.chat else "completions",
                "model_served": self._pool.model in ids,
                "gpu_backing": "operator-claimed",
                "external": True,
            },
        )

    def generate_call(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        if len(request.stop) > MAX_STOP:
            raise WorkerInvalidParams(
                f"OpenAI takes at most {MAX_STOP} stop sequences; got {len(request.stop)}",
                engine=self.engine.value,
                pool_id=self.pool_id,
            )
        body = openai_body(
            self,
            request,
            chat=self.chat,
            top_k=False,
            repetition_penalty=False,
            model=self._pool.model,
        )
        return ("/v1/chat/completions" if self.chat else "/v1/completions"), body

    def embed_call(self, request: EmbedRequest) -> tuple[str, dict[str, Any]]:
        if request.workload is Workload.RERANK:
            return super().embed_call(request)  # OpenAI serves no rerank route
        return "/v1/embeddings", openai_embeddings_body(request, dimensions=True)

    def embed_result(self, request: EmbedRequest, answer: Any) -> EmbedResult:
        return openai_embeddings(request, answer)

    def started_data(self, request: GenerateRequest) -> dict[str, Any]:
        data = super().started_data(request)
        unsupported = [
            name
            for name, value in (
                ("top_k", request.top_k),
                ("repeat_penalty", request.repeat_penalty),
            )
            if value is not None
        ]
        if unsupported:
            data["unsupported_params"] = unsupported
        data["gpu_backing"] = "operator-claimed"
        return data

    def new_parser(self, request: GenerateRequest) -> StreamParser:
        return OpenAIStreamParser(self.engine.value, self.pool_id, self._redactor, chat=self.chat)
