"""What the catalog records: model entries, engine entries, and what a lookup resolves to."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class Lifecycle(StrEnum):
    ACTIVE = "Active"  # admitted by tasks and pools
    RETIRED = "Retired"  # kept on disk, refused with MODEL_DEPRECATED


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class GgufInfo(_Frozen):
    """What the GGUF header says about a model; fields the header lacks stay None."""

    architecture: str | None = None
    name: str | None = None
    context_length: int | None = None
    block_count: int | None = None
    embedding_length: int | None = None
    head_count: int | None = None
    head_count_kv: int | None = None
    key_length: int | None = None
    value_length: int | None = None
    file_type: str | None = None
    parameter_count: int = 0
    tensor_bytes: int = 0


class FileIdentity(_Frozen):
    """Which file a path named when its bytes were last hashed (its ``fstat``).

    A launch compares it with the file it opens: the same identity means the same bytes (every
    write moves ``ctime``, which no caller can set back), so the digest holds without a re-hash.
    """

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


class ModelFile(_Frozen):
    """One file of a model, relative to its entry's ``local_path`` (directories only)."""

    path: str
    size_bytes: int
    sha256: str
    identity: FileIdentity | None = None


class ModelEntry(_Frozen):
    id: str
    ref: str
    local_path: str
    size_bytes: int = 0
    #: ``sha256:<hex>`` of the file, or of the sorted file list of a directory (verify.sha256_tree)
    digest: str | None = None
    lifecycle: Lifecycle = Lifecycle.ACTIVE
    last_verified_ms: int | None = None
    verification: str | None = None
    #: Where the bytes came from: HF revision/commit, ETag, S3 version, OCI manifest digest.
    source: dict[str, str] = Field(default_factory=dict)
    files: list[ModelFile] = Field(default_factory=list)
    #: The single file's identity when it was last hashed (directories: per file in ``files``).
    identity: FileIdentity | None = None
    gguf: GgufInfo | None = None
    #: True when the catalog owns ``local_path`` (it lives under the root and goes on delete).
    managed: bool = True
    created_ms: int = 0
    updated_ms: int = 0


class ResolvedModel(_Frozen):
    id: str
    local_path: str
    digest: str | None = None
