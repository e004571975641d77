"""llama.cpp ``llama-server`` over its native API (OC-ADAPT-5001..5011, ENGINE_PROTOCOLS.md §1).

Probes: ``/health`` (503 while the model loads), ``/props`` (slots, per-slot context, build),
``/slots`` (free slots), ``/metrics`` (``llamacpp:*``). Generation: ``POST /completion`` with
``stream: true``; ``data: {json}`` frames, no ``[DONE]``, the final event has ``"stop": true``.
Cancel is closing the stream. The OpenAI-compatible routes are never used.
"""

from __future__ import annotations

import hashlib
from typing import Any

from llama_orch.adapters._base import (
    GENERATE_HEADERS,
    HttpAdapter,
    ParserBase,
    StreamParser,
    first_error,
    in_stream_error,
    loads,
    quote,
    version_text,
)
from llama_orch.adapters._embed import OpenAIEmbedRoutes
from llama_orch.adapters._prom import gauge_value
from llama_orch.contracts.engine import (
    GenerateRequest,
    WorkerHealth,
    WorkerProps,
)
from llama_orch.errors import WorkerError, WorkerInvalidParams
from llama_orch.vocab import DeterminismLevel, Engine

UINT32_MAX = 2**32 - 1
#: What strict determinism needs on the server side; an external server must be launched so.
STRICT_LAUNCH_FLAGS = ("--parallel", "1", "--no-cont-batching")
_STOP_TYPES = {"eos": "eos", "limit": "length", "word": "stop", "none": "stop"}


class _Parser(ParserBase):
    __slots__ = ()

    def feed(self, obj: Any) -> str:
        # The hot path: two lookups per token; the rest only on the last event.
        if type(obj) is not dict:
            return ""
        content = obj.get("content")
        if "error" in obj or obj.get("stop") is True:
            self._terminal(obj)
        return content if type(content) is str else ""

    def _terminal(self, obj: dict[str, Any]) -> None:
        if "error" in obj:
            found = first_error(obj)
            if found is not None:
                raise in_stream_error(self.engine, self.pool_id, *found, self.redactor)
        if obj.get("stop") is True:
            self.done = True
            stop_type = str(obj.get("stop_type", "none"))
            self.summary = {
                "finish_reason": _STOP_TYPES.get(stop_type, stop_type),
                "tokens_in": obj.get("tokens_evaluated"),
                "engine_tokens_out": obj.get("tokens_predicted"),
            }
            if obj.get("stopping_word"):
                self.summary["stopping_word"] = obj["stopping_word"]


class LlamaCppAdapter(OpenAIEmbedRoutes, HttpAdapter):
    engine_kind = Engine.LLAMACPP
    # llama-server closes the connection after every streamed /completion while its headers
    # say keep-alive; a pooled connection reused before that close arrives fails the next
    # task's request. So the generation connection is never pooled.
    generate_headers = {**GENERATE_HEADERS, "connection": "close"}

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._total_slots: int | None = None

    async def health(self) -> WorkerHealth:
        response = await self.get("/health")
        if response.status_code == 200:
            return WorkerHealth(live=True, ready=True)
        if response.status_code == 503:
            # Loading model / no slot: the server is up but cannot take work yet (§1.2).
            found = first_error(_json_or_empty(response.content))
            detail = found[0] if found else "unavailable"
            return WorkerHealth(live=True, ready=False, detail=quote(detail, self._redactor))
        raise self.status_error(response, "GET /health")

    async def props(self) -> WorkerProps:
        props = await self.get_json("/props")
        settings = props.get("default_generation_settings") or {}
        total = props.get("total_slots")
        self._total_slots = total if isinstance(total, int) else None
        build = version_text(props.get("build_info"))
        if build is not None:
            self._version = build
        free = await self._free_slots()
        kv_usage = await self._kv_usage() if props.get("endpoint_metrics") else None
        model_path = props.get("model_path")
        return WorkerProps(
            slots_total=self._total_slots,
            slots_free=free,
            ctx_max=settings.get("n_ctx") if isinstance(settings.get("n_ctx"), int) else None,
            model_id=props.get("model_alias") or model_path,
            # llama.cpp reports no weights digest; the path+ftype identity is the best it has.
            model_digest=_path_digest(model_path, props.get("model_ftype")),
            sampler_profile_version=self._pool.sampler_profile_version,
            kv_cache_usage_ratio=kv_usage,
            features={
                "streaming": True,
                "metrics": bool(props.get("endpoint_metrics")),
                "slots_endpoint": bool(props.get("endpoint_slots")),
                "sleeping": bool(props.get("is_sleeping")),
                "build_info": build,
                # The GGUF's tokenizer.chat_template: chats are rendered with it for /completion.
                "chat_template": props.get("chat_template") or None,
                "eos_token": props.get("eos_token") or None,
            },
        )

    async def _free_slots(self) -> int | None:
        try:
            slots = await self.get_json("/slots")
        except WorkerError:
            return None  # started with --no-slots (501) or not reachable: unknown, not fatal
        if not isinstance(slots, list):
            return None
        return sum(1 for slot in slots if isinstance(slot, dict) and not slot.get("is_processing"))

    async def _kv_usage(self) -> float | None:
        """``llamacpp:kv_cache_usage_ratio``; builds that dropped the gauge report None."""
        try:
            text = await self.metrics_text()
        except WorkerError:
            return None  # metrics off or unreachable: unknown, not fatal
        return gauge_value(text, "llamacpp:kv_cache_usage_ratio")

    async def engine_version(self) -> str:
        if self._version is None:
            build = version_text((await self.get_json("/props")).get("build_info"))
            self._version = build if build is not None else "unknown"
        return self._version

    async def metrics_text(self) -> str:
        """The raw ``llamacpp:*`` scrape (needs ``--metrics``; 501 otherwise)."""
        response = await self.get("/metrics")
        if response.status_code >= 400:
            raise self.status_error(response, "GET /metrics")
        return response.text

    def generate_call(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "prompt": request.prompt,
            "n_predict": request.max_tokens,
            "stream": True,
        }
        if request.seed is not None:
            if not 0 <= request.seed <= UINT32_MAX:
                raise WorkerInvalidParams(
                    f"llama.cpp takes seeds 0..{UINT32_MAX}; got {request.seed}",
                    engine=self.engine.value,
                    pool_id=self.pool_id,
                )
            body["seed"] = request.seed
        for key, value in (
            ("temperature", request.temperature),
            ("top_p", request.top_p),
            ("top_k", request.top_k),
            ("repeat_penalty", request.repeat_penalty),
        ):
            if value is not None:
                body[key] = value
        if request.stop:
            body["stop"] = list(request.stop)
        if request.determinism is DeterminismLevel.STRICT:
            # Prompt-cache reuse changes batch shapes and so logits (§1.10).
            body["cache_prompt"] = False
        return "/completion", body

    def started_data(self, request: GenerateRequest) -> dict[str, Any]:
        data = super().started_data(request)
        if request.determinism is DeterminismLevel.STRICT:
            data["determinism"] = "strict"
            if self._total_slots != 1:
                data["determinism_note"] = (
                    f"llama.cpp runs {self._total_slots or 'an unknown number of'} slots; strict "
                    f"determinism needs the server launched with {' '.join(STRICT_LAUNCH_FLAGS)}"
                )
        return data

    def new_parser(self, request: GenerateRequest) -> StreamParser:
        return _Parser(self.engine.value, self.pool_id, self._redactor)


def _json_or_empty(content: bytes) -> dict[str, Any]:
    try:
        obj = loads(content, "llamacpp")
    except WorkerError:
        return {}
    return obj if isinstance(obj, dict) else {}


def _path_digest(path: Any, ftype: Any) -> str | None:
    if not isinstance(path, str):
        return None
    digest = hashlib.sha256(f"{path}\x1f{ftype}".encode()).hexdigest()[:16]
    return f"path-sha256:{digest}"
