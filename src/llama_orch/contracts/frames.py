"""Typed builders for every SSE frame, and the encoders that frame them for the wire.

A frame is its event name and its one-line JSON payload. The dispatcher builds ``metrics``,
``end`` and ``error`` frames here and stores them in the task's transcript; the server builds
``started`` here as a stream opens and frames everything with ``encode_frame`` /
``encode_token``. The payload shapes are the ones ``contracts.events`` documents and publishes
in the OpenAPI document; a test validates every frame a real stream emits against them.
"""

from __future__ import annotations

from typing import Any

import orjson

from llama_orch.errors import OrchError

#: A non-token frame: the event name and its one-line JSON payload.
Frame = tuple[str, bytes]

_PREFIXES: dict[str, bytes] = {}
# Pre-encoded templates: a token frame is one %-format into one bytes object.
_TOKEN = b'event: token\ndata: {"t":%b,"i":%d}\n\n'
_TOKENS = b'event: token\ndata: {"t":%b,"i":%d,"n":%d}\n\n'


def started_frame(
    *,
    task_id: str,
    pool_id: str,
    queue_position: int,
    predicted_start_ms: int,
    correlation_id: str | None = None,
    engine_version: str | None = None,
    simulated: bool = False,
) -> Frame:
    payload: dict[str, Any] = {
        "queue_position": queue_position,
        "predicted_start_ms": predicted_start_ms,
        "task_id": task_id,
        "pool_id": pool_id,
    }
    if correlation_id:
        payload["correlation_id"] = correlation_id
    if engine_version:
        payload["engine_version"] = engine_version
    if simulated:
        payload["simulated"] = True
    return "started", orjson.dumps(payload)


def metrics_frame(
    *,
    queue_depth: int,
    on_time_probability: float,
    kv_warmth: bool,
    kv_migrated: bool | None = None,
    budgets: dict[str, int | float] | None = None,
) -> Frame:
    """``budgets`` holds the session's enabled remaining budgets (``*_remaining`` fields)."""
    payload: dict[str, Any] = {
        "queue_depth": queue_depth,
        "on_time_probability": round(on_time_probability, 4),
        "kv_warmth": kv_warmth,
    }
    if kv_migrated is not None:
        payload["kv_migrated"] = kv_migrated
    if budgets:
        payload.update(budgets)
    return "metrics", orjson.dumps(payload)


def end_frame(
    *,
    tokens_out: int,
    tokens_in: int,
    decode_ms: int,
    canceled: bool = False,
    result: dict[str, Any] | None = None,
) -> Frame:
    """``decode_time_ms`` and ``decode_ms`` carry the same value (both names are published);
    ``result`` is an embedding or rerank task's answer."""
    payload: dict[str, Any] = {
        "tokens_out": tokens_out,
        "decode_time_ms": decode_ms,
        "decode_ms": decode_ms,
        "tokens_in": tokens_in,
    }
    if canceled:
        payload["canceled"] = True
    if result is not None:
        payload["result"] = result
    return "end", orjson.dumps(payload)


def error_frame(error: OrchError, *, engine: str) -> Frame:
    """The error's envelope; the task's engine fills in when the error names none."""
    payload = error.envelope()
    payload.setdefault("engine", engine)
    return "error", orjson.dumps(payload)


def encode_frame(event: str, data: bytes) -> bytes:
    """``event: <name>\\ndata: <json>\\n\\n``; the JSON is already one line."""
    prefix = _PREFIXES.get(event)
    if prefix is None:
        prefix = _PREFIXES[event] = b"event: " + event.encode() + b"\ndata: "
    return prefix + data + b"\n\n"


def encode_token(text: str, index: int) -> bytes:
    """One ``token`` frame ``{t, i}``; byte-identical to ``orjson.dumps({"t":..,"i":..})``."""
    return _TOKEN % (orjson.dumps(text), index)


def encode_tokens(text: str, index: int, count: int) -> bytes:
    """A micro-batched ``token`` frame: concatenated text, first index, count."""
    return _TOKENS % (orjson.dumps(text), index, count)
