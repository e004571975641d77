"""Wire types of the catalog API (SPEC §9.3) on the control plane."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PullRequest(_Wire):
    """Register or pull a model: a ref in any accepted form, optionally with its digest."""

    ref: Annotated[str, Field(min_length=1, max_length=2048)]
    digest: Annotated[str | None, Field(pattern=r"^(sha256:)?[0-9a-fA-F]{64}$")] = None


class PullStatus(_Wire):
    """Progress of the latest pull of a model."""

    state: Literal["running", "done", "failed"]
    bytes_done: int
    bytes_total: int | None = None
    rate_bytes_per_s: float
    eta_s: float | None = None
    elapsed_s: float
    error: dict[str, Any] | None = None


class Manifest(_Wire):
    digest: str
    size_bytes: int


class CatalogModel(_Wire):
    id: str
    digest: str | None = None
    source_url: str | None = None
    state: Literal["Active", "Retired", "Pulling"]
    local_path: str | None = None
    size_bytes: int | None = None
    verification: Literal["pass", "warn", "fail"] | None = None
    last_verified_ms: int | None = None
    source: dict[str, str] = {}
    manifests: list[Manifest] = []
    #: GGUF header fields (architecture, context_length, block_count, file_type, ...).
    gguf: dict[str, Any] | None = None
    pull: PullStatus | None = None


class CatalogModelList(_Wire):
    models: list[CatalogModel]
    #: Pass as ``cursor`` for the next page; absent on the last page.
    next_cursor: str | None = None


class StateRequest(_Wire):
    state: Literal["Active", "Retired"]
    deadline_ms: Annotated[int, Field(ge=0)] | None = None


class Accepted(_Wire):
    status: Literal["accepted", "started"]
    id: str | None = None
    location: str | None = None
