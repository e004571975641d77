"""Content-addressed artifacts on local disk, and stream transcripts stored as ``trace``."""

from llama_orch.artifacts._store import (
    ARTIFACT_KINDS,
    OFF_LOOP_BYTES,
    ArtifactStore,
    Stored,
    artifact_id,
    canonical_json,
    check_artifact_id,
    check_tag,
)
from llama_orch.artifacts._traces import TraceWriter

__all__ = [
    "ARTIFACT_KINDS",
    "OFF_LOOP_BYTES",
    "ArtifactStore",
    "Stored",
    "TraceWriter",
    "artifact_id",
    "canonical_json",
    "check_artifact_id",
    "check_tag",
]
