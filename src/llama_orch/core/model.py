"""Canonical scheduling data types (SPEC §5.4). Frozen, slotted, free of I/O.

Times are plain floats in seconds on whatever monotonic clock the caller uses; core never reads
a clock itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from llama_orch.vocab import Engine, PlacementMode, Priority, Workload


@dataclass(frozen=True, slots=True)
class ModelRequirements:
    """What a model needs from a replica; fields that cannot be observed stay empty."""

    model_id: str
    ctx_max: int
    model_digest: str | None = None
    quant: str | None = None
    streaming: bool = True
    extensions: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ReplicaView:
    """One replica as the scheduler sees it (SPEC §17.7: the per-replica view)."""

    replica_id: str
    pool_id: str
    engine: Engine
    engine_version: str
    free_vram: int
    active_slots: int
    slots_total: int
    ctx_max_supported: int
    features: tuple[str, ...] = ()
    ready: bool = True
    draining: bool = False
    sampler_profile_version: str | None = None
    perf_tokens_per_s: float | None = None
    first_token_ms: float | None = None
    #: The cluster host the replica runs on (None: the server's machine).
    host: str | None = None

    @property
    def slots_free(self) -> int:
        return max(0, self.slots_total - self.active_slots)


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """One pool's aggregate view plus its replicas (its replica set)."""

    id: str
    engine: Engine
    model_id: str
    slots_total: int
    slots_free: int
    vram_total_bytes: int
    vram_free_bytes: int
    ready: bool
    draining: bool
    ctx_max_supported: int
    #: Tasks waiting in the pool's queue; part of "load" in the ordering (SPEC §5.5).
    queued: int = 0
    device_mask: tuple[int, ...] = ()
    engine_version: str | None = None
    sampler_profile_version: str | None = None
    features: tuple[str, ...] = ()
    perf_tokens_per_s: float | None = None
    first_token_ms: float | None = None
    compute_capability: tuple[int, int] | None = None
    quant: str | None = None
    replicas: tuple[ReplicaView, ...] = ()
    #: Workloads the pool serves (completion, embedding, rerank).
    workloads: tuple[Workload, ...] = (Workload.COMPLETION,)


@dataclass(frozen=True, slots=True)
class PlacementOverrides:
    """Client placement hints with the exact meanings of ORCH-3903."""

    mode: PlacementMode = PlacementMode.AUTO
    pin_pool_id: str | None = None
    prefer_pools: tuple[str, ...] = ()
    avoid_pools: tuple[str, ...] = ()
    require_device_mask: tuple[int, ...] | None = None
    allow_fallback: bool = True

    @property
    def is_auto(self) -> bool:
        """True when the overrides change nothing (ORCH-3908)."""
        return (
            self.mode is PlacementMode.AUTO
            and not self.avoid_pools
            and self.require_device_mask is None
        )


AUTO = PlacementOverrides()


@dataclass(frozen=True, slots=True)
class Affinity:
    """Where a session last ran successfully, and until when that is worth keeping."""

    pool_id: str
    replica_id: str
    #: End of the soft TTL, on the caller's clock (ORCH-3480).
    expires_at: float


@dataclass(frozen=True, slots=True)
class JobSpec:
    priority: Priority
    engine: Engine
    model_id: str
    required_ctx: int
    expected_tokens: int | None = None
    est_kv_bytes: int | None = None
    required_extensions: tuple[str, ...] = ()
    required_quant: str | None = None
    min_compute_capability: tuple[int, int] | None = None
    placement: PlacementOverrides = AUTO
    session_id: str | None = None
    affinity: Affinity | None = None
    workload: Workload = Workload.COMPLETION

    @property
    def affinity_replica_id(self) -> str | None:
        return self.affinity.replica_id if self.affinity else None


class Stage(Enum):
    #: Pick the pool whose queue will hold the task; a busy replica is still a candidate.
    ADMISSION = "admission"
    #: Pick the replica that runs the task now; only replicas with a free slot qualify.
    DISPATCH = "dispatch"


@dataclass(frozen=True, slots=True)
class PlacementInput:
    pools: tuple[PoolSnapshot, ...]
    job: JobSpec
    #: The caller's clock reading; only the affinity soft TTL uses it.
    now: float = 0.0
    stage: Stage = Stage.ADMISSION
    #: The pool manager's topology version these snapshots were taken at (ORCH-3410).
    snapshot_version: int = 0


class AffinityOutcome(Enum):
    #: The job carried no affinity (a new session, or its TTL ran out).
    NONE = "none"
    #: The session stays on its last replica; its KV cache is warm.
    KEPT = "kept"
    #: The last replica cannot take it; the job moves and its KV starts cold.
    FAILOVER = "failover"


@dataclass(frozen=True, slots=True)
class DecisionLog:
    """Why a decision came out as it did (ORCH-3906): every filter with what it kept."""

    candidates_considered: int
    filters_applied: tuple[str, ...]
    tie_breakers_applied: tuple[str, ...]
    selected_pool_id: str | None = None
    selected_replica_id: str | None = None
    pinned: bool = False
    fallback_used: bool = False
    affinity: AffinityOutcome = AffinityOutcome.NONE
    #: The topology version the decision was made against (ORCH-3410).
    snapshot_version: int = 0

    @property
    def kv_warmth(self) -> bool:
        return self.affinity is AffinityOutcome.KEPT

    @property
    def kv_migrated(self) -> bool:
        """KV is never migrated between workers (ORCH-3023); a failover starts cold."""
        return False

    def fields(self) -> dict[str, Any]:
        """Flat log fields for narration."""
        return {
            "candidates_considered": self.candidates_considered,
            "filters_applied": list(self.filters_applied),
            "tie_breakers_applied": list(self.tie_breakers_applied),
            "selected_pool_id": self.selected_pool_id,
            "selected_replica_id": self.selected_replica_id,
            "pinned": self.pinned,
            "fallback_used": self.fallback_used,
            "affinity": self.affinity.value,
            "kv_warmth": self.kv_warmth,
            "kv_migrated": self.kv_migrated,
            "snapshot_version": self.snapshot_version,
        }


@dataclass(frozen=True, slots=True)
class Assigned:
    pool_id: str
    replica_id: str
    log: DecisionLog


class NoCapacityReason(StrEnum):
    #: No pool serves the job's engine and model at all.
    NO_POOL_SERVES = "no_pool_serves_engine_and_model"
    #: Pools serve the model, but none meets its requirements (ctx, VRAM, features, mask ...).
    NO_CAPABLE_POOL = "no_capable_pool"
    #: Capable pools exist, but none is Ready (loading, draining, or a mixed replica set).
    NO_READY_POOL = "no_ready_pool"
    #: Ready pools exist, but every replica is busy (dispatch stage only).
    NO_FREE_SLOT = "no_free_slot"
    PINNED_POOL_INFEASIBLE = "pinned_pool_infeasible"
    NO_PREFERRED_FEASIBLE = "no_preferred_feasible"
    #: Every feasible pool was avoided by the job's overrides.
    ALL_AVOIDED = "all_feasible_pools_avoided"


@dataclass(frozen=True, slots=True)
class NoCapacity:
    """Nothing feasible. ``unready`` is true when candidates exist but none is Ready."""

    reason: NoCapacityReason
    considered: int
    log: DecisionLog
    unready: bool = False


PlacementDecision = Assigned | NoCapacity
