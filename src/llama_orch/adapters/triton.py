"""NVIDIA Triton over HTTP/REST and its generate extension (OC-ADAPT-5060..5070, §4).

Probes: ``/v2/health/ready`` and ``/v2/models/{m}/ready`` (empty 200; 400 when not ready),
``/v2`` (server version), ``/v2/models/{m}`` (inputs decide the knob names), ``/stats``.
Generation: ``POST /v2/models/{m}/generate_stream``; ``data: {json}`` frames with delta
``text_output`` and no ``[DONE]``. When the model takes ``return_finish_reason`` the last frame
says so and EOF before it is a truncation; otherwise EOF is the end. gRPC is not implemented.

Knob names are model-specific (§4.4): the vLLM backend takes ``max_tokens``, ``temperature``,
``top_p``, ``top_k``, ``seed``, ``stop`` as request parameters; a TensorRT-LLM ensemble exposes
``random_seed`` / ``stop_words`` as inputs, which are used when the metadata lists them.
"""

from __future__ import annotations

from typing import Any

from llama_orch.adapters._base import HttpAdapter, ParserBase, StreamParser, quote, version_text
from llama_orch.contracts.engine import GenerateRequest, WorkerHealth, WorkerProps
from llama_orch.errors import WorkerInternal, WorkerReset
from llama_orch.observability.redaction import Redactor
from llama_orch.vocab import DeterminismLevel, Engine


class _Parser(ParserBase):
    __slots__ = ()

    def __init__(self, engine: str, pool_id: str, redactor: Redactor, *, finish: bool) -> None:
        super().__init__(engine, pool_id, redactor, eof_is_end=not finish)

    def feed(self, obj: Any) -> str:
        if not isinstance(obj, dict):
            return ""
        error = obj.get("error")
        if error:
            message = f"{self.engine}: the engine reported: {quote(str(error), self.redactor)}"
            cls = WorkerReset if "cancelled" in str(error).lower() else WorkerInternal
            raise cls(message, engine=self.engine, pool_id=self.pool_id)
        reason = obj.get("finish_reason")
        if isinstance(reason, list):  # BYTES tensors may come back as one-element arrays
            reason = reason[0] if reason else None
        if reason:
            self.done = True
            self.summary["finish_reason"] = reason
        text = obj.get("text_output")
        if isinstance(text, list):
            text = "".join(str(t) for t in text)
        return text if isinstance(text, str) else ""


class TritonAdapter(HttpAdapter):
    engine_kind = Engine.TRITON

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._inputs: frozenset[str] = frozenset()
        self._platform: str | None = None

    @property
    def _model_path(self) -> str:
        return f"/v2/models/{self._pool.model}"

    async def health(self) -> WorkerHealth:
        server = await self.get("/v2/health/ready")
        if server.status_code >= 500:
            raise self.status_error(server, "GET /v2/health/ready")
        if server.status_code != 200:
            return WorkerHealth(live=True, ready=False, detail="server not ready")
        model = await self.get(f"{self._model_path}/ready")
        if model.status_code == 200:
            return WorkerHealth(live=True, ready=True)
        if model.status_code >= 500:
            raise self.status_error(model, f"GET {self._model_path}/ready")
        return WorkerHealth(
            live=True, ready=False, detail=f"model {self._pool.model} not ready: {model.text[:200]}"
        )

    async def engine_version(self) -> str:
        if self._version is None:
            meta = await self.get_json("/v2")
            version = version_text(meta.get("version") if isinstance(meta, dict) else None)
            self._version = version if version is not None else "unknown"
        return self._version

    async def props(self) -> WorkerProps:
        meta = await self.get_json(self._model_path)
        inputs = meta.get("inputs") if isinstance(meta, dict) else None
        self._inputs = frozenset(
            str(i["name"]) for i in inputs or [] if isinstance(i, dict) and i.get("name")
        )
        platform = meta.get("platform") if isinstance(meta, dict) else None
        self._platform = platform if isinstance(platform, str) else None
        trtllm = self._platform in ("ensemble", "tensorrt_llm")
        return WorkerProps(
            model_id=meta.get("name") if isinstance(meta, dict) else None,
            sampler_profile_version=self._pool.sampler_profile_version,
            features={
                "streaming": "stream" in self._inputs,
                "platform": self._platform,
                "inputs": sorted(self._inputs),
                "versions": meta.get("versions") if isinstance(meta, dict) else None,
                # Triton's HTTP API does not report the TensorRT-LLM version (OC-ADAPT-5070).
                "trtllm_version": "unreported" if trtllm else None,
            },
        )

    async def stats(self) -> Any:
        return await self.get_json(f"{self._model_path}/stats")

    def generate_call(self, request: GenerateRequest) -> tuple[str, dict[str, Any]]:
        inputs = self._inputs
        params: dict[str, Any] = {"stream": True, "max_tokens": request.max_tokens}
        if "exclude_input_in_output" in inputs:
            params["exclude_input_in_output"] = True
        if "return_finish_reason" in inputs:
            params["return_finish_reason"] = True
        for key, value in (
            ("temperature", request.temperature),
            ("top_p", request.top_p),
            ("top_k", request.top_k),
            ("repetition_penalty", request.repeat_penalty),
        ):
            if value is not None:
                params[key] = value
        if request.seed is not None:
            params["random_seed" if "random_seed" in inputs else "seed"] = request.seed
        if request.stop:
            params["stop_words" if "stop_words" in inputs else "stop"] = list(request.stop)
        body = {"id": request.task_id, "text_input": request.prompt, "parameters": params}
        return f"{self._model_path}/generate_stream", body

    def started_data(self, request: GenerateRequest) -> dict[str, Any]:
        data = super().started_data(request)
        if request.determinism is DeterminismLevel.STRICT:
            data["determinism"] = "strict"
            data["determinism_note"] = (
                "Triton batches in the backend; strict determinism needs max_num_seqs: 1 "
                "(vLLM backend model.json) and a fixed engine seed"
            )
        return data

    def new_parser(self, request: GenerateRequest) -> StreamParser:
        finish = "return_finish_reason" in self._inputs
        return _Parser(self.engine.value, self.pool_id, self._redactor, finish=finish)
