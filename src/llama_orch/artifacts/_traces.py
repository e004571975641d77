"""TraceWriter: a finished stream's transcript stored as a ``trace`` artifact (SPEC §6.6).

The transcript is the stream as SSE text, token by token, up to and including its terminal frame
as it was before the trace id was added to it (the id cannot be part of what it hashes). At most
``retention`` traces are kept; the oldest go first. Other kinds are never pruned, nor is a
document of kind ``trace`` that a client stored through the API: retention counts only the
traces this writer stored (batched into segments), so what a client sent is never lost to it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

import orjson

from llama_orch.artifacts._store import ArtifactStore
from llama_orch.contracts.frames import encode_frame


class TraceWriter:
    def __init__(self, store: ArtifactStore, *, retention: int) -> None:
        self._store = store
        self._retention = retention
        self._kept: deque[str] | None = None

    def __call__(
        self, fields: Mapping[str, Any], transcript: bytes, terminal: tuple[str, Any]
    ) -> str | None:
        """Store the transcript (SSE bytes, without its terminal frame) of the task described
        by ``fields``; return the artifact id."""
        if self._retention <= 0:
            return None
        event, payload = terminal
        task_id, session_id = fields["task_id"], fields["session_id"]
        document = {
            "kind": "trace",
            "tags": ["sse", "stream", f"task:{task_id}", f"session:{session_id}"],
            "content": {
                "transcript": (transcript + encode_frame(event, orjson.dumps(payload))).decode()
            },
            "metadata": {
                "engine": fields.get("engine"),
                "engine_version": fields.get("engine_version"),
                "pool_id": fields.get("pool_id"),
                "replica_id": fields.get("replica_id"),
                "task_id": task_id,
            },
        }
        # Listed before the put: listed after, the new trace would be counted twice.
        kept = self._traces()
        stored = self._store.put(document, background=True)
        if stored.created:
            kept.append(stored.id)
        while len(kept) > self._retention:
            self._store.delete(kept.popleft())
        return stored.id

    def _traces(self) -> deque[str]:
        if self._kept is None:
            self._kept = deque(
                ref["id"]
                for ref in self._store.refs()
                if ref["kind"] == "trace" and self._store.batched(ref["id"])
            )
        return self._kept
