"""The one placement entry point: ``decide(PlacementInput) -> PlacementDecision`` (ORCH-3900).

Every placement goes through ``decide``: at admission it picks the pool whose queue holds the
task, at dispatch it picks the replica that runs it (SPEC §17.6). The order is fixed:

1. feasibility (``core.filters``): engine and model match, ctx, extensions, quant, compute
   capability, VRAM against ``est_kv_bytes``, the exact device mask, Ready, not draining, one
   replica set; then the same per replica, plus a free slot at dispatch;
2. overrides: ``pin``, ``avoid``, ``prefer`` with or without fallback (ORCH-3903);
3. scoring: session affinity while its soft TTL lasts, else the SPEC §5.5 tuple
   (free VRAM desc, load asc, perf desc, pool id asc, replica id asc).

Each step records what it kept in the ``DecisionLog``. Nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from typing import NamedTuple

from llama_orch.core.filters import (
    CAPABILITY_FILTERS,
    MATCH_FILTERS,
    READY_FILTERS,
    REPLICA_CAPABILITY_FILTERS,
    REPLICA_READY_FILTERS,
    Candidate,
    apply_chain,
    free_slot,
)
from llama_orch.core.model import (
    Affinity,
    AffinityOutcome,
    Assigned,
    DecisionLog,
    JobSpec,
    NoCapacity,
    NoCapacityReason,
    PlacementDecision,
    PlacementInput,
    PoolSnapshot,
    ReplicaView,
    Stage,
)
from llama_orch.core.scoring import TIE_BREAKERS, decisive_tie_breakers, order_key
from llama_orch.vocab import PlacementMode

__all__ = ["TIE_BREAKERS", "PlacementInput", "decide", "order_key"]


class _Refusal(NamedTuple):
    reason: NoCapacityReason
    unready: bool = False


def decide(placement: PlacementInput) -> PlacementDecision:
    log: list[str] = []
    feasible = _feasible(placement, log)
    if isinstance(feasible, _Refusal):
        return _refuse(placement, log, feasible)
    candidates, capable_ids = feasible
    narrowed = _apply_overrides(candidates, placement.job, capable_ids, log)
    if isinstance(narrowed, _Refusal):
        return _refuse(placement, log, narrowed)
    candidates, fallback_used = narrowed
    pool, replica, affinity, breakers = _score(candidates, placement.job.affinity, placement.now)
    return Assigned(
        pool.id,
        replica.replica_id,
        DecisionLog(
            len(placement.pools),
            tuple(log),
            breakers,
            selected_pool_id=pool.id,
            selected_replica_id=replica.replica_id,
            pinned=placement.job.placement.mode is PlacementMode.PIN,
            fallback_used=fallback_used,
            affinity=affinity,
            snapshot_version=placement.snapshot_version,
        ),
    )


def _refuse(placement: PlacementInput, log: list[str], refusal: _Refusal) -> NoCapacity:
    pinned = placement.job.placement.mode is PlacementMode.PIN
    reason = NoCapacityReason.PINNED_POOL_INFEASIBLE if pinned else refusal.reason
    considered = len(placement.pools)
    decision_log = DecisionLog(
        considered, tuple(log), (), pinned=pinned, snapshot_version=placement.snapshot_version
    )
    return NoCapacity(reason, considered, decision_log, unready=refusal.unready)


def _feasible(
    placement: PlacementInput, log: list[str]
) -> tuple[list[Candidate], set[str]] | _Refusal:
    """Step 1: the (pool, replica) pairs that can run the job, and the capable pool ids."""
    job = placement.job
    pools = apply_chain(list(placement.pools), job, MATCH_FILTERS, log)
    if not pools:
        return _Refusal(NoCapacityReason.NO_POOL_SERVES)
    pools = apply_chain(pools, job, CAPABILITY_FILTERS, log)
    if not pools:
        return _Refusal(NoCapacityReason.NO_CAPABLE_POOL)
    capable_ids = {pool.id for pool in pools}
    pools = apply_chain(pools, job, READY_FILTERS, log)
    if not pools:
        return _Refusal(NoCapacityReason.NO_READY_POOL, not _pin_missing(job, capable_ids))
    candidates: list[Candidate] = [(pool, r) for pool in pools for r in pool.replicas]
    candidates = apply_chain(candidates, job, REPLICA_CAPABILITY_FILTERS, log)
    if not candidates:
        return _Refusal(NoCapacityReason.NO_CAPABLE_POOL)
    candidates = apply_chain(candidates, job, REPLICA_READY_FILTERS, log)
    if not candidates:
        return _Refusal(NoCapacityReason.NO_READY_POOL, not _pin_missing(job, capable_ids))
    if placement.stage is Stage.DISPATCH:
        candidates = apply_chain(candidates, job, (free_slot,), log)
        if not candidates:
            return _Refusal(NoCapacityReason.NO_FREE_SLOT)
    return candidates, capable_ids


def _apply_overrides(
    candidates: list[Candidate], job: JobSpec, capable_ids: set[str], log: list[str]
) -> tuple[list[Candidate], bool] | _Refusal:
    """Step 2: pin, avoid, prefer. They come after feasibility: they only ever narrow it.

    Returns the candidates left and whether ``prefer`` fell back to all of them."""
    overrides = job.placement
    if overrides.mode is PlacementMode.PIN:
        before = len(candidates)
        candidates = [c for c in candidates if c[0].id == overrides.pin_pool_id]
        log.append(f"pin {len(candidates)}/{before}")
        if not candidates:
            pin_capable = overrides.pin_pool_id in capable_ids
            return _Refusal(NoCapacityReason.PINNED_POOL_INFEASIBLE, pin_capable)
    if overrides.avoid_pools:
        before = len(candidates)
        avoid = overrides.avoid_pools
        candidates = [c for c in candidates if c[0].id not in avoid]
        log.append(f"avoid {len(candidates)}/{before}")
        if not candidates:
            return _Refusal(NoCapacityReason.ALL_AVOIDED)
    if overrides.mode is not PlacementMode.PREFER:
        return candidates, False
    before = len(candidates)
    prefer = overrides.prefer_pools
    preferred = [c for c in candidates if c[0].id in prefer]
    log.append(f"prefer {len(preferred)}/{before}")
    if preferred:
        return preferred, False
    if overrides.allow_fallback:
        log.append(f"fallback {before}/{before}")
        return candidates, True
    return _Refusal(NoCapacityReason.NO_PREFERRED_FEASIBLE)


def _pin_missing(job: JobSpec, capable_ids: set[str]) -> bool:
    """A pin on a pool that is not even capable is not a readiness problem."""
    pin = job.placement.pin_pool_id
    return job.placement.mode is PlacementMode.PIN and pin not in capable_ids


def _score(
    candidates: list[Candidate], affinity: Affinity | None, now: float
) -> tuple[PoolSnapshot, ReplicaView, AffinityOutcome, tuple[str, ...]]:
    outcome = AffinityOutcome.NONE
    if affinity is not None and now < affinity.expires_at:
        for pool, replica in candidates:
            if (
                replica.replica_id == affinity.replica_id
                and pool.id == affinity.pool_id
                and replica.slots_free > 0
            ):
                return pool, replica, AffinityOutcome.KEPT, ("session_affinity",)
        outcome = AffinityOutcome.FAILOVER
    if len(candidates) == 1:
        pool, replica = candidates[0]
        return pool, replica, outcome, ()
    # The SPEC §5.5 tuple (``scoring.order_key``), inlined: this loop is the hot path.
    keyed = [
        (
            -r.free_vram,
            r.active_slots + p.queued,
            -(r.perf_tokens_per_s or p.perf_tokens_per_s or 0.0),
            p.id,
            r.replica_id,
            i,
        )
        for i, (p, r) in enumerate(candidates)
    ]
    keyed.sort()
    best, runner_up = keyed[0], keyed[1]
    pool, replica = candidates[best[5]]
    return pool, replica, outcome, decisive_tie_breakers(best[:5], runner_up[:5])
