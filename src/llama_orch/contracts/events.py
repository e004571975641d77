"""SSE event payloads (SPEC §6.3).

Order within a stream: ``started → (token | metrics)* → end`` or ``error``. Exactly one terminal
frame closes a stream. These models document and validate the payloads; the emitter writes the
same shapes from plain dicts on the hot path.
"""

from __future__ import annotations

from typing import Final

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


class Token(_Payload):
    t: str
    i: int


class Metrics(_Payload):
    queue_depth: int
    on_time_probability: float
    kv_warmth: bool


class End(_Payload):
    tokens_out: int
    decode_time_ms: int
    decode_ms: int
    #: The id of the ``trace`` artifact holding this stream's transcript, when traces are kept.
    trace_id: str | None = None


class Error(_Payload):
    code: ErrorKind
    message: str
    engine: str | None = None
    trace_id: str | None = None


PAYLOADS: Final[dict[str, type[_Payload]]] = {
    STARTED: Started,
    TOKEN: Token,
    METRICS: Metrics,
    END: End,
    ERROR: Error,
}
