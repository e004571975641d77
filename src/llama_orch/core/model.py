"""Canonical scheduling data types (SPEC §5.4). Frozen, slotted, free of I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from llama_orch.vocab import Engine, PlacementMode, Priority


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
    """One replica as the scheduler sees it."""

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

    @property
    def slots_free(self) -> int:
        return max(0, self.slots_total - self.active_slots)


@dataclass(frozen=True, slots=True)
class PoolSnapshot:
    """One pool's aggregate view plus its replicas."""

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
    queued: int = 0
    device_mask: tuple[int, ...] = ()
    engine_version: str | None = None
    sampler_profile_version: str | None = None
    features: tuple[str, ...] = ()
    perf_tokens_per_s: float | None = None
    first_token_ms: float | None = None
    compute_capability: str | None = None
    replicas: tuple[ReplicaView, ...] = ()


@dataclass(frozen=True, slots=True)
class PlacementOverrides:
    mode: PlacementMode = PlacementMode.AUTO
    pin_pool_id: str | None = None
    prefer_pools: tuple[str, ...] = ()
    avoid_pools: tuple[str, ...] = ()
    require_device_mask: tuple[int, ...] | None = None
    allow_fallback: bool = True


@dataclass(frozen=True, slots=True)
class JobSpec:
    priority: Priority
    engine: Engine
    model_id: str
    required_ctx: int
    expected_tokens: int | None = None
    est_kv_bytes: int | None = None
    required_extensions: tuple[str, ...] = ()
    placement: PlacementOverrides = field(default_factory=PlacementOverrides)
    session_id: str | None = None
    affinity_replica_id: str | None = None


@dataclass(frozen=True, slots=True)
class DecisionLog:
    candidates_considered: int
    filters_applied: tuple[str, ...]
    tie_breakers_applied: tuple[str, ...]
    selected_pool_id: str | None = None
    pinned: bool = False
    fallback_used: bool = False


@dataclass(frozen=True, slots=True)
class Assigned:
    pool_id: str
    replica_id: str | None
    log: DecisionLog


@dataclass(frozen=True, slots=True)
class NoCapacity:
    """Nothing feasible. ``unready`` is true when candidates exist but none is Ready."""

    reason: str
    considered: int
    log: DecisionLog
    unready: bool = False


PlacementDecision = Assigned | NoCapacity
