"""The one placement entry point: ``decide(PlacementInput) -> PlacementDecision`` (ORCH-3900).

Feasibility first, then ordering (SPEC §5.5): free VRAM descending, load ascending, perf
descending, pool id ascending. Every filter reports how many candidates it kept, so the
``DecisionLog`` explains the outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from llama_orch.core.model import (
    Assigned,
    DecisionLog,
    JobSpec,
    NoCapacity,
    PlacementDecision,
    PoolSnapshot,
    ReplicaView,
)


@dataclass(frozen=True, slots=True)
class PlacementInput:
    pools: tuple[PoolSnapshot, ...]
    job: JobSpec


PoolFilter = tuple[str, Callable[[PoolSnapshot, JobSpec], bool]]

_MATCH_FILTERS: tuple[PoolFilter, ...] = (
    ("engine", lambda pool, job: pool.engine is job.engine),
    ("model", lambda pool, job: pool.model_id == job.model_id),
)
_CAPABILITY_FILTERS: tuple[PoolFilter, ...] = (
    ("ctx", lambda pool, job: pool.ctx_max_supported >= job.required_ctx),
    ("extensions", lambda pool, job: set(job.required_extensions) <= set(pool.features)),
    (
        "vram",
        lambda pool, job: job.est_kv_bytes is None or pool.vram_free_bytes >= job.est_kv_bytes,
    ),
)
_READY_FILTERS: tuple[PoolFilter, ...] = (
    ("ready", lambda pool, job: pool.ready),
    ("not_draining", lambda pool, job: not pool.draining),
)


def _apply(
    pools: Sequence[PoolSnapshot], job: JobSpec, filters: tuple[PoolFilter, ...], log: list[str]
) -> list[PoolSnapshot]:
    for name, keep in filters:
        before = len(pools)
        pools = [pool for pool in pools if keep(pool, job)]
        log.append(f"{name}: {len(pools)}/{before}")
    return list(pools)


def pool_order_key(pool: PoolSnapshot) -> tuple[int, int, float, str]:
    load = (pool.slots_total - pool.slots_free) + pool.queued
    return (-pool.vram_free_bytes, load, -(pool.perf_tokens_per_s or 0.0), pool.id)


def decide(placement: PlacementInput) -> PlacementDecision:
    job = placement.job
    filters: list[str] = []
    matched = _apply(placement.pools, job, _MATCH_FILTERS, filters)
    capable = _apply(matched, job, _CAPABILITY_FILTERS, filters)
    ready = _apply(capable, job, _READY_FILTERS, filters)
    considered = len(placement.pools)
    if not ready:
        log = DecisionLog(considered, tuple(filters), ())
        if capable:
            return NoCapacity("no_ready_pool", considered, log, unready=True)
        if matched:
            return NoCapacity("no_capable_pool", considered, log)
        return NoCapacity("no_pool_serves_engine_and_model", considered, log)
    chosen = min(ready, key=pool_order_key)
    log = DecisionLog(
        considered,
        tuple(filters),
        ("free_vram_desc", "load_asc", "perf_desc", "pool_id_asc"),
        selected_pool_id=chosen.id,
    )
    return Assigned(chosen.id, None, log)


def replica_order_key(replica: ReplicaView) -> tuple[int, int, str]:
    """OC-CORE-1017: free VRAM descending, active slots ascending, replica id ascending."""
    return (-replica.free_vram, replica.active_slots, replica.replica_id)


def pick_replica(replicas: Sequence[ReplicaView]) -> ReplicaView | None:
    """The replica a dispatch goes to: Ready, not draining, with a free slot, best by order."""
    usable = [r for r in replicas if r.ready and not r.draining and r.slots_free > 0]
    if not usable:
        return None
    return min(usable, key=replica_order_key)
