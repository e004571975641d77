"""Request and response models of the data and control planes (SPEC §6.2).

The OpenAPI documents under ``contracts/openapi/`` take their schemas from these models.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from llama_orch.errors import ErrorKind
from llama_orch.vocab import DeterminismLevel, Engine, KVHint, PlacementMode, Priority, Workload

API_VERSION = "1.0.0"

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
Int32 = Annotated[int, Field(ge=-(2**31), le=INT32_MAX)]
Int64 = Annotated[int, Field(ge=-(2**63), le=INT64_MAX)]
#: The longest stop sequence a task may carry, in characters.
MAX_STOP_CHARS = 1024


class _Wire(BaseModel):
    # NaN and Infinity are not JSON: an engine would choke on them mid-task, so refuse them here.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


#: A pool id as the config allows it (64 characters); lists of them name at most 64 pools.
_PoolRef = Annotated[str, Field(min_length=1, max_length=64)]
_POOL_LIST_MAX = 64


class PlacementOverrides(_Wire):
    """Client placement hints (ORCH-3903); honoured only when the server allows overrides.

    ``pin`` needs ``pin_pool_id`` and runs only there; ``prefer`` needs ``prefer_pools`` and
    falls back to any feasible pool unless ``allow_fallback`` is false; ``avoid_pools`` are
    never used; ``require_device_mask`` keeps only pools with exactly that mask.
    """

    mode: PlacementMode = PlacementMode.AUTO
    pin_pool_id: _PoolRef | None = None
    prefer_pools: Annotated[list[_PoolRef], Field(max_length=_POOL_LIST_MAX)] | None = None
    avoid_pools: Annotated[list[_PoolRef], Field(max_length=_POOL_LIST_MAX)] | None = None
    require_device_mask: (
        Annotated[list[Annotated[int, Field(ge=0, le=1023)]], Field(min_length=1, max_length=64)]
        | None
    ) = None
    allow_fallback: bool = True

    @model_validator(mode="after")
    def _mode_fields(self) -> PlacementOverrides:
        if self.mode is PlacementMode.PIN and self.pin_pool_id is None:
            raise ValueError("mode pin needs pin_pool_id")
        if self.mode is not PlacementMode.PIN and self.pin_pool_id is not None:
            raise ValueError("pin_pool_id is only meaningful with mode pin")
        if self.mode is PlacementMode.PREFER and not self.prefer_pools:
            raise ValueError("mode prefer needs a non-empty prefer_pools")
        if self.mode is not PlacementMode.PREFER and self.prefer_pools:
            raise ValueError("prefer_pools is only meaningful with mode prefer")
        return self


class Sampling(_Wire):
    """Optional sampling parameters; part of the determinism key (SPEC §17.17)."""

    temperature: Annotated[float, Field(ge=0, le=10)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    repeat_penalty: Annotated[float, Field(gt=0)] | None = None
    stop: (
        Annotated[
            list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]],
            Field(max_length=16),
        ]
        | None
    ) = None


#: Texts one embedding or rerank task may carry.
MAX_INPUTS = 4096


class TaskRequest(_Wire):
    task_id: UUID
    session_id: UUID
    workload: Workload
    model_ref: Annotated[str, Field(min_length=1, max_length=2048)]
    engine: Engine
    ctx: Annotated[int, Field(ge=1, le=2**31 - 1)]
    priority: Priority
    max_tokens: Annotated[int, Field(ge=1, le=INT32_MAX)]
    #: Milliseconds from admission by which the task must start (SPEC §6.2, rec.).
    deadline_ms: Int64
    seed: Int64 | None = None
    determinism: DeterminismLevel | None = None
    sampler_profile_version: Annotated[str, Field(max_length=256)] | None = None
    prompt: str | None = None
    #: Embedding: the texts to embed; rerank: the documents to score against ``query``.
    inputs: Annotated[list[str], Field(max_length=MAX_INPUTS)] | None = None
    #: Rerank only: what the documents are scored against.
    query: str | None = None
    #: Embedding only: vectors in ``end.result`` as float lists (default) or base64 float32.
    encoding_format: Literal["float", "base64"] | None = None
    #: Embedding only: shorten vectors to this many dimensions.
    dimensions: Annotated[int, Field(ge=1, le=65536)] | None = None
    expected_tokens: Annotated[int, Field(ge=1, le=2**31 - 1)] | None = None
    kv_hint: KVHint | None = None
    placement: PlacementOverrides | None = None
    sampling: Sampling | None = None


class StreamOptions(_Wire):
    """Query parameters of ``GET /v1/tasks/{id}/stream``: this subscriber's micro-batch mode.

    Unset keys keep the pool's ``sse`` settings, then ``server.sse``. The bounds keep a client
    from asking the server to hold tokens for long or to build unbounded frames.
    """

    microbatch: Annotated[
        bool | None,
        Field(description="Merge consecutive tokens into one frame (t concatenated, i first, n)."),
    ] = None
    microbatch_max_delay_ms: Annotated[
        int | None,
        Field(ge=1, le=1000, description="Longest a token is held after the previous write."),
    ] = None
    microbatch_max_tokens: Annotated[
        int | None, Field(ge=1, le=1024, description="Most tokens merged into one frame.")
    ] = None


class AdmissionResponse(_Wire):
    task_id: UUID
    queue_position: Int32
    predicted_start_ms: Int64
    backoff_ms: Int64
    pool_id: str | None = None


class TaskOutcome(_Wire):
    """``POST /v1/tasks`` with ``Prefer: wait``: the admission values and the ``end`` frame."""

    task_id: UUID
    pool_id: str
    queue_position: Int32
    predicted_start_ms: Int64
    state: Literal["done", "canceled"]
    tokens_out: int
    tokens_in: int | None = None
    decode_time_ms: int
    decode_ms: int
    canceled: bool | None = None
    trace_id: str | None = None
    #: A completion's generated text.
    text: str | None = None
    #: An embedding or rerank task's answer (the ``end.result`` shape).
    result: dict[str, Any] | None = None


class ErrorEnvelope(_Wire):
    code: ErrorKind
    message: str
    engine: str | None = None
    pool_id: str | None = None
    retriable: bool | None = None
    retry_after_ms: Int64 | None = None
    policy_label: str | None = None
    hint: str | None = None
    #: The numeric code of an auth error (40101, 40102, 40301; §17.2).
    code_id: int | None = None
    #: Auth errors echo the request's correlation ID in the body too (D-AUTH-02).
    correlation_id: str | None = None


ArtifactKind = Literal["plan", "summary", "diff", "trace", "other"]
#: Tags are labels, never paths: runs of letters and digits joined by single ``. _ : @ + -``
#: (so no ``..``, no ``/``), at most 128 characters.
TAG_PATTERN = r"^[A-Za-z0-9]+(?:[._:@+-][A-Za-z0-9]+)*$"
ArtifactTag = Annotated[str, Field(max_length=128, pattern=TAG_PATTERN)]
ArtifactId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class Artifact(_Wire):
    """A document to store (SPEC §6.6); its id is the SHA-256 of its canonical JSON."""

    kind: ArtifactKind
    content: dict[str, Any]
    tags: Annotated[list[ArtifactTag], Field(max_length=64)] = []
    parent: ArtifactId | None = None
    metadata: dict[str, Any] = {}


class ArtifactRef(_Wire):
    id: ArtifactId
    kind: ArtifactKind
    digest: str
    created_ms: Int64
    tags: list[str]


class StoredArtifact(ArtifactRef):
    """``GET /v1/artifacts/{id}``: the ref, then the document as it was submitted."""

    content: dict[str, Any]
    parent: ArtifactId | None = None
    metadata: dict[str, Any] = {}


class ArtifactPage(_Wire):
    items: list[ArtifactRef]
    #: Pass as ``after`` for the next page; null on the last page.
    next: str | None = None


class SessionInfo(_Wire):
    ttl_ms_remaining: Int64
    turns: Int32
    kv_bytes: Int64
    kv_warmth: bool
    tokens_budget_remaining: Int64 | None = None
    time_budget_remaining_ms: Int64 | None = None
    cost_budget_remaining: float | None = None


class PoolHealth(_Wire):
    live: bool
    ready: bool
    draining: bool
    metrics: dict[str, Any]
    last_error: str | None = None
    engine_version: str | None = None
    model_id: str | None = None
    slots_total: int | None = None
    slots_free: int | None = None
    active_leases: int | None = None
    simulated: bool = False
    #: The pool manager's topology version when this was read (ORCH-3410).
    snapshot_version: int | None = None
    #: Launched engines: restarts by the supervisor over all replicas, and the prepared engine.
    restart_count: int = 0
    engine_digest: str | None = None
    provisioning_mode: str | None = None
    #: The latest drain or reload: kind, state (running, done, rolled_back, failed), timings,
    #: error.
    last_operation: dict[str, Any] | None = None


class EngineCapability(_Wire):
    engine: Engine
    ctx_max: Int32
    supported_workloads: list[Workload] = [Workload.COMPLETION]
    rate_limits: dict[str, Any] = {}
    features: dict[str, Any] = {}
    concurrency: int | None = None
    engine_versions: list[str] = []


class ReplicaCapability(_Wire):
    """One replica's cached capability snapshot (ORCH-3603); ``cached`` is false before the
    first successful probe, and every other field is then empty."""

    replica_id: str
    cached: bool
    #: The cluster host running the replica's engine (None: the server's own machine).
    host: str | None = None
    engine_version: str | None = None
    ctx_max: int | None = None
    slots_total: int | None = None
    model_id: str | None = None
    model_digest: str | None = None
    features: dict[str, Any] = {}
    simulated: bool = False


class HostGpu(_Wire):
    """One GPU of a cluster host, as the host's agent last read it."""

    index: int
    name: str
    vram_total_bytes: int
    vram_free_bytes: int
    simulated: bool = False


class HostCapability(_Wire):
    """A cluster host that runs replicas: its GPUs (empty until its agent first answers) and
    whether its agent missed the last inventory deadline (its replicas then take no work)."""

    name: str
    stale: bool
    gpus: list[HostGpu] = []


class VramEstimate(_Wire):
    """VRAM the pool's model needs, from its GGUF header (docs/catalog.md)."""

    weights_bytes: int
    kv_bytes: int
    overhead_bytes: int
    total_bytes: int
    ctx: int
    slots: int


class PoolCapability(_Wire):
    pool_id: str
    engine: Engine
    engine_version: str | None
    model_id: str
    ctx_max: Int32
    slots_total: int
    ready: bool
    draining: bool
    device_mask: list[int]
    simulated: bool
    #: Workloads the pool serves; tasks of others are never placed on it.
    supported_workloads: list[Workload] = [Workload.COMPLETION]
    #: What the engines reported (the adapter host's capability cache), merged over replicas.
    features: dict[str, Any] = {}
    #: The model the engine says it serves and its digest, where it reports them.
    engine_model_id: str | None = None
    model_digest: str | None = None
    sampler_profile_version: str | None = None
    #: Slots the engines themselves report; ``slots_total`` is the declared concurrency.
    engine_slots_total: int | None = None
    replicas: list[ReplicaCapability] = []
    #: The catalog's estimate for GGUF models in the catalog; absent otherwise.
    vram_estimate: VramEstimate | None = None


class Capabilities(_Wire):
    api_version: str
    engines: list[EngineCapability]
    pools: list[PoolCapability] = []
    #: The cluster hosts the pools run on (empty on a single machine).
    hosts: list[HostCapability] = []
    simulated: bool = False
    #: The pool manager's topology version when this was read (ORCH-3410).
    snapshot_version: int | None = None


class DrainRequest(_Wire):
    #: Strict: ``true`` is not a deadline.
    deadline_ms: Annotated[int, Field(ge=0, le=INT64_MAX, strict=True)]


class ReloadRequest(_Wire):
    new_model_ref: Annotated[str, Field(min_length=1)]
