"""SSE event payloads: the schemas published in the OpenAPI document.

Order within a stream: ``started → (token | metrics)* → end`` or ``error``. Exactly one terminal
frame closes a stream. These models document every field a frame can carry; the frames
themselves are built by ``contracts.frames`` (without pydantic, on the hot path), and an
end-to-end test validates every frame a real stream emits against these models.
"""

from __future__ import annotations

from typing import Final, Literal

from pydantic import BaseModel, ConfigDict

from llama_orch.errors import ErrorKind

STARTED: Final = "started"
TOKEN: Final = "token"
METRICS: Final = "metrics"
END: Final = "end"
ERROR: Final = "error"
TERMINAL_EVENTS: Final = frozenset({END, ERROR})


class _Payload(BaseModel):
    # Additive fields are allowed within 1.x, so parsers must accept extras.
    model_config = ConfigDict(extra="allow", frozen=True)


class Started(_Payload):
    queue_position: int
    predicted_start_ms: int
    task_id: str | None = None
    pool_id: str | None = None
    correlation_id: str | None = None
    engine_version: str | None = None
    #: Present (true) when the pool's engine or GPUs are simulated.
    simulated: bool | None = None


class Token(_Payload):
    t: str
    i: int
    #: Micro-batch frames only: how many tokens ``t`` concatenates (``i`` is the first).
    n: int | None = None


class Metrics(_Payload):
    queue_depth: int
    on_time_probability: float
    kv_warmth: bool
    #: Present (false) when the task failed over to a replica without its session's KV cache.
    kv_migrated: bool | None = None
    tokens_budget_remaining: int | None = None
    time_budget_remaining_ms: int | None = None
    cost_budget_remaining: float | None = None


class RankedDocument(_Payload):
    #: The document's position in the task's ``inputs``.
    index: int
    score: float


class EmbedResult(_Payload):
    """``end.result`` of an embedding task (``embeddings``, in input order) or a rerank task
    (``results``, every document, highest score first)."""

    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = None
    #: One vector per input: floats, or little-endian float32 packed in base64.
    embeddings: list[list[float] | str] | None = None
    results: list[RankedDocument] | None = None


class End(_Payload):
    tokens_out: int
    decode_time_ms: int
    decode_ms: int
    tokens_in: int | None = None
    #: Present (true) when the task was canceled.
    canceled: bool | None = None
    #: The id of the ``trace`` artifact holding this stream's transcript, when traces are kept.
    trace_id: str | None = None
    #: The answer of an embedding or rerank task (absent for completions).
    result: EmbedResult | None = None


class Error(_Payload):
    code: ErrorKind
    message: str
    engine: str | None = None
    pool_id: str | None = None
    retriable: bool | None = None
    retry_after_ms: int | None = None
    policy_label: str | None = None
    hint: str | None = None
    trace_id: str | None = None


PAYLOADS: Final[dict[str, type[_Payload]]] = {
    STARTED: Started,
    TOKEN: Token,
    METRICS: Metrics,
    END: End,
    ERROR: Error,
}
