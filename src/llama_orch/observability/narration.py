"""Narration: the one way to emit a key event (ORCH-33xx, D-OBS-01).

Every key event carries ``actor``, ``action``, ``target`` and a short present-tense ``human``
sentence next to the structured fields. Never call this per token. A sentence may quote text
of any length: the log sink redacts it, then cuts it (``logging.HUMAN_MAX``).
"""

from __future__ import annotations

from typing import Any

import structlog

_log = structlog.get_logger("llama_orch")

#: Field names of the narration taxonomy (ORCH-3304, ORCH-3027).
TAXONOMY = frozenset(
    {
        "actor",
        "action",
        "target",
        "human",
        "req_id",
        "job_id",
        "task_id",
        "session_id",
        "worker_id",
        "pool_id",
        "replica_id",
        "correlation_id",
        "identity",
        "engine",
        "engine_version",
        "queue_position",
        "predicted_start_ms",
        "tokens_in",
        "tokens_out",
        "decode_time_ms",
        "error_kind",
        "retry_after_ms",
        "backoff_ms",
        "duration_ms",
    }
)


def narrate(
    actor: str, action: str, target: str, human: str, *, level: str = "info", **fields: Any
) -> None:
    """Emit one key event with its narration; ``None`` fields are left out."""
    clean = {k: v for k, v in fields.items() if v is not None}
    getattr(_log, level)(action, actor=actor, action=action, target=target, human=human, **clean)
